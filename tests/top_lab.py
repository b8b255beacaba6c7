"""Shared by the host and VM tests of `bpfkit top`: a two-path lab where path
"b" is a backup, a bulk MPTCP transfer client → server over it, and `bpfkit top
--json` run as a real command inside the client and server namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
import time

PORT = 5201
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
while conn.recv(1 << 16):
    pass
"""
CLIENT = """
import socket, sys, time
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
c.connect((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
chunk = bytes(1 << 14)
while time.monotonic() < end:
    c.sendall(chunk)
"""


def two_paths(rate: str, delay: str) -> dict:
    return {"paths": {"a": {"rate": rate, "delay": delay}, "b": {"rate": rate, "delay": delay, "backup": True}}}


def start_transfer(topo, seconds: float) -> None:
    """Server in the server netns, then a client sending for `seconds`; both are
    killed at topology teardown."""
    server = topo.popen("server", [sys.executable, "-c", SERVER, str(PORT)], stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    assert line.strip() == "ready", f"server did not start: {line!r}"
    topo.popen("client", [sys.executable, "-c", CLIENT, topo.server_address, str(PORT), str(seconds)])


def top_samples(netns: str, count: int, interval: float, timeout: float = 120) -> list[dict]:
    """Run `bpfkit top --json` as a command and parse its newline-delimited JSON."""
    proc = subprocess.run([sys.executable, "-m", "bpfkit", "top", "--json", "--netns", netns, "--count", str(count),
                           "--interval", str(interval)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == count, proc.stdout
    return [json.loads(line) for line in lines]


def wait_for_subflows(netns: str, port: int, wanted: int, timeout: float) -> dict:
    """Poll until the connection to/from `port` has `wanted` established subflows."""
    deadline = time.monotonic() + timeout
    conn = None
    while time.monotonic() < deadline:
        conn = connection_on_port(top_samples(netns, 1, 0.1)[0], port)
        if conn and sum(sf["state"] == "ESTAB" for sf in conn["subflows"]) >= wanted:
            return conn
        time.sleep(0.5)
    raise AssertionError(f"no connection with {wanted} subflows on port {port} in {netns}: {conn}")


def connection_on_port(sample: dict, port: int) -> dict | None:
    found = [c for c in sample["connections"] if c["remote"].endswith(f":{port}") or c["local"].endswith(f":{port}")]
    assert len(found) <= 1, found
    return found[0] if found else None


def check_top_sees_transfer(topo, rate_bps: float, min_srtt_us: int) -> tuple[dict, dict]:
    """The checks shared by the host and VM tests; returns the client-side and
    server-side connection as `bpfkit top` reported them."""
    server_ip = topo.server_address
    a_client, b_client = topo.client_address("a"), topo.client_address("b")
    wait_for_subflows(topo.client_ns, PORT, 2, timeout=60)
    client = connection_on_port(top_samples(topo.client_ns, 3, 1.0)[-1], PORT)
    server = connection_on_port(top_samples(topo.server_ns, 3, 1.0)[-1], PORT)
    assert client is not None and server is not None

    # the client's view: its MPTCP socket talks to the server; one subflow per path
    assert client["remote"] == f"{server_ip}:{PORT}"
    assert client["state"] == "ESTAB" and client["fallback"] is False
    by_local = {sf["local"].rsplit(":", 1)[0]: sf for sf in client["subflows"]}
    assert set(by_local) == {a_client, b_client}, client["subflows"]
    assert all(sf["remote"] == f"{server_ip}:{PORT}" for sf in client["subflows"])
    assert by_local[b_client]["backup"] and not by_local[a_client]["backup"]
    # the default scheduler keeps the backup path idle while path a works: the
    # carrying path's rate is close to its shaped rate, the backup's is ~0
    carrying, idle = by_local[a_client], by_local[b_client]
    assert carrying["send_bps"] > 0.3 * rate_bps, carrying
    assert idle["send_bps"] < 0.1 * carrying["send_bps"], (carrying, idle)
    assert carrying["srtt_us"] >= min_srtt_us and carrying["cwnd"] > 0, carrying
    assert client["scheduler"] == "default" and client["scheduler_source"] == "netns default"

    # the server's view of the same connection: two subflows, receiving on path a's subflow
    remotes = {sf["remote"].rsplit(":", 1)[0]: sf for sf in server["subflows"]}
    assert set(remotes) == {a_client, b_client}, server["subflows"]
    assert remotes[a_client]["recv_bps"] > 0.3 * rate_bps
    assert server["recv_bps"] > 0.3 * rate_bps
    return client, server
