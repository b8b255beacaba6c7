"""bpfkit's pytest plugin (registered as the `pytest11` entry point `bpfkit`, so
any project with bpfkit installed gets it).

Fixture `lab_topology`: a factory that builds a ready lab network from a
scenario dict (the same keys as a scenario file; only `paths` is needed) and
tears it down after the test, whether it passed, failed or was interrupted:

    def test_two_paths(lab_topology):
        topo = lab_topology({"paths": {"a": {"rate": "20mbit"}, "b": {"rate": "10mbit", "delay": "20ms"}}})
        topo.run("client", ["ping", "-c1", topo.server_address])
        server = topo.popen("server", [sys.executable, "-m", "mymodule.server"])
        topo.path_down("a")

The Topology gives `client_ns` / `router_ns` / `server_ns`, `server_address`,
`client_address(path)`, `run` / `popen` (inside a namespace), `set_scheduler`,
`path_down` / `path_up` / `set_path`, `qdisc_stats()`. Needs root; the test is
skipped otherwise.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def lab_topology():
    created = []

    def make(spec: dict, *, shaping: str = "auto", scheduler: str | None = None):
        # Imported here: the plugin loads in every pytest session, the lab need not.
        from bpfkit.lab.scenario import parse_scenario
        from bpfkit.lab.topology import Topology

        if os.geteuid() != 0:
            pytest.skip("lab_topology needs root (network namespaces)")
        document = {"duration": "10s", "traffic": {"kind": "bulk"}, **spec}
        scenario = parse_scenario(document, source="lab_topology spec")
        topology = Topology(scenario.paths, server_signal=scenario.server_signal, shaping=shaping)
        created.append(topology)
        topology.setup()
        if scheduler is not None:
            topology.set_scheduler(scheduler)
        return topology

    yield make
    for topology in reversed(created):
        topology.teardown()
