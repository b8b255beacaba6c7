"""The foundation inside the bpfkit VM kernel (Linux 6.12 + bpfkit's series)."""

import json
import os
import platform
import socket
import subprocess
import sys

import pytest

from bpfkit.loader import build, libbpf

pytestmark = pytest.mark.vm

IPPROTO_MPTCP = 262


def _doctor() -> dict:
    out = subprocess.run([sys.executable, "-m", "bpfkit", "doctor", "--json"], capture_output=True, text=True,
                         check=True, timeout=900)
    return json.loads(out.stdout)


def test_guest_runs_the_built_612_kernel():
    assert platform.release().startswith("6.12."), platform.release()


def test_doctor_reports_the_vm_kernel():
    report = _doctor()
    assert report["in_vm"] is True
    assert report["kernel"] == platform.release()
    features = report["features"]
    for name in ("btf", "cgroup2", "libbpf", "mptcp", "fmod_ret_update_socket_protocol", "sockops", "struct_ops"):
        assert features[name], f"{name}: {[c for c in report['checks'] if c['name'] == name]}"
    # What doctor says about BPF schedulers must match the kernel's BTF.
    dump = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"], capture_output=True,
                          text=True, check=True).stdout
    assert features["struct_ops_mptcp_sched_ops"] == ("'bpf_struct_ops_mptcp_sched_ops'" in dump)
    # bpfkit's own VM kernel (vm/config LOCALVERSION) always carries the scheduler series; a kernel under
    # test elsewhere (virtme-docker) may not, and then only the consistency above holds
    if platform.release().endswith(("-bpfkit", "-bpfkit-debug")):
        assert features["struct_ops_mptcp_sched_ops"], [c for c in report["checks"] if "sched" in c["name"]]


def _protocol(family=socket.AF_INET, type_=socket.SOCK_STREAM) -> int:
    with socket.socket(family, type_) as s:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)


def test_fmod_ret_rewrites_tcp_to_mptcp_for_the_target_process(test_bpf, no_leftover_bpf):
    path = build.compile_bpf(test_bpf("fmod_ret_pid")).path
    assert _protocol() == socket.IPPROTO_TCP
    with libbpf.open_object(path, rodata={"target_tgid": os.getpid()}) as obj:
        with obj.program("rewrite_for_pid").attach():
            assert _protocol() == IPPROTO_MPTCP
            assert _protocol(socket.AF_INET6) == IPPROTO_MPTCP
            # socket() hands the hook `type` before masking off these flags.
            assert _protocol(type_=socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) == IPPROTO_MPTCP
            assert _protocol(type_=socket.SOCK_DGRAM) == socket.IPPROTO_UDP
            other = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                                    "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"],
                                   capture_output=True, text=True, check=True)
            assert int(other.stdout) == socket.IPPROTO_TCP
    assert _protocol() == socket.IPPROTO_TCP
