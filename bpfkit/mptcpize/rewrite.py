"""Cgroup-scoped TCP→MPTCP rewrite (bpf/mptcpify.bpf.c): attach, detach, status, run
(what is attached now; systemd.py makes it come back at boot and at each unit start).

One global fmod_ret program on update_socket_protocol serves every selected
cgroup; the cgroups are entries of a map, so adding or removing one is a map
update, never a reload. Everything lives pinned under PIN_DIR, so the
rewrite outlives the command that set it up:

    PIN_DIR/selected_cgroups   cgroup id -> (rewrite count, families, #exclusions)
    PIN_DIR/excluded_comms     (cgroup id, executable name) -> 1
    PIN_DIR/link               the attached program (pinned LAST: the commit point)

Crash safety (a kill -9 at any point leaves a complete attachment or nothing):
  * first attach: load, fill the maps, attach, pin the maps, pin the link. Until
    the link pin exists, the link and program live only in this process's fds
    and die with it; map pins without a link pin are leftovers that the next
    attach/detach/status removes ("no link pin" == "not attached").
  * adding a cgroup to a live attachment: exclusions first (only consulted once
    the cgroup is selected), then the one map update that selects the cgroup.
  * detach: the one map delete that unselects the cgroup, then its exclusions;
    after the last cgroup, the link pin, then the map pins.
All of this runs under pins.locked() (the one lock of bpfkit's pinned state), so
no two bpfkit processes interleave and garbage collection never sees another's
half-done work; the pins follow pins.PinDir's life (link pinned last, removed first).
(bpffs does support rename(2), so "pin into a temp dir and rename it" would also
work for the first attach, but not for detach; "link pin last" covers both.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bpfkit import cgroup
from bpfkit.loader import libbpf, pins
from bpfkit.errors import AttachError, BpfkitError, KernelUnsupported, LoadError, UsageError
from bpfkit.paths import PIN_ROOT

PROGRAM = "mptcpify"
PIN_DIR = PIN_ROOT / "mptcpize"
CGROUPS_MAP = "selected_cgroups"
EXCLUDED_MAP = "excluded_comms"
MAP_NAMES = (CGROUPS_MAP, EXCLUDED_MAP)
PINS = pins.PinDir(PIN_DIR, MAP_NAMES)
LINK_PIN = PINS.link_pin

# Keep in sync with bpf/mptcpify.bpf.c.
MAX_CGROUP_DEPTH = 32
COMM_LEN = 16
FAMILY_BITS = {"inet": 1 << 0, "inet6": 1 << 1}
# Checked against the object's BTF when it is opened (libbpf.Layout).
_VALUE = libbpf.Layout("selected_cgroup", "<QIIQ", ("rewrites", "families", "exclusions", "left_tcp"))
_EXCLUSION_KEY = libbpf.Layout("exclusion_key", "<Q16s", ("cgroup_id", "comm"))
LAYOUTS = (_VALUE, _EXCLUSION_KEY)

# Test-only hook: SIGKILL ourselves right after the named step, to prove that
# an interrupted attach/detach leaves a complete attachment or nothing.
KILL_AT_ENV = "BPFKIT_MPTCPIZE_KILL_AT"

FALLBACK_HINT = ("use the LD_PRELOAD fallback instead: `mptcpize run CMD [ARGS]` (Debian package mptcpize); "
                 "it misses statically linked programs and those that bypass libc (e.g. Go)")


def _step(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- input validation

_COMM_RE = re.compile(r"^[A-Za-z0-9._+@:=,][A-Za-z0-9._+@:=,-]*$")


def validate_comm(name: str) -> str:
    """An executable name to exclude: what the kernel keeps as comm (15 bytes)."""
    raw = name.encode()
    if not raw or len(raw) >= COMM_LEN:
        raise UsageError(f"--exclude {name!r}: executable names are 1 to {COMM_LEN - 1} bytes",
                         hint=f"the kernel truncates process names to {COMM_LEN - 1} bytes; give the truncated name"
                              f" ({name[:COMM_LEN - 1]!r})")
    if not _COMM_RE.match(name):
        raise UsageError(f"--exclude {name!r}: only letters, digits and ._+@:=,- are accepted")
    return name


@dataclass(frozen=True)
class Options:
    """What an attachment rewrites: socket families, and executables left alone."""

    families: tuple[str, ...] = ("inet", "inet6")
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, family: str = "all", exclude=()) -> "Options":
        if family == "all":
            families = ("inet", "inet6")
        elif family in FAMILY_BITS:
            families = (family,)
        else:
            raise UsageError(f"--family {family!r}: expected inet, inet6 or all")
        return cls(families, tuple(sorted({validate_comm(c) for c in exclude})))

    @property
    def family_mask(self) -> int:
        return sum(FAMILY_BITS[f] for f in self.families)

    @property
    def family(self) -> str:
        return self.families[0] if len(self.families) == 1 else "all"

    def cli_args(self) -> list[str]:
        args = [] if self.family == "all" else [f"--family={self.family}"]
        return args + [f"--exclude={c}" for c in self.exclude]

    def to_json(self) -> dict:
        return {"families": list(self.families), "exclude": list(self.exclude)}


# --------------------------------------------------------------------------- cgroups

def _cgroup_level(path: Path) -> int:
    return len(path.relative_to(cgroup.cgroup2_root()).parts)


def target_cgroup(path: str | Path) -> Path:
    """A user-given cgroup, checked: exists, cgroup v2, not the root, not too deep."""
    resolved = cgroup.resolve(path)
    level = _cgroup_level(resolved)
    if level == 0:
        raise UsageError(f"{resolved} is the root cgroup: that would rewrite every TCP socket of the machine",
                         hint="select the cgroup of a service or a slice")
    if level > MAX_CGROUP_DEPTH:
        raise UsageError(f"{resolved} is {level} levels deep; the BPF program walks at most {MAX_CGROUP_DEPTH}")
    return resolved


def cgroup_paths(ids) -> dict[int, Path]:
    """cgroup id -> directory, for those of `ids` that still exist."""
    wanted, found = set(ids), {}
    if not wanted:
        return found
    root = cgroup.cgroup2_root()
    for dirpath, _dirs, _files in os.walk(root):
        with contextlib.suppress(OSError):  # removed while walking
            ino = os.stat(dirpath).st_ino
            if ino in wanted:
                found[ino] = Path(dirpath)
                if len(found) == len(wanted):
                    break
    return found


# --------------------------------------------------------------------------- pinned state

@contextlib.contextmanager
def _locked():
    """pins.locked(): no other bpfkit process changes pins meanwhile (released by the
    kernel if we die)."""
    with pins.locked():
        _step("locked")
        yield


@dataclass
class Pinned:
    """The live attachment, reopened from its pins."""

    link: libbpf.Link
    cgroups: libbpf.Map
    excluded: libbpf.Map

    @classmethod
    def open(cls) -> "Pinned | None":
        """None when not attached (no link pin)."""
        if not PINS.committed():
            return None
        link = PINS.open_link()
        try:
            maps = list(PINS.open_maps().values())
        except BpfkitError as exc:
            link.close()
            raise AttachError(f"the mptcpize pins under {PIN_DIR} are inconsistent: {exc}",
                              hint="bpfkit mptcpize detach --all") from None
        return cls(link, *maps)

    def selected(self) -> dict[int, tuple[int, int, int, int]]:
        """cgroup id -> (rewrites, family mask, exclusion count, sockets left TCP because
        MPTCP is disabled in their network namespace)."""
        return {int.from_bytes(k, "little"): _VALUE.unpack(v) for k, v in self.cgroups.items()}

    def exclusions(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for key in self.excluded.keys():
            cg_id, comm = _EXCLUSION_KEY.unpack(key)
            out.setdefault(cg_id, []).append(comm.rstrip(b"\0").decode(errors="replace"))
        return {k: sorted(v) for k, v in out.items()}

    def remove_exclusions(self, cg_id: int) -> None:
        for key in list(self.excluded.keys()):
            if _EXCLUSION_KEY.unpack(key)[0] == cg_id:
                self.excluded.delete(key)

    def close(self) -> None:
        self.link.close()
        self.cgroups.close()
        self.excluded.close()


def _unpin_all() -> None:
    """Remove the attachment: link pin first (detaches now), then map pins."""
    PINS.remove(step=_step)


RUN_CGROUP_PREFIX = "bpfkit-mptcpize-run-"  # + creator pid + "-" + 8 hex digits (cgroup.temporary)
_RUN_CGROUP_RE = re.compile(re.escape(RUN_CGROUP_PREFIX) + r"(\d+)-[0-9a-f]{8}")


def _abandoned_run_cgroups() -> list[Path]:
    """Transient cgroups of `mptcpize run`s killed before they cleaned up (SIGKILL): the creating
    process (its pid is in the name) is gone and nothing runs in them any more. A command that
    still runs keeps its cgroup, and its rewrite, until it ends."""
    found = []
    root = cgroup.cgroup2_root()
    for path in root.glob(RUN_CGROUP_PREFIX + "*"):
        match = _RUN_CGROUP_RE.fullmatch(path.name)
        if not match or path.is_symlink() or not path.is_dir() or Path(f"/proc/{match[1]}").exists():
            continue
        try:
            populated = "populated 0" not in (path / "cgroup.events").read_text()
        except OSError:
            continue
        if not populated:
            found.append(path)
    return found


def _collect_garbage(pinned: Pinned | None, *, stale_cgroups: bool) -> tuple[Pinned | None, list[int]]:
    """Remove what an interrupted attach/detach or a vanished cgroup left.
    Returns the attachment still standing (or None) and the cgroup ids dropped."""
    dropped = []
    for path in _abandoned_run_cgroups():
        cg_id = cgroup.cgroup_id(path)
        with contextlib.suppress(OSError):  # a process may have just entered it
            path.rmdir()
            if pinned is not None and pinned.cgroups.delete(cg_id):
                dropped.append(cg_id)
    if pinned is None:
        PINS.collect_uncommitted()  # map pins without a link pin: never committed
        return None, dropped
    selected = pinned.selected()
    if stale_cgroups:
        alive = cgroup_paths(selected)
        for cg_id in selected:
            if cg_id not in alive:
                pinned.cgroups.delete(cg_id)
                dropped.append(cg_id)
        selected = {k: v for k, v in selected.items() if k in alive}
    for cg_id in pinned.exclusions():
        if cg_id not in selected:  # unselected, or never selected (interrupted attach)
            pinned.remove_exclusions(cg_id)
    if not selected:  # an interrupted last detach: the program rewrites nothing
        pinned.close()
        _unpin_all()
        return None, dropped
    return pinned, dropped


# --------------------------------------------------------------------------- kernel support

def _unsupported(detail: str) -> KernelUnsupported:
    return KernelUnsupported(f"this kernel ({platform.release()}) cannot rewrite sockets to MPTCP "
                             f"(fmod_ret on update_socket_protocol): {detail}",
                             hint=FALLBACK_HINT)


def _check_mptcp_enabled() -> None:
    # A rewritten socket() fails (ENOPROTOOPT / EPROTONOSUPPORT) where MPTCP is
    # off, which would break every TCP client in the cgroup.
    try:
        enabled = Path("/proc/sys/net/mptcp/enabled").read_text().strip()
    except OSError:
        raise _unsupported("no MPTCP support (no /proc/sys/net/mptcp; CONFIG_MPTCP off?)") from None
    if enabled != "1":
        raise UsageError("MPTCP is disabled in this network namespace (net.mptcp.enabled = "
                         f"{enabled}): rewritten sockets would fail to be created",
                         hint="sysctl -w net.mptcp.enabled=1")


def _check_kernel() -> None:
    """Refuse early, without loading anything, what is known not to work."""
    from bpfkit import features

    btf = features.check_btf()
    if btf.status != features.OK:
        raise _unsupported(f"no BTF ({btf.detail})")
    release = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if release < (6, 6):
        raise _unsupported(features.check_fmod_ret().detail)  # it says: < 6.6 has no hook


@contextlib.contextmanager
def _kernel_refusal_explained():
    """A refused load/attach: ask the fmod_ret probe `bpfkit doctor` shows why, so
    the user reads the same reason doctor gives. Other failures pass through."""
    from bpfkit import features

    try:
        yield
    except (LoadError, AttachError) as exc:
        check = features.check_fmod_ret()
        if check.status != features.OK:
            raise _unsupported(check.detail) from exc
        raise


@functools.cache
def _object_path() -> Path:
    """The compiled program, once per process: even a cache hit of
    compile_bpf runs `clang --version` and hashes the kernel BTF, which is
    slow in an emulated VM and pointless more than once."""
    from bpfkit.loader import build

    return build.program_object(PROGRAM)


def _load_program() -> libbpf.BpfObject:
    _check_kernel()
    obj = libbpf.BpfObject.open(_object_path())
    try:
        obj.check_layouts(LAYOUTS)
        with _kernel_refusal_explained():
            obj.load()
    except BaseException:
        obj.close()
        raise
    _step("loaded")
    return obj


# --------------------------------------------------------------------------- attach / detach

@dataclass
class AttachResult:
    cgroup: Path
    cgroup_id: int
    created: bool  # the program was loaded by this call
    already: bool  # the cgroup was attached before (nothing changed)
    program_id: int = 0
    link_id: int = 0


def _select(pinned_maps: tuple[libbpf.Map, libbpf.Map], cg_id: int, options: Options) -> None:
    cgroups_map, excluded_map = pinned_maps
    # Exclusions first: they only count once the cgroup is selected.
    for comm in options.exclude:
        excluded_map.update(_EXCLUSION_KEY.pack(cg_id, comm.encode()), 1)
    _step("exclusions-written")
    cgroups_map.update(cg_id, _VALUE.pack(0, options.family_mask, len(options.exclude), 0), libbpf.BPF_NOEXIST)
    _step("cgroup-selected")


def _options_of(pinned: Pinned, cg_id: int) -> Options:
    _rewrites, mask, _count, _left_tcp = pinned.selected()[cg_id]
    families = tuple(f for f, bit in FAMILY_BITS.items() if mask & bit)
    return Options(families, tuple(pinned.exclusions().get(cg_id, [])))


def _create(cg_id: int, options: Options) -> tuple[int, int]:
    """First attachment: load, fill the maps, attach, pin the maps, pin the
    link (the commit point). Until then everything dies with this process."""
    obj = _load_program()
    link = None
    try:
        _select((obj.map(CGROUPS_MAP), obj.map(EXCLUDED_MAP)), cg_id, options)
        with _kernel_refusal_explained():
            link = obj.program(PROGRAM).attach()
        _step("link-attached")
        info = PINS.commit(link, {name: obj.map(name) for name in MAP_NAMES}, step=_step)
        return info["prog_id"], info["id"]
    finally:
        if link is not None:
            link.close()  # detaches unless pinned
        obj.close()


def attach(path: str | Path, options: Options = Options()) -> AttachResult:
    """Select a cgroup (and its descendants) for the rewrite. Idempotent."""
    cg = target_cgroup(path)
    cg_id = cgroup.cgroup_id(cg)
    _check_mptcp_enabled()
    with _locked():
        pinned, _ = _collect_garbage(Pinned.open(), stale_cgroups=False)
        if pinned is None:
            prog_id, link_id = _create(cg_id, options)
            return AttachResult(cg, cg_id, created=True, already=False, program_id=prog_id, link_id=link_id)
        try:
            info = pinned.link.info()
            if cg_id in pinned.selected():
                current = _options_of(pinned, cg_id)
                if current != options:
                    raise UsageError(f"{cg} is already attached with other options ({_describe(current)})",
                                     hint="detach it first to change them")
                return AttachResult(cg, cg_id, False, True, info["prog_id"], info["id"])
            _select((pinned.cgroups, pinned.excluded), cg_id, options)
            return AttachResult(cg, cg_id, False, False, info["prog_id"], info["id"])
        finally:
            pinned.close()


def _describe(options: Options) -> str:
    text = "families " + "+".join(options.families)
    return text + (f", excluding {', '.join(options.exclude)}" if options.exclude else "")


@dataclass
class DetachResult:
    cgroup_id: int
    was_attached: bool
    removed_program: bool  # that was the last cgroup


def detach(path: str | Path | None = None, *, cgroup_id: int | None = None) -> DetachResult:
    """Unselect a cgroup; after the last one, remove the program and pins."""
    if cgroup_id is None:
        cgroup_id = cgroup.cgroup_id(cgroup.resolve(path))
    with _locked():
        pinned, _ = _collect_garbage(Pinned.open(), stale_cgroups=True)
        if pinned is None:
            return DetachResult(cgroup_id, False, False)
        try:
            was_attached = pinned.cgroups.delete(cgroup_id)
            _step("cgroup-unselected")
            pinned.remove_exclusions(cgroup_id)
            _step("exclusions-removed")
            last = not pinned.selected()
        finally:
            pinned.close()
        if last:
            _unpin_all()
        return DetachResult(cgroup_id, was_attached, last)


def detach_all() -> bool:
    """Remove the program and every pin, whatever state they are in."""
    with _locked():
        return PINS.remove(step=_step)


# --------------------------------------------------------------------------- status

def status() -> dict:
    """What is attached: cgroups (path, id, rewrite count, options), pins, ids."""
    pins = {"dir": str(PIN_DIR), "link": str(LINK_PIN), "maps": {n: str(PIN_DIR / n) for n in MAP_NAMES}}
    result = {"attached": False, "program_id": None, "link_id": None, "pins": pins, "cgroups": [],
              "collected_stale_cgroup_ids": []}
    with _locked():
        pinned, dropped = _collect_garbage(Pinned.open(), stale_cgroups=True)
        result["collected_stale_cgroup_ids"] = dropped
        if pinned is None:
            return result
        try:
            info = pinned.link.info()
            selected = pinned.selected()
            exclusions = pinned.exclusions()
        finally:
            pinned.close()
    paths = cgroup_paths(selected)
    result.update(attached=True, program_id=info["prog_id"], link_id=info["id"])
    for cg_id, (rewrites, mask, _count, left_tcp) in sorted(selected.items()):
        result["cgroups"].append({
            "path": str(paths[cg_id]) if cg_id in paths else None,
            "id": cg_id,
            "rewrites": rewrites,
            "left_tcp": left_tcp,
            "families": [f for f, bit in FAMILY_BITS.items() if mask & bit],
            "exclude": exclusions.get(cg_id, []),
        })
    return result


# --------------------------------------------------------------------------- run one command

def run(command: list[str], options: Options = Options()) -> int:
    """Run CMD in a transient cgroup selected for the rewrite; remove both
    after. Returns CMD's exit status (128+N if killed by signal N)."""
    if not command:
        raise UsageError("no command given (expected: bpfkit mptcpize run -- CMD [ARGS...])")
    with cgroup.temporary(RUN_CGROUP_PREFIX) as cg:
        attach(cg, options)
        try:
            return _run_in(cg, command)
        finally:
            detach(cg)


def _run_in(cg: Path, command: list[str]) -> int:
    procs_file = str(cg / "cgroup.procs")

    def join_cgroup() -> None:  # in the child, before exec: its first socket is already in scope
        fd = os.open(procs_file, os.O_WRONLY)
        try:
            os.write(fd, b"0\n")
        finally:
            os.close(fd)

    try:
        proc = subprocess.Popen(command, preexec_fn=join_cgroup)
    except FileNotFoundError:
        print(f"bpfkit: {command[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"bpfkit: {command[0]}: permission denied", file=sys.stderr)
        return 126
    # Ctrl-C reaches the child through the terminal; we stay alive to clean up.
    # SIGTERM/SIGHUP sent to us are passed on.
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code
