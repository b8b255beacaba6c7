"""The virtme-docker exec-run hook inside the bpfkit VM kernel: sourced with a
stub of the image's run_cmd (tests/virtme_docker_stub.sh), each test is one TAP
result and the outcome mapping holds — pass → ok, fail → not ok # FAIL, skip →
# SKIP (not ok when SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES=1), nothing
collected (pytest 5) → not ok, import errors → not ok; plus one real bpfkit
VM-tier test run through the hook against this kernel."""

import pytest

from tests.virtme_docker_check import check_fail_and_skip, make_tree, run_exec_run

pytestmark = pytest.mark.vm


def test_exec_run_fail_and_skip_in_guest(tmp_path):
    # fail and skip through the hook in this kernel's guest (a pass: the next test); the other cases
    # (expect-all, nothing collected, import errors) are the same shell logic, run by the unit tier
    # on the host. Each test is one pytest run in the guest, ~37 s under TCG: the five outcomes of
    # the fixture file took 225 s in a clean-clone CI run (2026-12-03).
    check_fail_and_skip(tmp_path)


def test_exec_run_runs_a_real_vm_tier_test(tmp_path):
    tree, _ = make_tree(tmp_path)
    verdicts, out = run_exec_run(tree, "tests/vm/test_lab_vm.py::test_vm_kernel_has_netem", expect_all="1",
                                 results=tmp_path / "results")
    assert verdicts == {"bpfkit_test_lab_vm.py_test_vm_kernel_has_netem": (True, "")}, out
