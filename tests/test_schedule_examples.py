"""Every example's plan drawn by `autopipe show --png --trace` (autopipe/schedule/render.py, chrome_trace.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import autopipe
from autopipe.cli.main import main
from tests.conftest import EXAMPLES, example_spec


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_plan_draws_a_png_and_a_trace(name: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = example_spec(name)
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
                         num_stages=4, microbatches=8, memory_limit="1GiB", profile="estimate")
    plan.save(tmp_path / "plan.json")
    png, trace = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    assert main(["show", str(tmp_path / "plan.json"), "--png", str(png), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("stage ") and line.endswith("idle") for line in out.splitlines()) == 4
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1000
        img.load()
    events = json.loads(trace.read_text())["traceEvents"]
    tracks = {e["tid"] for e in events if e["ph"] == "X" and e["pid"] == 0}
    assert tracks == {0, 1, 2, 3}
    compute = [e for e in events if e["ph"] == "X" and e["pid"] == 0]
    assert sum(1 for e in compute if e["cat"] != "optimizer") == 2 * 8 * 4
    # each stage's optimizer step, after its last backward (the estimate's rates)
    assert sorted(e["name"] for e in compute if e["cat"] == "optimizer") == [f"optimizer {s}" for s in range(4)]
