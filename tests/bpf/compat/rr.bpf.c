/* Compat corpus, export style: round robin, the last subflow used kept in
 * socket storage of the msk. */
#include "mptcp_bpf.h"

char _license[] SEC("license") = "GPL";

struct rr_last {
	struct sock *ssk;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rr_last);
} rr_map SEC(".maps");

SEC("struct_ops")
void BPF_PROG(rr_init, struct mptcp_sock *msk)
{
	bpf_sk_storage_get(&rr_map, msk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

SEC("struct_ops")
void BPF_PROG(rr_release, struct mptcp_sock *msk)
{
	bpf_sk_storage_delete(&rr_map, msk);
}

SEC("struct_ops")
int BPF_PROG(rr_get_send, struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow, *next = NULL, *head = NULL;
	struct rr_last *last;
	bool after_last = false;

	last = bpf_sk_storage_get(&rr_map, msk, 0, 0);
	if (!last)
		return -1;

	/* the subflow after the last one used, wrapping to the first */
	bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
		if (!head)
			head = subflow;
		if (after_last) {
			next = subflow;
			break;
		}
		if (mptcp_subflow_tcp_sock(subflow) == last->ssk)
			after_last = true;
	}
	if (!next)
		next = head;
	if (!next)
		return -1;
	mptcp_subflow_set_scheduled(next, true);
	last->ssk = mptcp_subflow_tcp_sock(next);
	return 0;
}

SEC(".struct_ops.link")
struct mptcp_sched_ops rr = {
	.init		= (void *)rr_init,
	.release	= (void *)rr_release,
	.get_send	= (void *)rr_get_send,
	.name		= "compat_rr",
};
