"""`bpfkit ci virtme-docker`: rendering the hooks (syntax, shellcheck, quoting,
no overwrite without --force) and pytest → image exit-code mapping; the
exec-run hook sourced with a stub of the image's run_cmd against fixture tests
with known outcomes (the same check runs in the VM: tests/vm/test_ci_virtme.py)."""

import shutil
import subprocess
import sys

import pytest

from bpfkit import ci_virtme
from bpfkit.ci_virtme import IMAGE_FAIL, IMAGE_OK, IMAGE_SKIP, JunitCounts, image_exit_code
from tests.virtme_docker_check import check_outcome_mapping

pytestmark = pytest.mark.unit


def bpfkit(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bpfkit", *args], capture_output=True, text=True, **kwargs)


def test_init_renders_both_hooks_executable_and_valid_bash(tmp_path):
    proc = bpfkit("ci", "virtme-docker", "init", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for name in (".virtme-prepare-post", ".virtme-exec-run"):
        path = tmp_path / name
        assert path.stat().st_mode & 0o111
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert "{{" not in path.read_text() and "{%" not in path.read_text()
    post = (tmp_path / ".virtme-prepare-post").read_text()
    assert "src=/opt/bpfkit\n" in post and 'build --kernel "${vmlinux}"' in post
    run = (tmp_path / ".virtme-exec-run").read_text()
    assert "local python=/opt/bpfkit-venv/bin/python" in run and "local default_tests=tests/vm" in run
    assert "\nexit" not in run  # sourced by the guest script: exiting would skip its poweroff
    assert "kernel tree" in proc.stderr  # tmp_path is not one: a note, not an error


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_rendered_hooks_pass_shellcheck(tmp_path):
    ci_virtme.render_hooks(tmp_path)
    for name in (".virtme-prepare-post", ".virtme-exec-run"):
        proc = subprocess.run(["shellcheck", "-s", "bash", str(tmp_path / name)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_init_refuses_to_overwrite_without_force(tmp_path):
    (tmp_path / ".virtme-exec-run").write_text("mine\n")
    proc = bpfkit("ci", "virtme-docker", "init", str(tmp_path))
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (tmp_path / ".virtme-exec-run").read_text() == "mine\n"
    assert not (tmp_path / ".virtme-prepare-post").exists()  # nothing half-written
    assert bpfkit("ci", "virtme-docker", "init", str(tmp_path), "--force").returncode == 0
    assert (tmp_path / ".virtme-exec-run").read_text() != "mine\n"


def test_init_quotes_paths_and_rejects_bad_ones(tmp_path):
    ci_virtme.render_hooks(tmp_path, bpfkit_src="/opt/my bpfkit;rm -rf x")
    post = (tmp_path / ".virtme-prepare-post").read_text()
    assert "local src='/opt/my bpfkit;rm -rf x'" in post
    for bad in (["--bpfkit-src", "relative/path"], ["--bpfkit-src", "/a\nb"], ["--tests", " "]):
        proc = bpfkit("ci", "virtme-docker", "init", str(tmp_path), "--force", *bad)
        assert proc.returncode == 2 and proc.stderr.startswith("bpfkit: error:"), (bad, proc.stderr)
    proc = bpfkit("ci", "virtme-docker", "init", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr


@pytest.mark.parametrize("rc, counts, expected", [
    (0, JunitCounts(tests=3, skipped=1), IMAGE_OK),
    (0, JunitCounts(tests=2, skipped=2), IMAGE_SKIP),
    (0, JunitCounts(), IMAGE_OK),  # junit missing but pytest said all passed
    (1, JunitCounts(tests=2, failures=1), IMAGE_FAIL),
    (2, JunitCounts(), IMAGE_FAIL),  # interrupted: the image would call 2 XFAIL
    (3, JunitCounts(), IMAGE_FAIL),  # internal error: the image would call 3 XPASS
    (4, JunitCounts(), IMAGE_FAIL),  # usage error: the image would call 4 SKIP
    (5, JunitCounts(), IMAGE_FAIL),  # no tests collected: never a pass
    (-9, JunitCounts(), IMAGE_FAIL),
])
def test_pytest_exit_codes_map_to_image_codes(rc, counts, expected):
    assert image_exit_code(rc, counts)[0] == expected


def test_run_test_exit_codes_for_real_pytest_runs(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\ndef test_ok(): pass\ndef test_skip(): pytest.skip('no')\n")
    (tmp_path / "test_none.py").write_text("")
    def run(*args):
        return bpfkit("ci", "virtme-docker", "run-test", "--", *args, cwd=tmp_path, timeout=120).returncode
    assert run(f"{tmp_path}/test_x.py::test_ok") == IMAGE_OK
    assert run(f"{tmp_path}/test_x.py::test_skip") == IMAGE_SKIP
    assert run(f"{tmp_path}/test_none.py") == IMAGE_FAIL
    assert run("--no-such-pytest-option", f"{tmp_path}/test_x.py") == IMAGE_FAIL


def test_exec_run_maps_outcomes_through_stub_run_cmd(tmp_path):
    check_outcome_mapping(tmp_path)
