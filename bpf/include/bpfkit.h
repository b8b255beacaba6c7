/* Common definitions for bpfkit's BPF programs.
 *
 * vmlinux.h carries types but no macros (BTF has no #defines), so the
 * constants BPF programs compare against live here.
 */
#ifndef BPFKIT_H
#define BPFKIT_H

#define AF_INET 2
#define AF_INET6 10

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
/* socket(2)'s type carries SOCK_NONBLOCK/SOCK_CLOEXEC in its high bits. */
#define SOCK_TYPE_MASK 0xf

#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262

#define SOL_SOCKET 1
#define SOL_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41

#define SO_PRIORITY 12
#define SO_MARK 36
#define SO_MAX_PACING_RATE 47
#define TCP_CONGESTION 13
#define TCP_NOTSENT_LOWAT 25
#define IP_TOS 1
#define IPV6_TCLASS 67

#define TCP_CA_NAME_MAX 16
/* task->comm size (TASK_COMM_LEN; an enum in vmlinux.h only on some kernels). */
#define BPFKIT_COMM_LEN 16

#endif
