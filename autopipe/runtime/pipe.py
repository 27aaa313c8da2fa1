"""``build(plan, spec)``: this rank's share of a pipeline, driven by a training loop of your own.

::

    pipe = autopipe.runtime.build(plan, spec)          # under torchrun: one rank
    opt = pipe.optimizer(lambda ps: torch.optim.AdamW(ps, lr=3e-4))  # sharded where the plan says
    for step in range(steps):
        batch = pipe.replicas.share(*spec.batch(plan.microbatches * pipe.replicas.dp, step))
        losses = pipe.step(*pipe.take(*batch))         # micro-batch losses (last stage's rank)
        pipe.sync_tied_grads()                         # tied copies: sum; replicas: average
        pipe.clip_grad_norm_(1.0)                      # one norm over every stage
        opt.step()
        pipe.zero_grad()

Parameters and state keep the original model's names (``transformer.h.0.attn.c_attn.weight``),
whichever stage holds them; a tied parameter is named once, by its first name.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autopipe._malloc import pin_malloc as _pin_malloc
from autopipe._optimizers import Stepper
from autopipe._subnormals import flush_subnormals
from autopipe._torch_pipelining import messages_within
from autopipe.errors import AutopipeError, CheckpointError
from autopipe.plan_format import Plan
from autopipe.runtime.affinity import pin_cores as _pin_cores
from autopipe.runtime.busy_core import BusyCore
from autopipe.runtime.data_parallel import Replicas, ReplicaSync
from autopipe.runtime.draws import Draws
from autopipe.runtime.grad_accum import forget_rows, mean_grad_
from autopipe.runtime.group import (
    distributed_env,
    failures,
    init_process_group,
    local_world,
    rank_device,
)
from autopipe.runtime.hf_checkpoint import in_model_names
from autopipe.runtime.materialize import materialize_stages
from autopipe.runtime.modes import modeless_draws
from autopipe.runtime.placement import rank_of_stages, schedule_kind
from autopipe.runtime.prepare import Prepared, check_target, prepare
from autopipe.runtime.split_backward import loss_views
from autopipe.runtime.stage import build_pipeline
from autopipe.runtime.state_keys import check_tied_alike, match_state, names
from autopipe.runtime.tied import TiedParams, canonical_names, replicated, stage_params
from autopipe.runtime.timeline import ActionLog
from autopipe.runtime.weights import WeightsSource
from autopipe.runtime.zero import ShardedOptimizer
from autopipe.spec import ModelSpec, example_target, scalar_loss, tensor_target

_NONE, _LOCAL, _SUMMED = "none", "local", "summed"


@dataclass
class Evaluation:
    """What ``Pipe.evaluate`` returns."""

    losses: list[torch.Tensor]
    """Micro-batch losses (on the last stage's rank; empty elsewhere)."""
    output: Any
    """The model's output for the whole batch, as the unsplit model returns it (last stage's
    rank; None elsewhere)."""


class Pipe:
    """One rank's share of a pipeline-parallel model: its stages, their schedule, their state.

    Made by ``build``; every rank of the job makes one, with the same plan and spec, and
    calls the same methods in the same order (several of them are collective).
    """

    def __init__(self, spec: ModelSpec, plan: Plan, prepared: Prepared, rank: int, world_size: int,
                 device: torch.device, timeout_s: float, owns_group: bool, seed: int = 0,
                 busy_core: BusyCore | None = None, flushed: bool = False) -> None:
        self.spec = spec
        self.plan = plan
        self.prepared = prepared
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.timeout_s = timeout_s
        self.steps = 0
        """``step`` calls so far (restored from a checkpoint by ``load_checkpoint``)."""
        self.timeline: ActionLog | None = None
        """Where ``step`` records its actions, timed ([Note: a measured timeline] in
        ``autopipe.runtime.timeline``); None: not timed."""
        self._owns_group = owns_group
        self._closed = False
        self._one_target: Any = None
        """One micro-batch's target (``spec.batch(1)``'s), which a step's target is checked against."""
        self._busy_core = busy_core
        """Spins while the schedule posts and waits ([Note: a busy core while a rank waits]); closed by ``close``."""
        self._flushed = flushed
        """``build`` turned the flushing of subnormals on ([Note: subnormals in training]); ``close`` turns it off."""
        graph, split = prepared.graph, prepared.split

        views = schedule_kind(plan.schedule).splits_backward  # [Note: split backward]

        def loss_fn(out: Any, target: torch.Tensor) -> torch.Tensor:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            flat = split.rebuild_outputs(loss_views(outs) if views else outs)
            return scalar_loss(spec.loss_fn(graph.unflatten_output(flat), target))

        with failures(f"rank {rank}", "while building the device mesh", timeout_s):
            self.replicas = Replicas(plan, rank, device)
            """This rank's pipeline rank and data-parallel replica, and their process groups."""
        self.draws = Draws(seed=seed, offset=self.replicas.replica * plan.microbatches)
        """The random nodes' seed and step ([Note: random draws per node and micro-batch])."""
        self._pipeline = build_pipeline(split, prepared.metas, plan, self.replicas.position, device, loss_fn,
                                        self.replicas.pp_group, tied={n for g in graph.tied for n in g},
                                        draws=self.draws)
        stages = self._pipeline.indices
        replica = f", replica {self.replicas.replica}" if self.replicas.dp > 1 else ""
        self.where = f"rank {rank} (stage{'s' if len(stages) > 1 else ''} {', '.join(map(str, stages))}{replica})"
        canonical = canonical_names(graph)
        ranks = rank_of_stages(plan)
        holders: dict[str, list[int]] = {}
        for st in split.stages:
            for name in stage_params(st.module, canonical):
                holders.setdefault(name, []).append(ranks[st.index])
        self._params: dict[str, nn.Parameter] = {}
        for module in self._pipeline.modules():
            self._params.update(stage_params(module, canonical))
        self._replicated = replicated(holders)
        self.state_keys: tuple[str, ...] = tuple(spec.model.state_dict(keep_vars=True))
        """The unsplit model's ``state_dict()`` keys, in its order (tied aliases included)."""
        self.tied: tuple[tuple[str, ...], ...] = tuple(tuple(g) for g in graph.tied)
        """Names that refer to one parameter, the name this pipe uses first."""
        keys = set(self.state_keys)
        # persistent buffers only: what the unsplit model's state_dict holds
        self._buffers = {name: b for module in self._pipeline.modules()
                         for name, b in module.named_buffers() if name in keys}
        self._tied_grads = _NONE
        self._grads_zeroed = False
        """``zero_grad(set_to_none=False)`` ran since the last ``step``: accumulate in place."""
        self._own_optimizer = False
        """``optimizer`` was called (the optimizer holds what the plan charges), or ``step``
        said it was not."""
        self._sharded: ShardedOptimizer | None = None
        """The sharded optimizer ``optimizer`` built: the gradients are reduce-scattered to it."""
        self._step_kwargs = ({"return_outputs": False}
                             if _accepts(self._pipeline.schedule.step, "return_outputs") else {})
        with failures(self.where, "while syncing tied parameters", timeout_s):
            self._tied = TiedParams(self.replicas.spread(self._replicated), self._params)
            self._sync = ReplicaSync(self.replicas, self._tied, self._params, self._buffers)
            self._sync.broadcast_values()

    # --- what this rank holds ------------------------------------------------------------------

    @property
    def has_first(self) -> bool:
        """This rank runs stage 0 (feeds the inputs)."""
        return self._pipeline.has_first

    @property
    def has_last(self) -> bool:
        """This rank runs the last stage (computes the loss)."""
        return self._pipeline.has_last

    def take(self, inputs: Sequence[Any], target: torch.Tensor) -> tuple[tuple[Any, ...] | None, torch.Tensor | None]:
        """The part of a batch this rank reads, on its device: the inputs on stage 0's rank,
        the target on the last stage's, ``None`` for what it does not read. A tensor that is
        a view of a larger batch (a replica's share of the global one) is copied, so that
        dropping the batch frees it: the rank then holds what the plan charges it
        ([Note: the batch a rank holds] in ``autopipe.partition.costs``).
        """
        return (tuple(own(v, self.device) for v in inputs) if self.has_first else None,
                own(target, self.device) if self.has_last else None)

    @property
    def stages(self) -> tuple[int, ...]:
        """Plan stage indices on this rank."""
        return self._pipeline.indices

    @property
    def microbatches(self) -> int:
        """Micro-batches per step (the plan's)."""
        return self.plan.microbatches

    def modules(self) -> dict[int, nn.Module]:
        """Stage index → this rank's stage module."""
        return {s.stage_index: s.submod for s in self._pipeline.stages}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This rank's parameters under the unsplit model's names, each once."""
        yield from self._params.items()

    def parameters(self) -> Iterator[nn.Parameter]:
        """This rank's parameters, each once (hand them to your optimizer)."""
        yield from self._params.values()

    @property
    def shards_optimizer(self) -> bool:
        """The plan splits each stage's optimizer states over its replicas (ZeRO-1)."""
        dp = self.plan.data_parallel
        return dp is not None and dp.shard_optimizer and self.replicas.dp > 1

    def optimizer(self, make: Callable[[list[nn.Parameter]], Stepper | None]) -> Stepper | None:
        """This rank's optimizer, as the plan charges it: ``make`` over this rank's parameters;
        with a plan that shards the optimizer (``data_parallel.shard_optimizer``), over the
        pieces this rank owns only, its ``step`` giving each piece from its owner to the other
        replicas (collective; [Note: the sharded optimizer step] in ``autopipe.runtime.zero``).
        Then ``sync_tied_grads`` reduce-scatters the gradients, as ZeRO does: a rank's
        gradients are the replicas' mean on the pieces it owns only (``clip_grad_norm_``
        takes the norm over every rank's owned pieces; a norm of ``pipe.parameters()``'s
        gradients would not be the model's).

        Args:
            make: builds an optimizer over the parameters given, e.g.
                ``lambda ps: torch.optim.AdamW(ps, lr=3e-4)``; may return None.

        Returns:
            The optimizer to step after ``sync_tied_grads`` (and ``clip_grad_norm_``); None
            where ``make`` made none (a rank without parameters).
        """
        self._own_optimizer = True
        if not self.shards_optimizer:
            return make(list(self._params.values()))
        sharded = ShardedOptimizer(self.replicas, self._params, make, summed=self._tied.names)
        self._sharded = sharded
        self._sync.scatter = sharded.reduce_scatter_grads
        return sharded

    def train(self, mode: bool = True) -> Pipe:
        """Put this rank's stage modules in training (or evaluation) mode, as ``nn.Module.train``.

        Dropout, attention dropout and batch norm follow it, although the trace wrote the
        training mode into them ([Note: traced modes follow train and eval]); random nodes
        that a branch of the model's Python on ``self.training`` chose (drop path) still
        draw in evaluation, and this warns, naming them.
        """
        for module in self._pipeline.modules():
            module.train(mode)
        on = [] if mode else [n for module in self._pipeline.modules() for n in modeless_draws(module)]
        if on:
            warnings.warn(f"{self.where}: {len(on)} random node(s) still draw in evaluation mode "
                          f"({', '.join(on[:4])}{', ...' if len(on) > 4 else ''}): the model's code chose "
                          "them for training when it was traced (drop path, router jitter)", stacklevel=2)
        return self

    # --- a step --------------------------------------------------------------------------------

    def step(self, inputs: Sequence[Any] | None, target: torch.Tensor | None) -> list[torch.Tensor]:
        """Forward and backward of one batch through the pipeline (collective).

        The batch holds ``microbatches`` micro-batches stacked on dim 0, as ``spec.batch``
        gives them; every rank may pass the same batch (only stage 0 reads ``inputs``, only
        the last stage ``target``). Gradients are the mean over the micro-batches, added to
        whatever ``.grad`` held before (call ``zero_grad`` between optimizer steps). A
        parameter held by several ranks (tied) still has only this rank's share of its
        gradient: call ``sync_tied_grads`` before the optimizer step. With data-parallel
        replicas, each replica passes its own share of the global batch
        (``pipe.replicas.share``) and ``sync_tied_grads`` averages the gradients over them.

        Returns:
            Detached micro-batch losses on the last stage's rank; an empty list elsewhere.

        Raises:
            RuntimeStageError: a peer died or stopped answering; names this rank and the step.
            SpecError: a non-tensor input differs from the example micro-batch's, or an input
                or the target has another number of rows than the plan's micro-batches.
            AutopipeError: the pipe was closed.
        """
        self._open()
        if self.shards_optimizer and not self._own_optimizer:
            self._own_optimizer = True  # said once
            warnings.warn(f"{self.where}: the plan shards the optimizer over {self.replicas.dp} replicas "
                          "(data_parallel.shard_optimizer), but no optimizer was built by pipe.optimizer(make): "
                          f"one built on pipe.parameters() holds {self.replicas.dp}x the states the plan "
                          "charges this rank; build it with pipe.optimizer(make)", stacklevel=2)
        self.steps += 1
        self.draws.step = self.steps
        m = self.plan.microbatches
        losses: list[torch.Tensor] = []
        with failures(self.where, f"in step {self.steps}", self.timeout_s):
            args = self._first_inputs(inputs)
            # this step's gradients alone, so that only they are averaged; zeroed buffers are
            # accumulated into in place ([Note: gradient buffers kept on CPU ranks])
            held = {} if self._grads_zeroed else {name: p.grad for name, p in self._params.items()}
            self._grads_zeroed = False
            for p in self._params.values() if held else ():
                p.grad = None
            with self._messages(), self._timed():
                self._pipeline.schedule.step(*args, target=self._target(target),
                                             losses=losses if self.has_last else None, **self._step_kwargs)
            for p in self._params.values():
                if p.grad is not None:
                    mean_grad_(p.grad, m)  # the mean over micro-batches, once per parameter
            if self._tied_grads == _SUMMED:
                self._sync.all_reduce_grads()  # what was held is summed already: sum only this
            else:
                self._tied_grads = _LOCAL
            for name, before in held.items():
                p = self._params[name]
                if before is not None:
                    p.grad = before if p.grad is None else before.add_(p.grad)
        return [x.detach() for x in losses]

    @torch.no_grad()
    def evaluate(self, inputs: Sequence[Any] | None, target: torch.Tensor | None) -> Evaluation:
        """Forward only, no gradients (collective): the batch's losses and the model's output.

        Modules stay in the mode they are in (``pipe.train(False)`` for evaluation mode).

        Raises:
            AutopipeError: this torch's schedules have no forward-only ``eval`` (torch < 2.8).
            RuntimeStageError: a peer died or stopped answering.
        """
        self._open()
        schedule = self._pipeline.schedule
        run = getattr(schedule, "eval", None)
        if run is None:
            raise AutopipeError(f"torch {torch.__version__}'s schedules cannot run forward only",
                                hint="upgrade torch to 2.8 or newer")
        losses: list[torch.Tensor] = []
        with failures(self.where, "in a forward-only step", self.timeout_s):
            out = run(*self._first_inputs(inputs), target=self._target(target),
                      losses=losses if self.has_last else None)
        if not self.has_last:
            return Evaluation(losses=[], output=None)
        split, graph = self.prepared.split, self.prepared.graph
        flat = split.rebuild_outputs(out if isinstance(out, (tuple, list)) else (out,))
        return Evaluation(losses=[x.detach() for x in losses], output=graph.unflatten_output(flat))

    def _first_inputs(self, inputs: Sequence[Any] | None) -> list[torch.Tensor]:
        if not self.has_first:
            return []
        if inputs is None:
            raise AutopipeError(f"{self.where} runs stage 0 but was given no inputs",
                                hint="pass the batch's inputs on every rank (or at least on stage 0's)")
        return self.prepared.flat_batch(self.spec, inputs, self.device, self.steps or None,
                                        self.plan.microbatches)

    def _target(self, target: torch.Tensor | None) -> torch.Tensor | None:
        if not self.has_last:
            return None
        if target is None:
            raise AutopipeError(f"{self.where} runs the last stage but was given no target",
                                hint="pass the batch's target on every rank (or at least on the last stage's)")
        target = tensor_target(target, f"the batch of step {self.steps}" if self.steps else "the batch")
        if self._one_target is None:  # drawn once: spec.batch(1)
            self._one_target = example_target(self.spec)
        check_target(self.spec, target, self.plan.microbatches, self.steps or None, self._one_target)
        return target.to(self.device)

    def _open(self) -> None:
        """Raise where ``close`` left no process group to run in."""
        if self._closed and not dist.is_initialized():  # torch said "Default process group has not been initialized"
            raise AutopipeError(f"{self.where}: this pipe was closed (its `with build(...)` block ended, or "
                                "close() was called), which left the process group",
                                hint="step a pipe inside its `with build(...)` block, or build a new one")

    # --- gradients -----------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear this rank's gradients (as ``optimizer.zero_grad``).

        [Note: gradient buffers kept on CPU ranks]
        ``step`` averages only its own gradients, so it moves what ``.grad`` holds aside and
        adds it back afterwards: a second full set of gradients while it runs. After
        ``zero_grad(set_to_none=False)`` the buffers hold zeros, so ``step`` accumulates into
        them in place instead (``0 + g`` is ``g`` exactly, then the same in-place sums as
        from ``None``): no second set, the same gradients bit for bit. Change ``.grad``
        between this call and ``step`` and that change is averaged with the step's.
        """
        for p in self._params.values():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                forget_rows(p.grad)  # zeroed whole: step divides it whole
                p.grad.zero_()
        self._grads_zeroed = not set_to_none
        self._tied_grads = _NONE

    def sync_tied_grads(self) -> None:
        """Sum the gradients of every tied parameter over the ranks holding a copy, and
        average every gradient over the data-parallel replicas (collective;
        [Note: the data-parallel gradient sync] in ``autopipe.runtime.data_parallel``). Once
        ``optimizer`` built a sharded optimizer, the replicas' average is a reduce-scatter:
        each rank's gradients are averaged on the pieces it steps only.

        Call it once after the last ``step`` before the optimizer step, on every rank; a
        second call, or a call with nothing new to sum, does nothing (``step`` sums at once
        what it adds to gradients that were summed already).
        """
        if self._tied_grads != _LOCAL:
            return
        self._open()
        with failures(self.where, "while summing tied gradients", self.timeout_s):
            self._sync.all_reduce_grads()
        self._tied_grads = _SUMMED

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Scale every gradient so that their norm over the whole model is at most ``max_norm``.

        What ``torch.nn.utils.clip_grad_norm_`` does on the unsplit model (collective): each
        rank takes its parameters' norms, a tied parameter counted on one of its holders only,
        and the ranks combine them (sum of ``norm ** p``; max for ``inf``); under a sharded
        optimizer each rank its own pieces', combined over every rank. Tied gradients are
        summed first (``sync_tied_grads``).

        Returns:
            The total norm before clipping (a 0-dim tensor on this rank's device).
        """
        if not max_norm >= 0:  # a negative one turned every gradient round, NaN made them NaN
            raise AutopipeError(f"clip_grad_norm_: max_norm is {max_norm}", hint="clip to a norm of 0 or more")
        if not float(norm_type) > 0:  # 0: a ZeroDivisionError; a negative p clipped nothing
            raise AutopipeError(f"clip_grad_norm_: norm_type is {norm_type}", hint="use a positive p (2.0) or inf")
        self._open()
        self.sync_tied_grads()
        p_norm = float(norm_type)
        mine = self.replicas.position
        if self._sharded is None:  # replicas agree after the sync: one pipeline's norm
            group = self.replicas.pp_group
            named = [(name, p.grad) for name, p in self._params.items() if p.grad is not None]
        else:  # each replica's pieces: their norms over every rank
            group, named = None, self._sharded.owned_grads()
        counted = [g for name, g in named if min(self._replicated.get(name, (mine,))) == mine]
        norms = [torch.linalg.vector_norm(g, p_norm, dtype=torch.float32) for g in counted]
        local = torch.zeros((), dtype=torch.float32, device=self.device)
        if norms:
            stacked = torch.stack(norms)
            local = stacked.max() if math.isinf(p_norm) else stacked.pow(p_norm).sum()
        with failures(self.where, "while taking the gradient norm", self.timeout_s):
            dist.all_reduce(local, op=dist.ReduceOp.MAX if math.isinf(p_norm) else dist.ReduceOp.SUM,
                            group=group)
        total = local if math.isinf(p_norm) else local.pow(1.0 / p_norm)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in self._params.values():
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
        return total

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's parameters and persistent buffers under the unsplit model's names.

        The tensors share memory with the model (as ``nn.Module.state_dict``); a tied
        parameter appears once, under the first of its names.
        """
        out = {name: p.detach() for name, p in self._params.items()}
        out.update({name: b.detach() for name, b in self._buffers.items()})
        return out

    def model_keys(self) -> set[str]:
        """Every name a state dict of the unsplit model may use (tied aliases included)."""
        return set(self.state_keys) | {n for group in self.tied for n in group}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy this rank's tensors from a state dict of the unsplit model (not collective).

        Keys are the unsplit model's names; a tied parameter may be given under any of
        its names. A Hugging Face model's state may also come in its checkpoint's layout (a
        ``save_pretrained`` shard read with ``safetensors.torch.load_file``), as ``build(...,
        init=FOLDER)`` reads it: converted as ``from_pretrained`` converts it, the tensors it
        leaves unread left out. With ``strict``, a key the model does not have, or one of
        this rank's tensors missing from ``state``, is an error.

        Raises:
            CheckpointError: keys missing or unknown (strict), shapes that differ (named), or
                a tied parameter given under two names with different values.
        """
        own = self.state_dict()
        read = set(own) | {name for group in self.tied if set(group) & set(own) for name in group}
        empty = [f"{k} ({'on the meta device' if isinstance(v, torch.Tensor) else type(v).__name__})"
                 for k, v in state.items() if k in read and (not isinstance(v, torch.Tensor) or v.is_meta)]
        if empty:  # torch's own errors said neither which key nor why
            raise CheckpointError(f"the state dict holds no tensor data under {names(empty)}",
                                  hint="pass real tensors (a model built on meta has none: load its "
                                       "weights first, or build with init=...)")
        values: Mapping[str, torch.Tensor] = state
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else () for k, v in state.items()}
        known = self.model_keys()
        laid_out = in_model_names(state, self.spec.model, known, read)
        if laid_out is not None:
            values, shapes = laid_out
        pairs = match_state(own, shapes, tied=self.tied, known=known, strict=strict,
                            what="the state dict", source="given")
        check_tied_alike(values, self.tied, what="the state dict")
        for name, key in pairs:
            own[name].copy_(values[key])

    # --- the process group ---------------------------------------------------------------------

    def _messages(self) -> contextlib.AbstractContextManager[None]:
        """Where the schedule's messages are posted and waited on: with this rank's core
        kept busy where ``build`` pinned it ([Note: a busy core while a rank waits])."""
        if self._busy_core is None:
            return contextlib.nullcontext()
        return messages_within(self._busy_core.busy)

    def _timed(self) -> contextlib.AbstractContextManager[None]:
        """Inside ``_messages``: the schedule's actions recorded into ``timeline``, if set."""
        if self.timeline is None:
            return contextlib.nullcontext()
        self.timeline.step = self.steps
        return self.timeline.timing(list(self._pipeline.stages), self._pipeline.schedule)

    def close(self) -> None:
        """Undo what ``build`` set in this process (the busy-core thread, the flushing of
        subnormals); leave the process group if ``build`` created it."""
        if self._busy_core is not None:
            self._busy_core.close()
            self._busy_core = None
        if self._flushed:
            flush_subnormals(False)
            self._flushed = False
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
        self._closed = True

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def own(value: Any, device: torch.device) -> Any:
    """``value`` on ``device``, holding no more memory than its own bytes: a tensor that is a
    view into a larger storage (a replica's share of the global batch) and would not be
    copied by moving it is cloned; anything else is moved (or returned, not a tensor)."""
    if not isinstance(value, torch.Tensor):
        return value
    moved = value.to(device)
    if moved.data_ptr() == value.data_ptr() and value.untyped_storage().nbytes() > value.nbytes:
        moved = moved.clone()
    return moved


def build(
    plan: Plan,
    spec: ModelSpec,
    rank: int | None = None,
    device: torch.device | str | None = None,
    *,
    init: WeightsSource | None = None,
    timeout_s: float = 300.0,
    prepared: Prepared | None = None,
    pin_malloc: bool = False,
    pin_cores: bool = False,
    flush_denormal: bool = False,
    seed: int = 0,
) -> Pipe:
    """This rank's share of ``plan`` run on ``spec``'s model: its stages and their schedule.

    Joins the default process group from the torchrun environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) unless one exists
    already, after checking the plan against the model and the world size (so a wrong
    plan stops every rank before the rendezvous). Before it joins, the rank gives real
    tensors to its own stages, on its device, and to nothing else: a spec may build its
    model on the meta device, and each rank then holds only its stages' weights
    (``autopipe.runtime.materialize``). Copies of tied parameters start equal (the lowest
    holder's value).

    Args:
        plan: the plan (``autopipe.Plan.load``).
        spec: the model spec the plan was made for.
        rank: this process's rank; None: from the process group or ``RANK``.
        device: where this rank computes; None or ``"auto"``: the plan's device
            (``cuda`` stages on GPU ``LOCAL_RANK``), or ``"cpu"``, ``"cuda"``, a torch.device.
        init: the unsplit model's weights to start from, keys as ``model.state_dict()``
            (strict; a tied parameter under any of its names): a ``.safetensors`` file, a
            Hugging Face checkpoint folder, a torch ``.pt`` (each rank reads only its own
            tensors), or a state dict in memory. None: the model as built, its meta
            tensors filled by ``spec.init_weights`` (or ``reset_parameters``) under a seed
            per module, the same whatever the plan.
        timeout_s: how long a rank waits on a silent peer before it fails.
        prepared: ``prepare(spec, plan, world)`` done already (skips tracing again).
        pin_malloc: keep freed CPU memory for reuse (``autopipe._malloc``; CPU ranks).
        pin_cores: keep each local rank to its own share of the cores (CPU ranks), and
            where that holds, keep them busy while the rank waits on its peers' messages
            ([Note: a busy core while a rank waits]).
        flush_denormal: on a CPU device, flush subnormal floats to zero from here on, as the
            profiles a plan is made from time them ([Note: subnormals in training]);
            ``close`` stops it.
        seed: the run's seed: of the meta tensors' initialisers (without ``init``) and of
            the model's random ops (dropout and the like), which draw per node, step and
            micro-batch, the same whatever the plan and as ``reference_train`` with this
            seed ([Note: random draws per node and micro-batch]).

    Raises:
        PlanMismatchError: the plan was made for another model, micro-batch shape or world size.
        AutopipeError: a bad torchrun environment, or ``rank`` is not the process group's.
        RuntimeStageError: the rendezvous failed.
        WeightsError: ``init`` cannot be read or does not fit the model (names, shapes, dtypes).
        SpecError: a meta tensor of this rank's stages has no initialiser.
    """
    env_rank, world, local_rank = distributed_env()
    if rank is not None and rank != env_rank:
        raise AutopipeError(f"build(rank={rank}) but this process is rank {env_rank} of {world}",
                            hint="leave rank=None, or start the process as that rank")
    prepared = prepared or prepare(spec, plan, world)
    where = _device(plan, env_rank, local_rank, device)
    if where.type == "cpu" and pin_malloc:
        _pin_malloc()  # [Note: pinned malloc on CPU ranks]
    pinned = None
    if where.type == "cpu" and pin_cores:
        # before the process group, so that gloo's threads start on the rank's cores
        pinned = _pin_cores(local_rank, local_world(world))  # [Note: pinned cores on CPU ranks]
    # before the process group too, so that gloo's threads (which sum the tied gradients) flush them
    flushed = where.type == "cpu" and flush_denormal and flush_subnormals(True)
    ranks = rank_of_stages(plan)
    created, busy = False, None
    try:
        materialize_stages([st.module for st in prepared.split.stages if ranks[st.index] == env_rank],
                           spec, where, init=init, seed=seed)
        created = init_process_group(env_rank, world, where, timeout_s)
        # a rank alone on its cores keeps them busy while it waits ([Note: a busy core while a rank waits])
        busy = BusyCore() if pinned else None
        return Pipe(spec, plan, prepared, env_rank, world, where, timeout_s, created, seed=seed, busy_core=busy,
                    flushed=flushed)
    except BaseException:
        if busy is not None:
            busy.close()
        if flushed:
            flush_subnormals(False)
        if created:
            dist.destroy_process_group()
        raise


def _device(plan: Plan, rank: int, local_rank: int, device: torch.device | str | None) -> torch.device:
    if device is None or device in ("auto", "cpu", "cuda"):
        return rank_device(plan, rank, local_rank, device or "auto")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise AutopipeError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N") from None
    # neither computes: a meta stage trained "fine" until its first step, cuda:N failed in torch
    if chosen.type == "meta":
        raise AutopipeError(f"rank {rank} cannot compute on {chosen}",
                            hint="use auto, cpu, cuda or cuda:N (a model built on meta gets its tensors on that "
                                 "device)")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        return rank_device(plan, rank, local_rank, "cuda")  # its error: no CUDA device
    return chosen


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
