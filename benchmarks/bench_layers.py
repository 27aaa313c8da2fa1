"""What cutting only between whole layers costs an encoder-decoder, with one stack or both.

A Hugging Face T5 (random init, built on the meta device: no memory) is estimated for a
device spec and planned into each number of stages three ways: cutting anywhere, cutting
between whole layers as ``--granularity layer`` finds them (both stacks, ``t5.encoder.block``
and ``t5.decoder.block``: [Note: every stack of an encoder-decoder]), and between the
decoder's layers alone (``--cut-at 't5.decoder.block.*'``, what ``--granularity layer``
found before it counted every stack). It prints each plan's predicted step and the
layer-granular plans' cost over cutting anywhere.

The default is T5-small's shape: 6 + 6 blocks, width 512, 8 heads, feed-forward 2,048,
vocabulary 32,128; 256 source and 128 target tokens, 8 sequences per micro-batch, 8
micro-batches, Adam, estimated for an H100.

    python -m benchmarks.bench_layers [--stages 4,6] [--layers 6] [--decoder-layers 6]
        [--d-model 512] [--device-spec h100]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import autopipe
from autopipe.plan_format import Plan


class T5Pair(nn.Module):
    """T5ForConditionalGeneration taking (encoder ids, decoder ids) positionally, giving the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.t5 = model

    def forward(self, encoder_ids: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.t5(input_ids=encoder_ids, decoder_input_ids=decoder_ids).logits
        return out


def build(args: argparse.Namespace) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The T5 on the meta device, and one micro-batch of (source, target) token ids."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=args.vocab, d_model=args.d_model, d_kv=args.d_model // args.heads,
                   d_ff=4 * args.d_model, num_layers=args.layers, num_decoder_layers=args.decoder_layers,
                   num_heads=args.heads, use_cache=False, dropout_rate=0.0)
    with torch.device("meta"):
        model = T5Pair(T5ForConditionalGeneration(cfg))
    batch = args.batch_size
    return model, (torch.randint(0, args.vocab, (batch, args.source)),
                   torch.randint(0, args.vocab, (batch, args.target)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stages", default="4,6", help="comma-separated stage counts")
    ap.add_argument("--layers", type=int, default=6, help="encoder blocks")
    ap.add_argument("--decoder-layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32128)
    ap.add_argument("--source", type=int, default=256, help="source tokens per sequence")
    ap.add_argument("--target", type=int, default=128, help="target tokens per sequence")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--device-spec", default="h100")
    args = ap.parse_args(argv)
    model, inputs = build(args)
    print(f"T5: {args.layers} + {args.decoder_layers} blocks, width {args.d_model}, "
          f"{args.source} + {args.target} tokens × {args.batch_size} per micro-batch, "
          f"{args.microbatches} micro-batches, Adam, estimated for {args.device_spec}")
    print(f"{'stages':>6s} {'cut at':28s} {'layers':>6s} {'step':>11s} {'over anywhere':>13s} {'plan s':>6s}")
    ways: dict[str, dict[str, str]] = {"anywhere": {}, "layers (both stacks)": {"granularity": "layer"},
                                      "decoder layers only": {"cut_at": "t5.decoder.block.*"}}
    for p in [int(x) for x in args.stages.split(",") if x]:
        plans: dict[str, Plan] = {}
        for label, how in ways.items():
            t = time.perf_counter()
            plans[label] = plan = autopipe.plan(
                model, inputs, num_stages=p, microbatches=args.microbatches, profile="estimate",
                device_spec=args.device_spec, refine=False, **how)  # type: ignore[arg-type]
            info = plan.options.get("granularity", {})
            over = plan.predicted.iteration_s / plans["anywhere"].predicted.iteration_s - 1
            print(f"{p:6d} {label:28s} {info.get('layers', '-')!s:>6s} "
                  f"{plan.predicted.iteration_s * 1e3:8.2f} ms {over:+12.1%} "
                  f"{time.perf_counter() - t:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
