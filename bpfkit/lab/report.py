"""Turn a results document (results.json) into a markdown report and PNG plots.

Everything here reads only the document, so a report can be re-rendered later
(`bpfkit lab report DIR`) and the VM can measure while the host draws (matplotlib
under TCG emulation is slow)."""

from __future__ import annotations

import math
from pathlib import Path

from bpfkit.errors import optional_import
from bpfkit.lab import stats, traffic
from bpfkit.lab.metrics import rate_series
from bpfkit.lab.values import format_rate, format_time
from bpfkit.sched import registry

# ---------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def stdev(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


# ---------------------------------------------------------------- capacity


def capacity_timeline(scenario: dict) -> list[tuple[float, dict[str, float]]]:
    """(time, {path: rate in bit/s}) at t=0 and after each event; a down path has
    rate 0. Works on the scenario as stored in results.json."""
    rates = {p["name"]: p["rate_bps"] for p in scenario["paths"]}
    up = {name: True for name in rates}
    timeline = [(0.0, dict(rates))]
    for event in sorted(scenario.get("events", []), key=lambda e: e["at_s"]):
        if event["action"] == "down":
            up[event["path"]] = False
        elif event["action"] == "up":
            up[event["path"]] = True
        elif "rate_bps" in event.get("changes", {}):
            rates[event["path"]] = event["changes"]["rate_bps"]
        timeline.append((event["at_s"], {n: (rates[n] if up[n] else 0.0) for n in rates}))
    return timeline


def mean_path_rates(scenario: dict, t_end: float) -> dict[str, float]:
    """Each path's rate averaged over [0, t_end] (0 while down)."""
    if t_end <= 0:
        return {p["name"]: p["rate_bps"] for p in scenario["paths"]}
    timeline = capacity_timeline(scenario)
    totals = {p["name"]: 0.0 for p in scenario["paths"]}
    for i, (start, rates) in enumerate(timeline):
        end = min(timeline[i + 1][0] if i + 1 < len(timeline) else t_end, t_end)
        if end > start:
            for name, rate in rates.items():
                totals[name] += rate * (end - start)
    return {name: total / t_end for name, total in totals.items()}


def mean_capacity(scenario: dict, t_end: float) -> float:
    """Time-averaged sum of the rates of the paths that are up, over [0, t_end]:
    what the paths could have carried during the transfer."""
    return sum(mean_path_rates(scenario, t_end).values())


# ---------------------------------------------------------------- summary rows

PATH_LIMITED_GOODPUT = 0.7  # of capacity


def path_limited(run: dict, scenario: dict) -> bool | None:
    """Did the shaped paths limit a bulk transfer? Yes if the goodput reached 70 %
    of the capacity, or one path carried 70 % of its rate in the data direction
    (its bottleneck queue, counted in wire bytes): a scheduler that leaves the other
    path idle is still path-limited. A run that did neither was limited elsewhere
    (CPU, e.g. under TCG emulation, or windows), and says little about the
    scheduler. None for other traffic."""
    if not traffic.model(scenario["traffic"]["kind"]).fills_paths or not run.get("goodput_bps"):
        return None
    t_end = run.get("transfer_time_s") or scenario["duration_s"]
    rates = mean_path_rates(scenario, t_end)
    if run["goodput_bps"] >= PATH_LIMITED_GOODPUT * sum(rates.values()):
        return True
    direction = "to_client" if run.get("data_sender", "server") == "server" else "to_server"
    for name, counters in run.get("qdisc", {}).items():
        carried = counters.get(direction, {}).get("bytes", 0) * 8 / t_end
        if rates.get(name) and carried >= PATH_LIMITED_GOODPUT * rates[name]:
            return True
    return False



def _mean_srtt_ms(run: dict) -> dict[str, float]:
    """Mean smoothed RTT per path over the run (from the data sender's samples)."""
    out: dict[str, list[float]] = {}
    for sf in run.get("subflows", {}).values():
        values = [v / 1000 for v in sf.get("rtt_us", []) if v]
        if values:
            out.setdefault(sf.get("path") or "?", []).extend(values)
    return {path: sum(v) / len(v) for path, v in out.items()}


def summarize(doc: dict) -> list[dict]:
    """One row per scheduler (in run order). Metrics use the runs that passed;
    ratios compare with the `default` scheduler and with the mean path capacity."""
    scenario = doc["scenario"]
    traffic_model = traffic.model(scenario["traffic"]["kind"])
    order: list[str] = []
    by_scheduler: dict[str, list[dict]] = {}
    for run in doc["runs"]:
        if run["scheduler"] not in by_scheduler:
            order.append(run["scheduler"])
        by_scheduler.setdefault(run["scheduler"], []).append(run)

    rows = []
    for scheduler in order:
        runs = by_scheduler[scheduler]
        good = [r for r in runs if r["ok"]]
        goodputs = [r["goodput_bps"] for r in good if r.get("goodput_bps")]
        # Only a bulk transfer tries to fill the paths; request-response and cbr are
        # application-limited, so their ratio to capacity says nothing.
        capacity_ratios = [
            r["goodput_bps"] / mean_capacity(scenario, r["transfer_time_s"] or scenario["duration_s"])
            for r in good
            if r.get("goodput_bps") and traffic_model.fills_paths
        ]
        completions = [c for r in good for c in r.get("completion_times_s", [])]
        acked = [sum(r.get("bytes_by_path", {}).values()) for r in good]
        retrans = [r["retrans"]["subflow_bytes"] for r in good if r.get("retrans")]
        reinjected = [r["retrans"].get("mptcp_bytes") or 0 for r in good if r.get("retrans")]
        shares: dict[str, list[float]] = {}
        srtt: dict[str, list[float]] = {}
        for r in good:
            total = sum(r.get("bytes_by_path", {}).values())
            for path, value in r.get("bytes_by_path", {}).items():
                shares.setdefault(path, []).append(value / total if total else 0.0)
            for path, value in _mean_srtt_ms(r).items():
                srtt.setdefault(path, []).append(value)
        limited = [path_limited(r, scenario) for r in good]
        rows.append(
            {
                "scheduler": scheduler,
                "runs": len(runs),
                "ok_runs": len(good),
                "path_limited_runs": sum(1 for v in limited if v) if traffic_model.fills_paths else None,
                "goodput_bps": mean(goodputs),
                "goodput_std_bps": stdev(goodputs),
                "vs_capacity": mean(capacity_ratios),
                "completion_mean_s": mean(completions),
                "completion_p50_s": percentile(completions, 50),
                "completion_p95_s": percentile(completions, 95),
                "completion_p99_s": percentile(completions, 99),
                "completion_count": len(completions),
                "retrans_fraction": (sum(retrans) / sum(acked)) if acked and sum(acked) else None,
                "reinjected_bytes": mean(reinjected),
                "path_share": {p: mean(v) for p, v in shares.items()},
                "srtt_ms": {p: mean(v) for p, v in srtt.items()},
                "failures": [f for r in runs for f in r.get("failures", [])],
            }
        )
    default = next((r for r in rows if r["scheduler"] == "default"), None)
    default_by_rep = {r["repetition"]: r for r in by_scheduler.get("default", []) if r["ok"]}
    for row in rows:
        row["vs_default"] = ratio(row["goodput_bps"], default["goodput_bps"]) if default else None
        row["completion_p95_vs_default"] = ratio(row["completion_p95_s"], default["completion_p95_s"]) if default else None
        # Intervals (stats.py): goodput over this scheduler's passing runs; the ratio to default
        # over runs paired by repetition (same seed), both passing.
        good = [r for r in by_scheduler[row["scheduler"]] if r["ok"]]
        interval = stats.mean_interval([r["goodput_bps"] for r in good if r.get("goodput_bps")])
        row["goodput_ci_bps"] = interval.bounds() if interval else None
        pairs = [(r.get("goodput_bps"), default_by_rep[r["repetition"]].get("goodput_bps"))
                 for r in good if r["repetition"] in default_by_rep]
        interval = stats.ratio_interval(pairs) if default else None
        row["vs_default_ci"] = interval.bounds() if interval else None
        row["vs_default_pairs"] = len([p for p in pairs if p[0] is not None and p[1]])
    return rows


def vs_default_interval(row: dict) -> "stats.Interval | None":
    """The summary row's ratio to default with its interval (for verdicts against a bar)."""
    if row.get("vs_default") is None:
        return None
    low, high = row.get("vs_default_ci") or (None, None)
    return stats.Interval(row["vs_default"], low, high)


# ---------------------------------------------------------------- formatting


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f}"


def table_columns(doc: dict) -> list[str]:
    traffic_model = traffic.model(doc["scenario"]["traffic"]["kind"])
    columns = ["Scheduler", "Runs ok", "Goodput (Mbit/s)", "× default", "× capacity", traffic_model.completion_column,
               "TCP retrans", "Reinjected", "Path share", "Mean srtt (ms)"]
    if traffic_model.fills_paths:
        columns.insert(2, "Path-limited")
    return columns


def table_rows(doc: dict) -> list[list[str]]:
    """The report table as strings (shared by the markdown and the terminal)."""
    traffic_model = traffic.model(doc["scenario"]["traffic"]["kind"])
    out = []
    for row in summarize(doc):
        goodput = _fmt(row["goodput_bps"] and row["goodput_bps"] / 1e6, ".2f")
        if row["goodput_std_bps"] is not None:
            goodput += f" ± {row['goodput_std_bps'] / 1e6:.2f}"
        if not traffic_model.percentiles:
            completion = _fmt(row["completion_mean_s"], ".2f")
        else:
            completion = " / ".join(_ms(row[f"completion_p{q}_s"]) for q in (50, 95, 99))
        share = " / ".join(f"{p} {v * 100:.0f}%" for p, v in row["path_share"].items()) or "—"
        srtt = " / ".join(f"{p} {v:.1f}" for p, v in row["srtt_ms"].items()) or "—"
        reinjected = row["reinjected_bytes"]
        cells = [
            row["scheduler"],
            f"{row['ok_runs']}/{row['runs']}",
            goodput,
            _fmt(row["vs_default"], ".2f") + (f" [{row['vs_default_ci'][0]:.2f}, {row['vs_default_ci'][1]:.2f}]"
                                                 if row.get("vs_default_ci") and row["scheduler"] != "default" else ""),
            _fmt(row["vs_capacity"], ".2f"),
            completion,
            _fmt(row["retrans_fraction"] and row["retrans_fraction"] * 100, ".2f", "%"),
            "—" if reinjected is None else f"{reinjected / 1e3:.0f} kB",
            share,
            srtt,
        ]
        if traffic_model.fills_paths:
            cells.insert(2, f"{row['path_limited_runs']}/{row['ok_runs']}")
        out.append(cells)
    return out


def markdown_report(doc: dict, plots: list[str] | None = None) -> str:
    sc = doc["scenario"]
    lines = [f"# Lab report: {sc['name']}", ""]
    if sc.get("description"):
        lines += [sc["description"], ""]
    vm = doc.get("vm")
    if vm and vm.get("accel") == "tcg":
        lines += [
            "> **Measured in the bpfkit VM under TCG emulation (no KVM here).** The emulated CPU, not the",
            "> paths, limits throughput and inflates RTTs: compare schedulers with care and check the",
            "> path-limited column; absolute numbers are not the kernel's.",
            "",
        ]
    lines += [
        f"- kernel: `{doc['kernel']}`" + (f" in the bpfkit VM ({vm['accel']}, {vm['total_seconds']:.0f} s including boot)" if vm else ""),
        f"- shaping: **{doc['shaping']}** — {doc['shaping_note']}",
        f"- traffic: {traffic.from_dict(sc['traffic']).describe()}; scenario duration {format_time(sc['duration_s'])}",
        f"- schedulers: {', '.join(sc['schedulers'])}; repetitions: {sc['repetitions']}; seed: {sc['seed']} (repetition r uses seed + r)",
        "- `× default [low, high]`: the ratio of mean goodputs and its 95 % bootstrap interval over runs paired by "
        "repetition (same seed); no interval with fewer than two pairs",
        f"- measured {doc.get('started', '?')}: {len(doc['runs'])} run(s) in {doc.get('elapsed_s', 0):.1f} s",
        "",
        "| Path | Rate | One-way delay (base RTT) | Jitter | Loss | Queue (packets) | Backup |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sc["paths"]:
        queue = f"{p['queue_packets']}" + (" (1 BDP)" if p.get("queue_from_bdp") else "")
        lines.append(
            f"| {p['name']} | {format_rate(p['rate_bps'])} | {format_time(p['delay_s'])} ({format_time(2 * p['delay_s'])}) | "
            f"{format_time(p['jitter_s'])} | {p['loss_pct']:g}% | {queue} | {'yes' if p['backup'] else 'no'} |"
        )
    if sc.get("events"):
        lines += ["", "Events (seconds after the connection is established):", ""]
        for e in sc["events"]:
            lines.append(f"- {e['at_s']:g} s: {event_label(e, doc['shaping'])}")
    columns = table_columns(doc)
    lines += ["", "## Results", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table_rows(doc):
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "A run is ok only if every byte arrived and matched the seeded pattern at its offset (and MPTCP did not",
        "fall back to TCP); the metrics use ok runs only.",
        "Goodput is verified application bytes per second at the receiver. × capacity divides it by the",
        "time-averaged sum of the rates of the paths that were up (wire rates, so headers make ~0.95 the ceiling).",
        "TCP retrans is subflow-level retransmitted bytes over acknowledged bytes; Reinjected is MPTCP-level",
        "retransmission of data across subflows. Path share and srtt come from the data sender's MPTCP_FULL_INFO samples.",
    ]
    if traffic.model(sc["traffic"]["kind"]).fills_paths:
        lines += [
            f"Path-limited counts the runs that reached {PATH_LIMITED_GOODPUT:.0%} of capacity or kept one path {PATH_LIMITED_GOODPUT:.0%} busy;",
            "the others were limited by something else (CPU, windows) and say little about the scheduler.",
        ]
    traced = [r for r in doc["runs"] if "observed" in r]
    if traced:
        lines += ["", "## Scheduler decisions (`--trace`)", "",
                  "Each get_send/get_retrans of the data sender's connection, traced in the kernel (`bpfkit sched trace`).",
                  "", "| Scheduler | Run | Decisions | get_send | get_retrans | Picks per subflow | Mean call | Lost |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in traced:
            obs = r["observed"]
            total = sum(obs.get("picks", {}).values()) or 1
            picks = ", ".join(f"#{i} {n / total:.0%}" for i, n in sorted(obs.get("picks", {}).items())) or "-"
            mean_us = f"{obs['mean_call_us']:.1f} µs" if obs.get("mean_call_us") is not None else "-"
            lines.append(f"| {r['scheduler']} | {r['repetition'] + 1} | {obs.get('count', 0)} | "
                         f"{obs.get('calls', {}).get('get_send', 0)} | {obs.get('calls', {}).get('get_retrans', 0)} | "
                         f"{picks} | {mean_us} | {obs.get('lost', 0)} |")
    failures = [(r["scheduler"], r["repetition"], f) for r in doc["runs"] for f in r.get("failures", [])]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {s} #{rep + 1}: {f}" for s, rep, f in failures]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def _representative_runs(doc: dict) -> list[dict]:
    """Per scheduler, the first passing run (else the first run)."""
    chosen: dict[str, dict] = {}
    for run in doc["runs"]:
        current = chosen.get(run["scheduler"])
        if current is None or (not current["ok"] and run["ok"]):
            chosen[run["scheduler"]] = run
    return list(chosen.values())


def _path_colors(doc: dict) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    return {p["name"]: palette[i % len(palette)] for i, p in enumerate(doc["scenario"]["paths"])}


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1 or len(values) < window:
        return values
    half = window // 2
    return [sum(values[max(0, i - half) : i + half + 1]) / len(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def event_label(event: dict, shaping: str = "netem") -> str:
    """'wifi down', 'wifi rate 1 Mbit/s, delay 100 ms (not emulated)'."""
    if event["action"] != "set":
        return f"{event['path']} {event['action']}"
    parts = []
    for key, value in event.get("changes", {}).items():
        name = key.split("_")[0]
        if key == "rate_bps":
            text = f"{name} {format_rate(value)}"
        elif key.endswith("_s"):
            text = f"{name} {format_time(value)}"
        elif key == "loss_pct":
            text = f"{name} {value:g}%"
        else:
            text = f"{name} {value}"
        if shaping == "tbf" and key in ("delay_s", "jitter_s", "loss_pct"):
            text += " (not emulated)"
        parts.append(text)
    return f"{event['path']} " + ", ".join(parts)


def _mark_events(ax, doc: dict, label: bool) -> None:
    for e in doc["scenario"].get("events", []):
        ax.axvline(e["at_s"], color="#555555", linestyle=":", linewidth=1)
        if label:
            ax.annotate(event_label(e, doc["shaping"]), (e["at_s"], 1), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8, color="#333333")


def _legend_below(fig, ax, columns: int) -> None:
    """One legend for the figure, under the panels, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(columns, len(handles)), fontsize=9, frameon=False)


def plot_throughput(doc: dict, path: Path) -> Path:
    """Per-subflow throughput (acknowledged bytes) over time, one panel per scheduler,
    with each path's nominal capacity as a dashed step line."""
    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _representative_runs(doc)
    colors = _path_colors(doc)
    timeline = capacity_timeline(doc["scenario"])
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.8 * len(runs) + 0.8), sharex=True, sharey=True, squeeze=False)
    t_max = max([doc["scenario"]["duration_s"]] + [max(sf["t"]) for r in runs for sf in r.get("subflows", {}).values() if sf["t"]])
    for ax, run in zip(axes[:, 0], runs):
        total: dict[float, float] = {}  # subflows are sampled together, so times coincide
        for sf in sorted(run.get("subflows", {}).values(), key=lambda s: s["id"]):
            t, r = rate_series(sf["t"], [v or 0 for v in sf["bytes_acked"]])
            r = _smooth(r, 3)
            name = sf.get("path") or "?"
            ax.plot(t, [v / 1e6 for v in r], color=colors.get(name, "black"), linewidth=1.8, label=f"{name} (subflow {sf['id']})", zorder=3)
            for x, v in zip(t, r):
                total[x] = total.get(x, 0.0) + v
        if len(run.get("subflows", {})) > 1:
            xs = sorted(total)
            ax.plot(xs, [total[x] / 1e6 for x in xs], color="#999999", linewidth=1.0, label="total", zorder=2)
        for name, color in colors.items():
            xs, ys = [], []
            for i, (start, rates) in enumerate(timeline):
                end = timeline[i + 1][0] if i + 1 < len(timeline) else t_max
                xs += [start, end]
                ys += [rates[name] / 1e6] * 2
            ax.plot(xs, ys, color=color, linestyle="--", linewidth=0.9, alpha=0.7)
        _mark_events(ax, doc, label=ax is axes[0, 0])
        status = "" if run["ok"] else "  [FAILED]"
        goodput = f"{run['goodput_bps'] / 1e6:.1f} Mbit/s" if run.get("goodput_bps") else "no goodput"
        ax.set_title(f"{run['scheduler']} — goodput {goodput}{status}", loc="left", fontsize=10)
        ax.set_ylabel("Mbit/s")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, t_max)
    axes[-1, 0].set_xlabel("seconds since connection start   (dashed: path capacity)")
    fig.suptitle(f"Per-subflow throughput (acknowledged bytes) — {doc['scenario']['name']} ({doc['shaping']}, {doc['kernel']})", fontsize=11)
    _legend_below(fig, axes[0, 0], columns=4)
    fig.tight_layout(rect=(0, 0.06 if len(runs) > 1 else 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rtt(doc: dict, path: Path) -> Path:
    """Smoothed RTT of each subflow over time, one panel per scheduler."""
    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _representative_runs(doc)
    colors = _path_colors(doc)
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.4 * len(runs) + 0.8), sharex=True, sharey=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        for sf in sorted(run.get("subflows", {}).values(), key=lambda s: s["id"]):
            pts = [(t, v / 1000) for t, v in zip(sf["t"], sf["rtt_us"]) if v]
            if pts:
                name = sf.get("path") or "?"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors.get(name, "black"), linewidth=1.4, label=f"{name} (subflow {sf['id']})")
        for p in doc["scenario"]["paths"]:
            if doc["shaping"] == "netem" and p["delay_s"]:
                ax.axhline(2 * p["delay_s"] * 1000, color=colors[p["name"]], linestyle="--", linewidth=0.8, alpha=0.7)
        _mark_events(ax, doc, label=ax is axes[0, 0])
        ax.set_title(run["scheduler"], loc="left", fontsize=10)
        ax.set_ylabel("srtt (ms)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    note = "dashed: base RTT" if doc["shaping"] == "netem" else "no delay emulated (tbf): queueing delay only"
    axes[-1, 0].set_xlabel(f"seconds since connection start   ({note})")
    fig.suptitle(f"Subflow smoothed RTT — {doc['scenario']['name']} ({doc['shaping']})", fontsize=11)
    _legend_below(fig, axes[0, 0], columns=4)
    fig.tight_layout(rect=(0, 0.06 if len(runs) > 1 else 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_decisions(doc: dict, path: Path) -> Path | None:
    """The scheduler's decisions over time (`lab run --trace`): per representative run, the
    subflow each get_send (dot) / get_retrans (cross) picked, one row per subflow, on the
    throughput plot's time axis."""
    runs = [r for r in _representative_runs(doc) if r.get("observed", {}).get("t")]
    if not runs:
        return None
    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.6 * len(runs) + 0.9), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        obs = run["observed"]
        for call, marker in (("get_send", "."), ("get_retrans", "x")):
            xs = [t for t, c in zip(obs["t"], obs["call"]) if c == call]
            ys = [i for i, c in zip(obs["chosen"], obs["call"]) if c == call]
            if xs:
                ax.plot(xs, ys, linestyle="none", marker=marker, markersize=3, label=call)
        picks = ", ".join(f"#{i}: {n}" for i, n in sorted(obs.get("picks", {}).items()))
        sampled = f", every {obs['every']}th shown" if obs.get("every", 1) > 1 else ""
        ax.set_title(f"{run['scheduler']} — {obs.get('count', 0)} decisions ({picks}){sampled}", loc="left", fontsize=10)
        ax.set_ylabel("subflow")
        ax.set_yticks(sorted({*obs["chosen"]}))
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since connection start   (0: nothing picked)")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Scheduler decisions (data sender) — {doc['scenario']['name']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_completion_cdf(doc: dict, path: Path) -> Path | None:
    """Empirical CDF of completion times (request-response), message latencies
    (cbr) or transfer times (bulk with several repetitions), per scheduler."""
    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traffic_model = traffic.model(doc["scenario"]["traffic"]["kind"])
    data: dict[str, list[float]] = {}
    for run in doc["runs"]:
        if run["ok"]:
            data.setdefault(run["scheduler"], []).extend(run.get("completion_times_s", []))
    if not data or max(len(v) for v in data.values()) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for scheduler, values in data.items():
        xs = sorted(v * 1000 for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", linewidth=1.6, color=registry.colour(scheduler), label=f"{scheduler} (n={len(xs)}, p95 {percentile(xs, 95):.1f} ms)")
    all_values = [v for vs in data.values() for v in vs if v > 0]
    if all_values and max(all_values) / min(all_values) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(traffic_model.completion_axis)
    ax.set_ylabel("fraction ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(f"Completion-time CDF — {doc['scenario']['name']} ({doc['shaping']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(doc: dict, out_dir: Path) -> list[Path]:
    """Write report.md and the plots into out_dir; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_throughput(doc, out_dir / "throughput.png"), plot_rtt(doc, out_dir / "rtt.png")]
    for extra in (plot_completion_cdf(doc, out_dir / "completion_cdf.png"), plot_decisions(doc, out_dir / "decisions.png")):
        if extra:
            plots.append(extra)
    report = out_dir / "report.md"
    report.write_text(markdown_report(doc, [str(p) for p in plots]))
    return [report, *plots]
