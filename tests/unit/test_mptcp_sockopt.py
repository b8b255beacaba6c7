"""Decoding of tcp_info / mptcp_info / sockaddr layouts (offsets from
include/uapi/linux/{tcp,mptcp}.h), and the libc getsockopt path on a plain TCP
loopback connection (no root, no MPTCP needed)."""

import socket
import struct
import time

import pytest

from bpfkit import mptcp_sockopt as so

pytestmark = pytest.mark.unit


def tcp_info_bytes(size=so.TCP_INFO_SIZE) -> bytes:
    buf = bytearray(280)
    buf[0] = 1  # ESTABLISHED
    buf[6] = (9 << 4) | 7  # rcv_wscale 9, snd_wscale 7
    struct.pack_into("=I", buf, 68, 12_345)  # rtt
    struct.pack_into("=I", buf, 80, 42)  # snd_cwnd
    struct.pack_into("=I", buf, 100, 3)  # total_retrans
    struct.pack_into("=Q", buf, 120, 1_000_001)  # bytes_acked
    struct.pack_into("=I", buf, 148, 9_999)  # min_rtt
    struct.pack_into("=Q", buf, 200, 1_000_000)  # bytes_sent
    struct.pack_into("=Q", buf, 208, 4_500)  # bytes_retrans
    struct.pack_into("=HHI", buf, 240, 2, 1, 700)  # total_rto, recoveries, rto time
    return bytes(buf[:size])


def test_tcp_info_offsets():
    info = so.TcpInfo.decode(tcp_info_bytes())
    assert (info.state, info.snd_wscale, info.rcv_wscale) == (1, 7, 9)
    assert (info.rtt_us, info.snd_cwnd, info.total_retrans, info.min_rtt_us) == (12_345, 42, 3, 9_999)
    assert (info.bytes_acked, info.bytes_sent, info.bytes_retrans) == (1_000_001, 1_000_000, 4_500)
    assert (info.total_rto, info.total_rto_recoveries, info.total_rto_time_ms) == (2, 1, 700)
    assert info.size == so.TCP_INFO_SIZE


def test_tcp_info_from_an_older_shorter_kernel_struct():
    info = so.TcpInfo.decode(tcp_info_bytes(), length=192)  # e.g. a 4.19-era tcp_info
    assert info.rtt_us == 12_345 and info.bytes_acked == 1_000_001
    assert info.bytes_sent is None and info.total_rto is None


def test_mptcp_info_offsets_and_fallback_flag():
    buf = bytearray(so.MPTCP_INFO_SIZE)
    buf[0], buf[3] = 1, 8  # subflows (additional), subflows_max
    struct.pack_into("=II", buf, 8, so.MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED, 0xDEADBEEF)
    struct.pack_into("=QQQQ", buf, 48, 11, 22, 33, 44)  # retrans, sent, received, acked
    buf[80] = 2
    info = so.MptcpInfo.decode(bytes(buf))
    assert (info.subflows, info.subflows_max, info.subflows_total, info.token) == (1, 8, 2, 0xDEADBEEF)
    assert (info.bytes_retrans, info.bytes_sent, info.bytes_received, info.bytes_acked) == (11, 22, 33, 44)
    assert not info.fallback
    struct.pack_into("=I", buf, 8, so.MPTCP_INFO_FLAG_FALLBACK)
    assert so.MptcpInfo.decode(bytes(buf)).fallback


def test_decode_sockaddr():
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 5201) + socket.inet_aton("10.2.1.1") + bytes(120)
    assert so.decode_sockaddr(v4) == ("10.2.1.1", 5201)
    v6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 80) + bytes(4) + socket.inet_pton(socket.AF_INET6, "dead:beef::1") + bytes(104)
    assert so.decode_sockaddr(v6) == ("dead:beef::1", 80)
    assert so.decode_sockaddr(bytes(128)) is None


def test_tcp_info_and_is_mptcp_on_a_plain_tcp_connection():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    with listener, client, server:
        client.sendall(b"x" * 10_000)
        received = 0
        while received < 10_000:
            received += len(server.recv(65536))
        deadline = time.monotonic() + 2
        info = so.tcp_info(client)
        while info.bytes_acked < 10_001 and time.monotonic() < deadline:
            time.sleep(0.01)
            info = so.tcp_info(client)
        assert info.state == 1 and info.bytes_acked == 10_001  # the SYN counts one
        assert info.bytes_sent == 10_000 and info.snd_cwnd > 0 and info.rtt_us > 0
        assert so.is_mptcp(client) is False
        with pytest.raises(OSError):
            so.full_info(client)
