"""The one loader layer under the three pillars: building BPF objects (build),
libbpf through ctypes (libbpf, libbpf_dist: which libbpf), and the one pin
lifecycle and lock (pins). Knows nothing of MPTCP."""
