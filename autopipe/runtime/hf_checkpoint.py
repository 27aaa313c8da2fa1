"""A Hugging Face checkpoint read under the model's own names, through transformers' weight conversions.

# [Note: checkpoint names are not module names]
Since transformers 5 a model may hold its weights in another layout than its checkpoints
on the Hub: a Mixtral or Qwen2-MoE layer keeps its experts fused (``mlp.experts.gate_up_proj``,
one tensor for all of them) where the checkpoint has one ``experts.3.gate_proj.weight`` per
expert and projection; a ViT's ``vit.layers.0.attention.q_proj`` is
``vit.encoder.layer.0.attention.attention.query`` on disk; GPT-NeoX's ``lm_head`` is
``embed_out``. ``save_pretrained`` writes the checkpoint layout and ``from_pretrained``
converts it back (``transformers.conversion_mapping``), so a checkpoint folder of such a
model does not hold the names its ``state_dict()`` has, and ``--init`` refused it (a
sweep of the test zoo: 7 of 20 architectures saved by ``save_pretrained``).

``converted(weights, model)`` gives the same checkpoint under the model's names: every
checkpoint name goes through the model's renamings and at most one converter, as
``from_pretrained`` does (``rename_source_key``, checkpoint names in natural order, so
experts stack in their order); a converted tensor is made from its sources when first
read, and the other tensors the same conversion makes wait for their read. Shapes and
dtypes come from running each conversion on meta tensors, so checking a file against the
model still reads no data, and a rank still reads only the checkpoint tensors its own
stages need. A model that is not a transformers ``PreTrainedModel`` but holds one (a
wrapper) gets the wrapper's path in front of each name. The view is used only where the
names as they are do not fit the model (``fit``), so a state dict saved from the model
itself loads exactly as before.

[Note: tensors transformers ignores]
Checkpoints on the Hub hold tensors their models no longer have: Llama-2's per-layer
``rotary_emb.inv_freq`` (a buffer that moved and became non-persistent), BERT's
``embeddings.position_ids`` (non-persistent since), and what a class lists in
``_keys_to_ignore_on_load_unexpected``. ``from_pretrained`` leaves them unread without a
word (``PreTrainedModel._adjust_missing_and_unexpected_keys``); ``ignored(model)`` gives
the same patterns, under the same conditions, so ``--init`` leaves them unread too instead
of refusing the file for unexpected names, and says how many it left.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autopipe.errors import WeightsError
from autopipe.runtime.weights import TensorInfo, Weights, check_fit, open_weights


class Converted(Weights):
    """``weights`` under a model's own names: each name either one checkpoint tensor's
    (renamed) or one of a conversion's outputs."""

    def __init__(self, weights: Weights, info: dict[str, TensorInfo], plain: dict[str, str],
                 groups: dict[str, tuple[Any, list[tuple[str, str, str]]]], made_by: dict[str, str],
                 convert: Callable[[Any, list[tuple[str, str, str]], Callable[[str], Any], str],
                                   dict[str, torch.Tensor]]) -> None:
        super().__init__(weights.path, info, {}, {})
        self._weights = weights
        self._plain = plain  # model name → checkpoint name
        self._groups = groups  # a conversion's first name (the transformers model's) → (converter, its sources)
        self._made_by = made_by  # model name → the first name of the conversion that makes it
        self._convert = convert
        self._made: dict[str, torch.Tensor] = {}  # converted, not read yet

    def read(self, name: str) -> torch.Tensor:
        if name in self._plain:
            return self._weights.read(self._plain[name])
        if name not in self._made_by:
            raise WeightsError(f"{self.path} has no tensor {name!r}", hint="check the name")
        if name not in self._made:
            first = self._made_by[name]
            converter, sources = self._groups[first]
            made = self._convert(converter, sources, self._read_source, first)
            self._made.update({k: v for k, v in made.items() if k != name and k in self._made_by})
            return made[name]
        return self._made.pop(name)

    def _read_source(self, key: str) -> torch.Tensor:
        return self._weights.read(key) if self._weights.owns(key) else self._weights.read(key).clone()

    def owns(self, name: str) -> bool:
        return self._weights.owns(self._plain[name]) if name in self._plain else True

    def close(self) -> None:
        self._made.clear()
        self._weights.close()


def fit(weights: Weights, model: nn.Module, expected: Mapping[str, TensorInfo],
        groups: Iterable[Sequence[str]] = ()) -> tuple[Weights, dict[str, str]]:
    """``check_fit`` of ``weights`` against ``model``, or of their converted view where the
    names as they are do not fit ([Note: checkpoint names are not module names]).

    Returns:
        The weights to read (``weights`` or its view) and ``check_fit``'s names to read.

    Raises:
        WeightsError: neither fits; the message is the view's where the conversions renamed
            anything, else the one about the names as they are.
    """
    groups = list(groups)
    skip = ignored(model)
    try:
        return weights, check_fit(weights, expected, groups, ignore=skip)
    except WeightsError as as_saved:
        view = converted(weights, model)
        if view is None:
            raise
        try:
            return view, check_fit(view, expected, groups, ignore=skip)
        except WeightsError as after:
            raise (after if set(view.info) != set(weights.info) else as_saved) from None


def in_model_names(state: Mapping[str, Any], model: nn.Module, known: set[str],
                   wanted: set[str]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]] | None:
    """A state dict for ``Pipe.load_state_dict`` read as ``fit`` reads a folder: in a
    transformers checkpoint's layout (a ``save_pretrained`` shard read with
    ``safetensors.torch.load_file``), under ``model``'s names ([Note: checkpoint names are
    not module names]), the tensors named in ``wanted`` converted; and the tensors
    transformers leaves unread ([Note: tensors transformers ignores]) left out. Returns the
    values and every name's shape; None where the names are the model's (``known``) as
    they are. Names that fit neither way are left to the caller's error: the converted
    ones where the conversions renamed anything, else those given.
    """
    if set(state) <= known:
        return None
    skip = ignored(model) or (lambda _: False)
    try:
        view = converted(open_weights(state), model)
    except WeightsError:  # not all tensors: the caller names what is not
        view = None
    if view is None or set(view.info) == set(state):
        kept = {k: v for k, v in state.items() if k in known or not skip(k)}
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else () for k, v in kept.items()}
        return None if len(kept) == len(state) else (kept, shapes)
    shapes = {n: tuple(t.shape) for n, t in view.info.items() if n in known or not skip(n)}
    return {n: view.read(n) for n in shapes if n in wanted}, shapes


def ignored(model: nn.Module) -> Callable[[str], bool] | None:
    """Whether a checkpoint name is one that ``from_pretrained`` would leave unread ([Note:
    tensors transformers ignores]); None where the model holds no transformers model."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None:
        return None
    patterns = set(getattr(hf, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in hf.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        patterns.add(r"(^|\.)position_ids$")
    if not patterns:
        return None
    rx = re.compile("|".join(f"({p})" for p in sorted(patterns)))
    return lambda name: rx.search(name) is not None


def converted(weights: Weights, model: nn.Module) -> Converted | None:
    """``weights`` under ``model``'s names through transformers' conversions; None where the
    model holds no transformers model (or transformers has no conversions to offer)."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )
    except ImportError:
        return None
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, PreTrainedModel)]
    if not found:
        return None
    prefix, hf = found[0]  # the outermost: named_modules lists parents first
    if any(p != prefix and not p.startswith(f"{prefix}.") for p, _ in found if prefix):
        return None  # two transformers models side by side: whose checkpoint is it?
    head = f"{prefix}." if prefix else ""
    try:
        transforms = get_model_conversion_mapping(hf)
    except Exception:
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {k: c for c in converters for k in c.source_patterns}
    own = dict.fromkeys(hf.state_dict(), True)  # the names from_pretrained renames into
    base = hf.base_model_prefix

    plain: dict[str, str] = {}
    groups: dict[str, tuple[Any, list[tuple[str, str, str]]]] = {}
    info: dict[str, TensorInfo] = {}
    for key in sorted(weights.info, key=dot_natural_key):
        name, pattern = rename_source_key(key, renamings, converters, base, own)
        if name not in own and key in own:
            name, pattern = rename_source_key(key, [], [], base, own)
        if name not in own:
            info[key] = weights.info[key]  # unexpected: check_fit names it as it is
            plain[key] = key
        elif pattern is None:
            info[head + name] = weights.info[key]
            plain[head + name] = key
        else:
            groups.setdefault(name, (by_pattern[pattern], []))[1].append((name, key, pattern))

    def convert(converter: Any, sources: list[tuple[str, str, str]], read: Callable[[str], Any],
                first: str) -> dict[str, torch.Tensor]:
        mine = copy.deepcopy(converter)
        for target, key, pattern in sources:
            mine.add_tensor(target, key, pattern, lambda key=key: read(key))
        out = mine.convert(first, model=hf, config=hf.config)
        return {head + k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}

    def meta(key: str) -> torch.Tensor:
        t = weights.info[key]
        return torch.empty(t.shape, dtype=t.dtype, device="meta")

    made_by: dict[str, str] = {}
    for first, (converter, sources) in groups.items():
        try:
            shapes = convert(converter, sources, meta, first)
        except Exception as e:
            raise WeightsError(f"{weights.path}: transformers' conversion of {sources[0][1]} (and "
                               f"{len(sources) - 1} more) into {first} fails ({type(e).__name__}: {e})",
                               hint="load the checkpoint with from_pretrained and save its state_dict() "
                                    "as one .safetensors file (safetensors.torch.save_model)") from None
        for name, t in shapes.items():
            info[name] = TensorInfo(tuple(t.shape), t.dtype)
            made_by[name] = first
    return Converted(weights, info, plain, groups, made_by, convert)

