"""The benchmark scripts run end to end in ``--quick`` mode and write well-formed results.

These tests check shape and consistency (every group and variant measured,
every sample stored, numbers finite and positive), never speed: quick runs are
far too short for their figures to mean anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(script: str, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/<script> --quick --json`` in a subprocess; return the JSON and stdout."""
    out = tmp_path / f"{script}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    env["INSTRUMENT_METRICS_DB"] = str(tmp_path / "unused-default.db")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(out),
                           *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["environment"]["python"] == sys.version.split()[0]
    return data, proc.stdout


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_overhead_measures_every_group_against_its_bare_baseline(tmp_path: Path) -> None:
    """overhead.py times bare, floor and the kit in every group, with a target on the kit."""
    data, stdout = _run("overhead.py", tmp_path)
    groups = data["groups"]
    frameworks = {"wsgi", "flask", "flask-dict", "flask-jsonify", "asgi", "starlette", "fastapi",
                  "fastapi-model", "uvicorn", "uvicorn-starlette", "uvicorn-fastapi",
                  "uvicorn-fastapi-model", "django"}
    assert set(groups) == frameworks | {"decorator", "method", "decorator-async"}
    for name, variants in groups.items():
        assert {"bare", "instrument"} <= set(variants), name
        if name in frameworks:
            assert {"floor", "instrument, request_id off"} <= set(variants), name
        assert variants["bare"]["overhead_us"] == 0.0
        for label, r in variants.items():
            assert _positive(r["median_us"]) and _positive(r["min_us"]), (name, label)
            assert r["min_us"] <= r["median_us"], (name, label)
            assert math.isfinite(r["overhead_us"]) and _positive(r["ratio"]), (name, label)
            assert r["rounds"] == data["rounds"] and r["number"] >= 20, (name, label)
        kit = variants["instrument"]
        assert kit["target_us"] == data["targets_us"][name]
        assert kit["met"] == (kit["overhead_us"] <= kit["target_us"])
    otel = _installed("opentelemetry.sdk") and _installed("opentelemetry.instrumentation.wsgi")
    assert ("otel-wsgi" in groups["wsgi"]) == otel
    modules = {"prometheus-flask-exporter": "prometheus_flask_exporter",
               "starlette-exporter": "starlette_exporter",
               "prometheus-fastapi-instrumentator": "prometheus_fastapi_instrumentator",
               "django-prometheus": "django_prometheus"}
    assert set(data["shapes"]) == frameworks - {"wsgi", "asgi", "uvicorn"}
    for group, (middleware, label) in data["shapes"].items():
        kit = groups[group]["instrument"]
        assert (label in groups[group]) == _installed(modules[label]), label
        # issue 19's bars are judged in every run, against the same run's middleware and peer
        if groups[middleware]["instrument"]["overhead_us"] > 0:
            assert kit["vs_middleware_met"] == (kit["vs_middleware"]
                                                <= data["max_vs_middleware"]), group
        if label in groups[group]:
            assert "x_under_exporter_met" in kit, group
    flusher = data["flusher"]
    assert flusher["dropped"] == 0
    assert flusher["samples_flushed"] > 0
    assert flusher["rows_in_sqlite"] >= flusher["samples_flushed"]
    assert "overhead us" in stdout and "instrument" in stdout


def test_flusher_stores_every_sample_and_reports_rates(tmp_path: Path) -> None:
    """flusher.py runs all six cases, every raw sample lands in SQLite, and --profile adds up."""
    data, stdout = _run("flusher.py", tmp_path, "--samples", "3000", "--batch", "1000",
                        "--profile")
    results = data["results"]
    assert [(r["case"], r["raw_rows"]) for r in results] == [
        (case, raw) for raw in (True, False)
        for case in ("aggregate", "aggregate+sqlite", "flusher")] + [
        ("aggregate+sqlite, 10 % errors as types", True),
        ("aggregate+sqlite, 10 % errors grouped", True)]
    grouped = results[-1]["rows"]
    assert grouped["error_occurrences"] > 0 and grouped["error_groups"] == 5
    assert results[-2]["rows"]["error_occurrences"] == 0
    for r in results:
        assert r["samples"] == 3000
        assert _positive(r["samples_per_s"]) and _positive(r["us_per_sample"])
        if r["case"] == "aggregate":
            assert r["rows"] == {}
            continue
        raw_rows = r["rows"]["api_metrics"] + r["rows"]["call_metrics"]
        assert raw_rows == (3000 if r["raw_rows"] else 0), r
        assert r["rows"]["metric_rollups"] > 0 and r["rows"]["metric_rollup_buckets"] > 0
    target = [r for r in results if r["target"] is not None]
    assert [(r["case"], r["raw_rows"]) for r in target] == [("aggregate+sqlite", True)]
    assert target[0]["met"] == (target[0]["samples_per_s"] >= data["target_samples_per_s"])
    phases = {p["phase"]: p for p in data["profile"]}
    assert {"(aggregate)", "api_metrics", "COMMIT", "(total aggregate+sqlite)"} <= set(phases)
    parts = sum(p["us_per_sample"] for name, p in phases.items()
                if not name.startswith(("floor", "(total")))
    assert math.isclose(parts, phases["(total aggregate+sqlite)"]["us_per_sample"],
                        rel_tol=1e-6)
    assert _positive(phases["floor: plain 12-column INSERT, per row"]["us_per_sample"])
    assert "samples/cpu-s" in stdout


def test_memory_compares_a_bare_and_an_instrumented_child(tmp_path: Path) -> None:
    """memory.py measures both children under both loads and judges only the steady one."""
    data, stdout = _run("memory.py", tmp_path, "--seconds", "0.6", "--rate", "2000")
    loads = data["loads"]
    assert set(loads) == {"paced", "max"}
    for name, entry in loads.items():
        for side in ("bare", "kit"):
            s = entry[side]
            assert _positive(s["start_mb"]) and _positive(s["requests_per_s"]), (name, side)
            assert s["start_mb"] <= s["peak_mb"] and s["steady_mb"] <= s["peak_mb"]
        assert math.isclose(entry["delta_steady_mb"],
                            entry["kit"]["steady_mb"] - entry["bare"]["steady_mb"])
        assert entry["kit_stats"]["samples_flushed"] > 0
    paced = loads["paced"]
    assert paced["kit_stats"]["dropped"] == 0  # the flusher keeps up with a steady load
    assert paced["met"] == (paced["delta_steady_mb"] < data["target_mb"])
    assert "met" not in loads["max"]
    assert "added MB" in stdout


def test_instruction_counts_put_the_kit_between_the_floor_and_a_ceiling(tmp_path: Path) -> None:
    """Callgrind counts are deterministic: the WSGI hot path costs more than the floor, bounded."""
    data, stdout = _run("instructions.py", tmp_path)
    wsgi = data["groups"]["wsgi"]
    added_floor = wsgi["floor"] - wsgi["bare"]
    added_kit = wsgi["kit"] - wsgi["bare"]
    assert 0 < added_floor < added_kit
    # About 14.5k when written (2026-11): a request path that grows past this has regressed.
    assert added_kit < 22_000, f"the WSGI request path now costs {added_kit:.0f} instructions"
    assert "instructions/request" in stdout


def test_otlp_export_cost_is_measured_against_a_real_receiver(tmp_path: Path) -> None:
    """otlp.py exports both temporalities to its receiver and reports what each cost."""
    data, stdout = _run("otlp.py", tmp_path)
    assert [r["temporality"] for r in data["results"]] == ["cumulative", "delta"]
    for r in data["results"]:
        assert r["exports"] >= 2 and r["series"] > 10 and r["payload_bytes"] > 1000
        assert _positive(r["write_us_per_sample"]) and _positive(r["export_ms_median"])
    assert "OTLP export on the flusher thread" in stdout


def test_profiler_benchmark_measures_off_and_on(tmp_path: Path) -> None:
    """profiler.py runs off, on, off, on; off has no samples and no profiler CPU."""
    data, stdout = _run("profiler.py", tmp_path)
    runs = data["results"]
    assert [r["profiler"] for r in runs] == [False, True, False, True]
    assert all(r["samples"] == 0 and r["profiler_cpu_s"] == 0 for r in runs if not r["profiler"])
    assert all(r["samples"] > 0 for r in runs if r["profiler"])
    assert all(_positive(r["cpu_us_per_request"]) for r in runs)
    assert "profiler CPU at 50 Hz" in stdout
