"""What a traffic model is: one frozen dataclass per model that holds the
validated values of a scenario's `[traffic]` table and knows everything about
its kind — the keys it accepts and how they parse, how it scales with the
scenario's duration, which side sends the data, how the client and the server
exchange it (in the traffic processes), how both sides' results reduce to a
run's figures, and how reports name those figures.

The scenario parser, the runner, the traffic processes, the report and the
bench only ever go through this interface (and the registry in __init__.py),
so a new model is one module and one registry line."""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

from bpfkit.lab.values import Checker, format_time, parse_time

if TYPE_CHECKING:
    from bpfkit.lab.traffic.wire import Side

DIRECTIONS = ("download", "upload")  # download: server → client


@dataclass(frozen=True)
class Figures:
    """A run reduced to what the report compares."""

    goodput_bps: float | None = None
    transfer_time_s: float | None = None
    completion_times_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what makes the run not count, beyond the sides' errors


@dataclass(frozen=True, kw_only=True)
class TrafficModel:
    """Base of every model. Subclasses are frozen, kw_only dataclasses whose fields
    are the model's values in base units (results.json stores them under
    `scenario.traffic`, with `kind`)."""

    kind: ClassVar[str]  # the `kind` of the [traffic] table
    keys: ClassVar[frozenset[str]]  # its other allowed keys
    fills_paths: ClassVar[bool]  # tries to fill the paths: × capacity and "path-limited" mean something
    latency_sensitive: ClassVar[bool]  # small messages: TCP_NODELAY on both sockets
    completion_column: ClassVar[str]  # the report table's completion column
    completion_axis: ClassVar[str]  # the x axis of the completion CDF
    percentiles: ClassVar[bool]  # completion shown as p50/p95/p99 in ms (else the mean in s)

    # ---- the scenario file

    @classmethod
    def parse(cls, c: Checker, data: dict, duration: float) -> TrafficModel:
        """The [traffic] table (keys already checked against `keys`) → the model."""
        raise NotImplementedError

    def scaled(self, factor: float) -> TrafficModel:
        """The same traffic for a scenario `factor` times as long (amounts and
        counts scale; rates and single messages do not)."""
        return self

    @property
    def data_sender(self) -> str:
        """The side whose socket carries most data (its scheduler decides)."""
        return "server" if getattr(self, "direction", "download") == "download" else "client"

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    # ---- the traffic processes

    def run(self, side: Side, sock: socket.socket) -> None:
        """This side's part of the exchange; raises TrafficFailure if what it
        checked was wrong, and records what it measured in side.result."""
        raise NotImplementedError

    # ---- the runner

    def figures(self, sides: dict[str, dict]) -> Figures:
        """Both sides' results ("client", "server") → the run's figures."""
        raise NotImplementedError


def time_within(c: Checker, data: dict, key: str, duration: float) -> float:
    """A `time` key: at most the scenario's duration, which is its default."""
    if key not in data:
        return duration
    t = c.positive(f"traffic.{key}", c.value(f"traffic.{key}", parse_time, data[key]))
    if t > duration:
        c.fail(f"traffic.{key}", f"{format_time(t)} is longer than the scenario duration {format_time(duration)}")
    return t


def parse_direction(c: Checker, data: dict) -> str:
    value = data.get("direction", "download")
    if value not in DIRECTIONS:
        c.fail("traffic.direction", f"must be 'download' (server → client) or 'upload', got {value!r}")
    return value


def receiver_figures(side: dict) -> tuple[float | None, float | None]:
    """(goodput, seconds) of a side from its connection's start to its end."""
    if not (side.get("t_end_ns") and side.get("t_start_ns")):
        return None, None
    seconds = (side["t_end_ns"] - side["t_start_ns"]) / 1e9
    return (side.get("received_bytes", 0) * 8 / seconds if seconds > 0 else None), seconds
