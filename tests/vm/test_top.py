"""`bpfkit top` inside the bpfkit VM kernel (netem, BPF-scheduler-capable
kernel) on a live two-path lab transfer: both subflows with their addresses,
the rate on the carrying path, srtt at least the emulated base RTT.

Rates are low because under TCG emulation the guest's CPU is the bottleneck."""

import pytest

from bpfkit.lab.topology import detect_shaping
from tests.top_lab import check_top_sees_transfer, start_transfer, two_paths

pytestmark = pytest.mark.vm


def test_top_sees_live_lab_transfer_in_vm(lab_topology):
    assert detect_shaping() == "netem"
    topo = lab_topology(two_paths("2mbit", "10ms"))
    # long enough for the slow (emulated) `bpfkit top` runs; killed at teardown
    start_transfer(topo, seconds=300)
    client, _server = check_top_sees_transfer(topo, rate_bps=2e6, min_srtt_us=19_000)
    # the carrying subflow cannot beat its shaped rate (20% margin for timing)
    assert max(sf["send_bps"] for sf in client["subflows"]) < 2e6 * 1.2
