"""mptcpize on the host kernel, which refuses fmod_ret: every command that would
load the program must say exactly why, point at the LD_PRELOAD fallback, exit
KernelUnsupported (4), and leave nothing attached or pinned."""

import subprocess
import sys
from pathlib import Path

import pytest

from bpfkit import cgroup, features
from bpfkit.mptcpize import rewrite
from bpfkit.loader import libbpf

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def fmod_ret_refused():
    check = features.check_fmod_ret()
    if check.status == features.OK:
        pytest.skip("this kernel accepts fmod_ret: the refusal path is tested on kernels that refuse it")
    return check


def bpfkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bpfkit", "mptcpize", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _assert_nothing_attached():
    assert not rewrite.PIN_DIR.exists(), sorted(p.name for p in rewrite.PIN_DIR.iterdir())
    # By name, not "no new program ids": other work on this host loads programs concurrently.
    infos = [libbpf.program_info_by_id(i) for i in libbpf.loaded_program_ids()]
    assert not [i for i in infos if i and i["name"] in ("mptcpify", "probe_fmod_ret")]


def test_attach_refused_with_reason_and_fallback(fmod_ret_refused):
    with cgroup.temporary("bpfkit-test-mptcpize-") as cg:
        out = bpfkit("attach", "--cgroup", str(cg))
        assert out.returncode == 4, out.stderr
        first_line = out.stderr.splitlines()[0]
        assert "cannot rewrite sockets to MPTCP (fmod_ret on update_socket_protocol)" in first_line
        # The same reason `bpfkit doctor` gives, word for word.
        assert fmod_ret_refused.detail in first_line
        assert "Operation not permitted" in first_line
        assert "mptcpize run CMD" in out.stderr and "Debian package mptcpize" in out.stderr
        assert "Traceback" not in out.stderr
        assert cg.exists()  # the user's cgroup is left as it was
        _assert_nothing_attached()


def test_run_refused_and_transient_cgroup_removed(fmod_ret_refused):
    before = {p.name for p in cgroup.cgroup2_root().iterdir() if p.is_dir()}
    out = bpfkit("run", "--", "sh", "-c", "echo should-not-run")
    assert out.returncode == 4
    assert "should-not-run" not in out.stdout
    assert "mptcpize run CMD" in out.stderr
    after = {p.name for p in cgroup.cgroup2_root().iterdir() if p.is_dir()}
    assert after == before
    _assert_nothing_attached()


def test_status_reports_nothing(fmod_ret_refused):
    out = bpfkit("status", "--json")
    assert out.returncode == 0, out.stderr
    assert '"attached": false' in out.stdout
    _assert_nothing_attached()


@pytest.mark.parametrize("args, message", [
    (["--cgroup", "no-such-bpfkit-cgroup"], "no such directory"),
    (["--cgroup", "/sys/fs/cgroup/memory"], "is not a cgroup v2 directory"),
    (["--unit", "no-such-unit-bpfkit.service"], "no-such-unit-bpfkit.service"),
    (["--unit", "../../bin/sh"], "invalid unit name"),
    (["--cgroup", "."], "root cgroup"),
])
def test_bad_input_is_a_clear_error(args, message):
    if "memory" in args[-1] and not Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory hierarchy on this host")
    out = bpfkit("attach", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    _assert_nothing_attached()
