"""Where things live: the project tree, the cache, bpffs pins."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = PROJECT_ROOT / "bpf"
VM_DIR = PROJECT_ROOT / "vm"
# An installed wheel has no checkout around it: setup.py puts the templates and the ops
# pillars' prebuilt objects (loader/build.py: SHIPPED_PROGRAMS) into the package instead.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
SHIPPED_BPF_DIR = PACKAGE_DATA / "bpf"
TEMPLATES_DIR = PROJECT_ROOT / "templates" if (PROJECT_ROOT / "templates").is_dir() else PACKAGE_DATA / "templates"

BPFFS_ROOT = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS_ROOT / "bpfkit"


def cache_dir() -> Path:
    """~/.cache/bpfkit, or $BPFKIT_CACHE. Created on first use."""
    base = os.environ.get("BPFKIT_CACHE")
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "bpfkit"
    path.mkdir(parents=True, exist_ok=True)
    return path
