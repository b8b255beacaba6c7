"""`bpfkit subflow apply|check|show|clear`: per-subflow socket options from a policy file."""

import json
import sys

from bpfkit.subflow import sockops
from bpfkit.subflow import policy as sp


def register(subparsers) -> None:
    p = subparsers.add_parser("subflow", help="per-subflow socket options (mark, CC, pacing, ...) from a policy",
                              description="Apply a policy of per-subflow socket options to the MPTCP sockets of a "
                                          "cgroup (format: docs/subflow-policy.md).")
    sub = p.add_subparsers(dest="subflow_command", metavar="ACTION", required=True)

    a = sub.add_parser("apply", help="attach (first time) or atomically replace the policy of a cgroup")
    a.add_argument("policy", help="policy file (TOML)")
    a.add_argument("--cgroup", required=True, help="cgroup v2 directory (absolute, or relative to the v2 root)")
    a.add_argument("--netns", help="resolve `interface` matches in this network namespace (/run/netns/NAME) "
                                   "instead of the current one")
    a.set_defaults(handler=handle_apply)

    c = sub.add_parser("check", help="validate a policy and print its rules; changes nothing")
    c.add_argument("policy", help="policy file (TOML)")
    c.add_argument("--netns", help="resolve `interface` matches in this network namespace")
    c.set_defaults(handler=handle_check)

    s = sub.add_parser("show", help="every cgroup with a policy: its rules and counters")
    s.add_argument("--cgroup", help="only this cgroup")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=handle_show)

    x = sub.add_parser("clear", help="detach a cgroup's policy and remove its pins")
    target = x.add_mutually_exclusive_group(required=True)
    target.add_argument("--cgroup", help="cgroup v2 directory")
    target.add_argument("--all", action="store_true", help="every subflow policy, also of removed cgroups")
    x.set_defaults(handler=handle_clear)


def _warn(warnings) -> None:
    for w in warnings:
        print(f"bpfkit: warning: {w}", file=sys.stderr)


def handle_apply(args) -> int:
    result = sockops.apply(args.policy, args.cgroup, netns=args.netns)
    _warn(result.warnings)
    verb = "attached" if result.attached else "replaced the rules of"
    print(f"{verb} subflow policy on {result.cgroup} (cgroup id {result.cgroup_id}): {result.rules} rule(s), "
          f"link {result.link_id}, program {result.program_id}")
    return 0


def handle_check(args) -> int:
    resolved = sp.resolve(sp.load_policy(args.policy), netns=args.netns)
    _warn(resolved.warnings)
    print(f"{args.policy}: {len(resolved.rules)} rule(s), valid")
    for r in resolved.rules:
        d = r.to_dict()
        print(f"  {sp.rule_label(d['index'], d.get('name'))}: {sp.describe_match(d['match'])} -> {sp.describe_actions(d['set'])}")
        if "resolved_local" in d:
            print(f"    interface addresses now: {', '.join(d['resolved_local']) or 'none'}")
    return 0


def handle_show(args) -> int:
    policies = sockops.show(args.cgroup)
    if args.json:
        print(json.dumps({"policies": policies}, indent=2))
    else:
        print(sockops.format_policies(policies))
    return 0


def handle_clear(args) -> int:
    if args.all:
        cleared = sockops.clear_all()
        print(f"cleared {len(cleared)} subflow polic{'y' if len(cleared) == 1 else 'ies'}")
        return 0
    if sockops.clear(args.cgroup):
        print(f"cleared the subflow policy of {args.cgroup}")
    else:  # already in the state asked for: not an error, so scripts can clear blindly
        print(f"no subflow policy on {args.cgroup}: nothing to clear")
    return 0
