/* Test scheduler registering under the name of the built-in "minrtt" with
 * different code: `bpfkit sched load` must refuse it while bpf/sched/minrtt
 * holds the name (and vice versa), instead of treating it as a reload. */
#include "mptcp_sched.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(clash_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow = bpf_mptcp_subflow_ctx(msk->first);

	if (!subflow)
		return -1;
	mptcp_subflow_set_scheduled(subflow, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops clash = {
	.get_send = (void *)clash_get_send,
	.name = "minrtt",
};
