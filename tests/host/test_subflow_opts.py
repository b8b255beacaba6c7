"""Per-subflow socket options (`bpfkit subflow`) on a real kernel.

Every check looks at the subflows themselves (sock_diag from inside the
namespaces, MPTCP_FULL_INFO, interface counters, a probe program reading the
kernel's socket fields), not at "the program ran". The VM tier runs these same
functions (tests/distro/test_subflow_opts.py, on Debian's stock 6.12).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyroute2 import NetNS

from bpfkit import cgroup, cli
from bpfkit.subflow import sockops
from bpfkit.loader import build, libbpf
from bpfkit.subflow import policy as sp
from bpfkit.errors import AttachError, UsageError

from tests.subflow_lab import INITIAL_LOCAL, JOIN_LOCAL, SERVER_PORT, Ipv6Lab, TwoPathLab

pytestmark = pytest.mark.host

TESTS_DIR = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


@pytest.fixture
def cg(no_leftover_bpf):
    """A cgroup whose subflow policy (if any) is cleared before it is removed
    (and before no_leftover_bpf looks for leftovers)."""
    with cgroup.temporary(prefix="bpfkit-subflow-") as path:
        try:
            yield path
        finally:
            sockops.clear(path)


def write_policy(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    """`bpfkit subflow ARGS` in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["subflow", *args])
    return code, out.getvalue(), err.getvalue()


def rules_of(cg_path: Path) -> dict:
    """What `show --json` says about one cgroup."""
    [policy] = sockops.show(cg_path)
    return policy


def pinned_state(cg_path: Path) -> dict:
    """Raw content of every pinned map plus the link id: to prove nothing changed."""
    directory = sockops.pin_dir(cgroup.cgroup_id(cg_path))
    with libbpf.Link.from_pin(directory / "link") as link:
        state: dict = {"link_id": link.info()["id"]}
    for name in sockops.MAP_NAMES:
        m = libbpf.Map.from_pin(directory / name)
        state[name] = [m.lookup(i) for i in range(m.max_entries)]
        m.close()
    return state


@contextlib.contextmanager
def probe_on(cg_path: Path):
    """tests/bpf/subflow_probe.bpf.c on the cgroup: yields a function giving
    what the kernel held for the subflow (local port, remote port) when it
    left ESTABLISHED."""
    obj = libbpf.open_object(build.compile_bpf(TESTS_DIR / "bpf" / "subflow_probe.bpf.c").path)
    try:
        with obj.program("subflow_probe").attach_cgroup(cg_path):
            def seen(local_port: int, remote_port: int) -> dict | None:
                raw = obj.map("seen").lookup(struct.pack("<HH", local_port, remote_port))
                if raw is None:
                    return None
                mark, priority, notsent_lowat, tos, pacing = struct.unpack("<IIIIQ", raw)
                return {"mark": mark, "priority": priority, "notsent_lowat": notsent_lowat, "tos": tos,
                        "max_pacing_rate": pacing}
            yield seen
    finally:
        obj.close()


def wait_for(read, done, timeout: float = 10.0):
    """Poll read() until done(value) (for state the kernel updates asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def ipv4(prefixes: list[str]) -> list[str]:
    """Interfaces also have IPv6 link-local addresses; these tests use IPv4."""
    return [p for p in prefixes if ":" not in p]


def default_cc() -> str:
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def other_cc() -> str:
    """An available congestion control that is not the default."""
    for name in ("reno", "cubic", "bbr"):
        if name in sp.available_congestion_controls() and name != default_cc():
            return name
    raise AssertionError("need a congestion control besides the default")


# ---------------------------------------------------------------- classification and every option


def test_each_subflow_gets_its_rules_options_on_both_sides(tmp_path, cg):
    """Four rules, one per (side, role): every subflow carries exactly its
    rule's options, read back per subflow from sock_diag and from the kernel's
    socket fields (probe). The join rule matches by interface, resolved in the
    client's namespace."""
    cc_join = other_cc()
    cc_first = next(cc for cc in sp.available_congestion_controls() if cc != cc_join)
    with TwoPathLab(cg) as lab:
        policy = write_policy(tmp_path, f"""
            [[rule]]
            name = "active join"
            [rule.match]
            side = "active"
            role = "join"
            interface = "eth1"
            remote_port = {SERVER_PORT}
            [rule.set]
            mark = 0x12
            priority = 5
            congestion = "{cc_join}"
            tos = 0x20
            max_pacing_rate = "400mbit"
            notsent_lowat = 65536

            [[rule]]
            name = "active initial"
            [rule.match]
            side = "active"
            role = "initial"
            local_address = "10.1.1.0/24"
            [rule.set]
            mark = 0x11
            priority = "1:3"
            congestion = "{cc_first}"
            notsent_lowat = 32768

            [[rule]]
            name = "passive join"
            [rule.match]
            side = "passive"
            role = "join"
            local_port = {SERVER_PORT}
            [rule.set]
            mark = 0x22
            tos = 0x48
            notsent_lowat = 16384

            [[rule]]
            name = "passive initial"
            [rule.match]
            side = "passive"
            role = "initial"
            [rule.set]
            mark = 0x21
            priority = 2
            """)
        code, out, err = run_cli("apply", str(policy), "--cgroup", str(cg), "--netns", lab.topo.client_ns)
        assert code == 0, err
        assert "attached subflow policy" in out
        with probe_on(cg) as probe:
            client = lab.connect(seconds=0.3)
            join_c, join_s = lab.subflow_pair(client, JOIN_LOCAL)
            first_c, first_s = lab.subflow_pair(client, INITIAL_LOCAL)
            assert all(s.mptcp_subflow for s in (join_c, join_s, first_c, first_s))

            assert (join_c.mark, join_c.priority, join_c.congestion, join_c.tos) == (0x12, 5, cc_join, 0x20)
            assert join_c.max_pacing_rate == 400_000_000 // 8
            assert (first_c.mark, first_c.priority, first_c.congestion) == (0x11, 0x10003, cc_first)
            assert first_c.max_pacing_rate == 2**64 - 1  # untouched
            assert (join_s.mark, join_s.tos, join_s.congestion) == (0x22, 0x48, default_cc())
            assert (first_s.mark, first_s.priority, first_s.tos) == (0x21, 2, 0)

            client.close()
            ports = {"join_c": join_c, "first_c": first_c, "join_s": join_s, "first_s": first_s}
            seen = wait_for(lambda: {name: probe(s.local[1], s.remote[1]) for name, s in ports.items()},
                            lambda found: None not in found.values())
        # Cross-check from the kernel's own socket fields, and TCP_NOTSENT_LOWAT
        # which sock_diag does not report.
        assert seen["join_c"]["mark"] == 0x12 and seen["join_c"]["priority"] == 5
        assert seen["join_c"]["tos"] == 0x20 and seen["join_c"]["max_pacing_rate"] == 400_000_000 // 8
        # The kernel sets a subflow's notsent_lowat to "unlimited" when it creates
        # it (and on passive joins when they complete); the policy applies after.
        assert {name: seen[name]["notsent_lowat"] for name in ("join_c", "first_c", "join_s")} == {
            "join_c": 65536, "first_c": 32768, "join_s": 16384}

        policy_state = rules_of(cg)
        assert [(r["name"], r["applied"], r["failed"]) for r in policy_state["rules"]] == [
            ("active join", 1, 0), ("active initial", 1, 0), ("passive join", 1, 0), ("passive initial", 1, 0)]
        assert policy_state["subflows_seen"] == 4 and policy_state["subflows_unmatched"] == 0
        assert ipv4(policy_state["rules"][0]["resolved_local"]) == [f"{JOIN_LOCAL}/32"]


def test_ipv6_subflows_match_ipv6_prefixes_and_get_a_traffic_class(tmp_path, cg):
    """IPv6 subflows: prefixes compare all four words, and `tos` becomes
    IPV6_TCLASS (sock_diag INET_DIAG_TCLASS)."""
    with Ipv6Lab(cg) as lab:
        sockops.apply(write_policy(tmp_path, f"""
            [[rule]]
            [rule.match]
            side = "active"
            local_address = "{lab.JOIN_LOCAL}/128"
            [rule.set]
            tos = 0x28
            mark = 0x6
            [[rule]]
            [rule.match]
            local_address = "fd00::/16"
            [rule.set]
            mark = 0x5
            """), cg)
        client = lab.connect()
        join_c, join_s = lab.subflow_pair(client, lab.JOIN_LOCAL)
        first_c, first_s = lab.subflow_pair(client, lab.INITIAL_LOCAL)
        assert (join_c.mark, join_c.tos) == (0x6, 0x28)
        assert (first_c.mark, first_c.tos, join_s.mark, join_s.tos, first_s.mark) == (0x5, 0, 0x5, 0, 0x5)
        assert [r["applied"] for r in rules_of(cg)["rules"]] == [1, 3]


def test_passive_joins_completed_late_keep_their_options(tmp_path, cg):
    """A server busy with its accepted socket (setsockopt in a loop) makes the
    kernel complete some joins only after PASSIVE_ESTABLISHED, copying the
    MPTCP socket's options (mark 0) over the policy's. The program notices
    (subflow_id still 0) and applies the rule again at the join's next packet.
    Which joins complete late is a race: without the re-application, 3 of 40
    joins lost their mark on the reference host."""
    with TwoPathLab(cg, busy_server=True) as lab:
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            side = "passive"
            role = "join"
            [rule.set]
            mark = 0x22
            """), cg)
        marks = []
        for _ in range(8):
            client = lab.connect(seconds=0.1)
            marks.append(lab.socket("server", remote=tuple(client.subflow_by_local(JOIN_LOCAL)["local"])).mark)
            client.close()
        assert marks == [0x22] * 8
        policy = rules_of(cg)
        assert (policy["rules"][0]["applied"], policy["rules"][0]["failed"]) == (8, 0)
        assert policy["late_joins_reapplied"] <= 8  # how many were late varies from run to run


def test_plain_tcp_is_left_alone(tmp_path, cg):
    with TwoPathLab(cg) as lab:
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.set]
            mark = 0x9
            congestion = "reno"
            """), cg)
        client = lab.connect(plain=True)
        ours = lab.socket("client", local=(INITIAL_LOCAL, client.local_port))
        theirs = lab.socket("server", remote=(INITIAL_LOCAL, client.local_port))
        assert not ours.mptcp_subflow and not theirs.mptcp_subflow
        assert ours.mark == 0 and theirs.mark == 0
        assert ours.congestion == default_cc() and theirs.congestion == default_cc()
        assert rules_of(cg)["subflows_seen"] == 0
        # ...while an MPTCP connection from the same cgroup is handled.
        lab.connect()
        assert rules_of(cg)["subflows_seen"] == 4


def test_backup_endpoint_match(tmp_path, cg):
    """Path b's client endpoint has the backup flag: the join matches
    `backup = true` on both sides (client: its endpoint's flag; server: the
    peer's MP_JOIN backup bit), the initial subflows do not."""
    with TwoPathLab(cg, backup=True) as lab:
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            backup = true
            [rule.set]
            mark = 0x4
            [[rule]]
            [rule.set]
            mark = 0x1
            """), cg)
        client = lab.connect()
        join_c, join_s = lab.subflow_pair(client, JOIN_LOCAL)
        first_c, first_s = lab.subflow_pair(client, INITIAL_LOCAL)
        assert (join_c.mark, join_s.mark) == (0x4, 0x4)
        assert (first_c.mark, first_s.mark) == (0x1, 0x1)


# ---------------------------------------------------------------- what the options do


def _route_marked_via_path_a(lab: TwoPathLab, mark: int, table: int) -> None:
    """Client policy routing: packets with `mark` use `table`, whose default
    route goes out of eth0 (path a) whatever their source address. Without the
    mark, the lab routes 10.2.1.1 (the join) out of eth1 by source."""
    with NetNS(lab.topo.client_ns, flags=0) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        gateway = lab.topo.addresses["a"].router_client_side
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=eth0, table=table)
        ipr.rule("add", fwmark=mark, table=table, priority=50)


def test_mark_steers_the_join_onto_its_own_routing_table(tmp_path, cg):
    # Shaped paths, so that the join carries a fair share of the data (at
    # memory speed in a slow VM the initial subflow takes nearly everything).
    with TwoPathLab(cg, rate="20mbit", shaping="auto") as lab:
        _route_marked_via_path_a(lab, mark=0x2, table=200)

        def send_and_count(seconds: float):
            before = {i: lab.tx_bytes("client", i) for i in ("eth0", "eth1")}
            client = lab.connect(seconds=seconds)
            after = {i: lab.tx_bytes("client", i) for i in ("eth0", "eth1")}
            join_bytes = client.subflow_by_local(JOIN_LOCAL)["bytes_sent"]
            first_bytes = client.subflow_by_local(INITIAL_LOCAL)["bytes_sent"]
            client.close()
            return join_bytes, first_bytes, {i: after[i] - before[i] for i in before}

        # Control: no mark, so the join leaves by its source route (eth1).
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            role = "join"
            [rule.set]
            priority = 1
            """), cg)
        join_bytes, _, tx = send_and_count(2.0)
        assert join_bytes > 100_000, "the join must carry data for the comparison to mean anything"
        assert tx["eth1"] >= join_bytes

        # The policy marks the join: its SYN and data follow table 200 out of eth0.
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            role = "join"
            [rule.set]
            mark = 0x2
            """), cg)
        join_bytes, first_bytes, tx = send_and_count(2.0)
        assert join_bytes > 50_000  # both subflows now share path a
        assert tx["eth1"] < 0.1 * join_bytes, f"the marked join still left via eth1: {tx}, join {join_bytes}"
        assert tx["eth0"] >= first_bytes + join_bytes
        assert rules_of(cg)["rules"][0]["applied"] == 2  # both ends of the join (server side: no fwmark rule)


def test_pacing_cap_limits_that_subflows_share(tmp_path, cg):
    """Two equal 20 Mbit/s paths: uncapped, the join carries well over what a
    1 Mbit/s (125 kB/s) cap allows; capped, it carries no more than the cap,
    and the initial subflow carries more. Bytes per subflow from
    MPTCP_FULL_INFO; the margins also hold in a TCG-emulated VM."""
    seconds, cap = 4.0, 125_000  # bytes per second
    with TwoPathLab(cg, rate="20mbit", shaping="auto") as lab:
        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            role = "join"
            [rule.set]
            priority = 1
            """), cg)
        client = lab.connect(seconds=seconds)
        uncapped = client.subflow_by_local(JOIN_LOCAL)["bytes_sent"]
        client.close()

        sockops.apply(write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            role = "join"
            [rule.set]
            max_pacing_rate = "1mbit"
            """), cg)
        client = lab.connect(seconds=seconds)
        join = lab.socket("client", local=tuple(client.subflow_by_local(JOIN_LOCAL)["local"]))
        capped = client.subflow_by_local(JOIN_LOCAL)["bytes_sent"]
        first = client.subflow_by_local(INITIAL_LOCAL)["bytes_sent"]
        client.close()

        allowed = cap * (seconds + 0.5)  # the sending time, plus setup and the final wait
        assert join.max_pacing_rate == cap
        assert capped <= 1.15 * allowed + 100_000, f"capped join sent {capped} bytes, the cap allows {allowed:.0f}"
        assert uncapped >= cap * seconds and uncapped >= 1.5 * capped, \
            f"uncapped, the join sent {uncapped}; capped {capped}: the cap made no difference"
        assert first > capped, f"initial subflow {first}, capped join {capped}"


def test_application_setsockopt_overrides_per_subflow_values(tmp_path, cg):
    """The documented interaction: setsockopt() on the MPTCP socket after the
    subflows exist is propagated by the kernel to every subflow, replacing the
    policy's values. Set before connect(), it is copied into each subflow at
    creation, before the policy runs: the policy wins."""
    with TwoPathLab(cg) as lab:
        cc = other_cc()
        sockops.apply(write_policy(tmp_path, f"""
            [[rule]]
            [rule.match]
            role = "join"
            [rule.set]
            mark = 0x2
            congestion = "{cc}"
            [[rule]]
            [rule.set]
            mark = 0x1
            """), cg)
        client = lab.connect(mark_before_connect=0x9)
        join = tuple(client.subflow_by_local(JOIN_LOCAL)["local"])
        first = tuple(client.subflow_by_local(INITIAL_LOCAL)["local"])
        assert (lab.socket("client", local=join).mark, lab.socket("client", local=first).mark) == (0x2, 0x1)
        assert lab.socket("client", local=join).congestion == cc

        assert client.command("setsockopt-mark 0x7") == "ok"
        assert client.command(f"setsockopt-congestion {default_cc()}") == "ok"
        for local in (join, first):
            s = lab.socket("client", local=local)
            assert (s.mark, s.congestion) == (0x7, default_cc())


def test_setsockopt_failures_are_counted_per_rule(tmp_path, cg, test_bpf):
    """A BPF congestion control is accepted while registered (and used by the
    subflow); once it is gone, the rule's setsockopt fails and `show` says so."""
    name = "bpfkit_sf_ca"
    obj = libbpf.open_object(build.compile_bpf(test_bpf("tcp_ca"), defines={
        "STRUCT_OPS_SECTION": '".struct_ops.link"', "CA_NAME": f'"{name}"'}).path)
    registration = obj.map("ca").attach_struct_ops()
    try:
        with TwoPathLab(cg) as lab:
            sockops.apply(write_policy(tmp_path, f"""
                [[rule]]
                [rule.match]
                role = "join"
                side = "active"
                [rule.set]
                congestion = "{name}"
                mark = 0x3
                """), cg)
            client = lab.connect()
            assert lab.socket("client", local=tuple(client.subflow_by_local(JOIN_LOCAL)["local"])).congestion == name
            client.close()

            registration.detach()
            registration = None
            client = lab.connect()
            join = lab.socket("client", local=tuple(client.subflow_by_local(JOIN_LOCAL)["local"]))
            assert join.congestion == default_cc() and join.mark == 0x3  # the other action still took
            [rule] = rules_of(cg)["rules"]
            assert (rule["applied"], rule["failed"]) == (1, 1)
            assert rule["last_failure"] == {"option": "TCP_CONGESTION", "error": "ENOENT"}
            code, out, _ = run_cli("show")
            assert "1 applied, 1 failed (last: TCP_CONGESTION ENOENT)" in out
    finally:
        if registration is not None:
            registration.detach()
        obj.close()


# ---------------------------------------------------------------- apply / show / clear lifecycle


def test_apply_again_swaps_rules_without_detaching(tmp_path, cg):
    with TwoPathLab(cg) as lab:
        first = sockops.apply(write_policy(tmp_path, """
            [[rule]]
            name = "old"
            [rule.match]
            role = "join"
            [rule.set]
            mark = 0x2
            """), cg)
        assert first.attached
        programs = libbpf.cgroup_program_ids(cg, "sock_ops")
        old_client = lab.connect()

        second = sockops.apply(write_policy(tmp_path, """
            [[rule]]
            name = "new"
            [rule.match]
            role = "join"
            [rule.set]
            mark = 0x3
            [[rule]]
            name = "catch-all"
            [rule.set]
            mark = 0x5
            """), cg)
        assert not second.attached
        assert (second.link_id, second.program_id) == (first.link_id, first.program_id)
        assert libbpf.cgroup_program_ids(cg, "sock_ops") == programs
        assert second.half != first.half

        new_client = lab.connect()
        marks = {(c, a): lab.socket("client", local=tuple(c.subflow_by_local(a)["local"])).mark
                 for c in (old_client, new_client) for a in (JOIN_LOCAL, INITIAL_LOCAL)}
        # New subflows follow the new rules; existing ones keep what they got.
        assert marks == {(old_client, JOIN_LOCAL): 0x2, (old_client, INITIAL_LOCAL): 0,
                         (new_client, JOIN_LOCAL): 0x3, (new_client, INITIAL_LOCAL): 0x5}
        state = rules_of(cg)
        # Counters start again with the new rules; the server side is in the cgroup
        # too, so each rule matched the new connection's subflow at both ends.
        assert [(r["name"], r["applied"]) for r in state["rules"]] == [("new", 2), ("catch-all", 2)]
        assert state["link_id"] == first.link_id


def test_show_lists_every_cgroup_with_a_policy(tmp_path, cg):
    with cgroup.temporary(prefix="bpfkit-subflow-") as other:
        try:
            policy = write_policy(tmp_path, """
                [[rule]]
                name = "lte"
                [rule.match]
                role = "join"
                local_address = ["10.2.0.0/16", "2001:db8::/64"]
                [rule.set]
                mark = 0x2
                max_pacing_rate = "20mbit"
                """)
            sockops.apply(policy, cg)
            sockops.apply(policy, other)
            code, out, _ = run_cli("show", "--json")
            assert code == 0
            shown = {p["cgroup"]: p for p in json.loads(out)["policies"]}
            assert {str(cg), str(other)} <= set(shown)
            rule = shown[str(cg)]["rules"][0]
            assert rule["match"] == {"role": "join", "local_address": ["10.2.0.0/16", "2001:db8::/64"]}
            assert rule["set"] == {"mark": 2, "max_pacing_rate": 2_500_000}
            assert shown[str(cg)]["source"] == str(policy)
            code, out, _ = run_cli("show")
            assert f"cgroup {cg} " in out and "rule 1 (\"lte\"): role=join local_address=10.2.0.0/16,2001:db8::/64 " \
                                              "-> mark=0x2 max_pacing_rate=20mbit: 0 applied, 0 failed" in out
        finally:
            sockops.clear(other)


def test_interfaces_are_resolved_again_on_every_apply(tmp_path, cg):
    with TwoPathLab(cg) as lab:
        policy = write_policy(tmp_path, """
            [[rule]]
            [rule.match]
            interface = "eth1"
            [rule.set]
            mark = 0x2
            """)
        sockops.apply(policy, cg, netns=lab.topo.client_ns)
        assert ipv4(rules_of(cg)["rules"][0]["resolved_local"]) == [f"{JOIN_LOCAL}/32"]
        with NetNS(lab.topo.client_ns, flags=0) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="eth1")[0], address="10.2.1.9", prefixlen=24)
        sockops.apply(policy, cg, netns=lab.topo.client_ns)
        assert ipv4(rules_of(cg)["rules"][0]["resolved_local"]) == [f"{JOIN_LOCAL}/32", "10.2.1.9/32"]
        client = lab.connect()
        assert lab.socket("client", local=tuple(client.subflow_by_local(JOIN_LOCAL)["local"])).mark == 0x2


def _v1_cgroup_dir() -> str:
    """A cgroup v1 directory if this host mounts one (hybrid), else any
    non-cgroup-v2 directory: both must be refused the same way."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup":
            return fields[4]
    return "/proc"


BAD_POLICIES = [
    ('[[rule]]\n[rule.set]\ncongestion = "no_such_cc"\n',
     "rule 1: set.congestion: 'no_such_cc' is not available"),
    ('[[rule]]\nname = "x"\n[rule.set]\nmark = 4294967296\n',
     'rule 1 ("x"): set.mark: 4294967296 is out of range (0..4294967295)'),
    ('[[rule]]\n[rule.set]\nmax_pacing_rate = "40gbit"\n', "rule 1: set.max_pacing_rate: '40gbit' is out of range"),
    ('[[rule]]\n[rule.set]\nmark = 1\n[[rule]]\n[rule.match]\nrole = "join"\nbakup = true\n[rule.set]\nmark = 2\n',
     "rule 2: match.bakup: unknown key"),
    ('[[rule]]\n[rule.match]\nlocal_address = "10.2.1.1/24"\n[rule.set]\nmark = 1\n',
     "rule 1: match.local_address: '10.2.1.1/24' has host bits set"),
    ('[[rule]]\n[rule.match]\nlocal_address = "10.2.1.300"\n[rule.set]\nmark = 1\n',
     "rule 1: match.local_address: '10.2.1.300' is not an address or prefix"),
    ('[[rule]]\n[rule.match]\ninterface = "no-such-if0"\n[rule.set]\nmark = 1\n',
     "rule 1: match.interface: no interface named 'no-such-if0'"),
    ('[[rule]]\n[rule.set]\ntos = 0x21\n', "rule 1: set.tos: 0x21 sets ECN bits"),
]


def test_bad_input_is_one_clear_error_and_changes_nothing(tmp_path, cg):
    good = write_policy(tmp_path, '[[rule]]\n[rule.match]\nrole = "join"\n[rule.set]\nmark = 0x2\n', "good.toml")
    # On a cgroup without a policy: refused before anything is loaded or pinned.
    fresh_pins = sockops.pin_dir(cgroup.cgroup_id(cg))
    for text, message in BAD_POLICIES:
        path = write_policy(tmp_path, text, "bad.toml")
        code, out, err = run_cli("apply", str(path), "--cgroup", str(cg))
        assert code == UsageError.exit_code, err
        assert err.count("bpfkit: error:") == 1 and f"{path}: {message}" in err, err
        assert not fresh_pins.exists() and libbpf.cgroup_program_ids(cg, "sock_ops") == []

    # On a cgroup with a policy: the pinned maps and the link stay exactly as they were.
    sockops.apply(good, cg)
    before = pinned_state(cg)
    for text, message in BAD_POLICIES:
        path = write_policy(tmp_path, text, "bad.toml")
        code, _, err = run_cli("apply", str(path), "--cgroup", str(cg))
        assert code == UsageError.exit_code and message in err
    for cgroup_arg, message in [(str(tmp_path / "no-such-cgroup"), "no such directory"),
                                (_v1_cgroup_dir(), "is not a cgroup v2 directory")]:
        code, _, err = run_cli("apply", str(good), "--cgroup", cgroup_arg)
        assert code == UsageError.exit_code and message in err, err
    code, _, err = run_cli("apply", str(tmp_path / "missing.toml"), "--cgroup", str(cg))
    assert code == UsageError.exit_code and "cannot read the policy file" in err
    assert pinned_state(cg) == before
    assert len(libbpf.cgroup_program_ids(cg, "sock_ops")) == 1


@pytest.mark.parametrize("fail_at", ["map pin", "link pin"])
def test_a_failed_first_apply_leaves_nothing(tmp_path, cg, monkeypatch, fail_at):
    policy = write_policy(tmp_path, "[[rule]]\n[rule.set]\nmark = 1\n")
    if fail_at == "map pin":
        real_pin = libbpf.Map.pin

        def pin(self, path):
            if Path(path).name == "totals":  # after two maps are pinned
                raise AttachError("injected failure")
            return real_pin(self, path)
        monkeypatch.setattr(libbpf.Map, "pin", pin)
    else:
        def pin(self, path):
            raise AttachError("injected failure")
        monkeypatch.setattr(libbpf.Link, "pin", pin)
    with pytest.raises(AttachError, match="injected"):
        sockops.apply(policy, cg)
    assert libbpf.cgroup_program_ids(cg, "sock_ops") == []
    assert not sockops.pin_dir(cgroup.cgroup_id(cg)).exists()
    monkeypatch.undo()
    assert sockops.apply(policy, cg).attached  # and a later apply starts clean


def test_clear_removes_only_our_program(tmp_path, cg, test_bpf):
    with libbpf.open_object(build.compile_bpf(test_bpf("sockops_counter")).path) as other:
        with other.program("count_ops").attach_cgroup(cg):
            foreign = libbpf.cgroup_program_ids(cg, "sock_ops")
            result = sockops.apply(write_policy(tmp_path, "[[rule]]\n[rule.set]\nmark = 1\n"), cg)
            assert libbpf.cgroup_program_ids(cg, "sock_ops") == foreign + [result.program_id]

            code, out, _ = run_cli("clear", "--cgroup", str(cg))
            assert code == 0 and "cleared" in out
            assert libbpf.cgroup_program_ids(cg, "sock_ops") == foreign
            assert not sockops.pin_dir(cgroup.cgroup_id(cg)).exists()
            assert sockops.show(cg) == []
            code, out, _ = run_cli("clear", "--cgroup", str(cg))  # nothing left: fine
            assert code == 0 and "nothing to clear" in out


def test_policy_of_a_removed_cgroup_is_shown_and_cleared_by_all(tmp_path, no_leftover_bpf):
    policy = write_policy(tmp_path, "[[rule]]\n[rule.set]\nmark = 1\n")
    with cgroup.temporary(prefix="bpfkit-subflow-") as gone:
        cg_id = sockops.apply(policy, gone).cgroup_id
    try:
        [shown] = [p for p in sockops.show() if p["cgroup_id"] == cg_id]
        assert not shown["cgroup_exists"]
        # The kernel detaches the link once the removed cgroup is released.
        assert not wait_for(lambda: [p for p in sockops.show() if p["cgroup_id"] == cg_id][0]["attached"],
                            lambda attached: not attached)
    finally:
        code, out, _ = run_cli("clear", "--all")
    assert code == 0
    assert not sockops.pin_dir(cg_id).exists()


def test_cli_apply_from_a_separate_process_persists(tmp_path, cg):
    """The policy outlives the command that applied it."""
    policy = write_policy(tmp_path, "[[rule]]\n[rule.set]\nmark = 1\n")
    proc = subprocess.run([sys.executable, "-m", "bpfkit", "subflow", "apply", str(policy), "--cgroup", str(cg)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert len(libbpf.cgroup_program_ids(cg, "sock_ops")) == 1
    assert rules_of(cg)["rules"][0]["set"] == {"mark": 1}
