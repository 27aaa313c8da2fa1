"""Tests for autopipe/runtime/pipe.py: the bring-your-own-loop API, and examples/custom_loop.py.

The API tests run in this process as a world of one rank (a one-stage plan); the custom
loop runs on two gloo ranks against one process with the same optimizer, learning-rate
schedule and clipping.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from autopipe import ModelSpec, trace
from autopipe._subnormals import flushing
from autopipe.errors import (
    AutopipeError,
    CheckpointError,
    PlanMismatchError,
    SpecError,
    WeightsError,
)
from autopipe.runtime import Pipe, build, launch, load_checkpoint, save_checkpoint
from autopipe.runtime.pipe import own

from .conftest import ROOT, example_spec, resident_bytes_at
from .runtime_cases import CASES, TINY, Case
from .runtime_plans import hand_plan, plan_from_cuts

GPT2 = TINY["gpt2"]
MLP = TINY["mlp"]


def _one_stage(spec: ModelSpec, microbatches: int = 2) -> Iterator[Pipe]:
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=microbatches)
    with build(plan, spec, device="cpu") as pipe:
        yield pipe


@pytest.fixture
def gpt2_pipe() -> Iterator[Pipe]:
    yield from _one_stage(example_spec("gpt2", **GPT2))


def _model_grads(spec: ModelSpec, microbatches: int, step: int) -> dict[str, torch.Tensor]:
    """Mean gradient over the micro-batches of ``spec.batch(m, step)`` on the unsplit model."""
    inputs, target = spec.batch(microbatches, step)
    chunks = [torch.tensor_split(x, microbatches) for x in (*inputs, target)]
    spec.model.zero_grad(set_to_none=True)
    for c in zip(*chunks):
        (spec.loss_fn(spec.model(*c[:-1]), c[-1]) / microbatches).backward()
    return {k: p.grad.clone() for k, p in spec.model.named_parameters() if p.grad is not None}


def test_names_and_state_are_the_original_modules(gpt2_pipe: Pipe) -> None:
    pipe = gpt2_pipe
    original = example_spec("gpt2", **GPT2).model.state_dict()
    assert pipe.has_first and pipe.has_last and pipe.stages == (0,)
    # the tied head is held once, under the embedding's name
    assert sorted(dict(pipe.named_parameters())) == sorted(k for k in original if k != "lm_head.weight")
    assert set(pipe.state_dict()) == set(original) - {"lm_head.weight"}
    pipe.load_state_dict(original)  # strict: every key is the model's
    for k, v in pipe.state_dict().items():
        assert torch.equal(v, original[k])
    with pytest.raises(CheckpointError, match=r"not in the model 1: transformer\.extra"):
        pipe.load_state_dict({**original, "transformer.extra": torch.zeros(1)})
    bad = {**original, "transformer.wpe.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"other shapes 1: transformer\.wpe\.weight \(given \(3, 3\)"):
        pipe.load_state_dict(bad)
    # a tied parameter may come under any of its names
    alias = {("lm_head.weight" if k == "transformer.wte.weight" else k): v for k, v in original.items()}
    pipe.load_state_dict(alias)


def test_step_clip_and_evaluate_equal_the_unsplit_model(gpt2_pipe: Pipe) -> None:
    pipe = gpt2_pipe
    spec = example_spec("gpt2", **GPT2)
    spec.model.load_state_dict(pipe.state_dict(), strict=False)  # (the head is tied to the embedding)
    inputs, target = spec.batch(2, 0)
    seen = pipe.evaluate(inputs, target)
    losses = pipe.step(inputs, target)
    torch.testing.assert_close(torch.stack(losses), torch.stack(seen.losses))
    with torch.no_grad():
        torch.testing.assert_close(seen.output.logits, spec.model(*inputs).logits)
    expected = _model_grads(spec, 2, 0)
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=lambda m, n=name: f"{n}: {m}")
    # a second step without zero_grad adds its mean gradient
    pipe.step(*spec.batch(2, 1))
    again = _model_grads(spec, 2, 1)
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.grad, expected[name] + again[name])
    norm = pipe.clip_grad_norm_(0.05)
    for name, p in spec.model.named_parameters():  # the tied head is the embedding: counted once
        p.grad = expected[name] + again[name]
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(spec.model.parameters(), 0.05))
    assert norm > 0.05
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.grad, dict(spec.model.named_parameters())[name].grad)
    pipe.zero_grad()
    assert all(p.grad is None for p in pipe.parameters())


def test_a_missing_gradient_handed_over_on_one_rank_is_real_zeros() -> None:
    """Where two stages of one rank hand tensors over in memory and the later stage has no
    gradient for one (a value it reads without differentiating), torch zeroes the earlier
    stage's receive buffer in place: that buffer needs memory then, not a meta placeholder
    ([Note: receive buffers made when needed]). The GPU suite's one-process Llama hit it."""
    spec = example_spec("llama", **TINY["llama"])
    graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
    plan = hand_plan(graph, 2, microbatches=2, schedule="interleaved-1f1b", ranks=(0, 0))
    with build(plan, spec, device="cpu") as pipe:
        spec.model.load_state_dict(pipe.state_dict(), strict=False)
        pipe.step(*spec.batch(2, 0))  # the stages' buffers are prepared: placeholders now
        first = pipe._pipeline.stages[0]
        infos = first.grad_recv_info[0]
        assert infos and all(i.buffer.is_meta for i in infos)
        first.set_local_bwd_input((None,) * len(infos), 0)
        for info in infos:
            assert info.buffer.device.type == "cpu" and not info.buffer.any()
        pipe.zero_grad()
        pipe.step(*spec.batch(2, 1))  # and training goes on as the unsplit model
        expected = _model_grads(spec, 2, 1)
        for name, p in pipe.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], msg=lambda m, n=name: f"{n}: {m}")


def test_take_keeps_what_the_rank_reads_and_no_larger_batch(gpt2_pipe: Pipe) -> None:
    """One stage reads both parts; a replica's share (a view of the global batch) is copied
    so that the global batch can be freed, a whole batch is not ([Note: the batch a rank
    holds])."""
    inputs, target = gpt2_pipe.take((torch.arange(8).view(2, 4), 3), torch.ones(2))
    assert inputs is not None and inputs[1] == 3 and target is not None
    whole = torch.arange(12).view(3, 4)
    assert own(whole, torch.device("cpu")) is whole
    share = torch.tensor_split(whole, 3)[1]
    mine = own(share, torch.device("cpu"))
    assert torch.equal(mine, share) and mine.untyped_storage().nbytes() == share.nbytes


def test_a_loss_that_is_no_scalar_is_named_in_step_and_evaluate() -> None:
    spec = example_spec("mlp", **MLP)
    spec.loss_fn = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")
    for pipe in _one_stage(spec):
        inputs, target = spec.batch(2, 0)
        for run in (pipe.step, pipe.evaluate):
            with pytest.raises(SpecError, match=r"loss_fn returned a tensor of shape \(4,\), not a scalar"):
                run(inputs, target)


def test_zeroed_gradient_buffers_are_accumulated_into_in_place(gpt2_pipe: Pipe) -> None:
    """[Note: gradient buffers kept on CPU ranks]: after zero_grad(set_to_none=False) a step
    fills the same buffers, bit for bit what it gives from None; a later step still adds."""
    pipe = gpt2_pipe
    spec = example_spec("gpt2", **GPT2)
    first, second = spec.batch(2, 0), spec.batch(2, 1)
    pipe.step(*first)
    fresh = {name: p.grad.clone() for name, p in pipe.named_parameters()}
    pipe.zero_grad(set_to_none=False)
    buffers = {name: p.grad for name, p in pipe.named_parameters()}
    assert all(not b.any() for b in buffers.values())
    pipe.step(*first)
    for name, p in pipe.named_parameters():
        assert p.grad is buffers[name], name  # no second set of gradients
        assert torch.equal(p.grad, fresh[name]), name
    pipe.step(*second)  # not zeroed: its mean gradient is added, as from None
    pipe.zero_grad()
    pipe.step(*second)
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(buffers[name], fresh[name] + p.grad, rtol=0, atol=0)


def test_build_flushes_subnormals_only_when_asked_and_close_stops() -> None:
    """[Note: subnormals in training]: the gradients equal the unflushed ones where no
    subnormal is involved, and the thread is left as it was found."""
    spec = example_spec("mlp", **MLP)
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=2)
    inputs, target = spec.batch(2, 0)
    assert not flushing()
    grads = []
    for flush in (False, True):
        with build(plan, spec, device="cpu", flush_denormal=flush) as pipe:
            assert flushing() is flush
            pipe.zero_grad()  # the model's parameters are the pipe's: no gradient of the last one
            pipe.step(inputs, target)
            grads.append({name: p.grad.clone() for name, p in pipe.named_parameters()})
        assert not flushing()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0)


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path: Path) -> None:
    for pipe in _one_stage(example_spec("mlp", **MLP)):
        optimizer = torch.optim.AdamW(pipe.parameters())
        pipe.step(*example_spec("mlp", **MLP).batch(2, 0))
        optimizer.step()
        save_checkpoint(tmp_path, pipe, optimizer, step=1, extra={"note": "mlp"})
    for pipe in _one_stage(example_spec("mlp", **{**MLP, "hidden": 48})):
        with pytest.raises(CheckpointError, match=r"other shapes \d+: .*\(checkpoint \(32, 16\), model \(48, 16\)\)"):
            load_checkpoint(tmp_path, pipe)
    for pipe in _one_stage(example_spec("mlp", **MLP)):
        fresh = torch.optim.AdamW(pipe.parameters())
        info = load_checkpoint(tmp_path, pipe, fresh)
        assert info.step == 1 and pipe.steps == 1 and info.extra == {"note": "mlp"}
        assert all(s["step"].item() == 1.0 for s in fresh.state.values())
        assert len(fresh.state) == len(list(pipe.parameters()))


def test_odd_devices_state_and_norms_are_refused_by_name() -> None:
    """build(device="meta") trained until its first step; a meta or non-tensor value in
    load_state_dict, torch's NotImplementedError or an AttributeError; a negative max_norm
    turned every gradient round, NaN made them NaN."""
    spec = example_spec("mlp", **MLP)
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=2)
    for device in ("meta", torch.device("meta")):
        with pytest.raises(AutopipeError, match=r"rank 0 cannot compute on meta"):
            build(plan, spec, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(PlanMismatchError, match=r"torch sees no CUDA device"):
            build(plan, spec, device=torch.device("cuda", 1))
    for pipe in _one_stage(spec):
        state = pipe.state_dict()
        for value, said in ((state["inp.weight"].to("meta"), "on the meta device"), (3, "int")):
            with pytest.raises(CheckpointError, match=rf"no tensor data under 1: inp.weight \({said}\)"):
                pipe.load_state_dict({**state, "inp.weight": value})
        pipe.load_state_dict({**state, "not.read": 3}, strict=False)  # a key it does not read: no matter
        pipe.step(*spec.batch(2, 0))
        grads = [p.grad.clone() for p in pipe.parameters()]
        for bad in (-1.0, float("nan")):
            with pytest.raises(AutopipeError, match=rf"max_norm is {bad}"):
                pipe.clip_grad_norm_(bad)
        for p_norm in (0.0, -1.0):  # a ZeroDivisionError; nothing clipped
            with pytest.raises(AutopipeError, match=rf"norm_type is {p_norm}"):
                pipe.clip_grad_norm_(1.0, norm_type=p_norm)
        for p, g in zip(pipe.parameters(), grads, strict=True):
            assert torch.equal(p.grad, g)


def test_a_batch_of_another_shape_is_refused_before_any_message() -> None:
    """Three micro-batches for a plan of two trained silently on one rank (micro-batches of 6);
    on two, the last stage's rank aborted in gloo (a message longer than its buffer) or its
    loss failed on the shapes."""
    spec = example_spec("mlp", **MLP)
    for pipe in _one_stage(spec):
        with pytest.raises(SpecError, match=r"input 'x' in step 1 has shape \(12, 16\), but the plan's stages "
                                            r"take 2 micro-batches of \(4, 16\): \(8, 16\)"):
            pipe.step(*spec.batch(3, 0))
        with pytest.raises(SpecError, match=r"has shape \(4, 16\)"):
            pipe.evaluate(*spec.batch(1, 0))
        assert len(pipe.step(*spec.batch(2, 0))) == 2


def test_a_target_of_other_rows_is_refused_before_any_message() -> None:
    """Half the rows: the loss failed deep in torch ("Expected input batch_size (4) to match target
    batch_size (2)", on the last stage's rank); one row per micro-batch with a loss that broadcasts
    (mse_loss) trained on another loss without an error."""
    spec = example_spec("mlp", **MLP)
    inputs, target = spec.batch(2, 0)
    for pipe in _one_stage(spec):
        with pytest.raises(SpecError, match=r"the target in step 1 has shape \(4,\), but the plan's 2 micro-batches "
                                            r"of 4 samples need 8 rows: \(8,\)"):
            pipe.step(inputs, target[:4])
        with pytest.raises(SpecError, match=r"0-dim tensor, which cannot be cut into 2 micro-batches"):
            pipe.step(inputs, target[0])
        assert len(pipe.step(inputs, target)) == 2
    classes = spec.model(inputs[0][:1]).shape[-1]

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        x, y = spec.batch(n, step)
        return x, nn.functional.one_hot(y, classes).float()

    regression = ModelSpec(model=spec.model, example_inputs=spec.example_inputs, batch=batch,
                           loss_fn=nn.functional.mse_loss)
    inputs, target = regression.batch(2, 0)
    for pipe in _one_stage(regression):
        with pytest.raises(SpecError, match=r"has shape \(2, 10\), but the plan's 2 micro-batches of 4 samples "
                                            r"need 8 rows: \(8, 10\)"):
            pipe.step(inputs, target[::4])  # one row each: broadcast against 4


def test_a_closed_pipe_says_so() -> None:
    """It raised torch's "Default process group has not been initialized" from inside the schedule."""
    spec = example_spec("mlp", **MLP)
    for pipe in _one_stage(spec):
        pipe.step(*spec.batch(2, 0))
    for call in (lambda: pipe.step(*spec.batch(2, 0)), lambda: pipe.evaluate(*spec.batch(2, 0)),
                 lambda: pipe.clip_grad_norm_(1.0)):
        with pytest.raises(AutopipeError, match=r"rank 0 \(stage 0\): this pipe was closed"):
            call()


def test_build_materialises_a_meta_model_from_a_state_dict_or_its_initialiser() -> None:
    """``build(init=...)`` on a meta-built spec: the rank's tensors become real, from the given
    state dict (the tied head under either name) or, without one, from ``init_weights``."""
    source = example_spec("gpt2", **GPT2, seed=3).model.state_dict()
    state = {k: v.clone() for k, v in source.items() if k != "transformer.wte.weight"}  # the head's name only
    meta = example_spec("gpt2", **GPT2, seed=3, device="meta")  # (the seed also draws the batches)
    plan = plan_from_cuts(trace(meta.model, meta.example_inputs), [], microbatches=2)
    with build(plan, meta, device="cpu", init=state) as pipe:
        assert all(p.device.type == "cpu" for p in pipe.parameters())
        assert all(p.device.type == "meta" for p in meta.model.parameters())  # the model stays meta
        for k, v in pipe.state_dict().items():
            assert torch.equal(v, source[k]), k
        losses = pipe.step(*meta.batch(2, 0))
    cpu = example_spec("gpt2", **GPT2, seed=3)
    (tokens,), target = cpu.batch(2, 0)
    with torch.no_grad():
        expected = [cpu.loss_fn(cpu.model(x), t) for x, t in zip(tokens.chunk(2), target.chunk(2))]
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected))
    with build(plan, example_spec("gpt2", **GPT2, device="meta"), device="cpu") as pipe:
        assert all(torch.isfinite(v).all() for v in pipe.state_dict().values())  # init_weights filled all
    bad = {k: v for k, v in state.items() if k != "transformer.wpe.weight"}
    with pytest.raises(WeightsError, match=r"1 missing \(transformer\.wpe\.weight\)"):
        build(plan, example_spec("gpt2", **GPT2, device="meta"), device="cpu", init=bad)


# --- examples/custom_loop.py on two ranks ------------------------------------------------------

STEPS, LR, MAX_NORM, DECAY = 6, 1e-2, 0.5, 0.01


def _one_process(spec: ModelSpec, microbatches: int) -> dict[str, list[float]]:
    """The custom loop's training in one process: torch's clip_grad_norm_ on the whole model."""
    model = spec.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    record: dict[str, list[float]] = {"loss": [], "norm": [], "lr": []}
    for step in range(STEPS):
        inputs, target = spec.batch(microbatches, step)
        chunks = [torch.tensor_split(x, microbatches) for x in (*inputs, target)]
        losses = []
        for c in zip(*chunks):
            loss = spec.loss_fn(model(*c[:-1]), c[-1])
            loss.backward()
            losses.append(loss.detach())
        for p in model.parameters():
            p.grad.div_(microbatches)
        record["norm"].append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        record["lr"].append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        record["loss"].append(torch.stack(losses).mean().item())
    return record


def test_custom_loop_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tracebacks until 2026-12-07: a plan of another world size, --lr -1 (torch's AdamW);
    --max-norm -1 turned every gradient round."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import custom_loop
    finally:
        sys.path.remove(str(ROOT / "examples"))
    Case("mlp", 2).build(hand=True)[2].save(tmp_path / "plan.json")
    base = ["--plan", str(tmp_path / "plan.json"), "--spec", f"{ROOT / 'examples' / 'mlp.py'}:build",
            *[f"--spec-arg={k}={v}" for k, v in MLP.items()], "--device", "cpu"]
    assert custom_loop.main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("custom_loop.py: error: the plan runs on 2 ranks (2 stages, schedule 1f1b) but the world "
                          "size is 1\n  hint: start 2 processes"), err
    for bad, said in ((["--lr", "-1"], "--lr is -1.0; use a positive rate"), (["--steps", "0"], "--steps is 0"),
                      (["--max-norm", "nan"], "--max-norm is nan; use 0 or more"),
                      (["--lr", "inf"], "--lr is inf; use a positive rate"),  # every loss after the first NaN
                      # a FileNotFoundError traceback after the training until 2026-12-07
                      (["--out", str(tmp_path / "no" / "r.json")], f"{tmp_path / 'no'} is not a folder you can write"),
                      (["--out", str(tmp_path)], f"--out {tmp_path}: is a directory")):
        with pytest.raises(SystemExit) as e:
            custom_loop.main([*base, *bad])
        assert e.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.parametrize("name", [
    "gpt2-2-1f1b",  # the tied embedding is split across the two ranks
    "gpt2-1x2-pipelines-1f1b",  # one stage, two data-parallel replicas: one norm, not two
    pytest.param("gpt2-2x2-pipelines-1f1b", marks=pytest.mark.slow),  # tied copies in both replicas
    "gpt2-2-1f1b-loss-alone",  # the last rank has no parameters: no optimizer (a crash until 2026-12-07)
    "gpt2-1x2-pipelines-1f1b-zero1",  # AdamW's states split over the replicas (pipe.optimizer)
    # three replicas: gloo's reduce-scatter and all-gather (a pair exchanges instead), the
    # collectives NCCL runs ([Note: reduce-scatter and all-gather in rounds])
    "gpt2-1x3-pipelines-1f1b-zero1",
])
def test_custom_loop_equals_one_process(tmp_path: Path, name: str) -> None:
    case = (CASES[name] if name in CASES else Case("gpt2", 2, loss_alone=True) if "loss-alone" in name
            else Case("gpt2", 1, replicas=3, shard_optimizer=True) if "1x3" in name
            else replace(CASES[name.removesuffix("-zero1")], shard_optimizer=True))
    assert case.name == name
    spec, _, plan = case.build()
    plan.save(tmp_path / "plan.json")
    knobs = [f"--spec-arg={k}={v}" for k, v in GPT2.items()]
    cmd = [sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--plan", str(tmp_path / "plan.json"),
           "--spec", f"{ROOT / 'examples' / 'gpt2.py'}:build", *knobs, "--steps", str(STEPS), "--lr", str(LR),
           "--weight-decay", str(DECAY), "--max-norm", str(MAX_NORM), "--device", "cpu",
           "--out", str(tmp_path / "record.json")]
    with open(tmp_path / "log.txt", "w") as f:
        result = launch(cmd, case.world_size, env={"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error",
                                     "OMP_NUM_THREADS": "1"},
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    log = (tmp_path / "log.txt").read_text()
    assert result.code == 0, log[-3000:]
    assert "step 6/6  loss" in log and "grad norm" in log
    assert "no optimizer was built by pipe.optimizer" not in log  # it holds what the plan charges
    got = json.loads((tmp_path / "record.json").read_text())
    expected = _one_process(spec, plan.microbatches * plan.replicas)  # the global batch
    assert max(expected["norm"]) > MAX_NORM, "clipping must act for the test to mean anything"
    assert expected["lr"][0] == LR and expected["lr"][-1] < LR / 10  # the cosine schedule runs
    for key in ("loss", "norm", "lr"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(expected[key]),
                                   msg=lambda m, k=key: f"{k}: {m}")  # measured: 9e-8 (loss), 3e-7 (norm)


UNSHARDED_LOOP = """
import sys, warnings
import torch
import autopipe
from autopipe.runtime import build
from autopipe.spec import parse_spec_args
plan = autopipe.Plan.load(sys.argv[1])
spec = autopipe.load_spec(sys.argv[2], **parse_spec_args(sys.argv[3:]))
with build(plan, spec, device="cpu") as pipe, warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    opt = torch.optim.SGD(pipe.parameters(), lr=0.1)  # not pipe.optimizer: every state here
    for step in range(2):
        pipe.step(*pipe.take(*pipe.replicas.share(*spec.batch(plan.microbatches * 2, step))))
        pipe.sync_tied_grads()
        opt.step()
        pipe.zero_grad()
    # one write: the two ranks share the log, and print's pieces interleaved ("WARNEDWARNED  11")
    sys.stdout.write(f"WARNED {sum('no optimizer was built by pipe.optimizer' in str(w.message) for w in seen)}\\n")
"""


@pytest.mark.distributed
def test_a_sharding_plan_warns_once_of_an_optimizer_not_built_by_the_pipe(tmp_path: Path) -> None:
    """A loop of one's own that builds its optimizer on ``pipe.parameters()`` holds dp times
    the states a ``--shard-optimizer`` plan charges: the first step says so, once a rank."""
    _, _, plan = replace(CASES["gpt2-1x2-pipelines-1f1b"], shard_optimizer=True).build()
    assert plan.data_parallel is not None and plan.data_parallel.shard_optimizer
    plan.save(tmp_path / "plan.json")
    (tmp_path / "loop.py").write_text(UNSHARDED_LOOP)
    cmd = [sys.executable, str(tmp_path / "loop.py"), str(tmp_path / "plan.json"),
           f"{ROOT / 'examples' / 'gpt2.py'}:build", *[f"{k}={v}" for k, v in GPT2.items()]]
    with open(tmp_path / "log.txt", "w") as f:
        result = launch(cmd, 2, env={"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error",
                                     "OMP_NUM_THREADS": "1"},
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    log = (tmp_path / "log.txt").read_text()
    assert result.code == 0, log[-3000:]
    assert log.count("WARNED 1") == 2, log[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_embedding_gradient_on_zero_pages_equals_the_unsplit_model() -> None:
    """[Note: an embedding's gradient on zero pages]: a Llama whose 2 MiB embedding gets its
    gradient on zero pages: the step's mean gradient is the unsplit model's, the mapping is
    resident only where rows were written (rows of 128 bytes: a page or none per token), and
    after ``zero_grad(set_to_none=False)`` the same step fills the same buffer, same bits."""
    spec = example_spec("llama", **{**TINY["llama"], "vocab_size": 16384})
    for pipe in _one_stage(spec):
        # the stage holds the model's own parameters: the unsplit model's gradients first,
        # then none, so that the step makes the embedding's gradient itself
        expected = _model_grads(spec, 2, 0)
        spec.model.zero_grad(set_to_none=True)
        batch = spec.batch(2, 0)
        pipe.step(*batch)
        grad = dict(pipe.named_parameters())["model.embed_tokens.weight"].grad
        assert grad is not None
        size, resident = resident_bytes_at(grad.data_ptr())
        tokens = batch[0][0].numel()
        assert size >= grad.numel() * 4 == 2 << 20 and resident <= tokens * 4096 < size // 4, (size, resident)
        # the eager model's gradients, within rounding (the stage runs the exported graph,
        # whose kernels may round otherwise on some CPUs)
        for name, p in pipe.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], msg=lambda m, n=name: f"{n}: {m}")
        fresh = {name: p.grad.clone() for name, p in pipe.named_parameters()}
        pipe.zero_grad(set_to_none=False)
        pipe.step(*batch)
        for name, p in pipe.named_parameters():
            assert p.grad is not None and torch.equal(p.grad, fresh[name]), name
        assert dict(pipe.named_parameters())["model.embed_tokens.weight"].grad is grad
