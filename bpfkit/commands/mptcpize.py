"""`bpfkit mptcpize`: cgroup-scoped TCP→MPTCP rewrite for unmodified programs.

    bpfkit mptcpize attach --cgroup PATH | --unit NAME [--family F] [--exclude COMM]... [--persist]
    bpfkit mptcpize detach --cgroup PATH | --unit NAME | --all
    bpfkit mptcpize status [--json]
    bpfkit mptcpize run [--family F] [--exclude COMM]... -- CMD [ARGS...]
    bpfkit mptcpize enable UNIT [--family F] [--exclude COMM]... [--now]
    bpfkit mptcpize disable UNIT [--now]
    bpfkit mptcpize restore
"""

import argparse
import json
from pathlib import Path

from bpfkit import cgroup
from bpfkit.mptcpize import rewrite, systemd
from bpfkit.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("mptcpize", help="make TCP sockets of chosen cgroups/units MPTCP (BPF, no LD_PRELOAD)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = sub.add_parser("attach", help="rewrite TCP sockets created in a cgroup (and its children) to MPTCP")
    _target(a)
    _options(a)
    a.add_argument("--persist", action="store_true",
                   help="also restore this attachment at boot (records it, installs bpfkit-mptcpize.service)")
    _root(a)
    a.set_defaults(handler=handle_attach)

    d = sub.add_parser("detach", help="stop rewriting for a cgroup; the last detach removes the program")
    _target(d, allow_all=True)
    _root(d)
    d.set_defaults(handler=handle_detach)

    s = sub.add_parser("status", help="attached cgroups, rewrite counts, pins, program and link ids")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _root(s)
    s.set_defaults(handler=handle_status)

    r = sub.add_parser("run", help="run one command in a transient cgroup whose TCP sockets become MPTCP")
    _options(r)
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    r.set_defaults(handler=handle_run)

    e = sub.add_parser("enable", help="write a systemd drop-in attaching UNIT's cgroup at each start")
    e.add_argument("unit", metavar="UNIT")
    _options(e)
    e.add_argument("--now", action="store_true", help="also attach the running unit now")
    _root(e)
    e.set_defaults(handler=handle_enable)

    x = sub.add_parser("disable", help="remove the drop-in written by enable")
    x.add_argument("unit", metavar="UNIT")
    x.add_argument("--now", action="store_true", help="also detach the running unit now")
    _root(x)
    x.set_defaults(handler=handle_disable)

    b = sub.add_parser("restore", help="attach the cgroups recorded by attach --persist (run at boot)")
    _root(b)
    b.set_defaults(handler=handle_restore)


def _target(p, allow_all: bool = False) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--cgroup", metavar="PATH", help="cgroup v2 directory (absolute, or relative to the v2 root)")
    group.add_argument("--unit", metavar="NAME", help="a running systemd unit, e.g. nginx.service")
    if allow_all:
        group.add_argument("--all", action="store_true", help="remove the program and every pin")


def _options(p) -> None:
    p.add_argument("--family", choices=("inet", "inet6", "all"), default="all",
                   help="socket families to rewrite (default: all)")
    p.add_argument("--exclude", action="append", default=[], metavar="COMM",
                   help="leave sockets of this executable name alone (repeatable)")


def _root(p) -> None:
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # tests render into a temp dir


def _resolve_target(args):
    return systemd.unit_cgroup(args.unit) if args.unit else rewrite.target_cgroup(args.cgroup)


def handle_attach(args) -> int:
    options = rewrite.Options.of(args.family, args.exclude)
    if args.persist and args.unit:
        raise UsageError("--persist is for --cgroup: a unit gets a new cgroup at each start",
                         hint=f"bpfkit mptcpize enable {args.unit}")
    target = _resolve_target(args)
    if args.persist:
        systemd.refuse_unit_cgroup(target)  # before anything is attached
    result = rewrite.attach(target, options)
    if result.already:
        print(f"{result.cgroup} is already attached (cgroup id {result.cgroup_id})")
    else:
        print(f"attached {result.cgroup} (cgroup id {result.cgroup_id}): its TCP sockets now become MPTCP")
    if result.created:
        print(f"loaded program id {result.program_id}, link id {result.link_id}, pinned in {rewrite.PIN_DIR}")
    if args.persist:
        print(f"recorded in {systemd.persist(result.cgroup, options, args.root)} (restored at boot by "
              f"{systemd.BOOT_SERVICE})")
    return 0


def handle_detach(args) -> int:
    if args.all:
        existed = rewrite.detach_all()
        forgotten = systemd.forget_all(args.root)
        print("removed the mptcpize program and pins" if existed else "nothing was attached")
        if forgotten:
            print(f"removed {forgotten} attachment(s) from the boot state ({args.root / systemd.STATE_FILE})")
        return 0
    cg = systemd.unit_cgroup(args.unit) if args.unit else cgroup.resolve(args.cgroup)
    result = rewrite.detach(cg)
    forgotten = systemd.forget(cg, args.root)
    if not result.was_attached:
        print(f"{cg} was not attached" + (" (removed from the boot state)" if forgotten else ""))
        return 0
    print(f"detached {cg}" + (" and removed it from the boot state" if forgotten else ""))
    if result.removed_program:
        print("that was the last cgroup: program unloaded, pins removed")
    return 0


def handle_status(args) -> int:
    info = {**rewrite.status(), "persistent": systemd.load_state(args.root)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if not info["attached"]:
        print("not attached")
    else:
        print(f"attached: program id {info['program_id']}, link id {info['link_id']}")
        print(f"pins: {info['pins']['link']}, " + ", ".join(info["pins"]["maps"].values()))
        for c in info["cgroups"]:
            extra = f", excluding {', '.join(c['exclude'])}" if c["exclude"] else ""
            left = f", {c['left_tcp']} left TCP (MPTCP disabled in their netns)" if c["left_tcp"] else ""
            print(f"  {c['path'] or '(removed cgroup)'}  id {c['id']}  rewrites {c['rewrites']}{left}  "
                  f"families {'+'.join(c['families'])}{extra}")
    for cg_id in info["collected_stale_cgroup_ids"]:
        print(f"collected cgroup id {cg_id}: the cgroup no longer exists")
    for entry in info["persistent"]:
        print(f"restored at boot: {entry['cgroup']}")
    return 0


def handle_run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return rewrite.run(command, rewrite.Options.of(args.family, args.exclude))


def handle_enable(args) -> int:
    result = systemd.enable(args.unit, rewrite.Options.of(args.family, args.exclude), root=args.root, now=args.now)
    print(f"wrote {result.dropin}: {result.unit} is attached at each start")
    for note in result.notes:
        print(f"note: {note}")
    if result.attached_now:
        print(f"attached the running unit's cgroup {result.attached_now.cgroup}")
    elif not args.now:
        print(f"takes effect at the next start of {result.unit} (or use --now)")
    return 0


def handle_disable(args) -> int:
    path, existed, detached = systemd.disable(args.unit, root=args.root, now=args.now)
    print(f"removed {path}" if existed else f"{path} did not exist")
    if detached and detached.was_attached:
        print("detached the running unit's cgroup")
    return 0


def handle_restore(args) -> int:
    attached, skipped = systemd.restore(args.root)
    for relative in attached:
        print(f"attached {relative}")
    for reason in skipped:
        print(f"skipped {reason}")
    return 0
