"""Tests for autopipe/schedule/chrome_trace.py: the Chrome/Perfetto trace of a simulated step."""

from __future__ import annotations

import json
from pathlib import Path

from autopipe.schedule import StageCost, simulate
from autopipe.schedule.chrome_trace import LINKS_PID, PIPELINE_PID, chrome_trace, write_chrome_trace


def test_trace_loads_as_json_with_one_track_per_stage(tmp_path: Path) -> None:
    cost = StageCost(forward_s=0.002, backward_input_s=0.003, backward_weight_s=0.001, send_s=0.0005)
    r = simulate([cost] * 4, schedule="zb-h1", microbatches=6)
    path = tmp_path / "trace.json"
    write_chrome_trace(r, path)
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    compute = [e for e in events if e["ph"] == "X" and e["pid"] == PIPELINE_PID]
    assert sorted({e["tid"] for e in compute}) == [0, 1, 2, 3]
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == PIPELINE_PID}
    assert names == {s: f"stage {s}" for s in range(4)}
    assert len(compute) == 3 * 6 * 4
    assert {e["cat"] for e in compute} == {"forward", "backward", "weight-grad"}
    # microseconds, and the last block ends at the simulated step time
    assert max(e["ts"] + e["dur"] for e in compute) == round(r.iteration_s * 1e6, 3)
    sends = [e for e in events if e["ph"] == "X" and e["pid"] == LINKS_PID]
    assert len(sends) == 2 * 3 * 6
    assert data["otherData"]["schedule"] == "zb-h1"


def test_no_send_tracks_without_communication() -> None:
    r = simulate([StageCost(forward_s=1, backward_input_s=1, backward_weight_s=0)] * 2, microbatches=2)
    assert all(e["pid"] == PIPELINE_PID for e in chrome_trace(r)["traceEvents"])


def test_virtual_stages_get_one_track_per_rank_naming_its_stages() -> None:
    cost = StageCost(forward_s=1, backward_input_s=1, backward_weight_s=0)
    r = simulate([cost] * 4, schedule="interleaved-1f1b", microbatches=2, virtual_stages=2)
    names = [e["args"]["name"] for e in chrome_trace(r)["traceEvents"] if e["name"] == "thread_name"]
    assert names == ["rank 0 (stages 0, 2)", "rank 1 (stages 1, 3)"]
