/* Decision trace for any MPTCP packet scheduler (`bpfkit sched trace`).
 *
 * Every scheduler, the in-kernel default and any BPF struct_ops one (also one
 * bpfkit did not write), is called through mptcp_sched_get_send() and
 * mptcp_sched_get_retrans() (net/mptcp/sched.c, Linux >= 6.7), which return
 * with the chosen subflows' `scheduled` flag set. fentry notes whether a
 * subflow was already scheduled (then the call returns without asking the
 * scheduler, and nothing is reported); fexit reports the decision and what
 * the scheduler saw of each subflow. Nothing is pinned: the links live as
 * long as bpfkit's descriptors, so a killed trace leaves nothing attached. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sched_trace.h"

char LICENSE[] SEC("license") = "GPL";

/* 0: every network namespace; else the inode number of the one to trace. */
const volatile __u32 netns_ino = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Decisions the ring buffer had no room for (the reader fell behind). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct call {
	__u64 start_ns;
	__u8 asked; /* no subflow was scheduled at entry: the scheduler decides */
};

/* Keyed by the msk: a call runs with the msk owned (msk_owned_by_me()), so
 * one per connection at a time, but a softirq's call for another connection
 * can interrupt it on the same CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct call);
} calls SEC(".maps");

static __always_inline bool traced_netns(struct mptcp_sock *msk)
{
	if (!netns_ino)
		return true;
	struct sock *sk = (struct sock *)msk;

	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) == netns_ino;
}

static __always_inline struct list_head *first_node(struct mptcp_sock *msk)
{
	return BPF_CORE_READ(msk, conn_list.next);
}

static __always_inline int on_entry(struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *sf;
	struct list_head *head = &msk->conn_list, *pos;
	struct call call = {.start_ns = bpf_ktime_get_ns(), .asked = 1};
	__u64 key = (__u64)msk;
	int i;

	if (!traced_netns(msk))
		return 0;
	pos = first_node(msk);
	for (i = 0; i < TRACE_MAX_SUBFLOWS * 2; i++) {
		if (pos == head)
			break;
		sf = (void *)pos - bpf_core_field_offset(struct mptcp_subflow_context, node);
		if (BPF_CORE_READ(sf, scheduled)) {
			call.asked = 0;
			break;
		}
		pos = BPF_CORE_READ(pos, next);
	}
	bpf_map_update_elem(&calls, &key, &call, BPF_ANY);
	return 0;
}

static __always_inline void describe(struct sched_decision_subflow *out, struct mptcp_subflow_context *sf)
{
	struct tcp_sock *tp = (void *)BPF_CORE_READ(sf, tcp_sock);

	if (bpf_core_field_exists(sf->subflow_id))
		out->id = BPF_CORE_READ(sf, subflow_id);
	out->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	out->cwnd = BPF_CORE_READ(tp, snd_cwnd);
	out->in_flight = BPF_CORE_READ(tp, packets_out);
	out->queued = BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una);
	out->snd_wnd = BPF_CORE_READ(tp, snd_wnd);
	out->mss = BPF_CORE_READ(tp, mss_cache);
	out->state = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.__sk_common.skc_state);
	out->scheduled = BPF_CORE_READ(sf, scheduled);
	out->backup = BPF_CORE_READ_BITFIELD_PROBED(sf, backup);
	out->stale = BPF_CORE_READ_BITFIELD_PROBED(sf, stale);
}

static __always_inline int on_return(struct mptcp_sock *msk, int ret, __u8 kind)
{
	struct mptcp_subflow_context *sf;
	struct list_head *head = &msk->conn_list, *pos;
	struct sched_decision *ev;
	struct call *call;
	__u64 key = (__u64)msk;
	int i, n = 0;

	call = bpf_map_lookup_elem(&calls, &key);
	if (!call)
		return 0;
	if (!call->asked) {
		bpf_map_delete_elem(&calls, &key);
		return 0;
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		__u32 zero = 0;
		__u64 *count = bpf_map_lookup_elem(&lost, &zero);

		if (count)
			__sync_fetch_and_add(count, 1);
		bpf_map_delete_elem(&calls, &key);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->time_ns = bpf_ktime_get_ns();
	ev->duration_ns = ev->time_ns - call->start_ns;
	bpf_map_delete_elem(&calls, &key);
	ev->token = BPF_CORE_READ(msk, token);
	ev->ret = ret;
	ev->kind = kind;
	bpf_probe_read_kernel_str(ev->sched, sizeof(ev->sched), BPF_CORE_READ(msk, sched, name));
	pos = first_node(msk);
	for (i = 0; i < TRACE_MAX_SUBFLOWS * 2; i++) {
		if (pos == head)
			break;
		sf = (void *)pos - bpf_core_field_offset(struct mptcp_subflow_context, node);
		if (n < TRACE_MAX_SUBFLOWS)
			describe(&ev->subflows[n], sf);
		n++;
		pos = BPF_CORE_READ(pos, next);
	}
	ev->nr_subflows = n;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("fentry/mptcp_sched_get_send")
int BPF_PROG(send_entry, struct mptcp_sock *msk)
{
	return on_entry(msk);
}

SEC("fexit/mptcp_sched_get_send")
int BPF_PROG(send_return, struct mptcp_sock *msk, int ret)
{
	return on_return(msk, ret, TRACE_GET_SEND);
}

SEC("fentry/mptcp_sched_get_retrans")
int BPF_PROG(retrans_entry, struct mptcp_sock *msk)
{
	return on_entry(msk);
}

SEC("fexit/mptcp_sched_get_retrans")
int BPF_PROG(retrans_return, struct mptcp_sock *msk, int ret)
{
	return on_return(msk, ret, TRACE_GET_RETRANS);
}
