"""`bpfkit bench schedulers`: the target verdicts computed from a results
document (no VM: the documents are built here the way the lab writes them)."""

from __future__ import annotations

import pytest

from bpfkit import bench
from bpfkit.lab.scenario import load_scenario, with_schedulers

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


def test_bulk_target_needs_both_capacity_and_default():
    doc = _doc("wifi-lte", [
        _run("default", goodput=0.90 * CAPACITY, transfer=10.0),
        _run("minrtt", goodput=0.96 * CAPACITY, transfer=10.0),  # >= 0.95 and >= default: met
        _run("blest", goodput=0.93 * CAPACITY, transfer=10.0),  # better than default, below 0.95: unmet
    ])
    t = _by_id(_results(wifi_lte=doc))
    assert t["wifi-lte-bulk-minrtt"]["status"] == "met"
    assert t["wifi-lte-bulk-minrtt"]["values"]["vs_capacity"] == pytest.approx(0.96)
    assert t["wifi-lte-bulk-minrtt"]["values"]["vs_default"] == pytest.approx(0.96 / 0.90)
    assert t["wifi-lte-bulk-blest"]["status"] == "unmet"

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
        plan = bench.make_plan(quick, tmp_path, bench.SCHEDULERS)
        assert all(load_scenario(item["file"]) for item in plan["scenarios"])
    full = bench.make_plan(False, tmp_path, bench.SCHEDULERS)
    quick = bench.make_plan(True, tmp_path, bench.SCHEDULERS)
    runs = lambda p: sum(len(i["schedulers"]) for i in p["scenarios"])  # noqa: E731
    assert runs(quick) < runs(full)
    assert {i["name"] for i in full["scenarios"]} == {"wifi-lte", "wifi-lte-256k", "lossy-path", "lossy-rr", "handover"}
    # a scheduler that did not build is left out of every scenario, default stays
    partial = bench.make_plan(False, tmp_path, ("default", "minrtt"))
    assert partial["bpf_schedulers"] == ["minrtt"]
    assert all(set(i["schedulers"]) <= {"default", "minrtt"} and "default" in i["schedulers"] for i in partial["scenarios"])


def test_summary_plot_is_written(tmp_path):
    results = _results(
        wifi_lte=_doc("wifi-lte", [_run("default", goodput=0.9 * CAPACITY, transfer=10.0),
                                   _run("minrtt", goodput=0.96 * CAPACITY, transfer=10.0)]),
        lossy_rr=_doc("lossy-rr", [_run("default", completions=[0.02, 0.3]), _run("redundant", completions=[0.02, 0.03])]),
    )
    path = bench.plot_summary(results, bench.targets(results), tmp_path / "bench.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
