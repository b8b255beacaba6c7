"""Parsing and reporting of upstream's MPTCP selftest runs (bpfkit vm selftests)."""

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


def test_ip_wrapper_passes_arguments_quoted(tmp_path):
    text = selftests.IP_WRAPPER.format(real_ip="/usr/sbin/ip")
    assert '"/usr/sbin/ip" "$@"' in text and 'netns exec "$3"' in text


def test_known_failures_are_reported_not_counted(tmp_path):
    known_file = tmp_path / "known.toml"
    known_file.write_text('[[known]]\nscheduler = "minrtt"\nscript = "simult_flows.sh"\nsubtest = 3\n'
                          'reason = "min-RTT tail on the slow path"\n')
    known = selftests.load_known(known_file)
    r = run(1)
    r.mark_known(known)
    assert r.status == "known"
    other = selftests.ScriptRun("blest", "simult_flows.sh", 1, 1.0, selftests.parse_tap(TAP), "/x", 1)
    other.mark_known(known)
    assert other.status == "fail"
    passing = run(0, text="ok 3 - x\n")
    passing.mark_known(known)
    assert passing.status == "pass" and "known failure(s) #3 passed" in selftests.format_table([passing])
    known_file.write_text('[[known]]\nscheduler = "minrtt"\n')
    with pytest.raises(UsageError, match="entry 1 needs"):
        selftests.load_known(known_file)
