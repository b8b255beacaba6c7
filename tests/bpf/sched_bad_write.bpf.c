/* Must be rejected by the verifier: a scheduler may only write
 * msk->snd_burst and subflow->avg_pacing_rate, not snd_nxt. */
#include "mptcp_sched.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(bad_write_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;

	msk->snd_nxt = 0;
	subflow = bpf_mptcp_subflow_ctx(msk->first);
	if (!subflow)
		return -1;
	mptcp_subflow_set_scheduled(subflow, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops bad_write = {
	.get_send = (void *)bad_write_get_send,
	.name = "bpf_bad_write",
};
