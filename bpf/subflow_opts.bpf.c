/* Per-subflow socket options from a policy (`bpfkit subflow apply`).
 *
 * A cgroup sockops program. For every MPTCP subflow of a socket in the cgroup
 * it classifies the subflow once, when its options can still shape it:
 *   - active side (we sent the SYN): at TCP_CONNECT_CB, before the SYN leaves,
 *     so a SO_MARK set here already routes the SYN (bpf_setsockopt resets the
 *     cached route). Joins are opened by a kernel worker, but they inherit the
 *     MPTCP socket's cgroup, so they come through here too.
 *   - passive side (we accepted): at PASSIVE_ESTABLISHED_CB. Only sockets whose
 *     *listener* is in the cgroup are seen. A join the kernel completes only
 *     after that callback gets its rule again at its next packet
 *     (PARSE_HDR_OPT_CB, see subflow_opts()).
 * then walks the policy's rules in order and applies the actions of the first
 * rule that matches. Plain TCP sockets are left alone.
 *
 * The policy lives in maps that userspace fills (bpfkit/subflow.py mirrors the
 * layouts below byte for byte; change both together):
 *   rules       2 halves of SUBFLOW_MAX_RULES rules: the program reads the
 *               active half while `apply` writes the other, then flips.
 *   policy      which half is active and how many rules each half holds.
 *   rule_stats  per rule slot (same indexing as `rules`): applied / failed.
 *   totals      per half: subflows seen, no rule matched, late joins re-applied.
 *   policy_info per half: JSON text userspace stores for `show` (unused here).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfkit.h"

char LICENSE[] SEC("license") = "GPL";

#define SUBFLOW_MAX_RULES 32
#define SUBFLOW_MAX_PREFIXES 16
#define SUBFLOW_MAX_PORTS 8
#define SUBFLOW_INFO_SIZE 65536

/* Which match fields a rule uses (unused fields match anything). */
#define MATCH_ROLE (1 << 0)
#define MATCH_SIDE (1 << 1)
#define MATCH_LOCAL_ADDR (1 << 2)
#define MATCH_REMOTE_PORT (1 << 3)
#define MATCH_LOCAL_PORT (1 << 4)
#define MATCH_BACKUP (1 << 5)

/* Which actions a rule sets. */
#define SET_MARK (1 << 0)
#define SET_PRIORITY (1 << 1)
#define SET_CONGESTION (1 << 2)
#define SET_MAX_PACING_RATE (1 << 3)
#define SET_TOS (1 << 4)
#define SET_NOTSENT_LOWAT (1 << 5)

#define ROLE_INITIAL 1
#define ROLE_JOIN 2
#define SIDE_ACTIVE 1
#define SIDE_PASSIVE 2

/* An address or prefix: the subflow's local address matches when
 * (local & mask) == addr, word by word. Both are in network byte order;
 * IPv4 uses word 0 only (words 1-3 are zero in addr, mask and the subflow's
 * address alike). */
struct subflow_prefix {
	__u8 family; /* AF_INET or AF_INET6 */
	__u8 pad[3];
	__u32 addr[4];
	__u32 mask[4];
};

struct subflow_rule {
	__u32 match; /* MATCH_* */
	__u32 actions; /* SET_* */
	__u8 role; /* ROLE_* */
	__u8 side; /* SIDE_* */
	__u8 backup; /* 0 or 1 */
	__u8 nr_prefixes;
	__u8 nr_remote_ports;
	__u8 nr_local_ports;
	__u8 pad[2];
	__u16 remote_ports[SUBFLOW_MAX_PORTS]; /* host byte order */
	__u16 local_ports[SUBFLOW_MAX_PORTS];
	struct subflow_prefix prefixes[SUBFLOW_MAX_PREFIXES];
	__u32 mark;
	__u32 priority;
	__u32 max_pacing_rate; /* bytes per second */
	__u32 tos; /* IP_TOS on IPv4 subflows, IPV6_TCLASS on IPv6 ones */
	__u32 notsent_lowat;
	char congestion[TCP_CA_NAME_MAX]; /* NUL-terminated */
};

struct subflow_policy {
	__u32 active; /* the half of `rules` in use: 0 or 1 */
	__u32 nr_rules[2];
};

struct subflow_rule_stats {
	__u64 applied; /* subflows the rule matched and all its actions took */
	__u64 failed; /* subflows the rule matched where an action failed */
	__s32 last_error; /* bpf_setsockopt's return of the last failure */
	__u32 last_failed; /* SET_* bit of that failure */
};

struct subflow_totals {
	__u64 seen; /* MPTCP subflows classified */
	__u64 unmatched; /* ... of which no rule matched */
	__u64 reapplied; /* passive joins completed late, their rule applied again */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SUBFLOW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct subflow_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct subflow_policy);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SUBFLOW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct subflow_rule_stats);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct subflow_totals);
} totals SEC(".maps");

struct policy_info_text {
	char text[SUBFLOW_INFO_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct policy_info_text);
} policy_info SEC(".maps");

/* What a subflow looks like to the rules. */
struct subflow_facts {
	__u8 role;
	__u8 side;
	__u8 backup;
	__u8 family;
	__u16 local_port;
	__u16 remote_port;
	__u32 local[4]; /* network byte order; IPv4 in word 0 */
	bool join_pending; /* a passive join the kernel has not completed yet */
};

/* One load the compiler may neither repeat nor tear. */
#define READ_ONCE(x) (*(const volatile typeof(x) *)&(x))

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* subflow_id is newer than Debian's 6.1 (it is in 6.12): a CO-RE flavour of the
 * context declares it, so the object builds against any vmlinux.h and, where the
 * field is missing, bpf_core_field_exists() is false at load time. */
struct mptcp_subflow_context___with_id {
	__u32 subflow_id;
} __attribute__((preserve_access_index));

static __always_inline bool is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* Fill facts; false if this is not an MPTCP subflow. */
static __always_inline bool classify(struct bpf_sock_ops *skops, __u8 side, struct subflow_facts *f)
{
	struct mptcp_subflow_context *subflow;
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;

	if (!sk || !bpf_skc_to_mptcp_sock(sk))
		return false;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return false;
	/* The subflow context hangs off the TCP socket's ULP data; it is a
	 * kernel-private type, so read it through an untrusted (read-only)
	 * cast, which the verifier turns into faulting-safe loads. */
	subflow = bpf_rdonly_cast(tp->inet_conn.icsk_ulp_data,
				  bpf_core_type_id_kernel(struct mptcp_subflow_context));
	if (!subflow)
		return false;

	/* request_join: our side sent MP_JOIN (active join, set before the
	 * SYN); mp_join: the join handshake was accepted (passive joins by
	 * PASSIVE_ESTABLISHED). The first subflow has neither. */
	if (BPF_CORE_READ_BITFIELD(subflow, request_join) || BPF_CORE_READ_BITFIELD(subflow, mp_join))
		f->role = ROLE_JOIN;
	else
		f->role = ROLE_INITIAL;
	/* request_bkup: this side's endpoint has the backup flag; backup: the
	 * peer asked for backup (known on the passive side at this point). */
	f->backup = BPF_CORE_READ_BITFIELD(subflow, request_bkup) || BPF_CORE_READ_BITFIELD(subflow, backup);
	/* __mptcp_finish_join() numbers a passive join (ids start at 1). Without
	 * the field, a late completion is not watched (README: kernels). */
	f->join_pending = false;
	if (side == SIDE_PASSIVE && f->role == ROLE_JOIN &&
	    bpf_core_field_exists(struct mptcp_subflow_context___with_id, subflow_id))
		f->join_pending = ((struct mptcp_subflow_context___with_id *)subflow)->subflow_id == 0;
	f->side = side;
	f->local_port = skops->local_port; /* host byte order */
	f->remote_port = bpf_ntohl(skops->remote_port); /* network order in the upper 16 bits */

	f->local[1] = f->local[2] = f->local[3] = 0;
	if (skops->family == AF_INET) {
		f->family = AF_INET;
		f->local[0] = skops->local_ip4;
	} else if (skops->family == AF_INET6) {
		f->local[0] = skops->local_ip6[0];
		f->local[1] = skops->local_ip6[1];
		f->local[2] = skops->local_ip6[2];
		f->local[3] = skops->local_ip6[3];
		f->family = AF_INET6;
		if (is_v4_mapped(f->local)) {
			/* An IPv4 peer on an IPv6 socket: match it as IPv4. */
			f->family = AF_INET;
			f->local[0] = f->local[3];
			f->local[2] = f->local[3] = 0;
		}
	} else {
		return false;
	}
	return true;
}

static __always_inline bool port_in(const __u16 *ports, __u8 n, __u16 port)
{
	for (int i = 0; i < SUBFLOW_MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline bool prefix_matches(const struct subflow_prefix *p, const struct subflow_facts *f)
{
	return p->family == f->family &&
	       (f->local[0] & p->mask[0]) == p->addr[0] && (f->local[1] & p->mask[1]) == p->addr[1] &&
	       (f->local[2] & p->mask[2]) == p->addr[2] && (f->local[3] & p->mask[3]) == p->addr[3];
}

/* Global (not static) subprograms are verified once on their own instead of
 * at every iteration of the caller's rule loop: this keeps verification
 * small. Their pointer arguments may be NULL as far as the verifier knows. */
__noinline int rule_matches(const struct subflow_rule *r, const struct subflow_facts *f)
{
	if (!r || !f)
		return false;
	if ((r->match & MATCH_ROLE) && r->role != f->role)
		return false;
	if ((r->match & MATCH_SIDE) && r->side != f->side)
		return false;
	if ((r->match & MATCH_BACKUP) && r->backup != f->backup)
		return false;
	if ((r->match & MATCH_REMOTE_PORT) && !port_in(r->remote_ports, r->nr_remote_ports, f->remote_port))
		return false;
	if ((r->match & MATCH_LOCAL_PORT) && !port_in(r->local_ports, r->nr_local_ports, f->local_port))
		return false;
	if (r->match & MATCH_LOCAL_ADDR) {
		/* An interface without addresses leaves nr_prefixes at 0: such a
		 * rule matches nothing until `apply` runs again. */
		for (int i = 0; i < SUBFLOW_MAX_PREFIXES; i++) {
			if (i >= r->nr_prefixes)
				return false;
			if (prefix_matches(&r->prefixes[i], f))
				return true;
		}
		return false;
	}
	return true;
}

static __always_inline int set_int(struct bpf_sock_ops *skops, int level, int optname, __u32 value)
{
	int v = (int)value;

	/* SOL_SOCKET options take exactly sizeof(int) from BPF (a u64 pacing
	 * rate is -EINVAL). */
	return bpf_setsockopt(skops, level, optname, &v, sizeof(v));
}

/* Apply the rule's actions; returns 0 or the first failure (and which). */
__noinline int apply_rule(struct bpf_sock_ops *skops, const struct subflow_rule *r, __u8 family,
			  __u32 *failed_action)
{
	char cc[TCP_CA_NAME_MAX];
	int err = 0, ret;

	if (!r || !failed_action)
		return 0;
	/* IP_TOS first: on IPv4 it also sets sk_priority from the TOS bits
	 * (rt_tos2priority), which an explicit priority must override. */
	if (r->actions & SET_TOS) {
		if (family == AF_INET6)
			ret = set_int(skops, SOL_IPV6, IPV6_TCLASS, r->tos);
		else
			ret = set_int(skops, SOL_IP, IP_TOS, r->tos);
		if (ret && !err) {
			err = ret;
			*failed_action = SET_TOS;
		}
	}
	if (r->actions & SET_PRIORITY) {
		ret = set_int(skops, SOL_SOCKET, SO_PRIORITY, r->priority);
		if (ret && !err) {
			err = ret;
			*failed_action = SET_PRIORITY;
		}
	}
	if (r->actions & SET_MARK) {
		ret = set_int(skops, SOL_SOCKET, SO_MARK, r->mark);
		if (ret && !err) {
			err = ret;
			*failed_action = SET_MARK;
		}
	}
	if (r->actions & SET_CONGESTION) {
		__builtin_memcpy(cc, r->congestion, sizeof(cc));
		cc[TCP_CA_NAME_MAX - 1] = 0;
		ret = bpf_setsockopt(skops, SOL_TCP, TCP_CONGESTION, cc, sizeof(cc));
		if (ret && !err) {
			err = ret;
			*failed_action = SET_CONGESTION;
		}
	}
	if (r->actions & SET_MAX_PACING_RATE) {
		ret = set_int(skops, SOL_SOCKET, SO_MAX_PACING_RATE, r->max_pacing_rate);
		if (ret && !err) {
			err = ret;
			*failed_action = SET_MAX_PACING_RATE;
		}
	}
	if (r->actions & SET_NOTSENT_LOWAT) {
		ret = set_int(skops, SOL_TCP, TCP_NOTSENT_LOWAT, r->notsent_lowat);
		if (ret && !err) {
			err = ret;
			*failed_action = SET_NOTSENT_LOWAT;
		}
	}
	return err;
}

/* Find the first matching rule of the active half and apply it. `late`: a
 * re-application to a passive join the kernel completed after
 * PASSIVE_ESTABLISHED (see below): counted in totals.reapplied, not again as
 * an application; its failures are counted. */
static __always_inline void match_and_apply(struct bpf_sock_ops *skops, struct subflow_facts *facts, bool late)
{
	struct subflow_rule_stats *stats;
	struct subflow_totals *total;
	struct subflow_policy *pol;
	struct subflow_rule *rule;
	__u32 zero = 0, half, n, slot, failed_action = 0;
	int err;

	pol = bpf_map_lookup_elem(&policy, &zero);
	if (!pol)
		return;
	/* One read of `active` decides the half for this whole subflow, so a
	 * concurrent `apply` (which only ever writes the other half before
	 * flipping) cannot mix old and new rules here. */
	half = READ_ONCE(pol->active) & 1;
	n = half ? pol->nr_rules[1] : pol->nr_rules[0];

	total = bpf_map_lookup_elem(&totals, &half);
	if (total && !late)
		__sync_fetch_and_add(&total->seen, 1);

	for (__u32 i = 0; i < SUBFLOW_MAX_RULES; i++) {
		if (i >= n)
			break;
		slot = half * SUBFLOW_MAX_RULES + i;
		rule = bpf_map_lookup_elem(&rules, &slot);
		if (!rule)
			break;
		if (!rule_matches(rule, facts))
			continue;

		err = apply_rule(skops, rule, facts->family, &failed_action);
		stats = bpf_map_lookup_elem(&rule_stats, &slot);
		if (stats) {
			if (err) {
				__sync_fetch_and_add(&stats->failed, 1);
				stats->last_error = err;
				stats->last_failed = failed_action;
			} else if (!late) {
				__sync_fetch_and_add(&stats->applied, 1);
			}
		}
		if (total && late)
			__sync_fetch_and_add(&total->reapplied, 1);
		return; /* first matching rule wins */
	}
	if (total && !late)
		__sync_fetch_and_add(&total->unmatched, 1);
}

SEC("sockops")
int subflow_opts(struct bpf_sock_ops *skops)
{
	struct subflow_facts facts = {};

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (classify(skops, SIDE_ACTIVE, &facts))
			match_and_apply(skops, &facts, false);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (!classify(skops, SIDE_PASSIVE, &facts))
			return 1;
		match_and_apply(skops, &facts, false);
		/* A passive join is completed by __mptcp_finish_join(), which
		 * copies the MPTCP socket's options into it (if the application
		 * changed any) and resets its notsent_lowat. Normally that ran
		 * already; but when the application held the MPTCP socket at
		 * that moment, the kernel defers it to when the application
		 * lets go, i.e. after this callback (subflow_id is still 0
		 * until then). Watch the subflow's next packets for it. */
		if (facts.join_pending)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						  BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		if (!classify(skops, SIDE_PASSIVE, &facts) || facts.role != ROLE_JOIN || facts.join_pending)
			return 1;
		/* The late completion happened: apply the rule again, once. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags &
					  ~BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
		match_and_apply(skops, &facts, true);
		return 1;
	}
	return 1;
}
