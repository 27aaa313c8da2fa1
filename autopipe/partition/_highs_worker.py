"""The HiGHS solver process: reads models from stdin, answers on stdout, until stdin closes.

Run by path (``python _highs_worker.py``), not as part of the package: it imports highspy
and the standard library only, so it starts in a fraction of a second and holds none of
the planner's memory ([Note: a solver held to its deadline] in ``autopipe.partition._highs``).

Each request and answer is a pickled dict behind an 8-byte length. A request holds the
model as arrays (``model``: columns with costs, bounds and integrality; rows in CSR form;
the objective's constant) and ``options`` and ``warm`` (column values or None); the answer
holds ``status`` (``HighsModelStatus`` as an int), ``has_solution``, ``bound``,
``objective`` and ``values`` (column values).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run by path: this folder's modules must not shadow any others

import pickle
import struct
from typing import IO, Any

_LENGTH = struct.Struct("<Q")


def read_frame(stream: IO[bytes]) -> Any:
    """The next pickled object on ``stream``; None at its end."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    return pickle.loads(stream.read(size))


def write_frame(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def solve(request: dict[str, Any]) -> dict[str, Any]:
    """HiGHS's answer for one request (see the module's docstring)."""
    import highspy

    m = request["model"]
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    for key, value in request["options"].items():
        h.setOptionValue(key, value)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(m["col_cost"]), len(m["row_lower"])
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = m["col_cost"], m["col_lower"], m["col_upper"]
    lp.row_lower_, lp.row_upper_ = m["row_lower"], m["row_upper"]
    lp.offset_ = m["offset"]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m["start"], m["index"], m["value"]
    if any(m["integer"]):
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in m["integer"]]
    h.passModel(lp)
    if request["warm"] is not None:
        sol = highspy.HighsSolution()
        sol.col_value = request["warm"]
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    return {"status": int(h.getModelStatus()), "has_solution": has_solution,
            "bound": float(info.mip_dual_bound), "objective": float(info.objective_function_value),
            "values": list(h.getSolution().col_value) if has_solution else []}


def main() -> None:
    # answers go to a private copy of stdout; HiGHS's own C++ output goes to stderr
    answers: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while (request := read_frame(requests)) is not None:
        try:
            reply: Any = solve(request)
        except Exception as e:  # the planner falls back to CBC and says why
            reply = {"error": f"{type(e).__name__}: {e}"}
        write_frame(answers, reply)


if __name__ == "__main__":
    main()
