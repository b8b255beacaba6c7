"""`bpfkit lab run SCENARIO [--schedulers a,b] [--vm|--host] [--out DIR] [--json] ...`,
`bpfkit lab validate SCENARIO...`, `bpfkit lab report DIR`, `bpfkit lab clean`.

--vm (the default when a non-default scheduler is asked for) measures inside the
bpfkit VM — which runs this same command with --host --no-report — and renders
the report on the host, where matplotlib is fast."""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bpfkit import fs
from bpfkit.errors import UsageError
from bpfkit.lab import report, runner
from bpfkit.lab.scenario import Scenario, load_scenario, with_schedulers
from bpfkit.lab.values import format_rate, format_time



def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="network lab: run MPTCP scenarios, compare schedulers, report")
    sub = p.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    r = sub.add_parser(
        "run",
        help="run a scenario for each scheduler; write results.json, report.md and plots",
        description="Exit status: 0 all runs passed (every byte verified), 1 some run failed, 2 bad input.",
    )
    r.add_argument("scenario", type=Path, metavar="SCENARIO", help="scenario TOML file (see scenarios/README.md), or a resolved one (.json: Scenario.to_dict())")
    r.add_argument("--schedulers", metavar="A,B", help="comma-separated schedulers, overriding the scenario's list")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--vm", dest="where", action="store_const", const="vm", help="measure inside the bpfkit VM (default if a non-default scheduler is used)")
    where.add_argument("--host", dest="where", action="store_const", const="host", help="measure on this kernel (root)")
    r.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: results/lab/<scenario>-<time>)")
    r.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    r.add_argument("--duration-scale", type=float, default=1.0, metavar="F", help="multiply every time (duration, events, bulk size) by F, e.g. 0.3 for a smoke run")
    r.add_argument("--repetitions", type=int, metavar="N", help="override the scenario's repetitions")
    r.add_argument("--seed", type=int, metavar="N", help="override the scenario's seed")
    r.add_argument("--shaping", choices=["auto", "netem", "tbf"], default="auto", help="auto: netem when the kernel has it, else tbf (rate only)")
    r.add_argument("--no-report", action="store_true", help="only measure and write results.json")
    r.add_argument("--trace", action="store_true", help="record each scheduler decision of the data sender (bpfkit "
                                                       "sched trace) per run; the report adds a decision timeline")
    r.add_argument("--kernel", type=Path, metavar="PATH", help="VM kernel (bzImage or kernels/<key> dir); default: the cached build")
    r.add_argument("--vm-timeout", type=float, metavar="S", help="kill the VM after S seconds (default: from the scenario's timeouts)")
    r.set_defaults(handler=handle_run)

    v = sub.add_parser("validate", help="check scenario files and print what they describe")
    v.add_argument("scenarios", type=Path, nargs="+", metavar="SCENARIO")
    v.set_defaults(handler=handle_validate)

    rep = sub.add_parser("report", help="re-render report.md and plots from a results directory")
    rep.add_argument("out", type=Path, metavar="DIR")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON")
    rep.set_defaults(handler=handle_report)

    c = sub.add_parser("clean", help="remove lab network namespaces left by killed runs")
    c.set_defaults(handler=handle_clean)


# ---------------------------------------------------------------- run


def _scenario_from_args(args) -> Scenario:
    scenario = load_scenario(args.scenario)
    if args.schedulers is not None:
        scenario = with_schedulers(scenario, [s.strip() for s in args.schedulers.split(",") if s.strip()])
    if args.repetitions is not None:
        if args.repetitions < 1:
            raise UsageError(f"--repetitions must be >= 1, got {args.repetitions}")
        scenario = dataclasses.replace(scenario, repetitions=args.repetitions)
    if args.seed is not None:
        scenario = dataclasses.replace(scenario, seed=args.seed)
    if args.duration_scale != 1.0:
        scenario = scenario.scaled(args.duration_scale)
    return scenario


def _default_out(scenario: Scenario) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / "lab" / f"{scenario.name}-{stamp}"


def handle_run(args) -> int:
    scenario = _scenario_from_args(args)  # every input error surfaces here, before anything starts
    where = args.where or ("vm" if any(s != "default" for s in scenario.schedulers) else "host")
    out = (args.out or _default_out(scenario)).resolve()
    console = Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    if where == "vm":
        exit_code = _run_in_vm(args, scenario, out, console)
        doc = runner.load_results(out)
    else:
        doc = _run_on_host(scenario, args.shaping, console, quiet=args.json, trace_decisions=args.trace)
        runner.write_results(doc, out)
        exit_code = 0 if all(r["ok"] for r in doc["runs"]) else 1
    files = [out / "results.json"]
    if not args.no_report:
        files = [out / "results.json", *report.render(doc, out)]
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(_summary(doc, files, elapsed, where), indent=2))
    elif not args.no_report:
        _print_table(doc, files, elapsed, where)
    return exit_code


def _run_on_host(scenario: Scenario, shaping: str, console: Console, quiet: bool, trace_decisions: bool = False) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    observe = None
    if trace_decisions:
        from bpfkit.sched import trace

        with trace.Tracer():  # refused here (one error, exit 4) rather than in the first run
            pass
        observe = trace.observe

    total_runs = len(scenario.schedulers) * scenario.repetitions
    expected = scenario.duration_s
    if quiet or not console.is_terminal:
        done = []

        def on_run_done(run: dict) -> None:
            done.append(run)
            status = "ok" if run["ok"] else "FAILED: " + "; ".join(run["failures"])
            goodput = f"{run['goodput_bps'] / 1e6:.2f} Mbit/s" if run.get("goodput_bps") else "-"
            console.print(f"[{len(done)}/{total_runs}] {run['scheduler']} #{run['repetition'] + 1}: {goodput} {status}", highlight=False)

        return runner.run_scenario(scenario, shaping=shaping, on_run_done=on_run_done, observe=observe)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} runs"),
        TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(scenario.name, total=total_runs, now="")

        def progress(label: str, seconds: float) -> None:
            bar.update(task, now=f"{label}: {seconds:4.1f}/{expected:g} s")

        def on_run_done(run: dict) -> None:
            bar.advance(task)
            if not run["ok"]:
                console.print(f"[red]{run['scheduler']} #{run['repetition'] + 1} FAILED[/]: {'; '.join(run['failures'])}", highlight=False)

        return runner.run_scenario(scenario, shaping=shaping, progress=progress, on_run_done=on_run_done,
                                   observe=observe)


def _run_in_vm(args, scenario: Scenario, out: Path, console: Console) -> int:
    from bpfkit.kernel import vm

    # The guest gets the scenario resolved here (flags applied), as the bench's plan gives
    # it its scenarios: one description of what to measure, read by Scenario.from_dict.
    out.mkdir(parents=True, exist_ok=True)
    job = out / "scenario.json"
    fs.atomic_write(job, json.dumps(scenario.to_dict(), indent=1))
    command = [sys.executable, "-m", "bpfkit", "lab", "run", str(job), "--host", "--no-report", "--out", str(out),
               "--shaping", args.shaping]
    if args.trace:
        command.append("--trace")
    runs = len(scenario.schedulers) * scenario.repetitions
    timeout = args.vm_timeout or runs * (scenario.effective_timeout_s + runner.GUEST_PER_RUN_MARGIN_S) + vm.BOOT_MARGIN_S
    console.print(f"measuring in the bpfkit VM ({runs} runs); results in {out}", highlight=False)
    # With --json our stdout must stay pure JSON: capture the guest and echo it to stderr.
    result = vm.run_job(command, result=out / "results.json", kernel=args.kernel, timeout=timeout, capture=args.json)
    if args.json:
        sys.stderr.write(result.output + result.stderr)
    # Only the host knows how the guest ran; TCG emulation makes the guest CPU-bound.
    doc = runner.load_results(out)
    doc["vm"] = {"accel": result.accel, "boot_seconds": result.boot_seconds, "total_seconds": result.total_seconds}
    runner.write_results(doc, out)
    return result.exit_code


# ---------------------------------------------------------------- output


def _summary(doc: dict, files: list[Path], elapsed: float, where: str) -> dict:
    return {
        "ok": all(r["ok"] for r in doc["runs"]),
        "scenario": doc["scenario"]["name"],
        "kernel": doc["kernel"],
        "where": where,
        "shaping": doc["shaping"],
        "shaping_note": doc["shaping_note"],
        "elapsed_s": round(elapsed, 2),
        "measure_s": doc.get("elapsed_s"),
        "files": [str(f) for f in files],
        "schedulers": report.summarize(doc),
    }


def _print_table(doc: dict, files: list[Path], elapsed: float, where: str) -> None:
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(width=160, soft_wrap=True)  # a log file or pipe: do not squeeze the table
    sc = doc["scenario"]
    paths = ", ".join(f"{p['name']} {format_rate(p['rate_bps'])} {format_time(p['delay_s'])}" for p in sc["paths"])
    table = Table(title=f"{sc['name']} — {paths} — kernel {doc['kernel']} ({where})", title_justify="left")
    for column in report.table_columns(doc):
        table.add_column(column, overflow="fold")
    for row in report.table_rows(doc):
        table.add_row(*row)
    console.print(table)
    style = "yellow" if doc["shaping"] != "netem" else "green"
    console.print(f"shaping: [{style}]{doc['shaping_note']}[/]", highlight=False)
    for run in doc["runs"]:
        for failure in run.get("failures", []):
            console.print(f"[red]FAILED[/] {run['scheduler']} #{run['repetition'] + 1}: {failure}", highlight=False)
    console.print(f"wrote {', '.join(str(f) for f in files)}", highlight=False)
    console.print(f"{len(doc['runs'])} run(s) measured in {doc.get('elapsed_s', 0):.1f} s; {elapsed:.1f} s end to end", highlight=False)


# ---------------------------------------------------------------- other subcommands


def handle_validate(args) -> int:
    console = Console(soft_wrap=True)
    for file in args.scenarios:
        sc = load_scenario(file)
        console.print(f"[green]ok[/] {file}: {sc.name} — {len(sc.paths)} paths, {sc.traffic.kind}, {format_time(sc.duration_s)}, schedulers {', '.join(sc.schedulers)}", highlight=False)
    return 0


def handle_report(args) -> int:
    doc = runner.load_results(args.out)
    files = report.render(doc, args.out)
    if args.json:
        print(json.dumps(_summary(doc, [args.out / "results.json", *files], 0.0, "report"), indent=2))
    else:
        _print_table(doc, [args.out / "results.json", *files], 0.0, "report")
    return 0 if all(r["ok"] for r in doc["runs"]) else 1


def handle_clean(args) -> int:
    from bpfkit.lab.topology import remove_stale

    removed = remove_stale()
    print(f"removed {len(removed)} stale lab namespace(s)" + (": " + " ".join(removed) if removed else ""))
    return 0
