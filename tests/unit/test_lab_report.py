"""Report maths (percentiles, time-averaged capacity, ratios to default and to
capacity, path shares) and rendering of the markdown table and plots."""

import pytest

from bpfkit.lab import report
from bpfkit.lab.metrics import counter_delta, rate_series, read_mptcp_counters, subflow_series
from bpfkit.lab.scenario import parse_scenario

pytestmark = pytest.mark.unit


def scenario_dict(events=(), kind="bulk"):
    traffic = {"kind": "bulk", "time": "10s"} if kind == "bulk" else {"kind": "request-response", "request_size": 100, "response_size": 1000, "rate": 10}
    doc = {
        "duration": "10s",
        "paths": {"wifi": {"rate": "20mbit", "delay": "10ms"}, "lte": {"rate": "10mbit", "delay": "50ms"}},
        "traffic": traffic,
        "schedulers": ["default", "bpf_x"],
        "events": list(events),
    }
    return parse_scenario(doc, source="t").to_dict()


def subflows(wifi_bytes, lte_bytes):
    t = [0.0, 0.1, 0.2, 0.3]

    def series(sid, path, total, rtt):
        return {
            "id": sid, "path": path, "local": None, "remote": None, "t": t,
            "bytes_acked": [0, total // 3, 2 * total // 3, total], "bytes_retrans": [0, 0, 0, 1000], "rtt_us": [rtt] * 4,
        }

    return {"1": series(1, "wifi", wifi_bytes, 10_000), "2": series(2, "lte", lte_bytes, 50_000)}


def run(scheduler, goodput, ok=True, rep=0, transfer=10.0, completion=None, wifi=2_000_000, lte=1_000_000, failures=()):
    return {
        "scheduler": scheduler, "repetition": rep, "ok": ok, "failures": list(failures), "goodput_bps": goodput,
        "transfer_time_s": transfer, "completion_times_s": completion if completion is not None else [transfer],
        "bytes_by_path": {"wifi": wifi, "lte": lte}, "retrans": {"mptcp_bytes": 3000, "subflow_bytes": 30_000},
        "subflows": subflows(wifi, lte),
    }


def doc_with(runs, scenario=None):
    return {"scenario": scenario or scenario_dict(), "kernel": "6.12.0", "shaping": "netem", "shaping_note": "netem: all", "runs": runs, "elapsed_s": 21.0}


def test_percentile_interpolates():
    assert report.percentile([4, 1, 3, 2], 50) == 2.5
    assert report.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert report.percentile([7], 99) == 7
    assert report.percentile([], 50) is None


def test_mean_capacity_follows_down_up_and_rate_events():
    events = [{"at": "3s", "path": "wifi", "action": "down"}, {"at": "7s", "path": "wifi", "action": "up"}]
    sc = scenario_dict(events)
    # 3 s at 30 + 4 s at 10 + 3 s at 30 Mbit/s over 10 s
    assert report.mean_capacity(sc, 10.0) == pytest.approx(22e6)
    assert report.mean_capacity(sc, 5.0) == pytest.approx((3 * 30e6 + 2 * 10e6) / 5)
    sc = scenario_dict([{"at": "5s", "path": "lte", "action": "set", "rate": "2mbit"}])
    assert report.mean_capacity(sc, 10.0) == pytest.approx((5 * 30e6 + 5 * 22e6) / 10)
    assert report.capacity_timeline(sc)[1] == (5.0, {"wifi": 20e6, "lte": 2e6})


def test_summary_ratios_to_default_and_capacity():
    doc = doc_with([run("default", 27e6), run("bpf_x", 24e6), run("bpf_x", 18e6, rep=1), run("bpf_x", None, ok=False, rep=2, failures=["client: corrupted stream"])])
    default, other = report.summarize(doc)
    assert default["scheduler"] == "default" and default["vs_default"] == 1.0
    assert default["vs_capacity"] == pytest.approx(0.9)
    assert (other["runs"], other["ok_runs"]) == (3, 2)
    assert other["goodput_bps"] == pytest.approx(21e6)  # failed run excluded
    assert other["vs_default"] == pytest.approx(21 / 27)
    assert other["goodput_std_bps"] == pytest.approx(4.2426e6, rel=1e-3)
    assert other["path_share"] == pytest.approx({"wifi": 2 / 3, "lte": 1 / 3})
    assert other["srtt_ms"] == pytest.approx({"wifi": 10.0, "lte": 50.0})
    assert other["retrans_fraction"] == pytest.approx(60_000 / 6_000_000)
    assert other["failures"] == ["client: corrupted stream"]


def test_no_default_means_no_default_ratio():
    (row,) = report.summarize(doc_with([run("bpf_x", 24e6)]))
    assert row["vs_default"] is None


def test_capacity_ratio_only_for_bulk():
    doc = doc_with([run("default", 1e6, completion=[0.01, 0.02, 0.03, 0.5])], scenario_dict(kind="rr"))
    (row,) = report.summarize(doc)
    assert row["vs_capacity"] is None
    assert row["completion_p50_s"] == pytest.approx(0.025)


def test_table_and_markdown():
    doc = doc_with([run("default", 27e6), run("bpf_x", 24e6)])
    rows = report.table_rows(doc)
    assert report.table_columns(doc)[:6] == ["Scheduler", "Runs ok", "Path-limited", "Goodput (Mbit/s)", "× default", "× capacity"]
    assert rows[0][:6] == ["default", "1/1", "1/1", "27.00", "1.00", "0.90"]
    assert rows[1][:6] == ["bpf_x", "1/1", "1/1", "24.00", "0.89", "0.80"]
    assert rows[1][9] == "wifi 67% / lte 33%"
    assert all(len(r) == len(report.table_columns(doc)) for r in rows)
    md = report.markdown_report(doc, ["/x/throughput.png"])
    assert "| default | 1/1 | 1/1 | 27.00 | 1.00 | 0.90 |" in md
    assert "| wifi | 20 Mbit/s | 10 ms (20 ms) |" in md
    assert "![throughput](throughput.png)" in md
    assert "Failed runs" not in md


def test_markdown_lists_failures():
    doc = doc_with([run("default", None, ok=False, failures=["server: timed out"])])
    md = report.markdown_report(doc)
    assert "- default #1: server: timed out" in md
    assert "| default | 0/1 | 0/0 | — |" in md


def test_path_limited_needs_capacity_or_one_busy_path():
    sc = scenario_dict()  # wifi 20 + lte 10 Mbit/s, 10 s
    assert report.path_limited(run("default", 22e6), sc) is True  # 0.73 of 30 Mbit/s
    slow = run("default", 6e6)
    slow.update(data_sender="server", qdisc={"wifi": {"to_client": {"bytes": 5_000_000}, "to_server": {"bytes": 25_000_000}}, "lte": {"to_client": {"bytes": 3_000_000}}})
    assert report.path_limited(slow, sc) is False  # CPU-bound: 4 and 2.4 Mbit/s; the ACK direction does not count
    slow["qdisc"]["lte"]["to_client"]["bytes"] = 9_000_000  # lte carried 7.2 Mbit/s of 10
    assert report.path_limited(slow, sc) is True
    assert report.path_limited(run("default", 1e6), scenario_dict(kind="rr")) is None


def test_mean_path_rates():
    sc = scenario_dict([{"at": "4s", "path": "lte", "action": "down"}])
    assert report.mean_path_rates(sc, 8.0) == pytest.approx({"wifi": 20e6, "lte": 5e6})


def test_tcg_measurements_carry_a_warning():
    doc = doc_with([run("default", 6e6)])
    doc["vm"] = {"accel": "tcg", "boot_seconds": 40.0, "total_seconds": 300.0}
    md = report.markdown_report(doc)
    assert "under TCG emulation" in md and "in the bpfkit VM (tcg, 300 s including boot)" in md
    assert "| default | 1/1 | 0/1 |" in md


def test_event_label_says_what_tbf_cannot_emulate():
    event = {"at_s": 4, "path": "wifi", "action": "set", "changes": {"rate_bps": 1e6, "delay_s": 0.1}}
    assert report.event_label(event) == "wifi rate 1 Mbit/s, delay 100 ms"
    assert report.event_label(event, "tbf") == "wifi rate 1 Mbit/s, delay 100 ms (not emulated)"


def test_render_writes_report_and_pngs(tmp_path):
    doc = doc_with([run("default", 27e6, completion=[0.01, 0.02]), run("bpf_x", 24e6, completion=[0.02, 0.04])], scenario_dict(kind="rr"))
    files = report.render(doc, tmp_path)
    names = sorted(f.name for f in files)
    assert names == ["completion_cdf.png", "report.md", "rtt.png", "throughput.png"]
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000


def test_rate_series_and_subflow_grouping():
    t, r = rate_series([0.0, 0.1, 0.3], [0, 1250, 1250])
    assert t == pytest.approx([0.05, 0.2]) and r == pytest.approx([100_000, 0])
    samples = [
        {"t_ns": 1_000_000_000 + i * 100_000_000, "mptcp": {}, "subflows": [{"id": 1, "local": ["10.1.1.1", 5], "remote": ["10.1.2.2", 5201], "bytes_acked": i * 10, "rtt_us": 5}]}
        for i in range(3)
    ]
    series = subflow_series(samples, 1_000_000_000, lambda local, remote: "wifi" if local[0] == "10.1.1.1" else None)
    assert series["1"]["path"] == "wifi" and series["1"]["t"] == [0.0, 0.1, 0.2] and series["1"]["bytes_acked"] == [0, 10, 20]


def test_mptcp_counters_parse_and_delta(tmp_path):
    netstat = tmp_path / "netstat"
    netstat.write_text("TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: MPCapableSYNRX MPJoinSynRx MPTCPRetrans\nMPTcpExt: 1 2 3\n")
    counters = read_mptcp_counters(netstat)
    assert counters == {"MPCapableSYNRX": 1, "MPJoinSynRx": 2, "MPTCPRetrans": 3}
    assert counter_delta({"MPCapableSYNRX": 1, "MPJoinSynRx": 0, "MPTCPRetrans": 3}, counters) == {"MPJoinSynRx": 2}
    assert read_mptcp_counters(tmp_path / "none") == {}


def test_ratio_to_default_has_a_paired_interval():
    # the same seed (repetition) is slower for both: pairing removes that common variation
    doc = doc_with([run("default", 20e6, rep=0), run("default", 30e6, rep=1), run("default", 25e6, rep=2),
                    run("bpf_x", 18e6, rep=0), run("bpf_x", 27e6, rep=1), run("bpf_x", 22.5e6, rep=2)])
    _, other = report.summarize(doc)
    assert other["vs_default"] == pytest.approx(0.9)
    assert other["vs_default_ci"] == pytest.approx([0.9, 0.9])  # every pair is exactly 0.9
    low, high = other["goodput_ci_bps"]
    assert 18e6 <= low < 22.5e6 < high <= 27e6  # the unpaired goodput varies with the seed
    assert report.table_rows(doc)[1][4] == "0.90 [0.90, 0.90]"
    doc["runs"][4]["goodput_bps"] = 30e6  # one pair disagrees: the interval opens around the ratio
    _, other = report.summarize(doc)
    low, high = other["vs_default_ci"]
    assert low < other["vs_default"] < high and low >= 0.9 - 1e-9
    assert report.vs_default_interval(other).verdict(1.0, higher_is_better=True) == "inconclusive"
    (only,) = report.summarize(doc_with([run("bpf_x", 1e6)]))
    assert only["vs_default_ci"] is None and only["goodput_ci_bps"] is None


def test_traced_runs_get_a_decisions_section_and_timeline(tmp_path):
    traced = run("minrtt", 2.0e6)
    traced["observed"] = {"count": 4, "lost": 0, "calls": {"get_send": 3, "get_retrans": 1}, "picks": {"1": 3, "2": 1},
                          "schedulers": ["minrtt"], "mean_call_us": 2.5, "every": 1, "t": [0.1, 0.2, 0.3, 0.4],
                          "chosen": [1, 1, 2, 1], "call": ["get_send", "get_send", "get_retrans", "get_send"]}
    doc = doc_with([run("default", 2.1e6), traced])
    text = report.markdown_report(doc)
    assert "## Scheduler decisions" in text
    assert "| minrtt | 1 | 4 | 3 | 1 | #1 75%, #2 25% | 2.5 µs | 0 |" in text
    assert report.plot_decisions(doc, tmp_path / "d.png").stat().st_size > 0
    assert report.plot_decisions(doc_with([run("default", 2.1e6)]), tmp_path / "none.png") is None


def test_results_of_an_unknown_traffic_kind_are_one_clear_error():
    from bpfkit.errors import UsageError

    doc = doc_with([run("default", 1e6, completion=[0.01, 0.02])], scenario_dict(kind="rr"))
    doc["scenario"]["traffic"]["kind"] = "warp"
    with pytest.raises(UsageError, match="traffic kind 'warp' is not one this bpfkit knows"):
        report.table_columns(doc)


def test_the_run_record_is_the_documented_layout():
    """docs/results-format.md lists a run record's keys; RunRecord is that list in code."""
    import dataclasses
    import re

    from bpfkit.lab.runner import RunRecord
    from bpfkit.paths import PROJECT_ROOT

    text = (PROJECT_ROOT / "docs" / "results-format.md").read_text()
    section = text.split("## A run record", 1)[1].split("\n\n", 2)[1]
    documented = {key for cell in re.findall(r"^\| ([^|]+) \|", section, re.M) for key in re.findall(r"`(\w+)`", cell)}
    assert documented == {f.name for f in dataclasses.fields(RunRecord)}
