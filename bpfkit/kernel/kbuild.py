"""Build the VM kernel: Debian's linux-source (or any kernel tree) + the patch
series in vm/patches/<major.minor>/ + the config fragments in vm/config/.

Cache layout (under cache_dir()):
  src/<source-name>/                 extracted Debian tarball, ONE tree per source; the
                                     patches applied to it are copied in .bpfkit-applied/
  build/<source-name>-<flavour>/     persistent out-of-tree build dir (make O=...), so a
                                     patch touching one file rebuilds one file
  kernels/<key>/                     finished builds: bzImage, vmlinux, config, build.log,
                                     kernel.json; complete or absent (renamed into place)
  kbuild.lock                        one kernel build at a time

key = sha256 over (schema, source identity, flavour, fragment contents, patch contents).
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit import hostlock
from bpfkit.errors import KernelBuildError, MissingDependency, UsageError
from bpfkit.kernel import kconfig
from bpfkit.paths import VM_DIR, cache_dir

# Bump when the build procedure changes in a way that changes the result.
# 2: the source tree's tools/testing/selftests/net/mptcp/config is merged too
SCHEMA_VERSION = 2

DEBIAN_PACKAGE = "linux-source-6.12"
DEBIAN_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")

CONFIG_DIR = VM_DIR / "config"
PATCHES_DIR = VM_DIR / "patches"
FLAVOURS = {
    "default": ["bpfkit.config"],
    "debug": ["bpfkit.config", "debug.config"],
}

SELFTESTS_CONFIG = "tools/testing/selftests/net/mptcp/config"
APPLIED_DIR = ".bpfkit-applied"  # inside a source tree: copies of the applied patches
PENDING_FILE = ".pending"  # inside APPLIED_DIR: the patch being applied right now
OBJECT_COUNT_FILE = ".bpfkit-object-count"  # inside a build dir: progress bar total
ARTIFACTS = ("bzImage", "vmlinux", "config", "build.log", "kernel.json")

# kbuild's quiet output: "  CC      kernel/fork.o", "  LD [M]  ...", "  AR      ..."
_OBJECT_LINE_RE = re.compile(r"^\s+(CC|LD|AR)(\s+\[M\])?\s+\S")
_ERROR_LINE_RE = re.compile(
    r"\berror:|\bError \d+|\*\*\*|undefined reference|fatal error|No rule to make target|FAILED|not clean"
)
# A from-scratch build of the default flavour prints about this many CC/LD/AR lines.
_ESTIMATED_OBJECTS = 2900


@dataclass(frozen=True)
class KernelSource:
    kind: str  # "debian" (the packaged tarball) or "tree" (a user's kernel tree, built as-is)
    location: Path  # the tarball, or the tree
    version: str  # kernel version, e.g. "6.12.117"
    identity: str  # what the cache key covers to know the source did not change
    name: str  # directory-safe name for src/ and build/

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


@dataclass(frozen=True)
class Patch:
    name: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class KernelBuild:
    bzimage: Path
    vmlinux: Path
    release: str  # `uname -r` in the guest
    key: str
    dir: Path
    meta: dict = field(default_factory=dict)  # kernel.json


# --------------------------------------------------------------------------- inputs


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def debian_source() -> KernelSource:
    if not DEBIAN_TARBALL.is_file():
        raise MissingDependency(
            f"kernel source tarball {DEBIAN_TARBALL} not found",
            hint=f"apt-get install {DEBIAN_PACKAGE}",
        )
    query = _run(["dpkg-query", "-W", "-f=${Version}", DEBIAN_PACKAGE])
    if query.returncode == 0 and query.stdout.strip():
        package_version = query.stdout.strip()  # e.g. 6.12.117-1~deb12u1
        identity = f"debian:{DEBIAN_PACKAGE}={package_version}"
        name = f"debian-{package_version}"
    else:  # tarball present but not from dpkg: identify it by size and mtime
        stat = DEBIAN_TARBALL.stat()
        package_version = ""
        identity = f"tarball:{DEBIAN_TARBALL}:{stat.st_size}:{stat.st_mtime_ns}"
        name = f"tarball-{_sha256(identity.encode())[:12]}"
    # "6.12.117" from "6.12.117-1~deb12u1"; "6.12" from the package name otherwise.
    version = re.match(r"\d+\.\d+(\.\d+)?", package_version or DEBIAN_PACKAGE.removeprefix("linux-source-"))
    return KernelSource("debian", DEBIAN_TARBALL, version.group(0), identity, _safe_name(name))


def makefile_version(tree: Path) -> str:
    """'6.12.117' from a kernel tree's top Makefile."""
    fields = {}
    for line in (tree / "Makefile").read_text(errors="replace").splitlines()[:12]:
        if match := re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line):
            fields[match.group(1)] = match.group(2)
    if "VERSION" not in fields or "PATCHLEVEL" not in fields:
        raise UsageError(f"{tree}/Makefile has no VERSION/PATCHLEVEL: not a kernel tree?")
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields.get("SUBLEVEL"):
        version += f".{fields['SUBLEVEL']}"
    return version + fields.get("EXTRAVERSION", "")


def tree_identity(tree: Path) -> str:
    """What the cache key covers for a user tree: for git, HEAD + the uncommitted diff
    + untracked files; otherwise the Makefile version + every file's mtime and size."""
    head = _run(["git", "-C", str(tree), "rev-parse", "HEAD"])
    if head.returncode == 0:
        digest = hashlib.sha256()
        diff = subprocess.run(
            ["git", "-C", str(tree), "diff", "HEAD", "--binary"], capture_output=True
        )
        digest.update(diff.stdout)
        untracked = _run(["git", "-C", str(tree), "ls-files", "--others", "--exclude-standard"])
        for rel in sorted(untracked.stdout.splitlines()):
            path = tree / rel
            if path.is_file():
                digest.update(rel.encode() + b"\0" + path.read_bytes())
        return f"git:{head.stdout.strip()}:{digest.hexdigest()}"
    digest = hashlib.sha256(makefile_version(tree).encode())
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            try:
                stat = os.stat(os.path.join(dirpath, filename))
            except OSError:
                continue
            rel = os.path.relpath(os.path.join(dirpath, filename), tree)
            digest.update(f"{rel}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    return f"mtime:{digest.hexdigest()}"


def tree_source(tree: Path) -> KernelSource:
    tree = Path(tree).expanduser().resolve()
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise UsageError(f"--source {tree}: not a kernel source tree (no Makefile/Kconfig)")
    name = f"tree-{_safe_name(tree.name)}-{_sha256(str(tree).encode())[:8]}"
    return KernelSource("tree", tree, makefile_version(tree), tree_identity(tree), name)


# How a kernel tree registers mptcp_sched_ops as a BPF struct_ops: since 6.9 with
# register_bpf_struct_ops(&..., mptcp_sched_ops) in net/mptcp/ (mptcp_net-next's
# net/mptcp/bpf.c, and vm/patches/6.12/ once applied); before that with an entry
# in kernel/bpf/bpf_struct_ops_types.h.
_SCHED_STRUCT_OPS_RE = re.compile(r"register_bpf_struct_ops\s*\(\s*&\s*\w+\s*,\s*mptcp_sched_ops\s*\)")
_SCHED_STRUCT_OPS_TYPE_RE = re.compile(r"^\s*BPF_STRUCT_OPS_TYPE\s*\(\s*mptcp_sched_ops\s*\)", re.M)


def bpf_sched_struct_ops_in_tree(tree: Path) -> str | None:
    """Where the tree registers mptcp_sched_ops as a BPF struct_ops ("file:line"),
    or None if it does not (mainline: in-kernel schedulers only). A tree that has
    it needs no patch series to run bpfkit's BPF schedulers."""
    candidates = sorted((tree / "net/mptcp").glob("*.c")) + [tree / "kernel/bpf/bpf_struct_ops_types.h"]
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        pattern = _SCHED_STRUCT_OPS_TYPE_RE if path.suffix == ".h" else _SCHED_STRUCT_OPS_RE
        match = pattern.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            return f"{path.relative_to(tree)}:{line}"
    return None


def tree_patch_note(tree: Path) -> str:
    """Why a user tree is built without vm/patches/, for the build message and kernel.json."""
    where = bpf_sched_struct_ops_in_tree(tree)
    if where:
        return f"tree already has the BPF mptcp_sched_ops struct_ops ({where}): built as-is, vm/patches not needed"
    return ("tree has no BPF mptcp_sched_ops struct_ops: built as-is (vm/patches are never applied to a user "
            "tree), so bpfkit's BPF schedulers will not load in this kernel")


def fragment_paths(flavour: str) -> list[Path]:
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown kernel flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    paths = [CONFIG_DIR / name for name in FLAVOURS[flavour]]
    for path in paths:
        if not path.is_file():
            raise KernelBuildError(f"config fragment {path} is missing")
    return paths


def patch_series(major_minor: str) -> list[Patch]:
    """vm/patches/<major.minor>/*.patch, in name order."""
    series_dir = PATCHES_DIR / major_minor
    if not series_dir.is_dir():
        return []
    return [Patch(p.name, p.read_bytes()) for p in sorted(series_dir.glob("*.patch"))]


def cache_key(
    source_identity: str,
    flavour: str,
    fragments: list[tuple[str, bytes]],
    patches: list[Patch],
) -> str:
    """16 hex digits of sha256 over everything that decides the built kernel."""
    material = {
        "schema": SCHEMA_VERSION,
        "source": source_identity,
        "flavour": flavour,
        "fragments": [[name, _sha256(content)] for name, content in fragments],
        "patches": [[p.name, p.sha256] for p in patches],
    }
    return _sha256(json.dumps(material, sort_keys=True).encode())[:16]


@dataclass(frozen=True)
class BuildInputs:
    source: KernelSource
    flavour: str
    fragments: list[Path]
    patches: list[Patch]  # empty for a user tree: it is built as-is
    key: str


def resolve_inputs(source: Path | None, flavour: str) -> BuildInputs:
    kernel_source = debian_source() if source is None else tree_source(source)
    fragments = fragment_paths(flavour)
    patches = patch_series(kernel_source.major_minor) if kernel_source.kind == "debian" else []
    key = cache_key(
        kernel_source.identity,
        flavour,
        [(p.name, p.read_bytes()) for p in fragments],
        patches,
    )
    return BuildInputs(kernel_source, flavour, fragments, patches, key)


# --------------------------------------------------------------------------- cache


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def load_cached(key: str) -> KernelBuild | None:
    """The finished build for `key`, or None if absent or incomplete."""
    directory = kernels_dir() / key
    if not all((directory / name).is_file() for name in ARTIFACTS):
        return None
    try:
        meta = json.loads((directory / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    return KernelBuild(
        bzimage=directory / "bzImage",
        vmlinux=directory / "vmlinux",
        release=meta.get("release", ""),
        key=key,
        dir=directory,
        meta=meta,
    )


def default_kernel(flavour: str = "default") -> KernelBuild:
    """The cached build of the Debian source + current fragments + current patches.
    Never builds: other modules call this and must not start a 10-minute build."""
    inputs = resolve_inputs(None, flavour)
    build = load_cached(inputs.key)
    if build is None:
        flag = "" if flavour == "default" else f" --flavour {flavour}"
        raise MissingDependency(
            f"no kernel built for these inputs ({flavour} flavour, key {inputs.key}); "
            f"run `bpfkit vm kernel{flag}`",
        )
    return build


@contextlib.contextmanager
def _build_lock():
    """One kernel build at a time (2 cores: two builds would each take twice as long).
    Yields the lock's descriptor: make's guard keeps it until make is gone."""
    with hostlock.held("kbuild.lock", hostlock.this_process("kernel build"),
                       lambda other: f"bpfkit: waiting for another kernel build ({other})") as fd:
        yield fd


# --------------------------------------------------------------------------- source tree


def extract_debian_tree(source: KernelSource) -> Path:
    """src/<name>/, extracted once. tar runs into a temp dir that is renamed into
    place, so a kill mid-extract leaves no half tree behind."""
    src_root = cache_dir() / "src"
    tree = src_root / source.name
    if tree.is_dir():
        return tree
    src_root.mkdir(parents=True, exist_ok=True)
    for stale in src_root.glob(".extract-*"):  # left by a killed extraction
        shutil.rmtree(stale, ignore_errors=True)
    print(f"bpfkit: extracting {source.location} (once, ~30 s)", file=sys.stderr)
    temp = Path(tempfile.mkdtemp(prefix=".extract-", dir=src_root))
    result = _run(["tar", "-xJf", str(source.location), "-C", str(temp)])
    if result.returncode != 0:
        shutil.rmtree(temp, ignore_errors=True)
        raise KernelBuildError(f"extracting {source.location} failed:\n{result.stderr.strip()}")
    top = [p for p in temp.iterdir() if p.is_dir()]
    if len(top) != 1:
        shutil.rmtree(temp, ignore_errors=True)
        raise KernelBuildError(f"{source.location}: expected one top directory, found {len(top)}")
    (top[0] / APPLIED_DIR).mkdir()
    top[0].rename(tree)
    shutil.rmtree(temp, ignore_errors=True)
    return tree


def _patch(tree: Path, patch_file: Path, *extra: str) -> subprocess.CompletedProcess:
    # -f: never ask, and never guess "this looks reversed" (--batch would reverse it).
    return _run(["patch", "-p1", "-f", "--no-backup-if-mismatch", "-i", str(patch_file), *extra], cwd=tree)


def applied_patches(tree: Path) -> list[Patch]:
    """The series currently applied to the tree, recovering from a kill mid-apply."""
    applied_dir = tree / APPLIED_DIR
    applied_dir.mkdir(exist_ok=True)
    pending = applied_dir / PENDING_FILE
    if pending.exists():
        # Killed while applying: the patch is applied iff it reverses cleanly.
        staged = applied_dir / (pending.read_text().strip() + ".staged")
        if staged.exists() and _patch(tree, staged, "-R", "--dry-run").returncode == 0:
            staged.rename(applied_dir / staged.name.removesuffix(".staged"))
        pending.unlink()
    for staged in applied_dir.glob("*.staged"):
        staged.unlink()
    return [Patch(p.name, p.read_bytes()) for p in sorted(applied_dir.glob("*.patch"))]


_HUNK_HEADER_RE = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def hunk_text(patch_text: str, file: str, number: int) -> list[str]:
    """Lines of hunk `number` (1-based, counted per file as patch(1) does) for `file`."""
    lines = patch_text.splitlines()
    current_file = None
    seen = 0
    for index, line in enumerate(lines):
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            current_file = path.split("/", 1)[1] if "/" in path else path
            seen = 0
            continue
        match = _HUNK_HEADER_RE.match(line)
        if not match or current_file != file:
            continue
        seen += 1
        if seen != number:
            continue
        old_left = int(match.group(1) or 1)
        new_left = int(match.group(2) or 1)
        hunk = [line]
        for body in lines[index + 1 :]:
            if old_left <= 0 and new_left <= 0:
                break
            hunk.append(body)
            if body.startswith("-"):
                old_left -= 1
            elif body.startswith("+"):
                new_left -= 1
            elif not body.startswith("\\"):  # context (or "\ No newline at end of file")
                old_left -= 1
                new_left -= 1
        return hunk
    return []


def rejected_hunks(patch_output: str, patch: Patch) -> str:
    """patch(1)'s complaint plus the text of the first rejected hunk."""
    summary_lines = []
    first_failure = None  # (file, hunk number)
    current_file = None
    for line in patch_output.splitlines():
        if match := re.match(r"^(?:checking|patching) file (.+)$", line):
            current_file = match.group(1).strip()
        if "FAILED" in line or "can't find file" in line or "No file to patch" in line:
            summary_lines.append(f"{current_file}: {line}" if line.startswith("Hunk") else line)
        if first_failure is None and (match := re.match(r"^Hunk #(\d+) FAILED", line)):
            first_failure = (current_file, int(match.group(1)))
    summary = "\n".join(summary_lines) or patch_output.strip()
    if first_failure:
        hunk = hunk_text(patch.content.decode(errors="replace"), *first_failure)
        if hunk:
            summary += f"\nfirst rejected hunk ({first_failure[0]}):\n" + "\n".join(hunk[:40])
    return summary


def sync_patches(tree: Path, wanted: list[Patch], series_label: str = "") -> list[Patch]:
    """Make the tree carry exactly `wanted`: reverse the applied patches after the
    longest common prefix, then apply the rest. Only files those patches touch
    change, so the persistent build dir rebuilds only them. A patch that does not
    apply leaves the tree pristine (no patch applied) and raises."""
    applied = applied_patches(tree)
    common = 0
    while common < min(len(applied), len(wanted)) and applied[common] == wanted[common]:
        common += 1
    applied_dir = tree / APPLIED_DIR
    for patch in reversed(applied[common:]):
        _reverse(tree, applied_dir / patch.name, patch)
    for patch in wanted[common:]:
        staged = applied_dir / (patch.name + ".staged")
        staged.write_bytes(patch.content)
        check = _patch(tree, staged, "--dry-run")
        if check.returncode != 0:
            staged.unlink()
            for done in reversed(applied_patches(tree)):
                _reverse(tree, applied_dir / done.name, done)
            raise KernelBuildError(
                f"patch {series_label}{patch.name} does not apply to {tree.name} "
                f"(the tree was restored to pristine):\n"
                + rejected_hunks(check.stdout + check.stderr, patch)
            )
        pending = applied_dir / PENDING_FILE
        pending.write_text(patch.name + "\n")
        result = _patch(tree, staged)
        if result.returncode != 0:  # the dry run passed, so this is unexpected
            raise KernelBuildError(f"patch {patch.name} failed after a clean dry run:\n{result.stdout}")
        staged.rename(applied_dir / patch.name)
        pending.unlink()
    return wanted


def _reverse(tree: Path, copy: Path, patch: Patch) -> None:
    result = _patch(tree, copy, "-R")
    if result.returncode != 0:
        raise KernelBuildError(
            f"cannot un-apply {patch.name} from {tree}: the tree was changed by hand",
            hint=f"delete {tree} to re-extract it (the next build is then a full one)",
        )
    copy.unlink()


# --------------------------------------------------------------------------- make


class _Progress:
    """Counts CC/LD/AR lines against the previous full build's count.
    A rich bar on a TTY; otherwise one line every 30 s; nothing if disabled."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled = enabled
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.label = label
        self._rich = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            # stderr: stdout carries the result (`K=$(bpfkit vm kernel)`).
            self._rich = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[current]}"), transient=True,
                console=Console(stderr=True),
            )
            self._rich.start()
            self._task = self._rich.add_task(label, total=total, current="")

    def line(self, text: str) -> None:
        if not _OBJECT_LINE_RE.match(text):
            return
        self.count += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=min(self.count, self.total),
                              current=text.split()[-1][-50:])
            return
        now = time.monotonic()
        if now - self.last_line >= 30:
            self.last_line = now
            print(f"bpfkit: {self.label}: {self.count}/~{self.total} objects, "
                  f"{int(now - self.started)} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def error_excerpt(lines: list[str], limit: int = 30) -> list[str]:
    """The lines that explain a failed build: each error line with the two lines
    before it (gcc's 'In function' context), first errors first. Falls back to
    the tail when nothing looks like an error."""
    hits = [i for i, line in enumerate(lines) if _ERROR_LINE_RE.search(line)]
    if not hits:
        return lines[-limit:]
    chosen: list[int] = []
    for hit in hits:
        for i in range(max(0, hit - 2), hit + 1):
            if i not in chosen:
                chosen.append(i)
    return [lines[i] for i in chosen[:limit]]


def _make(source_tree: Path, build_dir: Path, targets: list[str], log, lock_fd: int | None,
          progress: _Progress | None = None, jobs: int = 1) -> None:
    cmd = ["make", "-C", str(source_tree), f"O={build_dir}", f"-j{jobs}", *targets]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    recent: deque[str] = deque(maxlen=4000)
    # make (and its sub-makes) in a session of its own, under a guard that kills it if bpfkit dies
    # and holds the build lock until it is gone: a killed `vm kernel` leaves no make writing into
    # the shared build dir beside the next build.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", stdin=subprocess.DEVNULL, start_new_session=True) as proc:
        guard = hostlock.GroupGuard(proc.pid, lock_fd)
        try:
            for line in proc.stdout:
                log.write(line)
                recent.append(line.rstrip("\n"))
                if progress is not None:
                    progress.line(line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C, an exception): end make, it is in its own group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            guard.release()
    log.flush()
    if returncode != 0:
        excerpt = "\n".join("  " + line for line in error_excerpt(list(recent)))
        raise KernelBuildError(
            f"`make {' '.join(targets)}` failed (exit {returncode}):\n{excerpt}\n"
            f"full log: {log.name}"
        )


def configure(source_tree: Path, build_dir: Path, fragments: list[Path], log, lock_fd: int | None) -> dict[str, str]:
    """defconfig + kvm_guest.config + fragments, olddefconfig, mod2yesconfig; then
    check every fragment option kept its requested value. Returns the .config."""
    _make(source_tree, build_dir, ["defconfig"], log, lock_fd)
    # Upstream's MPTCP selftests state what they need (netfilter, nftables, tc actions...) in
    # their own config; merged before bpfkit's fragments so that those still decide.
    selftests = [p for p in [source_tree / SELFTESTS_CONFIG] if p.is_file()]
    merge = [
        str(source_tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build_dir),
        str(build_dir / ".config"), str(source_tree / "kernel/configs/kvm_guest.config"),
        *map(str, selftests), *map(str, fragments),
    ]
    log.write(f"$ {' '.join(merge)}\n")
    log.flush()
    result = subprocess.run(merge, cwd=source_tree, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise KernelBuildError(f"merge_config.sh failed; see {log.name}")
    _make(source_tree, build_dir, ["olddefconfig"], log, lock_fd)
    # Everything built in: no module build or install step, the guest needs no /lib/modules.
    _make(source_tree, build_dir, ["mod2yesconfig"], log, lock_fd)
    actual = kconfig.parse_config((build_dir / ".config").read_text())
    requested = kconfig.read_fragments(selftests + fragments)
    dropped = kconfig.missing_options(requested, actual)
    if dropped:
        reasons = "\n".join("  " + kconfig.explain_option(source_tree, d, actual) for d in dropped)
        raise KernelBuildError(
            f"kconfig dropped {len(dropped)} option(s) the fragments ask for "
            f"({', '.join(str(p) for p in selftests + fragments)}):\n{reasons}",
            hint="enable the missing dependencies in the fragment too",
        )
    return actual


def _install(inputs: BuildInputs, build_dir: Path, log_path: Path, release: str,
             patches: list[Patch], seconds: float) -> KernelBuild:
    """Copy the artifacts into kernels/<key>/ via a temp dir and a rename, so the
    key dir is either complete or absent."""
    root = kernels_dir()
    root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{inputs.key}-", dir=root))
    temp.chmod(0o755)  # mkdtemp makes it private; the kernel dir is meant to be shared
    try:
        shutil.copy2(build_dir / "arch/x86/boot/bzImage", temp / "bzImage")
        shutil.copy2(build_dir / "vmlinux", temp / "vmlinux")
        shutil.copy2(build_dir / ".config", temp / "config")
        shutil.copy2(log_path, temp / "build.log")
        source = inputs.source
        meta = {
            "schema": SCHEMA_VERSION,
            "key": inputs.key,
            "release": release,
            "flavour": inputs.flavour,
            "source": {
                "kind": source.kind,
                "location": str(source.location),
                "version": source.version,
                "identity": source.identity,
            },
            "fragments": [{"name": p.name, "sha256": _sha256(p.read_bytes())} for p in inputs.fragments],
            "patches": [{"name": p.name, "sha256": p.sha256} for p in patches],
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if source.kind == "tree":
            meta["patches_note"] = tree_patch_note(source.location)
            meta["bpf_sched_struct_ops"] = bpf_sched_struct_ops_in_tree(source.location)
        (temp / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        final = root / inputs.key
        if final.exists():  # an incomplete leftover (load_cached said no)
            shutil.rmtree(final)
        temp.rename(final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for stale in root.glob(f".tmp-{inputs.key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return load_cached(inputs.key)


def _check_tools() -> None:
    for tool, package in (("make", "make"), ("gcc", "gcc"), ("pahole", "dwarves"), ("patch", "patch"),
                          ("flex", "flex"), ("bison", "bison"), ("bc", "bc")):
        if shutil.which(tool) is None:
            raise MissingDependency(f"`{tool}` is needed to build the kernel", hint=f"apt-get install {package}")


def build_kernel(source: Path | None = None, flavour: str = "default", progress: bool = True) -> KernelBuild:
    """Build (or return the cached) kernel for the Debian source, or for the kernel
    tree `source` built as-is, with the flavour's config fragments."""
    inputs = resolve_inputs(source, flavour)
    cached = load_cached(inputs.key)
    if cached is not None:
        return cached
    _check_tools()
    with _build_lock() as lock_fd:
        cached = load_cached(inputs.key)  # another process may have just built it
        if cached is not None:
            return cached
        return _build_locked(inputs, progress, lock_fd)


def tree_and_build_dir(source: Path | None = None, flavour: str = "default") -> tuple[Path, Path]:
    """The source tree a kernel is built from (the extracted, patched Debian tree, or
    the user's tree) and its out-of-tree build dir; for tools built from the same tree."""
    inputs = resolve_inputs(source, flavour)
    tree = extract_debian_tree(inputs.source) if inputs.source.kind == "debian" else inputs.source.location
    return tree, cache_dir() / "build" / f"{inputs.source.name}-{inputs.flavour}"


def _build_locked(inputs: BuildInputs, progress: bool, lock_fd: int) -> KernelBuild:
    started = time.monotonic()
    if inputs.source.kind == "debian":
        tree = extract_debian_tree(inputs.source)
        patches = sync_patches(tree, inputs.patches, f"vm/patches/{inputs.source.major_minor}/")
    else:
        tree = inputs.source.location
        patches = []
        print(f"bpfkit: building {tree}: {tree_patch_note(tree)}", file=sys.stderr)
    build_dir = cache_dir() / "build" / f"{inputs.source.name}-{inputs.flavour}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / "build.log"
    count_file = build_dir / OBJECT_COUNT_FILE
    try:
        total = int(count_file.read_text())
    except (OSError, ValueError):
        total = _ESTIMATED_OBJECTS
    if progress:
        print(f"bpfkit: building kernel {inputs.source.version} ({inputs.flavour}, key {inputs.key}); "
              f"log: {log_path}", file=sys.stderr)
    with open(log_path, "w", buffering=1) as log:  # line-buffered: `tail -f` works
        configure(tree, build_dir, inputs.fragments, log, lock_fd)
        bar = _Progress(progress, total, f"kernel {inputs.source.version}")
        try:
            _make(tree, build_dir, ["bzImage"], log, lock_fd, bar, jobs=os.cpu_count() or 1)
        finally:
            bar.close()
        if bar.count > total // 2:  # a full build: remember its size for the next bar
            count_file.write_text(str(max(bar.count, 1)))
    release = _run(["make", "-s", "-C", str(tree), f"O={build_dir}", "kernelrelease"]).stdout.strip()
    if not release:
        raise KernelBuildError(f"`make kernelrelease` printed nothing; see {log_path}")
    build = _install(inputs, build_dir, log_path, release, patches, time.monotonic() - started)
    if progress:
        print(f"bpfkit: built {release} in {build.meta['build_seconds']:.0f} s "
              f"({bar.count} objects compiled/linked) -> {build.dir}", file=sys.stderr)
    return build
