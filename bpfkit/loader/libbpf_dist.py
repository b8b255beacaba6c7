"""Which libbpf bpfkit uses, and building one when the system's is too old.

Two minimums, measured:
  * 1.1 (Debian 12's libbpf1) loads and attaches the ops pillars' objects: the host tier's
    subflow, mptcpize and pins tests and the distro tier's run on it (tests/distro/
    test_shipped.py runs the shipped objects with it). So a production host needs no
    libbpf build.
  * 1.2 registers struct_ops through `.struct_ops.link` maps (the schedulers, the tcp_ca
    test): 1.1 fails their load. Debian 12 ships 1.1, so for those bpfkit builds the
    libbpf of the kernel source tree its VM kernel comes from (Debian's
    `linux-source-6.12` tarball, tools/lib/bpf) into the cache (`make libbpf`). The
    same install provides the BPF-side headers (bpf_helpers.h, ...) bpf/*.bpf.c are
    compiled against, so loader and headers match.

Order of preference:
  1. $BPFKIT_LIBBPF: path to a libbpf.so the user insists on (its headers are
     taken from $BPFKIT_LIBBPF_INCLUDE, else from the system);
  2. a libbpf already built into the cache;
  3. the system libbpf.so.1 if it is recent enough for what is asked (with
     /usr/include headers where present);
  4. build from the kernel source tarball into the cache.
"""

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpfkit import hostlock
from bpfkit.errors import MissingDependency
from bpfkit.paths import cache_dir

MIN_VERSION = (1, 1)  # loads the ops pillars' objects (see above)
STRUCT_OPS_MIN_VERSION = (1, 2)  # .struct_ops.link maps
DEBIAN_SOURCE_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


@dataclass(frozen=True)
class LibbpfDist:
    library: Path  # the shared object ctypes loads
    include_dir: Path  # directory that contains bpf/bpf_helpers.h
    version: str
    origin: str  # "env", "cache (built from ...)", "system"

    def describe(self) -> str:
        return f"libbpf {self.version} ({self.origin}: {self.library})"

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    @property
    def registers_struct_ops(self) -> bool:
        return self.version_tuple >= STRUCT_OPS_MIN_VERSION


def _version_of(library: Path) -> tuple[int, int] | None:
    try:
        lib = ctypes.CDLL(str(library))
        return int(lib.libbpf_major_version()), int(lib.libbpf_minor_version())
    except (OSError, AttributeError):
        return None


def _system_library() -> Path | None:
    found = ctypes.util.find_library("bpf")
    if not found:
        return None
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu"):
        candidate = Path(directory) / found
        if candidate.exists():
            return candidate
    return Path(found)


def _cached_root(source_tag: str) -> Path:
    return cache_dir() / "libbpf" / source_tag


def _installed_in(root: Path) -> LibbpfDist | None:
    library = root / "usr" / "lib64" / "libbpf.so.1"
    include = root / "usr" / "include"
    if not (library.exists() and (include / "bpf" / "bpf_helpers.h").exists()):
        return None
    version = _version_of(library)
    if version is None:
        return None
    origin = f"cache, built from {root.name}"
    return LibbpfDist(library, include, f"{version[0]}.{version[1]}", origin)


def _debian_source_tag() -> str:
    """Version of the installed linux-source-6.12 package, used as cache tag."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "linux-source-6.12"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return f"linux-source-6.12_{out or 'unknown'}"


def find(minimum: tuple[int, int] = MIN_VERSION) -> LibbpfDist:
    """The libbpf to use; builds one into the cache if nothing at hand is at least `minimum`."""
    env = os.environ.get("BPFKIT_LIBBPF")
    if env:
        library = Path(env)
        version = _version_of(library)
        if version is None:
            raise MissingDependency(f"BPFKIT_LIBBPF={env} is not a loadable libbpf")
        include = Path(os.environ.get("BPFKIT_LIBBPF_INCLUDE", "/usr/include"))
        return LibbpfDist(library, include, f"{version[0]}.{version[1]}", "env BPFKIT_LIBBPF")

    cached = _installed_in(_cached_root(_debian_source_tag()))
    if cached:
        return cached

    system = _system_library()
    if system:
        version = _version_of(system)
        if version and version >= minimum:
            return LibbpfDist(system, Path("/usr/include"), f"{version[0]}.{version[1]}", "system")

    return build_from_kernel_source()


def build_from_kernel_source(tarball: Path = DEBIAN_SOURCE_TARBALL) -> LibbpfDist:
    """Build tools/lib/bpf of the kernel source tarball into the cache (~40 s)."""
    root = _cached_root(_debian_source_tag())
    existing = _installed_in(root)
    if existing:
        return existing
    # One build at a time: a second first-time caller (e.g. the guest's tests beside a host command)
    # would otherwise replace the tree the first has just installed and may be compiling against.
    with hostlock.held("libbpf.lock", hostlock.this_process("libbpf build"),
                       lambda other: f"bpfkit: waiting for another libbpf build ({other})"):
        existing = _installed_in(root)
        if existing:
            return existing
        return _build_locked(root, tarball)


def _build_locked(root: Path, tarball: Path) -> LibbpfDist:
    if not tarball.exists():
        raise MissingDependency(
            f"libbpf >= {STRUCT_OPS_MIN_VERSION[0]}.{STRUCT_OPS_MIN_VERSION[1]} is needed and the system one is "
            "older or missing; "
            f"bpfkit builds it from {tarball}, which is not installed",
            hint="apt-get install linux-source-6.12 libelf-dev zlib1g-dev make gcc",
        )
    for tool in ("make", "cc"):
        if not shutil.which(tool):
            raise MissingDependency(f"building libbpf needs `{tool}`", hint="apt-get install build-essential")
    print(f"bpfkit: system libbpf is older than {STRUCT_OPS_MIN_VERSION[0]}.{STRUCT_OPS_MIN_VERSION[1]}; "
          f"building libbpf from {tarball.name} into {root} (once, ~1 min)", file=sys.stderr)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temp dir beside the target and rename at the end, so an
    # interrupted build never leaves a half-installed libbpf in the cache.
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".build-") as tmp:
        tmp_path = Path(tmp)
        top = _extract_tools(tarball, tmp_path / "src")
        out_dir = tmp_path / "obj"
        out_dir.mkdir()
        install = tmp_path / "install"
        cmd = [
            "make", "-s", "-C", str(top / "tools" / "lib" / "bpf"), f"-j{os.cpu_count() or 1}",
            f"OUTPUT={out_dir}/", f"DESTDIR={install}", "prefix=/usr", "install", "install_headers",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise MissingDependency(f"building libbpf failed:\n{tail}", hint="apt-get install libelf-dev zlib1g-dev")
        if root.exists():
            shutil.rmtree(root)
        install.rename(root)
    built = _installed_in(root)
    if not built:
        raise MissingDependency(f"libbpf build in {root} produced no usable library")
    return built


def _extract_tools(tarball: Path, dest: Path) -> Path:
    """Extract only what tools/lib/bpf's Makefile needs from the tarball."""
    wanted = ("tools/", "include/uapi/", "scripts/", "Makefile")
    with tarfile.open(tarball) as tar:
        members = []
        top = None
        for member in tar:
            parts = member.name.split("/", 1)
            top = top or parts[0]
            if len(parts) == 2 and parts[1].startswith(wanted):
                members.append(member)
        tar.extractall(dest, members=members, filter="fully_trusted")
    return dest / (top or "")


if __name__ == "__main__":
    # `make libbpf`: a libbpf that also registers struct_ops (the schedulers), built into the
    # cache when the system's is older.
    print("bpfkit uses", find(minimum=STRUCT_OPS_MIN_VERSION).describe())
