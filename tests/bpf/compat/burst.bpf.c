/* Compat corpus, export style "burst": new data in bursts on the active
 * subflow with the lowest smoothed RTT and room in its send buffer; a
 * sleepable get_retrans() that runs the path manager's stale check
 * (KF_SLEEPABLE, so SEC("struct_ops.s")) before picking a subflow. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

extern bool bpf_sk_stream_memory_free(const struct mptcp_subflow_context *subflow) __ksym;
extern void mptcp_pm_subflow_chk_stale(const struct mptcp_sock *msk, struct sock *ssk) __ksym;
extern bool bpf_mptcp_subflow_queues_empty(struct sock *sk) __ksym;

__u64 retrans_calls;

/* ssk from bpf_mptcp_subflow_tcp_sock(): in the sleepable get_retrans() a
 * pointer read from subflow->tcp_sock is untrusted, and helpers refuse it */
static __always_inline __u32 srtt_of(struct sock *ssk)
{
	struct tcp_sock *tp = ssk ? bpf_skc_to_tcp_sock(ssk) : NULL;

	return tp ? tp->srtt_us : UINT_MAX;
}

SEC("struct_ops")
int BPF_PROG(burst_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *pick = NULL;
	__u32 best = UINT_MAX;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		__u32 srtt;

		if (!mptcp_subflow_active(subflow) || !bpf_sk_stream_memory_free(subflow))
			continue;
		srtt = srtt_of(bpf_mptcp_subflow_tcp_sock(subflow));
		if (!pick || srtt < best) {
			pick = subflow;
			best = srtt;
		}
	}
	if (!pick)
		return -1;
	mptcp_subflow_set_scheduled(pick, true);
	msk->snd_burst = MPTCP_SEND_BURST_SIZE;
	return 0;
}

SEC("struct_ops.s")
int BPF_PROG(burst_get_retrans, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *pick = NULL;
	__u32 best = UINT_MAX;

	__sync_fetch_and_add(&retrans_calls, 1);
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		struct sock *ssk = bpf_mptcp_subflow_tcp_sock(subflow);
		__u32 srtt;

		if (!ssk)
			continue;
		/* as the kernel's own retransmit picker: only a subflow with data
		 * outstanding can be making no progress */
		if (!bpf_mptcp_subflow_queues_empty(ssk))
			mptcp_pm_subflow_chk_stale(msk, ssk);
		if (!mptcp_subflow_active(subflow))
			continue;
		srtt = srtt_of(ssk);
		if (!pick || srtt < best) {
			pick = subflow;
			best = srtt;
		}
	}
	if (!pick)
		return -1;
	mptcp_subflow_set_scheduled(pick, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops burst = {
	.get_send	= (void *)burst_get_send,
	.get_retrans	= (void *)burst_get_retrans,
	.name		= "compat_burst",
};
