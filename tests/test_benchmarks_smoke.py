"""The in-process benchmark runs once, quickly, and ends with its JSON summary. Never a timing assertion:
benchmarks are not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"nonguarded", "chat_pre", "chat_pre_post", "stream100", "stream100_chunk_hook", "refusal",
             "anthropic_stream100_chunk_hook",
             "chat_guardrail_pre", "chat_hook_check", "stream100_guardrail_mask", "stream2000_guardrail_mask",
             "chat_litellm_guardrail_pre"}
WITH_FLOOR = {"chat_pre", "stream100", "stream100_chunk_hook"}
GUARDRAIL_STREAMS = {"stream100_guardrail_mask", "stream2000_guardrail_mask"}
FLOORS = {"chat_pre_throughput", "stream100_throughput", "stream100_chunk_hook_throughput"}
TARGETS = {
    "nonguarded_throughput",
    "nonguarded_vs_noop_floor",
    "chat_pre_throughput",
    "stream100_throughput",
    "stream100_chunk_hook_throughput",
    "refusal_time_vs_bare_inprocess",
    "refusal_time_vs_bare_e2e",
    "moderation_race_added_ms",
    "stream_memory_growth_mb",
    "body_at_limit_peak_x",
    "vs_litellm_throughput_x",
}


def test_inprocess_quick_run_prints_the_json_summary() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--layer", "inprocess"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])

    assert summary["benchmark"] == "asgi_llm_guard"
    assert summary["quick"] is True
    assert summary["layers"] == ["inprocess"]
    assert set(summary["targets"]) == TARGETS
    for name, check in summary["targets"].items():
        assert set(check) == {"value", "limit", "op", "ok", "layer"}, name
        measured = check["layer"] == "inprocess"
        assert (check["ok"] is not None) == measured, name
        assert (check["value"] is not None) == measured, name
    assert set(summary["inprocess"]) == SCENARIOS | {"moderation_race_added_ms"}
    for name in SCENARIOS:
        stats = summary["inprocess"][name]
        floor = {"floor_us"} if name in WITH_FLOOR else set()
        streams = {"guard_calls_per_stream", "guard_us_per_chunk"} if name in GUARDRAIL_STREAMS else set()
        common = {"bare_us", "noop_us", "guard_us", "guard_vs_bare", "guard_vs_noop"}
        assert set(stats) == common | floor | streams, name
        assert all(value > 0 for value in stats.values()), name
    # the FloorGuard references are end-to-end ratios: not measured by the in-process layer
    assert summary["floors"] == dict.fromkeys(FLOORS)
    assert "In-process CPU per request" in done.stdout
    assert "Targets (same run)" in done.stdout
