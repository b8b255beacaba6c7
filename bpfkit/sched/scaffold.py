"""`bpfkit sched new NAME [--from minimal|minrtt|redundant|blest|ecf] [--dir DIR] [--force]`:
write NAME.bpf.c, a BPF MPTCP scheduler to start from, with a short guide in it.

`minimal` is a template of our own (templates/sched/minimal.bpf.c.j2); any other
origin is a reference scheduler bpf/sched/<origin>.bpf.c copied with its name
and its identifiers renamed. Both go through jinja2 (templates/sched/).

NAME reaches C as an identifier prefix and as the struct_ops `.name`, so it is
validated before anything is rendered: 1-15 characters (MPTCP_SCHED_NAME_MAX is
16 with the NUL), `[a-z0-9_]`, starting with a letter, not a C keyword or a type
the BPF headers define, and not the name of a scheduler that already exists
(the in-kernel "default", the reference schedulers in bpf/sched/, and whatever
this kernel lists in net.mptcp.available_schedulers).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from bpfkit.errors import BpfkitError, UsageError
from bpfkit.paths import BPF_DIR, TEMPLATES_DIR
from bpfkit.sched import registry

TEMPLATE_DIR = TEMPLATES_DIR / "sched"
AVAILABLE_SCHEDULERS = Path("/proc/sys/net/mptcp/available_schedulers")
MINIMAL = "minimal"
REFERENCE_ORIGINS = registry.reference_names()
ORIGINS = (MINIMAL, *REFERENCE_ORIGINS)
NAME_MAX = registry.NAME_MAX

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")

# NAME becomes a C identifier (the ops map is called NAME): it must not be a
# keyword, nor a type or macro-free name every scheduler sees through
# vmlinux.h and the libbpf headers.
_C_RESERVED = frozenset(
    """
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    asm typeof bool true false alignas alignof noreturn static_assert thread_local nullptr
    u8 u16 u32 u64 s8 s16 s32 s64 size_t ssize_t loff_t pid_t uid_t gid_t atomic_t atomic64_t
    ktime_t gfp_t dev_t phys_addr_t uintptr_t intptr_t ptrdiff_t wchar_t
    license bpf_tail_call bpf_loop bpf_for bpf_repeat bpf_for_each msk subflow sk ssk ctx
    """.split()
)


class ScaffoldError(BpfkitError):
    """The reference scheduler cannot be turned into a template."""


# ---------------------------------------------------------------- names


_OPS_NAME_RE = re.compile(r'\.name\s*=\s*"([^"\\]*)"')


def registered_names(source_text: str) -> list[str]:
    """The `.name = "..."` values of a scheduler source (its struct_ops names)."""
    return _OPS_NAME_RE.findall(_strip_comments(source_text))


def existing_scheduler_names(available_file: Path = AVAILABLE_SCHEDULERS) -> set[str]:
    """Every name a new scheduler must not take."""
    names = {registry.DEFAULT, *registry.reference_names()}  # bpf/sched/X.bpf.c registers X
    try:
        names.update(available_file.read_text().split())
    except OSError:
        pass  # no MPTCP here, or not readable: the other sources still apply
    return names


def validate_name(name: str, existing: set[str] | None = None) -> str:
    """NAME as given, or UsageError saying what is wrong with it."""
    if not (isinstance(name, str) and 0 < len(name) <= NAME_MAX):
        registry.check(name)  # raises: empty, too long or not a string
    # stricter than the registry's rule: the name also becomes the C identifier of the ops map
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"scheduler name {name!r}: use lower-case letters, digits and '_', starting with a letter",
                         hint="it becomes a C identifier and the net.mptcp.scheduler value, e.g. my_sched")
    taken = existing_scheduler_names() if existing is None else existing
    if name in taken:
        raise UsageError(f"scheduler name {name!r} is taken by an existing scheduler",
                         hint=f"taken: {', '.join(sorted(taken))}")
    if name in _C_RESERVED:
        raise UsageError(f"scheduler name {name!r} is a C keyword or a name the BPF headers already use")
    return name


# ---------------------------------------------------------------- deriving from a reference


# C source split into the parts renaming must tell apart. Comments and string /
# character literals are kept verbatim; identifiers are candidates for renaming.
_C_TOKEN = re.compile(
    r"""(?P<comment>//[^\n]*|/\*.*?\*/)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<char>'(?:[^'\\\n]|\\.)*')
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<member>->|\.)
      | (?P<other>.)""",
    re.S | re.X,
)


def _strip_comments(text: str) -> str:
    return "".join(m.group() for m in _C_TOKEN.finditer(text) if m.lastgroup != "comment")


def rename_scheduler(text: str, old_names: set[str], new: str) -> str:
    """`text` with the scheduler renamed: identifiers equal to an old name or
    starting with `old_` get `new` instead of the old prefix, and the string
    literal "old" (the struct_ops .name) becomes "new". Comments, other strings
    and struct members (after `.` or `->`, e.g. subflow->redundant_seq) stay."""
    prefixes = sorted(old_names, key=len, reverse=True)  # longest first: "ecf2" before "ecf"
    out: list[str] = []
    after_member = False
    for m in _C_TOKEN.finditer(text):
        kind, token = m.lastgroup, m.group()
        if kind == "ident" and not after_member:
            for old in prefixes:
                if token == old or token.startswith(old + "_"):
                    token = new + token[len(old):]
                    break
        elif kind == "string" and token[1:-1] in old_names:
            token = f'"{new}"'
        out.append(token)
        if kind != "comment" and not token.isspace():
            after_member = kind == "member"
    return "".join(out)


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


def _inline_sibling_headers(text: str, directory: Path) -> str:
    """A reference may include headers next to it in bpf/sched/; the copy is
    written elsewhere, so paste them in (bpf/include/ is always on the path)."""

    def paste(m: re.Match) -> str:
        header = directory / m.group(1)
        if not header.is_file() or (BPF_DIR / "include" / m.group(1)).is_file():
            return m.group()
        return f"/* --- {m.group(1)} (from bpf/sched/) --- */\n{header.read_text().rstrip()}\n/* --- end of {m.group(1)} --- */"

    return _LOCAL_INCLUDE.sub(paste, text)


def derive_body(origin: str, new: str) -> str:
    """The reference scheduler bpf/sched/<origin>.bpf.c renamed to `new`."""
    references = registry.references()
    if origin not in references:
        raise ScaffoldError(f"reference scheduler bpf/sched/{origin}.bpf.c is not there",
                            hint=f"available: {', '.join([MINIMAL, *references])}")
    path = references[origin].source
    text = registry.strip_metadata(path.read_text())  # the copy is the user's, not a reference scheduler
    ops_names = registered_names(text)
    if len(set(ops_names)) != 1:
        raise ScaffoldError(f"{path}: expected one struct_ops .name, found {ops_names or 'none'}")
    text = _inline_sibling_headers(text, path.parent)
    text = re.sub(r"\A\s*// SPDX-License-Identifier:[^\n]*\n", "", text)  # the template has its own
    return rename_scheduler(text, {origin, ops_names[0]}, new).strip("\n") + "\n"


# ---------------------------------------------------------------- rendering and writing


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(name: str, origin: str = MINIMAL, *, existing: set[str] | None = None) -> str:
    """The C source of scheduler `name` (validated here, whoever calls)."""
    validate_name(name, existing)
    if origin not in ORIGINS:
        raise UsageError(f"--from {origin!r}: choose one of {', '.join(ORIGINS)}")
    context = {"name": name, "file_name": f"{name}.bpf.c", "origin": origin}
    env = _environment()
    if origin == MINIMAL:
        return env.get_template("minimal.bpf.c.j2").render(**context)
    return env.get_template("derived.bpf.c.j2").render(body=derive_body(origin, name), **context)


def scaffold(name: str, origin: str = MINIMAL, directory: Path = Path("."), *, force: bool = False,
             existing: set[str] | None = None) -> Path:
    """Write DIR/NAME.bpf.c; refuses to replace a file unless force."""
    text = render(name, origin, existing=existing)  # every input error surfaces before touching the disk
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir {directory}: not a directory")
    target = directory / f"{name}.bpf.c"
    if target.exists() and not force:
        raise UsageError(f"{target} exists", hint="pass --force to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------- CLI (`bpfkit sched new`)


def add_new_arguments(parser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help=f"scheduler name: 1-{NAME_MAX} of [a-z0-9_], starting with a letter; becomes the "
                             "net.mptcp.scheduler value and the C identifier prefix")
    parser.add_argument("--from", dest="origin", choices=ORIGINS, default=MINIMAL,
                        help="start from our minimal template (default) or a copy of a reference scheduler in bpf/sched/")
    parser.add_argument("--dir", type=Path, default=Path("."), metavar="DIR",
                        help="where to write NAME.bpf.c (default: the current directory; created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing NAME.bpf.c")


def run_new(args) -> int:
    target = scaffold(args.name, args.origin, args.dir, force=args.force)
    shown = os.path.relpath(target) if not os.path.relpath(target).startswith("..") else str(target)
    print(f"wrote {shown} (scheduler {args.name!r}, from {args.origin})")
    print(f"next: bpfkit sched load {shown} && bpfkit sched use {args.name}")
    print(f"      bpfkit lab run scenarios/wifi-lte.toml --schedulers default,{os.path.join('.', shown)}"
          "   # one command: built here, measured in the VM")
    return 0
