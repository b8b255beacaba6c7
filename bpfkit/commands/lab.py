"""`bpfkit lab run SCENARIO [--schedulers a,b] [--vm|--host] [--out DIR] [--json] ...`,
`bpfkit lab validate SCENARIO...`, `bpfkit lab report DIR`, `bpfkit lab clean`.

--vm (the default when a non-default scheduler is asked for) measures inside the
bpfkit VM — which runs this same command with --host --no-report — and renders
the report on the host, where matplotlib is fast."""

from __future__ import annotations

import argparse
import contextlib
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
    r.add_argument("--schedulers", metavar="A,B", help="comma-separated schedulers, overriding the scenario's list; "
                                                         "an entry that is a file (X.bpf.c or X.o) is built here, "
                                                         "registered for the run and unloaded after it")
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
    # What `--schedulers FILE` hands the guest: an object built on the host, to register for the run.
    r.add_argument("--load", action="append", type=Path, default=[], metavar="OBJ", help=argparse.SUPPRESS)
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


def _scenario_from_args(args, schedulers: list[str] | None) -> Scenario:
    scenario = load_scenario(args.scenario)
    if schedulers is not None:
        scenario = with_schedulers(scenario, schedulers)
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


def _is_scheduler_file(entry: str) -> bool:
    return entry.endswith((".bpf.c", ".c", ".o")) or "/" in entry


def _build_scheduler_files(files: list[str], where: str, kernel: Path | None) -> dict[str, Path]:
    """`--schedulers` entries that are files → {registered name: object}, each built for
    the kernel that measures (the VM kernel's BTF for --vm: the guest finds the object in
    the shared cache and compiles nothing)."""
    from bpfkit.sched import lifecycle

    target = None  # the running kernel
    if where == "host":
        lifecycle.require_struct_ops_support()  # the doctor's words, not clang's about a missing type
    elif kernel is None:
        from bpfkit.kernel import kbuild

        target = kbuild.default_kernel().vmlinux
    elif (kernel / "vmlinux").is_file():
        target = kernel / "vmlinux"
    else:
        raise UsageError(f"--kernel {kernel}: a scheduler file is built against the kernel's BTF, which needs "
                         "a kernel build directory with its vmlinux", hint="give kernels/<key>, not a bzImage")
    return lifecycle.build_objects(files, target, "--schedulers")


def handle_run(args) -> int:
    entries = None
    if args.schedulers is not None:
        entries = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    files = [e for e in entries or () if _is_scheduler_file(e)]
    objects: dict[str, Path] = {}
    if files:
        objects = _build_scheduler_files(files, args.where or "vm", args.kernel)
        by_file = dict(zip(files, objects))
        entries = [by_file.get(e, e) for e in entries]
    scenario = _scenario_from_args(args, entries)  # every input error surfaces here, before anything starts
    where = args.where or ("vm" if any(s != "default" for s in scenario.schedulers) else "host")
    if where == "vm":
        # A fresh guest has no BPF scheduler registered: the reference ones (bpf/sched/) a
        # scenario or --schedulers names are built and registered for the run like files.
        from bpfkit.sched import registry

        references = registry.references()
        wanted = [str(references[n].source) for n in scenario.schedulers if n in references and n not in objects]
        if wanted:
            objects.update(_build_scheduler_files(wanted, "vm", args.kernel))
    out = fs.output_dir((args.out or _default_out(scenario)).resolve())  # before anything is measured
    console = Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    if where == "vm":
        exit_code = _run_in_vm(args, scenario, out, console, list(objects.values()))
        doc = runner.load_results(out)
    else:
        with _registered([*objects.values(), *args.load], console):
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


@contextlib.contextmanager
def _registered(objects: list[Path], console: Console):
    """Register the scheduler objects for the run; unload those this run registered."""
    if not objects:
        yield
        return
    from bpfkit.sched import lifecycle

    ours = []
    try:
        for obj in objects:
            t0 = time.monotonic()
            result = lifecycle.load(str(obj))
            if not result.already_loaded:
                ours.append(result.record.name)
            console.print(f"registered {result.record.name} from {obj} ({time.monotonic() - t0:.1f} s)", highlight=False)
        yield
    finally:
        for name in ours:
            lifecycle.unload(name, force=True)  # force: a namespace of a killed run may still select it
            console.print(f"unloaded {name}", highlight=False)


def _run_in_vm(args, scenario: Scenario, out: Path, console: Console, objects: list[Path]) -> int:
    from bpfkit.kernel import vm

    # The guest gets the scenario resolved here (flags applied), as the bench's plan gives
    # it its scenarios: one description of what to measure, read by Scenario.from_dict.
    job = out / "scenario.json"
    fs.atomic_write(job, json.dumps(scenario.to_dict(), indent=1))
    command = [sys.executable, "-m", "bpfkit", "lab", "run", str(job), "--host", "--no-report", "--out", str(out),
               "--shaping", args.shaping]
    if args.trace:
        command.append("--trace")
    for obj in [*objects, *args.load]:
        command += ["--load", str(obj)]
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
