/* Export-style kfunc declarations for the corpus: weak, as the BPF
 * selftests' bpf_experimental.h declares the open-coded iterators, so an
 * object still opens on a kernel that lacks one of them.
 */
#ifndef COMPAT_BPF_EXPERIMENTAL_H
#define COMPAT_BPF_EXPERIMENTAL_H

struct bpf_iter_mptcp_subflow;

/* The newest export passes the msk as a struct sock *; a program written for
 * the older form declares it with struct mptcp_sock * (COMPAT_ITER_MSK).
 */
#ifdef COMPAT_ITER_MSK
extern int bpf_iter_mptcp_subflow_new(struct bpf_iter_mptcp_subflow *it,
				      struct mptcp_sock *msk) __weak __ksym;
#else
extern int bpf_iter_mptcp_subflow_new(struct bpf_iter_mptcp_subflow *it,
				      struct sock *sk) __weak __ksym;
#endif
extern struct mptcp_subflow_context *
bpf_iter_mptcp_subflow_next(struct bpf_iter_mptcp_subflow *it) __weak __ksym;
extern void
bpf_iter_mptcp_subflow_destroy(struct bpf_iter_mptcp_subflow *it) __weak __ksym;

#endif
