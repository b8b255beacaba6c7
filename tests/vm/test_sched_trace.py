"""`bpfkit sched trace` in the bpfkit VM kernel: the decisions of a reference
scheduler, of one written elsewhere (tests/bpf/compat/rr.bpf.c) and of the in-kernel
default, each during a verified two-path transfer. The trace must agree with what
the kernel did: every subflow that carried data was picked by some decision, the
picked subflows are the connection's own, each decision names its scheduler, and
what it reports of each subflow is a live TCP state. The CLI's tracer sees only
its netns and leaves nothing attached when it is interrupted. `lab run --trace`
keeps the data sender's decisions in results.json, consistent with its bytes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from bpfkit.sched import trace
from tests.vm.test_compat import loaded
from tests.vm.test_sched_kernel import no_leftover_bpf  # noqa: F401 (fixture)
from tests.vm.test_schedulers import PROJECT, Loaded, MiB, pair, transfer  # noqa: F401 (pair: fixture)

pytestmark = pytest.mark.vm

ESTABLISHED = 1


def check_against_transfer(decisions: list[dict], res, scheduler: str) -> list[dict]:
    sends = [d for d in decisions if d["call"] == "get_send"]
    assert sends, f"no get_send decision traced ({len(decisions)} in all)"
    assert {d["scheduler"] for d in decisions} == {scheduler}
    assert all(d["token"] != 0 for d in decisions)
    for d in sends:
        ids = {sf["id"] for sf in d["subflows"]}
        assert set(d["chosen"]) <= ids, d
        if d["ret"] == 0:
            assert d["chosen"], f"returned 0 and picked nothing: {d}"
    two = [d for d in sends if d["subflows_total"] == 2]
    assert two, "no decision saw both subflows"
    assert all(sf["state"] == ESTABLISHED and sf["cwnd"] > 0 and sf["mss"] > 0 for d in two for sf in d["subflows"])
    carried = {i for i, sent in res.by_id.items() if sent >= 256 * 1024}
    chosen = {i for d in sends for i in d["chosen"]}
    assert carried <= chosen, f"subflows that carried data {res.by_id} but were never picked: {carried - chosen}"
    return sends


@pytest.mark.parametrize("origin", ["minrtt", "compat rr"])
def test_trace_agrees_with_the_transfer(pair, no_leftover_bpf, origin):  # noqa: F811
    ctx = Loaded("minrtt") if origin == "minrtt" else loaded("rr")
    with ctx as name:
        pair.set_scheduler(name)
        with trace.Tracer(netns=pair.cli) as tracer:
            with trace.Recorder(tracer) as got:
                res = transfer(pair, 4 * MiB)
            lost = tracer.lost()
        pair.set_scheduler("default")
    res.assert_intact()
    assert lost == 0
    sends = check_against_transfer(got.decisions, res, name)
    if origin == "minrtt":
        assert all(len(d["chosen"]) <= 1 for d in sends)  # min-RTT picks one subflow per call
    else:  # round robin: both subflows take turns
        assert {1, 2} <= {i for d in sends for i in d["chosen"]}


@contextlib.contextmanager
def cli_trace(*args: str):
    proc = subprocess.Popen([sys.executable, "-m", "bpfkit", "sched", "trace", "--json", "--duration", "300", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)
    try:
        started = proc.stderr.readline()  # printed once the programs are attached
        assert "tracing scheduler decisions" in started, started + proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)


@pytest.fixture
def idle_netns():
    name = f"bkt-idle-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_cli_traces_default_in_its_netns_only_and_leaves_nothing(pair, idle_netns, no_leftover_bpf):  # noqa: F811
    pair.set_scheduler("default")
    with cli_trace("--netns", pair.cli) as client_side, cli_trace("--netns", idle_netns) as idle_side:
        res = transfer(pair, 2 * MiB)
    results = {}
    for side, proc in (("client", client_side), ("idle", idle_side)):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        results[side] = [json.loads(line) for line in out.splitlines()]
    res.assert_intact()
    check_against_transfer(results["client"], res, "default")
    # a tracer of a netns without connections saw none of the client's decisions
    assert results["idle"] == []


SCENARIO = """
name = "trace-two-paths"
duration = "5s"
seed = 3
schedulers = ["minrtt"]

[paths.a]
rate = "3mbit"
delay = "5ms"

[paths.b]
rate = "3mbit"
delay = "20ms"

[traffic]
kind = "bulk"
time = "5s"
"""


def test_lab_run_trace_records_the_senders_decisions(tmp_path, no_leftover_bpf):  # noqa: F811
    scenario = tmp_path / "trace.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    with Loaded("minrtt"):
        proc = subprocess.run([sys.executable, "-m", "bpfkit", "lab", "run", str(scenario), "--host", "--trace",
                               "--no-report", "--out", str(out)], capture_output=True, text=True, cwd=PROJECT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["ok"], run["failures"]
    obs = run["observed"]
    assert obs["count"] > 0 and obs["lost"] == 0 and obs["schedulers"] == ["minrtt"]
    assert obs["calls"].get("get_send", 0) > 0
    # the server sends (a download): its decisions, in the connection's time
    assert all(-1.0 <= t <= 5.0 + 30.0 for t in obs["t"]) and len(obs["t"]) == len(obs["chosen"])
    # (the report's decisions table and timeline: tests/unit/test_lab_report.py; matplotlib's first
    # font-cache build in the guest takes minutes under TCG, so `lab run --vm` renders on the host)
    carried = {str(sf["id"]) for sf in run["subflows"].values() if max([v for v in sf["bytes_acked"] if v] or [0]) > 100_000}
    assert carried and carried <= set(obs["picks"]), (carried, obs["picks"])
