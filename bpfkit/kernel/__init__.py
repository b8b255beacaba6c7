"""Kernels and VMs: building the VM kernel (kbuild, kconfig) and running a command
in a guest (vm). Knows nothing of MPTCP or BPF."""
