"""Parsing and reporting of upstream's MPTCP selftest runs (bpfkit vm selftests)."""

import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from bpfkit import selftests
from bpfkit.errors import UsageError

pytestmark = pytest.mark.unit

TAP = """\
# 01 New MPTCP socket                                                      [ OK ]
TAP version 13
1..5
ok 1 - simult_flows: balanced bwidth
ok 2 - simult_flows: balanced bwidth with unbalanced delay # SKIP not supported
not ok 3 - simult_flows: unbalanced bwidth
not ok 4 - simult_flows: unbalanced bwidth with opposed, unbalanced delay # IGNORE Flaky
ok 5 simult_flows: no dash
ok 6 - simult_flows: unbalanced bwidth # IGNORE Flaky
"""


def test_tap_lines_become_subtests():
    subtests = selftests.parse_tap(TAP)
    assert [(s.number, s.status) for s in subtests] == [(1, "pass"), (2, "skip"), (3, "fail"), (4, "ignored"),
                                                        (5, "pass"), (6, "ignored")]
    assert subtests[1].reason == "not supported"
    assert subtests[2].description == "simult_flows: unbalanced bwidth"


def run(code, text=TAP, error=""):
    return selftests.ScriptRun("minrtt", "simult_flows.sh", code, 12.0, selftests.parse_tap(text), "/x.log", 4,
                               error)


@pytest.mark.parametrize("code, error, status", [(0, "", "pass"), (4, "", "skip"), (1, "", "fail"),
                                                 (None, "killed after 10s", "error"), (0, "no netns", "error")])
def test_script_status_follows_kselftest_exit_codes(code, error, status):
    assert run(code, error=error).status == status


def test_results_round_trip_and_table():
    r = run(1)
    again = selftests.ScriptRun.from_dict(r.to_dict())
    assert again == r and again.to_dict()["counts"] == {"pass": 2, "fail": 1, "skip": 1, "ignored": 2}
    table = selftests.format_table([r])
    assert "minrtt" in table and "simult_flows.sh" in table and "fail" in table


def test_junit_report(tmp_path):
    path = tmp_path / "j.xml"
    selftests.write_junit([run(1), run(None, text="", error="killed after 10s")], path)
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert suites[0].get("failures") == "1" and suites[0].get("skipped") == "1"
    assert len(suites[0].findall("testcase")) == 6
    assert suites[1].find("error") is not None


def test_unknown_script_is_a_usage_error():
    assert selftests.resolve_scripts(["diag"], ["diag.sh", "mptcp_join.sh"]) == ["diag.sh"]
    with pytest.raises(UsageError, match="no selftest 'nope'"):
        selftests.resolve_scripts(["nope"], ["diag.sh"])


def test_ip_wrapper_passes_calls_through_and_selects_the_scheduler_in_each_added_netns(tmp_path):
    # a stand-in for iproute2's ip: logs each argv (one arg per line, calls split by "--"), and
    # fails `netns exec bad ...` (the sysctl of a scheduler that cannot be selected)
    calls = tmp_path / "calls"
    fake_ip = tmp_path / "real-ip"
    fake_ip.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" -- >> {calls}\n'
                       '[ "$1 $2 $3" = "netns exec bad" ] && exit 2\nexit 0\n')
    fake_ip.chmod(0o755)
    wrapper = selftests.IP_WRAPPER.format(real_ip=fake_ip)
    (tmp_path / "ip").write_text(wrapper)
    (tmp_path / "ip").chmod(0o755)
    netns_log = tmp_path / "netns.log"
    env = dict(os.environ, BPFKIT_SELFTEST_SCHEDULER="minrtt", BPFKIT_SELFTEST_NETNS_LOG=str(netns_log))

    def ip(*argv):
        calls.write_text("")
        code = subprocess.run([str(tmp_path / "ip"), *argv], env=env).returncode
        return code, [c.strip("\n").split("\n") for c in calls.read_text().split("--\n") if c]

    assert ip("link", "show", "a b; true") == (0, [["link", "show", "a b; true"]])
    assert not netns_log.exists()
    assert ip("netns", "add", "ns1") == (0, [["netns", "add", "ns1"],
                                              ["netns", "exec", "ns1", "sysctl", "-qw", "net.mptcp.scheduler=minrtt"]])
    assert netns_log.read_text() == "ns1\n"
    code, seen = ip("netns", "add", "bad")
    assert code == 1 and seen[-1] == ["netns", "del", "bad"] and netns_log.read_text() == "ns1\n"


def test_known_failures_are_reported_not_counted(tmp_path):
    known_file = tmp_path / "known.toml"
    known_file.write_text('[[known]]\nscheduler = "minrtt"\nscript = "simult_flows.sh"\nsubtest = 3\n'
                          'reason = "min-RTT tail on the slow path"\n')
    known = selftests.load_known(known_file)
    r = run(1)
    r.mark_known(known, "tcg")
    assert r.status == "known"
    other = selftests.ScriptRun("blest", "simult_flows.sh", 1, 1.0, selftests.parse_tap(TAP), "/x", 1)
    other.mark_known(known, "tcg")
    assert other.status == "fail"
    passing = run(0, text="ok 3 - x\n")
    passing.mark_known(known, "tcg")
    assert passing.status == "pass" and "known failure(s) #3 passed" in selftests.format_table([passing])
    known_file.write_text('[[known]]\nscheduler = "minrtt"\n')
    with pytest.raises(UsageError, match="entry 1 needs"):
        selftests.load_known(known_file)


def test_known_failure_for_every_scheduler_under_one_accel(tmp_path):
    known_file = tmp_path / "known.toml"
    known_file.write_text('[[known]]\nscheduler = "*"\nscript = "simult_flows.sh"\nsubtest = 3\n'
                          'accel = "tcg"\nreason = "a timing limit TCG misses"\n')
    known = selftests.load_known(known_file)
    for name in ("minrtt", "default"):
        under_tcg = selftests.ScriptRun(name, "simult_flows.sh", 1, 1.0, selftests.parse_tap(TAP), "/x", 1)
        under_tcg.mark_known(known, "tcg")
        assert under_tcg.status == "known"
        under_kvm = selftests.ScriptRun(name, "simult_flows.sh", 1, 1.0, selftests.parse_tap(TAP), "/x", 1)
        under_kvm.mark_known(known, "kvm")
        assert under_kvm.status == "fail"
    assert selftests.known_subtests(known, "ecf", "diag.sh", "tcg") == []
    known_file.write_text(known_file.read_text().replace('"tcg"', '"qemu"'))
    with pytest.raises(UsageError, match="accel 'qemu' is not one of kvm, tcg"):
        selftests.load_known(known_file)


FLAKY_SCRIPT = """#!/bin/sh
# fails subtest 2 on its first run only, always subtest 3 unless told it is known
n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count
echo "TAP version 13"
echo "ok 1 - steady"
if [ "$n" = 0 ]; then echo "not ok 2 - timing"; else echo "ok 2 - timing"; fi
echo "not ok 3 - broken"
exit 1
"""


@pytest.mark.parametrize("retries,known,attempts,flaky,failed", [
    (0, [], 1, [], [2, 3]),
    (1, [], 2, [2], [3]),     # 3 still fails after the retry: the run fails
    (3, [], 4, [2], [3]),     # retries while an unknown failure remains
    (1, [2, 3], 1, [], [2, 3]),  # only known failures: no retry
])
def test_retries_rerun_unexplained_failures_and_report_flaky(tmp_path, capsys, retries, known, attempts, flaky,
                                                             failed):
    script_dir = tmp_path / "scripts"
    script_dir.mkdir()
    script = script_dir / "t.sh"
    script.write_text(FLAKY_SCRIPT)
    script.chmod(0o755)
    (tmp_path / "out").mkdir()
    plan = {"timeout": 30, "retries": retries, "known": {"default/t.sh": known}}
    r = selftests._run_with_retries("default", "t.sh", script_dir, tmp_path / "out", tmp_path / "bin", plan)
    assert (r.attempts, r.flaky) == (attempts, flaky)
    assert [s.number for s in r.subtests if s.status == "fail"] == failed
    assert int((script_dir / "count").read_text()) == attempts
    if flaky:
        assert "flaky: #2 failed, then passed" in selftests.format_table([r])
    progress = capsys.readouterr().err.splitlines()[-1]
    assert progress.startswith(f"bpfkit: default: t.sh: {'known' if known else 'fail'} (")


def test_script_args_are_split_validated_and_reach_the_script(tmp_path):
    scripts = ["mptcp_connect.sh", "diag.sh"]
    assert selftests.parse_script_args(["mptcp_connect=-f 131072 -r '25% 50%'"], scripts) == {
        "mptcp_connect.sh": ["-f", "131072", "-r", "25% 50%"]}
    for bad, message in [("mptcp_connect", "expected SCRIPT=ARGS"), ("=-f 1", "expected SCRIPT=ARGS"),
                         ("pm_netlink=-x", "not among the scripts"), ("diag='-x", "No closing quotation")]:
        with pytest.raises(UsageError, match=message):
            selftests.parse_script_args([bad], scripts)
    with pytest.raises(UsageError, match="given twice"):
        selftests.parse_script_args(["diag=-a", "diag.sh=-b"], scripts)

    script_dir = tmp_path / "scripts"
    script_dir.mkdir()
    script = script_dir / "t.sh"
    script.write_text('#!/bin/sh\necho "TAP version 13"\n[ "$1 $2" = "-r 25% 50%" ] && echo "ok 1 - argv" '
                      '|| echo "not ok 1 - argv: $*"\n')
    script.chmod(0o755)
    (tmp_path / "out").mkdir()
    plan = {"timeout": 30, "script_args": {"t.sh": ["-r", "25% 50%"]}}
    r = selftests._run_with_retries("default", "t.sh", script_dir, tmp_path / "out", tmp_path / "bin", plan)
    assert [s.status for s in r.subtests] == ["pass"] and r.args == ["-r", "25% 50%"]
    assert "args: -r '25% 50%'" in selftests.format_table([r])


def test_a_plan_booted_again_appends_to_what_the_earlier_boot_reported(tmp_path):
    """After the guest kernel died in b.sh, the host boots again with the runs that did not report:
    the guest keeps a.sh's result, runs b.sh and c.sh, and keeps the dead boot's b.sh output aside."""
    script_dir = tmp_path / "install" / selftests.MPTCP_SUBDIR
    script_dir.mkdir(parents=True)
    for name in ("a.sh", "b.sh", "c.sh"):
        (script_dir / name).write_text(f'#!/bin/sh\necho "TAP version 13"\necho "ok 1 - {name}"\n'
                                       f'echo x >> "{tmp_path}/{name}.ran"\n')
        (script_dir / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    earlier = selftests.ScriptRun("default", "a.sh", 0, 1.0, [selftests.Subtest(1, "a.sh", "pass")], "a.log")
    selftests.save_results([earlier], out)
    (out / "default.b.sh.log").write_text("02 Validating network environment with pings")
    runs = selftests.plan_runs(["default"], ["a.sh", "b.sh", "c.sh"])
    plan = {"install_dir": str(tmp_path / "install"), "out_dir": str(out), "timeout": 30, "runs": runs[1:]}
    assert selftests.main([_write_json(tmp_path / "plan.json", plan)]) == 0
    reported = selftests.load_results(out)
    assert [(r.script, r.status) for r in reported] == [("a.sh", "pass"), ("b.sh", "pass"), ("c.sh", "pass")]
    assert not (tmp_path / "a.sh.ran").exists() and (tmp_path / "c.sh.ran").read_text() == "x\n"
    assert (out / "default.b.sh.guest-died.log").read_text().startswith("02 Validating")
    assert "ok 1 - b.sh" in (out / "default.b.sh.log").read_text()
    reported[1].guest_died = "[  606.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
    assert "guest kernel died in an earlier boot ([  606.8] Oops: int3" in selftests.format_table(reported)
    selftests.write_junit(reported, tmp_path / "junit.xml")
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert [s.findtext("system-err") for s in suites] == [
        None, "the guest kernel died in an earlier boot: [  606.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", None]


def _write_json(path, data) -> str:
    import json

    path.write_text(json.dumps(data))
    return str(path)


def test_the_run_a_guest_died_in_is_booted_again_once():
    runs = selftests.plan_runs(["default", "minrtt"], ["a.sh", "b.sh"])
    assert runs == [["default", "a.sh"], ["default", "b.sh"], ["minrtt", "a.sh"], ["minrtt", "b.sh"]]
    died_in: dict = {}
    assert selftests.next_run_after_guest_death(runs, 2, died_in, max_reboots=2) == ("minrtt", "a.sh")
    died_in[("minrtt", "a.sh")] = "Oops"
    assert selftests.next_run_after_guest_death(runs, 2, died_in, max_reboots=2) is None  # died there twice
    assert selftests.next_run_after_guest_death(runs, 3, died_in, max_reboots=2) == ("minrtt", "b.sh")
    died_in[("minrtt", "b.sh")] = "Oops"
    assert selftests.next_run_after_guest_death(runs, 3, {("default", "a.sh"): "", ("default", "b.sh"): ""},
                                                max_reboots=2) is None  # no boots left
    assert selftests.next_run_after_guest_death(runs, 4, {}, max_reboots=2) is None  # everything reported
