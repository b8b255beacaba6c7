"""One scheduler-name rule: `sched` (load/use), the lab (scenarios, --schedulers)
and the scaffold accept the same names, the scaffold a subset (its names are C
identifiers too)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfkit import sched, sched_name, sched_scaffold
from bpfkit.errors import UsageError
from bpfkit.lab import scenario

pytestmark = pytest.mark.unit

NAMES = st.one_of(st.text(max_size=20),
                  st.text(alphabet="abcXYZ019_.-", max_size=18),
                  st.sampled_from(["bpf_rr", "bpf-rr", "red.v2", ".hidden", "-x", "a" * 15, "a" * 16, "my sched"]))


def accepts(check, name) -> bool:
    try:
        check(name)
        return True
    except UsageError:
        return False


@given(NAMES)
def test_sched_lab_and_scaffold_share_one_rule(name):
    by_sched = accepts(sched.validate_name, name)
    assert accepts(scenario.validate_scheduler_name, name) == by_sched
    assert accepts(sched_name.check, name) == by_sched
    if accepts(lambda n: sched_scaffold.validate_name(n, existing=set()), name):
        assert by_sched, f"the scaffold makes {name!r}, which `sched load` would refuse"


@pytest.mark.parametrize("name", ["bpf_rr", "bpf-rr", "red.v2", "0day", "a" * 15])
def test_kernel_compatible_names_are_accepted(name):
    assert sched_name.check(name) == name
    assert scenario.validate_scheduler_name(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("a" * 16, "16 characters, at most 15"), (".", "not starting"), ("..", "not starting"),
    ("-f", "not starting"), ("a/b", "use letters"), ("a b", "use letters"), ("a\x1b[1m", "use letters"),
    (["rr"], "not a string"),
])
def test_bad_names_get_one_reason(name, why):
    with pytest.raises(UsageError, match=why):
        sched_name.check(name, where="x.toml: schedulers[0]")


def test_reference_names_are_the_files_and_the_kernel_names():
    """bpf/sched/X.bpf.c registers X: the scaffold's --from, the bench and `sched
    load minrtt` all go by the file."""
    assert len(sched_name.reference_names()) >= 4
    assert set(sched.builtin_sources()) == set(sched_name.reference_names())
    assert all(sched.builtin_sources()[n].name == f"{n}.bpf.c" for n in sched_name.reference_names())
    assert sched_scaffold.REFERENCE_ORIGINS == sched_name.reference_names()


def test_a_fifth_reference_scheduler_is_one_new_file(tmp_path):
    """Issue 14's test of the design: one new bpf/sched/X.bpf.c and nothing else is a
    built-in scheduler (`sched load X`), in the bench's plan and a scaffold origin
    (`sched new --from X`, renamed throughout). Run in a fresh interpreter whose
    bpf/ is a copy with the file added."""
    import shutil
    import subprocess
    import sys

    from bpfkit import paths

    bpf = tmp_path / "bpf"
    shutil.copytree(paths.BPF_DIR, bpf)
    minrtt = (bpf / "sched" / "minrtt.bpf.c").read_text()
    (bpf / "sched" / "fifth.bpf.c").write_text(minrtt.replace("minrtt", "fifth"))
    code = f"""
from pathlib import Path
import bpfkit.paths
bpfkit.paths.BPF_DIR = Path({str(bpf)!r})
from bpfkit import bench, sched, sched_name, sched_scaffold
assert "fifth" in sched_name.reference_names()
assert sched.builtin_sources()["fifth"].parent == Path({str(bpf / "sched")!r})
assert "fifth" in bench.SCHEDULERS
plan = bench.make_plan(True, Path({str(tmp_path / "out")!r}), bench.SCHEDULERS)
assert "fifth" in plan["bpf_schedulers"], plan["bpf_schedulers"]
text = sched_scaffold.render("mine", "fifth", existing=set())
assert '.name = "mine"' in text and "mine_get_send" in text and "fifth_get_send" not in text, text
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.PROJECT_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
