"""One rank of the order test: run each torch schedule once on tiny stages and record what ran.

Run by tests/test_schedule_actions.py as ``python -m tests.schedule_order_worker OUT_DIR`` under
the launcher (2 ranks). Writes ``OUT_DIR/rank{r}.json``: schedule → {"ran": [[stage, kind,
microbatch], ...], "sent": [[stage, kind, microbatch, actions run before], ...]}; a full
backward in a schedule that splits others is logged as B then W ([Note: DualPipeV]).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleDualPipeV,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
)

WIDTH, ROWS, MICROBATCHES = 8, 2, 4
# name → (torch class, virtual stages per rank)
RUNS = {"gpipe": (ScheduleGPipe, 1), "1f1b": (Schedule1F1B, 1),
        "interleaved-1f1b": (ScheduleInterleaved1F1B, 2), "zb-h1": (ScheduleInterleavedZeroBubble, 1),
        "zbv": (ScheduleZBVZeroBubble, 2), "dualpipev": (ScheduleDualPipeV, 2)}
V_SHAPED = ("zbv", "dualpipev")
SPLIT = ("zb-h1", "zbv", "dualpipev")
"""Schedules whose orders write the weight gradients as W actions."""
"""Rank r holds stages r and 2p−1−r (the others: r, r + p, …)."""


def _recording_stage(index: int, num_stages: int, log: list[list[Any]], sends: list[list[Any]],
                     split: bool) -> PipelineStage:
    example = torch.randn(ROWS, WIDTH)
    sent = example.clone().requires_grad_(True)
    stage = PipelineStage(nn.Linear(WIDTH, WIDTH), index, num_stages, torch.device("cpu"),
                          input_args=(example if index == 0 else sent,), output_args=(sent,))
    forward, backward, weight = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk
    fwd_sends, bwd_sends = stage.get_fwd_send_ops, stage.get_bwd_send_ops

    def f(chunk: int, *args: Any, **kwargs: Any) -> Any:
        log.append([index, "F", chunk])
        return forward(chunk, *args, **kwargs)

    def b(chunk: int, *args: Any, **kwargs: Any) -> Any:
        log.append([index, "B", chunk])
        out = backward(chunk, *args, **kwargs)
        if split and kwargs.get("full_backward", True):
            log.append([index, "W", chunk])
        return out

    def w(chunk: int, *args: Any, **kwargs: Any) -> Any:
        log.append([index, "W", chunk])
        return weight(chunk, *args, **kwargs)

    def send(ops: Any, kind: str) -> Any:
        def posted(chunk: int) -> Any:
            out = ops(chunk)
            if out:  # a real send (none from the last stage's forward or the first's backward)
                sends.append([index, kind, chunk, len(log)])
            return out
        return posted

    stage.get_fwd_send_ops = send(fwd_sends, "F")  # type: ignore[method-assign]
    stage.get_bwd_send_ops = send(bwd_sends, "B")  # type: ignore[method-assign]
    stage.forward_one_chunk = f  # type: ignore[method-assign]
    stage.backward_one_chunk = b  # type: ignore[method-assign]
    stage.backward_weight_one_chunk = w  # type: ignore[method-assign]
    return stage


def main(out: Path) -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ran: dict[str, dict[str, list[list[Any]]]] = {}
    batch = torch.randn(ROWS * MICROBATCHES, WIDTH)
    for name, (cls, v) in RUNS.items():
        log: list[list[Any]] = []
        sent: list[list[Any]] = []
        n = world * v
        indices = [rank, n - 1 - rank] if name in V_SHAPED else [rank + i * world for i in range(v)]
        stages = [_recording_stage(index, n, log, sent, name in SPLIT) for index in indices]
        loss = lambda out, target: (out - target).square().mean()  # noqa: E731
        schedule = cls(stages[0] if cls in (ScheduleGPipe, Schedule1F1B) else stages, MICROBATCHES,
                       loss_fn=loss)
        has_first = any(s.is_first for s in stages)
        has_last = any(s.is_last for s in stages)
        schedule.step(*((batch,) if has_first else ()), target=batch if has_last else None)
        ran[name] = {"ran": log, "sent": sent}
        dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(ran))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
