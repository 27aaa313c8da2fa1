"""Which values a stage makes again instead of receiving them: those that depend on no model
input, no parameter and no random draw (a causal mask, rotary tables)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx

from autopipe.trace.aliasing import aliased_args, storage_of, view_sources, written_storages

# [Note: values made again]
#
# Hugging Face's Llama makes its causal mask and its rotary cos and sin tables once, at the
# top of its forward, and every layer reads them. Traced at fixed shapes they depend on
# buffers (``inv_freq``) and on nothing else: no model input, no parameter. A cut between
# two layers carried them next to the hidden states, every micro-batch: 5.2 MB of a 22 MB
# cut for Llama-2-7B in bf16 at seq 2048, in a message of their own (docs/cost-model.md,
# "what the cuts of a real bf16 Llama carry"); the mask is seq², as large as the hidden
# states at seq 8192. Yet they are the same every micro-batch and every step.
#
# So a stage that reads such a value from an earlier stage may make it again: the split
# copies the nodes that make it (and the buffers they read) into the stage, before its own
# nodes, and nothing crosses a cut for it. Which values are made again is the planner's
# choice, value by value (``autopipe.partition.problem``): where running the nodes that make
# one costs less than sending it over one link (``Value.remade``). That choice depends on the
# link: Llama-2-7B's mask at seq 2,048 is made by 35 nodes, 0.67 ms on an H100 by the
# estimate (each small kernel pays its launch), against 9 µs to send its 4 MiB over NVLink;
# at seq 8,192 over a 100 Gb/s network its 64 MiB take 5.4 ms, as long as the hidden states.
# A value made again costs its reading stage the forward time of those nodes and its cut no
# bytes; the ILP prices both (``autopipe.partition.ilp``, ``_Model._remakes``), as the
# evaluation and the prediction do. The plan lists, per stage, the nodes it runs again
# (``Stage.remade``); the runtime does as the plan says, so a plan written before the choice
# existed sends every value.
#
# A node's value may be made again (``NodeInfo.remakable``) when:
#
# - it is a call_function or call_method node (a module call may hold parameters or draw);
# - every node it reads is made again, and it reads no parameter (the copy would take no
#   gradient back to it); buffers and constant tensors are fine, each stage holds its copy;
# - it draws no random numbers (dropout, Gumbel noise: a second draw differs), nor does a
#   subgraph it calls;
# - it writes nothing in place, and nothing writes its storage in place (the sender would
#   send the written tensor; a copy made again would miss the write).

_RANDOM = ("rand", "dropout", "bernoulli", "multinomial", "normal", "poisson", "gumbel",
           "rrelu", "exponential", "uniform", "cauchy", "geometric")
"""Words in the names of operations that draw random numbers (``randn``, ``native_dropout``,
``gumbel_softmax``, ``exponential_``; ``normal`` is not ``norm``)."""


def remakable_nodes(gm: fx.GraphModule, params: Iterable[str], tensors: set[str]) -> set[str]:
    """Names of the nodes of ``gm`` whose values a later stage may make again ([Note: values
    made again]). ``params``: the nodes that read a parameter; ``tensors``: the nodes whose value is
    one tensor (for the views of a storage)."""
    reads_param = set(params)
    views = view_sources(gm, tensors)
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    written = written_storages(gm, nodes, views)
    out: set[str] = set()
    for n in nodes:
        if n.op not in ("call_function", "call_method") or n.name in reads_param:
            continue
        if any(a.op != "get_attr" and a.name not in out for a in n.all_input_nodes):
            continue
        if _draws(gm, n) or aliased_args(gm, n)[0] or storage_of(n.name, views) in written:
            continue
        out.add(n.name)
    return out


def _draws(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n`` may draw random numbers: by its operator's tag or name, or in a subgraph it calls."""
    target = n.target
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags:
        return True
    name = (target if isinstance(target, str) else getattr(target, "__name__", str(target))).lower()
    if any(word in name for word in _RANDOM):
        return True
    for a in n.all_input_nodes:
        if a.op == "get_attr":
            sub = _attr(gm, str(a.target))
            if isinstance(sub, fx.GraphModule) and any(
                    _draws(sub, m) for m in sub.graph.nodes if m.op in ("call_function", "call_method")):
                return True
    return False


def _attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj
