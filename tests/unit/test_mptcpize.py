"""mptcpize without a kernel: unit names, options, templates, kernel-check messages."""

import subprocess

import pytest

from bpfkit import cli, features
from bpfkit.mptcpize import rewrite, systemd
from bpfkit.commands import mptcpize as command
from bpfkit.errors import KernelUnsupported, UsageError

pytestmark = pytest.mark.unit

BPFKIT = "/opt/bpfkit/bin/bpfkit"


@pytest.mark.parametrize("name, expected", [
    ("nginx.service", "nginx.service"),
    ("nginx", "nginx.service"),
    ("getty@tty1.service", "getty@tty1.service"),
    ("system-foo.slice", "system-foo.slice"),
    ("session-3.scope", "session-3.scope"),
    ("foo\\x2dbar.service", "foo\\x2dbar.service"),
    ("a:b_c.d-e.service", "a:b_c.d-e.service"),
])
def test_valid_unit_names(name, expected):
    assert systemd.validate_unit(name) == expected


@pytest.mark.parametrize("name", [
    "", "../etc/passwd", "foo/bar.service", "foo bar.service", "foo;rm -rf.service", "-x.service",
    ".hidden.service", "a@b@c.service", "nginx.socket", "nginx.timer", "x" * 250 + ".service",
    "foo$(id).service", "foo\n.service", "föö.service",
])
def test_invalid_unit_names_are_refused(name):
    with pytest.raises(UsageError):
        systemd.validate_unit(name)


def test_template_units_only_where_allowed():
    with pytest.raises(UsageError, match="template"):
        systemd.validate_unit("getty@.service")
    assert systemd.validate_unit("getty@.service", allow_template=True) == "getty@.service"
    with pytest.raises(UsageError, match="not supported"):
        systemd.validate_unit("user.slice", types=("service",))


@pytest.mark.parametrize("comm", ["sshd", "a" * 15, "python3.11", "x-y_z+1"])
def test_valid_exclusions(comm):
    assert rewrite.validate_comm(comm) == comm


@pytest.mark.parametrize("comm", ["", "a" * 16, "has space", "-leading", "sl/ash", "per%cent", "quo\"te"])
def test_invalid_exclusions(comm):
    with pytest.raises(UsageError):
        rewrite.validate_comm(comm)


def test_options():
    assert rewrite.Options.of().family_mask == 3
    assert rewrite.Options.of("inet6").family_mask == 2
    opts = rewrite.Options.of("inet", ["sshd", "curl", "sshd"])
    assert opts.exclude == ("curl", "sshd")
    assert opts.cli_args() == ["--family=inet", "--exclude=curl", "--exclude=sshd"]
    assert rewrite.Options.of().cli_args() == []
    with pytest.raises(UsageError):
        rewrite.Options.of("unix")


def test_dropin_rendering():
    text = systemd.render_dropin("nginx", rewrite.Options.of("inet6", ["sshd"]), bpfkit=BPFKIT)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "[Service]",
        f"ExecStartPre=-+{BPFKIT} mptcpize attach --unit %n --family=inet6 --exclude=sshd",
        f"ExecStopPost=-+{BPFKIT} mptcpize detach --unit %n",
    ]
    assert "bpfkit mptcpize disable nginx.service" in text


def test_dropin_rendering_refuses_bad_units():
    with pytest.raises(UsageError):
        systemd.render_dropin("x.service\nExecStart=/bin/sh", bpfkit=BPFKIT)
    with pytest.raises(UsageError, match="not supported"):
        systemd.render_dropin("user.slice", bpfkit=BPFKIT)


def test_boot_service_rendering():
    text = systemd.render_boot_service(bpfkit=BPFKIT)
    assert "ConditionPathExists=/etc/bpfkit/mptcpize.json" in text
    assert f"ExecStart={BPFKIT} mptcpize restore" in text
    assert "WantedBy=sysinit.target" in text and "DefaultDependencies=no" in text
    assert "Before=sysinit.target" in text
    assert "Type=oneshot" in text


def test_rendered_units_pass_systemd_analyze(tmp_path):
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True).stdout.strip()
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    vendor = tmp_path / "demo.service"
    vendor.write_text("[Service]\nExecStart=/bin/true\n")
    dropin_dir = tmp_path / "demo.service.d"
    dropin_dir.mkdir()
    (dropin_dir / "bpfkit-mptcpize.conf").write_text(systemd.render_dropin("demo", bpfkit="/bin/true"))
    boot = tmp_path / "bpfkit-mptcpize.service"
    boot.write_text(systemd.render_boot_service(bpfkit="/bin/true"))
    out = subprocess.run([analyze, "verify", str(vendor), str(boot)], capture_output=True, text=True)
    bad = [ln for ln in out.stderr.splitlines() if "Unknown key" in ln or "Invalid" in ln or "bad" in ln.lower()]
    assert not bad, out.stderr


def _write_vendor_unit(root, name="demo.service"):
    vendor = root / "lib/systemd/system" / name
    vendor.parent.mkdir(parents=True)
    vendor.write_text("[Service]\nExecStart=/bin/sleep infinity\n")
    return vendor


def test_enable_writes_only_the_dropin(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    vendor = _write_vendor_unit(tmp_path)
    before = vendor.read_bytes()
    result = systemd.enable("demo", rewrite.Options.of(exclude=["sshd"]), root=tmp_path)
    assert result.dropin == tmp_path / "etc/systemd/system/demo.service.d/bpfkit-mptcpize.conf"
    assert "--exclude=sshd" in result.dropin.read_text()
    assert vendor.read_bytes() == before
    assert not result.reloaded
    path, existed, _ = systemd.disable("demo", root=tmp_path)
    assert existed and not path.exists() and not path.parent.exists()
    assert vendor.read_bytes() == before


def test_enable_template_instance_finds_template_file(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    _write_vendor_unit(tmp_path, "worker@.service")
    result = systemd.enable("worker@3.service", root=tmp_path)
    assert result.dropin.parent.name == "worker@3.service.d"


def test_enable_unknown_unit(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    with pytest.raises(UsageError, match="does not exist"):
        systemd.enable("nosuch", root=tmp_path)
    assert not (tmp_path / "etc").exists()


def test_disable_keeps_other_dropins(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    _write_vendor_unit(tmp_path)
    systemd.enable("demo", root=tmp_path)
    other = tmp_path / "etc/systemd/system/demo.service.d/override.conf"
    other.write_text("[Service]\nNice=5\n")
    systemd.disable("demo", root=tmp_path)
    assert other.exists()


def test_cli_enable_disable_with_root(tmp_path, monkeypatch, capsys):

    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    _write_vendor_unit(tmp_path)
    assert cli.main(["mptcpize", "enable", "demo.service", "--family", "inet", "--root", str(tmp_path)]) == 0
    dropin = tmp_path / "etc/systemd/system/demo.service.d/bpfkit-mptcpize.conf"
    assert "--family=inet" in dropin.read_text()
    assert cli.main(["mptcpize", "disable", "demo.service", "--root", str(tmp_path)]) == 0
    assert not dropin.exists()
    assert cli.main(["mptcpize", "enable", "../../etc/passwd", "--root", str(tmp_path)]) == 2
    assert "invalid unit name" in capsys.readouterr().err


def test_state_file_and_boot_service(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    monkeypatch.setattr(systemd.cgroup, "cgroup2_root", lambda: tmp_path / "cg")
    cg = tmp_path / "cg/app.slice"
    state = systemd.persist(cg, rewrite.Options.of("inet6"), tmp_path)
    assert state == tmp_path / "etc/bpfkit/mptcpize.json"
    assert systemd.load_state(tmp_path) == [{"cgroup": "app.slice", "families": ["inet6"], "exclude": []}]
    service = tmp_path / "etc/systemd/system/bpfkit-mptcpize.service"
    assert "mptcpize restore" in service.read_text()
    wants = tmp_path / "etc/systemd/system/sysinit.target.wants/bpfkit-mptcpize.service"
    assert wants.is_symlink()
    systemd.persist(cg, rewrite.Options.of(), tmp_path)  # re-persisting replaces, not duplicates
    assert len(systemd.load_state(tmp_path)) == 1
    assert systemd.forget(cg, tmp_path)
    assert not state.exists()


def test_an_older_install_is_moved_to_sysinit(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "bpfkit_executable", lambda: BPFKIT)
    old = tmp_path / "etc/systemd/system/multi-user.target.wants/bpfkit-mptcpize.service"
    old.parent.mkdir(parents=True)
    old.symlink_to("/etc/systemd/system/bpfkit-mptcpize.service")
    systemd.install_boot_service(tmp_path)
    assert not old.is_symlink()
    assert (tmp_path / "etc/systemd/system/sysinit.target.wants/bpfkit-mptcpize.service").is_symlink()


def test_persisting_a_units_own_cgroup_is_refused_before_attaching(tmp_path, monkeypatch, capsys):
    """systemd gives a unit a new cgroup (a new id) at each start: a record would not survive
    the first restart. Refused with the drop-in as the fix, and nothing attached or recorded."""
    monkeypatch.setattr(rewrite, "target_cgroup", lambda path: tmp_path / "cg/system.slice/nginx.service")
    monkeypatch.setattr(rewrite, "attach", lambda *a, **k: pytest.fail("attached"))
    code = cli.main(["mptcpize", "attach", "--cgroup", "system.slice/nginx.service", "--persist",
                     "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is the cgroup of nginx.service" in err and "mptcpize enable nginx.service" in err
    assert not (tmp_path / "etc/bpfkit").exists()


# --- kernel checks ------------------------------------------------------------

def test_kernel_without_btf(monkeypatch):
    monkeypatch.setattr(features, "check_btf", lambda: features.Check("btf", features.MISSING,
                                                                  "/sys/kernel/btf/vmlinux missing"))
    with pytest.raises(KernelUnsupported) as info:
        rewrite._check_kernel()
    assert "no BTF" in str(info.value)
    assert "mptcpize run CMD" in info.value.hint and "Debian package mptcpize" in info.value.hint


def test_kernel_too_old(monkeypatch):
    monkeypatch.setattr(features, "check_btf", lambda: features.Check("btf", features.OK, "ok"))
    monkeypatch.setattr(rewrite.platform, "release", lambda: "6.1.0-18-amd64")
    monkeypatch.setattr(features.platform, "release", lambda: "6.1.0-18-amd64")
    with pytest.raises(KernelUnsupported) as info:
        rewrite._check_kernel()
    assert "kernel 6.1.0-18-amd64 < 6.6 has no hook" in str(info.value)
    assert info.value.exit_code == 4
    assert "LD_PRELOAD" in info.value.hint


def test_refused_load_is_explained_by_the_doctor_probe(monkeypatch):
    from bpfkit.errors import LoadError

    monkeypatch.setattr(features, "check_fmod_ret", lambda: features.Check(
        "fmod_ret_update_socket_protocol", features.MISSING,
        "load refused: loading probes.bpf.o failed: Operation not permitted (errno 1)"))
    with pytest.raises(KernelUnsupported) as info:
        with rewrite._kernel_refusal_explained():
            raise LoadError("loading mptcpify.bpf.o failed: Operation not permitted (errno 1)")
    assert "Operation not permitted" in str(info.value)
    assert "fmod_ret on update_socket_protocol" in str(info.value)


def test_other_load_failures_pass_through(monkeypatch):
    from bpfkit.errors import VerifierError

    monkeypatch.setattr(features, "check_fmod_ret", lambda: features.Check("fmod_ret_update_socket_protocol",
                                                                       features.OK, "fine"))
    with pytest.raises(VerifierError):
        with rewrite._kernel_refusal_explained():
            raise VerifierError("the verifier rejected program 'mptcpify': R1 invalid mem access")


# --- unit -> cgroup ---------------------------------------------------------------

def _fake_systemctl(tmp_path, stdout: str, code: int = 0, stderr: str = "") -> str:
    """A stand-in for `systemctl show` printing canned output."""
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'out'}\ncat {tmp_path / 'err'} >&2\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


def test_unknown_unit(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SYSTEMCTL",
                        _fake_systemctl(tmp_path, "LoadState=not-found\nActiveState=inactive\nControlGroup=\n"))
    with pytest.raises(UsageError, match="unit nosuch.service does not exist"):
        systemd.unit_cgroup("nosuch")


def test_stopped_unit(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SYSTEMCTL",
                        _fake_systemctl(tmp_path, "LoadState=loaded\nActiveState=inactive\nControlGroup=\n"))
    with pytest.raises(UsageError, match="not running"):
        systemd.unit_cgroup("demo")


def test_systemd_not_running(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SYSTEMCTL", _fake_systemctl(
        tmp_path, "", 1, "System has not been booted with systemd as init system (PID 1). Can't operate."))
    with pytest.raises(UsageError, match="has not been booted with systemd"):
        systemd.unit_cgroup("demo")


def test_persist_refused_for_units(capsys):
    from bpfkit import cli

    assert cli.main(["mptcpize", "attach", "--unit", "demo", "--persist"]) == 2
    assert "bpfkit mptcpize enable demo" in capsys.readouterr().err


def test_cli_parses_run_command():
    from bpfkit import cli

    args = cli.make_parser().parse_args(["mptcpize", "run", "--exclude", "x", "--", "curl", "-v", "--", "y"])
    assert args.handler is command.handle_run
    assert args.command == ["--", "curl", "-v", "--", "y"]
