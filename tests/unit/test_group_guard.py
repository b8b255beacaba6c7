"""hostlock.GroupGuard: a process group bpfkit starts (a VM, a kernel build's make) dies with
bpfkit, even on SIGKILL, and the lock protecting it stays held until it is gone."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.unit

# Stands in for bpfkit: holds a lock, starts a group of its own session (two sleeps, as make
# and a sub-make), guards it, prints the group id, then waits to be killed.
HOLDER = textwrap.dedent("""
    import fcntl, os, subprocess, sys, time
    from bpfkit import hostlock
    lock = open(sys.argv[1], "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    group = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"], start_new_session=True)
    guard = hostlock.GroupGuard(group.pid, lock.fileno(), float(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(group.pid, flush=True)
    if len(sys.argv) > 3:  # a normal end: the holder ends the group and releases the guard
        os.killpg(group.pid, 9); group.wait(); guard.release(); sys.exit(0)
    time.sleep(600)
""")


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process in the group: a killed group leader stays a zombie until
    its parent, the holder, reaps it."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            with open(f"/proc/{proc}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _lock_free(path) -> bool:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _wait(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _start(tmp_path, *args):
    lock = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), *args], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    pgid = int(holder.stdout.readline())
    return holder, pgid, lock


def test_sigkill_of_the_holder_kills_the_group_and_the_lock_outlives_it(tmp_path):
    holder, pgid, lock = _start(tmp_path)
    try:
        assert _group_alive(pgid) and not _lock_free(lock)
        os.killpg(holder.pid, signal.SIGKILL)  # the holder's whole group; the guard is in its own session
        holder.wait()
        assert _wait(lambda: not _group_alive(pgid), 10), "the group outlived its holder"
        assert _wait(lambda: _lock_free(lock), 10)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_deadline_kills_a_group_its_holder_forgot(tmp_path):
    holder, pgid, lock = _start(tmp_path, f"{time.monotonic() + 1:.3f}")
    try:
        assert _wait(lambda: not _group_alive(pgid), 15), "the group outlived its deadline"
        assert holder.poll() is None  # the holder itself is not the guard's business
    finally:
        holder.kill()
        holder.wait()
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_release_after_a_normal_end_leaves_no_guard(tmp_path):
    holder, pgid, lock = _start(tmp_path, "-1", "end")
    assert holder.wait(timeout=30) == 0
    assert not _group_alive(pgid) and _wait(lambda: _lock_free(lock), 5)
