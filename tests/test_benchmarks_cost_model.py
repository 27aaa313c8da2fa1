"""benchmarks/bench_cost_model.py's verdict: its table against the cost model's targets."""

from __future__ import annotations

from benchmarks.bench_cost_model import verdict


def _row(pred_ms: float, med_ms: float, best_ms: float) -> tuple[float, float, float, float]:
    return pred_ms / 1e3, med_ms / 1e3, best_ms / 1e3, 1.0


def test_the_verdict_counts_the_rows_and_speedups_in_their_bands_and_names_each_miss() -> None:
    # 2026-12-05's run 3, as printed (ms): BERT's autopipe plan ran on a noisy spell
    rows = {
        "mlp": {"ilp": _row(11.50, 13.69, 11.77), "uniform": _row(12.19, 13.43, 11.50)},
        "bert": {"ilp": _row(227.55, 276.19, 228.40), "uniform": _row(310.50, 308.81, 300.25)},
        "tied_lm": {"ilp": _row(463.73, 474.95, 462.84), "uniform": _row(531.65, 578.86, 543.67)},
    }
    lines = verdict(rows)
    assert lines[0] == "rows with predicted / median in 0.85-1.15: 4 of 6"
    assert lines[1] == "  out: mlp ilp 0.840, its median 1.16 x its best (noisy)"
    assert lines[2] == "  out: bert ilp 0.824, its median 1.21 x its best (noisy)"
    assert lines[3] == "speedups within 10% of the predicted: 2 of 3"
    assert lines[4] == "  out: bert measured 1.118 against 1.365"
    assert lines[5] == "tied LM, autopipe over uniform: 1.219 x measured (at least 1.15)"


def test_a_row_in_its_band_and_a_quiet_miss() -> None:
    rows = {"unet": {"ilp": _row(46.0, 51.0, 50.0), "uniform": _row(58.0, 80.0, 79.0)}}
    lines = verdict(rows)
    assert lines[:2] == ["rows with predicted / median in 0.85-1.15: 1 of 2",
                         "  out: unet uniform 0.725, its median 1.01 x its best"]
    assert lines[2:] == ["speedups within 10% of the predicted: 0 of 1", "  out: unet measured 1.569 against 1.261"]
