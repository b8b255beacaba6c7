"""`bpfkit top` pieces that need no kernel: decoding sock_diag replies (byte
layouts of inet_diag_msg and the nested ULP attributes), rates from successive
samples, rendering and formatting."""

import socket
import struct

import pytest

from bpfkit import sock_diag, top
from bpfkit.mptcp_sockopt import MptcpInfo, TcpInfo

pytestmark = pytest.mark.unit


def rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes((-length) % 4)


def diag_msg(src: str, sport: int, dst: str, dport: int, cookie: int, attrs: bytes, state: int = 1) -> bytes:
    sockid = (struct.pack("!HH", sport, dport) + socket.inet_aton(src) + bytes(12) + socket.inet_aton(dst)
              + bytes(12) + struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32))
    return struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + sockid + struct.pack("=5I", 0, 0, 0, 0, 4242) + attrs


def tcp_info_bytes(**fields) -> bytes:
    buf = bytearray(248)
    offsets = {"rtt_us": (68, "I"), "snd_cwnd": (80, "I"), "total_retrans": (100, "I"), "bytes_acked": (120, "Q"),
               "bytes_received": (128, "Q"), "bytes_sent": (200, "Q")}
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into("=" + fmt, buf, offset, value)
    return bytes(buf)


def test_decodes_a_subflow_with_its_mptcp_ulp_info():
    mptcp_attrs = (rta(sock_diag.MPTCP_SUBFLOW_ATTR_TOKEN_REM, struct.pack("=I", 0x11))
                   + rta(sock_diag.MPTCP_SUBFLOW_ATTR_TOKEN_LOC, struct.pack("=I", 0xDEADBEEF))
                   + rta(sock_diag.MPTCP_SUBFLOW_ATTR_FLAGS, struct.pack("=I", sock_diag.MPTCP_SUBFLOW_FLAG_BKUP_LOC))
                   + rta(sock_diag.MPTCP_SUBFLOW_ATTR_ID_LOC, b"\x02")
                   + rta(sock_diag.MPTCP_SUBFLOW_ATTR_ID_REM, b"\x00"))
    ulp = rta(sock_diag.INET_ULP_INFO_NAME, b"mptcp\0") + rta(0x8000 | sock_diag.INET_ULP_INFO_MPTCP, mptcp_attrs)
    payload = diag_msg("10.2.1.1", 40000, "10.1.2.2", 5201, 0x1_0000_0007,
                       rta(sock_diag.INET_DIAG_INFO, tcp_info_bytes(rtt_us=20500, snd_cwnd=12, bytes_sent=999))
                       + rta(0x8000 | sock_diag.INET_DIAG_ULP_INFO, ulp))
    sock = sock_diag._parse_diag_msg(payload)
    assert (sock.local, sock.remote, sock.cookie, sock.inode) == (("10.2.1.1", 40000), ("10.1.2.2", 5201),
                                                                   0x1_0000_0007, 4242)
    sub = sock_diag._subflow_of(sock)
    assert sub.token_local == 0xDEADBEEF and sub.token_remote == 0x11
    assert (sub.id_local, sub.id_remote, sub.backup) == (2, 0, True)
    assert (sub.tcp.rtt_us, sub.tcp.snd_cwnd, sub.tcp.bytes_sent) == (20500, 12, 999)


def test_plain_tcp_and_other_ulps_are_not_subflows():
    plain = sock_diag._parse_diag_msg(diag_msg("1.1.1.1", 1, "2.2.2.2", 2, 1, rta(2, tcp_info_bytes())))
    tls = sock_diag._parse_diag_msg(diag_msg("1.1.1.1", 1, "2.2.2.2", 2, 1,
                                             rta(sock_diag.INET_DIAG_ULP_INFO, rta(1, b"tls\0"))))
    assert sock_diag._subflow_of(plain) is None and sock_diag._subflow_of(tls) is None


def subflow(cookie, sent, received=0, local=("10.1.1.1", 1000), backup=False):
    tcp = TcpInfo.decode(tcp_info_bytes(bytes_sent=sent, bytes_received=received, bytes_acked=sent, rtt_us=100,
                                        snd_cwnd=10))
    return sock_diag.Subflow(local=local, remote=("10.1.2.2", 5201), state="ESTAB", cookie=cookie, token_local=7,
                             token_remote=8, id_local=0, id_remote=0, backup=backup, tcp=tcp)


def connection(subflows):
    info = MptcpInfo.decode(struct.pack("=6B2xII", 1, 0, 0, 2, 0, 0, 0, 7) + bytes(80))
    return sock_diag.Connection(local=("10.1.1.1", 1000), remote=("10.1.2.2", 5201), state="ESTAB", cookie=1,
                                token=7, info=info, subflows=subflows)


def test_rates_come_from_successive_samples(monkeypatch):
    samples = iter([
        [connection([subflow(1, 1000), subflow(2, 0, local=("10.2.1.1", 1001), backup=True)])],
        [connection([subflow(1, 1_251_000), subflow(2, 0, local=("10.2.1.1", 1001), backup=True)])],
        [connection([subflow(3, 500)])],  # subflows 1 and 2 gone, a new one
    ])
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(sock_diag, "connections", lambda: next(samples))
    monkeypatch.setattr(top.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(top, "netns_scheduler", lambda: "bpf_rr")
    sampler = top.Sampler()
    first = sampler.sample()
    assert [sf["send_bps"] for sf in first["connections"][0]["subflows"]] == [None, None]
    second = sampler.sample()
    conn = second["connections"][0]
    assert [sf["send_bps"] for sf in conn["subflows"]] == [10_000_000.0, 0.0]  # 1.25 MB in 1 s
    assert conn["send_bps"] == 10_000_000.0 and conn["token"] == "00000007"
    assert conn["scheduler"] == "bpf_rr" and conn["scheduler_source"] == "netns default"
    third = sampler.sample()
    assert third["connections"][0]["subflows"][0]["send_bps"] is None  # new subflow: no rate yet


def test_table_shows_connection_then_subflows():
    from rich.console import Console

    sample = {"netns": "ns1", "scheduler": "default", "connections": [{
        "token": "00000007", "local": "10.1.1.1:1000", "remote": "10.1.2.2:5201", "state": "ESTAB",
        "fallback": False, "send_bps": 2e6, "recv_bps": 0.0, "retransmits": 0, "subflows": [
            {"local": "10.1.1.1:1000", "remote": "10.1.2.2:5201", "state": "ESTAB", "id_local": 0, "backup": False,
             "send_bps": 2e6, "recv_bps": 0.0, "srtt_us": 20500, "cwnd": 12, "retrans": 3}]}]}
    console = Console(width=160, record=True)
    console.print(top.render_table(sample))
    text = console.export_text()
    assert "scheduler: default (netns default)" in text and "netns ns1" in text
    assert "token 00000007" in text and "└ subflow id 0" in text
    assert "2.0 Mbit/s" in text and "20.5 ms" in text


@pytest.mark.parametrize("value, text", [(None, "–"), (0, "0 bit/s"), (999, "999 bit/s"), (1500, "1.5 kbit/s"),
                                         (2.5e6, "2.5 Mbit/s"), (1.2e10, "12.0 Gbit/s")])
def test_format_bps(value, text):
    assert top.format_bps(value) == text


def test_netns_name_is_validated():
    from bpfkit import netns
    from bpfkit.errors import UsageError

    for bad in ("", "../x", "a/b", ".", ".."):
        with pytest.raises(UsageError):
            with netns.entered(bad):
                pass
