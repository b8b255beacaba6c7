/* redundant: every active subflow carries every byte.
 *
 * Algorithm (the out-of-tree MPTCP kernel's "redundant" scheduler, v0.90+:
 * A. Frömmgen, T. Erbshäußer, A. Buchmann, T. Zimmermann, K. Wehrle,
 * "ReMP TCP: Low Latency Multipath TCP", IEEE ICC 2016):
 *
 *   Send each segment on all active subflows; the receiver keeps the first
 *   copy that arrives.  Capacity is traded for latency and loss resilience:
 *   the connection is as fast as its fastest path for delivery, and a path
 *   that dies loses nothing.  Backup subflows are used (all of them) only
 *   when no non-backup subflow is active.
 *
 * Kernel mechanism (bpfkit series, vm/patches/6.12/0004): the ops set
 * MPTCP_SCHED_FLAG_REDUNDANT and get_send() marks every subflow that should
 * carry the data.  One marked subflow sends the new data, the others send
 * the same range with the same DSN mapping ("catch up"); a subflow never
 * copies data the peer has already DATA_ACKed.  The copies are therefore
 * best effort: a subflow whose send buffer is full while the other path
 * gets the data acknowledged would skip that data for good.
 *
 * This scheduler closes that gap by letting no subflow run ahead: while a
 * live subflow is behind (subflow->redundant_seq, the next byte it still has
 * to carry, is below msk->snd_nxt), get_send() marks only the subflows that
 * are behind.  The kernel then makes them catch up first (and, once in sync,
 * send new data), and the next call marks the others to copy that.  Data is
 * thus copied one scheduling step after it was first sent instead of
 * whenever the other subflow happens to be serviced - in a slow (emulated)
 * guest that was often after the peer had already DATA_ACKed it through the
 * faster path, and the copy was skipped.  When a lagging subflow has no room
 * in its send buffer nothing new is sent; its own ACKs free the room and
 * trigger the next push.  The connection therefore moves at the pace of its
 * slowest live path, the price of full redundancy.
 *
 * A subflow that looks dead (TCP loss state after an RTO, or marked stale by
 * the path manager) is not waited for: redundancy must not turn one broken
 * path into a stalled connection.  It still gets marked, best effort.
 *
 * Retransmissions (get_retrans): the MPTCP-level retransmit head goes out
 * on every active subflow of the class, like new data.
 *
 * One subflow: it is marked alone and sends normally (never lagging).
 * Subflows coming and going: a joining subflow starts from msk->snd_una,
 * i.e. it first copies all data in flight; one that disappears is simply
 * not walked any more.
 */
#include "sched_common.h"

char LICENSE[] SEC("license") = "GPL";

/* Alive: not in TCP loss recovery after an RTO, not marked stale. */
static __always_inline bool redundant_alive(struct mptcp_subflow_context *subflow)
{
	struct tcp_sock *tp;

	if (BPF_CORE_READ_BITFIELD(subflow, stale))
		return false;
	tp = mptcp_subflow_tcp(subflow);
	return tp && BPF_CORE_READ_BITFIELD(&tp->inet_conn, icsk_ca_state) != SCHED_TCP_CA_LOSS;
}

/* @subflow has not carried everything sent so far (same normalisation as
 * the kernel's catch-up: a subflow that never sent redundantly, or whose
 * position was acked meanwhile, restarts from snd_una). */
static __always_inline bool redundant_behind(struct mptcp_sock *msk, struct mptcp_subflow_context *subflow)
{
	__u64 snd_una = msk->snd_una, snd_nxt = msk->snd_nxt;
	__u64 seq = subflow->redundant_seq;

	if (seq < snd_una || seq > snd_nxt)
		seq = snd_una;
	return seq < snd_nxt;
}

/* Mark the subflows of the class in use (backups only when no non-backup
 * subflow is active): only the live ones that are behind, if any (and
 * @catch_up_first), else all of them. */
static __always_inline int redundant_mark(struct mptcp_sock *msk, bool catch_up_first)
{
	struct mptcp_subflow_context *subflow;
	bool backups = sched_use_backups(msk), any_behind = false, marked = false;

	if (catch_up_first) {
		bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
			if (!mptcp_subflow_active(subflow) || mptcp_subflow_is_backup(subflow) != backups)
				continue;
			if (redundant_behind(msk, subflow) && redundant_alive(subflow)) {
				mptcp_subflow_set_scheduled(subflow, true);
				any_behind = true;
			}
		}
		if (any_behind)
			return 0;
	}
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!mptcp_subflow_active(subflow) || mptcp_subflow_is_backup(subflow) != backups)
			continue;
		mptcp_subflow_set_scheduled(subflow, true);
		marked = true;
	}
	return marked ? 0 : -1;
}

SEC("struct_ops")
int BPF_PROG(redundant_get_send, struct mptcp_sock *msk)
{
	mptcp_set_timeout((struct sock *)msk);
	/* each marked subflow sends up to a full burst of the same data */
	msk->snd_burst = MPTCP_SEND_BURST_SIZE;
	return redundant_mark(msk, true);
}

SEC("struct_ops")
int BPF_PROG(redundant_get_retrans, struct mptcp_sock *msk)
{
	/* a retransmission is due because data is missing at the peer: resend
	 * it everywhere, whoever is behind */
	return redundant_mark(msk, false);
}

SEC(".struct_ops.link")
struct mptcp_sched_ops redundant = {
	.get_send = (void *)redundant_get_send,
	.get_retrans = (void *)redundant_get_retrans,
	.flags = MPTCP_SCHED_FLAG_REDUNDANT,
	.name = "redundant",
};
