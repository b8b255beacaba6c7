/* Export-style scheduler header, written for bpfkit's compatibility corpus.
 *
 * Schedulers written for mptcp_net-next's `export` branch, and the ones
 * OpenMPTCProuter packages, include a header like this one next to their
 * source (plus vmlinux.h and libbpf's headers) and nothing of bpfkit's.
 * The corpus builds against this file only, with -I tests/bpf/compat/include,
 * so that a dependence on bpfkit's own mptcp_sched.h cannot slip in.
 */
#ifndef COMPAT_MPTCP_BPF_H
#define COMPAT_MPTCP_BPF_H

#include "vmlinux.h"
#include <limits.h>		/* system header: bpfkit build adds clang's search list */
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpf_experimental.h"

#define MPTCP_SUBFLOWS_MAX	8
#define MPTCP_SEND_BURST_SIZE	65428

/* The subflow's TCP socket, read straight from the context as export's
 * helpers do (a walked pointer: fine as a kfunc argument and to read).
 */
static __always_inline struct sock *
mptcp_subflow_tcp_sock(const struct mptcp_subflow_context *subflow)
{
	return subflow->tcp_sock;
}

/* The same through the kfunc: its result is a pointer a sleepable program may
 * pass on (a pointer read from a struct there is untrusted). */
extern struct sock *
bpf_mptcp_subflow_tcp_sock(const struct mptcp_subflow_context *subflow) __ksym;
extern void mptcp_subflow_set_scheduled(struct mptcp_subflow_context *subflow,
					bool scheduled) __ksym;
extern struct mptcp_subflow_context *
bpf_mptcp_subflow_ctx(const struct sock *sk) __ksym;
extern bool mptcp_subflow_active(struct mptcp_subflow_context *subflow) __ksym;
extern void mptcp_set_timeout(struct sock *sk) __ksym;
extern __u64 mptcp_wnd_end(const struct mptcp_sock *msk) __ksym;

#endif
