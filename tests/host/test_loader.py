"""The loader against the host kernel: real loads, attaches, pins."""

import os
import stat
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bpfkit import cgroup
from bpfkit.loader import build, libbpf
from bpfkit.errors import LoadError, VerifierError

pytestmark = pytest.mark.host

BPF_SOCK_OPS_TCP_CONNECT_CB = 3
BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB = 4


def _connect_from(cg: Path, port: int) -> None:
    """Open one TCP connection to 127.0.0.1:port from a process inside cg."""
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {port})); s.close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   preexec_fn=lambda: cgroup.add_pid(cg, os.getpid()))


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv, srv.getsockname()[1]


def _count(obj_map, op: int) -> int:
    return int.from_bytes(obj_map.lookup(op), "little")


def test_sockops_runs_for_connections_in_the_cgroup(test_bpf, no_leftover_bpf):
    srv, port = _listener()
    path = build.compile_bpf(test_bpf("sockops_counter")).path
    with srv, cgroup.temporary() as cg, libbpf.open_object(path, rodata={"watch_port": port}) as obj:
        with obj.program("count_ops").attach_cgroup(cg):
            assert libbpf.cgroup_program_ids(cg, "sock_ops") == [obj.program("count_ops").id]
            _connect_from(cg, port)
            counts = obj.map("op_counts")
            assert _count(counts, BPF_SOCK_OPS_TCP_CONNECT_CB) == 1
            assert _count(counts, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) == 1
        # Link closed: detached, and connections are no longer seen.
        assert libbpf.cgroup_program_ids(cg, "sock_ops") == []
        _connect_from(cg, port)
        assert _count(obj.map("op_counts"), BPF_SOCK_OPS_TCP_CONNECT_CB) == 1


def test_run_time_statistics_count_only_while_enabled(test_bpf, no_leftover_bpf):
    srv, port = _listener()
    path = build.compile_bpf(test_bpf("sockops_counter")).path
    enabled = Path("/proc/sys/kernel/bpf_stats_enabled")
    if enabled.read_text().strip() != "0":
        pytest.fail("kernel.bpf_stats_enabled is already 1: another tool counts, this test cannot tell")
    with srv, cgroup.temporary() as cg, libbpf.open_object(path, rodata={"watch_port": port}) as obj:
        prog = obj.program("count_ops")
        with prog.attach_cgroup(cg):
            _connect_from(cg, port)
            assert libbpf.prog_info(prog.fd)["run_cnt"] == 0  # not counted: stats are off
            with libbpf.run_time_stats():  # on while its descriptor is open (the sysctl does not show it)
                _connect_from(cg, port)
            info = libbpf.prog_info(prog.fd)
            ops = sum(_count(obj.map("op_counts"), op) for op in range(16))
            # the runs of the second connection only, each timed
            assert 0 < info["run_cnt"] < ops and info["run_time_ns"] > 0, (info, ops)
            _connect_from(cg, port)
            assert libbpf.prog_info(prog.fd)["run_cnt"] == info["run_cnt"]


def test_connections_outside_the_cgroup_are_not_seen(test_bpf, no_leftover_bpf):
    srv, port = _listener()
    path = build.compile_bpf(test_bpf("sockops_counter")).path
    with srv, cgroup.temporary() as cg, cgroup.temporary() as other, \
            libbpf.open_object(path, rodata={"watch_port": port}) as obj:
        with obj.program("count_ops").attach_cgroup(cg):
            _connect_from(other, port)
            assert _count(obj.map("op_counts"), BPF_SOCK_OPS_TCP_CONNECT_CB) == 0


def test_pinned_link_and_map_outlive_the_loader(test_bpf, no_leftover_bpf):
    srv, port = _listener()
    path = build.compile_bpf(test_bpf("sockops_counter")).path
    pin_dir = libbpf.PIN_ROOT / f"test-{os.getpid()}"
    with srv, cgroup.temporary() as cg:
        try:
            with libbpf.open_object(path, rodata={"watch_port": port}) as obj:
                link = obj.program("count_ops").attach_cgroup(cg)
                link.pin(pin_dir / "link")
                obj.map("op_counts").pin(pin_dir / "op_counts")
                link.close()
            assert stat.S_IMODE(os.stat(pin_dir).st_mode) == 0o700  # made by the pin: nobody else's to open
            # Object and link handle are gone; the pins keep everything.
            assert len(libbpf.cgroup_program_ids(cg, "sock_ops")) == 1
            _connect_from(cg, port)
            counts = libbpf.Map.from_pin(pin_dir / "op_counts")
            assert _count(counts, BPF_SOCK_OPS_TCP_CONNECT_CB) == 1
            counts.close()
            pinned = libbpf.Link.from_pin(pin_dir / "link")
            assert pinned.info()["type"] == "cgroup"
            assert pinned.info()["cgroup_id"] == cgroup.cgroup_id(cg)
            pinned.detach()
            assert libbpf.cgroup_program_ids(cg, "sock_ops") == []
            assert not (pin_dir / "link").exists()
        finally:
            for leftover in pin_dir.glob("*") if pin_dir.exists() else []:
                leftover.unlink()
            if pin_dir.exists():
                pin_dir.rmdir()
            if pin_dir.exists():
                pin_dir.rmdir()


def test_map_operations(test_bpf, no_leftover_bpf):
    path = build.compile_bpf(test_bpf("rejected")).path
    obj = libbpf.BpfObject.open(path)
    obj.program("rejected").set_autoload(False)
    with obj.load():
        values = obj.map("values")
        assert values.lookup(7) is None
        values.update(7, (41).to_bytes(8, "little"))
        values.update(9, (1).to_bytes(8, "little"))
        assert int.from_bytes(values.lookup(7), "little") == 41
        assert sorted(int.from_bytes(k, "little") for k in values.keys()) == [7, 9]
        assert values.delete(7) and not values.delete(7)
        assert dict(values.items()) == {(9).to_bytes(4, "little"): (1).to_bytes(8, "little")}
        with pytest.raises(ValueError, match="key is 8 bytes"):
            values.lookup(b"\0" * 8)


def test_rodata_must_exist_and_fit(test_bpf):
    path = build.compile_bpf(test_bpf("sockops_counter")).path
    with libbpf.BpfObject.open(path) as obj:
        with pytest.raises(LoadError, match="no read-only variable 'nope'.*watch_port"):
            obj.set_rodata("nope", 1)
        with pytest.raises(LoadError, match="variable holds 4"):
            obj.set_rodata("watch_port", b"\0" * 8)


def test_verifier_rejection_is_readable_and_leaves_nothing(test_bpf, no_leftover_bpf):
    path = build.compile_bpf(test_bpf("rejected")).path
    with pytest.raises(VerifierError) as err:
        libbpf.open_object(path)
    text = str(err.value)
    assert "the verifier rejected program 'rejected'" in text
    assert "invalid mem access 'map_value_or_null'" in text
    assert "at rejected.bpf.c:21: *value += 1;" in text


def _available_cc() -> list[str]:
    return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()


def _socket_with_cc(name: str) -> str:
    with socket.socket() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()


@pytest.mark.parametrize("section, name", [(".struct_ops", "bpfkit_ca_map"), (".struct_ops.link", "bpfkit_ca_lnk")])
def test_struct_ops_registration(section, name, test_bpf, no_leftover_bpf):
    path = build.compile_bpf(test_bpf("tcp_ca"), defines={"STRUCT_OPS_SECTION": f'"{section}"',
                                                          "CA_NAME": f'"{name}"'}).path
    assert name not in _available_cc()
    with libbpf.open_object(path) as obj:
        registration = obj.map("ca").attach_struct_ops()
        try:
            assert name in _available_cc()
            assert _socket_with_cc(name) == name
        finally:
            registration.detach()
        assert name not in _available_cc()


def test_plain_struct_ops_stays_registered_after_close(test_bpf, no_leftover_bpf):
    """`.struct_ops` maps live on in the kernel while registered (what lets a
    CLI register and exit); unregistering later goes through a pin."""
    name = "bpfkit_ca_pin"
    path = build.compile_bpf(test_bpf("tcp_ca"), defines={"STRUCT_OPS_SECTION": '".struct_ops"',
                                                          "CA_NAME": f'"{name}"'}).path
    pin = libbpf.PIN_ROOT / f"test-{os.getpid()}-ca"
    try:
        with libbpf.open_object(path) as obj:
            registration = obj.map("ca").attach_struct_ops()
            obj.map("ca").pin(pin)
            registration.close()
        assert name in _available_cc()
        libbpf.StructOpsRegistration.from_pin(pin).detach()
        assert name not in _available_cc() and not pin.exists()
    finally:
        if name in _available_cc():
            subprocess.run(["bpftool", "struct_ops", "unregister", "name", "ca"], check=False)
        if pin.exists():
            pin.unlink()


def test_fmod_ret_on_this_kernel_either_works_or_says_why(test_bpf, no_leftover_bpf):
    path = build.compile_bpf(test_bpf("fmod_ret_pid")).path
    try:
        obj = libbpf.open_object(path, rodata={"target_tgid": os.getpid()})
    except LoadError as exc:
        # This host (6.18 with tracing programs locked down) refuses them.
        assert "Operation not permitted" in str(exc) and "fmod_ret" in (exc.hint or "")
        return
    with obj, obj.program("rewrite_for_pid").attach():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 262


@pytest.mark.parametrize("module, program", [("mptcpize.rewrite", "mptcpify"), ("subflow.policy", "subflow_opts")])
def test_python_map_layouts_match_the_objects_btf(module, program):
    """Every Layout a pillar packs map entries with agrees with the C struct in the
    compiled object's BTF (checked again at every open; here without loading)."""
    import importlib

    layouts = importlib.import_module(f"bpfkit.{module}").LAYOUTS
    with libbpf.BpfObject.open(build.compile_bpf(build.bpf_source(program)).path) as obj:
        obj.check_layouts(layouts)
        assert {layout.c_name for layout in layouts} <= {name for name in (
            "selected_cgroup", "exclusion_key", "subflow_prefix", "subflow_rule", "subflow_policy",
            "subflow_rule_stats", "subflow_totals")}


@pytest.mark.parametrize("layout, complaint", [
    (libbpf.Layout("selected_cgroup", "<QQIQ", ("rewrites", "families", "exclusions", "left_tcp")),
     "size 24, Python packs 28; member families at offset 8, Python expects offset 8"),
    (libbpf.Layout("selected_cgroup", "<QIIQ", ("rewrites", "exclusions", "families", "left_tcp")),
     "member exclusions at offset 12, Python expects offset 8"),
    (libbpf.Layout("exclusion_key", "<Q16s", ("cgroup_id", "name")), "member name missing"),
    (libbpf.Layout("no_such_struct", "<I", ("x",)), "has no BTF for struct no_such_struct"),
])
def test_a_layout_that_disagrees_with_btf_is_refused_at_open(layout, complaint, no_leftover_bpf):
    path = build.compile_bpf(build.bpf_source("mptcpify")).path
    with pytest.raises(LoadError) as exc:
        libbpf.open_object(path, layouts=(layout,))
    assert complaint.split(";")[0] in str(exc.value), str(exc.value)
