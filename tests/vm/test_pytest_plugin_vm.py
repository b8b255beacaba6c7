"""bpfkit's pytest plugin fixtures that need the bpfkit VM kernel, as another
project's separate pytest run uses them: `mptcpize_cgroup` (TCP sockets of the
cgroup really become MPTCP) and `bpf_scheduler` (via the `bpfkit sched` CLI:
the scheduler is registered during the test, gone after) — both leave nothing
behind, whether the test passes or fails. One inner pytest run holds a passing and
a failing test: each inner run costs ~25 s of pytest start-up under TCG."""

from pathlib import Path

import pytest

from bpfkit import cgroup
from bpfkit.mptcpize import rewrite
from bpfkit.paths import BPF_DIR
from tests.plugin_inner import run_inner

pytestmark = pytest.mark.vm

MPTCPIZE_TEST = """
    import socket, sys

    PROTO = "import socket; s = socket.socket(); print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"

    def test_sockets_become_mptcp(mptcpize_cgroup):
        inside = mptcpize_cgroup.run([sys.executable, "-c", PROTO], timeout=120)
        assert inside.stdout.strip() == "262", inside
        outside = socket.socket()
        assert outside.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 6

    def test_fails_with_the_cgroup_attached(mptcpize_cgroup):
        inside = mptcpize_cgroup.run([sys.executable, "-c", PROTO], timeout=120)
        assert inside.stdout.strip() == "262", inside
        assert False, "deliberate failure"
"""


def test_mptcpize_cgroup_fixture(tmp_path):
    proc = run_inner(tmp_path, MPTCPIZE_TEST)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "FAILED test_inner.py::test_fails_with_the_cgroup_attached" in proc.stdout, proc.stdout
    assert "deliberate failure" in proc.stdout
    assert not any(p.name.startswith("bpfkit-pytest-mptcpize-") for p in cgroup.cgroup2_root().iterdir())
    assert rewrite.status()["attached"] is False


def available_schedulers() -> set[str]:
    return set(Path("/proc/sys/net/mptcp/available_schedulers").read_text().split())


SCHED_TEST = """
    from pathlib import Path

    def test_scheduler_registered(bpf_scheduler):
        name = bpf_scheduler({source!r})
        assert name in Path("/proc/sys/net/mptcp/available_schedulers").read_text().split()
        print("REGISTERED", name)

    def test_fails_with_the_scheduler_registered(bpf_scheduler):
        name = bpf_scheduler({source!r})
        assert name in Path("/proc/sys/net/mptcp/available_schedulers").read_text().split()
        print("REGISTERED", name)
        assert False, "deliberate failure"
"""


def test_bpf_scheduler_fixture(tmp_path):
    before = available_schedulers()
    source = str(BPF_DIR / "sched" / "minrtt.bpf.c")
    proc = run_inner(tmp_path, SCHED_TEST.replace("{source!r}", repr(source)))
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout
    registered = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("REGISTERED ")]
    assert len(registered) == 2 and not set(registered) & before, proc.stdout
    assert available_schedulers() == before  # unloaded after the test
