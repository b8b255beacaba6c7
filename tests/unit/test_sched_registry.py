"""One scheduler-name rule: `sched` (load/use), the lab (scenarios, --schedulers)
and the scaffold accept the same names, the scaffold a subset (its names are C
identifiers too)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfkit.sched import lifecycle, registry, scaffold
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
    by_sched = accepts(lifecycle.validate_name, name)
    assert accepts(scenario.validate_scheduler_name, name) == by_sched
    assert accepts(registry.check, name) == by_sched
    if accepts(lambda n: scaffold.validate_name(n, existing=set()), name):
        assert by_sched, f"the scaffold makes {name!r}, which `sched load` would refuse"


@pytest.mark.parametrize("name", ["bpf_rr", "bpf-rr", "red.v2", "0day", "a" * 15])
def test_kernel_compatible_names_are_accepted(name):
    assert registry.check(name) == name
    assert scenario.validate_scheduler_name(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("a" * 16, "16 characters, at most 15"), (".", "not starting"), ("..", "not starting"),
    ("-f", "not starting"), ("a/b", "use letters"), ("a b", "use letters"), ("a\x1b[1m", "use letters"),
    (["rr"], "not a string"),
])
def test_bad_names_get_one_reason(name, why):
    with pytest.raises(UsageError, match=why):
        registry.check(name, where="x.toml: schedulers[0]")


def test_reference_names_are_the_files_and_the_kernel_names():
    """bpf/sched/X.bpf.c registers X: the scaffold's --from, the bench and `sched
    load minrtt` all go by the file."""
    assert len(registry.reference_names()) >= 4
    assert set(lifecycle.builtin_sources()) == set(registry.reference_names())
    for name, ref in registry.references().items():
        assert ref.source.name == f"{name}.bpf.c"
        assert scaffold.registered_names(ref.source.read_text()) == [name], ref.source
    assert scaffold.REFERENCE_ORIGINS == registry.reference_names()


def test_every_reference_carries_its_metadata():
    from bpfkit import bench

    quick = {s.name for s in bench.QUICK_PLAN}
    colours = [registry.colour(n) for n in (registry.DEFAULT, *registry.reference_names())]
    assert len(set(colours)) == len(colours), "two schedulers share a plot colour"
    for ref in registry.references().values():
        assert ref.title and ref.paper, ref
        assert set(ref.quick_bench) <= quick, f"{ref.name}: quick_bench names a scenario the quick bench lacks"
    assert registry.colour("mine") is None  # not a reference: a plot picks its colour


@pytest.mark.parametrize("block, error", [
    ("", "no `/\\* bpfkit:` metadata block"),
    ('/* bpfkit:\n * title = "x"\n */\n', "colour is missing"),
    ('/* bpfkit:\n * title = "x"\n * colour = "red"\n */\n', "colour 'red' is not #rrggbb"),
    ('/* bpfkit:\n * title = "x"\n * colour = "#000000"\n * quick_bench = "lossy-rr"\n */\n', "quick_bench must be a list"),
    ('/* bpfkit:\n * title = "x"\n * colour = "#000000"\n * role = 1\n */\n', "unknown key 'role'"),
    ('/* bpfkit:\n * title = x\n */\n', "not valid TOML"),
])
def test_a_bad_metadata_block_is_one_clear_error(tmp_path, block, error):
    source = tmp_path / "x.bpf.c"
    source.write_text(block + "char LICENSE[] SEC(\"license\") = \"GPL\";\n")
    with pytest.raises(UsageError, match=error):
        registry.metadata(source)


def test_a_fifth_reference_scheduler_is_one_new_file(tmp_path):
    """Issue 14's test of the design: one new bpf/sched/X.bpf.c and nothing else is a
    built-in scheduler (`sched load X`, `sched list`), in the bench's plan (and, by its
    metadata, in the quick plan's lossy-rr, with its plot colour) and a scaffold origin
    (`sched new --from X`, renamed throughout, without the metadata). Run in a fresh interpreter whose
    bpf/ is a copy with the file added."""
    import shutil
    import subprocess
    import sys

    from bpfkit import paths

    bpf = tmp_path / "bpf"
    shutil.copytree(paths.BPF_DIR, bpf)
    minrtt = (bpf / "sched" / "minrtt.bpf.c").read_text()
    fifth = minrtt.replace("minrtt", "fifth").replace("#1f77b4", "#123456")
    fifth = fifth.replace('quick_bench = ["wifi-lte", "wifi-lte-256k"]', 'quick_bench = ["lossy-rr"]')
    (bpf / "sched" / "fifth.bpf.c").write_text(fifth)
    code = f"""
from pathlib import Path
import bpfkit.paths
bpfkit.paths.BPF_DIR = Path({str(bpf)!r})
from bpfkit import bench
from bpfkit.sched import lifecycle, registry, scaffold
assert "fifth" in registry.reference_names()
assert lifecycle.builtin_sources()["fifth"].parent == Path({str(bpf / "sched")!r})
assert "fifth" in bench.SCHEDULERS
plan = bench.make_plan("quick", Path({str(tmp_path / "out")!r}), bench.SCHEDULERS)
assert "fifth" in plan["bpf_schedulers"], plan["bpf_schedulers"]
lossy_rr = next(s for s in plan["scenarios"] if s["name"] == "lossy-rr")
assert "fifth" in lossy_rr["scenario"]["schedulers"], lossy_rr
assert registry.colour("fifth") == "#123456"
text = scaffold.render("mine", "fifth", existing=set())
assert '.name = "mine"' in text and "mine_get_send" in text and "fifth_get_send" not in text, text
assert "bpfkit:" not in text and "#123456" not in text  # the copy is not a reference scheduler
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.PROJECT_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
