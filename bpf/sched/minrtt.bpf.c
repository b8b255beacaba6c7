/* minrtt: lowest-RTT-first MPTCP packet scheduler.
 *
 * Algorithm (the out-of-tree MPTCP kernel's default "minRTT" scheduler, as
 * evaluated in C. Paasch, S. Ferlin, O. Alay, O. Bonaventure, "Experimental
 * Evaluation of Multipath TCP Schedulers", ACM SIGCOMM CSWS 2014,
 * DOI 10.1145/2630088.2631977):
 *
 *   Among the subflows that can send now - active, congestion window not
 *   full (packets in flight + queued-but-unsent segments < cwnd) and room in
 *   the send buffer - pick the one with the lowest smoothed RTT.
 *
 *   Backup subflows (local or peer-requested) are used only when no
 *   non-backup subflow is active: a non-backup subflow whose window is
 *   merely full makes the scheduler wait for it, it does not open the
 *   backup path.
 *
 *   When every candidate's window is full, get_send() returns -1: the data
 *   stays in the MPTCP send queue and the next ACK on any subflow asks again.
 *   The amount handed over per decision is bounded by the chosen subflow's
 *   free window (see sched_set_burst()), so the next decision is taken on
 *   fresh RTT/cwnd state.
 *
 * Retransmissions (get_retrans, MPTCP-level reinjection after the MPTCP
 * retransmit timer fired): the lowest-RTT subflow that can send and has
 * nothing in flight - it cannot be the one the late data is stuck on - else
 * the lowest-RTT one that can send (sched_retrans_candidate()); if none can,
 * -1 and the timer tries again.
 *
 * One subflow: the rule reduces to "send when its window has room".
 * Subflows coming and going: every call walks the current subflow list, no
 * state is kept between calls.
 */
/* bpfkit:
 * title = "lowest RTT first"
 * paper = "Paasch, Ferlin, Alay, Bonaventure, ACM SIGCOMM CSWS 2014"
 * colour = "#1f77b4"
 * quick_bench = ["wifi-lte", "wifi-lte-256k"]
 */
#include "sched_common.h"

char LICENSE[] SEC("license") = "GPL";

SEC("struct_ops")
int BPF_PROG(minrtt_get_send, struct mptcp_sock *msk)
{
	struct sf_view fastest, best;

	/* MPTCP-level retransmit timeout from the subflows' RTOs, as the
	 * in-kernel scheduler does (bpfkit's kernel also does it before every
	 * get_send, vm/patches 0008; export does not, and there without it the
	 * timer fires every tick after an idle moment) */
	mptcp_set_timeout((struct sock *)msk);
	if (sched_candidates(msk, &fastest, &best))
		return -1;
	sched_set_burst(msk, &best);
	mptcp_subflow_set_scheduled(best.ctx, true);
	return 0;
}

SEC("struct_ops")
int BPF_PROG(minrtt_get_retrans, struct mptcp_sock *msk)
{
	struct sf_view best;

	if (sched_retrans_candidate(msk, &best))
		return -1;
	mptcp_subflow_set_scheduled(best.ctx, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops minrtt = {
	.get_send = (void *)minrtt_get_send,
	.get_retrans = (void *)minrtt_get_retrans,
	.name = "minrtt",
};
