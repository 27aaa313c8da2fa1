"""ZeRO-1: each stage's optimizer states split over its data-parallel replicas.

::

    one stage's dp group, 2 replicas: its parameters laid end to end, in the order every
    replica holds them, and cut into equal element ranges

      a (4 Mi elements)      b (3 Mi)       c (2 Mi)
      [==================][==|==========][========]    replica 0 steps a, b[0:0.5 Mi]
      replica 0 (4.5 Mi)     | replica 1 (4.5 Mi)      replica 1 steps b[0.5 Mi:3 Mi], c
                          (b is cut in two)

[Note: the sharded optimizer step]
A plan made with ``--shard-optimizer`` (``data_parallel.shard_optimizer``) charges each
rank 1/dp of its stage's optimizer states and fp32 master weights, and 1/dp of the step
([Note: the data-parallel sync] in ``autopipe.partition.replicas``): each parameter's
states divided by dp. The runtime keeps that promise as ZeRO does (``split``): the
stage's trained parameters, laid end to end in the order every replica holds them, are cut
into dp equal ranges of elements (boundaries rounded to ``ALIGN`` elements inside a
tensor), so at most dp − 1 tensors are cut in two, and replica r's optimizer is built on
its range's pieces: each a 1-D ``nn.Parameter`` that is a view of its parameter's storage,
whose gradient is the same view of the parameter's gradient. An element-wise optimizer
(``ELEMENTWISE``: SGD, Adam, AdamW, ...) computes on a piece exactly what it computes on
those elements of the whole tensor (checked bit for bit, fused CPU Adam included), and
writes its update into the parameter through the view. Any other optimizer (one whose
update mixes elements, as Adafactor's factored moments do) is built on whole tensors
instead (``owners``: the largest first, each to the replica that owns the fewest bytes
so far), whose split may exceed 1/dp by up to one tensor's states; it warns.

The gradients of a stage's own parameters are reduce-scattered instead of all-reduced
(``reduce_scatter_grads``, once a ``Pipe`` builds the optimizer): each replica receives the
mean over the replicas of the pieces it steps only, and keeps its own gradient elsewhere.
After the owners step, every replica receives each owner's pieces (``all_gather``): the
value an unsharded replica computes itself from the same gradient and state, bit for bit
with two replicas ([Note: reduce-scatter and all-gather in rounds] in
``autopipe.runtime.shard_comm``). Together the two move the bytes of one all-reduce. Tied
parameters are summed over all their holders first ([Note: the data-parallel gradient
sync]) and are whole on every replica; they join the all-gather only. ``Pipe.clip_grad_norm_``
takes the norm of the owned pieces on each rank and sums them over every rank.
A checkpoint names states by parameter: each owner saves its pieces'
(``<fqn>[start:stop]`` for part of a parameter), and loading puts a parameter's pieces
back together and takes the loading optimizer's part of them (``autopipe.runtime.optim_state``),
so a sharded checkpoint resumes into any plan, sharded or not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from autopipe._optimizers import MasterWeights, Stepper, clear_grads
from autopipe.runtime.data_parallel import Replicas
from autopipe.runtime.shard_comm import Segment, all_gather, reduce_scatter_mean

ALIGN = 64
"""A cut inside a tensor falls on a multiple of this many elements (aligned vector loads)."""

ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad,
               torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.RMSprop)
"""torch optimizers whose update of an element reads that element's state alone."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Elements ``start:stop`` of a parameter flattened, stepped by ``replica``."""

    name: str
    start: int
    stop: int
    replica: int
    whole: bool
    """The piece is the whole parameter."""

    @property
    def label(self) -> str:
        """``name``, or ``name[start:stop]`` for part of it."""
        return self.name if self.whole else f"{self.name}[{self.start}:{self.stop}]"


def split(numels: Mapping[str, int], replicas: int, align: int = ALIGN) -> list[Piece]:
    """The parameters laid end to end (in the mapping's order) and cut into ``replicas``
    equal ranges of elements, each cut inside a tensor rounded to ``align`` elements.

    Returns:
        The pieces in order: each parameter's in ascending ranges, covering it exactly.
    """
    total = sum(numels.values())
    bounds = [r * total // replicas for r in range(replicas)]
    out: list[Piece] = []
    start = 0
    for name, n in numels.items():
        # where each replica's range begins inside this tensor, rounded and clamped to it
        at = [min(n, max(0, round((b - start) / align) * align)) for b in bounds]
        cuts = sorted({0, n, *at})
        for lo, hi in pairwise(cuts) if n else [(0, 0)]:
            owner = max(r for r in range(replicas) if at[r] <= lo)
            out.append(Piece(name, lo, hi, owner, lo == 0 and hi == n))
        start += n
    return out


def owners(sizes: Mapping[str, int], replicas: int) -> dict[str, int]:
    """Name → the replica that owns it: whole tensors, greedily balanced by bytes.

    The largest first (ties in the mapping's order), each to the replica owning the fewest
    bytes so far (ties to the lowest replica): deterministic, so every replica agrees.

    Args:
        sizes: each parameter's bytes, in the order every replica holds them.
        replicas: the data-parallel degree.
    """
    load = [0] * replicas
    out: dict[str, int] = {}
    for _, name in sorted(((-size, i), name) for i, (name, size) in enumerate(sizes.items())):
        r = min(range(replicas), key=lambda k: (load[k], k))
        out[name] = r
        load[r] += sizes[name]
    return {name: out[name] for name in sizes}


def _elementwise(optimizer: Any) -> bool:
    return isinstance(optimizer.inner if isinstance(optimizer, MasterWeights) else optimizer, ELEMENTWISE)


class ShardedOptimizer:
    """One rank's share of its stage's optimizer ([Note: the sharded optimizer step]).

    Args:
        replicas: this rank's place in the pp × dp grid (its dp group shares the states).
        params: this rank's parameters by canonical name, in the order every replica holds them.
        build: makes an optimizer over the parameters given (None where it makes none).
        summed: names whose gradients are averaged over the replicas elsewhere (tied ones),
            left out of ``reduce_scatter_grads``.
    """

    def __init__(self, replicas: Replicas, params: Mapping[str, nn.Parameter],
                 build: Callable[[list[nn.Parameter]], Stepper | None], summed: Collection[str] = ()) -> None:
        self.replicas = replicas
        self._summed = frozenset(summed)
        self._named = {n: p for n, p in params.items() if p.requires_grad}
        self.params = list(self._named.values())
        # every replica must lay out the same pieces: the kind of optimizer decides, asked of a
        # one-element probe, as a replica that owns nothing could not ask its own
        # on the parameters' device, of their dtype: an optimizer made for the GPU (fused) may refuse others
        like = next(iter(self._named.values()), None)
        kind = build([nn.Parameter(torch.zeros(1) if like is None else like.new_zeros(1))])
        if kind is None or _elementwise(kind):
            whole = {n for n, p in self._named.items() if not p.is_contiguous()}  # no flat view
            pieces = [Piece(x.name, 0, self._named[x.name].numel(), x.replica, True) if x.name in whole else x
                      for x in split({n: 0 if n in whole else p.numel() for n, p in self._named.items()},
                                     replicas.dp)]
        else:
            warnings.warn(f"{type(getattr(kind, 'inner', kind)).__name__} is not an element-wise optimizer "
                          "autopipe knows: its states are split over the replicas by whole tensors, and a "
                          "replica may hold up to one tensor's states more than the plan's 1/dp",
                          stacklevel=3)
            owner = owners({n: p.numel() * p.element_size() for n, p in self._named.items()}, replicas.dp)
            pieces = [Piece(n, 0, p.numel(), owner[n], True) for n, p in self._named.items()]
        del kind
        self.pieces = pieces
        """Every replica's pieces, in order."""
        self._mine = [x for x in pieces if x.replica == replicas.replica]
        self._views = [self._named[x.name] if x.whole else nn.Parameter(self._slice(self._named[x.name].detach(), x))
                       for x in self._mine]
        self.inner: Stepper | None = build(self._views) if self._views else None
        """The optimizer over this rank's pieces (None where it owns none)."""
        self.owned_names = tuple(x.label for x in self._mine)
        """Labels of the pieces this rank steps (``name``, or ``name[start:stop]`` for part of one)."""

    def named_pieces(self) -> dict[str, nn.Parameter]:
        """This rank's pieces by label (``Piece.label``): what its optimizer steps."""
        return {x.label: view for x, view in zip(self._mine, self._views)}

    @staticmethod
    def _slice(t: torch.Tensor, x: Piece) -> torch.Tensor:
        return t if x.whole else t.view(-1)[x.start:x.stop]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient, owned or not."""
        clear_grads(self.params, set_to_none)

    def step(self) -> None:
        """Step the owned pieces, then give every replica each owner's values (collective
        over the dp group: every replica calls it)."""
        if self.inner is not None:
            for x, view in zip(self._mine, self._views):
                if not x.whole:
                    grad = self._named[x.name].grad
                    view.grad = None if grad is None else grad.reshape(-1)[x.start:x.stop]
            self.inner.step()
            for x, view in zip(self._mine, self._views):
                if not x.whole:
                    view.grad = None  # the whole gradient stays the parameter's
        self.all_gather()

    def _segments(self, grads: bool) -> list[list[Segment]]:
        """Per replica, its pieces' gradients (those not summed elsewhere, and not None) or values."""
        out: list[list[Segment]] = [[] for _ in range(self.replicas.dp)]
        for x in self.pieces:
            p = self._named[x.name]
            t = p.grad if grads else p.detach()
            if t is not None and not (grads and x.name in self._summed):
                out[x.replica].append((t, x.start, x.stop))
        return out

    def reduce_scatter_grads(self) -> None:
        """Average the gradients of this rank's pieces over the replicas (collective over the
        dp group); elsewhere each gradient stays this rank's own."""
        reduce_scatter_mean(self._segments(grads=True), self.replicas.replica, self.replicas.dp_group)

    def all_gather(self) -> None:
        """Each piece from its owner to the other replicas of the group (collective)."""
        all_gather(self._segments(grads=False), self.replicas.replica, self.replicas.dp_group)

    def owned_grads(self) -> list[tuple[str, torch.Tensor]]:
        """This rank's pieces' gradients (1-D; whole parameters as they are), by parameter name."""
        out = []
        for x in self._mine:
            grad = self._named[x.name].grad
            if grad is not None:
                out.append((x.name, self._slice(grad, x)))
        return out

    def state_bytes(self) -> int:
        """Bytes of this rank's optimizer states and fp32 master copies."""
        return optimizer_bytes(self.inner)


def optimizer_bytes(optimizer: Any) -> int:
    """Bytes an optimizer holds beyond the parameters: its states and master copies
    (``MasterWeights``, ``ShardedOptimizer`` or a torch optimizer; 0 for None)."""
    if optimizer is None:
        return 0
    if isinstance(optimizer, ShardedOptimizer):
        return optimizer.state_bytes()
    inner = getattr(optimizer, "inner", optimizer)
    total = 0
    masters = getattr(optimizer, "masters", None)
    if masters is not None:
        total += sum(m.numel() * m.element_size() for m, p in zip(masters, optimizer.params) if m is not p)
    if isinstance(inner, torch.optim.Optimizer):
        for state in inner.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total
