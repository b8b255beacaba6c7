/* Feature probes for `bpfkit doctor`: each program is loaded on its own
 * (the others' autoload switched off) to learn whether the running kernel
 * accepts that program type at that hook. They do nothing when run. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

/* Pillar 1 (TCP→MPTCP rewrite) needs fmod_ret on this hook (Linux >= 6.6). */
SEC("fmod_ret/update_socket_protocol")
int BPF_PROG(probe_fmod_ret, int family, int type, int protocol)
{
	return protocol;
}

/* Pillar 2 (per-subflow options) needs cgroup sockops. */
SEC("sockops")
int probe_sockops(struct bpf_sock_ops *skops)
{
	return 1;
}
