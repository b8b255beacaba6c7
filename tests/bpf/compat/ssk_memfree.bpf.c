/* Compat corpus, OMR style: bpf_sk_stream_memory_free() called with the
 * subflow's socket, as the earlier export generation declared it.  This
 * series (like the newest export) takes the subflow context instead: the
 * load must fail with one error saying so. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

extern bool bpf_sk_stream_memory_free(const struct sock *sk) __ksym;

SEC("struct_ops")
int BPF_PROG(memfree_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!mptcp_subflow_active(subflow) ||
		    !bpf_sk_stream_memory_free(mptcp_subflow_tcp_sock(subflow)))
			continue;
		mptcp_subflow_set_scheduled(subflow, true);
		return 0;
	}
	return -1;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops memfree = {
	.get_send	= (void *)memfree_get_send,
	.name		= "compat_memfree",
};
