/* Compat corpus, export style: every byte on the connection's first subflow. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

SEC("struct_ops")
void BPF_PROG(first_init, struct mptcp_sock *msk)
{
}

SEC("struct_ops")
void BPF_PROG(first_release, struct mptcp_sock *msk)
{
}

SEC("struct_ops")
int BPF_PROG(first_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow = bpf_mptcp_subflow_ctx(msk->first);

	if (!subflow)
		return -1;
	mptcp_subflow_set_scheduled(subflow, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops first = {
	.init		= (void *)first_init,
	.release	= (void *)first_release,
	.get_send	= (void *)first_get_send,
	.name		= "compat_first",
};
