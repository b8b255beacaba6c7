"""Upstream's MPTCP selftests, once per scheduler, in the VM (`bpfkit vm selftests`).

The scripts are the ones of the very source tree the VM kernel was built from
(tools/testing/selftests/net/mptcp/), installed the kselftest way (`make -C
tools/testing/selftests TARGETS=net/mptcp install`) into bpfkit's cache; the
helpers they need (mptcp_connect, pm_nl_ctl, mptcp_sockopt, mptcp_inq,
mptcp_diag) are built there against that tree's UAPI headers.  Nothing in the
tree is edited.

Every script creates its own network namespaces, and net.mptcp.scheduler is per
netns (default "default").  To run a script "on" a scheduler, the guest puts a
small `ip` wrapper first in PATH: after `ip netns add NAME` it selects the
scheduler in NAME, and fails the add if it cannot, so a script never silently
runs on the default one.  The wrapper logs each netns it set; a run whose
scripts created netns the wrapper did not see is reported as an error.

Results per (scheduler, script): the script's exit status (kselftest: 0 pass,
4 skip, else fail), its TAP lines (mptcp_lib.sh prints one per subtest), the
counts, the duration and the full log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bpfkit import fs
from bpfkit.errors import BpfkitError, UsageError
from bpfkit.paths import cache_dir

SELFTESTS_SUBDIR = "tools/testing/selftests"
MPTCP_SUBDIR = "net/mptcp"
KSFT_SKIP = 4
DEFAULT_SCRIPT_TIMEOUT = 900  # when the directory's `settings` file gives none
_TAP_RE = re.compile(r"^(?P<status>not ok|ok) (?P<num>\d+)(?: -)? ?(?P<desc>.*?)(?:\s+#\s*(?P<directive>SKIP|TODO|XFAIL|"
                     r"IGNORE|FLAKY)\b\s*(?P<reason>.*))?$", re.I)


# ---------------------------------------------------------------- results


@dataclasses.dataclass
class Subtest:
    number: int
    description: str
    status: str  # "pass", "fail", "skip", "ignored" (a failure the script itself marks to ignore, e.g. flaky)
    reason: str = ""


ANY_SCHEDULER = "*"
ACCELS = ("kvm", "tcg")


@dataclasses.dataclass(frozen=True)
class KnownFailure:
    """A subtest that fails for a reason established elsewhere (README has the evidence): it is
    reported, and does not fail the run; if it passes, the table says so, to be removed.
    scheduler "*" is every scheduler; accel "kvm"/"tcg" limits it to guests run that way (a
    timing limit that only a guest under TCG emulation misses), "" to none."""

    scheduler: str
    script: str
    subtest: int
    reason: str
    accel: str = ""

    def applies(self, scheduler: str, script: str, accel: str) -> bool:
        return (self.scheduler in (ANY_SCHEDULER, scheduler) and self.script == script
                and self.accel in ("", accel))


def load_known(path: Path | None) -> list[KnownFailure]:
    if path is None:
        return []
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"--known {path}: {exc}") from None
    out = []
    for i, entry in enumerate(data.get("known", [])):
        try:
            known = KnownFailure(str(entry["scheduler"]), str(entry["script"]), int(entry["subtest"]),
                                 str(entry["reason"]), str(entry.get("accel", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"--known {path}: entry {i + 1} needs scheduler, script, subtest (a number) and "
                             f"reason ({exc})") from None
        if known.accel not in ("", *ACCELS):
            raise UsageError(f"--known {path}: entry {i + 1}: accel {known.accel!r} is not one of "
                             f"{', '.join(ACCELS)}")
        out.append(known)
    return out


def known_subtests(known: list[KnownFailure], scheduler: str, script: str, accel: str) -> list[int]:
    return sorted({k.subtest for k in known if k.applies(scheduler, script, accel)})


@dataclasses.dataclass
class ScriptRun:
    scheduler: str
    script: str
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    subtests: list[Subtest]
    log: str  # path of the full output
    netns_set: int = 0  # network namespaces the wrapper switched to the scheduler
    error: str = ""
    known: list[int] = dataclasses.field(default_factory=list)  # subtests known to fail (KnownFailure)
    attempts: int = 1
    flaky: list[int] = dataclasses.field(default_factory=list)  # failed in an earlier attempt, passed in the last
    args: list[str] = dataclasses.field(default_factory=list)  # given to the script (--args)
    guest_died: str = ""  # the kernel's first panic line, when the guest died in an earlier attempt

    def unexplained_failures(self, known: list[int]) -> list[int]:
        return sorted(s.number for s in self.subtests if s.status == "fail" and s.number not in known)

    @property
    def status(self) -> str:
        if self.error or self.exit_code is None:
            return "error"
        if self.exit_code == 0:
            return "pass"
        if self.exit_code == KSFT_SKIP:
            return "skip"
        failed = {s.number for s in self.subtests if s.status == "fail"}
        if failed and failed <= set(self.known):
            return "known"
        return "fail"

    def mark_known(self, known: list[KnownFailure], accel: str) -> None:
        self.known = known_subtests(known, self.scheduler, self.script, accel)

    def count(self, status: str) -> int:
        return sum(1 for s in self.subtests if s.status == status)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["status"] = self.status
        out["counts"] = {k: self.count(k) for k in ("pass", "fail", "skip", "ignored")}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ScriptRun":
        fields = {f.name for f in dataclasses.fields(cls)}
        args = {k: v for k, v in data.items() if k in fields}
        args["subtests"] = [Subtest(**s) for s in data.get("subtests", [])]
        return cls(**args)


def parse_tap(text: str) -> list[Subtest]:
    """The TAP result lines of a script's output (mptcp_lib_result_print_all_tap)."""
    out = []
    for line in text.splitlines():
        m = _TAP_RE.match(line.strip())
        if not m:
            continue
        directive = (m["directive"] or "").upper()
        if directive == "SKIP":
            status = "skip"
        elif directive in ("IGNORE", "FLAKY", "TODO", "XFAIL"):
            # mptcp_lib.sh prints a failure of a subtest it marks flaky as "ok N - ... # IGNORE Flaky"
            status = "ignored"
        elif m["status"].lower() == "ok":
            status = "pass"
        else:
            status = "fail"
        out.append(Subtest(int(m["num"]), m["desc"].strip(), status, (m["reason"] or "").strip()))
    return out


def format_table(runs: list[ScriptRun]) -> str:
    header = f"{'scheduler':<12} {'script':<22} {'result':<7} {'ok':>4} {'fail':>4} {'skip':>4} {'ign':>4} {'time':>7}"
    lines = [header, "-" * len(header)]
    for r in runs:
        failed = [s.number for s in r.subtests if s.status == "fail"]
        note = r.error or (f"failed: {', '.join(f'#{n}' for n in failed)}" if failed else "")
        if r.args:
            note = f"args: {shlex.join(r.args)}" + (f"; {note}" if note else "")
        if r.flaky:
            note += (f"{'; ' if note else ''}flaky: {', '.join(f'#{n}' for n in r.flaky)} failed, then passed "
                     f"(attempt {r.attempts})")
        if r.guest_died:
            note += f"{'; ' if note else ''}the guest kernel died in an earlier boot ({r.guest_died}); run again"
        passing_known = [n for n in r.known if n not in failed] if r.subtests else []
        if passing_known:
            note += f"{'; ' if note else ''}known failure(s) {', '.join(f'#{n}' for n in passing_known)} passed"
        lines.append(f"{r.scheduler:<12} {r.script:<22} {r.status:<7} {r.count('pass'):>4} {r.count('fail'):>4} "
                     f"{r.count('skip'):>4} {r.count('ignored'):>4} {r.seconds:>6.0f}s" + (f"  {note}" if note else ""))
    return "\n".join(lines)


def write_junit(runs: list[ScriptRun], path: Path) -> None:
    suites = ET.Element("testsuites")
    for r in runs:
        suite = ET.SubElement(suites, "testsuite", name=f"{r.scheduler}.{r.script}", time=f"{r.seconds:.1f}",
                              tests=str(max(1, len(r.subtests))), failures=str(r.count("fail")),
                              skipped=str(r.count("skip")), errors="1" if r.status == "error" else "0")
        cases = r.subtests or [Subtest(0, r.script, {"pass": "pass", "skip": "skip"}.get(r.status, "fail"),
                                       r.error)]
        for s in cases:
            case = ET.SubElement(suite, "testcase", classname=f"{r.scheduler}.{r.script}",
                                 name=f"{s.number:02d} {s.description}")
            if s.status == "fail":
                ET.SubElement(case, "failure", message=s.reason or "not ok")
            elif s.status in ("skip", "ignored"):
                ET.SubElement(case, "skipped", message=s.reason or s.status)
        if r.status == "error":
            ET.SubElement(suite, "error", message=r.error or "killed at the timeout")
        if r.guest_died:
            ET.SubElement(suite, "system-err").text = f"the guest kernel died in an earlier boot: {r.guest_died}"
    fs.atomic_write(path, ET.tostring(suites, encoding="unicode", xml_declaration=True))


# ---------------------------------------------------------------- host: install the scripts


def scripts_in(install_dir: Path) -> list[str]:
    """The test scripts of the installed directory (TEST_PROGS, as kselftest lists them)."""
    listed = install_dir / "kselftest-list.txt"
    names = []
    if listed.is_file():
        for line in listed.read_text().splitlines():
            collection, _, name = line.partition(":")
            if collection == MPTCP_SUBDIR and name.endswith(".sh"):
                names.append(name)
    return sorted(set(names))


def resolve_scripts(requested: list[str] | None, available: list[str]) -> list[str]:
    if not requested:
        return available
    out = []
    for name in requested:
        full = name if name.endswith(".sh") else f"{name}.sh"
        if full not in available:
            raise UsageError(f"no selftest {name!r} in this tree (has: {', '.join(available)})")
        out.append(full)
    return out


def parse_script_args(specs: list[str], scripts: list[str]) -> dict[str, list[str]]:
    """`SCRIPT=ARGS` (from --args) -> {"SCRIPT.sh": [arg, ...]}. The arguments are split as a shell
    would split them but are only ever an argv: no shell sees them."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        full = name if name.endswith(".sh") else f"{name}.sh"
        if not sep or not name:
            raise UsageError(f"--args {spec!r}: expected SCRIPT=ARGS, e.g. 'mptcp_connect=-f 131072'")
        if full not in scripts:
            raise UsageError(f"--args {spec!r}: {full} is not among the scripts to run ({', '.join(scripts)})")
        if full in out:
            raise UsageError(f"--args: {full} is given twice")
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise UsageError(f"--args {spec!r}: {exc}") from None
        out[full] = words
    return out


def script_timeout(install_dir: Path) -> int:
    settings = install_dir / MPTCP_SUBDIR / "settings"
    if settings.is_file():
        m = re.search(r"^timeout=(\d+)", settings.read_text(), re.M)
        if m:
            return int(m.group(1))
    return DEFAULT_SCRIPT_TIMEOUT


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "-"


def install(tree: Path, build_dir: Path, log=None) -> Path:
    """Build and install the tree's net/mptcp selftests into the cache (once per content)."""
    selftests = tree / SELFTESTS_SUBDIR
    if not (selftests / MPTCP_SUBDIR).is_dir():
        raise UsageError(f"{tree} has no {SELFTESTS_SUBDIR}/{MPTCP_SUBDIR}: not a kernel tree with MPTCP selftests")
    key = hashlib.sha256("|".join([_tree_digest(selftests / MPTCP_SUBDIR), _tree_digest(selftests / "net/lib"),
                                    _tree_digest(selftests / "kselftest"), _file_digest(selftests / "net/lib.sh"),
                                    str(tree)]).encode()).hexdigest()[:16]
    dest = cache_dir() / "selftests" / key
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    out = log or sys.stderr
    print(f"bpfkit: building {SELFTESTS_SUBDIR}/{MPTCP_SUBDIR} of {tree} (once)", file=sys.stderr)
    jobs = f"-j{os.cpu_count() or 1}"
    steps = [
        # the helpers include the UAPI headers of this tree, installed into its build dir
        ["make", "-C", str(tree), f"O={build_dir}", jobs, "headers"],
        ["make", "-C", str(selftests), f"O={build_dir}", jobs, f"TARGETS={MPTCP_SUBDIR}",
         f"INSTALL_PATH={dest}", "install"],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out.write(result.stdout[-4000:] if result.returncode else "")
        if result.returncode != 0:
            raise BpfkitError(f"building the MPTCP selftests failed: {' '.join(cmd)} (exit {result.returncode})",
                              hint="the last lines are above; the apt list in the Makefile has the tools they need")
    if not scripts_in(dest):
        raise BpfkitError(f"the selftests install in {dest} lists no {MPTCP_SUBDIR} scripts")
    (dest / ".complete").write_text(str(tree) + "\n")
    return dest


# ---------------------------------------------------------------- guest: run them

IP_WRAPPER = """#!/bin/sh
# bpfkit vm selftests: select the scheduler under test in every netns a script adds.
if [ "$1" != netns ] || [ "$2" != add ] || [ $# -ne 3 ]; then
	exec "{real_ip}" "$@"
fi
"{real_ip}" "$@" || exit $?
if ! "{real_ip}" netns exec "$3" sysctl -qw net.mptcp.scheduler="$BPFKIT_SELFTEST_SCHEDULER"; then
	echo "bpfkit: cannot select $BPFKIT_SELFTEST_SCHEDULER in netns $3" >&2
	"{real_ip}" netns del "$3"
	exit 1
fi
echo "$3" >> "$BPFKIT_SELFTEST_NETNS_LOG"
"""


def _write_wrapper(directory: Path) -> Path:
    real_ip = shutil.which("ip")
    if not real_ip:
        raise BpfkitError("`ip` (iproute2) is not installed in the guest")
    if '"' in real_ip or "$" in real_ip or "`" in real_ip:
        raise BpfkitError(f"unexpected path for ip: {real_ip!r}")
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "ip"
    wrapper.write_text(IP_WRAPPER.format(real_ip=real_ip))
    wrapper.chmod(0o755)
    return directory


def plan_runs(schedulers: list[str], scripts: list[str]) -> list[list[str]]:
    """The (scheduler, script) runs of a plan, in the order the guest reports them: every script
    of one scheduler (loaded once) before the next scheduler."""
    return [[spec, script] for spec in schedulers for script in scripts]


def next_run_after_guest_death(runs: list[list[str]], reported: int, died_in: dict[tuple[str, str], str],
                               max_reboots: int) -> tuple[str, str] | None:
    """After the guest kernel died with `reported` of `runs` reported: the run it died in, if the
    plan should boot again for it and the rest, else None. Every run is interrupted at most once
    (a kernel that dies twice in the same script is that script's bug), and at most `max_reboots`
    boots are added to a plan."""
    if reported >= len(runs) or len(died_in) >= max_reboots:
        return None
    run = (runs[reported][0], runs[reported][1])
    return None if run in died_in else run


def run_plan(plan: dict) -> list[ScriptRun]:
    """In the guest: for each scheduler, load it (not `default`), run its scripts, unload.
    plan["runs"] are the runs still to do; what an earlier boot of the same plan reported stays in
    results.json and the new results are appended to it (after a guest kernel death, the host boots
    again for the runs that did not report)."""
    import itertools

    from bpfkit.sched import lifecycle

    install_dir = Path(plan["install_dir"])
    out_dir = Path(plan["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper_dir = _write_wrapper(out_dir / "bin")
    script_dir = install_dir / MPTCP_SUBDIR
    runs = load_results(out_dir)
    for spec, group in itertools.groupby(plan["runs"], key=lambda run: run[0]):
        scripts = [script for _, script in group]
        loaded = None
        try:
            if spec != lifecycle.DEFAULT:
                loaded = lifecycle.load(spec).record.name
            name = loaded or lifecycle.DEFAULT
        except BpfkitError as exc:
            for script in scripts:
                runs.append(ScriptRun(spec, script, None, 0.0, [], "", error=f"load failed: {exc.message}"))
            save_results(runs, out_dir)
            continue
        try:
            for script in scripts:
                runs.append(_run_with_retries(name, script, script_dir, out_dir, wrapper_dir, plan))
                save_results(runs, out_dir)
        finally:
            if loaded:
                lifecycle.unload(loaded, force=True)
    save_results(runs, out_dir)
    return runs


def _run_with_retries(name: str, script: str, script_dir: Path, out_dir: Path, wrapper_dir: Path,
                      plan: dict) -> ScriptRun:
    """Run a script; while it has failures that are not known ones, run it again, up to
    plan["retries"] times (upstream's MPTCP CI does the same for its timing-bound scripts). The last
    attempt is the result; a subtest that failed before and passes in it is reported as flaky.
    Why: simult_flows' limits are a few per cent above the ideal transfer time, and under TCG one
    subtest of a scheduler that passes it (blest #9 in a clean-clone CI run, 2026-12-03) can miss by
    that much."""
    known = plan.get("known", {}).get(f"{name}/{script}", [])
    script_args = plan.get("script_args", {}).get(script, [])
    run = _run_script(name, script, script_dir, out_dir, wrapper_dir, plan["timeout"], script_args, known, attempt=1)
    earlier_failures: set[int] = set()
    total = run.seconds
    for attempt in range(2, plan.get("retries", 0) + 2):
        failures = run.unexplained_failures(known)
        if run.error or not failures:
            break
        earlier_failures |= set(failures)
        print(f"bpfkit: {name}: {script}: failed {', '.join(f'#{n}' for n in failures)}; attempt {attempt}",
              file=sys.stderr, flush=True)
        run = _run_script(name, script, script_dir, out_dir, wrapper_dir, plan["timeout"], script_args, known,
                          attempt=attempt)
        total += run.seconds
        run.attempts = attempt
    run.seconds = total
    run.flaky = sorted(n for n in earlier_failures if any(s.number == n and s.status == "pass" for s in run.subtests))
    return run


def _run_script(name: str, script: str, script_dir: Path, out_dir: Path, wrapper_dir: Path,
                timeout: float, script_args: list[str], known: list[int], attempt: int = 1) -> ScriptRun:
    suffix = "" if attempt == 1 else f".attempt{attempt}"
    log = out_dir / f"{name}.{script}{suffix}.log"
    if attempt == 1 and log.exists():  # the output of a boot whose kernel died during this script
        log.rename(log.with_name(f"{name}.{script}.guest-died.log"))
    netns_log = out_dir / f"{name}.{script}.netns"
    netns_log.unlink(missing_ok=True)
    env = dict(os.environ, BPFKIT_SELFTEST_SCHEDULER=name, BPFKIT_SELFTEST_NETNS_LOG=str(netns_log))
    if name != "default":  # a new netns starts on "default": no wrapper (an extra sh per `ip` call) needed
        env["PATH"] = f"{wrapper_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    print(f"bpfkit: {name}: {script} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(script_dir / script), *script_args], cwd=script_dir, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = None
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    netns = len(netns_log.read_text().split()) if netns_log.exists() else 0
    error = ""
    if code is None:
        error = f"killed after {timeout:.0f}s"
    elif netns == 0 and name != "default" and code != KSFT_SKIP:
        error = "the script created no netns through `ip netns add`: the scheduler was never selected"
    # known given here too, so the progress line says "known", not "fail", as the table will
    run = ScriptRun(name, script, code, seconds, parse_tap(text), str(log), netns, error, known=list(known),
                    args=list(script_args))
    print(f"bpfkit: {name}: {script}: {run.status} ({run.count('pass')} ok, {run.count('fail')} failed, "
          f"{run.count('skip')} skipped) in {seconds:.0f}s", file=sys.stderr, flush=True)
    return run


def save_results(runs: list[ScriptRun], out_dir: Path) -> None:
    fs.atomic_write(out_dir / "results.json", json.dumps([r.to_dict() for r in runs], indent=2))


def load_results(out_dir: Path) -> list[ScriptRun]:
    try:
        return [ScriptRun.from_dict(d) for d in json.loads((out_dir / "results.json").read_text())]
    except FileNotFoundError:
        return []


def main(argv: list[str]) -> int:
    """Guest entry: python -m bpfkit.selftests PLAN.json"""
    plan = json.loads(Path(argv[0]).read_text())
    runs = run_plan(plan)
    return 0 if runs and all(r.status in ("pass", "skip") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
