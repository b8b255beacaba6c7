/* Test program: counts sockops callbacks for connections to one port. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* Read-only config, set by the loader before load. */
const volatile __u32 watch_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} op_counts SEC(".maps");

SEC("sockops")
int count_ops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	__u64 *count;

	/* remote_port is in network byte order in the upper 16 bits. */
	if (bpf_ntohl(skops->remote_port) != watch_port && skops->local_port != watch_port)
		return 1;
	count = bpf_map_lookup_elem(&op_counts, &op);
	if (count)
		__sync_fetch_and_add(count, 1);
	return 1;
}
