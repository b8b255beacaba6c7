"""`bpfkit sched new`: name validation, rendering, renaming, file handling, and
that what it writes compiles against the bpfkit VM kernel's BTF.

The compile tests use the same names and therefore the same source bytes as
tests/vm/test_sched_scaffold.py, so running this tier first leaves the VM tier
prebuilt objects in the shared cache (clang under TCG emulation is slow)."""

from __future__ import annotations

import argparse

import pytest

from bpfkit.sched import registry, scaffold
from bpfkit.loader import build
from bpfkit.errors import MissingDependency, UsageError

pytestmark = pytest.mark.unit

# Names shared with tests/vm/test_sched_scaffold.py (see the module docstring).
VM_TEST_NAMES = {"minimal": "scaf_minimal", "minrtt": "scaf_minrtt", "redundant": "scaf_redundant",
                 "blest": "scaf_blest", "ecf": "scaf_ecf"}


def _reference_or_skip(origin: str) -> None:
    if origin != "minimal" and origin not in registry.references():
        pytest.skip(f"bpf/sched/{origin}.bpf.c is not in the tree yet")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "my_sched", "x1", "abcdefghijklmno"])  # 15 chars is the limit
def test_valid_names_pass(name):
    assert scaffold.validate_name(name, existing=set()) == name


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    ("abcdefghijklmnop", "at most 15"),  # 16
    ("MySched", "lower-case"),
    ("my-sched", "lower-case"),
    ("1sched", "starting with a letter"),
    ("_sched", "starting with a letter"),
    ("my sched", "lower-case"),
    ('x";', "lower-case"),
    ("sched\n", "lower-case"),
    ("int", "C keyword"),
    ("u32", "C keyword"),
    ("struct", "C keyword"),
])
def test_invalid_names_are_refused(name, reason):
    with pytest.raises(UsageError, match=reason):
        scaffold.validate_name(name, existing=set())


@pytest.mark.parametrize("name", ["default", "minrtt", "redundant", "blest", "ecf"])
def test_existing_scheduler_names_are_refused(name):
    with pytest.raises(UsageError, match="taken by an existing scheduler"):
        scaffold.validate_name(name)


def test_kernel_registered_names_are_refused(tmp_path):
    available = tmp_path / "available_schedulers"
    available.write_text("default bpf_burst mine\n")
    taken = scaffold.existing_scheduler_names(available)
    assert {"default", "bpf_burst", "mine", "minrtt", "blest", "ecf", "redundant"} <= taken
    with pytest.raises(UsageError, match="taken"):
        scaffold.validate_name("mine", existing=taken)
    # an unreadable sysctl is not an error: the other sources still apply
    assert "default" in scaffold.existing_scheduler_names(tmp_path / "missing")


# ---------------------------------------------------------------- rendering


def test_minimal_render_names_everything_after_the_scheduler():
    text = scaffold.render("my_sched", existing=set())
    assert '.name\t\t= "my_sched",' in text
    assert "struct mptcp_sched_ops my_sched = {" in text
    for callback in ("get_send", "get_retrans", "init", "release"):
        assert f"int BPF_PROG(my_sched_{callback}," in text or f"void BPF_PROG(my_sched_{callback}," in text
    # the guide tells how to build, load, select and compare
    for line in ("bpfkit sched load my_sched.bpf.c", "bpfkit sched use my_sched",
                 "bpfkit lab run scenarios/wifi-lte.toml --schedulers default,./my_sched.bpf.c",
                 "bpfkit bench schedulers --plan quick --scheduler ./my_sched.bpf.c"):
        assert line in text
    assert "{{" not in text and "{%" not in text


def test_render_refuses_invalid_name_before_rendering():
    with pytest.raises(UsageError):
        scaffold.render('x"; evil', existing=set())
    with pytest.raises(UsageError, match="--from"):
        scaffold.render("fine", "nope", existing=set())


def test_rename_touches_identifiers_and_the_ops_name_only():
    source = (
        "/* minrtt picks the minrtt path */\n"
        'static int minrtt_pick(struct minrtt_state *s) { return s->minrtt_seen + subflow->minrtt; }\n'
        "int minrttx; int xminrtt;\n"
        'struct mptcp_sched_ops minrtt = { .get_send = (void *)minrtt_get_send, .name = "minrtt", };\n'
        'const char note[] = "minrtt is fast";\n'
    )
    out = scaffold.rename_scheduler(source, {"minrtt"}, "fast")
    assert out == (
        "/* minrtt picks the minrtt path */\n"
        'static int fast_pick(struct fast_state *s) { return s->minrtt_seen + subflow->minrtt; }\n'
        "int minrttx; int xminrtt;\n"
        'struct mptcp_sched_ops fast = { .get_send = (void *)fast_get_send, .name = "fast", };\n'
        'const char note[] = "minrtt is fast";\n'
    )


@pytest.mark.parametrize("origin", scaffold.REFERENCE_ORIGINS)
def test_derived_render_keeps_no_trace_of_the_old_name_in_code(origin):
    _reference_or_skip(origin)
    text = scaffold.render("derived", origin, existing=set())
    code = scaffold._strip_comments(text)
    assert scaffold.registered_names(text) == ["derived"]
    assert "struct mptcp_sched_ops derived = {" in code
    assert f'"{origin}"' not in code
    import re

    assert not re.search(rf"(?<![.>\w]){origin}(_\w*)?\b", code), f"{origin} identifier left in the derived code"
    assert "#include \"sched_common.h\"" not in text  # sibling headers are pasted in: the copy lives elsewhere


# ---------------------------------------------------------------- files and CLI


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bpfkit sched new")
    scaffold.add_new_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_new_writes_the_file_and_refuses_to_overwrite(tmp_path, capsys):
    assert scaffold.run_new(_args("my_new", "--dir", str(tmp_path / "sub"))) == 0
    target = tmp_path / "sub" / "my_new.bpf.c"
    assert target.is_file() and '.name\t\t= "my_new"' in target.read_text()
    assert "bpfkit sched load" in capsys.readouterr().out

    target.write_text("/* my edits */\n")
    with pytest.raises(UsageError, match="exists") as err:
        scaffold.run_new(_args("my_new", "--dir", str(tmp_path / "sub")))
    assert "--force" in str(err.value)
    assert target.read_text() == "/* my edits */\n"

    assert scaffold.run_new(_args("my_new", "--dir", str(tmp_path / "sub"), "--force")) == 0
    assert "my edits" not in target.read_text()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["my_new.bpf.c"]  # no temp files left


def test_bad_name_writes_nothing(tmp_path):
    with pytest.raises(UsageError):
        scaffold.run_new(_args("Bad-Name", "--dir", str(tmp_path / "out")))
    with pytest.raises(UsageError, match="taken"):
        scaffold.run_new(_args("default", "--dir", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_unknown_origin_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        _args("fine", "--from", "bbr")
    assert exc.value.code == 2


def test_dir_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        scaffold.run_new(_args("fine", "--dir", str(blocker)))


# ---------------------------------------------------------------- compiles for the VM kernel


@pytest.fixture(scope="module")
def vm_vmlinux():
    from bpfkit.kernel import kbuild

    try:
        return kbuild.default_kernel().vmlinux
    except MissingDependency as exc:
        pytest.skip(f"no bpfkit VM kernel built ({exc.message})")


@pytest.mark.parametrize("origin", ["minimal", *scaffold.REFERENCE_ORIGINS])
def test_rendered_scheduler_compiles_for_the_vm_kernel(origin, vm_vmlinux, tmp_path):
    from elftools.elf.elffile import ELFFile

    _reference_or_skip(origin)
    name = VM_TEST_NAMES[origin]
    source = scaffold.scaffold(name, origin, tmp_path, existing=set())
    obj = build.compile_bpf(source, kernel=vm_vmlinux).path
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        ops = elf.get_section_by_name(".struct_ops.link")
        assert ops is not None, "no .struct_ops.link section"
        assert name.encode() + b"\0" in ops.data()  # the .name the kernel registers
        symbols = {s.name for s in elf.get_section_by_name(".symtab").iter_symbols()}
    assert name in symbols and f"{name}_get_send" in symbols
    if origin != "minimal":
        assert not [s for s in symbols if s == origin or s.startswith(origin + "_")], symbols


def test_bpfkit_sched_new_command(tmp_path, capsys):
    """The real command line: `bpfkit sched new` is wired by bpfkit.commands.sched."""
    import importlib.util

    from bpfkit import cli

    if importlib.util.find_spec("bpfkit.commands.sched") is None:
        pytest.skip("bpfkit.commands.sched (the `bpfkit sched` command) is not in the tree yet")
    assert cli.main(["sched", "new", "cli_made", "--from", "blest", "--dir", str(tmp_path)]) == 0
    assert scaffold.registered_names((tmp_path / "cli_made.bpf.c").read_text()) == ["cli_made"]
    assert cli.main(["sched", "new", "cli_made", "--dir", str(tmp_path)]) == 2  # exists, no --force
    assert cli.main(["sched", "new", "Cli-Made", "--dir", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli_made.bpf.c"]
