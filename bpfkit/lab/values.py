"""Scenario values: quantities with units (rates, times, sizes, percentages),
parsed to base units and formatted back, and the Checker that walks a TOML
table and reports a bad value with its file and key path
(`wifi-lte.toml: paths.wifi.rate: must be > 0`). Shared by the scenario parser
and the traffic models, which parse their own `[traffic]` keys."""

from __future__ import annotations

import math
import re

from bpfkit.errors import UsageError

# ---------------------------------------------------------------- quantities

_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}
_QUANTITY = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%/]*)\s*$")


class Invalid(Exception):
    """A value problem; the loader adds file and key path."""


def _split(value, what: str, example: str) -> tuple[float, str]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(f"expected {what} like {example!r}, got {value!r}")
    if not isinstance(value, str):
        number, unit = float(value), ""
    else:
        match = _QUANTITY.match(value)
        if not match:
            raise Invalid(f"expected {what} like {example!r}, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    # '1e400' parses to inf; no quantity of a scenario is anywhere near 1e15 of its unit
    if not math.isfinite(number) or abs(number) > 1e15:
        raise Invalid(f"expected {what} like {example!r}, got {value!r} (out of range)")
    return number, unit


MAX_RATE = 100e9  # bit/s: far above what a veth in a (TCG) guest carries; netem takes up to u64 bytes/s


def parse_rate(value) -> float:
    """'20mbit' → 20e6 bit/s. Units: bit, kbit, mbit, gbit (tc style, powers of 1000)."""
    number, unit = _split(value, "a rate", "20mbit")
    if unit.endswith("/s"):
        unit = unit[:-2]
    if unit not in _RATE_UNITS:
        raise Invalid(f"unknown rate unit in {value!r} (use bit, kbit, mbit or gbit; e.g. '20mbit')")
    rate = number * _RATE_UNITS[unit]
    if rate > MAX_RATE:
        raise Invalid(f"rate {value!r} is above {MAX_RATE / 1e9:g} gbit")
    return rate


def parse_time(value) -> float:
    """'10ms' → 0.010 s. Units: us, ms, s, min. A unit is required."""
    number, unit = _split(value, "a duration", "20ms")
    if unit not in _TIME_UNITS:
        raise Invalid(f"expected a duration with a unit (us, ms, s, min) like '20ms', got {value!r}")
    return number * _TIME_UNITS[unit]


def parse_size(value) -> int:
    """'20MB' → 20_000_000 bytes; a bare integer is bytes. KB/MB/GB are powers of
    1000, KiB/MiB/GiB powers of 1024."""
    number, unit = _split(value, "a size", "20MB")
    unit = unit or "b"
    if unit not in _SIZE_UNITS:
        raise Invalid(f"unknown size unit in {value!r} (use B, KB, KiB, MB, MiB, GB, GiB)")
    return int(number * _SIZE_UNITS[unit])


def parse_percent(value) -> float:
    """'0.5%' → 0.5. Only strings with '%' (or the number 0) are accepted so that
    0.01 cannot silently mean 1 %."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    number, unit = _split(value, "a percentage", "0.5%")
    if unit != "%":
        raise Invalid(f"expected a percentage like '0.5%', got {value!r}")
    return number


def format_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def format_time(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g} ms"
    return f"{seconds * 1e6:g} us"


# ---------------------------------------------------------------- checking a table


class Checker:
    """Walks the TOML document; every error names the file and the key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str):
        where = f"{self.source}: {key}" if key else self.source
        raise UsageError(f"{where}: {message}")

    def table(self, data, key: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table, got {type(data).__name__}")
        for name in data:
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                self.fail(join(key, name), f"unknown key (known keys here: {known})")
        for name in sorted(required):
            if name not in data:
                self.fail(join(key, name), "required key is missing")
        return data

    def value(self, key: str, parse, raw):
        try:
            return parse(raw)
        except Invalid as exc:
            self.fail(key, str(exc))

    def positive(self, key: str, value: float, allow_zero: bool = False):
        if value < 0 or (value == 0 and not allow_zero):
            self.fail(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value:g}")
        return value

    def integer(self, key: str, raw, minimum: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.fail(key, f"expected an integer, got {raw!r}")
        if raw < minimum:
            self.fail(key, f"must be >= {minimum}, got {raw}")
        return raw

    def boolean(self, key: str, raw) -> bool:
        if not isinstance(raw, bool):
            self.fail(key, f"expected true or false, got {raw!r}")
        return raw

    def string(self, key: str, raw) -> str:
        if not isinstance(raw, str):
            self.fail(key, f"expected a string, got {raw!r}")
        return raw


def join(prefix: str, key) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)
