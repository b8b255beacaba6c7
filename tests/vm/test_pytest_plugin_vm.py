"""bpfkit's pytest plugin fixtures that need the bpfkit VM kernel, as another
project's separate pytest run uses them: `mptcpize_cgroup` (TCP sockets of the
cgroup really become MPTCP) and `bpf_scheduler` (via the `bpfkit sched` CLI:
the scheduler is registered during the test, gone after) — both leave nothing
behind, whether the test passes or fails."""

from pathlib import Path

import pytest

from bpfkit import cgroup, mptcpize
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
        {tail}
"""


@pytest.mark.parametrize("outcome", ["passes", "fails"])
def test_mptcpize_cgroup_fixture(tmp_path, outcome):
    tail = "assert False, 'deliberate failure'" if outcome == "fails" else "pass"
    proc = run_inner(tmp_path, MPTCPIZE_TEST.replace("{tail}", tail))
    assert ("1 passed" if outcome == "passes" else "1 failed") in proc.stdout, proc.stdout + proc.stderr
    if outcome == "fails":
        assert "deliberate failure" in proc.stdout
    assert not any(p.name.startswith("bpfkit-pytest-mptcpize-") for p in cgroup.cgroup2_root().iterdir())
    assert mptcpize.status()["attached"] is False


def available_schedulers() -> set[str]:
    return set(Path("/proc/sys/net/mptcp/available_schedulers").read_text().split())


SCHED_TEST = """
    from pathlib import Path

    def test_scheduler_registered(bpf_scheduler):
        name = bpf_scheduler({source!r})
        assert name in Path("/proc/sys/net/mptcp/available_schedulers").read_text().split()
        print("REGISTERED", name)
        {tail}
"""


@pytest.mark.parametrize("outcome", ["passes", "fails"])
def test_bpf_scheduler_fixture(tmp_path, outcome):
    before = available_schedulers()
    tail = "assert False, 'deliberate failure'" if outcome == "fails" else "pass"
    source = str(BPF_DIR / "sched" / "minrtt.bpf.c")
    proc = run_inner(tmp_path, SCHED_TEST.replace("{source!r}", repr(source)).replace("{tail}", tail))
    assert ("1 passed" if outcome == "passes" else "1 failed") in proc.stdout, proc.stdout + proc.stderr
    registered = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("REGISTERED ")]
    assert len(registered) == 1 and registered[0] not in before, proc.stdout
    assert available_schedulers() == before  # unloaded after the test
