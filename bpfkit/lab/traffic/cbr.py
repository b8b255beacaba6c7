"""cbr: messages of `message_size` bytes at a fixed bit rate for T seconds; each
carries a sequence number and its send time, and the receiver records each
message's latency (the figure)."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, replace
from typing import ClassVar

from bpfkit.lab.traffic.model import Figures, TrafficModel, parse_direction, receiver_figures, time_within
from bpfkit.lab.traffic.wire import PatternStream, Side, TrafficFailure, check_deadline, recv_exact
from bpfkit.lab.values import Checker, format_rate, format_time, parse_rate, parse_size

HEADER = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns)


@dataclass(frozen=True, kw_only=True)
class Cbr(TrafficModel):
    kind: ClassVar[str] = "cbr"
    keys: ClassVar[frozenset[str]] = frozenset({"direction", "rate", "message_size", "time"})
    fills_paths: ClassVar[bool] = False
    latency_sensitive: ClassVar[bool] = True
    completion_column: ClassVar[str] = "Latency p50 / p95 / p99 (ms)"
    completion_axis: ClassVar[str] = "message latency (ms)"
    percentiles: ClassVar[bool] = True

    direction: str = "download"
    cbr_rate_bps: float
    message_size: int = 1200
    time_s: float

    @classmethod
    def parse(cls, c: Checker, data: dict, duration: float) -> Cbr:
        direction = parse_direction(c, data)
        if "rate" not in data:
            c.fail("traffic.rate", "required key is missing")
        rate = c.positive("traffic.rate", c.value("traffic.rate", parse_rate, data["rate"]))
        message = c.value("traffic.message_size", parse_size, data.get("message_size", 1200))
        if message < HEADER.size:
            c.fail("traffic.message_size", f"must be >= {HEADER.size} bytes (sequence number and timestamp), got {message}")
        return cls(direction=direction, cbr_rate_bps=rate, message_size=message,
                   time_s=time_within(c, data, "time", duration))

    def scaled(self, factor: float) -> Cbr:
        return replace(self, time_s=self.time_s * factor)

    def describe(self) -> str:
        return (f"cbr {self.direction} {format_rate(self.cbr_rate_bps)} in {self.message_size} B messages "
                f"for {format_time(self.time_s)}")

    def run(self, side: Side, sock: socket.socket) -> None:
        (send if side.sends_data else receive)(side, sock, side.data_stream())

    def figures(self, sides: dict[str, dict]) -> Figures:
        receiver = sides["client" if self.data_sender == "server" else "server"]
        goodput, transfer = receiver_figures(receiver)
        return Figures(goodput_bps=goodput, transfer_time_s=transfer, completion_times_s=receiver.get("latencies_s", []))


def send(side: Side, sock: socket.socket, out: PatternStream) -> None:
    size = side.traffic.message_size
    interval = size * 8 / side.traffic.cbr_rate_bps
    t0 = time.monotonic()
    end = t0 + side.traffic.time_s
    seq = 0
    while True:
        scheduled = t0 + seq * interval
        if scheduled >= end:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        check_deadline(side.deadline)
        # Overdue messages go out at once: the stream keeps its average rate.
        sock.sendall(HEADER.pack(seq, time.monotonic_ns()) + out.take(size - HEADER.size))
        seq += 1
    side.result.update(sent_bytes=seq * size, messages=seq)
    verdict = side.finish_sending(sock)
    if verdict.get("messages") != seq or not verdict.get("verified"):
        raise TrafficFailure(f"receiver verified {verdict.get('messages')} of {seq} messages")


def receive(side: Side, sock: socket.socket, incoming: PatternStream) -> None:
    size = side.traffic.message_size
    latencies = []
    seq_ok = True
    expected_seq = 0
    while True:
        message = recv_exact(sock, size, side.deadline)
        if message is None:
            break
        now = time.monotonic_ns()
        seq, sent_ns = HEADER.unpack_from(message)
        if seq != expected_seq:
            seq_ok = False
            break
        if not incoming.check(message[HEADER.size :]):
            break
        latencies.append((now - sent_ns) / 1e9)
        side.result["received_bytes"] += size
        expected_seq += 1
    verified = seq_ok and incoming.ok
    side.result.update(messages=expected_seq, latencies_s=latencies, verified=verified, first_bad_offset=incoming.first_bad_offset)
    side.answer(sock, {"messages": expected_seq, "verified": verified})
    if not verified:
        raise TrafficFailure("message sequence broken" if not seq_ok else f"payload corrupted at stream offset {incoming.first_bad_offset}")
