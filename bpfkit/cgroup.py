"""cgroup v2: finding the mount, validating user paths, temporary cgroups.

BPF cgroup programs attach only to cgroup v2 directories. Hosts in hybrid
mode (this one) mount v2 at /sys/fs/cgroup/unified and v1 controllers beside
it, so a path under /sys/fs/cgroup is not necessarily v2: we check the
filesystem type of the mount that holds the path.
"""

import contextlib
import os
import uuid
from pathlib import Path

from bpfkit import fs
from bpfkit.errors import UsageError


def _mounts() -> list[tuple[Path, str]]:
    """(mount point, fs type) from /proc/self/mountinfo, innermost last."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")  # mountinfo octal-escapes spaces
            out.append((Path(point), fields[sep + 1]))
    return out


# Where systemd mounts cgroup v2 (unified mode, then hybrid mode): a statfs
# each finds it without reading mountinfo, which is long on a busy host.
_USUAL_CGROUP2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def cgroup2_root() -> Path:
    """Mount point of the cgroup v2 hierarchy."""
    for point in _USUAL_CGROUP2_ROOTS:
        if fs.magic(point) == fs.CGROUP2_SUPER_MAGIC and _is_mount_point(point):
            return point
    for point, fstype in _mounts():
        if fstype == "cgroup2":
            return point
    raise UsageError("no cgroup v2 hierarchy is mounted", hint="mount -t cgroup2 none /sys/fs/cgroup")


def _is_mount_point(path: Path) -> bool:
    """`path` is the root of its filesystem (not a directory inside one)."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except OSError:
        return False


def _fstype_of(path: Path) -> str | None:
    best, best_type = None, None
    for point, fstype in _mounts():
        if path == point or point in path.parents:
            if best is None or len(point.parts) >= len(best.parts):
                best, best_type = point, fstype
    return best_type


def resolve(path: str | Path) -> Path:
    """A user-given cgroup: absolute (/sys/fs/cgroup/...) or relative to the v2
    root (e.g. `system.slice/nginx.service`). Must exist and be cgroup v2."""
    raw = Path(path)
    candidate = raw if raw.is_absolute() else cgroup2_root() / raw
    candidate = Path(os.path.normpath(candidate))
    if not candidate.is_dir():
        raise UsageError(f"cgroup {path}: no such directory ({candidate})")
    if fs.magic(candidate) == fs.CGROUP2_SUPER_MAGIC:
        return candidate
    fstype = _fstype_of(candidate)  # only to say what it is instead
    if fstype != "cgroup2":
        raise UsageError(f"{candidate} is not a cgroup v2 directory (it is on {fstype or 'an unknown fs'})",
                         hint=f"BPF attaches only to cgroup v2; the v2 hierarchy is at {cgroup2_root()}")
    return candidate


def cgroup_id(path: str | Path) -> int:
    """The kernel's cgroup id (what bpf_get_current_cgroup_id() returns): the
    inode number of the cgroup directory on cgroup2fs."""
    return os.stat(path).st_ino


def add_pid(cgroup: Path, pid: int) -> None:
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


def remove(cgroup: Path) -> None:
    """Remove a cgroup (and its children), moving any processes to the parent."""
    if not cgroup.exists():
        return
    for child in [p for p in cgroup.iterdir() if p.is_dir()]:
        remove(child)
    procs = (cgroup / "cgroup.procs").read_text().split()
    for pid in procs:
        with contextlib.suppress(OSError):  # the process may have exited
            add_pid(cgroup.parent, int(pid))
    cgroup.rmdir()


@contextlib.contextmanager
def created_path(path: str | Path):
    """A cgroup given as for resolve(), created with its missing parents if absent (as systemd
    creates a unit's, which it then adopts: it tolerates an existing directory). If the block
    fails, the directories this made are removed again: nothing is left of a failed restore."""
    from bpfkit.errors import UsageError

    root = cgroup2_root()
    raw = Path(path)
    target = Path(os.path.normpath(raw if raw.is_absolute() else root / raw))
    if root not in target.parents:
        raise UsageError(f"cgroup {path}: not below the cgroup v2 root {root}")
    missing = []
    current = target
    while not current.exists():
        missing.append(current)
        current = current.parent
    made: list[Path] = []
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir()
                made.append(directory)
            except FileExistsError:
                pass
            except OSError as exc:  # at boot this is one skipped entry of `mptcpize restore`, not a traceback
                raise UsageError(f"cgroup {path}: cannot create {directory}: {exc.strerror}") from None
        yield target
    except BaseException:
        for directory in reversed(made):
            with contextlib.suppress(OSError):  # a process moved in meanwhile keeps it: not ours to kill
                directory.rmdir()
        raise


@contextlib.contextmanager
def temporary(prefix: str = "bpfkit-", parent: Path | None = None):
    """A fresh cgroup, removed afterwards even if the body fails."""
    base = parent or cgroup2_root()
    path = base / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        remove(path)
