/* Test program: does not compile (undeclared identifier on line 10). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("sockops")
int broken(struct bpf_sock_ops *skops)
{
	return no_such_variable;
}
