"""One traffic process: our own MPTCP traffic generator (iperf3 3.12 cannot open
MPTCP sockets). The runner starts one per side inside the lab namespaces:

    python -m bpfkit.lab.traffic server --job JSON --port P --result FILE
    python -m bpfkit.lab.traffic client --job JSON --address A --port P --result FILE

The job is the traffic (`TrafficModel.to_dict()`) and the run's parameters
(runner.traffic_job). The server prints `ready` when listening, the client (with
--wait-for-go, started at the same time) connects when it reads `go`, then prints
`connected <monotonic ns>` once the connection is up (the runner times its
events from that). Each side writes a JSON result and exits 0 only if
everything it checked was right.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from bpfkit import fs, mptcp_sockopt
from bpfkit.lab import traffic
from bpfkit.lab.metrics import Sampler, counter_delta, read_mptcp_counters
from bpfkit.lab.traffic.wire import Side, TrafficFailure, mptcp_socket


def serve(side: Side, port: int) -> None:
    listener = mptcp_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    listener.settimeout(side.timeout)
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
    sock.settimeout(side.timeout)
    sock.connect((address, port))
    print(f"connected {time.monotonic_ns()}", flush=True)
    run_connection(side, sock)


def run_connection(side: Side, sock: socket.socket) -> None:
    side.result["t_start_ns"] = time.monotonic_ns()
    # The timeout bounds the exchange, not our start-up (which takes tens of
    # seconds in a TCG-emulated guest while the peer starts too).
    side.deadline = time.monotonic() + side.timeout
    sock.settimeout(side.timeout)
    if side.traffic.latency_sensitive:
        try:  # no Nagle delay on the tail of a message
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    sampler = Sampler(sock, side.sample_interval).start()
    try:
        side.traffic.run(side, sock)
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


def side_from_job(role: str, job: dict) -> Side:
    return Side(role, traffic.from_dict(job["traffic"]), seed=job["seed"], timeout=job["timeout"],
                sample_interval=job["sample_interval"], expect_subflows=job["expect_subflows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpfkit.lab.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--job", required=True, help="the traffic and the run's parameters as JSON (runner.traffic_job)")
    parser.add_argument("--address", help="server address (client only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    parser.add_argument("--wait-for-go", action="store_true",
                        help="client: read a line `go` on stdin before connecting (the runner starts both sides "
                             "at once, so their Python start-ups overlap, and says go once the server listens)")
    args = parser.parse_args(argv)

    side = side_from_job(args.role, json.loads(args.job))
    counters_before = read_mptcp_counters()
    try:
        if args.role == "server":
            serve(side, args.port)
        else:
            if args.wait_for_go and sys.stdin.readline().strip() != "go":
                raise TrafficFailure("the runner did not say go (the server did not start)")
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
