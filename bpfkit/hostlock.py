"""Machine-wide exclusive locks: one file per lock in the bpfkit cache, held with
flock(2), so the kernel releases it when the holder dies, however it dies.

The holder writes who it is into the file; a process that has to wait reads
that and says whom it is waiting for. Used for what two processes on this
2-core class of machine must not do at once: kernel builds, VM boots."""

import contextlib
import fcntl
import os
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
