"""Subflow policy files: validation messages and the byte encoding for the BPF maps."""

import ipaddress
import json
import struct
from pathlib import Path

import pytest

from bpfkit.subflow import policy as sp
from bpfkit.errors import UsageError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subflow-policy.toml"
CC = ["reno", "cubic", "bbr", "bpf_minrtt"]


def parse(text: str, available_cc=CC):
    import tomllib

    return sp.parse_policy(tomllib.loads(text), "p.toml", available_cc)


def error_of(text: str, available_cc=CC) -> str:
    with pytest.raises(UsageError) as exc:
        parse(text, available_cc)
    return str(exc.value)


def rule(match: str = "", actions: str = "mark = 1", extra: str = "") -> str:
    return f"[[rule]]\n{extra}\n[rule.match]\n{match}\n[rule.set]\n{actions}\n"


# ---------------------------------------------------------------- a valid policy


def test_example_policy_is_valid_and_documented_keys_parse():
    policy = sp.load_policy(EXAMPLE, available_cc=CC)
    assert [r.name for r in policy.rules] == ["lte", "backup", "office-https"]
    lte, backup, office = policy.rules
    assert lte.match.role == "join" and lte.match.interface == ("wwan0",)
    assert lte.actions.to_dict() == {"mark": 2, "congestion": "bbr", "max_pacing_rate": 2_500_000}
    assert backup.match.backup is True
    assert backup.actions.to_dict() == {"priority": 0x10003, "tos": 0x20}
    assert office.match.local_address == (ipaddress.ip_network("192.0.2.0/24"),
                                          ipaddress.ip_network("2001:db8:1::/64"))
    assert office.match.remote_port == (443, 8443) and office.match.side == "active"
    resolved = sp.resolve(policy, addresses={"wwan0": [ipaddress.ip_network("100.64.0.7/32")]})
    assert resolved.rules[0].prefixes == (ipaddress.ip_network("100.64.0.7/32"),)
    assert resolved.rules[0].to_dict()["resolved_local"] == ["100.64.0.7/32"]


def test_rules_keep_file_order_and_a_rule_without_match_matches_everything():
    policy = parse(rule(actions="mark = 1") + rule('role = "join"', "mark = 2") + "[[rule]]\n[rule.set]\nmark = 3\n")
    assert [r.index for r in policy.rules] == [1, 2, 3]
    assert policy.rules[2].match == sp.Match()


@pytest.mark.parametrize("value, expected", [
    ('"20mbit"', 2_500_000), ('"1.5Gbit"', 187_500_000), ('"800kbit"', 100_000), ('"8bit"', 1), ("125000", 125000),
])
def test_pacing_rates(value, expected):
    assert parse(rule(actions=f"max_pacing_rate = {value}")).rules[0].actions.max_pacing_rate == expected


@pytest.mark.parametrize("value, expected", [('"1:2"', 0x10002), ('"ffff:ff"', 0xFFFF00FF), ("6", 6)])
def test_priority_as_integer_or_tc_class_id(value, expected):
    assert parse(rule(actions=f"priority = {value}")).rules[0].actions.priority == expected


def test_bpf_congestion_controls_are_accepted_when_registered():
    assert parse(rule(actions='congestion = "bpf_minrtt"')).rules[0].actions.congestion == "bpf_minrtt"


# ---------------------------------------------------------------- one clear error per problem


@pytest.mark.parametrize("text, message", [
    ("", "p.toml: defines no rules"),
    ("rules = 1\n", "p.toml: rules: unknown key (a policy holds only [[rule]] tables)"),
    ("rule = 3\n", "p.toml: rule: must be an array of tables"),
    (rule(extra="colour = 1"), "p.toml: rule 1: colour: unknown key"),
    (rule(extra='name = "x"', match="rol = 1"), 'p.toml: rule 1 ("x"): match.rol: unknown key (known here:'),
    (rule(actions="marks = 1"), "p.toml: rule 1: set.marks: unknown key"),
    ("[[rule]]\n[rule.match]\nrole = 'join'\n", "p.toml: rule 1: set: required"),
    ("[[rule]]\n[rule.set]\n", "p.toml: rule 1: set: has no actions"),
    (rule('role = "first"'), "p.toml: rule 1: match.role: 'first' is not one of: initial, join"),
    (rule('side = "client"'), "p.toml: rule 1: match.side: 'client' is not one of: active, passive"),
    (rule('backup = "yes"'), "p.toml: rule 1: match.backup: expected true or false"),
    (rule('local_address = "10.0.0.0/8"\ninterface = "eth0"'), "use either local_address or interface"),
    (rule('local_address = "10.0.0.1/8"'), "p.toml: rule 1: match.local_address: '10.0.0.1/8' has host bits set"),
    (rule('local_address = "10.0.0.0/33"'), "match.local_address: '10.0.0.0/33' is not an address or prefix"),
    (rule('local_address = ["10.0.0.0/8", "wifi"]'), "match.local_address: 'wifi' is not an address or prefix"),
    (rule("local_address = 10"), "match.local_address: expected an address or prefix string"),
    (rule("local_address = []"), "match.local_address: is an empty list"),
    (rule('interface = "a/b"'), "match.interface: 'a/b' is not an interface name"),
    (rule('interface = "sixteen-chars-xx"'), "match.interface: 'sixteen-chars-xx' is not an interface name"),
    (rule("remote_port = 0"), "match.remote_port: 0 is out of range (1..65535)"),
    (rule("local_port = 65536"), "match.local_port: 65536 is out of range (1..65535)"),
    (rule(f"remote_port = {list(range(1, 10))}"), "match.remote_port: 9 values, at most 8"),
    (rule("remote_port = true"), "match.remote_port: expected an integer, got True"),
    (rule(actions="mark = -1"), "set.mark: -1 is out of range (0..4294967295)"),
    (rule(actions="mark = 4294967296"), "set.mark: 4294967296 is out of range"),
    (rule(actions="mark = true"), "set.mark: expected an integer, got True"),
    (rule(actions='mark = "0x2"'), "set.mark: expected an integer, got '0x2'"),
    (rule(actions='priority = "1:2:3"'), "set.priority: '1:2:3' is neither an integer nor a tc class id"),
    (rule(actions="priority = 4294967296"), "set.priority: 4294967296 is out of range"),
    (rule(actions='congestion = "vegas"'), "set.congestion: 'vegas' is not available "
                                           "(tcp_available_congestion_control: reno cubic bbr bpf_minrtt)"),
    (rule(actions='congestion = "cdg"'), "set.congestion: bpf_setsockopt refuses 'cdg'"),
    (rule(actions="congestion = 1"), "set.congestion: expected a congestion control name"),
    (rule(actions="max_pacing_rate = 0"), "set.max_pacing_rate: 0 is out of range: 1..4294967294 bytes per second"),
    (rule(actions='max_pacing_rate = "35gbit"'), "set.max_pacing_rate: '35gbit' is out of range"),
    (rule(actions='max_pacing_rate = "fast"'), "set.max_pacing_rate: 'fast' is not a rate"),
    (rule(actions='max_pacing_rate = "20mbps"'), "set.max_pacing_rate: '20mbps' is not a rate"),
    (rule(actions="tos = 256"), "set.tos: 256 is out of range (0..255)"),
    (rule(actions="tos = 0x22"), "set.tos: 0x22 sets ECN bits"),
    (rule(actions="notsent_lowat = -1"), "set.notsent_lowat: -1 is out of range (0..2147483647)"),
    (rule(actions="notsent_lowat = 2147483648"), "set.notsent_lowat: 2147483648 is out of range"),
])
def test_invalid_policies_name_file_rule_and_key(text, message):
    assert message in error_of(text)


def test_errors_name_the_failing_rule_among_many():
    text = rule(actions="mark = 1") + rule(extra='name = "lte"', actions='congestion = "nope"')
    assert error_of(text).startswith('p.toml: rule 2 ("lte"): set.congestion:')


def test_too_many_rules():
    assert "33 rules, at most 32" in error_of(rule() * 33)


def test_cc_hint_says_how_to_make_it_available():
    with pytest.raises(UsageError) as exc:
        parse(rule(actions='congestion = "vegas"'))
    assert "modprobe" in exc.value.hint


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="cannot read the policy file"):
        sp.load_policy(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\n")
    with pytest.raises(UsageError, match=r"bad.toml: not valid TOML"):
        sp.load_policy(bad)


# ---------------------------------------------------------------- interfaces


def test_interfaces_resolve_to_all_their_addresses():
    policy = parse(rule('interface = ["eth1", "wlan0"]'))
    addresses = {"eth1": [ipaddress.ip_network("10.2.1.1/32"), ipaddress.ip_network("fe80::1/128")],
                 "wlan0": [ipaddress.ip_network("192.168.1.5/32")]}
    resolved = sp.resolve(policy, addresses=addresses)
    assert [str(p) for p in resolved.rules[0].prefixes] == ["10.2.1.1/32", "fe80::1/128", "192.168.1.5/32"]
    assert resolved.warnings == ()


def test_unknown_interface_is_an_error_naming_the_rule():
    with pytest.raises(UsageError, match=r"p.toml: rule 1: match.interface: no interface named 'wwan0'"):
        sp.resolve(parse(rule('interface = "wwan0"')), addresses={"eth0": []})


def test_interface_without_address_warns_and_matches_nothing():
    resolved = sp.resolve(parse(rule('interface = "wwan0"')), addresses={"wwan0": []})
    assert "interface wwan0 has no address now" in resolved.warnings[0]
    raw = sp.encode_rule(resolved.rules[0])
    match_bits, nr_prefixes = struct.unpack_from("<I", raw)[0], raw[11]
    assert match_bits & sp.MATCH_BITS["local"] and nr_prefixes == 0  # the BPF side: matches nothing


def test_too_many_interface_addresses():
    addresses = {"eth0": [ipaddress.ip_network(f"10.0.0.{i}/32") for i in range(17)]}
    with pytest.raises(UsageError, match="resolves to 17 addresses, at most 16"):
        sp.resolve(parse(rule('interface = "eth0"')), addresses=addresses)


def test_unknown_netns_is_a_usage_error():
    with pytest.raises(UsageError, match="no network namespace 'no-such-ns-42'"):
        sp.interface_addresses("no-such-ns-42")


# ---------------------------------------------------------------- encoding (mirrors bpf/subflow_opts.bpf.c)


def test_layout_sizes_match_the_bpf_structs():
    assert sp.RULE_SIZE == 660  # struct subflow_rule
    assert (sp.POLICY.size, sp.RULE_STATS.size, sp.TOTALS.size) == (12, 24, 24)


def test_rule_encoding():
    policy = parse(rule('role = "join"\nside = "passive"\nbackup = false\nlocal_address = ["10.2.0.0/16", "2001:db8::/32"]'
                        "\nremote_port = [443, 80]\nlocal_port = 5001",
                        'mark = 0x2\npriority = 7\ncongestion = "reno"\nmax_pacing_rate = 1000\ntos = 0x20\n'
                        "notsent_lowat = 4096"))
    raw = sp.encode_rule(sp.resolve(policy).rules[0])
    assert len(raw) == sp.RULE_SIZE
    match_bits, action_bits, role, side, backup, nr_prefixes, nr_rports, nr_lports = struct.unpack_from("<IIBBBBBB", raw)
    assert match_bits == 0b111111  # role, side, local, remote_port, local_port, backup
    assert action_bits == 0b111111
    assert (role, side, backup, nr_prefixes, nr_rports, nr_lports) == (2, 2, 0, 2, 2, 1)
    assert struct.unpack_from("<8H", raw, 16) == (443, 80, 0, 0, 0, 0, 0, 0)
    assert struct.unpack_from("<8H", raw, 32) == (5001, 0, 0, 0, 0, 0, 0, 0)
    v4 = raw[48:84]
    assert v4[0] == sp.AF_INET
    assert v4[4:20] == bytes([10, 2, 0, 0]) + bytes(12)  # address, network byte order
    assert v4[20:36] == bytes([255, 255, 0, 0]) + bytes(12)  # mask
    v6 = raw[84:120]
    assert v6[0] == sp.AF_INET6
    assert v6[4:20] == ipaddress.ip_address("2001:db8::").packed
    assert v6[20:36] == bytes([255] * 4) + bytes(12)
    assert raw[120:48 + 16 * 36] == bytes(14 * 36)  # unused prefix slots
    assert sp.decode_rule_actions(raw) == {"mark": 2, "priority": 7, "congestion": "reno",
                                           "max_pacing_rate": 1000, "tos": 0x20, "notsent_lowat": 4096}
    assert raw[-16:] == b"reno" + bytes(12)  # NUL-terminated name


def test_unset_fields_are_not_flagged():
    raw = sp.encode_rule(sp.resolve(parse(rule(actions="mark = 0"))).rules[0])
    assert struct.unpack_from("<II", raw) == (0, sp.SET_BITS["mark"])
    assert sp.decode_rule_actions(raw) == {"mark": 0}


def test_encoded_description_round_trips_and_has_a_size_limit():
    resolved = sp.resolve(parse(rule(extra='name = "lte"', match='role = "join"')))
    encoded = sp.encode(resolved, "/sys/fs/cgroup/x", "2025-01-01T00:00:00+00:00")
    assert len(encoded.info) == sp.INFO_SIZE
    info = sp.decode_info(encoded.info)
    assert info["cgroup"] == "/sys/fs/cgroup/x"
    assert info["rules"] == [{"index": 1, "name": "lte", "match": {"role": "join"}, "set": {"mark": 1}}]
    assert json.loads(encoded.info.rstrip(b"\0"))  # plain JSON in the map

    # The largest policy the limits allow still fits.
    prefixes = [f"2001:db8:{i:x}:ffff:ffff:ffff:ffff:ff00/120" for i in range(16)]
    largest = rule(extra=f'name = "{"n" * 64}"', match=f"local_address = {json.dumps(prefixes)}\n"
                   f'remote_port = {list(range(65528, 65536))}\nlocal_port = {list(range(65528, 65536))}\n'
                   'role = "initial"\nside = "passive"\nbackup = false',
                   actions='mark = 4294967295\npriority = 4294967295\ncongestion = "bpf_minrtt"\n'
                           'max_pacing_rate = 4294967294\ntos = 252\nnotsent_lowat = 2147483647') * 32
    encoded = sp.encode(sp.resolve(parse(largest)), "/sys/fs/cgroup/" + "c" * 200, "2025-01-01T00:00:00+00:00")
    assert len(sp.decode_info(encoded.info)["rules"]) == 32


def test_descriptions_for_show():
    assert sp.describe_match({}) == "any subflow"
    assert sp.describe_match({"role": "join", "backup": True, "remote_port": [443, 80]}) == \
        "role=join backup=true remote_port=443,80"
    assert sp.describe_actions({"mark": 2, "priority": 0x10003, "tos": 0x20, "max_pacing_rate": 2_500_000}) == \
        "mark=0x2 priority=1:3 tos=0x20 max_pacing_rate=20mbit"
