"""Pure logic of bpfkit.sched: choosing the ops map, name rules, the BLEST/ECF
decision arithmetic (mirrors of bpf/sched/blest.bpf.c and ecf.bpf.c), output
formatting, CLI wiring.  Kernel behaviour is in tests/vm/test_schedulers.py."""

import pytest

from bpfkit import cli
from bpfkit.sched import lifecycle
from bpfkit.errors import UsageError
from tests.sched_models import blest_skips_slow, ecf_decide

pytestmark = pytest.mark.unit

# what ops_maps_of_object() reads from an object with two maps (tests/host/test_compat_build.py
# reads real objects)
MAPS = [lifecycle.OpsMap(var="red", name="red", link=True, redundant=True),
        lifecycle.OpsMap(var="red_nl", name="red_nl", link=False, redundant=False)]


def test_pick_ops_map_takes_the_only_link_map(tmp_path):
    maps = MAPS
    assert lifecycle.pick_ops_map(tmp_path / "x.bpf.c", maps).var == "red"
    assert lifecycle.pick_ops_map(tmp_path / "x.bpf.c", maps, ops="red").name == "red"


def test_pick_ops_map_refuses_plain_struct_ops_and_unknown_maps(tmp_path):
    maps = MAPS
    with pytest.raises(UsageError, match=r"needs SEC\(\"\.struct_ops\.link\"\)"):
        lifecycle.pick_ops_map(tmp_path / "x.bpf.c", maps, ops="red_nl")
    with pytest.raises(UsageError, match="no mptcp_sched_ops map 'other'"):
        lifecycle.pick_ops_map(tmp_path / "x.bpf.c", maps, ops="other")
    with pytest.raises(UsageError, match="no `struct mptcp_sched_ops` map"):
        lifecycle.pick_ops_map(tmp_path / "x.bpf.c", [])
    two = maps + [lifecycle.OpsMap("b", "b", True, False)]
    with pytest.raises(UsageError, match="several .* choose one with --ops"):
        lifecycle.pick_ops_map(tmp_path / "x.bpf.c", two)


@pytest.mark.parametrize("name", ["minrtt", "bpf_first", "a", "x" * 15, "my-sched.v2"])
def test_valid_names(name):
    assert lifecycle.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "-x", ".hidden", "a/b", "a b", "../x", "é"])
def test_invalid_names(name):
    with pytest.raises(UsageError):
        lifecycle.validate_name(name)


def test_builtin_schedulers_are_the_four_reference_ones():
    builtin = lifecycle.builtin_sources()
    assert set(builtin) == {"minrtt", "redundant", "blest", "ecf"}
    for name, path in builtin.items():
        assert path.name == f"{name}.bpf.c"
        head = path.read_text()[:3000]
        assert head.startswith("/*") and ("Paper" in head or "Algorithm" in head), path


def test_resolve_source(tmp_path):
    assert lifecycle.resolve_source("blest").name == "blest.bpf.c"
    f = tmp_path / "mine.bpf.c"
    f.write_text("/* any text: resolving does not read it */\n")
    assert lifecycle.resolve_source(str(f)) == f.resolve()
    with pytest.raises(UsageError, match="no built-in scheduler named 'nosuch'"):
        lifecycle.resolve_source("nosuch")
    with pytest.raises(UsageError, match="no such BPF C file"):
        lifecycle.resolve_source(str(tmp_path / "missing.bpf.c"))
    with pytest.raises(UsageError, match="1-15 characters"):
        lifecycle.resolve_source("n" * 40)


# BLEST: X = MSS_f * (CWND_f + (rtts-1)/2) * rtts; skip slow if lambda*X > |M| - MSS_s*(inflight_s+1)
BLEST_CASE = dict(fast_srtt_us=10_000, fast_mss=1000, fast_cwnd=10, slow_srtt_us=40_000, slow_mss=1000,
                  slow_inflight=4)


def test_blest_formula_at_the_boundary():
    # rtts = 4: X = 1000 * (10 + 1.5) * 4 = 46000; slow claims 5000
    assert not blest_skips_slow(**BLEST_CASE, send_window=51_000)   # 46000 > 46000 is false
    assert blest_skips_slow(**BLEST_CASE, send_window=50_999)
    # lambda scales X: 1.1 * 46000 = 50600
    assert blest_skips_slow(**BLEST_CASE, send_window=55_000, lambda_milli=1200)
    assert not blest_skips_slow(**BLEST_CASE, send_window=55_600, lambda_milli=1100)


def test_blest_never_blocks_on_an_equally_fast_path_with_room():
    case = dict(BLEST_CASE, slow_srtt_us=10_000)  # rtts = 1: X = MSS * CWND = 10000
    assert not blest_skips_slow(**case, send_window=15_000)
    assert blest_skips_slow(**case, send_window=14_999)


def test_blest_survives_extreme_ratios():
    # rtts is capped at 64 (and a zero fast RTT counts as 1 us):
    # X = 1000 * (10 + 31.5) * 64 = 2656000
    huge = dict(BLEST_CASE, fast_srtt_us=0, slow_srtt_us=10**9, slow_inflight=0)
    assert blest_skips_slow(**huge, send_window=2_656_000)
    assert not blest_skips_slow(**huge, send_window=2_657_000)
    assert not blest_skips_slow(**dict(BLEST_CASE, slow_srtt_us=1), send_window=1 << 20)


# ECF: n = 1 + k/CWND_f; if n*RTT_f < (1+w*beta)(RTT_s+delta): wait if k/CWND_s*RTT_s >= 2RTT_f+delta
ECF_CASE = dict(fast_srtt_us=10_000, fast_cwnd_bytes=10_000, slow_srtt_us=100_000, slow_cwnd_bytes=10_000,
                delta_us=0)


def test_ecf_waits_for_the_fast_path_with_little_data_left():
    # k = 50000: n = 6, 60 ms < 100 ms; k/CWND_s * RTT_s = 500 ms >= 20 ms -> wait
    assert ecf_decide(**ECF_CASE, unsent=50_000, waiting=False) == "wait"


def test_ecf_uses_the_slow_path_with_lots_of_data():
    # k = 1 MB: n = 101 -> 1.01 s > 100 ms -> slow, waiting reset
    assert ecf_decide(**ECF_CASE, unsent=1_000_000, waiting=True) == "slow-reset"


def test_ecf_uses_the_slow_path_when_it_finishes_quickly():
    # k = 1000: n = 1.1 -> 11 ms < 100 ms, but k/CWND_s * RTT_s = 10 ms < 20 ms -> slow
    assert ecf_decide(**ECF_CASE, unsent=1000, waiting=False) == "slow"


def test_ecf_hysteresis_keeps_waiting_a_bit_longer():
    # k = 95000: n*RTT_f = 105 ms; without waiting 105 >= 100 -> slow-reset;
    # once waiting, the bound is 1.25 * 100 = 125 ms -> keep waiting
    assert ecf_decide(**ECF_CASE, unsent=95_000, waiting=False) == "slow-reset"
    assert ecf_decide(**ECF_CASE, unsent=95_000, waiting=True) == "wait"


def test_ecf_delta_widens_the_slow_estimate():
    assert ecf_decide(**dict(ECF_CASE, delta_us=10_000), unsent=95_000, waiting=False) == "wait"


def test_format_list_and_show():
    data = {"builtin": [{"name": "minrtt", "title": "lowest RTT first", "source": "/p/bpf/sched/minrtt.bpf.c",
                         "registered": True, "loaded_by_bpfkit": True}],
            "available": ["default", "minrtt", "theirs"], "selected": {"(current)": "default", "ns1": "minrtt"},
            "bpfkit": ["minrtt"], "other_loaders": ["theirs"]}
    text = lifecycle.format_list(data)
    assert "minrtt           loaded by bpfkit  lowest RTT first" in text
    assert "registered by other loaders (not bpfkit's): theirs" in text
    assert "registered (net.mptcp.available_schedulers): default minrtt theirs" in text
    assert "  ns1              minrtt" in text
    shown = lifecycle.format_show({"name": "minrtt", "registered": True, "flags": [], "program_ids": {"a": 7},
                               "selected_in": ["ns1"], "pin": None})
    assert "registered:        yes" in shown and "program ids:       a=7" in shown
    assert "flags:             -" in shown and "selected in:       ns1" in shown and "pin:               -" in shown


def test_cli_has_the_sched_actions():
    parser = cli.make_parser()
    for argv in (["sched", "list", "--json"], ["sched", "load", "minrtt"], ["sched", "use", "x", "--netns", "n"],
                 ["sched", "unload", "x", "--force"], ["sched", "show", "x"], ["sched", "load", "x.o"],
                 ["sched", "load", "x.bpf.c", "-I", "inc", "--cflags=-DX=1"]):
        assert parser.parse_args(argv).handler


def test_cli_bad_name_is_one_error(capsys):
    assert cli.main(["sched", "load", "nosuch"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("bpfkit: error:") == 1 and "no built-in scheduler named 'nosuch'" in err


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "", "bad\x1b[2J"])
def test_netns_names_that_are_not_names_are_refused(name):
    with pytest.raises(UsageError, match="invalid network namespace name"):
        lifecycle.selected(name)


def test_verifier_advice_for_schedulers_of_another_export_generation():
    log = ("26: (85) call bpf_sk_stream_memory_free#1\nkernel function bpf_sk_stream_memory_free args#0 expected "
           "pointer to STRUCT mptcp_subflow_context but R1 has a pointer to STRUCT sock\n")
    assert "bpf_sk_stream_memory_free(subflow)" in lifecycle.scheduler_verifier_hint(log)
    assert "bpf_mptcp_subflow_tcp_sock" in lifecycle.scheduler_verifier_hint("arg#1 is untrusted_ptr_ expected ptr_")
    assert lifecycle.scheduler_verifier_hint("R1 invalid mem access 'scalar'") is None
