"""What each traffic kind means to the rest of the lab, in one table: the keys of
its `[traffic]` table, whether it tries to fill the paths (so that goodput is
judged against their capacity), and how reports name its completion figures.

The scenario parser, the report and the bench read this table instead of each
keeping its own list; a results file of a kind this table lacks is one clear
error, not a KeyError. (How the two sides exchange data is in traffic.py, how a
run is reduced to figures in runner.py: both still branch on the kind.)"""

from __future__ import annotations

from dataclasses import dataclass

from bpfkit.errors import UsageError


@dataclass(frozen=True)
class TrafficKind:
    name: str
    keys: frozenset[str]  # allowed keys of the scenario's [traffic] table
    fills_paths: bool  # tries to fill the paths: × capacity and "path-limited" mean something
    completion_column: str  # the report table's completion column
    completion_axis: str  # the x axis of the completion CDF
    percentiles: bool  # completion shown as p50/p95/p99 in ms (else the mean in s)


KINDS: dict[str, TrafficKind] = {k.name: k for k in (
    TrafficKind("bulk", frozenset({"kind", "direction", "bytes", "time"}), True,
                "Transfer time (s)", "transfer time (ms)", False),
    TrafficKind("request-response", frozenset({"kind", "request_size", "response_size", "rate", "count", "warmup"}),
                False, "Completion p50 / p95 / p99 (ms)", "request completion time (ms)", True),
    TrafficKind("cbr", frozenset({"kind", "direction", "rate", "message_size", "time"}), False,
                "Latency p50 / p95 / p99 (ms)", "message latency (ms)", True),
)}


def kind(name: object) -> TrafficKind:
    """The kind named `name`, or one UsageError that lists the known ones."""
    if isinstance(name, str) and name in KINDS:
        return KINDS[name]
    raise UsageError(f"traffic kind {name!r} is not one this bpfkit knows ({', '.join(KINDS)})",
                     hint="results written by another bpfkit version need that version's report")
