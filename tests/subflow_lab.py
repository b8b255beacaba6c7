"""A two-path MPTCP connection for the subflow policy tests (host and VM tiers).

Built on bpfkit.lab.topology (client, router and server namespaces; path `a`
via 10.1.x, path `b` via 10.2.x; the client has an MPTCP `subflow` endpoint on
10.2.1.1, so every connection is an initial subflow from 10.1.1.1 plus one
join from 10.2.1.1, both to the server's 10.1.2.2).

The server process runs inside the test's cgroup (so the passive side's
subflows meet the policy: sockops sees accepted sockets only when their
listener's cgroup has the program); clients join it too unless told otherwise.

Run as a script, this file is the peers that run inside the namespaces:

    subflow_lab.py server PORT [--ipv6] [--busy]
    subflow_lab.py client HOST PORT SECONDS [--plain] [--mark-before-connect MARK]

Sockets are read with sock_diag from this process, entering the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

THIS_FILE = str(Path(__file__).resolve())
IPPROTO_MPTCP = 262
SERVER_PORT = 5001
JOIN_LOCAL = "10.2.1.1"  # the client's `subflow` endpoint: path b
INITIAL_LOCAL = "10.1.1.1"  # path a


@dataclass(frozen=True)
class DiagSocket:
    """One established TCP socket as sock_diag reports it."""

    local: tuple[str, int]
    remote: tuple[str, int]
    mptcp_subflow: bool  # has the "mptcp" ULP
    mark: int
    priority: int  # INET_DIAG_CLASS_ID: sk_priority when no net_cls class id is set
    tos: int | None  # IPv4 TOS byte (IPV6_TCLASS for IPv6 sockets)
    congestion: str
    max_pacing_rate: int  # bytes/s; 2**64-1 = unlimited
    bytes_sent: int


class Client:
    """An MPTCP (or plain TCP) client that connected, waited for its join,
    sent for a while and now holds the connection open until close()."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"client failed: {proc.stderr.read()}")
        report = json.loads(line)
        self.local_port: int = report["local_port"]
        # subflow id (1 = initial) → {"local": [addr, port], "bytes_sent": n}
        self.subflows: dict[int, dict] = {s["id"]: s for s in report["subflows"]}

    def command(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def subflow_by_local(self, address: str) -> dict:
        return next(s for s in self.subflows.values() if s["local"][0] == address)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


class _Lab:
    """Server started in the cgroup, clients, and sock_diag, on top of
    `_popen(side, argv)` / `_run(side, argv)` inside the side's namespace."""

    cg: Path
    server_address: str

    def _popen(self, side: str, argv: list[str], **kwargs) -> subprocess.Popen:
        raise NotImplementedError

    def _run(self, side: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def _join_cgroup(self) -> None:
        (self.cg / "cgroup.procs").write_text(f"{os.getpid()}\n")

    busy_server = False

    def _start_server(self) -> None:
        argv = [sys.executable, THIS_FILE, "server", str(SERVER_PORT)]
        if ":" in self.server_address:
            argv.append("--ipv6")
        if self.busy_server:
            argv.append("--busy")
        server = self._popen("server", argv, stdout=subprocess.PIPE, text=True, preexec_fn=self._join_cgroup)
        assert server.stdout.readline().strip() == "ready"

    def connect(self, seconds: float = 0.2, *, plain: bool = False, in_cgroup: bool = True,
                mark_before_connect: int | None = None) -> Client:
        argv = [sys.executable, THIS_FILE, "client", self.server_address, str(SERVER_PORT), str(seconds)]
        if plain:
            argv.append("--plain")
        if mark_before_connect is not None:
            argv += ["--mark-before-connect", str(mark_before_connect)]
        proc = self._popen("client", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=self._join_cgroup if in_cgroup else None)
        return Client(proc)

    def _netns(self, side: str) -> str:
        raise NotImplementedError

    def sockets(self, side: str) -> list[DiagSocket]:
        from bpfkit import netns  # here: this file also runs as a light helper script

        with netns.entered(self._netns(side)):
            return established_sockets()

    def socket(self, side: str, *, local: tuple[str, int] | None = None,
               remote: tuple[str, int] | None = None) -> DiagSocket:
        found = [s for s in self.sockets(side)
                 if (local is None or s.local == local) and (remote is None or s.remote == remote)]
        assert len(found) == 1, f"expected one socket local={local} remote={remote} in {side}, found {found}"
        return found[0]

    def subflow_pair(self, client: Client, local_address: str) -> tuple[DiagSocket, DiagSocket]:
        """The client's and the server's socket of one subflow of `client`."""
        local = tuple(client.subflow_by_local(local_address)["local"])
        return (self.socket("client", local=local),
                self.socket("server", remote=local))


class TwoPathLab(_Lab):
    def __init__(self, cg: Path, *, backup: bool = False, rate: str = "1gbit", shaping: str = "none",
                 busy_server: bool = False):
        from bpfkit.lab.scenario import PathSpec
        from bpfkit.lab.values import parse_rate
        from bpfkit.lab.topology import Topology

        self.cg = cg
        self.busy_server = busy_server
        self.topo = Topology([PathSpec("a", rate_bps=parse_rate(rate)),
                              PathSpec("b", rate_bps=parse_rate(rate), backup=backup)], shaping=shaping)
        self.server_address = self.topo.server_address

    def __enter__(self) -> "TwoPathLab":
        self.topo.setup()
        try:
            self._start_server()
        except BaseException:
            self.topo.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.topo.teardown()

    def _popen(self, side, argv, **kwargs):
        return self.topo.popen(side, argv, **kwargs)

    def _run(self, side, argv, **kwargs):
        return self.topo.run(side, argv, **kwargs)

    def _netns(self, side):
        return self.topo.ns(side)

    def tx_bytes(self, side: str, ifname: str) -> int:
        out = self.topo.run(side, ["cat", f"/sys/class/net/{ifname}/statistics/tx_bytes"], check=True)
        return int(out.stdout)


class Ipv6Lab(_Lab):
    """Client and server namespaces joined by one veth pair, IPv6 only. The
    client has fd00:1::1 (initial subflow) and fd00:2::1 (its `subflow`
    endpoint: the join); the server fd00:1::10 and no endpoint."""

    INITIAL_LOCAL = "fd00:1::1"
    JOIN_LOCAL = "fd00:2::1"

    def __init__(self, cg: Path):
        self.cg = cg
        tag = f"bpfkit-sf6-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.namespaces = {"client": f"{tag}-client", "server": f"{tag}-server"}
        self.server_address = "fd00:1::10"
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Ipv6Lab":
        client, server = self.namespaces["client"], self.namespaces["server"]
        commands = [
            ["ip", "netns", "add", client], ["ip", "netns", "add", server],
            ["ip", "-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", server],
        ]
        for ns in (client, server):
            commands += [["ip", "-n", ns, "link", "set", "lo", "up"], ["ip", "-n", ns, "link", "set", "eth0", "up"],
                         ["ip", "-n", ns, "mptcp", "limits", "set", "subflows", "1", "add_addr_accepted", "0"]]
        commands += [
            ["ip", "-n", client, "-6", "addr", "add", f"{self.INITIAL_LOCAL}/64", "dev", "eth0", "nodad"],
            ["ip", "-n", client, "-6", "addr", "add", f"{self.JOIN_LOCAL}/64", "dev", "eth0", "nodad"],
            ["ip", "-n", client, "mptcp", "endpoint", "add", self.JOIN_LOCAL, "subflow"],
            ["ip", "-n", server, "-6", "addr", "add", f"{self.server_address}/64", "dev", "eth0", "nodad"],
            ["ip", "-n", server, "-6", "route", "add", "fd00:2::/64", "dev", "eth0"],
        ]
        try:
            for argv in commands:
                subprocess.run(argv, check=True, capture_output=True)
            self._start_server()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def _popen(self, side, argv, **kwargs):
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[side], *argv], start_new_session=True,
                                **kwargs)
        self._processes.append(proc)
        return proc

    def _run(self, side, argv, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.namespaces[side], *argv], **kwargs)

    def _netns(self, side):
        return self.namespaces[side]


# ---------------------------------------------------------------- the peers (run inside the namespaces)


def _server(port: int, ipv6: bool, busy: bool) -> None:
    listener = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::" if ipv6 else "0.0.0.0", port))
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:  # keep accepting while a client holds its connection open
            listener.close()
            if busy:
                threading.Thread(target=_keep_setting_nodelay, args=(conn,), daemon=True).start()
            while conn.recv(1 << 20):
                pass
            os._exit(0)
        conn.close()


def _keep_setting_nodelay(conn: socket.socket) -> None:
    """A server application busy with its socket: each setsockopt() takes the
    MPTCP socket's lock (so the kernel often has to complete a join later,
    see bpf/subflow_opts.bpf.c) and marks the socket's options as changed (so
    completing a join copies them into it)."""
    with contextlib.suppress(OSError):
        while True:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(host: str, port: int, seconds: float, plain: bool, mark_before_connect: int | None) -> None:
    from bpfkit import mptcp_sockopt

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP if plain else IPPROTO_MPTCP)
    if mark_before_connect is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark_before_connect)
    sock.connect((host, port))
    chunk = b"x" * 65536
    sock.sendall(chunk)
    subflows = []
    if not plain:
        # Wait for the join to be established (tcp state 1) on our side.
        deadline = time.monotonic() + 15
        while True:
            info = mptcp_sockopt.full_info(sock)
            if len(info.subflows) >= 2 and all(s.tcp.state == 1 for s in info.subflows):
                break
            if time.monotonic() > deadline:
                sys.exit(f"the join did not come up: {info.to_dict()}")
            time.sleep(0.02)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.send(chunk)
    if not plain:
        time.sleep(0.2)  # let the last bytes be acknowledged before counting
        subflows = [{"id": s.id, "local": list(s.local), "bytes_sent": s.tcp.bytes_sent}
                    for s in mptcp_sockopt.full_info(sock).subflows]
    print(json.dumps({"local_port": sock.getsockname()[1], "subflows": subflows}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "quit":
            break
        if words[0] == "setsockopt-mark":  # the application changing its socket afterwards
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(words[1], 0))
        elif words[0] == "setsockopt-congestion":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, words[1].encode())
        print("ok", flush=True)
    sock.close()


# ---------------------------------------------------------------- sock_diag, in-process



def established_sockets() -> list[DiagSocket]:
    """Every established TCP socket of the current network namespace."""
    from pyroute2 import DiagSocket as PyrouteDiag

    # idiag_ext bits (1 << (attr - 1)): INFO 2, CONG 4, TOS 5, TCLASS 6 (which also
    # returns CLASS_ID); MARK comes unasked for CAP_NET_ADMIN.
    extensions = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5)
    out = []
    with PyrouteDiag() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ds.get_sock_stats(family=family, states=1 << 1, extensions=extensions):  # ESTABLISHED
                info = msg.get_attr("INET_DIAG_INFO")
                ulp = msg.get_attr("INET_DIAG_ULP_INFO") or ""
                tos = msg.get_attr("INET_DIAG_TOS" if family == socket.AF_INET else "INET_DIAG_TCLASS")
                mark = bytes.fromhex((msg.get_attr("INET_DIAG_MARK") or "0").replace(":", ""))
                out.append(DiagSocket(
                    local=(msg["idiag_src"], msg["idiag_sport"]),
                    remote=(msg["idiag_dst"], msg["idiag_dport"]),
                    mptcp_subflow="mptcp".encode().hex(":") in ulp,
                    mark=int.from_bytes(mark, "little"),
                    priority=msg.get_attr("INET_DIAG_CLASS_ID"),
                    tos=int(tos.replace(":", ""), 16) if tos else None,
                    congestion=msg.get_attr("INET_DIAG_CONG"),
                    max_pacing_rate=info["tcpi_max_pacing_rate"],
                    bytes_sent=info["tcpi_bytes_sent"],
                ))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(THIS_FILE).parent.parent))  # the bpfkit checkout
    role = sys.argv[1]
    if role == "server":
        _server(int(sys.argv[2]), "--ipv6" in sys.argv, "--busy" in sys.argv)
    elif role == "client":
        premark = sys.argv[sys.argv.index("--mark-before-connect") + 1] if "--mark-before-connect" in sys.argv else None
        _client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "--plain" in sys.argv,
                None if premark is None else int(premark, 0))
