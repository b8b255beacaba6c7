"""`bpfkit build FILE.bpf.c... [--kernel running|VMLINUX] [-I DIR] [--cflags FLAGS]`: compile BPF C."""

import shlex
import sys
from pathlib import Path

from bpfkit.loader import build
from bpfkit.errors import BuildError, UsageError
from bpfkit.paths import BPF_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("build", help="compile BPF C (CO-RE) against a kernel's BTF; cached by content")
    p.add_argument("sources", nargs="*", type=Path, help="*.bpf.c files (default: every bpf/**/*.bpf.c)")
    p.add_argument("--kernel", default="running",
                   help="'running' (this kernel's BTF), 'vm' or 'vm-debug' (the cached bpfkit VM kernel of that "
                        "flavour, so the guest finds the objects prebuilt), or a vmlinux file / kernel build dir")
    add_compile_options(p)
    p.set_defaults(handler=handle)


def add_compile_options(p) -> None:
    """-I and --cflags, shared by every command that compiles a user's BPF C."""
    p.add_argument("-I", "--include", dest="include_dirs", metavar="DIR", action="append", type=Path, default=[],
                   help="also search DIR for headers (before bpfkit's own; repeatable)")
    p.add_argument("--cflags", default="", metavar="FLAGS",
                   help="extra clang flags, split like a shell would, e.g. --cflags='-DNDEBUG -Wno-unused'")


def compile_options(args) -> dict:
    try:
        cflags = shlex.split(args.cflags)
    except ValueError as exc:
        raise UsageError(f"--cflags {args.cflags!r}: {exc}") from None
    return {"include_dirs": args.include_dirs, "cflags": build.validate_cflags(cflags)}


def handle(args) -> int:
    sources = args.sources or sorted(BPF_DIR.rglob("*.bpf.c"))
    kernel = args.kernel
    if kernel in ("vm", "vm-debug"):
        from bpfkit.kernel import kbuild

        kernel = kbuild.default_kernel("debug" if kernel == "vm-debug" else "default").vmlinux
    options = compile_options(args)
    failed = 0
    for source in sources:
        try:
            built = build.compile_bpf(source, kernel=kernel, **options)
        except BuildError as exc:  # report every broken file, not just the first
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(f"{source}: {built.path}{' (cached)' if built.cached else ''}")
    return 1 if failed else 0
