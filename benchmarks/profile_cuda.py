"""Profile every example on a CUDA device, save the profiles, and compare the estimator with them.

For each example: ``measure`` on the GPU (CUDA events, median of repeats), the
per-node sum against the timed whole-model forward+backward, the saved bytes
against the whole model's and against ``torch.cuda.max_memory_allocated``; then
``estimate`` on the device spec that matches the GPU, and the ratio of estimated to
measured forward+backward per model. Profiles go to ``profiles/<gpu>/<model>-<dtype>.json``.

    python -m benchmarks.profile_cuda [--dtype fp32] [--device-spec h100] [--out profiles]

``--device cpu`` runs the same script on the CPU (a smoke test where there is no GPU).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import autopipe
from autopipe.profile import builtin_device_specs, estimate, measure

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert"]


def guess_spec(gpu_name: str) -> str | None:
    """The shipped device spec for a CUDA device name (``NVIDIA H100 80GB HBM3`` → ``h100``)."""
    lowered = gpu_name.lower()
    for name in builtin_device_specs():
        if re.search(rf"\b{name}\b", lowered):
            return name
    return None


def slug(text: str) -> str:
    """A file-name-safe form of a device name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    """Run it; exit 1 when a check is off target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    ap.add_argument("--device-spec", default=None, help="spec to estimate with (default: from the GPU name)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--only", default=",".join(EXAMPLES))
    ap.add_argument("--out", default=str(ROOT / "profiles"), help="folder for the profiles")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu for a smoke test", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    spec_name = args.device_spec or guess_spec(gpu) or "h100"
    folder = Path(args.out) / slug(gpu)
    print(f"device {gpu}; torch {torch.__version__}; estimating with device spec {spec_name}; "
          f"dtype {args.dtype}; warmup {args.warmup}, median of {args.repeats}")
    header = (f"{'model':8s} {'nodes':>5s} {'sum F+B':>10s} {'whole F+B':>10s} {'ratio':>6s} "
              f"{'saved':>10s} {'whole':>10s} {'ratio':>6s} {'peak':>10s} {'est F+B':>10s} {'est/meas':>8s}")
    print(header)
    ok = True
    rows = []
    for name in [n for n in args.only.split(",") if n]:
        spec = autopipe.load_spec(f"{ROOT / 'examples' / name}.py:build")
        graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
        t0 = time.perf_counter()
        p = measure(graph, spec.example_inputs, spec.example_kwargs, device=args.device,
                    dtype=args.dtype, warmup=args.warmup, repeats=args.repeats, progress=False)
        took = time.perf_counter() - t0
        e = estimate(graph, spec.example_inputs, spec.example_kwargs, device_spec=spec_name,
                     dtype=args.dtype, progress=False)
        p.save(folder / f"{name}-{p.dtype}.json")
        whole = p.meta["whole_model"]
        fb = p.forward_s + p.backward_s
        t_ratio = fb / whole["forward_backward_s"]
        m_ratio = p.activation_bytes / whole["activation_bytes"]
        est = e.forward_s + e.backward_s
        peak = whole.get("peak_bytes")
        ok &= abs(t_ratio - 1) <= 0.25 and abs(m_ratio - 1) <= 0.05
        peak_text = f"{peak / 2**20:8.2f}Mi" if peak else f"{'-':>10s}"
        print(f"{name:8s} {len(graph):5d} {fb * 1e3:8.3f}ms {whole['forward_backward_s'] * 1e3:8.3f}ms "
              f"{t_ratio:6.3f} {p.activation_bytes / 2**20:8.2f}Mi "
              f"{whole['activation_bytes'] / 2**20:8.2f}Mi {m_ratio:6.3f} {peak_text} "
              f"{est * 1e3:8.3f}ms {est / fb:8.3f}   ({took:.1f} s)")
        rows.append((name, t_ratio, m_ratio, est / fb))
    print(f"\nprofiles written to {folder}/")
    print("\nmarkdown for the README:\n")
    print(f"| model | Σ nodes / whole F+B | saved bytes Σ / whole | estimate ({spec_name}) / measured |")
    print("|---|---|---|---|")
    for name, t_ratio, m_ratio, e_ratio in rows:
        print(f"| {name} | {t_ratio:.3f} | {m_ratio:.3f} | {e_ratio:.3f} |")
    print("\nall on target" if ok else "\nOFF TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
