"""Meta-built models whose forward makes tensors from Python values (LongT5's padding block id,
Gemma 3n's activation sparsity, the Decision Transformer's empty cache): their constants get the
values the CPU-built model has, and training them on 2 gloo ranks equals one process
([Note: constants made while tracing on meta] in autopipe/trace/_constants.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autopipe
from autopipe.errors import SpecError
from autopipe.runtime.launch import launch
from autopipe.runtime.materialize import materialize_stages
from autopipe.runtime.reference import reference_train
from autopipe.runtime.split import retarget_devices, split_graph

from .init_constants_worker import MICROBATCHES, STEPS, config, meta_spec
from .runtime_cases import pipeline_backward
from .runtime_plans import hand_plan
from .zoo import ZOO

NAMES = ["longt5", "gemma3n", "decision-transformer"]
ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TRANSFORMERS_VERBOSITY": "error",
       "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _constants(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors export lifted from forward (``lifted_tensor_N``), buffers or plain attributes."""
    out = {}
    for path, sub in module.named_modules():
        for field, t in [*sub._buffers.items(), *vars(sub).items()]:
            if field.startswith("lifted_tensor_") and isinstance(t, torch.Tensor):
                out[f"{path}.{field}" if path else field] = t
    return out


@pytest.mark.parametrize("name", NAMES)
def test_each_stage_gets_the_constants_of_the_cpu_build(name: str) -> None:
    """Each stage materialised alone (as its rank does) from the CPU-built model's weights holds
    the CPU build's constants, value for value, and the stages run one after another give its
    loss and every gradient. Until 2026-12-07 ``materialize_stages`` refused the meta constant."""
    cpu = ZOO[name]()
    want = _constants(autopipe.trace(cpu.model, cpu.example_inputs).gm)
    spec = meta_spec(name)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    assert want.keys() == _constants(graph.gm).keys() and any(t.is_meta for t in _constants(graph.gm).values())
    split = split_graph(graph, hand_plan(graph, 2))
    got: dict[str, torch.Tensor] = {}
    for st in split.stages:
        on_meta = {k for k, t in _constants(st.module).items() if t.is_meta}
        done = materialize_stages([st.module], spec, "cpu", init=cpu.model.state_dict())
        assert set(done.constants) == on_meta  # the rest (Gemma 3n's Normal(0, 1)) are real already
        got.update(_constants(st.module))
        retarget_devices(st.module, torch.device("cpu"))  # as a rank does: traced on meta
    assert got.keys() == want.keys()
    for k, t in want.items():
        assert got[k].device.type == "cpu" and got[k].dtype == t.dtype and torch.equal(got[k], t), k

    inputs, target = cpu.batch(1, 0)
    loss = pipeline_backward(split, graph.flat_inputs(inputs),
                             lambda outs: cpu.loss_fn(graph.unflatten_output(outs), target))
    expected = cpu.loss_fn(cpu.model(*inputs), target)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    names: dict[int, list[str]] = {}  # a tied parameter's names; each stage holding it has a copy
    for k, p in cpu.model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(k)
    for k, p in cpu.model.named_parameters():
        copies = {id(t): t for st in split.stages for n, t in st.module.named_parameters(remove_duplicate=False)
                  if n in names[id(p)]}
        got_grad = sum((t.grad for t in copies.values() if t.grad is not None), torch.zeros_like(p))
        torch.testing.assert_close(got_grad, p.grad if p.grad is not None else torch.zeros_like(p),
                                   msg=lambda m, k=k: f"{name}: {k}: {m}")


def test_a_plain_tensor_attribute_made_on_meta_is_refused_by_name() -> None:
    """A module's plain tensor attribute (no buffer) made on meta in its constructor is lifted
    as a constant whose values are lost: refused naming it and the fix; one made in forward
    from Python values gets its value (``torch.as_tensor`` here, as ``torch.tensor`` above)."""

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.shift: torch.Tensor | None = torch.full((4,), 0.5)  # on meta, as the module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = torch.as_tensor([2.0, 3.0, 4.0, 5.0], device=x.device)
            return self.lin(x) * scale + (self.shift if self.shift is not None else 0)

    with torch.device("meta"):
        model = Scaled()
    spec = autopipe.ModelSpec(model=model, example_inputs=(torch.randn(2, 4),), loss_fn=lambda o, y: o.sum(),
                              batch=lambda n, step=0: ((torch.randn(2 * n, 4),), torch.zeros(2 * n)))
    graph = autopipe.trace(model, spec.example_inputs, frontend="export")  # (fx keeps as_tensor a node)
    stage = split_graph(graph, hand_plan(graph, 1)).stages[0].module  # what a rank holds
    with pytest.raises(SpecError, match=r"stage tensor 'shift' is on the meta device but is not a parameter "
                                        r"or buffer of the model.*plain tensor attribute") as e:
        materialize_stages([stage], spec, "cpu")
    assert "register_buffer" in str(e.value.hint)
    model.shift = None
    graph = autopipe.trace(model, spec.example_inputs, frontend="export")
    for module in (split_graph(graph, hand_plan(graph, 1)).stages[0].module, graph.gm):  # buffer, attribute
        done = materialize_stages([module], spec, "cpu")
        assert done.constants == ("lifted_tensor_0",)
        assert torch.equal(_constants(module)["lifted_tensor_0"], torch.tensor([2.0, 3.0, 4.0, 5.0]))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_from_meta_equal_one_process(tmp_path: Path) -> None:
    """The three models built on meta, trained on 2 gloo ranks from the CPU build's weights
    (``autopipe.runtime.train``, as ``autopipe train --init`` runs it), give the losses of the
    CPU-built model trained in one process."""
    for name in NAMES:
        torch.save(ZOO[name]().model.state_dict(), tmp_path / f"{name}.pt")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        result = launch([sys.executable, "-m", "tests.init_constants_worker", str(tmp_path), *NAMES], 2, env=ENV,
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, log.read_text()[-3000:]
    for name in NAMES:
        cpu = ZOO[name]()
        want = reference_train(cpu, autopipe.trace(cpu.model, cpu.example_inputs), MICROBATCHES,
                               config(tmp_path, name))
        losses = [r["losses"] for r in map(torch.load, sorted(tmp_path.glob(f"{name}.rank*.pt"))) if r["losses"]]
        assert len(losses) == 1 and len(losses[0]) == STEPS
        torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(want), rtol=1e-6, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
