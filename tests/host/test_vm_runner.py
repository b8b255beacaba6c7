"""Real VM boots on the built kernel (each ~10 s under TCG, so only a few):
exit status and output come back, results come back through a shared dir, a
hang ends in exit 124 with no qemu left, a kernel panic ends in exit 125, a
SIGKILL of `bpfkit vm run` leaves no qemu behind and no second VM beside it."""

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfkit.kernel import kbuild, vm
from bpfkit.errors import MissingDependency, VmError, VmPanic, VmTimeout
from bpfkit.paths import cache_dir

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
        ["sh", "-c", f'uname -r; ls /usr/lib/udev/rules.d; echo "$BPFKIT_GUEST:$HELLO" > {tmp_path}/from-guest;'
                     ' echo oops >&2; exit 7'],
        kernel=kernel.bzimage, env={"HELLO": "world"}, rwdirs=[tmp_path], capture=True, timeout=300,
    )
    assert result.exit_code == 7
    # the guest's udev reads bpfkit's short rule set, not the host's (boot time), and still made
    # the virtio port links the command's output came back through
    assert result.output.split() == [kernel.release, "50-bpfkit-guest.rules"]
    assert "oops" in result.stderr
    assert (tmp_path / "from-guest").read_text().strip() == "1:world"
    assert result.accel in ("kvm", "tcg") and result.boot_seconds is not None


def test_a_job_must_write_its_result_and_a_stale_one_never_counts(kernel, tmp_path):
    """vm.run_job, the one way `lab run --vm` and `bench` enter the guest."""
    result = tmp_path / "out" / "results.json"
    result.parent.mkdir()
    result.write_text("from an earlier run")
    with pytest.raises(VmError, match="without writing"):
        vm.run_job(["true"], result=result, kernel=kernel.bzimage, timeout=300, capture=True)
    assert not result.exists()
    outcome = vm.run_job(["sh", "-c", f"echo '{{}}' > {result}; exit 3"], result=result, kernel=kernel.bzimage,
                         timeout=300, capture=True)
    assert outcome.exit_code == 3 and result.read_text().strip() == "{}"


def test_cli_streams_output_and_returns_the_exit_code(kernel):
    proc = subprocess.run(
        [sys.executable, "-m", "bpfkit", "vm", "run", "--timeout", "300", "--",
         "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "to-stdout"
    assert "to-stderr" in proc.stderr


def test_more_shares_than_the_guest_can_mount_is_one_clear_error_before_any_boot(kernel, tmp_path):
    """Six 9p shares overflow the kernel's 32 init environment entries: start_kernel panicked before
    any console and vng exited 255 with nothing said."""
    extra = [tmp_path / name for name in ("a", "b", "c")]  # + project, cache, the run's dir = 6
    for path in extra:
        path.mkdir()
    before = _our_qemus()
    proc = subprocess.run(
        [sys.executable, "-m", "bpfkit", "vm", "run", "--timeout", "300",
         *[arg for path in extra for arg in ("--rwdir", str(path))], "--", "true"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "at most 5 host directories" in proc.stderr and "Traceback" not in proc.stderr
    assert _our_qemus() <= before


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
    assert "sysrq" in err.value.panic_line.lower(), err.value.panic_line


def test_panic_retries_run_the_command_again_in_a_new_guest(kernel, tmp_path):
    """The first guest crashes itself mid-command; --panic-retries 1 boots a second one, which
    runs the whole command again and its status is the run's. Without the option: exit 125."""
    marker = tmp_path / "crashed-once"
    script = (f'if [ ! -e {marker} ]; then echo x > {marker}; sync; echo c > /proc/sysrq-trigger; sleep 60; fi; '
              'echo second-guest; exit 4')
    cli = [sys.executable, "-m", "bpfkit", "vm", "run", "--timeout", "300", "--rwdir", str(tmp_path)]
    proc = subprocess.run([*cli, "--panic-retries", "1", "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.strip() == "second-guest"
    assert "died while the command ran" in proc.stderr and "(1 of 1)" in proc.stderr, proc.stderr
    assert "sysrq" in proc.stderr.lower()
    marker.unlink()
    proc = subprocess.run([*cli, "--", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 125, proc.stderr
    assert "Traceback" not in proc.stderr


def _lock_is_free(path: Path | None = None) -> bool:
    """Whether a bpfkit lock file (the VM lock by default) could be taken now."""
    with open(path or cache_dir() / vm.VM_LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_sigkill_of_vm_run_leaves_no_qemu_and_holds_the_lock_until_it_is_gone(kernel):
    before = _our_qemus()
    proc = subprocess.Popen([sys.executable, "-m", "bpfkit", "vm", "run", "--timeout", "600", "--", "sleep", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ours: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not ours:
            assert proc.poll() is None and time.monotonic() < deadline, "no qemu started"
            time.sleep(0.2)
            ours = _our_qemus() - before
        assert not _lock_is_free()
        os.killpg(proc.pid, signal.SIGKILL)  # bpfkit's whole group, as a CI job's kill would
        proc.wait()
        end = time.monotonic() + 20
        while _our_qemus() & ours and time.monotonic() < end:
            assert not _lock_is_free(), "the VM lock was released while its qemu still ran"
            time.sleep(0.1)
        assert not (_our_qemus() & ours), "qemu outlived a SIGKILL of bpfkit vm run"
        end = time.monotonic() + 10
        while not _lock_is_free():
            assert time.monotonic() < end, "the VM lock stays held after the VM is gone"
            time.sleep(0.1)
    finally:
        for pid in _our_qemus() & ours:
            os.kill(pid, signal.SIGKILL)


def _processes_naming(text: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def _kbuild_lock_is_free(cache: Path) -> bool:
    return _lock_is_free(cache / "kbuild.lock")


def test_sigkill_of_vm_kernel_leaves_no_make_and_holds_the_build_lock_until_it_is_gone(tmp_path):
    """A kernel tree whose every make target hangs, built with a cache of its own (the real
    build lock and build dirs are not touched): SIGKILL of `bpfkit vm kernel`'s whole process
    group mid-make leaves no make (nor its children) writing into the build dir, and the build
    lock stays held until they are gone."""
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\nEXTRAVERSION =\n"
                                   "%:\n\tsleep 600 && echo $(CURDIR)\n")
    cache = tmp_path / "cache"
    env = dict(os.environ, BPFKIT_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "bpfkit", "vm", "kernel", "--source", str(tree)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _processes_naming(f"make -C {tree}".replace(" ", "\0")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "make never started"
            time.sleep(0.2)
        make_and_children = _processes_naming(str(tree))
        assert not _kbuild_lock_is_free(cache)
        os.killpg(proc.pid, signal.SIGKILL)  # bpfkit's whole group, as a CI job's kill would
        proc.wait()
        end = time.monotonic() + 20
        while _processes_naming(str(tree)) & make_and_children and time.monotonic() < end:
            assert not _kbuild_lock_is_free(cache), "the build lock was released while make still ran"
            time.sleep(0.1)
        assert not _processes_naming(str(tree)), "make outlived a SIGKILL of bpfkit vm kernel"
        end = time.monotonic() + 20  # the guard lets go once it has seen the group gone
        while not _kbuild_lock_is_free(cache):
            assert time.monotonic() < end, "the build lock is still held after make is gone"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _processes_naming(str(tree)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
