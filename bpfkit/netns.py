"""Network namespaces by their `ip netns` name: the one name rule, entering one,
running a function in one, and its per-namespace sysctls.

Entering is setns(2) on the calling thread only (the rest of the process stays
where it is), so a socket opened or a /proc/sys/net file opened inside belongs to
that namespace: /proc/sys/net resolves to the network namespace of the thread
that opens it. That is cheaper than a process per query (`ip netns exec`), which
matters in an emulated guest (4.5 s for `python3 -c pass` under TCG).

No BPF and no MPTCP here: the lab, `sched`, `top`, `sock_diag` and the tests all
use this one module."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from bpfkit.errors import BpfkitError, UsageError

NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts a namespace
SYSCTL_DIR = Path("/proc/sys")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def names() -> list[str]:
    """Every name `ip netns list` would show."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def check_name(name: str) -> str:
    """A name from `ip netns list`: one path component, printable."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or not name.isprintable():
        raise UsageError(f"invalid network namespace name {name!r} (a name from `ip netns list`)")
    return name


def path(name: str) -> Path:
    """/run/netns/<name>, checked: a valid name, present, and not a symlink."""
    target = NETNS_DIR / check_name(name)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        raise UsageError(f"no network namespace {name!r} (looked for {target})",
                         hint=f"known: {', '.join(names()) or 'none'}") from None
    if stat.S_ISLNK(mode):
        raise UsageError(f"{target} is a symlink, not a network namespace bpfkit will enter")
    return target


def _open(name: str) -> int:
    target = path(name)
    try:
        return os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except PermissionError:
        raise UsageError(f"cannot open {target}: permission denied", hint="needs root") from None


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BpfkitError(f"entering network namespace {what}: {os.strerror(err)}",
                          hint="needs root (CAP_SYS_ADMIN)" if err == errno.EPERM else None)


def enter(name: str) -> None:
    """Move the calling thread into namespace `name` for good (a helper thread's
    whole job, e.g. a test's server thread)."""
    fd = _open(name)
    try:
        _setns(fd, name)
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread in namespace `name`, then come back;
    None means stay where we are."""
    if name is None:
        yield
        return
    target_fd = _open(name)
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target_fd, name)
        try:
            yield
        finally:
            _setns(home_fd, "of origin")
    finally:
        os.close(target_fd)
        os.close(home_fd)


def call_in(name: str | None, fn: Callable[[], T]) -> T:
    """fn() run in namespace `name` (None: the current one) from a helper thread,
    so the calling thread never moves; its exception is raised here."""
    if name is None:
        return fn()
    path(name)  # a clear error before any thread starts
    result: dict = {}

    def run() -> None:
        try:
            enter(name)
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def is_current(name: str) -> bool:
    """Whether namespace `name` is the one this process runs in."""
    try:
        a, b = os.stat("/proc/self/ns/net"), os.stat(NETNS_DIR / name)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sysctl_file(key: str) -> Path:
    """/proc/sys file of a dotted sysctl key ("net.ipv4.ip_forward")."""
    parts = key.split(".")
    if len(parts) < 2 or any(p in ("", "..") or "/" in p or "\0" in p for p in parts):
        raise UsageError(f"invalid sysctl key {key!r}")
    return SYSCTL_DIR.joinpath(*parts)


def sysctl_read(name: str | None, key: str) -> str:
    """A sysctl's value in namespace `name` (None: the current one)."""
    def read() -> str:
        try:
            return sysctl_file(key).read_text().strip()
        except FileNotFoundError:
            raise BpfkitError(f"no sysctl {key} in network namespace {name or '(current)'}") from None
    return call_in(name, read)


def sysctl_write(name: str | None, settings: dict[str, str], ignore_missing: bool = False) -> None:
    """Set sysctls in namespace `name` (net.* sysctls are per namespace); with
    ignore_missing, keys this kernel lacks (IPv6 ones without IPv6) are skipped."""
    def write() -> None:
        for key, value in settings.items():
            target = sysctl_file(key)
            if not target.exists():
                if ignore_missing:
                    continue
                raise BpfkitError(f"no sysctl {key} in network namespace {name or '(current)'}")
            try:
                target.write_text(str(value))
            except OSError as exc:
                raise BpfkitError(f"setting {key}={value} in network namespace {name or '(current)'}: "
                                  f"{exc.strerror}") from None
    call_in(name, write)
