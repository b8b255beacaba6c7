"""Kernel build logic that needs no kernel build: cache keys, fragment checks,
patch-series bookkeeping, error excerpts."""

import os
import subprocess
import textwrap

import pytest

from bpfkit.kernel import kconfig
from bpfkit.kernel import kbuild
from bpfkit.errors import KernelBuildError, MissingDependency, UsageError

pytestmark = pytest.mark.unit


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------- cache key


def _key(**changes):
    inputs = {
        "source_identity": "debian:linux-source-6.12=6.12.117-1~deb12u1",
        "flavour": "default",
        "fragments": [("bpfkit.config", b"CONFIG_MPTCP=y\n")],
        "patches": [kbuild.Patch("0001-a.patch", b"a"), kbuild.Patch("0002-b.patch", b"b")],
    }
    inputs.update(changes)
    return kbuild.cache_key(**inputs)


def test_cache_key_is_stable_and_short():
    assert _key() == _key()
    assert len(_key()) == 16 and int(_key(), 16) >= 0


@pytest.mark.parametrize("change", [
    {"source_identity": "debian:linux-source-6.12=6.12.118-1"},
    {"flavour": "debug"},
    {"fragments": [("bpfkit.config", b"CONFIG_MPTCP=y\nCONFIG_VETH=y\n")]},
    {"patches": [kbuild.Patch("0001-a.patch", b"a"), kbuild.Patch("0002-b.patch", b"b changed")]},
    {"patches": [kbuild.Patch("0001-a.patch", b"a"), kbuild.Patch("0003-b.patch", b"b")]},
    {"patches": [kbuild.Patch("0002-b.patch", b"b"), kbuild.Patch("0001-a.patch", b"a")]},
    {"patches": []},
])
def test_cache_key_covers_every_input(change):
    assert _key(**change) != _key()


def test_real_inputs_resolve_without_building(cache):
    if not kbuild.DEBIAN_TARBALL.exists():
        pytest.skip("linux-source-6.12 not installed")
    inputs = kbuild.resolve_inputs(None, "default")
    assert inputs.source.kind == "debian" and inputs.source.major_minor == "6.12"
    assert [p.name for p in inputs.fragments] == ["bpfkit.config"]
    debug = kbuild.resolve_inputs(None, "debug")
    assert [p.name for p in debug.fragments] == ["bpfkit.config", "debug.config"]
    assert debug.key != inputs.key


def test_unknown_flavour_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown kernel flavour"):
        kbuild.fragment_paths("fast")


def test_source_that_is_not_a_kernel_tree(tmp_path):
    with pytest.raises(UsageError, match="not a kernel source tree"):
        kbuild.tree_source(tmp_path)


def _fake_kernel_tree(path, sublevel="117"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "Makefile").write_text(f"VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = {sublevel}\nEXTRAVERSION =\n")
    (path / "Kconfig").write_text("mainmenu \"Linux\"\n")
    (path / "net").mkdir(exist_ok=True)
    (path / "net/file.c").write_text("int x;\n")
    return path


def test_user_tree_identity_follows_git_changes(tmp_path):
    tree = _fake_kernel_tree(tmp_path / "linux")
    git = ["git", "-C", str(tree), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    source = kbuild.tree_source(tree)
    assert source.kind == "tree" and source.version == "6.12.117"
    assert source.identity.startswith("git:")
    (tree / "net/file.c").write_text("int y;\n")  # uncommitted edit
    edited = kbuild.tree_source(tree).identity
    assert edited != source.identity
    (tree / "net/new.c").write_text("int z;\n")  # untracked file
    assert kbuild.tree_source(tree).identity != edited


def test_user_tree_identity_without_git_uses_mtimes(tmp_path):
    tree = _fake_kernel_tree(tmp_path / "linux")
    first = kbuild.tree_identity(tree)
    assert first.startswith("mtime:") and kbuild.tree_identity(tree) == first
    os.utime(tree / "net/file.c", ns=(1, 1))
    assert kbuild.tree_identity(tree) != first


def test_makefile_version_with_extraversion(tmp_path):
    tree = _fake_kernel_tree(tmp_path / "linux", sublevel="0")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n")
    assert kbuild.makefile_version(tree) == "6.13.0-rc3"


# --------------------------------------------------------------------------- cached builds


def test_incomplete_kernel_dir_is_not_a_build(cache):
    key_dir = cache / "kernels" / "0123456789abcdef"
    key_dir.mkdir(parents=True)
    for name in ("bzImage", "vmlinux", "config", "build.log"):  # no kernel.json
        (key_dir / name).write_text("x")
    assert kbuild.load_cached("0123456789abcdef") is None
    (key_dir / "kernel.json").write_text('{"release": "6.12.117-bpfkit"}')
    build = kbuild.load_cached("0123456789abcdef")
    assert build.release == "6.12.117-bpfkit" and build.bzimage == key_dir / "bzImage"


def test_default_kernel_says_how_to_build_one(cache):
    if not kbuild.DEBIAN_TARBALL.exists():
        pytest.skip("linux-source-6.12 not installed")
    with pytest.raises(MissingDependency, match="run `bpfkit vm kernel`"):
        kbuild.default_kernel()
    with pytest.raises(MissingDependency, match="run `bpfkit vm kernel --flavour debug`"):
        kbuild.default_kernel("debug")


# --------------------------------------------------------------------------- fragments


def test_fragment_parsing_and_override(tmp_path):
    base = tmp_path / "a.config"
    base.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x\"\n# comment\nnoise\n")
    override = tmp_path / "b.config"
    override.write_text("CONFIG_A=m\nCONFIG_C=12\n")
    assert kconfig.read_fragments([base, override]) == {
        "CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_S": '"x"', "CONFIG_C": "12"}


def test_missing_options_reports_dropped_values():
    requested = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y", "CONFIG_D": "n"}
    actual = {"CONFIG_A": "y", "CONFIG_C": "m", "CONFIG_D": "y"}  # B absent counts as n
    dropped = kconfig.missing_options(requested, actual)
    assert [str(d) for d in dropped] == ["CONFIG_C: wanted y, got m", "CONFIG_D: wanted n, got y"]


def test_explain_option_names_the_unmet_dependency(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net/Kconfig").write_text(textwrap.dedent("""\
        config MPTCP_IPV6
        \tbool "MPTCP: IPv6 support"
        \tdepends on IPV6=y && MPTCP
        \thelp
        \t  depends on nothing here
        config OTHER
        \tdepends on SOMETHING_ELSE
        """))
    dropped = kconfig.DroppedOption("CONFIG_MPTCP_IPV6", "y", "n")
    text = kconfig.explain_option(tmp_path, dropped, {"CONFIG_MPTCP": "y", "CONFIG_IPV6": "m"})
    assert text == ("CONFIG_MPTCP_IPV6: wanted y, got n "
                    "(depends on IPV6=y && MPTCP; now IPV6=m, MPTCP=y)")
    unknown = kconfig.explain_option(tmp_path, kconfig.DroppedOption("CONFIG_GONE", "y", "n"), {})
    assert "no such symbol" in unknown


def test_shipped_fragments_parse_and_ask_for_the_essentials():
    requested = kconfig.read_fragments(kbuild.fragment_paths("default"))
    for name in ("CONFIG_MPTCP", "CONFIG_MPTCP_IPV6", "CONFIG_INET_MPTCP_DIAG", "CONFIG_BPF_JIT",
                 "CONFIG_DEBUG_INFO_BTF", "CONFIG_MODULES", "CONFIG_NET_9P_VIRTIO", "CONFIG_NET_SCH_NETEM",
                 "CONFIG_VETH", "CONFIG_MEMCG", "CONFIG_TCP_CONG_BBR", "CONFIG_IKCONFIG_PROC"):
        assert requested.get(name) == "y", name
    debug = kconfig.read_fragments(kbuild.fragment_paths("debug"))
    assert debug["CONFIG_PROVE_LOCKING"] == "y"
    assert debug["CONFIG_LOCALVERSION"] == '"-bpfkit-debug"'  # the later fragment wins
    assert "CONFIG_KASAN" not in debug  # too slow under TCG


# --------------------------------------------------------------------------- patch series


def _patch_for(tree, rel, old, new):
    """A -p1 unified diff turning `old` into `new` in tree/rel (made with diff(1))."""
    a = tree.parent / "a"
    b = tree.parent / "b"
    for side, text in ((a, old), (b, new)):
        (side / rel).parent.mkdir(parents=True, exist_ok=True)
        (side / rel).write_text(text)
    diff = subprocess.run(["diff", "-u", f"a/{rel}", f"b/{rel}"], cwd=tree.parent, capture_output=True)
    return diff.stdout


@pytest.fixture
def tree(tmp_path):
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "one.c").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    (tree / "two.c").write_text("alpha\nbeta\ngamma\n")
    return tree


def _series(tree):
    one = (tree / "one.c").read_text()
    p1 = _patch_for(tree, "one.c", one, one.replace("line 5\n", "line five\n"))
    two = (tree / "two.c").read_text()
    p2 = _patch_for(tree, "two.c", two, two.replace("beta\n", "BETA\n"))
    return [kbuild.Patch("0001-one.patch", p1), kbuild.Patch("0002-two.patch", p2)]


def test_sync_applies_then_switches_series_touching_only_changed_files(tree):
    pristine_one = (tree / "one.c").read_text()
    pristine_two = (tree / "two.c").read_text()
    series = _series(tree)
    kbuild.sync_patches(tree, series)
    assert "line five" in (tree / "one.c").read_text() and "BETA" in (tree / "two.c").read_text()
    assert [p.name for p in kbuild.applied_patches(tree)] == ["0001-one.patch", "0002-two.patch"]

    os.utime(tree / "one.c", ns=(1, 1))  # so we can see whether one.c is rewritten
    changed_two = _patch_for(tree, "two.c", pristine_two, pristine_two.replace("gamma\n", "GAMMA\n"))
    kbuild.sync_patches(tree, [series[0], kbuild.Patch("0002-two.patch", changed_two)])
    assert (tree / "one.c").stat().st_mtime_ns == 1  # common prefix left alone
    assert (tree / "two.c").read_text() == "alpha\nbeta\nGAMMA\n"

    kbuild.sync_patches(tree, [])
    assert (tree / "one.c").read_text() == pristine_one
    assert (tree / "two.c").read_text() == pristine_two
    assert kbuild.applied_patches(tree) == []


def test_patch_that_does_not_apply_names_patch_and_hunk_and_restores_tree(tree):
    pristine = {p.name: p.read_text() for p in tree.glob("*.c")}
    good = _series(tree)[0]
    bad = _patch_for(tree, "two.c", "alpha\nnot-in-tree\ngamma\n", "alpha\nreplaced\ngamma\n")
    with pytest.raises(KernelBuildError) as err:
        kbuild.sync_patches(tree, [good, kbuild.Patch("0002-bad.patch", bad)], "vm/patches/6.12/")
    message = str(err.value)
    assert "vm/patches/6.12/0002-bad.patch does not apply" in message
    assert "two.c: Hunk #1 FAILED" in message
    assert "-not-in-tree" in message and "+replaced" in message  # the rejected hunk itself
    assert {p.name: p.read_text() for p in tree.glob("*.c")} == pristine
    assert kbuild.applied_patches(tree) == []
    assert not list(tree.rglob("*.rej")) and not list(tree.rglob("*.orig"))


def test_recovers_from_a_kill_mid_apply(tree):
    patch = _series(tree)[0]
    applied_dir = tree / kbuild.APPLIED_DIR
    applied_dir.mkdir()
    # Killed after patch(1) ran but before the bookkeeping rename.
    (applied_dir / "0001-one.patch.staged").write_bytes(patch.content)
    (applied_dir / kbuild.PENDING_FILE).write_text("0001-one.patch\n")
    subprocess.run(["patch", "-p1", "-s", "-i", str(applied_dir / "0001-one.patch.staged")], cwd=tree, check=True)
    assert [p.name for p in kbuild.applied_patches(tree)] == ["0001-one.patch"]
    # Killed before patch(1) ran: the staged copy is simply dropped.
    (applied_dir / "0002-two.patch.staged").write_bytes(_series(tree)[1].content)
    (applied_dir / kbuild.PENDING_FILE).write_text("0002-two.patch\n")
    assert [p.name for p in kbuild.applied_patches(tree)] == ["0001-one.patch"]
    assert not list(applied_dir.glob("*.staged"))


def test_hunk_text_counts_hunks_per_file():
    patch = textwrap.dedent("""\
        --- a/x.c
        +++ b/x.c
        @@ -1,2 +1,2 @@
         keep
        -old1
        +new1
        --- a/y.c
        +++ b/y.c
        @@ -1,1 +1,1 @@
        -y-old
        +y-new
        @@ -10,2 +10,2 @@
         ctx
        --- removed line that looks like a header
        +++ added line that looks like a header
        """)
    assert kbuild.hunk_text(patch, "y.c", 2) == [
        "@@ -10,2 +10,2 @@", " ctx", "--- removed line that looks like a header",
        "+++ added line that looks like a header"]
    assert kbuild.hunk_text(patch, "x.c", 1)[-1] == "+new1"
    assert kbuild.hunk_text(patch, "x.c", 2) == []


# --------------------------------------------------------------------------- make output


def test_error_excerpt_prefers_error_lines_with_context():
    lines = [f"  CC      obj{i}.o" for i in range(100)]
    lines += ["net/mptcp/protocol.c: In function 'mptcp_foo':",
              "net/mptcp/protocol.c:42:9: error: 'x' undeclared (first use in this function)",
              "   42 |         x = 1;",
              "make[4]: *** [scripts/Makefile.build:229: net/mptcp/protocol.o] Error 1"]
    excerpt = kbuild.error_excerpt(lines)
    assert excerpt[0] == "  CC      obj99.o"
    assert "error: 'x' undeclared" in excerpt[2]
    assert excerpt[-1].startswith("make[4]: ***")
    assert len(excerpt) <= 30


def test_error_excerpt_falls_back_to_tail():
    lines = [f"line {i}" for i in range(100)]
    assert kbuild.error_excerpt(lines, limit=5) == [f"line {i}" for i in range(95, 100)]


def test_object_lines_are_what_progress_counts():
    progress = kbuild._Progress(enabled=False, total=10, label="t")
    for line in ["  CC      kernel/fork.o", "  LD [M]  net/x.ko", "  AR      lib/lib.a",
                 "  HOSTCC  scripts/x", "  GEN     Makefile", "CC not indented"]:
        progress.line(line)
    assert progress.count == 3
