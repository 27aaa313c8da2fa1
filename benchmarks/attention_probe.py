"""Which fused kernel ``scaled_dot_product_attention`` runs on the device, and what each would take.

The estimator prices every SDPA call as the memory-efficient fused kernel ([Note: attention
on meta tensors] in ``autopipe.profile._attention``). On the H200 (2026-12-04, docs/gpu.md)
BERT-large's attention, with its padding mask, took 1.1 ms a layer forward+backward in bf16
(0.8 in fp32) against GPT-2's 0.13 at the same shapes and 0.2 estimated: torch chose some
other path for it, and no session with a GPU has yet looked at which. BERT's mask reaches
SDPA as a boolean (batch, 1, seq, seq) expanded from (batch, 1, seq, 1): its last stride is 0.

This probe takes each distinct SDPA call of a traced graph (shapes, strides, dtypes, mask,
dropout, causality, scale), makes tensors of exactly that layout on the device, asks torch
which backend it picks (``torch._fused_sdp_choice``, the dispatcher's own choice), and times
one forward+backward of the call as traced, with each backend forced
(``torch.nn.attention.sdpa_kernel``; those that refuse the call are left out), with the
mask made contiguous, and with no mask at all, in each dtype asked for. BERT traced without an
attention mask input still passes SDPA a mask: ``arange(seq) >= 0`` expanded, all True, which
no model input sets (``mask_from_inputs``); the eager model would pass none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from autopipe.profile._attention import is_sdpa
from autopipe.profile._timer import Timer

BACKENDS = ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION")
_FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _layout(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), tuple(v.stride()), str(v.dtype))
    return v


def sdpa_calls(gm: fx.GraphModule) -> list[tuple[fx.Node, int]]:
    """One node per distinct SDPA call in ``gm`` (by its arguments' layouts), with how many
    nodes share it."""
    seen: dict[Any, list[Any]] = {}
    for n in gm.graph.nodes:
        if not is_sdpa(n):
            continue
        vals = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
        key = repr(torch.utils._pytree.tree_map(_layout, vals))
        seen.setdefault(key, [n, 0])[1] += 1
    return [(n, k) for n, k in seen.values()]


def _like(v: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """A tensor with ``v``'s shape and strides on ``device``: normal values for floats (in
    ``dtype`` where given), all True for a boolean mask (no row fully masked)."""
    storage = 1 + sum((s - 1) * st for s, st in zip(v.shape, v.stride()) if s > 0)
    if v.dtype == torch.bool:
        base = torch.ones(storage, dtype=torch.bool, device=device)
    else:
        base = torch.randn(storage, dtype=dtype or v.dtype, device=device) * 0.1
    return base.as_strided(tuple(v.shape), tuple(v.stride()))


def _call(n: fx.Node, device: torch.device, dtype: torch.dtype | None,
          contiguous_mask: bool) -> tuple[list[Any], dict[str, Any], list[torch.Tensor]]:
    """The node's arguments as tensors on ``device`` (q, k, v requiring gradients)."""
    made: list[torch.Tensor] = []

    def one(a: fx.Node) -> Any:
        v = a.meta.get("val")
        if not isinstance(v, torch.Tensor):
            return v
        t = _like(v, device, dtype if v.is_floating_point() else None)
        if len(made) < 3:
            t = t.detach().requires_grad_(True)
        elif contiguous_mask:
            t = t.contiguous()
        made.append(t)
        return t

    args, kwargs = fx.node.map_arg((n.args, n.kwargs), one)
    return list(args), dict(kwargs), made[:3]


def _time_fb(args: list[Any], kwargs: dict[str, Any], qkv: list[torch.Tensor], timer: Timer,
             backend: str | None) -> float | None:
    """Median seconds of one forward+backward, ``backend`` forced (None: torch's choice);
    None where that backend refuses the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa = torch.ops.aten.scaled_dot_product_attention.default

    def fb() -> None:
        out = sdpa(*args, **kwargs)
        torch.autograd.grad(out, qkv, torch.ones_like(out))

    try:
        if backend is None:
            fb()
            run = fb
        else:
            chosen = getattr(SDPBackend, backend)

            def run() -> None:
                with sdpa_kernel([chosen]):
                    fb()
            run()
    except (RuntimeError, NotImplementedError, ValueError):  # this backend refuses the call
        return None
    return timer.median(run)


def _choice(args: list[Any], kwargs: dict[str, Any]) -> str:
    """The backend torch's dispatcher picks for this call."""
    from torch.nn.attention import SDPBackend

    names = {int(b.value): name for name, b in SDPBackend.__members__.items()}
    try:
        return names.get(int(torch._fused_sdp_choice(*args, **kwargs)), "?")
    except (RuntimeError, NotImplementedError, ValueError) as e:
        return f"error: {str(e).splitlines()[0][:80]}"


def probe(gm: fx.GraphModule, device: torch.device | str, dtypes: Sequence[str] = ("fp32",),
          warmup: int = 3, repeats: int = 10) -> list[dict[str, Any]]:
    """Per distinct SDPA call of ``gm`` and dtype: its layout, torch's choice and the
    forward+backward seconds of the call as traced (``chosen``), with the mask contiguous
    (``contiguous_mask``, where it is not), with no mask (``no_mask``, where it has one; and
    whether a model input sets it, ``mask_from_inputs``) and with each backend forced
    (``forced``)."""
    device = torch.device(device)
    timer = Timer(device, warmup=warmup, repeats=repeats, clock="wall")
    rows = []
    for n, count in sdpa_calls(gm):
        q = n.args[0].meta["val"] if isinstance(n.args[0], fx.Node) else None
        mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        m = mask.meta.get("val") if isinstance(mask, fx.Node) else None
        for name in dtypes:
            dtype = _FLOATS[name]
            args, kwargs, qkv = _call(n, device, dtype, contiguous_mask=False)
            row: dict[str, Any] = {
                "node": n.name, "calls": count, "dtype": name,
                "query": list(q.shape) if isinstance(q, torch.Tensor) else None,
                "mask": None if m is None else {"shape": list(m.shape), "stride": list(m.stride()),
                                                "dtype": str(m.dtype).removeprefix("torch.")},
                "choice": _choice(args, kwargs),
                "chosen_s": _time_fb(args, kwargs, qkv, timer, None),
                "forced_s": {b: _time_fb(args, kwargs, qkv, timer, b) for b in BACKENDS},
            }
            if m is not None and not m.is_contiguous():
                args, kwargs, qkv = _call(n, device, dtype, contiguous_mask=True)
                row["contiguous_mask_choice"] = _choice(args, kwargs)
                row["contiguous_mask_s"] = _time_fb(args, kwargs, qkv, timer, None)
            if m is not None:  # a mask that no model input sets may be all True: none at all
                assert isinstance(mask, fx.Node)
                row["mask_from_inputs"] = _from_inputs(mask)
                args, kwargs, qkv = _call(n, device, dtype, contiguous_mask=False)
                if len(args) > 3:
                    args[3] = None
                else:
                    kwargs["attn_mask"] = None
                row["no_mask_choice"] = _choice(args, kwargs)
                row["no_mask_s"] = _time_fb(args, kwargs, qkv, timer, None)
            rows.append(row)
    return rows


def _from_inputs(node: fx.Node) -> bool:
    """Whether ``node`` depends on a model input (a placeholder)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n.op == "placeholder":
            return True
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return False


def table(rows_by_model: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The probe's rows as a markdown table."""
    def ms(x: float | None) -> str:
        return "—" if x is None or not math.isfinite(x) else f"{x * 1e3:.3f}"

    out = ["| model | calls | dtype | query | mask (shape; strides; dtype) | torch picks | F+B ms as traced "
           "| mask contiguous: picks, ms | no mask: picks, ms (mask from the inputs?) | "
           + " | ".join(f"{b.split('_')[0].lower()} ms" for b in BACKENDS) + " |",
           "|---" * (9 + len(BACKENDS)) + "|"]
    for model, rows in rows_by_model.items():
        for r in rows:
            m = r["mask"]
            mask = "none" if m is None else f"{m['shape']}; {m['stride']}; {m['dtype']}"
            cont = (f"{r['contiguous_mask_choice']}, {ms(r['contiguous_mask_s'])}"
                    if "contiguous_mask_s" in r else "—")
            bare = (f"{r['no_mask_choice']}, {ms(r['no_mask_s'])} ({'yes' if r['mask_from_inputs'] else 'no'})"
                    if "no_mask_s" in r else "—")
            out.append(f"| {model} | {r['calls']} | {r['dtype']} | {r['query']} | {mask} | {r['choice']} | "
                       f"{ms(r['chosen_s'])} | {cont} | {bare} | "
                       + " | ".join(ms(r["forced_s"][b]) for b in BACKENDS) + " |")
    return out
