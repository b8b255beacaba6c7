"""A scheduler file on the command line, one command each (issue 16's loop): `lab run
--schedulers default,FILE` and `bench schedulers --scheduler FILE` build it here for the
VM kernel, boot, register it in the guest, measure it beside default, unload it and
render on the host. lab run's file is a prebuilt object of the compatibility corpus's
first-subflow scheduler (written elsewhere, built with its own headers), so its runs
show whose decisions they carry: every byte on the first path, where default splits
two equal paths."""

import json
import subprocess
import sys

import pytest

from bpfkit.errors import MissingDependency
from bpfkit.kernel import kbuild
from bpfkit.loader import build
from bpfkit.paths import PROJECT_ROOT

pytestmark = pytest.mark.host

COMPAT = PROJECT_ROOT / "tests" / "bpf" / "compat"


@pytest.fixture(scope="module")
def first_object():
    try:
        kernel = kbuild.default_kernel()
    except MissingDependency as exc:
        pytest.skip(str(exc))
    return build.compile_bpf(COMPAT / "first.bpf.c", kernel=kernel.vmlinux, include_dirs=[COMPAT / "include"]).path


def share_of(run: dict, path: str) -> float:
    total = sum(run["bytes_by_path"].values())
    return run["bytes_by_path"][path] / total if total else 0.0


def test_lab_run_measures_a_scheduler_file_in_the_vm_in_one_command(first_object, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bpfkit", "lab", "run", str(PROJECT_ROOT / "scenarios" / "equal-paths.toml"),
         "--schedulers", f"default,{first_object}", "--duration-scale", "0.4", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered compat_first from" in proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["vm"]["accel"] in ("kvm", "tcg")
    runs = {r["scheduler"]: r for r in doc["runs"]}
    assert set(runs) == {"default", "compat_first"} and all(r["ok"] and r["verified"] for r in runs.values())
    assert share_of(runs["compat_first"], "a") >= 0.95, runs["compat_first"]["bytes_by_path"]
    assert 0.2 <= share_of(runs["default"], "a") <= 0.8, runs["default"]["bytes_by_path"]
    assert (out / "report.md").is_file() and "compat_first" in (out / "report.md").read_text()


def test_bench_measures_a_scheduler_file_in_its_shard_of_the_plan(tmp_path):
    """Shard 3 of 7 of the quick plan is lossy-rr alone: default, redundant and the file, here
    a source file (built on the host): the scaffold's copy of minrtt, as a developer starts one."""
    from bpfkit.sched import scaffold

    mine = tmp_path / "mine.bpf.c"
    mine.write_text(scaffold.render("mine", "minrtt", existing=set()))
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bpfkit", "bench", "schedulers", "--plan", "quick", "--shard", "3/7",
         "--scheduler", str(mine), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads(proc.stdout)
    assert bench["shard"] == [3, 7] and not bench["scenario_errors"]
    assert bench["registered"]["mine"]["ok"], bench["registered"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["scenarios"]) == {"lossy-rr"}
    runs = {r["scheduler"]: r for r in results["scenarios"]["lossy-rr"]["runs"]}
    assert set(runs) == {"default", "redundant", "mine"}
    assert all(r["ok"] for r in runs.values()), {n: r["failures"] for n, r in runs.items()}
