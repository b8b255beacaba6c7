"""VM runner logic that needs no VM: status and console parsing, the guest
script, the environment passed in, the vng command line, input checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpfkit.kernel import vm
from bpfkit.errors import UsageError, VmError, VmPanic
from bpfkit.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit

PANIC_CONSOLE = """\
[    3.101] BUG: kernel NULL pointer dereference, address: 0000000000000000\r
[    3.102] #PF: supervisor write access in kernel mode\r
[    3.103] Oops: 0002 [#1] PREEMPT SMP NOPTI\r
[    3.110] Kernel panic - not syncing: Fatal exception\r
"""


@pytest.mark.parametrize("text, status", [
    ("0\n", 0), ("7", 7), ("255\n", 255), ("", None), (None, None), ("12x", None), ("256", None), ("-1", None),
])
def test_parse_status(text, status):
    assert vm.parse_status(text) == status


def test_console_lines_strip_serial_noise():
    assert vm.console_lines("a\r\n\r\nb\n\n") == ["a", "b"]
    assert vm.console_lines("one\r\ntwo\r\n") == ["one", "two"]


def test_panic_detection():
    assert vm.looks_like_panic(vm.console_lines(PANIC_CONSOLE))
    assert vm.looks_like_panic(["[ 1.0] kernel BUG at net/mptcp/protocol.c:42!"])
    assert not vm.looks_like_panic(["[ 1.0] WARNING: CPU: 0 PID: 1 at lib/foo.c:1", "DEBUG: fine"])


def test_interpret_prefers_the_reported_status():
    # A BUG that did not stop the command still leaves its status authoritative.
    assert vm.interpret(3, vm.console_lines(PANIC_CONSOLE), [], 0) == 3


def test_interpret_panic_without_status_is_vmpanic_with_console_tail():
    with pytest.raises(VmPanic) as err:
        vm.interpret(None, vm.console_lines(PANIC_CONSOLE), ["out"], 0)
    assert err.value.exit_code == 125
    assert "Kernel panic - not syncing" in str(err.value)
    assert err.value.panic_line == "[    3.101] BUG: kernel NULL pointer dereference, address: 0000000000000000"  # the cause


def test_interpret_silent_death_is_vmerror():
    with pytest.raises(VmError) as err:
        vm.interpret(None, ["[ 0.1] booting"], ["vng: something broke"], 255)
    assert type(err.value) is VmError and err.value.exit_code == 126
    assert "vng status 255" in str(err.value) and "vng: something broke" in str(err.value)


def test_guest_script_quotes_everything_and_reports_status(tmp_path):
    marker = tmp_path / "pwned"
    command = ["sh", "-c", 'printf "%s|" "$@"; exit 7', "arg0", f"$(touch {marker})", "a b", "'q'"]
    cwd = tmp_path / "dir with space"
    cwd.mkdir()
    script = vm.guest_script(command, str(cwd), {"BPFKIT_X": "it's $HOME"}, tmp_path)
    # Run it on the host: the same sh semantics the guest has.
    result = subprocess.run(["sh", "-c", script + 'printf "%s" "$BPFKIT_X"'], capture_output=True, text=True)
    assert result.stdout.startswith(f"$(touch {marker})|a b|'q'|")
    assert not marker.exists()
    assert (tmp_path / "status").read_text().strip() == "7"
    assert (tmp_path / "started").exists()


def test_guest_script_reports_126_when_cwd_is_missing(tmp_path):
    script = vm.guest_script(["true"], str(tmp_path / "missing"), {}, tmp_path)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 126 and "cannot enter" in result.stderr
    assert (tmp_path / "status").read_text().strip() == "126"


def test_read_mostly_dirs_are_the_venv_and_package_inside_a_share_and_bound_from_the_root(tmp_path):
    package = PROJECT_ROOT / "bpfkit"
    assert package in vm.read_mostly_dirs([PROJECT_ROOT])
    assert vm.read_mostly_dirs([tmp_path]) == []  # outside every share: already on the cached root
    script = vm.guest_script(["true"], "/", {}, tmp_path, [package, Path("/a b/venv")])
    line = script.splitlines()[2]
    assert line.startswith(f"mkdir -p {vm.ROOT_VIEW} && mount --bind / {vm.ROOT_VIEW} && ")
    assert f"mount --bind {vm.ROOT_VIEW}{package} {package}" in line
    assert f"mount --bind '{vm.ROOT_VIEW}/a b/venv' '/a b/venv'" in line and "|| echo" in line
    assert "mount" not in vm.guest_script(["true"], "/", {}, tmp_path)


def test_guest_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path))
    env = vm.guest_environment({"EXTRA": "1"}, host_env={
        "PATH": "/usr/bin:/bin", "BPFKIT_FOO": "bar", "SECRET_TOKEN": "x", "HOME": "/root"})
    assert env["BPFKIT_GUEST"] == "1" and env["BPFKIT_FOO"] == "bar" and env["EXTRA"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # the venv's bin first
    assert env["BPFKIT_CACHE"] == str(tmp_path)
    assert "SECRET_TOKEN" not in env
    with pytest.raises(UsageError, match="invalid environment variable name"):
        vm.guest_environment({"BAD NAME": "1"}, host_env={})


def test_unsafe_paths_are_refused():
    assert vm.check_safe_path(Path("/root/.cache/bpfkit/x-1.2"), "kernel") == "/root/.cache/bpfkit/x-1.2"
    for bad in ("/tmp/a b", "/tmp/$(x)", "/tmp/a;b", "/tmp/a=b", "/tmp/a,b"):
        with pytest.raises(UsageError):
            vm.check_safe_path(Path(bad), "shared directory")


def test_shared_dirs_include_project_cache_and_workdir_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    shared = vm._shared_dirs(workdir, [PROJECT_ROOT / "bpf", tmp_path / "cache", tmp_path])
    assert PROJECT_ROOT in shared
    assert tmp_path in shared  # covers cache and workdir, which need no mounts of their own
    assert (tmp_path / "cache") not in shared and workdir not in shared
    assert PROJECT_ROOT / "bpf" not in shared


def test_vng_command_line(tmp_path):
    cmd = vm.vng_command(Path("/venv/bin/vng"), kernel=Path("/k/bzImage"), accel="tcg", mem="2G", cpus=2,
                         shared=[Path("/work/main"), tmp_path], workdir=tmp_path)
    assert cmd[:3] == ["/venv/bin/vng", "--run", "/k/bzImage"]
    assert "--force-9p" in cmd and "--disable-kvm" in cmd
    assert cmd[cmd.index("--exec") + 1] == f"sh {tmp_path}/guest.sh"
    assert cmd[-1].startswith("--qemu-opts=")  # vng wants it last
    assert f"-chardev file,id=bpfkit_console,path={tmp_path}/console.log" in cmd[-1]
    assert "console=hvc0" in cmd[cmd.index("--append") + 1]
    assert f"rootflags={vm.ROOT_FLAGS}" in cmd[cmd.index("--append") + 1] and "cache=loose" in vm.ROOT_FLAGS
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--rwdir"] == ["/work/main", str(tmp_path)]
    assert "--rodir" not in cmd
    rules = vm.write_guest_udev_rules(tmp_path)
    with_rules = vm.vng_command(Path("vng"), kernel=Path("/k/bzImage"), accel="tcg", mem="1G", cpus=1,
                                shared=[], workdir=tmp_path, udev_rules=rules)
    mounts = [with_rules[i + 1] for i, a in enumerate(with_rules) if a == "--rodir"]
    assert mounts == [f"/usr/lib/udev/rules.d={rules}"]
    assert 'SYMLINK+="virtio-ports/$attr{name}"' in (rules / "50-bpfkit-guest.rules").read_text()
    kvm_cmd = vm.vng_command(Path("vng"), kernel=Path("/k/bzImage"), accel="kvm", mem="1G", cpus=1,
                             shared=[], workdir=tmp_path)
    assert "--disable-kvm" not in kvm_cmd


@pytest.mark.parametrize("kwargs, message", [
    ({"command": []}, "no command"),
    ({"command": ["true"], "timeout": 0}, "timeout must be > 0"),
    ({"command": ["true"], "timeout": -5}, "timeout must be > 0"),
    ({"command": ["true"], "cpus": 0}, "cpus must be >= 1"),
    ({"command": ["true"], "mem": "lots"}, "memory size"),
    ({"command": ["true"], "rwdirs": ["/no/such/dir"]}, "not a directory"),
    ({"command": ["true"], "kernel": Path("/no/such/bzImage")}, "does not exist"),
    ({"command": ["true"], "kernel": Path("/etc/passwd")}, "not a kernel image"),
])
def test_bad_input_is_one_clear_usage_error(kwargs, message):
    command = kwargs.pop("command")
    with pytest.raises(UsageError, match=message):
        vm.run(command, **kwargs)


def test_line_tail_keeps_last_lines_across_chunks():
    tail = vm._LineTail(3)
    for chunk in (b"a\nb", b"c\nd\n", b"e\r\nf"):
        tail.feed(chunk)
    assert tail.lines() == ["bc", "d", "e", "f"]  # 3 complete lines + the unfinished one


def test_panic_report_starts_at_the_cause():
    console = [f"[ 0.{i}] noise {i}" for i in range(50)] + vm.console_lines(PANIC_CONSOLE)
    console += [f"[ 4.{i}]  trace_frame_{i}+0x1/0x2" for i in range(30)] + ["[ 5.0] ---[ end Kernel panic ]---"]
    with pytest.raises(VmPanic) as err:
        vm.interpret(None, console, [], 0)
    text = str(err.value)
    assert "BUG: kernel NULL pointer dereference" in text and "noise" not in text
    assert text.rstrip().endswith("---[ end Kernel panic ]---")


def test_machine_lock_makes_a_second_vm_wait_and_says_for_whom(tmp_path, monkeypatch, capsys):
    import time as time_mod

    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("BPFKIT_VM_PARALLEL", raising=False)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from bpfkit.kernel import vm\n"
         "with vm.machine_lock(['pytest', '-m', 'vm']):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(1.5)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "BPFKIT_CACHE": str(tmp_path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time_mod.monotonic()
        with vm.machine_lock(["true"]):
            waited = time_mod.monotonic() - t0
            assert f"pid {os.getpid()}: true" in (tmp_path / "vm.lock").read_text()
        assert waited >= 0.5, "the second VM did not wait for the first"
        err = capsys.readouterr().err
        assert f"pid {holder.pid}: pytest -m vm" in err and "waiting" in err
        assert (tmp_path / "vm.lock").read_text() == ""  # released: no stale holder shown later
    finally:
        holder.kill()
        holder.wait()


def test_machine_lock_is_released_when_the_holder_is_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("BPFKIT_VM_PARALLEL", raising=False)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom bpfkit.kernel import vm\n"
         "with vm.machine_lock(['x']):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "BPFKIT_CACHE": str(tmp_path)})
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with vm.machine_lock(["y"]):  # would block for a minute if the lock outlived its holder
        pass


def test_package_bytecode_is_written_on_the_host_and_symlinked_dirs_are_not_entered(tmp_path):
    import importlib.util

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text("X = 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.py").write_text("Y = 2\n")
    (package / "link").symlink_to(elsewhere)
    vm.compile_package_bytecode(package)
    assert Path(importlib.util.cache_from_source(str(package / "sub" / "mod.py"))).is_file()
    assert not (elsewhere / "__pycache__").exists()
