"""Values made again or sent: what each costs a Llama's step ([Note: values made again]).

    python -m benchmarks.bench_remade [--part plan,train] [--seqs 2048,8192]
        [--links 450e9,50e9,12.5e9] [--layers 32] [--stages 8] [--rounds 2] [--quiet-wait 30]

``plan`` (predictions only; several minutes): Llama-2-7B in bf16, estimated for an H100,
8 stages, 16 micro-batches of one sequence, planned with ``remake="none"`` (every value
sent, as plans were before the choice), ``"auto"`` and ``"all"`` over links of each
bandwidth (NVLink, one 400 Gb/s NIC per GPU, 100 Gb/s Ethernet): the predicted steps, sent
over auto, the nodes the stages make again, the largest cut, and the step with every value
made again.

``train`` (about 3 minutes): the Llama of ``build`` below (4 layers of width 64, seq 256,
micro-batches of 2), planned by ``autopipe.plan`` as ``autopipe plan`` does (measured here,
the stages refined as whole modules) but split uniformly, so that the plans made with
``remake="none"`` and ``"all"`` cut in the same place and differ only in what crosses the
cut; each trained on 2 gloo ranks with Adam, 8 micro-batches, as ``bench_cost_model`` trains
(the two plans in turns, ``--rounds`` runs each): predicted step against the measured median
and best, and all over none, predicted and measured. It prints which values ``auto`` makes
again on this machine, where a cut moves memory at several GB/s and the mask takes some 35
nodes to make again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("none", "all")
SEQ = 256


def build() -> Any:
    """The ``train`` part's Llama (a spec ``load_spec`` reads as ``benchmarks/bench_remade.py:build``)."""
    from examples import llama

    return llama.build(num_hidden_layers=4, hidden_size=64, intermediate_size=172, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=2048, seq_len=SEQ, batch_size=2)


def plan_part(seqs: list[int], links: list[str], layers: int = 32, stages: int = 8) -> None:
    """Print the 7B's predicted steps with values sent and made again where faster (``layers``
    of its 32 and fewer ``stages``, for a quick look)."""
    import autopipe
    from autopipe.partition.planner import plan_profile
    from autopipe.profile import estimate
    from examples import llama

    print(f"Llama-2-7B bf16{'' if layers == 32 else f' ({layers} layers)'}, estimated for an H100, {stages} stages, "
          f"{2 * stages} micro-batches of 1 sequence (predictions)")
    print(f"{'seq':>5s} {'link GB/s':>9s} {'sent: step':>11s} {'auto: step':>11s} {'sent/auto':>9s} "
          f"{'made again':>10s} {'largest cut sent / auto':>24s} {'all: step':>11s}")
    for seq in seqs:
        shape = {**llama.PRESETS["7b"], "num_hidden_layers": layers}
        spec = llama.build(**shape, seq_len=seq, batch_size=1, device="meta", dtype="bfloat16")
        graph = autopipe.trace(spec.model, spec.example_inputs)
        profile = estimate(graph, spec.example_inputs, device_spec="h100", dtype="bfloat16", progress=False)
        for link in links:
            plans = {mode: plan_profile(profile, num_stages=stages, microbatches=2 * stages,
                                        link_bandwidth=link, remake=mode) for mode in ("none", "auto", "all")}
            cut = {mode: max(sum(x.bytes for x in s.sends) for s in p.stages[:-1]) / 2**20
                   for mode, p in plans.items()}
            sent, auto = (plans[m].predicted.iteration_s for m in ("none", "auto"))
            print(f"{seq:5d} {float(link) / 1e9:9.1f} {sent * 1e3:8.1f} ms {auto * 1e3:8.1f} ms {sent / auto:9.3f} "
                  f"{sum(len(s.remade) for s in plans['auto'].stages):10d} "
                  f"{cut['none']:10.1f} / {cut['auto']:5.1f} MiB {plans['all'].predicted.iteration_s * 1e3:8.1f} ms",
                  flush=True)


def train_part(rounds: int, quiet_wait_s: float) -> None:
    """Train ``build``'s plans with values sent and made again; print predicted against measured."""
    import autopipe
    from autopipe.spec import example_target
    from benchmarks.bench_simulator import MAX_STEPS, SKIP_STEPS, _train

    spec_path = f"{Path(__file__).resolve()}:build"
    spec = autopipe.load_spec(spec_path)
    commands: dict[str, tuple[float, list[str], Path]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_remade.") as tmp:
        for mode in ("auto", *MODES):
            plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=8,
                                 method="uniform", profile="measure", loss_fn=spec.loss_fn,
                                 target=example_target(spec), remake=mode)
            remade = [len(s.remade) for s in plan.stages]
            print(f"  remake {mode}: nodes made again per stage {remade}, sends "
                  f"{[[x.tensor for x in s.sends] for s in plan.stages[:-1]]}, predicted "
                  f"{plan.predicted.iteration_s * 1e3:.2f} ms", flush=True)
            if mode == "auto":
                continue
            steps = max(16, min(MAX_STEPS, SKIP_STEPS + int(3.0 / plan.predicted.iteration_s)))
            folder = Path(tempfile.mkdtemp(prefix=f"{mode}.", dir=tmp))
            plan.save(folder / "plan.json")
            commands[mode] = (plan.predicted.iteration_s, [
                sys.executable, "-m", "benchmarks.bench_simulator", "--worker", spec_path,
                str(folder / "plan.json"), str(folder), str(steps), "malloc+cores"], folder)
        timed: dict[str, list[float]] = {mode: [] for mode in commands}
        for _ in range(max(1, rounds)):
            for mode, (_, cmd, folder) in commands.items():
                timed[mode].extend(_train(f"remake {mode}", cmd, folder, quiet_wait_s).steps)
    print(f"Llama (4 layers, width 64, seq {SEQ}, micro-batches of 2), 2 uniform stages, 1F1B, 8 "
          f"micro-batches, Adam, 2 gloo ranks on their own cores, {rounds} run(s) each")
    print(f"{'remake':>7s} {'predicted':>11s} {'median':>11s} {'best':>11s} {'pred/median':>11s}")
    for mode, (predicted, _, _) in commands.items():
        median, best = statistics.median(timed[mode]), min(timed[mode])
        print(f"{mode:>7s} {predicted * 1e3:8.2f} ms {median * 1e3:8.2f} ms {best * 1e3:8.2f} ms "
              f"{predicted / median:11.3f}")
    (pn, _, _), (pa, _, _) = commands["none"], commands["all"]
    print(f"all / none: predicted {pa / pn:.3f}, measured median "
          f"{statistics.median(timed['all']) / statistics.median(timed['none']):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="plan,train", help="plan, train or both (default)")
    ap.add_argument("--seqs", default="2048,8192", help="the plan part's sequence lengths")
    ap.add_argument("--links", default="450e9,50e9,12.5e9", help="the plan part's link bandwidths, bytes/s")
    ap.add_argument("--layers", type=int, default=32, help="the plan part's layers (the 7B has 32)")
    ap.add_argument("--stages", type=int, default=8, help="the plan part's stages (2 × as many micro-batches)")
    ap.add_argument("--rounds", type=int, default=2, help="the train part's runs of each plan")
    ap.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS")
    args = ap.parse_args(argv)
    parts = set(args.part.split(","))
    if not parts <= {"plan", "train"}:
        ap.error(f"unknown part in {args.part!r}; use plan, train or plan,train")
    t0 = time.perf_counter()
    if "plan" in parts:
        plan_part([int(s) for s in args.seqs.split(",")], args.links.split(","), args.layers, args.stages)
    if "train" in parts:
        train_part(args.rounds, args.quiet_wait)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
