/* Test program: compiles, but the verifier must reject it: the map value
 * pointer is dereferenced without the NULL check (line 21). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} values SEC(".maps");

SEC("sockops")
int rejected(struct bpf_sock_ops *skops)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&values, &key);

	*value += 1;
	return 1;
}
