/* Compat corpus, export style "redundant": mark every subflow.  Without
 * bpfkit's MPTCP_SCHED_FLAG_REDUNDANT (absent from export) the kernel spreads
 * sequential data over the marked subflows, in this series as in export. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(red_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	int marked = 0;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!mptcp_subflow_active(subflow))
			continue;
		mptcp_subflow_set_scheduled(subflow, true);
		if (++marked >= MPTCP_SUBFLOWS_MAX)
			break;
	}
	return marked ? 0 : -1;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops red = {
	.get_send	= (void *)red_get_send,
	.name		= "compat_red",
};
