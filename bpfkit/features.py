"""What the running kernel can do for each pillar, found by trying: the one place
bpfkit asks.  `bpfkit doctor` shows these checks; `mptcpize`, `subflow` and
`sched` refuse with the very same words before they load anything.

Each check reports a status, what it found, and which bpfkit feature it
blocks when missing. Probes that need the kernel's word (fmod_ret, sockops)
really load a program; nothing stays loaded or attached afterwards.
"""

import platform
from dataclasses import dataclass
from pathlib import Path

from bpfkit.errors import BpfkitError

OK, MISSING, WARN = "ok", "missing", "warn"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    blocks: str = ""  # what does not work while this is missing
    hint: str = ""



def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_btf() -> Check:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
    return Check("btf", MISSING, "/sys/kernel/btf/vmlinux missing",
                 "building BPF objects for this kernel (CO-RE), struct_ops, fmod_ret",
                 "build the kernel with CONFIG_DEBUG_INFO_BTF=y (bpfkit vm kernel does)")


def check_bpffs() -> Check:
    from bpfkit import fs

    if fs.magic("/sys/fs/bpf") == fs.BPF_FS_MAGIC:  # the test ensure_bpffs() makes
        return Check("bpffs", OK, "mounted at /sys/fs/bpf")
    return Check("bpffs", WARN, "not mounted at /sys/fs/bpf; bpfkit mounts it when it first pins something",
                 "nothing (mounted on demand)")


def check_cgroup2() -> Check:
    from bpfkit import cgroup

    try:
        return Check("cgroup2", OK, f"mounted at {cgroup.cgroup2_root()}")
    except BpfkitError:
        return Check("cgroup2", MISSING, "no cgroup v2 hierarchy mounted",
                     "mptcpize scoping, subflow policies (cgroup sockops)", "mount -t cgroup2 none /sys/fs/cgroup")


def _probe_object():
    from bpfkit.loader import build

    return build.program_object("probes")


def _load_only(obj_path: Path, program: str):
    from bpfkit.loader import libbpf

    obj = libbpf.BpfObject.open(obj_path)
    try:
        for name, prog in obj.programs.items():
            prog.set_autoload(name == program)
        obj.load()
        return obj
    except BaseException:
        obj.close()
        raise


def check_fmod_ret() -> Check:
    blocks = "mptcpize (cgroup-scoped TCP→MPTCP rewrite)"
    hint = "fallback: the LD_PRELOAD wrapper `mptcpize run CMD` (Debian package mptcpize)"
    release = platform.release()
    major_minor = tuple(int(x) for x in release.split(".")[:2] if x.isdigit())
    if major_minor < (6, 6):
        return Check("fmod_ret_update_socket_protocol", MISSING, f"kernel {release} < 6.6 has no hook", blocks, hint)
    try:
        obj = _load_only(_probe_object(), "probe_fmod_ret")
    except BpfkitError as exc:
        first = str(exc).splitlines()[0]
        return Check("fmod_ret_update_socket_protocol", MISSING, f"load refused: {first}", blocks, hint)
    try:
        link = obj.program("probe_fmod_ret").attach()
        link.close()
    except BpfkitError as exc:
        return Check("fmod_ret_update_socket_protocol", MISSING, f"attach refused: {str(exc).splitlines()[0]}",
                     blocks, hint)
    finally:
        obj.close()
    return Check("fmod_ret_update_socket_protocol", OK, "fmod_ret program loads and attaches")


def check_sockops() -> Check:
    from bpfkit import cgroup

    blocks = "per-subflow socket options (bpfkit subflow)"
    try:
        obj = _load_only(_probe_object(), "probe_sockops")
    except BpfkitError as exc:
        return Check("sockops", MISSING, f"load refused: {str(exc).splitlines()[0]}", blocks)
    try:
        with cgroup.temporary("bpfkit-doctor-") as cg:
            obj.program("probe_sockops").attach_cgroup(cg).close()
    except BpfkitError as exc:
        return Check("sockops", MISSING, f"cgroup attach refused: {str(exc).splitlines()[0]}", blocks)
    finally:
        obj.close()
    return Check("sockops", OK, "sockops program loads and attaches to a cgroup v2")


def check_subflow_opts() -> Check:
    """What bpf/subflow_opts.bpf.c needs beyond cgroup sockops: the bpf_rdonly_cast kfunc
    (Linux 6.2) to read a subflow's MPTCP context. Debian's 6.1 lacks it; its 6.12 has it."""
    from bpfkit.loader import libbpf

    blocks = "per-subflow socket options (bpfkit subflow)"
    try:
        with libbpf.KernelBtf() as btf:
            has_cast = btf.has_func("bpf_rdonly_cast")
    except BpfkitError as exc:
        return Check("subflow_opts", MISSING, str(exc).splitlines()[0], blocks)
    if not has_cast:
        return Check("subflow_opts", MISSING, f"kernel {platform.release()} has no bpf_rdonly_cast kfunc (Linux 6.2) "
                     "to read a subflow's MPTCP context", blocks, "a 6.12 kernel, e.g. Debian's "
                     "linux-image-6.12.*+deb12-amd64")
    return Check("subflow_opts", OK, "bpf_rdonly_cast reads a subflow's MPTCP context")


def check_struct_ops() -> list[Check]:
    """struct_ops at all (tcp_congestion_ops), then BPF MPTCP schedulers."""
    from bpfkit.loader import libbpf

    try:
        with libbpf.KernelBtf() as btf:
            tcp_ca = btf.has_struct("bpf_struct_ops_tcp_congestion_ops")
    except BpfkitError:
        return [check_sched_struct_ops()]  # says why BTF could not be read
    return [Check("struct_ops", OK if tcp_ca else MISSING,
                  "tcp_congestion_ops is exposed to BPF" if tcp_ca else "no BPF struct_ops in this kernel",
                  "" if tcp_ca else "BPF congestion controls and schedulers",
                  "" if tcp_ca else "6.12 needs CONFIG_MODULES=y for any struct_ops"),
            check_sched_struct_ops()]


def check_sched_struct_ops() -> Check:
    """Whether BPF MPTCP schedulers can register (`sched load`'s precondition)."""
    from bpfkit.loader import libbpf

    name, blocks = "struct_ops_mptcp_sched_ops", "BPF MPTCP schedulers (bpfkit sched)"
    try:
        with libbpf.KernelBtf() as btf:
            sched = btf.has_struct("bpf_struct_ops_mptcp_sched_ops")
            iterator = btf.has_func("bpf_iter_mptcp_subflow_new")
            in_kernel = btf.has_struct("mptcp_sched_ops")
    except BpfkitError as exc:
        return Check(name, MISSING, str(exc), blocks)
    if sched:
        return Check(name, OK, "mptcp_sched_ops is a BPF struct_ops" + (" with the subflow iterator" if iterator else ""))
    detail = ("the kernel has in-kernel mptcp_sched_ops but does not expose them to BPF (mainline has no "
              "BPF scheduler interface, up to 6.18 at least)" if in_kernel else "no MPTCP scheduler framework in this kernel")
    return Check(name, MISSING, detail, blocks, "use the bpfkit VM kernel: `bpfkit vm run -- bpfkit sched ...`")


def check_mptcp() -> list[Check]:
    enabled = _read("/proc/sys/net/mptcp/enabled")
    if enabled is None:
        return [Check("mptcp", MISSING, "no net.mptcp sysctls (CONFIG_MPTCP off?)", "everything MPTCP",
                      "CONFIG_MPTCP=y")]
    checks = [Check("mptcp", OK if enabled == "1" else MISSING,
                    "net.mptcp.enabled = 1" if enabled == "1" else f"net.mptcp.enabled = {enabled}",
                    "" if enabled == "1" else "MPTCP sockets in this netns",
                    "" if enabled == "1" else "sysctl -w net.mptcp.enabled=1")]
    available = _read("/proc/sys/net/mptcp/available_schedulers")
    current = _read("/proc/sys/net/mptcp/scheduler")
    if available is not None:
        checks.append(Check("mptcp_schedulers", OK, f"available: {available}; selected: {current}"))
    return checks


def check_libbpf() -> Check:
    from bpfkit.loader import libbpf

    try:
        return Check("libbpf", OK, libbpf.dist().describe())
    except BpfkitError as exc:
        return Check("libbpf", MISSING, str(exc).splitlines()[0], "loading anything", exc.hint or "")
