/* Compat corpus, OMR style weighted round robin: three turns on subflow 1
 * for every turn on each other subflow.  Written for the older iterator
 * form, which takes the msk as a struct mptcp_sock *. */
#define COMPAT_ITER_MSK
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

struct wrr_state {
	__u32 id;	/* subflow_id of the subflow in turn */
	__u32 used;	/* turns it had */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct wrr_state);
} wrr_map SEC(".maps");

static __always_inline __u32 weight_of(__u32 subflow_id)
{
	return subflow_id == 1 ? 3 : 1;
}

SEC("struct_ops")
int BPF_PROG(wrr_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *current = NULL, *next = NULL, *head = NULL;
	struct wrr_state *st;
	bool passed = false;

	st = bpf_sk_storage_get(&wrr_map, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return -1;

	bpf_for_each(mptcp_subflow, subflow, msk) {
		if (!mptcp_subflow_active(subflow))
			continue;
		if (!head)
			head = subflow;
		if (passed && !next)
			next = subflow;
		if (subflow->subflow_id == st->id) {
			current = subflow;
			passed = true;
		}
	}
	if (current && st->used < weight_of(st->id)) {
		st->used++;
	} else {
		current = next ?: head;
		if (!current)
			return -1;
		st->id = current->subflow_id;
		st->used = 1;
	}
	mptcp_subflow_set_scheduled(current, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops weighted = {
	.get_send	= (void *)wrr_get_send,
	.name		= "compat_wrr",
};
