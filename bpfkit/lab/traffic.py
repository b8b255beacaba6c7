"""Our own MPTCP traffic generator (iperf3 3.12 cannot open MPTCP sockets).

Run once per side inside the lab namespaces:

    python -m bpfkit.lab.traffic server --spec JSON --port P --result FILE
    python -m bpfkit.lab.traffic client --spec JSON --address A --port P --result FILE

The server prints `ready` when listening, the client `connected <monotonic ns>`
once the connection is up (the runner times its events from that). Each side
writes a JSON result and exits 0 only if everything it checked was right.

Verification: every byte on the wire comes from a seeded pattern stream
(see PatternStream), so the receiver checks every byte at its exact offset and
reports the first wrong one. When the sender is
done it half-closes; the receiver answers with a one-line verdict (bytes and
status) before closing, so both results agree on what arrived. A run with
missing, extra or corrupted bytes fails, whatever its speed.

Traffic kinds (see scenarios/README.md):
  bulk              data sender streams N bytes or for T seconds
  request-response  client sends request_size, server answers response_size,
                    one at a time; completion time is measured from the
                    *scheduled* start (so a slow response also delays the next)
  cbr               messages of message_size at a fixed rate; each carries a
                    sequence number and its send time, the receiver records
                    per-message latency
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import struct
import sys
import time

from bpfkit import fs, mptcp_sockopt
from bpfkit.lab.metrics import Sampler, counter_delta, read_mptcp_counters

PERIOD = 1_048_573  # the largest prime below 2**20
IO_CHUNK = 1 << 18
CBR_HEADER = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns)


class TrafficFailure(Exception):
    """The exchange went wrong in a way the result must report."""


# ---------------------------------------------------------------- pattern


class PatternStream:
    """An endless deterministic byte stream: byte o is base[o mod PERIOD], where
    base is PERIOD bytes of SHAKE-128(seed, label). PERIOD is a prime just under
    1 MiB, so data delivered at a wrong offset mismatches unless it is displaced
    by an exact multiple of ~1 MiB; with the sender/receiver byte counts that is
    as good as a per-block hash, and generating and checking are plain memory
    copies and compares — cheap enough for a TCG-emulated guest, where hashing
    every block would be the bottleneck. `take(n)` produces the next n bytes
    (sender); `check(data)` compares received bytes with the next expected ones."""

    def __init__(self, seed: int, label: str):
        base = hashlib.shake_128(f"bpfkit-lab:{seed}:{label}".encode()).digest(PERIOD)
        self._doubled = memoryview(base + base)  # any slice of up to PERIOD bytes is contiguous
        self.offset = 0
        self.first_bad_offset: int | None = None

    def _view(self, offset: int, length: int) -> memoryview:
        start = offset % PERIOD
        return self._doubled[start : start + length]

    def expected(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            piece = self._view(offset, min(length, PERIOD))
            parts.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(parts)

    def take(self, length: int) -> bytes:
        data = self.expected(self.offset, length)
        self.offset += length
        return data

    def take_view(self, limit: int) -> memoryview:
        """The next `limit` (at most PERIOD) bytes without copying (bulk sending)."""
        view = self._view(self.offset, min(limit, PERIOD))
        self.offset += len(view)
        return view

    def check(self, data: bytes | memoryview) -> bool:
        """True if `data` is exactly the next bytes of the stream."""
        if not isinstance(data, bytes):
            data = bytes(data)  # memoryview == bytes compares item by item: 100× slower than a copy
        length = len(data)
        expected = self.expected(self.offset, length)
        good = expected == data
        if not good and self.first_bad_offset is None:
            bad = next(i for i in range(length) if expected[i] != data[i])
            self.first_bad_offset = self.offset + bad
        self.offset += length
        return good

    @property
    def ok(self) -> bool:
        return self.first_bad_offset is None


# ---------------------------------------------------------------- socket helpers


def mptcp_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, mptcp_sockopt.IPPROTO_MPTCP)
    except OSError as exc:
        raise TrafficFailure(f"cannot open an MPTCP socket ({exc.strerror}); is net.mptcp.enabled=1?") from None


def recv_exact(sock: socket.socket, length: int, deadline: float) -> bytes | None:
    """Exactly `length` bytes, or None on a clean EOF before the first byte."""
    buf = bytearray()
    while len(buf) < length:
        _check_deadline(deadline)
        chunk = sock.recv(min(IO_CHUNK, length - len(buf)))
        if not chunk:
            if not buf:
                return None
            raise TrafficFailure(f"connection closed after {len(buf)} of {length} bytes of a message")
        buf += chunk
    return bytes(buf)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TrafficFailure("timed out")


def send_verdict(sock: socket.socket, verdict: dict) -> None:
    sock.sendall(json.dumps(verdict).encode() + b"\n")


def read_verdict(sock: socket.socket, deadline: float) -> dict:
    """After half-closing, the peer's verdict line, then EOF."""
    buf = b""
    while True:
        _check_deadline(deadline)
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    if not buf.strip():
        raise TrafficFailure("peer closed without a verdict")
    return json.loads(buf.decode())


# ---------------------------------------------------------------- roles


class Side:
    """State shared by all roles of one process: the result being built."""

    def __init__(self, role: str, spec: dict):
        self.role = role
        self.spec = spec
        self.deadline = time.monotonic() + spec["timeout"]
        self.result: dict = {"role": role, "kind": spec["kind"], "ok": False, "error": None, "sent_bytes": 0, "received_bytes": 0}

    def stream(self, direction: str) -> PatternStream:
        return PatternStream(self.spec["seed"], direction)


def bulk_send(side: Side, sock: socket.socket, out: PatternStream) -> None:
    total = side.spec.get("bytes")
    end_at = None if total is not None else time.monotonic() + side.spec["time"]
    sent = 0
    while True:
        if total is not None and sent >= total:
            break
        if end_at is not None and time.monotonic() >= end_at:
            break
        _check_deadline(side.deadline)
        limit = IO_CHUNK if total is None else min(IO_CHUNK, total - sent)
        view = out.take_view(limit)
        sock.sendall(view)
        sent += len(view)
    side.result["sent_bytes"] = sent
    sock.shutdown(socket.SHUT_WR)
    side.result["t_sent_ns"] = time.monotonic_ns()
    verdict = read_verdict(sock, side.deadline)
    side.result["peer_verdict"] = verdict
    side.result["t_end_ns"] = time.monotonic_ns()
    if verdict.get("received_bytes") != sent or not verdict.get("verified"):
        raise TrafficFailure(f"receiver verified {verdict.get('received_bytes')} bytes (ok={verdict.get('verified')}) of {sent} sent")


def bulk_receive(side: Side, sock: socket.socket, incoming: PatternStream) -> None:
    buf = bytearray(IO_CHUNK)
    view = memoryview(buf)
    received = 0
    t_last = None
    while True:
        _check_deadline(side.deadline)
        n = sock.recv_into(buf)
        if n == 0:
            break
        t_last = time.monotonic_ns()
        incoming.check(view[:n])
        received += n
    side.result.update(received_bytes=received, verified=incoming.ok, first_bad_offset=incoming.first_bad_offset, t_last_byte_ns=t_last)
    send_verdict(sock, {"received_bytes": received, "verified": incoming.ok, "first_bad_offset": incoming.first_bad_offset})
    side.result["t_end_ns"] = time.monotonic_ns()
    if not incoming.ok:
        raise TrafficFailure(f"corrupted stream: first wrong byte at offset {incoming.first_bad_offset}")


WARMUP_JOIN_TIMEOUT_S = 10.0  # a join takes one path RTT; a TCG guest on a busy host, seconds


def rr_exchange(side: Side, sock: socket.socket, requests: PatternStream, responses: PatternStream,
                what: str) -> None:
    """One request out, its whole response back and checked."""
    spec = side.spec
    sock.sendall(requests.take(spec["request_size"]))
    side.result["sent_bytes"] += spec["request_size"]
    response = recv_exact(sock, spec["response_size"], side.deadline)
    if response is None:
        raise TrafficFailure(f"server closed before {what}")
    side.result["received_bytes"] += len(response)
    if not responses.check(response):
        raise TrafficFailure(f"{what} corrupted at stream offset {responses.first_bad_offset}")


def rr_warm_up(side: Side, sock: socket.socket, requests: PatternStream, responses: PatternStream) -> dict:
    """Before the timed requests: one untimed exchange, then wait until every
    path has a subflow the server can use too. The timed requests then measure
    the scheduler on an established connection, not the path manager's join:
    a loss on the only subflow before the join is up costs an RTO whatever the
    scheduler does. The exchange comes first because the client's path manager
    opens joins only after the server's first data."""
    wanted = side.spec.get("expect_subflows", 1)
    t0 = time.monotonic()
    rr_exchange(side, sock, requests, responses, "the warm-up response")
    deadline = min(side.deadline, time.monotonic() + WARMUP_JOIN_TIMEOUT_S)
    up = mptcp_sockopt.wait_subflows_usable(sock, wanted, deadline)
    return {"subflows_up": up, "subflows_expected": wanted, "complete": up >= wanted,
            "seconds": round(time.monotonic() - t0, 3)}


def rr_client(side: Side, sock: socket.socket) -> None:
    spec = side.spec
    requests, responses = side.stream("c2s"), side.stream("s2c")
    exchanges = spec["count"]
    if spec.get("warmup"):
        side.result["warmup"] = rr_warm_up(side, sock, requests, responses)
        exchanges += 1
    interval = 1 / spec["request_rate"] if spec.get("request_rate") else 0.0
    t0 = time.monotonic()
    completion, late = [], 0
    for i in range(spec["count"]):
        if interval:
            scheduled = t0 + i * interval
            wait = scheduled - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.001:
                late += 1  # the previous response was still arriving
        else:
            scheduled = time.monotonic()
        rr_exchange(side, sock, requests, responses, f"response {i}")
        completion.append(time.monotonic() - scheduled)
    side.result.update(completion_times_s=completion, late_requests=late, verified=True)
    sock.shutdown(socket.SHUT_WR)
    verdict = read_verdict(sock, side.deadline)
    side.result["peer_verdict"] = verdict
    side.result["t_end_ns"] = time.monotonic_ns()
    if verdict.get("requests") != exchanges or not verdict.get("verified"):
        raise TrafficFailure(f"server saw {verdict.get('requests')} valid requests of {exchanges}")


def rr_server(side: Side, sock: socket.socket) -> None:
    spec = side.spec
    requests, responses = side.stream("c2s"), side.stream("s2c")
    served = 0
    while True:
        request = recv_exact(sock, spec["request_size"], side.deadline)
        if request is None:
            break
        side.result["received_bytes"] += len(request)
        if not requests.check(request):
            break
        sock.sendall(responses.take(spec["response_size"]))
        side.result["sent_bytes"] += spec["response_size"]
        served += 1
    side.result.update(requests=served, verified=requests.ok, first_bad_offset=requests.first_bad_offset)
    send_verdict(sock, {"requests": served, "verified": requests.ok})
    side.result["t_end_ns"] = time.monotonic_ns()
    if not requests.ok:
        raise TrafficFailure(f"request stream corrupted at offset {requests.first_bad_offset}")


def cbr_send(side: Side, sock: socket.socket, out: PatternStream) -> None:
    spec = side.spec
    size = spec["message_size"]
    interval = size * 8 / spec["cbr_rate_bps"]
    t0 = time.monotonic()
    end = t0 + spec["time"]
    seq = 0
    while True:
        scheduled = t0 + seq * interval
        if scheduled >= end:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _check_deadline(side.deadline)
        # Overdue messages go out at once: the stream keeps its average rate.
        sock.sendall(CBR_HEADER.pack(seq, time.monotonic_ns()) + out.take(size - CBR_HEADER.size))
        seq += 1
    side.result.update(sent_bytes=seq * size, messages=seq)
    sock.shutdown(socket.SHUT_WR)
    verdict = read_verdict(sock, side.deadline)
    side.result["peer_verdict"] = verdict
    side.result["t_end_ns"] = time.monotonic_ns()
    if verdict.get("messages") != seq or not verdict.get("verified"):
        raise TrafficFailure(f"receiver verified {verdict.get('messages')} of {seq} messages")


def cbr_receive(side: Side, sock: socket.socket, incoming: PatternStream) -> None:
    size = side.spec["message_size"]
    latencies = []
    seq_ok = True
    expected_seq = 0
    while True:
        message = recv_exact(sock, size, side.deadline)
        if message is None:
            break
        now = time.monotonic_ns()
        seq, sent_ns = CBR_HEADER.unpack_from(message)
        if seq != expected_seq:
            seq_ok = False
            break
        if not incoming.check(message[CBR_HEADER.size :]):
            break
        latencies.append((now - sent_ns) / 1e9)
        side.result["received_bytes"] += size
        expected_seq += 1
    verified = seq_ok and incoming.ok
    side.result.update(messages=expected_seq, latencies_s=latencies, verified=verified, first_bad_offset=incoming.first_bad_offset)
    send_verdict(sock, {"messages": expected_seq, "verified": verified})
    side.result["t_end_ns"] = time.monotonic_ns()
    if not verified:
        raise TrafficFailure("message sequence broken" if not seq_ok else f"payload corrupted at stream offset {incoming.first_bad_offset}")


def exchange(side: Side, sock: socket.socket) -> None:
    """Dispatch to the role this side plays for the traffic kind."""
    kind = side.spec["kind"]
    if kind == "request-response":
        (rr_client if side.role == "client" else rr_server)(side, sock)
        return
    sender = "server" if side.spec["direction"] == "download" else "client"
    label = "s2c" if sender == "server" else "c2s"
    stream = side.stream(label)
    if kind == "bulk":
        (bulk_send if side.role == sender else bulk_receive)(side, sock, stream)
    else:
        (cbr_send if side.role == sender else cbr_receive)(side, sock, stream)


# ---------------------------------------------------------------- process entry


def _prepare(sock: socket.socket, spec: dict) -> None:
    sock.settimeout(spec["timeout"])
    if spec["kind"] != "bulk":
        try:  # latency traffic: no Nagle delay on the tail of a message
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def serve(side: Side, port: int) -> None:
    listener = mptcp_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    listener.settimeout(side.spec["timeout"])
    print("ready", flush=True)
    # The listener stays open for the whole exchange: MP_JOIN SYNs of additional
    # subflows arrive on it, and a closed port answers them with a RST.
    with listener:
        try:
            sock, peer = listener.accept()
        except TimeoutError:
            raise TrafficFailure("no client connected") from None
        side.result["peer"] = list(peer)
        run_connection(side, sock)


def connect(side: Side, address: str, port: int) -> None:
    sock = mptcp_socket()
    sock.settimeout(side.spec["timeout"])
    sock.connect((address, port))
    print(f"connected {time.monotonic_ns()}", flush=True)
    run_connection(side, sock)


def run_connection(side: Side, sock: socket.socket) -> None:
    side.result["t_start_ns"] = time.monotonic_ns()
    # The timeout bounds the exchange, not our start-up (which takes tens of
    # seconds in a TCG-emulated guest while the peer starts too).
    side.deadline = time.monotonic() + side.spec["timeout"]
    _prepare(sock, side.spec)
    sampler = Sampler(sock, side.spec["sample_interval"]).start()
    try:
        exchange(side, sock)
    finally:
        side.result["samples"] = sampler.stop()
        side.result["sampler_error"] = sampler.error
        try:
            info = mptcp_sockopt.mptcp_info(sock)
            side.result["fallback"] = info.fallback
            side.result["final_mptcp_info"] = info.to_dict()
        except OSError as exc:
            side.result["fallback"] = None
            side.result["final_mptcp_info"] = {"error": exc.strerror}
        sock.close()
    if side.result.get("fallback"):
        raise TrafficFailure("the connection fell back to plain TCP")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpfkit.lab.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--spec", required=True, help="traffic spec as JSON (see runner.traffic_spec)")
    parser.add_argument("--address", help="server address (client only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)

    side = Side(args.role, json.loads(args.spec))
    counters_before = read_mptcp_counters()
    try:
        if args.role == "server":
            serve(side, args.port)
        else:
            connect(side, args.address, args.port)
        side.result["ok"] = True
    except (TrafficFailure, OSError, ValueError) as exc:
        side.result["error"] = str(exc) if not isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    finally:
        side.result["mptcp_counters"] = counter_delta(counters_before, read_mptcp_counters())
        side.result["kernel"] = os.uname().release
        fs.atomic_write(args.result, json.dumps(side.result))
    return 0 if side.result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
