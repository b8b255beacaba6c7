/* Compat corpus, OMR style: prefer a subflow with nothing in flight
 * (bpf_mptcp_subflow_queues_empty, of the earlier export generation), else
 * the active subflow with the lowest smoothed RTT. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

extern bool bpf_mptcp_subflow_queues_empty(struct sock *sk) __ksym;

SEC("struct_ops")
int BPF_PROG(idle_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *pick = NULL;
	__u32 best = UINT_MAX;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		struct sock *ssk = mptcp_subflow_tcp_sock(subflow);
		struct tcp_sock *tp;

		if (!mptcp_subflow_active(subflow))
			continue;
		if (bpf_mptcp_subflow_queues_empty(ssk)) {
			pick = subflow;
			break;
		}
		tp = bpf_skc_to_tcp_sock(ssk);
		if (tp && tp->srtt_us < best) {
			pick = subflow;
			best = tp->srtt_us;
		}
	}
	if (!pick)
		return -1;
	mptcp_subflow_set_scheduled(pick, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops idle = {
	.get_send	= (void *)idle_get_send,
	.name		= "compat_idle",
};
