"""The schedulers bpfkit knows by name: the one name rule, and the reference
schedulers shipped in bpf/sched/ with their metadata. Pure: imports nothing of
BPF or of the kernel (the lab checks names with it).

The name rule is shared by `sched` (load, use, pin directories), the lab
(scenario files, --schedulers) and the scaffold (which adds its own
C-identifier rule on top). The kernel stores the name in a
char[MPTCP_SCHED_NAME_MAX] with MPTCP_SCHED_NAME_MAX = 16 including the NUL
(include/net/mptcp.h), lists the registered names space-separated in
net.mptcp.available_schedulers, and bpfkit uses the name as a directory under
its pin root: so 1-15 characters, no white space, no '/', and not starting with
'.' (no '.', '..') or '-' (never read as an option).

A reference scheduler is one file, bpf/sched/X.bpf.c, that registers the
scheduler X (tests/unit/test_sched_registry.py checks it) and carries its
metadata in a comment block of TOML lines:

    /* bpfkit:
     * title = "lowest RTT first"
     * paper = "Paasch et al., ACM SIGCOMM CSWS 2014"
     * colour = "#1f77b4"
     * quick_bench = ["wifi-lte", "wifi-lte-256k"]
     */

`sched load X`, `sched list`, the bench (its plan, the quick plan's comparisons,
plot colours), the scaffold (`sched new --from X`) and the VM tests read
`references()`; a new reference scheduler is that one file."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bpfkit import paths
from bpfkit.errors import UsageError

NAME_MAX = 15  # MPTCP_SCHED_NAME_MAX (16) counts the terminating NUL
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RULE = f"1-{NAME_MAX} characters of letters, digits, '_', '-' or '.', not starting with '-' or '.'"

DEFAULT = "default"  # the in-kernel scheduler (net/mptcp/sched.c): always registered
DEFAULT_COLOUR = "#7f7f7f"


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


# ---------------------------------------------------------------- reference schedulers


@dataclass(frozen=True)
class Reference:
    """A reference scheduler: bpf/sched/<name>.bpf.c and its metadata block."""

    name: str
    source: Path
    title: str  # what it does, in a few words
    colour: str  # its colour in the bench's plots
    paper: str = ""  # where the algorithm comes from
    quick_bench: tuple[str, ...] = ()  # scenarios of the quick bench that compare it with default


METADATA_BLOCK = re.compile(r"/\*\s*bpfkit:[ \t]*\n(?P<body>.*?)\*/\n?", re.S)
_KEYS = {"title": str, "colour": str, "paper": str, "quick_bench": list}
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def sched_dir() -> Path:
    return paths.BPF_DIR / "sched"


def metadata(source: Path) -> dict:
    """The metadata block of a reference scheduler source, checked."""
    text = source.read_text()
    block = METADATA_BLOCK.search(text)
    if not block:
        raise UsageError(f"{source}: no `/* bpfkit:` metadata block",
                         hint="a reference scheduler carries title, colour (and paper, quick_bench) as TOML "
                              "lines in a `/* bpfkit:` comment (bpfkit/sched/registry.py)")
    lines = [re.sub(r"^\s*\*[ \t]?", "", line) for line in block["body"].splitlines()]
    try:
        data = tomllib.loads("\n".join(lines))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: metadata block: not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in _KEYS:
            raise UsageError(f"{source}: metadata block: unknown key {key!r} (known: {', '.join(_KEYS)})")
        if not isinstance(value, _KEYS[key]) or (key == "quick_bench" and not all(isinstance(v, str) for v in value)):
            raise UsageError(f"{source}: metadata block: {key} must be a {_KEYS[key].__name__}"
                             + (" of strings" if key == "quick_bench" else ""))
    for key in ("title", "colour"):
        if key not in data:
            raise UsageError(f"{source}: metadata block: {key} is missing")
    if not _COLOUR.fullmatch(data["colour"]):
        raise UsageError(f"{source}: metadata block: colour {data['colour']!r} is not #rrggbb")
    return data


def strip_metadata(text: str) -> str:
    """A reference scheduler's source without its metadata block (a scaffold's copy
    is not a reference scheduler)."""
    return METADATA_BLOCK.sub("", text, count=1)


def references() -> dict[str, Reference]:
    """The reference schedulers in bpf/sched/, by name, in name order."""
    out = {}
    for source in sorted(sched_dir().glob("*.bpf.c")):
        name = source.name.removesuffix(".bpf.c")
        data = metadata(source)
        out[name] = Reference(name=check(name, where=str(source)), source=source, title=data["title"],
                              colour=data["colour"], paper=data.get("paper", ""),
                              quick_bench=tuple(data.get("quick_bench", ())))
    return out


def reference_names() -> tuple[str, ...]:
    """The reference schedulers shipped in bpf/sched/, in name order."""
    return tuple(references())


def colour(name: str) -> str | None:
    """The plot colour of a scheduler: its metadata's, grey for default, None for
    others (a plot gives those its own)."""
    if name == DEFAULT:
        return DEFAULT_COLOUR
    ref = references().get(name)
    return ref.colour if ref else None
