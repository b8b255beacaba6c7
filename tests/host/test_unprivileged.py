"""bpfkit runs as root: nothing it keeps (pins, locks, records, written files) may be
blocked, changed or redirected by another local user (issue 15, item 5 and 6)."""

import contextlib
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from bpfkit import fs
from bpfkit.subflow import sockops
from bpfkit.loader import libbpf
from bpfkit.errors import UnsafePath

pytestmark = pytest.mark.host

PROJECT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")


def as_nobody(code: str) -> subprocess.CompletedProcess:
    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    # the system python: the venv's interpreter lives under /root, which nobody cannot enter
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, preexec_fn=drop, cwd="/")


def test_private_dir_refuses_what_another_user_could_control(tmp_path):
    fresh = fs.private_dir(tmp_path / "fresh")
    assert (os.stat(fresh).st_mode & 0o777, os.stat(fresh).st_uid) == (0o700, 0)
    open_dir = tmp_path / "open"
    os.mkdir(open_dir, 0o755)
    with pytest.raises(UnsafePath, match="mode 0755"):
        fs.private_dir(open_dir)
    theirs = tmp_path / "theirs"
    os.mkdir(theirs, 0o700)
    os.chown(theirs, NOBODY.pw_uid, -1)
    with pytest.raises(UnsafePath, match=f"belongs to uid {NOBODY.pw_uid}") as err:
        fs.private_dir(theirs)
    assert f"chown root:root {theirs}" in err.value.hint
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(UnsafePath, match="symlink"):
        fs.private_dir(link)


def test_atomic_write_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "results.json"
    target.symlink_to(victim)
    fs.atomic_write(target, "new", 0o600)
    assert victim.read_text() == "keep"
    assert not target.is_symlink() and target.read_text() == "new"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_another_user_can_neither_open_nor_lock_bpfkit_state():
    with sockops._locked():  # the one lock (pins.locked) and the subflow dir, as an apply takes them
        st = os.stat(libbpf.PIN_ROOT)
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, 0)
        for directory in (libbpf.PIN_ROOT, sockops.PIN_DIR):
            r = as_nobody(f"import os, fcntl; fd = os.open({str(directory)!r}, os.O_RDONLY); "
                          f"fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
            assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
        r = as_nobody(f"open({str(libbpf.PIN_ROOT / 'planted')!r}, 'w')")
        assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr


def test_a_pin_dir_another_user_made_is_refused_with_the_fix():
    libbpf.ensure_bpffs()
    fs.private_dir(libbpf.PIN_ROOT)
    assert not sockops.PIN_DIR.exists(), "a subflow policy is still attached from another test"
    os.mkdir(sockops.PIN_DIR, 0o700)
    os.chown(sockops.PIN_DIR, NOBODY.pw_uid, -1)
    try:
        r = subprocess.run([sys.executable, "-m", "bpfkit", "subflow", "clear", "--all"],
                           capture_output=True, text=True, cwd=PROJECT)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert f"belongs to uid {NOBODY.pw_uid}" in r.stderr and "chown root:root" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(sockops.PIN_DIR)
