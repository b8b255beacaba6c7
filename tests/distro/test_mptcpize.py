"""mptcpize on the kernel ops teams run: Debian's stock 6.12 (fmod_ret on update_socket_protocol
works there), booted by `make test-distro`. Any kernel with the hook runs it:

    bpfkit vm run --kernel /boot/vmlinuz-6.12.*-amd64 -- .venv/bin/pytest -m distro tests/distro/test_mptcpize.py

Servers listen with IPPROTO_MPTCP outside the selected cgroups, so a connection
is MPTCP end to end exactly when the client's socket was rewritten (a TCP
client makes the server's accepted socket fall back to TCP).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfkit import cgroup, cli, mptcp_sockopt, netns
from bpfkit.mptcpize import rewrite, systemd
from bpfkit.loader import libbpf
from bpfkit.errors import UsageError

pytestmark = pytest.mark.distro

IPPROTO_MPTCP = 262
BUSYBOX = "/bin/busybox"  # Debian busybox-static, visible from the host's filesystem


# --------------------------------------------------------------------------- helpers

def bpfkit(*args, env=None, timeout=900):
    """The CLI as users run it: its own process, which exits afterwards."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bpfkit", "mptcpize", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (a new Python process costs tens of seconds
    under emulation); only tests about process lifetime spawn `bpfkit`."""
    capsys.readouterr()
    code = cli.main(["mptcpize", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _own_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return cgroup.cgroup2_root() / line[3:].lstrip("/")
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


@contextlib.contextmanager
def inside(cg: Path):
    """Move this (test) process into cg for the body: sockets it creates there
    are created "by a task of that cgroup"."""
    home = _own_cgroup()
    cgroup.add_pid(cg, os.getpid())
    try:
        yield
    finally:
        cgroup.add_pid(home, os.getpid())


def protocol_in(cg: Path | None, family=socket.AF_INET, type_=socket.SOCK_STREAM, proto=0) -> int:
    with inside(cg) if cg else contextlib.nullcontext():
        s = socket.socket(family, type_, proto)
    with s:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)


@contextlib.contextmanager
def mptcp_server(family=socket.AF_INET):
    """An MPTCP listener (created outside any selected cgroup)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    srv = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    srv.bind((host, 0))
    srv.listen(16)
    srv.settimeout(60)
    with srv:
        yield srv


def accept_one(srv) -> dict:
    """Accept a connection whose client sends one byte; what the server sees."""
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(60)
        assert conn.recv(1)
        try:
            info = mptcp_sockopt.mptcp_info(conn)
        except OSError:  # fallen back to TCP: SOL_MPTCP is not answered
            return {"mptcp": False, "flags": None}
        return {"mptcp": not info.fallback, "flags": info.flags}


def connect_from(cg: Path | None, srv, type_flags=0) -> tuple[int, dict]:
    """Client socket created in cg, connects to srv and sends a byte.
    Returns (client SO_PROTOCOL, what the server saw)."""
    family = srv.family
    with inside(cg) if cg else contextlib.nullcontext():
        client = socket.socket(family, socket.SOCK_STREAM | type_flags)
    with client:
        client.setblocking(True)
        client.settimeout(60)
        client.connect(srv.getsockname()[:2])
        client.sendall(b"x")
        seen = accept_one(srv)
        return client.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), seen


def assert_mptcp_connection(proto: int, seen: dict) -> None:
    assert proto == IPPROTO_MPTCP
    assert seen["mptcp"], seen
    assert seen["flags"] & mptcp_sockopt.MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED, seen


def assert_tcp_connection(proto: int, seen: dict) -> None:
    assert proto == socket.IPPROTO_TCP
    assert not seen["mptcp"], seen


def mptcpify_programs() -> list[dict]:
    infos = [libbpf.program_info_by_id(i) for i in libbpf.loaded_program_ids()]
    return [i for i in infos if i and i["name"] == "mptcpify"]


def assert_nothing_attached() -> None:
    assert not rewrite.LINK_PIN.exists()
    assert not rewrite.PIN_DIR.exists(), sorted(p.name for p in rewrite.PIN_DIR.iterdir())
    deadline = time.monotonic() + 10  # links/programs are freed asynchronously after their last fd closes
    while mptcpify_programs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not mptcpify_programs()


def cgroup_status(cg: Path) -> dict | None:
    for entry in rewrite.status()["cgroups"]:
        if entry["id"] == cgroup.cgroup_id(cg):
            return entry
    return None


@pytest.fixture
def clean():
    """No mptcpize state before or after the test, even if it fails."""
    rewrite.detach_all()
    yield
    rewrite.detach_all()
    assert_nothing_attached()


@pytest.fixture
def cg(clean):
    with cgroup.temporary("bpfkit-test-mptcpize-") as path:
        yield path


@pytest.fixture
def attached(cg):
    rewrite.attach(cg)
    return cg


# --------------------------------------------------------------------------- the rewrite

def test_client_in_cgroup_gets_mptcp_connection(attached):
    with mptcp_server() as srv:
        assert_mptcp_connection(*connect_from(attached, srv))
    assert cgroup_status(attached)["rewrites"] == 1


def test_process_outside_stays_tcp(attached):
    with mptcp_server() as srv:
        assert_tcp_connection(*connect_from(None, srv))
    assert cgroup_status(attached)["rewrites"] == 0


def test_other_process_outside_stays_tcp(attached):
    code = "import socket; s = socket.socket(); print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "6"


def test_child_cgroup_inherits(attached):
    child = attached / "child"
    child.mkdir()
    grandchild = child / "grandchild"
    grandchild.mkdir()
    with mptcp_server() as srv:
        assert_mptcp_connection(*connect_from(child, srv))
        assert_mptcp_connection(*connect_from(grandchild, srv))
    assert cgroup_status(attached)["rewrites"] == 2


def test_deepest_selected_cgroup_decides(attached):
    child = attached / "inet6-only"
    child.mkdir()
    rewrite.attach(child, rewrite.Options.of("inet6"))
    assert protocol_in(child, socket.AF_INET) == socket.IPPROTO_TCP
    assert protocol_in(child, socket.AF_INET6) == IPPROTO_MPTCP
    assert protocol_in(attached, socket.AF_INET) == IPPROTO_MPTCP
    assert cgroup_status(child)["rewrites"] == 1
    assert cgroup_status(attached)["rewrites"] == 1


def test_ipv6(attached):
    with mptcp_server(socket.AF_INET6) as srv:
        assert_mptcp_connection(*connect_from(attached, srv))


def test_family_filter(cg):
    rewrite.attach(cg, rewrite.Options.of("inet"))
    assert protocol_in(cg, socket.AF_INET) == IPPROTO_MPTCP
    assert protocol_in(cg, socket.AF_INET6) == socket.IPPROTO_TCP


@pytest.mark.parametrize("family, type_, proto, expected", [
    pytest.param(socket.AF_INET, socket.SOCK_DGRAM, 0, socket.IPPROTO_UDP, id="udp"),
    pytest.param(socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.IPPROTO_UDP, id="udp6"),
    pytest.param(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0, socket.IPPROTO_UDP, id="udp-cloexec"),
    pytest.param(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, socket.IPPROTO_ICMP, id="raw-icmp"),
    pytest.param(socket.AF_UNIX, socket.SOCK_STREAM, 0, 0, id="unix-stream"),
    pytest.param(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, 0, id="unix-seqpacket"),
    pytest.param(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP, IPPROTO_MPTCP, id="already-mptcp"),
])
def test_other_sockets_untouched(attached, family, type_, proto, expected):
    assert protocol_in(attached, family, type_, proto) == expected
    assert cgroup_status(attached)["rewrites"] == 0


def test_explicit_ipproto_tcp_is_rewritten(attached):
    assert protocol_in(attached, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) == IPPROTO_MPTCP


def test_nonblock_cloexec_sockets_are_rewritten(attached):
    flags = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    assert protocol_in(attached, socket.AF_INET, socket.SOCK_STREAM | flags) == IPPROTO_MPTCP
    with mptcp_server() as srv:
        assert_mptcp_connection(*connect_from(attached, srv, type_flags=flags))


def _is_static(path: str) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return ELFFile(f).get_section_by_name(".interp") is None


def test_static_binary_is_rewritten(attached):
    assert _is_static(BUSYBOX)  # no dynamic loader, so no LD_PRELOAD could reach it
    with mptcp_server() as srv:
        host, port = srv.getsockname()[:2]
        client = subprocess.Popen([BUSYBOX, "nc", host, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  preexec_fn=lambda: cgroup.add_pid(attached, os.getpid()))
        client.stdin.write(b"x")
        client.stdin.flush()
        seen = accept_one(srv)  # server closes after the byte: nc sees EOF and exits
        client.stdin.close()
        client.wait(timeout=60)
    assert seen["mptcp"], seen
    assert seen["flags"] & mptcp_sockopt.MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED
    assert cgroup_status(attached)["rewrites"] == 1


def test_exclusion_by_executable_name(cg):
    rewrite.attach(cg, rewrite.Options.of(exclude=["busybox"]))
    with mptcp_server() as srv:
        host, port = srv.getsockname()[:2]
        client = subprocess.Popen([BUSYBOX, "nc", host, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  preexec_fn=lambda: cgroup.add_pid(cg, os.getpid()))
        client.stdin.write(b"x")
        client.stdin.flush()
        seen = accept_one(srv)
        client.stdin.close()
        client.wait(timeout=60)
        assert not seen["mptcp"]  # busybox is excluded
        assert_mptcp_connection(*connect_from(cg, srv))  # this process (pytest) is not
    assert cgroup_status(cg)["exclude"] == ["busybox"]


# --------------------------------------------------------------------------- network namespaces

@pytest.fixture
def container_netns():
    """A namespace like a container's, with loopback up."""
    from pyroute2 import netns as pyroute2_netns

    name = f"bpfkit-test-mptcpize-{os.getpid()}"
    pyroute2_netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=60)
        yield name
    finally:
        pyroute2_netns.remove(name)


def tcp_roundtrip_in(name: str) -> tuple[int, int]:
    """In namespace `name`: a listener and a client (both created by this process, so in its
    cgroup) exchange a byte. Returns both sockets' SO_PROTOCOL, or raises what socket() raised."""
    def exchange():
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname(), timeout=60) as client:
                conn, _ = srv.accept()
                with conn:
                    client.sendall(b"x")
                    assert conn.recv(1) == b"x"
                return (client.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
                        srv.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    return netns.call_in(name, exchange)


def test_a_namespace_with_mptcp_disabled_keeps_tcp_working(attached, container_netns):
    """A container in a selected cgroup whose namespace has net.mptcp.enabled = 0: its TCP
    sockets stay TCP and work (rewritten, socket() would fail with ENOPROTOOPT), counted as left
    TCP; the same process's sockets in an enabled namespace are still rewritten."""
    netns.sysctl_write(container_netns, {"net.mptcp.enabled": "0"})
    with inside(attached):
        assert tcp_roundtrip_in(container_netns) == (socket.IPPROTO_TCP, socket.IPPROTO_TCP)
        assert protocol_in(None) == IPPROTO_MPTCP  # this namespace: enabled
    entry = cgroup_status(attached)
    assert (entry["rewrites"], entry["left_tcp"]) == (1, 2), entry


def test_disabling_mptcp_after_attach_is_honoured_at_once(attached, container_netns, capsys):
    with inside(attached):
        assert tcp_roundtrip_in(container_netns) == (IPPROTO_MPTCP, IPPROTO_MPTCP)
        netns.sysctl_write(container_netns, {"net.mptcp.enabled": "0"})
        assert tcp_roundtrip_in(container_netns) == (socket.IPPROTO_TCP, socket.IPPROTO_TCP)
        netns.sysctl_write(container_netns, {"net.mptcp.enabled": "1"})
        assert tcp_roundtrip_in(container_netns) == (IPPROTO_MPTCP, IPPROTO_MPTCP)
    code, out, _ = run_cli(capsys, "status")
    assert code == 0
    assert "rewrites 4, 2 left TCP (MPTCP disabled in their netns)" in out, out


# --------------------------------------------------------------------------- the CLI, persistence

def test_cli_attach_survives_exit_and_detach_restores_tcp(cg, capsys):
    out = bpfkit("attach", "--cgroup", str(cg))  # its own process, which exits
    assert out.returncode == 0, out.stderr
    assert "attached" in out.stdout
    # The CLI process is gone; the pinned link keeps the rewrite.
    with mptcp_server() as srv:
        assert_mptcp_connection(*connect_from(cg, srv))
    code, stdout, _ = run_cli(capsys, "status", "--json")
    info = json.loads(stdout)
    assert info["attached"] and info["program_id"] and info["link_id"]
    assert info["pins"]["link"] == str(rewrite.LINK_PIN)
    assert [c["path"] for c in info["cgroups"]] == [str(cg)]
    assert info["cgroups"][0]["rewrites"] == 1
    assert [p["id"] for p in mptcpify_programs()] == [info["program_id"]]

    code, stdout, stderr = run_cli(capsys, "detach", "--cgroup", str(cg))
    assert code == 0, stderr
    assert "last cgroup" in stdout
    with mptcp_server() as srv:
        assert_tcp_connection(*connect_from(cg, srv))
    assert_nothing_attached()


def test_attach_twice_is_idempotent(cg, capsys):
    assert run_cli(capsys, "attach", "--cgroup", str(cg))[0] == 0
    protocol_in(cg)
    before = rewrite.status()
    code, stdout, _ = run_cli(capsys, "attach", "--cgroup", str(cg))
    assert code == 0 and "already attached" in stdout
    after = rewrite.status()
    assert after == before  # same program, link, cgroups, and the count is kept
    assert after["cgroups"][0]["rewrites"] == 1
    assert len(mptcpify_programs()) == 1
    code, _, stderr = run_cli(capsys, "attach", "--cgroup", str(cg), "--family", "inet6")
    assert code == 2 and "detach it first" in stderr


def test_several_cgroups_one_program(cg):
    with cgroup.temporary("bpfkit-test-mptcpize-b-") as other:
        rewrite.attach(cg)
        second = rewrite.attach(other)
        assert not second.created
        assert len(mptcpify_programs()) == 1
        assert protocol_in(other) == IPPROTO_MPTCP
        assert not rewrite.detach(cg).removed_program
        assert protocol_in(cg) == socket.IPPROTO_TCP
        assert protocol_in(other) == IPPROTO_MPTCP
        assert rewrite.detach(other).removed_program
    assert_nothing_attached()


def test_removed_cgroup_is_collected(clean):
    with cgroup.temporary("bpfkit-test-mptcpize-gone-") as gone:
        rewrite.attach(gone)
        gone_id = cgroup.cgroup_id(gone)
    info = rewrite.status()
    assert info["collected_stale_cgroup_ids"] == [gone_id]
    assert not info["attached"]
    assert_nothing_attached()


def test_run_one_command(clean, capsys):
    code = "import socket; s = socket.socket(); print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"
    before = {p.name for p in cgroup.cgroup2_root().iterdir() if p.is_dir()}
    out = bpfkit("run", "--", sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(IPPROTO_MPTCP)
    assert run_cli(capsys, "run", "--", "sh", "-c", "exit 7")[0] == 7
    assert run_cli(capsys, "run", "--", "sh", "-c", "kill -TERM $$")[0] == 128 + signal.SIGTERM
    assert run_cli(capsys, "run", "--", "/no/such/command")[0] == 127
    assert {p.name for p in cgroup.cgroup2_root().iterdir() if p.is_dir()} == before
    assert_nothing_attached()


def test_killed_run_leaves_its_cgroup_to_the_next_command(clean):
    """SIGKILL of `mptcpize run` and its command (a killed session): the transient cgroup stays
    selected until the next mptcpize command collects it; while a command runs in it, it stays."""
    proc = subprocess.Popen([sys.executable, "-m", "bpfkit", "mptcpize", "run", "--", "sleep", "600"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            runs = list(cgroup.cgroup2_root().glob(f"{rewrite.RUN_CGROUP_PREFIX}{proc.pid}-*"))
            if runs and (runs[0] / "cgroup.procs").read_text().strip() and cgroup_status(runs[0]):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "mptcpize run did not start its command"
            time.sleep(0.2)
        [run_cg] = runs
        proc.kill()  # bpfkit alone first: its command still runs, so the cgroup must stay
        proc.wait()
        assert rewrite.status()["cgroups"] and run_cg.exists() and cgroup_status(run_cg)
        os.killpg(proc.pid, signal.SIGKILL)  # then the command
        end = time.monotonic() + 10
        while "populated 1" in (run_cg / "cgroup.events").read_text():
            assert time.monotonic() < end
            time.sleep(0.1)
        assert not rewrite.status()["cgroups"]  # collected by the next command
        assert not run_cg.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert_nothing_attached()


def test_run_keeps_an_existing_attachment(attached, capsys):
    assert run_cli(capsys, "run", "--", "true")[0] == 0
    assert protocol_in(attached) == IPPROTO_MPTCP


def _fake_systemctl(tmp_path: Path, props: dict) -> str:
    (tmp_path / "show").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'show'}\n")
    script.chmod(0o755)
    return str(script)


def test_attach_by_unit(cg, tmp_path, monkeypatch, capsys):
    relative = "/" + str(cg.relative_to(cgroup.cgroup2_root()))
    monkeypatch.setattr(systemd, "SYSTEMCTL", _fake_systemctl(
        tmp_path, {"LoadState": "loaded", "ActiveState": "active", "ControlGroup": relative}))
    assert cli.main(["mptcpize", "attach", "--unit", "demo.service"]) == 0
    assert protocol_in(cg) == IPPROTO_MPTCP
    assert cli.main(["mptcpize", "detach", "--unit", "demo.service"]) == 0
    assert_nothing_attached()


def test_persist_and_restore(cg, tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: "/usr/local/bin/bpfkit")
    assert cli.main(["mptcpize", "attach", "--cgroup", str(cg), "--persist", "--exclude", "sshd",
                     "--root", str(tmp_path)]) == 0
    assert (tmp_path / "etc/systemd/system/bpfkit-mptcpize.service").exists()
    rewrite.detach(cg)  # as after a reboot: nothing attached, the state file remains
    assert_nothing_attached()
    assert cli.main(["mptcpize", "restore", "--root", str(tmp_path)]) == 0
    assert protocol_in(cg) == IPPROTO_MPTCP
    assert cgroup_status(cg)["exclude"] == ["sshd"]
    assert cli.main(["mptcpize", "detach", "--cgroup", str(cg), "--root", str(tmp_path)]) == 0
    assert systemd.load_state(tmp_path) == []
    # detach --all forgets too: a reboot must not turn back on what was removed
    assert cli.main(["mptcpize", "attach", "--cgroup", str(cg), "--persist", "--root", str(tmp_path)]) == 0
    assert cli.main(["mptcpize", "detach", "--all", "--root", str(tmp_path)]) == 0
    assert_nothing_attached()
    assert systemd.load_state(tmp_path) == [] and systemd.restore(tmp_path) == ([], [])


def test_restore_at_boot_covers_a_cgroup_made_after_it(clean, tmp_path, monkeypatch):
    """Boot order: the restore runs before sysinit.target, before anything is started in a
    recorded cgroup, which then does not exist yet (after a reboot nothing does). The restore
    creates it, so a process started in it later, as a unit would be, opens MPTCP sockets from
    its first one; one already running in a recorded cgroup (an early unit) from its next."""
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: "/usr/local/bin/bpfkit")
    with cgroup.temporary("bpfkit-test-boot-") as parent:
        early = parent / "early"
        early.mkdir()
        assert cli.main(["mptcpize", "attach", "--cgroup", str(early), "--persist", "--root", str(tmp_path)]) == 0
        later = parent / "later.slice" / "app"
        later.parent.mkdir()
        later.mkdir()
        assert cli.main(["mptcpize", "attach", "--cgroup", str(later), "--persist", "--root", str(tmp_path)]) == 0
        rewrite.detach_all()  # "reboot": nothing attached, and the later cgroup does not exist
        later.rmdir()
        later.parent.rmdir()
        with inside(early):  # already running there when the restore comes
            assert cli.main(["mptcpize", "restore", "--root", str(tmp_path)]) == 0
            assert protocol_in(None) == IPPROTO_MPTCP
        assert later.is_dir()
        first = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                                "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"],
                               capture_output=True, text=True, timeout=120,
                               preexec_fn=lambda: cgroup.add_pid(later, os.getpid()))
        assert first.stdout.strip() == str(IPPROTO_MPTCP), first.stderr
        assert cli.main(["mptcpize", "detach", "--all", "--root", str(tmp_path)]) == 0


# --------------------------------------------------------------------------- bad input

def test_missing_cgroup(clean, capsys):
    code, _, err = run_cli(capsys, "attach", "--cgroup", "no-such-cgroup-bpfkit")
    assert code == 2 and "no such directory" in err
    assert_nothing_attached()


def test_cgroup_v1_path(clean, tmp_path, capsys):
    v1 = tmp_path / "v1"
    v1.mkdir()
    mounted = subprocess.run(["mount", "-t", "cgroup", "-o", "none,name=bpfkittest", "bpfkittest", str(v1)],
                             capture_output=True).returncode == 0
    try:
        target = v1 / "child"
        target.mkdir()
        code, _, err = run_cli(capsys, "attach", "--cgroup", str(target))
        assert code == 2, err
        assert "is not a cgroup v2 directory" in err
        if mounted:
            assert "(it is on cgroup)" in err
    finally:
        if mounted:
            (v1 / "child").rmdir()
            subprocess.run(["umount", str(v1)], check=True)
    assert_nothing_attached()


def test_unit_that_does_not_exist(clean, tmp_path, monkeypatch, capsys):
    # Without a stand-in: no systemd in the VM, which is said plainly.
    code, _, err = run_cli(capsys, "attach", "--unit", "nosuch.service")
    assert code == 2 and "nosuch.service" in err
    monkeypatch.setattr(systemd, "SYSTEMCTL", _fake_systemctl(
        tmp_path, {"LoadState": "not-found", "ActiveState": "inactive", "ControlGroup": ""}))
    code, _, err = run_cli(capsys, "attach", "--unit", "nosuch.service")
    assert code == 2 and "unit nosuch.service does not exist" in err
    assert_nothing_attached()


def test_refused_where_mptcp_is_disabled(cg):
    # Rewritten sockets would fail to be created (ENOPROTOOPT): refuse up front.
    sysctl = Path("/proc/sys/net/mptcp/enabled")
    sysctl.write_text("0")
    try:
        with pytest.raises(UsageError, match="MPTCP is disabled"):
            rewrite.attach(cg)
    finally:
        sysctl.write_text("1")
    assert_nothing_attached()


def test_invalid_unit_name(clean, capsys):
    code, _, err = run_cli(capsys, "attach", "--unit", "../../etc/shadow")
    assert code == 2 and "invalid unit name" in err
    assert_nothing_attached()


# --------------------------------------------------------------------------- kill -9 at every step

FIRST_ATTACH_STEPS = ["locked", "loaded", "exclusions-written", "cgroup-selected", "link-attached",
                      "pinned-selected_cgroups", "pinned-excluded_comms"]


def _killed(step: str, action, *args) -> None:
    """Run mptcpize.<action>(*args) in a forked child that SIGKILLs itself
    right after `step` (the kill-at hook). Forking skips a Python start,
    which costs tens of seconds under emulation; the CLI variant is below."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.environ[rewrite.KILL_AT_ENV] = step
            action(*args)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (step, status)


def _assert_complete(cg: Path) -> None:
    assert rewrite.LINK_PIN.exists()
    assert cgroup_status(cg) is not None
    assert protocol_in(cg) == IPPROTO_MPTCP
    assert len(mptcpify_programs()) == 1


@pytest.mark.parametrize("step", FIRST_ATTACH_STEPS)
def test_kill_during_first_attach_leaves_nothing(cg, step):
    _killed(step, rewrite.attach, cg, rewrite.Options.of(exclude=["sshd"]))
    assert not rewrite.LINK_PIN.exists()
    assert protocol_in(cg) == socket.IPPROTO_TCP
    assert not rewrite.status()["attached"]  # and status collects leftover map pins
    assert_nothing_attached()
    # A later attach starts clean and works.
    rewrite.attach(cg)
    _assert_complete(cg)


def test_kill_of_the_cli_process(cg):
    out = bpfkit("attach", "--cgroup", str(cg), env={rewrite.KILL_AT_ENV: "link-attached"})
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert protocol_in(cg) == socket.IPPROTO_TCP
    assert not rewrite.status()["attached"]
    assert_nothing_attached()


def test_kill_right_after_commit_leaves_complete_attachment(cg):
    _killed("link-pinned", rewrite.attach, cg, rewrite.Options.of(exclude=["sshd"]))
    _assert_complete(cg)
    assert cgroup_status(cg)["exclude"] == ["sshd"]


@pytest.mark.parametrize("step, complete", [("locked", False), ("exclusions-written", False),
                                            ("cgroup-selected", True)])
def test_kill_while_adding_a_cgroup(cg, step, complete):
    with cgroup.temporary("bpfkit-test-mptcpize-add-") as second:
        rewrite.attach(cg)
        _killed(step, rewrite.attach, second, rewrite.Options.of(exclude=["sshd"]))
        _assert_complete(cg)  # the existing attachment is untouched
        if complete:
            _assert_complete(second)
            assert cgroup_status(second)["exclude"] == ["sshd"]
        else:
            assert protocol_in(second) == socket.IPPROTO_TCP
            assert cgroup_status(second) is None
            pinned = rewrite.Pinned.open()
            try:
                assert pinned.exclusions() == {}  # orphan exclusions were collected by status
            finally:
                pinned.close()
        rewrite.detach(second)


@pytest.mark.parametrize("step", ["locked", "cgroup-unselected", "exclusions-removed", "link-unpinned"])
def test_kill_during_last_detach(attached, step):
    _killed(step, rewrite.detach, attached)
    if step == "locked":
        _assert_complete(attached)
        return
    assert protocol_in(attached) == socket.IPPROTO_TCP
    assert not rewrite.status()["attached"]
    assert_nothing_attached()
