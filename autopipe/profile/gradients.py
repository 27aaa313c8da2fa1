"""The gradients alive around each node's backward, from the graph alone.

[Note: gradients around a backward call]
A stage's saved activations are not all that its backward holds. When the backward
reaches node i, autograd holds the gradient of every value that node i or an earlier one
made and a later one read (the later readers' backwards have run: their gradients are
accumulated, waiting for their makers), and node i's call makes the gradients of its
inputs and of its parameters next to those. So while node i's backward runs, on top of
the saved activations, the stage holds

    gradients(i) = Σ bytes of the values made at or before i and read after i
                 + Σ bytes of the values node i reads
                 + Σ bytes of the parameters node i reads

(a gradient has its value's size). The first sum is the graph's width at i. The second
is the call's output, which autograd adds into the first once the call returns (for a
value read twice, a residual, both are alive until it does). The third is the weight
gradient a call makes before autograd adds it into the one the earlier micro-batches
left (every micro-batch but a step's first; not where a CPU rank adds an embedding's or a
linear layer's into ``.grad`` in place). Only tensors made by a node count: the
model's inputs get no gradient, and a non-tensor none either. Values that get no
gradient all the same (a mask, a position table) are counted: the bound errs high, by
their size.

It matters where values are large against what the stage saves: the convolution nets at
full resolution. On the H200 (docs/gpu.md, 2026-12-04 night) ResNet's one forward and
backward peaked 413 MB over its saved activations and its largest convolution's scratch;
the graph says 384 MiB here (402 MB: its first block's convolution reads the stem's
128 MiB output, which its residual reads again, and makes 128 MiB); with it, one forward
and backward peaked 1.001 of the prediction, training 1.006. A transformer's width is a
few hidden states, small against what its layers save; its largest node is the head
(its logits' gradient and its weight's).

The stage holds it for one call at a time, on top of that call's scratch ([Note: a call's
scratch] in ``autopipe.profile._scratch``): ``Problem.held_while_running`` takes the
largest sum over the stage's nodes. All activations are counted as still saved when the
largest comes, so this errs high too where the widest point lies late in the backward
(the CPU's backward, which frees as it goes, peaked 0.3 of it over the saved bytes in a
small ResNet).
"""

from __future__ import annotations

from autopipe.profile.profile import Profile
from autopipe.trace.graph import param_readers


def gradients_around(profile: Profile, *, in_place: bool = False) -> dict[str, int]:
    """Node name → bytes of gradients alive while its backward runs ([Note: gradients
    around a backward call]): the graph's width after it, its inputs and its parameters,
    counting only tensor values made by a node. Nodes must be in topological order (as
    profiles keep them).

    ``in_place``: the ranks add embeddings' and linear layers' weight gradients into
    ``.grad`` in place (CPU ranks without a split backward: [Note: weight gradients
    accumulated in place] in ``autopipe.runtime.grad_accum``), so those nodes make no
    weight-gradient copy, where no other node reads the weight."""
    index = {n.name: i for i, n in enumerate(profile.nodes)}
    grad = {n.name: 0 if n.op == "placeholder" or not n.is_tensor else n.output_bytes
            for n in profile.nodes}
    readers = param_readers(profile.nodes)
    last: dict[str, int] = {}
    inputs: dict[str, set[str]] = {}
    for src, dst, _ in profile.edges:
        last[src] = max(last.get(src, -1), index[dst])
        inputs.setdefault(dst, set()).add(src)
    # the width after node i: values made at or before i, last read after i (a sweep)
    ends = [0] * (len(profile.nodes) + 1)
    for src, end in last.items():
        ends[end] += grad[src]
    out: dict[str, int] = {}
    width = 0
    for i, n in enumerate(profile.nodes):
        width += grad[n.name] if n.name in last else 0
        width -= ends[i]
        fused = in_place and (n.is_embedding() or n.is_linear())
        weights = sum(profile.params.get(q, 0) for q in {*n.params, *n.shared_params}
                      if not (fused and readers[q] == 1))
        out[n.name] = width + sum(grad[s] for s in inputs.get(n.name, ())) + weights
    assert width == 0, "every value is read by a later node"
    return out
