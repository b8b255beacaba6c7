"""The per-subflow options pillar: a policy file's rules set socket options on
each MPTCP subflow of a cgroup's connections.

policy.py   the policy file: parse, resolve (addresses, interfaces, congestion
            controls), encode into the map layouts of bpf/subflow_opts.bpf.c
sockops.py  the cgroup sock_ops program that applies it: apply (atomic swap of
            the rule set), show, clear"""
