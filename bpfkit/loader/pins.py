"""The one pin lifecycle under the three pillars (mptcpize, subflow, sched).

Everything bpfkit keeps attached lives in bpffs under PIN_ROOT, one directory per
attachment (a `PinDir`):

    PIN_ROOT/mptcpize/                {selected_cgroups, excluded_comms, link}
    PIN_ROOT/subflow/<cgroup id>/     {rules, policy, rule_stats, totals, policy_info, link}
    PIN_ROOT/sched/<name>/            {link}

and follows one life:

  * commit: pin the maps, then the link, last. Until the link pin exists the link and
    its program live only in the committing process's descriptors and die with it
    (a kill -9 detaches them), so "no link pin" means "not attached", whatever else
    is there.
  * reopen: the link and maps from their pins.
  * remove: the link pin first (BPF_LINK_DETACH: detached now, not when the last
    descriptor goes), then the map pins, then the directory.
  * garbage: a directory without its link pin is what a commit killed half-way left;
    the next command under the lock removes it.

One lock for all of it: an exclusive flock on PIN_ROOT itself, a directory only root
can open (fs.private_dir: created 0700, refused if anyone else could have made it;
flock works on a read-only descriptor, so whoever can open a lock can hold it).
PIN_ROOT is never removed, so a lock taken on it always locks the live directory.
The kernel releases the lock when its holder dies.

A record of what was committed, where a pillar needs one beyond its maps, is kept by
the pillar (sched's JSON records under /run; subflow's description in its
`policy_info` map): bpffs holds only pins and directories."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from bpfkit import fs
from bpfkit.loader import libbpf
from bpfkit.paths import PIN_ROOT

LINK = "link"


def _no_step(_name: str) -> None:
    pass


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """The lock of all of bpfkit's pinned state (see the module docstring)."""
    libbpf.ensure_bpffs()
    fs.private_dir(PIN_ROOT)
    fd = os.open(PIN_ROOT, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def kind_dir(kind: str) -> Path:
    """PIN_ROOT/<kind>: a pillar's directory, checked root's own (call under the lock)."""
    return _private_dirs_down_to(PIN_ROOT / kind)


def _private_dirs_down_to(path: Path) -> Path:
    """PIN_ROOT and every directory from it down to `path`, each root's own and 0700."""
    relative = path.relative_to(PIN_ROOT)  # ValueError: not under PIN_ROOT, a bpfkit bug
    current = fs.private_dir(PIN_ROOT)
    for part in relative.parts:
        current = fs.private_dir(current / part)
    return current


def remove_if_empty(directory: Path) -> None:
    """Leave no trace in bpffs: a pillar's directory goes once nothing is pinned in it."""
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()


class PinDir:
    """One attachment's pins: maps named `maps`, and the link (the commit point)."""

    def __init__(self, path: Path, maps: tuple[str, ...] = ()):
        self.path = Path(path)
        self.maps = tuple(maps)

    @property
    def link_pin(self) -> Path:
        return self.path / LINK

    def committed(self) -> bool:
        return self.link_pin.exists()

    def exists(self) -> bool:
        return self.path.exists()

    def commit(self, link: libbpf.Link, maps: dict[str, libbpf.Map],
               step: Callable[[str], None] = _no_step) -> dict:
        """Pin `maps`, then the link. Returns the link's info. On any failure the pins
        made here are removed (the caller still owns, and detaches, the link)."""
        if set(maps) != set(self.maps):
            raise ValueError(f"{self.path}: commit of maps {sorted(maps)}, expected {sorted(self.maps)}")
        _private_dirs_down_to(self.path)
        try:
            for name in self.maps:
                maps[name].pin(self.path / name)
                step(f"pinned-{name}")
            info = link.info()
            link.pin(self.link_pin)
            step("link-pinned")
            return info
        except BaseException:
            self._unpin_maps()
            raise

    def open_link(self) -> libbpf.Link:
        return libbpf.Link.from_pin(self.link_pin)

    def open_maps(self) -> dict[str, libbpf.Map]:
        """The pinned maps by name; closes what it opened if one is missing."""
        out: dict[str, libbpf.Map] = {}
        try:
            for name in self.maps:
                out[name] = libbpf.Map.from_pin(self.path / name)
        except BaseException:
            for m in out.values():
                m.close()
            raise
        return out

    def remove(self, step: Callable[[str], None] = _no_step) -> bool:
        """Detach (link pin first), unpin the maps, remove the directory. False if
        there was nothing."""
        if not self.path.exists():
            return False
        if self.link_pin.exists():
            self.open_link().detach()  # BPF_LINK_DETACH now, then the pin goes
            step("link-unpinned")
        self._unpin_maps()
        return True

    def collect_uncommitted(self) -> bool:
        """Remove what a commit killed before its link pin left (map pins only: their
        link died with the process). True if there was such garbage."""
        if not self.path.exists() or self.committed():
            return False
        self._unpin_maps()
        return True

    def _unpin_maps(self) -> None:
        for name in self.maps:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        with contextlib.suppress(FileNotFoundError, OSError):  # OSError: not empty (a link pin stays)
            self.path.rmdir()
