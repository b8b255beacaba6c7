/* mptcpify: turn TCP stream sockets into MPTCP, only for tasks inside selected
 * cgroups (and their descendants).
 *
 * The hook (fmod_ret on update_socket_protocol, Linux >= 6.6) is global: every
 * socket(2) on the machine passes through this program, so all scoping is done
 * here. socket(2) runs in the caller's task, so "the current task's cgroup" is
 * the cgroup of the process creating the socket.
 *
 * Scoping: the current task's cgroup v2 ancestors, from level 1 (just below the
 * root) down to its own cgroup, are looked up in `selected_cgroups`; the deepest
 * selected one decides (its family filter and exclusions apply, its counter is
 * bumped). We walk ids with bpf_get_current_ancestor_cgroup_id() rather than
 * bpf_current_task_under_cgroup(): the latter tests one cgroup of a
 * CGROUP_ARRAY per call, so N selected cgroups cost N checks per socket() and
 * array slots would need managing; the walk costs one hash lookup per level
 * whatever the number of selected cgroups, the key is the plain cgroup id (no
 * fd, no reference held on the cgroup) and the per-cgroup counter lives in the
 * value. Both helpers are available to tracing programs on 6.12.
 *
 * Everything is in maps, so adding or removing a cgroup needs no reload.
 *
 * Network namespaces: a selected cgroup's processes may create sockets in any
 * netns (containers). Where net.mptcp.enabled = 0, an MPTCP socket() fails
 * with ENOPROTOOPT (mptcp_init_sock), so rewriting there would break every TCP
 * client. The program reads the flag of the socket's netns (the caller's, as
 * socket(2) uses current->nsproxy->net_ns) at each socket() and leaves the
 * socket TCP where it is 0, so turning MPTCP off after attaching is honoured
 * at once. See mptcp_enabled_here() for how the flag is found.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfkit.h"

char LICENSE[] SEC("license") = "GPL";

/* Levels below the root walked per socket(); userspace refuses to select a
 * cgroup deeper than this (it could never match). Keep in sync with
 * bpfkit/mptcpize.py MAX_CGROUP_DEPTH. */
#define MAX_CGROUP_DEPTH 32

#define FAMILY_INET (1 << 0)
#define FAMILY_INET6 (1 << 1)

struct selected_cgroup {
	__u64 rewrites;   /* sockets turned into MPTCP; bumped atomically */
	__u32 families;   /* FAMILY_INET | FAMILY_INET6: which socket families to rewrite */
	__u32 exclusions; /* entries in excluded_comms for this cgroup (0: skip that lookup) */
	__u64 left_tcp;   /* sockets left TCP: MPTCP disabled in their netns; bumped atomically */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* cgroup v2 id (inode number of its directory) */
	__type(value, struct selected_cgroup);
} selected_cgroups SEC(".maps");

struct exclusion_key {
	__u64 cgroup_id;            /* the selected cgroup the exclusion belongs to */
	char comm[BPFKIT_COMM_LEN]; /* executable name, NUL-padded */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exclusion_key);
	__type(value, __u8);
} excluded_comms SEC(".maps");

static __always_inline bool excluded(__u64 cgroup_id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exclusion_key key = { .cgroup_id = cgroup_id };

	/* The process's main thread name: the executable's name unless the
	 * program renamed itself. The calling thread's own comm
	 * (bpf_get_current_comm) would miss threads that name themselves
	 * (Java, Firefox, CPython >= 3.14 threading). */
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	return bpf_map_lookup_elem(&excluded_comms, &key) != NULL;
}

/* The kernel keeps net.mptcp.enabled in struct mptcp_pernet, reached as
 * net->gen->ptr[mptcp_pernet_id] (net_generic(); net/mptcp/ctrl.c). The id is a
 * static variable: not in BTF, and in /proc/kallsyms only with
 * CONFIG_KALLSYMS_ALL (off on this project's 6.18 host). It is the same in every
 * netns, so it is found once, by a signature that only the MPTCP entry has: its
 * first field is its sysctl table's header, and that table's first entry
 * ("enabled", since v5.6) points at the entry's own mptcp_enabled byte. The
 * struct is in every MPTCP kernel's BTF (CONFIG_MPTCP is built-in only); the
 * ___bpfkit flavour names just the two fields read, relocated by CO-RE. */
struct mptcp_pernet___bpfkit {
	struct ctl_table_header *ctl_table_hdr;
	__u8 mptcp_enabled;
} __attribute__((preserve_access_index));

/* net_generic's first slots hold its length and an rcu_head, not ids
 * (MIN_PERNET_OPS_ID); ids are registration order, and MPTCP registers at
 * boot from inet_init(), so it is among the first few dozen. */
#define PERNET_ID_FIRST ((sizeof(struct net_generic) + sizeof(void *) - 1) / sizeof(void *))
#define PERNET_ID_SCAN 128

__u32 mptcp_pernet_id; /* 0 until found; the same for every netns */

static __always_inline void *pernet_at(struct net_generic *gen, __u32 id)
{
	void *entry = NULL;

	bpf_probe_read_kernel(&entry, sizeof(entry), &gen->ptr[id]);
	return entry;
}

static __always_inline bool is_mptcp_pernet(struct mptcp_pernet___bpfkit *pernet)
{
	const struct ctl_table *table;

	if (!pernet)
		return false;
	table = BPF_CORE_READ(pernet, ctl_table_hdr, ctl_table);
	return table && BPF_CORE_READ(table, data) == (void *)&pernet->mptcp_enabled;
}

/* 1 if MPTCP is enabled in the calling task's netns, 0 if not, -1 if the flag
 * cannot be found (then the rewrite goes ahead, as before this check). */
static __always_inline int mptcp_enabled_here(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct net_generic *gen = BPF_CORE_READ(task, nsproxy, net_ns, gen);
	struct mptcp_pernet___bpfkit *pernet;
	__u32 id = mptcp_pernet_id, len, i;

	if (!gen)
		return -1;
	len = BPF_CORE_READ(gen, s.len);
	if (!id) {
		for (i = PERNET_ID_FIRST; i < PERNET_ID_SCAN && i < len; i++) {
			if (is_mptcp_pernet(pernet_at(gen, i))) {
				id = i;
				mptcp_pernet_id = i;
				break;
			}
		}
		if (!id)
			return -1;
	}
	if (id >= len)
		return -1;
	pernet = pernet_at(gen, id);
	if (!pernet)
		return -1;
	return BPF_CORE_READ(pernet, mptcp_enabled) != 0;
}

SEC("fmod_ret/update_socket_protocol")
int BPF_PROG(mptcpify, int family, int type, int protocol)
{
	struct selected_cgroup *selected = NULL, *found;
	__u64 selected_id = 0, id;
	__u32 family_bit;
	int level;

	/* type still carries SOCK_NONBLOCK / SOCK_CLOEXEC here. */
	if ((type & SOCK_TYPE_MASK) != SOCK_STREAM || (protocol != 0 && protocol != IPPROTO_TCP))
		return protocol;
	if (family == AF_INET)
		family_bit = FAMILY_INET;
	else if (family == AF_INET6)
		family_bit = FAMILY_INET6;
	else
		return protocol;

	for (level = 1; level <= MAX_CGROUP_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id) /* below the task's own cgroup */
			break;
		found = bpf_map_lookup_elem(&selected_cgroups, &id);
		if (found) {
			selected = found;
			selected_id = id;
		}
	}
	if (!selected || !(selected->families & family_bit))
		return protocol;
	if (selected->exclusions && excluded(selected_id))
		return protocol;
	if (mptcp_enabled_here() == 0) {
		__sync_fetch_and_add(&selected->left_tcp, 1);
		return protocol;
	}

	__sync_fetch_and_add(&selected->rewrites, 1);
	return IPPROTO_MPTCP;
}
