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

import ctypes
import os
import struct
from pathlib import Path

from bpfkit import build, libbpf
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
    from bpfkit import sched

    return os.stat(sched.netns_path(netns)).st_ino


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
                                        hint="some kernels refuse tracing programs (this host's 6.18 does: "
                                             "EPERM); trace in bpfkit's VM kernel: bpfkit vm run -- bpfkit sched "
                                             "trace ...") from None
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

