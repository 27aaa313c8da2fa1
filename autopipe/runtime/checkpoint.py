"""Checkpoints of a pipeline: save and load with torch.distributed.checkpoint, never half-written.

A checkpoint directory holds one folder per saved step and a pointer to the newest::

    ckpt/
      step-000004/          DCP files (.metadata, __0_0.distcp, ...) and autopipe.json
      step-000008/
      latest                "step-000008"

[Note: atomic checkpoints]

Every rank writes its own tensors, keyed by the unsplit model's names, into
``.step-000008.partial``. Only when ``dcp.save`` has returned on every rank (DCP writes
its ``.metadata`` last, after a collective) does rank 0 add ``autopipe.json``, rename the
folder to ``step-000008`` and replace ``latest`` (a temp file and ``os.replace``). A rank
that dies anywhere before the rename leaves a ``.partial`` folder that nothing reads, and
``latest`` still names the previous complete checkpoint; older checkpoints are removed
only after the new one is complete. Because entries are named, not numbered by rank, a
checkpoint loads into another plan of the same model (DCP reshards by key).

[Note: a stale latest]

``latest`` is replaced after the rename, so a rank killed between the two leaves it naming
the previous checkpoint while a newer complete one is beside it. Finding a checkpoint
therefore takes the complete folder of the highest step, not the one ``latest`` names,
and says so where the two differ: the newer one is whole (its rename came after every
rank's ``dcp.save`` and its ``autopipe.json``), and resuming the older one would train
its steps again.

[Note: resuming past a damaged checkpoint]

A save never leaves ``latest`` naming a half-written checkpoint, but a file can be lost
or cut short afterwards (a disk, a copy, a clean-up script), and a restart script that
passes the same ``--resume DIR`` every time would then stop for good. So resuming from a
*directory* of checkpoints takes the newest one whose files are whole (``autopipe.json``
and every data file ``.metadata`` names, at their lengths), walking back from the newest
complete one ([Note: a stale latest]), and says which it passed over and why; the previous checkpoint is kept
for this. A step folder named itself is taken as it is (a damaged one is an error), and so
is ``autopipe consolidate``'s: writing out older weights is not what it was asked for.
A file that DCP cannot read although it is whole is found only while loading, by every
rank together, and is an error.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from autopipe._jsonio import atomic_output, read_json, write_json_atomic
from autopipe.errors import CheckpointError, RuntimeStageError
from autopipe.runtime.group import failures, short_error
from autopipe.runtime.optim_state import (
    GROUP,
    MASTER,
    STATE,
    load_optimizer_state,
    optimizer_state,
    param_of,
)
from autopipe.runtime.pipe import Pipe
from autopipe.runtime.state_keys import canonical_names, match_state, tied_groups
from autopipe.runtime.weights import is_weights_path

SCHEMA = "autopipe.checkpoint/1"
META = "autopipe.json"
LATEST = "latest"
_PREFIX = "step-"
_RNG = "rng/"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """What ``autopipe.json`` of one checkpoint says."""

    path: Path
    """The checkpoint's folder (``DIR/step-000008``)."""
    step: int
    """Optimizer steps done when it was saved."""
    world_size: int
    """Ranks that saved it."""
    fingerprint: str
    """The graph fingerprint of the plan it was trained with."""
    state_keys: tuple[str, ...]
    """The unsplit model's ``state_dict()`` keys, in order."""
    tied: tuple[tuple[str, ...], ...]
    """Names of one parameter; the checkpoint holds it under the first."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the saver added (``autopipe train``: optimizer, lr, micro-batches)."""


def _step_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


def _step_of(path: Path) -> int | None:
    """The step a ``step-NNNNNN`` folder holds (None for another name)."""
    digits = path.name[len(_PREFIX):]
    return int(digits) if path.name.startswith(_PREFIX) and digits.isdigit() else None


def _complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / META).is_file()


def _checkpoints(root: Path) -> list[Path]:
    """The complete ``step-*`` folders of ``root``, oldest step first.

    By the step as a number: past step 999999 the name has more digits, and the
    names no longer sort as the steps do.
    """
    found = [(step, p) for p in root.glob(f"{_PREFIX}*") if (step := _step_of(p)) is not None and _complete(p)]
    return [p for _, p in sorted(found)]


def find_checkpoint(directory: str | Path, note: Callable[[str], None] | None = None) -> Path:
    """The newest complete checkpoint in ``directory`` (or ``directory`` itself, if it is one).

    The complete ``step-*`` folder of the highest step, which ``latest`` names unless a save
    was killed between the rename and the pointer ([Note: a stale latest]).

    Args:
        directory: a checkpoint directory, or one checkpoint's step folder.
        note: told, in one line, where ``latest`` names another checkpoint than the one taken.

    Raises:
        CheckpointError: no such directory, a file, or no complete checkpoint in it.
    """
    root = Path(directory)
    if root.is_file() and is_weights_path(root):
        raise _weights_given(root, "a model's weights file")
    if root.is_file():
        raise CheckpointError(f"{root} is a file, not a checkpoint directory",
                              hint="pass the DIR that `autopipe train --save DIR` wrote (or one of its "
                                   "step-NNNNNN folders)")
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory",
                              hint="pass the DIR that `autopipe train --save DIR` wrote")
    if _complete(root):
        return root
    found = _checkpoints(root)
    if found:
        named = _latest(root)
        if named is not None and named != found[-1] and _complete(named) and note is not None:
            note(_stale(root, named, found[-1]))
        return found[-1]
    partial = sorted(p.name for p in root.glob(f".{_PREFIX}*.partial"))
    if not partial and is_weights_path(root):  # not a checkpoint dir beside a consolidated file
        raise _weights_given(root, "a folder of a model's weights")
    seen = f" (only the unfinished {', '.join(partial)})" if partial else ""
    raise CheckpointError(f"{root} holds no complete checkpoint{seen}",
                          hint="a save that was interrupted leaves no checkpoint; name a directory "
                               "(or step-NNNNNN folder) that holds a complete one")


def _weights_given(root: Path, kind: str) -> CheckpointError:
    """``--resume`` (or ``consolidate``) of weights to start from, where a checkpoint belongs."""
    return CheckpointError(f"{root} is {kind}, not a checkpoint of `autopipe train --save`",
                           hint=f"start training from these weights with `autopipe train --init {root}`; "
                                f"a checkpoint is the DIR that `autopipe train --save DIR` wrote (or one "
                                f"of its step-NNNNNN folders)")


def _stale(root: Path, named: Path, taken: Path) -> str:
    """The note for a ``latest`` that names an older complete checkpoint than the one taken."""
    return (f"{root / LATEST} names {named.name}, but {taken.name} is newer and complete (a save "
            f"stopped before it moved {LATEST}); taking {taken.name}")


def _latest(root: Path) -> Path | None:
    """The folder ``root/latest`` names (None without that file)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    return root / pointer.read_text(encoding="utf-8").strip()


def find_resumable(directory: str | Path, note: Callable[[str], None] | None = None) -> Path:
    """The checkpoint to resume from: ``find_checkpoint``'s, or the newest earlier one whose
    files are whole where that one's are not ([Note: resuming past a damaged checkpoint]).

    Args:
        directory: a checkpoint directory, or one checkpoint's step folder (taken as it is).
        note: told, in one line, which checkpoints were passed over and why (not called
            where the newest is taken).

    Raises:
        CheckpointError: no complete checkpoint, or none whose files are whole (the newest's
            error, with its hint).
    """
    root = Path(directory)
    first = find_checkpoint(root)
    if first == root:
        return root
    passed: list[str] = []
    named = _latest(root)
    if named is not None and named != first and _step_of(named) is not None and not _complete(named):
        passed.append(f"{named} is unfinished (no {META})" if named.is_dir() else f"{named} is missing")
    step = _step_of(first) or 0
    earlier = [p for p in reversed(_checkpoints(root)) if (_step_of(p) or 0) < step]
    error: CheckpointError | None = None
    for path in (first, *earlier):
        try:
            read_info(path)
            read_metadata(path)
        except CheckpointError as e:
            error = error or e
            passed.append(e.message)
            continue
        if passed and note is not None:
            note(f"resuming from {path}, the newest whole checkpoint in {root}: {'; '.join(passed)}")
        elif note is not None and named is not None and named != path and _complete(named):
            note(_stale(root, named, path))
        return path
    assert error is not None
    raise error


def read_info(path: Path) -> CheckpointInfo:
    """The ``autopipe.json`` of the checkpoint folder ``path``.

    Raises:
        CheckpointError: missing, unreadable or of another schema.
    """
    data = read_json(path / META, SCHEMA, CheckpointError)
    try:
        return CheckpointInfo(path=path, step=int(data["step"]), world_size=int(data["world_size"]),
                              fingerprint=str(data["graph_fingerprint"]),
                              state_keys=tuple(data["state_keys"]),
                              tied=tuple(tuple(g) for g in data["tied"]), extra=dict(data.get("extra", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / META}: malformed ({type(e).__name__}: {e})",
                              hint=f"the checkpoint is damaged; {earlier_hint(path)}") from None


def read_metadata(path: Path) -> Metadata:
    """DCP's ``.metadata`` of the checkpoint folder ``path``, after checking that every data
    file it names is there and holds the bytes it names (reads no tensor data).

    Raises:
        CheckpointError: ``.metadata`` cannot be read, or a data file is missing or short;
            the message names the file, the hint an earlier checkpoint.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metadata = FileSystemReader(path).read_metadata()
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is damaged: its .metadata cannot be read ({short_error(e)})",
                              hint=earlier_hint(path)) from None
    ends: dict[str, int] = {}
    for item in (metadata.storage_data or {}).values():
        name = getattr(item, "relative_path", None)
        if isinstance(name, str):
            ends[name] = max(ends.get(name, 0), int(item.offset) + int(item.length))
    for name, end in sorted(ends.items()):
        try:
            size = (path / name).stat().st_size
        except OSError as e:
            raise CheckpointError(f"checkpoint {path} is damaged: its file {name} is missing ({e.strerror})",
                                  hint=earlier_hint(path)) from None
        if size < end:
            raise CheckpointError(f"checkpoint {path} is damaged: its file {name} holds {size} bytes, "
                                  f"its .metadata names {end}", hint=earlier_hint(path))
    return metadata


def earlier_hint(path: Path) -> str:
    """The hint for a damaged checkpoint: the complete ones saved before it, by folder."""
    others = [p for p in _checkpoints(path.parent) if p != path and (_step_of(p) or 0) < (_step_of(path) or 0)]
    if others:
        return f"use an earlier checkpoint: pass its step folder, e.g. {others[-1]}"
    return "no earlier checkpoint is kept beside it; use another checkpoint directory, or train from the start"


def check_model(path: Path, info: CheckpointInfo, metadata: Metadata, model: nn.Module) -> None:
    """Raise unless the checkpoint holds the state of ``model`` (the unsplit module; may be on meta).

    Compares the ``state_dict()`` keys ``autopipe.json`` lists, and the shapes DCP's
    metadata records, with the model's: what ``load_checkpoint`` would refuse on every
    rank, found from the files alone (before any rank starts).

    Raises:
        CheckpointError: keys missing or not in the model, or of another shape (named).
    """
    own = model.state_dict(keep_vars=True)
    canonical = canonical_names(own)
    saved = metadata.state_dict_metadata
    shapes = {k: tuple(m.size) for k, m in saved.items() if "/" not in k and isinstance(m, TensorStorageMetadata)}
    # autopipe.json lists each name of a tied parameter; DCP holds it under one of them
    aliases = {name: group for group in info.tied for name in group}
    given = {k: shapes.get(k) or next((shapes[a] for a in aliases.get(k, ()) if a in shapes), None)
             for k in info.state_keys}
    given.update(shapes)
    listed: Mapping[str, tuple[int, ...]] = {k: v for k, v in given.items() if v is not None}
    match_state({k: own[k] for k, c in canonical.items() if k == c}, listed, tied=tied_groups(canonical),
                known=set(own), strict=True,
                what=f"checkpoint {path}", source="checkpoint")


def check_save(directory: str | Path, *, resuming: bool = True, from_step: int | None = None) -> None:
    """Raise unless checkpoints can be saved into ``directory`` (checked before training).

    Args:
        directory: where the run saves.
        resuming: whether the run resumes a checkpoint; a run that starts from step 0 may
            not save among another run's checkpoints.
        from_step: the step of the checkpoint it resumes, where known: it may not save
            among checkpoints of later steps ([Note: a stale latest]: resuming the
            directory takes the highest step, which would be theirs, not this run's).

    Raises:
        CheckpointError: it is a file, a parent of it is a file, or the nearest existing
            folder cannot be written to; or it holds complete checkpoints and the run does
            not resume, or ones of later steps than the one it resumes.
    """
    root = Path(directory)
    found = _checkpoints(root) if root.is_dir() and not resuming else []
    if found:  # its saves would take `latest`, and keeping two newest removed the other run's
        raise CheckpointError(f"cannot save checkpoints in {root}: it holds another run's, up to {found[-1].name}, "
                              "and this run starts from step 0",
                              hint=f"pass --resume {root} to continue that run, or save into another directory "
                                   "(or remove that one) to start over")
    later = [p for p in _checkpoints(root) if (_step_of(p) or 0) > from_step] \
        if root.is_dir() and from_step is not None else []
    if later:  # `--resume DIR` would take the later one, of the run this one replaces
        raise CheckpointError(f"cannot save checkpoints in {root}: it holds {', '.join(p.name for p in later)}, "
                              f"beyond step {from_step} that this run resumes from, and resuming {root} takes "
                              "the highest step",
                              hint=f"save into another directory, or remove {later[0].name}"
                                   f"{' and later' if len(later) > 1 else ''} from {root} first")
    hint = "name a directory for the checkpoints (created if missing) where you can write"
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"cannot save checkpoints in {root}: it is a file, not a directory", hint=hint)
    here = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    if not here.is_dir():
        raise CheckpointError(f"cannot save checkpoints in {root}: {here} is a file", hint=hint)
    if not os.access(here, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot save checkpoints in {root}: {here} is not writable", hint=hint)


def _first_failure(e: CheckpointException) -> str:
    """The first rank's error in DCP's exception (every rank gets every rank's), as one line."""
    for rank, wrapped in sorted((getattr(e, "failures", None) or {}).items()):
        cause = wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped
        if isinstance(cause, BaseException):
            text = short_error(cause)
            # torch's own advice can run on for lines (weights_only=False: not for a damaged file)
            text = text[:text.index(". ") + 1] if ". " in text else text
            return f"on rank {rank}, {text}" if dist.is_initialized() else text
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def unreadable(path: Path, e: CheckpointException) -> CheckpointError:
    """A load that DCP failed, as a one-line error naming the checkpoint."""
    return CheckpointError(f"checkpoint {path} is damaged: DCP cannot read it ({_first_failure(e)})",
                           hint=earlier_hint(path))


def save_checkpoint(directory: str | Path, pipe: Pipe, optimizer: Any = None, *, step: int,
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Save the pipe's model and the optimizer's state as ``directory/step-NNNNNN`` (collective).

    Atomic (see [Note: atomic checkpoints]); every rank must call it with the same
    arguments. The ``keep`` newest complete checkpoints stay, older ones are removed
    once the new one is complete.

    Args:
        directory: the checkpoint directory (created if missing).
        pipe: the pipeline.
        optimizer: a torch optimizer over ``pipe.parameters()`` (or autopipe's), or None.
        step: optimizer steps done (names the folder; ``load_checkpoint`` returns it).
        extra: JSON-serialisable facts to keep with it (a scheduler's state, a data position).
        keep: how many complete checkpoints to keep (at least 1).

    Returns:
        The new checkpoint's folder.

    Raises:
        CheckpointError: ``step`` is not an int of 0 or more.
        RuntimeStageError: a rank failed during the save (the previous checkpoint stays).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:  # step--00001 was saved, and loaded
        raise CheckpointError(f"save_checkpoint(step={step!r})", hint="pass the optimizer steps done: an int, 0 or more")
    root = Path(directory)
    final = root / _step_name(step)
    partial = root / f".{final.name}.partial"
    state = pipe.state_dict()
    if optimizer is not None:
        state.update(optimizer_state(optimizer, dict(pipe.named_parameters())))
    state[f"{_RNG}cpu/{pipe.rank}"] = torch.get_rng_state()
    if pipe.device.type == "cuda":
        state[f"{_RNG}cuda/{pipe.rank}"] = torch.cuda.get_rng_state(pipe.device)
    with failures(pipe.where, f"while saving {final}", pipe.timeout_s):
        if pipe.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
        dist.barrier()
        try:
            dcp_save(state, storage_writer=FileSystemWriter(partial))
        except CheckpointException as e:  # a BaseException: failures() does not see it
            raise RuntimeStageError(f"{pipe.where} failed while saving {final}: {_first_failure(e)}",
                                    hint=f"the previous checkpoint in {root} stays; free space or "
                                         "permissions there, or save elsewhere") from None
        if pipe.rank == 0:
            write_json_atomic(partial / META, {
                "schema": SCHEMA, "step": step, "world_size": pipe.world_size,
                "graph_fingerprint": pipe.plan.graph_fingerprint, "num_stages": pipe.plan.num_stages,
                "schedule": pipe.plan.schedule, "microbatches": pipe.plan.microbatches,
                "state_keys": list(pipe.state_keys), "tied": [list(g) for g in pipe.tied],
                "extra": extra or {}})
            _commit(root, partial, final, max(1, keep))
        dist.barrier()  # nobody reads or saves again before the checkpoint is in place
    return final


def _commit(root: Path, partial: Path, final: Path, keep: int) -> None:
    """Rank 0: make ``partial`` the checkpoint ``final``, point ``latest`` at it, drop old ones."""
    old = root / f".{final.name}.old"
    if final.exists():  # the same step saved again: the new one replaces it
        final.rename(old)
    partial.rename(final)
    with atomic_output(root / LATEST) as tmp:
        Path(tmp).write_text(final.name + "\n", encoding="utf-8")
    if old.exists():
        shutil.rmtree(old)
    done = _checkpoints(root)
    for stale in [p for p in done if p != final][:max(0, len(done) - keep)]:
        shutil.rmtree(stale)
    for stale in root.glob(f".{_PREFIX}*.partial"):  # of saves that died; none is running now
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(directory: str | Path, pipe: Pipe, optimizer: Any = None) -> CheckpointInfo:
    """Load the newest whole checkpoint in ``directory`` into the pipe and optimizer (collective).

    Where the newest is damaged, the newest earlier one whose files are whole, and rank 0
    warns which it passed over ([Note: resuming past a damaged checkpoint]).

    The checkpoint may come from another plan of the same model (entries are named).
    Sets ``pipe.steps`` to the checkpoint's step. The random state of each rank is
    restored when the world size is the one that saved it.

    Returns:
        What the checkpoint says (its step, and the ``extra`` given to ``save_checkpoint``).

    Raises:
        CheckpointError: no complete checkpoint, or one of another model (the keys or
            shapes that differ are named).
        RuntimeStageError: a rank failed while loading.
    """
    path = find_resumable(directory, (lambda line: warnings.warn(line, stacklevel=3)) if pipe.rank == 0 else None)
    info = read_info(path)
    saved = read_metadata(path).state_dict_metadata  # a missing file stops every rank here, not in DCP
    reader = FileSystemReader(path)
    model = pipe.state_dict()
    shapes = {k: tuple(m.size) for k, m in saved.items() if "/" not in k and isinstance(m, TensorStorageMetadata)}
    match_state(model, shapes, tied=(), known=pipe.model_keys(), strict=True, what=f"checkpoint {path}",
                source="checkpoint")
    state: dict[str, Any] = dict(model)
    mine = {name for name, _ in pipe.named_parameters()}
    wanted = [f"{_RNG}cpu/{pipe.rank}", f"{_RNG}cuda/{pipe.rank}"] if info.world_size == pipe.world_size else []
    for key, meta in saved.items():
        name = param_of(key.split("/")[1]) if key.startswith((STATE, GROUP, MASTER)) else None
        if (name in mine and optimizer is not None) or key in wanted:
            state[key] = _empty(meta)
    with failures(pipe.where, f"while loading {path}", pipe.timeout_s):
        try:
            dcp_load(state, storage_reader=reader)
        except CheckpointException as e:  # a BaseException: failures() does not see it
            raise unreadable(path, e) from None
    if optimizer is not None:
        load_optimizer_state(optimizer, dict(pipe.named_parameters()), state)
    rng = state.get(f"{_RNG}cpu/{pipe.rank}")
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng)
    cuda_rng = state.get(f"{_RNG}cuda/{pipe.rank}")
    if isinstance(cuda_rng, torch.Tensor) and pipe.device.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng, pipe.device)
    pipe.steps = info.step
    return info


def _empty(meta: Any) -> Any:
    """A tensor to load a saved entry into (None for a pickled object: DCP puts it in place)."""
    if isinstance(meta, BytesStorageMetadata):
        return None
    return torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
