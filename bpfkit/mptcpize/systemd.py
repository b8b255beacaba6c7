"""The rewrite across reboots and unit starts: `attach --persist` records an
attachment in a state file that bpfkit-mptcpize.service restores at boot;
`enable UNIT` writes a drop-in that attaches UNIT's cgroup at each start; and
`--unit` finds a running unit's cgroup. Everything here acts through
rewrite.attach/detach."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit import cgroup, fs
from bpfkit.errors import UsageError
from bpfkit.mptcpize.rewrite import AttachResult, DetachResult, Options, attach, detach, target_cgroup
from bpfkit.paths import TEMPLATES_DIR

# Where `attach --persist` records attachments for bpfkit-mptcpize.service to
# restore at boot (relative to --root; cgroup ids change across boots, paths don't).
STATE_FILE = Path("etc/bpfkit/mptcpize.json")
SYSTEMD_DIR = Path("etc/systemd/system")
DROPIN_NAME = "bpfkit-mptcpize.conf"
BOOT_SERVICE = "bpfkit-mptcpize.service"
UNIT_SEARCH_DIRS = ("etc/systemd/system", "run/systemd/system", "run/systemd/transient", "run/systemd/generator",
                    "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")

SYSTEMCTL = "systemctl"  # tests point this at a stand-in

# systemd's unit name grammar: [A-Za-z0-9:_.\\-]+, at most one "@", a type suffix.
_UNIT_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9:_.\\-]+)(?P<at>@(?P<instance>[A-Za-z0-9:_.\\-]*))?"
                      r"\.(?P<type>service|scope|slice)$")
_SAFE_EXEC_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@-]+$")


def validate_unit(name: str, *, types=("service", "scope", "slice"), allow_template: bool = False) -> str:
    """A systemd unit name as given by the user, checked strictly (it reaches
    systemctl's argv and a path under /etc/systemd/system). A bare name gets
    `.service`, as systemctl does."""
    if not isinstance(name, str) or not name:
        raise UsageError("empty unit name")
    full = name if re.search(r"\.(service|scope|slice|socket|target|timer|mount|path|device|swap)$", name) \
        else f"{name}.service"
    m = _UNIT_RE.match(full)
    if len(full) > 255 or not m or full.startswith(("-", ".")) or ".." in full:
        raise UsageError(f"invalid unit name {name!r}",
                         hint="expected e.g. nginx.service or getty@tty1.service (letters, digits, :_.\\- and one @)")
    if m["type"] not in types:
        raise UsageError(f"{full}: a .{m['type']} unit is not supported here (expected .{' or .'.join(types)})")
    if m["at"] and not m["instance"] and not allow_template:
        raise UsageError(f"{full} is a template; name an instance (e.g. {m['prefix']}@NAME.{m['type']})")
    return full


def unit_cgroup(unit: str) -> Path:
    """The cgroup of a running systemd unit (systemctl show ControlGroup)."""
    unit = validate_unit(unit)
    try:
        out = subprocess.run([SYSTEMCTL, "show", "--property=LoadState,ActiveState,ControlGroup", unit],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise UsageError(f"--unit {unit}: systemctl is not installed", hint="use --cgroup PATH") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"--unit {unit}: systemctl did not answer within 30 s") from None
    if out.returncode != 0:
        reason = " ".join(out.stderr.split()) or f"exit status {out.returncode}"
        raise UsageError(f"cannot look up unit {unit}: {reason}", hint="is systemd running here? else use --cgroup PATH")
    props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    if props.get("LoadState") == "not-found":
        raise UsageError(f"unit {unit} does not exist", hint="check the name with `systemctl list-units`")
    control_group = props.get("ControlGroup", "")
    if not control_group:
        state = props.get("ActiveState", "unknown")
        raise UsageError(f"unit {unit} is not running ({state}), so it has no cgroup",
                         hint=f"start it, or `bpfkit mptcpize enable {unit}` to attach at each start")
    return target_cgroup(control_group.lstrip("/"))


# --------------------------------------------------------------------------- persistence

def _state_path(root: Path) -> Path:
    return Path(root) / STATE_FILE


def load_state(root: Path = Path("/")) -> list[dict]:
    path = _state_path(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable state file ({exc})") from None
    return list(data.get("attachments", []))


def _save_state(root: Path, attachments: list[dict]) -> None:
    path = _state_path(root)
    if not attachments:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.atomic_write(path, json.dumps({"version": 1, "attachments": attachments}, indent=2) + "\n", 0o600)


def _relative_cgroup(cg: Path) -> str:
    return str(cg.relative_to(cgroup.cgroup2_root()))


def unit_of_cgroup(cg: Path) -> str | None:
    """The systemd service or scope whose cgroup `cg` is, by systemd's naming (x.slice/y.service)."""
    return cg.name if cg.name.endswith((".service", ".scope")) else None


def refuse_unit_cgroup(cg: Path) -> None:
    """--persist on a unit's own cgroup: refused (see persist())."""
    unit = unit_of_cgroup(cg)
    if unit:
        raise UsageError(f"{cg} is the cgroup of {unit}, which systemd re-creates (with a new id) at each "
                         "start: a recorded cgroup would hold until the unit's first restart",
                         hint=f"bpfkit mptcpize enable {unit} (its drop-in attaches at every start, reboots included)")


def persist(cg: Path, options: Options, root: Path = Path("/")) -> Path:
    """Record an attachment for the boot service, and install that service. A unit's own
    cgroup is refused: systemd removes it when the unit stops and makes a new one (a new id)
    at the next start, so the record would hold for one run; the unit's drop-in holds for all."""
    refuse_unit_cgroup(cg)
    relative = _relative_cgroup(cg)
    entries = [e for e in load_state(root) if e.get("cgroup") != relative]
    entries.append({"cgroup": relative, **options.to_json()})
    _save_state(root, entries)
    install_boot_service(root)
    return _state_path(root)


def forget(cg: Path, root: Path = Path("/")) -> bool:
    relative = _relative_cgroup(cg)
    entries = load_state(root)
    kept = [e for e in entries if e.get("cgroup") != relative]
    if len(kept) != len(entries):
        _save_state(root, kept)
    return len(kept) != len(entries)


def forget_all(root: Path = Path("/")) -> int:
    """Drop every recorded attachment (detach --all): a reboot must not turn back on what
    was removed. Returns how many were recorded."""
    entries = load_state(root)
    _save_state(root, [])
    return len(entries)


def restore(root: Path = Path("/")) -> tuple[list[str], list[str]]:
    """Attach every recorded cgroup (at boot), creating those that do not exist yet: what is
    started in one later is then rewritten from its first socket. Returns (attached, skipped)."""
    attached, skipped = [], []
    for entry in load_state(root):
        relative = entry.get("cgroup", "")
        try:
            options = Options.of("all" if len(entry.get("families", [])) != 1 else entry["families"][0],
                                 entry.get("exclude", []))
            with cgroup.created_path(relative):  # removed again if the attach fails
                attach(relative, options)
            attached.append(relative)
        except UsageError as exc:
            skipped.append(f"{relative}: {exc.message}")
    return attached, skipped


def bpfkit_executable() -> str:
    """Absolute path of the bpfkit command, for ExecStart= lines."""
    beside_python = Path(sys.executable).parent / "bpfkit"
    found = str(beside_python) if beside_python.exists() else shutil.which("bpfkit")
    if not found:
        raise UsageError("cannot find the bpfkit executable to put in the unit files",
                         hint="install bpfkit so that `bpfkit` is on PATH")
    if not _SAFE_EXEC_PATH_RE.match(found):
        raise UsageError(f"bpfkit lives at {found!r}, a path systemd Exec lines would need quoting for",
                         hint="install it under a plain path such as /usr/local/bin")
    return found


def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "mptcpize"),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def render_dropin(unit: str, options: Options = Options(), bpfkit: str | None = None) -> str:
    unit = validate_unit(unit, types=("service",), allow_template=True)
    return _templates().get_template("dropin.conf.j2").render(
        unit=unit, bpfkit=bpfkit or bpfkit_executable(), options=" ".join(options.cli_args()))


def render_boot_service(bpfkit: str | None = None, state_file: Path = Path("/") / STATE_FILE) -> str:
    return _templates().get_template("bpfkit-mptcpize.service.j2").render(
        bpfkit=bpfkit or bpfkit_executable(), state_file=str(state_file))


def _systemd_running(root: Path) -> bool:
    return Path(root) == Path("/") and Path("/run/systemd/system").is_dir()


def _daemon_reload(root: Path) -> bool:
    if not _systemd_running(root):
        return False
    subprocess.run([SYSTEMCTL, "daemon-reload"], check=False, timeout=120)
    return True


def install_boot_service(root: Path = Path("/")) -> Path:
    """Write bpfkit-mptcpize.service and enable it (the [Install] symlink, as
    `systemctl enable` makes it, so this works offline and under --root)."""
    unit_dir = Path(root) / SYSTEMD_DIR
    unit_path = unit_dir / BOOT_SERVICE
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(render_boot_service())
    old = unit_dir / "multi-user.target.wants" / BOOT_SERVICE  # where bpfkit before 2026-12-04 enabled it
    if old.is_symlink():
        old.unlink()
    wants = unit_dir / "sysinit.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / BOOT_SERVICE
    if not link.is_symlink():
        link.symlink_to(Path("/") / SYSTEMD_DIR / BOOT_SERVICE)
    _daemon_reload(root)
    return unit_path


def _unit_file_exists(unit: str, root: Path) -> bool:
    names = {unit}
    m = _UNIT_RE.match(unit)
    if m and m["at"]:
        names.add(f"{m['prefix']}@.{m['type']}")  # instances come from the template file
    return any((Path(root) / d / n).exists() for d in UNIT_SEARCH_DIRS for n in names)


def dropin_path(unit: str, root: Path = Path("/")) -> Path:
    return Path(root) / SYSTEMD_DIR / f"{unit}.d" / DROPIN_NAME


@dataclass
class EnableResult:
    unit: str
    dropin: Path
    reloaded: bool
    attached_now: AttachResult | None = None
    notes: list[str] = field(default_factory=list)


def enable(unit: str, options: Options = Options(), *, root: Path = Path("/"), now: bool = False) -> EnableResult:
    """Write the drop-in that attaches UNIT's cgroup at each start (never the vendor unit)."""
    unit = validate_unit(unit, types=("service",), allow_template=True)
    if not _unit_file_exists(unit, root):
        raise UsageError(f"unit {unit} does not exist (no unit file under {root} in "
                         f"{', '.join('/' + d for d in UNIT_SEARCH_DIRS)})")
    text = render_dropin(unit, options)
    path = dropin_path(unit, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.atomic_write(path, text)
    result = EnableResult(unit, path, _daemon_reload(root))
    if not result.reloaded:
        result.notes.append("systemd is not running here (or --root given): no daemon-reload done")
    if now:
        result.attached_now = attach(unit_cgroup(unit), options)
    return result


def disable(unit: str, *, root: Path = Path("/"), now: bool = False) -> tuple[Path, bool, DetachResult | None]:
    """Remove the drop-in (and its directory if that leaves it empty)."""
    unit = validate_unit(unit, types=("service",), allow_template=True)
    path = dropin_path(unit, root)
    existed = path.exists()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):  # not empty: other drop-ins live there
        path.parent.rmdir()
    _daemon_reload(root)
    detached = detach(unit_cgroup(unit)) if now else None
    return path, existed, detached
