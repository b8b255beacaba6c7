"""`bpfkit sched list|load|use|unload|show` (and `new`, from bpfkit.sched.scaffold):
BPF MPTCP packet schedulers on kernels with mptcp_sched_ops struct_ops."""

import json

from bpfkit.sched import lifecycle
from bpfkit.commands.build import add_compile_options, compile_options


def register(subparsers) -> None:
    p = subparsers.add_parser("sched", help="BPF MPTCP packet schedulers: list, load, use, unload, show",
                              description="Register BPF MPTCP schedulers (struct mptcp_sched_ops) and select them "
                                          "per network namespace. Needs a kernel with BPF scheduler support "
                                          "(the bpfkit VM kernel). See docs/schedulers.md.")
    sub = p.add_subparsers(dest="sched_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="built-in, registered, selected (per netns) and bpfkit-loaded schedulers")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=handle_list)

    ld = sub.add_parser("load", help="build, register and pin a scheduler (stays registered after exit)")
    ld.add_argument("scheduler", metavar="NAME|FILE.bpf.c|FILE.o",
                    help="a built-in scheduler (bpf/sched/), a source file, or an object built elsewhere "
                         "(clang -target bpf -g, with BTF)")
    ld.add_argument("--ops", metavar="MAP", help="which mptcp_sched_ops map of the file (C name or .name), when "
                                                 "it has several")
    ld.add_argument("--json", action="store_true", help="machine-readable output")
    add_compile_options(ld)
    ld.set_defaults(handler=handle_load)

    us = sub.add_parser("use", help="select a registered scheduler for new MPTCP sockets (net.mptcp.scheduler)")
    us.add_argument("name", help="a name from net.mptcp.available_schedulers, e.g. 'default'")
    us.add_argument("--netns", metavar="NS", help="in this named network namespace (/var/run/netns/NS)")
    us.set_defaults(handler=handle_use)

    ul = sub.add_parser("unload", help="unregister a scheduler bpfkit loaded and remove its pin")
    ul.add_argument("name")
    ul.add_argument("--force", action="store_true",
                    help="if a netns selects it, switch that netns to 'default' first (open connections keep "
                         "the unloaded scheduler until they close); also unregister a scheduler another "
                         "loader (bpftool...) registered")
    ul.set_defaults(handler=handle_unload)

    sh = sub.add_parser("show", help="one scheduler: source, programs, pin, flags, where selected")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    sh.set_defaults(handler=handle_show)

    from bpfkit.sched import scaffold  # for `new`

    tr = sub.add_parser("trace", help="print each decision of any scheduler (default or BPF) as it happens",
                        description="Trace mptcp_sched_get_send()/get_retrans() (fentry/fexit, Linux >= 6.7): per "
                                    "call the connection token, the scheduler, the subflow(s) it picked and what "
                                    "it saw of each subflow. Nothing stays attached after it ends.")
    tr.add_argument("name", nargs="?", help="only decisions of this scheduler (as in net.mptcp.scheduler)")
    tr.add_argument("--netns", metavar="NS", help="only connections of this named network namespace")
    tr.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: at Ctrl-C)")
    tr.add_argument("--count", type=int, metavar="N", help="stop after N decisions")
    tr.add_argument("--json", action="store_true", help="one JSON object per decision (JSON lines)")
    tr.set_defaults(handler=handle_trace)

    nw = sub.add_parser("new", help="write a new scheduler source to start from")
    scaffold.add_new_arguments(nw)
    nw.set_defaults(handler=scaffold.run_new)


def handle_trace(args) -> int:
    import math
    import sys
    import time

    from bpfkit.sched import trace
    from bpfkit.errors import UsageError

    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"--count must be positive, got {args.count}")
    if args.name is not None:
        lifecycle.validate_name(args.name)
    deadline = time.monotonic() + args.duration if args.duration else math.inf
    shown = 0
    start_ns = None
    with trace.Tracer(netns=args.netns) as tracer:
        print("bpfkit: tracing scheduler decisions" + (f" in netns {args.netns}" if args.netns else "")
              + " (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            while time.monotonic() < deadline and (args.count is None or shown < args.count):
                wait_ms = int(max(0.0, min(0.2, deadline - time.monotonic())) * 1000)
                for decision in tracer.poll(wait_ms):
                    if args.name is not None and decision["scheduler"] != args.name:
                        continue
                    if start_ns is None:
                        start_ns = decision["time_ns"]
                    print(json.dumps(decision) if args.json else trace.format_decision(decision, start_ns),
                          flush=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        break
        except KeyboardInterrupt:
            pass
        lost = tracer.lost()
    if lost:
        print(f"bpfkit: {lost} decisions were lost (the ring buffer was full)", file=sys.stderr)
    return 0


def handle_list(args) -> int:
    data = lifecycle.list_all()
    print(json.dumps(data, indent=2) if args.json else lifecycle.format_list(data))
    return 0


def handle_load(args) -> int:
    result = lifecycle.load(args.scheduler, ops=args.ops, **compile_options(args))
    rec = result.record
    if args.json:
        print(json.dumps({"name": rec.name, "already_loaded": result.already_loaded, "pin": str(rec.pin),
                          "link_id": result.link_id, "map_id": result.map_id, "source": rec.source,
                          "program_ids": rec.program_ids, "flags": rec.flags}, indent=2))
        return 0
    if result.already_loaded:
        print(f"{rec.name}: already loaded from {rec.source} (same object), pinned at {rec.pin}")
    else:
        print(f"{rec.name}: registered from {rec.source}; link {result.link_id} pinned at {rec.pin}")
        print(f"  select it with: bpfkit sched use {rec.name} [--netns NS]")
    return 0


def handle_use(args) -> int:
    before = lifecycle.use(args.name, args.netns)
    where = f"netns {args.netns}" if args.netns else "the current netns"
    print(f"net.mptcp.scheduler = {args.name} in {where} (was {before}); applies to new MPTCP sockets")
    return 0


def handle_unload(args) -> int:
    result = lifecycle.unload(args.name, force=args.force)
    for ns in result.switched:
        print(f"{ns}: net.mptcp.scheduler switched from {args.name} to default "
              f"(connections already open keep {args.name} until they close)")
    print(f"{args.name}: unregistered and unpinned")
    return 0


def handle_show(args) -> int:
    info = lifecycle.show(args.name)
    print(json.dumps(info, indent=2) if args.json else lifecycle.format_show(info))
    return 0
