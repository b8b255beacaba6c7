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
