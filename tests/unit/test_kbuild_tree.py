"""Kernel-tree mode: detecting a tree that already registers mptcp_sched_ops as a
BPF struct_ops (mptcp_net-next), on fake trees; and that a user tree is never
given the Debian patch series, while the default (Debian) inputs still are."""

import json
import textwrap

import pytest

from bpfkit.kernel import kbuild
from bpfkit.paths import cache_dir

pytestmark = pytest.mark.unit

NET_NEXT_BPF_C = textwrap.dedent("""\
    // SPDX-License-Identifier: GPL-2.0
    #include <linux/bpf.h>

    static struct bpf_struct_ops bpf_mptcp_sched_ops = {
    \t.name\t\t= "mptcp_sched_ops",
    };

    static int __init bpf_mptcp_kfunc_init(void)
    {
    \tint ret;

    \tret = register_btf_fmodret_id_set(&bpf_mptcp_fmodret_set);
    #ifdef CONFIG_BPF_JIT
    \tret = ret ?: register_bpf_struct_ops(&bpf_mptcp_pm_ops, mptcp_pm_ops);
    \tret = ret ?: register_bpf_struct_ops(&bpf_mptcp_sched_ops, mptcp_sched_ops);
    #endif
    \treturn ret;
    }
""")
MAINLINE_BPF_C = textwrap.dedent("""\
    // SPDX-License-Identifier: GPL-2.0
    /* mainline: only the fmod_ret hook, no BPF scheduler */
    static int __init bpf_mptcp_kfunc_init(void)
    {
    \treturn register_btf_fmodret_id_set(&bpf_mptcp_fmodret_set);
    }
    /* a comment naming mptcp_sched_ops is not a registration */
""")


def fake_tree(root, bpf_c: str | None, struct_ops_types: str | None = None):
    (root / "net/mptcp").mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 18\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n")
    (root / "Kconfig").write_text("mainmenu \"fake\"\n")
    (root / "net/mptcp/protocol.c").write_text("/* protocol */\n")
    if bpf_c is not None:
        (root / "net/mptcp/bpf.c").write_text(bpf_c)
    if struct_ops_types is not None:
        (root / "kernel/bpf").mkdir(parents=True)
        (root / "kernel/bpf/bpf_struct_ops_types.h").write_text(struct_ops_types)
    return root


def test_detects_mptcp_net_next_registration(tmp_path):
    tree = fake_tree(tmp_path, NET_NEXT_BPF_C)
    assert kbuild.bpf_sched_struct_ops_in_tree(tree) == "net/mptcp/bpf.c:15"
    assert "already has the BPF mptcp_sched_ops struct_ops (net/mptcp/bpf.c:15)" in kbuild.tree_patch_note(tree)


def test_detects_pre_6_9_struct_ops_types_entry(tmp_path):
    tree = fake_tree(tmp_path, MAINLINE_BPF_C,
                     "#ifdef CONFIG_MPTCP\nBPF_STRUCT_OPS_TYPE(mptcp_sched_ops)\n#endif\n")
    assert kbuild.bpf_sched_struct_ops_in_tree(tree) == "kernel/bpf/bpf_struct_ops_types.h:2"


@pytest.mark.parametrize("bpf_c", [MAINLINE_BPF_C, None])
def test_mainline_tree_has_none(tmp_path, bpf_c):
    tree = fake_tree(tmp_path, bpf_c)
    assert kbuild.bpf_sched_struct_ops_in_tree(tree) is None
    assert "no BPF mptcp_sched_ops struct_ops" in kbuild.tree_patch_note(tree)


def test_user_tree_never_gets_the_patch_series(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFKIT_CACHE", str(tmp_path / "cache"))
    for name, bpf_c in (("net-next", NET_NEXT_BPF_C), ("mainline", MAINLINE_BPF_C)):
        tree = fake_tree(tmp_path / name, bpf_c)
        inputs = kbuild.resolve_inputs(tree, "default")
        assert inputs.source.kind == "tree" and inputs.patches == []


def test_patched_debian_tree_is_detected_too():
    """vm/patches/6.12 add the same registration: once applied, the extracted
    Debian tree is recognised (detection and series agree)."""
    if not kbuild.DEBIAN_TARBALL.exists():
        pytest.skip("linux-source-6.12 not installed")
    source = kbuild.debian_source()
    tree = cache_dir() / "src" / source.name
    applied = [p.name for p in kbuild.applied_patches(tree)] if tree.is_dir() else []
    if not any("struct_o" in name for name in applied):
        pytest.skip("the Debian tree is not extracted and patched in this cache")
    assert kbuild.bpf_sched_struct_ops_in_tree(tree) is not None


def test_default_inputs_unchanged_by_tree_detection():
    """The Debian path still carries the whole series, and its key is the one
    of the cached default kernel when there is one."""
    if not kbuild.DEBIAN_TARBALL.exists():
        pytest.skip("linux-source-6.12 not installed")
    inputs = kbuild.resolve_inputs(None, "default")
    assert inputs.source.kind == "debian"
    assert [p.name for p in inputs.patches] == [p.name for p in kbuild.patch_series("6.12")] != []
    cached = kbuild.load_cached(inputs.key)
    if cached is not None:
        assert json.loads((cached.dir / "kernel.json").read_text())["key"] == inputs.key
