"""Tests for autopipe/partition/costs.py: the cost model on hand-checked partitions."""

from __future__ import annotations

import dataclasses
import math

from autopipe.partition.costs import boundary_bytes, evaluate, violations
from autopipe.partition.problem import Config, from_profile
from autopipe.plan_format import Device
from autopipe.profile.loss import LossCost
from autopipe.profile.memory import param_memory
from autopipe.profile.profile import NodeProfile, Profile


def _node(name: str, op: str = "call_function", *, f: float = 0.0, b: float = 0.0, act: int = 0,
          out: int = 0, params: tuple[str, ...] = (), shared: tuple[str, ...] = (),
          tensor: bool = True) -> NodeProfile:
    return NodeProfile(name=name, op=op, target="t", module="", forward_s=f, backward_input_s=b,
                       backward_weight_s=0.0, activation_bytes=act, output_bytes=out,
                       param_bytes=400 * len(params), params=params, shared_params=shared,
                       is_tensor=tensor)


def skip_profile() -> Profile:
    """x → a → b → c → output, plus a skip a → c (a U-Net-like pass-through)."""
    nodes = (_node("x", "placeholder", out=10), _node("a", f=1, b=2, act=100, out=1000, params=("w",)),
             _node("b", f=1, b=2, act=100, out=50), _node("c", f=1, b=2, act=100, out=5, shared=("w",)),
             _node("output", "output", tensor=False))
    edges = (("x", "a", 10), ("a", "b", 1000), ("a", "c", 1000), ("b", "c", 50), ("c", "output", 5))
    return Profile(device="t", dtype="float32", microbatch_shape=[[1]], nodes=nodes, edges=edges,
                   params={"w": 400})


def config(p: int = 3, m: int = 4, bw: float = 1000.0, schedule: str = "1f1b") -> Config:
    return Config(num_stages=p, microbatches=m, schedule=schedule,
                  devices=tuple(Device(name=f"d{i}", memory=10**6) for i in range(p)),
                  link_bandwidth=bw)


def test_pass_through_pays_every_boundary() -> None:
    problem = from_profile(skip_profile(), config())
    # blocks: x, a, b, c, output → stages 0, 0, 1, 2, 2
    stage_of = [0, 0, 1, 2, 2]
    # a is sent once to stage 1 (read by b there and by c later), then passed on with b's output
    assert boundary_bytes(problem, stage_of) == [1000, 1000 + 50]
    ev = evaluate(problem, stage_of)
    s1 = ev.stages[1]
    assert (s1.recv_bytes, s1.send_bytes) == (1000, 1050)
    assert math.isclose(s1.comm_s, 2 * (1000 + 1050) / 1000)
    assert math.isclose(s1.send_s, 1050 / 1000)
    # beyond the activations: two gradients received and one activation ([Note: the
    # pipeline's buffers])
    assert s1.buffers == 2 * 1050 + 1000
    # what it sends is kept until its backward, and what it received until its own: per
    # in-flight micro-batch (1F1B, p − s = 2)
    assert s1.activations == 2 * (100 + 1050 + 1000)
    assert ev.stages[2].activations == 1 * (100 + 1050)  # the last stage sends nothing
    assert (ev.stages[0].buffers, ev.stages[2].buffers) == (2 * 1000, 1050)


def test_the_batch_is_held_by_the_first_and_last_stage() -> None:
    """[Note: the batch a rank holds]: stage 0 holds every micro-batch's inputs, the last
    stage their targets, a middle stage none of it; the step's memory counts it too."""
    prof = dataclasses.replace(skip_profile(), loss=LossCost(forward_s=0.0, backward_s=0.0, activation_bytes=0,
                                                            input_bytes=5, target_bytes=7))
    problem = from_profile(prof, config())
    assert (problem.batch_input_bytes, problem.batch_target_bytes) == (10, 7)
    ev = evaluate(problem, [0, 0, 1, 2, 2])
    assert [s.batch for s in ev.stages] == [4 * 10, 0, 4 * 7]
    for s in ev.stages:
        assert s.memory == s.params + s.grads + s.optimizer + s.buffers + s.batch + s.activations + s.workspace
    one = evaluate(from_profile(prof, config(p=1)), [0] * 5)
    assert one.stages[0].batch == 4 * (10 + 7)  # one stage: both
    # a non-tensor model input is baked into the stages: no batch
    consts = dataclasses.replace(prof, nodes=(_node("x", "placeholder", out=10, tensor=False), *prof.nodes[1:]))
    assert from_profile(consts, config()).batch_input_bytes == 0


def test_each_rank_holds_the_libraries_workspaces_once() -> None:
    """[Note: the libraries' workspaces]: every rank holds them, through the step and during
    the optimizer step too; a rank running two chunks holds them once, on its first."""
    prof = dataclasses.replace(skip_profile(), library_bytes=3000)
    bare = evaluate(from_profile(skip_profile(), config()), [0, 0, 1, 2, 2])
    ev = evaluate(from_profile(prof, config()), [0, 0, 1, 2, 2])
    assert [s.library for s in ev.stages] == [3000] * 3
    assert [s.memory - b.memory for s, b in zip(ev.stages, bare.stages)] == [3000] * 3
    for v in ("interleaved-1f1b", "zbv"):
        cfg = Config(num_stages=4, virtual_stages=2, microbatches=4, schedule=v, link_bandwidth=1000.0,
                     devices=tuple(Device(name=f"d{i}", memory=10**6) for i in range(4)))
        chunked = evaluate(from_profile(prof, cfg), [0, 1, 2, 3, 3])
        without = evaluate(from_profile(skip_profile(), cfg), [0, 1, 2, 3, 3])
        first = {r.chunks[0] for r in chunked.ranks}
        assert [s.library for s in chunked.stages] == [3000 if c in first else 0 for c in range(4)], v
        assert [r.memory - b.memory for r, b in zip(chunked.ranks, without.ranks)] == [3000, 3000], v


def test_memory_breakdown_and_tied_parameters() -> None:
    problem = from_profile(skip_profile(), config(), optimizer="adam")
    ev = evaluate(problem, [0, 0, 1, 2, 2])
    w = param_memory(400, optimizer="adam")
    # the tied w is read in stage 0 (a) and stage 2 (c): both hold a full copy
    assert (ev.stages[0].params, ev.stages[0].grads, ev.stages[0].optimizer) == (400, 400, w.optimizer)
    assert ev.stages[2].params == 400 and ev.stages[1].params == 0
    # 1F1B: stage s holds min(m, p − s) micro-batches of activations, of what it sent and
    # of what it received
    assert [s.activations for s in ev.stages] == [(100 + 1000) * 3, (100 + 1000 + 1050) * 2, (100 + 1050) * 1]
    assert math.isclose(ev.tied_sync_s, 400 / 1000)
    gpipe = evaluate(from_profile(skip_profile(), config(schedule="gpipe")), [0, 0, 1, 2, 2])
    assert [s.activations for s in gpipe.stages] == [(100 + 1000) * 4, (100 + 1000 + 1050) * 4, (100 + 1050) * 4]


def test_tied_gradients_all_reduce_as_a_ring_at_the_all_reduce_bandwidth() -> None:
    import dataclasses

    base = config()
    assert base.allreduce_s(400, 1) == 0.0
    assert math.isclose(base.allreduce_s(400, 2), 400 / 1000)  # no all-reduce figure: the link's
    assert math.isclose(base.allreduce_s(400, 4), 2 * 3 / 4 * 400 / 1000)  # 2(k−1)/k of the bytes
    measured = dataclasses.replace(base, allreduce_bandwidth=250.0)
    assert math.isclose(measured.allreduce_s(400, 2), 400 / 250)
    ev = evaluate(from_profile(skip_profile(), measured), [0, 0, 1, 2, 2])
    assert math.isclose(ev.tied_sync_s, 400 / 250)  # w is held by stages 0 and 2
    plain = evaluate(from_profile(skip_profile(), base), [0, 0, 1, 2, 2])
    assert math.isclose(ev.objective_s - plain.objective_s, 400 / 250 - 400 / 1000)
    assert dataclasses.replace(base, link_bandwidth=math.inf).allreduce_s(400, 3) == 0.0
    late = dataclasses.replace(measured, allreduce_latency_s=0.25)  # a ring of k pays k − 1 latencies
    assert (late.allreduce_s(400, 1), late.allreduce_s(400, 2)) == (0.0, 400 / 250 + 0.25)
    assert math.isclose(late.allreduce_s(400, 4), 2 * 3 / 4 * 400 / 250 + 3 * 0.25)
    assert math.isclose(evaluate(from_profile(skip_profile(), late), [0, 0, 1, 2, 2]).tied_sync_s, 400 / 250 + 0.25)


def _embedding_profile() -> Profile:
    """``skip_profile`` with node a an embedding: w is a tied embedding (read by a and c)."""
    profile = skip_profile()
    nodes = tuple(dataclasses.replace(n, embedding=True) if n.name == "a" else n for n in profile.nodes)
    return dataclasses.replace(profile, nodes=nodes)


def test_a_tied_embedding_is_summed_on_the_rows_line_on_cpu_ranks() -> None:
    """w, read by an embedding and one other node, split over two CPU stages: priced on the
    rows line ([Note: a tied embedding's rows]); on other devices, with a split backward or
    without the line, as the all-reduce; an untied reading or a third reader keeps it dense."""
    cpu = dataclasses.replace(config(), devices=tuple(Device(name=f"cpu:{i}", memory=10**6) for i in range(3)),
                              allreduce_bandwidth=250.0, allreduce_latency_s=0.25,
                              rows_sum_bandwidth=800.0, rows_sum_latency_s=0.125)
    assert (cpu.tied_sum_s(400, 2, True), cpu.tied_sum_s(400, 2, False)) == (0.125 + 400 / 800, 400 / 250 + 0.25)
    assert cpu.tied_sum_s(400, 1, True) == 0.0 and cpu.tied_sum_s(400, 3, True) == cpu.allreduce_s(400, 3)
    problem = from_profile(_embedding_profile(), cpu)
    assert problem.rows_params == {"w"}
    ev = evaluate(problem, [0, 0, 1, 2, 2])
    assert math.isclose(ev.tied_sync_s, 0.125 + 400 / 800)
    plain = evaluate(from_profile(skip_profile(), cpu), [0, 0, 1, 2, 2])
    assert math.isclose(plain.tied_sync_s, 400 / 250 + 0.25)
    assert math.isclose(ev.objective_s - plain.objective_s, (0.125 + 400 / 800) - (400 / 250 + 0.25))
    unmeasured = dataclasses.replace(cpu, rows_sum_bandwidth=0.0)
    assert math.isclose(evaluate(from_profile(_embedding_profile(), unmeasured), [0, 0, 1, 2, 2]).tied_sync_s,
                        400 / 250 + 0.25)
    gpus = dataclasses.replace(cpu, devices=tuple(Device(name=f"cuda:{i}", memory=10**6) for i in range(3)))
    assert from_profile(_embedding_profile(), gpus).rows_params == frozenset()
    split = dataclasses.replace(cpu, schedule="zb-h1")
    assert from_profile(_embedding_profile(), split).rows_params == frozenset()


def test_step_of_equal_stages_is_the_classic_formula() -> None:
    problem = from_profile(skip_profile(), config(bw=math.inf))
    ev = evaluate(problem, [0, 0, 1, 2, 2])
    # equal stages of T = 3 s, free sends: Σ T + (m − 1)·max T
    assert math.isclose(ev.step_s, 3 * 3 + 3 * 3)
    assert math.isclose(ev.objective_s, ev.step_s)  # no sync without bandwidth cost


def test_violations() -> None:
    problem = from_profile(skip_profile(), config())
    assert violations(problem, [0, 0, 1, 2, 2]) == []
    assert any("earlier stage" in v for v in violations(problem, [0, 1, 0, 2, 2]))
    assert any("empty" in v for v in violations(problem, [0, 0, 0, 2, 2]))
    assert any("input block" in v for v in violations(problem, [1, 1, 1, 2, 2]))
    assert any("output block" in v for v in violations(problem, [0, 0, 1, 2, 1]))
    assert violations(problem, [0, 0, 1]) == ["3 stages given for 5 blocks"]


def test_the_optimizer_step_runs_without_activations() -> None:
    """A stage's peak is what it holds plus the larger of its step's temporaries ([Note:
    the optimizer step's temporaries]) and its activations with what one call holds while
    it runs ([Note: gradients around a backward call])."""
    # x → a(w) → b(v) → c → output: stage 0 = x, a, b steps 2 × 4000 bytes at once, but one
    # call holds only one weight's gradient
    nodes = (_node("x", "placeholder", out=10), _node("a", act=100, out=10, params=("w",)),
             _node("b", act=100, out=10, params=("v",)), _node("c", act=100, out=10),
             _node("output", "output", tensor=False))
    edges = (("x", "a", 10), ("a", "b", 10), ("b", "c", 10), ("c", "output", 10))
    two = Profile(device="t", dtype="float32", microbatch_shape=[[1]], nodes=nodes, edges=edges,
                  params={"w": 4000, "v": 4000})
    ev = evaluate(from_profile(two, config(p=2), optimizer="adam"), [0, 0, 0, 1, 1])
    s0, s1 = ev.stages
    held = 2 * param_memory(4000, optimizer="adam").total
    assert (s0.optimizer_step, s1.optimizer_step) == (8000, 0)
    # b's backward: the width after it (10), its input a (10) and v's gradient (4000)
    # two micro-batches in flight of its saved bytes and of b's output sent (kept for its backward)
    assert (s0.workspace, s0.activations) == (4020, 2 * (200 + 10))
    assert s0.batch == 4 * 10  # x, for each of the 4 micro-batches
    assert s0.memory == held + s0.buffers + s0.batch + 8000  # 420 + 4020 < 8000: the step is the peak
    # c: its output and b's; one micro-batch in flight of its saved bytes and b's output received
    assert (s1.workspace, s1.memory) == (20, s1.buffers + 100 + 10 + 20)
    # the skip: a's backward holds a's gradient (read again by c) and w's, 1000 + 400, on
    # top of 3 micro-batches' activations and of a's output sent (3 × 1,100), over the step's 400
    problem = from_profile(skip_profile(), config(), optimizer="adam")
    s0 = evaluate(problem, [0, 0, 1, 2, 2]).stages[0]
    assert (s0.optimizer_step, s0.workspace) == (400, 1400)
    assert s0.memory == 400 + 400 + 800 + s0.buffers + s0.batch + 3300 + 1400
    sgd = evaluate(from_profile(skip_profile(), config(), optimizer="sgd"), [0, 0, 1, 2, 2])
    assert sgd.stages[0].optimizer_step == 0 and sgd.stages[0].memory == 800 + sgd.stages[0].buffers + sgd.stages[0].batch + 3300 + 1400
