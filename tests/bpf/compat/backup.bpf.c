/* Compat corpus, export style: the first subflow not flagged backup, else
 * the first one. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(backup_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *pick = NULL, *fallback = NULL;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!fallback)
			fallback = subflow;
		if (!BPF_CORE_READ_BITFIELD(subflow, backup) &&
		    !BPF_CORE_READ_BITFIELD(subflow, request_bkup)) {
			pick = subflow;
			break;
		}
	}
	if (!pick)
		pick = fallback;
	if (!pick)
		return -1;
	mptcp_subflow_set_scheduled(pick, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops backup = {
	.get_send	= (void *)backup_get_send,
	.name		= "compat_backup",
};
