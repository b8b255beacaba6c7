"""Subflow policy files: parse, validate, resolve interfaces, encode for the BPF maps.

A policy is an ordered list of rules; for each new MPTCP subflow the first rule
whose `match` holds gets its `set` actions applied (by bpf/subflow_opts.bpf.c).
The format is documented in docs/subflow-policy.md; in short:

    [[rule]]
    name = "lte"                        # optional, shown by `bpfkit subflow show`
    [rule.match]                        # every key given must hold; omitted keys match anything
    role = "join"                       # "initial" (the first subflow) | "join" (MP_JOIN subflows)
    side = "active"                     # "active" (we connect) | "passive" (we accept)
    interface = "wwan0"                 # or a list; resolved to its addresses at every `apply`
    # local_address = "10.2.1.0/24"     # or a list of addresses/prefixes (not with `interface`)
    remote_port = 443                   # or a list (up to 8)
    local_port = 8080                   # or a list (up to 8)
    backup = true                       # the subflow's endpoint has the backup flag
    [rule.set]                          # at least one action
    mark = 0x2                          # SO_MARK (u32)
    priority = "1:2"                    # SO_PRIORITY: u32 or a tc class id "MAJOR:MINOR" (hex)
    congestion = "reno"                 # TCP_CONGESTION: in tcp_available_congestion_control
    max_pacing_rate = "20mbit"          # SO_MAX_PACING_RATE: bytes/s, or "<n>[k|m|g]bit"
    tos = 0x20                          # IP_TOS (IPv4) / IPV6_TCLASS (IPv6); ECN bits must be 0
    notsent_lowat = 131072              # TCP_NOTSENT_LOWAT (bytes)

Validation is complete before anything touches the kernel and stops at the first
problem with one UsageError naming the file, the rule and the key, e.g.
`policy.toml: rule 2 ("lte"): set.congestion: 'vegas' is not available (...)`.

The byte layouts below mirror the structs in bpf/subflow_opts.bpf.c.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit.errors import UsageError
from bpfkit.loader.libbpf import Layout

MAX_RULES = 32  # SUBFLOW_MAX_RULES
MAX_PREFIXES = 16  # SUBFLOW_MAX_PREFIXES: per rule, after resolving interfaces
MAX_PORTS = 8  # SUBFLOW_MAX_PORTS
INFO_SIZE = 65536  # SUBFLOW_INFO_SIZE: JSON text kept per half for `show` (fits any valid policy)
TCP_CA_NAME_MAX = 16

AVAILABLE_CC_FILE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")

# MATCH_* / SET_* bits of the BPF program.
MATCH_BITS = {"role": 1 << 0, "side": 1 << 1, "local": 1 << 2, "remote_port": 1 << 3, "local_port": 1 << 4,
              "backup": 1 << 5}
SET_BITS = {"mark": 1 << 0, "priority": 1 << 1, "congestion": 1 << 2, "max_pacing_rate": 1 << 3, "tos": 1 << 4,
            "notsent_lowat": 1 << 5}
ROLES = {"initial": 1, "join": 2}
SIDES = {"active": 1, "passive": 2}
AF_INET, AF_INET6 = 2, 10

# The socket option each action sets, for messages.
OPTION_NAMES = {"mark": "SO_MARK", "priority": "SO_PRIORITY", "congestion": "TCP_CONGESTION",
                "max_pacing_rate": "SO_MAX_PACING_RATE", "tos": "IP_TOS/IPV6_TCLASS",
                "notsent_lowat": "TCP_NOTSENT_LOWAT"}

U32_MAX = 0xFFFF_FFFF
INT_MAX = 0x7FFF_FFFF
# SO_MAX_PACING_RATE takes an int from BPF; ~0U means "unlimited", so the
# largest real cap is one less (about 34.4 Gbit/s).
PACING_RATE_MAX = U32_MAX - 1

_MATCH_KEYS = {"role", "side", "local_address", "interface", "remote_port", "local_port", "backup"}
_SET_KEYS = set(SET_BITS)
_RULE_KEYS = {"name", "match", "set"}
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")  # IFNAMSIZ 16 with the NUL; no '/', ':' or blanks
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)bit\s*$", re.I)
_CLASS_ID = re.compile(r"^\s*([0-9a-f]{1,4}):([0-9a-f]{1,4})\s*$", re.I)


# ---------------------------------------------------------------- data model

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Match:
    role: str | None = None
    side: str | None = None
    backup: bool | None = None
    local_address: tuple[Network, ...] = ()
    interface: tuple[str, ...] = ()
    remote_port: tuple[int, ...] = ()
    local_port: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        out: dict = {}
        for key in ("role", "side", "backup"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.local_address:
            out["local_address"] = [str(n) for n in self.local_address]
        for key in ("interface", "remote_port", "local_port"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        return out


@dataclass(frozen=True)
class Actions:
    mark: int | None = None
    priority: int | None = None
    congestion: str | None = None
    max_pacing_rate: int | None = None  # bytes per second
    tos: int | None = None
    notsent_lowat: int | None = None

    def items(self) -> list[tuple[str, int | str]]:
        return [(k, getattr(self, k)) for k in SET_BITS if getattr(self, k) is not None]

    def to_dict(self) -> dict:
        return dict(self.items())


@dataclass(frozen=True)
class Rule:
    index: int  # 1-based position in the file
    name: str | None
    match: Match
    actions: Actions

    @property
    def label(self) -> str:
        return rule_label(self.index, self.name)


@dataclass(frozen=True)
class Policy:
    source: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class ResolvedRule:
    """A rule with its local-address match turned into prefixes."""

    rule: Rule
    prefixes: tuple[Network, ...]  # from local_address, or the interfaces' addresses now

    def to_dict(self) -> dict:
        out = {"index": self.rule.index, "name": self.rule.name, "match": self.rule.match.to_dict(),
               "set": self.rule.actions.to_dict()}
        if self.rule.match.interface:
            out["resolved_local"] = [str(p) for p in self.prefixes]
        return out


@dataclass(frozen=True)
class ResolvedPolicy:
    policy: Policy
    rules: tuple[ResolvedRule, ...]
    netns: str | None = None
    warnings: tuple[str, ...] = field(default=())


def rule_label(index: int, name: str | None) -> str:
    """How messages and `show` name a rule: `rule 2 ("lte")`."""
    return f"rule {index}" + (f' ("{name}")' if name else "")


# ---------------------------------------------------------------- parsing


class _Where:
    """Builds `file: rule N ("name"): key: message` errors."""

    def __init__(self, source: str, rule: str | None = None):
        self.source = source
        self.rule = rule

    def fail(self, key: str | None, message: str, hint: str | None = None):
        parts = [self.source] + ([self.rule] if self.rule else []) + ([key] if key else [])
        raise UsageError(": ".join(parts) + f": {message}", hint=hint)


def available_congestion_controls() -> list[str]:
    """What TCP_CONGESTION accepts now (BPF struct_ops CCs appear here once registered)."""
    try:
        return AVAILABLE_CC_FILE.read_text().split()
    except OSError:
        return []


def load_policy(path: str | Path, available_cc: list[str] | None = None) -> Policy:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the policy file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    return parse_policy(data, str(path), available_cc)


def parse_policy(data: dict, source: str = "<policy>", available_cc: list[str] | None = None) -> Policy:
    """Validate a decoded TOML document. available_cc defaults to the running kernel's list."""
    where = _Where(source)
    for key in data:
        if key != "rule":
            where.fail(key, "unknown key (a policy holds only [[rule]] tables)")
    rules_raw = data.get("rule")
    if not rules_raw:
        where.fail(None, "defines no rules (add [[rule]] tables; `bpfkit subflow clear` removes a policy)")
    if not isinstance(rules_raw, list) or not all(isinstance(r, dict) for r in rules_raw):
        where.fail("rule", "must be an array of tables ([[rule]])")
    if len(rules_raw) > MAX_RULES:
        where.fail("rule", f"{len(rules_raw)} rules, at most {MAX_RULES} are supported")
    if available_cc is None:
        available_cc = available_congestion_controls()
    rules = tuple(_parse_rule(source, i + 1, r, available_cc) for i, r in enumerate(rules_raw))
    return Policy(source, rules)


def _parse_rule(source: str, index: int, data: dict, available_cc: list[str]) -> Rule:
    name = data.get("name")
    where = _Where(source, rule_label(index, name if isinstance(name, str) else None))
    for key in data:
        if key not in _RULE_KEYS:
            where.fail(key, f"unknown key (a rule has: {', '.join(sorted(_RULE_KEYS))})")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 64):
        where.fail("name", "must be a string of 1-64 characters")
    match = _parse_match(where, data.get("match", {}))
    if "set" not in data:
        where.fail("set", "required: a [rule.set] table with at least one action")
    actions = _parse_actions(where, data["set"], available_cc)
    return Rule(index, name, match, actions)


def _table(where: _Where, key: str, raw, allowed: set[str]) -> dict:
    if not isinstance(raw, dict):
        where.fail(key, f"expected a table, got {raw!r}")
    for name in raw:
        if name not in allowed:
            where.fail(f"{key}.{name}", f"unknown key (known here: {', '.join(sorted(allowed))})")
    return raw


def _one_or_list(where: _Where, key: str, raw, limit: int) -> list:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        where.fail(key, "is an empty list")
    if len(values) > limit:
        where.fail(key, f"{len(values)} values, at most {limit}")
    return values


def _int(where: _Where, key: str, raw, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        where.fail(key, f"expected an integer, got {raw!r}")
    if not low <= raw <= high:
        where.fail(key, f"{raw} is out of range ({low}..{high})")
    return raw


def _choice(where: _Where, key: str, raw, choices) -> str:
    if raw not in choices:
        where.fail(key, f"{raw!r} is not one of: {', '.join(choices)}")
    return raw


def _parse_match(where: _Where, raw) -> Match:
    data = _table(where, "match", raw, _MATCH_KEYS)
    fields: dict = {}
    if "role" in data:
        fields["role"] = _choice(where, "match.role", data["role"], ROLES)
    if "side" in data:
        fields["side"] = _choice(where, "match.side", data["side"], SIDES)
    if "backup" in data:
        if not isinstance(data["backup"], bool):
            where.fail("match.backup", f"expected true or false, got {data['backup']!r}")
        fields["backup"] = data["backup"]
    if "local_address" in data and "interface" in data:
        where.fail("match", "use either local_address or interface in one rule, not both",
                   hint="write two rules to match either")
    if "local_address" in data:
        fields["local_address"] = tuple(
            _prefix(where, "match.local_address", v)
            for v in _one_or_list(where, "match.local_address", data["local_address"], MAX_PREFIXES))
    if "interface" in data:
        names = _one_or_list(where, "match.interface", data["interface"], MAX_PREFIXES)
        for v in names:
            if not isinstance(v, str) or not _IFNAME.match(v):
                where.fail("match.interface", f"{v!r} is not an interface name")
        fields["interface"] = tuple(names)
    for key in ("remote_port", "local_port"):
        if key in data:
            fields[key] = tuple(_int(where, f"match.{key}", v, 1, 65535)
                                for v in _one_or_list(where, f"match.{key}", data[key], MAX_PORTS))
    return Match(**fields)


def _prefix(where: _Where, key: str, raw) -> Network:
    if not isinstance(raw, str):
        where.fail(key, f"expected an address or prefix string, got {raw!r}")
    try:
        network = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError as exc:
        problem = str(exc)
    else:
        if network.with_prefixlen == ipaddress.ip_interface(raw.strip()).with_prefixlen:
            return network
        where.fail(key, f"{raw!r} has host bits set", hint=f"did you mean {network}?")
    where.fail(key, f"{raw!r} is not an address or prefix ({problem})")


def _parse_actions(where: _Where, raw, available_cc: list[str]) -> Actions:
    data = _table(where, "set", raw, _SET_KEYS)
    if not data:
        where.fail("set", "has no actions")
    fields: dict = {}
    if "mark" in data:
        fields["mark"] = _int(where, "set.mark", data["mark"], 0, U32_MAX)
    if "priority" in data:
        fields["priority"] = _priority(where, data["priority"])
    if "congestion" in data:
        fields["congestion"] = _congestion(where, data["congestion"], available_cc)
    if "max_pacing_rate" in data:
        fields["max_pacing_rate"] = _pacing_rate(where, data["max_pacing_rate"])
    if "tos" in data:
        tos = _int(where, "set.tos", data["tos"], 0, 255)
        if tos & 0x3:
            where.fail("set.tos", f"{tos:#04x} sets ECN bits (the low two), which TCP manages itself",
                       hint=f"use {tos & ~0x3:#04x} (DSCP {tos >> 2} is tos = DSCP << 2)")
        fields["tos"] = tos
    if "notsent_lowat" in data:
        fields["notsent_lowat"] = _int(where, "set.notsent_lowat", data["notsent_lowat"], 0, INT_MAX)
    return Actions(**fields)


def _priority(where: _Where, raw) -> int:
    if isinstance(raw, str):
        m = _CLASS_ID.match(raw)
        if not m:
            where.fail("set.priority", f"{raw!r} is neither an integer nor a tc class id like \"1:2\"")
        return int(m[1], 16) << 16 | int(m[2], 16)
    return _int(where, "set.priority", raw, 0, U32_MAX)


def _congestion(where: _Where, raw, available_cc: list[str]) -> str:
    if not isinstance(raw, str) or not raw:
        where.fail("set.congestion", f"expected a congestion control name, got {raw!r}")
    if raw == "cdg":
        where.fail("set.congestion", "bpf_setsockopt refuses 'cdg' (it keeps a pointer BPF could overwrite)")
    if raw not in available_cc:
        where.fail("set.congestion", f"{raw!r} is not available (tcp_available_congestion_control: "
                   f"{' '.join(available_cc) or 'unreadable'})",
                   hint="load its module (modprobe tcp_<name>) or register the BPF congestion control first")
    if len(raw.encode()) >= TCP_CA_NAME_MAX:
        where.fail("set.congestion", f"{raw!r} is longer than {TCP_CA_NAME_MAX - 1} bytes")
    return raw


def _pacing_rate(where: _Where, raw) -> int:
    key = "set.max_pacing_rate"
    if isinstance(raw, str):
        m = _RATE.match(raw)
        if not m:
            where.fail(key, f"{raw!r} is not a rate (bytes per second as an integer, or e.g. \"20mbit\")")
        bits = float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m[2].lower()]
        rate = int(bits / 8)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        rate = raw
    else:
        where.fail(key, f"expected bytes per second or a rate string, got {raw!r}")
    if not 1 <= rate <= PACING_RATE_MAX:
        where.fail(key, f"{raw!r} is out of range: 1..{PACING_RATE_MAX} bytes per second "
                   "(the option is a 32-bit int; about 34.3 Gbit/s at most)")
    return rate


# ---------------------------------------------------------------- interfaces


def interface_addresses(netns: str | None = None) -> dict[str, list[Network]]:
    """Interface name → its addresses (as /32 or /128 networks), in a network
    namespace by name (/run/netns/NAME) or the current one."""
    from bpfkit import netns as namespaces, pyroute2_lean

    pyroute2_lean.use()
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr = namespaces.iproute_in(netns)  # refuses a missing name or a symlink in /run/netns
    except (OSError, NetlinkError) as exc:
        raise UsageError(f"cannot read interfaces{f' in netns {netns}' if netns else ''}: {exc}") from None
    try:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out: dict[str, list[Network]] = {name: [] for name in names.values()}
        for msg in ipr.get_addr():
            # IFA_LOCAL is our end (IFA_ADDRESS is the peer on point-to-point IPv4 links).
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            name = names.get(msg["index"])
            if name is None or address is None:
                continue
            out[name].append(ipaddress.ip_network(address.split("%")[0]))
        return out
    finally:
        ipr.close()


def resolve(policy: Policy, netns: str | None = None,
            addresses: dict[str, list[Network]] | None = None) -> ResolvedPolicy:
    """Turn interface matches into the interfaces' current addresses.
    addresses: interface name → addresses (read from the system if None)."""
    needs_interfaces = any(r.match.interface for r in policy.rules)
    if addresses is None and needs_interfaces:
        addresses = interface_addresses(netns)
    warnings = []
    resolved = []
    for rule in policy.rules:
        where = _Where(policy.source, rule.label)
        prefixes: list[Network] = list(rule.match.local_address)
        for name in rule.match.interface:
            if name not in addresses:
                where.fail("match.interface", f"no interface named {name!r}"
                           + (f" in netns {netns}" if netns else ""),
                           hint=None if netns else "interfaces in another namespace need --netns NAME")
            if not addresses[name]:
                warnings.append(f"{policy.source}: {rule.label}: interface {name} has no address now; "
                                "the rule matches nothing until the next `apply`")
            prefixes.extend(addresses[name])
        if len(prefixes) > MAX_PREFIXES:
            where.fail("match.interface", f"resolves to {len(prefixes)} addresses, at most {MAX_PREFIXES} "
                       "per rule are supported", hint="match the prefix with local_address instead")
        resolved.append(ResolvedRule(rule, tuple(prefixes)))
    return ResolvedPolicy(policy, tuple(resolved), netns, tuple(warnings))


# ---------------------------------------------------------------- encoding

# The C structs of bpf/subflow_opts.bpf.c, checked against the object's BTF when
# it is opened (libbpf.Layout). Addresses and masks in network byte order.
_PREFIX = Layout("subflow_prefix", "<B3x16s16s", ("family", "addr", "mask"))
_RULE_HEAD = Layout("subflow_rule", f"<IIBBBBBB2x{MAX_PORTS}H{MAX_PORTS}H",
                    ("match", "actions", "role", "side", "backup", "nr_prefixes", "nr_remote_ports",
                     "nr_local_ports", "remote_ports", "local_ports"), complete=False)
_PREFIXES_AT = _RULE_HEAD.size  # then MAX_PREFIXES struct subflow_prefix
_RULE_TAIL = Layout("subflow_rule", f"<IIIII{TCP_CA_NAME_MAX}s",
                    ("mark", "priority", "max_pacing_rate", "tos", "notsent_lowat", "congestion"),
                    offset=_PREFIXES_AT + MAX_PREFIXES * _PREFIX.size)
RULE_SIZE = _RULE_TAIL.offset + _RULE_TAIL.size
POLICY = Layout("subflow_policy", "<I2I", ("active", "nr_rules"))
RULE_STATS = Layout("subflow_rule_stats", "<QQiI", ("applied", "failed", "last_error", "last_failed"))
TOTALS = Layout("subflow_totals", "<QQQ", ("seen", "unmatched", "reapplied"))
LAYOUTS = (_PREFIX, _RULE_HEAD, _RULE_TAIL, POLICY, RULE_STATS, TOTALS)


def encode_prefix(network: Network) -> bytes:
    family = AF_INET if network.version == 4 else AF_INET6
    return _PREFIX.pack(family, network.network_address.packed.ljust(16, b"\0"),
                        network.netmask.packed.ljust(16, b"\0"))


def encode_rule(resolved: ResolvedRule) -> bytes:
    m, a = resolved.rule.match, resolved.rule.actions
    match_bits = 0
    if m.role:
        match_bits |= MATCH_BITS["role"]
    if m.side:
        match_bits |= MATCH_BITS["side"]
    if m.backup is not None:
        match_bits |= MATCH_BITS["backup"]
    if m.local_address or m.interface:
        match_bits |= MATCH_BITS["local"]
    if m.remote_port:
        match_bits |= MATCH_BITS["remote_port"]
    if m.local_port:
        match_bits |= MATCH_BITS["local_port"]
    action_bits = 0
    for key, _ in a.items():
        action_bits |= SET_BITS[key]
    head = _RULE_HEAD.pack(match_bits, action_bits, ROLES.get(m.role, 0), SIDES.get(m.side, 0), int(bool(m.backup)),
                           len(resolved.prefixes), len(m.remote_port), len(m.local_port),
                           *m.remote_port, *[0] * (MAX_PORTS - len(m.remote_port)),
                           *m.local_port, *[0] * (MAX_PORTS - len(m.local_port)))
    prefixes = b"".join(encode_prefix(p) for p in resolved.prefixes)
    prefixes = prefixes.ljust(MAX_PREFIXES * _PREFIX.size, b"\0")
    tail = _RULE_TAIL.pack(a.mark or 0, a.priority or 0, a.max_pacing_rate or 0, a.tos or 0, a.notsent_lowat or 0,
                           (a.congestion or "").encode())
    return head + prefixes + tail


def decode_rule_actions(raw: bytes) -> dict:
    """The actions a rules-map entry carries (for checks and `show`)."""
    match_bits, action_bits = struct.unpack_from("<II", raw)
    values = _RULE_TAIL.unpack_from(raw, _RULE_TAIL.offset)
    by_key = dict(zip(("mark", "priority", "max_pacing_rate", "tos", "notsent_lowat"), values[:5]))
    by_key["congestion"] = values[5].rstrip(b"\0").decode()
    return {k: by_key[k] for k, bit in SET_BITS.items() if action_bits & bit}


@dataclass(frozen=True)
class Encoded:
    rules: tuple[bytes, ...]  # one RULE_SIZE entry per rule, in order
    info: bytes  # INFO_SIZE bytes of NUL-padded JSON for `show`


def encode(resolved: ResolvedPolicy, cgroup: str, applied_at: str) -> Encoded:
    info = json.dumps({"source": str(Path(resolved.policy.source).resolve()) if resolved.policy.source else None,
                       "cgroup": cgroup, "netns": resolved.netns, "applied_at": applied_at,
                       "rules": [r.to_dict() for r in resolved.rules]}, separators=(",", ":")).encode()
    if len(info) >= INFO_SIZE:
        raise UsageError(f"{resolved.policy.source}: the policy is too large to keep ({len(info)} bytes of "
                         f"description, at most {INFO_SIZE - 1})", hint="shorten rule names or merge rules")
    return Encoded(tuple(encode_rule(r) for r in resolved.rules), info.ljust(INFO_SIZE, b"\0"))


def decode_info(raw: bytes) -> dict:
    text = raw.rstrip(b"\0")
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


# ---------------------------------------------------------------- describing


def format_value(key: str, value) -> str:
    if key == "mark":
        return f"{value:#x}"
    if key == "priority":
        return f"{value >> 16:x}:{value & 0xFFFF:x}" if value > 0xFFFF else str(value)
    if key == "tos":
        return f"{value:#04x}"
    if key == "max_pacing_rate":
        return f"{value * 8 / 1e6:g}mbit"
    return str(value)


def describe_match(match: dict) -> str:
    if not match:
        return "any subflow"
    parts = []
    for key, value in match.items():
        shown = ",".join(str(v) for v in value) if isinstance(value, list) else str(value).lower()
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def describe_actions(actions: dict) -> str:
    return " ".join(f"{k}={format_value(k, v)}" for k, v in actions.items())
