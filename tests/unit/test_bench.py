"""`bpfkit bench schedulers`: the target verdicts computed from a results
document (no VM: the documents are built here the way the lab writes them)."""

from __future__ import annotations

import pytest

from bpfkit import bench
from bpfkit.errors import UsageError
from bpfkit.lab.scenario import Scenario, load_scenario, with_schedulers

pytestmark = pytest.mark.unit


def _scenario(name: str) -> dict:
    return with_schedulers(load_scenario(bench.scenario_file(name)), list(bench.SCHEDULERS)).to_dict()


def _run(scheduler: str, *, ok: bool = True, goodput: float | None = None, transfer: float | None = None,
         completions: list[float] | None = None, verified: bool = True) -> dict:
    return {
        "scheduler": scheduler, "repetition": 0, "ok": ok, "verified": verified and ok,
        "failures": [] if ok else ["receiver: 512 bytes missing"],
        "goodput_bps": goodput, "transfer_time_s": transfer,
        "completion_times_s": completions if completions is not None else ([transfer] if transfer else []),
        "bytes_by_path": {"wifi": 2_000_000, "lte": 1_000_000},
        "retrans": {"mptcp_bytes": 0, "subflow_bytes": 0}, "subflows": {}, "qdisc": {}, "data_sender": "server",
    }


def _doc(name: str, runs: list[dict]) -> dict:
    return {"scenario": _scenario(name), "kernel": "6.12.117-bpfkit", "shaping": "netem", "runs": runs}


def _results(**docs) -> dict:
    return {"schedulers": list(bench.SCHEDULERS), "scenarios": {k.replace("_", "-"): v for k, v in docs.items()}}


def _by_id(results: dict) -> dict[str, dict]:
    return {t["id"]: t for t in bench.targets(results)}


CAPACITY = 30e6  # wifi-lte: 20 + 10 Mbit/s


def _reps(scheduler: str, goodputs: list[float]) -> list[dict]:
    return [dict(_run(scheduler, goodput=g * CAPACITY, transfer=10.0), repetition=i) for i, g in enumerate(goodputs)]


def test_bulk_target_needs_both_capacity_and_default():
    doc = _doc("wifi-lte", [
        *_reps("default", [0.90, 0.88, 0.91]),
        *_reps("minrtt", [0.96, 0.95, 0.97]),  # >= 0.95 and above default in every pair: met
        *_reps("blest", [0.93, 0.92, 0.94]),  # better than default, below 0.95: unmet
    ])
    t = _by_id(_results(wifi_lte=doc))
    assert t["wifi-lte-bulk-minrtt"]["status"] == "met"
    low, high = t["wifi-lte-bulk-minrtt"]["values"]["vs_default_ci"]
    assert 1.0 < low <= 0.96 / 0.90 <= high
    assert t["wifi-lte-bulk-blest"]["status"] == "unmet"

    # one run each: nothing shows minrtt >= default beyond noise
    doc = _doc("wifi-lte", [
        _run("default", goodput=0.90 * CAPACITY, transfer=10.0),
        _run("minrtt", goodput=0.96 * CAPACITY, transfer=10.0),
    ])
    t = _by_id(_results(wifi_lte=doc))
    assert t["wifi-lte-bulk-minrtt"]["status"] == "inconclusive" and t["wifi-lte-bulk-minrtt"]["met"] is False
    # pairs that disagree: the interval straddles 1.0
    doc = _doc("wifi-lte", [*_reps("default", [0.95, 0.97, 0.96]), *_reps("minrtt", [0.99, 0.95, 0.96])])
    assert _by_id(_results(wifi_lte=doc))["wifi-lte-bulk-minrtt"]["status"] == "inconclusive"

    doc = _doc("wifi-lte", [*_reps("default", [0.90]), *_reps("minrtt", [0.96])])
    t = _by_id(_results(wifi_lte=doc))
    assert t["wifi-lte-bulk-minrtt"]["values"]["vs_capacity"] == pytest.approx(0.96)
    assert t["wifi-lte-bulk-minrtt"]["values"]["vs_default"] == pytest.approx(0.96 / 0.90)

    slower_than_default = _doc("wifi-lte", [
        _run("default", goodput=0.97 * CAPACITY, transfer=10.0),
        _run("minrtt", goodput=0.96 * CAPACITY, transfer=10.0),
    ])
    t = _by_id(_results(wifi_lte=slower_than_default))
    assert t["wifi-lte-bulk-minrtt"]["met"] is False
    assert t["wifi-lte-bulk-blest"]["status"] == "not measured"


def test_failed_runs_do_not_count_as_measurements():
    doc = _doc("wifi-lte", [
        _run("default", goodput=0.5 * CAPACITY, transfer=10.0),
        _run("minrtt", ok=False, goodput=0.99 * CAPACITY, transfer=10.0),
    ])
    t = _by_id(_results(wifi_lte=doc))
    assert t["wifi-lte-bulk-minrtt"]["status"] == "not measured"
    assert "minrtt" in t["wifi-lte-bulk-minrtt"]["note"]


def test_short_transfer_target_uses_medians():
    doc = _doc("wifi-lte-256k", [
        _run("default", completions=[0.30, 0.20, 0.22, 0.90]),  # median 0.26
        _run("minrtt", completions=[0.25, 0.26, 0.27]),  # median 0.26
        _run("blest", completions=[0.20, 0.21, 0.22, 5.0, 0.19]),  # median 0.21; the outlier does not matter
    ])
    t = _by_id(_results(wifi_lte_256k=doc))["wifi-lte-256k-blest"]
    assert t["values"]["median_s"] == pytest.approx({"blest": 0.21, "minrtt": 0.26, "default": 0.26})
    assert t["values"]["blest_vs_minrtt"] == pytest.approx(0.21 / 0.26)
    assert t["status"] == "met"  # 0.81 <= 0.85 and 0.81 <= 1.0

    doc["runs"][2]["completion_times_s"] = [0.23] * 3  # 0.88 x minrtt
    assert _by_id(_results(wifi_lte_256k=doc))["wifi-lte-256k-blest"]["status"] == "unmet"


def test_lossy_rr_target_compares_p99():
    default = [0.02] * 97 + [0.25, 0.30, 0.40]
    redundant = [0.02] * 99 + [0.30]
    doc = _doc("lossy-rr", [_run("default", completions=default), _run("redundant", completions=redundant)])
    t = _by_id(_results(lossy_rr=doc))["lossy-rr-redundant"]
    from bpfkit.lab.report import percentile

    assert t["values"]["p99_s"]["default"] == pytest.approx(percentile(default, 99))
    assert t["values"]["redundant_vs_default"] == pytest.approx(percentile(redundant, 99) / percentile(default, 99))
    assert t["status"] == "met"

    doc["runs"][1]["completion_times_s"] = default
    assert _by_id(_results(lossy_rr=doc))["lossy-rr-redundant"]["status"] == "unmet"


def test_handover_target_requires_every_scheduler_verified():
    runs = [_run(s, goodput=10e6, transfer=16.0) for s in bench.SCHEDULERS]
    t = _by_id(_results(handover=_doc("handover", runs)))["handover-all-verified"]
    assert t["status"] == "met"
    assert t["values"]["schedulers"]["ecf"] == {"runs": 1, "verified_runs": 1, "failures": []}

    runs[3] = _run("blest", ok=False, transfer=16.0)
    t = _by_id(_results(handover=_doc("handover", runs)))["handover-all-verified"]
    assert t["status"] == "unmet"
    assert t["values"]["schedulers"]["blest"]["failures"] == ["receiver: 512 bytes missing"]

    missing_ecf = [_run(s, goodput=10e6, transfer=16.0) for s in bench.SCHEDULERS if s != "ecf"]
    t = _by_id(_results(handover=_doc("handover", missing_ecf)))["handover-all-verified"]
    assert t["status"] == "not measured" and "ecf" in t["note"]


def test_nothing_measured_reports_every_target_as_not_measured():
    verdicts = bench.targets({"scenarios": {}})
    assert [t["id"] for t in verdicts] == ["wifi-lte-bulk-minrtt", "wifi-lte-bulk-blest", "wifi-lte-256k-blest",
                                           "lossy-rr-redundant", "handover-all-verified"]
    assert {t["status"] for t in verdicts} == {"not measured"}


def test_plans_name_existing_scenarios_and_quick_is_smaller(tmp_path):
    for quick in (False, True):
        plan = bench.make_plan("quick" if quick else "full", tmp_path, bench.SCHEDULERS)
        for item in plan["scenarios"]:  # resolved: what the guest runs is exactly what the plan says
            scenario = Scenario.from_dict(item["scenario"])
            assert scenario.to_dict() == item["scenario"] and scenario.name == item["name"]
    full = bench.make_plan("full", tmp_path, bench.SCHEDULERS)
    quick = bench.make_plan("quick", tmp_path, bench.SCHEDULERS)
    runs = lambda p: sum(len(i["scenario"]["schedulers"]) * i["scenario"]["repetitions"] for i in p["scenarios"])  # noqa: E731
    assert runs(quick) < runs(full)
    assert {i["name"] for i in full["scenarios"]} == {"wifi-lte", "wifi-lte-256k", "lossy-path", "lossy-rr", "handover"}
    # a scheduler that did not build is left out of every scenario, default stays
    partial = bench.make_plan("full", tmp_path, ("default", "minrtt"))
    assert partial["bpf_schedulers"] == ["minrtt"]
    assert all(set(i["scenario"]["schedulers"]) <= {"default", "minrtt"} and "default" in i["scenario"]["schedulers"]
               for i in partial["scenarios"])


def test_summary_plot_is_written(tmp_path):
    results = _results(
        wifi_lte=_doc("wifi-lte", [_run("default", goodput=0.9 * CAPACITY, transfer=10.0),
                                   _run("minrtt", goodput=0.96 * CAPACITY, transfer=10.0)]),
        lossy_rr=_doc("lossy-rr", [_run("default", completions=[0.02, 0.3]), _run("redundant", completions=[0.02, 0.03])]),
    )
    path = bench.plot_summary(results, bench.targets(results), tmp_path / "bench.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def _alone_doc(name: str, path: str, runs: list[dict]) -> dict:
    scenario = load_scenario(bench.scenario_file(name)).alone(path).to_dict()
    for run in runs:
        run["bytes_by_path"] = {path: 1_000_000}
    return {"scenario": scenario, "kernel": "6.12.117-bpfkit", "shaping": "netem", "runs": runs}


def test_alone_scenario_keeps_one_path_its_events_and_the_traffic():
    handover = load_scenario(bench.scenario_file("handover"))
    wifi = handover.alone("wifi")
    assert [p.name for p in wifi.paths] == ["wifi"] and not wifi.paths[0].backup
    assert wifi.schedulers == ("default",) and wifi.traffic == handover.traffic
    assert wifi.events and all(e.path == "wifi" for e in wifi.events)
    assert wifi.capacity_bps == handover.path("wifi").rate_bps
    with pytest.raises(bench.UsageError, match="no path 'dsl'"):
        handover.alone("dsl")


def test_plan_runs_the_wifi_lte_paths_alone_at_the_scenario_scale(tmp_path):
    for quick in (False, True):
        plan = bench.make_plan("quick" if quick else "full", tmp_path, bench.SCHEDULERS)
        duration = {i["name"]: i["scenario"]["duration_s"] for i in plan["scenarios"]}
        assert {(a["of"], a["path"]) for a in plan["alone"]} == {
            ("wifi-lte", "wifi"), ("wifi-lte", "lte"), ("wifi-lte-256k", "wifi")}
        assert all(a["scenario"]["duration_s"] == duration[a["of"]] for a in plan["alone"])
        assert all([p["name"] for p in a["scenario"]["paths"]] == [a["path"]] for a in plan["alone"])
    # the alone runs are bounded too
    with_alone = bench.vm_timeout(plan)
    assert with_alone > bench.vm_timeout({**plan, "alone": []})


def test_bulk_target_reports_the_paths_alone_and_why_095_is_out_of_reach():
    doc = _doc("wifi-lte", [_run("default", goodput=0.92 * CAPACITY, transfer=20.0),
                            _run("minrtt", goodput=0.90 * CAPACITY, transfer=20.0)])
    results = _results(wifi_lte=doc)
    results["alone"] = {"wifi-lte": {
        "wifi": _alone_doc("wifi-lte", "wifi", [_run("default", goodput=0.94 * 20e6, transfer=20.0)]),
        "lte": _alone_doc("wifi-lte", "lte", [_run("default", goodput=0.93 * 10e6, transfer=20.0)]),
    }}
    t = _by_id(results)["wifi-lte-bulk-minrtt"]
    assert t["status"] == "unmet"  # the verdict stays the issue's
    v = t["values"]
    assert v["alone_goodput_bps"] == pytest.approx({"wifi": 0.94 * 20e6, "lte": 0.93 * 10e6})
    assert v["paths_alone_vs_capacity"] == pytest.approx((0.94 * 20 + 0.93 * 10) / 30)
    assert v["vs_paths_alone"] == pytest.approx(0.90 * 30 / (0.94 * 20 + 0.93 * 10))
    assert "beyond any scheduler" in t["note"]
    rows = bench.summary_table(results)
    assert [(r["scheduler"], r["reference"]) for r in rows] == [
        ("default", False), ("minrtt", False), ("wifi alone", True), ("lte alone", True)]
    assert rows[2]["vs_capacity"] == pytest.approx(0.94) and rows[2]["vs_default"] is None

    # paths that deliver >= 0.95 of their rates: no excuse in the note
    results["alone"]["wifi-lte"]["wifi"]["runs"][0]["goodput_bps"] = 0.99 * 20e6
    results["alone"]["wifi-lte"]["lte"]["runs"][0]["goodput_bps"] = 0.99 * 10e6
    assert "note" not in _by_id(results)["wifi-lte-bulk-minrtt"]


def test_short_transfer_target_says_when_the_target_is_below_the_fast_path_alone():
    doc = _doc("wifi-lte-256k", [_run("default", completions=[0.185] * 3), _run("minrtt", completions=[0.186] * 3),
                                 _run("blest", completions=[0.186] * 3)])
    results = _results(wifi_lte_256k=doc)
    results["alone"] = {"wifi-lte-256k": {
        "wifi": _alone_doc("wifi-lte-256k", "wifi", [_run("default", completions=[0.165] * 3)])}}
    t = _by_id(results)["wifi-lte-256k-blest"]
    assert t["status"] == "unmet"
    assert t["values"]["alone_median_s"] == pytest.approx({"wifi": 0.165})
    assert t["values"]["minrtt_vs_alone"] == pytest.approx(0.186 / 0.165)
    assert "below wifi alone (165 ms)" in t["note"] and "13%" in t["note"]

    # a slow minrtt leaves room under the fast path alone: no note
    doc["runs"][1]["completion_times_s"] = [0.30] * 3
    assert "note" not in _by_id(results)["wifi-lte-256k-blest"]


# ---------------------------------------------------------------- shards


def test_shards_partition_the_plan_deterministically(tmp_path):
    for quick in (False, True):
        whole = bench.make_plan("quick" if quick else "full", tmp_path, bench.SCHEDULERS)
        names = [e["name"] for e in [*whole["scenarios"], *whole["alone"]]]
        for n in range(1, whole["entries"] + 1):
            shards = [bench.make_plan("quick" if quick else "full", tmp_path, bench.SCHEDULERS, (k, n)) for k in range(1, n + 1)]
            got = [e["name"] for sh in shards for e in [*sh["scenarios"], *sh["alone"]]]
            assert sorted(got) == sorted(names), (quick, n)  # every entry in exactly one shard
            assert shards == [bench.make_plan("quick" if quick else "full", tmp_path, bench.SCHEDULERS, (k, n)) for k in range(1, n + 1)]
            for sh in shards:  # a shard's guest registers what its scenarios run, nothing more
                used = {s for e in sh["scenarios"] for s in e["scenario"]["schedulers"]} - {"default"}
                assert set(sh["bpf_schedulers"]) == used
    with pytest.raises(bench.UsageError, match="N at most 7"):
        bench.make_plan("quick", tmp_path, bench.SCHEDULERS, (1, 8))
    for text in ("0/3", "4/3", "2", "a/b", "-1/2", "1/0"):
        with pytest.raises(bench.UsageError, match="expected K/N"):
            bench.parse_shard(text)
    assert bench.parse_shard("2/3") == (2, 3)


def _fake_guest_output(out, plan: dict) -> None:
    """What the guest writes for a plan, with runs shaped like the lab's."""
    import json

    from bpfkit.lab import runner

    out.mkdir(parents=True, exist_ok=True)
    status = {"started": "2026-12-04T03:00:00+00:00", "loaded": {s: {"ok": True, "error": None, "seconds": 11.0}
                                                               for s in plan["bpf_schedulers"]},
              "scenarios": {}, "via": "test", "seconds": 100.0}
    for entry in [*plan["scenarios"], *plan["alone"]]:
        sc = Scenario.from_dict(entry["scenario"])
        runs = []
        for scheduler in sc.schedulers:
            for rep in range(sc.repetitions):
                goodput = (0.9 + 0.01 * rep + 0.001 * len(scheduler)) * sc.capacity_bps
                runs.append({**_run(scheduler, goodput=goodput, transfer=10.0,
                                    completions=[0.05 + 0.001 * (i + rep + len(scheduler)) for i in range(20)]),
                             "repetition": rep, "kind": sc.traffic.kind, "seed": sc.seed + rep,
                             "bytes_by_path": {p.name: 1_000_000 for p in sc.paths}})
        doc = {"format": runner.RESULTS_FORMAT, "scenario": sc.to_dict(), "kernel": "6.12.117-bpfkit",
               "shaping": "netem", "shaping_note": "", "started": status["started"], "runs": runs}
        runner.write_results(doc, out / entry["name"])
        status["scenarios"][entry["name"]] = {"schedulers": list(sc.schedulers), "skipped": [], "ok": True,
                                              "seconds": 10.0}
    (out / "guest.json").write_text(json.dumps(status))
    (out / "plan.json").write_text(json.dumps(plan))


def test_merged_shards_are_the_bench_one_run_gives(tmp_path):
    import json

    built = {s: None for s in bench.BPF_SCHEDULERS}
    vm = {"accel": "tcg", "boot_seconds": 11.5, "total_seconds": 300.0, "exit_code": 0}
    single = tmp_path / "single"
    plan = bench.make_plan("quick", single, bench.SCHEDULERS)
    _fake_guest_output(single, plan)
    one = bench.collect(single, plan, built, vm)

    shard_dirs = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard-{k}"
        shard_plan = bench.make_plan("quick", d, bench.SCHEDULERS, (k, 3))
        _fake_guest_output(d, shard_plan)
        bench.collect(d, shard_plan, built, vm)
        shard_dirs.append(d)
    merged = bench.merge(tmp_path / "merged", list(reversed(shard_dirs)))

    assert merged["table"] == one["table"] and merged["targets"] == one["targets"]
    assert merged["targets_met"] == one["targets_met"] and merged["shard"] is None
    assert merged["vm"]["total_seconds"] == 900.0
    for name in ("results.json", "bench.json", "bench.png", "wifi-lte/report.md", "wifi-lte.wifi-alone/results.json"):
        assert (tmp_path / "merged" / name).exists(), name
    doc = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert list(doc["scenarios"]) == list(json.loads((single / "results.json").read_text())["scenarios"])

    with pytest.raises(bench.UsageError, match="shard 2/3 missing"):
        bench.merge(tmp_path / "m2", [shard_dirs[0], shard_dirs[2]])
    with pytest.raises(bench.UsageError, match="given twice"):
        bench.merge(tmp_path / "m3", [shard_dirs[0], shard_dirs[0], shard_dirs[1]])
    with pytest.raises(bench.UsageError, match="not a shard"):
        bench.merge(tmp_path / "m4", [single])
    with pytest.raises(bench.UsageError, match="not the output of a bench run"):
        bench.merge(tmp_path / "m5", [tmp_path / "nothing"])
    plan = json.loads((shard_dirs[1] / "plan.json").read_text())
    plan["scenarios"][0]["index"] = "first"  # a hand-edited plan: one error, not a traceback
    (shard_dirs[1] / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(bench.UsageError, match="not the plan of a bench shard"):
        bench.merge(tmp_path / "m6", shard_dirs)


def test_the_github_actions_example_calls_bpfkit_as_it_parses():
    """docs/ci/github-actions-bench.yml: every bpfkit command line in it is one the CLI accepts,
    and its matrix covers shards 1..N of the N it names."""
    import re
    import shlex

    from bpfkit import cli
    from bpfkit.paths import PROJECT_ROOT

    text = (PROJECT_ROOT / "docs" / "ci" / "github-actions-bench.yml").read_text()
    commands = [shlex.split(line.split("bin/bpfkit", 1)[1].replace("${{ matrix.shard }}", "2"))
                for line in text.splitlines() if "bin/bpfkit " in line]
    assert {c[1] for c in commands} == {"schedulers", "merge"}
    for argv in commands:
        args = cli.make_parser(argv).parse_args(argv)
        if args.bench_command == "schedulers":
            k, n = bench.parse_shard(args.shard)
            matrix = [int(x) for x in re.search(r"shard: \[([0-9, ]+)\]", text).group(1).split(",")]
            assert matrix == list(range(1, n + 1))
        else:
            assert [p.name for p in args.shards] == [f"bench-shard-{k}" for k in range(1, n + 1)]


def _regime_runs(scheduler: str, values: list[float], metric: str) -> list[dict]:
    runs = []
    for i, v in enumerate(values):
        run = dict(_run(scheduler, goodput=10e6, transfer=20.0), repetition=i)
        if metric == "goodput":
            run["goodput_bps"] = v
        elif metric == "retrans":
            run["retrans"] = {"mptcp_bytes": 0, "subflow_bytes": int(v * 3_000_000)}
        else:
            run["completion_times_s"] = [v, v, v]
        runs.append(run)
    return runs


def _regimes(**docs) -> dict:
    return {**_results(**docs), "plan": {"plan": "regimes"}}


def test_regime_plan_runs_the_papers_scenarios_and_three_paths(tmp_path):
    plan = bench.make_plan("regimes", tmp_path, bench.SCHEDULERS)
    assert [i["name"] for i in plan["scenarios"]] == ["blest-regime", "ecf-regime", "three-paths"]
    assert plan["plan"] == "regimes" and plan["quick"] is False
    assert [a["name"] for a in plan["alone"]] == ["blest-regime.fast-alone"]
    # the fast path alone runs with the regime's constrained receive buffer (256 KiB: the scenario says why)
    assert Scenario.from_dict(plan["alone"][0]["scenario"]).buffers == {"client_receive": 256 * 1024}
    blest = Scenario.from_dict(plan["scenarios"][0]["scenario"])
    assert blest.buffers == {"client_receive": 256 * 1024} and blest.repetitions == 3
    assert set(blest.schedulers) == {"default", "minrtt", "blest", "ecf"}
    assert len(Scenario.from_dict(plan["scenarios"][2]["scenario"]).paths) == 3
    with pytest.raises(UsageError, match="--plan 'nope'"):
        bench.make_plan("nope", tmp_path, bench.SCHEDULERS)


def test_regime_targets_judge_the_paired_ratio_to_minrtt_by_its_interval():
    blest_doc = _doc("blest-regime", [
        *_regime_runs("minrtt", [10e6, 11e6, 9e6, 10e6], "goodput"),
        *_regime_runs("blest", [13e6, 14e6, 12e6, 13e6], "goodput"),
    ])
    ecf_doc = _doc("ecf-regime", [
        *_regime_runs("minrtt", [0.30, 0.31, 0.29], "completion"),
        *_regime_runs("ecf", [0.29, 0.31, 0.30], "completion"),
    ])
    targets = {t["id"]: t for t in bench.targets(_regimes(blest_regime=blest_doc, ecf_regime=ecf_doc))}
    assert list(targets) == ["blest-regime-goodput", "blest-regime-retrans", "ecf-regime-completion"]
    assert targets["blest-regime-goodput"]["status"] == "met"  # 1.3 x, interval above 1.10
    assert targets["blest-regime-goodput"]["values"]["pairs"] == 4
    assert targets["ecf-regime-completion"]["status"] == "unmet"  # 1.0 x, interval above 0.85
    # no retransmissions at all: no ratio to judge
    assert targets["blest-regime-retrans"]["status"] == "not measured"
    retrans_doc = _doc("blest-regime", [
        *_regime_runs("minrtt", [0.02, 0.03, 0.025], "retrans"), *_regime_runs("blest", [0.02, 0.001, 0.03], "retrans"),
    ])
    verdict = bench.targets(_regimes(blest_regime=retrans_doc))[1]
    assert verdict["status"] == "inconclusive" and verdict["values"]["ci"][0] < 0.5 < verdict["values"]["ci"][1]
    # the standard plan's targets are untouched by the regime scenarios
    assert "blest-regime-goodput" not in _by_id(_results(blest_regime=blest_doc))


def test_a_users_scheduler_runs_in_every_scenario_and_has_the_bulk_target(tmp_path):
    objects = {"mine": tmp_path / "mine.bpf.o"}
    for name in ("quick", "full", "regimes"):
        plan = bench.make_plan(name, tmp_path, bench.SCHEDULERS, objects=objects)
        assert all("mine" in i["scenario"]["schedulers"] for i in plan["scenarios"])
        assert plan["bpf_schedulers"][-1] == "mine" and plan["objects"] == {"mine": str(tmp_path / "mine.bpf.o")}
    # a shard without a scenario (only paths alone) registers nothing of the user's
    whole = bench.make_plan("quick", tmp_path, bench.SCHEDULERS, objects=objects)
    n = whole["entries"]
    last = bench.make_plan("quick", tmp_path, bench.SCHEDULERS, (n, n), objects=objects)
    assert not last["scenarios"] and last["bpf_schedulers"] == []

    results = _results(wifi_lte=_doc("wifi-lte", [*_reps("default", [0.9, 0.91, 0.9]),
                                                  *_reps("mine", [0.8, 0.81, 0.8])]))
    results["plan"] = whole
    target = _by_id(results)["wifi-lte-bulk-mine"]
    assert target["status"] == "unmet" and target["values"]["vs_default"] == pytest.approx(0.8 / 0.9, rel=0.01)
