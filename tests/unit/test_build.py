import uuid

import pytest

from bpfkit.loader import build
from bpfkit.errors import BuildError, UsageError

pytestmark = pytest.mark.unit


def test_broken_source_gives_file_line_errors(test_bpf):
    with pytest.raises(BuildError) as err:
        build.compile_bpf(test_bpf("broken"))
    text = str(err.value)
    assert "broken.bpf.c:10: error: use of undeclared identifier 'no_such_variable'" in text
    # No clang snippet/caret noise: every line is file:line: kind: message.
    for line in text.splitlines():
        assert ".bpf.c:" in line and (": error: " in line or ": warning: " in line), line


def test_objects_are_cached_by_content(test_bpf, tmp_path):
    source = tmp_path / "copy.bpf.c"
    # A unique comment, so this run starts from an empty cache entry.
    source.write_text(test_bpf("sockops_counter").read_text() + f"\n/* {uuid.uuid4()} */\n")
    first = build.compile_bpf(source)
    again = build.compile_bpf(source)
    assert not first.cached
    assert again.cached and again.path == first.path
    source.write_text(source.read_text() + "\n/* changed */\n")
    changed = build.compile_bpf(source)
    assert not changed.cached and changed.path != first.path


def test_object_has_btf_for_core(test_bpf):
    from elftools.elf.elffile import ELFFile

    obj = build.compile_bpf(test_bpf("sockops_counter")).path
    with open(obj, "rb") as f:
        names = {s.name for s in ELFFile(f).iter_sections()}
    assert {".BTF", ".BTF.ext", "sockops"} <= names


def test_missing_source_is_a_usage_error(tmp_path):
    from bpfkit.errors import UsageError

    with pytest.raises(UsageError, match="no such BPF source"):
        build.compile_bpf(tmp_path / "nope.bpf.c")


def test_clang_error_formatting_drops_snippets():
    stderr = (
        "/x/a.bpf.c:5:3: error: expected ';' after return statement\n"
        "        return 1\n"
        "                ^\n"
        "                ;\n"
        "/x/a.bpf.c:2:1: note: something\n"
        "1 error generated.\n"
    )
    assert build.format_clang_errors(stderr) == "/x/a.bpf.c:5: error: expected ';' after return statement"


@pytest.mark.parametrize("flag", ["-DX=1", "-UX", "-Wno-unused-variable", "-w", "-std=gnu11", "-fno-builtin",
                                  "-include=x.h", "-isystem/opt/inc", "-idirafter/opt/inc"])
def test_user_cflags_accepted(flag):
    assert build.validate_cflags([flag]) == [flag]


@pytest.mark.parametrize("flag", ["-o/etc/passwd", "-c", "-target", "x86_64", "-O0", "-mcpu=v1", "--", "-Xclang",
                                  "-fplugin=/tmp/x.so;", "-fplugin=x", "-D1X"])
def test_user_cflags_that_would_change_the_build_are_refused(flag):
    with pytest.raises(UsageError, match="--cflags"):
        build.validate_cflags([flag])


def test_a_layout_names_each_member_of_its_format_once():
    from bpfkit.loader.libbpf import Layout

    layout = Layout("s", "<B3x16sH4H", ("a", "b", "c", "d"), offset=8)
    assert layout.member_offsets == {"a": 8, "b": 12, "c": 28, "d": 30} and layout.size == 30
    with pytest.raises(ValueError, match="3 members"):
        Layout("s", "<QII", ("a", "b"))
    with pytest.raises(ValueError, match="little-endian"):
        Layout("s", "QII", ("a", "b", "c"))
