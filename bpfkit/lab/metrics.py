"""Measurements taken inside the traffic processes: a periodic MPTCP_FULL_INFO
sampler for one socket, and the MPTcpExt counters of the process's namespace.
Plus the pure functions that turn samples into rates (used by the report)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

from bpfkit import mptcp_sockopt

# Subflow tcp_info fields kept per sample (the rest is not worth the JSON size).
SUBFLOW_FIELDS = (
    "bytes_sent",
    "bytes_acked",
    "bytes_retrans",
    "bytes_received",
    "rtt_us",
    "rttvar_us",
    "min_rtt_us",
    "snd_cwnd",
    "snd_ssthresh",
    "total_retrans",
    "pacing_rate",
    "delivery_rate",
    "notsent_bytes",
    "unacked",
    "lost",
    "ca_state",
    "state",
)
CONNECTION_FIELDS = ("bytes_sent", "bytes_acked", "bytes_retrans", "bytes_received", "subflows_total", "retransmits")


def snapshot(sock) -> dict:
    """One MPTCP_FULL_INFO reading as a compact JSON-able dict."""
    info = mptcp_sockopt.full_info(sock)
    return {
        "t_ns": time.monotonic_ns(),
        "mptcp": {k: getattr(info.mptcp, k) for k in CONNECTION_FIELDS},
        "subflows": [
            {
                "id": sf.id,
                "local": list(sf.local) if sf.local else None,
                "remote": list(sf.remote) if sf.remote else None,
                **{k: getattr(sf.tcp, k) for k in SUBFLOW_FIELDS},
            }
            for sf in info.subflows
        ],
    }


class Sampler:
    """Samples a socket every `interval` seconds in a background thread.
    getsockopt releases the GIL, so the traffic loop is barely disturbed."""

    def __init__(self, sock, interval: float = 0.1):
        self.sock = sock
        self.interval = interval
        self.samples: list[dict] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mptcp-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample_now(self) -> None:
        try:
            self.samples.append(snapshot(self.sock))
        except OSError as exc:
            self.error = self.error or f"MPTCP_FULL_INFO: {exc.strerror or exc}"

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample_now()
            if self.error:
                return
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> list[dict]:
        """Stop and take a last sample (call before closing the socket)."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            if not self.error:
                self.sample_now()
        return self.samples


def read_mptcp_counters(path: str | Path = "/proc/net/netstat") -> dict[str, int]:
    """MPTcpExt counters of the reader's network namespace."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    rows = [line.split() for line in lines if line.startswith("MPTcpExt:")]
    if len(rows) < 2:
        return {}
    return {name: int(value) for name, value in zip(rows[0][1:], rows[1][1:])}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that changed, as after − before."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# ---------------------------------------------------------------- time series maths


def rate_series(times_s: Iterable[float], counters: Iterable[int]) -> tuple[list[float], list[float]]:
    """Bit rate between consecutive counter readings, placed at the interval's
    midpoint. Counter resets (a new subflow reusing an id) count as zero."""
    t, c = list(times_s), list(counters)
    out_t, out_r = [], []
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        if dt <= 0:
            continue
        delta = max(0, c[i] - c[i - 1])
        out_t.append((t[i] + t[i - 1]) / 2)
        out_r.append(delta * 8 / dt)
    return out_t, out_r


def subflow_series(samples: list[dict], t0_ns: int, path_of: callable) -> dict[str, dict]:
    """Regroup samples per subflow: key '<id>' → {path, local, remote, t, fields...}.
    `path_of(local, remote)` names the path a subflow uses."""
    series: dict[str, dict] = {}
    for sample in samples:
        t = (sample["t_ns"] - t0_ns) / 1e9
        for sf in sample["subflows"]:
            key = str(sf["id"])
            entry = series.get(key)
            if entry is None:
                entry = series[key] = {
                    "id": sf["id"],
                    "local": sf["local"],
                    "remote": sf["remote"],
                    "path": path_of(sf["local"], sf["remote"]),
                    "t": [],
                    **{f: [] for f in SUBFLOW_FIELDS},
                }
            entry["t"].append(round(t, 4))
            for f in SUBFLOW_FIELDS:
                entry[f].append(sf.get(f))
    return series
