"""Weights in: a state dict of the unsplit model, read tensor by tensor from the formats people save.

``open_weights(path)`` opens, without reading any tensor data:

- a ``.safetensors`` file (``safetensors.safe_open``: the header now; each tensor when asked,
  read with plain file reads into a tensor of its own, so that no page of the file stays
  mapped into the process: [Note: weights read, not mapped]);
- a Hugging Face checkpoint folder: ``model.safetensors.index.json`` and the shards its
  ``weight_map`` names, or a single ``model.safetensors``; where it has no safetensors, an
  older folder's ``pytorch_model.bin.index.json`` and its torch shards, or one
  ``pytorch_model.bin`` (each read as a torch file, below);
- a torch ``.pt``/``.pth``/``.bin`` file of ``torch.save(model.state_dict())`` (or of a
  dict holding it under ``"state_dict"`` or ``"model"``), loaded with ``mmap=True`` and
  ``weights_only=True``, so that only the tensors read are paged in.

[Note: weights read, not mapped]
``safe_open(...).get_tensor`` returns a view of the file mapped into memory, and every page
that a copy out of it touches stays resident in the process until the file is closed: a
rank loading its 475 MiB stage from ``benchmarks/bench_init_memory.py``'s file peaked at
1,337 MiB while it did, 470 MiB over what it held afterwards. Reading each tensor's bytes
from the file straight into its own tensor (the offsets are in the file's header) needs
no mapping and no second copy: the same load peaked at what it kept. A torch ``.pt`` file
is still loaded with ``mmap=True`` (its tensors are views of the mapping until copied).

Names are the original model's state-dict keys (module FQNs). ``check_fit`` compares a
file's names, shapes and dtypes with what a model expects, counting tied names as one. A
floating-point tensor may be saved in another floating-point dtype than the model's (most
checkpoints on the Hugging Face Hub are bfloat16 or float16): it is cast to the model's
dtype as it is read, as ``load_state_dict`` and ``from_pretrained`` do (``casts`` says which).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autopipe.errors import WeightsError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"
"""A checkpoint folder from before safetensors: torch shards and their index (read where no
safetensors are there)."""
TORCH_SUFFIXES = (".pt", ".pth", ".bin")

_GIVEN = Path("<the state dict given>")
"""What messages call a state dict passed in memory (``build(..., init=state_dict)``)."""

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


WeightsSource = str | os.PathLike[str] | Mapping[str, torch.Tensor]
"""Where a model's weights come from: a file or folder (see the module's docstring), or a
state dict in memory."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""A terminal escape (bold, reset) as torch writes into some of its messages."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Shape and dtype of one tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{list(self.shape)} {dtype_name(self.dtype)}"

    def fits(self, model: TensorInfo) -> bool:
        """True where a tensor saved as ``self`` can be read into ``model``'s: same shape, and
        the same dtype or both floating point (cast on reading)."""
        return self.shape == model.shape and (
            self.dtype == model.dtype or (self.dtype.is_floating_point and model.dtype.is_floating_point))


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


class Weights:
    """An opened weights file or folder: each tensor's shape and dtype, and the tensors on demand.

    Use as a context manager, or call ``close()``: open safetensors files and a torch
    file's mapping are released there.
    """

    def __init__(self, path: Path, info: dict[str, TensorInfo], readers: dict[str, Any],
                 where: dict[str, str]) -> None:
        self.path = path
        self.info = info
        """Tensor name → shape and dtype, for every tensor in the file(s)."""
        self._readers = readers  # file name → safe_open handle, or a torch state dict
        self._where = where  # tensor name → file name

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a CPU tensor: one of its own from a safetensors file ([Note:
        weights read, not mapped]); else a view of a torch file's mapping or the tensor of
        the state dict given (``owns`` says which: copy what you keep of a view).

        Raises:
            WeightsError: the file has no tensor ``name``, or it cannot be read.
        """
        if name not in self._where:
            raise WeightsError(f"{self.path} has no tensor {name!r}", hint="check the name")
        reader = self._readers[self._where[name]]
        if isinstance(reader, dict):
            return reader[name]  # type: ignore[no-any-return]
        try:
            return reader.read(name, self.info[name])  # type: ignore[no-any-return]
        except Exception as e:
            raise WeightsError(f"{self.path}: cannot read tensor {name!r}: {e}",
                               hint="the file is damaged or truncated; write it again") from None

    def owns(self, name: str) -> bool:
        """Whether ``read(name)`` gives a tensor of its own (not a view of a mapping or the caller's)."""
        return isinstance(self._readers.get(self._where.get(name, "")), _SafetensorsFile)

    def close(self) -> None:
        """Release the files (tensors already copied stay valid)."""
        self._readers.clear()

    def __enter__(self) -> Weights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SafetensorsFile:
    """One safetensors file's tensors, read by offset ([Note: weights read, not mapped])."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        start = 8 + size
        self.spans: dict[str, tuple[int, int]] = {
            k: (start + int(v["data_offsets"][0]), start + int(v["data_offsets"][1]))
            for k, v in header.items() if k != "__metadata__"}

    def read(self, name: str, info: TensorInfo) -> torch.Tensor:
        begin, end = self.spans[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        raw = out.reshape(-1).view(torch.uint8)
        if raw.numel() != end - begin:
            raise ValueError(f"{end - begin} bytes in the file for {info}")
        with self.path.open("rb", buffering=0) as f:
            f.seek(begin)
            array: Any = raw.numpy()  # a writable buffer over the tensor's bytes
            view = memoryview(array)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise ValueError(f"the file ends {len(view) - done} bytes early")
                done += n
        return out


def open_weights(path: WeightsSource) -> Weights:
    """Open a ``.safetensors`` file, a Hugging Face checkpoint folder or a torch ``.pt`` file;
    or take a state dict already in memory.

    Raises:
        WeightsError: nothing there, an unknown format, a damaged file or index, or a
            mapping that holds something else than tensors under string keys.
    """
    if isinstance(path, Mapping):
        return _of_mapping(path)
    p = Path(path)
    if p.is_dir():
        return _open_folder(p)
    if not p.is_file():
        raise WeightsError(f"weights {p}: no such file or folder", hint="check the --init path")
    if p.suffix == ".safetensors":
        info, readers, where = _open_safetensors([p], {})
        return Weights(p, info, readers, where)
    if p.suffix in TORCH_SUFFIXES:
        return _open_torch(p)
    raise WeightsError(f"weights {p}: unknown format {p.suffix or '(no suffix)'!r}",
                       hint="pass a .safetensors file, a Hugging Face checkpoint folder or a torch "
                            ".pt file")


def _open_folder(folder: Path) -> Weights:
    if (folder / INDEX).is_file():
        weight_map, shards = _index(folder, folder / INDEX)
        info, readers, where = _open_safetensors([folder / s for s in shards], weight_map)
        return Weights(folder, info, readers, where)
    if (folder / SINGLE).is_file():
        info, readers, where = _open_safetensors([folder / SINGLE], {})
        return Weights(folder, info, readers, where)
    if (folder / TORCH_INDEX).is_file():
        weight_map, shards = _index(folder, folder / TORCH_INDEX)
        return _open_torch_shards(folder, shards, weight_map)
    if (folder / TORCH_SINGLE).is_file():
        return _open_torch(folder / TORCH_SINGLE)
    if _is_checkpoint_dir(folder):  # `--init ckpt`, where ckpt is what --save wrote
        raise WeightsError(f"{folder} is a checkpoint directory of `autopipe train --save`, not a "
                           f"model's weights (it holds none of {INDEX}, {SINGLE}, {TORCH_INDEX} or "
                           f"{TORCH_SINGLE})",
                           hint=f"continue that run with --resume {folder}, or start a new one from its "
                                f"weights: `autopipe consolidate {folder} -o model.safetensors`, then "
                                f"--init model.safetensors")
    raise WeightsError(f"{folder} holds none of {INDEX}, {SINGLE}, {TORCH_INDEX} or {TORCH_SINGLE}",
                       hint="save the model with save_pretrained(folder) (safetensors), or pass "
                            "a .safetensors or .pt file")


def _is_checkpoint_dir(folder: Path) -> bool:
    """Whether ``folder`` is what ``autopipe train --save`` writes: the directory (``latest``,
    ``step-NNNNNN/``) or one checkpoint's step folder (``autopipe.json``, ``.metadata``)."""
    def one(step: Path) -> bool:
        return (step / "autopipe.json").is_file() or (step / ".metadata").is_file()

    return (one(folder) or (folder / "latest").is_file()
            or any(one(p) for p in folder.glob("step-*")) or any(folder.glob(".step-*.partial")))


def is_weights_path(path: Path) -> bool:
    """Whether ``path`` looks like a model's weights (what ``--init`` reads): a .safetensors or
    torch file, or a folder of ``save_pretrained``'s."""
    if path.is_file():
        return path.suffix in (".safetensors", *TORCH_SUFFIXES)
    return any((path / name).is_file() for name in (INDEX, SINGLE, TORCH_INDEX, TORCH_SINGLE))


def _index(folder: Path, index: Path) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint index's ``weight_map`` and the shard files it names (all present)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{index}: not a checkpoint index ({type(e).__name__}: {e})",
                           hint="it must hold a \"weight_map\" of tensor name → shard file") from None
    shards = sorted(set(map(str, weight_map.values())))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise WeightsError(f"{index} names {len(missing)} shard(s) that are not in {folder}: "
                           f"{_some(missing)}", hint="copy the whole checkpoint folder")
    return weight_map, shards


def _open_torch_shards(folder: Path, shards: Sequence[str], weight_map: Mapping[str, Any]) -> Weights:
    """Torch shards of one checkpoint, each mapped as ``_open_torch`` maps one file."""
    info: dict[str, TensorInfo] = {}
    readers: dict[str, Any] = {}
    where: dict[str, str] = {}
    for shard in shards:
        one = _open_torch(folder / shard)
        info.update(one.info)
        readers.update(one._readers)
        where.update(one._where)
    _check_index(TORCH_INDEX, weight_map, where)
    return Weights(folder, info, readers, where)


def _open_safetensors(files: Sequence[Path], weight_map: Mapping[str, Any]
                      ) -> tuple[dict[str, TensorInfo], dict[str, Any], dict[str, str]]:
    """Open each file's header; with ``weight_map`` (an index), check it against the files."""
    from safetensors import safe_open

    info: dict[str, TensorInfo] = {}
    readers: dict[str, Any] = {}
    where: dict[str, str] = {}
    for f in files:
        try:
            handle: Any = safe_open(str(f), framework="pt", device="cpu")
            names = list(handle.keys())
            for name in names:
                piece = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise WeightsError(f"{f}: tensor {name!r} has dtype {piece.get_dtype()}, "
                                       f"which autopipe does not read", hint="convert the file")
                info[name] = TensorInfo(tuple(int(s) for s in piece.get_shape()), dtype)
                where[name] = f.name
            reader = _SafetensorsFile(f)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})",
                               hint="the file is damaged or truncated; write it again") from None
        del handle  # the header is read; tensors are read by offset, not through its mapping
        readers[f.name] = reader
    if weight_map:
        _check_index(INDEX, weight_map, where)
    return info, readers, where


def _check_index(index: str, weight_map: Mapping[str, Any], where: Mapping[str, str]) -> None:
    """Check that every tensor an index names is in the shard it says."""
    wrong = sorted(k for k, v in weight_map.items() if where.get(k) != Path(str(v)).name)
    if wrong:
        raise WeightsError(f"{index} puts {len(wrong)} tensor(s) in a shard that does not hold "
                           f"them: {_some(wrong)}", hint="the index and the shards are from "
                                                         "different saves; save the model again")


def _open_torch(p: Path) -> Weights:
    try:
        loaded = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is paragraphs with terminal escapes, about loading it unsafely
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise WeightsError(f"{p} holds a pickled object{what}, not a state dict of tensors "
                           f"(weights are read with torch.load(weights_only=True), which "
                           f"unpickles no classes)",
                           hint="save the weights, not the module: torch.save(model.state_dict(), "
                                "path) (torch.save(model) pickles the whole module)") from None
    except Exception as e:
        line = _ANSI.sub("", str(e)).strip().splitlines()
        first = line[0] if line else ""
        if isinstance(e, OSError) or "PytorchStreamReader" in first or p.stat().st_size == 0:
            # a file cut short: its zip directory, at the end, is missing (an OSError under mmap)
            raise WeightsError(f"{p} is not a whole torch.save file: it is damaged or truncated "
                               f"({p.stat().st_size:,} bytes; {type(e).__name__}: {first[:120]})",
                               hint="save it again: torch.save(model.state_dict(), path)") from None
        raise WeightsError(f"{p}: torch.load(weights_only=True) fails ({type(e).__name__}: {first})",
                           hint="save plain tensors: torch.save(model.state_dict(), path)") from None
    state = loaded
    if isinstance(loaded, dict) and not _all_tensors(loaded):
        state = next((loaded[k] for k in ("state_dict", "model") if isinstance(loaded.get(k), dict)),
                     loaded)
    if not isinstance(state, dict) or not _all_tensors(state):
        raise WeightsError(f"{p} is not a state dict of tensors ({type(state).__name__})",
                           hint="save it with torch.save(model.state_dict(), path)")
    info = {str(k): TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}
    return Weights(p, info, {p.name: state}, dict.fromkeys(info, p.name))


def _of_mapping(state: Mapping[Any, Any]) -> Weights:
    if not _all_tensors(state):
        bad = next(k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        raise WeightsError(f"the state dict given as init holds {type(state[bad]).__name__} under {bad!r}",
                           hint="pass tensors keyed by the model's names, as model.state_dict() gives")
    info = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}
    return Weights(_GIVEN, info, {_GIVEN.name: dict(state)}, dict.fromkeys(info, _GIVEN.name))


def _all_tensors(d: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def check_fit(weights: Weights, expected: Mapping[str, TensorInfo],
              groups: Iterable[Sequence[str]] = (), *,
              ignore: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Check that a file holds exactly the tensors a model expects; say where to read each.

    Names in one of ``groups`` (tied: several names of one tensor) count as one tensor:
    the file may hold any of them (Hugging Face saves one name of a tied pair), and the
    first it holds is read.

    Args:
        weights: the opened file.
        expected: the model's state-dict names with their shapes and dtypes.
        groups: names that refer to one tensor, first name canonical.
        ignore: names in the file that the model does not expect but may be left unread
            (``hf_checkpoint.ignored``); any other name it does not expect is an error.

    Returns:
        The first name of each group (or the lone name) → the name to read in the file.

    Raises:
        WeightsError: tensors are missing or unexpected, or differ in shape, or in dtype
            where the two are not both floating point (those are cast on reading); the
            message names them.
    """
    group_of = {name: tuple(g) for g in groups for name in g}
    read: dict[str, str] = {}
    missing: list[str] = []
    seen: set[str] = set()
    for name in expected:
        group = group_of.get(name, (name,))
        if group[0] in seen:
            continue
        seen.add(group[0])
        members = [n for n in group if n in expected]
        found = next((n for n in members if n in weights.info), None)
        if found is None:
            missing.append(members[0])
        else:
            read[group[0]] = found
    unexpected = sorted(n for n in set(weights.info) - set(expected) if ignore is None or not ignore(n))
    wrong = [f"{n} is {weights.info[n]} in the file but {expected[n]} in the model"
             for n in expected if n in weights.info and not weights.info[n].fits(expected[n])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} of another shape or dtype ({_some(wrong, 3)})")
    if problems:
        hint = ("save the state dict of the same model, built with the same --spec-arg knobs "
                "(names are the model's own module paths, e.g. from model.state_dict())")
        if wrong and not missing and not unexpected:
            hint = ("build the model with the file's shapes and kinds of dtype (--spec-arg ...), or "
                    "convert the file (floating-point tensors are cast; integer ones must match)")
        hint = _prefix_hint(missing, unexpected) or hint
        raise WeightsError(f"weights {weights.path} do not fit the model: {'; '.join(problems)}",
                           hint=hint)
    return read


def _prefix_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
    """Where the file's names are the model's with one prefix more or less (a state dict
    saved from a wrapper, ``{"model." + name: ...}``, or from the inner model of a wrapper),
    a hint saying which prefix to strip or add."""
    if not missing or not unexpected:
        return None
    first, names = missing[0], set(unexpected)
    for name in unexpected:
        if name.endswith("." + first):  # the file's names carry a prefix
            prefix = name[:-len(first)]
            if all(prefix + m in names for m in missing):
                return (f"the file's names are the model's with {prefix!r} in front: save "
                        f"{{name.removeprefix({prefix!r}): tensor}} for each of its tensors")
        if first.endswith("." + name):  # the model's names carry a prefix
            prefix = first[:-len(name)]
            if all(m.startswith(prefix) and m[len(prefix):] in names for m in missing):
                return (f"the model's names are the file's with {prefix!r} in front: save "
                        f"{{{prefix!r} + name: tensor}} for each of the file's tensors")
    return None


def remarks(weights: Weights, expected: Mapping[str, TensorInfo], read: Mapping[str, str]) -> str | None:
    """What reading a file that ``check_fit`` passed does beyond copying each tensor, in words:
    the tensors it casts (``"cast 12 tensors from bfloat16 to float32"``) and those it leaves
    unread (``check_fit``'s ``ignore``); None where neither."""
    cast = casts(weights, expected, read)
    said = [f"cast {cast}"] if cast else []
    left = sorted(set(weights.info) - set(expected))
    if left:
        said.append(f"{len(left)} tensor{'s' if len(left) > 1 else ''} left unread, as transformers "
                    f"leaves {'them' if len(left) > 1 else 'it'} ({_some(left, 2)})")
    return "; ".join(said) or None


def casts(weights: Weights, expected: Mapping[str, TensorInfo], read: Mapping[str, str]) -> str | None:
    """What ``check_fit``'s fit casts, in words (``"12 tensors from bfloat16 to float32"``);
    None where every tensor is read in its own dtype."""
    pairs: dict[tuple[str, str], int] = {}
    for name, source in read.items():
        saved, model = weights.info[source].dtype, expected[name].dtype
        if saved != model:
            key = (dtype_name(saved), dtype_name(model))
            pairs[key] = pairs.get(key, 0) + 1
    if not pairs:
        return None
    return ", ".join(f"{n} tensor{'s' if n > 1 else ''} from {a} to {b}" for (a, b), n in sorted(pairs.items()))


def _some(names: Sequence[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", … and {more} more" if more > 0 else "")
