"""benchmarks/gpu_suite.py: the dry run (the suite's code paths on CPU, tiny shapes) and its import check."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from benchmarks import gpu_suite


@pytest.mark.slow
def test_dry_run_measures_every_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = gpu_suite.main(["--dry-run", "--out", str(tmp_path), "--repeats", "2", "--warmup", "1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["rows"]}
    assert code == 0, [r["errors"] for r in rows.values()]
    assert sorted(rows) == sorted(c.name for c in gpu_suite.CASES)
    dtypes = {c.name: set(c.dtypes) for c in gpu_suite.CASES}
    for r in rows.values():
        assert set(r["profiles"]) == dtypes[r["model"]]
        assert all(q["estimate_fb_s"] > 0 and q["nodes_fb_s"] > 0 for q in r["profiles"].values())
        assert len(r["stages"]) == gpu_suite.STAGES
        assert r["predicted_s"] > 0 and r["predicted_compute_only_s"] > 0
        assert r["steps"] == 10 and r["measured_median_s"] > 0 and len(r["losses"]) == 10
        u = r["uniform"]  # the uniform split, trained the same way
        assert u["predicted_s"] > 0 and u["measured_median_s"] > 0 and len(u["losses"]) == 10
        # the same weights and batches: the two plans' first losses agree
        assert u["losses"][0] == pytest.approx(r["losses"][0], rel=1e-3)
        assert len(r["stage_module_fb_again_s"]) == len(u["stage_module_fb_again_s"]) == gpu_suite.STAGES
        assert r["op_scratch"] == []  # the CPU has no allocator counters to read
        # each distinct attention call, per profiled dtype: torch's kernel and its time
        attention = r.get("attention", [])
        assert len(attention) == (len(dtypes[r["model"]]) if r["model"] in ("gpt2", "llama", "bert") else 0)
        for a in attention:
            assert a["choice"] in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION") and a["chosen_s"] > 0
            assert a["forced_s"]["MATH"] > 0 and a["calls"] == r["knobs"].get("num_hidden_layers",
                                                                            r["knobs"].get("n_layer"))
    bert = rows["bert"]["attention"][0]  # its padding mask is expanded: strides 0
    assert 0 in bert["mask"]["stride"] and bert["contiguous_mask_s"] > 0
    assert bert["mask_from_inputs"] is False and bert["no_mask_s"] > 0  # arange(seq) >= 0: no input sets it
    assert rows["llama"]["train_dtype"] == "bf16"  # the model's own dtype
    assert "pytest -m gpu: exit 0" in (tmp_path / "summary.md").read_text()
    with tarfile.open(tmp_path / "profiles.tar.gz") as tar:
        names = tar.getnames()
    assert "profiles/gpt2-bfloat16.json" in names and "profiles/unet-plan.json" in names
    assert "### Step" in capsys.readouterr().out
    assert "autopipe over uniform" in (tmp_path / "summary.md").read_text()
    assert "| bert | 2 | fp32 |" in (tmp_path / "summary.md").read_text()  # the attention table


def test_missing_package_stops_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gpu_suite, "NEEDS", ("torch", "no_such_package_here"))
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_package_here" in err and "wheels" in err
    assert not (tmp_path / "summary.json").exists()


def test_set_overrides_one_case_knob() -> None:
    knobs = gpu_suite.parse_knobs(["llama.seq_len=2048", "llama.dtype=float32", "mlp.x=1.5"],
                                  {"llama", "mlp"})
    assert knobs == {"llama": {"seq_len": 2048, "dtype": "float32"}, "mlp": {"x": 1.5}}
    for bad in ("llama.seq_len", "seq_len=1", "gpt9.seq_len=1", "llama.=1"):
        with pytest.raises(ValueError, match="MODEL.KNOB=VALUE"):
            gpu_suite.parse_knobs([bad], {"llama", "mlp"})
