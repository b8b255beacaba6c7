/* Test program: records what an MPTCP subflow's socket holds when it leaves
 * ESTABLISHED (i.e. after the kernel and bpfkit's policy are done with it),
 * read straight from the kernel structures. It checks the options sock_diag
 * cannot show (TCP_NOTSENT_LOWAT) and cross-checks those it can. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct subflow_key {
	__u16 local_port; /* host byte order */
	__u16 remote_port;
};

struct subflow_seen {
	__u32 mark;
	__u32 priority;
	__u32 notsent_lowat;
	__u32 tos;
	__u64 max_pacing_rate;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct subflow_key);
	__type(value, struct subflow_seen);
} seen SEC(".maps");

SEC("sockops")
int subflow_probe(struct bpf_sock_ops *skops)
{
	struct subflow_key key = {};
	struct subflow_seen value = {};
	struct bpf_sock *bsk = skops->sk; /* read once: each read of skops->sk is a new maybe-NULL */
	struct tcp_sock *tp;
	struct sock *sk;

	if (!bsk || !bpf_skc_to_mptcp_sock(bsk))
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[0] != BPF_TCP_ESTABLISHED)
			return 1;
		break;
	default:
		return 1;
	}
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	sk = &tp->inet_conn.icsk_inet.sk;
	key.local_port = skops->local_port;
	key.remote_port = bpf_ntohl(skops->remote_port);
	value.mark = sk->sk_mark;
	value.priority = sk->sk_priority;
	value.notsent_lowat = tp->notsent_lowat;
	value.tos = tp->inet_conn.icsk_inet.tos;
	value.max_pacing_rate = sk->sk_max_pacing_rate;
	bpf_map_update_elem(&seen, &key, &value, BPF_ANY);
	return 1;
}
