"""`bpfkit build FILE.bpf.c... [--kernel running|VMLINUX]`: compile BPF C."""

import sys
from pathlib import Path

from bpfkit import build
from bpfkit.errors import BuildError
from bpfkit.paths import BPF_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("build", help="compile BPF C (CO-RE) against a kernel's BTF; cached by content")
    p.add_argument("sources", nargs="*", type=Path, help="*.bpf.c files (default: every bpf/**/*.bpf.c)")
    p.add_argument("--kernel", default="running",
                   help="'running' (this kernel's BTF), 'vm' or 'vm-debug' (the cached bpfkit VM kernel of that "
                        "flavour, so the guest finds the objects prebuilt), or a vmlinux file / kernel build dir")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    sources = args.sources or sorted(BPF_DIR.rglob("*.bpf.c"))
    kernel = args.kernel
    if kernel in ("vm", "vm-debug"):
        from bpfkit import kbuild

        kernel = kbuild.default_kernel("debug" if kernel == "vm-debug" else "default").vmlinux
    failed = 0
    for source in sources:
        try:
            built = build.compile_bpf(source, kernel=kernel)
        except BuildError as exc:  # report every broken file, not just the first
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(f"{source}: {built.path}{' (cached)' if built.cached else ''}")
    return 1 if failed else 0
