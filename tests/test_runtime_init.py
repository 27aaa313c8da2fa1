"""Training a meta-built model on gloo ranks (autopipe/runtime/materialize.py in autopipe train):
from a ``--init`` file, or from the spec's initialiser, equals one process on the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

import autopipe
from autopipe.runtime.launch import launch
from autopipe.runtime.materialize import materialize_stages
from autopipe.runtime.reference import reference_train
from autopipe.runtime.split import retarget_devices

from .conftest import ROOT, example_spec
from .init_worker import INIT_CASES, InitCase
from .runtime_cases import TINY
from .runtime_plans import hand_plan

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ENV = {"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both cases trained once on 2 ranks; plans, weights and results in one folder."""
    out = tmp_path_factory.mktemp("init")
    save_model(example_spec("gpt2", **TINY["gpt2"], seed=5).model, str(out / "gpt2.safetensors"))
    for case in INIT_CASES.values():
        spec = case.spec()
        graph = autopipe.trace(spec.model, spec.example_inputs)
        hand_plan(graph, 2, microbatches=case.microbatches).save(out / f"{case.name}.plan.json")
    log = out / "log.txt"
    with open(log, "w") as f:
        result = launch([sys.executable, "-m", "tests.init_worker", str(out), *INIT_CASES], 2, env=ENV,
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, log.read_text()[-3000:]
    return out


def _one_process(case: InitCase, out: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The case trained in one process on the same weights: a CPU-built model loaded from the
    file, or the meta-built model materialised whole (the per-module seeds make it equal)."""
    if case.init is not None:
        spec = case.spec(device="cpu")
        load_model(spec.model, str(out / case.init))
    else:
        spec = case.spec()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    if case.init is None:
        materialize_stages([graph.gm], spec, "cpu")
        retarget_devices(graph.gm, torch.device("cpu"))  # traced on meta: arange(device="meta")
    losses = reference_train(spec, graph, case.microbatches, case.config(out))
    return losses, dict([*graph.gm.named_parameters(remove_duplicate=False), *graph.gm.named_buffers()])


@pytest.mark.parametrize("name", list(INIT_CASES))
def test_two_ranks_from_meta_equal_one_process(name: str, job: Path) -> None:
    case = INIT_CASES[name]
    ref_losses, ref_state = _one_process(case, job)
    results = [torch.load(f) for f in sorted(job.glob(f"{name}.rank*.pt"))]
    assert len(results) == 2
    losses = [r["losses"] for r in results if r["losses"]]
    assert len(losses) == 1 and len(losses[0]) == case.steps
    # the first loss: the weights are the same; the later ones: so is the training
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(ref_losses), rtol=1e-6, atol=1e-6)
    seen = set()
    for r in results:
        for k, v in r["state"].items():
            torch.testing.assert_close(v, ref_state[k].detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m, k=k: f"{name}: {k}: {m}")
            seen.add(k)
    trained = {id(v) for k, v in ref_state.items() if k in seen}
    assert all(id(v) in trained for v in ref_state.values() if isinstance(v, torch.nn.Parameter))


def _autopipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopipe", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **ENV})


def _train_gpt2(job: Path, steps: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``autopipe train`` of the meta-built GPT-2 case on 2 launched ranks."""
    case = INIT_CASES["gpt2-init"]
    knobs = [f"--spec-arg={k}={v}" for k, v in TINY["gpt2"].items() if k != "batch_size"]
    return _autopipe("train", "examples/gpt2.py:build", *knobs, "--spec-arg=device=meta", "--device=cpu",
                     "--plan", str(job / f"{case.name}.plan.json"), "--steps", str(steps),
                     "--optimizer", case.optimizer, "--lr", str(case.lr),
                     "--batch-size", str(TINY["gpt2"]["batch_size"] * case.microbatches), *args, "--launch", "2")


def _printed_losses(run: subprocess.CompletedProcess[str]) -> dict[int, float]:
    """Step number → the loss ``autopipe train`` printed for it."""
    rows = [ln.split() for ln in run.stdout.splitlines() if ln.startswith("step ")]
    return {int(r[1].split("/")[0]): float(r[3]) for r in rows}


def test_cli_init_flag(job: Path) -> None:
    """``autopipe train --init`` prints the worker's losses; weights of another model stop it
    before any rank starts (exit 2, the missing names)."""
    case = INIT_CASES["gpt2-init"]
    run = _train_gpt2(job, case.steps, "--init", str(job / "gpt2.safetensors"))
    assert run.returncode == 0, run.stderr
    printed = list(_printed_losses(run).values())
    worker = next(r["losses"] for r in map(torch.load, sorted(job.glob("gpt2-init.rank*.pt"))) if r["losses"])
    torch.testing.assert_close(torch.tensor(printed), torch.tensor(worker), rtol=0, atol=1e-6)
    assert f"weights from {job / 'gpt2.safetensors'}\n" in run.stdout

    # a bfloat16 checkpoint (as most on the Hub) trains the float32 model, cast on reading
    half = job / "gpt2-bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in load_file(job / "gpt2.safetensors").items()}, half)
    cast = _train_gpt2(job, 1, "--init", str(half))
    assert cast.returncode == 0, cast.stderr
    assert f"weights from {half} (cast " in cast.stdout and "from bfloat16 to float32)" in cast.stdout
    assert abs(_printed_losses(cast)[1] - printed[0]) < 0.05  # the same weights, rounded

    other = job / "llama.safetensors"
    save_model(example_spec("llama", **TINY["llama"]).model, str(other))
    bad = _train_gpt2(job, case.steps, "--init", str(other))
    assert bad.returncode == 2 and "step" not in bad.stdout and "Traceback" not in bad.stderr
    assert "do not fit the model: 27 missing (transformer.wpe.weight" in bad.stderr
    assert "20 unexpected (model.embed_tokens.weight" in bad.stderr


def test_checkpoints_of_a_meta_built_model(job: Path, tmp_path: Path) -> None:
    """Meta build + ``--init`` + ``--save``; a meta build ``--resume``d (its tensors first
    initialised, then every one overwritten from the checkpoint) continues with the same
    losses; ``consolidate`` of either run loads strictly into the CPU-built module, equal."""
    straight = _train_gpt2(job, 4, "--init", str(job / "gpt2.safetensors"), "--save", str(tmp_path / "a"),
                           "--save-every", "2")
    assert straight.returncode == 0, straight.stderr
    resumed = _train_gpt2(job, 4, "--resume", str(tmp_path / "a" / "step-000002"), "--save", str(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr
    first, again = _printed_losses(straight), _printed_losses(resumed)
    assert sorted(first) == [1, 2, 3, 4] and sorted(again) == [3, 4]
    assert [first[3], first[4]] == [again[3], again[4]]  # to the printed digit: the same training
    model = example_spec("gpt2", **TINY["gpt2"]).model
    for ckpt in ("a", "b"):
        run = _autopipe("consolidate", str(tmp_path / ckpt), "-o", str(tmp_path / f"{ckpt}.safetensors"))
        assert run.returncode == 0, run.stderr
    a, b = (load_file(tmp_path / f"{c}.safetensors") for c in ("a", "b"))
    model.load_state_dict(a, strict=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(job / "gpt2.safetensors")
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], start["transformer.h.0.mlp.c_fc.weight"])
