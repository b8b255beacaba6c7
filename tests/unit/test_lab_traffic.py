"""Byte verification of the traffic generator, over real (Unix-domain) sockets so
no root is needed: a clean stream passes; a flipped, missing or extra byte fails
with the exact offset; request/response and cbr check their streams too."""

import socket
import threading

import pytest

from bpfkit.lab.traffic import bulk, cbr, request_response, wire
from bpfkit.lab.traffic.bulk import Bulk
from bpfkit.lab.traffic.cbr import Cbr
from bpfkit.lab.traffic.request_response import RequestResponse

pytestmark = pytest.mark.unit

BULK = Bulk(bytes=300_000)
SEED = 7


def side(role, traffic, seed=SEED):
    return wire.Side(role, traffic, seed=seed, timeout=10)


def test_pattern_is_deterministic_and_seeded():
    a, b = wire.PatternStream(1, "s2c"), wire.PatternStream(1, "s2c")
    assert a.take(100_000) == b.take(100_000)
    assert wire.PatternStream(2, "s2c").take(64) != wire.PatternStream(1, "s2c").take(64)
    assert wire.PatternStream(1, "c2s").take(64) != wire.PatternStream(1, "s2c").take(64)


def test_pattern_check_accepts_any_chunking_across_period_boundaries():
    data = wire.PatternStream(3, "x").take(2 * wire.PERIOD + 17)
    receiver = wire.PatternStream(3, "x")
    for start in range(0, len(data), 40_000):
        assert receiver.check(data[start : start + 40_000])
    assert receiver.ok and receiver.offset == len(data)


def test_pattern_is_periodic_with_a_prime_period_only():
    data = wire.PatternStream(5, "x").take(wire.PERIOD + 4096)
    assert data[wire.PERIOD :] == data[:4096]
    # a segment delivered 64 KiB (or any non-multiple of the period) off is caught
    receiver = wire.PatternStream(5, "x")
    receiver.offset = 65536
    assert not receiver.check(data[:1400])


def test_pattern_check_reports_first_bad_offset():
    data = bytearray(wire.PatternStream(3, "x").take(200_000))
    data[123_457] ^= 0x01
    data[150_000] ^= 0x01
    receiver = wire.PatternStream(3, "x")
    assert receiver.check(bytes(data[:100_000]))  # the first chunk is intact
    assert not receiver.check(bytes(data[100_000:]))
    assert receiver.first_bad_offset == 123_457


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(10)
    b.settimeout(10)
    return a, b


def _run_bulk(mutate=None):
    """Sender side in a thread writes the pattern (possibly mutated), then
    half-closes and reads the verdict; the receiver is bpfkit's own code."""
    sender_sock, receiver_sock = _pair()
    payload = bytearray(wire.PatternStream(SEED, "s2c").take(BULK.bytes))
    if mutate:
        payload = mutate(payload)
    verdicts = []

    def send():
        sender_sock.sendall(payload)
        sender_sock.shutdown(socket.SHUT_WR)
        verdicts.append(wire.read_verdict(sender_sock, deadline=float("inf")))
        sender_sock.close()

    thread = threading.Thread(target=send)
    thread.start()
    receiver = side("client", BULK)
    error = None
    try:
        bulk.receive(receiver, receiver_sock, receiver.stream("s2c"))
    except wire.TrafficFailure as exc:
        error = str(exc)
    receiver_sock.close()
    thread.join()
    return receiver.result, verdicts[0], error


def test_bulk_receiver_accepts_an_intact_stream():
    result, verdict, error = _run_bulk()
    assert error is None
    assert result["verified"] and result["received_bytes"] == BULK.bytes
    assert verdict == {"received_bytes": BULK.bytes, "verified": True, "first_bad_offset": None}


def test_bulk_receiver_detects_a_corrupted_byte():
    def flip(buf):
        buf[200_001] ^= 0x80
        return buf

    result, verdict, error = _run_bulk(flip)
    assert error == "corrupted stream: first wrong byte at offset 200001"
    assert not result["verified"] and result["first_bad_offset"] == 200_001
    assert verdict["verified"] is False


def test_bulk_receiver_detects_swapped_chunks():
    def swap(buf):
        return buf[:1000] + buf[2000:3000] + buf[1000:2000] + buf[3000:]

    result, _, error = _run_bulk(swap)
    assert error and result["first_bad_offset"] == 1000


def _run_bulk_sender(receiver_behaviour):
    """bpfkit's sender against a fake receiver that reports what it wants."""
    sender_sock, receiver_sock = _pair()

    def receive():
        got = 0
        while chunk := receiver_sock.recv(65536):
            got += len(chunk)
        receiver_sock.sendall(receiver_behaviour(got))
        receiver_sock.close()

    thread = threading.Thread(target=receive)
    thread.start()
    sender = side("server", BULK)
    error = None
    try:
        bulk.send(sender, sender_sock, sender.stream("s2c"))
    except wire.TrafficFailure as exc:
        error = str(exc)
    sender_sock.close()
    thread.join()
    return sender.result, error


def test_bulk_sender_fails_when_receiver_counts_fewer_bytes():
    result, error = _run_bulk_sender(lambda got: b'{"received_bytes": %d, "verified": true}\n' % (got - 1))
    assert result["sent_bytes"] == BULK.bytes
    assert error == f"receiver verified {BULK.bytes - 1} bytes (ok=True) of {BULK.bytes} sent"


def test_bulk_sender_fails_without_a_verdict():
    _, error = _run_bulk_sender(lambda got: b"")
    assert error == "peer closed without a verdict"


def test_bulk_sender_passes_with_a_matching_verdict():
    result, error = _run_bulk_sender(lambda got: b'{"received_bytes": %d, "verified": true}\n' % got)
    assert error is None and result["peer_verdict"]["verified"]


def test_request_response_round_trip_and_corrupted_response():
    rr = RequestResponse(request_size=300, response_size=70_000, count=5, warmup=False)
    client_sock, server_sock = _pair()
    server_side = side("server", rr, seed=2)

    def serve():
        request_response.server(server_side, server_sock)
        server_sock.close()  # as run_connection does: the client waits for EOF after the verdict

    thread = threading.Thread(target=serve)
    thread.start()
    client_side = side("client", rr, seed=2)
    request_response.client(client_side, client_sock)
    thread.join()
    assert server_side.result["requests"] == 5 and server_side.result["verified"]
    assert len(client_side.result["completion_times_s"]) == 5
    assert all(t > 0 for t in client_side.result["completion_times_s"])

    # A server whose second response is wrong: the client must notice.
    client_sock, server_sock = _pair()
    responses = wire.PatternStream(2, "s2c")

    def bad_server():
        for i in range(2):
            wire.recv_exact(server_sock, 300, float("inf"))
            data = bytearray(responses.take(70_000))
            if i == 1:
                data[5] ^= 1
            server_sock.sendall(data)
        server_sock.close()

    thread = threading.Thread(target=bad_server)
    thread.start()
    with pytest.raises(wire.TrafficFailure, match="response 1 corrupted at stream offset 70005"):
        request_response.client(side("client", rr, seed=2), client_sock)
    thread.join()


def test_cbr_stream_measures_latency_and_detects_a_gap():
    stream = Cbr(cbr_rate_bps=2e6, message_size=1000, time_s=0.3)
    a, b = _pair()
    sender = side("server", stream, seed=4)
    thread = threading.Thread(target=cbr.send, args=(sender, a, sender.stream("s2c")))
    thread.start()
    receiver = side("client", stream, seed=4)
    cbr.receive(receiver, b, receiver.stream("s2c"))
    b.close()
    thread.join()
    messages = sender.result["messages"]
    assert messages == receiver.result["messages"] == 75  # 0.3 s × 2 Mbit/s / 8000 bit
    assert len(receiver.result["latencies_s"]) == messages and min(receiver.result["latencies_s"]) >= 0

    # Drop message 3: the sequence check catches it.
    a, b = _pair()
    out = wire.PatternStream(4, "s2c")
    data = b""
    for seq in range(6):
        message = cbr.HEADER.pack(seq, 0) + out.take(1000 - cbr.HEADER.size)
        data += b"" if seq == 3 else message
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)
    receiver = side("client", stream, seed=4)
    with pytest.raises(wire.TrafficFailure, match="message sequence broken"):
        cbr.receive(receiver, b, wire.PatternStream(4, "s2c"))
    assert receiver.result["messages"] == 3 and receiver.result["verified"] is False
    assert a.recv(4096) == b'{"messages": 3, "verified": false}\n'  # the verdict the sender gets


def test_a_warm_up_that_saw_the_join_missing_fails_the_run():
    """The timed requests of such a run measure the join, not the scheduler."""
    from bpfkit.lab import runner
    from bpfkit.lab.scenario import parse_scenario

    sc = parse_scenario({"duration": "2s", "paths": {"a": {"rate": "20mbit"}, "b": {"rate": "20mbit"}},
                         "traffic": {"kind": "request-response", "request_size": "200B", "response_size": "10KB",
                                     "rate": 5}})

    def run_with(warmup):
        sides = {"client": {"ok": True, "completion_times_s": [0.01] * 10, "warmup": warmup, "samples": []},
                 "server": {"ok": True, "samples": []}}
        return runner.reduce_run(sc, "default", 0, 1, sides, lambda local, remote: "a", 0)

    missing = run_with({"subflows_up": 1, "subflows_expected": 2, "complete": False, "seconds": 10.0})
    assert not missing.ok and missing.failures == ["client: warm-up: 1 of 2 subflows usable after 10 s"]
    complete = run_with({"subflows_up": 2, "subflows_expected": 2, "complete": True, "seconds": 0.1})
    assert complete.ok, complete.failures


def test_a_client_told_to_wait_for_go_connects_only_on_go(tmp_path):
    # The runner starts the client beside the server and writes `go` once the server listens;
    # a runner that gives up (EOF instead) must not leave the client connecting on its own.
    import json
    import subprocess
    import sys

    from bpfkit.lab.runner import traffic_job
    from bpfkit.lab.scenario import parse_scenario

    scenario = parse_scenario({"name": "x", "duration": "1s", "paths": {"a": {"rate": "1mbit"}},
                               "traffic": {"kind": "bulk", "bytes": "1KiB"}})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        result = tmp_path / "client.json"
        proc = subprocess.run(
            [sys.executable, "-m", "bpfkit.lab.traffic", "client", "--job", json.dumps(traffic_job(scenario, 1)),
             "--address", "127.0.0.1", "--port", str(listener.getsockname()[1]), "--result", str(result),
             "--wait-for-go"],
            input="", capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "did not say go" in json.loads(result.read_text())["error"]
        with pytest.raises(TimeoutError):
            listener.accept()
