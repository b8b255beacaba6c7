"""Machine-wide exclusive locks: one file per lock in the bpfkit cache, held with
flock(2), so the kernel releases it when the holder dies, however it dies.

The holder writes who it is into the file; a process that has to wait reads
that and says whom it is waiting for. Used for what two processes on this
2-core class of machine must not do at once: kernel builds, VM boots."""

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Callable

from bpfkit.paths import cache_dir


@contextlib.contextmanager
def held(name: str, holder: str, waiting: Callable[[str], str]):
    """Hold the lock `name` (a file in the cache) for the block, waiting as long
    as another process holds it. `holder` describes this process for others;
    `waiting(other)` is the line printed (stderr) when we have to wait. Yields the
    lock's file descriptor: a process that inherits it holds the lock with us."""
    path = cache_dir() / name
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            print(waiting(lock.read().strip() or "unknown"), file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(holder + "\n")
        lock.flush()
        try:
            yield lock.fileno()
        finally:
            # no stale description for the next waiter to report
            lock.seek(0)
            lock.truncate()
            fcntl.flock(lock, fcntl.LOCK_UN)


def this_process(what: str) -> str:
    return f"pid {os.getpid()}: {what}"


# A process group bpfkit starts in its own session (a VM, a kernel build's make) must not outlive
# bpfkit, not even a SIGKILL of bpfkit or of bpfkit's whole process group (a CI job's kill), and the
# lock that protects it must stay held while it runs. A parent-death signal cannot do this: it reaches
# one process, and qemu is virtme-run's child, `make` spawns sub-makes. So a guard process of its own
# session waits on a pipe from bpfkit: "done" means bpfkit ended the group itself; end-of-file
# (bpfkit died: the kernel closed the pipe) or the deadline means it did not, and the guard kills the
# group. It inherits the lock's descriptor, so the lock stays held until the guard exits.
_GUARD_CODE = """
import os, select, signal, sys, time
pgid, deadline = int(sys.argv[1]), float(sys.argv[2])
ready, _, _ = select.select([0], [], [], None if deadline < 0 else max(0.0, deadline - time.monotonic()))
if ready and os.read(0, 8) == b"done":
    sys.exit(0)
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        break
    time.sleep(0.1)
"""


class GroupGuard:
    """Kill process group `pgid` if this process dies (or at `deadline`, a time.monotonic() value:
    CLOCK_MONOTONIC is one clock for every process), holding `lock_fd` meanwhile. Call release()
    once the group is gone."""

    def __init__(self, pgid: int, lock_fd: int | None, deadline: float | None = None):
        read_end, self._pipe = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_CODE, str(pgid), f"{-1 if deadline is None else deadline:.3f}"],
                stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True,
                pass_fds=() if lock_fd is None else (lock_fd,))
        except BaseException:
            os.close(self._pipe)
            raise
        finally:
            os.close(read_end)

    def release(self) -> None:
        try:
            os.write(self._pipe, b"done")
        except OSError:  # the guard is gone already (killed by someone): nothing to tell it
            pass
        finally:
            os.close(self._pipe)
        self._proc.wait()
