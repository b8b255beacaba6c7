"""Building and reading schedulers written elsewhere (issue 13), on the host kernel:
system headers, a user's include dir and cflags, and the ops map of a prebuilt object
read from its BTF (the host kernel cannot register them; the VM tier does)."""

import subprocess
import sys
from pathlib import Path

import pytest

from bpfkit.sched import lifecycle
from bpfkit.loader import build
from bpfkit.kernel import kbuild

pytestmark = pytest.mark.host

PROJECT = Path(__file__).resolve().parents[2]
COMPAT = PROJECT / "tests" / "bpf" / "compat"
INCLUDE = COMPAT / "include"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bpfkit", *args], capture_output=True, text=True, cwd=PROJECT)


def test_export_style_header_with_limits_h_builds_with_a_user_include_dir():
    built = build.compile_bpf(COMPAT / "first.bpf.c", include_dirs=[INCLUDE])
    assert built.path.stat().st_size > 0
    again = build.compile_bpf(COMPAT / "first.bpf.c", include_dirs=[INCLUDE], cflags=["-DCOMPAT_UNUSED=1"])
    assert again.path != built.path  # cflags are part of the cache key


def test_without_the_include_dir_the_header_is_missing():
    r = cli("build", str(COMPAT / "first.bpf.c"))
    assert r.returncode == 1 and "mptcp_bpf.h" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_include_and_cflags(tmp_path):
    r = cli("build", "-I", str(INCLUDE), "--cflags=-DCOMPAT_X=1 -Wno-unused-macros", str(COMPAT / "first.bpf.c"))
    assert r.returncode == 0, r.stderr
    r = cli("build", "-I", str(INCLUDE), "--cflags=-o /tmp/x", str(COMPAT / "first.bpf.c"))
    assert r.returncode == 2 and "is not accepted" in r.stderr, r.stderr
    r = cli("build", "-I", str(tmp_path / "nope"), str(COMPAT / "first.bpf.c"))
    assert r.returncode == 2 and "no such directory" in r.stderr, r.stderr


def test_a_header_edit_in_the_user_dir_rebuilds(tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    for h in INCLUDE.iterdir():
        (inc / h.name).write_text(h.read_text())
    first = build.compile_bpf(COMPAT / "first.bpf.c", include_dirs=[inc]).path
    (inc / "mptcp_bpf.h").write_text((inc / "mptcp_bpf.h").read_text() + "\n/* edited */\n")
    assert build.compile_bpf(COMPAT / "first.bpf.c", include_dirs=[inc]).path != first


def test_prebuilt_object_ops_map_is_read_from_btf():
    obj = build.compile_bpf(COMPAT / "first.bpf.c", include_dirs=[INCLUDE]).path
    maps = lifecycle.ops_maps_of_object(obj)
    assert maps == [lifecycle.OpsMap(var="first", name="compat_first", link=True, redundant=False)]
    vmlinux = kbuild.default_kernel().vmlinux  # the flags member exists in the series' BTF only
    redundant = build.compile_bpf(PROJECT / "bpf" / "sched" / "redundant.bpf.c", kernel=vmlinux).path
    (m,) = lifecycle.ops_maps_of_object(redundant)
    assert m.name == "redundant" and m.redundant and m.link
