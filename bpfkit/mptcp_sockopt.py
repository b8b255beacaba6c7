"""Read MPTCP and TCP statistics from a socket with getsockopt(2).

Standalone and dependency-free so any part of bpfkit (the lab sampler, the live
`top` view, the scheduler tests) can use it:

    from bpfkit import mptcp_sockopt as so
    info = so.full_info(sock)              # one call: connection + every subflow
    info.mptcp.bytes_sent, [(s.id, s.local, s.remote, s.tcp.rtt_us) for s in info.subflows]

Why ctypes: MPTCP_TCPINFO, MPTCP_SUBFLOW_ADDRS and MPTCP_FULL_INFO *read* an input
header from the option buffer, and Python's socket.getsockopt() hands the kernel an
uninitialised buffer (EINVAL) and caps it at 1024 bytes. So we call libc directly
with a prepared buffer. Layouts are from include/uapi/linux/{mptcp,tcp}.h; the
kernel clamps every "user size" to its own structure size, so newer or older
kernels with longer or shorter structs still decode (missing fields read as None).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import ipaddress
import os
import socket
import struct
import time
from dataclasses import asdict, dataclass, field

__all__ = [
    "IPPROTO_MPTCP", "SOL_MPTCP", "MPTCP_INFO", "MPTCP_TCPINFO", "MPTCP_SUBFLOW_ADDRS", "MPTCP_FULL_INFO",
    "TCP_ESTABLISHED", "TCP_STATES", "TcpInfo", "MptcpInfo", "SubflowInfo", "FullInfo",
    "mptcp_info", "tcp_info", "subflow_tcp_info", "subflow_addrs", "full_info", "is_mptcp",
    "wait_subflows_usable",
    "getsockopt_buffer", "decode_sockaddr",
]

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
SOL_TCP = socket.IPPROTO_TCP
TCP_INFO = 11

MPTCP_INFO = 1
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
MPTCP_FULL_INFO = 4

MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1

# Sizes of the structures as this module knows them (the kernel may know more).
MPTCP_INFO_SIZE = 96
TCP_INFO_SIZE = 248  # up to tcpi_total_rto_time (Linux 6.7+); 6.18 has 280
SUBFLOW_DATA_SIZE = 16  # struct mptcp_subflow_data
SUBFLOW_ADDRS_SIZE = 256  # struct mptcp_subflow_addrs: two sockaddr_storage
SUBFLOW_INFO_SIZE = 264  # struct mptcp_subflow_info: u32 id, pad, addrs @8
FULL_INFO_HEADER_SIZE = 40  # struct mptcp_full_info before its mptcp_info

# The process's own symbols (libc is linked into every Python): ctypes.util.find_library("c")
# runs `ldconfig -p` in a subprocess, ~0.4 s of each traffic process's start under TCG.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
]
_libc.getsockopt.restype = ctypes.c_int


def _fd(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def getsockopt_buffer(sock: socket.socket | int, level: int, option: int, buf: ctypes.Array) -> int:
    """getsockopt() into a caller-prepared buffer (which may carry an input header).
    Returns the length the kernel wrote; raises OSError with the kernel's errno."""
    optlen = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(_fd(sock), level, option, buf, ctypes.byref(optlen)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt(level={level}, option={option}): {os.strerror(err)}")
    return optlen.value


# ---------------------------------------------------------------- decoding helpers

# (name, offset, struct format) of struct tcp_info; bitfields are decoded separately.
_TCP_INFO_FIELDS = [
    ("state", 0, "B"),
    ("ca_state", 1, "B"),
    ("retransmits", 2, "B"),
    ("probes", 3, "B"),
    ("backoff", 4, "B"),
    ("options", 5, "B"),
    ("rto_us", 8, "I"),
    ("ato_us", 12, "I"),
    ("snd_mss", 16, "I"),
    ("rcv_mss", 20, "I"),
    ("unacked", 24, "I"),
    ("sacked", 28, "I"),
    ("lost", 32, "I"),
    ("retrans", 36, "I"),
    ("fackets", 40, "I"),
    ("last_data_sent_ms", 44, "I"),
    ("last_ack_sent_ms", 48, "I"),
    ("last_data_recv_ms", 52, "I"),
    ("last_ack_recv_ms", 56, "I"),
    ("pmtu", 60, "I"),
    ("rcv_ssthresh", 64, "I"),
    ("rtt_us", 68, "I"),
    ("rttvar_us", 72, "I"),
    ("snd_ssthresh", 76, "I"),
    ("snd_cwnd", 80, "I"),
    ("advmss", 84, "I"),
    ("reordering", 88, "I"),
    ("rcv_rtt_us", 92, "I"),
    ("rcv_space", 96, "I"),
    ("total_retrans", 100, "I"),
    ("pacing_rate", 104, "Q"),
    ("max_pacing_rate", 112, "Q"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("notsent_bytes", 144, "I"),
    ("min_rtt_us", 148, "I"),
    ("data_segs_in", 152, "I"),
    ("data_segs_out", 156, "I"),
    ("delivery_rate", 160, "Q"),
    ("busy_time_us", 168, "Q"),
    ("rwnd_limited_us", 176, "Q"),
    ("sndbuf_limited_us", 184, "Q"),
    ("delivered", 192, "I"),
    ("delivered_ce", 196, "I"),
    ("bytes_sent", 200, "Q"),
    ("bytes_retrans", 208, "Q"),
    ("dsack_dups", 216, "I"),
    ("reord_seen", 220, "I"),
    ("rcv_ooopack", 224, "I"),
    ("snd_wnd", 228, "I"),
    ("rcv_wnd", 232, "I"),
    ("rehash", 236, "I"),
    ("total_rto", 240, "H"),
    ("total_rto_recoveries", 242, "H"),
    ("total_rto_time_ms", 244, "I"),
]

_MPTCP_INFO_FIELDS = [
    ("subflows", 0, "B"),
    ("add_addr_signal", 1, "B"),
    ("add_addr_accepted", 2, "B"),
    ("subflows_max", 3, "B"),
    ("add_addr_signal_max", 4, "B"),
    ("add_addr_accepted_max", 5, "B"),
    ("flags", 8, "I"),
    ("token", 12, "I"),
    ("write_seq", 16, "Q"),
    ("snd_una", 24, "Q"),
    ("rcv_nxt", 32, "Q"),
    ("local_addr_used", 40, "B"),
    ("local_addr_max", 41, "B"),
    ("csum_enabled", 42, "B"),
    ("retransmits", 44, "I"),
    ("bytes_retrans", 48, "Q"),
    ("bytes_sent", 56, "Q"),
    ("bytes_received", 64, "Q"),
    ("bytes_acked", 72, "Q"),
    ("subflows_total", 80, "B"),
    ("last_data_sent_ms", 84, "I"),
    ("last_data_recv_ms", 88, "I"),
    ("last_ack_recv_ms", 92, "I"),
]


def _decode_fields(fields, data: bytes, length: int) -> dict:
    """Fields that end beyond `length` (an older kernel's shorter struct) are None."""
    out = {}
    for name, offset, fmt in fields:
        end = offset + struct.calcsize(fmt)
        out[name] = struct.unpack_from("=" + fmt, data, offset)[0] if end <= length else None
    return out


def decode_sockaddr(data: bytes) -> tuple[str, int] | None:
    """A sockaddr_in / sockaddr_in6 (inside a sockaddr_storage) → (host, port)."""
    family = struct.unpack_from("=H", data, 0)[0]
    if family == socket.AF_INET:
        port = struct.unpack_from("!H", data, 2)[0]
        return str(ipaddress.IPv4Address(data[4:8])), port
    if family == socket.AF_INET6:
        port = struct.unpack_from("!H", data, 2)[0]
        return str(ipaddress.IPv6Address(data[8:24])), port
    return None


# ---------------------------------------------------------------- result types


# tcp_info.tcpi_state (include/net/tcp_states.h), with the names ss(8) prints
TCP_ESTABLISHED = 1
TCP_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
              7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING"}


@dataclass(frozen=True)
class TcpInfo:
    """struct tcp_info of one TCP connection or MPTCP subflow (times in µs unless
    the name says _ms). `size` is how many bytes the kernel filled; fields past it
    are None."""

    size: int
    state: int
    ca_state: int
    retransmits: int
    probes: int
    backoff: int
    options: int
    snd_wscale: int
    rcv_wscale: int
    rto_us: int | None = None
    ato_us: int | None = None
    snd_mss: int | None = None
    rcv_mss: int | None = None
    unacked: int | None = None
    sacked: int | None = None
    lost: int | None = None
    retrans: int | None = None
    fackets: int | None = None
    last_data_sent_ms: int | None = None
    last_ack_sent_ms: int | None = None
    last_data_recv_ms: int | None = None
    last_ack_recv_ms: int | None = None
    pmtu: int | None = None
    rcv_ssthresh: int | None = None
    rtt_us: int | None = None
    rttvar_us: int | None = None
    snd_ssthresh: int | None = None
    snd_cwnd: int | None = None
    advmss: int | None = None
    reordering: int | None = None
    rcv_rtt_us: int | None = None
    rcv_space: int | None = None
    total_retrans: int | None = None
    pacing_rate: int | None = None
    max_pacing_rate: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    notsent_bytes: int | None = None
    min_rtt_us: int | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    delivery_rate: int | None = None
    busy_time_us: int | None = None
    rwnd_limited_us: int | None = None
    sndbuf_limited_us: int | None = None
    delivered: int | None = None
    delivered_ce: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None
    dsack_dups: int | None = None
    reord_seen: int | None = None
    rcv_ooopack: int | None = None
    snd_wnd: int | None = None
    rcv_wnd: int | None = None
    rehash: int | None = None
    total_rto: int | None = None
    total_rto_recoveries: int | None = None
    total_rto_time_ms: int | None = None

    @classmethod
    def decode(cls, data: bytes, length: int | None = None) -> TcpInfo:
        length = len(data) if length is None else min(length, len(data))
        if length < 8:
            raise ValueError(f"tcp_info too short: {length} bytes")
        values = _decode_fields(_TCP_INFO_FIELDS, data, length)
        wscale = data[6]
        return cls(size=length, snd_wscale=wscale & 0x0F, rcv_wscale=wscale >> 4, **values)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MptcpInfo:
    """struct mptcp_info: connection-level (MPTCP socket) state and counters.
    Note `subflows` counts *additional* subflows; `subflows_total` counts all."""

    size: int
    subflows: int
    add_addr_signal: int
    add_addr_accepted: int
    subflows_max: int
    add_addr_signal_max: int
    add_addr_accepted_max: int
    flags: int | None = None
    token: int | None = None
    write_seq: int | None = None
    snd_una: int | None = None
    rcv_nxt: int | None = None
    local_addr_used: int | None = None
    local_addr_max: int | None = None
    csum_enabled: int | None = None
    retransmits: int | None = None
    bytes_retrans: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    bytes_acked: int | None = None
    subflows_total: int | None = None
    last_data_sent_ms: int | None = None
    last_data_recv_ms: int | None = None
    last_ack_recv_ms: int | None = None

    @property
    def fallback(self) -> bool:
        """The connection fell back to plain TCP."""
        return bool((self.flags or 0) & MPTCP_INFO_FLAG_FALLBACK)

    @classmethod
    def decode(cls, data: bytes, length: int | None = None) -> MptcpInfo:
        length = len(data) if length is None else min(length, len(data))
        if length < 6:
            raise ValueError(f"mptcp_info too short: {length} bytes")
        return cls(size=length, **_decode_fields(_MPTCP_INFO_FIELDS, data, length))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SubflowInfo:
    """One subflow: its id (1 = the first subflow), local and remote (host, port),
    and its tcp_info."""

    id: int
    local: tuple[str, int] | None
    remote: tuple[str, int] | None
    tcp: TcpInfo

    def to_dict(self) -> dict:
        return {"id": self.id, "local": self.local, "remote": self.remote, "tcp": self.tcp.to_dict()}


@dataclass(frozen=True)
class FullInfo:
    """MPTCP_FULL_INFO: the connection and all of its subflows, read atomically.
    `num_subflows` is the kernel's count, which can exceed len(subflows) if more
    subflows exist than were asked for."""

    mptcp: MptcpInfo
    num_subflows: int
    subflows: list[SubflowInfo] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mptcp": self.mptcp.to_dict(),
            "num_subflows": self.num_subflows,
            "subflows": [s.to_dict() for s in self.subflows],
        }


# ---------------------------------------------------------------- socket queries


def mptcp_info(sock: socket.socket | int) -> MptcpInfo:
    """MPTCP_INFO of an MPTCP socket. Raises OSError (EOPNOTSUPP on a plain TCP
    socket or, on some kernels, after fallback to TCP)."""
    buf = ctypes.create_string_buffer(MPTCP_INFO_SIZE)
    length = getsockopt_buffer(sock, SOL_MPTCP, MPTCP_INFO, buf)
    return MptcpInfo.decode(buf.raw, length)


def tcp_info(sock: socket.socket | int) -> TcpInfo:
    """TCP_INFO. On an MPTCP socket this is the *first* subflow's tcp_info."""
    buf = ctypes.create_string_buffer(TCP_INFO_SIZE)
    length = getsockopt_buffer(sock, SOL_TCP, TCP_INFO, buf)
    return TcpInfo.decode(buf.raw, length)


def _subflow_array(sock, option: int, element_size: int, max_subflows: int) -> tuple[list[bytes], int]:
    """MPTCP_TCPINFO / MPTCP_SUBFLOW_ADDRS: a struct mptcp_subflow_data header
    followed by an array; returns (elements, the kernel's element size)."""
    buf = ctypes.create_string_buffer(SUBFLOW_DATA_SIZE + max_subflows * element_size)
    struct.pack_into("=IIII", buf, 0, SUBFLOW_DATA_SIZE, 0, 0, element_size)
    length = getsockopt_buffer(sock, SOL_MPTCP, option, buf)
    _, num, size_kernel, size_user = struct.unpack_from("=IIII", buf.raw, 0)
    stride = size_user  # the kernel clamps size_user to its own size and uses it as the stride
    count = min(num, max_subflows, max(0, (length - SUBFLOW_DATA_SIZE) // stride) if stride else 0)
    raw = buf.raw
    return [raw[SUBFLOW_DATA_SIZE + i * stride : SUBFLOW_DATA_SIZE + (i + 1) * stride] for i in range(count)], size_kernel


def subflow_tcp_info(sock: socket.socket | int, max_subflows: int = 8) -> list[TcpInfo]:
    """MPTCP_TCPINFO: tcp_info of every subflow, in the kernel's subflow order."""
    elements, _ = _subflow_array(sock, MPTCP_TCPINFO, TCP_INFO_SIZE, max_subflows)
    return [TcpInfo.decode(e) for e in elements]


def subflow_addrs(sock: socket.socket | int, max_subflows: int = 8) -> list[tuple[tuple[str, int] | None, tuple[str, int] | None]]:
    """MPTCP_SUBFLOW_ADDRS: (local, remote) of every subflow."""
    elements, _ = _subflow_array(sock, MPTCP_SUBFLOW_ADDRS, SUBFLOW_ADDRS_SIZE, max_subflows)
    return [(decode_sockaddr(e[0:128]), decode_sockaddr(e[128:256])) for e in elements]


def full_info(sock: socket.socket | int, max_subflows: int = 8) -> FullInfo:
    """MPTCP_FULL_INFO (Linux 6.5+): connection info plus id, addresses and
    tcp_info of up to `max_subflows` subflows in one consistent snapshot."""
    sf_buf = ctypes.create_string_buffer(max_subflows * SUBFLOW_INFO_SIZE)
    tcp_buf = ctypes.create_string_buffer(max_subflows * TCP_INFO_SIZE)
    buf = ctypes.create_string_buffer(FULL_INFO_HEADER_SIZE + MPTCP_INFO_SIZE)
    struct.pack_into(
        "=IIIIIIQQ",
        buf,
        0,
        0,  # size_tcpinfo_kernel (out)
        TCP_INFO_SIZE,  # size_tcpinfo_user
        0,  # size_sfinfo_kernel (out)
        SUBFLOW_INFO_SIZE,  # size_sfinfo_user
        0,  # num_subflows (out)
        max_subflows,  # size_arrays_user
        ctypes.addressof(sf_buf),
        ctypes.addressof(tcp_buf),
    )
    length = getsockopt_buffer(sock, SOL_MPTCP, MPTCP_FULL_INFO, buf)
    raw = buf.raw
    _, size_tcpinfo_user, _, size_sfinfo_user, num, _ = struct.unpack_from("=IIIIII", raw, 0)
    info = MptcpInfo.decode(raw[FULL_INFO_HEADER_SIZE:], length - FULL_INFO_HEADER_SIZE)
    tcp_stride = min(size_tcpinfo_user, TCP_INFO_SIZE) or TCP_INFO_SIZE
    sf_stride = min(size_sfinfo_user, SUBFLOW_INFO_SIZE) or SUBFLOW_INFO_SIZE
    tcp_len = tcp_stride  # the kernel copies min(user, kernel) bytes per element
    sf_raw, tcp_raw = sf_buf.raw, tcp_buf.raw
    subflows = []
    for i in range(min(num, max_subflows)):
        sf = sf_raw[i * sf_stride : (i + 1) * sf_stride]
        subflow_id = struct.unpack_from("=I", sf, 0)[0]
        local = decode_sockaddr(sf[8:136]) if len(sf) >= 136 else None
        remote = decode_sockaddr(sf[136:264]) if len(sf) >= 264 else None
        tcp = TcpInfo.decode(tcp_raw[i * tcp_stride : (i + 1) * tcp_stride], tcp_len)
        subflows.append(SubflowInfo(id=subflow_id, local=local, remote=remote, tcp=tcp))
    return FullInfo(mptcp=info, num_subflows=num, subflows=subflows)


def is_mptcp(sock: socket.socket | int) -> bool:
    """True if the socket is an MPTCP socket that has not fallen back to TCP."""
    try:
        return not mptcp_info(sock).fallback
    except OSError as exc:
        if exc.errno in (_errno.EOPNOTSUPP, _errno.ENOPROTOOPT, _errno.EINVAL):
            return False
        raise


def wait_subflows_usable(sock: socket.socket | int, count: int, deadline: float) -> int:
    """Wait (until time.monotonic() reaches `deadline`) for `count` established
    subflows, the initial one included; return how many there are.

    mptcp_info counts a join as soon as the path manager starts it, so count
    TCP_ESTABLISHED subflows instead. Established on this side is not yet
    usable by the peer: it has the join's third ACK about one RTT of that path
    later, so once they are all up, wait two of their RTTs more. Note that a
    client's path manager opens joins only once the connection is fully
    established, i.e. after the peer has sent data."""
    while True:
        up = [sf for sf in full_info(sock).subflows if sf.tcp.state == TCP_ESTABLISHED]
        if len(up) >= count:
            time.sleep(0.05 + 2 * max(sf.tcp.rtt_us or 0 for sf in up) / 1e6)
            return len(up)
        if time.monotonic() >= deadline:
            return len(up)
        time.sleep(0.01)
