"""`make bench` harness (bench/attention.py): report structure on a tiny run, entry parsing, stopping rules.

No timing assertions: the machine is shared and timings are noisy; only structure and invariants.
"""
from __future__ import annotations

import json

import pytest

from bench.attention import SKIPPED, extrapolate, main, resolve_entries, stop_reason
from bench.report import growth_per_doubling
from bench.worker import parse_entry
from lab.registry import ConfigError


def test_tiny_run_writes_table_json_and_plot(tmp_path, capsys):
    main(["--attentions", "softmax", "--lengths", "256,512", "--repeats", "1", "--min-seconds", "0",
          "--out", str(tmp_path)])
    report = json.loads((tmp_path / "attention.json").read_text())
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report) >= {"machine", "settings", "notes", "mechanisms", "results", "growth", "summary"}
    assert report["machine"]["threads"] >= 1 and report["machine"]["torch"]
    assert list(report["mechanisms"]) == ["softmax"]
    assert [(r["mechanism"], r["n"], r["status"]) for r in report["results"]] == [
        ("softmax", 256, "ok"), ("softmax", 512, "ok")]
    for record in report["results"]:
        assert record["time_ms"] > 0 and record["timed_runs"] == 1
        assert record["peak_mib"] > 0  # q, k, v grads alone are 3 x 128 KiB at n = 256
        assert record["time_x_softmax"] == 1.0 and record["memory_x_softmax"] == 1.0
    [step] = report["growth"]["softmax"]
    assert (step["from_n"], step["to_n"]) == (256, 512) and step["time"] > 0 and step["memory"] > 0
    table = capsys.readouterr().out
    assert "softmax" in table and "×softmax" in table


@pytest.mark.parametrize("entry, expected", [
    ("softmax", ("softmax", {})),
    ("esp:cost=sqeuclidean", ("esp", {"cost": "sqeuclidean"})),
    (" esp:cost=sqeuclidean, slice_chunk=4,hard=true,inv_temperature=1e1,slice_chunk=null ",
     ("esp", {"cost": "sqeuclidean", "slice_chunk": None, "hard": True, "inv_temperature": 10.0})),
    ("esp_direct:sort_temperature=1,cost=sqeuclidean",
     ("esp_direct", {"sort_temperature": 1.0, "cost": "sqeuclidean"})),
])
def test_parse_entry(entry, expected):
    assert parse_entry(entry) == expected


@pytest.mark.parametrize("entry, message", [
    (":cost=euclidean", "expected"), ("esp:cost", "expected"), ("esp:=3", "expected"),
    ("esp:x=none", "unknown option 'x' for attention 'esp'"), ("esp:hard=3", "esp.hard must be bool"),
    ("esp:cost=manhattan", "esp.cost must be one of"), ("nosuch", "unknown attention 'nosuch'"),
])
def test_parse_entry_rejects_malformed_and_mistyped(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_entry(entry)


def test_resolve_entries_adds_softmax_and_rejects_unknown():
    entries, notes = resolve_entries(["softmax", "softmax"], heads=2, head_dim=8)
    assert entries == ["softmax"] and notes == []
    with pytest.raises(ConfigError, match="valid choices: .*softmax"):
        resolve_entries(["no_such_attention"], heads=2, head_dim=8)
    with pytest.raises(ConfigError, match="unknown option 'tau'"):
        resolve_entries(["softmax:tau=1"], heads=2, head_dim=8)


def _ok(n, seconds, peak_bytes):
    return {"mechanism": "m", "n": n, "status": "ok", "time_s": seconds, "peak_bytes": peak_bytes,
            "over_budget": False}


def test_extrapolate_continues_the_last_exponent():
    assert extrapolate([(256, 1.0)], 512) == pytest.approx(4.0)  # one point: quadratic assumed
    assert extrapolate([(256, 1.0), (512, 8.0)], 1024) == pytest.approx(64.0)  # cubic continues
    assert extrapolate([(256, 1.0), (512, 1.0)], 1024) == pytest.approx(2.0)  # never below linear


def test_stop_reason():
    assert stop_reason([], 256, 60.0, 2**30) is None
    assert stop_reason([_ok(256, 1.0, 1000)], 512, 60.0, 2**30) is None
    assert "predicted 64 s" in stop_reason([_ok(256, 1.0, 1000), _ok(512, 8.0, 1000)], 1024, 60.0, 2**30)
    assert "GiB > limit" in stop_reason([_ok(256, 0.1, 2**29)], 512, 60.0, 2**30)
    assert "took" in stop_reason([{**_ok(256, 90.0, 1), "over_budget": True}], 512, 60.0, 2**30)
    oom = {"mechanism": "m", "n": 256, "status": "oom", "message": "out of memory"}
    assert stop_reason([oom], 512, 60.0, 2**30) == "oom at n=256"
    skipped = {"mechanism": "m", "n": 512, "status": SKIPPED, "message": "oom at n=256"}
    assert stop_reason([oom, skipped], 1024, 60.0, 2**30) == "oom at n=256"


def test_growth_is_per_doubling():
    [step] = growth_per_doubling([_ok(1024, 1.0, 100), _ok(4096, 16.0, 400)])
    assert step["time"] == pytest.approx(4.0) and step["memory"] == pytest.approx(2.0)
