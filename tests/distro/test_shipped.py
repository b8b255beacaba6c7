"""`mptcpize attach` from the wheel on Debian's stock kernel, as on a production host: the
package installed alone, no clang or bpftool on PATH, an empty cache, Debian 12's own
libbpf (1.1). `make test-distro` builds the wheel on the host (BPFKIT_WHEEL); the host tier
runs `subflow apply` the same way (tests/host/test_shipped.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bpfkit import cgroup
from bpfkit.mptcpize import rewrite
from tests.distro.test_mptcpize import IPPROTO_MPTCP, protocol_in
from tests.host.test_shipped import install_wheel, run_installed

pytestmark = pytest.mark.distro



@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    wheel = os.environ.get("BPFKIT_WHEEL")
    if not wheel or not Path(wheel).is_file():
        pytest.fail("BPFKIT_WHEEL names no wheel: run through `make test-distro`, which builds it (make wheel)")
    root = tmp_path_factory.mktemp("shipped")
    site = install_wheel(Path(wheel), root / "site")
    home = root / "home"
    home.mkdir()
    return site, home


def test_mptcpize_attach_from_the_wheel_without_a_compiler(installed):
    site, home = installed
    rewrite.detach_all()
    with cgroup.temporary("bpfkit-test-shipped-") as cg:
        try:
            result = run_installed(site, home, "mptcpize", "attach", "--cgroup", str(cg), timeout=600)
            assert result.returncode == 0, result.stderr
            assert protocol_in(cg) == IPPROTO_MPTCP
            status = json.loads(run_installed(site, home, "mptcpize", "status", "--json").stdout)
            assert [c["rewrites"] for c in status["cgroups"]] == [1]
            result = run_installed(site, home, "mptcpize", "detach", "--cgroup", str(cg))
            assert result.returncode == 0, result.stderr
        finally:
            rewrite.detach_all()
    assert not (home / "cache" / "objects").exists()  # nothing was compiled
    report = json.loads(run_installed(site, home, "doctor", "--json", timeout=600).stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert "(system:" in checks["libbpf"]["detail"], checks["libbpf"]  # Debian 12: libbpf 1.1
    assert report["features"]["fmod_ret_update_socket_protocol"], checks["fmod_ret_update_socket_protocol"]
