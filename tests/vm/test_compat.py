"""Schedulers written elsewhere, on bpfkit's kernel (issue 13).

tests/bpf/compat/ holds schedulers written the way mptcp_net-next's export
selftests and OpenMPTCProuter's packages write theirs: their own export-style
headers (tests/bpf/compat/include/, never bpfkit's mptcp_sched.h), <limits.h>,
weak iterator kfuncs, the older `struct mptcp_sock *` iterator form, a sleepable
get_retrans() calling mptcp_pm_subflow_chk_stale(), and the earlier export
generation's bpf_mptcp_subflow_queues_empty().  Each must register, be
selectable by sysctl and carry a verified two-path transfer with the behaviour
its name promises; the one that passes the subflow *socket* to
bpf_sk_stream_memory_free() (the earlier API) must fail with one error that
says what to write instead.  Also: prebuilt objects (`sched load X.o`) and
schedulers registered by another loader (`sched list`, `unload --force`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import pytest

from bpfkit import netns
from bpfkit.lab.traffic import wire
from bpfkit.sched import lifecycle
from bpfkit.loader import build, libbpf
from tests.vm.test_sched_kernel import SERVER, mptcp_counters, sh
from tests.vm.test_schedulers import (MiB, _ports, bpfkit_cli, mptcp_listener, netem, pair, report,  # noqa: F401
                                      run_threads, transfer)

pytestmark = pytest.mark.vm

COMPAT = Path(__file__).resolve().parent.parent / "bpf" / "compat"
INCLUDE = COMPAT / "include"


def compat_object(name: str) -> Path:
    return build.compile_bpf(COMPAT / f"{name}.bpf.c", include_dirs=[INCLUDE]).path


@contextlib.contextmanager
def loaded(name: str):
    rec = lifecycle.load(str(COMPAT / f"{name}.bpf.c"), include_dirs=[INCLUDE]).record
    try:
        yield rec.name
    finally:
        if lifecycle.link_pin(rec.name).exists():
            lifecycle.unload(rec.name, force=True)


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    leftovers = lifecycle.pinned_names()
    for name in leftovers:
        lifecycle.unload(name, force=True)
    assert not leftovers, f"schedulers left pinned: {leftovers}"
    stray = [n for n in lifecycle.available() if n.startswith("compat_")]
    assert not stray, f"still registered: {stray}"


def both_used(res, floor: float = 0.2) -> None:
    assert res.share(1) >= floor and res.share(2) >= floor, res.by_id


CASES = {
    # name: (what the equal-path transfer must show, its check)
    "first": ("every byte on the first subflow", lambda r: r.share(1) >= 0.95 and r.share(2) <= 0.05),
    "rr": ("round robin: both subflows carry a fair part", lambda r: r.share(1) >= 0.2 and r.share(2) >= 0.2),
    "red": ("every subflow marked: sequential data on both", lambda r: r.share(1) >= 0.2 and r.share(2) >= 0.2),
    "burst": ("lowest RTT with room, in bursts: a verified transfer on two subflows",
              lambda r: r.share(1) + r.share(2) >= 1.0),
    # Turns count get_send() calls, not bytes: a turn sends what the subflow's window allows, so the
    # byte shares wandered (111/33, 70/44, 76/25 % in three runs of 2026-12-03, 45/63 % in a CI run of
    # 2026-12-04; the sums over 100 % were the every-tick reinjections that vm/patches 0008 ended; 76/24 %
    # in the first run after it). The turns themselves are checked by tracing the decisions (WEIGHTED_TURNS).
    "weighted": ("3:1 turns: both subflows carry data", lambda r: r.share(1) >= 0.05 and r.share(2) >= 0.05),
    # equal fast paths: subflow 1 is idle again most of the time; what shows the kfunc at work is that
    # subflow 2 gets the data that found subflow 1 busy (a first-subflow scheduler gives it none)
    "idle": ("an idle subflow first: subflow 2 takes what finds subflow 1 busy",
             lambda r: r.by_id.get(2, 0) > 0 and r.share(1) >= 0.05),
}


# The weighted scheduler's get_send() picks, from `sched trace` on the sender: 3 turns of subflow 1 for
# 1 of subflow 2 while both are active, subflow 1 alone before the join (or while 2 is not active),
# so subflow 1 has at least twice subflow 2's picks, and subflow 2 has some.
WEIGHTED_TURNS = 2.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_and_omr_style_scheduler_loads_and_behaves(pair, name):
    from bpfkit.sched import trace

    promise, check = CASES[name]
    with loaded(name) as kernel_name:
        assert kernel_name == f"compat_{'wrr' if name == 'weighted' else name}"
        assert kernel_name in lifecycle.available()
        pair.set_scheduler(kernel_name)
        assert pair.sysctl("net.mptcp.scheduler") == kernel_name
        with trace.observe(pair.cli) if name == "weighted" else contextlib.nullcontext({}) as decisions:
            res = transfer(pair, 4 * MiB)
    res.assert_intact()
    report(f"compat {name}", res)
    assert set(res.by_id) == {1, 2}, res.by_id
    assert check(res), f"{name}: expected {promise}; got {res.by_id}"
    if name == "weighted":
        picks = {int(k): v for k, v in decisions["picks"].items()}
        assert picks.get(2, 0) > 0 and picks.get(1, 0) >= WEIGHTED_TURNS * picks[2], \
            f"weighted: expected 3:1 turns; get_send picks {picks}"


def test_backup_style_keeps_data_off_the_backup_path(pair):
    sh("ip", "-n", pair.srv, "mptcp", "endpoint", "flush")
    sh("ip", "-n", pair.srv, "mptcp", "endpoint", "add", "10.0.2.1", "dev", "s2", "signal", "backup")
    with loaded("backup") as kernel_name:
        pair.set_scheduler(kernel_name)
        res = transfer(pair, 3 * MiB)
    res.assert_intact()
    report("compat backup, path 2 backup", res)
    assert res.share(1) >= 0.9, res.by_id


def test_sleepable_get_retrans_recovers_a_blackholed_path(pair):
    """burst's get_retrans is SEC("struct_ops.s") and calls the KF_SLEEPABLE
    mptcp_pm_subflow_chk_stale(): path 2 goes dark after 1 MiB, retransmissions
    (through that program) must move its data to path 1."""
    done = {}

    def blackhole(sent: int) -> None:
        if not done and sent >= MiB:
            netem(pair, "c2", "loss 100%")
            done["at"] = sent

    with loaded("burst") as kernel_name:
        pair.set_scheduler(kernel_name)
        res = transfer(pair, 3 * MiB, on_progress=blackhole, settle_timeout=2)
    res.assert_intact()
    report("compat burst, path 2 blackholed", res)
    assert done, "path 2 was never blackholed"


def exchange(pair, rounds: int, size: int, pause_s: float) -> int:
    """`rounds` requests of `size` bytes, each answered with as many, with an idle
    pause after each answer (everything acked: the MPTCP retransmit timer stops).
    Returns the rounds completed."""
    done = {"rounds": 0}
    errors: list[BaseException] = []
    listening = threading.Event()
    port = next(_ports)
    deadline = time.monotonic() + 120

    def server() -> None:
        try:
            netns.enter(pair.srv)
            with mptcp_listener(port) as lsk:
                listening.set()
                conn, _ = lsk.accept()
                with conn:
                    conn.settimeout(60)
                    for _ in range(rounds):
                        conn.sendall(wire.recv_exact(conn, size, deadline))
        except BaseException as exc:
            errors.append(exc)
        finally:
            listening.set()

    def client() -> None:
        try:
            netns.enter(pair.cli)
            listening.wait(30)
            with wire.mptcp_socket() as sk:
                sk.settimeout(60)
                sk.connect((SERVER, port))
                for i in range(rounds):
                    sk.sendall(bytes([i % 256]) * size)
                    assert wire.recv_exact(sk, size, deadline) == bytes([i % 256]) * size
                    done["rounds"] += 1
                    time.sleep(pause_s)
        except BaseException as exc:
            errors.append(exc)

    run_threads([server, client], errors, timeout=120, what="exchange")
    return done["rounds"]


def test_scheduler_without_set_timeout_does_not_reinject_every_tick(pair):
    """The compat schedulers never call the mptcp_set_timeout() kfunc (export's
    selftest schedulers but burst do not either). Without vm/patches 0008 the MPTCP
    retransmit timer of the first data after an idle moment was armed for 0 jiffies
    and fired every tick until the data was acked, each time queueing another copy:
    measured with `first` here, ~20 MPTCP retransmissions per 1-KiB request over a
    20-ms path, and 850-930 per second (then an out-of-memory guest) over a lossy one.
    With the core setting the interval (>= TCP_RTO_MIN, 200 ms) a loss-free exchange
    retransmits nothing at the MPTCP level."""
    for dev in ("c1", "c2"):
        netem(pair, dev, "delay 20ms limit 1000")
    before = {ns: mptcp_counters(ns).get("MPTCPRetrans", 0) for ns in (pair.cli, pair.srv)}
    with loaded("first") as kernel_name:
        pair.set_scheduler(kernel_name)
        rounds = exchange(pair, rounds=20, size=1024, pause_s=0.05)
    retrans = {ns: mptcp_counters(ns).get("MPTCPRetrans", 0) - before[ns] for ns in (pair.cli, pair.srv)}
    print(f"\n[compat first, 20 x 1 KiB request/response, 20 ms] MPTCP retransmissions {retrans}")
    assert rounds == 20
    # 0 in every run measured; a few allowed for a guest stalled past 200 ms under TCG (800 before the fix)
    assert sum(retrans.values()) <= 10, f"MPTCP-level retransmissions on loss-free paths: {retrans}"


def test_subflow_socket_to_memory_free_is_one_clear_error():
    before = lifecycle.available()
    r = bpfkit_cli("sched", "load", "-I", str(INCLUDE), str(COMPAT / "ssk_memfree.bpf.c"))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert "bpf_sk_stream_memory_free(subflow)" in r.stderr and "subflow context" in r.stderr, r.stderr
    assert lifecycle.available() == before
    assert not (lifecycle.PIN_DIR / "compat_memfree").exists()


def test_prebuilt_object_loads_pinned_like_a_source():
    obj = compat_object("first")
    r = bpfkit_cli("sched", "load", str(obj))
    assert r.returncode == 0, r.stderr
    try:
        assert "compat_first" in lifecycle.available()
        assert lifecycle.link_pin("compat_first").exists()
        r = bpfkit_cli("sched", "show", "compat_first")
        assert r.returncode == 0 and str(obj) in r.stdout, r.stdout
        r = bpfkit_cli("sched", "load", str(obj))  # the same object again: idempotent
        assert r.returncode == 0 and "already loaded" in r.stdout, r.stdout
    finally:
        r = bpfkit_cli("sched", "unload", "compat_first")
    assert r.returncode == 0, r.stderr
    assert "compat_first" not in lifecycle.available()


def test_prebuilt_object_with_bad_flags_or_no_scheduler_is_refused(tmp_path):
    r = bpfkit_cli("sched", "load", str(compat_object("first")), "--cflags=-DX")
    assert r.returncode == 2 and "already built" in r.stderr, r.stderr
    probes = build.compile_bpf(build.bpf_source("probes")).path
    r = bpfkit_cli("sched", "load", str(probes))
    assert r.returncode == 2 and "no `struct mptcp_sched_ops` map" in r.stderr, r.stderr
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    r = bpfkit_cli("sched", "load", str(junk))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr


def test_scheduler_of_another_loader_is_listed_and_only_forced_out():
    obj = libbpf.open_object(compat_object("first"))
    link = obj.map("first").attach_struct_ops()  # registered, not pinned: like bpftool would
    try:
        r = bpfkit_cli("sched", "list")
        assert re.search(r"registered by other loaders \(not bpfkit's\): .*compat_first", r.stdout), r.stdout
        r = bpfkit_cli("sched", "unload", "compat_first")
        assert r.returncode == 2 and "not by bpfkit" in r.stderr and "--force" in r.stderr, r.stderr
        assert "compat_first" in lifecycle.available()
        r = bpfkit_cli("sched", "unload", "compat_first", "--force")
        assert r.returncode == 0, r.stderr
        assert "compat_first" not in lifecycle.available()
    finally:
        with contextlib.suppress(Exception):
            link.detach()
        obj.close()
