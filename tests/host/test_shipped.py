"""bpfkit installed from its wheel, as on a production host: no checkout, no clang or bpftool
on PATH, an empty cache (so no libbpf built by bpfkit, no compiled objects) — the system's
libbpf (Debian 12: 1.1) and the objects shipped in the wheel must do. The distro tier runs
`mptcpize attach` the same way on Debian's stock 6.12 (tests/distro/test_shipped.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bpfkit import cgroup
from bpfkit.loader import build, libbpf_dist
from bpfkit.subflow import sockops
from tests.subflow_lab import JOIN_LOCAL, TwoPathLab

pytestmark = pytest.mark.host

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


# What the sdist carries (MANIFEST.in): building from a copy of just these proves the wheel
# needs nothing else of the checkout, and leaves no build/ in it.
SDIST_PARTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "bpfkit", "bpf", "templates")


def build_wheel(out: Path) -> Path:
    source = out / "source"
    for part in SDIST_PARTS:
        if (PROJECT_ROOT / part).is_dir():
            shutil.copytree(PROJECT_ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / part, source / part)
    # with its dependencies' wheels beside it (from PyPI), as `make wheel` does
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(source)],
                   check=True, timeout=900, capture_output=True)
    [wheel] = out.glob("bpfkit-*.whl")
    return wheel


def install_wheel(wheel: Path, target: Path) -> Path:
    """The wheel and what it depends on, from the wheels beside it only (a guest has no network)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheel.parent),
                    "--no-compile", "--target", str(target), str(wheel)], check=True, timeout=900, capture_output=True)
    return target


def run_installed(site: Path, home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`bpfkit ARGS` from the installed package and its dependencies alone: `python -S` sees no
    site-packages (not the project's venv, nor its editable install), PATH has no compiler,
    the cache is empty and bpfkit's own."""
    env = {"PATH": str(home / "bin"), "PYTHONPATH": str(site), "HOME": str(home),
           "BPFKIT_CACHE": str(home / "cache"), "LANG": "C.UTF-8"}
    (home / "bin").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-S", "-m", "bpfkit", *args], capture_output=True, text=True, cwd=home,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    if libbpf_dist._system_library() is None:
        pytest.fail("no system libbpf: apt-get install libbpf1 (Makefile APT_PACKAGES)")
    root = tmp_path_factory.mktemp("shipped")
    site = install_wheel(build_wheel(root / "wheel"), root / "site")
    home = root / "home"
    home.mkdir()
    return site, home


def test_the_wheel_carries_the_ops_objects_and_templates(installed):
    site, _ = installed
    data = site / "bpfkit" / "data"
    from elftools.elf.elffile import ELFFile

    for name in build.SHIPPED_PROGRAMS:
        with open(data / "bpf" / f"{name}.bpf.o", "rb") as f:
            sections = {s.name for s in ELFFile(f).iter_sections()}
        # CO-RE needs .BTF and .BTF.ext; the DWARF (10x their size) stays out of the wheel
        assert {".BTF", ".BTF.ext"} <= sections and not {s for s in sections if s.startswith(".debug")}, sections
    manifest = json.loads((data / "bpf" / build.MANIFEST).read_text())
    assert set(manifest["objects"]) == set(build.SHIPPED_PROGRAMS)
    assert manifest["clang"].startswith(("Debian clang", "clang"))
    assert (data / "templates" / "mptcpize" / "dropin.conf.j2").is_file()
    assert not (site / "bpf").exists()  # no sources: nothing to compile from
    # What a production host installs with it: the ops pillars' needs, not the lab's.
    installed = {d.name.split("-")[0].lower() for d in site.glob("*.dist-info")}
    assert {"jinja2", "pyroute2", "rich"} <= installed
    assert not installed & {"matplotlib", "scipy", "numpy", "pyelftools", "virtme_ng"}, installed


def test_a_lab_command_without_the_lab_extra_is_one_error(installed, tmp_path):
    site, home = installed
    source = tmp_path / "x.bpf.c"
    source.write_text("")
    result = run_installed(site, home, "build", "--kernel", "/etc/passwd", str(source))  # a vmlinux: pyelftools
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install 'bpfkit[lab]'" in result.stderr


def test_doctor_uses_the_shipped_objects_and_the_system_libbpf(installed):
    site, home = installed
    result = run_installed(site, home, "doctor", "--json")
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["bpf_objects"]["detail"].startswith(f"shipped in {site / 'bpfkit' / 'data' / 'bpf'}")
    assert checks["libbpf"]["status"] == "ok" and "(system:" in checks["libbpf"]["detail"], checks["libbpf"]
    assert checks["clang"]["status"] == "warn"  # not needed for the ops pillars
    assert report["features"]["sockops"] and report["features"]["subflow_opts"], checks
    assert not (home / "cache" / "objects").exists() and not (home / "cache" / "libbpf").exists()


def test_subflow_apply_from_the_wheel_sets_a_subflows_mark(installed, no_leftover_bpf, tmp_path):
    site, home = installed
    policy = tmp_path / "policy.toml"
    policy.write_text(textwrap.dedent("""
        [[rule]]
        [rule.match]
        side = "active"
        role = "join"
        [rule.set]
        mark = 0x35
        """))
    with cgroup.temporary(prefix="bpfkit-shipped-") as cg:
        try:
            with TwoPathLab(cg) as lab:
                result = run_installed(site, home, "subflow", "apply", str(policy), "--cgroup", str(cg))
                assert result.returncode == 0, result.stderr
                client = lab.connect(seconds=0.3)
                join, _ = lab.subflow_pair(client, JOIN_LOCAL)
                assert join.mptcp_subflow and join.mark == 0x35
                client.close()
            result = run_installed(site, home, "subflow", "clear", "--cgroup", str(cg))
            assert result.returncode == 0, result.stderr
        finally:
            sockops.clear(cg)
    assert not (home / "cache" / "objects").exists()  # nothing was compiled


def test_a_scheduler_object_needs_a_newer_libbpf_than_the_systems(installed, test_bpf, no_leftover_bpf):
    """struct_ops registration (`.struct_ops.link`) fails to load on libbpf 1.1: refused before
    the load with the reason and the fix, not a verifier log that says nothing."""
    site, home = installed
    obj = build.compile_bpf(test_bpf("tcp_ca"), defines={"STRUCT_OPS_SECTION": '".struct_ops.link"',
                                                          "CA_NAME": '"bpfkit_ca_shipped"'}).path
    code = ("import sys\nfrom bpfkit.loader import libbpf\nfrom bpfkit.errors import BpfkitError\n"
            "try:\n    libbpf.open_object(sys.argv[1])\nexcept BpfkitError as exc:\n"
            "    print(exc, '|', exc.hint)\n    sys.exit(3)\n")
    env = {"PATH": str(home / "bin"), "PYTHONPATH": str(site), "HOME": str(home), "BPFKIT_CACHE": str(home / "cache")}
    result = subprocess.run([sys.executable, "-S", "-c", code, str(obj)], capture_output=True, text=True, env=env,
                            timeout=120)
    if libbpf_dist._version_of(libbpf_dist._system_library()) >= libbpf_dist.STRUCT_OPS_MIN_VERSION:
        pytest.fail("this test needs a system libbpf older than 1.2 (Debian 12 ships 1.1)")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "has struct_ops programs (ca_" in result.stdout and "which needs libbpf >= 1.2" in result.stdout
    assert "make libbpf" in result.stdout
