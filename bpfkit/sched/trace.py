"""`bpfkit sched trace`: every decision of any MPTCP packet scheduler, as it happens.

bpf/sched_trace.bpf.c traces mptcp_sched_get_send()/mptcp_sched_get_retrans()
(net/mptcp/sched.c, Linux >= 6.7), through which the kernel asks every scheduler —
the in-kernel default and any BPF struct_ops one, also one bpfkit did not write —
and reports, per call: the connection's token, which call, the scheduler's name,
what it returned, how long it took, and per subflow what it saw (srtt, cwnd, in
flight, queued bytes, window, backup/stale) and whether it picked it.

The links are never pinned: they live as long as this process's descriptors, so
a trace stopped any way (also SIGKILL) leaves nothing attached."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from bpfkit.loader import build, libbpf
from bpfkit.errors import KernelUnsupported, LoadError

SOURCE = "sched_trace"
TRACED_FUNCTIONS = ("mptcp_sched_get_send", "mptcp_sched_get_retrans")
PROGRAMS = ("send_entry", "send_return", "retrans_entry", "retrans_return")
KINDS = {1: "get_send", 2: "get_retrans"}

# bpf/include/sched_trace.h, the single copy of this layout; every record's size is
# checked against it, so the two cannot disagree silently.
MAX_SUBFLOWS = 8
SCHED_NAME_LEN = 16


class _Subflow(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("srtt_us", ctypes.c_uint32), ("cwnd", ctypes.c_uint32),
                ("in_flight", ctypes.c_uint32), ("queued", ctypes.c_uint32), ("snd_wnd", ctypes.c_uint32),
                ("mss", ctypes.c_uint32), ("scheduled", ctypes.c_uint8), ("backup", ctypes.c_uint8),
                ("stale", ctypes.c_uint8), ("state", ctypes.c_uint8)]


class _Decision(ctypes.Structure):
    _fields_ = [("time_ns", ctypes.c_uint64), ("duration_ns", ctypes.c_uint64), ("token", ctypes.c_uint32),
                ("ret", ctypes.c_int32), ("kind", ctypes.c_uint8), ("nr_subflows", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 6), ("sched", ctypes.c_char * SCHED_NAME_LEN),
                ("subflows", _Subflow * MAX_SUBFLOWS)]


SUBFLOW_FIELDS = ("id", "srtt_us", "cwnd", "in_flight", "queued", "snd_wnd", "mss", "state")


def decode(raw: bytes) -> dict:
    """One ring-buffer record → a decision dict (the JSON form `--json` prints)."""
    if len(raw) != ctypes.sizeof(_Decision):
        raise LoadError(f"sched trace: a record of {len(raw)} bytes, bpfkit expects {ctypes.sizeof(_Decision)} "
                        "(bpf/include/sched_trace.h and bpfkit/sched_trace.py disagree)")
    d = _Decision.from_buffer_copy(raw)
    subflows = []
    for sf in d.subflows[: min(d.nr_subflows, MAX_SUBFLOWS)]:
        entry = {name: getattr(sf, name) for name in SUBFLOW_FIELDS}
        entry.update(scheduled=bool(sf.scheduled), backup=bool(sf.backup), stale=bool(sf.stale))
        subflows.append(entry)
    return {
        "time_ns": d.time_ns,
        "duration_ns": d.duration_ns,
        "token": d.token,
        "call": KINDS.get(d.kind, str(d.kind)),
        "scheduler": d.sched.decode(errors="replace"),
        "ret": d.ret,
        "subflows_total": d.nr_subflows,
        "chosen": [sf["id"] for sf in subflows if sf["scheduled"]],
        "subflows": subflows,
    }


def require_support() -> None:
    """The traced functions must be in the kernel's BTF (and not inlined)."""
    with libbpf.KernelBtf() as btf:
        missing = [f for f in TRACED_FUNCTIONS if not btf.has_func(f)]
    if missing:
        raise KernelUnsupported(f"kernel {os.uname().release} has no {', '.join(missing)} in its BTF "
                                "(the MPTCP scheduler entry points, Linux 6.7)",
                                hint="trace in bpfkit's VM kernel: bpfkit vm run -- bpfkit sched trace ...")


def netns_inode(netns: str | None) -> int:
    if netns is None:
        return 0
    from bpfkit import netns as namespaces

    return os.stat(namespaces.path(netns)).st_ino


class Tracer:
    """Attached from construction to close(); poll() returns the decisions since the
    last poll, oldest first."""

    def __init__(self, *, netns: str | None = None, kernel: str | Path | None = None):
        require_support()
        ino = netns_inode(netns)
        obj_path = build.compile_bpf(build.bpf_source(SOURCE), kernel=kernel).path
        try:
            self._obj = libbpf.open_object(obj_path, rodata={"netns_ino": ino})
        except LoadError as exc:
            if "Operation not permitted" in exc.message or "EPERM" in exc.message:
                raise KernelUnsupported(f"the kernel refused the fentry/fexit programs ({exc.message.splitlines()[0]})",
                                        hint="some kernels refuse fentry/fexit programs (Linux 6.18 on a "
                                             "PVM host did, with EPERM); trace in bpfkit's VM kernel: bpfkit vm "
                                             "run -- bpfkit sched trace ...") from None
            raise
        self._links: list[libbpf.Link] = []
        self._pending: list[dict] = []
        self._ring: libbpf.RingBuffer | None = None
        try:
            for name in PROGRAMS:
                self._links.append(self._attach(name))
            self._ring = libbpf.RingBuffer(self._obj.map("events"), lambda raw: self._pending.append(decode(raw)))
        except BaseException:
            self.close()
            raise

    def _attach(self, name: str) -> libbpf.Link:
        return self._obj.program(name).attach()

    def program_fds(self) -> dict[str, int]:
        """The attached tracing programs by name (their run-time statistics are the trace's cost)."""
        return {name: self._obj.program(name).fd for name in PROGRAMS}

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        assert self._ring is not None
        self._ring.poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def lost(self) -> int:
        raw = self._obj.map("lost").lookup(0)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for link in self._links:
            link.close()
        self._links = []
        self._obj.close()

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recorder:
    """Polls a tracer from a thread while the block runs (the ring buffer holds about
    13 000 decisions; a long transfer makes more)."""

    def __init__(self, tracer: Tracer):
        self.tracer = tracer
        self.decisions: list[dict] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sched-trace")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.decisions += self.tracer.poll(100)
        except BaseException as exc:  # raised in the owner's thread at exit, never lost with the thread
            self._error = exc

    def __enter__(self) -> "Recorder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error
        self.decisions += self.tracer.poll(0)


TIMELINE_MAX = 20_000  # decisions kept per run in results.json (every n-th beyond)


def summarize(decisions: list[dict], lost: int) -> dict:
    """What `lab run --trace` keeps of a run's decisions: counts, picks per subflow id,
    the mean time in the scheduler, and a timeline (t: CLOCK_MONOTONIC seconds; chosen:
    the first picked subflow id, 0 for none; call: get_send / get_retrans)."""
    calls: dict[str, int] = {}
    picks: dict[str, int] = {}
    for d in decisions:
        calls[d["call"]] = calls.get(d["call"], 0) + 1
        for i in d["chosen"]:
            picks[str(i)] = picks.get(str(i), 0) + 1
    step = max(1, -(-len(decisions) // TIMELINE_MAX))
    kept = decisions[::step]
    durations = [d["duration_ns"] for d in decisions]
    return {
        "count": len(decisions),
        "lost": lost,
        "calls": calls,
        "picks": picks,
        "schedulers": sorted({d["scheduler"] for d in decisions}),
        "mean_call_us": round(sum(durations) / len(durations) / 1000, 2) if durations else None,
        "every": step,
        "t": [d["time_ns"] / 1e9 for d in kept],
        "chosen": [d["chosen"][0] if d["chosen"] else 0 for d in kept],
        "call": [d["call"] for d in kept],
    }


@contextlib.contextmanager
def observe(netns: str) -> Iterator[dict]:
    """A lab observer (bpfkit.lab.runner.Observer): the decisions in `netns` while the
    block runs, summarized into the yielded dict when it exits."""
    out: dict = {}
    with Tracer(netns=netns) as tracer:
        with Recorder(tracer) as recorder:
            yield out
        out.update(summarize(recorder.decisions, tracer.lost()))


def format_decision(d: dict, start_ns: int) -> str:
    """One line: time, token, call, scheduler → chosen; then each subflow as seen."""
    chosen = ",".join(f"#{i}" for i in d["chosen"]) or "none"
    head = (f"{(d['time_ns'] - start_ns) / 1e9:10.6f} {d['token']:08x} {d['call']:<11} {d['scheduler']:<15} "
            f"→ {chosen:<6} ret {d['ret']} ({d['duration_ns'] / 1000:.1f} µs)")
    parts = []
    for sf in d["subflows"]:
        flags = "".join(flag for flag, on in (("*", sf["scheduled"]), ("b", sf["backup"]), ("s", sf["stale"])) if on)
        parts.append(f"#{sf['id']}{flags} srtt {sf['srtt_us'] / 1000:.1f}ms cwnd {sf['cwnd']} "
                     f"inflight {sf['in_flight']} queued {sf['queued']}")
    return head + ("  | " + " | ".join(parts) if parts else "")

