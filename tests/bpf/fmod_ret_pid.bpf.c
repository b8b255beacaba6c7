/* Test program: turns TCP stream sockets of one process into MPTCP through
 * fmod_ret on update_socket_protocol (the mainline hook, Linux >= 6.6). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "bpfkit.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

SEC("fmod_ret/update_socket_protocol")
int BPF_PROG(rewrite_for_pid, int family, int type, int protocol)
{
	if (bpf_get_current_pid_tgid() >> 32 != target_tgid)
		return protocol;
	if ((family == AF_INET || family == AF_INET6) && (type & SOCK_TYPE_MASK) == SOCK_STREAM &&
	    (!protocol || protocol == IPPROTO_TCP))
		return IPPROTO_MPTCP;
	return protocol;
}
