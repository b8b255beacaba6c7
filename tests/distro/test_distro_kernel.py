"""The ops pillars on the kernels ops teams run: Debian's stock images (apt), booted by
`make test-distro` with `bpfkit vm run --kernel /boot/vmlinuz-...` (vm/distro-kernel).

BPFKIT_DISTRO names the kernel the Makefile booted; EXPECTED says what bpfkit must find on it,
so each test asserts one known outcome and fails on any other. On Debian's 6.12 the mptcpize and
subflow VM tests run as well (tests/vm/, by path); here: what doctor reports, and that what the
kernel cannot do is refused with one error and nothing left attached.
"""

import os
import subprocess
import sys

import pytest

from bpfkit import cgroup
from bpfkit.loader import libbpf
from bpfkit.paths import PIN_ROOT

pytestmark = pytest.mark.distro

# Debian 12's stock kernels. 6.12: the fmod_ret hook (update_socket_protocol, Linux 6.6) and cgroup
# sockops, no BPF MPTCP scheduler (mainline has none). 6.1: no hook, and cgroup sockops without the
# bpf_rdonly_cast kfunc (Linux 6.2) the subflow program reads the MPTCP subflow context with.
EXPECTED = {
    "debian-6.12": {"btf": True, "fmod_ret_update_socket_protocol": True, "sockops": True, "subflow_opts": True,
                    "struct_ops": True, "struct_ops_mptcp_sched_ops": False},
    "debian-6.1": {"btf": True, "fmod_ret_update_socket_protocol": False, "sockops": True, "subflow_opts": False,
                   "struct_ops": True, "struct_ops_mptcp_sched_ops": False},
}
DISTRO = os.environ.get("BPFKIT_DISTRO", "")
BPFKIT = [sys.executable, "-m", "bpfkit"]


@pytest.fixture(scope="module")
def expected() -> dict:
    if DISTRO not in EXPECTED:
        pytest.fail(f"BPFKIT_DISTRO={DISTRO!r}: expected one of {sorted(EXPECTED)} (set by make test-distro)")
    return EXPECTED[DISTRO]


def bpfkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BPFKIT, *args], capture_output=True, text=True, timeout=600)


def bpfkit_state() -> tuple[set[int], set[int], list[str]]:
    pins = sorted(str(p.relative_to(PIN_ROOT)) for p in PIN_ROOT.rglob("*")) if PIN_ROOT.exists() else []
    return set(libbpf.loaded_link_ids()), set(libbpf.loaded_program_ids()), pins


def assert_one_clean_error(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode not in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.lower()
    assert all(p.lower() in message for p in phrases), proc.stderr


def test_doctor_reports_what_this_kernel_can_do(expected):
    proc = bpfkit("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    features = json.loads(proc.stdout)["features"]
    assert {name: features.get(name) for name in expected} == expected


def test_mptcpize_attach_works_or_is_refused_with_nothing_attached(expected):
    before = bpfkit_state()
    with cgroup.temporary("bpfkit-distro-") as cg:
        proc = bpfkit("mptcpize", "attach", "--cgroup", str(cg))
        try:
            if expected["fmod_ret_update_socket_protocol"]:
                assert proc.returncode == 0, proc.stderr
                status = bpfkit("mptcpize", "status")
                assert str(cg) in status.stdout, status.stdout
            else:
                assert_one_clean_error(proc, "6.6")
                assert bpfkit_state() == before
        finally:
            if proc.returncode == 0:
                assert bpfkit("mptcpize", "detach", "--cgroup", str(cg)).returncode == 0
    assert bpfkit_state()[0] == before[0]


def test_sched_load_is_refused_with_nothing_loaded(expected):
    assert not expected["struct_ops_mptcp_sched_ops"]
    before = bpfkit_state()
    proc = bpfkit("sched", "load", "minrtt")
    assert_one_clean_error(proc, "scheduler")
    assert bpfkit_state() == before


def test_subflow_apply_works_or_is_refused_with_nothing_attached(expected, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\n[rule.match]\nrole = "join"\n[rule.set]\nmark = 3\n')
    before = bpfkit_state()
    with cgroup.temporary("bpfkit-distro-") as cg:
        proc = bpfkit("subflow", "apply", str(policy), "--cgroup", str(cg))
        try:
            if expected["subflow_opts"]:
                assert proc.returncode == 0, proc.stderr
                assert libbpf.cgroup_program_ids(cg, "sock_ops")
            else:
                assert_one_clean_error(proc, "bpf_rdonly_cast")
                assert bpfkit_state() == before
        finally:
            if proc.returncode == 0:
                assert bpfkit("subflow", "clear", "--cgroup", str(cg)).returncode == 0
    assert bpfkit_state()[0] == before[0]
