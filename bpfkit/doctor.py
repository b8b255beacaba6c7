"""`bpfkit doctor`: what this kernel and machine can do, found by trying: the
kernel's features (bpfkit/features.py, the checks every pillar calls) and the
tools and VM support of this machine.
"""

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from bpfkit.loader import build
from bpfkit.features import (MISSING, OK, WARN, Check, check_bpffs, check_btf, check_cgroup2, check_fmod_ret,
                             check_libbpf, check_mptcp, check_sockops, check_struct_ops, check_subflow_opts)

__all__ = ["OK", "MISSING", "WARN", "Check", "Report", "run"]


@dataclass
class Report:
    kernel: str
    in_vm: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def features(self) -> dict[str, bool]:
        return {c.name: c.status == OK for c in self.checks}

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "in_vm": self.in_vm, "features": self.features,
                "checks": [asdict(c) for c in self.checks]}


def check_tool(name: str, command: list[str], blocks: str, package: str) -> Check:
    path = shutil.which(command[0])
    if not path:
        return Check(name, MISSING, f"`{command[0]}` not found", blocks, f"apt-get install {package}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20)
        version = (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        version = "version unknown"
    return Check(name, OK, f"{version} ({path})")


def check_vm() -> list[Check]:
    checks = []
    # The venv's bin dir may not be on PATH when bpfkit runs as .venv/bin/bpfkit.
    vng = shutil.which("vng") or shutil.which("vng", path=os.path.dirname(sys.executable))
    if vng:
        checks.append(check_tool("virtme-ng", [vng, "--version"], "", ""))
    else:
        checks.append(Check("virtme-ng", MISSING, "`vng` not on PATH", "the VM tier (bpfkit vm run)",
                            "pip install virtme-ng (the project venv has it: .venv/bin)"))
    checks.append(check_tool("qemu", ["qemu-system-x86_64", "--version"], "the VM tier", "qemu-system-x86"))
    checks.append(check_kvm())
    return checks


def check_kvm() -> Check:
    """KVM as last found by the VM runner's real boot probe (not re-probed here)."""
    from bpfkit.kernel import vm

    status = vm.cached_accel()
    if not os.path.exists("/dev/kvm"):
        return Check("kvm", WARN, "/dev/kvm missing: VMs run under TCG (slower)", "nothing (TCG fallback)")
    if status is None:
        return Check("kvm", WARN, "/dev/kvm present; not probed yet (the first `bpfkit vm run` tries it)",
                     "nothing (TCG fallback)")
    if status == "kvm":
        return Check("kvm", OK, "a guest boots under KVM")
    return Check("kvm", WARN, "/dev/kvm present but guests fail under it here; VMs run under TCG (slower)",
                 "nothing (TCG fallback)")


def run() -> Report:
    report = Report(kernel=platform.release(), in_vm=os.environ.get("BPFKIT_GUEST") == "1")
    report.checks.append(Check("kernel", OK, f"Linux {platform.release()}" + (" (bpfkit VM)" if report.in_vm else "")))
    report.checks.append(check_btf())
    report.checks.append(check_bpffs())
    report.checks.append(check_cgroup2())
    report.checks.append(check_libbpf())
    shipped = build.objects_shipped()
    report.checks.append(Check("bpf_objects", OK, build.object_origin()))
    # A wheel brings the ops pillars' objects compiled: clang and bpftool are then only for
    # schedulers and other programs built from source.
    blocks = "building schedulers from source" if shipped else "building BPF objects"
    for check in (check_tool("clang", ["clang", "--version"], blocks, "clang"),
                  check_tool("bpftool", ["bpftool", "version"], "generating vmlinux.h", "bpftool")):
        report.checks.append(Check(check.name, WARN, check.detail, blocks, check.hint)
                             if shipped and check.status == MISSING else check)
    report.checks.extend(check_mptcp())
    needed = ("btf", "libbpf") if shipped else ("btf", "libbpf", "clang", "bpftool")
    can_build = all(report.features.get(n) for n in needed)
    if can_build and os.geteuid() == 0:
        report.checks.append(check_fmod_ret())
        report.checks.append(check_sockops())
        report.checks.append(check_subflow_opts())
    else:
        why = "needs root" if os.geteuid() != 0 else f"needs {', '.join(needed)}"
        report.checks.append(Check("fmod_ret_update_socket_protocol", MISSING, f"not probed ({why})",
                                   "mptcpize (cgroup-scoped TCP→MPTCP rewrite)"))
        report.checks.append(Check("sockops", MISSING, f"not probed ({why})", "per-subflow socket options"))
    report.checks.extend(check_struct_ops())
    if not report.in_vm:
        report.checks.extend(check_vm())
    return report
