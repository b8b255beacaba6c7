"""Test tiers.

unit: no root; host: root on this kernel; vm: inside the bpfkit VM kernel
(`bpfkit vm run -- .venv/bin/pytest -m vm`); distro: inside a VM booted on a distribution's
stock kernel (`make test-distro`). Outside its tier a test is
skipped, except with BPFKIT_REQUIRE_ALL=1 (set by CI and `make test`), where
any skip is a failure: a tier that silently skips proves nothing.
"""

import contextlib
import os
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
TEST_BPF_DIR = TESTS_DIR / "bpf"
REQUIRE_ALL = os.environ.get("BPFKIT_REQUIRE_ALL") == "1"
IN_VM = os.environ.get("BPFKIT_GUEST") == "1"


TIERS = ("unit", "host", "vm", "distro")


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {untiered}")


def pytest_runtest_setup(item):
    if item.get_closest_marker("vm") and not IN_VM:
        pytest.skip("vm tier: runs inside the bpfkit VM (bpfkit vm run -- .venv/bin/pytest -m vm)")
    if item.get_closest_marker("distro") and not IN_VM:
        pytest.skip("distro tier: runs inside a VM on a distribution's kernel (make test-distro)")
    if any(item.get_closest_marker(t) for t in ("host", "vm", "distro")) and os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped while BPFKIT_REQUIRE_ALL=1: {reason}"


@contextlib.contextmanager
def leftover_bpf_check(grace_s: float = 5.0, poll_s: float = 0.1):
    """Fail if the block leaves BPF programs or links loaded. struct_ops maps
    and their programs are freed after an RCU grace period, so the kernel gets
    `grace_s` before anything is called a leak."""
    from bpfkit.loader import libbpf

    progs_before = set(libbpf.loaded_program_ids())
    links_before = set(libbpf.loaded_link_ids())
    yield
    deadline = time.monotonic() + grace_s
    while True:
        left_progs = set(libbpf.loaded_program_ids()) - progs_before
        left_links = set(libbpf.loaded_link_ids()) - links_before
        if not (left_progs or left_links) or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    assert not left_progs, f"programs left loaded: {[libbpf.program_info_by_id(i) for i in left_progs]}"
    assert not left_links, f"links left: {sorted(left_links)}"


@pytest.fixture
def no_leftover_bpf():
    """Fail the test if it leaves BPF programs or links loaded."""
    with leftover_bpf_check():
        yield


@pytest.fixture
def test_bpf():
    """Path of a test BPF source under tests/bpf/."""
    return lambda name: TEST_BPF_DIR / f"{name}.bpf.c"
