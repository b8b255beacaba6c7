/* ecf: Earliest Completion First.
 *
 * Paper: Y. Lim, E. M. Nahum, D. Towsley, R. J. Gibbens, "ECF: An MPTCP Path
 * Scheduler to Manage Heterogeneous Paths", ACM CoNEXT 2017, pp. 147-159,
 * DOI 10.1145/3143361.3143376 (Algorithm 1).
 *
 * Idea: when the fastest subflow's window is full, sending on a slower one
 * is only worth it if the data would arrive sooner than by waiting for the
 * fast subflow to get its window back.
 *
 * Rule, with x_f = the active subflow with the lowest RTT:
 *   - x_f's congestion window has room: send on x_f.
 *   - otherwise x_s = the lowest-RTT subflow that can send, and
 *         k = bytes in the connection's send buffer not sent on any subflow
 *             yet (msk->write_seq - msk->snd_nxt)
 *         n = 1 + k / CWND_f                 (rounds x_f needs for k)
 *         delta = max(sigma_f, sigma_s)      (RTT mean deviations)
 *         beta = 1/4
 *     if n * RTT_f < (1 + waiting * beta) * (RTT_s + delta):
 *         if (k / CWND_s) * RTT_s >= 2 * RTT_f + delta:
 *             waiting = 1; send nothing now (wait for x_f)
 *         else:
 *             send on x_s
 *     else:
 *         waiting = 0; send on x_s
 *   "waiting" is the paper's hysteresis: once the scheduler decided to wait
 *   for x_f, the slow path must look beta (25%) worse before it is used
 *   again.  It is per connection: bpf_sk_storage on the msk, made in init().
 *   CWND_f/CWND_s are in bytes (segments * MSS) so k needs no conversion.
 *
 * RTT deviation: tcp_sock.mdev_us (4x the mean deviation).  Not rttvar_us:
 * Linux keeps rttvar_us at least at TCP_RTO_MIN (200 ms), which would make
 * delta swamp every LAN-scale RTT.
 *
 * Backups: as in minrtt.bpf.c, backup subflows are candidates only when no
 * non-backup subflow is active.  One candidate subflow: x_f itself, so the
 * rule reduces to "send when its window has room".
 *
 * Retransmissions (get_retrans): the data is already late, no waiting; the
 * lowest-RTT idle subflow that can send, else the lowest-RTT one
 * (sched_retrans_candidate(): not the subflow the data is stuck on).  The
 * hysteresis state is left as it is.
 */
/* bpfkit:
 * title = "earliest completion first (waits for the fast subflow when that finishes sooner)"
 * paper = "Lim, Nahum, Towsley, Gibbens, ACM CoNEXT 2017"
 * colour = "#9467bd"
 * quick_bench = []
 */
#include "sched_common.h"

char LICENSE[] SEC("license") = "GPL";

#define ECF_BETA_DIV 4		/* beta = 1 / ECF_BETA_DIV */

struct ecf_state {
	__u32 waiting;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ecf_state);
} ecf_state SEC(".maps");

SEC("struct_ops")
void BPF_PROG(ecf_init, struct mptcp_sock *msk)
{
	bpf_sk_storage_get(&ecf_state, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

SEC("struct_ops")
void BPF_PROG(ecf_release, struct mptcp_sock *msk)
{
	bpf_sk_storage_delete(&ecf_state, msk);
}

enum ecf_decision { ECF_USE_SLOW, ECF_WAIT, ECF_USE_SLOW_RESET };

/* Algorithm 1 when x_f cannot send.  Pure arithmetic, mirrored by
 * bpfkit.sched.ecf_decide() so unit tests pin the inequalities:
 *   n*RTT_f < (1 + w*beta)(RTT_s + delta)  <=>
 *   (CWND_f + k) * RTT_f * DIV < (DIV + w) * (RTT_s + delta) * CWND_f     */
static __always_inline enum ecf_decision ecf_decide(const struct sf_view *fast, const struct sf_view *slow,
						    __u64 unsent, __u32 waiting)
{
	__u64 cwnd_f = (__u64)fast->cwnd_segs * fast->mss ?: 1;
	__u64 cwnd_s = (__u64)slow->cwnd_segs * slow->mss ?: 1;
	__u64 delta = fast->mdev_us > slow->mdev_us ? fast->mdev_us : slow->mdev_us;
	__u64 lhs = (cwnd_f + unsent) * fast->srtt_us * ECF_BETA_DIV;
	__u64 rhs = (ECF_BETA_DIV + (waiting ? 1 : 0)) * ((__u64)slow->srtt_us + delta) * cwnd_f;

	if (lhs < rhs) {
		/* (k / CWND_s) * RTT_s >= 2 RTT_f + delta */
		if (unsent * slow->srtt_us >= (2 * (__u64)fast->srtt_us + delta) * cwnd_s)
			return ECF_WAIT;
		return ECF_USE_SLOW;
	}
	return ECF_USE_SLOW_RESET;
}

SEC("struct_ops")
int BPF_PROG(ecf_get_send, struct mptcp_sock *msk)
{
	struct sf_view fastest, chosen;
	struct ecf_state *st;
	enum ecf_decision d;
	__u64 unsent;

	mptcp_set_timeout((struct sock *)msk);
	if (sched_candidates(msk, &fastest, &chosen))
		return -1;

	if (fastest.ctx && chosen.ctx != fastest.ctx) {
		st = bpf_sk_storage_get(&ecf_state, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		unsent = msk->write_seq > msk->snd_nxt ? msk->write_seq - msk->snd_nxt : 0;
		d = ecf_decide(&fastest, &chosen, unsent, st ? st->waiting : 0);
		if (d == ECF_WAIT) {
			if (st)
				st->waiting = 1;
			return -1;	/* x_f will finish k sooner: wait for it */
		}
		if (d == ECF_USE_SLOW_RESET && st)
			st->waiting = 0;
	}

	sched_set_burst(msk, &chosen);
	mptcp_subflow_set_scheduled(chosen.ctx, true);
	return 0;
}

SEC("struct_ops")
int BPF_PROG(ecf_get_retrans, struct mptcp_sock *msk)
{
	struct sf_view chosen;

	if (sched_retrans_candidate(msk, &chosen))
		return -1;
	mptcp_subflow_set_scheduled(chosen.ctx, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops ecf = {
	.init = (void *)ecf_init,
	.release = (void *)ecf_release,
	.get_send = (void *)ecf_get_send,
	.get_retrans = (void *)ecf_get_retrans,
	.name = "ecf",
};
