"""What every traffic model's exchange is built from: the seeded pattern
stream that makes every byte checkable, socket helpers with a deadline, the
verdict line, and `Side`, the state of one traffic process.

Verification: every byte on the wire comes from a seeded pattern stream
(see PatternStream), so the receiver checks every byte at its exact offset and
reports the first wrong one. When the sender is done it half-closes; the
receiver answers with a one-line verdict (bytes and status) before closing, so
both results agree on what arrived. A run with missing, extra or corrupted
bytes fails, whatever its speed.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import TYPE_CHECKING

from bpfkit import mptcp_sockopt

if TYPE_CHECKING:
    from bpfkit.lab.traffic.model import TrafficModel

PERIOD = 1_048_573  # the largest prime below 2**20
IO_CHUNK = 1 << 18


class TrafficFailure(Exception):
    """The exchange went wrong in a way the result must report."""


# ---------------------------------------------------------------- pattern


class PatternStream:
    """An endless deterministic byte stream: byte o is base[o mod PERIOD], where
    base is PERIOD bytes of SHAKE-128(seed, label). PERIOD is a prime just under
    1 MiB, so data delivered at a wrong offset mismatches unless it is displaced
    by an exact multiple of ~1 MiB; with the sender/receiver byte counts that is
    as good as a per-block hash, and generating and checking are plain memory
    copies and compares — cheap enough for a TCG-emulated guest, where hashing
    every block would be the bottleneck. `take(n)` produces the next n bytes
    (sender); `check(data)` compares received bytes with the next expected ones."""

    def __init__(self, seed: int, label: str):
        base = hashlib.shake_128(f"bpfkit-lab:{seed}:{label}".encode()).digest(PERIOD)
        self._doubled = memoryview(base + base)  # any slice of up to PERIOD bytes is contiguous
        self.offset = 0
        self.first_bad_offset: int | None = None

    def _view(self, offset: int, length: int) -> memoryview:
        start = offset % PERIOD
        return self._doubled[start : start + length]

    def expected(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            piece = self._view(offset, min(length, PERIOD))
            parts.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(parts)

    def take(self, length: int) -> bytes:
        data = self.expected(self.offset, length)
        self.offset += length
        return data

    def take_view(self, limit: int) -> memoryview:
        """The next `limit` (at most PERIOD) bytes without copying (bulk sending)."""
        view = self._view(self.offset, min(limit, PERIOD))
        self.offset += len(view)
        return view

    def check(self, data: bytes | memoryview) -> bool:
        """True if `data` is exactly the next bytes of the stream."""
        if not isinstance(data, bytes):
            data = bytes(data)  # memoryview == bytes compares item by item: 100× slower than a copy
        length = len(data)
        expected = self.expected(self.offset, length)
        good = expected == data
        if not good and self.first_bad_offset is None:
            bad = next(i for i in range(length) if expected[i] != data[i])
            self.first_bad_offset = self.offset + bad
        self.offset += length
        return good

    @property
    def ok(self) -> bool:
        return self.first_bad_offset is None


# ---------------------------------------------------------------- socket helpers


def mptcp_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, mptcp_sockopt.IPPROTO_MPTCP)
    except OSError as exc:
        raise TrafficFailure(f"cannot open an MPTCP socket ({exc.strerror}); is net.mptcp.enabled=1?") from None


def recv_exact(sock: socket.socket, length: int, deadline: float) -> bytes | None:
    """Exactly `length` bytes, or None on a clean EOF before the first byte."""
    buf = bytearray()
    while len(buf) < length:
        check_deadline(deadline)
        chunk = sock.recv(min(IO_CHUNK, length - len(buf)))
        if not chunk:
            if not buf:
                return None
            raise TrafficFailure(f"connection closed after {len(buf)} of {length} bytes of a message")
        buf += chunk
    return bytes(buf)


def check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TrafficFailure("timed out")


def send_verdict(sock: socket.socket, verdict: dict) -> None:
    sock.sendall(json.dumps(verdict).encode() + b"\n")


def read_verdict(sock: socket.socket, deadline: float) -> dict:
    """After half-closing, the peer's verdict line, then EOF."""
    buf = b""
    while True:
        check_deadline(deadline)
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    if not buf.strip():
        raise TrafficFailure("peer closed without a verdict")
    return json.loads(buf.decode())


# ---------------------------------------------------------------- one side


class Side:
    """One traffic process: its role, the traffic, the run's parameters, and
    the result being built (written as JSON when the process ends)."""

    def __init__(self, role: str, traffic: TrafficModel, *, seed: int, timeout: float,
                 sample_interval: float = 0.1, expect_subflows: int = 1):
        self.role = role
        self.traffic = traffic
        self.seed = seed
        self.timeout = timeout
        self.sample_interval = sample_interval
        self.expect_subflows = expect_subflows  # paths in the scenario: subflows a warm-up waits for
        self.deadline = time.monotonic() + timeout
        self.result: dict = {"role": role, "kind": traffic.kind, "ok": False, "error": None, "sent_bytes": 0,
                             "received_bytes": 0}

    @property
    def sends_data(self) -> bool:
        return self.role == self.traffic.data_sender

    def stream(self, direction: str) -> PatternStream:
        return PatternStream(self.seed, direction)

    def finish_sending(self, sock: socket.socket) -> dict:
        """Half-close, then the peer's verdict on what it received (recorded)."""
        sock.shutdown(socket.SHUT_WR)
        self.result["t_sent_ns"] = time.monotonic_ns()
        verdict = read_verdict(sock, self.deadline)
        self.result.update(peer_verdict=verdict, t_end_ns=time.monotonic_ns())
        return verdict

    def answer(self, sock: socket.socket, verdict: dict) -> None:
        """The receiver's verdict line, which ends its side of the exchange."""
        send_verdict(sock, verdict)
        self.result["t_end_ns"] = time.monotonic_ns()

    def data_stream(self) -> PatternStream:
        """The pattern of the one-way data (s2c for a download, c2s for an upload)."""
        return self.stream("s2c" if self.traffic.data_sender == "server" else "c2s")


