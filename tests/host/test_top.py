"""`bpfkit top` on the host kernel: a live two-path lab transfer is seen with
both subflows, their addresses, and the rate on the path that carries it."""

import sys

import pytest

from bpfkit.lab.topology import detect_shaping
from tests.top_lab import check_top_sees_transfer, start_transfer, top_samples, two_paths

pytestmark = pytest.mark.host

RATE = "20mbit"


def test_top_sees_two_subflows_and_per_path_rates(lab_topology):
    delay = "10ms" if detect_shaping() == "netem" else "0ms"
    topo = lab_topology(two_paths(RATE, delay))
    start_transfer(topo, seconds=40)
    check_top_sees_transfer(topo, rate_bps=20e6, min_srtt_us=19_000 if delay == "10ms" else 1)


def test_top_in_an_empty_netns_reports_no_connections(lab_topology):
    topo = lab_topology(two_paths(RATE, "0ms"))
    [sample] = top_samples(topo.router_ns, 1, 0.1)
    assert sample["connections"] == [] and sample["netns"] == topo.router_ns


def test_top_rejects_bad_arguments():
    import subprocess

    for args in (["--interval", "0"], ["--count", "0"], ["--netns", "no-such-netns-bpfkit"], ["--interval", "nan"]):
        proc = subprocess.run([sys.executable, "-m", "bpfkit", "top", "--json", "--count", "1", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("bpfkit: error:") and not proc.stdout, (args, proc)
