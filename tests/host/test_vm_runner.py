"""Real VM boots on the built kernel (each ~10 s under TCG, so only a few):
exit status and output come back, results come back through a shared dir, a
hang ends in exit 124 with no qemu left, a kernel panic ends in exit 125."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfkit import kbuild, vm
from bpfkit.errors import MissingDependency, VmPanic, VmTimeout

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def kernel():
    try:
        return kbuild.default_kernel()
    except MissingDependency as exc:
        pytest.skip(str(exc))


def _our_qemus() -> set[int]:
    """qemu processes started by a bpfkit VM run (their console path is in the run's temp dir)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-system-x86_64") and any(b"bpfkit-vm-" in a for a in cmdline):
            pids.add(int(proc.name))
    return pids


def test_vm_kernel_returns_the_cached_build_at_once(kernel):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bpfkit", "vm", "kernel"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(kernel.bzimage)
    assert time.monotonic() - started < 10  # no extraction, no make


def test_status_output_and_shared_dir_come_back(kernel, tmp_path):
    result = vm.run(
        ["sh", "-c", f'uname -r; echo "$BPFKIT_GUEST:$HELLO" > {tmp_path}/from-guest; echo oops >&2; exit 7'],
        kernel=kernel.bzimage, env={"HELLO": "world"}, rwdirs=[tmp_path], capture=True, timeout=300,
    )
    assert result.exit_code == 7
    assert result.output.strip() == kernel.release
    assert "oops" in result.stderr
    assert (tmp_path / "from-guest").read_text().strip() == "1:world"
    assert result.accel in ("kvm", "tcg") and result.boot_seconds is not None


def test_cli_streams_output_and_returns_the_exit_code(kernel):
    proc = subprocess.run(
        [sys.executable, "-m", "bpfkit", "vm", "run", "--timeout", "300", "--",
         "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "to-stdout"
    assert "to-stderr" in proc.stderr


def test_hang_past_timeout_exits_124_and_leaves_no_qemu(kernel):
    before = _our_qemus()
    started = time.monotonic()
    with pytest.raises(VmTimeout) as err:
        vm.run(["sleep", "600"], kernel=kernel.bzimage, timeout=30, capture=True)
    assert err.value.exit_code == 124
    assert time.monotonic() - started < 30 + 15  # killed promptly, never a hang
    assert not (_our_qemus() - before)


def test_guest_kernel_panic_exits_125_with_console_lines(kernel):
    with pytest.raises(VmPanic) as err:
        vm.run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60"], kernel=kernel.bzimage,
               timeout=300, capture=True)
    assert err.value.exit_code == 125
    assert "Kernel panic" in str(err.value)
