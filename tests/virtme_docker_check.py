"""Shared by the unit and VM tests of the virtme-docker hooks: render the
hooks into a fake kernel tree, source .virtme-exec-run the way the image's
guest script does (with tests/virtme_docker_stub.sh's run_cmd), against a
directory of fixture tests with known outcomes, and parse the TAP verdicts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from bpfkit import ci_virtme
from bpfkit.paths import PROJECT_ROOT, cache_dir

STUB = Path(__file__).resolve().parent / "virtme_docker_stub.sh"
FIXTURE_TESTS = textwrap.dedent('''
    import pytest

    def test_passes():
        assert 1 + 1 == 2

    def test_fails():
        assert 1 + 1 == 3

    def test_skips():
        pytest.skip("feature missing")

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert n > 0
''')
VERDICT = re.compile(r"^(not )?ok 1 test: cmd_(\S+)_[A-Za-z0-9]{6}(?: # (.*))?$")
END_MARK = "after-exec-run"


def make_tree(tmp: Path) -> tuple[Path, Path]:
    """A fake kernel tree with rendered hooks, and a fixture test dir."""
    tree = tmp / "linux"
    tree.mkdir()
    ci_virtme.render_hooks(tree, workdir=str(PROJECT_ROOT), cache=str(cache_dir()), python=sys.executable)
    fixtures = tmp / "fixtures"
    fixtures.mkdir()
    (fixtures / "test_outcomes.py").write_text(FIXTURE_TESTS)
    (fixtures / "test_empty.py").write_text("# no tests here\n")
    (fixtures / "test_broken.py").write_text("import no_such_module_bpfkit\n")
    return tree, fixtures


def run_exec_run(tree: Path, tests: str, *, expect_all: str, results: Path) -> tuple[dict[str, tuple[bool, str]], str]:
    """Source .virtme-exec-run like the guest script does; returns
    {test name: (ok, directive)} and the whole output."""
    results.mkdir(exist_ok=True)
    script = (f'source {STUB}\nRESULTS_DIR={results}\ncd {tree}\nsource ./.virtme-exec-run\n'
              f'echo {END_MARK} "$(type -t bpfkit_exec_run || echo gone)"\n')
    env = {**os.environ, "BPFKIT_VIRTME_TESTS": tests, "SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES": expect_all}
    env.pop("BPFKIT_REQUIRE_ALL", None)  # the fixtures' skip must stay a skip
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    # sourcing must neither exit the guest script nor leave its function behind
    assert f"{END_MARK} gone" in out, out + proc.stderr
    verdicts = {}
    for line in out.splitlines():
        m = VERDICT.match(line)
        if m:
            verdicts[m.group(2)] = (m.group(1) is None, m.group(3) or "")
    return verdicts, out


def check_outcome_mapping(tmp: Path, *, with_collection_error: bool = True) -> None:
    tree, fixtures = make_tree(tmp)
    outcomes = fixtures / "test_outcomes.py"
    verdicts, out = run_exec_run(tree, str(outcomes), expect_all="0", results=tmp / "results")
    assert verdicts == {
        "bpfkit_test_outcomes.py_test_passes": (True, ""),
        "bpfkit_test_outcomes.py_test_fails": (False, "FAIL"),
        "bpfkit_test_outcomes.py_test_skips": (True, "SKIP"),
        "bpfkit_test_outcomes.py_test_param_1": (True, ""),
        "bpfkit_test_outcomes.py_test_param_2": (True, ""),
    }, out
    assert "# bpfkit: pytest exit 5" not in out
    assert "feature missing" in out  # pytest's skip reason reaches the TAP diagnostics

    # the image's default: a skip counts against the run
    verdicts, out = run_exec_run(tree, f"{outcomes}::test_skips", expect_all="1", results=tmp / "results")
    assert verdicts == {"bpfkit_test_outcomes.py_test_skips": (False, "SKIP")}, out

    # pytest's 5 (nothing collected) is a failure, never a pass
    verdicts, out = run_exec_run(tree, str(fixtures / "test_empty.py"), expect_all="0", results=tmp / "results")
    assert verdicts == {"bpfkit_no_tests_collected": (False, "FAIL")}, out
    assert "pytest exit 5: pytest: no tests collected → FAIL" in out

    if not with_collection_error:
        return
    # a module that does not import is reported, not silently dropped
    selection = f"{fixtures / 'test_broken.py'} {outcomes}::test_passes"
    verdicts, out = run_exec_run(tree, selection, expect_all="0", results=tmp / "results")
    assert verdicts == {"bpfkit_test_outcomes.py_test_passes": (True, ""),
                        "bpfkit_collection_errors": (False, "FAIL")}, out
    assert "no_such_module_bpfkit" in out
