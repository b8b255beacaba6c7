/* blest: Blocking Estimation-based scheduler.
 *
 * Paper: S. Ferlin, Ö. Alay, O. Mehani, R. Boreli, "BLEST: Blocking
 * Estimation-based MPTCP Scheduler for Heterogeneous Networks", IFIP
 * Networking 2016, pp. 431-439, DOI 10.1109/IFIPNetworking.2016.7497206.
 *
 * Problem: a segment sent on a slow subflow S occupies MPTCP send window
 * for at least RTT_S.  If the fast subflow F could have sent so much in that
 * time that the window fills up, F is blocked behind S's segment
 * (head-of-line blocking at the sender).
 *
 * Rule (paper section III):
 *   - F = the active subflow with the lowest RTT.  If F's congestion window
 *     has room, send on F.
 *   - Otherwise S = the lowest-RTT subflow that can send (min-RTT's choice).
 *     Estimate what F can send during one RTT_S, growing its window by one
 *     MSS per RTT_F (congestion avoidance):
 *         rtts = RTT_S / RTT_F
 *         X    = MSS_F * (CWND_F + (rtts - 1) / 2) * rtts
 *     and skip S (send nothing now, wait for F) if
 *         lambda * X > |M| - MSS_S * (inflight_S + 1)
 *     |M| = the MPTCP-level send window (peer's window: wnd_end - snd_una).
 *   - lambda corrects the model for what it ignores (losses, queueing).  It
 *     starts at 1.0 and, at most once per RTT_F, goes up by delta when the
 *     connection was blocked since the last update and down by delta
 *     otherwise, bounded to [LAMBDA_MIN, LAMBDA_MAX].  "Blocked" here: a
 *     get_send() found the MPTCP send window exhausted, or an MPTCP-level
 *     retransmission was needed (get_retrans() ran).  delta = 0.01 lies in
 *     the paper's evaluated range (0.001 ... 0.02); the bounds follow the
 *     out-of-tree implementation (1.0 ... 1.3).
 *   lambda is per connection: bpf_sk_storage on the msk, created in init().
 *
 * Backups: as in minrtt.bpf.c, backup subflows are candidates only when no
 * non-backup subflow is active.  With one candidate subflow there is no
 * slower path to skip: BLEST degenerates to "send when the window has room".
 *
 * Retransmissions (get_retrans): no blocking estimate - the data is already
 * late; the lowest-RTT idle subflow that can send, else the lowest-RTT one
 * (sched_retrans_candidate(): not the subflow the data is stuck on).
 *
 * Fixed point: ratios and lambda are scaled by 1000 (milli-units).
 */
/* bpfkit:
 * title = "blocking estimation (skips a slow subflow that would block the fast one)"
 * paper = "Ferlin, Alay, Mehani, Boreli, IFIP Networking 2016"
 * colour = "#2ca02c"
 * quick_bench = ["wifi-lte", "wifi-lte-256k"]
 */
#include "sched_common.h"

char LICENSE[] SEC("license") = "GPL";

#define MILLI 1000ULL
#define LAMBDA_START 1000	/* 1.0 */
#define LAMBDA_MIN 1000		/* 1.0 */
#define LAMBDA_MAX 1300		/* 1.3 */
#define LAMBDA_STEP 10		/* 0.01 */
#define RTTS_MAX (64 * MILLI)	/* keeps X in 64 bits for any sane window */

struct blest_state {
	__u32 lambda_milli;
	__u32 blocked;		/* blocking seen since the last lambda update */
	__u64 last_update_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct blest_state);
} blest_state SEC(".maps");

static __always_inline struct blest_state *blest_get_state(struct mptcp_sock *msk)
{
	struct blest_state *st;

	st = bpf_sk_storage_get(&blest_state, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (st && !st->lambda_milli)
		st->lambda_milli = LAMBDA_START;
	return st;
}

SEC("struct_ops")
void BPF_PROG(blest_init, struct mptcp_sock *msk)
{
	blest_get_state(msk);
}

SEC("struct_ops")
void BPF_PROG(blest_release, struct mptcp_sock *msk)
{
	bpf_sk_storage_delete(&blest_state, msk);
}

/* lambda * X > |M| - MSS_S * (inflight_S + 1): sending on @slow would block
 * @fast.  Pure arithmetic, mirrored by bpfkit.sched.blest_skips_slow() so
 * unit tests pin the formula. */
static __always_inline bool blest_would_block(const struct sf_view *fast, const struct sf_view *slow,
					      __u64 send_window, __u32 lambda_milli)
{
	__u64 rtts = (__u64)slow->srtt_us * MILLI / fast->srtt_us;
	__u64 slow_claim = (__u64)slow->mss * (slow->inflight_segs + 1);
	__u64 x, room;

	if (rtts < MILLI)
		rtts = MILLI;	/* "slow" is not slower: no blocking to expect */
	if (rtts > RTTS_MAX)
		rtts = RTTS_MAX;
	/* X = MSS_F * (CWND_F + (rtts - 1) / 2) * rtts, all in milli-units */
	x = (__u64)fast->mss * ((__u64)fast->cwnd_segs * MILLI + (rtts - MILLI) / 2) / MILLI * rtts / MILLI;
	room = send_window > slow_claim ? send_window - slow_claim : 0;
	return x * lambda_milli / MILLI > room;
}

/* Once per RTT_F: lambda up after blocking, down otherwise. */
static __always_inline void blest_adapt_lambda(struct blest_state *st, const struct sf_view *fast)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - st->last_update_ns < (__u64)fast->srtt_us * 1000)
		return;
	if (st->blocked) {
		if (st->lambda_milli + LAMBDA_STEP <= LAMBDA_MAX)
			st->lambda_milli += LAMBDA_STEP;
	} else if (st->lambda_milli >= LAMBDA_MIN + LAMBDA_STEP) {
		st->lambda_milli -= LAMBDA_STEP;
	}
	st->blocked = 0;
	st->last_update_ns = now;
}

SEC("struct_ops")
int BPF_PROG(blest_get_send, struct mptcp_sock *msk)
{
	struct sf_view fastest, chosen;
	struct blest_state *st;
	__u64 wnd_end, snd_una, snd_nxt;

	mptcp_set_timeout((struct sock *)msk);
	st = blest_get_state(msk);
	wnd_end = mptcp_wnd_end(msk);
	snd_una = msk->snd_una;
	snd_nxt = msk->snd_nxt;
	if (st && !(wnd_end > snd_nxt))
		st->blocked = 1;	/* sender-side window exhausted */

	if (sched_candidates(msk, &fastest, &chosen))
		return -1;
	if (st && fastest.ctx)
		blest_adapt_lambda(st, &fastest);

	if (fastest.ctx && chosen.ctx != fastest.ctx &&
	    blest_would_block(&fastest, &chosen, wnd_end > snd_una ? wnd_end - snd_una : 0,
			      st ? st->lambda_milli : LAMBDA_START))
		return -1;	/* wait for the fast subflow's window to open */

	sched_set_burst(msk, &chosen);
	mptcp_subflow_set_scheduled(chosen.ctx, true);
	return 0;
}

SEC("struct_ops")
int BPF_PROG(blest_get_retrans, struct mptcp_sock *msk)
{
	struct sf_view chosen;
	struct blest_state *st;

	st = bpf_sk_storage_get(&blest_state, msk, 0, 0);
	if (st)
		st->blocked = 1;	/* data is late at the peer */
	if (sched_retrans_candidate(msk, &chosen))
		return -1;
	mptcp_subflow_set_scheduled(chosen.ctx, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops blest = {
	.init = (void *)blest_init,
	.release = (void *)blest_release,
	.get_send = (void *)blest_get_send,
	.get_retrans = (void *)blest_get_retrans,
	.name = "blest",
};
