"""The reference schedulers of bpf/sched/ and `bpfkit sched` on the VM kernel.

Runs inside the VM (prebuild the objects on the host first, clang under TCG is slow):

    bpfkit build --kernel vm bpf/sched/*.bpf.c tests/bpf/sched_*.bpf.c
    bpfkit vm run -- .venv/bin/pytest -m vm tests/vm/test_schedulers.py

Topology: tests.vm.test_sched_kernel.Pair - client and server netns joined by two
veth paths (10.0.1.0/24 = subflow 1, 10.0.2.0/24 = subflow 2, joined after the
server announces 10.0.2.1).  Paths are made heterogeneous with netem on the
client side (the data direction).  Transfers are in-process (client and server
threads moved into their netns) so MPTCP_FULL_INFO can be read on the live client
socket: tcpi_bytes_sent per subflow is what the scheduler put on each path.

Each scheduler is loaded with bpfkit.sched.lifecycle.load() (build cached, register, pin)
and unloaded in a finally, so a failing test leaves nothing registered/pinned.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpfkit import mptcp_sockopt, netns, sock_diag
from bpfkit.sched import lifecycle, registry
from bpfkit.loader import build, libbpf
from bpfkit.errors import AttachError, UsageError, VerifierError
from tests.vm.test_sched_kernel import (  # noqa: F401
    PAYLOAD, Pair, kernel_splats, mptcp_counters, no_leftover_bpf, settled_info, sh)

pytestmark = pytest.mark.vm

MiB = 1 << 20
CHUNK = 64 * 1024
SERVER = "10.0.1.1"
SCHEDULERS = registry.reference_names()  # every bpf/sched/X.bpf.c: a new one is tested with no edit here
TESTS_DIR = Path(__file__).resolve().parent.parent
PROJECT = TESTS_DIR.parent
_ports = iter(range(15000, 20000, 7))


# ---------------------------------------------------------------- helpers


@dataclass
class Result:
    size: int
    received: int
    received_sha: str | None
    subflows_seen: int
    by_id: dict[int, int]  # subflow id -> tcpi_bytes_sent on the client
    rtt_us: dict[int, int]  # subflow id -> tcpi_rtt at the end
    seconds: float

    def assert_intact(self) -> None:
        assert self.received == self.size, f"received {self.received} bytes, sent {self.size}"
        assert self.received_sha == hashlib.sha256(PAYLOAD[: self.size]).hexdigest(), "received data differs"

    def share(self, sf_id: int) -> float:
        return self.by_id.get(sf_id, 0) / self.size


def transfer(pair: Pair, size: int, *, subflows: int = 2, on_progress=None, attempts: int = 3,
             settle_timeout: float = 30) -> Result:
    """One MPTCP connection client -> server with `size` bytes of PAYLOAD.

    subflows=2 waits (after the first chunk) for the join and retries the
    connection when it does not come (path manager slowness under TCG is not
    what these tests are about).  on_progress(sent) runs in the client thread."""
    for _ in range(attempts):
        res = _transfer_once(pair, size, subflows, on_progress, next(_ports), settle_timeout)
        if res.subflows_seen >= subflows:
            return res
    raise AssertionError(f"wanted {subflows} subflows, saw {res.subflows_seen}; client {mptcp_counters(pair.cli)}, "
                         f"server {mptcp_counters(pair.srv)}")


def mptcp_listener(port: int) -> socket.socket:
    """An MPTCP socket listening on `port` in the calling thread's namespace (accept times out after 60 s)."""
    lsk = socket.socket(socket.AF_INET, socket.SOCK_STREAM, mptcp_sockopt.IPPROTO_MPTCP)
    lsk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsk.bind(("0.0.0.0", port))
    lsk.listen(1)
    lsk.settimeout(60)
    return lsk


def run_threads(targets, errors: list[BaseException], *, timeout: float, what: str) -> None:
    """Run each target in a thread and wait for all; fail if one is still running after `timeout`
    or one recorded an exception in `errors` (the first is raised)."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"{what} hung"
    if errors:
        raise errors[0]


def _transfer_once(pair: Pair, size: int, subflows: int, on_progress, port: int, settle_timeout: float) -> Result:
    state: dict = {"received": 0, "sha": None, "by_id": {}, "rtt": {}, "seen": 0}
    errors: list[BaseException] = []
    listening, server_done = threading.Event(), threading.Event()

    def server() -> None:
        try:
            netns.enter(pair.srv)
            lsk = mptcp_listener(port)
            listening.set()
            conn, _ = lsk.accept()
            # Keep listening until the transfer is over: MP_JOIN SYNs and the joins'
            # third ACKs are handled through this listener; closing it right after
            # accept() resets every join that is still on its way (most of them
            # under TCG, and any behind a netem delay).
            conn.settimeout(180)
            digest = hashlib.sha256()
            while data := conn.recv(1 << 20):
                digest.update(data)
                state["received"] += len(data)
            state["sha"] = digest.hexdigest()
            conn.close()
            lsk.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            listening.set()
            server_done.set()

    def client() -> None:
        try:
            netns.enter(pair.cli)
            listening.wait(30)
            sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM, mptcp_sockopt.IPPROTO_MPTCP)
            sk.settimeout(180)
            sk.connect((SERVER, port))
            sent = min(CHUNK, size)
            sk.sendall(PAYLOAD[:sent])
            if subflows > 1:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline and mptcp_sockopt.mptcp_info(sk).subflows < subflows - 1:
                    time.sleep(0.05)
            state["seen"] = mptcp_sockopt.mptcp_info(sk).subflows + 1
            if state["seen"] < subflows:
                sk.close()
                return
            if subflows > 1:
                mptcp_sockopt.wait_subflows_usable(sk, subflows, deadline)
            while sent < size:
                end = min(sent + CHUNK, size)
                sk.sendall(PAYLOAD[sent:end])
                sent = end
                if on_progress:
                    on_progress(sent)
            # Read the per-subflow counters while the connection is still open:
            # once both DATA_FINs are exchanged the kernel disposes of every
            # subflow but the first, and MPTCP_FULL_INFO no longer lists them.
            info = settled_info(sk, settle_timeout)
            state["by_id"] = {sf.id: sf.tcp.bytes_sent for sf in info.subflows}
            state["rtt"] = {sf.id: sf.tcp.rtt_us for sf in info.subflows}
            sk.shutdown(socket.SHUT_WR)
            server_done.wait(180)
            sk.close()
        except BaseException as exc:
            errors.append(exc)

    start = time.monotonic()
    run_threads([server, client], errors, timeout=400, what="transfer")
    return Result(size, state["received"], state["sha"], state["seen"], state["by_id"], state["rtt"],
                  time.monotonic() - start)


def netem(pair: Pair, dev: str, spec: str) -> None:
    """Replace the root qdisc of a client-side device (data direction)."""
    sh("ip", "netns", "exec", pair.cli, "tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split())


def report(label: str, res: Result) -> None:
    """Measured numbers go to stdout (run pytest with -s to see them)."""
    print(f"\n[{label}] {res.size} B in {res.seconds:.1f}s: "
          + ", ".join(f"subflow {i}: {b} B ({b / res.size:.0%}), rtt {res.rtt_us.get(i)} us"
                      for i, b in sorted(res.by_id.items())))


class Loaded:
    """Context manager: a scheduler loaded through bpfkit.sched, always unloaded."""

    def __init__(self, spec: str):
        self.spec = spec
        self.name: str | None = None

    def __enter__(self) -> str:
        self.name = lifecycle.load(self.spec).record.name
        return self.name

    def __exit__(self, *exc) -> None:
        if self.name and lifecycle.link_pin(self.name).exists():
            lifecycle.unload(self.name, force=True)


@pytest.fixture
def pair():
    with Pair() as p:
        yield p


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every test: no scheduler of ours stays registered or pinned, no stray
    selection stays in the test VM's own netns."""
    yield
    leftovers = lifecycle.pinned_names()
    for name in leftovers:  # clean up for the next test, then fail this one
        lifecycle.unload(name, force=True)
    assert not leftovers, f"schedulers left pinned: {leftovers}"
    for name in SCHEDULERS:
        assert name not in lifecycle.available(), f"{name} still registered"
    assert lifecycle.selected() == "default"


def bpfkit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfkit", *args], capture_output=True, text=True, cwd=PROJECT)


# ---------------------------------------------------------------- every scheduler


@pytest.mark.parametrize("name", SCHEDULERS)
def test_loads_selects_and_carries_a_verified_transfer(pair, name):
    with Loaded(name):
        assert name in lifecycle.available()
        assert lifecycle.link_pin(name).exists()
        pair.set_scheduler(name)
        assert pair.sysctl("net.mptcp.scheduler") == name
        res = transfer(pair, 4 * MiB)
    res.assert_intact()
    report(f"{name} equal paths", res)
    assert set(res.by_id) == {1, 2}, res.by_id
    assert res.by_id[1] + res.by_id[2] >= 4 * MiB, res.by_id


@pytest.mark.parametrize("name", SCHEDULERS)
def test_single_subflow(pair, name):
    """No second path announced: the connection keeps its initial subflow only."""
    sh("ip", "-n", pair.srv, "mptcp", "endpoint", "flush")
    with Loaded(name):
        pair.set_scheduler(name)
        res = transfer(pair, 2 * MiB, subflows=1)
    res.assert_intact()
    assert res.subflows_seen == 1 and set(res.by_id) == {1}, res.by_id


@pytest.mark.parametrize("name", SCHEDULERS)
def test_subflow_removed_mid_transfer(pair, name):
    """The server withdraws path 2 (REMOVE_ADDR) after 1 MiB: the scheduler must
    keep going on the remaining subflow."""
    removed = {}

    def withdraw(sent: int) -> None:
        if not removed and sent >= MiB:
            removed["at"] = sent
            sh("ip", "-n", pair.srv, "mptcp", "endpoint", "flush")

    with Loaded(name):
        pair.set_scheduler(name)
        res = transfer(pair, 4 * MiB, on_progress=withdraw)
    assert removed, "the endpoint was never withdrawn"
    res.assert_intact()
    assert set(res.by_id) == {1}, f"subflow 2 should be gone: {res.by_id}"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_blackholed_path_is_recovered_by_retransmission(pair, name):
    """After 1 MiB every packet on path 2 is dropped.  Data stuck on it must be
    reinjected on path 1 (get_retrans) for the transfer to complete."""
    dropped = {}

    def blackhole(sent: int) -> None:
        if not dropped and sent >= MiB:
            dropped["at"] = sent
            netem(pair, "c2", "loss 100%")

    netem(pair, "c2", "delay 5ms")  # path 2 must carry something before it dies
    with Loaded(name):
        pair.set_scheduler(name)
        # a dead path never drains its queue: do not wait for it to settle
        res = transfer(pair, 3 * MiB, on_progress=blackhole, settle_timeout=2)
    res.assert_intact()
    report(f"{name} path 2 blackholed", res)
    assert res.by_id[1] >= 3 * MiB * 0.6, res.by_id


@pytest.mark.parametrize("name", SCHEDULERS)
def test_dead_primary_path_moves_to_the_backup(pair, name):
    """Path 2 is a backup (the server's signal endpoint carries the backup flag).
    After 1 MiB every packet on path 1 is dropped, for good.  The kernel marks
    subflow 1 stale after net.mptcp.stale_loss_cnt retransmission periods without
    progress (patch 0005 runs that check for BPF schedulers too), the scheduler
    then sees no active regular subflow and must carry the rest on the backup.
    Without the stale mark the connection would wait for path 1 until TCP gives
    up on it (minutes)."""
    dropped = {}

    def blackhole(sent: int) -> None:
        if not dropped and sent >= MiB:
            # (the client thread is in the client netns: sock_diag sees its subflows)
            dropped["backup"] = [sf.backup for conn in sock_diag.connections() for sf in conn.subflows
                                 if sf.local[0] == "10.0.2.2"]
            netem(pair, "c1", "loss 100%")

    sh("ip", "-n", pair.srv, "mptcp", "endpoint", "flush")
    sh("ip", "-n", pair.srv, "mptcp", "endpoint", "add", "10.0.2.1", "dev", "s2", "signal", "backup")
    with Loaded(name):
        pair.set_scheduler(name)
        res = transfer(pair, 3 * MiB, on_progress=blackhole, settle_timeout=2)
    res.assert_intact()
    report(f"{name} path 1 dead, path 2 backup", res)
    assert dropped, "path 1 was never blackholed"
    assert dropped["backup"] == [True], f"subflow 2 should be a backup subflow: {dropped}"
    assert res.by_id[2] >= 1.5 * MiB, f"the backup should carry the rest: {res.by_id}"


# ---------------------------------------------------------------- behaviour


def paced(rate_bps: float):
    """on_progress callback: hold the writer to `rate_bps` (an application that
    sends less than the paths could carry)."""
    start = {}

    def wait(sent: int) -> None:
        now = time.monotonic()
        start.setdefault("t", now - CHUNK * 8 / rate_bps)  # the first chunk went before the first call
        ahead = start["t"] + sent * 8 / rate_bps - now
        if ahead > 0:
            time.sleep(ahead)

    return wait


def test_minrtt_prefers_the_low_rtt_path(pair):
    """Path 2 has 40 ms more delay.  min-RTT puts data on path 2 only while path
    1's congestion window is full, so an application sending well below what
    path 1 carries (16 Mbit/s; unshaped veth carries ~100 Mbit/s even in a TCG
    guest) has nearly all its bytes on path 1, the first chunks of slow start
    aside.  A scheduler that ignored RTT (round robin) would put about half on
    each.  (A bulk sender at full speed keeps path 1's window full in a
    CPU-bound guest: min-RTT then rightly spills about 30 % onto path 2.)"""
    netem(pair, "c2", "delay 40ms")
    with Loaded("minrtt"):
        pair.set_scheduler("minrtt")
        res = transfer(pair, 3 * MiB, on_progress=paced(16e6))
    res.assert_intact()
    report("minrtt, path 2 +40ms, 16 Mbit/s application", res)
    assert res.rtt_us[1] < res.rtt_us[2], res.rtt_us
    assert res.share(1) >= 0.85, res.by_id


def test_redundant_puts_every_byte_on_each_subflow(pair):
    """Equal paths: each subflow carries ~all of the stream (copies), the
    receiver gets it once (hash)."""
    with Loaded("redundant"):
        pair.set_scheduler("redundant")
        res = transfer(pair, 8 * MiB)
    res.assert_intact()
    report("redundant equal paths", res)
    assert res.share(1) >= 0.9, res.by_id
    assert res.share(2) >= 0.9, res.by_id


def test_redundant_with_a_slow_path_still_copies_everything(pair):
    with Loaded("redundant"):
        netem(pair, "c2", "delay 20ms")
        pair.set_scheduler("redundant")
        res = transfer(pair, 4 * MiB)
    res.assert_intact()
    report("redundant, path 2 +20ms", res)
    assert res.share(1) >= 0.9 and res.share(2) >= 0.9, res.by_id


HETEROGENEOUS = {"c1": "rate 20mbit delay 2ms limit 20", "c2": "rate 20mbit delay 100ms limit 1000"}
# the receiver's buffer bounds the MPTCP send window |M| (what BLEST reasons about)
RMEM = "4096 131072 262144"


def _heterogeneous_run(pair: Pair, name: str, size: int) -> Result:
    for dev, spec in HETEROGENEOUS.items():
        netem(pair, dev, spec)
    pair.sysctl("net.ipv4.tcp_rmem", RMEM, pair.srv)
    with Loaded(name):
        pair.set_scheduler(name)
        res = transfer(pair, size)
    res.assert_intact()
    report(f"{name} heterogeneous {HETEROGENEOUS}", res)
    return res


def test_blest_sends_less_on_the_slow_path_than_minrtt(pair):
    """Fast path 2 ms (+ at most 12 ms queue), slow path 100 ms, both 20 Mbit/s,
    receive buffer <= 256 KiB.  min-RTT spills onto the slow path whenever the
    fast window is full; BLEST sees that a segment on the slow path would hold
    the small MPTCP window for many fast RTTs and waits for the fast path."""
    minrtt = _heterogeneous_run(pair, "minrtt", 4 * MiB)
    blest = _heterogeneous_run(pair, "blest", 4 * MiB)
    assert minrtt.share(2) >= 0.05, f"min-RTT barely used the slow path; the case is not heterogeneous enough: " \
                                    f"{minrtt.by_id}"
    assert blest.by_id[2] < minrtt.by_id[2] * 0.5, f"blest {blest.by_id} vs minrtt {minrtt.by_id}"


def test_ecf_heterogeneous_transfer(pair):
    """ECF on the same heterogeneous paths: intact, and it never puts more on
    the slow path than min-RTT's whole share would be (it only ever removes
    slow-path sends relative to min-RTT)."""
    res = _heterogeneous_run(pair, "ecf", 4 * MiB)
    assert res.share(1) >= 0.5, res.by_id


# ---------------------------------------------------------------- CLI


def test_cli_load_use_unload_round_trip(pair):
    r = bpfkit_cli("sched", "load", "minrtt")
    assert r.returncode == 0, r.stderr
    try:
        assert "minrtt" in lifecycle.available()
        pin = lifecycle.link_pin("minrtt")
        assert pin.exists()
        # the command has exited: the pin alone keeps it registered
        r = bpfkit_cli("sched", "load", "minrtt")
        assert r.returncode == 0 and "already loaded" in r.stdout, (r.stdout, r.stderr)

        listing = json.loads(bpfkit_cli("sched", "list", "--json").stdout)
        assert "minrtt" in listing["available"] and "minrtt" in listing["bpfkit"]
        assert {b["name"] for b in listing["builtin"]} >= set(SCHEDULERS)
        assert listing["selected"][lifecycle.CURRENT_NETNS] == "default"
        assert listing["selected"][pair.cli] == "default"

        r = bpfkit_cli("sched", "use", "minrtt", "--netns", pair.cli)
        assert r.returncode == 0, r.stderr
        assert pair.sysctl("net.mptcp.scheduler") == "minrtt"
        listing = json.loads(bpfkit_cli("sched", "list", "--json").stdout)
        assert listing["selected"][pair.cli] == "minrtt"

        shown = json.loads(bpfkit_cli("sched", "show", "minrtt", "--json").stdout)
        assert shown["selected_in"] == [pair.cli]
        assert shown["source"].endswith("bpf/sched/minrtt.bpf.c")
        assert shown["pin"] == str(pin) and shown["program_ids"], shown
        assert all(libbpf.program_info_by_id(i) for i in shown["program_ids"].values())

        # a connection through the CLI-selected scheduler
        transfer(pair, MiB).assert_intact()

        # in use: refused, and the error names the netns
        r = bpfkit_cli("sched", "unload", "minrtt")
        assert r.returncode != 0 and pair.cli in r.stderr, (r.stdout, r.stderr)
        assert "minrtt" in lifecycle.available() and pin.exists()

        r = bpfkit_cli("sched", "unload", "minrtt", "--force")
        assert r.returncode == 0, r.stderr
        assert f"{pair.cli}: net.mptcp.scheduler switched from minrtt to default" in r.stdout, r.stdout
        assert pair.sysctl("net.mptcp.scheduler") == "default"
    finally:
        bpfkit_cli("sched", "unload", "minrtt", "--force")
    assert "minrtt" not in lifecycle.available()
    assert not (lifecycle.PIN_DIR / "minrtt").exists()
    assert not lifecycle._record_path("minrtt").exists()
    assert "minrtt" not in json.loads(bpfkit_cli("sched", "list", "--json").stdout)["bpfkit"]


def test_cli_redundant_show_reports_flag():
    with Loaded("redundant"):
        shown = json.loads(bpfkit_cli("sched", "show", "redundant", "--json").stdout)
    assert shown["flags"] == ["redundant"], shown


def test_a_different_object_cannot_take_a_loaded_name():
    with Loaded("minrtt"):
        r = bpfkit_cli("sched", "load", str(TESTS_DIR / "bpf" / "sched_name_clash.bpf.c"))
        assert r.returncode != 0, r.stdout
        assert "already loaded by bpfkit" in r.stderr and "different build" in r.stderr, r.stderr
        assert r.stderr.count("bpfkit: error:") == 1, r.stderr
    # and the other way round
    with Loaded(str(TESTS_DIR / "bpf" / "sched_name_clash.bpf.c")):
        with pytest.raises(AttachError, match="different build"):
            lifecycle.load("minrtt")


def test_name_registered_by_another_loader_is_refused():
    obj = libbpf.open_object(build.compile_bpf(TESTS_DIR / "bpf" / "sched_name_clash.bpf.c").path)
    link = obj.map("clash").attach_struct_ops()  # registered, not pinned: not bpfkit's
    try:
        r = bpfkit_cli("sched", "load", "minrtt")
        assert r.returncode != 0 and "another loader" in r.stderr, r.stderr
        r = bpfkit_cli("sched", "unload", "minrtt")
        assert r.returncode != 0 and "not by bpfkit" in r.stderr, r.stderr
    finally:
        link.detach()
        obj.close()
    assert not (lifecycle.PIN_DIR / "minrtt").exists()


def test_verifier_rejection_is_one_clear_error_and_leaves_nothing(no_leftover_bpf):
    before = lifecycle.available()
    r = bpfkit_cli("sched", "load", str(TESTS_DIR / "bpf" / "sched_bad_write.bpf.c"))
    assert r.returncode != 0
    assert "no write support to mptcp_sock" in r.stderr, r.stderr
    assert r.stderr.count("bpfkit: error:") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lifecycle.available() == before
    assert not (lifecycle.PIN_DIR / "bpf_bad_write").exists()
    with pytest.raises(VerifierError):
        lifecycle.load(str(TESTS_DIR / "bpf" / "sched_bad_write.bpf.c"))
    assert lifecycle.available() == before


@pytest.mark.parametrize("argv, needle", [
    (("load", "nosuch"), "no built-in scheduler named 'nosuch'"),
    (("load", "/nonexistent/x.bpf.c"), "no such BPF C file"),
    (("use", "nosuch"), "'nosuch' is not registered"),
    (("use", "default", "--netns", "no-such-netns"), "no network namespace 'no-such-netns'"),
    (("unload", "nosuch"), "'nosuch' is not loaded"),
    (("unload", "default"), "cannot be unloaded"),
    (("show", "nosuch"), "no scheduler 'nosuch'"),
    (("load", "a_name_far_too_long_for_mptcp"), "1-15 characters"),
])
def test_bad_input_is_one_clear_error(argv, needle):
    before = lifecycle.available()
    r = bpfkit_cli("sched", *argv)
    assert r.returncode == UsageError.exit_code, (r.returncode, r.stderr)
    assert needle in r.stderr and r.stderr.count("bpfkit: error:") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lifecycle.available() == before


def test_kernel_log_has_no_splat():
    """Run last (file order): nothing above made the kernel warn."""
    bad = kernel_splats()
    assert not bad, "\n".join(bad[:200])
