"""HiGHS run in a process of its own, killed when it overruns its deadline.

[Note: a solver held to its deadline]

HiGHS 1.16 does not always keep its time limit. In the suite's zoo job (2026-12-03) a
tie-breaking solve of T5Gemma's 2-stage plan, asked for 60 s, was still running after 30
minutes: the presolve of a RENS sub-MIP looped in ``HPresolve::strengthenInequalities``,
whose inner loop checks no limit (HiGHS issue 2226 reports its time limit ignored elsewhere
too; ``NO_PROBING`` in ``_solvers`` was an earlier case). A C++ loop cannot be interrupted
from Python, nor a thread killed, so HiGHS runs in a process of its own
(``_highs_worker.py``, started by path on the first solve: highspy and the standard library
only, a fraction of a second), which this process sends each model as arrays and waits on
until the deadline. A worker that has not answered by then is killed, and the next solve
starts a new one; the caller answers its own way (``_solvers.solve`` asks CBC, whose limit
holds; ``windows`` gives up a bound). HiGHS never runs in the planner's process.

A forked child per solve was tried first: it needs no serialising, but forking a process
with torch and a model in memory cost 31 ms a call, and the partition tests took 4 min 55 s
instead of 1 min 8 s (3 min 23 s of it in the kernel). Sending the arrays costs what PuLP's
own ``buildSolverModel`` cost (the same loop over the model), plus a pickle.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulp

from autopipe.partition._highs_worker import read_frame, write_frame

WORKER = Path(__file__).with_name("_highs_worker.py")


class Overran(Exception):
    """HiGHS did not answer within its deadline; its process was killed."""


class _Worker:
    """One HiGHS process, started on first use."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.owner = os.getpid()

    def ask(self, request: dict[str, Any], seconds: float) -> dict[str, Any]:
        if self.owner != os.getpid():  # a forked child: the worker is its parent's
            self.proc, self.owner = None, os.getpid()
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        answered = False
        try:
            write_frame(proc.stdin, request)
            if os.name == "posix":  # a deadline needs select on the pipe
                ready, _, _ = select.select([proc.stdout], [], [], None if math.isinf(seconds) else seconds)
                if not ready:
                    raise Overran(f"no answer within {seconds:.0f} s")
            reply = read_frame(proc.stdout)
            answered = reply is not None
        except (BrokenPipeError, OSError) as e:
            raise RuntimeError(f"the HiGHS process failed: {e}") from e
        finally:
            if not answered:  # overran, died, or interrupted here (Ctrl-C): start anew next time
                self.close()
        if not answered:
            raise RuntimeError("the HiGHS process ended without an answer")
        assert isinstance(reply, dict)
        return reply

    def close(self) -> None:
        if self.proc is not None and self.owner == os.getpid():
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_WORKER = _Worker()
atexit.register(_WORKER.close)


def run(prob: pulp.LpProblem, options: dict[str, Any], warm: dict[str, float] | None,
        seconds: float) -> dict[str, Any]:
    """HiGHS's answer for ``prob`` (the worker's reply; where it has a solution, each
    variable's ``varValue`` is set, as PuLP's own solve sets it), from a process killed
    after ``seconds`` ([Note: a solver held to its deadline]).

    Raises:
        Overran: no answer within ``seconds``.
        RuntimeError: the worker failed (its reason).
    """
    variables = prob.variables()
    request = {"model": _arrays(prob, variables), "options": options,
               "warm": [float(warm.get(v.name, 0.0)) for v in variables] if warm else None}
    reply = _WORKER.ask(request, seconds)
    if "error" in reply:
        raise RuntimeError(f"HiGHS failed: {reply['error']}")
    for v, x in zip(variables, reply["values"]):
        v.varValue = x
    return reply


def _arrays(prob: pulp.LpProblem, variables: list[pulp.LpVariable]) -> dict[str, Any]:
    """``prob`` as HiGHS's arrays (a minimisation; rows in CSR form), as PuLP's
    ``HiGHS.buildSolverModel`` makes it."""
    sign = -1.0 if prob.sense == pulp.LpMaximize else 1.0
    index = {v.name: i for i, v in enumerate(variables)}
    inf = math.inf
    model: dict[str, Any] = {
        "col_cost": [sign * float(prob.objective.get(v, 0.0)) for v in variables],
        "col_lower": [-inf if v.lowBound is None else float(v.lowBound) for v in variables],
        "col_upper": [inf if v.upBound is None else float(v.upBound) for v in variables],
        "integer": [v.cat == pulp.LpInteger for v in variables],
        "offset": sign * float(prob.objective.constant),
        "row_lower": [], "row_upper": [], "start": [0], "index": [], "value": []}
    rows = prob.constraints  # a mapping before PuLP 3.3, which deprecates reading it as one
    for c in rows() if callable(rows) else rows.values():
        for v, a in c.items():
            if a != 0:
                model["index"].append(index[v.name])
                model["value"].append(float(a))
        model["start"].append(len(model["index"]))
        lb, ub = c.getLb(), c.getUb()
        model["row_lower"].append(-inf if lb is None else float(lb))
        model["row_upper"].append(inf if ub is None else float(ub))
    return model
