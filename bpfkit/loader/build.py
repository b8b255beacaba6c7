"""Compile BPF C (CO-RE) into objects, cached by content.

Objects are built with `clang -target bpf -mcpu=v3 -g -O2` against a vmlinux.h
generated from the target kernel's BTF: the running kernel's
/sys/kernel/btf/vmlinux by default, or the .BTF section of a built `vmlinux`
(so the host can prebuild objects for the VM kernel; the guest then finds them
in the shared cache because both forms hash to the same BTF bytes).
"""

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpfkit.errors import BuildError, MissingDependency, UsageError, optional_import
from bpfkit.loader import libbpf_dist
from bpfkit.paths import BPF_DIR, SHIPPED_BPF_DIR, cache_dir

RUNNING_KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
CLANG_FLAGS = ["-target", "bpf", "-mcpu=v3", "-g", "-O2", "-D__TARGET_ARCH_x86", "-fno-color-diagnostics",
               "-ferror-limit=20"]
# Bump when the way objects are built changes, to invalidate old cache entries.
BUILD_SCHEMA = "2"  # 2: the compiler's system include directories, user -I and cflags
# What a user may add with --cflags: preprocessor and diagnostics options. Output,
# target, language and optimisation flags are bpfkit's (the loader expects them).
_USER_FLAG = re.compile(r"^-(?:[DU][A-Za-z_]\w*(?:=.*)?|W[\w=,-]*|w|std=[\w+]+|f(?!plugin)(?:no-)?[\w-]+(?:=[\w-]+)?|"
                        r"include=?.+|idirafter.+|isystem.+)$")


@dataclass(frozen=True)
class KernelBtf:
    """Where a target kernel's BTF comes from, and its content hash."""

    path: Path
    digest: str

    @classmethod
    def of(cls, target: str | Path | None = None) -> "KernelBtf":
        """target: None/"running" → the running kernel; a vmlinux ELF file; or a
        kernel build dir containing `vmlinux`."""
        if target in (None, "running", "host"):
            path = RUNNING_KERNEL_BTF
            if not path.exists():
                raise MissingDependency("the running kernel has no BTF (/sys/kernel/btf/vmlinux missing)",
                                        hint="build the kernel with CONFIG_DEBUG_INFO_BTF=y")
            return cls(path, hashlib.sha256(path.read_bytes()).hexdigest())
        path = Path(target)
        if path.is_dir():
            path = path / "vmlinux"
        if not path.exists():
            raise UsageError(f"{path}: no such vmlinux")
        return cls(path, hashlib.sha256(_elf_btf_section(path)).hexdigest())


def _elf_btf_section(vmlinux: Path) -> bytes:
    ELFFile = optional_import("elftools.elf.elffile", "reading a vmlinux file's BTF").ELFFile  # pyelftools

    with open(vmlinux, "rb") as f:
        try:
            section = ELFFile(f).get_section_by_name(".BTF")
        except Exception as exc:  # pyelftools raises its own types for non-ELF input
            raise UsageError(f"{vmlinux}: not an ELF vmlinux ({exc})") from None
        if section is None:
            raise UsageError(f"{vmlinux} has no .BTF section", hint="build it with CONFIG_DEBUG_INFO_BTF=y")
        return section.data()


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise MissingDependency(f"`{name}` is not installed", hint=f"apt-get install {package}")
    return path


def clang_version() -> str:
    out = subprocess.run([_tool("clang", "clang"), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


_SYSTEM_INCLUDES: list[Path] | None = None


def system_include_dirs() -> list[Path]:
    """The host compiler's own search list (`clang -v -E -`), added with -idirafter as the
    kernel's BPF selftests do: a BPF program may include <limits.h>, <stdbool.h>...
    while vmlinux.h and libbpf's headers keep precedence."""
    global _SYSTEM_INCLUDES
    if _SYSTEM_INCLUDES is None:
        result = subprocess.run([_tool("clang", "clang"), "-v", "-E", "-"], input="", capture_output=True,
                                text=True)
        dirs, inside = [], False
        for line in result.stderr.splitlines():
            if line.startswith("#include <...> search starts here"):
                inside = True
            elif line.startswith("End of search list"):
                break
            elif inside and line.startswith(" "):
                dirs.append(Path(line.strip()))
        _SYSTEM_INCLUDES = [d for d in dirs if d.is_dir()]
    return _SYSTEM_INCLUDES


def validate_cflags(flags: list[str]) -> list[str]:
    """Extra clang flags a user asked for (argv items, never a shell string)."""
    for flag in flags:
        if not _USER_FLAG.match(flag):
            raise UsageError(f"--cflags: {flag!r} is not accepted",
                             hint="bpfkit passes -D/-U macros, -W/-w warnings, -f options, -std=, -include, "
                                  "-isystem/-idirafter; use -I DIR for headers (output and target are bpfkit's)")
    return flags


def vmlinux_h(btf: KernelBtf) -> Path:
    """vmlinux.h for that BTF, generated once with bpftool and cached."""
    target = cache_dir() / "vmlinux" / btf.digest[:16] / "vmlinux.h"
    if target.exists():
        return target
    bpftool = _tool("bpftool", "bpftool")
    result = subprocess.run([bpftool, "btf", "dump", "file", str(btf.path), "format", "c"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"bpftool could not dump BTF of {btf.path}: {result.stderr.strip()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, result.stdout.encode())
    return target


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_INCLUDE = re.compile(r'^\s*#\s*include\s+["<]([^">]+)[">]', re.M)


def _local_includes(source: Path, include_dirs: list[Path]) -> list[Path]:
    """Includes, transitively, that resolve to a file next to the source or in bpfkit's
    or the user's include dirs (hashed into the cache key so editing a shared header
    rebuilds its users); system and libbpf headers are covered by their versions."""
    seen: dict[Path, None] = {}
    stack = [source]
    while stack:
        current = stack.pop()
        for name in _INCLUDE.findall(current.read_text(errors="replace")):
            if name == "vmlinux.h":
                continue
            for directory in [current.parent, *include_dirs]:
                candidate = (directory / name).resolve()
                if candidate.exists() and candidate not in seen:
                    seen[candidate] = None
                    stack.append(candidate)
                    break
    return sorted(seen)


@dataclass(frozen=True)
class BuiltObject:
    path: Path
    source: Path
    cached: bool


def compile_bpf(source: str | Path, *, kernel: str | Path | None = None, defines: dict[str, str] | None = None,
                include_dirs: list[Path] | None = None, cflags: list[str] | None = None) -> BuiltObject:
    """Compile one .bpf.c; returns the cached object path.

    defines values must already be validated by the caller (they reach C);
    include_dirs come before bpfkit's own headers, so a user's header of the same
    name (an export-style mptcp_bpf.h, say) wins."""
    source = Path(source).resolve()
    if not source.exists():
        raise UsageError(f"{source}: no such BPF source file")
    user_dirs = [Path(d).resolve() for d in include_dirs or []]
    for d in user_dirs:
        if not d.is_dir():
            raise UsageError(f"-I {d}: no such directory")
    extra = validate_cflags(list(cflags or []))
    btf = KernelBtf.of(kernel)
    header = vmlinux_h(btf)
    libbpf_include = libbpf_dist.find().include_dir
    includes = [header.parent, libbpf_include, *user_dirs, BPF_DIR / "include"]
    define_args = [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    system_args = [arg for d in system_include_dirs() for arg in ("-idirafter", str(d))]
    clang = _tool("clang", "clang")
    version = clang_version()

    key = hashlib.sha256()
    for part in (BUILD_SCHEMA, version, " ".join(CLANG_FLAGS + define_args + extra + system_args), btf.digest,
                 str(libbpf_include), " ".join(map(str, user_dirs)), source.name):
        key.update(part.encode() + b"\0")
    key.update(source.read_bytes())
    for dep in _local_includes(source, includes[2:]):
        key.update(str(dep.name).encode() + b"\0" + dep.read_bytes())
    digest = key.hexdigest()[:24]
    obj = cache_dir() / "objects" / digest / (source.name.removesuffix(".c") + ".o")
    if obj.exists():
        return BuiltObject(obj, source, cached=True)

    obj.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=obj.parent, prefix=".tmp-", suffix=".o")
    os.close(fd)
    cmd = [clang, *CLANG_FLAGS, *define_args, *extra, *[f"-I{d}" for d in includes], *system_args, "-c",
           str(source), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        with contextlib.suppress(FileNotFoundError):  # clang removes its output on failure
            os.unlink(tmp)
        hint = None
        if "gnu/stubs-32.h" in result.stderr:
            # glibc's headers take a target without __x86_64__ (bpf) for 32-bit x86
            hint = "a system header reached glibc's 32-bit stubs: apt-get install libc6-dev-i386"
        raise BuildError(format_clang_errors(result.stderr, source) or result.stderr.strip(), hint=hint)
    os.replace(tmp, obj)
    return BuiltObject(obj, source, cached=False)


_DIAG = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>\d+):(?P<col>\d+): (?P<kind>fatal error|error|warning|note): "
                   r"(?P<msg>.*)$")


def format_clang_errors(stderr: str, source: Path | None = None) -> str:
    """clang's diagnostics → `file:line: error: message` lines (no snippets,
    no carets, no include stacks). Warnings are kept only next to errors."""
    out = []
    for line in stderr.splitlines():
        m = _DIAG.match(line)
        if not m or m["kind"] == "note":
            continue
        path = Path(m["file"])
        try:
            shown = path.resolve().relative_to(Path.cwd())
        except ValueError:
            shown = path
        kind = "error" if m["kind"] == "fatal error" else m["kind"]
        out.append(f"{shown}:{m['line']}: {kind}: {m['msg']}")
    if not any(": error: " in line for line in out):
        return ""
    return "\n".join(out)


def bpf_source(name: str) -> Path:
    """bpf/<name>.bpf.c of the project (name may include a subdir, e.g. sched/min_rtt)."""
    path = BPF_DIR / f"{name}.bpf.c"
    if not path.exists():
        raise UsageError(f"no BPF program named {name!r} (looked for {path})")
    return path


# --------------------------------------------------------------------------- shipped objects

# The ops pillars' programs, and the feature probes `doctor` and they run: what a production
# host runs, so a wheel carries them compiled (setup.py) and attaching compiles nothing.
SHIPPED_PROGRAMS = ("mptcpify", "subflow_opts", "probes")
MANIFEST = "manifest.json"


def program_object(name: str) -> Path:
    """The object of one of SHIPPED_PROGRAMS: compiled from bpf/ (cached) in a checkout,
    where the source is the truth; the one shipped in the package otherwise."""
    if name not in SHIPPED_PROGRAMS:
        raise ValueError(f"{name} is not a shipped program")  # a bpfkit bug
    source = BPF_DIR / f"{name}.bpf.c"
    if source.exists():
        return compile_bpf(source).path
    shipped = SHIPPED_BPF_DIR / f"{name}.bpf.o"
    if not shipped.exists():
        raise MissingDependency(f"this bpfkit has neither bpf/{name}.bpf.c (a checkout) nor the prebuilt "
                                f"{shipped}", hint="reinstall bpfkit from its wheel (pip install bpfkit-*.whl)")
    return shipped


def objects_shipped() -> bool:
    """Whether program_object() takes the package's prebuilt objects (no checkout around it)."""
    return not (BPF_DIR / f"{SHIPPED_PROGRAMS[0]}.bpf.c").exists()


def object_origin() -> str:
    """Where program_object() takes objects from, for `doctor`."""
    if not objects_shipped():
        return f"compiled on demand from {BPF_DIR} (a checkout) by {clang_version()}, cached"
    try:
        manifest = json.loads((SHIPPED_BPF_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"shipped in {SHIPPED_BPF_DIR} (no readable {MANIFEST})"
    return (f"shipped in {SHIPPED_BPF_DIR}: built by {manifest.get('clang')} against the BTF of "
            f"{manifest.get('btf_of')}, libbpf headers {manifest.get('libbpf_headers')} (CO-RE)")


def _without_dwarf(obj: Path) -> bytes:
    """The object without its DWARF sections (-g is for bpftool's and the verifier's source
    lines on a developer's machine): 0.7 MB -> tens of KB each. CO-RE and the verifier's log
    read .BTF and .BTF.ext, which `llvm-strip -g` keeps."""
    strip = shutil.which("llvm-strip")
    if strip is None:
        raise BuildError("llvm-strip is not installed", hint="apt-get install llvm")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / obj.name
        result = subprocess.run([strip, "-g", "-o", str(out), str(obj)], capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"llvm-strip -g {obj}: {result.stderr.strip()}")
        return out.read_bytes()


def ship(out_dir: Path) -> Path:
    """Compile SHIPPED_PROGRAMS (CO-RE, against this machine's kernel BTF: the target kernel
    relocates them) into out_dir, with a manifest of what built them. Used by setup.py."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = {}
    for name in SHIPPED_PROGRAMS:
        source = BPF_DIR / f"{name}.bpf.c"
        built = compile_bpf(source)
        target = out_dir / f"{name}.bpf.o"
        _atomic_write(target, _without_dwarf(built.path))
        objects[name] = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    manifest = {"clang": clang_version(), "btf_of": f"Linux {platform.release()}",
                "libbpf_headers": libbpf_dist.find().version, "objects": objects}
    _atomic_write(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return out_dir


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--ship":
        sys.exit("usage: python -m bpfkit.loader.build --ship OUT_DIR")
    print(f"bpfkit: shipped objects in {ship(Path(sys.argv[2]))}")
