"""Scenario loading and validation: units, defaults, and one clear error (file +
key path) for each kind of mistake, raised before anything is started."""

import copy
from pathlib import Path

import pytest

from bpfkit.errors import UsageError
from bpfkit.lab import scenario as sc
from bpfkit.lab import values
from bpfkit.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit

GOOD = {
    "name": "t",
    "duration": "10s",
    "paths": {"wifi": {"rate": "20mbit", "delay": "10ms"}, "lte": {"rate": "10mbit", "delay": "50ms", "backup": True}},
    "traffic": {"kind": "bulk", "time": "10s"},
    "events": [{"at": "3s", "path": "wifi", "action": "down"}, {"at": "7s", "path": "wifi", "action": "up"}],
}


def with_change(path: str, value=None, delete: bool = False) -> dict:
    """GOOD with one key (dotted path, list indices as ints) set or deleted."""
    doc = copy.deepcopy(GOOD)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = doc
    for key in keys[:-1]:
        target = target[key]
    if delete:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


def error_of(doc: dict) -> str:
    with pytest.raises(UsageError) as info:
        sc.parse_scenario(doc, source="x.toml")
    return str(info.value)


def test_good_scenario_in_base_units():
    s = sc.parse_scenario(GOOD, source="x.toml")
    wifi, lte = s.paths
    assert (wifi.name, wifi.rate_bps, wifi.delay_s, wifi.base_rtt_s) == ("wifi", 20e6, 0.010, 0.020)
    assert lte.backup and not wifi.backup
    assert s.traffic.kind == "bulk" and s.traffic.time_s == 10 and s.traffic.bytes is None
    assert s.traffic.data_sender == "server"  # download by default
    assert [e.action for e in s.events] == ["down", "up"]
    assert s.schedulers == ("default",) and s.repetitions == 1 and s.seed == 1
    assert s.capacity_bps == 30e6


def test_default_queue_is_one_bdp_with_a_floor():
    # 10 Mbit/s × 100 ms RTT = 125 kB = 83 full packets
    assert sc.default_queue_packets(10e6, 0.050) == 83
    assert sc.default_queue_packets(10e6, 0.0) == sc.MIN_QUEUE_PACKETS
    s = sc.parse_scenario(GOOD)
    assert s.paths[1].queue_packets == 83 and s.paths[1].queue_from_bdp


def test_explicit_queue_is_kept_and_a_set_event_recomputes_only_the_default():
    s = sc.parse_scenario(with_change("paths.wifi.queue", 50))
    assert s.paths[0].queue_packets == 50 and not s.paths[0].queue_from_bdp
    assert s.paths[0].with_changes({"delay_s": 0.2}).queue_packets == 50
    lte = s.paths[1]
    assert lte.with_changes({"delay_s": 0.1}).queue_packets == sc.default_queue_packets(10e6, 0.1)


@pytest.mark.parametrize(
    "text, value",
    [("20mbit", 20e6), ("1.5Gbit", 1.5e9), ("64000bit", 64000), ("500kbit/s", 500e3)],
)
def test_parse_rate(text, value):
    assert values.parse_rate(text) == value


@pytest.mark.parametrize("text, value", [("10ms", 0.01), ("2.5s", 2.5), ("250us", 250e-6), ("1min", 60)])
def test_parse_time(text, value):
    assert values.parse_time(text) == pytest.approx(value)


@pytest.mark.parametrize("text, value", [("20MB", 20_000_000), ("64KiB", 65536), ("1200B", 1200), (1200, 1200)])
def test_parse_size(text, value):
    assert values.parse_size(text) == value


@pytest.mark.parametrize(
    "doc, expected",
    [
        (with_change("paths.wifi.bandwidth", "1mbit"), "x.toml: paths.wifi.bandwidth: unknown key"),
        (with_change("colour", "blue"), "x.toml: colour: unknown key"),
        (with_change("traffic.size", "1MB"), "x.toml: traffic.size: unknown key"),
        (with_change("events.0.when", "1s"), "x.toml: events[0].when: unknown key"),
        (with_change("paths.wifi.rate", "-5mbit"), "x.toml: paths.wifi.rate: must be > 0"),
        (with_change("paths.wifi.rate", "0mbit"), "x.toml: paths.wifi.rate: must be > 0"),
        (with_change("paths.wifi.rate", "20mbps"), "x.toml: paths.wifi.rate: unknown rate unit"),
        (with_change("paths.wifi.delay", 10), "x.toml: paths.wifi.delay: expected a duration with a unit"),
        (with_change("paths.wifi.loss", 0.01), "x.toml: paths.wifi.loss: expected a percentage"),
        (with_change("paths.wifi.loss", "100%"), "x.toml: paths.wifi.loss: must be in [0%, 100%)"),
        (with_change("paths.wifi.jitter", "20ms"), "x.toml: paths.wifi.jitter: must not exceed delay"),
        (with_change("paths.wifi.rate", delete=True), "x.toml: paths.wifi.rate: required key is missing"),
        (with_change("paths.wifi.backup", True), "x.toml: paths.wifi.backup: the first path"),
        (with_change("duration", delete=True), "x.toml: duration: required key is missing"),
        (with_change("events.1.at", "12s"), "x.toml: events[1].at: event at 12 s is not before the end"),
        (with_change("events.1.at", "10s"), "x.toml: events[1].at: event at 10 s is not before the end"),
        (with_change("events.0.path", "wlan"), "x.toml: events[0].path: unknown path 'wlan'"),
        (with_change("events.0.action", "flap"), "x.toml: events[0].action: must be one of"),
        (with_change("events.0.rate", "1mbit"), "x.toml: events[0].rate: only `set` events take"),
        (with_change("events.1.action", "down"), "x.toml: events: path 'wifi' is already down"),
        (with_change("schedulers", ["default", "-rr"]), "x.toml: schedulers[1]: invalid scheduler name '-rr'"),
        (with_change("schedulers", ["a_name_that_is_too_long"]), "x.toml: schedulers[0]: invalid scheduler name"),
        (with_change("schedulers", ["default", "default"]), "x.toml: schedulers[1]: scheduler 'default' is listed twice"),
        (with_change("schedulers", []), "x.toml: schedulers: expected a non-empty list"),
        (with_change("repetitions", 0), "x.toml: repetitions: must be >= 1"),
        (with_change("traffic.kind", "video"), "x.toml: traffic.kind: must be one of"),
        (with_change("traffic.time", "11s"), "x.toml: traffic.time: 11 s is longer than the scenario duration"),
        (with_change("traffic", {"kind": "bulk", "bytes": "1MB", "time": "1s"}), "x.toml: traffic.bytes: give either bytes or time"),
        (with_change("traffic", {"kind": "request-response", "request_size": 100}), "x.toml: traffic.response_size: required key is missing"),
        (with_change("traffic", {"kind": "request-response", "request_size": 100, "response_size": 100}), "x.toml: traffic.count: back-to-back requests"),
        (with_change("traffic", {"kind": "request-response", "request_size": 1, "response_size": 1, "rate": 1, "count": 20}), "x.toml: traffic.count: 20 requests at 1/s do not start"),
        (with_change("traffic", {"kind": "cbr", "rate": "1mbit", "message_size": 8}), "x.toml: traffic.message_size: must be >= 16"),
        (with_change("paths", {f"p{i}": {"rate": "1mbit"} for i in range(9)}), "x.toml: paths: at most 8 paths"),
        (with_change("paths", {"1st": {"rate": "1mbit"}}), "x.toml: paths.1st: path names start with a letter"),
    ],
)
def test_each_mistake_gives_one_clear_error(doc, expected):
    message = error_of(doc)
    assert message.startswith(expected), message
    assert "\n" not in message.split("\n  hint:")[0]


def test_set_event_parses_changes_in_base_units():
    doc = with_change("events", [{"at": "4s", "path": "wifi", "action": "set", "rate": "1mbit", "delay": "100ms", "loss": "1%"}])
    (event,) = sc.parse_scenario(doc).events
    assert event.changes == {"rate_bps": 1e6, "delay_s": 0.1, "loss_pct": 1.0}


def test_request_response_count_defaults_to_rate_times_duration():
    doc = with_change("traffic", {"kind": "request-response", "request_size": "200B", "response_size": "100KB", "rate": 10})
    t = sc.parse_scenario(doc).traffic
    assert (t.count, t.request_rate, t.response_size, t.data_sender) == (100, 10.0, 100_000, "server")
    assert t.warmup is True  # timed requests start on an established connection unless asked otherwise


def test_request_response_warmup_can_be_turned_off_and_must_be_a_boolean():
    rr = {"kind": "request-response", "request_size": "200B", "response_size": "100KB", "rate": 10}
    assert sc.parse_scenario(with_change("traffic", {**rr, "warmup": False})).traffic.warmup is False
    assert error_of(with_change("traffic", {**rr, "warmup": "yes"})).startswith(
        "x.toml: traffic.warmup: expected true or false")
    assert error_of(with_change("traffic", {"kind": "bulk", "time": "1s", "warmup": True})).startswith(
        "x.toml: traffic.warmup: unknown key")


def test_scaled_shrinks_times_sizes_and_counts():
    s = sc.parse_scenario(with_change("traffic", {"kind": "bulk", "bytes": "20MB"})).scaled(0.5)
    assert s.duration_s == 5 and s.traffic.bytes == 10_000_000
    assert [e.at_s for e in s.events] == [1.5, 3.5]
    with pytest.raises(UsageError):
        s.scaled(0)


def test_with_schedulers_checks_syntax():
    s = sc.parse_scenario(GOOD)
    assert sc.with_schedulers(s, ["default", "bpf_rr"]).schedulers == ("default", "bpf_rr")
    with pytest.raises(UsageError, match="invalid scheduler name 'rr;reboot'"):
        sc.with_schedulers(s, ["rr;reboot"])


def test_load_scenario_reports_file_for_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("duration = \n")
    with pytest.raises(UsageError, match=r"bad\.toml: not valid TOML"):
        sc.load_scenario(bad)
    with pytest.raises(UsageError, match="cannot read scenario"):
        sc.load_scenario(tmp_path / "missing.toml")
    neg = tmp_path / "neg.toml"
    neg.write_text('duration = "5s"\n[paths.a]\nrate = "-1mbit"\n[traffic]\nkind = "bulk"\n')
    with pytest.raises(UsageError, match=r"neg\.toml: paths\.a\.rate: must be > 0"):
        sc.load_scenario(neg)


@pytest.mark.parametrize("file", sorted((PROJECT_ROOT / "scenarios").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(file: Path):
    s = sc.load_scenario(file)
    assert s.name == file.stem
    assert len(s.paths) >= 2


def test_shipped_scenarios_include_the_required_ones():
    names = {p.stem for p in (PROJECT_ROOT / "scenarios").glob("*.toml")}
    assert {"wifi-lte", "equal-paths", "lossy-path", "handover"} <= names


def test_cli_validate_reports_error_with_exit_2(tmp_path, capsys):
    from bpfkit.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('duration = "5s"\n[paths.a]\nrate = "1mbit"\nspeed = 3\n[traffic]\nkind = "bulk"\n')
    assert main(["lab", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "paths.a.speed: unknown key" in err and err.count("error") == 1


def test_cli_run_rejects_bad_input_before_starting_anything(tmp_path, capsys):
    from bpfkit.cli import main

    good = PROJECT_ROOT / "scenarios" / "wifi-lte.toml"
    assert main(["lab", "run", str(good), "--host", "--schedulers", "bpf rr", "--out", str(tmp_path / "o")]) == 2
    assert "invalid scheduler name 'bpf rr'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_resolved_scenario_round_trips_and_a_bad_one_is_one_error(tmp_path):
    """What `lab run --vm` and the bench's plan hand the guest: Scenario.to_dict() as JSON."""
    import json

    for file in sorted((PROJECT_ROOT / "scenarios").glob("*.toml")):
        s = sc.load_scenario(file).scaled(0.5)
        path = tmp_path / f"{s.name}.json"
        path.write_text(json.dumps(s.to_dict()))
        assert sc.load_scenario(path) == s, file
    for text, error in (("[1]", "not a resolved scenario"), ("{", "not valid JSON"),
                        ('{"name": "x"}', "not a resolved scenario"),
                        (json.dumps({**s.to_dict(), "schedulers": ["a;b"]}), "invalid scheduler name"),
                        (json.dumps({**s.to_dict(), "traffic": {"kind": "warp"}}), "traffic kind 'warp'")):
        path.write_text(text)
        with pytest.raises(UsageError, match=error):
            sc.load_scenario(path)
