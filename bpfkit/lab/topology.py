"""Network topology for one lab run, built with pyroute2:

    client netns            router netns                    server netns
    eth0 10.1.1.1 ── veth ── cli0 10.1.1.2 | srv0 10.1.2.1 ── veth ── eth0 10.1.2.2
    eth1 10.2.1.1 ── veth ── cli1 10.2.1.2 | srv1 10.2.2.1 ── veth ── eth1 10.2.2.2
    ...                      (shaping on cli*/srv* egress)

Why a router namespace: shaping must sit on a *forwarding* hop. A netem delay line
on the sender's own interface keeps the skbs charged to the sending socket, so
TCP Small Queues throttles the sender and the path never fills.

A path is identified by the client address: the client routes by source address
(one policy-routing table per path) and the router by input interface, so a
subflow bound to 10.k.1.1 really takes path k in both directions. The server
routes by destination (the client subnets), which sends replies back the same way.

GSO is limited to one segment on the client and server interfaces so a "packet"
in the queue limits, loss rates and tc statistics is one wire packet, not a
64 KB super-packet.

Everything lives inside our own namespaces (the veth pairs are created directly
in them), so removing the three namespaces removes every link, route and qdisc.
Names are `bpfkit-lab-<pid>-<n>-{client,router,server}`; `remove_stale()` clears
namespaces of runs whose process is gone (e.g. after SIGKILL).
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bpfkit import pyroute2_lean

pyroute2_lean.use()  # before any pyroute2 import: only the submodules below (see the module)

from pyroute2.iproute import IPRoute  # noqa: E402
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.generic.mptcp import MPTCP  # noqa: E402
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT  # noqa: E402
from pyroute2.netlink.rtnl.tcmsg import sched_netem, sched_tbf, tcmsg  # noqa: E402

from bpfkit import netns as namespaces  # pyroute2 has a `netns` of its own
from bpfkit.errors import BpfkitError, KernelUnsupported, UsageError
from bpfkit.lab.scenario import MTU_FRAME, PathSpec

NETNS_PREFIX = "bpfkit-lab-"
NETNS_PATTERN = re.compile(rf"^{NETNS_PREFIX}(\d+)-(\d+)-(client|router|server)$")

# MPTCP_PM_ADDR_FLAG_* (include/uapi/linux/mptcp.h)
ENDPOINT_SIGNAL = 0x01
ENDPOINT_SUBFLOW = 0x02
ENDPOINT_BACKUP = 0x04

_ROUTE_TABLE_BASE = 100
_counter = itertools.count()
NETLINK_GENERIC = 16


# pyroute2 0.9 forks a helper process for each namespace it creates and each socket it opens
# in one (its netns= argument); bpfkit.netns does both on a thread, and pyroute2 gets the socket.
def rtnl(ns: str) -> IPRoute:
    """rtnetlink in namespace `ns`."""
    return namespaces.iproute_in(ns)


def mptcp_pm(ns: str) -> MPTCP:
    """The MPTCP path manager's generic netlink family in namespace `ns`."""
    fd = namespaces.socket_in(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_GENERIC).detach()
    try:
        return MPTCP(fileno=fd)
    except BaseException:
        os.close(fd)  # MPTCP owns it only once constructed, as in netns.iproute_in
        raise


class TopologyError(BpfkitError):
    """Building or changing the lab network failed."""


@dataclass(frozen=True)
class PathAddresses:
    index: int
    client: str  # client side of the client↔router link: identifies the path
    router_client_side: str
    router_server_side: str
    server: str

    @classmethod
    def for_index(cls, index: int) -> PathAddresses:
        k = index + 1
        return cls(index, f"10.{k}.1.1", f"10.{k}.1.2", f"10.{k}.2.1", f"10.{k}.2.2")


# ---------------------------------------------------------------- helpers


def _rate_bytes(bps: float) -> int:
    return max(1, int(bps / 8))


def run_in_netns(ns: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command inside a namespace (argument list, never a shell)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)


@functools.cache
def detect_shaping() -> str:
    """'netem' if the kernel has the netem qdisc, else 'tbf' (rate only). Probed
    once per process in a scratch namespace."""
    probe = f"{NETNS_PREFIX}{os.getpid()}-{next(_counter)}-router"
    namespaces.create(probe)
    try:
        with rtnl(probe) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            try:
                ns.tc("add", "netem", lo, delay=1000)
                return "netem"
            except NetlinkError as exc:
                if exc.code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
                    return "tbf"
                raise
    finally:
        namespaces.remove(probe)


SHAPING_NOTES = {
    "netem": "netem: rate, delay, jitter, loss and queue limits are emulated",
    "tbf": "tbf (this kernel has no netem): only rates and queue limits are emulated; delay, jitter and loss are NOT, so the numbers are rate-only",
    "none": "no shaping: veth links run at memory speed",
}


def remove_stale() -> list[str]:
    """Remove lab namespaces whose creating process no longer exists."""
    removed = []
    for name in namespaces.names():
        match = NETNS_PATTERN.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            continue  # the owner is alive (or pid reused): leave it alone
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        namespaces.remove(name)
        removed.append(name)
    return removed


# ---------------------------------------------------------------- topology


class Topology:
    """Client, router and server namespaces with one shaped path per PathSpec.
    Use as a context manager; teardown also runs on error and on Ctrl-C (the
    caller turns SIGTERM into KeyboardInterrupt, see runner.terminate_on_sigterm)."""

    def __init__(self, paths: Sequence[PathSpec], *, server_signal: bool = False, shaping: str = "auto",
                 buffers: dict[str, int] | None = None):
        if not paths:
            raise UsageError("a topology needs at least one path")
        if shaping not in ("auto", "netem", "tbf", "none"):
            raise UsageError(f"unknown shaping mode {shaping!r}")
        self.paths = {p.name: p for p in paths}
        self.order = [p.name for p in paths]
        self.server_signal = server_signal
        self.buffers = dict(buffers or {})  # scenario [buffers]: "client_receive" etc. -> bytes
        self.requested_shaping = shaping
        self.shaping = shaping
        tag = f"{NETNS_PREFIX}{os.getpid()}-{next(_counter)}"
        self.client_ns = f"{tag}-client"
        self.router_ns = f"{tag}-router"
        self.server_ns = f"{tag}-server"
        self.addresses = {name: PathAddresses.for_index(i) for i, name in enumerate(self.order)}
        self.down: set[str] = set()
        self._processes: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._owner_pid = os.getpid()

    # ---- addresses
    @property
    def namespaces(self) -> list[str]:
        return [self.client_ns, self.router_ns, self.server_ns]

    @property
    def server_address(self) -> str:
        """Where the client connects: the server's address on the first path."""
        return self.addresses[self.order[0]].server

    def client_address(self, path: str) -> str:
        return self.addresses[path].client

    def path_of_address(self, address: str) -> str | None:
        """Path name for a client-side address (or a server-side one)."""
        for name, a in self.addresses.items():
            if address in (a.client, a.server):
                return name
        return None

    def ns(self, side: str) -> str:
        return {"client": self.client_ns, "router": self.router_ns, "server": self.server_ns}[side]

    def buffer_sysctls(self) -> dict[str, dict[str, str]]:
        """Per side, the tcp_rmem/tcp_wmem that cap its socket buffers (per netns since Linux
        4.15). Their third value bounds the buffer autotuning grows to, which an MPTCP socket
        follows too (mptcp_rcv_space_adjust, its send buffer from its subflows'); the initial
        value is the kernel's default (128 KiB receive, 16 KiB send), or the cap if smaller."""
        out: dict[str, dict[str, str]] = {}
        for key, size in sorted(self.buffers.items()):
            side, direction = key.split("_")
            name, initial = ("net.ipv4.tcp_rmem", 131072) if direction == "receive" else ("net.ipv4.tcp_wmem", 16384)
            out.setdefault(side, {})[name] = f"4096 {min(initial, size)} {size}"
        return out

    # ---- lifecycle
    def __enter__(self) -> Topology:
        self.setup()
        return self

    def __exit__(self, *exc_info) -> None:
        self.teardown()

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise KernelUnsupported("the lab needs root (network namespaces)", hint="run as root, or use --vm")
        if self.requested_shaping == "auto":
            self.shaping = detect_shaping()
        elif self.requested_shaping == "netem" and detect_shaping() != "netem":
            raise KernelUnsupported(f"kernel {os.uname().release} has no netem qdisc", hint="use --shaping tbf (rate only) or --vm")
        try:
            for name in self.namespaces:
                namespaces.create(name)
                self._created.append(name)
            # Before any interface exists so new interfaces inherit it: our paths are
            # asymmetric by design (replies to a path-k address come back on path k
            # whatever the main table says), which strict reverse-path filtering drops.
            # The lab is IPv4 only; IPv6 would add neighbour discovery and MLD chatter
            # to the paths' packet counts (-e: those keys are absent without IPv6).
            base = {
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
            }
            namespaces.sysctl_write(self.router_ns, {**base, "net.ipv4.ip_forward": "1"}, ignore_missing=True)
            namespaces.sysctl_write(self.client_ns, base, ignore_missing=True)
            namespaces.sysctl_write(self.server_ns, base, ignore_missing=True)
            for side, settings in self.buffer_sysctls().items():
                namespaces.sysctl_write(self.ns(side), settings)
            self._build_links()
            self._configure_mptcp()
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop our processes, then delete the namespaces (which deletes the veths,
        routes and qdiscs inside them). Safe to call twice, and a no-op in a
        forked copy of this process (pyroute2 forks helpers)."""
        if os.getpid() != self._owner_pid:
            return
        for proc in self._processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for proc in self._processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self._processes.clear()
        for name in reversed(self._created):
            try:
                namespaces.remove(name)
            except FileNotFoundError:
                pass
        self._created.clear()

    # ---- building
    def _build_links(self) -> None:
        with rtnl(self.client_ns) as cli, rtnl(self.router_ns) as rtr, rtnl(self.server_ns) as srv:
            for ipr in (cli, rtr, srv):
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for name in self.order:
                a = self.addresses[name]
                i = a.index
                # gso_max_segs=1: every skb the sockets emit is one wire packet.
                rtr.link("add", ifname=f"cli{i}", kind="veth", peer={"ifname": f"eth{i}", "net_ns_fd": self.client_ns, "gso_max_segs": 1})
                rtr.link("add", ifname=f"srv{i}", kind="veth", peer={"ifname": f"eth{i}", "net_ns_fd": self.server_ns, "gso_max_segs": 1})
                for ipr, ifname, address in (
                    (cli, f"eth{i}", a.client),
                    (rtr, f"cli{i}", a.router_client_side),
                    (rtr, f"srv{i}", a.router_server_side),
                    (srv, f"eth{i}", a.server),
                ):
                    index = ipr.link_lookup(ifname=ifname)[0]
                    ipr.addr("add", index=index, address=address, prefixlen=24)
                    ipr.link("set", index=index, state="up")
                table = _ROUTE_TABLE_BASE + i + 1
                self._add_client_routes(cli, name)
                cli.rule("add", src=a.client, src_len=32, table=table, priority=table)
                rtr.route("add", dst="0.0.0.0/0", gateway=a.server, oif=rtr.link_lookup(ifname=f"srv{i}")[0], table=table)
                rtr.rule("add", iifname=f"cli{i}", table=table, priority=table)
                srv.route("add", dst=f"10.{i + 1}.1.0/24", gateway=a.router_server_side, oif=srv.link_lookup(ifname=f"eth{i}")[0])
                self._shape(rtr, name)

    def _add_client_routes(self, cli: IPRoute, name: str) -> None:
        a = self.addresses[name]
        oif = cli.link_lookup(ifname=f"eth{a.index}")[0]
        cli.route("replace", dst="0.0.0.0/0", gateway=a.router_client_side, oif=oif, table=_ROUTE_TABLE_BASE + a.index + 1)
        if a.index == 0:  # unbound sockets (the initial subflow) use the first path
            cli.route("replace", dst="0.0.0.0/0", gateway=a.router_client_side, oif=oif)

    def queue_limit_packets(self, path: PathSpec) -> int:
        """netem's `limit` counts every packet it holds, including those waiting in
        the delay line, so it is the path's queue plus the packets in flight
        over delay + jitter at the path rate."""
        in_delay_line = path.rate_bps / 8 * (path.delay_s + path.jitter_s) / MTU_FRAME
        return path.queue_packets + int(in_delay_line) + 1

    def _qdisc_args(self, path: PathSpec) -> tuple[str, dict]:
        if self.shaping == "netem":
            return "netem", {
                "delay": int(path.delay_s * 1e6),  # µs
                "jitter": int(path.jitter_s * 1e6),
                "loss": path.loss_pct,
                "rate": _rate_bytes(path.rate_bps),
                "limit": self.queue_limit_packets(path),
            }
        # tbf: a token bucket of ~2 ms of traffic (at least two full packets)
        # and a byte limit equal to the path's queue.
        burst = max(2 * MTU_FRAME, int(path.rate_bps / 8 * 0.002))
        return "tbf", {"rate": _rate_bytes(path.rate_bps), "burst": burst, "limit": path.queue_packets * MTU_FRAME + burst}

    def _shape(self, rtr: IPRoute, name: str) -> None:
        """Create or replace the root qdisc of both router interfaces of a path
        (replacing netem or tbf with the same kind keeps its queue)."""
        if self.shaping == "none":
            return
        kind, args = self._qdisc_args(self.paths[name])
        options = (sched_netem if kind == "netem" else sched_tbf).get_parameters(args)
        i = self.addresses[name].index
        for ifname in (f"cli{i}", f"srv{i}"):
            # A hand-built request rather than rtr.tc(): tc() also encodes every
            # keyword that matches a tcmsg attribute, so netem's `rate` becomes a
            # bogus TCA_RATE and the request fails to encode (pyroute2 0.9).
            msg = tcmsg()
            msg["index"] = rtr.link_lookup(ifname=ifname)[0]
            msg["handle"] = 0x10000
            msg["parent"] = TC_H_ROOT
            msg["attrs"] = [["TCA_KIND", kind], ["TCA_OPTIONS", options]]
            msg["header"]["type"] = RTM_NEWQDISC
            msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
            rtr.nlm_request_batch([msg])

    def _configure_mptcp(self) -> None:
        extra = len(self.order) - 1
        client = mptcp_pm(self.client_ns)
        server = mptcp_pm(self.server_ns)
        try:
            client.limits("set", subflows=extra, add_addr_accepted=extra if self.server_signal else 0)
            server.limits("set", subflows=extra, add_addr_accepted=0)
            for name in self.order[1:]:
                flags = ENDPOINT_SUBFLOW | (ENDPOINT_BACKUP if self.paths[name].backup else 0)
                client.endpoint("add", addr=self.addresses[name].client, flags=flags)
                if self.server_signal:
                    server.endpoint("add", addr=self.addresses[name].server, flags=ENDPOINT_SIGNAL)
        except NetlinkError as exc:
            raise TopologyError(f"configuring MPTCP endpoints/limits failed: {exc}") from exc
        finally:
            client.close()
            server.close()

    def mptcp_endpoints(self, side: str = "client") -> list[dict]:
        """The MPTCP endpoints of one side, as {'addr', 'id', 'flags'} dicts."""
        sock = mptcp_pm(self.ns(side))
        try:
            out = []
            for msg in sock.endpoint("show"):
                attrs = dict(msg.get_attr("MPTCP_PM_ATTR_ADDR")["attrs"])
                out.append({"addr": attrs.get("MPTCP_PM_ADDR_ATTR_ADDR4"), "id": attrs.get("MPTCP_PM_ADDR_ATTR_ID"), "flags": attrs.get("MPTCP_PM_ADDR_ATTR_FLAGS")})
            return out
        finally:
            sock.close()

    # ---- schedulers
    def available_schedulers(self, side: str = "server") -> list[str]:
        try:
            return namespaces.sysctl_read(self.ns(side), "net.mptcp.available_schedulers").split()
        except BpfkitError:
            return ["default"]  # kernels before 6.10 only list via net.mptcp.scheduler

    def set_scheduler(self, name: str) -> None:
        """Select the MPTCP scheduler in client and server namespaces (new sockets
        pick it up at creation; accepted sockets inherit the listener's)."""
        available = self.available_schedulers()
        if name not in available:
            raise UsageError(
                f"MPTCP scheduler {name!r} is not registered in this kernel (available: {' '.join(available)})",
                hint="load (register) the BPF scheduler before running the lab",
            )
        for ns in (self.client_ns, self.server_ns):
            namespaces.sysctl_write(ns, {"net.mptcp.scheduler": name})

    # ---- processes
    def netns_argv(self, side: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(side), *argv]

    def run(self, side: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return run_in_netns(self.ns(side), argv, **kwargs)

    def popen(self, side: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a process in a namespace, in its own session (so a terminal Ctrl-C
        reaches only us and teardown decides), killed at teardown."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.netns_argv(side, argv), **kwargs)
        self._processes.append(proc)
        return proc

    # ---- events
    def path_down(self, name: str) -> None:
        """Unplug the path: both ends of its client↔router link go down (the
        client's routes through it disappear, like a radio losing its link)."""
        i = self.addresses[name].index
        with rtnl(self.client_ns) as cli, rtnl(self.router_ns) as rtr:
            cli.link("set", index=cli.link_lookup(ifname=f"eth{i}")[0], state="down")
            rtr.link("set", index=rtr.link_lookup(ifname=f"cli{i}")[0], state="down")
        self.down.add(name)

    def path_up(self, name: str) -> None:
        i = self.addresses[name].index
        with rtnl(self.client_ns) as cli, rtnl(self.router_ns) as rtr:
            rtr.link("set", index=rtr.link_lookup(ifname=f"cli{i}")[0], state="up")
            cli.link("set", index=cli.link_lookup(ifname=f"eth{i}")[0], state="up")
            self._add_client_routes(cli, name)  # the kernel dropped them on link down
        self.down.discard(name)

    def set_path(self, name: str, path: PathSpec) -> None:
        """Change rate/delay/jitter/loss/queue of a path in place."""
        self.paths[name] = path
        with rtnl(self.router_ns) as rtr:
            self._shape(rtr, name)

    def qdisc_stats(self) -> dict[str, dict[str, dict]]:
        """Per path, per direction: packets, bytes, drops, overlimits, backlog."""
        out: dict[str, dict[str, dict]] = {}
        with rtnl(self.router_ns) as rtr:
            names = {}
            for name in self.order:
                i = self.addresses[name].index
                names[rtr.link_lookup(ifname=f"cli{i}")[0]] = (name, "to_client")
                names[rtr.link_lookup(ifname=f"srv{i}")[0]] = (name, "to_server")
            for msg in rtr.get_qdiscs():
                key = names.get(msg["index"])
                if key is None or msg["parent"] != 0xFFFFFFFF:
                    continue
                stats = msg.get_attr("TCA_STATS2")
                basic = dict(stats.get_attr("TCA_STATS_BASIC") or {}) if stats else {}
                queue = dict(stats.get_attr("TCA_STATS_QUEUE") or {}) if stats else {}
                out.setdefault(key[0], {})[key[1]] = {
                    "qdisc": msg.get_attr("TCA_KIND"),
                    "bytes": basic.get("bytes", 0),
                    "packets": basic.get("packets", 0),
                    "drops": queue.get("drops", 0),
                    "overlimits": queue.get("overlimits", 0),
                    "backlog": queue.get("backlog", 0),
                }
        return out
