"""`bpfkit build FILE.bpf.c... [--kernel running|VMLINUX]`: compile BPF C."""

from pathlib import Path

from bpfkit import build
from bpfkit.paths import BPF_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("build", help="compile BPF C (CO-RE) against a kernel's BTF; cached by content")
    p.add_argument("sources", nargs="*", type=Path, help="*.bpf.c files (default: every bpf/**/*.bpf.c)")
    p.add_argument("--kernel", default="running",
                   help="'running' (this kernel's BTF) or a vmlinux file / kernel build dir (e.g. the VM kernel)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    sources = args.sources or sorted(BPF_DIR.rglob("*.bpf.c"))
    for source in sources:
        built = build.compile_bpf(source, kernel=args.kernel)
        print(f"{source}: {built.path}{' (cached)' if built.cached else ''}")
    return 0
