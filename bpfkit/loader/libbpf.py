"""The one loader layer: a thin ctypes binding over libbpf.

Model (as in cilium/ebpf): an object file is opened (`BpfObject.open`), may
have read-only config set, is loaded into the kernel (`load`), and then
programs / struct_ops maps are attached, each attachment being a `Link` that
can be closed (detached) or pinned under /sys/fs/bpf/bpfkit/ to outlive the
process. Pinned things are reopened with `Link.from_pin` / `Map.from_pin`.

Everything libbpf prints is captured (not sent to stderr) so that failures
come back as one readable error: the verifier's reason, the source line it
points at, and the last lines of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import struct
import threading
from ctypes import (CFUNCTYPE, POINTER, byref, c_bool, c_char, c_char_p, c_int, c_size_t, c_uint32, c_uint64,
                    c_void_p)
from dataclasses import dataclass
from pathlib import Path

from bpfkit import fs
from bpfkit.errors import AttachError, BpfkitError, LoadError, MissingDependency, VerifierError
from bpfkit.loader import libbpf_dist
from bpfkit.paths import PIN_ROOT  # noqa: F401  (re-exported for callers)

# --- kernel ABI constants (include/uapi/linux/bpf.h, btf.h) -----------------

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

PROG_TYPES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint", 6: "xdp",
    7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in", 11: "lwt_out", 12: "lwt_xmit",
    13: "sock_ops", 14: "sk_skb", 15: "cgroup_device", 16: "sk_msg", 17: "raw_tracepoint",
    18: "cgroup_sock_addr", 19: "lwt_seg6local", 20: "lirc_mode2", 21: "sk_reuseport", 22: "flow_dissector",
    23: "cgroup_sysctl", 24: "raw_tracepoint_writable", 25: "cgroup_sockopt", 26: "tracing", 27: "struct_ops",
    28: "ext", 29: "lsm", 30: "sk_lookup", 31: "syscall", 32: "netfilter",
}
BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH = 5, 6, 10
BPF_MAP_TYPE_STRUCT_OPS = 26
BPF_F_LINK = 1 << 13  # map_flags of a `.struct_ops.link` map

# enum bpf_attach_type values bpfkit queries on cgroups.
ATTACH_TYPES = {"sock_ops": 3, "cgroup_inet_sock_create": 2, "cgroup_getsockopt": 21, "cgroup_setsockopt": 22}

BTF_KIND_VAR, BTF_KIND_DATASEC = 14, 15
BTF_KIND_STRUCT = 4
BTF_KIND_FUNC = 12

# --- capturing libbpf's output ---------------------------------------------

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
# ring_buffer_sample_fn: (ctx, data, size) -> int; non-zero stops ring_buffer__poll
_RINGBUF_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_libc = ctypes.CDLL(None, use_errno=True)
# x86_64: va_list is an array type, so the callback receives a pointer that
# vsnprintf accepts as is.
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int

_capture = threading.local()


LIBBPF_DEBUG = 2  # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2
# Debug messages (a few dozen per load) are dropped, as libbpf's own default
# printer does: formatting each through ctypes is a tenth of a first
# `mptcpize attach` in an emulated guest. Errors and the verifier log come at
# WARN level. BPFKIT_LIBBPF_DEBUG=1 keeps them (they then appear in errors).
_KEEP_DEBUG = os.environ.get("BPFKIT_LIBBPF_DEBUG") == "1"


def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    if level >= LIBBPF_DEBUG and not _KEEP_DEBUG:
        return 0
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    lines = getattr(_capture, "lines", None)
    if lines is not None:
        lines.append(buf.value.decode(errors="replace"))
    return 0


_print_callback = _PRINT_FN(_on_libbpf_print)  # kept referenced for the process lifetime


class _Captured:
    """Collects libbpf's messages emitted during a block of calls."""

    def __enter__(self) -> "_Captured":
        self.outer = getattr(_capture, "lines", None)
        _capture.lines = []
        return self

    def __exit__(self, *exc) -> None:
        self.text = "".join(_capture.lines)
        if self.outer is not None:
            self.outer.append(self.text)
        _capture.lines = self.outer


# --- the library -------------------------------------------------------------

_lib = None
_dist: libbpf_dist.LibbpfDist | None = None
_lock = threading.Lock()


def _declare(lib: ctypes.CDLL) -> None:
    sigs = {
        "libbpf_major_version": (c_uint32, []),
        "libbpf_minor_version": (c_uint32, []),
        "libbpf_version_string": (c_char_p, []),
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__name": (c_char_p, [c_void_p]),
        "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
        "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
        "bpf_object__btf": (c_void_p, [c_void_p]),
        "bpf_program__name": (c_char_p, [c_void_p]),
        "bpf_program__section_name": (c_char_p, [c_void_p]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_program__type": (c_int, [c_void_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
        "bpf_program__autoload": (c_bool, [c_void_p]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
        "bpf_program__attach_trace": (c_void_p, [c_void_p]),
        "bpf_map__name": (c_char_p, [c_void_p]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__type": (c_int, [c_void_p]),
        "bpf_map__key_size": (c_uint32, [c_void_p]),
        "bpf_map__value_size": (c_uint32, [c_void_p]),
        "bpf_map__max_entries": (c_uint32, [c_void_p]),
        "bpf_map__map_flags": (c_uint32, [c_void_p]),
        "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
        "bpf_map__set_autocreate": (c_int, [c_void_p, c_bool]),
        "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
        "bpf_map__btf_value_type_id": (c_uint32, [c_void_p]),
        "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
        "bpf_map__attach_struct_ops": (c_void_p, [c_void_p]),
        "ring_buffer__new": (c_void_p, [c_int, _RINGBUF_FN, c_void_p, c_void_p]),
        "ring_buffer__poll": (c_int, [c_void_p, c_int]),
        "ring_buffer__free": (None, [c_void_p]),
        "bpf_link__fd": (c_int, [c_void_p]),
        "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
        "bpf_link__disconnect": (None, [c_void_p]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_obj_get": (c_int, [c_char_p]),
        "bpf_obj_pin": (c_int, [c_int, c_char_p]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
        "bpf_enable_stats": (c_int, [c_int]),
        "bpf_link_detach": (c_int, [c_int]),
        "bpf_prog_get_next_id": (c_int, [c_uint32, POINTER(c_uint32)]),
        "bpf_map_get_next_id": (c_int, [c_uint32, POINTER(c_uint32)]),
        "bpf_link_get_next_id": (c_int, [c_uint32, POINTER(c_uint32)]),
        "bpf_prog_get_fd_by_id": (c_int, [c_uint32]),
        "bpf_map_get_fd_by_id": (c_int, [c_uint32]),
        "bpf_link_get_fd_by_id": (c_int, [c_uint32]),
        "bpf_prog_query": (c_int, [c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32),
                                   POINTER(c_uint32)]),
        "btf__load_vmlinux_btf": (c_void_p, []),
        "btf__free": (None, [c_void_p]),
        "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
        "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
        "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def lib() -> ctypes.CDLL:
    """The loaded libbpf (found or built on first use)."""
    global _lib, _dist
    with _lock:
        if _lib is None:
            dist = libbpf_dist.find()
            handle = ctypes.CDLL(str(dist.library), use_errno=True)
            _declare(handle)
            handle.libbpf_set_print(_print_callback)
            _lib, _dist = handle, dist
    return _lib


def dist() -> libbpf_dist.LibbpfDist:
    lib()
    assert _dist is not None
    return _dist


def version() -> str:
    return lib().libbpf_version_string().decode()


def _errno_of(ret: int | None) -> int:
    """libbpf >= 1.0 returns -errno from int APIs and sets errno for pointer APIs."""
    if ret is not None and ret < 0:
        return -ret
    return ctypes.get_errno() or errno.EINVAL


def _strerror(err: int) -> str:
    return f"{os.strerror(err)} (errno {err})" if err > 0 else f"error {err}"


def _check(ret: int, what: str, exc=LoadError) -> int:
    if ret < 0:
        raise exc(f"{what}: {_strerror(_errno_of(ret))}")
    return ret


# --- verifier log -------------------------------------------------------------

_SRC_LINE = re.compile(r"^; (?P<code>.*?) @ (?P<file>[^ :]+):(?P<line>\d+)\s*$")


@dataclass
class VerifierReport:
    program: str
    reason: str  # the verifier's last complaint
    source: str | None  # "file.bpf.c:42: <code>" if line info names one
    tail: list[str]  # last lines of the log

    def format(self) -> str:
        out = [f"the verifier rejected program '{self.program}': {self.reason}"]
        if self.source:
            out.append(f"  at {self.source}")
        out.append("  last lines of the verifier log:")
        out.extend(f"    {line}" for line in self.tail)
        return "\n".join(out)


def parse_verifier_log(program: str, log: str, tail_lines: int = 12) -> VerifierReport:
    """Reduce a verifier log to its reason and the source line it stopped at."""
    lines = [ln.rstrip() for ln in log.splitlines() if ln.strip()]
    # Drop the statistics trailer the kernel appends after the error.
    body = [ln for ln in lines if not ln.startswith(("processed ", "verification time", "stack depth"))]
    reason = body[-1] if body else "no reason given"
    source = None
    for ln in reversed(body):
        m = _SRC_LINE.match(ln)
        if m:
            source = f"{Path(m['file']).name}:{m['line']}: {m['code'].strip()}"
            break
    return VerifierReport(program, reason, source, body[-tail_lines:])


def _split_load_logs(text: str) -> dict[str, str]:
    """Program name → verifier log, from libbpf's BEGIN/END PROG LOAD LOG blocks."""
    logs = {}
    pattern = re.compile(r"prog '(?P<prog>[^']+)': -- BEGIN PROG LOAD LOG --\n(?P<log>.*?)-- END PROG LOAD LOG --",
                         re.S)
    for m in pattern.finditer(text):
        logs[m["prog"]] = m["log"]
    return logs


# libbpf chatter that says nothing about why something failed.
_NOISE = ("skipping optional step", "loaded kernel BTF from")


def _libbpf_messages(text: str, limit: int = 8) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("libbpf:") and not any(n in ln for n in _NOISE)]
    return "\n".join(lines[-limit:])


# --- programs, maps, links ---------------------------------------------------

class Link:
    """An attachment. close() detaches unless the link is pinned; detach()
    detaches even a pinned link and removes its pin."""

    def __init__(self, fd: int, description: str, *, _libbpf_link: int | None = None,
                 pin_path: Path | None = None):
        self.fd = fd
        self.description = description
        self.pin_path = pin_path
        self._libbpf_link = _libbpf_link

    @classmethod
    def from_pin(cls, path: str | Path) -> "Link":
        fd = bpf_obj_get(path)
        return cls(fd, f"pinned link {path}", pin_path=Path(path))

    def info(self) -> dict:
        return link_info(self.fd)

    def pin(self, path: str | Path) -> Path:
        path = Path(path)
        _pin_parent(path)
        _check(lib().bpf_obj_pin(self.fd, str(path).encode()), f"pinning {self.description} at {path}", AttachError)
        self.pin_path = path
        return path

    def unpin(self) -> None:
        if self.pin_path and self.pin_path.exists():
            self.pin_path.unlink()
        self.pin_path = None

    def detach(self) -> None:
        """Detach now, pinned or not."""
        if self.fd >= 0:
            lib().bpf_link_detach(self.fd)  # ENOTSUPP on old link types: closing below still detaches
        self.unpin()
        self.close()

    def close(self) -> None:
        """Drop this process's reference (the attachment stays if pinned)."""
        if self._libbpf_link:
            lib().bpf_link__destroy(self._libbpf_link)
            self._libbpf_link = None
            self.fd = -1
        elif self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Link {self.description} fd={self.fd}>"


class StructOpsRegistration(Link):
    """A plain `.struct_ops` map registered by a map update (no bpf_link).

    It stays registered while the kernel holds the map, which outlives this
    process; unregistering is a delete of key 0 (what libbpf's detach does)."""

    def __init__(self, map_fd: int, description: str, _libbpf_link: int | None = None):
        super().__init__(map_fd, description, _libbpf_link=_libbpf_link)

    @classmethod
    def from_pin(cls, path: str | Path) -> "StructOpsRegistration":
        reg = cls(bpf_obj_get(path), f"pinned struct_ops map {path}")
        reg.pin_path = Path(path)
        return reg

    def detach(self) -> None:
        if self.fd >= 0:
            key = c_uint32(0)
            lib().bpf_map_delete_elem(self.fd, byref(key))
        self.unpin()
        self.close()

    def close(self) -> None:
        if self._libbpf_link:
            # libbpf's own destroy would unregister; keep that for detach().
            lib().bpf_link__disconnect(self._libbpf_link)
            lib().bpf_link__destroy(self._libbpf_link)
            self._libbpf_link = None
            self.fd = -1
        elif self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Map:
    """A BPF map by fd. Keys/values are bytes (or anything bytes() accepts,
    e.g. ctypes structures); per-CPU maps return one value per CPU."""

    def __init__(self, fd: int, name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
                 *, owned: bool = False, _libbpf_map: int | None = None):
        self.fd = fd
        self.name = name
        self.type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self._owned = owned
        self._libbpf_map = _libbpf_map

    @classmethod
    def from_fd(cls, fd: int, owned: bool = True) -> "Map":
        info = map_info(fd)
        return cls(fd, info["name"], info["type"], info["key_size"], info["value_size"], info["max_entries"],
                   owned=owned)

    @classmethod
    def from_pin(cls, path: str | Path) -> "Map":
        return cls.from_fd(bpf_obj_get(path))

    @property
    def percpu(self) -> bool:
        return self.type in (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)

    def _key(self, key) -> ctypes.Array:
        raw = key.to_bytes(self.key_size, "little") if isinstance(key, int) else bytes(key)
        if len(raw) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(raw)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(raw, self.key_size)

    def _value_len(self) -> int:
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * lib().libbpf_num_possible_cpus()
        return self.value_size

    def lookup(self, key) -> bytes | list[bytes] | None:
        k = self._key(key)
        v = ctypes.create_string_buffer(self._value_len())
        ret = lib().bpf_map_lookup_elem(self.fd, k, v)
        if ret < 0:
            err = _errno_of(ret)
            if err == errno.ENOENT:
                return None
            raise LoadError(f"lookup in map {self.name}: {_strerror(err)}")
        if self.percpu:
            stride = (self.value_size + 7) // 8 * 8
            return [v.raw[i:i + self.value_size] for i in range(0, len(v.raw), stride)]
        return v.raw

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        raw = value.to_bytes(self.value_size, "little") if isinstance(value, int) else bytes(value)
        if len(raw) != self._value_len():
            raise ValueError(f"map {self.name}: value is {len(raw)} bytes, map wants {self._value_len()}")
        _check(lib().bpf_map_update_elem(self.fd, self._key(key), ctypes.create_string_buffer(raw, len(raw)),
                                         flags), f"update of map {self.name}")

    def delete(self, key) -> bool:
        ret = lib().bpf_map_delete_elem(self.fd, self._key(key))
        if ret < 0:
            if _errno_of(ret) == errno.ENOENT:
                return False
            _check(ret, f"delete from map {self.name}")
        return True

    def keys(self):
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                if _errno_of(ret) == errno.ENOENT:
                    return
                _check(ret, f"iterating map {self.name}")
            key = nxt.raw
            yield key
            prev = ctypes.create_string_buffer(key, self.key_size)

    def items(self):
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                yield key, value

    def pin(self, path: str | Path) -> Path:
        path = Path(path)
        _pin_parent(path)
        _check(lib().bpf_obj_pin(self.fd, str(path).encode()), f"pinning map {self.name} at {path}", AttachError)
        return path

    def attach_struct_ops(self) -> Link:
        """Register this struct_ops map (`.struct_ops` or `.struct_ops.link`)."""
        if self._libbpf_map is None:
            raise AttachError(f"map {self.name}: struct_ops can only be registered from its loaded object")
        with _Captured() as cap:
            ptr = lib().bpf_map__attach_struct_ops(self._libbpf_map)
            err = ctypes.get_errno()
        if not ptr:
            raise AttachError(f"registering struct_ops '{self.name}' failed: {_strerror(err or errno.EINVAL)}"
                              + _optional_details(cap.text))
        fd = lib().bpf_link__fd(ptr)
        if map_info(lib().bpf_map__fd(self._libbpf_map))["map_flags"] & BPF_F_LINK:
            return Link(fd, f"struct_ops {self.name}", _libbpf_link=ptr)
        return StructOpsRegistration(fd, f"struct_ops {self.name}", _libbpf_link=ptr)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"<Map {self.name} fd={self.fd}>"


class RingBuffer:
    """A consumer of one BPF_MAP_TYPE_RINGBUF map: poll() hands each record's
    bytes to `on_record`."""

    def __init__(self, ringbuf: Map, on_record):
        def sample(_ctx, data, size):
            try:
                on_record(ctypes.string_at(data, size))
            except BaseException as exc:  # stop polling; re-raised by poll()
                self._error = exc
                return -1
            return 0

        self._error: BaseException | None = None
        self._callback = _RINGBUF_FN(sample)  # kept referenced while libbpf holds it
        ptr = lib().ring_buffer__new(ringbuf.fd, self._callback, None, None)
        if not ptr:
            raise LoadError(f"ring buffer on map {ringbuf.name}: {_strerror(ctypes.get_errno() or errno.EINVAL)}")
        self._ptr = ptr

    def poll(self, timeout_ms: int) -> int:
        """Records consumed (0 on timeout)."""
        n = lib().ring_buffer__poll(self._ptr, timeout_ms)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if n < 0 and -n != errno.EINTR:
            raise LoadError(f"ring buffer poll: {_strerror(-n)}")
        return max(n, 0)

    def close(self) -> None:
        if self._ptr:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _optional_details(text: str) -> str:
    details = _libbpf_messages(text)
    return f"\n{details}" if details else ""


class Program:
    def __init__(self, obj: "BpfObject", ptr: int):
        self._obj = obj
        self._ptr = ptr
        self.name = lib().bpf_program__name(ptr).decode()
        self.section = lib().bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return lib().bpf_program__fd(self._ptr)

    @property
    def type(self) -> str:
        return PROG_TYPES.get(lib().bpf_program__type(self._ptr), "unknown")

    @property
    def id(self) -> int:
        return prog_info(self.fd)["id"]

    def set_autoload(self, autoload: bool) -> None:
        _check(lib().bpf_program__set_autoload(self._ptr, autoload), f"set_autoload on {self.name}")

    def _attach(self, fn, *args, what: str) -> Link:
        with _Captured() as cap:
            ptr = fn(self._ptr, *args)
            err = ctypes.get_errno()
        if not ptr:
            raise AttachError(f"attaching program '{self.name}' ({self.section}) {what}failed: "
                              f"{_strerror(err or errno.EINVAL)}" + _optional_details(cap.text))
        return Link(lib().bpf_link__fd(ptr), f"{self.name} ({self.section}) {what}".strip(), _libbpf_link=ptr)

    def attach(self) -> Link:
        """Attach as the section name says (fentry/, fmod_ret/, tp/, ...)."""
        return self._attach(lib().bpf_program__attach, what="")

    def attach_cgroup(self, cgroup: str | Path | int) -> Link:
        """Attach to a cgroup v2 as a bpf_link (multi-attach: never replaces
        programs other tools attached)."""
        if isinstance(cgroup, int):
            return self._attach(lib().bpf_program__attach_cgroup, cgroup, what="to cgroup fd ")
        fd = os.open(str(cgroup), os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._attach(lib().bpf_program__attach_cgroup, fd, what=f"to cgroup {cgroup} ")
        finally:
            os.close(fd)


_FORMAT_TOKEN = re.compile(r"(\d*)([xcbB?hHiIlLqQefds])")


class Layout(struct.Struct):
    """The Python side of a C struct a map holds: a struct format whose items are
    the struct's members in order (one item each: "16s" is a char[16], "4H" a
    __u16[4], pad bytes "x" are not members), their C names, and where the format
    starts in the struct (offset) and whether it covers all of it (complete).

    `BpfObject.check_layouts()` compares it with the object's BTF when the object is
    opened, so a C struct changed without its Python twin is refused at once rather
    than read and written wrong."""

    def __init__(self, c_name: str, fmt: str, members: tuple[str, ...], offset: int = 0, complete: bool = True):
        super().__init__(fmt)
        if fmt[:1] not in "<=":
            raise ValueError(f"layout {c_name}: little-endian, unpadded formats only ('<...'), got {fmt!r}")
        offsets = []
        position = 0
        for count, code in _FORMAT_TOKEN.findall(fmt[1:]):
            if code != "x":
                offsets.append(position)
            position += struct.calcsize(f"<{count}{code}")
        if position != self.size or len(offsets) != len(members):
            raise ValueError(f"layout {c_name}: {len(offsets)} members in {fmt!r}, {len(members)} names")
        self.c_name, self.offset, self.complete = c_name, offset, complete
        self.member_offsets = {name: offset + at for name, at in zip(members, offsets)}


def _btf_struct(btf, t) -> tuple[int, dict[str, int]]:
    """Size and member byte offsets (in order) of the BTF struct type at `t`: a
    struct btf_type (name_off, info, size) followed by vlen struct btf_member
    (name_off, type, offset in bits; with kind_flag, the bitfield size in the top byte)."""
    _name_off, info, size = struct.unpack_from("<III", ctypes.string_at(t, 12))
    members = {}
    for i in range(info & 0xFFFF):
        m_name, _, m_off = struct.unpack_from("<III", ctypes.string_at(t + 12 + 12 * i, 12))
        bit = m_off & 0xFFFFFF if info >> 31 else m_off
        members[lib().btf__name_by_offset(btf, m_name).decode()] = bit // 8
    return size, members


@dataclass(frozen=True)
class StructOpsSpec:
    """A struct_ops map as the object file declares it (before load)."""

    var: str  # C variable = map name
    type_name: str  # e.g. mptcp_sched_ops
    link: bool  # SEC(".struct_ops.link"): registered through a bpf_link
    members: dict[str, bytes]  # member name -> its bytes in the initial value (padding included)

    def string(self, member: str) -> str:
        return self.members.get(member, b"").split(b"\0", 1)[0].decode(errors="replace")

    def u32(self, member: str) -> int:
        raw = self.members.get(member, b"")
        return int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0


class BpfObject:
    """An opened (then loaded) BPF object file."""

    def __init__(self, path: Path, ptr: int):
        self.path = path
        self._ptr = ptr
        self.loaded = False
        self.programs: dict[str, Program] = {}
        prog = None
        while True:
            prog = lib().bpf_object__next_program(ptr, prog)
            if not prog:
                break
            p = Program(self, prog)
            self.programs[p.name] = p
        self._maps: dict[str, int] = {}
        m = None
        while True:
            m = lib().bpf_object__next_map(ptr, m)
            if not m:
                break
            self._maps[lib().bpf_map__name(m).decode()] = m

    @classmethod
    def open(cls, path: str | Path) -> "BpfObject":
        path = Path(path)
        if not path.exists():
            raise LoadError(f"{path}: no such BPF object file")
        with _Captured() as cap:
            ptr = lib().bpf_object__open_file(str(path).encode(), None)
            err = ctypes.get_errno()
        if not ptr:
            raise LoadError(f"opening {path} failed: {_strerror(err or errno.EINVAL)}" + _optional_details(cap.text))
        return cls(path, ptr)

    # -- before load --

    def map_names(self) -> list[str]:
        return list(self._maps)

    def _rodata_map(self) -> int:
        for name, ptr in self._maps.items():
            if name.endswith(".rodata"):
                return ptr
        raise LoadError(f"{self.path.name} has no read-only config (.rodata)")

    def rodata_vars(self) -> dict[str, tuple[int, int]]:
        """Name → (offset, size) of every `const volatile` global."""
        btf = lib().bpf_object__btf(self._ptr)
        if not btf:
            return {}
        sec_id = lib().btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC)
        if sec_id < 0:
            return {}
        sec = lib().btf__type_by_id(btf, sec_id)
        info = c_uint32.from_address(sec + 4).value
        vlen = info & 0xFFFF
        out = {}
        for i in range(vlen):
            var_type, offset, size = struct.unpack_from("<III", ctypes.string_at(sec + 12 + 12 * i, 12))
            var = lib().btf__type_by_id(btf, var_type)
            name = lib().btf__name_by_offset(btf, c_uint32.from_address(var).value).decode()
            out[name] = (offset, size)
        return out

    def set_rodata(self, name: str, value) -> None:
        """Set a `const volatile` global before load. value: int or bytes."""
        if self.loaded:
            raise LoadError(f"{self.path.name}: read-only config '{name}' must be set before load")
        variables = self.rodata_vars()
        if name not in variables:
            raise LoadError(f"{self.path.name} has no read-only variable '{name}'"
                            f" (has: {', '.join(sorted(variables)) or 'none'})")
        offset, size = variables[name]
        raw = value.to_bytes(size, "little", signed=value < 0) if isinstance(value, int) else bytes(value)
        if len(raw) > size:
            raise LoadError(f"value for '{name}' is {len(raw)} bytes, the variable holds {size}")
        raw = raw.ljust(size, b"\0")
        psize = c_size_t()
        base = lib().bpf_map__initial_value(self._rodata_map(), byref(psize))
        if not base or offset + size > psize.value:
            raise LoadError(f"cannot reach .rodata of {self.path.name}")
        ctypes.memmove(base + offset, raw, size)

    def set_max_entries(self, map_name: str, n: int) -> None:
        _check(lib().bpf_map__set_max_entries(self._map_ptr(map_name), n), f"resizing map {map_name}")

    def reuse_map(self, map_name: str, pinned: str | Path) -> None:
        """Make `map_name` the already pinned map at `pinned` (shared state
        across reloads) instead of creating a new one."""
        fd = bpf_obj_get(pinned)
        try:
            _check(lib().bpf_map__reuse_fd(self._map_ptr(map_name), fd), f"reusing {pinned} for map {map_name}")
        finally:
            os.close(fd)  # libbpf dup()s it

    def _map_ptr(self, name: str) -> int:
        if name not in self._maps:
            raise LoadError(f"{self.path.name} has no map '{name}' (has: {', '.join(self._maps)})")
        return self._maps[name]

    # -- load --

    def load(self) -> "BpfObject":
        # libbpf 1.1 does not even list a `.struct_ops.link` map: go by the programs' sections.
        struct_ops = sorted(n for n, p in self.programs.items() if p.section.startswith("struct_ops"))
        if struct_ops and not dist().registers_struct_ops:
            need = ".".join(map(str, libbpf_dist.STRUCT_OPS_MIN_VERSION))
            raise MissingDependency(f"{self.path.name} has struct_ops programs ({', '.join(struct_ops)}), "
                                    f"which needs libbpf >= {need}; this process uses {dist().describe()}",
                                    hint="build one into bpfkit's cache once: make libbpf "
                                         "(or python3 -m bpfkit.loader.libbpf_dist)")
        with _Captured() as cap:
            ret = lib().bpf_object__load(self._ptr)
        if ret < 0:
            err = -ret
            logs = _split_load_logs(cap.text)
            if logs:
                prog, log = next(iter(logs.items()))
                report = parse_verifier_log(prog, log)
                exc = VerifierError(f"{self.path.name}: {report.format()}", hint=_verifier_hint(log))
                exc.log = log  # for callers that know the API (sched adds MPTCP kfunc advice)
                raise exc
            raise LoadError(f"loading {self.path.name} failed: {_strerror(err)}" + _optional_details(cap.text),
                            hint=_load_hint(err, cap.text))
        self.loaded = True
        return self

    # -- after load --

    def map(self, name: str) -> Map:
        ptr = self._map_ptr(name)
        fd = lib().bpf_map__fd(ptr)
        if fd < 0:
            raise LoadError(f"map {name} of {self.path.name} is not created (object not loaded?)")
        return Map(fd, name, lib().bpf_map__type(ptr), lib().bpf_map__key_size(ptr), lib().bpf_map__value_size(ptr),
                   lib().bpf_map__max_entries(ptr), _libbpf_map=ptr)

    def program(self, name: str) -> Program:
        if name not in self.programs:
            raise LoadError(f"{self.path.name} has no program '{name}' (has: {', '.join(self.programs)})")
        return self.programs[name]

    def struct_ops_maps(self) -> list[str]:
        return [n for n, p in self._maps.items() if lib().bpf_map__type(p) == BPF_MAP_TYPE_STRUCT_OPS]

    def struct_ops_specs(self) -> list["StructOpsSpec"]:
        """What each struct_ops map of the (opened) object declares: its C type, whether
        it registers through a link, and its initial member values by name (bytes)."""
        btf = lib().bpf_object__btf(self._ptr)
        out = []
        for var in self.struct_ops_maps():
            ptr = self._maps[var]
            t = lib().btf__type_by_id(btf, lib().bpf_map__btf_value_type_id(ptr)) if btf else None
            if not t:
                raise LoadError(f"{self.path.name}: struct_ops map {var} has no BTF type")
            name_off, _, _ = struct.unpack_from("<III", ctypes.string_at(t, 12))
            size = c_size_t()
            base = lib().bpf_map__initial_value(ptr, byref(size))
            data = ctypes.string_at(base, size.value) if base else b""
            members = {}
            offsets = list(_btf_struct(btf, t)[1].items())
            for i, (m_name, start) in enumerate(offsets):
                end = offsets[i + 1][1] if i + 1 < len(offsets) else len(data)
                members[m_name] = data[start:end]
            out.append(StructOpsSpec(var, lib().btf__name_by_offset(btf, name_off).decode(),
                                     bool(lib().bpf_map__map_flags(ptr) & BPF_F_LINK), members))
        return out

    def struct_layout(self, c_name: str) -> tuple[int, dict[str, int]]:
        """Size and member byte offsets of `struct c_name` in the object's BTF."""
        btf = lib().bpf_object__btf(self._ptr)
        type_id = lib().btf__find_by_name_kind(btf, c_name.encode(), BTF_KIND_STRUCT) if btf else -1
        if type_id < 0:
            raise LoadError(f"{self.path.name} has no BTF for struct {c_name}",
                            hint="compile it with -g (bpfkit build does)")
        return _btf_struct(btf, lib().btf__type_by_id(btf, type_id))

    def check_layouts(self, layouts: "tuple[Layout, ...] | list[Layout]") -> None:
        """Refuse an object whose structs disagree with bpfkit's Python layouts of them."""
        for layout in layouts:
            size, members = self.struct_layout(layout.c_name)
            wrong = [f"size {size}, Python packs {layout.offset + layout.size}"] \
                if layout.complete and size != layout.offset + layout.size else []
            for name, offset in layout.member_offsets.items():
                if members.get(name) != offset:
                    got = "missing" if name not in members else f"at offset {members[name]}"
                    wrong.append(f"member {name} {got}, Python expects offset {offset}")
            if wrong:
                raise LoadError(f"{self.path.name}: struct {layout.c_name} disagrees with bpfkit's layout of it: "
                                + "; ".join(wrong),
                                hint="the C struct and its Python Layout must change together (a bpfkit bug)")

    def close(self) -> None:
        """Unload what no link or pin holds."""
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KFUNC_ARG_TYPE = re.compile(r"kernel function (?P<fn>\w+) args#(?P<arg>\d+) expected pointer to STRUCT (?P<want>\w+) "
                            r"but R\d+ has a pointer to STRUCT (?P<got>\w+)")
UNTRUSTED_ARG = re.compile(r"arg#\d+ is untrusted_ptr_")


def _verifier_hint(log: str) -> str | None:
    """Advice for rejections whose log line does not say what to write instead."""
    if UNTRUSTED_ARG.search(log):
        return ("a pointer read from a struct field is untrusted in a sleepable program, and kfuncs and "
                "helpers refuse it: pass a pointer a kfunc returned instead")
    m = KFUNC_ARG_TYPE.search(log)
    if m:
        return (f"{m['fn']}() takes a struct {m['want']} * as argument {int(m['arg']) + 1} in this kernel; the "
                f"program passes a struct {m['got']} * (check its declaration against the kernel's BTF)")
    return None


def _load_hint(err: int, text: str) -> str | None:
    if err == errno.EPERM:
        return ("the kernel refused the program type (this happens for fentry/fexit/fmod_ret/lsm on kernels "
                "that lock them down); check `bpfkit doctor`")
    if "struct_ops" in text and "not found" in text:
        return "the running kernel does not expose this struct_ops type to BPF (see `bpfkit doctor`)"
    return None


def open_object(path: str | Path, rodata: dict | None = None, layouts: tuple[Layout, ...] = ()) -> BpfObject:
    """Open, check the map layouts against BTF, set read-only config, load. Closes
    the object if any step fails."""
    obj = BpfObject.open(path)
    try:
        obj.check_layouts(layouts)
        for name, value in (rodata or {}).items():
            obj.set_rodata(name, value)
        return obj.load()
    except BaseException:
        obj.close()
        raise


# --- fds, pins, ids ----------------------------------------------------------

def _pin_parent(path: Path) -> None:
    """The directories a pin goes in: missing ones are created 0700, as pins.py's are. A
    plain mkdir (0755) here once left PIN_ROOT open for reading, which the pillars then
    refuse (fs.private_dir), after a test had pinned into it first."""
    ensure_bpffs()
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)


def ensure_bpffs(root: Path = Path("/sys/fs/bpf")) -> None:
    """Mount bpffs at /sys/fs/bpf if nothing is mounted there yet."""
    if fs.magic(root) == fs.BPF_FS_MAGIC:
        return
    root.mkdir(parents=True, exist_ok=True)
    # mode=0700 as systemd mounts it; the kernel's default (01777) lets any user create there
    ret = _libc.mount(b"bpffs", str(root).encode(), b"bpf", 0, b"mode=0700")
    if ret != 0:
        err = ctypes.get_errno()
        raise AttachError(f"mounting bpffs at {root}: {_strerror(err)}", hint="run as root")


def bpf_obj_get(path: str | Path) -> int:
    fd = lib().bpf_obj_get(str(path).encode())
    if fd < 0:
        err = _errno_of(fd)
        raise AttachError(f"opening pinned object {path}: {_strerror(err)}")
    return fd


class _ProgInfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", c_char * 8), ("jited_prog_len", c_uint32),
                ("xlated_prog_len", c_uint32), ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
                ("load_time", c_uint64), ("created_by_uid", c_uint32), ("nr_map_ids", c_uint32),
                ("map_ids", c_uint64), ("name", c_char * 16),
                # struct bpf_prog_info up to the run-time statistics (Linux >= 5.1; counted only
                # while kernel.bpf_stats_enabled is 1)
                ("ifindex", c_uint32), ("gpl_compatible", c_uint32), ("netns_dev", c_uint64),
                ("netns_ino", c_uint64), ("nr_jited_ksyms", c_uint32), ("nr_jited_func_lens", c_uint32),
                ("jited_ksyms", c_uint64), ("jited_func_lens", c_uint64), ("btf_id", c_uint32),
                ("func_info_rec_size", c_uint32), ("func_info", c_uint64), ("nr_func_info", c_uint32),
                ("nr_line_info", c_uint32), ("line_info", c_uint64), ("jited_line_info", c_uint64),
                ("nr_jited_line_info", c_uint32), ("line_info_rec_size", c_uint32),
                ("jited_line_info_rec_size", c_uint32), ("nr_prog_tags", c_uint32), ("prog_tags", c_uint64),
                ("run_time_ns", c_uint64), ("run_cnt", c_uint64)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("key_size", c_uint32), ("value_size", c_uint32),
                ("max_entries", c_uint32), ("map_flags", c_uint32), ("name", c_char * 16)]


class _LinkInfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("prog_id", c_uint32), ("pad", c_uint32),
                ("u", ctypes.c_ubyte * 64)]


LINK_TYPES = {1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp", 7: "perf_event",
              8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx", 12: "uprobe_multi", 13: "netkit"}


def _info(fd: int, struct_type):
    info = struct_type()
    size = c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, byref(info), byref(size)), "reading object info")
    return info


def prog_info(fd: int) -> dict:
    i = _info(fd, _ProgInfo)
    return {"id": i.id, "type": PROG_TYPES.get(i.type, str(i.type)), "name": i.name.decode(errors="replace"),
            "run_time_ns": i.run_time_ns, "run_cnt": i.run_cnt}


BPF_STATS_RUN_TIME = 0


@contextlib.contextmanager
def run_time_stats():
    """Count every program's run time and runs (prog_info's run_time_ns / run_cnt) while the
    block runs: BPF_ENABLE_STATS holds the count on through a descriptor (Linux >= 5.8), so a
    killed process leaves kernel.bpf_stats_enabled as it found it, unlike writing the sysctl."""
    fd = lib().bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise LoadError(f"enabling BPF run-time statistics: {_strerror(_errno_of(fd))}")
    try:
        yield
    finally:
        os.close(fd)


def map_info(fd: int) -> dict:
    i = _info(fd, _MapInfo)
    return {"id": i.id, "type": i.type, "key_size": i.key_size, "value_size": i.value_size,
            "max_entries": i.max_entries, "map_flags": i.map_flags, "name": i.name.decode(errors="replace")}


def link_info(fd: int) -> dict:
    i = _info(fd, _LinkInfo)
    out = {"id": i.id, "type": LINK_TYPES.get(i.type, str(i.type)), "prog_id": i.prog_id}
    raw = bytes(i.u)
    if out["type"] == "cgroup":
        out["cgroup_id"], out["attach_type"] = struct.unpack_from("<QI", raw)
    elif out["type"] == "struct_ops":
        out["map_id"] = struct.unpack_from("<I", raw)[0]
    elif out["type"] == "tracing":
        out["attach_type"], out["target_obj_id"], out["target_btf_id"] = struct.unpack_from("<III", raw)
    return out


def struct_ops_maps_loaded() -> list[dict]:
    """Every struct_ops map in the kernel (whoever loaded it), with its value as the
    kernel holds it (refcount and state, then the ops struct) and the id of the link
    that registered it, if a link did."""
    links = {}
    for link_id in loaded_link_ids():
        fd = lib().bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            continue
        try:
            info = link_info(fd)
            if info["type"] == "struct_ops":
                links[info["map_id"]] = link_id
        except BpfkitError:
            continue
        finally:
            os.close(fd)
    out = []
    for map_id in loaded_map_ids():
        fd = lib().bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            continue
        try:
            info = map_info(fd)
            if info["type"] != BPF_MAP_TYPE_STRUCT_OPS:
                continue
            key, value = c_uint32(0), ctypes.create_string_buffer(info["value_size"])
            if lib().bpf_map_lookup_elem(fd, byref(key), value) != 0:
                continue
            out.append({"map_id": map_id, "map_name": info["name"], "value": value.raw,
                        "link_id": links.get(map_id)})
        finally:
            os.close(fd)
    return out


def unregister_struct_ops(map_id: int, link_id: int | None) -> None:
    """Unregister a struct_ops map someone else registered: detach its link, or (a map
    registered without a link) delete its only element, as `bpftool struct_ops
    unregister` does."""
    if link_id is not None:
        fd = lib().bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            raise AttachError(f"struct_ops link {link_id}: {_strerror(_errno_of(fd))}")
        try:
            _check(lib().bpf_link_detach(fd), f"detaching struct_ops link {link_id}", exc=AttachError)
        finally:
            os.close(fd)
        return
    fd = lib().bpf_map_get_fd_by_id(map_id)
    if fd < 0:
        raise AttachError(f"struct_ops map {map_id}: {_strerror(_errno_of(fd))}")
    try:
        key = c_uint32(0)
        _check(lib().bpf_map_delete_elem(fd, byref(key)), f"unregistering struct_ops map {map_id}",
               exc=AttachError)
    finally:
        os.close(fd)


def _ids(next_id_fn) -> list[int]:
    ids, cur, nxt = [], 0, c_uint32()
    while next_id_fn(cur, byref(nxt)) == 0:
        ids.append(nxt.value)
        cur = nxt.value
    return ids


def loaded_program_ids() -> list[int]:
    return _ids(lib().bpf_prog_get_next_id)


def loaded_map_ids() -> list[int]:
    return _ids(lib().bpf_map_get_next_id)


def loaded_link_ids() -> list[int]:
    return _ids(lib().bpf_link_get_next_id)


def program_info_by_id(prog_id: int) -> dict | None:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def cgroup_program_ids(cgroup: str | Path, attach_type: str) -> list[int]:
    """IDs of programs attached (any mode) to a cgroup at an attach point."""
    fd = os.open(str(cgroup), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (c_uint32 * 64)()
        count = c_uint32(64)
        flags = c_uint32()
        _check(lib().bpf_prog_query(fd, ATTACH_TYPES[attach_type], 0, byref(flags), ids, byref(count)),
               f"querying programs on {cgroup}")
        return list(ids[: count.value])
    finally:
        os.close(fd)


# --- kernel BTF --------------------------------------------------------------

class KernelBtf:
    """The running kernel's BTF, for feature checks."""

    def __init__(self):
        with _Captured():
            self._ptr = lib().btf__load_vmlinux_btf()
        if not self._ptr:
            raise LoadError("the running kernel exposes no BTF (/sys/kernel/btf/vmlinux)")

    def has(self, name: str, kind: int) -> bool:
        return lib().btf__find_by_name_kind(self._ptr, name.encode(), kind) >= 0

    def has_struct(self, name: str) -> bool:
        return self.has(name, BTF_KIND_STRUCT)

    def has_func(self, name: str) -> bool:
        return self.has(name, BTF_KIND_FUNC)

    def close(self) -> None:
        if self._ptr:
            lib().btf__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "KernelBtf":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_libc.mount.argtypes = [c_char_p, c_char_p, c_char_p, ctypes.c_ulong, c_char_p]
_libc.mount.restype = c_int
