/* Must be rejected by the verifier: bpf_tcp_send_ack() belongs to TCP
 * congestion control programs, not to MPTCP schedulers. */
#include "mptcp_sched.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(bad_helper_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	struct tcp_sock *tp;

	subflow = bpf_mptcp_subflow_ctx(msk->first);
	if (!subflow)
		return -1;
	tp = mptcp_subflow_tcp(subflow);
	if (tp)
		bpf_tcp_send_ack(tp, tp->rcv_nxt);
	mptcp_subflow_set_scheduled(subflow, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops bad_helper = {
	.get_send = (void *)bad_helper_get_send,
	.name = "bpf_bad_helper",
};
