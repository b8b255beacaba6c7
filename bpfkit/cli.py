"""`bpfkit` command line. Each command group lives in its own module under
bpfkit/commands/ and exposes `register(subparsers)`; handlers receive the parsed
args and return an exit code. Any BpfkitError ends the run with one message."""

import argparse
import importlib
import sys

from bpfkit.errors import BpfkitError

# Command modules, in the order `bpfkit --help` lists them.
COMMAND_MODULES = [
    "bpfkit.commands.doctor",
    "bpfkit.commands.build",
    "bpfkit.commands.vm",
    "bpfkit.commands.subflow",
    "bpfkit.commands.mptcpize",
    "bpfkit.commands.lab",
    "bpfkit.commands.sched",
    "bpfkit.commands.bench",
    "bpfkit.commands.top",
    "bpfkit.commands.ci",
]


def _modules_for(argv: list[str] | None) -> list[str]:
    """Only the module of the command being run, when argv names one.

    Every module imports what its command needs (pyroute2, rich, the lab);
    importing all of them costs ~0.5 s on the host and 15-40 s in a
    TCG-emulated guest, per invocation. Each module is named after its
    command, so the first argument picks it; anything else (no command,
    --help, a typo) gets the full parser and its full message."""
    if argv and not argv[0].startswith("-"):
        wanted = f"bpfkit.commands.{argv[0]}"
        if wanted in COMMAND_MODULES:
            return [wanted]
    return COMMAND_MODULES


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (only its command's module), or for every command."""
    parser = argparse.ArgumentParser(prog="bpfkit", description="MPTCP + eBPF development kit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if argv is None else _modules_for(argv):
        importlib.import_module(name).register(subparsers)
    return parser


def printable(text: str) -> str:
    """Text from files, names and the kernel, safe for a terminal: control characters other
    than newline and tab (a name with an escape sequence, say) are shown escaped."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BpfkitError as exc:
        print(f"bpfkit: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        # what a non-root user reaches first: /sys/fs/bpf, /proc/sys/net, a cgroup, a pin
        where = f" ({printable(str(exc.filename))})" if exc.filename else ""
        print(f"bpfkit: error: `bpfkit {args.command}` needs root: permission denied{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bpfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
