"""bpfkit.netns on the host kernel (root): a sysctl written in a namespace is that
namespace's alone, the calling thread comes back, errors cross the helper thread,
a namespace it creates is one `ip netns` sees and enters (and gone after remove), a
socket it opens lives in that namespace, and names that are not `ip netns` names
(or a planted symlink) are refused."""

import errno
import os
import socket
import subprocess
import threading

import pytest
from hypothesis import given, strategies as st
from pyroute2 import netns as pyroute2_netns

from bpfkit import netns
from bpfkit.errors import BpfkitError, UsageError

pytestmark = pytest.mark.host


@pytest.fixture
def namespace():
    name = f"bpfkit-test-netns-{os.getpid()}"
    pyroute2_netns.create(name)
    try:
        yield name
    finally:
        pyroute2_netns.remove(name)


def own_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_a_sysctl_written_in_a_namespace_stays_there(namespace):
    host_value = netns.sysctl_read(None, "net.ipv4.ip_forward")
    inside = "0" if host_value == "1" else "1"
    netns.sysctl_write(namespace, {"net.ipv4.ip_forward": inside})
    assert netns.sysctl_read(namespace, "net.ipv4.ip_forward") == inside
    assert netns.sysctl_read(None, "net.ipv4.ip_forward") == host_value
    assert namespace in netns.names() and not netns.is_current(namespace)


def test_entered_moves_this_thread_and_brings_it_back(namespace):
    home = own_netns_inode()
    with netns.entered(namespace):
        assert own_netns_inode() == os.stat(netns.path(namespace)).st_ino != home
    assert own_netns_inode() == home
    with pytest.raises(RuntimeError):
        with netns.entered(namespace):
            raise RuntimeError("inside")
    assert own_netns_inode() == home


def test_call_in_runs_elsewhere_and_raises_here(namespace):
    home = own_netns_inode()
    seen = netns.call_in(namespace, own_netns_inode)
    assert seen == os.stat(netns.path(namespace)).st_ino != home
    assert own_netns_inode() == home and threading.active_count() >= 1
    with pytest.raises(BpfkitError, match="no sysctl net.ipv4.no_such_key"):
        netns.sysctl_read(namespace, "net.ipv4.no_such_key")
    netns.sysctl_write(namespace, {"net.ipv4.no_such_key": "1"}, ignore_missing=True)  # skipped, no error
    with pytest.raises(BpfkitError, match="no sysctl"):
        netns.sysctl_write(namespace, {"net.ipv4.no_such_key": "1"})


def test_created_namespace_is_iproute2s_and_removed_with_nothing_left():
    name = f"bpfkit-test-created-{os.getpid()}"
    home = own_netns_inode()
    netns.create(name)
    try:
        assert own_netns_inode() == home  # the helper thread moved, not us
        inode = os.stat(netns.path(name)).st_ino
        assert inode != home
        # iproute2 lists it and its processes run in it (a fresh namespace: only lo, down)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        seen = subprocess.run(["ip", "netns", "exec", name, "readlink", "/proc/self/ns/net"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert seen == f"net:[{inode}]"
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert links.count("\n") == 1 and "lo:" in links
        with pytest.raises(UsageError, match="exists already"):
            netns.create(name)
        # a socket opened there is that namespace's: its lo is down, so 127.0.0.1 is unreachable
        # (here it would be refused)
        with netns.socket_in(name, socket.AF_INET, socket.SOCK_STREAM) as sock:
            with pytest.raises(OSError) as exc:
                sock.connect(("127.0.0.1", 9))
            assert exc.value.errno == errno.ENETUNREACH
        # pyroute2 on a socket of it sees that namespace's links: lo alone
        with netns.iproute_in(name) as ipr:
            assert [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()] == ["lo"]
    finally:
        netns.remove(name)
    assert name not in netns.names() and not (netns.NETNS_DIR / name).exists()
    with pytest.raises(FileNotFoundError):
        netns.remove(name)


def test_a_missing_namespace_is_one_clear_error():
    with pytest.raises(UsageError, match="no network namespace 'bpfkit-no-such-netns'"):
        netns.sysctl_read("bpfkit-no-such-netns", "net.ipv4.ip_forward")
    with pytest.raises(UsageError, match="no network namespace 'bpfkit-no-such-netns'"):
        netns.iproute_in("bpfkit-no-such-netns")


def test_a_symlink_in_the_netns_directory_is_not_entered(namespace):
    link = netns.NETNS_DIR / f"bpfkit-test-link-{os.getpid()}"
    link.symlink_to(netns.NETNS_DIR / namespace)
    try:
        with pytest.raises(UsageError, match="symlink"):
            with netns.entered(link.name):
                pass
    finally:
        link.unlink()


@given(st.text(max_size=20))
def test_only_single_printable_path_components_are_names(name):
    ok = bool(name) and "/" not in name and name not in (".", "..") and name.isprintable()
    if ok:
        assert netns.check_name(name) == name
    else:
        with pytest.raises(UsageError, match="invalid network namespace name"):
            netns.check_name(name)
    for key in ("net..x", "net./x", "../etc", "x"):
        with pytest.raises(UsageError):
            netns.sysctl_file(key)
