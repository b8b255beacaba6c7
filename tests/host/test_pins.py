"""bpfkit.loader.pins on the host kernel: a PinDir's commit pins the link last, removal
detaches through the link pin, what a killed commit leaves is garbage the next
command removes, and the one lock really excludes another process."""

import contextlib
import os
import subprocess
import sys

import pytest

from bpfkit import cgroup
from bpfkit.loader import build, libbpf, pins

pytestmark = pytest.mark.host


@pytest.fixture
def pin_dir():
    directory = pins.PinDir(libbpf.PIN_ROOT / f"test-pins-{os.getpid()}" / "one", ("op_counts",))
    try:
        yield directory
    finally:
        with contextlib.suppress(Exception):
            directory.remove()
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.path.parent.rmdir()


def _loaded(test_bpf):
    return libbpf.open_object(build.compile_bpf(test_bpf("sockops_counter")).path, rodata={"watch_port": 1})


def test_commit_then_remove_leaves_nothing(test_bpf, pin_dir, no_leftover_bpf):
    with cgroup.temporary() as cg:
        with _loaded(test_bpf) as obj:
            link = obj.program("count_ops").attach_cgroup(cg)
            info = pin_dir.commit(link, {"op_counts": obj.map("op_counts")})
            link.close()
        # object and link handle gone: the pins keep the attachment
        assert pin_dir.committed() and info["cgroup_id"] == cgroup.cgroup_id(cg)
        assert libbpf.cgroup_program_ids(cg, "sock_ops") == [info["prog_id"]]
        assert oct(os.stat(pin_dir.path).st_mode & 0o777) == "0o700"
        reopened = pin_dir.open_maps()
        assert set(reopened) == {"op_counts"}
        reopened["op_counts"].close()
        assert pin_dir.remove() is True
        assert libbpf.cgroup_program_ids(cg, "sock_ops") == []
        assert not pin_dir.exists() and pin_dir.remove() is False


def test_a_commit_that_fails_before_its_link_pin_unpins_its_maps(test_bpf, pin_dir, no_leftover_bpf):
    with cgroup.temporary() as cg, _loaded(test_bpf) as obj:
        link = obj.program("count_ops").attach_cgroup(cg)
        try:
            steps = []

            def fail_after_maps(step: str) -> None:
                steps.append(step)
                if step == "pinned-op_counts":
                    raise RuntimeError("killed here")

            with pytest.raises(RuntimeError):
                pin_dir.commit(link, {"op_counts": obj.map("op_counts")}, step=fail_after_maps)
            assert steps == ["pinned-op_counts"] and not pin_dir.exists()
        finally:
            link.detach()


def test_map_pins_without_a_link_pin_are_garbage(test_bpf, pin_dir, no_leftover_bpf):
    with _loaded(test_bpf) as obj:
        obj.map("op_counts").pin(pin_dir.path / "op_counts")  # a commit killed before its link pin
    assert pin_dir.exists() and not pin_dir.committed()
    assert pin_dir.collect_uncommitted() is True
    assert not pin_dir.exists() and pin_dir.collect_uncommitted() is False


def test_the_one_lock_excludes_another_process():
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    with pins.locked():
        held = subprocess.run([sys.executable, "-c", probe, str(libbpf.PIN_ROOT)], capture_output=True, text=True)
        assert held.returncode != 0 and "BlockingIOError" in held.stderr, held.stderr
    free = subprocess.run([sys.executable, "-c", probe, str(libbpf.PIN_ROOT)], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr


def test_a_pin_dir_outside_the_pin_root_or_with_other_maps_is_a_bug(tmp_path):
    with pytest.raises(ValueError):
        pins.PinDir(tmp_path / "x").commit(None, {})
    with pytest.raises(ValueError, match="expected"):
        pins.PinDir(libbpf.PIN_ROOT / "x", ("a",)).commit(None, {"b": None})
    assert not (libbpf.PIN_ROOT / "x").exists()
