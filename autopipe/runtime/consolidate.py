"""One process reads a pipeline checkpoint back into the unsplit model's state dict, and writes it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from autopipe._jsonio import atomic_output
from autopipe.errors import AutopipeError, CheckpointError
from autopipe.runtime.checkpoint import (
    CheckpointInfo,
    earlier_hint,
    find_checkpoint,
    read_info,
    read_metadata,
    unreadable,
)

FORMATS = (".safetensors", ".pt", ".pth", ".bin")


def consolidate(directory: str | Path,
                note: Callable[[str], None] | None = None) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The unsplit model's state dict from the newest complete checkpoint in ``directory``.

    Keys and their order are those of the original model's ``state_dict()``: a tied
    parameter, saved once, appears under each of its names (as separate tensors of equal
    value), so ``model.load_state_dict(state, strict=True)`` takes it. Runs in one
    process, without a process group.

    Args:
        directory: a checkpoint directory, or one checkpoint's step folder.
        note: told, in one line, where ``latest`` names an older checkpoint than the one read.

    Raises:
        CheckpointError: no complete checkpoint, or a damaged one (a data file missing or
            short, tensors missing or unreadable); the hint names an earlier checkpoint.
    """
    path = find_checkpoint(directory, note)
    info = read_info(path)
    saved = read_metadata(path).state_dict_metadata  # and every file it names is there
    canonical = {name: group[0] for group in info.tied for name in group}
    wanted = {canonical.get(k, k) for k in info.state_keys}
    missing = sorted(k for k in wanted if not isinstance(saved.get(k), TensorStorageMetadata))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} of the model's tensors "
                              f"(e.g. {', '.join(missing[:3])})",
                              hint=f"the checkpoint is damaged; {earlier_hint(path)}")
    state: dict[str, torch.Tensor] = {}
    for k in sorted(wanted):
        meta = saved[k]
        assert isinstance(meta, TensorStorageMetadata)
        state[k] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp_load(state, storage_reader=FileSystemReader(path), no_dist=True)
        except CheckpointException as e:  # a BaseException, and a traceback of many lines
            raise unreadable(path, e) from None
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in info.state_keys:
        source = canonical.get(key, key)
        # every name its own tensor: safetensors refuses tensors that share memory
        out[key] = state[source].clone() if source in used else state[source]
        used.add(source)
    return out, info


def check_format(path: str | Path) -> None:
    """Raise unless ``write_state_dict`` can write ``path`` (checked before minutes of work).

    Raises:
        AutopipeError: another file ending.
    """
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise AutopipeError(f"{path}: unknown format {suffix or '(no ending)'}",
                            hint=f"name the output {' or '.join('*' + f for f in FORMATS)}")


def write_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``state`` atomically: safetensors for ``.safetensors``, ``torch.save`` for ``.pt``/``.pth``/``.bin``.

    Raises:
        AutopipeError: another file ending, or safetensors is not installed.
    """
    path = Path(path)
    check_format(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise AutopipeError("writing .safetensors needs the safetensors package",
                                hint="pip install safetensors, or write -o model.pt") from None
        with atomic_output(path) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    else:
        with atomic_output(path) as tmp:
            torch.save(state, tmp)
