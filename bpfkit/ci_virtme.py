"""bpfkit inside the mptcp/mptcp-upstream-virtme-docker CI image.

That image's entrypoint, run from the root of a kernel tree, builds the kernel
and boots it with virtme; two optional files of the tree hook into it:

  .virtme-prepare-post  sourced (bash, `set -e`) in the container after the
                        kernel build, before boot: we install bpfkit into a
                        venv and prebuild the BPF objects against the new
                        vmlinux's BTF;
  .virtme-exec-run      sourced in the guest instead of the default test suite:
                        we run bpfkit's VM-tier tests, one `run_cmd` per test.

`run_cmd CMD...` of the image reports CMD as one TAP test named after
basename(CMD), and turns CMD's exit code into the verdict: 0 ok, 1 not ok
(FAIL), 2 not ok (XFAIL), 3 not ok (XPASS), 4 SKIP (ok, or not ok when
SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES=1, the image's default), anything else
not ok (FAIL, exit=N). pytest's own exit codes collide with that: its 4 is a
usage error and 5 means no test was collected, 2 an interruption. So each
test runs through `run_test`, which translates pytest's result into the
image's vocabulary — see `image_exit_code`.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bpfkit import fs
from bpfkit.errors import UsageError
from bpfkit.paths import TEMPLATES_DIR

HOOK_FILES = {".virtme-prepare-post": "virtme-prepare-post.j2", ".virtme-exec-run": "virtme-exec-run.j2"}

# Defaults of the rendered hooks: where the bpfkit checkout is mounted into the
# container, and where the hooks put their copy, venv and object cache. The
# guest (virtme --rw) sees the container's filesystem, so these paths are
# valid on both sides.
DEFAULT_BPFKIT_SRC = "/opt/bpfkit"
DEFAULT_WORKDIR = "/opt/bpfkit-work"
DEFAULT_VENV = "/opt/bpfkit-venv"
DEFAULT_CACHE = "/opt/bpfkit-cache"
DEFAULT_TESTS = "tests/vm"

# The image's run_cmd vocabulary
IMAGE_OK, IMAGE_FAIL, IMAGE_SKIP = 0, 1, 4

PYTEST_EXIT_MEANING = {0: "all tests passed", 1: "some tests failed", 2: "interrupted", 3: "internal error",
                       4: "usage error", 5: "no tests collected"}


@dataclass(frozen=True)
class JunitCounts:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0


def read_junit(path: Path) -> JunitCounts:
    """Totals of a pytest --junitxml report (zeros if there is none)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return JunitCounts()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    return JunitCounts(**totals)


def image_exit_code(pytest_rc: int, counts: JunitCounts) -> tuple[int, str]:
    """pytest's exit code (and its report) → the exit code run_cmd should see,
    with a one-line explanation.

    Only a run where something passed is OK, and only a run where every
    collected test was skipped is SKIP. Everything else is FAIL (1): in
    particular pytest's 5 (nothing collected: a typo in a selection must not
    look green), its 4 (usage error, which the image would call SKIP) and its
    2/3 (which the image would label XFAIL/XPASS)."""
    meaning = PYTEST_EXIT_MEANING.get(pytest_rc, f"killed or unknown (exit {pytest_rc})")
    if pytest_rc == 0:
        if counts.tests > 0 and counts.skipped >= counts.tests:
            return IMAGE_SKIP, f"all {counts.tests} collected test(s) skipped → SKIP"
        return IMAGE_OK, f"{meaning} → OK"
    return IMAGE_FAIL, f"pytest: {meaning} → FAIL"


def run_test(pytest_args: list[str], *, python: str = sys.executable) -> int:
    """Run pytest on `pytest_args` (output passes through for the TAP
    diagnostics) and return the image exit code."""
    if not pytest_args:
        raise UsageError("run-test needs a pytest node id or path")
    with tempfile.TemporaryDirectory(prefix="bpfkit-junit-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}", *pytest_args]
        sys.stdout.flush()
        rc = subprocess.run(cmd).returncode
        code, why = image_exit_code(rc, read_junit(junit))
    print(f"bpfkit: pytest exit {rc}: {why} (exit {code})", flush=True)
    return code


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def tap_name(path: Path, nodeid: str) -> str:
    """A file-name-safe name for one test: run_cmd names the TAP test after the
    basename of the command, so each test gets a runner of this name."""
    rest = nodeid.split("::", 1)[1] if "::" in nodeid else ""
    return "bpfkit_" + _UNSAFE.sub("_", f"{path.name}::{rest}" if rest else path.name).strip("_")


class _Collector:
    """pytest plugin object that keeps the collected items."""

    def __init__(self):
        self.items = []

    def pytest_collection_finish(self, session):
        self.items = list(session.items)


def collect(pytest_args: list[str]) -> list[tuple[str, list[str]]]:
    """One (tap name, pytest args) per test pytest collects for `pytest_args`,
    with absolute node ids so each runner works whatever the rootdir. If
    collection itself failed (an import error...), one more entry re-runs the
    collection so the failure is reported instead of silently dropping tests."""
    import pytest

    collector = _Collector()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only our list
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *pytest_args], plugins=[collector])
    out = []
    for item in collector.items:
        rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else ""
        absolute = f"{item.path}::{rest}" if rest else str(item.path)
        out.append((tap_name(item.path, item.nodeid), [absolute]))
    if rc not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        out.append(("bpfkit_collection_errors", ["--collect-only", *pytest_args]))
    return out


# ---------------------------------------------------------------- rendering


def render_hooks(dest: Path, *, force: bool = False, bpfkit_src: str = DEFAULT_BPFKIT_SRC,
                 workdir: str = DEFAULT_WORKDIR, venv: str = DEFAULT_VENV, cache: str = DEFAULT_CACHE,
                 tests: str = DEFAULT_TESTS, python: str | None = None) -> list[Path]:
    """Write .virtme-prepare-post and .virtme-exec-run into `dest` (a kernel
    tree). `python` defaults to the venv's interpreter; tests may point the
    exec-run hook at another one."""
    import jinja2

    if not dest.is_dir():
        raise UsageError(f"{dest}: not a directory (give the root of the kernel tree)")
    for name, value in (("--bpfkit-src", bpfkit_src), ("workdir", workdir), ("venv", venv), ("cache", cache)):
        if not value.startswith("/"):
            raise UsageError(f"{name} must be an absolute path, got {value!r}")
    for name, value in (("--bpfkit-src", bpfkit_src), ("workdir", workdir), ("venv", venv), ("cache", cache),
                        ("--tests", tests), ("python", python or "")):
        if any(ch in value for ch in "\t\n\r\0") or not value.isprintable():
            raise UsageError(f"{name} must be one printable line without tabs, got {value!r}")
    targets = [dest / name for name in HOOK_FILES]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(str(t) for t in existing)} already exist(s)", hint="use --force to overwrite")
    # bash's ${#array[@]} would open a jinja comment: use {## ##} for those.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "ci"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, comment_start_string="{##",
                             comment_end_string="##}")
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    values = {"bpfkit_src": bpfkit_src, "workdir": workdir, "venv": venv, "cache": cache, "tests": tests,
              "python": python or f"{venv}/bin/python"}
    texts = [env.get_template(template).render(**values) for template in HOOK_FILES.values()]
    for target, text in zip(targets, texts):  # rendered first: no half-written pair
        fs.atomic_write(target, text, 0o755)
    return targets


def looks_like_kernel_tree(path: Path) -> bool:
    """The image refuses to run outside a kernel tree with the MPTCP selftests."""
    return (path / "tools/testing/selftests/net/mptcp/config").is_file()
