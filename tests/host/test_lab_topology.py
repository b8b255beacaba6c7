"""Lab topology on the host kernel (root): built and torn down without leaving
anything behind (namespaces, links, qdiscs) — on normal exit, on an exception,
on SIGTERM and Ctrl-C; each path really carries its own client address; events
take a path down and up; MPTCP endpoints are configured."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import netns

from bpfkit.errors import UsageError
from bpfkit.lab import topology
from bpfkit.lab.scenario import parse_scenario
from bpfkit.lab.topology import Topology

pytestmark = pytest.mark.host

TWO_PATHS = {"paths": {"wifi": {"rate": "20mbit", "delay": "10ms"}, "lte": {"rate": "10mbit", "delay": "50ms", "backup": True}}}


def paths(spec=TWO_PATHS):
    return parse_scenario({"duration": "10s", "traffic": {"kind": "bulk"}, **spec}).paths


def lab_namespaces() -> set[str]:
    return {n for n in netns.listnetns() if n.startswith(topology.NETNS_PREFIX)}


def host_state() -> tuple[str, str]:
    """Links and qdiscs of the host's own namespace."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    return "\n".join(names), qdiscs


def test_setup_builds_everything_and_teardown_leaves_nothing():
    before_ns, before_host = lab_namespaces(), host_state()
    topo = Topology(paths())
    with topo:
        assert set(topo.namespaces) <= set(netns.listnetns())
        qdiscs = topo.run("router", ["tc", "qdisc", "show"]).stdout
        for ifname in ("cli0", "srv0", "cli1", "srv1"):
            assert f"dev {ifname} root" in qdiscs and topo.shaping in qdiscs
        endpoints = topo.mptcp_endpoints("client")
        assert endpoints == [{"addr": "10.2.1.1", "id": 1, "flags": topology.ENDPOINT_SUBFLOW | topology.ENDPOINT_BACKUP}]
        limits = topo.run("client", ["ip", "mptcp", "limits", "show"]).stdout
        assert "subflows 1" in limits
        assert "gso_max_segs 1 " in topo.run("client", ["ip", "-d", "link", "show", "eth0"]).stdout
    assert lab_namespaces() == before_ns
    assert host_state() == before_host
    topo.teardown()  # a second teardown is harmless


def test_teardown_on_exception():
    before = lab_namespaces()
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(paths()) as topo:
            assert set(topo.namespaces) <= lab_namespaces()
            raise RuntimeError("boom")
    assert lab_namespaces() == before


def test_failed_setup_cleans_up_what_it_created():
    before = lab_namespaces()
    topo = Topology(paths())
    topo._configure_mptcp = lambda: (_ for _ in ()).throw(topology.TopologyError("injected"))
    with pytest.raises(topology.TopologyError, match="injected"):
        topo.setup()
    assert lab_namespaces() == before


SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    # Python leaves SIGINT ignored when its parent ignored it (a background job of a
    # non-interactive shell does): give this process the handler a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from bpfkit.lab.runner import terminate_on_sigterm
    from bpfkit.lab.scenario import parse_scenario
    from bpfkit.lab.topology import Topology
    sc = parse_scenario({"duration": "5s", "traffic": {"kind": "bulk"}, "paths": {"a": {"rate": "10mbit"}, "b": {"rate": "10mbit"}}})
    with terminate_on_sigterm(), Topology(sc.paths) as topo:
        child = topo.popen("client", ["sleep", "60"])
        print(" ".join(topo.namespaces), child.pid, flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_teardown_on_signal(signum):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, proc.stderr.read()
        names, child = line[:3], int(line[3])
        assert set(names) <= set(netns.listnetns())
        proc.send_signal(signum)
        proc.wait(timeout=60)  # teardown takes ~1 s; a hang is what this catches
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not set(names) & set(netns.listnetns())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the process started inside the namespace is gone too


def test_each_client_address_uses_its_own_path(lab_topology):
    topo = lab_topology(TWO_PATHS)
    for name in ("wifi", "lte"):
        before = topo.qdisc_stats()[name]["to_server"]["packets"]
        other = "lte" if name == "wifi" else "wifi"
        other_before = topo.qdisc_stats()[other]["to_server"]["packets"]
        ping = topo.run("client", ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", topo.client_address(name), topo.server_address])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert topo.qdisc_stats()[name]["to_server"]["packets"] - before >= 3
        assert topo.qdisc_stats()[other]["to_server"]["packets"] - other_before < 3


def test_path_down_and_up(lab_topology):
    topo = lab_topology(TWO_PATHS)
    wifi = topo.client_address("wifi")
    ping = ["ping", "-c", "1", "-W", "1", "-I", wifi, topo.server_address]
    topo.path_down("wifi")
    assert topo.run("client", ping).returncode != 0
    assert topo.run("client", ["ping", "-c", "1", "-W", "2", "-I", topo.client_address("lte"), topo.server_address]).returncode == 0
    topo.path_up("wifi")
    assert topo.run("client", ping).returncode == 0


def test_set_path_changes_the_qdisc(lab_topology):
    topo = lab_topology(TWO_PATHS)
    topo.set_path("wifi", topo.paths["wifi"].with_changes({"rate_bps": 1e6}))
    assert "rate 1Mbit" in topo.run("router", ["tc", "qdisc", "show", "dev", "cli0"]).stdout


def test_netem_queue_limit_covers_the_delay_line():
    (p,) = paths({"paths": {"a": {"rate": "10mbit", "delay": "100ms", "queue": 20}}})
    # 10 Mbit/s × 100 ms = 125 kB ≈ 82 packets in flight in the delay line, plus the queue
    assert Topology([p]).queue_limit_packets(p) == 20 + 82 + 1


def test_set_scheduler_rejects_unknown_names(lab_topology):
    topo = lab_topology(TWO_PATHS)
    with pytest.raises(UsageError, match="'no_such_sched' is not registered"):
        topo.set_scheduler("no_such_sched")
    topo.set_scheduler("default")
    assert topo.run("server", ["sysctl", "-n", "net.mptcp.scheduler"]).stdout.strip() == "default"


def test_remove_stale_only_removes_namespaces_of_dead_processes():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{topology.NETNS_PREFIX}{dead.pid}-0-client"
    alive = f"{topology.NETNS_PREFIX}{os.getpid()}-999-client"
    netns.create(stale)
    netns.create(alive)
    try:
        removed = topology.remove_stale()
        assert stale in removed and alive not in removed
        assert alive in netns.listnetns() and stale not in netns.listnetns()
    finally:
        for name in (stale, alive):
            if name in netns.listnetns():
                netns.remove(name)


def test_fixture_tears_down_after_a_failing_test(tmp_path):
    """The pytest plugin's lab_topology, used by another project's failing test."""
    record = tmp_path / "namespaces.txt"
    (tmp_path / "test_other.py").write_text(
        textwrap.dedent(
            f"""
            def test_uses_the_lab(lab_topology):
                topo = lab_topology({{"paths": {{"a": {{"rate": "10mbit"}}, "b": {{"rate": "5mbit"}}}}}})
                open({str(record)!r}, "w").write(" ".join(topo.namespaces))
                assert topo.run("client", ["ping", "-c1", "-W2", topo.server_address]).returncode == 0
                assert False, "fails on purpose"
            """
        )
    )
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert "1 failed" in proc.stdout and "fails on purpose" in proc.stdout, proc.stdout + proc.stderr
    names = record.read_text().split()
    assert len(names) == 3 and not set(names) & set(netns.listnetns())
