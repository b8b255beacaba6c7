#!/usr/bin/env python3
"""What a scheduler decision costs, per call, with 1, 2, 4 and 8 subflows, in ONE bpfkit VM run.

For each subflow count N the guest runs a bulk download over N equal paths (10 Mbit/s, 5 ms)
once per scheduler (default and the four reference ones) twice: untraced, then traced by
`bpfkit sched trace` (fentry/fexit on mptcp_sched_get_send()). Figures, per N and scheduler:

  call_ns          mean time in mptcp_sched_get_send() for the calls that asked the scheduler,
                   entry to return, from the trace (the same hook for the in-kernel default and
                   a BPF scheduler, so the ratio to default compares like with like; it includes
                   the trace's own walk of the subflows at entry, the same for every scheduler)
  vs_default       call_ns / default's call_ns, with a 95 % bootstrap interval over the calls
  bpf_get_send_ns  a BPF scheduler's own get_send program: run time / runs from the kernel's BPF
                   statistics (BPF_ENABLE_STATS), untraced and traced
  trace_ns         the trace programs' run time per traced call (what tracing adds, beside the
                   fentry/fexit trampolines, which the statistics do not see)

Under TCG emulation every figure is the emulated CPU's: compare within one run, not across
machines. The JSON goes to stdout and to --out.

    .venv/bin/python bench/sched_cost.py [--subflows 1,2,4,8] [--duration S] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE, DELAY = "10mbit", "5ms"
SAMPLES_KEPT = 4000  # call durations kept per run in the guest's result (evenly spaced)


def scenario_text(n: int, duration: float, schedulers: list[str]) -> str:
    paths = "\n".join(f'[paths.p{i}]\nrate = "{RATE}"\ndelay = "{DELAY}"\n' for i in range(1, n + 1))
    names = ", ".join(f'"{s}"' for s in schedulers)
    return (f'name = "cost-{n}"\ndescription = "{n} x {RATE} at {DELAY}: bulk download"\n'
            f'duration = "{duration:g}s"\nseed = 1\nschedulers = [{names}]\n\n{paths}\n'
            f'[traffic]\nkind = "bulk"\ndirection = "download"\ntime = "{duration:g}s"\n')


# ---------------------------------------------------------------- guest


def _struct_ops_stats() -> dict[int, dict]:
    from bpfkit.loader import libbpf

    out = {}
    for prog_id in libbpf.loaded_program_ids():
        info = libbpf.program_info_by_id(prog_id)
        if info and info["type"] == "struct_ops":
            out[prog_id] = info
    return out


def _delta(before: dict, after: dict) -> dict[str, dict]:
    """Programs that ran in between: name -> runs, run time."""
    out = {}
    for prog_id, a in after.items():
        b = before.get(prog_id, {"run_cnt": 0, "run_time_ns": 0})
        runs = a["run_cnt"] - b["run_cnt"]
        if runs > 0:
            out[a["name"]] = {"runs": runs, "run_time_ns": a["run_time_ns"] - b["run_time_ns"]}
    return out


def _observer(traced: bool):
    """A lab observer (runner.Observer): the BPF statistics of the scheduler's programs over
    the run and, when traced, the calls' durations and the trace programs' own cost."""
    from bpfkit.loader import libbpf
    from bpfkit.sched import trace

    @contextlib.contextmanager
    def observe(netns: str):
        out: dict = {"traced": traced}
        before = _struct_ops_stats()
        if traced:
            with trace.Tracer(netns=netns) as tracer:
                fds = tracer.program_fds()
                t_before = {name: libbpf.prog_info(fd) for name, fd in fds.items()}
                with trace.Recorder(tracer) as recorder:
                    yield out
                t_after = {name: libbpf.prog_info(fd) for name, fd in fds.items()}
                calls = [d["duration_ns"] for d in recorder.decisions if d["call"] == "get_send"]
                step = max(1, -(-len(calls) // SAMPLES_KEPT))
                out.update(calls=len(calls), lost=tracer.lost(), call_ns=calls[::step],
                           call_ns_mean=sum(calls) / len(calls) if calls else None,
                           trace_programs={n: {"runs": t_after[n]["run_cnt"] - t_before[n]["run_cnt"],
                                               "run_time_ns": t_after[n]["run_time_ns"] - t_before[n]["run_time_ns"]}
                                           for n in fds})
        else:
            yield out
        out["struct_ops"] = _delta(before, _struct_ops_stats())

    return observe


def guest(plan_path: Path) -> int:
    from bpfkit.errors import BpfkitError
    from bpfkit.lab import runner
    from bpfkit.lab.scenario import load_scenario
    from bpfkit.loader import libbpf
    from bpfkit.sched import lifecycle

    plan = json.loads(plan_path.read_text())
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": [], "registered": []}
    try:
        for name in plan["bpf_schedulers"]:
            lifecycle.load(name)
            result["registered"].append(name)
        with libbpf.run_time_stats():
            for n, file in plan["scenarios"].items():
                scenario = load_scenario(Path(file))
                for traced in (False, True):
                    doc = runner.run_scenario(scenario, shaping="netem", observe=_observer(traced))
                    for run in doc["runs"]:
                        obs = run.get("observed") or {}
                        result["runs"].append({
                            "subflows": int(n), "scheduler": run["scheduler"], "traced": traced, "ok": run["ok"],
                            "failures": run["failures"], "goodput_bps": run["goodput_bps"],
                            "subflows_seen": len(run.get("subflows") or {}),
                            **{k: v for k, v in obs.items() if k != "t"}})
                        print(f"cost: {n} subflows, {run['scheduler']}{' traced' if traced else ''}: "
                              f"{'ok' if run['ok'] else 'FAILED ' + '; '.join(run['failures'])}", flush=True)
    except BpfkitError as exc:
        result["error"] = str(exc)
    finally:
        for name in result["registered"]:
            with contextlib.suppress(BpfkitError):
                lifecycle.unload(name, force=True)
        Path(plan["result"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- host


def analyse(raw: dict, schedulers: list[str]) -> dict:
    from bpfkit.lab import stats

    table = []
    counts = sorted({r["subflows"] for r in raw["runs"]})
    for n in counts:
        runs = {(r["scheduler"], r["traced"]): r for r in raw["runs"] if r["subflows"] == n}
        default = runs.get(("default", True), {})
        for scheduler in schedulers:
            traced, untraced = runs.get((scheduler, True), {}), runs.get((scheduler, False), {})
            row = {"subflows": n, "scheduler": scheduler, "ok": bool(traced.get("ok") and untraced.get("ok")),
                   "subflows_seen": traced.get("subflows_seen"), "calls": traced.get("calls"),
                   "call_ns": traced.get("call_ns_mean")}
            interval = (stats.independent_ratio_interval(traced["call_ns"], default["call_ns"])
                        if scheduler != "default" and traced.get("call_ns") and default.get("call_ns") else None)
            row["vs_default"] = interval.value if interval else None
            row["vs_default_ci"] = interval.bounds() if interval else None
            for key, run in (("untraced", untraced), ("traced", traced)):
                # the scheduler's program that ran most: get_send (init/release run once per
                # connection, get_retrans on losses); names are cut at 15 characters in the kernel
                progs = run.get("struct_ops") or {}
                busiest = max(progs.values(), key=lambda v: v["runs"], default=None)
                row[f"bpf_get_send_ns_{key}"] = round(busiest["run_time_ns"] / busiest["runs"], 1) if busiest else None
            trace_progs = traced.get("trace_programs") or {}
            send = [trace_progs.get(p, {}) for p in ("send_entry", "send_return")]
            calls = send[0].get("runs", 0)
            row["trace_ns"] = round(sum(p.get("run_time_ns", 0) for p in send) / calls, 1) if calls else None
            row["goodput_mbps"] = round((traced.get("goodput_bps") or 0) / 1e6, 2)
            table.append(row)
    return {"table": table}


def _fmt(v, unit=""):
    return "—" if v is None else f"{v:.0f}{unit}" if isinstance(v, float) and v >= 100 else f"{v:.2f}{unit}" if isinstance(v, float) else str(v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--subflows", default="1,2,4,8", help="subflow counts (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of bulk per run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "sched_cost.json")
    args = parser.parse_args()
    if args.guest:
        return guest(args.guest)

    from bpfkit import bench, fs
    from bpfkit.kernel import kbuild, vm
    from bpfkit.lab.scenario import MAX_PATHS
    from bpfkit.loader import build
    from bpfkit.paths import cache_dir

    try:
        counts = sorted({int(x) for x in args.subflows.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1 or counts[-1] > MAX_PATHS:
        sys.exit(f"--subflows {args.subflows!r}: comma-separated counts from 1 to {MAX_PATHS}")
    kernel = kbuild.default_kernel()
    built = bench.prebuild(kernel.vmlinux)  # clang on the host: the guest finds the objects in the cache
    failed = {n: e for n, e in built.items() if e}
    if failed:
        sys.exit(f"schedulers did not build: {failed}")
    build.compile_bpf(build.bpf_source("sched_trace"), kernel=kernel.vmlinux)
    schedulers = list(bench.SCHEDULERS)
    work = fs.output_dir(cache_dir() / "bench-runs" / f"sched-cost-{time.strftime('%Y%m%d-%H%M%S')}")
    scenarios = {}
    for n in counts:
        (work / f"cost-{n}.toml").write_text(scenario_text(n, args.duration, schedulers))
        scenarios[str(n)] = str(work / f"cost-{n}.toml")
    plan = {"bpf_schedulers": list(bench.BPF_SCHEDULERS), "scenarios": scenarios, "result": str(work / "guest.json")}
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    runs = len(counts) * len(schedulers) * 2
    t0 = time.monotonic()
    outcome = vm.run_job([sys.executable, str(Path(__file__).resolve()), "--guest", str(work / "plan.json")],
                         result=work / "guest.json", kernel=kernel.bzimage,
                         timeout=vm.BOOT_MARGIN_S + runs * (args.duration + 120))
    raw = json.loads((work / "guest.json").read_text())
    result = {"kind": "bpfkit sched cost", "accel": outcome.accel, "kernel": kernel.bzimage.parent.name,
              "paths": f"{RATE}, {DELAY} each", "duration_s": args.duration,
              "measured": raw.get("started"), "elapsed_s": round(time.monotonic() - t0, 1),
              "error": raw.get("error"), **analyse(raw, schedulers), "raw": str(work / "guest.json")}
    text = json.dumps(result, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    header = f"{'N':>2} {'scheduler':<10} {'call ns':>9} {'× default [95 %]':<22} {'BPF get_send ns untraced/traced':<32} {'trace ns':>9}"
    print(header, file=sys.stderr)
    for row in result["table"]:
        ci = f" [{row['vs_default_ci'][0]:.2f}, {row['vs_default_ci'][1]:.2f}]" if row["vs_default_ci"] else ""
        ratio = f"{row['vs_default']:.2f}{ci}" if row["vs_default"] else "—"
        bpf = f"{_fmt(row['bpf_get_send_ns_untraced'])} / {_fmt(row['bpf_get_send_ns_traced'])}"
        print(f"{row['subflows']:>2} {row['scheduler']:<10} {_fmt(row['call_ns']):>9} {ratio:<22} {bpf:<32} "
              f"{_fmt(row['trace_ns']):>9}" + ("" if row["ok"] else "  (a run failed)"), file=sys.stderr)
    return 0 if not result["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
