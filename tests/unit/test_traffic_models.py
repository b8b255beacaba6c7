"""Adding a traffic model is one module and one registry line: a toy model
("ping": the client sends `count` one-byte pings, the server echoes each),
registered by this test alone, is parsed from a scenario, scaled, handed to a
traffic process as a job, exchanged over a real socket pair, reduced to a run
record and rendered by the report — with no other edit anywhere."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from bpfkit.errors import UsageError
from bpfkit.lab import report, runner, traffic
from bpfkit.lab.scenario import parse_scenario
from bpfkit.lab.traffic import Figures, TrafficModel
from bpfkit.lab.traffic.__main__ import side_from_job
from bpfkit.lab.traffic.wire import TrafficFailure, recv_exact

pytestmark = pytest.mark.unit


# ---- the whole model: what a new module would hold


@dataclass(frozen=True, kw_only=True)
class Ping(TrafficModel):
    kind: ClassVar[str] = "ping"
    keys: ClassVar[frozenset[str]] = frozenset({"count"})
    fills_paths: ClassVar[bool] = False
    latency_sensitive: ClassVar[bool] = True
    completion_column: ClassVar[str] = "Ping p50 / p95 / p99 (ms)"
    completion_axis: ClassVar[str] = "ping time (ms)"
    percentiles: ClassVar[bool] = True

    count: int

    @classmethod
    def parse(cls, c, data, duration):
        return cls(count=c.integer("traffic.count", data.get("count", 10), 1))

    def scaled(self, factor):
        return replace(self, count=max(1, round(self.count * factor)))

    def describe(self):
        return f"ping × {self.count}"

    @property
    def data_sender(self):
        return "client"

    def run(self, side, sock):
        if side.role == "client":
            times = []
            for _ in range(self.count):
                t0 = time.monotonic()
                sock.sendall(b"p")
                if recv_exact(sock, 1, side.deadline) != b"p":
                    raise TrafficFailure("no echo")
                times.append(time.monotonic() - t0)
            side.result.update(ping_times_s=times, verified=True)
        else:
            while (byte := recv_exact(sock, 1, side.deadline)) is not None:
                sock.sendall(byte)

    def figures(self, sides):
        return Figures(completion_times_s=sides["client"].get("ping_times_s", []))


@pytest.fixture
def ping_registered(monkeypatch):
    monkeypatch.setitem(traffic.MODELS, Ping.kind, Ping)  # the one registry line


SCENARIO = {"duration": "10s", "paths": {"a": {"rate": "20mbit"}}, "traffic": {"kind": "ping", "count": 6}}


def test_an_unregistered_model_is_refused_with_the_known_ones():
    with pytest.raises(UsageError, match=r"traffic.kind: must be one of bulk, request-response, cbr, got 'ping'"):
        parse_scenario(SCENARIO, source="x.toml")


def test_a_registered_toy_model_goes_through_the_whole_lab(ping_registered):
    sc = parse_scenario(SCENARIO, source="x.toml")
    assert sc.traffic == Ping(count=6) and sc.scaled(0.5).traffic.count == 3
    with pytest.raises(UsageError, match=r"x.toml: traffic.size: unknown key \(known keys here: count, kind\)"):
        parse_scenario({**SCENARIO, "traffic": {"kind": "ping", "size": 1}}, source="x.toml")

    # what each traffic process is told, and what it makes of it
    job = runner.traffic_job(sc, seed=3)
    sides = {role: side_from_job(role, job) for role in ("client", "server")}
    assert sides["client"].traffic == sc.traffic and sides["server"].seed == 3

    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server = threading.Thread(target=Ping.run, args=(sc.traffic, sides["server"], b))
    server.start()
    sc.traffic.run(sides["client"], a)
    a.close()
    server.join()
    b.close()
    assert len(sides["client"].result["ping_times_s"]) == 6

    results = {role: {**s.result, "ok": True, "samples": []} for role, s in sides.items()}
    record = runner.reduce_run(sc, "default", 0, 3, results, lambda local, remote: "a", 0)
    assert record.ok and record.kind == "ping" and record.data_sender == "client"
    assert record.completion_times_s == results["client"]["ping_times_s"]

    doc = {"format": runner.RESULTS_FORMAT, "scenario": sc.to_dict(), "kernel": "k", "shaping": "netem",
           "shaping_note": "", "runs": [record.to_dict()]}
    assert doc["scenario"]["traffic"] == {"kind": "ping", "count": 6}
    text = report.markdown_report(doc)
    assert "- traffic: ping × 6;" in text and "Ping p50 / p95 / p99 (ms)" in text


def test_results_from_before_the_models_still_render():
    """Older results stored every kind's keys for every kind."""
    old = {"kind": "bulk", "direction": "download", "bytes": None, "time_s": 10.0, "request_size": 0,
           "response_size": 0, "request_rate": None, "count": None, "warmup": True, "cbr_rate_bps": 0.0,
           "message_size": 1200}
    assert traffic.from_dict(old).describe() == "bulk download for 10 s"
    with pytest.raises(UsageError, match="traffic 'cbr'"):
        traffic.from_dict({"kind": "cbr"})
