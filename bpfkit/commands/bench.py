"""`bpfkit bench schedulers [--out DIR] [--json] [--quick]`: default, minrtt,
redundant, blest and ecf on the lab's scenarios in one VM boot; a table, plots,
results.json and bench.json (targets met / unmet). See docs/bench.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bpfkit import bench
from bpfkit.lab import traffic


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: compare the reference BPF MPTCP schedulers in the VM")
    sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser(
        "schedulers",
        help="load minrtt/redundant/blest/ecf in the VM and run the lab scenarios against default",
        description="One VM boot: registers the schedulers in bpf/sched/ with `bpfkit sched load`, runs wifi-lte, "
                    "wifi-lte-256k, lossy-path, lossy-rr and handover for each, and reports the issue's targets as "
                    "met/unmet. Exit status: 0 when the bench produced results (whatever the targets), "
                    "non-zero when it could not run.",
    )
    s.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: results/bench-schedulers-<time>)")
    s.add_argument("--json", action="store_true", help="print bench.json instead of the tables")
    s.add_argument("--plan", choices=sorted(bench.PLANS), default="full",
                   help="full: the five scenarios of `make demo`; quick: only what their targets need, shorter; "
                        "regimes: BLEST's and ECF's regimes and three paths, with the papers' targets")
    s.add_argument("--quick", action="store_const", const="quick", dest="plan",
                   help="the same as --plan quick (13 runs instead of 25); about 6 minutes under TCG")
    s.add_argument("--scheduler", action="append", default=[], metavar="FILE", dest="files",
                   help="also measure this scheduler (.bpf.c, built on the host for the VM kernel, or a prebuilt .o) "
                        "in every scenario of the plan, registered in the guest for the run (repeatable)")
    s.add_argument("--shard", metavar="K/N", type=str,
                   help="measure only the K-th of N deterministic slices of the plan (e.g. one job of a CI matrix); "
                        "`bpfkit bench merge` puts the shards' outputs together")
    s.set_defaults(handler=handle_schedulers)

    m = sub.add_parser(
        "merge",
        help="combine the outputs of `bench schedulers --shard K/N` runs into one bench",
        description="Reads each shard's OUT (plan.json, guest.json, results.json and the scenario results), checks that "
                    "they are the N shards of one plan, and writes one bench into --out in the format of a single run "
                    "(results.json, bench.json, bench.png, a report per scenario).",
    )
    m.add_argument("shards", nargs="+", type=Path, metavar="SHARD_DIR", help="the output directory of each shard")
    m.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the merged bench goes (a new directory)")
    m.add_argument("--json", action="store_true", help="print bench.json instead of the tables")
    m.set_defaults(handler=handle_merge)


def handle_schedulers(args) -> int:
    shard = bench.parse_shard(args.shard) if args.shard else None
    out = args.out or bench.default_out()
    console = Console(stderr=True, soft_wrap=True)
    what = ("bench" if args.plan == "full" else f"{args.plan} bench") + (f", shard {shard[0]}/{shard[1]}" if shard else "")
    console.print(f"{what}: one VM boot, results in {out}", highlight=False)
    # With --json stdout must stay pure JSON: the guest's output goes to stderr.
    echo = (lambda text: sys.stderr.write(text)) if args.json else None
    return _show(bench.run(out, plan_name=args.plan, shard=shard, echo_guest=echo, files=tuple(args.files)),
                 args.json)


def handle_merge(args) -> int:
    return _show(bench.merge(args.out, args.shards), args.json)


def _show(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


def _ms(value) -> str:
    return "—" if value is None else f"{value * 1e3:.0f}"


def print_report(result: dict) -> None:
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(width=160, soft_wrap=True)
    vm = result.get("vm") or {}
    where = f"VM, {vm['accel']}" if vm.get("accel") else "host"
    table = Table(title=f"bpfkit bench schedulers — kernel {result.get('kernel')} ({where})",
                  title_justify="left")
    for column in ("Scenario", "Scheduler", "Runs ok", "Goodput (Mbit/s)", "× capacity", "× default",
                   "Completion p50 / p99 (ms)", "Path share"):
        table.add_column(column, overflow="fold")
    for row in result["table"]:
        goodput = "—" if row["goodput_bps"] is None else f"{row['goodput_bps'] / 1e6:.2f}"
        model = traffic.model(row["kind"])
        bulk = model.fills_paths  # goodput against capacity and default means something
        completion = (f"{row['completion_mean_s']:.2f} s" if not model.percentiles and row["completion_mean_s"] is not None
                      else f"{_ms(row['completion_p50_s'])} / {_ms(row['completion_p99_s'])}")
        share = " / ".join(f"{p} {v * 100:.0f}%" for p, v in row["path_share"].items()) or "—"
        table.add_row(row["scenario"], f"[dim]{row['scheduler']}[/]" if row.get("reference") else row["scheduler"], f"{row['ok_runs']}/{row['runs']}", goodput,
                      "—" if row["vs_capacity"] is None or not bulk else f"{row['vs_capacity']:.2f}",
                      "—" if row["vs_default"] is None or not bulk else f"{row['vs_default']:.2f}" + _bounds(row.get("vs_default_ci")),
                      completion, share)
    console.print(table)

    targets = Table(title=f"Targets: {result['targets_met']}/{result['targets_total']} met", title_justify="left")
    for column in ("Target", "Status", "Measured"):
        targets.add_column(column, overflow="fold")
    style = {"met": "green", "unmet": "red", "inconclusive": "yellow", "not measured": "yellow"}
    for t in result["targets"]:
        targets.add_row(t["description"], f"[{style[t['status']]}]{t['status']}[/]", describe_values(t))
    console.print(targets)
    for name, error in {**result.get("not_built", {}),
                        **{n: s["error"] for n, s in result.get("registered", {}).items() if not s["ok"]}}.items():
        console.print(f"[yellow]{name} not benchmarked[/]: {_first_line(error)}", highlight=False)
    for name, error in result.get("scenario_errors", {}).items():
        console.print(f"[red]{name} did not run[/]: {_first_line(error)}", highlight=False)
    if vm.get("accel") == "tcg":
        console.print("[yellow]measured under TCG emulation: the emulated CPU, not the paths, may limit throughput; "
                      "see each scenario's report.md (path-limited column)[/]", highlight=False)
    console.print(f"wrote {result['out']}/bench.json, results.json, bench.png and one report per scenario "
                  f"({result['elapsed_s']:.0f} s)", highlight=False)


def _first_line(text: str) -> str:
    lines = (text or "").strip().splitlines() or ["?"]
    return lines[0] + (f" (+{len(lines) - 1} more lines in bench.json)" if len(lines) > 1 else "")


def describe_values(target: dict) -> str:
    v = target["values"]
    if target.get("note") and target["met"] is None:
        return target["note"]
    tid = target["id"]
    note = f"; {target['note']}" if target.get("note") else ""
    if tid.startswith("wifi-lte-bulk-"):
        alone = (f", {v['vs_paths_alone']:.2f} × the paths alone" if v.get("vs_paths_alone") is not None else "")
        return (f"{v['goodput_bps'] / 1e6:.2f} Mbit/s = {v['vs_capacity']:.2f} × capacity{alone}, "
                f"{v['vs_default']:.2f}{_bounds(v.get('vs_default_ci'))} × default "
                f"({v['default_goodput_bps'] / 1e6:.2f} Mbit/s){note}")
    if tid == "wifi-lte-256k-blest":
        m = v["median_s"]
        alone = "".join(f", {p} alone {_ms(t)} ms" for p, t in v.get("alone_median_s", {}).items())
        return (f"median blest {_ms(m['blest'])} ms, minrtt {_ms(m['minrtt'])} ms, default {_ms(m['default'])} ms"
                f"{alone}: {v['blest_vs_minrtt']:.2f} × minrtt, {v['blest_vs_default']:.2f} × default{note}")
    if tid == "lossy-rr-redundant":
        p = v["p99_s"]
        return f"p99 redundant {_ms(p['redundant'])} ms, default {_ms(p['default'])} ms: {v['redundant_vs_default']:.2f} × default"
    if tid == "handover-all-verified":
        parts = [f"{s} {e['verified_runs']}/{e['runs']}" for s, e in v["schedulers"].items()]
        return "verified runs: " + ", ".join(parts) + (f" ({target['note']})" if target.get("note") else "")
    if "ratio" in v:  # the regimes' paired ratios (bench.regime_targets)
        return (f"{v['ratio']:.2f}{_bounds(v.get('ci'))} over {v['pairs']} paired repetition(s) "
                f"(bar {v['bar']:g}){'' if v.get('ci') else ': too few pairs for an interval'}{note}")
    return json.dumps(v)


def _bounds(interval: list[float] | None) -> str:
    """' [low, high]': a 95 % interval paired by repetition (lab/stats.py), or nothing."""
    return "" if not interval else f" [{interval[0]:.2f}, {interval[1]:.2f}]"
