"""The virtme-docker exec-run hook inside the bpfkit VM kernel: sourced with a
stub of the image's run_cmd (tests/virtme_docker_stub.sh), each test is one TAP
result and the outcome mapping holds — pass → ok, fail → not ok # FAIL, skip →
# SKIP; the other cases (a skip with SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES=1,
nothing collected, import errors) are the same shell logic, run by the unit tier
on the host."""

import pytest

from tests.virtme_docker_check import FIXTURE_TESTS, make_tree, run_exec_run

pytestmark = pytest.mark.vm


def test_exec_run_maps_a_real_pass_a_fail_and_a_skip_in_guest(tmp_path):
    # One hook run: a collection, then one pytest run per test (~40 s each under TCG). Two hook
    # runs (the fixtures' fail and skip, then a real VM-tier test) took 168 + 138 s in a
    # clean-clone CI run (2026-12-04); one collection fewer is the saving.
    tree, fixtures = make_tree(tmp_path)
    # collected in one session with the project's tests, the fixtures need a tier marker too
    outcomes = fixtures / "test_vm_outcomes.py"
    outcomes.write_text("import pytest\n\npytestmark = pytest.mark.vm\n" + FIXTURE_TESTS)
    selection = f"{outcomes}::test_fails {outcomes}::test_skips tests/vm/test_lab_vm.py::test_vm_kernel_has_netem"
    verdicts, out = run_exec_run(tree, selection, expect_all="0", results=tmp_path / "results")
    assert verdicts == {
        "bpfkit_test_vm_outcomes.py_test_fails": (False, "FAIL"),
        "bpfkit_test_vm_outcomes.py_test_skips": (True, "SKIP"),
        "bpfkit_test_lab_vm.py_test_vm_kernel_has_netem": (True, ""),
    }, out
    assert "feature missing" in out  # pytest's skip reason reaches the TAP diagnostics
