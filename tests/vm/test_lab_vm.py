"""The lab inside the bpfkit VM kernel, where netem exists: delay is really
emulated (subflow RTTs never go below 2 × one-way delay), a short two-path bulk
run uses both paths, is limited by them and verifies every byte, loss shows up
as drops, and a handover completes.

Rates are low on purpose: without KVM the guest runs under TCG emulation and
its CPU tops out around 10 Mbit/s through the three namespaces."""

import pytest

from bpfkit.lab import report, runner
from bpfkit.lab.scenario import parse_scenario
from bpfkit.lab.topology import detect_shaping

pytestmark = pytest.mark.vm


def test_vm_kernel_has_netem():
    assert detect_shaping() == "netem"


def test_two_path_bulk_with_netem_delay():
    doc = {
        "duration": "6s",
        "paths": {"wifi": {"rate": "2mbit", "delay": "10ms"}, "lte": {"rate": "1mbit", "delay": "50ms"}},
        "traffic": {"kind": "bulk", "time": "6s"},
    }
    sc = parse_scenario(doc)
    run = runner.run_once(sc, "default", 0)
    assert run["ok"], run["failures"]
    assert run["shaping"] == "netem"
    assert report.path_limited(run, sc.to_dict()), (run["goodput_bps"], run["qdisc"])
    by_path = {sf["path"]: sf for sf in run["subflows"].values()}
    assert set(by_path) == {"wifi", "lte"} and min(run["bytes_by_path"].values()) > 100_000
    # base RTTs are 20 ms and 100 ms: srtt can only be above them
    assert min(v for v in by_path["wifi"]["rtt_us"] if v) >= 19_000
    assert min(v for v in by_path["lte"]["rtt_us"] if v) >= 95_000


def test_loss_is_emulated():
    sc = parse_scenario(
        {
            "duration": "4s",
            "paths": {"a": {"rate": "2mbit", "delay": "5ms", "loss": "5%"}, "b": {"rate": "2mbit", "delay": "5ms"}},
            "traffic": {"kind": "bulk", "time": "4s"},
        }
    )
    run = runner.run_once(sc, "default", 0)
    assert run["ok"], run["failures"]
    assert run["qdisc"]["a"]["to_client"]["drops"] > 0
    assert run["retrans"]["subflow_bytes"] > 0


def test_handover_completes_in_the_vm():
    sc = parse_scenario(
        {
            "duration": "10s",
            "timeout": "120s",
            "paths": {"wifi": {"rate": "2mbit", "delay": "10ms"}, "lte": {"rate": "1mbit", "delay": "40ms", "backup": True}},
            "traffic": {"kind": "bulk", "bytes": "1500KB"},
            "events": [{"at": "2s", "path": "wifi", "action": "down"}, {"at": "5s", "path": "wifi", "action": "up"}],
        }
    )
    run = runner.run_once(sc, "default", 0)
    assert run["ok"], run["failures"]
    assert run["sides"]["client"]["received_bytes"] == sc.traffic.bytes
    assert run["bytes_by_path"]["lte"] > 0


def test_a_scheduler_file_is_registered_for_the_run_and_unloaded(tmp_path):
    """`lab run --schedulers default,FILE` (what `lab run --vm` does in the guest, where the
    file arrives built): the file's scheduler is registered, measured beside default and
    unloaded. tests/bpf/sched_first.bpf.c sends everything on the first subflow, so its run
    leaves the second path nearly idle while default uses both."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    sc = parse_scenario({
        "duration": "4s",
        "paths": {"wifi": {"rate": "2mbit", "delay": "10ms"}, "lte": {"rate": "2mbit", "delay": "10ms"}},
        "traffic": {"kind": "bulk", "time": "4s"},
    })
    job = tmp_path / "scenario.json"
    job.write_text(json.dumps(sc.to_dict()))
    first = Path(__file__).resolve().parent.parent / "bpf" / "sched_first.bpf.c"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bpfkit", "lab", "run", str(job), "--host", "--no-report",
                           "--out", str(out), "--schedulers", f"default,{first}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "registered bpf_first" in proc.stderr and "unloaded bpf_first" in proc.stderr
    runs = {r["scheduler"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert set(runs) == {"default", "bpf_first"} and all(r["ok"] for r in runs.values())
    assert min(runs["default"]["bytes_by_path"].values()) > 100_000
    assert runs["bpf_first"]["bytes_by_path"].get("lte", 0) < 0.05 * sum(runs["bpf_first"]["bytes_by_path"].values())
    assert "bpf_first" not in Path("/proc/sys/net/mptcp/available_schedulers").read_text().split()


def test_a_receive_buffer_limit_bounds_goodput_by_window_over_rtt():
    """[buffers] client_receive caps the client's receive window: over a 200 ms RTT a 32 KiB
    buffer allows at most 32 KiB per RTT (1.3 Mbit/s) of the path's 8 Mbit/s, which the same
    transfer without the limit gets far closer to."""
    def scenario(buffers):
        return parse_scenario({"name": "test-buffers", "duration": "5s", "buffers": buffers,
                               "paths": {"long": {"rate": "8mbit", "delay": "100ms"}},
                               "traffic": {"kind": "bulk", "time": "5s"}}, source="test")

    limited = runner.run_once(scenario({"client_receive": "32KiB"}), "default", 0)
    free = runner.run_once(scenario({}), "default", 0)
    assert limited["ok"] and free["ok"], (limited["failures"], free["failures"])
    assert limited["topology"]["buffer_sysctls"] == {"client": {"net.ipv4.tcp_rmem": "4096 32768 32768"}}
    window_bound = 32768 * 8 / 0.2
    assert limited["goodput_bps"] <= 1.2 * window_bound, limited["goodput_bps"]
    assert free["goodput_bps"] > 2.5 * limited["goodput_bps"], (free["goodput_bps"], limited["goodput_bps"])
