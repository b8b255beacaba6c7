"""bpfkit's pytest plugin (registered as the `pytest11` entry point `bpfkit`, so
any project with bpfkit installed gets it).

Fixture `lab_topology`: a factory that builds a ready lab network from a
scenario dict (the same keys as a scenario file; only `paths` is needed) and
tears it down after the test, whether it passed, failed or was interrupted:

    def test_two_paths(lab_topology):
        topo = lab_topology({"paths": {"a": {"rate": "20mbit"}, "b": {"rate": "10mbit", "delay": "20ms"}}})
        topo.run("client", ["ping", "-c1", topo.server_address])
        server = topo.popen("server", [sys.executable, "-m", "mymodule.server"])
        topo.path_down("a")

The Topology gives `client_ns` / `router_ns` / `server_ns`, `server_address`,
`client_address(path)`, `run` / `popen` (inside a namespace), `set_scheduler`,
`path_down` / `path_up` / `set_path`, `qdisc_stats()`. Needs root; the test is
skipped otherwise.

Fixture `bpf_scheduler`: a factory that registers an MPTCP scheduler with
`bpfkit sched load NAME|FILE` and returns its name (as listed in
net.mptcp.available_schedulers); `bpfkit sched unload NAME` runs after the test:

    def test_rr(bpf_scheduler, lab_topology):
        name = bpf_scheduler("rr")            # or a path to a .bpf.c / .bpf.o
        topo = lab_topology({...}, scheduler=name)

Fixture `mptcpize_cgroup`: a fresh cgroup v2 whose TCP sockets bpfkit turns into
MPTCP (bpfkit.mptcpize); `.popen(argv)` starts a process inside it. Detached and
removed after the test.

Fixture `subflow_policy`: a factory applying a subflow policy (TOML file, or
`text=` TOML) to a fresh cgroup (bpfkit.subflow); returns the cgroup with
`.popen(argv)`. Cleared and removed after the test.

Marker `@pytest.mark.kernel(features=[...])`: the test needs these `bpfkit doctor`
checks to pass on the running kernel (e.g. "struct_ops_mptcp_sched_ops",
"fmod_ret_update_socket_protocol", "sockops", "mptcp", "btf"). A missing one
skips the test with the doctor's reason — or fails it when BPFKIT_REQUIRE_ALL=1
(what CI sets: a skipped test proves nothing). The fixtures above check their
own features the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ALL_ENV = "BPFKIT_REQUIRE_ALL"


@pytest.fixture
def lab_topology():
    created = []

    def make(spec: dict, *, shaping: str = "auto", scheduler: str | None = None):
        # Imported here: the plugin loads in every pytest session, the lab need not.
        from bpfkit.lab.scenario import parse_scenario
        from bpfkit.lab.topology import Topology

        if os.geteuid() != 0:
            pytest.skip("lab_topology needs root (network namespaces)")
        document = {"duration": "10s", "traffic": {"kind": "bulk"}, **spec}
        scenario = parse_scenario(document, source="lab_topology spec")
        topology = Topology(scenario.paths, server_signal=scenario.server_signal, shaping=shaping,
                            buffers=scenario.buffers)
        created.append(topology)
        topology.setup()
        if scheduler is not None:
            topology.set_scheduler(scheduler)
        return topology

    yield make
    for topology in reversed(created):
        topology.teardown()


# ---------------------------------------------------------------- kernel features


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernel(features=[...]): needs these `bpfkit doctor` features; skipped with the doctor's reason when "
        "one is missing (failed when BPFKIT_REQUIRE_ALL=1)",
    )


_doctor_report = None


def _report():
    """The doctor's report for this kernel, once per session (it really loads
    probe programs: not free)."""
    global _doctor_report
    if _doctor_report is None:
        from bpfkit import doctor

        _doctor_report = doctor.run()
    return _doctor_report


def missing_features(features) -> list[str]:
    """Why each of `features` is unavailable here (empty if all are)."""
    report = _report()
    checks = {c.name: c for c in report.checks}
    unknown = [f for f in features if f not in checks]
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.kernel: unknown feature(s) {unknown}; "
                                f"bpfkit doctor knows: {', '.join(sorted(checks))}")
    reasons = []
    for name in features:
        check = checks[name]
        if check.status != "ok":
            reasons.append(f"{name}: {check.detail}" + (f" (hint: {check.hint})" if check.hint else ""))
    return reasons


def require_kernel_features(*features: str) -> None:
    """Skip the running test (fail it under BPFKIT_REQUIRE_ALL=1) unless the
    kernel has every feature."""
    reasons = missing_features(features)
    if not reasons:
        return
    message = f"kernel {_report().kernel} lacks " + "; ".join(reasons)
    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{message} [{REQUIRE_ALL_ENV}=1: not skipping]", pytrace=False)
    pytest.skip(message)


def _marker_features(item) -> list[str]:
    features = []
    for marker in item.iter_markers("kernel"):
        wanted = marker.kwargs.get("features", marker.args[0] if marker.args else None)
        if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)) or not wanted:
            raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.kernel(features=[\"name\", ...])")
        features += [f for f in wanted if f not in features]
    return features


def pytest_runtest_setup(item):
    features = _marker_features(item)
    if features:
        require_kernel_features(*features)


# ---------------------------------------------------------------- BPF scheduler


def _bpfkit(*args: str) -> subprocess.CompletedProcess:
    """The bpfkit CLI of this environment (the installed package's own)."""
    return subprocess.run([sys.executable, "-m", "bpfkit", *args], capture_output=True, text=True)


def _available_schedulers() -> set[str]:
    try:
        return set(Path("/proc/sys/net/mptcp/available_schedulers").read_text().split())
    except OSError:
        return set()


@pytest.fixture
def bpf_scheduler():
    loaded: list[str] = []

    def load(target: str | os.PathLike) -> str:
        if os.geteuid() != 0:
            pytest.skip("bpf_scheduler needs root")
        require_kernel_features("struct_ops_mptcp_sched_ops")
        target = str(target)
        before = _available_schedulers()
        proc = _bpfkit("sched", "load", target)
        if proc.returncode != 0:
            pytest.fail(f"`bpfkit sched load {target}` failed (exit {proc.returncode}): "
                        f"{proc.stderr.strip() or proc.stdout.strip()}", pytrace=False)
        new = _available_schedulers() - before
        if len(new) == 1:
            name = new.pop()
        elif not new and not os.path.exists(target) and target in _available_schedulers():
            name = target  # loaded by name; it was registered already (e.g. by another fixture)
        else:
            pytest.fail(f"`bpfkit sched load {target}` succeeded but the registered scheduler is unclear "
                        f"(new in net.mptcp.available_schedulers: {sorted(new) or 'none'})", pytrace=False)
        loaded.append(name)
        return name

    yield load
    errors = []
    for name in reversed(loaded):
        proc = _bpfkit("sched", "unload", name)
        if proc.returncode != 0:
            errors.append(f"`bpfkit sched unload {name}`: {proc.stderr.strip() or proc.stdout.strip()}")
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)


# ---------------------------------------------------------------- cgroups with a policy


@dataclass(frozen=True)
class PolicyCgroup:
    """A cgroup v2 with a bpfkit policy attached; processes started with
    `popen` join it before exec, so their first socket is already covered."""

    path: Path
    id: int

    def popen(self, argv, **kwargs) -> subprocess.Popen:
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0\n")
            finally:
                os.close(fd)

        return subprocess.Popen(list(argv), preexec_fn=join, **kwargs)

    def run(self, argv, *, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Like subprocess.run(capture_output=True, text=True), inside the cgroup."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        with self.popen(argv, **kwargs) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stop_members(path: Path) -> None:
    """Kill what the test left in the cgroup, so removing it cannot fail."""
    import signal

    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def mptcpize_cgroup():
    if os.geteuid() != 0:
        pytest.skip("mptcpize_cgroup needs root")
    require_kernel_features("cgroup2", "mptcp", "fmod_ret_update_socket_protocol")
    from bpfkit import cgroup
    from bpfkit.mptcpize import rewrite

    with cgroup.temporary("bpfkit-pytest-mptcpize-") as path:
        rewrite.attach(path)
        try:
            yield PolicyCgroup(path, cgroup.cgroup_id(path))
        finally:
            _stop_members(path)
            rewrite.detach(path)


@pytest.fixture
def subflow_policy():
    from bpfkit import cgroup
    from bpfkit.subflow import sockops

    stack = []

    def apply(policy: str | os.PathLike | None = None, *, text: str | None = None,
              netns: str | None = None) -> PolicyCgroup:
        if (policy is None) == (text is None):
            raise TypeError("subflow_policy(): give a policy file or text=, not both")
        if os.geteuid() != 0:
            pytest.skip("subflow_policy needs root")
        require_kernel_features("cgroup2", "sockops")
        if text is not None:
            tmp = tempfile.NamedTemporaryFile("w", prefix="bpfkit-policy-", suffix=".toml", delete=False)
            with tmp:
                tmp.write(text)
            stack.append(("file", Path(tmp.name)))
            policy = tmp.name
        manager = cgroup.temporary("bpfkit-pytest-subflow-")
        path = manager.__enter__()
        stack.append(("cgroup", (manager, path)))
        sockops.apply(policy, path, netns=netns)
        stack.append(("policy", path))
        return PolicyCgroup(path, cgroup.cgroup_id(path))

    yield apply
    # undo in reverse order, every step even if one fails
    errors = []
    for kind, value in reversed(stack):
        try:
            if kind == "policy":
                _stop_members(value)
                sockops.clear(value)
            elif kind == "cgroup":
                manager, _path = value
                manager.__exit__(None, None, None)
            else:
                value.unlink(missing_ok=True)
        except Exception as exc:  # report all of them below
            errors.append(f"{kind}: {exc}")
    if errors:
        pytest.fail("subflow_policy cleanup failed: " + "; ".join(errors), pytrace=False)
