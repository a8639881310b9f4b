"""The exact optimiser of the energy-aware per-layer search (issue 20, item 3).

A model has N units (layers); each unit takes exactly one of its allowed options (quant types).
An option has a ``cost`` (its predicted J/token contribution: what is minimised), a ``loss`` (its
predicted KLD contribution: the budgeted quantity; it may be zero or negative) and a
``size_bytes`` (for an optional size cap). :func:`minimise` finds the assignment of least total
cost whose total loss (plus a constant ``offset_loss``) is at most ``max_loss`` and whose total
size is at most ``max_size_bytes``: a multiple-choice knapsack, solved exactly as an integer
linear programme (``scipy.optimize.milp``, HiGHS) with one binary variable per (unit, option) and
one equality per unit. Nothing is discretised.

Exactness where the solver works with tolerances:

* each row is normalised before the solver sees it (every unit's smallest value subtracted, a
  constant since a unit takes exactly one option, then divided by the largest remainder) and
  multiplied by ``SCALE``, so that HiGHS's absolute gap and feasibility tolerances (1e-6) are
  1e-12 of the largest spread between a unit's options; the relative gap is set to 0;
* every assignment the solver returns is re-checked in Python by summing the chosen options
  exactly (``math.fsum``; sizes as integers). The loss budget holds with an absolute tolerance of
  ``REL_TOL`` times the largest of |max_loss|, |offset_loss| and the sum over units of the largest
  |loss| (what summation rounding can reach); the size cap holds exactly. An
  assignment that fails its check is excluded by a cut (its own options cannot all be chosen
  again) and the solver runs again, at most ``MAX_CUTS`` times; a last run keeps a margin of
  ``SAFE_MARGIN`` (scaled units) inside every budget.

Ties are broken lexicographically by a second solve, never by a weighted secondary objective:
:func:`minimise` first finds the least cost C, then the least loss among the assignments of cost
at most C (exactly, in Python); :func:`least_loss` the other way round. Assignments equal in both
fall to HiGHS's deterministic order: the same input gives the same answer.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mqepi.errors import MqepiError

#: Tolerance of the loss budget, relative to the magnitude of the losses (and of the budget).
REL_TOL = 1e-12
#: The largest spread of a normalised row or objective: HiGHS's absolute tolerances (1e-6) are 1e-12 of it.
SCALE = 1e6
#: How often an assignment that fails the exact check is cut off before the last, safe run.
MAX_CUTS = 20
#: The last run's margin inside every scaled budget (HiGHS's feasibility tolerance is 1e-6).
SAFE_MARGIN = 1e-4


class InfeasibleError(MqepiError):
    """No assignment meets the budgets.

    ``smallest_loss`` is the least total loss reachable (offset included; within the size cap, if
    any) and ``smallest_size_bytes`` the least total size, so that the caller can pick a budget.
    ``smallest_loss`` is None when the size cap alone cannot be met.
    """

    def __init__(self, message: str, *, smallest_loss: float | None, smallest_size_bytes: int):
        self.smallest_loss = smallest_loss
        self.smallest_size_bytes = smallest_size_bytes
        super().__init__(message)


@dataclass(frozen=True)
class Option:
    """One option of a unit: a quant type for a layer, with its predicted contributions.

    ``cost`` (J/token) is what is minimised, ``loss`` (KLD) what is budgeted, ``size_bytes`` what
    an optional cap limits. Numbers are checked and normalised (float, float, int) on creation.
    """

    label: str
    cost: float
    loss: float
    size_bytes: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise MqepiError(f"an option's label must be a non-empty string, got {self.label!r}")
        object.__setattr__(self, "cost", _finite(f"option {self.label!r}: cost", self.cost))
        object.__setattr__(self, "loss", _finite(f"option {self.label!r}: loss", self.loss))
        object.__setattr__(self, "size_bytes", _size(f"option {self.label!r}: size_bytes", self.size_bytes))


@dataclass(frozen=True)
class Solution:
    """An assignment: the chosen option's label per unit (in unit order) and its totals.

    ``cost`` and ``loss`` are exact sums (``math.fsum``) of the chosen options; ``loss`` includes
    the caller's ``offset_loss``. ``size_bytes`` is the total size.
    """

    labels: tuple[str, ...]
    cost: float
    loss: float
    size_bytes: int


def minimise(units: Sequence[Sequence[Option]], max_loss: float, *, offset_loss: float = 0.0,
             max_size_bytes: int | None = None) -> Solution:
    """The assignment of least total cost with ``offset_loss`` + total loss <= ``max_loss`` and
    total size <= ``max_size_bytes`` (no cap when None). Ties go to the least loss.

    Raises InfeasibleError, naming the smallest reachable loss (or size), when none exists.
    """
    problem = _problem(units)
    max_loss = _finite("max_loss", max_loss)
    offset_loss = _finite("offset_loss", offset_loss)
    cap = _cap(max_size_bytes)
    _check_size(problem, cap)
    limits = [_loss_limit(problem, max_loss, offset_loss), *_size_limits(problem, cap)]
    choice = _lexicographic(problem, problem.costs, problem.losses, limits)
    if choice is None:
        raise _infeasible(problem, limits[0], offset_loss, cap)
    return _solution(problem, choice, offset_loss)


def least_loss(units: Sequence[Sequence[Option]], *, max_size_bytes: int | None = None,
               offset_loss: float = 0.0) -> Solution:
    """The assignment of least total loss within the size cap; ties go to the least cost.

    Its ``loss`` (``offset_loss`` included) is the smallest budget :func:`minimise` can meet.
    Raises InfeasibleError when the size cap alone cannot be met.
    """
    problem = _problem(units)
    offset_loss = _finite("offset_loss", offset_loss)
    cap = _cap(max_size_bytes)
    _check_size(problem, cap)
    choice = _lexicographic(problem, problem.losses, problem.costs, _size_limits(problem, cap))
    if choice is None:
        raise MqepiError("the optimiser found no verified least-loss assignment although the size cap can be met")
    return _solution(problem, choice, offset_loss)


def frontier(units: Sequence[Sequence[Option]], *, max_size_bytes: int | None = None, points: int = 25,
             offset_loss: float = 0.0) -> list[Solution]:
    """The predicted cost-vs-loss Pareto frontier within the size cap.

    Exact minima (:func:`minimise`) over ``points`` evenly spaced loss budgets from the least loss
    to the loss of the cheapest assignment (both ends included), de-duplicated, sorted by loss,
    only non-dominated points (no other point has loss <= and cost <= with one strictly less).
    """
    problem = _problem(units)
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise MqepiError(f"points must be an integer of at least 2, got {points!r}")
    offset_loss = _finite("offset_loss", offset_loss)
    cap = _cap(max_size_bytes)
    low = least_loss(units, max_size_bytes=cap, offset_loss=offset_loss)
    cheapest = _lexicographic(problem, problem.costs, problem.losses, _size_limits(problem, cap))
    if cheapest is None:
        raise MqepiError("the optimiser found no verified cheapest assignment although the size cap can be met")
    high = _solution(problem, cheapest, offset_loss)
    budgets = np.linspace(low.loss, high.loss, int(points)) if high.loss > low.loss else [low.loss]
    found = {}
    for budget in budgets:
        solution = minimise(units, float(budget), offset_loss=offset_loss, max_size_bytes=cap)
        found.setdefault(solution.labels, solution)
    return _non_dominated(found.values())


def _non_dominated(solutions) -> list[Solution]:
    """The solutions no other one dominates, sorted by loss (then cost)."""
    out: list[Solution] = []
    for solution in sorted(solutions, key=lambda s: (s.loss, s.cost, s.size_bytes)):
        if not out or solution.cost < out[-1].cost:
            out.append(solution)
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _finite(name: str, value) -> float:
    """``value`` as a float; a finite real number or MqepiError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise MqepiError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _size(name: str, value) -> int:
    """``value`` as an int; a non-negative integer or MqepiError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise MqepiError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _cap(max_size_bytes) -> int | None:
    """The checked size cap; None for no cap."""
    return None if max_size_bytes is None else _size("max_size_bytes", max_size_bytes)


@dataclass(frozen=True)
class _Problem:
    """The units, flattened: option k of the flat order belongs to unit ``unit_of[k]``."""

    units: tuple[tuple[Option, ...], ...]
    options: tuple[Option, ...]
    spans: tuple[tuple[int, int], ...]  # each unit's [start, stop) in the flat order
    unit_of: np.ndarray

    @property
    def costs(self) -> tuple[float, ...]:
        """Each option's ``cost``, in the flat order."""
        return tuple(o.cost for o in self.options)

    @property
    def losses(self) -> tuple[float, ...]:
        """Each option's ``loss``, in the flat order."""
        return tuple(o.loss for o in self.options)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each option's ``size_bytes``, in the flat order."""
        return tuple(o.size_bytes for o in self.options)


def _problem(units) -> _Problem:
    """The checked, flattened units; MqepiError naming the first bad unit or option."""
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence):
        raise MqepiError(f"units must be a sequence of sequences of Option, got {type(units).__name__}")
    if not units:
        raise MqepiError("no units to assign options to")
    checked, spans, start = [], [], 0
    for u, unit in enumerate(units):
        if isinstance(unit, (str, bytes)) or not isinstance(unit, Sequence):
            raise MqepiError(f"unit {u}: expected a sequence of Option, got {type(unit).__name__}")
        if not unit:
            raise MqepiError(f"unit {u} has no options")
        for i, option in enumerate(unit):
            if not isinstance(option, Option):
                raise MqepiError(f"unit {u}, option {i}: expected an Option, got {type(option).__name__}")
        twice = sorted(label for label, n in Counter(o.label for o in unit).items() if n > 1)
        if twice:
            raise MqepiError(f"unit {u}: duplicate option labels {', '.join(twice)}")
        checked.append(tuple(unit))
        spans.append((start, start + len(unit)))
        start += len(unit)
    unit_of = np.repeat(np.arange(len(checked)), [len(unit) for unit in checked])
    return _Problem(tuple(checked), tuple(o for unit in checked for o in unit), tuple(spans), unit_of)


# ---------------------------------------------------------------------------------------------
# Budgets, checked exactly


@dataclass(frozen=True)
class _Limit:
    """A budget: ``base`` + the sum of ``values`` over the chosen options <= ``limit`` + ``tol``."""

    values: tuple[float, ...]  # per option, flat order
    base: float
    limit: float
    tol: float

    def total(self, choice: Sequence[int]) -> float:
        """The exact (correctly rounded) total of an assignment."""
        return math.fsum([self.base, *(self.values[k] for k in choice)])

    def holds(self, choice: Sequence[int]) -> bool:
        """Whether an assignment meets the budget, checked on its exact total."""
        return self.total(choice) <= self.limit + self.tol


def _magnitude(problem: _Problem, values: Sequence[float]) -> float:
    """The sum over units of the largest absolute value: the scale of any total."""
    return math.fsum(max(abs(values[k]) for k in range(a, b)) for a, b in problem.spans)


def _loss_limit(problem: _Problem, max_loss: float, offset_loss: float) -> _Limit:
    """The loss budget, with its tolerance of REL_TOL times the magnitude of its totals."""
    tol = REL_TOL * max(abs(max_loss), abs(offset_loss), _magnitude(problem, problem.losses))
    return _Limit(problem.losses, offset_loss, max_loss, tol)


def _size_limits(problem: _Problem, cap: int | None) -> list[_Limit]:
    """The size cap as a budget (exact: no tolerance), or none."""
    return [] if cap is None else [_Limit(problem.sizes, 0.0, cap, 0.0)]


def _smallest_size(problem: _Problem) -> tuple[int, tuple[int, ...]]:
    """The least total size and an assignment reaching it (each unit's smallest option)."""
    sizes = problem.sizes
    choice = tuple(min(range(a, b), key=lambda k: sizes[k]) for a, b in problem.spans)
    return sum(sizes[k] for k in choice), choice


def _check_size(problem: _Problem, cap: int | None) -> None:
    """InfeasibleError when no assignment fits the size cap."""
    smallest, choice = _smallest_size(problem)
    if cap is not None and smallest > cap:
        raise InfeasibleError(
            f"no assignment fits max size {cap} bytes: the smallest size with the allowed options is "
            f"{smallest} bytes ({_describe(problem, choice)})", smallest_loss=None, smallest_size_bytes=smallest)


def _infeasible(problem: _Problem, loss: _Limit, offset_loss: float, cap: int | None) -> MqepiError:
    """The error for a loss budget no assignment meets (within a size cap that can be met),
    naming the smallest reachable loss."""
    choice = _lexicographic(problem, problem.losses, problem.costs, _size_limits(problem, cap))
    if choice is None or loss.holds(choice):
        return MqepiError(f"the optimiser found no verified assignment for max loss {loss.limit!r} although one exists")
    least = _solution(problem, choice, offset_loss)
    within = "" if cap is None else f" within max size {cap} bytes"
    return InfeasibleError(
        f"no assignment meets max loss {_shown(loss.limit)}: the smallest predicted loss with the allowed options"
        f"{within} is {_shown(least.loss, REL_TOL * _magnitude(problem, problem.losses))} ({_describe(problem, choice)})",
        smallest_loss=least.loss, smallest_size_bytes=_smallest_size(problem)[0])


def _shown(value: float, tol: float = 0.0) -> str:
    """``value`` in the fewest significant digits (at least 6) whose number, within ``tol``, is not
    below it: the shown number is a budget that ``value`` meets."""
    for digits in range(6, 18):
        text = f"{value:.{digits}g}"
        if float(text) + tol >= value:
            return text
    return repr(value)


def _describe(problem: _Problem, choice: Sequence[int]) -> str:
    """An assignment in words: 'every unit at Q8_0' or 'Q8_0 x 30, Q6_K x 2'."""
    counts = Counter(problem.options[k].label for k in choice)
    if len(counts) == 1:
        return f"every unit at {next(iter(counts))}"
    return ", ".join(f"{label} x {n}" for label, n in counts.most_common())


def _solution(problem: _Problem, choice: Sequence[int], offset_loss: float) -> Solution:
    """The Solution of an assignment (flat option index per unit), its totals summed exactly."""
    chosen = [problem.options[k] for k in choice]
    return Solution(labels=tuple(o.label for o in chosen), cost=math.fsum(o.cost for o in chosen),
                    loss=math.fsum([offset_loss, *(o.loss for o in chosen)]),
                    size_bytes=sum(o.size_bytes for o in chosen))


# ---------------------------------------------------------------------------------------------
# The integer programme


def _lexicographic(problem: _Problem, first: Sequence[float], second: Sequence[float],
                   limits: Sequence[_Limit]) -> tuple[int, ...] | None:
    """The assignment least in ``first``, then in ``second`` among those no greater in ``first``
    (checked exactly); None when no assignment meets ``limits``."""
    choice = _solve(problem, first, limits)
    if choice is None:
        return None
    best = math.fsum(first[k] for k in choice)
    tie = _solve(problem, second, [*limits, _Limit(tuple(first), 0.0, best, 0.0)])
    return choice if tie is None else tie


def _normalised(problem: _Problem, values: Sequence[float]) -> tuple[np.ndarray, float, float]:
    """``values`` as the solver sees them: less each unit's smallest value, in steps of the largest
    remainder / ``SCALE``. Returns the row, the sum of the units' smallest values and the step
    (what maps a budget onto the row: (budget - smallest) / step)."""
    v = np.asarray(values, dtype=float)
    smallest = np.array([v[a:b].min() for a, b in problem.spans])
    reduced = v - smallest[problem.unit_of]
    largest = float(reduced.max())
    step = (largest if largest > 0 else 1.0) / SCALE
    return reduced / step, math.fsum(smallest), step


def _solve(problem: _Problem, objective: Sequence[float], limits: Sequence[_Limit]) -> tuple[int, ...] | None:
    """The flat option index per unit minimising ``objective`` under ``limits``, every limit
    re-checked exactly; None when the solver finds none or none verifies."""
    c = _normalised(problem, objective)[0]
    rows, upper = [], []
    for limit in limits:
        row, smallest, step = _normalised(problem, limit.values)
        rows.append(row)
        upper.append((limit.limit + limit.tol - limit.base - smallest) / step)
    cuts: list[tuple[int, ...]] = []
    for attempt in range(MAX_CUTS + 1):
        margin = SAFE_MARGIN if attempt == MAX_CUTS else 0.0
        choice = _milp(problem, c, rows, np.asarray(upper) - margin, cuts)
        if choice is None or all(limit.holds(choice) for limit in limits):
            return choice
        cuts.append(choice)
    return None


@contextlib.contextmanager
def _stdout_to_stderr():
    """File descriptor 1 pointed at 2 for the block (C and C++ libraries write to the descriptor,
    not to ``sys.stdout``), restored afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _milp(problem: _Problem, c: np.ndarray, rows: list[np.ndarray], upper: np.ndarray,
          cuts: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """One HiGHS solve: one binary per option, one option per unit, ``rows`` <= ``upper``, and no
    assignment of ``cuts`` again. The chosen option per unit, or None when infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # scipy is heavy: only a solve needs it

    n, units = len(c), len(problem.spans)
    one_each = np.zeros((units, n))
    for u, (a, b) in enumerate(problem.spans):
        one_each[u, a:b] = 1.0
    constraints = [LinearConstraint(one_each, 1.0, 1.0)]
    if rows:
        constraints.append(LinearConstraint(np.vstack(rows), -np.inf, upper))
    if cuts:
        excluded = np.zeros((len(cuts), n))
        for i, choice in enumerate(cuts):
            excluded[i, list(choice)] = 1.0
        constraints.append(LinearConstraint(excluded, -np.inf, units - 1))
    with _stdout_to_stderr():  # HiGHS's C++ sometimes prints a line of its own: never into -f json
        result = milp(c, integrality=np.ones(n), bounds=Bounds(0.0, 1.0), constraints=constraints,
                      options={"mip_rel_gap": 0.0})
    if result.status == 2 or (result.status == 4 and "infeasible" in result.message.lower()):
        return None
    if result.status != 0 or result.x is None:
        raise MqepiError(f"the optimiser failed: {result.message}")
    return tuple(a + int(np.argmax(result.x[a:b])) for a, b in problem.spans)
