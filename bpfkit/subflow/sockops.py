"""Per-subflow socket options: apply, show and clear a policy on a cgroup.

One policy per cgroup. The first `apply` loads bpf/subflow_opts.bpf.c, fills its
maps, attaches the sockops program to the cgroup as a bpf_link (multi-attach:
programs others attached stay) and pins the link and the maps under

    /sys/fs/bpf/bpfkit/subflow/<cgroup id>/{link,rules,policy,rule_stats,totals,policy_info}

so the policy outlives the command. A later `apply` on the same cgroup only
rewrites the pinned maps (same program, same link: nothing is detached or
reloaded); `clear` detaches the link and removes the pins.

Swapping rules without a window: `rules` holds two halves. `apply` writes the
new rules (and zeroed counters) into the half the program is not reading, then
flips `policy.active` in one map update. The program reads `active` once per
subflow and then only that half, and the two possible values of `active` (0 and
1) differ in a single byte, so however the kernel copies the update the program
sees the old half or the new half, never a mix. (A program run that straddles
two consecutive `apply`s could still read a half being rewritten; a run lasts
microseconds, an `apply` milliseconds.)

Known interaction: a later setsockopt() by the application on the MPTCP socket
(SO_MARK, SO_PRIORITY, IP_TOS, TCP_CONGESTION, ...) is propagated by the kernel
to every subflow and overrides the per-subflow values set here.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from bpfkit import cgroup as cgroups
from bpfkit.loader import build, libbpf, pins
from bpfkit.subflow import policy as sp
from bpfkit.errors import BpfkitError, KernelUnsupported

PIN_DIR = libbpf.PIN_ROOT / "subflow"
MAP_NAMES = ("rules", "policy", "rule_stats", "totals", "policy_info")
PROGRAM = "subflow_opts"

# Expected (value size, max entries) of each map: a pinned policy made by a
# bpfkit with another layout must not be written with this one's encoding.
MAP_SHAPES = {
    "rules": (sp.RULE_SIZE, 2 * sp.MAX_RULES),
    "policy": (sp.POLICY.size, 1),
    "rule_stats": (sp.RULE_STATS.size, 2 * sp.MAX_RULES),
    "totals": (sp.TOTALS.size, 2),
    "policy_info": (sp.INFO_SIZE, 2),
}


def pin_dir(cgroup_id: int) -> Path:
    return PIN_DIR / str(cgroup_id)


def _pins(directory: Path) -> pins.PinDir:
    return pins.PinDir(directory, MAP_NAMES)


@dataclass(frozen=True)
class ApplyResult:
    cgroup: Path
    cgroup_id: int
    link_id: int
    program_id: int
    attached: bool  # True: first apply (attached now); False: rules swapped in place
    half: int
    rules: int
    warnings: tuple[str, ...]


# ---------------------------------------------------------------- apply


def prepare(policy_file: str | Path, cgroup: str | Path, netns: str | None = None):
    """Everything that can fail on bad input, done before touching the kernel:
    the cgroup, the policy (parsed, validated, interfaces resolved, encoded)."""
    cg = cgroups.resolve(cgroup)
    resolved = sp.resolve(sp.load_policy(policy_file), netns=netns)
    applied_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return cg, resolved, sp.encode(resolved, str(cg), applied_at)


def apply(policy_file: str | Path, cgroup: str | Path, netns: str | None = None) -> ApplyResult:
    cg, resolved, encoded = prepare(policy_file, cgroup, netns)
    cg_id = cgroups.cgroup_id(cg)
    with _locked():
        existing = _open_pinned(cg_id)
        if existing is None:
            link_info, half = _attach_new(cg, cg_id, encoded)
            attached = True
        else:
            with existing:
                link_info = existing.link.info()
                half = _swap(existing.maps, encoded)
            attached = False
    return ApplyResult(cg, cg_id, link_info["id"], link_info["prog_id"], attached, half, len(encoded.rules),
                       resolved.warnings)


def _write_half(maps: dict[str, libbpf.Map], half: int, encoded: sp.Encoded) -> None:
    """Rules, zeroed counters and the description into one half."""
    empty_rule = bytes(sp.RULE_SIZE)
    for i in range(sp.MAX_RULES):
        slot = half * sp.MAX_RULES + i
        maps["rules"].update(slot, encoded.rules[i] if i < len(encoded.rules) else empty_rule)
        maps["rule_stats"].update(slot, bytes(sp.RULE_STATS.size))
    maps["totals"].update(half, bytes(sp.TOTALS.size))
    maps["policy_info"].update(half, encoded.info)


def _swap(maps: dict[str, libbpf.Map], encoded: sp.Encoded) -> int:
    active, counts = _read_policy(maps["policy"])
    new = 1 - active
    _write_half(maps, new, encoded)
    counts[new] = len(encoded.rules)
    # First publish the new half's rule count (the program reads only the
    # active half's count, and `active` is rewritten with its current value),
    maps["policy"].update(0, sp.POLICY.pack(active, *counts))
    # then flip: the single-byte change the program keys everything off.
    maps["policy"].update(0, sp.POLICY.pack(new, *counts))
    return new


def _read_policy(policy_map: libbpf.Map) -> tuple[int, list[int]]:
    active, n0, n1 = sp.POLICY.unpack(policy_map.lookup(0))
    return active & 1, [n0, n1]


def _check_shapes(maps: dict[str, libbpf.Map], where: str) -> None:
    for name, shape in MAP_SHAPES.items():
        got = (maps[name].value_size, maps[name].max_entries)
        if got != shape:
            raise BpfkitError(f"{where}: map {name} has layout {got}, this bpfkit writes {shape}",
                              hint="the policy was made by another bpfkit version: "
                                   "`bpfkit subflow clear` it, then apply again")


def _check_kernel() -> None:
    """Refuse, before compiling or loading anything, a kernel the program cannot run on."""
    from bpfkit import features

    check = features.check_subflow_opts()
    if check.status != features.OK:
        raise KernelUnsupported(f"this kernel cannot apply per-subflow options: {check.detail}", hint=check.hint)


def _attach_new(cg: Path, cg_id: int, encoded: sp.Encoded) -> tuple[dict, int]:
    """Load, fill, attach, pin. Any failure undoes everything done so far,
    leaving nothing attached and nothing pinned."""
    _check_kernel()
    obj_path = build.program_object(PROGRAM)
    directory = _pins(pin_dir(cg_id))
    link = None
    try:
        with libbpf.open_object(obj_path, layouts=sp.LAYOUTS) as obj:
            maps = {name: obj.map(name) for name in MAP_NAMES}
            _check_shapes(maps, obj_path.name)
            _write_half(maps, 0, encoded)
            maps["policy"].update(0, sp.POLICY.pack(0, len(encoded.rules), 0))
            link = obj.program(PROGRAM).attach_cgroup(cg)
            info = directory.commit(link, maps)  # the link pin last: a complete policy
            link.close()  # the pin keeps it attached
            link = None
            return info, 0
    except BaseException:
        if link is not None:
            link.detach()
        directory.collect_uncommitted()
        raise


@contextlib.contextmanager
def _locked():
    """Serialise apply/clear (pins.locked: two concurrent applies on one cgroup
    would both see "nothing pinned" and attach twice); PIN_DIR is checked root's
    own, and removed again once no policy is left in it."""
    with pins.locked():
        pins.kind_dir(PIN_DIR.name)
        try:
            yield
        finally:
            pins.remove_if_empty(PIN_DIR)


# ---------------------------------------------------------------- pinned state


class PinnedPolicy:
    """The link and maps of one cgroup's policy, opened from their pins."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.cgroup_id = int(directory.name)
        self.link = _pins(directory).open_link()
        self.maps: dict[str, libbpf.Map] = {}
        try:
            self.maps = _pins(directory).open_maps()
            _check_shapes(self.maps, str(directory))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.link.close()  # drops our fd; the pin keeps the attachment

    def __enter__(self) -> "PinnedPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_pinned(cg_id: int) -> PinnedPolicy | None:
    directory = pin_dir(cg_id)
    if not directory.exists():
        return None
    if _pins(directory).collect_uncommitted():
        # Left by an apply that was killed before pinning its link (whose
        # attachment died with the process): only stale maps remained.
        return None
    pinned = PinnedPolicy(directory)
    if pinned.link.info().get("cgroup_id") != cg_id:
        # The pins outlived a removed cgroup whose id this one now reuses:
        # that link is detached, so writing its maps would do nothing.
        pinned.close()
        _clear_dir(directory)
        return None
    return pinned


def _policy_dirs() -> list[Path]:
    if not PIN_DIR.is_dir():
        return []
    return sorted((d for d in PIN_DIR.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))


# ---------------------------------------------------------------- show

_ERRNO_NAMES = {**errno.errorcode, 524: "ENOTSUPP"}  # 524: kernel-internal (bpf_setsockopt on 'cdg')


def _cgroup_state(path: str | None, cg_id: int) -> bool:
    """Does the cgroup the policy was applied to still exist (same id)?"""
    return bool(path) and os.path.isdir(path) and cgroups.cgroup_id(path) == cg_id


def describe(policy: PinnedPolicy) -> dict:
    """One cgroup's policy with its counters, as plain data."""
    link = policy.link.info()
    active, counts = _read_policy(policy.maps["policy"])
    info = sp.decode_info(policy.maps["policy_info"].lookup(active))
    seen, unmatched, reapplied = sp.TOTALS.unpack(policy.maps["totals"].lookup(active))
    rules = []
    described = info.get("rules", [])
    for i in range(counts[active]):
        slot = active * sp.MAX_RULES + i
        applied, failed, last_error, last_failed = sp.RULE_STATS.unpack(policy.maps["rule_stats"].lookup(slot))
        entry = dict(described[i]) if i < len(described) else {"index": i + 1}
        entry["set"] = sp.decode_rule_actions(policy.maps["rules"].lookup(slot))  # what the kernel holds
        entry.update(applied=applied, failed=failed)
        if failed:
            failed_key = next((k for k, bit in sp.SET_BITS.items() if bit == last_failed), None)
            entry["last_failure"] = {"option": sp.OPTION_NAMES.get(failed_key, str(last_failed)),
                                     "error": _ERRNO_NAMES.get(-last_error, str(last_error))}
        rules.append(entry)
    cgroup_path = info.get("cgroup")
    return {
        "cgroup": cgroup_path,
        "cgroup_id": policy.cgroup_id,
        "cgroup_exists": _cgroup_state(cgroup_path, policy.cgroup_id),
        "attached": link.get("cgroup_id") == policy.cgroup_id,
        "link_id": link["id"],
        "program_id": link["prog_id"],
        "pin_dir": str(policy.directory),
        "source": info.get("source"),
        "netns": info.get("netns"),
        "applied_at": info.get("applied_at"),
        "active_half": active,
        "subflows_seen": seen,
        "subflows_unmatched": unmatched,
        "late_joins_reapplied": reapplied,
        "rules": rules,
    }


def show(cgroup: str | Path | None = None) -> list[dict]:
    """Every cgroup with a policy (or just one)."""
    if cgroup is not None:
        dirs = [pin_dir(cgroups.cgroup_id(cgroups.resolve(cgroup)))]
        dirs = [d for d in dirs if (d / "link").exists()]
    else:
        dirs = [d for d in _policy_dirs() if (d / "link").exists()]
    out = []
    for directory in dirs:
        with PinnedPolicy(directory) as policy:
            out.append(describe(policy))
    return out


def format_policies(policies: list[dict]) -> str:
    if not policies:
        return "no subflow policy is applied"
    lines = []
    for p in policies:
        state = "" if p["cgroup_exists"] and p["attached"] else "  (cgroup removed: `bpfkit subflow clear --all`)"
        lines.append(f"cgroup {p['cgroup']} (id {p['cgroup_id']}): link {p['link_id']}, "
                     f"program {p['program_id']}{state}")
        lines.append(f"  policy {p['source']} applied {p['applied_at']}"
                     + (f", interfaces from netns {p['netns']}" if p["netns"] else ""))
        lines.append(f"  subflows seen {p['subflows_seen']}, matched no rule {p['subflows_unmatched']}"
                     + (f", passive joins completed late and re-applied {p['late_joins_reapplied']}"
                        if p["late_joins_reapplied"] else ""))
        for r in p["rules"]:
            line = (f"  {sp.rule_label(r['index'], r.get('name'))}: {sp.describe_match(r.get('match', {}))} -> "
                    f"{sp.describe_actions(r['set'])}: {r['applied']} applied, {r['failed']} failed")
            if r.get("last_failure"):
                line += f" (last: {r['last_failure']['option']} {r['last_failure']['error']})"
            lines.append(line)
            if "resolved_local" in r:
                lines.append(f"    interface addresses at apply: {', '.join(r['resolved_local']) or 'none'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- clear


def clear(cgroup: str | Path) -> bool:
    """Detach and unpin the policy of a cgroup. False if it had none."""
    cg_id = cgroups.cgroup_id(cgroups.resolve(cgroup))
    with _locked():
        return _clear_dir(pin_dir(cg_id))


def clear_all() -> list[int]:
    """Remove every subflow policy, including those of removed cgroups."""
    cleared = []
    with _locked():
        for directory in _policy_dirs():
            if _clear_dir(directory):
                cleared.append(int(directory.name))
    return cleared


def _clear_dir(directory: Path) -> bool:
    return _pins(directory).remove()
