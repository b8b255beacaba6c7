"""The network lab: build multi-path topologies, drive verified MPTCP traffic,
measure per subflow, report.

    scenario.py   TOML scenario → validated dataclasses (format: scenarios/README.md)
    topology.py   client/router/server namespaces, shaped veth paths, MPTCP endpoints (pyroute2)
    traffic.py    our MPTCP sender/receiver, run inside the namespaces; verifies every byte
    metrics.py    MPTCP_FULL_INFO sampler, MPTcpExt counters, rate maths
    runner.py     one run per scheduler × repetition → results document (results.json)
    report.py     results document → report.md and PNG plots

The lab knows nothing of BPF: a scheduler is only a name written to the
per-namespace sysctl net.mptcp.scheduler, checked against
net.mptcp.available_schedulers before any traffic. Whoever loads BPF schedulers
does so before calling the lab.
"""
