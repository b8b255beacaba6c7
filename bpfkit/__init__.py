"""bpfkit: a development kit for Linux MPTCP + eBPF."""

__version__ = "0.1.0"
