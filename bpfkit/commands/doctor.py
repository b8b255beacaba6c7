"""`bpfkit doctor [--json]`."""

import json

from rich.console import Console
from rich.table import Table

from bpfkit import doctor

STYLE = {doctor.OK: "green", doctor.MISSING: "red", doctor.WARN: "yellow"}


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="what this kernel and machine can do (found by trying)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    report = doctor.run()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    table = Table(title=f"bpfkit doctor — Linux {report.kernel}" + (" (in the bpfkit VM)" if report.in_vm else ""))
    for column in ("check", "status", "found", "blocks / hint"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        advice = "; ".join(x for x in (f"blocks: {c.blocks}" if c.blocks else "", c.hint) if x)
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail, advice)
    Console().print(table)
    return 0
