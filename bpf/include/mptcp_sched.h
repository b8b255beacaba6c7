/* Helpers for BPF MPTCP packet schedulers (struct mptcp_sched_ops).
 *
 * Needs a kernel with bpfkit's vm/patches/6.12 series (or mptcp_net-next's
 * export branch): the struct_ops type "mptcp_sched_ops" and the kfuncs
 * below.  The prototypes match the kernel's, so a scheduler written for
 * export builds unchanged against this header.
 *
 * A scheduler is a set of callbacks taking only the msk:
 *
 *   SEC("struct_ops")
 *   int BPF_PROG(my_get_send, struct mptcp_sock *msk)
 *   {
 *           struct mptcp_subflow_context *subflow;
 *
 *           bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk) {
 *                   if (!mptcp_subflow_active(subflow))
 *                           continue;
 *                   mptcp_subflow_set_scheduled(subflow, true);
 *                   return 0;
 *           }
 *           return -1;
 *   }
 *
 *   SEC(".struct_ops.link")
 *   struct mptcp_sched_ops my = {
 *           .get_send = (void *)my_get_send,     // required
 *           .name     = "bpf_my",                // net.mptcp.scheduler value
 *   };
 *
 * get_retrans (optional, falls back to get_send), init and release take
 * the same single argument.  Writable fields: msk->snd_burst and
 * subflow->avg_pacing_rate; everything else BTF describes is read-only.
 */
#ifndef BPFKIT_MPTCP_SCHED_H
#define BPFKIT_MPTCP_SCHED_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* mptcp_sched_ops.flags (bpfkit series only, not in export): every subflow
 * get_send() marks carries the same data; the receiver keeps one copy. */
#ifndef MPTCP_SCHED_FLAG_REDUNDANT
#define MPTCP_SCHED_FLAG_REDUNDANT 0x1
#endif

/* include/net/mptcp.h / net/mptcp/protocol.h constants */
#define MPTCP_SCHED_NAME_MAX 16
#define MPTCP_SEND_BURST_SIZE 65428

extern struct mptcp_subflow_context *
bpf_mptcp_subflow_ctx(const struct sock *sk) __ksym;
extern struct sock *
bpf_mptcp_subflow_tcp_sock(const struct mptcp_subflow_context *subflow) __ksym;
extern void mptcp_subflow_set_scheduled(struct mptcp_subflow_context *subflow,
					bool scheduled) __ksym;
extern bool mptcp_subflow_active(struct mptcp_subflow_context *subflow) __ksym;
extern void mptcp_set_timeout(struct sock *sk) __ksym;
extern __u64 mptcp_wnd_end(const struct mptcp_sock *msk) __ksym;
extern bool bpf_sk_stream_memory_free(const struct mptcp_subflow_context *subflow) __ksym;

/* open-coded iterator: bpf_for_each(mptcp_subflow, subflow, (struct sock *)msk).
 * struct bpf_iter_mptcp_subflow comes from vmlinux.h; it is missing (and
 * bpf_for_each fails with "incomplete type") on kernels without the series. */
struct bpf_iter_mptcp_subflow;
extern int bpf_iter_mptcp_subflow_new(struct bpf_iter_mptcp_subflow *it,
				      struct sock *sk) __ksym;
extern struct mptcp_subflow_context *
bpf_iter_mptcp_subflow_next(struct bpf_iter_mptcp_subflow *it) __ksym;
extern void bpf_iter_mptcp_subflow_destroy(struct bpf_iter_mptcp_subflow *it) __ksym;

/* The subflow's TCP socket as a struct tcp_sock (srtt_us, snd_cwnd, ...) */
static __always_inline struct tcp_sock *
mptcp_subflow_tcp(const struct mptcp_subflow_context *subflow)
{
	struct sock *ssk = bpf_mptcp_subflow_tcp_sock(subflow);

	return ssk ? bpf_skc_to_tcp_sock(ssk) : NULL;
}

/* backup (local or requested by the peer) */
static __always_inline bool
mptcp_subflow_is_backup(const struct mptcp_subflow_context *subflow)
{
	return BPF_CORE_READ_BITFIELD(subflow, backup) ||
	       BPF_CORE_READ_BITFIELD(subflow, request_bkup);
}

#endif /* BPFKIT_MPTCP_SCHED_H */
