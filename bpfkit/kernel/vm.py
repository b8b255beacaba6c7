"""Run one command inside a throwaway VM on a given kernel, with virtme-ng.

The guest sees the host's filesystem read-only (9p), except the project dir, the
bpfkit cache and any extra --rwdir, which are shared read-write so results come
back. This module knows nothing of what runs inside: it boots, runs, and reports.

How the exit status comes back: the command runs from a small guest script that
writes `$?` into a status file in a host temp dir shared read-write. No status
file means the guest died first: a kernel panic (VmPanic, 125), a hang past the
timeout (VmTimeout, 124), or anything else (VmError, 126).

The kernel console goes to an extra virtio console (hvc0) backed by a file in
that temp dir, at loglevel 5 (warnings and worse): the user's output stays clean
and a panic or BUG still leaves its trace for the error report. (A second 8250
port cannot be a second console: the 8250 driver registers one console only,
and vng already gives it ttyS0 -> /dev/null. hvc0 registers later in boot but
replays the log buffer, so only a panic before virtio is up goes unseen.)
"""

import contextlib
import importlib.metadata
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit import hostlock
from bpfkit.errors import MissingDependency, UsageError, VmError, VmPanic, VmTimeout
from bpfkit.paths import PROJECT_ROOT, cache_dir

CONSOLE_TAIL_LINES = 20
OUTPUT_TAIL_LINES = 40
# Boots tried again when the guest kernel dies before the command starts.
BOOT_PANIC_RETRIES = 1
KVM_PROBE_TIMEOUT = 45.0  # a KVM boot takes ~2 s; a broken KVM hangs or dies
KILL_GRACE_SECONDS = 3.0
GUARD_GRACE_SECONDS = 60.0  # past the deadline bpfkit itself enforces
VM_LOCK = "vm.lock"  # in the cache: one bpfkit VM at a time on this machine

# Host environment passed into the guest besides BPFKIT_* (virtme starts the
# guest command with a minimal environment of its own).
PASSTHROUGH_ENV = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TERM", "USER")

# vng assembles a shell command line from its arguments without quoting paths,
# so every path we hand it must be free of shell and option syntax.
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+@%-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEM_RE = re.compile(r"^[1-9][0-9]*[KMGT]?$")
# What a dying kernel prints: panic, oops, BUG()/BUG_ON, fatal exceptions.
_PANIC_RE = re.compile(
    r"Kernel panic|\bBUG: |kernel BUG at|Oops: |general protection fault|Unable to handle kernel"
)


@dataclass
class VmResult:
    exit_code: int  # the guest command's exit status
    output: str  # guest stdout when capture=True, else ""
    stderr: str  # guest stderr when capture=True, else ""
    accel: str  # "kvm" or "tcg"
    boot_seconds: float | None  # vng start -> guest command start
    total_seconds: float
    kernel: Path
    console: list[str] = field(default_factory=list)  # last kernel console lines

    def to_dict(self) -> dict:
        return {
            "exit_code": self.exit_code,
            "output": self.output,
            "stderr": self.stderr,
            "accel": self.accel,
            "boot_seconds": self.boot_seconds,
            "total_seconds": self.total_seconds,
            "kernel": str(self.kernel),
            "console": self.console,
        }


# --------------------------------------------------------------------------- pure logic


def parse_status(text: str | None) -> int | None:
    """The guest command's exit status from the status file, or None if unusable
    (absent, or cut short by the guest dying while writing it)."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if 0 <= value <= 255 else None


def console_lines(text: str) -> list[str]:
    """Console text as lines, without serial line-ending noise or blank lines."""
    return [line.rstrip("\r") for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def looks_like_panic(lines: list[str]) -> bool:
    return any(_PANIC_RE.search(line) for line in lines)


def _from_first_panic(lines: list[str]) -> list[str]:
    """The console from the first panic/BUG line on (the cause, not only the last
    trace lines), at most CONSOLE_TAIL_LINES of it."""
    for index, line in enumerate(lines):
        if _PANIC_RE.search(line):
            excerpt = lines[index : index + CONSOLE_TAIL_LINES]
            if index + CONSOLE_TAIL_LINES < len(lines):  # keep the final verdict line too
                excerpt += ["...", lines[-1]]
            return excerpt
    return lines[-CONSOLE_TAIL_LINES:]


def interpret(status: int | None, console: list[str], output_tail: list[str],
              vng_returncode: int | None) -> int:
    """Decide the run's outcome after the VM is gone (the timeout is handled before):
    the command's status if it reported one, otherwise VmPanic or VmError."""
    if status is not None:
        return status
    if looks_like_panic(console):
        excerpt = _from_first_panic(console)
        panic = VmPanic("guest kernel panicked before the command reported a status; " + _console_report(excerpt))
        panic.panic_line = excerpt[0].strip()
        raise panic
    details = [_console_report(console[-CONSOLE_TAIL_LINES:])]
    if output_tail:
        details.append("last output lines:\n" + _indent(output_tail[-CONSOLE_TAIL_LINES:]))
    raise VmError(
        f"the VM exited (vng status {vng_returncode}) without reporting the command's exit status"
        + ("\n" + "\n".join(details) if details else "")
    )


def _console_report(lines: list[str]) -> str:
    if not lines:
        return "kernel console: no warnings or errors"
    return "kernel console:\n" + _indent(lines)


def _indent(lines: list[str]) -> str:
    return "\n".join("  | " + line for line in lines) if lines else "  | (nothing)"


# The guest's root is the host's / over 9p (read-only). vng mounts it uncached; with cache=loose
# (vng's options otherwise) a process start reads what an earlier one read from the guest's page
# and dentry caches. Measured under TCG (2026-12-04): `python3 -c pass` 2.2 s -> 0.6 s, the venv's
# python 3.3 s -> 0.7 s. Safe because the guest cannot write the root; what it shares read-write
# (the project, the cache) are separate, uncached 9p mounts. The last rootflags= wins.
ROOT_FLAGS = "version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"
ROOT_VIEW = Path("/run/bpfkit-root")


def read_mostly_dirs(shared: list[Path]) -> list[Path]:
    """Trees inside a read-write share that the guest only reads, and reads a lot: this Python's
    venv and bpfkit's own package. The guest sees them through the cached root instead (a bind
    mount of the root's view over them): importing the lab in the guest took 19 s through the
    uncached share, 4-7 s through the root (TCG, 2026-12-04). Read-only there, which they may be:
    the guest installs nothing, and a .pyc Python cannot write it compiles in memory."""
    candidates = [Path(sys.prefix).resolve()] if sys.prefix != sys.base_prefix else []
    candidates.append(Path(__file__).resolve().parent.parent)  # the bpfkit package
    return [c for c in candidates if any(c.is_relative_to(s) for s in shared)]


def compile_package_bytecode(package: Path = Path(__file__).resolve().parent.parent) -> None:
    """The guest reads bpfkit's package read-only (read_mostly_dirs), so where the host never wrote
    its .pyc files (a fresh clone, PYTHONDONTWRITEBYTECODE=1 as on this project's CI machine) every
    guest Python compiled each module it imported, each time: ~0.7 s of `import bpfkit.lab.runner`
    under TCG (2026-12-04). Written on the host instead: 0.15 s once, ~2 ms when up to date.
    compileall does not descend into symlinked directories."""
    import compileall

    compileall.compile_dir(package, quiet=2)


def guest_script(command: list[str], cwd: str, env: dict[str, str], status_dir: Path,
                 read_mostly: list[Path] = ()) -> str:
    """The sh script the guest runs. Everything user-supplied is shlex-quoted."""
    started = shlex.quote(str(status_dir / "started"))
    status = shlex.quote(str(status_dir / "status"))
    lines = [
        "# written by bpfkit: run one command, then report its exit status to the host",
        f": > {started}",
    ]
    if read_mostly:
        view = shlex.quote(str(ROOT_VIEW))
        # the root alone, none of the shares; without it the trees stay on their (slower) share
        binds = " && ".join(f"mount --bind {shlex.quote(f'{ROOT_VIEW}{d}')} {shlex.quote(str(d))}"
                            for d in read_mostly)
        lines.append(f"mkdir -p {view} && mount --bind / {view} && {binds} || "
                     f"echo 'bpfkit: reading the venv through the uncached share (slower)' >&2")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    lines += [
        f"cd {shlex.quote(cwd)} || {{ echo bpfkit: cannot enter {shlex.quote(cwd)} in the guest >&2;"
        f" echo 126 > {status}; exit 126; }}",
        shlex.join(command),
        f"echo $? > {status}",
    ]
    return "\n".join(lines) + "\n"


def guest_environment(extra: dict[str, str] | None, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """BPFKIT_* and a few basics from the host, PATH led by this Python's bin dir (the
    venv), BPFKIT_GUEST=1, then the caller's `extra` on top."""
    host_env = dict(os.environ if host_env is None else host_env)
    env = {k: v for k, v in host_env.items() if k.startswith("BPFKIT_") or k in PASSTHROUGH_ENV}
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if venv_bin not in path.split(":"):
        path = f"{venv_bin}:{path}"
    env["PATH"] = path
    env["BPFKIT_CACHE"] = str(cache_dir())  # same cache in the guest, shared read-write
    env["BPFKIT_GUEST"] = "1"
    for name, value in (extra or {}).items():
        if not _ENV_NAME_RE.match(name):
            raise UsageError(f"invalid environment variable name {name!r}")
        env[name] = str(value)
    return env


def check_safe_path(path: Path, what: str) -> str:
    text = str(path)
    if not _SAFE_PATH_RE.match(text):
        raise UsageError(f"{what} {text!r}: only letters, digits and ._/+@%- are allowed "
                         "(virtme-ng passes paths through a shell unquoted)")
    return text


def resolve_kernel(kernel: Path | str | None) -> Path:
    """A bzImage path: the given file, <dir>/bzImage for a dir, or the default build."""
    if kernel is None:
        from bpfkit.kernel.kbuild import default_kernel  # kernel builds, not VM logic

        return default_kernel().bzimage
    path = Path(kernel).expanduser()
    if path.is_dir():
        path = path / "bzImage"
    if not path.is_file():
        raise UsageError(f"kernel image {path} does not exist")
    _check_bzimage(path)
    return path.resolve()


def _check_bzimage(path: Path) -> None:
    """An x86 boot image carries "HdrS" at 0x202 (Documentation/arch/x86/boot.rst); anything
    else would reach qemu, which fails only after the boot started, with its own words."""
    try:
        with open(path, "rb") as f:
            f.seek(0x202)
            magic = f.read(4)
    except OSError as exc:
        raise UsageError(f"kernel image {path}: {exc.strerror}") from None
    if magic != b"HdrS":
        raise UsageError(f"{path} is not a kernel image (no x86 boot header: expected a bzImage/vmlinuz)",
                         hint="give arch/x86/boot/bzImage of a build, /boot/vmlinuz-VERSION, or a build dir")


# --------------------------------------------------------------------------- host tools


def find_vng() -> Path:
    """vng from this Python's venv first (it needs its siblings on PATH), else PATH."""
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file():
        return beside
    found = shutil.which("vng")
    if found:
        return Path(found)
    raise MissingDependency("virtme-ng (`vng`) is not installed", hint="pip install virtme-ng")


def _vng_version() -> str:
    try:
        return importlib.metadata.version("virtme-ng")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_host_tools() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        raise MissingDependency("qemu-system-x86_64 is not installed", hint="apt-get install qemu-system-x86")
    if shutil.which("udevadm") is None:
        # Without udev on the host, vng's --exec output is lost and it exits 255.
        raise MissingDependency("udev is not installed on the host (virtme-ng needs it)",
                                hint="apt-get install udev")


# --------------------------------------------------------------------------- accel


def _kvm_probe_file() -> Path:
    return cache_dir() / "kvm-probe.json"


_said: set[str] = set()


def _say_once(message: str) -> None:
    """A notice about the accelerator, once per process (a command may ask more than once)."""
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr)


def choose_accel(kernel: Path) -> str:
    """'kvm' if a guest really runs under KVM here, else 'tcg'. Decided once per
    (host kernel, vng version) by booting `kernel` under KVM, then cached;
    BPFKIT_VM_ACCEL=kvm|tcg overrides."""
    forced = os.environ.get("BPFKIT_VM_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise UsageError(f"BPFKIT_VM_ACCEL={forced!r}: expected kvm or tcg")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _say_once("bpfkit: no usable /dev/kvm; running the VM under TCG emulation (slower)")
        return "tcg"
    host = f"{os.uname().release} vng-{_vng_version()}"
    probe_file = _kvm_probe_file()
    try:
        cached = json.loads(probe_file.read_text())
        if cached.get("host") != host:
            cached = None
    except (OSError, ValueError):
        cached = None
    if cached is None:
        print("bpfkit: checking once whether KVM works on this host ...", file=sys.stderr)
        usable, detail = _probe_kvm(kernel)
        cached = {"host": host, "kvm_usable": usable, "detail": detail,
                  "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        temp = probe_file.with_suffix(f".{os.getpid()}.tmp")  # parallel runs may probe at once
        temp.write_text(json.dumps(cached, indent=2) + "\n")
        temp.replace(probe_file)
    if cached["kvm_usable"]:
        return "kvm"
    _say_once(f"bpfkit: KVM does not run guests here ({cached['detail']}); using TCG emulation (slower)")
    return "tcg"


def cached_accel() -> str | None:
    """What the last KVM probe on this host decided ('kvm'/'tcg'), without
    probing; None if never probed for this host kernel and vng version."""
    try:
        cached = json.loads(_kvm_probe_file().read_text())
    except (OSError, ValueError):
        return None
    if cached.get("host") != f"{os.uname().release} vng-{_vng_version()}":
        return None
    return "kvm" if cached.get("kvm_usable") else "tcg"


def _probe_kvm(kernel: Path) -> tuple[bool, str]:
    # qemu silently falls back to TCG when KVM cannot start, so the guest itself
    # must confirm it runs on KVM.
    probe = ["sh", "-c", "dmesg | grep -q 'Hypervisor detected: KVM'"]
    try:
        result = _boot(probe, kernel=kernel, accel="kvm", timeout=KVM_PROBE_TIMEOUT, mem="1G",
                       cpus=1, rwdirs=(), env={}, capture=True)
    except VmTimeout:
        return False, f"KVM guest not done after {KVM_PROBE_TIMEOUT:.0f} s"
    except VmPanic:
        return False, "KVM guest panicked"
    except VmError:
        return False, "KVM guest died before running anything"
    if result.exit_code != 0:
        return False, "qemu fell back to TCG"
    return True, f"KVM guest booted in {result.boot_seconds or 0:.1f} s"


# --------------------------------------------------------------------------- running


def run(
    command: list[str],
    *,
    kernel: Path | None = None,
    timeout: float = 600,
    mem: str = "2G",
    cpus: int = 2,
    rwdirs=(),
    env: dict[str, str] | None = None,
    capture: bool = False,
    panic_retries: int = 0,
) -> VmResult:
    """Boot `kernel` (default: the cached default build), run `command` (an argv
    list, never a shell string) in the guest with the host cwd, return its status.
    Streams guest stdout/stderr live unless capture=True. Raises VmTimeout (124),
    VmPanic (125) or VmError (126) when the guest gives no status. panic_retries:
    boot again and run the whole command again, up to that many times, when the
    guest kernel dies while the command runs (for a command that is safe to
    repeat from the start in a fresh guest)."""
    if panic_retries < 0:
        raise UsageError(f"panic retries must be >= 0, got {panic_retries}")
    if not command or not all(isinstance(arg, str) for arg in command):
        raise UsageError("no command given to run in the VM (expected: -- CMD [ARGS...])")
    if not timeout or timeout <= 0:
        raise UsageError(f"timeout must be > 0 seconds, got {timeout}")
    if cpus < 1:
        raise UsageError(f"cpus must be >= 1, got {cpus}")
    if not _MEM_RE.match(str(mem)):
        raise UsageError(f"memory size {mem!r}: expected a number with an optional K/M/G/T suffix, e.g. 2G")
    rwdir_paths = []
    for rwdir in rwdirs:
        path = Path(rwdir).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(f"--rwdir {rwdir}: not a directory")
        rwdir_paths.append(path)
    bzimage = resolve_kernel(kernel)
    _check_host_tools()
    with machine_lock(command) as lock_fd:
        accel = choose_accel(bzimage)
        return _boot(command, kernel=bzimage, accel=accel, timeout=timeout, mem=str(mem), cpus=cpus,
                     rwdirs=rwdir_paths, env=env, capture=capture, lock_fd=lock_fd, panic_retries=panic_retries)


@contextlib.contextmanager
def machine_lock(command: list[str]):
    """One bpfkit VM at a time on this machine. Guests under TCG each want every
    host core: two at once both run at half speed or less and miss the timeouts
    they were given. A second `bpfkit vm run` says who holds the lock and waits
    (its own timeout starts once it boots). BPFKIT_VM_PARALLEL=1 skips the lock."""
    if os.environ.get("BPFKIT_VM_PARALLEL") == "1":
        yield None
        return
    holder = hostlock.this_process(shlex.join(command)[:200])
    with hostlock.held(VM_LOCK, holder, lambda other: f"bpfkit: another bpfkit VM is running ({other}); "
                       "waiting for it to end (BPFKIT_VM_PARALLEL=1 runs both at once)") as lock_fd:
        yield lock_fd


def _boot(command: list[str], *, kernel: Path, accel: str, timeout: float, mem: str, cpus: int,
          rwdirs, env: dict[str, str] | None, capture: bool, lock_fd: int | None = None,
          panic_retries: int = 0) -> VmResult:
    vng = find_vng()
    boot_deaths = command_deaths = 0
    while True:
        workdir = Path(tempfile.mkdtemp(prefix="bpfkit-vm-"))
        try:
            return _boot_in(workdir, vng, command, kernel=kernel, accel=accel, timeout=timeout,
                            mem=mem, cpus=cpus, rwdirs=rwdirs, env=env, capture=capture, lock_fd=lock_fd)
        except VmPanic as exc:
            # A guest that dies while booting never ran the command, so booting it
            # again changes nothing the command did.  Under TCG this happens now and
            # then (an int3 left by the kernel's boot-time text patching, seen by the
            # other vCPU: emulated cross-modifying code).  A panic once the command
            # runs is the command's outcome, run again only when the caller said the
            # command is safe to repeat whole (panic_retries).
            if exc.command_started:
                command_deaths += 1
                if command_deaths > panic_retries:
                    raise
                boot_deaths = 0  # each run of the command gets its own boot retry
                print(f"bpfkit: the guest kernel died while the command ran ({exc.panic_line or 'no panic line'}); "
                      f"booting again to run it again ({command_deaths} of {panic_retries})", file=sys.stderr)
            else:
                boot_deaths += 1
                if boot_deaths > BOOT_PANIC_RETRIES:
                    raise
                print("bpfkit: the guest kernel died while booting, before the command ran; booting again",
                      file=sys.stderr)
            print(_indent(str(exc).splitlines()[1:4]), file=sys.stderr)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


# virtme-ng-init starts udevd, triggers a coldplug of every device and waits for udev to settle
# before it starts the command: it needs udev's /dev/virtio-ports/virtme.* links to connect the
# command's stdio. With the host's rules (Debian 12: 41 files) that wait took 1.5-2.0 s of a
# 6.2-s boot under TCG; with just the rules below, 0.35 s (2026-12-04). The guest sees them in
# place of the host's packaged rules (HOST_UDEV_RULES_DIR); an administrator's own in
# /etc/udev/rules.d still apply. The second rule keeps loading drivers' modules for the devices
# found, as the host's 80-drivers.rules does (a distribution kernel's virtio devices).
GUEST_UDEV_RULES = """\
# written by bpfkit for its VM guests: only what the guest's init needs from udev
SUBSYSTEM=="virtio-ports", KERNEL=="vport*", ATTR{name}=="?*", SYMLINK+="virtio-ports/$attr{name}"
ENV{MODALIAS}=="?*", RUN{builtin}+="kmod load"
"""
HOST_UDEV_RULES_DIR = Path("/usr/lib/udev/rules.d")
# Linux hands the boot parameters it does not know to init as its environment, at most 32 entries
# with its own HOME and TERM (init/main.c: MAX_INIT_ENVS, CONFIG_INIT_ENV_ARG_LIMIT); one more and
# start_kernel panics ("Too many boot env vars") before any console is up: vng exits 255, silent.
# vng 1.42 passes 13 virtme_* variables of its own and 3 per shared directory: at most 5 shares.
MAX_SHARES = 5


def write_guest_udev_rules(workdir: Path) -> Path:
    rules = workdir / "udev-rules.d"
    rules.mkdir()
    (rules / "50-bpfkit-guest.rules").write_text(GUEST_UDEV_RULES)
    return rules


def vng_command(vng: Path, *, kernel: Path, accel: str, mem: str, cpus: int, shared: list[Path],
                workdir: Path, udev_rules: Path | None = None) -> list[str]:
    console_log = workdir / "console.log"
    cmd = [
        str(vng), "--run", check_safe_path(kernel, "kernel"),
        "--force-9p",  # virtiofs does not work here; 9p does everywhere
        "--memory", mem, "--cpus", str(cpus),
    ]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    for path in shared:
        cmd += ["--rwdir", check_safe_path(path, "shared directory")]
    if udev_rules is not None:
        cmd += ["--rodir", f"{HOST_UDEV_RULES_DIR}={check_safe_path(udev_rules, 'udev rules directory')}"]
    # Kernel console to hvc0 -> console.log; loglevel=5 keeps warnings, oopses, panics.
    cmd += ["--append", f"console=hvc0 loglevel=5 rootflags={ROOT_FLAGS}"]
    cmd += ["--exec", f"sh {workdir / 'guest.sh'}"]
    # vng requires --qemu-opts to come last; "=" keeps argparse from reading the
    # leading "-device" as an option of vng's own.
    cmd.append(
        "--qemu-opts="
        "-device virtio-serial-pci,id=bpfkit_console_bus "
        f"-chardev file,id=bpfkit_console,path={console_log} "
        "-device virtconsole,chardev=bpfkit_console,bus=bpfkit_console_bus.0"
    )
    return cmd


BOOT_MARGIN_S = 600  # boot + Python imports: under TCG on a busy 2-core host this takes minutes


def run_job(command: list[str], *, result: Path, kernel: Path | None = None, timeout: float,
            capture: bool = False) -> VmResult:
    """The one way a job goes into the guest: run `command` there and expect it to
    write `result`, whose directory is shared read-write. A `result` left from an
    earlier run is removed first, so it is never taken for this one's; VmError when
    the guest ends without writing it (whatever the command's status)."""
    result = Path(result).resolve()
    result.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        result.unlink()
    outcome = run(command, kernel=kernel, timeout=timeout, rwdirs=(result.parent,), capture=capture)
    if not result.exists():
        raise VmError(f"the VM run ended (status {outcome.exit_code}) without writing {result}")
    return outcome


def _shared_dirs(workdir: Path, extra: list[Path]) -> list[Path]:
    """Read-write in the guest: the project, the cache, the run's status dir, extras.
    Deduplicated; a dir inside another shared dir needs no mount of its own."""
    candidates = [PROJECT_ROOT, cache_dir(), workdir, *extra]
    shared: list[Path] = []
    for path in candidates:
        path = Path(path).resolve()
        if any(path == s or path.is_relative_to(s) for s in shared):
            continue
        shared = [s for s in shared if not s.is_relative_to(path)] + [path]
    return shared


def _boot_in(workdir: Path, vng: Path, command: list[str], *, kernel: Path, accel: str,
             timeout: float, mem: str, cpus: int, rwdirs, env, capture: bool, lock_fd: int | None) -> VmResult:
    cwd = os.getcwd()
    guest_env = guest_environment(env)
    shared = _shared_dirs(workdir, list(rwdirs))
    if len(shared) > MAX_SHARES:
        raise UsageError(f"the guest can share at most {MAX_SHARES} host directories (the kernel passes at most "
                         f"32 boot variables to init); this run needs {len(shared)}: "
                         + ", ".join(map(str, shared)),
                         hint="give fewer --rwdir, or one directory that holds them")
    read_mostly = read_mostly_dirs(shared)
    if read_mostly:
        compile_package_bytecode()
    (workdir / "guest.sh").write_text(guest_script(command, cwd, guest_env, workdir, read_mostly))
    # the short rule set takes a share of its own; without room for it the boot is 1.5-2 s slower
    udev_rules = write_guest_udev_rules(workdir) if len(shared) < MAX_SHARES else None
    cmd = vng_command(vng, kernel=kernel, accel=accel, mem=mem, cpus=cpus, shared=shared, workdir=workdir,
                      udev_rules=udev_rules)
    host_env = dict(os.environ)
    host_env["PATH"] = f"{vng.parent}:{host_env.get('PATH', '/usr/bin:/bin')}"  # vng runs its siblings

    started_wall = time.time()
    started = time.monotonic()
    deadline = started + timeout
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    tail = _LineTail(OUTPUT_TAIL_LINES)
    restore_signals = _terminate_raises()
    try:
        # vng runs from the (path-safe) workdir; the guest script itself cds to the real
        # cwd, which may hold any character since it is shlex-quoted there. Its own
        # session = its own process group, so vng, virtme-run and qemu die together.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=host_env, cwd=workdir,
                                start_new_session=True)
        # Killed bpfkit (even SIGKILL of its whole group): the guard ends the VM and holds
        # the VM lock until it is gone, so the next `bpfkit vm run` never boots beside it.
        guard = hostlock.GroupGuard(proc.pid, lock_fd, deadline + GUARD_GRACE_SECONDS)
        try:
            sinks = {
                proc.stdout: (out_chunks, None if capture else sys.stdout),
                proc.stderr: (err_chunks, None if capture else sys.stderr),
            }
            finished = _pump(proc, sinks, tail, deadline)
        finally:
            _kill_group(proc)  # on timeout, and stragglers (qemu) if vng itself already exited
            guard.release()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        restore_signals()

    total = time.monotonic() - started
    console = console_lines(_read(workdir / "console.log") or "")
    boot_seconds = None
    started_file = workdir / "started"
    if started_file.exists():
        boot_seconds = round(max(0.0, started_file.stat().st_mtime - started_wall), 2)
    if not finished:
        where = ("the command was still running" if boot_seconds is not None
                 else "the guest never reached the command (still booting)")
        raise VmTimeout(
            f"the VM did not finish within {timeout:g} s and was killed; {where}.\n"
            + _console_report(console[-CONSOLE_TAIL_LINES:])
            + ("\nlast output lines:\n" + _indent(tail.lines()[-10:]) if tail.lines() else "")
        )
    status = parse_status(_read(workdir / "status"))
    try:
        exit_code = interpret(status, console, tail.lines(), proc.returncode)
    except VmPanic as exc:
        exc.command_started = boot_seconds is not None
        raise
    return VmResult(
        exit_code=exit_code,
        output=b"".join(out_chunks).decode(errors="replace") if capture else "",
        stderr=b"".join(err_chunks).decode(errors="replace") if capture else "",
        accel=accel,
        boot_seconds=boot_seconds,
        total_seconds=round(total, 2),
        kernel=kernel,
        console=console[-CONSOLE_TAIL_LINES:],
    )


class _LineTail:
    """The last N lines of the guest's combined output, for error reports."""

    def __init__(self, size: int):
        self._lines: deque[str] = deque(maxlen=size)
        self._partial = ""

    def feed(self, data: bytes) -> None:
        text = self._partial + data.decode(errors="replace")
        *complete, self._partial = text.split("\n")
        self._lines.extend(line.rstrip("\r") for line in complete)

    def lines(self) -> list[str]:
        return list(self._lines) + ([self._partial] if self._partial else [])


def _pump(proc: subprocess.Popen, sinks: dict, tail: _LineTail, deadline: float) -> bool:
    """Forward vng's stdout/stderr until both close and vng exits. False on timeout."""
    selector = selectors.DefaultSelector()
    for stream in sinks:
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ)
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(timeout=min(remaining, 1.0)):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks, echo = sinks[key.fileobj]
                tail.feed(data)
                if echo is None:
                    if chunks is not None:  # None: reader went away, drop
                        chunks.append(data)
                    continue
                try:
                    if hasattr(echo, "buffer"):
                        echo.buffer.write(data)
                    else:  # a replaced sys.stdout (e.g. under pytest capture)
                        echo.write(data.decode(errors="replace"))
                    echo.flush()
                except BrokenPipeError:  # e.g. `bpfkit vm run ... | head -1`: keep draining
                    sinks[key.fileobj] = (None, None)
    finally:
        selector.close()
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate_raises():
    """While a VM runs, SIGTERM/SIGHUP raise SystemExit instead of ending Python on
    the spot, so the `finally` that kills qemu still runs (e.g. under timeout(1)).
    Returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the VM's process group, then SIGKILL whatever is left."""
    pgid = proc.pid  # start_new_session: the group id is vng's pid
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end and _group_alive(pgid):
            proc.poll()  # reap vng itself, or its zombie keeps the group "alive"
            time.sleep(0.05)
    if proc.poll() is None:
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None
