"""A readable per-stage table of a Plan: nodes, modules, time, memory breakdown, sends."""

from __future__ import annotations

from typing import Any

from autopipe._units import format_seconds, format_size
from autopipe.plan_format import Plan, Stage

_MODULES_SHOWN = 4


def _modules(stage: Stage) -> str:
    shown = list(stage.modules[:_MODULES_SHOWN])
    more = len(stage.modules) - len(shown)
    if more > 0:
        shown.append(f"… (+{more})")
    return ", ".join(shown) if shown else "(no whole module)"


def _sends(stage: Stage) -> str:
    if not stage.sends:
        return "-"
    total = sum(s.bytes for s in stage.sends)
    alone = [s for s in stage.sends if s.forward_only]
    # [Note: what a cut sends]: those without a gradient that go forward only, in a message of their own
    own = f"; {len(alone)} forward only ({format_size(sum(s.bytes for s in alone))})" if alone else ""
    return f"{len(stage.sends)} → {stage.sends[0].to_stage} ({format_size(total)}{own})"


def _limit(plan: Plan, stage: Stage) -> str:
    limits = {d.name: d.memory for d in plan.devices}
    limit = limits.get(stage.device, 0)
    if not limit:
        return "-"
    return f"{format_size(limit)} ({stage.memory.total / limit:.0%})"


def _counted(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('ch') else 's'}"


def headline(plan: Plan) -> list[str]:
    """The summary lines above the table."""
    sv = plan.solver
    size = plan.options.get("microbatch_size")
    dp = plan.data_parallel
    step = plan.predicted.iteration_s
    lines = [
        f"{_counted(plan.num_stages, 'stage')}, {plan.schedule}, {_counted(plan.microbatches, 'micro-batch')}"
        + (f" of {size} (batch {plan.options.get('batch_size')}"
           + (" per replica" if dp is not None and dp.degree > 1 else "") + ")" if size else "")
        + (f"; x {dp.degree} data-parallel replicas on {dp.world_size} GPUs ({dp.placement} "
           f"placement), batch {dp.batch_size} in all" if dp is not None else ""),
        f"predicted step {format_seconds(step)}, bubble {plan.predicted.bubble_fraction:.1%}"
        + (f", {dp.batch_size / step:.2f} samples/s" if dp is not None and step > 0 else ""),
        f"solver {sv.method}: {sv.status}, objective {format_seconds(sv.objective_s)}, "
        f"lower bound {format_seconds(sv.lower_bound_s)}, gap {sv.gap:.2%}"
        + (f", {sv.seconds:.2f} s" if sv.seconds else ""),
    ]
    if plan.baselines:
        refine = plan.options.get("refine")
        timed = refine.get("baseline_timed") if isinstance(refine, dict) else None
        measured = set(timed) if isinstance(timed, dict) else set()
        parts = []
        for name, b in plan.baselines.items():
            if b.iteration_s is None:
                parts.append(f"{name} does not fit" if b.stage_nodes else f"{name} n/a")
            else:
                ratio = b.iteration_s / plan.predicted.iteration_s - 1 if plan.predicted.iteration_s else 0.0
                parts.append(f"{name} {format_seconds(b.iteration_s)} ({ratio:+.1%}"
                             + (", measured)" if name in measured else ")"))
        lines.append("baselines: " + ", ".join(parts))
        if isinstance(refine, dict) and measured:
            lines.append(baseline_timed_line(refine))
        faster = [b for name, b in plan.baselines.items()
                  if b.iteration_s is not None and b.iteration_s < plan.predicted.iteration_s and name not in measured]
        if isinstance(refine, dict) and refine.get("converged") is False and faster:
            # [Note: baselines beside a re-timed step]
            lines.append("  (the baselines are priced on the stage times measured in the round kept; the step "
                         "is this plan's stages timed again, and the refinement did not settle: the timings "
                         "moved between rounds, so a faster baseline here is not measured; train both to compare)")
    return (lines + chunk_lines(plan) + recompute_lines(plan) + remade_lines(plan) + granularity_lines(plan)
            + breakdown_lines(plan) + search_lines(plan) + degree_lines(plan))


# [Note: baselines beside a re-timed step]
#
# A refinement whose cuts keep moving keeps its fastest measured round, timed once more
# for the prediction (``autopipe.refine``), and takes its baselines from the solve on that
# round's measurement. Where the timings drift between rounds (a busy host), the two
# differ by the drift: a new user's Gemma 2 plan (2026-12-07, 2 stages, three sessions on
# two cores) read 29.092 ms re-timed beside "dp 24.931 ms (-14.3%)", a model of the same
# costs that was never measured, and nothing said so. ``format_plan`` says so. Since
# 2026-12-07 ``autopipe plan`` times such baselines beside the kept cuts and keeps the
# fastest ([Note: a faster baseline timed] in ``autopipe.refine_baselines``): their entries carry
# their measured steps, marked "measured", with a line saying what was timed and which
# stages were kept; the caveat stays for a faster baseline that was not measured (one
# that could not be planned alone).


def baseline_timed_line(refine: dict[str, Any]) -> str:
    """What ``options["refine"]`` records of the baselines timed beside the kept cuts, in words."""
    def seconds(x: Any) -> str:
        return format_seconds(x) if isinstance(x, (int, float)) else "?"

    said = []
    for name, info in refine["baseline_timed"].items():
        twin = info.get("same_cuts_as") if isinstance(info, dict) else None
        if twin is not None:
            said.append(f"{name} {'that round' if twin == 'kept' else twin}'s cuts")
        elif isinstance(info, dict):
            said.append(f"{name} {seconds(info.get('step_s'))} (priced {seconds(info.get('priced_s'))})")
    against = refine.get("baseline_against")
    mine = seconds(against.get("step_s")) if isinstance(against, dict) else "?"
    kept = refine.get("baseline_kept")
    return (f"  (the refinement did not settle; timed as whole stages back to back with the cuts of its "
            f"fastest round ({mine}): {', '.join(said)}; these stages are "
            + (f"the {kept} split's)" if kept else "that round's)"))


def chunk_lines(plan: Plan) -> list[str]:
    """For stages placed several to a rank (virtual stages): which rank runs which."""
    ranks = [s.rank for s in plan.stages]
    if any(r is None for r in ranks) or ranks == list(range(plan.num_stages)):
        return []
    held: dict[int, list[int]] = {}
    for s in plan.stages:
        held.setdefault(int(s.rank or 0), []).append(s.index)
    return [f"{len(held)} ranks x {plan.num_stages // len(held)} chunks (virtual stages): "
            + "; ".join(f"rank {r} runs stages {', '.join(map(str, c))}" for r, c in sorted(held.items()))]



def recompute_lines(plan: Plan) -> list[str]:
    """Which stages recompute activations, and what it costs (none: no line)."""
    if not plan.recomputes:
        return []
    info = plan.options.get("recompute")
    mode = info.get("mode", "") if isinstance(info, dict) else ""
    without = info.get("without_s") if isinstance(info, dict) else None
    where = ", ".join(f"{len(s.recompute)} in stage {s.index}" for s in plan.stages if s.recompute)
    line = (f"recompute{f' ({mode})' if mode else ''}: blocks {where}, their forward run again in "
            f"backward (R below)")
    if mode == "auto":
        line += ("; without recomputation nothing fits" if without is None else
                 f"; without it the best plan takes {format_seconds(float(without))}")
    return [line]


def remade_lines(plan: Plan) -> list[str]:
    """Which stages make values of earlier stages again instead of receiving them, and under
    ``--remake auto`` the step of the plan it was weighed against (none of either: no line;
    [Note: values made again] in ``autopipe.trace.remade``)."""
    where = ", ".join(f"{len(s.remade)} in stage {s.index}" for s in plan.stages if s.remade)
    info = plan.options.get("remake")
    info = info if isinstance(info, dict) else {}
    step = plan.predicted.iteration_s

    def against(other: Any) -> str:
        return f"{format_seconds(float(other))} ({float(other) / step - 1:+.1%})"

    if not where:
        if info.get("remade_s") is None:
            return []
        return [f"values of no input sent: making them again where faster than a link, the best "
                f"plan takes {against(info['remade_s'])}"]
    line = (f"made again, not sent (values of no input: masks, position tables): nodes {where}, "
            f"their forward in the stage's F")
    if info.get("sent_s") is not None:
        line += f"; sending every value instead, the best plan takes {against(info['sent_s'])}"
    return [line]


def granularity_lines(plan: Plan) -> list[str]:
    """For a layer-granular plan: the layers each stage holds and what the restriction costs."""
    info = plan.options.get("granularity")
    if not isinstance(info, dict):
        return []
    count = int(info["layers"])
    per = [max(0, min(b, count + 1) - max(a, 1)) for a, b in info["stage_units"]]
    return [f"cuts between whole layers ({info['pattern']}, {count} layers; per stage "
            f"{' | '.join(map(str, per))}): {float(info['cost']) - 1:+.1%} against cutting anywhere "
            f"({format_seconds(float(info['unrestricted_s']))})"]


def breakdown_lines(plan: Plan) -> list[str]:
    """What the predicted step counts beyond the stages' compute: the loss, each stage's
    optimizer step, and the runtime's own work (where the plan was priced with them)."""
    parts = []
    loss = plan.options.get("loss")
    if isinstance(loss, dict):
        parts.append(f"loss {format_seconds(float(loss['forward_s']) + float(loss['backward_s']))} "
                     f"per micro-batch (in the last stage's times)")
    synced = _dp_allreduce(plan)
    steps = [s.optimizer_s - a for s, a in zip(plan.stages, synced)]
    if any(steps):
        parts.append("optimizer step " + " / ".join(format_seconds(x) for x in steps) + " per stage")
    if any(synced) and plan.data_parallel is not None:
        dp = plan.data_parallel
        parts.append(f"gradient all-reduce over {dp.degree} replicas at {dp.allreduce_bandwidth / 1e9:.3g} GB/s "
                     + " / ".join(format_seconds(x) for x in synced) + " per stage (before its optimizer step)")
    tied = float(plan.options.get("tied_sync_s", 0.0) or 0.0)
    if tied:
        parts.append(f"tied gradients' sum {format_seconds(tied)} per step")
    rt = plan.options.get("runtime")
    if isinstance(rt, dict) and rt:
        parts.append(f"runtime {format_seconds(float(rt.get('forward_overhead_s', 0)))} / "
                     f"{format_seconds(float(rt.get('backward_overhead_s', 0)))} per forward / "
                     f"backward action, {format_seconds(float(rt.get('send_latency_s', 0)))} per send, "
                     f"{format_seconds(float(rt.get('step_overhead_s', 0)))} per step")
    refine = plan.options.get("refine")
    if isinstance(refine, dict):
        parts.append(f"stage times re-measured as whole modules ({len(refine.get('rounds', []))} round(s))")
    if not parts:
        return ["the step counts the profiled compute only (no loss, optimizer or runtime costs)"]
    return ["the step counts, besides compute: " + "; ".join(parts)]


def search_lines(plan: Plan) -> list[str]:
    """What ``microbatches``/``schedule="auto"`` tried: one line per micro-batch count, then
    how many candidates were solved, skipped by their bound or beaten by the MIP's cutoff
    (``autopipe.partition.search``)."""
    tried = plan.options.get("search")
    if not isinstance(tried, list) or not tried:
        return []
    out = ["searched (micro-batches: predicted step per schedule; - = does not fit or torch "
           "cannot run it; >= x: cannot win, its lower bound x is at least the best step):"]
    rows: dict[int, list[str]] = {}
    for t in tried:
        mark = "*" if (t["microbatches"] == plan.microbatches and t["schedule"] == plan.schedule) else ""
        name = t["schedule"] + (f" (x{t['virtual_stages']} chunks)" if t.get("virtual_stages") else "")
        rows.setdefault(int(t["microbatches"]), []).append(f"{name} {_search_cell(t)}{mark}")
    for m, cells in rows.items():
        out.append(f"  {m:>4}: " + ", ".join(cells))
    count = {k: sum(t.get("status") == k for t in tried) for k in ("skipped", "beaten", "unsolved")}
    solved = sum(isinstance(t.get("iteration_s"), (int, float)) and t.get("status") != "beaten"
                 for t in tried)
    line = (f"  {len(tried)} candidates: {solved} solved, {count['skipped']} skipped by their lower "
            f"bound, {count['beaten']} beaten (the MIP proved none of their partitions faster), "
            f"{count['unsolved']} unsolved in their time, "
            f"{len(tried) - solved - sum(count.values())} not run or not fitting")
    lower = plan.options.get("search_lower_bound_s")
    if isinstance(lower, (int, float)) and plan.predicted.iteration_s > 0:
        gap = max(0.0, 1 - lower / plan.predicted.iteration_s)
        line += f"; every candidate's bound >= {format_seconds(lower)} (search gap {gap:.2%})"
    return [*out, line]


def _search_cell(t: dict[str, Any]) -> str:
    """One candidate of a search: its step (and gap where its MIP stopped early), or why none."""
    step, status, lower = t.get("iteration_s"), t.get("status"), t.get("lower_bound_s")
    if isinstance(step, (int, float)):
        if status == "feasible" and isinstance(lower, (int, float)) and step > 0:
            return f"{format_seconds(step)} (gap {max(0.0, 1 - lower / step):.1%})" + _retimed(t)
        return format_seconds(step) + (" (beaten)" if status == "beaten" else "") + _retimed(t)
    if status in ("skipped", "beaten") and isinstance(lower, (int, float)):
        return f">= {format_seconds(lower)}" + (" (beaten)" if status == "beaten" else "")
    if status == "unsolved":
        return "? (none found in its time)"
    return "-"


def _retimed(row: dict[str, Any]) -> str:
    """A finalist's step re-timed as whole stages ([Note: finalists re-timed] in
    ``autopipe.partition.finalists``), and the winner's timed once more; "" for the others."""
    refined, again = row.get("refined_s"), row.get("retimed_s")
    if not isinstance(refined, (int, float)):
        return ""
    more = f"; again: {format_seconds(again)}" if isinstance(again, (int, float)) else ""
    return f" (re-timed as whole stages: {format_seconds(refined)}{more})"


def _dp_allreduce(plan: Plan) -> tuple[float, ...]:
    """Per stage, the data-parallel all-reduce counted in its ``optimizer_s`` (zeros without)."""
    dp = plan.data_parallel
    return dp.allreduce_s if dp is not None and dp.allreduce_s else (0.0,) * plan.num_stages


def degree_row(row: dict[str, Any], chosen: bool = False) -> str:
    """One candidate of a data × pipeline search (``plan.options["degrees"]``), one line."""
    head = f"{'*' if chosen else ' '} {row['stages']:>3} x {row['replicas']:<3}"
    if "placement" not in row:
        return f"{head}  {row['why']}"
    what = (f"{head}  {row['placement']:<9}  {row['microbatches']:>4} x {row['microbatch_size']:<3} "
            f"{row['schedule']:<5}")
    step = row.get("iteration_s")
    if not isinstance(step, (int, float)):
        why = str(row["why"])
        return f"{what}  {why if len(why) <= 100 else why[:99] + '…'}"
    limit = row.get("memory_limit")
    memory = format_size(row["memory"]) + (f" ({row['memory'] / limit:.1%})" if limit else "")
    retimed = _retimed(row)
    return (f"{what}  {format_seconds(step):>11}  {row['samples_per_s']:>10.2f}  {memory:>20}  "
            f"{row.get('method', '')}" + (f" {retimed}" if retimed else ""))


def degree_lines(plan: Plan) -> list[str]:
    """What a data × pipeline search tried: one line per candidate, the chosen one starred."""
    rows = plan.options.get("degrees")
    info = plan.options.get("cluster")
    if not isinstance(rows, list) or not rows or not isinstance(info, dict):
        return []
    dp = plan.data_parallel
    limit = info.get("memory_limit")
    out = [f"searched {info['gpus']} GPUs ({info['gpus_per_node']} per node; "
           f"{float(info['intra_node_bandwidth']) / 1e9:.3g} GB/s in a node, "
           f"{float(info['inter_node_bandwidth']) / 1e9:.3g} GB/s between nodes), batch {info['batch_size']}, "
           f"{format_size(limit) if limit else 'unlimited memory'} per GPU; every candidate planned "
           f"with {info['screen']}, the {info['finalists']} fastest again with {info['method']}:",
           "      pp x dp   placement     m x mb  sched         step   samples/s      peak memory  method"]
    for row in rows:
        chosen = (dp is not None and "placement" in row and row["stages"] == plan.num_stages
                  and row["replicas"] == dp.degree and row["placement"] == dp.placement
                  and row["microbatches"] == plan.microbatches and row["schedule"] == plan.schedule)
        out.append("  " + degree_row(row, chosen))
    return out


def stage_table(plan: Plan) -> list[str]:
    """One row per stage, then its modules and sends."""
    cols = ("stage", "device", "nodes", "forward", "backward", "comm", "per mb", "params",
            "grads", "optim", "activ", "workspace", "step tmp", "buffers", "batch", "libs", "total", "limit")
    rows = []
    for s in plan.stages:
        m = s.memory
        rows.append((str(s.index), s.device, str(len(s.nodes)), format_seconds(s.forward_s),
                     format_seconds(s.backward_s), format_seconds(s.comm_s), format_seconds(s.time_s),
                     format_size(m.params), format_size(m.grads), format_size(m.optimizer),
                     format_size(m.activations), format_size(m.workspace), format_size(m.optimizer_step),
                     format_size(m.buffers), format_size(m.batch), format_size(m.library),
                     format_size(m.total),
                     _limit(plan, s)))
    width = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    left = {1}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, width))).rstrip()

    out = [line(cols)]
    for s, r in zip(plan.stages, rows):
        out.append(line(r))
        out.append(f"{'':>{width[0]}}  modules: {_modules(s)}")
        out.append(f"{'':>{width[0]}}  sends:   {_sends(s)}")
        if s.recompute:
            nodes = sum(len(g) for g in s.recompute)
            out.append(f"{'':>{width[0]}}  R recompute: {len(s.recompute)} blocks, {nodes} nodes, "
                       f"+{format_seconds(s.recompute_s)} per micro-batch (part of its backward)")
    return out


STEP_PARTS = ("compute", "loss", "runtime", "optimizer", "sync", "idle")


def step_parts(plan: Plan) -> list[dict[str, float]]:
    """Per stage, where its rank spends the predicted step (seconds; the parts add up to it):
    its model's compute, the loss (last stage), the runtime's own work (per action and per
    step), its optimizer step, the tied-gradient sync, and idle (the bubble: waiting on its
    neighbours)."""
    m = plan.microbatches
    loss = plan.options.get("loss")
    loss_mb = float(loss["forward_s"]) + float(loss["backward_s"]) if isinstance(loss, dict) else 0.0
    rt = plan.options.get("runtime")
    rt = rt if isinstance(rt, dict) else {}
    per_action = float(rt.get("forward_overhead_s", 0.0)) + float(rt.get("backward_overhead_s", 0.0))
    sync = float(plan.options.get("tied_sync_s", 0.0) or 0.0)
    synced = _dp_allreduce(plan)
    out = []
    for s in plan.stages:
        own_loss = m * loss_mb if s.index == plan.num_stages - 1 else 0.0
        part = {"compute": max(0.0, m * (s.forward_s + s.backward_s - per_action) - own_loss),
                "loss": own_loss, "runtime": m * per_action + float(rt.get("step_overhead_s", 0.0)),
                "optimizer": s.optimizer_s - synced[s.index], "sync": sync + synced[s.index]}
        part["idle"] = max(0.0, plan.predicted.iteration_s - sum(part.values()))
        out.append(part)
    return out


def rank_parts(plan: Plan) -> list[tuple[str, dict[str, float]]]:
    """``step_parts`` per rank: one row per stage, or, where ranks run several stages
    (virtual stages), their stages' parts summed, the per-step work and the tied-gradient
    sync once, and idle what is left of the step."""
    parts = step_parts(plan)
    held: dict[int, list[int]] = {}
    for s in plan.stages:
        held.setdefault(s.index if s.rank is None else int(s.rank), []).append(s.index)
    if all(len(c) == 1 for c in held.values()):
        return [(f"stage {i}", part) for i, part in enumerate(parts)]
    rt = plan.options.get("runtime")
    once = {"runtime": float(rt.get("step_overhead_s", 0.0)) if isinstance(rt, dict) else 0.0,
            "sync": float(plan.options.get("tied_sync_s", 0.0) or 0.0)}
    out = []
    for r, chunks in sorted(held.items()):
        part = {k: sum(parts[c][k] for c in chunks) - once.get(k, 0.0) * (len(chunks) - 1)
                for k in STEP_PARTS if k != "idle"}
        part["idle"] = max(0.0, plan.predicted.iteration_s - sum(part.values()))
        out.append((f"rank {r}", part))
    return out


def step_table(plan: Plan) -> list[str]:
    """``step_parts`` as a table, one row per rank (``rank_parts``)."""
    cols = ("per step", *STEP_PARTS, "step")
    rows = [(label, *(format_seconds(x) if x else "-" for x in (
        *(part[k] for k in STEP_PARTS), plan.predicted.iteration_s)))
        for label, part in rank_parts(plan)]
    width = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width))).rstrip()
            for r in (cols, *rows)]


def format_plan(plan: Plan) -> str:
    """The whole report: headline, the stage table, then where each rank's step goes."""
    return "\n".join([*headline(plan), "", *stage_table(plan), "", *step_table(plan)])
