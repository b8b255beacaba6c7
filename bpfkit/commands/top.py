"""`bpfkit top [--json] [--interval S] [--count N] [--netns NS]`: a live,
per-subflow view of the MPTCP connections of a network namespace."""

from __future__ import annotations

import json
import math
import sys
import time

from bpfkit.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "top", help="live table of MPTCP connections and their subflows (rates, srtt, cwnd, retransmits)",
        description="Samples sock_diag every --interval seconds (needs root to see subflows). Rates are deltas "
                    "between successive samples, so the first sample has none. Ctrl-C ends it.")
    p.add_argument("--json", action="store_true", help="print one JSON document per sample, one per line")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N samples (default: until Ctrl-C)")
    p.add_argument("--netns", metavar="NS", help="look inside this named network namespace (ip netns)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    if not math.isfinite(args.interval) or args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval}")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be >= 1, got {args.count}")
    from bpfkit.top import Sampler, render_table

    sampler = Sampler(netns=args.netns)
    taken = 0
    try:
        if args.json:
            while True:
                sample = sampler.sample()
                taken += 1
                print(json.dumps(sample), flush=True)
                if args.count is not None and taken >= args.count:
                    return 0
                time.sleep(args.interval)
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if not console.is_terminal:  # piped: one table per sample, no cursor games, no truncation
            console = Console(width=max(console.width, 140))
            while True:
                console.print(render_table(sampler.sample()))
                taken += 1
                if args.count is not None and taken >= args.count:
                    return 0
                time.sleep(args.interval)
        with Live(render_table(sampler.sample()), console=console, auto_refresh=False) as live:
            taken = 1
            while args.count is None or taken < args.count:
                time.sleep(args.interval)
                live.update(render_table(sampler.sample()), refresh=True)
                taken += 1
        return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `bpfkit top --json | head`
        sys.stderr.close()
        return 0
