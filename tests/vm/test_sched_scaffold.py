"""`bpfkit sched new` output, as generated, loads in the bpfkit VM kernel and
carries MPTCP connections.

Registration goes through `bpfkit sched load FILE` / `bpfkit sched unload NAME`
(the CLI a user runs) when that command exists, else straight through
bpfkit.loader.libbpf. The names match tests/unit/test_sched_scaffold.py, whose compile
tests prebuild these exact sources for the VM kernel."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from bpfkit.sched import scaffold
from bpfkit.loader import build, libbpf
from tests.vm.test_sched_kernel import MiB, Pair, Transfer, available, no_leftover_bpf  # noqa: F401 (fixture)

pytestmark = pytest.mark.vm

NAMES = {"minimal": "scaf_minimal", "minrtt": "scaf_minrtt", "redundant": "scaf_redundant",
         "blest": "scaf_blest", "ecf": "scaf_ecf"}
HAVE_SCHED_CLI = importlib.util.find_spec("bpfkit.commands.sched") is not None


def _bpfkit(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfkit", *argv], capture_output=True, text=True, timeout=600)


@contextmanager
def loaded(source: Path, name: str):
    """The scheduler in `source` registered as `name` for the duration."""
    if HAVE_SCHED_CLI:
        result = _bpfkit("sched", "load", str(source))
        assert result.returncode == 0, f"bpfkit sched load failed:\n{result.stdout}{result.stderr}"
        try:
            yield
        finally:
            result = _bpfkit("sched", "unload", name)
            assert result.returncode == 0, f"bpfkit sched unload failed:\n{result.stdout}{result.stderr}"
        return
    with libbpf.open_object(build.compile_bpf(source).path) as obj:
        link = obj.map(name).attach_struct_ops()
        try:
            yield
        finally:
            link.detach()


@pytest.fixture
def pair():
    with Pair() as p:
        yield p


def test_minimal_scaffold_loads_and_carries_a_connection(pair, tmp_path, no_leftover_bpf):
    name = NAMES["minimal"]
    source = scaffold.scaffold(name, "minimal", tmp_path, existing=set())
    with loaded(source, name):
        assert name in available(pair)
        pair.set_scheduler(name)
        try:
            transfer = Transfer(pair, size=4 * MiB).run()
        finally:
            pair.set_scheduler("default")  # `sched unload` refuses a scheduler a netns still selects
    assert name not in available(pair)
    transfer.assert_intact()
    by_id = transfer.bytes_by_subflow()
    assert set(by_id) == {1, 2}, by_id
    assert sum(by_id.values()) >= 4 * MiB, by_id


@pytest.mark.parametrize("origin", scaffold.REFERENCE_ORIGINS)
def test_derived_scaffold_loads_and_carries_a_connection(pair, tmp_path, no_leftover_bpf, origin):
    name = NAMES[origin]
    source = scaffold.scaffold(name, origin, tmp_path, existing=set())
    with loaded(source, name):
        assert name in available(pair)
        pair.set_scheduler(name)
        try:
            transfer = Transfer(pair, size=2 * MiB, port=14200).run()
        finally:
            pair.set_scheduler("default")
    assert name not in available(pair)
    transfer.assert_intact()
