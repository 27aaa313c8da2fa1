"""Plan: the partition of a model into pipeline stages, with predictions, as versioned JSON.

(The module is not called ``plan.py`` so that it does not shadow ``autopipe.plan()``.)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from autopipe._jsonio import read_json, write_json_atomic
from autopipe._typed_json import MalformedError, read_dataclass
from autopipe.errors import PlanError

SCHEMA = "autopipe.plan/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """One pipeline device."""

    name: str
    """A label (``cuda:0``, ``gpu-a``)."""
    memory: int
    """Memory limit in bytes."""
    speed: float = 1.0
    """Compute speed relative to the profiled device (2.0 = twice as fast)."""

    def __post_init__(self) -> None:
        problem = device_problem(self.name, self.memory, self.speed)
        if problem is not None:
            raise PlanError(f"device {self.name!r} {problem[0]}", hint=problem[1])

    @property
    def is_cpu(self) -> bool:
        """Whether ``autopipe train`` runs this device's stages on the CPU (``cpu``, ``cpu:N``)."""
        return self.name == "cpu" or self.name.startswith("cpu:")


_TORCH_TYPES = frozenset({"cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve",
                          "fpga", "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia",
                          "privateuseone"})
"""The device types ``torch.device`` parses (torch 2.13), kept here so reading a plan needs no torch."""


def label_problem(label: str) -> tuple[str, str] | None:
    """Why ``autopipe train`` cannot run a stage on the device labelled ``label`` (a predicate:
    "has ...", "is ..."), and the fix; None where it can.

    # [Note: device labels]
    ``cpu`` and ``cuda`` (``cpu:N``, ``cuda:N``) name where a rank runs; any other label
    (``gpu-a``, ``h100:3``) is a name for a GPU, run on CUDA where there is one. A label
    that torch reads as another device type (``mps``, ``xla:0``, ``meta``) would be run on
    CUDA too while the planner priced it as a GPU and the user meant something else, and a
    ``cpu:``/``cuda:`` label whose index is no number (``cpu:0:1``, ``cuda:x``) is priced
    as the CPU (``Device.is_cpu``) but run where torch cannot parse it: both are refused.
    """
    if not isinstance(label, str) or not label:
        return ("has no name", 'name it, e.g. "cuda:0", "cpu:0" or "gpu0"')
    kind, _, index = label.partition(":")
    if kind in ("cpu", "cuda"):
        if _ and not index.isdigit():
            return (f"has the {kind} index {index!r}, not a number",
                    f'write "{kind}" or "{kind}:N" (e.g. "{kind}:0"), or a name of your own such as "gpu0"')
        return None
    if kind in _TORCH_TYPES:
        return (f"is torch's {kind!r} device type, which autopipe does not run on (only cpu and cuda)",
                'use "cpu:N" for the CPU, or "cuda:N" (or a name of your own, such as "gpu0") for a GPU')
    return None


def device_problem(name: str, memory: int, speed: float) -> tuple[str, str] | None:
    """What is wrong with a device of this name, memory limit and speed, and the fix; None if nothing."""
    label = label_problem(name)
    if label is not None:
        return label
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        return (f"has memory {memory!r}, not a size in bytes",
                "give the limit in bytes (0 = no limit), e.g. 85899345920 for 80 GiB")
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < speed < float("inf"):
        return (f"has speed {speed!r}, not a positive number",
                "speed is compute speed relative to the profiled device, e.g. 1.0 (the same) or 0.5 (half)")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StageMemory:
    """Predicted peak memory of one stage, bytes."""

    params: int
    grads: int
    optimizer: int
    activations: int
    """Saved activations × micro-batches in flight under the schedule, with what the stage
    sends and receives (each kept until its micro-batch's backward)."""
    buffers: int
    """Receive buffers beyond those: two gradients and one activation ([Note: the
    pipeline's buffers] in ``autopipe.partition.costs``)."""
    total: int
    """The peak: params + grads + optimizer + buffers + batch + library + the larger of
    activations + workspace and optimizer_step."""
    optimizer_step: int = 0
    """What the optimizer step allocates while it runs, when no activation is held
    (Adam's multi-tensor temporaries; fp32 gradients for 16-bit masters)."""
    workspace: int = 0
    """What the stage holds beyond its saved activations while one of its calls runs: on
    the last stage the loss's (the model's output it reads, the loss's gradients and
    scratch), or the most one of its nodes' calls holds: its scratch (a cuDNN workspace,
    measured on CUDA: ``NodeProfile.scratch_bytes``) plus the gradients alive around its
    backward ([Note: gradients around a backward call] in ``autopipe.profile.gradients``),
    whichever is larger."""
    batch: int = 0
    """The part of the step's batch its rank holds through the step: the inputs of every
    micro-batch on stage 0, their targets on the last stage (0 in plans written before it
    was counted)."""
    library: int = 0
    """Device memory its rank's libraries hold beyond tensors, on the first stage its rank
    runs: cuBLAS's workspaces on a GPU ([Note: the libraries' workspaces] in
    ``autopipe.profile.libraries``; 0 on the CPU and in plans written before it was counted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """A tensor that leaves a stage."""

    tensor: str
    """Name of the node that produces it."""
    bytes: int
    to_stage: int
    forward_only: bool = False
    """It has no gradient and travels in a message of its own, nothing coming back for it
    (``autopipe.partition.problem.Problem.forward_only``); else in the message of the values
    with a gradient ([Note: what a cut sends] in ``autopipe.schedule.traffic``). Written only
    where True."""
    no_grad: bool = False
    """It surely has no gradient (``autopipe.partition.problem.Value.no_grad``): nothing
    comes back for it. Written only where True; plans written before it read as every value
    having one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One pipeline stage."""

    index: int
    device: str
    nodes: tuple[str, ...]
    """fx node names, in topological order."""
    modules: tuple[str, ...]
    """Module paths whose nodes all lie in this stage (for humans and SplitPoint)."""
    forward_s: float
    backward_s: float
    """Backward time (input + weight gradients)."""
    memory: StageMemory
    sends: tuple[Send, ...] = ()
    rank: int | None = None
    """Rank that runs the stage (differs from ``index`` only for virtual stages)."""
    backward_weight_s: float = 0.0
    """The weight-gradient part of ``backward_s`` (zero-bubble schedules split it off)."""
    comm_s: float = 0.0
    """Time to send and receive this stage's boundary tensors and their gradients, per
    micro-batch: their bytes over the link, both ways (no latency)."""
    optimizer_s: float = 0.0
    """Once per step, after its last backward: the optimizer step over the parameters the
    stage holds, at the profile's rates (0 in plans from profiles without them)."""
    recompute: tuple[tuple[str, ...], ...] = ()
    """Groups of this stage's nodes whose forward runs again in backward, each one
    checkpointed region (only its inputs are kept); written only when there are some."""
    recompute_s: float = 0.0
    """Their forward again, per micro-batch: part of ``backward_s`` (written only when > 0)."""
    remade: tuple[str, ...] = ()
    """Nodes of earlier stages this stage runs again, before its own, to make values that
    depend on no input, parameter or random draw (a causal mask, rotary tables) instead of
    receiving them; their time is part of ``forward_s`` ([Note: values made again] in
    ``autopipe.trace.remade``). Written only when there are some."""

    @property
    def time_s(self) -> float:
        """Per-micro-batch time: forward + backward + communication."""
        return self.forward_s + self.backward_s + self.comm_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Predicted:
    """What the simulator predicts for one optimizer step."""

    iteration_s: float
    bubble_fraction: float
    peak_memory: tuple[int, ...] = ()
    """Per-stage peak memory over the step, bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SolverInfo:
    """How the partition was found and how good it provably is."""

    method: str
    """``ilp``, ``dp``, ``uniform`` or ``params``."""
    status: str
    """``optimal``, ``feasible`` (gap > tolerance, time limit) or ``heuristic``."""
    objective_s: float
    lower_bound_s: float
    gap: float
    """(objective − lower bound) / objective."""
    seconds: float
    """Solve time (not written for byte-identical plans when ``deterministic``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """What another partitioning method would give on the same profile."""

    iteration_s: float | None
    """Predicted step time; None if that method's split does not fit in memory."""
    bottleneck_stage: int | None = None
    max_memory: int | None = None
    stage_nodes: tuple[int, ...] = ()
    """Number of graph nodes per stage."""
    bottleneck_s: float | None = None
    """Per-micro-batch time (forward + backward + communication) of its bottleneck stage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataParallel:
    """The plan's pipeline replicated over data-parallel ranks (``autopipe.partition.degrees``).

    A plan without it runs one pipeline (``degree`` 1).
    """

    degree: int
    """Replicas of the pipeline; the plan runs on ``num_stages × degree`` ranks."""
    ranks: tuple[tuple[int, ...], ...]
    """``ranks[stage][replica]``: the global rank that runs that stage of that replica."""
    batch_size: int
    """Samples per optimizer step over all replicas (each replica takes ``1/degree``)."""
    placement: str = "pipelines"
    """``pipelines`` (a pipeline's stages on consecutive ranks) or ``replicas`` (a stage's
    replicas on consecutive ranks); see ``autopipe.partition.replicas``."""
    gpus_per_node: int = 0
    """Ranks per node (rank ``r`` on node ``r // gpus_per_node``); 0 = not given."""
    allreduce_bandwidth: float = 0.0
    """Bytes/s each stage's gradient all-reduce over its replicas was priced at."""
    allreduce_s: tuple[float, ...] = ()
    """Per stage, seconds of that all-reduce (sharded, of the reduce-scatter and all-gather
    that move its bytes: [Note: the sharded sync's price] in ``autopipe.partition.replicas``):
    part of the stage's ``optimizer_s``."""
    shard_optimizer: bool = False
    """Optimizer states sharded over the replicas (ZeRO-1); False = each replica holds all."""

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise PlanError(f"data_parallel.degree = {self.degree!r}", hint="use at least 1 replica")
        if self.batch_size < 1 or self.batch_size % self.degree:
            raise PlanError(f"data_parallel.batch_size {self.batch_size} does not split over "
                            f"{self.degree} replicas", hint="regenerate the plan")
        bad = [i for i, r in enumerate(self.ranks) if len(r) != self.degree]
        if bad:
            raise PlanError(f"data_parallel.ranks[{bad[0]}] lists {len(self.ranks[bad[0]])} ranks for "
                            f"{self.degree} replicas", hint="regenerate the plan")
        flat = sorted(r for rs in self.ranks for r in rs)
        if flat != list(range(len(flat))):
            raise PlanError(f"data_parallel.ranks are not each of the {len(flat)} ranks once",
                            hint="regenerate the plan")

    @property
    def world_size(self) -> int:
        """Ranks the plan runs on."""
        return len(self.ranks) * self.degree


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A pipeline-parallel plan for one model, micro-batch shape and device set."""

    graph_fingerprint: str
    schedule: str
    microbatches: int
    devices: tuple[Device, ...]
    stages: tuple[Stage, ...]
    predicted: Predicted
    solver: SolverInfo
    baselines: dict[str, Baseline] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    """Planner options that shaped the plan: dtype, optimizer, link bandwidth, profile device."""
    data_parallel: DataParallel | None = None
    """Data-parallel replicas of the pipeline; None = one pipeline."""

    def __post_init__(self) -> None:
        if self.microbatches < 1:
            raise PlanError(f"plan has {self.microbatches} micro-batches", hint="use at least 1")
        if not self.stages:
            raise PlanError("plan has no stages", hint="regenerate the plan")
        seen: set[str] = set()
        for i, s in enumerate(self.stages):
            if s.index != i:
                raise PlanError(f"stage {i} has index {s.index}", hint="regenerate the plan")
            label = label_problem(s.device)
            if label is not None:
                raise PlanError(f"stages[{i}].device {s.device!r} {label[0]}", hint=label[1])
            dup = seen.intersection(s.nodes)
            if dup:
                raise PlanError(f"node {sorted(dup)[0]} is in two stages", hint="regenerate the plan")
            seen.update(s.nodes)
            held = set(s.nodes)
            for group in s.recompute:
                stray = [n for n in group if n not in held]
                if stray or not group:
                    raise PlanError(f"stage {i} recomputes "
                                    + (f"node {stray[0]!r}, which it does not hold" if stray
                                       else "an empty group"), hint="regenerate the plan")
        dp = self.data_parallel
        if dp is not None and len(dp.ranks) != len(self.stages):
            raise PlanError(f"data_parallel.ranks has {len(dp.ranks)} stages, the plan {len(self.stages)}",
                            hint="regenerate the plan")
        if dp is not None and dp.allreduce_s and len(dp.allreduce_s) != len(self.stages):
            raise PlanError(f"data_parallel.allreduce_s has {len(dp.allreduce_s)} entries for "
                            f"{len(self.stages)} stages", hint="regenerate the plan")

    @property
    def replicas(self) -> int:
        """Data-parallel replicas of the pipeline (1 without ``data_parallel``)."""
        return self.data_parallel.degree if self.data_parallel is not None else 1

    @property
    def num_stages(self) -> int:
        """Number of pipeline stages."""
        return len(self.stages)

    @property
    def stage_of(self) -> dict[str, int]:
        """Node name → stage index."""
        return {n: s.index for s in self.stages for n in s.nodes}

    def to_json(self) -> dict[str, Any]:
        """The ``autopipe.plan/1`` JSON object, with the checksums of what the planner wrote."""
        out = {
            "schema": SCHEMA,
            "graph_fingerprint": self.graph_fingerprint,
            "schedule": self.schedule,
            "microbatches": self.microbatches,
            "devices": [asdict(d) for d in self.devices],
            "stages": [_stage_json(s) for s in self.stages],
            "predicted": asdict(self.predicted),
            "solver": asdict(self.solver),
            "baselines": {k: asdict(v) for k, v in self.baselines.items()},
            "options": self.options,
            **({"data_parallel": asdict(self.data_parallel)} if self.data_parallel is not None else {}),
        }
        out[CHECKSUMS] = checksums(out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<plan>") -> Plan:
        """Build from a JSON object; ``source`` names the file in errors.

        Every field is checked against its type (``autopipe._typed_json``), so a file edited
        by hand is refused naming the field rather than failing later in arithmetic.
        """
        try:
            plan: Plan = read_dataclass(cls, data, "", ignore=_IGNORED)
            return plan
        except PlanError as e:
            raise PlanError(f"{source}: {e.message}", hint=e.hint) from None
        except MalformedError as e:
            raise PlanError(f"{source}: malformed plan: {e}",
                            hint="regenerate it with `autopipe plan`") from None
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{source}: malformed plan ({type(e).__name__}: {e})",
                            hint="regenerate it with `autopipe plan`") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as JSON."""
        write_json_atomic(path, self.to_json())

    @property
    def recomputes(self) -> bool:
        """Whether any stage recomputes activations."""
        return any(s.recompute for s in self.stages)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan file.

        Raises:
            PlanError: missing, corrupt or wrong-schema file (the message names it).
        """
        return cls.from_json(read_json(path, SCHEMA, PlanError), source=str(path))


def _stage_json(stage: Stage) -> dict[str, Any]:
    """A stage's JSON object; the recomputation fields only where it recomputes, and the
    workspace, batch and library only where there is one, so plans without them read as they
    did before."""
    out = asdict(stage)
    if not stage.recompute:
        del out["recompute"]
    if not stage.recompute_s:
        del out["recompute_s"]
    if not stage.remade:
        del out["remade"]
    if not stage.memory.workspace:
        del out["memory"]["workspace"]
    if not stage.memory.batch:
        del out["memory"]["batch"]
    if not stage.memory.library:
        del out["memory"]["library"]
    for send in out["sends"]:
        for key in ("forward_only", "no_grad"):
            if not send[key]:
                del send[key]
    return out


CHECKSUMS = "checksums"
"""The plan's key for ``checksums()`` of what the planner wrote ([Note: a plan edited by hand])."""

_IGNORED = {Plan: frozenset({"schema", CHECKSUMS}), Send: frozenset({"dtype"})}
"""Keys ``from_json`` reads elsewhere or no longer: a send's ``dtype`` was written on
2026-12-05 only ([Note: one message per cut])."""

_SEALED = ("schedule", "microbatches", "predicted", "solver", "baselines", "data_parallel")
"""Top-level fields the checksums cover, besides each stage."""


def checksums(data: dict[str, Any]) -> dict[str, str]:
    """Per part of a plan's JSON, the first 16 hex digits of the SHA-256 of its canonical JSON.

    # [Note: a plan edited by hand]
    A plan's stages, predictions and baselines are one solution of one problem: a cut moved
    by hand, a node renamed or a stage dropped leaves times, memory and sends that belong
    to another partition, and ``autopipe show`` would draw them as if they were this one's.
    What the file alone can check (``autopipe.runtime.validate``) misses most such edits
    (a moved cut whose sends still look plausible). The planner therefore records, per
    stage (``stages[i]``) and per other part (``_SEALED``), a checksum of what it wrote;
    the commands that present or consume the predictions (show, check, export) refuse a
    plan whose parts no longer match, naming the part. A stage's ``device`` label is left
    out: pointing a stage at another device of the same kind is not a new partition.
    Plans written before the checksums have none and are read as they are.
    """
    parts: dict[str, Any] = {k: data[k] for k in _SEALED if k in data}
    stages = data.get("stages")
    if isinstance(stages, list):
        parts["stages"] = len(stages)
        for i, stage in enumerate(stages):
            parts[f"stages[{i}]"] = ({k: v for k, v in stage.items() if k != "device"}
                                     if isinstance(stage, dict) else stage)
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, separators=(",", ":")).encode()
                              ).hexdigest()[:16] for k, v in parts.items()}


def check_as_written(data: dict[str, Any], source: str = "<plan>") -> None:
    """Raise if a part of the plan ``data`` differs from what ``autopipe plan`` wrote
    ([Note: a plan edited by hand]); a plan without checksums passes.

    Raises:
        PlanError: naming the first part that differs and the fix.
    """
    recorded = data.get(CHECKSUMS)
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise PlanError(f"{source}: malformed plan: '{CHECKSUMS}' is not an object",
                        hint="regenerate it with `autopipe plan`")
    now = checksums(data)
    for part in sorted(set(recorded) | set(now), key=_part_order):
        if recorded.get(part) != now.get(part):
            what = (f"has {len(data['stages'])} stages, not the {_recorded_stages(recorded)} it was "
                    f"written with" if part == "stages" else f"{part} differs from what `autopipe plan` wrote")
            raise PlanError(f"{source}: {what} (edited by hand?), so its times, memory and sends "
                            "are not this partition's",
                            hint="make the partition you want with `autopipe plan` (e.g. --stages, "
                                 "--method, --memory) instead of editing the file; a stage's device "
                                 "may be edited")


def _part_order(part: str) -> tuple[int, int, str]:
    if part == "stages":
        return (0, 0, part)
    if part.startswith("stages["):
        return (1, int(part[7:-1]) if part[7:-1].isdigit() else 0, part)
    return (2, 0, part)


def _recorded_stages(recorded: dict[str, Any]) -> str:
    return str(sum(1 for k in recorded if k.startswith("stages[")))
