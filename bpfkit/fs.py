"""Files and filesystems as root sees them: which filesystem a path is on (statfs(2)'s
f_type: one syscall, where parsing /proc/self/mountinfo costs milliseconds, tens of them
in a TCG guest, on every attach), and directories, writes and locks no other local user
can redirect or hold."""

import contextlib
import ctypes
import os
import stat
from pathlib import Path

CGROUP2_SUPER_MAGIC = 0x63677270
BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)
# struct statfs on Linux starts with f_type (__fsword_t, a long); 120 bytes on
# 64-bit, the buffer is generous.
_STATFS_SIZE = 256


def magic(path: str | os.PathLike) -> int | None:
    """f_type of the filesystem holding `path`, None if it cannot be stat'ed."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


# --------------------------------------------------------------------------- root-safe files
# bpfkit runs as root. What it writes must not be redirectable by a local user (a symlink
# planted at a predictable temporary name), and what it locks or keeps state in must not be
# openable by one (flock works on a read-only descriptor: whoever can open a lock can hold it).


def private_dir(path: str | os.PathLike) -> Path:
    """A directory only this user (root) can enter: created 0700 if absent; refused if it is
    a symlink, not a directory, owned by someone else, or open to group/others."""
    from bpfkit.errors import UnsafePath

    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise UnsafePath(f"{path.parent} does not exist") from None
    st = os.lstat(path)
    fix = (f"if nothing of yours is in it, remove it (rm -r {path}); otherwise: "
           f"chown root:root {path} && chmod 0700 {path}")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory bpfkit made (a symlink or another file is there)", hint=fix)
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}: another user could block or change bpfkit's state",
                         hint=fix)
    if st.st_mode & 0o077:
        raise UnsafePath(f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: other users could open bpfkit's locks "
                         f"and state there", hint=fix)
    return path


def output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """A directory results go to, created with its parents if missing; one UsageError
    (naming the option) when it cannot be one: a file is there, or it is not writable."""
    from bpfkit.errors import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot be used as a directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: not writable")
    return path


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> None:
    """Write `path` whole or not at all: a temporary file created exclusively (O_EXCL,
    random name) in the same directory, then renamed over `path`. rename(2) replaces a
    symlink at `path` itself; it never writes through it."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def lock_file(path: str | os.PathLike) -> int:
    """Open (creating 0600) a lock file without following a symlink; returns the fd."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
