"""Property: any document the TOML parser could hand over yields a valid object or one
BpfkitError (one clear message, exit 2 at the CLI), never another exception."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfkit.subflow import policy as subflow_policy
from bpfkit.errors import BpfkitError
from bpfkit.lab import scenario

pytestmark = pytest.mark.unit

SCENARIO_KEYS = ["name", "description", "duration", "seed", "repetitions", "schedulers", "paths", "traffic",
                 "events", "mptcp", "timeout", "rate", "delay", "jitter", "loss", "queue", "backup", "kind",
                 "direction", "bytes", "time", "request_size", "response_size", "count", "warmup", "message_size",
                 "at", "path", "set", "wifi", "lte", "buffers", "client_receive", "server_send"]
POLICY_KEYS = ["rule", "match", "set", "name", "local", "remote", "interface", "port", "backup", "mark",
               "congestion", "pacing_rate", "priority", "tos", "tclass", "notsent_lowat", "family"]
QUANTITIES = ["20mbit", "1e400mbit", "inf", "nan", "-1ms", "10ms", "0", "1e999", "5s", "0.5%", "bulk", "128KiB", "1e9GiB",
              "request-response", "cbr", "download", "upload", "10.0.0.0/8", "::1/128", "cubic", "eth0",
              "", "\x1b[2J", "../../etc/x", "default", "minrtt"]


def documents(keys):
    scalars = (st.sampled_from(QUANTITIES) | st.text(max_size=12) | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.booleans())
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), children, max_size=6),
        max_leaves=30,
    )


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.dictionaries(st.sampled_from(SCENARIO_KEYS), documents(SCENARIO_KEYS), max_size=8))
def test_scenario_parser_never_raises_anything_but_a_bpfkit_error(doc):
    try:
        sc = scenario.parse_scenario(doc, source="fuzz.toml")
    except BpfkitError:
        return
    assert math.isfinite(sc.duration) and sc.duration > 0
    assert scenario.SCENARIO_NAME.fullmatch(sc.name)


@FUZZ
@given(st.dictionaries(st.sampled_from(POLICY_KEYS), documents(POLICY_KEYS), max_size=6))
def test_policy_parser_never_raises_anything_but_a_bpfkit_error(doc):
    try:
        subflow_policy.parse_policy(doc, source="fuzz.toml", available_cc=["cubic", "reno"])
    except BpfkitError:
        return
