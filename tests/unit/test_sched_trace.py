"""The decision record of `bpfkit sched trace`: bpfkit/trace.py's mirror of
bpf/include/sched_trace.h, checked field by field against the header compiled by a
real C compiler, and the decoding of records (a wrong size is one clear error)."""

import ctypes
import subprocess

import pytest

from bpfkit.sched import trace
from bpfkit.errors import LoadError
from bpfkit.paths import BPF_DIR

pytestmark = pytest.mark.unit

LAYOUT_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "sched_trace.h"
#define F(s, f) printf("%s.%s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
int main(void) {
@FIELDS@
	printf("sched_decision %zu\n", sizeof(struct sched_decision));
	return 0;
}
"""


def test_python_mirror_matches_the_c_header(tmp_path):
    lines = [f'\tF(sched_decision_subflow, {name});' for name, _ in trace._Subflow._fields_]
    lines += [f'\tF(sched_decision, {name});' for name, _ in trace._Decision._fields_]
    source = tmp_path / "layout.c"
    source.write_text(LAYOUT_PROGRAM.replace("@FIELDS@", "\n".join(lines)))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(BPF_DIR / "include"), "-o", str(exe), str(source)], check=True)
    output = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    c_layout = dict(line.split(" ", 1) for line in output.splitlines())
    for struct, cls in (("sched_decision_subflow", trace._Subflow), ("sched_decision", trace._Decision)):
        for name, _ in cls._fields_:
            field = getattr(cls, name)
            assert c_layout[f"{struct}.{name}"] == f"{field.offset} {field.size}", f"{struct}.{name}"
    assert c_layout["sched_decision"] == str(ctypes.sizeof(trace._Decision))


def record(**fields) -> bytes:
    d = trace._Decision()
    d.time_ns, d.duration_ns, d.token, d.ret, d.kind, d.sched = 5_000, 700, 0xABCD, 0, 1, b"minrtt"
    d.nr_subflows = 2
    for i, sf in enumerate(d.subflows[:2]):
        sf.id, sf.srtt_us, sf.cwnd, sf.mss, sf.state = i + 1, 1000 * (i + 1), 10, 1448, 1
    d.subflows[1].scheduled = 1
    for name, value in fields.items():
        setattr(d, name, value)
    return bytes(d)


def test_decode_names_the_call_and_the_chosen_subflow():
    d = trace.decode(record())
    assert (d["call"], d["scheduler"], d["token"], d["chosen"]) == ("get_send", "minrtt", 0xABCD, [2])
    assert [sf["srtt_us"] for sf in d["subflows"]] == [1000, 2000]
    line = trace.format_decision(d, start_ns=0)
    assert "0000abcd get_send" in line and "→ #2" in line and "#2* srtt 2.0ms" in line


def test_decode_more_subflows_than_described_keeps_the_count():
    d = trace.decode(record(nr_subflows=12))
    assert d["subflows_total"] == 12 and len(d["subflows"]) == trace.MAX_SUBFLOWS


def test_a_record_of_another_size_is_one_clear_error():
    with pytest.raises(LoadError, match="disagree"):
        trace.decode(record()[:-4])
