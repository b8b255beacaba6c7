"""`bpfkit top`: MPTCP connections and their subflows, sampled periodically.

Rates are byte-counter deltas between two successive samples of the same
subflow (keyed by its socket cookie), so the first sample of a subflow has no
rate. The scheduler is not exposed per connection by the kernel (mptcp_info
has no such field): what we can report is the netns's net.mptcp.scheduler,
which every MPTCP socket created in that netns picks at creation time — hence
the "(netns default)" label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit import sock_diag
from bpfkit.netns import entered as entered_netns

SCHEDULER_SYSCTL = Path("/proc/sys/net/mptcp/scheduler")


def netns_scheduler() -> str | None:
    """net.mptcp.scheduler of the netns this thread is in (None: no such sysctl,
    i.e. a kernel without MPTCP schedulers)."""
    try:
        return SCHEDULER_SYSCTL.read_text().strip()
    except OSError:
        return None


def _endpoint(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Counters:
    at: float
    bytes_sent: int
    bytes_received: int
    bytes_acked: int


@dataclass
class Sampler:
    """Keeps the previous counters of each subflow to turn them into rates."""

    netns: str | None = None
    _previous: dict[int, _Counters] = field(default_factory=dict)

    def sample(self) -> dict:
        """One JSON-able sample: time, netns, scheduler, connections with subflows."""
        with entered_netns(self.netns):
            conns = sock_diag.connections()
            scheduler = netns_scheduler()
        now = time.monotonic()
        seen: dict[int, _Counters] = {}
        out_conns = []
        for conn in conns:
            subflows = []
            for sf in conn.subflows:
                tcp = sf.tcp
                rates = {"send_bps": None, "recv_bps": None, "acked_bps": None}
                if tcp is not None and tcp.bytes_sent is not None:
                    counters = _Counters(now, tcp.bytes_sent, tcp.bytes_received or 0, tcp.bytes_acked or 0)
                    seen[sf.cookie] = counters
                    before = self._previous.get(sf.cookie)
                    if before is not None and now > before.at:
                        dt = now - before.at
                        rates = {
                            "send_bps": max(0, counters.bytes_sent - before.bytes_sent) * 8 / dt,
                            "recv_bps": max(0, counters.bytes_received - before.bytes_received) * 8 / dt,
                            "acked_bps": max(0, counters.bytes_acked - before.bytes_acked) * 8 / dt,
                        }
                subflows.append({
                    "local": _endpoint(sf.local),
                    "remote": _endpoint(sf.remote),
                    "state": sf.state,
                    "id_local": sf.id_local,
                    "id_remote": sf.id_remote,
                    "backup": sf.backup,
                    **rates,
                    "srtt_us": tcp.rtt_us if tcp else None,
                    "rttvar_us": tcp.rttvar_us if tcp else None,
                    "cwnd": tcp.snd_cwnd if tcp else None,
                    "retrans": tcp.total_retrans if tcp else None,
                    "bytes_sent": tcp.bytes_sent if tcp else None,
                    "bytes_received": tcp.bytes_received if tcp else None,
                    "bytes_acked": tcp.bytes_acked if tcp else None,
                })
            info = conn.info
            out_conns.append({
                "token": f"{conn.token:08x}" if conn.token is not None else None,
                "local": _endpoint(conn.local),
                "remote": _endpoint(conn.remote),
                "state": conn.state,
                "scheduler": scheduler,
                "scheduler_source": "netns default",
                "fallback": info.fallback if info else None,
                "bytes_sent": info.bytes_sent if info else None,
                "bytes_received": info.bytes_received if info else None,
                "retransmits": info.retransmits if info else None,
                "send_bps": _total(subflows, "send_bps"),
                "recv_bps": _total(subflows, "recv_bps"),
                "subflows": subflows,
            })
        self._previous = seen  # forget subflows that are gone
        return {"time": time.time(), "netns": self.netns, "scheduler": scheduler, "connections": out_conns}


def _total(subflows: list[dict], key: str) -> float | None:
    values = [s[key] for s in subflows if s[key] is not None]
    return sum(values) if values else None


# ---------------------------------------------------------------- rendering


def format_bps(bps: float | None) -> str:
    if bps is None:
        return "–"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def format_us(us: int | None) -> str:
    if us is None:
        return "–"
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us} µs"


def scheduler_label(sample: dict) -> str:
    name = sample.get("scheduler")
    return f"{name} (netns default)" if name else "unknown (no net.mptcp.scheduler)"


def render_table(sample: dict):
    """A rich Table: one row per connection, then one indented row per subflow."""
    from rich.table import Table

    where = f"netns {sample['netns']}" if sample.get("netns") else "this netns"
    table = Table(title=f"MPTCP connections — {where} — scheduler: {scheduler_label(sample)}", title_justify="left")
    for name, justify in (("connection / subflow", "left"), ("local → remote", "left"), ("state", "left"),
                          ("tx", "right"), ("rx", "right"), ("srtt", "right"), ("cwnd", "right"),
                          ("retrans", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    if not sample["connections"]:
        table.add_row("(no MPTCP connections)", "", "", "", "", "", "", "")
    for conn in sample["connections"]:
        label = f"token {conn['token'] or '?'}" + (" fallback" if conn["fallback"] else "")
        table.add_row(label, f"{conn['local']} → {conn['remote']}", conn["state"], format_bps(conn["send_bps"]),
                      format_bps(conn["recv_bps"]), "", "", _count(conn["retransmits"]), style="bold")
        for sf in conn["subflows"]:
            ids = f"id {sf['id_local']}" if sf["id_local"] is not None else "id ?"
            table.add_row(f"  └ subflow {ids}" + (" backup" if sf["backup"] else ""),
                          f"{sf['local']} → {sf['remote']}", sf["state"], format_bps(sf["send_bps"]),
                          format_bps(sf["recv_bps"]), format_us(sf["srtt_us"]), _count(sf["cwnd"]),
                          _count(sf["retrans"]))
    return table


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)
