"""Scenario files: load a TOML scenario, validate it completely, and return plain
dataclasses with every quantity in base units (bit/s, seconds, bytes, percent).

The format is documented in scenarios/README.md. Validation stops at the first
problem and raises one UsageError naming the file and the key path
(e.g. `wifi-lte.toml: paths.wifi.rate: must be > 0`), before anything is started.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path as FilePath

from bpfkit.sched import registry
from bpfkit.errors import UsageError
from bpfkit.lab import traffic as traffic_models
from bpfkit.lab.traffic import TrafficModel
from bpfkit.lab.values import Checker, format_rate, format_time, join, parse_percent, parse_rate, parse_size, parse_time

MAX_PATHS = 8  # the in-kernel path manager accepts at most 8 subflows
MTU_FRAME = 1514  # bytes on the wire per full-sized packet (1500 + Ethernet header)
MIN_QUEUE_PACKETS = 16  # floor for the BDP-derived default bottleneck buffer
PATH_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

EVENT_ACTIONS = ("down", "up", "set")


# ---------------------------------------------------------------- data model


@dataclass(frozen=True)
class PathSpec:
    """One network path. `delay` and `jitter` are ONE-WAY and applied in each
    direction, so the path's base RTT is 2 × delay. `rate` and `loss` also apply
    to each direction independently. `queue` is the bottleneck buffer in
    full-sized packets (the packets held by the delay line come on top)."""

    name: str
    rate_bps: float
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss_pct: float = 0.0
    queue_packets: int = 0  # 0 = the default, 1 BDP (filled in on construction)
    queue_from_bdp: bool = True  # True when the default (1 BDP) was used
    backup: bool = False

    def __post_init__(self):
        if self.queue_packets <= 0:  # also when built directly, not parsed from a file
            object.__setattr__(self, "queue_packets", default_queue_packets(self.rate_bps, self.delay_s))
            object.__setattr__(self, "queue_from_bdp", True)

    @property
    def base_rtt_s(self) -> float:
        return 2 * self.delay_s

    def with_changes(self, changes: dict) -> PathSpec:
        """The path after a `set` event (changes use PathSpec field names)."""
        updated = replace(self, **changes)
        if "queue_packets" not in changes and self.queue_from_bdp:
            updated = replace(updated, queue_packets=default_queue_packets(updated.rate_bps, updated.delay_s))
        return updated


@dataclass(frozen=True)
class Event:
    at_s: float
    path: str
    action: str  # down | up | set
    changes: dict = field(default_factory=dict)  # for "set": PathSpec field name → value

    def describe(self) -> str:
        if self.action != "set":
            return f"{self.path} {self.action}"
        parts = []
        for key, value in self.changes.items():
            parts.append(f"{key.split('_')[0]}={format_quantity(key, value)}")
        return f"{self.path} " + " ".join(parts)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    seed: int
    repetitions: int
    schedulers: tuple[str, ...]
    paths: tuple[PathSpec, ...]
    traffic: TrafficModel  # one of traffic_models.MODELS
    events: tuple[Event, ...] = ()
    server_signal: bool = False
    timeout_s: float = 0.0
    source: str = "<dict>"
    # [buffers]: the upper limit (bytes) of a side's socket buffers, e.g. {"client_receive": 262144}
    buffers: dict[str, int] = field(default_factory=dict)

    def path(self, name: str) -> PathSpec:
        for p in self.paths:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def capacity_bps(self) -> float:
        """Sum of the nominal rates of all paths (at the start)."""
        return sum(p.rate_bps for p in self.paths)

    def scaled(self, factor: float) -> Scenario:
        """Shrink or stretch time: duration, event times, and the traffic's amounts
        (TrafficModel.scaled). Rates, delays and sizes of single messages are unchanged."""
        if factor <= 0:
            raise UsageError(f"--duration-scale must be > 0, not {factor}")
        traffic = self.traffic.scaled(factor)
        events = tuple(replace(e, at_s=e.at_s * factor) for e in self.events)
        return replace(
            self,
            duration_s=self.duration_s * factor,
            timeout_s=self.timeout_s * factor if self.timeout_s else 0.0,
            traffic=traffic,
            events=events,
        )

    def alone(self, path: str) -> Scenario:
        """The same traffic over `path` only (its events kept, the other paths and
        their events gone), with the default scheduler: what that path carries
        by itself — the reference a multipath scheduler is compared with."""
        if path not in {p.name for p in self.paths}:
            raise UsageError(f"{self.name}: no path {path!r} (paths: {', '.join(p.name for p in self.paths)})")
        kept = replace(self.path(path), backup=False)  # the only path carries the initial subflow
        return replace(
            self,
            name=f"{self.name}.{path}-alone",
            description=f"{self.description} — {path} alone",
            schedulers=("default",),
            paths=(kept,),
            events=tuple(e for e in self.events if e.path == path),
        )

    @property
    def effective_timeout_s(self) -> float:
        return self.timeout_s or 3 * self.duration_s + 20

    def to_dict(self) -> dict:
        return {**asdict(self), "traffic": self.traffic.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Scenario:
        """The scenario a to_dict() describes: how a resolved scenario reaches a guest
        (`lab run --vm`, the bench's plan), and what results.json's `scenario` holds.
        Names and values were checked when the scenario was first parsed; a document
        that is not such a dict is one UsageError."""
        try:
            return cls(**{
                **data,
                "schedulers": tuple(validate_scheduler_name(s, "schedulers", source) for s in data["schedulers"]),
                "paths": tuple(PathSpec(**p) for p in data["paths"]),
                "traffic": traffic_models.from_dict(data["traffic"]),
                "events": tuple(Event(**e) for e in data.get("events", ())),
            })
        except (TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"{source}: not a resolved scenario (Scenario.to_dict()): {exc!r}") from None



def format_quantity(key: str, value) -> str:
    if key == "rate_bps":
        return format_rate(value)
    if key.endswith("_s"):
        return format_time(value)
    if key == "loss_pct":
        return f"{value:g}%"
    return str(value)


def default_queue_packets(rate_bps: float, delay_s: float) -> int:
    """One bandwidth-delay product of buffering (rate × base RTT), at least
    MIN_QUEUE_PACKETS: enough for Cubic/Reno to keep the link busy without the
    ~0.5 s of bufferbloat netem's 1000-packet default adds at 10 Mbit/s."""
    bdp_bytes = rate_bps / 8 * (2 * delay_s)
    return max(MIN_QUEUE_PACKETS, math.ceil(bdp_bytes / MTU_FRAME))



_TOP_KEYS = {"name", "description", "duration", "seed", "repetitions", "schedulers", "paths", "traffic", "events", "mptcp",
             "timeout", "buffers"}
BUFFER_KEYS = ("client_receive", "client_send", "server_receive", "server_send")
# A buffer limit below a few segments stalls TCP rather than constraining it; above the
# kernel's own 6 MiB/4 MiB defaults (tcp_rmem/tcp_wmem max) it constrains nothing.
MIN_BUFFER = 16 * 1024
MAX_BUFFER = 64 * 1024 * 1024
_PATH_KEYS = {"rate", "delay", "jitter", "loss", "queue", "backup"}
_SET_KEYS = {"rate", "delay", "jitter", "loss", "queue"}


def validate_scheduler_name(name, key: str = "schedulers", source: str = "<arguments>") -> str:
    """Syntax only (the kernel decides whether it exists, checked before a run)."""
    return registry.check(name, where=f"{source}: {key}")


def _parse_path_params(c: Checker, key: str, data: dict, current: dict) -> dict:
    """rate/delay/jitter/loss/queue of a path table or a `set` event → PathSpec fields."""
    out = {}
    if "rate" in data:
        out["rate_bps"] = c.positive(join(key, "rate"), c.value(join(key, "rate"), parse_rate, data["rate"]))
    if "delay" in data:
        out["delay_s"] = c.positive(join(key, "delay"), c.value(join(key, "delay"), parse_time, data["delay"]), allow_zero=True)
    if "jitter" in data:
        out["jitter_s"] = c.positive(join(key, "jitter"), c.value(join(key, "jitter"), parse_time, data["jitter"]), allow_zero=True)
    if "loss" in data:
        loss = c.value(join(key, "loss"), parse_percent, data["loss"])
        if not 0 <= loss < 100:
            c.fail(join(key, "loss"), f"must be in [0%, 100%), got {loss:g}% (use a `down` event to cut a path)")
        out["loss_pct"] = loss
    if "queue" in data:
        out["queue_packets"] = c.integer(join(key, "queue"), data["queue"], 1)
        out["queue_from_bdp"] = False
    merged = {**current, **out}
    if merged.get("jitter_s", 0) > merged.get("delay_s", 0):
        c.fail(join(key, "jitter"), "must not exceed delay (netem draws delay ± jitter)")
    return out


SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_scenario(data: dict, source: str = "<dict>", default_name: str = "scenario") -> Scenario:
    """Validate a scenario document (the parsed TOML) and return a Scenario."""
    c = Checker(source)
    c.table(data, "", _TOP_KEYS, required={"duration", "paths", "traffic"})

    name = c.string("name", data.get("name", default_name))
    if not SCENARIO_NAME.fullmatch(name):
        # it names the results directory: no path separators, no leading dot, no control characters
        c.fail("name", f"{name!r}: use letters, digits, '_', '-', '.', at most 64, starting with a letter or digit")
    description = c.string("description", data.get("description", ""))
    duration = c.positive("duration", c.value("duration", parse_time, data["duration"]))
    seed = c.integer("seed", data.get("seed", 1), 0)
    repetitions = c.integer("repetitions", data.get("repetitions", 1), 1)
    timeout = 0.0
    if "timeout" in data:
        timeout = c.positive("timeout", c.value("timeout", parse_time, data["timeout"]))

    raw_schedulers = data.get("schedulers", ["default"])
    if not isinstance(raw_schedulers, list) or not raw_schedulers:
        c.fail("schedulers", "expected a non-empty list of scheduler names, e.g. [\"default\"]")
    schedulers = []
    for i, sched in enumerate(raw_schedulers):
        validate_scheduler_name(sched, join("schedulers", i), source)
        if sched in schedulers:
            c.fail(join("schedulers", i), f"scheduler {sched!r} is listed twice")
        schedulers.append(sched)

    mptcp = c.table(data.get("mptcp", {}), "mptcp", {"server_signal"})
    server_signal = c.boolean("mptcp.server_signal", mptcp.get("server_signal", False))

    raw_buffers = c.table(data.get("buffers", {}), "buffers", set(BUFFER_KEYS))
    buffers = {}
    for key in BUFFER_KEYS:
        if key in raw_buffers:
            size = c.value(join("buffers", key), parse_size, raw_buffers[key])
            if not MIN_BUFFER <= size <= MAX_BUFFER:
                c.fail(join("buffers", key), f"must be between {MIN_BUFFER // 1024}KiB and {MAX_BUFFER // 2**20}MiB, "
                                             f"got {size} bytes")
            buffers[key] = size

    # paths: an ordered table of tables; the first one carries the initial subflow
    raw_paths = c.table(data["paths"], "paths", set(data["paths"]) if isinstance(data["paths"], dict) else set())
    if not raw_paths:
        c.fail("paths", "at least one path is needed")
    if len(raw_paths) > MAX_PATHS:
        c.fail("paths", f"at most {MAX_PATHS} paths are supported, got {len(raw_paths)}")
    paths = []
    for index, (pname, pdata) in enumerate(raw_paths.items()):
        key = join("paths", pname)
        if not PATH_NAME.match(pname):
            c.fail(key, "path names start with a letter and use letters, digits, '-' and '_' (max 32)")
        c.table(pdata, key, _PATH_KEYS, required={"rate"})
        fields = _parse_path_params(c, key, pdata, {})
        backup = c.boolean(join(key, "backup"), pdata.get("backup", False))
        if backup and index == 0:
            c.fail(join(key, "backup"), "the first path carries the initial subflow and cannot be a backup path")
        paths.append(PathSpec(name=pname, backup=backup, **fields))

    traffic = _parse_traffic(c, data["traffic"], duration)
    events = _parse_events(c, data.get("events", []), duration, {p.name: p for p in paths})

    return Scenario(
        name=name,
        description=description,
        duration_s=duration,
        seed=seed,
        repetitions=repetitions,
        schedulers=tuple(schedulers),
        paths=tuple(paths),
        traffic=traffic,
        events=events,
        server_signal=server_signal,
        timeout_s=timeout,
        source=source,
        buffers=buffers,
    )


def _parse_traffic(c: Checker, data, duration: float) -> TrafficModel:
    if not isinstance(data, dict):
        c.fail("traffic", "expected a table")
    kind = data.get("kind")
    if kind not in traffic_models.MODELS:
        c.fail("traffic.kind", f"must be one of {', '.join(traffic_models.MODELS)}, got {kind!r}")
    model = traffic_models.MODELS[kind]
    c.table(data, "traffic", {"kind", *model.keys})
    return model.parse(c, data, duration)


def _parse_events(c: Checker, data, duration: float, paths: dict[str, PathSpec]) -> tuple[Event, ...]:
    if not isinstance(data, list):
        c.fail("events", "expected an array of tables ([[events]])")
    events = []
    for i, raw in enumerate(data):
        key = join("events", i)
        c.table(raw, key, {"at", "path", "action"} | _SET_KEYS, required={"at", "path", "action"})
        at = c.positive(join(key, "at"), c.value(join(key, "at"), parse_time, raw["at"]), allow_zero=True)
        if at >= duration:
            c.fail(join(key, "at"), f"event at {format_time(at)} is not before the end of the scenario ({format_time(duration)})")
        path = raw["path"]
        if path not in paths:
            c.fail(join(key, "path"), f"unknown path {path!r} (paths: {', '.join(paths)})")
        action = raw["action"]
        if action not in EVENT_ACTIONS:
            c.fail(join(key, "action"), f"must be one of {', '.join(EVENT_ACTIONS)}, got {action!r}")
        extra = sorted(set(raw) & _SET_KEYS)
        if action != "set" and extra:
            c.fail(join(key, extra[0]), f"only `set` events take {', '.join(sorted(_SET_KEYS))}")
        if action == "set" and not extra:
            c.fail(key, f"a `set` event needs at least one of {', '.join(sorted(_SET_KEYS))}")
        changes = _parse_path_params(c, key, raw, asdict(paths[path])) if action == "set" else {}
        changes.pop("queue_from_bdp", None)
        events.append(Event(at_s=at, path=path, action=action, changes=changes))
    events.sort(key=lambda e: e.at_s)

    # A path can only go down when up and up when down (a typo check more than a rule).
    state = {name: "up" for name in paths}
    for e in events:
        if e.action in ("down", "up"):
            if state[e.path] == e.action:
                c.fail("events", f"path {e.path!r} is already {e.action} at {format_time(e.at_s)}")
            state[e.path] = e.action
    return tuple(events)


def load_scenario(path: str | FilePath) -> Scenario:
    """Read and validate a TOML scenario file, or read a resolved one (`.json`:
    Scenario.to_dict(), as `lab run --vm` hands a scenario to the guest)."""
    file = FilePath(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read scenario {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{file}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{file}: not a resolved scenario (a JSON object)")
        return Scenario.from_dict(data, source=str(file))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(file), default_name=file.stem)


def with_schedulers(scenario: Scenario, schedulers: list[str]) -> Scenario:
    """The scenario with its scheduler list replaced (names syntax-checked)."""
    names = [validate_scheduler_name(s, "--schedulers") for s in schedulers]
    if not names:
        raise UsageError("--schedulers: give at least one scheduler name")
    return replace(scenario, schedulers=tuple(dict.fromkeys(names)))
