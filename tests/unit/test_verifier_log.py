import pytest

from bpfkit.loader.libbpf import parse_verifier_log

pytestmark = pytest.mark.unit

LOG = """\
func#0 @0
0: R1=ctx() R10=fp0
; __u32 key = 0; @ rejected.bpf.c:18
0: (b7) r1 = 0                        ; R1_w=0
; __u64 *value = bpf_map_lookup_elem(&values, &key); @ rejected.bpf.c:19
3: (85) call bpf_map_lookup_elem#1    ; R0_w=map_value_or_null(id=1,off=0,ks=4,vs=8,imm=0)
; *value += 1; @ rejected.bpf.c:21
4: (79) r1 = *(u64 *)(r0 +0)
R0 invalid mem access 'map_value_or_null'
processed 5 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


def test_reason_and_source_line():
    report = parse_verifier_log("rejected", LOG)
    assert report.reason == "R0 invalid mem access 'map_value_or_null'"
    assert report.source == "rejected.bpf.c:21: *value += 1;"
    text = report.format()
    assert "rejected program 'rejected'" in text and "processed 5 insns" not in text


def test_log_without_line_info():
    report = parse_verifier_log("p", "0: (95) exit\nR0 !read_ok\n")
    assert report.source is None and report.reason == "R0 !read_ok"
