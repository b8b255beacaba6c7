"""BPF MPTCP packet schedulers: list, load (register + pin), use, unload, show.

A scheduler is a `struct mptcp_sched_ops` struct_ops map in a BPF object (the
bpfkit VM kernel series, vm/patches/6.12, or mptcp_net-next's export branch).
Registering it puts its `.name` in net.mptcp.available_schedulers; writing that
name to the per-netns sysctl net.mptcp.scheduler makes new MPTCP sockets of
that netns use it.

`load` registers through the map's bpf_link (`.struct_ops.link`) and pins the
link at

    /sys/fs/bpf/bpfkit/sched/<name>/link

so the scheduler stays registered after the command exits.  What bpffs cannot
hold (source path, object hash, program ids) goes to a small JSON record in
/run/bpfkit/sched/<name>.json; the pin is the source of truth, the record only
describes it.  `unload` detaches the link (the kernel unregisters the name at
once), removes the pin and the record, and waits until the name has left
available_schedulers.

Lifetime (vm/patches/6.12/0002): every MPTCP socket holds a reference on its
scheduler's struct_ops map, so connections opened before an unload keep using
the unloaded scheduler until they close; the map and its programs are freed
after the last one closed (and an RCU grace period).  New sockets in a netns
whose sysctl still names the unloaded scheduler get the in-kernel "default".
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bpfkit import fs
from bpfkit import netns as namespaces  # `netns` is the parameter naming one
from bpfkit.errors import AttachError, BpfkitError, KernelUnsupported, UnsafePath, UsageError
from bpfkit.loader import pins
from bpfkit.paths import PIN_ROOT, cache_dir
from bpfkit.sched import registry
from bpfkit.sched.registry import DEFAULT

PIN_DIR = PIN_ROOT / "sched"
RUN_DIR = Path(os.environ.get("BPFKIT_RUN_DIR", "/run/bpfkit")) / "sched"  # records; see _run_dir()
SYSCTL_DIR = Path("/proc/sys/net/mptcp")
CURRENT_NETNS = "(current)"
UNREGISTER_TIMEOUT = 30.0
REDUNDANT_FLAG = 0x1  # MPTCP_SCHED_FLAG_REDUNDANT (vm/patches/6.12/0004)



# ---------------------------------------------------------------- pure logic


def validate_name(name: str) -> str:
    """A scheduler name as net.mptcp.scheduler and a pin directory accept it."""
    return registry.check(name)


@dataclass(frozen=True)
class OpsMap:
    """One `struct mptcp_sched_ops` map of a BPF object (read from its BTF and initial values)."""

    var: str  # C variable = BPF map name
    name: str  # .name: what net.mptcp.scheduler takes
    link: bool  # SEC(".struct_ops.link") (registered through a bpf_link)
    redundant: bool  # .flags carries MPTCP_SCHED_FLAG_REDUNDANT


def pick_ops_map(source: Path, maps: list[OpsMap], ops: str | None = None) -> OpsMap:
    """The map `load` registers: the one named by `ops` (C variable or .name),
    else the only `.struct_ops.link` map of the file."""
    if not maps:
        raise UsageError(f"{source}: no `struct mptcp_sched_ops` map in SEC(\".struct_ops.link\")",
                         hint="a scheduler declares SEC(\".struct_ops.link\") struct mptcp_sched_ops NAME = "
                              "{ .get_send = ..., .name = \"NAME\" };")
    if ops is not None:
        chosen = [m for m in maps if ops in (m.var, m.name)]
        if not chosen:
            raise UsageError(f"{source}: no mptcp_sched_ops map {ops!r} (has: {', '.join(m.var for m in maps)})")
        pick = chosen[0]
    else:
        linked = [m for m in maps if m.link]
        if len(linked) != 1:
            what = "no" if not linked else "several"
            raise UsageError(f"{source}: {what} SEC(\".struct_ops.link\") mptcp_sched_ops maps "
                             f"({', '.join(m.var for m in maps)}); choose one with --ops MAP")
        pick = linked[0]
    if not pick.link:
        raise UsageError(f"{source}: map {pick.var} is in SEC(\".struct_ops\"); bpfkit registers schedulers "
                         f"through a pinned bpf_link, which needs SEC(\".struct_ops.link\")")
    if not pick.name:
        raise UsageError(f"{source}: map {pick.var} has no .name (the value for net.mptcp.scheduler)")
    validate_name(pick.name)
    return pick


def builtin_sources() -> dict[str, Path]:
    """Reference schedulers shipped in bpf/sched/, by name (bpf/sched/X.bpf.c registers X)."""
    return {name: ref.source for name, ref in registry.references().items()}


# Kfuncs whose argument type changed between generations of mptcp_net-next's export branch
# (the mid-2025 one, still in OpenMPTCProuter's 6.12 kernels, passed the subflow socket).
_KFUNC_API_CHANGES = {
    ("bpf_sk_stream_memory_free", "mptcp_subflow_context", "sock"):
        "this kernel (bpfkit's series, like the newest export branch) takes the subflow context: "
        "call bpf_sk_stream_memory_free(subflow), not bpf_sk_stream_memory_free(ssk), and declare it "
        "`extern bool bpf_sk_stream_memory_free(const struct mptcp_subflow_context *subflow) __ksym;`",
}


def scheduler_verifier_hint(log: str) -> str | None:
    """What a scheduler written for another export generation should write instead."""
    from bpfkit.loader import libbpf

    if libbpf.UNTRUSTED_ARG.search(log):
        return ("in a sleepable get_retrans (SEC(\"struct_ops.s\")) subflow->tcp_sock is an untrusted pointer "
                "that kfuncs and helpers refuse: take the socket from bpf_mptcp_subflow_tcp_sock(subflow)")
    m = libbpf.KFUNC_ARG_TYPE.search(log)
    return _KFUNC_API_CHANGES.get((m["fn"], m["want"], m["got"])) if m else None


def is_object(spec: str | Path) -> bool:
    """A prebuilt BPF object (clang output, e.g. from another project's build)."""
    return str(spec).endswith(".o")


def ops_maps_of_object(path: Path) -> list[OpsMap]:
    """The mptcp_sched_ops maps of a prebuilt object, read from its BTF and initial values."""
    from bpfkit.loader import libbpf

    with libbpf.BpfObject.open(path) as obj:
        specs = obj.struct_ops_specs()
    return [OpsMap(var=sp.var, name=sp.string("name"), link=sp.link,
                   redundant=bool(sp.u32("flags") & REDUNDANT_FLAG))
            for sp in specs if sp.type_name == "mptcp_sched_ops"]


def resolve_source(spec: str) -> Path:
    """NAME of a built-in scheduler, or a path to a .bpf.c file or a prebuilt .o."""
    if spec.endswith((".c", ".o")) or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"{spec}: no such {'BPF object' if is_object(spec) else 'BPF C'} file")
        return path.resolve()
    builtin = builtin_sources()
    if spec in builtin:
        return builtin[spec]
    validate_name(spec)
    raise UsageError(f"no built-in scheduler named {spec!r} (built-in: {', '.join(sorted(builtin)) or 'none'})",
                     hint="pass a path to load your own: bpfkit sched load ./my_sched.bpf.c")


def build_objects(entries: list[str], vmlinux: Path | None, option: str,
                  taken: tuple[str, ...] = ()) -> dict[str, Path]:
    """Scheduler files (.bpf.c or a prebuilt .o) named on a command line -> {the name each
    registers: its object}, compiled for the kernel of VMLINUX (None: the running one).
    A VM job is built on the host (clang under TCG is slow; the guest finds the object in the
    shared cache). A name that is `default`, in TAKEN or given twice is refused, naming OPTION."""
    from bpfkit.loader import build

    objects: dict[str, Path] = {}
    for entry in entries:
        source = resolve_source(entry)
        obj = source if is_object(source) else build.compile_bpf(source, kernel=vmlinux).path
        name = pick_ops_map(source, ops_maps_of_object(obj)).name
        if name == DEFAULT:
            raise UsageError(f"{option}: {entry} registers {name!r}, the in-kernel scheduler's name")
        if name in objects or name in taken:
            raise UsageError(f"{option}: {entry} registers {name!r}, as another scheduler of this run does")
        objects[name] = obj
    return objects


# ---------------------------------------------------------------- kernel state


def _read_sysctl(name: str) -> str:
    try:
        return (SYSCTL_DIR / name).read_text().strip()
    except FileNotFoundError:
        raise KernelUnsupported(f"this kernel has no net.mptcp.{name}",
                                hint="BPF schedulers need the bpfkit VM kernel (bpfkit vm run -- ...) or "
                                     "mptcp_net-next's export branch") from None


def available() -> list[str]:
    """net.mptcp.available_schedulers (global: the same list in every netns)."""
    return _read_sysctl("available_schedulers").split()


def require_struct_ops_support() -> None:
    """Refuse, with the words `bpfkit doctor` shows, a kernel that cannot register
    BPF MPTCP schedulers."""
    from bpfkit import features

    available()  # raises KernelUnsupported without MPTCP scheduler sysctls
    check = features.check_sched_struct_ops()
    if check.status != features.OK:
        raise KernelUnsupported(f"this kernel cannot register BPF MPTCP schedulers: {check.detail}", hint=check.hint)


def selected(netns: str | None = None) -> str:
    """net.mptcp.scheduler of a netns (None: the current one)."""
    return namespaces.call_in(netns, lambda: _read_sysctl("scheduler"))


def selections() -> dict[str, str]:
    """Scheduler selected in the current netns and in every named netns."""
    out = {CURRENT_NETNS: selected()}
    for ns in namespaces.names():
        if namespaces.is_current(ns):
            continue
        try:
            out[ns] = selected(ns)
        except BpfkitError as exc:
            out[ns] = f"? ({exc.message})"
    return out


def set_selected(name: str, netns: str | None = None) -> None:
    """Write net.mptcp.scheduler (the kernel refuses unregistered names)."""
    def write() -> None:
        try:
            (SYSCTL_DIR / "scheduler").write_text(name)
        except FileNotFoundError:
            _read_sysctl("scheduler")  # raises KernelUnsupported
            # The sysctl exists: the kernel's proc handler says ENOENT for an unregistered name.
            raise UsageError(f"scheduler {name!r} is not registered") from None
        except PermissionError:
            raise BpfkitError("setting net.mptcp.scheduler needs root") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise UsageError(f"scheduler {name!r} is not registered") from None
            raise BpfkitError(f"setting net.mptcp.scheduler={name}: {exc.strerror}") from None

    namespaces.call_in(netns, write)


# ---------------------------------------------------------------- bpfkit's registrations


@dataclass
class Record:
    """What bpfkit knows about a scheduler it registered."""

    name: str
    source: str
    object: str
    object_sha256: str
    ops_map: str
    flags: list[str] = field(default_factory=list)
    program_ids: dict[str, int] = field(default_factory=dict)
    loaded_at: str = ""

    @property
    def pin(self) -> Path:
        return link_pin(self.name)


def pin_dir(name: str) -> pins.PinDir:
    """PIN_ROOT/sched/<name>: a scheduler's registration is its struct_ops link alone."""
    return pins.PinDir(PIN_DIR / name)


def link_pin(name: str) -> Path:
    return pin_dir(name).link_pin


def _run_dir() -> Path:
    """Where records live: /run (gone at reboot, like the pins), or the bpfkit
    cache where /run is not writable (e.g. a read-only guest root); a record
    without its pin is ignored and overwritten, so outliving a reboot is harmless."""
    for d in (RUN_DIR, cache_dir() / "sched-records"):
        try:
            if d == RUN_DIR:  # /run/bpfkit is ours as well: whoever owns it could swap sched/
                fs.private_dir(d.parent)
            fs.private_dir(d)
            if os.access(d, os.W_OK):
                return d
        except UnsafePath:
            raise
        except OSError:
            continue
    raise BpfkitError(f"no writable directory for scheduler records ({RUN_DIR})")


def _record_path(name: str) -> Path:
    return _run_dir() / f"{name}.json"


def _read_record(name: str) -> Record | None:
    try:
        data = json.loads(_record_path(name).read_text())
        return Record(**data)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _write_record(rec: Record) -> None:
    fs.atomic_write(_record_path(rec.name), json.dumps(asdict(rec), indent=2), 0o600)


def pinned_names() -> list[str]:
    """Schedulers bpfkit registered (a pinned link exists)."""
    try:
        return sorted(d.name for d in PIN_DIR.iterdir() if (d / "link").exists())
    except (FileNotFoundError, PermissionError):
        return []


@contextlib.contextmanager
def _lock():
    """One bpfkit sched load/unload/use at a time (pins, records and selections change
    together): pins.locked(), the lock of all of bpfkit's pinned state."""
    with pins.locked():
        yield


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class LoadResult:
    record: Record
    already_loaded: bool
    link_id: int | None = None
    map_id: int | None = None


def _link_ids(name: str) -> tuple[int | None, int | None]:
    from bpfkit.loader import libbpf

    try:
        link = libbpf.Link.from_pin(link_pin(name))
    except BpfkitError:
        return None, None
    try:
        info = link.info()
        return info.get("id"), info.get("map_id")
    finally:
        link.pin_path = None  # close() must not touch the pin
        link.close()


def load(spec: str, *, ops: str | None = None, kernel: str | Path | None = None,
         include_dirs: list[Path] | None = None, cflags: list[str] | None = None) -> LoadResult:
    """Build (cached) or take a prebuilt object, load, register and pin a scheduler.

    Idempotent for the same object; an error when another object (or a loader
    other than bpfkit) holds the name.  On any failure nothing stays
    registered or pinned."""
    from bpfkit.loader import build, libbpf

    source = resolve_source(spec)
    if is_object(source):
        if include_dirs or cflags:
            raise UsageError(f"{source} is already built: -I and --cflags apply to .bpf.c files only")
    require_struct_ops_support()  # before compiling: without the kernel type clang's error says less
    if is_object(source):
        object_path = source
    else:
        object_path = build.compile_bpf(source, kernel=kernel, include_dirs=include_dirs, cflags=cflags).path
    # The object knows its maps (BTF and initial values), whatever the source's macros did.
    chosen = pick_ops_map(source, ops_maps_of_object(object_path), ops)
    name = chosen.name
    sha = _sha256(object_path)

    with _lock():
        if link_pin(name).exists():
            rec = _read_record(name)
            if rec and rec.object_sha256 == sha and rec.ops_map == chosen.var and name in available():
                link_id, map_id = _link_ids(name)
                return LoadResult(rec, already_loaded=True, link_id=link_id, map_id=map_id)
            held_by = rec.source if rec else "an unknown object"
            raise AttachError(f"scheduler {name!r} is already loaded by bpfkit from {held_by}, a different build",
                              hint=f"unload it first: bpfkit sched unload {name}")
        if name in available():
            raise AttachError(f"scheduler name {name!r} is already registered by another loader (not bpfkit)",
                              hint="rename yours (.name in the ops map) or unregister the other one")

        try:
            obj = libbpf.open_object(object_path)  # VerifierError/LoadError: nothing registered yet
        except libbpf.VerifierError as exc:
            exc.hint = scheduler_verifier_hint(getattr(exc, "log", "")) or exc.hint
            raise
        link = None
        try:
            link = obj.map(chosen.var).attach_struct_ops()
            pin_dir(name).commit(link, {})
            program_ids = {p.name: p.id for p in obj.programs.values() if _autoloaded(p)}
            rec = Record(name=name, source=str(source), object=str(object_path), object_sha256=sha,
                         ops_map=chosen.var, flags=["redundant"] if chosen.redundant else [],
                         program_ids=program_ids,
                         loaded_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            _write_record(rec)
            info = link.info()
        except BaseException:
            if link is not None:
                link.detach()  # unregisters and removes the pin
            pin_dir(name).remove()
            with contextlib.suppress(FileNotFoundError):
                _record_path(name).unlink()
            obj.close()
            raise
        link.close()  # the pin keeps it registered
        obj.close()
        return LoadResult(rec, already_loaded=False, link_id=info.get("id"), map_id=info.get("map_id"))


def _autoloaded(prog) -> bool:
    """Loaded into the kernel (libbpf skips struct_ops programs no map uses)."""
    if prog.fd < 0:
        return False
    try:
        return prog.id > 0
    except BpfkitError:
        return False


def wait_unregistered(name: str, timeout: float = UNREGISTER_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while name in available():
        if time.monotonic() > deadline:
            raise BpfkitError(f"scheduler {name!r} is still in net.mptcp.available_schedulers {timeout:.0f}s "
                              f"after its link was detached")
        time.sleep(0.1)


@dataclass
class UnloadResult:
    name: str
    switched: dict[str, str]  # netns -> what it selected, now "default"


def users(name: str) -> list[str]:
    """Network namespaces whose net.mptcp.scheduler names `name`."""
    return [ns for ns, sel in selections().items() if sel == name]


def unload(name: str, *, force: bool = False) -> UnloadResult:
    validate_name(name)
    if name == DEFAULT:
        raise UsageError("the in-kernel 'default' scheduler cannot be unloaded")
    with _lock():
        if not link_pin(name).exists():
            if name in available():
                if not force:
                    raise UsageError(f"scheduler {name!r} is registered, but not by bpfkit (no pin at "
                                     f"{link_pin(name)}); unregister it with the tool that loaded it",
                                     hint=f"or take it down anyway: bpfkit sched unload {name} --force")
                return _unload_foreign(name)
            raise UsageError(f"scheduler {name!r} is not loaded",
                             hint=f"loaded by bpfkit: {', '.join(pinned_names()) or 'none'}")
        using = users(name)
        if using and not force:
            raise UsageError(f"scheduler {name!r} is selected (net.mptcp.scheduler) in: {', '.join(using)}",
                             hint="select another one there first (bpfkit sched use default [--netns NS]), or "
                                  "pass --force to switch them to 'default'")
        switched = {}
        for ns in using:
            set_selected(DEFAULT, None if ns == CURRENT_NETNS else ns)
            switched[ns] = name
        pin_dir(name).remove()  # detaches: the kernel unregisters the name now
        with contextlib.suppress(FileNotFoundError):
            _record_path(name).unlink()
        wait_unregistered(name)
        return UnloadResult(name, switched)


def foreign_registrations() -> dict[str, dict]:
    """Schedulers registered by another loader (bpftool, a test program...), by name:
    the struct_ops maps whose kernel value holds a registered name bpfkit did not pin."""
    from bpfkit.loader import libbpf

    ours = set(pinned_names())
    names = [n for n in available() if n != DEFAULT and n not in ours]
    out: dict[str, dict] = {}
    if not names:
        return out
    for entry in libbpf.struct_ops_maps_loaded():
        for n in names:
            # the ops struct's name[16] member: the name, NUL-padded
            if n.encode().ljust(registry.NAME_MAX + 1, b"\0") in entry["value"]:
                out.setdefault(n, entry)
    return out


def _unload_foreign(name: str) -> UnloadResult:
    from bpfkit.loader import libbpf

    entry = foreign_registrations().get(name)
    if entry is None:
        raise BpfkitError(f"scheduler {name!r} is registered, but no struct_ops map in the kernel names it "
                          f"(an in-kernel scheduler?)")
    switched = {}
    for ns in users(name):
        set_selected(DEFAULT, None if ns == CURRENT_NETNS else ns)
        switched[ns] = name
    libbpf.unregister_struct_ops(entry["map_id"], entry["link_id"])
    wait_unregistered(name)
    return UnloadResult(name, switched)


def use(name: str, netns: str | None = None) -> str:
    """Select `name` for new MPTCP sockets of a netns; returns the previous one. Under the
    scheduler lock, so an `unload` cannot take the name down between the check and the
    selection (it would then find no user and unregister a scheduler just selected)."""
    validate_name(name)
    with _lock():
        names = available()
        if name not in names:
            hint = f"load it first: bpfkit sched load {name}" if name in builtin_sources() else None
            raise UsageError(f"scheduler {name!r} is not registered (available: {', '.join(names)})", hint=hint)
        before = selected(netns)
        set_selected(name, netns)
        return before


# ---------------------------------------------------------------- list / show


def list_all() -> dict:
    names = available()
    sel = selections()
    ours = pinned_names()
    return {
        "builtin": [{"name": n, "title": ref.title, "paper": ref.paper, "source": str(ref.source),
                     "registered": n in names, "loaded_by_bpfkit": n in ours}
                    for n, ref in registry.references().items()],
        "available": names,
        "selected": sel,
        "bpfkit": ours,
        # registered by another loader: bpfkit neither pinned nor will unload them (but with --force)
        "other_loaders": [n for n in names if n != DEFAULT and n not in ours],
    }


def show(name: str) -> dict:
    from bpfkit.loader import libbpf

    validate_name(name)
    names = available()
    reference = registry.references().get(name)
    rec = _read_record(name)
    pinned = link_pin(name).exists()
    if name not in names and not pinned and reference is None:
        raise UsageError(f"no scheduler {name!r}: not registered, not loaded by bpfkit, not built in",
                         hint=f"available: {', '.join(names)}")
    out: dict = {
        "name": name,
        "registered": name in names,
        "loaded_by_bpfkit": pinned,
        "pin": str(link_pin(name)) if pinned else None,
        "source": rec.source if rec else (str(reference.source) if reference else None),
        "selected_in": [ns for ns, sel in selections().items() if sel == name],
    }
    if reference:
        out.update(title=reference.title, paper=reference.paper)
    if name == DEFAULT:
        out["source"] = "in-kernel (net/mptcp/protocol.c)"
    if rec:
        live = {p: i for p, i in rec.program_ids.items() if libbpf.program_info_by_id(i) is not None}
        out.update(object=rec.object, object_sha256=rec.object_sha256, ops_map=rec.ops_map, flags=rec.flags,
                   program_ids=live, loaded_at=rec.loaded_at)
    if pinned:
        out["link_id"], out["map_id"] = _link_ids(name)
    return out


def format_list(data: dict) -> str:
    lines = ["built-in (bpf/sched/):"]
    for b in data["builtin"]:
        state = "loaded by bpfkit" if b["loaded_by_bpfkit"] else ("registered" if b["registered"] else "not loaded")
        lines.append(f"  {b['name']:<16} {state:<17} {b['title']}")
    lines.append(f"registered (net.mptcp.available_schedulers): {' '.join(data['available'])}")
    lines.append(f"loaded by bpfkit (pinned under {PIN_DIR}): {' '.join(data['bpfkit']) or 'none'}")
    lines.append(f"registered by other loaders (not bpfkit's): {' '.join(data['other_loaders']) or 'none'}")
    lines.append("selected (net.mptcp.scheduler):")
    for ns, sel in data["selected"].items():
        lines.append(f"  {ns:<16} {sel}")
    return "\n".join(lines)


def format_show(info: dict) -> str:
    order = ["name", "title", "paper", "registered", "loaded_by_bpfkit", "source", "object", "object_sha256", "ops_map", "flags",
             "program_ids", "link_id", "map_id", "pin", "loaded_at", "selected_in"]
    lines = []
    for key in order:
        if key not in info:
            continue
        value = info[key]
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif value is None:
            value = "-"
        lines.append(f"{key.replace('_', ' ') + ':':<18} {value}")
    return "\n".join(lines)
