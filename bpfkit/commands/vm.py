"""`bpfkit vm kernel [--source DIR] [--flavour F] [--json]` and
`bpfkit vm run [--kernel PATH] [--timeout S] [--mem M] [--cpus N] [--rwdir DIR]... [--json] -- CMD...`."""

import argparse
import json
from pathlib import Path

from bpfkit import kbuild, vm
from bpfkit.errors import UsageError, VmError


def register(subparsers) -> None:
    p = subparsers.add_parser("vm", help="build the VM kernel; run commands inside it (virtme-ng)")
    vm_sub = p.add_subparsers(dest="vm_command", metavar="SUBCOMMAND", required=True)

    k = vm_sub.add_parser("kernel", help="build (or reuse the cached) VM kernel; print its bzImage path",
                          description="Build Debian's linux-source-6.12 + vm/patches/<ver>/ + vm/config/ "
                                      "fragments, or any kernel tree as-is with --source. Cached: a second "
                                      "call with nothing changed returns at once.")
    k.add_argument("--source", type=Path, metavar="DIR",
                   help="a kernel tree to build as-is (e.g. an mptcp_net-next checkout); not patched")
    k.add_argument("--flavour", choices=sorted(kbuild.FLAVOURS), default="default",
                   help="config flavour: debug adds lockdep, DEBUG_NET, oops=panic (default: %(default)s)")
    k.add_argument("--json", action="store_true", help="print kernel.json plus artifact paths")
    k.set_defaults(handler=handle_kernel)

    r = vm_sub.add_parser("run", help="run a command in a VM on the built kernel; exit with its status",
                          description="Exit status: the command's own; 124 timeout, 125 guest kernel panic, "
                                      "126 the guest reported no status.")
    r.add_argument("--kernel", type=Path, metavar="PATH",
                   help="bzImage or a kernels/<key> dir (default: the cached build for the current inputs)")
    r.add_argument("--flavour", choices=sorted(kbuild.FLAVOURS), default="default",
                   help="which cached build to use when --kernel is not given (default: %(default)s)")
    r.add_argument("--timeout", type=float, default=600, metavar="S", help="kill the VM after S seconds (default: 600)")
    r.add_argument("--mem", default="2G", metavar="M", help="guest memory (default: 2G)")
    r.add_argument("--cpus", type=int, default=2, metavar="N", help="guest CPUs (default: 2)")
    r.add_argument("--rwdir", action="append", default=[], type=Path, metavar="DIR",
                   help="extra host dir the guest may write (project dir and bpfkit cache always are)")
    r.add_argument("--json", action="store_true",
                   help="capture the guest output and print one JSON result instead of streaming")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...", help="command to run in the guest")
    r.set_defaults(handler=handle_run)


def handle_kernel(args) -> int:
    # Progress goes to stderr, so it never mixes with the path or JSON on stdout.
    build = kbuild.build_kernel(source=args.source, flavour=args.flavour, progress=True)
    if args.json:
        info = dict(build.meta)
        info.update({"dir": str(build.dir), "bzimage": str(build.bzimage), "vmlinux": str(build.vmlinux),
                     "config": str(build.dir / "config"), "build_log": str(build.dir / "build.log")})
        print(json.dumps(info, indent=2))
    else:
        print(build.bzimage)
    return 0


def handle_run(args) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: bpfkit vm run [OPTIONS] -- CMD [ARGS...]")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.cpus < 1:
        raise UsageError(f"--cpus must be >= 1, got {args.cpus}")
    kernel = args.kernel
    if kernel is None:
        kernel = kbuild.default_kernel(args.flavour).bzimage
    elif not kernel.exists():
        raise UsageError(f"--kernel {kernel}: no such file or directory")
    try:
        result = vm.run(command, kernel=kernel, timeout=args.timeout, mem=args.mem, cpus=args.cpus,
                        rwdirs=args.rwdir, capture=args.json)
    except VmError as exc:
        if args.json:  # keep stdout parseable; the CLI still prints the error on stderr
            print(json.dumps({"exit_code": exc.exit_code, "error": exc.message}, indent=2))
        raise
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return result.exit_code
