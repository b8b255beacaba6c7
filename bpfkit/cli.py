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
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpfkit", description="MPTCP + eBPF development kit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BpfkitError as exc:
        print(f"bpfkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bpfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
