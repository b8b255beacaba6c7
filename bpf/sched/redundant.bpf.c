/* redundant: every active subflow carries every byte.
 *
 * Algorithm (the out-of-tree MPTCP kernel's "redundant" scheduler, v0.90+:
 * A. Frömmgen, T. Erbshäußer, A. Buchmann, T. Zimmermann, K. Wehrle,
 * "ReMP TCP: Low Latency Multipath TCP", IEEE ICC 2016):
 *
 *   Send each segment on all active subflows; the receiver keeps the first
 *   copy that arrives.  Capacity is traded for latency and loss resilience:
 *   delivery is as fast as the fastest path, and a path that dies loses
 *   nothing.  Backup subflows are used (all of them) only when no
 *   non-backup subflow is active.
 *
 * Kernel mechanism (bpfkit series, vm/patches/6.12/0004): the ops set
 * MPTCP_SCHED_FLAG_REDUNDANT, and the subflows get_send() marks form the
 * redundant set.  One marked subflow sends the new data; every other member
 * copies the same range with the same DSN mapping, and the kernel keeps
 * acked data queued until every member has carried it.  So all this
 * scheduler decides is *which* subflows are in the set: every active one of
 * the class in use.
 *
 * A path that looks dead (TCP loss state after an RTO, or marked stale by
 * the path manager) stays marked: its copies cost memory, not progress (the
 * kernel does not wait for a stale member, and copying is not paced by the
 * member's congestion window), and it carries the data again as soon as it
 * recovers.
 *
 * Retransmissions (get_retrans): the MPTCP-level retransmit head goes out
 * on every active subflow of the class, like new data.
 *
 * One subflow: it is marked alone and sends normally.
 * Subflows coming and going: a subflow entering the set first copies the
 * data in flight (not acked yet); one that disappears is not walked any more.
 */
/* bpfkit:
 * title = "every byte on every active subflow"
 * paper = "Frömmgen et al., ReMP TCP, IEEE ICC 2016"
 * colour = "#d62728"
 * quick_bench = ["lossy-rr"]
 */
#include "sched_common.h"

char LICENSE[] SEC("license") = "GPL";

/* Mark every active subflow of the class in use (backups only when no
 * non-backup subflow is active). */
static __always_inline int redundant_mark(struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	bool backups = sched_use_backups(msk), marked = false;

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
	return redundant_mark(msk);
}

SEC("struct_ops")
int BPF_PROG(redundant_get_retrans, struct mptcp_sock *msk)
{
	/* data is missing at the peer: resend it on every path */
	return redundant_mark(msk);
}

SEC(".struct_ops.link")
struct mptcp_sched_ops redundant = {
	.get_send = (void *)redundant_get_send,
	.get_retrans = (void *)redundant_get_retrans,
	.flags = MPTCP_SCHED_FLAG_REDUNDANT,
	.name = "redundant",
};
