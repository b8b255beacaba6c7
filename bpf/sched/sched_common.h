/* Shared helpers for the reference schedulers in bpf/sched/.
 *
 * Everything here reads kernel state through BTF (read-only): the subflow's
 * struct tcp_sock and the MPTCP-level sequence numbers of the msk.  Times are
 * in microseconds, sizes in bytes unless a name says "segs".
 */
#ifndef BPFKIT_SCHED_COMMON_H
#define BPFKIT_SCHED_COMMON_H

#include "mptcp_sched.h"

/* include/net/tcp.h: enum tcp_ca_state */
#define SCHED_TCP_CA_LOSS 4

/* What a scheduler needs to know about one subflow, read once per call. */
struct sf_view {
	struct mptcp_subflow_context *ctx;
	__u32 srtt_us;		/* smoothed RTT (tcp_sock.srtt_us is 8x) */
	__u32 mdev_us;		/* RTT mean deviation (tcp_sock.mdev_us is 4x) */
	__u32 cwnd_segs;
	__u32 mss;
	__u32 inflight_segs;	/* sent and unacked + queued but not sent yet */
	bool backup;
};

/* Fill *v for @subflow; false if it has no TCP socket (being torn down). */
static __always_inline bool sf_read(struct mptcp_subflow_context *subflow, struct sf_view *v)
{
	struct tcp_sock *tp = mptcp_subflow_tcp(subflow);
	__u32 unsent, mss;

	if (!tp)
		return false;
	mss = tp->mss_cache ?: 1;
	/* bytes the subflow accepted from MPTCP that TCP has not put on the
	 * wire yet: they will occupy the congestion window as soon as it opens,
	 * so they count against it like packets in flight */
	unsent = tp->write_seq - tp->snd_nxt;
	v->ctx = subflow;
	/* an srtt of 0 means "no sample yet": treat it as 1 us so that divisions
	 * stay defined and a fresh subflow is tried */
	v->srtt_us = (tp->srtt_us >> 3) ?: 1;
	v->mdev_us = tp->mdev_us >> 2;
	v->cwnd_segs = tp->snd_cwnd;
	v->mss = mss;
	v->inflight_segs = tp->packets_out + (unsent + mss - 1) / mss;
	v->backup = mptcp_subflow_is_backup(subflow);
	return true;
}

/* Room in the congestion window and in the send buffer. */
static __always_inline bool sf_can_send(const struct sf_view *v)
{
	return v->inflight_segs < v->cwnd_segs && bpf_sk_stream_memory_free(v->ctx);
}

/* Bytes the congestion window still has room for. */
static __always_inline __u32 sf_cwnd_room(const struct sf_view *v)
{
	return v->inflight_segs < v->cwnd_segs ? (v->cwnd_segs - v->inflight_segs) * v->mss : 0;
}

/* How much a get_send() may hand to the chosen subflow in one go: what its
 * congestion window has room for (so the next decision is taken with fresh
 * state rather than on a deep subflow queue), at least one segment, at most
 * the kernel's burst size and the MPTCP-level send window. */
static __always_inline void sched_set_burst(struct mptcp_sock *msk, const struct sf_view *v)
{
	__u64 wnd_end = mptcp_wnd_end(msk), snd_nxt = msk->snd_nxt;
	__u64 window = wnd_end > snd_nxt ? wnd_end - snd_nxt : 0;
	__u64 burst = sf_cwnd_room(v);

	if (burst < v->mss)
		burst = v->mss;
	if (burst > MPTCP_SEND_BURST_SIZE)
		burst = MPTCP_SEND_BURST_SIZE;
	if (burst > window)
		burst = window;
	msk->snd_burst = burst;
}

/* Backup subflows (local or peer-requested) are candidates only when no
 * non-backup subflow is active.  True when the backup class is in use. */
static __always_inline bool sched_use_backups(struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	bool regular_active = false;

	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (mptcp_subflow_active(subflow) && !mptcp_subflow_is_backup(subflow))
			regular_active = true;
	}
	return !regular_active;
}

/* Fill *v for an active subflow of the class in use (backups or not);
 * false for any other. */
static __always_inline bool sf_candidate(struct mptcp_subflow_context *subflow, bool backups,
					 struct sf_view *v)
{
	return mptcp_subflow_active(subflow) && sf_read(subflow, v) && v->backup == backups;
}

/* Within the class in use: the subflow with the lowest RTT whether or not it
 * can send (*fastest), and the lowest-RTT one that can send now (*sendable,
 * min-RTT's choice).  Returns -1 when none can send.  The class is decided
 * first, in its own loop, so the search loop carries only two candidates:
 * fewer distinct verifier states at its exit. */
static __always_inline int sched_candidates(struct mptcp_sock *msk, struct sf_view *fastest,
					    struct sf_view *sendable)
{
	struct mptcp_subflow_context *subflow;
	bool backups = sched_use_backups(msk);
	struct sf_view v;

	fastest->ctx = NULL;
	sendable->ctx = NULL;
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!sf_candidate(subflow, backups, &v))
			continue;
		if (!fastest->ctx || v.srtt_us < fastest->srtt_us)
			*fastest = v;
		if (sf_can_send(&v) && (!sendable->ctx || v.srtt_us < sendable->srtt_us))
			*sendable = v;
	}
	return sendable->ctx ? 0 : -1;
}

/* Where an MPTCP-level retransmission goes.  get_retrans() runs when the
 * MPTCP retransmit timer fired: the oldest unacked data is stuck on the
 * subflow it was sent on (lost there, or queued behind a loss that TCP has yet
 * to repair).  Resending it on that same subflow puts it behind the stuck data
 * again, and the timer fires once more, with backoff: on a lossy path this
 * turned single losses into stalls of 0.2, 0.4, 0.8 s.  The API does not say
 * which subflow holds the data, but an idle one (nothing in flight, nothing
 * queued) cannot be it.  So: the lowest-RTT idle subflow that can send, else
 * the lowest-RTT one that can send (the rule of the in-kernel default, which
 * also prefers a subflow with empty queues, and of the out-of-tree kernel,
 * which avoids the subflows the data was sent on).  Returns -1 when none can
 * send. */
static __always_inline int sched_retrans_candidate(struct mptcp_sock *msk, struct sf_view *chosen)
{
	struct mptcp_subflow_context *subflow;
	bool backups = sched_use_backups(msk);
	struct sf_view v, idle, busy;

	/* Two whole candidates, each set only together with its ctx: comparing
	 * against the caller's *chosen instead (one candidate) reads fields the
	 * verifier cannot prove written and is rejected (R6 !read_ok). */
	idle.ctx = NULL;
	busy.ctx = NULL;
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!sf_candidate(subflow, backups, &v) || !sf_can_send(&v))
			continue;
		if (!v.inflight_segs) {
			if (!idle.ctx || v.srtt_us < idle.srtt_us)
				idle = v;
		} else if (!busy.ctx || v.srtt_us < busy.srtt_us) {
			busy = v;
		}
	}
	if (idle.ctx)
		*chosen = idle;
	else if (busy.ctx)
		*chosen = busy;
	else
		return -1;
	return 0;
}

#endif /* BPFKIT_SCHED_COMMON_H */
