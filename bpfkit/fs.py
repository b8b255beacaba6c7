"""Which filesystem a path is on, from statfs(2)'s f_type: one syscall, where
parsing /proc/self/mountinfo costs milliseconds (tens of them in a TCG guest)
on every attach."""

import ctypes
import os

CGROUP2_SUPER_MAGIC = 0x63677270
BPF_FS_MAGIC = 0xCAFE4A11

_libc = ctypes.CDLL(None, use_errno=True)
# struct statfs on Linux starts with f_type (__fsword_t, a long); 120 bytes on
# 64-bit, the buffer is generous.
_STATFS_SIZE = 256


def magic(path: str | os.PathLike) -> int | None:
    """f_type of the filesystem holding `path`, None if it cannot be stat'ed."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
