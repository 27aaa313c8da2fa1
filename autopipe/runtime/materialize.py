"""Give a rank's stage modules real tensors: only theirs, on the rank's device, from a file or an initialiser.

A spec may build its model on the meta device: tracing, planning and splitting then
cost no memory, and every stage module holds meta tensors under the original module
paths (torch.export's ``get_attr`` targets and fx's ``call_module`` submodules keep
the model's FQNs). ``materialize_stages`` replaces the meta tensors of the stages one
rank runs, so that a rank's host memory is about its stages' size, not the model's.

[Note: initialising a meta-built model]

Without a weights file, every module that holds a tensor a rank needs is initialised
by ``spec.init_weights(module)`` (default: ``module.reset_parameters()``), after its
own tensors have been swapped for real ones on the device, under a random seed of its
own: ``seed`` mixed with the module's path. A module's values therefore depend only on
its path, shapes and the device type, never on which stages or ranks exist: a plan
with 2 stages, one with 4, and one process materialising the whole model (``modules=
[graph.gm]``) all start from the same weights, which makes pipeline training
comparable with one process. They are not the values of the same model built on the
CPU after ``torch.manual_seed``, which draws every module from one stream in
construction order. A tensor tied to another (GPT-2's head and embedding) takes the
value its first name's module gives it; the other module initialises only its own.
Whatever the initialiser leaves untouched is an error, not garbage: float tensors
start as NaN and integer ones as their dtype's least value, and are checked afterwards
(an integer tensor still wholly that value is unset; until 2026-12-07 integer tensors were
not checked, and LLaVA's vision tower built on meta read its patches' positions from
uninitialised memory: "index out of range in self").
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from autopipe.errors import SpecError, WeightsError
from autopipe.runtime.hf_checkpoint import fit
from autopipe.runtime.state_keys import canonical_names, tied_groups
from autopipe.runtime.weights import TensorInfo, WeightsSource, open_weights, remarks
from autopipe.spec import ModelSpec
from autopipe.trace._constants import constant_value


@dataclass(frozen=True, slots=True)
class Materialized:
    """What ``materialize_stages`` did on one rank."""

    loaded: tuple[str, ...]
    """Tensors read from the weights file (canonical names)."""
    initialised: tuple[str, ...]
    """Tensors filled by the spec's initialiser or ``reset_parameters`` (canonical names)."""
    bytes: int
    """Bytes of the tensors created (each tied tensor once)."""
    constants: tuple[str, ...] = ()
    """Constants made while tracing on meta, given their values ([Note: constants made while
    tracing on meta] in ``autopipe.trace._constants``), by their names in the modules."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """One place a stage module holds a tensor: ``owner._parameters[field]`` or ``_buffers``."""

    owner: nn.Module
    field: str
    is_param: bool


def materialize_stages(
    modules: Sequence[nn.Module],
    spec: ModelSpec,
    device: torch.device | str,
    *,
    init: WeightsSource | None = None,
    seed: int = 0,
) -> Materialized:
    """Put real tensors on ``device`` into ``modules`` (one rank's stage modules), in place.

    With ``init``, every parameter and persistent buffer the modules hold is read from
    that file (``autopipe.runtime.weights``; only these tensors are read), after the
    file's names, shapes and dtypes are checked against the whole model. Tensors still
    on the meta device that the file cannot hold (non-persistent buffers, such as rotary
    frequencies) and, without ``init``, all of them, are initialised by ``spec.init_weights``
    or ``reset_parameters`` (see [Note: initialising a meta-built model]). Real tensors
    are left as they are unless ``init`` overwrites them. A tensor that several of the
    modules hold (tied) becomes one tensor, held by all.

    Args:
        modules: stage modules whose parameter and buffer names are paths of
            ``spec.model`` (``Split.stages[i].module``; or ``graph.gm``: the whole model).
        spec: the spec whose model the modules were split from.
        device: where the tensors go.
        init: a weights file or Hugging Face folder of the unsplit model, its state dict
            in memory, or None.
        seed: mixed into each module's initialisation seed.

    Returns:
        What was read, what was initialised and the bytes created.

    Raises:
        WeightsError: the file is unreadable or does not fit the model (names, shapes, dtypes).
        SpecError: a meta tensor has no initialiser, the initialiser left one unset, or a
            stage holds a meta tensor that is not the model's and has no value (a constant of
            the graph: a module's plain tensor attribute). Constants that ``forward`` made
            from Python values while tracing get the values recorded then.
    """
    device = torch.device(device)
    names = _model_tensors(spec.model)
    canonical = canonical_names(names)
    groups = tied_groups(canonical)
    constants, constant_bytes = _fill_constants(modules, names, device)
    slots = _slots(modules, names, canonical, load=init is not None)
    if init is None and not slots:
        return Materialized(loaded=(), initialised=(), bytes=constant_bytes, constants=constants)
    reads: dict[str, str] = {}
    values: dict[str, torch.Tensor] = {}
    if init is not None:
        with open_weights(init) as opened:
            weights, reads = fit(opened, spec.model, _expected(spec.model), groups)
            values = {c: _as_own(weights.read(reads[c]), names[c], device, copy=not weights.owns(reads[c]))
                      for c in slots if c in reads}
            _check_tied_alike(weights, values, reads, groups)
    todo = [c for c in slots if c not in values and names[c].is_meta]
    _initialise(spec, names, canonical, todo, values, device, seed)
    for c, places in slots.items():
        value = values.get(c)
        if value is None:
            continue
        for slot in places:
            table: dict[str, Any] = slot.owner._parameters if slot.is_param else slot.owner._buffers
            table[slot.field] = value
    loaded = tuple(c for c in values if c in reads)
    return Materialized(loaded=loaded, initialised=tuple(todo), constants=constants,
                        bytes=constant_bytes + sum(v.numel() * v.element_size() for v in values.values()))


def check_init(spec: ModelSpec, init: WeightsSource) -> str | None:
    """Check that ``init`` holds exactly ``spec.model``'s state dict (names, shapes, dtypes).

    Reads only the file's headers (or a torch file's mapping), no tensor data: ``autopipe
    train --launch`` runs it before starting any rank.

    Returns:
        What reading the file does beyond copying, in words (``weights.remarks``: floating-point
        tensors saved in another floating-point dtype, cast; tensors transformers leaves
        unread, left), or None.

    Raises:
        WeightsError: as ``materialize_stages`` would.
    """
    groups = tied_groups(canonical_names(_model_tensors(spec.model)))
    expected = _expected(spec.model)
    with open_weights(init) as opened:
        weights, read = fit(opened, spec.model, expected, groups)
        return remarks(weights, expected, read)


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model under every name it has."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


def _check_tied_alike(weights: Any, values: Mapping[str, torch.Tensor], reads: Mapping[str, str],
                      groups: Sequence[tuple[str, ...]]) -> None:
    """Raise WeightsError where the file holds one of the model's tied parameters under
    several names with different values: the file's model did not tie them, and keeping
    any one of them would train another model than the file's, silently.

    Until 2026-12-07 the first name the file held was read; ``load_state_dict`` keeps the
    last (GPT-2 with ``transformer.wte.weight`` all zeros and ``lm_head.weight`` real
    started from the zeros: loss 6.931 against 6.938).
    """
    for group in groups:
        c = group[0]
        if c not in values or c not in reads:
            continue
        for other in group:
            if other == reads[c] or other not in weights.info:
                continue
            value = weights.read(other)
            if not torch.equal(value.to(device=values[c].device, dtype=values[c].dtype), values[c]):
                raise WeightsError(
                    f"weights {weights.path} hold {reads[c]} and {other} with different values, but "
                    f"the model ties them (one parameter under {len(group)} names): the file's model "
                    f"did not tie them",
                    hint="build the model untied, as the file's was (e.g. --spec-arg "
                         "tie_word_embeddings=False for a transformers model), or save one value "
                         "under both names")


def _expected(model: nn.Module) -> dict[str, TensorInfo]:
    """The state dict's names (parameters, persistent buffers) with shapes and dtypes."""
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in model.state_dict(keep_vars=True).items()}


def _fill_constants(modules: Sequence[nn.Module], names: Mapping[str, torch.Tensor],
                    device: torch.device) -> tuple[tuple[str, ...], int]:
    """Give the modules' meta constants made while tracing their values on ``device`` ([Note:
    constants made while tracing on meta] in ``autopipe.trace._constants``): a stage module
    holds them as buffers, the whole traced module as plain attributes. Returns their names
    and bytes."""
    filled: list[str] = []
    made: dict[int, torch.Tensor] = {}  # one value per constant, however many modules hold it
    for module in modules:
        for path, sub in module.named_modules(remove_duplicate=False):
            held = [*((f, t, True) for f, t in sub._buffers.items()),
                    *((f, t, False) for f, t in vars(sub).items() if isinstance(t, torch.Tensor))]
            for field, t, is_buffer in held:
                name = f"{path}.{field}" if path else field
                value = None if t is None or not t.is_meta or name in names else constant_value(t)
                if value is None:
                    continue
                if id(t) not in made:
                    made[id(t)] = value.to(device, copy=True)
                if is_buffer:
                    sub._buffers[field] = made[id(t)]
                else:
                    setattr(sub, field, made[id(t)])
                filled.append(name)
    return tuple(filled), sum(v.numel() * v.element_size() for v in made.values())


def _slots(modules: Sequence[nn.Module], names: Mapping[str, torch.Tensor],
           canonical: Mapping[str, str], *, load: bool) -> dict[str, list[_Slot]]:
    """Canonical name → where the modules hold it, for the tensors to make: those on the
    meta device, and with ``load`` every tensor of the model."""
    out: dict[str, list[_Slot]] = defaultdict(list)
    for module in modules:
        for kind in ("_parameters", "_buffers"):
            for path, sub in module.named_modules(remove_duplicate=False):
                for field, t in getattr(sub, kind).items():
                    if t is None:
                        continue
                    name = f"{path}.{field}" if path else field
                    if name not in names:
                        if t.is_meta:
                            raise SpecError(
                                f"stage tensor {name!r} is on the meta device but is not a parameter "
                                f"or buffer of the model: a constant of the traced graph whose values a "
                                f"meta build does not have (a plain tensor attribute its module made "
                                f"on meta, which the trace holds as a constant; [Note: constants made "
                                f"while tracing on meta])",
                                hint="register it as a buffer of its module (register_buffer(..., "
                                     "persistent=False)) so that init_weights can set it, or build "
                                     "this model on a real device (not meta)")
                        continue
                    if t.is_meta or load:
                        out[canonical[name]].append(_Slot(sub, field, kind == "_parameters"))
    return dict(out)


def _as_own(t: torch.Tensor, like: torch.Tensor, device: torch.device, *, copy: bool) -> torch.Tensor:
    """``t`` on ``device`` in ``like``'s dtype (a float saved in another float dtype is cast),
    copied if ``copy`` (a view of a file or the caller's tensor), a Parameter where ``like`` is one."""
    value = t.to(device, dtype=like.dtype, copy=copy)
    if isinstance(like, nn.Parameter):
        return nn.Parameter(value, requires_grad=like.requires_grad)
    return value


def _empty(like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor shaped as ``like`` on ``device``: NaN if float, the dtype's least value if an
    integer (so that what no one sets shows: ``_unset``)."""
    value = torch.empty_like(like, device=device)
    if value.is_floating_point() or value.is_complex():
        value.fill_(float("nan"))
    elif value.dtype != torch.bool:
        value.fill_(torch.iinfo(value.dtype).min)
    if isinstance(like, nn.Parameter):
        return nn.Parameter(value, requires_grad=like.requires_grad)
    return value


def _initialise(spec: ModelSpec, names: Mapping[str, torch.Tensor], canonical: Mapping[str, str],
                todo: Sequence[str], values: dict[str, torch.Tensor], device: torch.device,
                seed: int) -> None:
    """Fill ``values`` for the canonical names ``todo`` by initialising their modules
    (see [Note: initialising a meta-built model])."""
    made = {c: _empty(names[c], device) for c in todo}
    values.update(made)
    by_module: dict[str, list[str]] = defaultdict(list)
    for c in todo:
        by_module[c.rpartition(".")[0]].append(c)
    for path in sorted(by_module):
        module = spec.model.get_submodule(path)
        fn = _initialiser(spec, module, path, by_module[path], device)
        with _real_tensors(module, path, canonical, made, device), torch.no_grad():
            with _seeded(seed, path, device):
                fn(module)
            for above, init in _hf_ancestors(spec, path):
                with _seeded(seed, f"{above}|{path}", device):
                    init(spec.model.get_submodule(above))
            _left_to_the_constructor(spec, module, path, {c: made[c] for c in by_module[path]}, seed, device)
        unset = sorted(c.rpartition(".")[2] for c in by_module[path] if _unset(made[c]))
        if unset:
            raise SpecError(f"initialising {path or 'the model'} ({type(module).__name__}) left "
                            f"{', '.join(unset)} unset",
                            hint="make ModelSpec.init_weights(module) fill every tensor the module "
                                 "holds itself, or pass --init weights.safetensors")


def _unset(t: torch.Tensor) -> bool:
    """Whether an initialiser left ``t`` as ``_empty`` made it: any NaN in a float tensor;
    every element the least value in an integer one (a boolean tensor cannot tell)."""
    if t.is_floating_point() or t.is_complex():
        return bool(t.isnan().any())
    if t.dtype == torch.bool or t.numel() == 0:
        return False
    return bool((t == torch.iinfo(t.dtype).min).all())


def _left_to_the_constructor(spec: ModelSpec, module: nn.Module, path: str, made: Mapping[str, torch.Tensor],
                             seed: int, device: torch.device) -> None:
    """Fill the tensors of ``made`` that transformers' ``_init_weights`` left unset from the
    module's own ``reset_parameters``, as its constructor gives them on a real device.

    [Note: what transformers leaves to the constructor] Built on a real device, a module's
    constructor initialises it (``reset_parameters``) and transformers' ``_init_weights``
    then overwrites what it knows; built on meta the constructor drew nothing, so what
    ``_init_weights`` skips stayed unset: RegNet's squeeze-and-excitation convolutions'
    biases (``_init_weights`` draws a convolution's weight alone) were refused until
    2026-12-07. Now such a module's ``reset_parameters`` runs on a copy under a seed of its
    own and only the tensors left unset are taken from it, so every other value is what it
    was. Only where the spec asks for transformers' initialisation: an initialiser of your
    own is all there is.
    """
    left = {c: t for c, t in made.items() if _unset(t)}
    if not left or not callable(getattr(module, "reset_parameters", None)) or not _transformers_asked(spec):
        return
    scratch = copy.deepcopy(module)  # its own tensors real, those below it on meta
    reset: Callable[[], None] = scratch.reset_parameters  # type: ignore[assignment]
    with _seeded(seed, f"{path}|reset_parameters", device):
        reset()
    for c, t in left.items():
        t.copy_(getattr(scratch, c.rpartition(".")[2]))


def _transformers_asked(spec: ModelSpec) -> bool:
    """Whether the spec's ``init_weights`` is a transformers model's own ``_init_weights``."""
    asked = spec.init_weights
    return getattr(asked, "__name__", None) == "_init_weights" and _is_pretrained(getattr(asked, "__self__", None))


def _hf_owner(spec: ModelSpec, path: str) -> Callable[[nn.Module], None] | None:
    """The ``_init_weights`` transformers initialises the module at ``path`` with: that of
    the nearest ``PreTrainedModel`` at or above it (``smart_apply``: a CLIP vision tower's
    embeddings inside a LLaVA get CLIP's, which sets their ``position_ids``, not LLaVA's);
    None where the spec does not ask for transformers' initialisation, or no such model
    is above it."""
    if not _transformers_asked(spec):
        return None
    parts = path.split(".") if path else []
    for i in range(len(parts), -1, -1):
        module = spec.model.get_submodule(".".join(parts[:i]))
        init = getattr(module, "_init_weights", None)
        if _is_pretrained(module) and callable(init):
            return init  # type: ignore[no-any-return]
    return None


def _hf_ancestors(spec: ModelSpec, path: str) -> list[tuple[str, Callable[[nn.Module], None]]]:
    """The modules above ``path`` that a transformers model initialises after it, nearest
    first, each with the ``_init_weights`` that transformers gives it; none unless the spec's
    ``init_weights`` is a transformers model's own ``_init_weights``.

    [Note: a parent's initialisation of its children] transformers initialises a model by
    ``_init_weights`` on every module, children before their parent (``smart_apply``, each
    module by the nearest ``PreTrainedModel`` above it), and a parent may set its children's
    tensors: Whisper's encoder copies sinusoids into its (frozen) ``embed_positions.weight``,
    GPT-2's attention and MLP scale their ``c_proj.weight``. A module initialised alone
    misses that (until 2026-12-07 a Whisper built on meta trained with random, frozen
    positions), so after a module's own initialiser, each such ancestor's is run too, with
    only the module's own tensors real (the rest of the ancestor stays on meta, where ops
    write nothing and draw nothing) under a seed of the ancestor's path and the module's:
    the values still depend on the module's path alone, never on what a rank holds.
    Only where the spec asks for transformers' initialisation (``init_weights=
    model._init_weights``): an initialiser of your own (GPT-2's example, which scales
    ``c_proj`` itself) is all there is. Ancestors outside a transformers model (a wrapper of
    yours) are left alone, and so is a parametrization's list (made by [Note: a
    parametrized tensor on the meta device]).
    """
    if not path or ".parametrizations." in f".{path}." or not _transformers_asked(spec):
        return []
    model = spec.model
    parts = path.split(".")
    chain = [".".join(parts[:i]) for i in range(len(parts))]  # the model, ..., the parent
    found: list[tuple[str, Callable[[nn.Module], None]]] = []
    owner: Callable[[nn.Module], None] | None = None
    for above in chain:  # from the top, so each knows the nearest transformers model over it
        module = model.get_submodule(above)
        init = getattr(module, "_init_weights", None)
        if _is_pretrained(module) and callable(init):
            owner = init
        if owner is not None:
            found.append((above, owner))
    return found[::-1]


def _is_pretrained(module: object) -> bool:
    """Whether ``module`` is a transformers ``PreTrainedModel`` (without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(module).__mro__)


def _initialiser(spec: ModelSpec, module: nn.Module, path: str, needed: Sequence[str],
                 device: torch.device) -> Callable[[nn.Module], None]:
    if isinstance(module, parametrize.ParametrizationList):
        return _parametrized_initialiser(spec, path, device)
    if spec.init_weights is not None:
        return _hf_owner(spec, path) or spec.init_weights
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        return lambda m: reset()
    fields = ", ".join(sorted(c.rpartition(".")[2] for c in needed))
    raise SpecError(f"{path or 'the model'} ({type(module).__name__}) holds {fields} on "
                    f"the meta device and has no reset_parameters()",
                    hint="give the ModelSpec an init_weights(module) function (a Hugging Face "
                         "model's _init_weights), or pass --init with the weights")


def _parametrized_initialiser(spec: ModelSpec, path: str,
                              device: torch.device) -> Callable[[nn.Module], None]:
    """How to fill the originals of a parametrized tensor (``conv.parametrizations.weight``).

    [Note: a parametrized tensor on the meta device]
    ``weight_norm`` and its kind keep a module's tensor as originals (``original0``, the
    norms, and ``original1``, the directions) in a ``ParametrizationList`` that no
    initialiser knows: a model built on the CPU gets them from the module's own
    initialisation, made before the parametrization was registered (HuBERT's and WavLM's
    positional convolutions). So the module that holds the tensor is copied (on the meta
    device, free) without its parametrization, its copy given real tensors and
    initialised as any module is (``spec.init_weights``, else ``reset_parameters``), and
    the tensor it made is turned into the originals by the parametrization's own
    ``right_inverse``, as assigning it to the parametrized module would do.
    """
    parts = path.split(".")  # OWNER.parametrizations.FIELD, OWNER empty for the model itself
    owner_path, field = ".".join(parts[:-2]), parts[-1]
    owner = spec.model.get_submodule(owner_path)

    def init(plist: nn.Module) -> None:
        assert isinstance(plist, parametrize.ParametrizationList)
        plain = copy.deepcopy(owner)
        parametrize.remove_parametrizations(plain, field, leave_parametrized=True)
        plain.to_empty(device=device)
        made = getattr(plain, field)
        if made.is_floating_point():
            made.detach().fill_(float("nan"))  # what the initialiser leaves shows, as in _empty
        _initialiser(spec, plain, owner_path, [field], device)(plain)
        plist.right_inverse(getattr(plain, field).detach())

    return init


@contextlib.contextmanager
def _real_tensors(module: nn.Module, path: str, canonical: Mapping[str, str],
                  todo: Mapping[str, torch.Tensor], device: torch.device) -> Iterator[None]:
    """Swap the module's own tensors for real ones while it is initialised; restore them after.

    Every tensor whose first name is here gets a real tensor, ``todo``'s or a scratch one
    (a tensor read from the file, or one this rank does not keep), so that the random
    draws never depend on what a rank keeps; tensors first named elsewhere (tied) keep
    their meta stand-ins and are set by their own module.
    """
    saved: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    tables: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
    for table in tables:
        for field, t in list(table.items()):
            name = f"{path}.{field}" if path else field
            if t is None or canonical.get(name) != name:
                continue
            saved.append((table, field, t))
            table[field] = todo[name] if name in todo else _empty(t, device)
    try:
        yield
    finally:
        for table, field, t in saved:
            table[field] = t


@contextlib.contextmanager
def _seeded(seed: int, path: str, device: torch.device) -> Iterator[None]:
    """The module's own random stream: ``seed`` mixed with its path; the caller's restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 1_000_003 + zlib.crc32(path.encode())) % (1 << 63))
        yield
