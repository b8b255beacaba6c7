"""bulk: the data sender streams N bytes, or for T seconds, as fast as the
paths take them; the figure is goodput (first to last byte at the receiver)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, replace
from typing import ClassVar

from bpfkit.lab.traffic.model import Figures, TrafficModel, parse_direction, time_within
from bpfkit.lab.traffic.wire import IO_CHUNK, PatternStream, Side, TrafficFailure, check_deadline
from bpfkit.lab.values import Checker, format_time, parse_size


@dataclass(frozen=True, kw_only=True)
class Bulk(TrafficModel):
    kind: ClassVar[str] = "bulk"
    keys: ClassVar[frozenset[str]] = frozenset({"direction", "bytes", "time"})
    fills_paths: ClassVar[bool] = True
    latency_sensitive: ClassVar[bool] = False
    completion_column: ClassVar[str] = "Transfer time (s)"
    completion_axis: ClassVar[str] = "transfer time (ms)"
    percentiles: ClassVar[bool] = False

    direction: str = "download"
    bytes: int | None = None  # an exact size; None: for time_s
    time_s: float | None = None

    @classmethod
    def parse(cls, c: Checker, data: dict, duration: float) -> Bulk:
        direction = parse_direction(c, data)
        if "bytes" in data and "time" in data:
            c.fail("traffic.bytes", "give either bytes or time, not both")
        if "bytes" in data:
            size = c.positive("traffic.bytes", c.value("traffic.bytes", parse_size, data["bytes"]))
            return cls(direction=direction, bytes=size)
        return cls(direction=direction, time_s=time_within(c, data, "time", duration))

    def scaled(self, factor: float) -> Bulk:
        return replace(self, bytes=None if self.bytes is None else max(1, int(self.bytes * factor)),
                       time_s=None if self.time_s is None else self.time_s * factor)

    def describe(self) -> str:
        amount = f"{self.bytes:,} bytes" if self.bytes is not None else f"for {format_time(self.time_s)}"
        return f"bulk {self.direction} {amount}"

    def run(self, side: Side, sock: socket.socket) -> None:
        (send if side.sends_data else receive)(side, sock, side.data_stream())

    def figures(self, sides: dict[str, dict]) -> Figures:
        receiver = sides["client" if self.data_sender == "server" else "server"]
        if not (receiver.get("t_last_byte_ns") and receiver.get("t_start_ns")):
            return Figures()
        transfer = (receiver["t_last_byte_ns"] - receiver["t_start_ns"]) / 1e9
        goodput = receiver["received_bytes"] * 8 / transfer if transfer > 0 else None
        return Figures(goodput_bps=goodput, transfer_time_s=transfer, completion_times_s=[transfer])


def send(side: Side, sock: socket.socket, out: PatternStream) -> None:
    total = side.traffic.bytes
    end_at = None if total is not None else time.monotonic() + side.traffic.time_s
    sent = 0
    while True:
        if total is not None and sent >= total:
            break
        if end_at is not None and time.monotonic() >= end_at:
            break
        check_deadline(side.deadline)
        limit = IO_CHUNK if total is None else min(IO_CHUNK, total - sent)
        view = out.take_view(limit)
        sock.sendall(view)
        sent += len(view)
    side.result["sent_bytes"] = sent
    verdict = side.finish_sending(sock)
    if verdict.get("received_bytes") != sent or not verdict.get("verified"):
        raise TrafficFailure(f"receiver verified {verdict.get('received_bytes')} bytes (ok={verdict.get('verified')}) of {sent} sent")


def receive(side: Side, sock: socket.socket, incoming: PatternStream) -> None:
    buf = bytearray(IO_CHUNK)
    view = memoryview(buf)
    received = 0
    t_last = None
    while True:
        check_deadline(side.deadline)
        n = sock.recv_into(buf)
        if n == 0:
            break
        t_last = time.monotonic_ns()
        incoming.check(view[:n])
        received += n
    side.result.update(received_bytes=received, verified=incoming.ok, first_bad_offset=incoming.first_bad_offset, t_last_byte_ns=t_last)
    side.answer(sock, {"received_bytes": received, "verified": incoming.ok, "first_bad_offset": incoming.first_bad_offset})
    if not incoming.ok:
        raise TrafficFailure(f"corrupted stream: first wrong byte at offset {incoming.first_bad_offset}")
