/* Test scheduler: round robin over the active subflows with room in
 * their send buffer.  Per-connection state (the id of the subflow used
 * last) lives in sk_storage on the msk. */
#include "mptcp_sched.h"

char LICENSE[] SEC("license") = "GPL";

struct rr_state {
	__u32 last_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rr_state);
} rr_state SEC(".maps");

SEC("struct_ops")
void BPF_PROG(rr_init, struct mptcp_sock *msk)
{
	bpf_sk_storage_get(&rr_state, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

SEC("struct_ops")
void BPF_PROG(rr_release, struct mptcp_sock *msk)
{
	bpf_sk_storage_delete(&rr_state, msk);
}

SEC("struct_ops")
int BPF_PROG(rr_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *next = NULL, *lowest = NULL;
	struct rr_state *st;
	__u32 last = 0;

	/* MPTCP-level RTO from the subflows' timers, as the default scheduler
	 * does (bpfkit's kernel does it for every scheduler, vm/patches 0008;
	 * on export, without it, the rtx timer fires every tick after idling) */
	mptcp_set_timeout((struct sock *)msk);

	st = bpf_sk_storage_get(&rr_state, msk, 0, 0);
	if (st)
		last = st->last_id;

	/* the usable subflow with the smallest id above the last one used,
	 * else (wrap around) the usable one with the smallest id */
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		__u32 id = subflow->subflow_id;

		if (!mptcp_subflow_active(subflow) || !bpf_sk_stream_memory_free(subflow))
			continue;
		if (!lowest || id < lowest->subflow_id)
			lowest = subflow;
		if (id > last && (!next || id < next->subflow_id))
			next = subflow;
	}
	if (!next)
		next = lowest;
	if (!next)
		return -1;

	if (st)
		st->last_id = next->subflow_id;
	mptcp_subflow_set_scheduled(next, true);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops rr = {
	.init = (void *)rr_init,
	.release = (void *)rr_release,
	.get_send = (void *)rr_get_send,
	.name = "bpf_rr",
};

SEC(".struct_ops")
struct mptcp_sched_ops rr_nl = {
	.init = (void *)rr_init,
	.release = (void *)rr_release,
	.get_send = (void *)rr_get_send,
	.name = "bpf_rr_nl",
};
