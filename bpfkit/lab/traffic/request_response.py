"""request-response: the client sends `request_size` bytes, the server answers
`response_size`, one exchange at a time, back to back or at a fixed rate; the
figure is each request's completion time, measured from its *scheduled* start
(so a slow response also delays the next)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, replace
from typing import ClassVar

from bpfkit import mptcp_sockopt
from bpfkit.lab.traffic.model import Figures, TrafficModel, receiver_figures
from bpfkit.lab.traffic.wire import PatternStream, Side, TrafficFailure, recv_exact
from bpfkit.lab.values import Checker, format_time, parse_size

WARMUP_JOIN_TIMEOUT_S = 10.0  # a join takes one path RTT; a TCG guest on a busy host, seconds


@dataclass(frozen=True, kw_only=True)
class RequestResponse(TrafficModel):
    kind: ClassVar[str] = "request-response"
    keys: ClassVar[frozenset[str]] = frozenset({"request_size", "response_size", "rate", "count", "warmup"})
    fills_paths: ClassVar[bool] = False
    latency_sensitive: ClassVar[bool] = True
    completion_column: ClassVar[str] = "Completion p50 / p95 / p99 (ms)"
    completion_axis: ClassVar[str] = "request completion time (ms)"
    percentiles: ClassVar[bool] = True

    request_size: int
    response_size: int
    request_rate: float | None = None  # requests per second; None = back to back
    count: int
    # one untimed exchange, then wait until every path's subflow is usable,
    # before the first timed request (scenarios/README.md)
    warmup: bool = True

    @classmethod
    def parse(cls, c: Checker, data: dict, duration: float) -> RequestResponse:
        for key in ("request_size", "response_size"):
            if key not in data:
                c.fail(f"traffic.{key}", "required key is missing")
        request = c.positive("traffic.request_size", c.value("traffic.request_size", parse_size, data["request_size"]))
        response = c.positive("traffic.response_size", c.value("traffic.response_size", parse_size, data["response_size"]))
        rate = None
        if "rate" in data:
            raw = data["rate"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                c.fail("traffic.rate", f"expected requests per second as a number, got {raw!r}")
            rate = c.positive("traffic.rate", float(raw))
        count = None
        if "count" in data:
            count = c.integer("traffic.count", data["count"], 1)
        elif rate is not None:
            count = max(1, int(rate * duration))
        if count is None:
            c.fail("traffic.count", "back-to-back requests (no rate) need a count")
        if rate is not None and (count - 1) / rate >= duration:
            c.fail("traffic.count", f"{count} requests at {rate:g}/s do not start within the duration {format_time(duration)}")
        warmup = c.boolean("traffic.warmup", data["warmup"]) if "warmup" in data else True
        return cls(request_size=request, response_size=response, request_rate=rate, count=count, warmup=warmup)

    def scaled(self, factor: float) -> RequestResponse:
        return replace(self, count=max(1, int(round(self.count * factor))))

    @property
    def data_sender(self) -> str:
        return "server" if self.response_size >= self.request_size else "client"

    def describe(self) -> str:
        rate = f"{self.request_rate:g}/s" if self.request_rate else "back to back"
        return f"request-response: {self.count} × ({self.request_size} B request → {self.response_size} B response), {rate}"

    def run(self, side: Side, sock: socket.socket) -> None:
        (client if side.role == "client" else server)(side, sock)

    def figures(self, sides: dict[str, dict]) -> Figures:
        c = sides["client"]
        failures = []
        warmup = c.get("warmup")
        if warmup and not warmup["complete"]:
            # the timed requests would then measure the join, not the scheduler on every path
            failures.append(f"client: warm-up: {warmup['subflows_up']} of {warmup['subflows_expected']} subflows "
                            f"usable after {warmup['seconds']:g} s")
        goodput, transfer = receiver_figures(c)
        return Figures(goodput_bps=goodput, transfer_time_s=transfer,
                       completion_times_s=c.get("completion_times_s", []), failures=failures)


def exchange(side: Side, sock: socket.socket, requests: PatternStream, responses: PatternStream, what: str) -> None:
    """One request out, its whole response back and checked."""
    traffic = side.traffic
    sock.sendall(requests.take(traffic.request_size))
    side.result["sent_bytes"] += traffic.request_size
    response = recv_exact(sock, traffic.response_size, side.deadline)
    if response is None:
        raise TrafficFailure(f"server closed before {what}")
    side.result["received_bytes"] += len(response)
    if not responses.check(response):
        raise TrafficFailure(f"{what} corrupted at stream offset {responses.first_bad_offset}")


def warm_up(side: Side, sock: socket.socket, requests: PatternStream, responses: PatternStream) -> dict:
    """Before the timed requests: one untimed exchange, then wait until every
    path has a subflow the server can use too. The timed requests then measure
    the scheduler on an established connection, not the path manager's join:
    a loss on the only subflow before the join is up costs an RTO whatever the
    scheduler does. The exchange comes first because the client's path manager
    opens joins only after the server's first data."""
    wanted = side.expect_subflows
    t0 = time.monotonic()
    exchange(side, sock, requests, responses, "the warm-up response")
    deadline = min(side.deadline, time.monotonic() + WARMUP_JOIN_TIMEOUT_S)
    up = mptcp_sockopt.wait_subflows_usable(sock, wanted, deadline)
    return {"subflows_up": up, "subflows_expected": wanted, "complete": up >= wanted,
            "seconds": round(time.monotonic() - t0, 3)}


def client(side: Side, sock: socket.socket) -> None:
    traffic = side.traffic
    requests, responses = side.stream("c2s"), side.stream("s2c")
    exchanges = traffic.count
    if traffic.warmup:
        side.result["warmup"] = warm_up(side, sock, requests, responses)
        exchanges += 1
    interval = 1 / traffic.request_rate if traffic.request_rate else 0.0
    t0 = time.monotonic()
    completion, late = [], 0
    for i in range(traffic.count):
        if interval:
            scheduled = t0 + i * interval
            wait = scheduled - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.001:
                late += 1  # the previous response was still arriving
        else:
            scheduled = time.monotonic()
        exchange(side, sock, requests, responses, f"response {i}")
        completion.append(time.monotonic() - scheduled)
    side.result.update(completion_times_s=completion, late_requests=late, verified=True)
    verdict = side.finish_sending(sock)
    if verdict.get("requests") != exchanges or not verdict.get("verified"):
        raise TrafficFailure(f"server saw {verdict.get('requests')} valid requests of {exchanges}")


def server(side: Side, sock: socket.socket) -> None:
    traffic = side.traffic
    requests, responses = side.stream("c2s"), side.stream("s2c")
    served = 0
    while True:
        request = recv_exact(sock, traffic.request_size, side.deadline)
        if request is None:
            break
        side.result["received_bytes"] += len(request)
        if not requests.check(request):
            break
        sock.sendall(responses.take(traffic.response_size))
        side.result["sent_bytes"] += traffic.response_size
        served += 1
    side.result.update(requests=served, verified=requests.ok, first_bad_offset=requests.first_bad_offset)
    side.answer(sock, {"requests": served, "verified": requests.ok})
    if not requests.ok:
        raise TrafficFailure(f"request stream corrupted at offset {requests.first_bad_offset}")
