"""Regenerate the reference profiles under profiles/ and the golden file of partition quality.

    python -m benchmarks.refresh_profiles              # profiles + golden cases + results
    python -m benchmarks.refresh_profiles --only h100/llama2-7b --keep-golden

Each reference is an example spec profiled on this CPU (``cpu/``) or estimated on a
device spec on meta tensors (``h100/``, ``a100/``). Golden cases per profile: each of
its stage counts, with a memory limit that binds (90% of the peak stage memory of the
unconstrained optimum, relaxed to 97% and then to unlimited if nothing fits), so the
planner has to trade time for memory.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopipe.errors import InfeasiblePlanError
from autopipe.partition.planner import plan_profile
from autopipe.profile import estimate, measure
from autopipe.profile.profile import Profile
from autopipe.quality.golden import GoldenCase, load_golden, refresh_golden, save_golden, table
from autopipe.runtime.calibrate import profile_runtime
from autopipe.spec import example_target, load_spec
from autopipe.trace import trace

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
GOLDEN = PROFILES / "golden.json"
MIB = 2**20


@dataclass(frozen=True)
class Reference:
    name: str
    spec: str
    args: dict[str, Any] = field(default_factory=dict)
    device_spec: str | None = None
    """None: measured on this CPU; else estimated for this spec."""
    dtype: str | None = None
    stages: tuple[int, ...] = (2, 4)
    binding: tuple[int, ...] | None = None
    """Stage counts that also get a case with a binding memory limit (None: all)."""
    recompute: tuple[int, ...] = ()
    """Stage counts that also get a case whose limit only recomputation meets
    (``recompute_limit``), planned with ``--recompute auto``."""

    def command(self) -> str:
        # make_profile builds an estimate's model with device=meta, and so traces it on meta
        args = {**self.args, **({"device": "meta"} if self.device_spec else {})}
        knobs = " ".join(f"--spec-arg {shlex.quote(f'{k}={v if isinstance(v, str) else repr(v)}')}"
                         for k, v in args.items())
        where = (f"--device meta --device-spec {self.device_spec}" if self.device_spec
                 else "--device cpu")
        dtype = f" --dtype {self.dtype}" if self.dtype else ""
        return f"autopipe profile {self.spec} {knobs} {where}{dtype} -o profiles/{self.name}.json".replace("  ", " ")


GPT2_MEDIUM = dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, seq_len=1024, batch_size=4)
BERT_LARGE = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                  intermediate_size=4096, vocab_size=30522, seq_len=512, batch_size=8)
LLAMA = dict(seq_len=4096, batch_size=1, dtype="bfloat16")

REFERENCES = [
    *(Reference(f"cpu/{n}", f"examples/{n}.py:build", recompute=r) for n, r in
      (("mlp", ()), ("gpt2", (2, 4)), ("llama", (4,)), ("resnet", ()), ("unet", ()), ("bert", (4,)))),
    Reference("h100/mlp", "examples/mlp.py:build",
              dict(in_dim=4096, hidden=8192, layers=32, batch_size=512), "h100", "bf16"),
    # its recompute case (since a backward's gradients count, 2026-12-04) ran into the 60 s limit
    Reference("h100/gpt2-medium", "examples/gpt2.py:build", GPT2_MEDIUM, "h100", "bf16"),
    Reference("h100/bert-large", "examples/bert.py:build", BERT_LARGE, "h100", "bf16"),
    Reference("h100/resnet34", "examples/resnet.py:build",
              dict(width=64, blocks=(3, 4, 6, 3), classes=1000, image=224, batch_size=64), "h100", "bf16"),
    Reference("h100/unet", "examples/unet.py:build",
              dict(width=64, depth=4, image=256, batch_size=8), "h100", "bf16"),
    Reference("h100/llama2-7b", "examples/llama.py:build", dict(preset="7b", **LLAMA), "h100",
              stages=(4, 8)),  # its recompute case's solve ran into the 60 s limit here
    Reference("a100/llama2-7b", "examples/llama.py:build", dict(preset="7b", **LLAMA), "a100",
              stages=(4, 8)),
    Reference("h100/llama2-70b", "examples/llama.py:build", dict(preset="70b", **LLAMA), "h100",
              stages=(8,)),
    Reference("a100/llama2-70b", "examples/llama.py:build", dict(preset="70b", **LLAMA), "a100",
              stages=(8,)),
]


def make_profile(ref: Reference) -> Profile:
    """Profile one reference (measure on CPU, or estimate on meta), with the spec's loss and,
    measured, the runtime's costs."""
    args = dict(ref.args)
    if ref.device_spec:
        args["device"] = "meta"
    spec = load_spec(str(ROOT / ref.spec), **args)
    graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
    loss = {"loss_fn": spec.loss_fn, "target": example_target(spec)}  # as `autopipe profile` does
    if ref.device_spec:
        return estimate(graph, spec.example_inputs, spec.example_kwargs,
                        device_spec=ref.device_spec, dtype=ref.dtype, **loss)
    return profile_runtime(measure(graph, spec.example_inputs, spec.example_kwargs, dtype=ref.dtype,
                                   **loss))


def binding_limit(profile: Profile, stages: int, m: int) -> str | None:
    """A memory limit that binds: 90% (then 97%) of the unconstrained optimum's peak stage;
    None when no such limit fits (the optimum is already as lean as any split)."""
    free = plan_profile(profile, num_stages=stages, microbatches=m, recompute="none")
    peak = max(s.memory.total for s in free.stages)
    for frac in (0.90, 0.97):
        limit = f"{-(-int(peak * frac) // MIB)}MiB"
        try:
            plan_profile(profile, num_stages=stages, microbatches=m, memory_limit=limit, recompute="none")
            return limit
        except InfeasiblePlanError:
            continue
    return None


def recompute_limit(profile: Profile, stages: int, m: int) -> str | None:
    """A memory limit at which ``--recompute auto`` plans with recomputation: the tightest of
    70%, 75% … 90% of the unconstrained optimum's peak stage where it finds a plan and that
    plan recomputes (None when none does: recomputation frees nothing on the stage that
    binds, e.g. a last stage holding the head and the loss)."""
    free = plan_profile(profile, num_stages=stages, microbatches=m, recompute="none")
    peak = max(s.memory.total for s in free.stages)
    for frac in (0.70, 0.75, 0.80, 0.85, 0.90):
        limit = f"{-(-int(peak * frac) // MIB)}MiB"
        try:
            plan = plan_profile(profile, num_stages=stages, microbatches=m, memory_limit=limit)
        except InfeasiblePlanError:
            continue
        if plan.recomputes:
            return limit
    return None


def recompute_cases(refs: list[Reference]) -> list[GoldenCase]:
    """The cases whose memory limit only recomputation meets (``Reference.recompute``)."""
    cases = []
    for ref in refs:
        profile = Profile.load(PROFILES / f"{ref.name}.json")
        for p in ref.recompute:
            limit = recompute_limit(profile, p, 2 * p)
            if limit is not None:
                cases.append(GoldenCase(profile=f"{ref.name}.json", stages=p, memory=limit,
                                        microbatches=2 * p, recompute="auto"))
            print(f"{ref.name}: p={p} m={2 * p} recompute-only limit {limit or 'none found'}", flush=True)
    return cases


def _sorted(cases: list[GoldenCase]) -> list[GoldenCase]:
    order = {f"{r.name}.json": i for i, r in enumerate(REFERENCES)}
    return sorted(cases, key=lambda c: (order.get(c.profile, len(order)), c.stages, c.memory is not None,
                                        c.recompute != "none"))


def write_readme() -> None:
    """profiles/README.md: one line per reference profile with the command that remakes it."""
    lines = [
        "# Reference profiles",
        "",
        "Written by `python -m benchmarks.refresh_profiles` (all of them, plus `golden.json`).",
        "`cpu/` profiles are measured on the CPU of the machine that ran it (1 thread, fp32);",
        "`h100/` and `a100/` ones are estimated on meta tensors from FLOPs and bytes with the",
        "shipped device specs (bf16). `golden.json` is the partition-quality record that",
        "`autopipe check --golden profiles/golden.json` (and the test suite) re-plans.",
        "",
        "| profile | how | command |",
        "|---|---|---|",
    ]
    for r in REFERENCES:
        how = f"estimated, {r.device_spec}" if r.device_spec else "measured, this CPU"
        lines.append(f"| `{r.name}.json` | {how} | `{r.command()}` |")
    (PROFILES / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="refresh only these references (names)")
    ap.add_argument("--no-profile", action="store_true",
                    help="keep the stored profiles; only make the golden cases again")
    ap.add_argument("--keep-golden", action="store_true",
                    help="keep the golden cases (limits) and only re-record their results")
    ap.add_argument("--add-recompute", action="store_true",
                    help="keep every other case as recorded; make the recompute-only cases again")
    args = ap.parse_args()
    refs = [r for r in REFERENCES if not args.only or r.name in args.only]
    if args.add_recompute:
        tol, kept = load_golden(GOLDEN)
        new = refresh_golden(GOLDEN, recompute_cases(refs))  # writes only these; all below
        names = {f"{r.name}.json" for r in refs}
        kept = [c for c in kept if c.recompute == "none" or c.profile not in names]
        save_golden(GOLDEN, tol, _sorted(kept + new))
        print(table(new))
        return
    write_readme()
    for ref in refs if not args.no_profile else []:
        t0 = time.perf_counter()
        make_profile(ref).save(PROFILES / f"{ref.name}.json")
        print(f"{ref.name}: profiled in {time.perf_counter() - t0:.1f} s  ({ref.command()})", flush=True)
    if args.keep_golden and GOLDEN.exists():
        fresh = refresh_golden(GOLDEN)
    else:
        old = load_golden(GOLDEN)[1] if GOLDEN.exists() else []
        cases = [c for c in old if c.profile not in {f"{r.name}.json" for r in refs}]
        for ref in refs:
            profile = Profile.load(PROFILES / f"{ref.name}.json")
            for p in ref.stages:
                m = 2 * p
                cases.append(GoldenCase(profile=f"{ref.name}.json", stages=p, memory=None,
                                        microbatches=m))
                if ref.binding is not None and p not in ref.binding:
                    continue
                limit = binding_limit(profile, p, m)
                if limit is not None:
                    cases.append(GoldenCase(profile=f"{ref.name}.json", stages=p, memory=limit,
                                            microbatches=m))
                print(f"{ref.name}: p={p} m={m} binding memory limit {limit or 'none found'}", flush=True)
        cases += recompute_cases(refs)
        save_golden(GOLDEN, 0.01, _sorted(cases))
        fresh = refresh_golden(GOLDEN)
    print()
    print(table(fresh))


if __name__ == "__main__":
    main()
