"""bpfkit's pytest plugin as another project sees it (a separate pytest run of a
throwaway test file): the `kernel` marker skips with the doctor's reason, fails
instead under BPFKIT_REQUIRE_ALL=1, runs the test when the feature is there;
the `subflow_policy` fixture really applies a policy (the kernel marks the
subflow) and leaves nothing behind, even when the test fails."""

import pytest

from bpfkit import cgroup, doctor
from bpfkit.subflow import sockops
from tests.plugin_inner import run_inner

pytestmark = pytest.mark.host


def host_features() -> dict[str, bool]:
    return doctor.run().features


def leftover_cgroups(prefix: str) -> list[str]:
    return sorted(p.name for p in cgroup.cgroup2_root().iterdir() if p.name.startswith(prefix))


MARKER_TESTS = """
    import pytest

    @pytest.mark.kernel(features=["{missing}"])
    def test_needs_missing():
        raise AssertionError("must not run")

    @pytest.mark.kernel(features=["mptcp", "btf"])
    def test_needs_present():
        pass
"""


def test_kernel_marker_skips_with_doctor_reason_or_fails_under_require_all(tmp_path):
    features = host_features()
    missing = next((f for f in ("struct_ops_mptcp_sched_ops", "fmod_ret_update_socket_protocol") if not features[f]),
                   None)
    if missing is None:
        pytest.skip("this host kernel has every feature the marker test could miss")
    detail = next(c.detail for c in doctor.run().checks if c.name == missing)

    proc = run_inner(tmp_path, MARKER_TESTS.format(missing=missing))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout, proc.stdout
    assert f"lacks {missing}: {detail}" in proc.stdout, proc.stdout  # the doctor's own words

    proc = run_inner(tmp_path, MARKER_TESTS.format(missing=missing), require_all=True)
    assert proc.returncode == 1, proc.stdout
    # failed in setup, before the test body: pytest counts it as an error
    assert "1 passed, 1 error" in proc.stdout and "BPFKIT_REQUIRE_ALL=1: not skipping" in proc.stdout, proc.stdout
    assert f"lacks {missing}: {detail}" in proc.stdout
    assert "must not run" not in proc.stdout


def test_kernel_marker_rejects_unknown_features_and_bad_usage(tmp_path):
    proc = run_inner(tmp_path, """
        import pytest

        @pytest.mark.kernel(features=["no_such_feature"])
        def test_x():
            pass
    """)
    assert proc.returncode != 0 and "unknown feature(s) ['no_such_feature']" in proc.stdout + proc.stderr
    proc = run_inner(tmp_path, """
        import pytest

        @pytest.mark.kernel(features="mptcp")
        def test_x():
            pass
    """)
    assert proc.returncode != 0 and "features=[" in proc.stdout + proc.stderr


SUBFLOW_TEST = """
    import socket, struct, sys, time
    from bpfkit import sock_diag
    from bpfkit.subflow import sockops

    POLICY = '''
    [[rule]]
    name = "everything"
    [rule.set]
    mark = 0x42
    '''

    def subflow_mark(port):
        for sock in sock_diag.dump(socket.AF_INET, socket.IPPROTO_TCP):
            if sock.remote[1] == port and 15 in sock.attrs:  # INET_DIAG_MARK
                return struct.unpack("=I", sock.attrs[15][:4])[0]
        return None

    def test_policy_marks_subflows(subflow_policy):
        cg = subflow_policy(text=POLICY)
        assert [p["cgroup_id"] for p in sockops.show(cg.path)] == [cg.id]
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = cg.popen([sys.executable, "-c",
                           "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); "
                           f"s.connect(('127.0.0.1', {port})); print('up', flush=True); time.sleep(60)"],
                          stdout=__import__("subprocess").PIPE, text=True)
        assert client.stdout.readline().strip() == "up"
        conn, _ = server.accept()
        assert subflow_mark(port) == 0x42
        print("CGROUP", cg.path.name)
        {tail}
"""


@pytest.mark.parametrize("outcome", ["passes", "fails"])
def test_subflow_policy_fixture_applies_and_cleans_up(tmp_path, outcome):
    if not host_features()["sockops"]:
        pytest.skip("no cgroup sockops on this kernel")
    before = leftover_cgroups("bpfkit-pytest-subflow-")
    policies_before = [p["cgroup_id"] for p in sockops.show()]
    tail = "assert False, 'deliberate failure'" if outcome == "fails" else "pass"
    proc = run_inner(tmp_path, SUBFLOW_TEST.replace("{tail}", tail))
    expected = "1 passed" if outcome == "passes" else "1 failed"
    assert expected in proc.stdout, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout or outcome == "passes"
    # after the inner session: no policy, no cgroup, no client process left
    assert leftover_cgroups("bpfkit-pytest-subflow-") == before
    assert [p["cgroup_id"] for p in sockops.show()] == policies_before
