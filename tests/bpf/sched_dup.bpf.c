/* Test scheduler: true redundancy.  get_send marks every active subflow
 * and the ops carry MPTCP_SCHED_FLAG_REDUNDANT, so each marked subflow
 * sends the same bytes (bpfkit kernel series; export has no equivalent:
 * without the flag, marking all subflows only spreads the data). */
#include "mptcp_sched.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(dup_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	bool marked = false;	/* a bool, not a counter: lets the verifier
				 * see the iterator loop converge */

	mptcp_set_timeout((struct sock *)msk);
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!mptcp_subflow_active(subflow))
			continue;
		mptcp_subflow_set_scheduled(subflow, true);
		marked = true;
	}
	return marked ? 0 : -1;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops dup = {
	.get_send = (void *)dup_get_send,
	.flags = MPTCP_SCHED_FLAG_REDUNDANT,
	.name = "bpf_dup",
};

SEC(".struct_ops")
struct mptcp_sched_ops dup_nl = {
	.get_send = (void *)dup_get_send,
	.flags = MPTCP_SCHED_FLAG_REDUNDANT,
	.name = "bpf_dup_nl",
};
