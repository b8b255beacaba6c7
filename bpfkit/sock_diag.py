"""MPTCP connections and their subflows from the kernel's sock_diag netlink
interface (what `ss -M` and `ss -ti` read), without shelling out.

Two dumps per snapshot:
  * IPPROTO_MPTCP inet_diag (mptcp_diag): one entry per MPTCP socket, whose
    INET_DIAG_INFO is a struct mptcp_info (token, counters);
  * IPPROTO_TCP inet_diag: every TCP socket; the subflows are those whose
    INET_DIAG_ULP_INFO names the "mptcp" ULP. Its nested INET_ULP_INFO_MPTCP
    carries the subflow's local token, which equals its connection's token
    (struct mptcp_info.mptcpi_token): that is how subflows are matched.

The protocol number of MPTCP (262) does not fit in inet_diag_req_v2's u8
sdiag_protocol, so the request also carries INET_DIAG_REQ_PROTOCOL (u32),
which the kernel prefers when present.

ULP details are only filled for a requester with CAP_NET_ADMIN in the socket's
netns, so `snapshot()` needs root for subflow matching.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bpfkit.errors import BpfkitError, KernelUnsupported
from bpfkit.mptcp_sockopt import IPPROTO_MPTCP, TCP_STATES, MptcpInfo, TcpInfo

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

# enum inet_diag_attr (attributes of a reply) and enum inet_diag_req (of a request)
INET_DIAG_INFO = 2
INET_DIAG_ULP_INFO = 19
INET_DIAG_REQ_PROTOCOL = 3
# enum inet_ulp_info and the MPTCP_SUBFLOW_ATTR_* nested in INET_ULP_INFO_MPTCP
INET_ULP_INFO_NAME = 1
INET_ULP_INFO_MPTCP = 3
MPTCP_SUBFLOW_ATTR_TOKEN_REM = 1
MPTCP_SUBFLOW_ATTR_TOKEN_LOC = 2
MPTCP_SUBFLOW_ATTR_FLAGS = 8
MPTCP_SUBFLOW_ATTR_ID_REM = 9
MPTCP_SUBFLOW_ATTR_ID_LOC = 10
# MPTCP_SUBFLOW_FLAG_* (include/uapi/linux/mptcp.h)
MPTCP_SUBFLOW_FLAG_BKUP_REM = 0x004
MPTCP_SUBFLOW_FLAG_BKUP_LOC = 0x008

# Connections worth showing: everything but LISTEN, CLOSE and TIME-WAIT (the
# latter are minisockets without tcp_info).
STATES_CONNECTED = sum(1 << s for s in (1, 2, 3, 4, 5, 8, 9, 11))

_NLMSGHDR = struct.Struct("=IHHII")
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then the 48-byte sockid
_SOCKID_LEN = 48
_DIAG_MSG = struct.Struct("=BBBB")  # family, state, timer, retrans; then sockid, then 5 × u32
_DIAG_MSG_LEN = 4 + _SOCKID_LEN + 20
_RTA = struct.Struct("=HH")


class SockDiagError(BpfkitError):
    """The sock_diag dump failed."""


@dataclass(frozen=True)
class DiagSocket:
    """One socket of a dump: its endpoints, state and raw attributes."""

    family: int
    state: int
    local: tuple[str, int]
    remote: tuple[str, int]
    cookie: int
    inode: int
    attrs: dict[int, bytes] = field(repr=False)

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))


@dataclass(frozen=True)
class Subflow:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    cookie: int
    token_local: int
    token_remote: int
    id_local: int | None
    id_remote: int | None
    backup: bool
    tcp: TcpInfo | None


@dataclass(frozen=True)
class Connection:
    """An MPTCP socket and the subflows whose local token is its token."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    cookie: int
    token: int | None
    info: MptcpInfo | None
    subflows: list[Subflow]


# ---------------------------------------------------------------- netlink


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """rtattr TLVs → {type: payload} (the nested flag bit masked off)."""
    out = {}
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        out[kind & 0x3FFF] = data[offset + _RTA.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw[:16])
    return str(address.ipv4_mapped or address)


def _parse_diag_msg(payload: bytes) -> DiagSocket:
    family, state, _timer, _retrans = _DIAG_MSG.unpack_from(payload, 0)
    sport, dport = struct.unpack_from("!HH", payload, 4)
    src = payload[8:24]
    dst = payload[24:40]
    cookie_lo, cookie_hi = struct.unpack_from("=II", payload, 44)
    inode = struct.unpack_from("=I", payload, 4 + _SOCKID_LEN + 16)[0]
    return DiagSocket(family, state, (_address(family, src), sport), (_address(family, dst), dport),
                      cookie_lo | (cookie_hi << 32), inode, _attrs(payload, _DIAG_MSG_LEN))


def dump(family: int, protocol: int, *, states: int = STATES_CONNECTED, ext: int = 0) -> list[DiagSocket]:
    """One inet_diag dump (SOCK_DIAG_BY_FAMILY) of `protocol` sockets of `family`."""
    request = _REQ_V2.pack(family, protocol & 0xFF, ext, states) + bytes(_SOCKID_LEN)
    if protocol > 0xFF:
        request += _RTA.pack(_RTA.size + 4, INET_DIAG_REQ_PROTOCOL) + struct.pack("=I", protocol)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sockets = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise SockDiagError("malformed netlink reply")
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if kind == NLMSG_DONE:
                    return sockets
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload, 0)[0]
                    if code == 0:
                        continue
                    if protocol == IPPROTO_MPTCP and code in (errno.ENOENT, errno.EINVAL):
                        raise KernelUnsupported("this kernel has no MPTCP sock_diag (CONFIG_INET_MPTCP_DIAG)",
                                                hint="modprobe mptcp_diag, or build with CONFIG_INET_MPTCP_DIAG")
                    raise SockDiagError(f"sock_diag dump failed: {os.strerror(code)}")
                if kind == SOCK_DIAG_BY_FAMILY:
                    sockets.append(_parse_diag_msg(payload))


def _subflow_of(sock: DiagSocket) -> Subflow | None:
    ulp = sock.attrs.get(INET_DIAG_ULP_INFO)
    if ulp is None:
        return None
    ulp_attrs = _attrs(ulp)
    if ulp_attrs.get(INET_ULP_INFO_NAME, b"").rstrip(b"\0") != b"mptcp":
        return None
    mptcp = _attrs(ulp_attrs.get(INET_ULP_INFO_MPTCP, b""))

    def u32(kind: int) -> int:
        raw = mptcp.get(kind)
        return struct.unpack_from("=I", raw)[0] if raw and len(raw) >= 4 else 0

    def u8(kind: int) -> int | None:
        raw = mptcp.get(kind)
        return raw[0] if raw else None

    info = sock.attrs.get(INET_DIAG_INFO)
    flags = u32(MPTCP_SUBFLOW_ATTR_FLAGS)
    return Subflow(local=sock.local, remote=sock.remote, state=sock.state_name, cookie=sock.cookie,
                   token_local=u32(MPTCP_SUBFLOW_ATTR_TOKEN_LOC), token_remote=u32(MPTCP_SUBFLOW_ATTR_TOKEN_REM),
                   id_local=u8(MPTCP_SUBFLOW_ATTR_ID_LOC), id_remote=u8(MPTCP_SUBFLOW_ATTR_ID_REM),
                   backup=bool(flags & (MPTCP_SUBFLOW_FLAG_BKUP_LOC | MPTCP_SUBFLOW_FLAG_BKUP_REM)),
                   tcp=TcpInfo.decode(info) if info and len(info) >= 8 else None)


def _dump_family(family: int, protocol: int, ext: int) -> list[DiagSocket]:
    """A kernel without IPv6 has no AF_INET6 diag handler: no IPv6 sockets."""
    if family == socket.AF_INET6 and not socket.has_ipv6:
        return []
    try:
        return dump(family, protocol, ext=ext)
    except (SockDiagError, KernelUnsupported):
        if family == socket.AF_INET6 and not Path("/proc/net/if_inet6").exists():
            return []
        raise


def connections() -> list[Connection]:
    """Every MPTCP connection of the current netns, with its subflows. Subflows
    whose token matches no MPTCP socket (e.g. the connection is already gone)
    are left out."""
    ext = 1 << (INET_DIAG_INFO - 1)
    msks = []
    for family in (socket.AF_INET, socket.AF_INET6):
        msks += _dump_family(family, IPPROTO_MPTCP, ext)
    subflows: dict[int, list[Subflow]] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for sock in _dump_family(family, socket.IPPROTO_TCP, ext):
            sub = _subflow_of(sock)
            if sub is not None:
                subflows.setdefault(sub.token_local, []).append(sub)
    out = []
    for msk in msks:
        raw = msk.attrs.get(INET_DIAG_INFO)
        info = MptcpInfo.decode(raw) if raw and len(raw) >= 6 else None
        token = info.token if info else None
        subs = sorted(subflows.get(token, []), key=lambda s: (s.id_local if s.id_local is not None else 255, s.local))
        out.append(Connection(local=msk.local, remote=msk.remote, state=msk.state_name, cookie=msk.cookie,
                              token=token, info=info, subflows=subs))
    return out
