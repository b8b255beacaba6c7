"""The one rule for an MPTCP scheduler's name, shared by `sched` (load, use, pin
directories), the lab (scenario files, --schedulers) and the scaffold (which adds
its own C-identifier rule on top).  Pure: imports nothing of BPF or of the kernel.

The kernel stores the name in a char[MPTCP_SCHED_NAME_MAX] with MPTCP_SCHED_NAME_MAX
= 16 including the NUL (include/net/mptcp.h), lists the registered names
space-separated in net.mptcp.available_schedulers, and bpfkit uses the name as a
directory under its pin root: so 1-15 characters, no white space, no '/', and not
starting with '.' (no '.', '..') or '-' (never read as an option).

It also names the reference schedulers, once: the files in bpf/sched/ (each file
X.bpf.c registers the scheduler X, checked by tests/unit/test_sched_name.py), so a
fifth one is a new file there, not an edit of every list."""

from __future__ import annotations

import re

from .errors import UsageError
from .paths import BPF_DIR

NAME_MAX = 15  # MPTCP_SCHED_NAME_MAX (16) counts the terminating NUL
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RULE = f"1-{NAME_MAX} characters of letters, digits, '_', '-' or '.', not starting with '-' or '.'"


def check(name: object, where: str = "") -> str:
    """NAME if it is a valid scheduler name, else one UsageError that says why
    (WHERE, e.g. "x.toml: schedulers[1]", says where the name came from)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str):
        raise UsageError(f"{prefix}invalid scheduler name {name!r}: not a string", hint=f"a scheduler name is {RULE}")
    if not name:
        raise UsageError(f"{prefix}invalid scheduler name: empty", hint=f"a scheduler name is {RULE}")
    if len(name) > NAME_MAX:
        raise UsageError(f"{prefix}invalid scheduler name {name!r}: {len(name)} characters, at most {NAME_MAX} "
                         "(the kernel's MPTCP_SCHED_NAME_MAX is 16 including the NUL)", hint=f"a scheduler name is {RULE}")
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"{prefix}invalid scheduler name {name!r}: use letters, digits, '_', '-', '.' "
                         "(not starting with '-' or '.')", hint=f"a scheduler name is {RULE}")
    return name


def reference_names() -> tuple[str, ...]:
    """The reference schedulers shipped in bpf/sched/, in name order."""
    return tuple(sorted(p.name.removesuffix(".bpf.c") for p in (BPF_DIR / "sched").glob("*.bpf.c")))
