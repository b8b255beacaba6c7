"""`bpfkit bench schedulers`: the four reference BPF schedulers against the
in-kernel default, in one boot of the bpfkit VM.

Host side (`run`): prebuild bpf/sched/*.bpf.c for the VM kernel, write a plan,
boot the VM once with `python -m bpfkit.bench guest PLAN`, then render every
scenario's report and plots (bpfkit.lab.report), compute the targets and write
results.json + bench.json + bench.png.

Guest side (`guest`): register the schedulers with bpfkit.sched.lifecycle.load (the code
of `bpfkit sched load NAME`, in-process; the lab itself never touches BPF), run each scenario with bpfkit.lab.runner
for the schedulers that registered, write each scenario's results.json,
unregister.

Targets, computed from the results document by `targets()` and
reported met / unmet / inconclusive / not measured, never asserted:
  wifi-lte bulk      minrtt and blest goodput >= 0.95 x the sum of path rates and >= default
  wifi-lte 256 KiB   blest median completion <= 0.85 x minrtt and <= 1.0 x default
  lossy-rr (3 %)     redundant p99 completion <= 0.5 x default
  handover           every scheduler finishes with every byte verified

Single-path references: the wifi-lte scenarios also run over each path alone
(default scheduler, same traffic; `Scenario.alone`). They show what the paths
themselves carry — at MTU 1500 a path delivers ~0.94 of its netem rate in
payload, whatever the scheduler — and how fast a 256 KiB transfer completes
with no slow path at all. The verdicts stay those of the issue; the references
are reported beside them (values, notes, the table and the plot).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bpfkit import fs
from bpfkit.errors import BpfkitError, UsageError, optional_import
from bpfkit.paths import BPF_DIR, PROJECT_ROOT
from bpfkit.sched import registry

if TYPE_CHECKING:
    from bpfkit.lab.scenario import Scenario

BENCH_FORMAT = 1
DEFAULT = registry.DEFAULT
BPF_SCHEDULERS = registry.reference_names()
SCHEDULERS = (DEFAULT, *BPF_SCHEDULERS)
SCENARIO_DIR = PROJECT_ROOT / "scenarios"

# Thresholds of the targets (see the module docstring).
BULK_CAPACITY_MIN = 0.95
BLEST_VS_MINRTT_MAX = 0.85
BLEST_VS_DEFAULT_MAX = 1.0
REDUNDANT_P99_VS_DEFAULT_MAX = 0.5



@dataclass(frozen=True)
class BenchScenario:
    name: str  # the scenario file's stem; results go to OUT/<name>/
    schedulers: tuple[str, ...]  # who runs it (the targets need no more)
    scale: float  # --duration-scale of the lab
    purpose: str
    repetitions: int = 1  # paired by seed across schedulers; >= 2 gives the ratios an interval


# The full bench: every scheduler on every scenario at the files' own length.
FULL_PLAN = (
    # 3 repetitions: "≥ default" is judged on the paired interval of the ratio (one run cannot show
    # it); 15 s each: `make demo` took 10.6 min under TCG (2026-12-05; a run costs ~6 s beside its traffic).
    BenchScenario("wifi-lte", SCHEDULERS, 0.75, "bulk 15 s: is the sum of the paths used?", repetitions=3),
    BenchScenario("wifi-lte-256k", SCHEDULERS, 1.0, "256 KiB transfers: median completion time"),
    BenchScenario("lossy-path", SCHEDULERS, 1.0, "100 kB responses, 2 % loss on one path: tail completion"),
    BenchScenario("lossy-rr", SCHEDULERS, 1.0, "1 KiB request/response, 3 % loss on the primary: p99"),
    BenchScenario("handover", SCHEDULERS, 1.0, "Wi-Fi down/up under a 20 MB download: every byte verified"),
)


def quick_schedulers(scenario: str) -> tuple[str, ...]:
    """default and the reference schedulers whose metadata puts them in this quick scenario."""
    return (DEFAULT, *(r.name for r in registry.references().values() if scenario in r.quick_bench))


# --quick: what the targets need, at shorter lengths (each run costs ~6 s of
# set-up in a TCG guest whatever its length, 2026-12-05: fewer runs matter most). Who runs
# the first three comes from the schedulers' metadata (`quick_bench`).
QUICK_PLAN = (
    BenchScenario("wifi-lte", quick_schedulers("wifi-lte"), 0.5, FULL_PLAN[0].purpose.replace("15 s", "10 s"),
                  repetitions=2),
    BenchScenario("wifi-lte-256k", quick_schedulers("wifi-lte-256k"), 0.5, FULL_PLAN[1].purpose),
    BenchScenario("lossy-rr", quick_schedulers("lossy-rr"), 0.6, FULL_PLAN[3].purpose),
    BenchScenario("handover", SCHEDULERS, 0.5, "Wi-Fi down/up under a 10 MB download: every byte verified"),
)


# --plan regimes: the papers' regimes (scenarios/README.md), with the targets of issue 16:
# BLEST >= 1.10 x minrtt goodput and <= 0.5 x its retransmissions in BLEST's regime, ECF
# <= 0.85 x minrtt median completion in ECF's; and a third path. Not in `make demo` (9.9 min
# more under TCG, 2026-12-04); 3 repetitions give the paired ratios an interval.
REGIME_SCHEDULERS = (DEFAULT, "minrtt", "blest", "ecf")
REGIMES_PLAN = (
    BenchScenario("blest-regime", REGIME_SCHEDULERS, 1.0, "BLEST's regime: constrained receive window, RTTs 20/160 ms",
                  repetitions=3),
    BenchScenario("ecf-regime", REGIME_SCHEDULERS, 1.0, "ECF's regime: 256 KiB chunks at 2/s over 20 and 2 Mbit/s paths",
                  repetitions=3),
    BenchScenario("three-paths", SCHEDULERS, 0.5, "three paths of 10 Mbit/s: is the third used?"),
)

PLANS = {"full": FULL_PLAN, "quick": QUICK_PLAN, "regimes": REGIMES_PLAN}

# Scenario -> the paths run alone as references (see the module docstring).
ALONE = {"wifi-lte": ("wifi", "lte"), "wifi-lte-256k": ("wifi",),
         # what BLEST's regime's fast path carries by itself: the floor a scheduler that never
         # uses the slow path gets (blest, ecf and minrtt did so in the first measurement)
         "blest-regime": ("fast",)}


def alone_name(scenario: str, path: str) -> str:
    """Directory and key of a single-path reference run."""
    return f"{scenario}.{path}-alone"


class BenchError(BpfkitError):
    """The bench could not produce results (not: a target that was missed)."""


def plan_for(name: str) -> tuple[BenchScenario, ...]:
    if name not in PLANS:
        raise UsageError(f"--plan {name!r}: expected one of {', '.join(PLANS)}")
    return PLANS[name]


def scenario_file(name: str) -> Path:
    return SCENARIO_DIR / f"{name}.toml"


# ---------------------------------------------------------------- targets (pure: results document in, verdicts out)


def _rows(doc: dict | None) -> dict[str, dict]:
    from bpfkit.lab import report

    if not doc or not doc.get("runs"):
        return {}
    return {row["scheduler"]: row for row in report.summarize(doc)}


def _ratio(a, b):
    return a / b if a is not None and b else None


class Verdict(enum.Enum):
    """A target's verdict; its value is the "status" written to bench.json."""

    MET = "met"
    UNMET = "unmet"
    INCONCLUSIVE = "inconclusive"  # measured, but the 95 % interval straddles the bar
    NOT_MEASURED = "not measured"

    @classmethod
    def of(cls, met: bool) -> Verdict:
        return cls.MET if met else cls.UNMET


def _target(target_id: str, description: str, verdict: Verdict, values: dict, note: str | None = None) -> dict:
    """One bench.json target: "met" is True only for MET, None when not measured (an
    inconclusive target counts as not met)."""
    met = None if verdict is Verdict.NOT_MEASURED else verdict is Verdict.MET
    entry = {"id": target_id, "description": description, "status": verdict.value, "met": met, "values": values}
    if note:
        entry["note"] = note
    return entry


def _alone_rows(results: dict, scenario: str) -> dict[str, dict]:
    """path -> summary row of the default scheduler over that path alone (passing runs only)."""
    rows = {}
    for path, doc in (results.get("alone", {}).get(scenario) or {}).items():
        row = _rows(doc).get(DEFAULT)
        if row and row["ok_runs"]:
            rows[path] = row
    return rows


def _bulk_target(rows: dict, scheduler: str, alone: dict[str, dict] | None = None) -> dict:
    description = (f"wifi-lte bulk: {scheduler} goodput >= {BULK_CAPACITY_MIN:g} x sum of path rates "
                   f"and >= default")
    row, default = rows.get(scheduler), rows.get(DEFAULT)
    if not row or row["goodput_bps"] is None or not default or default["goodput_bps"] is None:
        missing = scheduler if not row or row["goodput_bps"] is None else DEFAULT
        return _target(f"wifi-lte-bulk-{scheduler}", description, Verdict.NOT_MEASURED, {}, f"no passing {missing} run")
    vs_capacity, vs_default = row["vs_capacity"], _ratio(row["goodput_bps"], default["goodput_bps"])
    # ">= default" is judged on the paired 95 % interval (lab/stats.py): met only when it clears 1.0,
    # unmet when it lies below, inconclusive (reported as not met) when it straddles 1.0.
    from bpfkit.lab import report, stats

    interval = report.vs_default_interval(row) or stats.Interval(vs_default)
    vs_default_verdict = interval.verdict(1.0, higher_is_better=True)
    if vs_capacity is None or vs_capacity < BULK_CAPACITY_MIN or vs_default_verdict == "unmet":
        verdict = Verdict.UNMET
    else:
        verdict = Verdict.MET if vs_default_verdict == "met" else Verdict.INCONCLUSIVE
    values = {
        "goodput_bps": row["goodput_bps"], "default_goodput_bps": default["goodput_bps"],
        "vs_capacity": vs_capacity, "vs_default": vs_default, "vs_default_ci": row.get("vs_default_ci"),
        "vs_default_verdict": vs_default_verdict,
        "path_limited_runs": row["path_limited_runs"], "ok_runs": row["ok_runs"],
    }
    note = None
    alone = {p: r for p, r in (alone or {}).items() if r["goodput_bps"]}
    if alone:
        alone_sum = sum(r["goodput_bps"] for r in alone.values())
        values["alone_goodput_bps"] = {p: r["goodput_bps"] for p, r in alone.items()}
        values["alone_vs_capacity"] = {p: r["vs_capacity"] for p, r in alone.items()}
        values["vs_paths_alone"] = _ratio(row["goodput_bps"], alone_sum)
        if all(r["vs_capacity"] for r in alone.values()):
            # what the paths deliver by themselves, as a fraction of their summed rates
            reachable = alone_sum / sum(r["goodput_bps"] / r["vs_capacity"] for r in alone.values())
            values["paths_alone_vs_capacity"] = reachable
            if reachable < BULK_CAPACITY_MIN:
                note = (f"the paths alone deliver {reachable:.2f} × their rates: {BULK_CAPACITY_MIN:g} × is "
                        f"beyond any scheduler here")
    return _target(f"wifi-lte-bulk-{scheduler}", description, verdict, values, note)


def _short_transfer_target(rows: dict, alone: dict[str, dict] | None = None) -> dict:
    description = (f"wifi-lte 256 KiB: blest median completion <= {BLEST_VS_MINRTT_MAX:g} x minrtt "
                   f"and <= {BLEST_VS_DEFAULT_MAX:g} x default")
    medians = {s: (rows.get(s) or {}).get("completion_p50_s") for s in ("blest", "minrtt", DEFAULT)}
    missing = [s for s, v in medians.items() if v is None]
    if missing:
        return _target("wifi-lte-256k-blest", description, Verdict.NOT_MEASURED, {"median_s": medians},
                       f"no passing run of {', '.join(missing)}")
    vs_minrtt, vs_default = _ratio(medians["blest"], medians["minrtt"]), _ratio(medians["blest"], medians[DEFAULT])
    met = vs_minrtt <= BLEST_VS_MINRTT_MAX and vs_default <= BLEST_VS_DEFAULT_MAX
    values = {
        "median_s": medians, "blest_vs_minrtt": vs_minrtt, "blest_vs_default": vs_default,
        "samples": {s: rows[s]["completion_count"] for s in medians},
    }
    note = None
    alone_medians = {p: r["completion_p50_s"] for p, r in (alone or {}).items() if r["completion_p50_s"]}
    if alone_medians:
        fastest, floor = min(alone_medians.items(), key=lambda item: item[1])
        values["alone_median_s"] = alone_medians
        values["minrtt_vs_alone"] = _ratio(medians["minrtt"], floor)
        needed = BLEST_VS_MINRTT_MAX * medians["minrtt"]
        if needed < floor:
            # Beating the best path alone needs the slow path to bring a transfer's
            # end forward; it can only help with what arrives before the fast
            # path would have finished anyway.
            note = (f"{BLEST_VS_MINRTT_MAX:g} × minrtt = {needed * 1e3:.0f} ms is below {fastest} alone "
                    f"({floor * 1e3:.0f} ms): minrtt loses only {values['minrtt_vs_alone'] - 1:.0%} to "
                    f"head-of-line blocking here")
    return _target("wifi-lte-256k-blest", description, Verdict.of(met), values, note)


def _lossy_rr_target(rows: dict) -> dict:
    description = f"lossy-rr (3 % loss): redundant p99 completion <= {REDUNDANT_P99_VS_DEFAULT_MAX:g} x default"
    p99 = {s: (rows.get(s) or {}).get("completion_p99_s") for s in ("redundant", DEFAULT)}
    missing = [s for s, v in p99.items() if v is None]
    if missing:
        return _target("lossy-rr-redundant", description, Verdict.NOT_MEASURED, {"p99_s": p99}, f"no passing run of {', '.join(missing)}")
    vs_default = _ratio(p99["redundant"], p99[DEFAULT])
    return _target("lossy-rr-redundant", description, Verdict.of(vs_default <= REDUNDANT_P99_VS_DEFAULT_MAX), {
        "p99_s": p99, "redundant_vs_default": vs_default,
        "samples": {s: rows[s]["completion_count"] for s in p99},
    })


def _handover_target(doc: dict | None, expected: tuple[str, ...]) -> dict:
    description = "handover: every scheduler finishes with every byte verified"
    if not doc or not doc.get("runs"):
        return _target("handover-all-verified", description, Verdict.NOT_MEASURED, {}, "handover did not run")
    per_scheduler: dict[str, dict] = {}
    for run in doc["runs"]:
        entry = per_scheduler.setdefault(run["scheduler"], {"runs": 0, "verified_runs": 0, "failures": []})
        entry["runs"] += 1
        if run["ok"] and run.get("verified"):
            entry["verified_runs"] += 1
        entry["failures"] += run.get("failures", [])
    absent = [s for s in expected if s not in per_scheduler]
    all_verified = all(e["runs"] and e["verified_runs"] == e["runs"] for e in per_scheduler.values())
    note = f"not run: {', '.join(absent)}" if absent else None
    # a failed transfer is a verdict even when some scheduler could not run
    verdict = Verdict.UNMET if not all_verified else (Verdict.NOT_MEASURED if absent else Verdict.MET)
    return _target("handover-all-verified", description, verdict, {"schedulers": per_scheduler}, note)


def targets(results: dict) -> list[dict]:
    """The issue's targets from a bench results document ({"scenarios": {name:
    lab results doc}, "schedulers": [...]}): those of the regimes plan, or of the others."""
    scenarios = results.get("scenarios", {})
    if _plan_name(results.get("plan") or {}) == "regimes":
        return regime_targets(scenarios)
    expected = tuple(results.get("schedulers") or SCHEDULERS)
    bulk, bulk_alone = _rows(scenarios.get("wifi-lte")), _alone_rows(results, "wifi-lte")
    return [
        _bulk_target(bulk, "minrtt", bulk_alone),
        _bulk_target(bulk, "blest", bulk_alone),
        _short_transfer_target(_rows(scenarios.get("wifi-lte-256k")), _alone_rows(results, "wifi-lte-256k")),
        _lossy_rr_target(_rows(scenarios.get("lossy-rr"))),
        _handover_target(scenarios.get("handover"), expected),
        # a user's scheduler (--scheduler FILE) is held to what the reference ones are in bulk
        *(_bulk_target(bulk, name, bulk_alone) for name in (results.get("plan") or {}).get("objects", {})),
    ]


# ---------------------------------------------------------------- the papers' regimes (--plan regimes)

BLEST_VS_MINRTT_GOODPUT_MIN = 1.10  # Ferlin et al. 2016 report +12 % goodput against min-RTT
BLEST_VS_MINRTT_RETRANS_MAX = 0.5   # and -80 % retransmissions
ECF_VS_MINRTT_COMPLETION_MAX = 0.85  # Lim et al. 2017: up to 20 % shorter downloads


def _run_metric(run: dict, metric: str) -> float | None:
    """One run's figure, for ratios paired by repetition."""
    from bpfkit.lab.report import percentile

    if metric == "goodput":
        return run.get("goodput_bps")
    if metric == "retrans":
        acked = sum((run.get("bytes_by_path") or {}).values())
        retrans = (run.get("retrans") or {}).get("subflow_bytes")
        return retrans / acked if acked and retrans is not None else None
    if metric == "completion_p50":
        return percentile(run.get("completion_times_s") or [], 50)
    raise ValueError(metric)


def paired_ratio(doc: dict | None, a: str, b: str, metric: str):
    """mean(a) / mean(b) of a per-run figure over the repetitions both passed (same seed),
    with its 95 % bootstrap interval (lab/stats.py); None when no pair has both."""
    from bpfkit.lab import stats

    if not doc:
        return None, 0
    by = {s: {r["repetition"]: r for r in doc.get("runs", []) if r["scheduler"] == s and r["ok"]} for s in (a, b)}
    pairs = [(_run_metric(by[a][k], metric), _run_metric(by[b][k], metric)) for k in sorted(set(by[a]) & set(by[b]))]
    pairs = [(x, y) for x, y in pairs if x is not None and y]
    return (stats.ratio_interval(pairs) if pairs else None), len(pairs)


def _ratio_target(target_id: str, description: str, doc: dict | None, a: str, b: str, metric: str, bar: float,
                  higher_is_better: bool) -> dict:
    interval, pairs = paired_ratio(doc, a, b, metric)
    if interval is None:
        return _target(target_id, description, Verdict.NOT_MEASURED, {"pairs": pairs},
                       f"no repetition where both {a} and {b} passed with a nonzero {b} {metric} figure")
    verdict = {"met": Verdict.MET, "unmet": Verdict.UNMET}.get(
        interval.verdict(bar, higher_is_better=higher_is_better), Verdict.INCONCLUSIVE)
    return _target(target_id, description, verdict,
                   {"ratio": interval.value, "ci": interval.bounds(), "pairs": pairs, "bar": bar})


def regime_targets(scenarios: dict) -> list[dict]:
    blest_doc, ecf_doc = scenarios.get("blest-regime"), scenarios.get("ecf-regime")
    return [
        _ratio_target("blest-regime-goodput", f"BLEST regime: blest goodput >= {BLEST_VS_MINRTT_GOODPUT_MIN:g} x minrtt",
                      blest_doc, "blest", "minrtt", "goodput", BLEST_VS_MINRTT_GOODPUT_MIN, True),
        _ratio_target("blest-regime-retrans",
                      f"BLEST regime: blest retransmitted fraction <= {BLEST_VS_MINRTT_RETRANS_MAX:g} x minrtt's",
                      blest_doc, "blest", "minrtt", "retrans", BLEST_VS_MINRTT_RETRANS_MAX, False),
        _ratio_target("ecf-regime-completion",
                      f"ECF regime: ecf median completion <= {ECF_VS_MINRTT_COMPLETION_MAX:g} x minrtt",
                      ecf_doc, "ecf", "minrtt", "completion_p50", ECF_VS_MINRTT_COMPLETION_MAX, False),
    ]


def summary_table(results: dict) -> list[dict]:
    """One row per scenario × scheduler with the figure that scenario is about,
    then its single-path references ("wifi alone"; × capacity of that path)."""
    rows = []
    for name, doc in results.get("scenarios", {}).items():
        kind = doc["scenario"]["traffic"]["kind"]
        entries = [(row["scheduler"], row) for row in _rows(doc).values()]
        entries += [(f"{path} alone", row) for path, row in _alone_rows(results, name).items()]
        for label, row in entries:
            reference = label != row["scheduler"]
            rows.append({
                "scenario": name, "scheduler": label, "kind": kind, "reference": reference,
                "ok_runs": row["ok_runs"], "runs": row["runs"],
                "goodput_bps": row["goodput_bps"], "vs_capacity": row["vs_capacity"],
                "vs_default": None if reference else row["vs_default"],
                "vs_default_ci": None if reference else row.get("vs_default_ci"),
                "completion_p50_s": row["completion_p50_s"], "completion_p99_s": row["completion_p99_s"],
                "completion_mean_s": row["completion_mean_s"], "path_share": row["path_share"],
                "failures": row["failures"],
            })
    return rows


# ---------------------------------------------------------------- guest side


class _Registrations:
    """Registers the BPF schedulers in the guest and unregisters them at the end,
    with the code of `bpfkit sched load/unload` called in this process (a Python
    start per scheduler costs ~40 s under TCG)."""

    via = "bpfkit.sched.lifecycle.load (as `bpfkit sched load`)"

    def __init__(self) -> None:
        from bpfkit.sched import lifecycle

        self.lifecycle = lifecycle

    def load(self, name: str) -> str | None:
        """None when registered, else why not."""
        try:
            self.lifecycle.load(name)
            return None
        except BpfkitError as exc:
            return str(exc)

    def unload(self, name: str) -> None:
        try:
            # force: a lab namespace killed mid-run may still select it; the VM is going away anyway
            self.lifecycle.unload(name, force=True)
        except BpfkitError as exc:
            print(f"bench: could not unload {name}: {exc}", flush=True)


def guest(plan_path: Path) -> int:
    """Inside the VM: register, measure every scenario of the plan, unregister."""
    from bpfkit.lab.scenario import Scenario, with_schedulers

    plan = json.loads(plan_path.read_text())
    out = Path(plan["out"])
    status = {"started": _now(), "loaded": {}, "scenarios": {}, "via": None}
    registrations = _Registrations()
    status["via"] = registrations.via
    started = time.monotonic()
    try:
        for name in plan["bpf_schedulers"]:
            t0 = time.monotonic()
            error = registrations.load(plan.get("objects", {}).get(name, name))
            status["loaded"][name] = {"ok": error is None, "error": error, "seconds": round(time.monotonic() - t0, 1)}
            print(f"bench: {'registered' if error is None else 'could not register'} {name}"
                  + ("" if error is None else f": {error}"), flush=True)
        registered = {DEFAULT} | {n for n, s in status["loaded"].items() if s["ok"]}
        for item in plan["scenarios"]:
            wanted = item["scenario"]["schedulers"]
            schedulers = [s for s in wanted if s in registered]
            status["scenarios"][item["name"]] = _measure(
                item["name"], out, lambda: with_schedulers(Scenario.from_dict(item["scenario"]), schedulers),
                label=", ".join(schedulers), skipped=[s for s in wanted if s not in registered])
        for item in plan.get("alone", []):
            status["scenarios"][item["name"]] = _measure(
                item["name"], out, lambda: Scenario.from_dict(item["scenario"]), label="default (reference)",
                skipped=[])
    finally:
        for name, loaded in status["loaded"].items():
            if loaded["ok"]:
                registrations.unload(name)
        status["seconds"] = round(time.monotonic() - started, 1)
        (out / "guest.json").write_text(json.dumps(status, indent=1))
    return 0


def _measure(name: str, out: Path, make_scenario: Callable[[], Scenario], *, label: str, skipped: list[str]) -> dict:
    """Run one plan entry (a scenario, or a path of one alone) through the lab
    and write its results to OUT/<name>/; returns its guest.json status entry.
    A scenario that cannot run is reported there and the bench goes on."""
    from bpfkit.lab import runner

    entry = {"schedulers": [], "skipped": skipped}
    t0 = time.monotonic()
    try:
        scenario = make_scenario()
        entry["schedulers"] = list(scenario.schedulers)
        print(f"bench: {name}: {label}", flush=True)
        doc = runner.run_scenario(scenario, on_run_done=lambda run: _print_run(name, run))
        runner.write_results(doc, out / name)
        entry["ok"] = True
    except BpfkitError as exc:
        entry.update(ok=False, error=str(exc))
        print(f"bench: {name}: {exc}", flush=True)
    entry["seconds"] = round(time.monotonic() - t0, 1)
    return entry


def _print_run(scenario: str, run: dict) -> None:
    from bpfkit.lab import traffic
    from bpfkit.lab.report import percentile

    figure = ""
    if run.get("goodput_bps"):
        figure = f" {run['goodput_bps'] / 1e6:.2f} Mbit/s"
    if traffic.model(run["kind"]).percentiles and run.get("completion_times_s"):
        ct = run["completion_times_s"]
        figure += f" p50 {percentile(ct, 50) * 1e3:.0f} ms p99 {percentile(ct, 99) * 1e3:.0f} ms"
    verdict = "ok" if run["ok"] else "FAILED: " + "; ".join(run["failures"])
    print(f"bench: {scenario} {run['scheduler']} #{run['repetition'] + 1}:{figure} {verdict}", flush=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- host side


def default_out() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"bench-schedulers-{stamp}"


def prebuild(vmlinux: Path) -> dict[str, str | None]:
    """Compile each reference scheduler for the VM kernel on the host (clang
    under TCG emulation is slow; the guest then finds the objects in the shared
    cache). Returns name -> None (built) or the compile error."""
    from bpfkit.loader import build

    status: dict[str, str | None] = {}
    for name in BPF_SCHEDULERS:
        source = BPF_DIR / "sched" / f"{name}.bpf.c"
        if not source.exists():
            status[name] = f"{source.relative_to(PROJECT_ROOT)} does not exist"
            continue
        try:
            build.compile_bpf(source, kernel=vmlinux)
            status[name] = None
        except BpfkitError as exc:
            status[name] = str(exc)
    return status


# What a bench writes into OUT (and a later run into the same OUT replaces).
_OUTPUT_FILES = ("results.json", "bench.json", "bench.png", "guest.json", "plan.json")
_SCENARIO_FILES = ("results.json", "report.md", "throughput.png", "rtt.png", "completion_cdf.png")


def _remove_previous_outputs(out: Path) -> None:
    """Never report an older measurement as this one's (make demo reuses one OUT;
    a --quick run after a full one must not leave the full run's plots behind)."""
    for name in _OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    directories = [item.name for plan in PLANS.values() for item in plan]
    directories += [alone_name(scenario, path) for scenario, paths in ALONE.items() for path in paths]
    for directory in directories:
        for name in _SCENARIO_FILES:
            (out / directory / name).unlink(missing_ok=True)


def make_plan(plan_name: str, out: Path, schedulers: tuple[str, ...], shard: tuple[int, int] | None = None,
              objects: dict[str, Path] | None = None) -> dict:
    """What the guest measures, each scenario resolved here (file, length, repetitions,
    schedulers; Scenario.to_dict()), as `lab run --vm` hands its scenario over.

    With shard=(K, N), only the K-th of N deterministic slices: entry i of the whole
    plan (its scenarios, then the paths run alone) belongs to shard i mod N + 1. A
    scenario's repetitions stay together (their runs are paired across schedulers),
    so `bench merge` puts shards back together without touching a run.

    OBJECTS: a user's schedulers (--scheduler FILE; name -> object built on the host), measured
    in every scenario of the plan beside the plan's own schedulers and registered from the object."""
    from bpfkit.lab.scenario import load_scenario, with_schedulers

    scenarios, alone = [], []
    for item in plan_for(plan_name):
        file = scenario_file(item.name)
        if not file.exists():
            raise UsageError(f"bench scenario {file} is missing")
        base = load_scenario(file).scaled(item.scale)
        chosen = [s for s in item.schedulers if s in schedulers] + list(objects or {})
        scenario = dataclasses.replace(with_schedulers(base, chosen), repetitions=item.repetitions)
        scenarios.append({"name": item.name, "scenario": scenario.to_dict(), "purpose": item.purpose})
        for path in ALONE.get(item.name, ()):
            alone.append({"name": alone_name(item.name, path), "of": item.name, "path": path,
                          "scenario": dataclasses.replace(base.alone(path), repetitions=1).to_dict()})
    entries = [*scenarios, *alone]
    for index, entry in enumerate(entries):
        entry["index"] = index  # its place in the whole plan: merge restores the order
    if shard is not None:
        k, n = shard
        if not 1 <= k <= n or n > len(entries):
            raise UsageError(f"--shard {k}/{n}: K must be 1..N and N at most {len(entries)} (the plan's entries)")
        scenarios = [e for e in scenarios if e["index"] % n == k - 1]
        alone = [e for e in alone if e["index"] % n == k - 1]
    # registered in the guest: only what this plan's scenarios run (a registration costs ~11 s under TCG)
    used = {s for e in scenarios for s in e["scenario"]["schedulers"]}
    return {"format": BENCH_FORMAT, "plan": plan_name, "quick": plan_name == "quick", "out": str(out),
            "shard": list(shard) if shard else None,
            "entries": len(entries), "bpf_schedulers": [s for s in (*schedulers, *(objects or {})) if s != DEFAULT and s in used],
            "objects": {name: str(path) for name, path in (objects or {}).items()},
            "scenarios": scenarios, "alone": alone}


def vm_timeout(plan: dict) -> float:
    """A bound for failures: every run at its scenario timeout plus set-up."""
    from bpfkit.kernel.vm import BOOT_MARGIN_S
    from bpfkit.lab.runner import GUEST_PER_RUN_MARGIN_S
    from bpfkit.lab.scenario import Scenario

    total = BOOT_MARGIN_S + 120 * len(plan["bpf_schedulers"])  # a registration: ~11 s under TCG, 120 is the bound
    for item in [*plan["scenarios"], *plan.get("alone", [])]:
        scenario = Scenario.from_dict(item["scenario"])
        runs = len(scenario.schedulers) * scenario.repetitions
        total += runs * (scenario.effective_timeout_s + GUEST_PER_RUN_MARGIN_S)
    return total


def run(out: Path, *, plan_name: str = "full", shard: tuple[int, int] | None = None, echo_guest=None,
        files: tuple[str, ...] = ()) -> dict:
    """Boot the VM once, measure (all of the plan, or one shard of it), render;
    returns the bench document (bench.json). FILES: a user's schedulers (.bpf.c or .o),
    built here for the VM kernel and measured in every scenario beside the plan's."""
    from bpfkit.kernel import kbuild, vm
    from bpfkit.sched import lifecycle

    started = time.monotonic()
    make_plan(plan_name, out, SCHEDULERS, shard)  # a bad --plan or --shard is refused before anything is built
    for file in files:
        lifecycle.resolve_source(file)  # a missing file, too
    out = fs.output_dir(out.resolve())
    kernel = kbuild.default_kernel()  # the VM boots this one; objects are prebuilt for its BTF
    # a file that does not build, or takes a reference scheduler's name, is refused before the VM boots
    objects = lifecycle.build_objects(list(files), kernel.vmlinux, "--scheduler", taken=SCHEDULERS)
    built = prebuild(kernel.vmlinux)
    schedulers = (DEFAULT, *[n for n, error in built.items() if error is None])
    plan = make_plan(plan_name, out, schedulers, shard, objects)
    _remove_previous_outputs(out)
    plan_path = out / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))

    result = vm.run_job([sys.executable, "-m", "bpfkit.bench", "guest", str(plan_path)], result=out / "guest.json",
                        kernel=kernel.bzimage, timeout=vm_timeout(plan), capture=echo_guest is not None)
    if echo_guest is not None:
        echo_guest(result.output + result.stderr)
    vm_info = {"accel": result.accel, "boot_seconds": result.boot_seconds, "total_seconds": result.total_seconds,
               "exit_code": result.exit_code}
    return collect(out, plan, built, vm_info, elapsed_from=started)


def collect(out: Path, plan: dict, built: dict, vm_info: dict | None, elapsed_from: float | None = None) -> dict:
    """After the guest: render each scenario's report and plots, compute the
    targets, write results.json, bench.json and bench.png into OUT."""
    from bpfkit.lab import report, runner

    guest_status = json.loads((out / "guest.json").read_text())
    quick, plan_name = plan["quick"], _plan_name(plan)
    docs, files = {}, []
    for item in plan["scenarios"]:
        directory = out / item["name"]
        if not (directory / "results.json").exists():
            continue
        doc = runner.load_results(directory)
        if vm_info:
            doc["vm"] = {k: vm_info[k] for k in ("accel", "boot_seconds", "total_seconds")}
            runner.write_results(doc, directory)
        files += [directory / "results.json", *report.render(doc, directory)]
        docs[item["name"]] = doc
    alone: dict[str, dict[str, dict]] = {}
    for item in plan.get("alone", []):
        directory = out / item["name"]
        if (directory / "results.json").exists():
            alone.setdefault(item["of"], {})[item["path"]] = runner.load_results(directory)
            files.append(directory / "results.json")

    results = {
        "format": BENCH_FORMAT, "kind": "bpfkit bench schedulers", "plan_name": plan_name, "quick": quick,
        "shard": plan.get("shard"), "started": guest_status.get("started"),
        "kernel": next((d["kernel"] for d in docs.values()), None), "vm": vm_info,
        "schedulers": [*SCHEDULERS, *plan.get("objects", {})], "prebuild": built, "guest": guest_status, "plan": plan, "scenarios": docs,
        "alone": alone,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    bench = {
        "format": BENCH_FORMAT, "kind": "bpfkit bench schedulers", "plan_name": plan_name, "quick": quick,
        "shard": plan.get("shard"), "out": str(out),
        "kernel": results["kernel"], "vm": vm_info, "started": results["started"],
        "elapsed_s": round(time.monotonic() - elapsed_from, 1) if elapsed_from else guest_status.get("seconds"),
        "registered": {n: s for n, s in guest_status.get("loaded", {}).items()},
        "not_built": {n: e for n, e in built.items() if e is not None},
        "scenario_errors": {n: s["error"] for n, s in guest_status.get("scenarios", {}).items() if not s.get("ok")},
        "targets": targets(results),
        "table": summary_table(results),
    }
    bench["targets_met"] = sum(1 for t in bench["targets"] if t["met"] is True)
    bench["targets_total"] = len(bench["targets"])
    plot = plot_summary(results, bench["targets"], out / "bench.png")
    bench["files"] = [str(p) for p in [out / "results.json", out / "bench.json", *([plot] if plot else []), *files]]
    (out / "bench.json").write_text(json.dumps(bench, indent=1))
    return bench


# ---------------------------------------------------------------- shards


def merge(out: Path, shard_dirs: list[Path]) -> dict:
    """Shards of one bench (`--shard K/N` runs, e.g. jobs of a CI matrix) → one
    bench in OUT, in the format of a single run: every shard's scenario results
    are copied as measured and everything is rendered again over all of them."""
    from bpfkit.lab import runner

    shards = [_read_shard(Path(d)) for d in shard_dirs]
    if not shards:
        raise UsageError("bench merge: give the output directories of the shards")
    first = shards[0]
    n = first["plan"]["shard"][1]
    seen: dict[int, Path] = {}
    for sh in shards:
        k_n = sh["plan"]["shard"]
        if k_n[1] != n or _plan_name(sh["plan"]) != _plan_name(first["plan"]) \
                or sh["plan"]["entries"] != first["plan"]["entries"] \
                or sorted(sh["plan"].get("objects", {})) != sorted(first["plan"].get("objects", {})):
            raise UsageError(f"{sh['dir']}: shard {k_n[0]}/{k_n[1]} of a {_plan_name(sh['plan'])} bench "
                             f"does not belong with {first['dir']} (shard {first['plan']['shard'][0]}/{n})")
        if k_n[0] in seen:
            raise UsageError(f"shard {k_n[0]}/{n} given twice: {seen[k_n[0]]} and {sh['dir']}")
        seen[k_n[0]] = sh["dir"]
    missing = sorted(set(range(1, n + 1)) - set(seen))
    if missing:
        raise UsageError(f"bench merge: shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{n}' for k in missing)} "
                         "missing", hint="every shard's output directory is needed")

    out = out.resolve()
    if any(out == sh["dir"] for sh in shards):
        raise UsageError(f"--out {out} is one of the shards: merge into a new directory")
    fs.output_dir(out)
    _remove_previous_outputs(out)
    by_index = lambda e: e["index"]  # noqa: E731
    plan = {**first["plan"], "out": str(out), "shard": None, "merged_from": [str(sh["dir"]) for sh in shards],
            "scenarios": sorted((e for sh in shards for e in sh["plan"]["scenarios"]), key=by_index),
            "alone": sorted((e for sh in shards for e in sh["plan"]["alone"]), key=by_index)}
    for sh in shards:
        for entry in [*sh["plan"]["scenarios"], *sh["plan"]["alone"]]:
            source = sh["dir"] / entry["name"]
            if (source / "results.json").exists():
                runner.write_results(runner.load_results(source), out / entry["name"])
    guests = [sh["guest"] for sh in shards]
    loaded: dict[str, dict] = {}
    for g in guests:  # a scheduler counts as registered when it registered in every shard
        for name, status in g.get("loaded", {}).items():
            if loaded.get(name, {}).get("ok", True):
                loaded[name] = status
    guest_status = {
        "started": min((g.get("started") for g in guests if g.get("started")), default=None),
        "loaded": loaded,
        "scenarios": {k: v for g in guests for k, v in g.get("scenarios", {}).items()},
        "via": guests[0].get("via"),
        "seconds": round(sum(g.get("seconds") or 0 for g in guests), 1),
        "shards": len(shards),
    }
    (out / "guest.json").write_text(json.dumps(guest_status, indent=1))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    vms = [sh["results"].get("vm") for sh in shards if sh["results"].get("vm")]
    vm_info = None
    if vms:  # one description of how it ran: the first shard's machine, all shards' VM time
        vm_info = {**vms[0], "total_seconds": round(sum(v["total_seconds"] for v in vms), 1),
                   "boot_seconds": round(sum(v["boot_seconds"] for v in vms), 1)}
    built: dict[str, str | None] = {}
    for sh in shards:  # a compile error in any shard is reported
        for name, error in sh["results"].get("prebuild", {}).items():
            if built.get(name) is None:
                built[name] = error
    return collect(out, plan, built, vm_info)


def _plan_name(plan: dict) -> str:
    """The plan a plan.json is of (one written before --plan existed says only "quick")."""
    return plan.get("plan") or ("quick" if plan.get("quick") else "full")


def _read_shard(directory: Path) -> dict:
    try:
        plan = json.loads((directory / "plan.json").read_text())
        guest_status = json.loads((directory / "guest.json").read_text())
        results = json.loads((directory / "results.json").read_text())
    except OSError as exc:
        raise UsageError(f"{directory}: not the output of a bench run ({exc.filename}: {exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"{directory}: a bench file is not valid JSON: {exc}") from None
    if not all(isinstance(d, dict) for d in (plan, guest_status, results)) or plan.get("format") != BENCH_FORMAT \
            or not plan.get("shard"):
        raise UsageError(f"{directory}: not a shard (made without --shard K/N, or by another bench format)")
    shard, entries = plan.get("shard"), [*plan.get("scenarios", []), *plan.get("alone", [])]
    well_formed = (isinstance(shard, list) and len(shard) == 2 and all(isinstance(x, int) for x in shard)
                   and isinstance(plan.get("entries"), int) and isinstance(plan.get("quick"), bool)
                   and all(isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("index"), int)
                           and isinstance(e.get("scenario"), dict) for e in entries)
                   and isinstance(guest_status.get("loaded", {}), dict))
    if not well_formed:
        raise UsageError(f"{directory}/plan.json: not the plan of a bench shard (a key is missing or of another type)")
    return {"dir": directory.resolve(), "plan": plan, "guest": guest_status, "results": results}


def parse_shard(text: str) -> tuple[int, int]:
    """--shard K/N."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()) or not 1 <= int(k) <= int(n):
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/3")
    return int(k), int(n)


# ---------------------------------------------------------------- summary plot


def plot_summary(results: dict, target_list: list[dict], path: Path) -> Path | None:
    """One figure, one panel per target metric, one bar per scheduler."""
    matplotlib = optional_import("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results.get("scenarios", {})
    by_id = {t["id"]: t for t in target_list}
    panels = []  # (title, values, target line, (reference line, its label) or None)
    bulk = _rows(scenarios.get("wifi-lte"))
    if bulk:
        reachable = (by_id.get("wifi-lte-bulk-minrtt") or {}).get("values", {}).get("paths_alone_vs_capacity")
        panels.append(("wifi-lte bulk: goodput / sum of path rates", {s: r["vs_capacity"] for s, r in bulk.items()},
                       BULK_CAPACITY_MIN, reachable and (reachable, "paths alone")))
    short = _rows(scenarios.get("wifi-lte-256k"))
    if short:
        alone = {p: r["completion_p50_s"] for p, r in _alone_rows(results, "wifi-lte-256k").items() if r["completion_p50_s"]}
        best = min(alone.items(), key=lambda item: item[1]) if alone else None
        panels.append(("wifi-lte 256 KiB: median completion (ms)",
                       {s: r["completion_p50_s"] and r["completion_p50_s"] * 1e3 for s, r in short.items()}, None,
                       best and (best[1] * 1e3, f"{best[0]} alone")))
    lossy = _rows(scenarios.get("lossy-rr"))
    if lossy:
        panels.append(("lossy-rr 1 KiB, 3 % loss: p99 completion (ms)",
                       {s: r["completion_p99_s"] and r["completion_p99_s"] * 1e3 for s, r in lossy.items()}, None, None))
    lossy_path = _rows(scenarios.get("lossy-path"))
    if lossy_path:
        panels.append(("lossy-path 100 kB, 2 % loss: p95 completion (ms)",
                       {s: r["completion_p95_s"] and r["completion_p95_s"] * 1e3 for s, r in lossy_path.items()}, None, None))
    handover = _rows(scenarios.get("handover"))
    if handover:
        panels.append(("handover: transfer time (s), verified runs only",
                       {s: r["completion_mean_s"] for s, r in handover.items()}, None, None))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, values, line, reference) in zip(axes[0], panels):
        names = list(values)
        heights = [values[n] or 0 for n in names]
        bars = ax.bar(names, heights, color=[registry.colour(n) or "#333333" for n in names])
        for bar, name in zip(bars, names):
            label = "n/a" if values[name] is None else f"{values[name]:.2f}" if values[name] < 10 else f"{values[name]:.0f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        if line is not None:
            ax.axhline(line, color="black", linestyle="--", linewidth=0.8, label="target")
        if reference:
            ax.axhline(reference[0], color="#ff7f0e", linestyle=":", linewidth=1.2, label=reference[1])
        if line is not None or reference:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    met = sum(1 for t in target_list if t["met"] is True)
    vm = results.get("vm") or {}
    accel = f", VM {vm.get('accel')}" if vm.get("accel") else ""
    fig.suptitle(f"bpfkit bench schedulers — kernel {results.get('kernel')}{accel} — targets met {met}/{len(target_list)}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m bpfkit.bench guest PLAN` (what the VM runs)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "guest":
        print("usage: python -m bpfkit.bench guest PLAN.json (run by `bpfkit bench schedulers` inside the VM)",
              file=sys.stderr)
        return 2
    try:
        return guest(Path(argv[1]))
    except BpfkitError as exc:
        print(f"bpfkit bench: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
