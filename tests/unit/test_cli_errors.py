"""The CLI's last line of defence: a permission problem (a non-root user) is one error and exit 2,
and what it prints cannot carry terminal control sequences."""

import pytest

from bpfkit import cli
from bpfkit.commands import build as build_command

pytestmark = pytest.mark.unit


def test_permission_denied_is_one_error_not_a_traceback(monkeypatch, capsys):
    def handler(args):
        raise PermissionError(13, "Permission denied", "/sys/fs/bpf/bpfkit")

    monkeypatch.setattr(build_command, "handle", handler)
    assert cli.main(["build", "x.bpf.c"]) == 2
    err = capsys.readouterr().err
    assert err == "bpfkit: error: `bpfkit build` needs root: permission denied (/sys/fs/bpf/bpfkit)\n"


def test_control_characters_are_escaped_in_errors(capsys):
    assert cli.main(["build", "--cflags=-o\x1b[2J", "x.bpf.c"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J" in err


@pytest.mark.parametrize("argv", [
    ["lab", "run", "scenarios/wifi-lte.toml", "--host", "--out", "{file}"],
    ["lab", "run", "scenarios/wifi-lte.toml", "--host", "--out", "{file}/below"],
    ["bench", "schedulers", "--quick", "--out", "{file}"],
])
def test_an_output_directory_that_cannot_be_one_is_one_error(tmp_path, capsys, argv):
    """Refused before anything is built or measured: exit 2, one line, no traceback."""
    from bpfkit import cli

    file = tmp_path / "a-file"
    file.write_text("x")
    code = cli.main([a.replace("{file}", str(file)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be used as a directory" in err and "Traceback" not in err


def test_a_missing_scheduler_file_is_refused_before_the_bench_starts(tmp_path, capsys):
    code = cli.main(["bench", "schedulers", "--quick", "--scheduler", str(tmp_path / "nope.bpf.c"),
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.bpf.c: no such BPF C file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
