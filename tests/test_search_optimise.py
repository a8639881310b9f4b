"""The exact optimiser of the per-layer search (mqepi/search/optimise.py) against brute force
(every assignment of small random instances), an exact dynamic programme over integer losses on
a model-sized instance, and hand-made cases whose optima are known."""

from __future__ import annotations

import math
import random
from itertools import product

import pytest

from mqepi.errors import MqepiError
from mqepi.search import optimise
from mqepi.search.optimise import InfeasibleError, Option, Solution, frontier, least_loss, minimise

SEEDS = range(30)


# ---------------------------------------------------------------------------------------------
# Brute force


def _totals(combo, offset=0.0):
    return (math.fsum(o.cost for o in combo), math.fsum([offset, *(o.loss for o in combo)]),
            sum(o.size_bytes for o in combo))


def _assignments(units, offset=0.0, cap=None):
    """(cost, loss, size, labels) of every assignment within the size cap."""
    out = []
    for combo in product(*units):
        cost, loss, size = _totals(combo, offset)
        if cap is None or size <= cap:
            out.append((cost, loss, size, tuple(o.label for o in combo)))
    return out


def _brute(units, max_loss, offset=0.0, cap=None):
    """The least cost, and the least loss at that cost, of the assignments meeting the budgets; None if none."""
    feasible = [a for a in _assignments(units, offset, cap) if a[1] <= max_loss]
    if not feasible:
        return None
    cost = min(a[0] for a in feasible)
    return cost, min(a[1] for a in feasible if a[0] <= cost + 1e-9)


def _random_instance(seed, n_units=6, n_options=3):
    rng = random.Random(seed)
    units = [[Option(f"T{i}", rng.uniform(0.0, 1.0), rng.uniform(-0.2, 1.0), rng.randint(1, 50)) for i in range(n_options)]
             for _ in range(n_units)]
    return rng, units


def _check_solution(units, solution, max_loss, offset=0.0, cap=None):
    """The solution's totals are those of its labels, and it meets the budgets."""
    combo = [next(o for o in unit if o.label == label) for unit, label in zip(units, solution.labels, strict=True)]
    assert (solution.cost, solution.loss, solution.size_bytes) == _totals(combo, offset)
    assert solution.loss <= max_loss + 1e-12
    assert cap is None or solution.size_bytes <= cap


def _random_case(seed, capped):
    """6 units x 3 options, a budget, an offset (half the time) and a size cap (if ``capped``)."""
    rng, units = _random_instance(seed)
    offset = 0.0 if seed % 2 else rng.uniform(-1.0, 1.0)
    smallest_size = sum(min(o.size_bytes for o in unit) for unit in units)
    largest_size = sum(max(o.size_bytes for o in unit) for unit in units)
    cap = None
    if capped:  # every tenth instance cannot meet its cap
        cap = smallest_size - 1 if seed % 10 == 3 else rng.randint(smallest_size, largest_size)
    low = math.fsum([offset, *(min(o.loss for o in unit) for unit in units)])
    high = math.fsum([offset, *(max(o.loss for o in unit) for unit in units)])
    # every sixth budget is below the least loss; the others may still be out of reach under the cap
    max_loss = low - 0.05 if seed % 6 == 0 else rng.uniform(low, high)
    return units, max_loss, offset, cap


@pytest.mark.parametrize("capped", [False, True], ids=["no-cap", "cap"])
@pytest.mark.parametrize("seed", SEEDS)
def test_minimise_matches_brute_force(seed, capped):
    units, max_loss, offset, cap = _random_case(seed, capped)
    smallest_size = sum(min(o.size_bytes for o in unit) for unit in units)
    want = _brute(units, max_loss, offset, cap)
    if want is None:
        with pytest.raises(InfeasibleError) as raised:
            minimise(units, max_loss, offset_loss=offset, max_size_bytes=cap)
        if cap is not None and smallest_size > cap:
            assert raised.value.smallest_loss is None
            assert raised.value.smallest_size_bytes == smallest_size
        else:
            assert raised.value.smallest_loss == pytest.approx(min(a[1] for a in _assignments(units, offset, cap)), abs=1e-12)
        return
    solution = minimise(units, max_loss, offset_loss=offset, max_size_bytes=cap)
    _check_solution(units, solution, max_loss, offset, cap)
    assert solution.cost == pytest.approx(want[0], abs=1e-9)
    assert solution.loss == pytest.approx(want[1], abs=1e-9)  # the tie-break: least loss at the least cost


def test_the_random_cases_cover_every_outcome():
    """The brute-force comparison above sees feasible and infeasible budgets, with and without a cap,
    a cap that cannot be met and a budget out of reach only under its cap (else it proves little)."""
    outcomes = set()
    for seed, capped in product(SEEDS, (False, True)):
        units, max_loss, offset, cap = _random_case(seed, capped)
        feasible = _brute(units, max_loss, offset, cap) is not None
        outcomes.add((capped, feasible))
        if capped and not feasible:
            smallest_size = sum(min(o.size_bytes for o in unit) for unit in units)
            outcomes.add("cap unmet" if smallest_size > cap else "loss unmet under the cap"
                         if _brute(units, max_loss, offset) is not None else "loss unmet")
    assert outcomes == {(False, False), (False, True), (True, False), (True, True), "cap unmet",
                        "loss unmet under the cap", "loss unmet"}


@pytest.mark.parametrize("seed", range(4))
def test_least_loss_matches_brute_force(seed):
    rng, units = _random_instance(100 + seed)
    cap = rng.randint(sum(min(o.size_bytes for o in u) for u in units), sum(max(o.size_bytes for o in u) for u in units))
    for size_cap in (None, cap):
        everything = _assignments(units, 0.25, size_cap)
        loss = min(a[1] for a in everything)
        solution = least_loss(units, max_size_bytes=size_cap, offset_loss=0.25)
        _check_solution(units, solution, loss, 0.25, size_cap)
        assert solution.loss == pytest.approx(loss, abs=1e-12)
        assert solution.cost == pytest.approx(min(a[0] for a in everything if a[1] <= loss + 1e-12), abs=1e-9)


def test_minimise_is_exact_on_a_model_sized_instance():
    """40 layers x 8 types (8**40 assignments): integer losses make an exact dynamic programme over
    the total loss possible; the optimiser must reach its minimum for every budget."""
    rng = random.Random(7)
    units = [[Option(f"T{i}", rng.uniform(0.0, 1.0), rng.randint(0, 20), rng.randint(1, 9)) for i in range(8)]
             for _ in range(40)]
    cheapest = {0: 0.0}  # total loss -> least cost
    for unit in units:
        step: dict[int, float] = {}
        for loss, cost in cheapest.items():
            for o in unit:
                key = loss + int(o.loss)
                step[key] = min(step.get(key, math.inf), cost + o.cost)
        cheapest = step
    least = min(cheapest)
    for max_loss in (least, least + 1, 100, 200, 400, 800):
        solution = minimise(units, max_loss)
        _check_solution(units, solution, max_loss)
        assert solution.cost == pytest.approx(min(c for loss, c in cheapest.items() if loss <= max_loss), abs=1e-9)
    with pytest.raises(InfeasibleError, match=f"is {least} "):
        minimise(units, least - 1)


# ---------------------------------------------------------------------------------------------
# Hand-made cases


def _upgrade_units(savings, extra_costs):
    """Units of two options: Q4 (cost 1, loss 0.3) and Q8, saving ``saving`` loss for ``extra`` cost."""
    return [[Option("Q4", 1.0, 0.3), Option("Q8", 1.0 + extra, 0.3 - saving)]
            for saving, extra in zip(savings, extra_costs, strict=True)]


def test_a_budget_one_upgrade_short_upgrades_the_cheapest_unit_per_loss_saved():
    # cost per loss saved: 5, 3, 2, 4 -> unit 2 (also the cheapest upgrade in all)
    units = _upgrade_units([0.1, 0.2, 0.15, 0.25], [0.5, 0.6, 0.3, 1.0])
    solution = minimise(units, 1.2 - 0.1)
    assert solution.labels == ("Q4", "Q4", "Q8", "Q4")
    assert solution.cost == pytest.approx(4.3)
    assert solution.loss == pytest.approx(1.05)
    # saving 0.3 needs two upgrades: units 1 and 2 (0.35 for 0.9) beat 0+1 (0.3 for 1.1) and 2+3 (0.4 for 1.3)
    assert minimise(units, 1.2 - 0.3).labels == ("Q4", "Q8", "Q8", "Q4")
    assert minimise(units, 1.2).labels == ("Q4",) * 4  # no budget pressure: the cheapest
    assert minimise(units, 1.2 - 0.7).labels == ("Q8",) * 4  # all upgrades save exactly 0.7


def test_the_optimum_is_not_the_greedy_by_cost_per_loss_saved():
    # saving 0.2 needed. Cost per loss saved: unit 0 1.0, unit 1 1.5, unit 2 2.5. Greedy takes unit 0,
    # then unit 2 for the rest (0.35 in all); unit 1 alone saves 0.2 for 0.3.
    units = _upgrade_units([0.1, 0.2, 0.1], [0.1, 0.3, 0.25])
    assert minimise(units, 0.9 - 0.2).labels == ("Q4", "Q8", "Q4")


def test_negative_losses_pay_for_cheaper_layers_elsewhere():
    units = [
        [Option("Q2_K", 1.0, 0.5), Option("Q4_K_M", 3.0, 0.1)],
        [Option("Q4_K_M", 2.0, 0.1), Option("F16", 3.0, -0.2)],  # F16 does better than the reference
    ]
    # (cost, loss): Q2_K+Q4_K_M (3, 0.6), Q2_K+F16 (4, 0.3), Q4_K_M+Q4_K_M (5, 0.2), Q4_K_M+F16 (6, -0.1)
    assert minimise(units, 0.35).labels == ("Q2_K", "F16")
    assert minimise(units, 0.25).labels == ("Q4_K_M", "Q4_K_M")
    assert minimise(units, 0.0).labels == ("Q4_K_M", "F16")
    assert minimise(units, -0.1).loss == pytest.approx(-0.1)
    with pytest.raises(InfeasibleError, match=r"is -0\.1 \(Q4_K_M x 1, F16 x 1\)"):
        minimise(units, -0.2)


def test_offset_loss_is_added_to_the_total_and_to_the_budget():
    units = _upgrade_units([0.1, 0.2], [0.5, 0.6])
    plain = minimise(units, 0.5)
    shifted = minimise(units, 0.5 + 0.25, offset_loss=0.25)
    assert shifted.labels == plain.labels == ("Q8", "Q4")
    assert shifted.loss == pytest.approx(plain.loss + 0.25)
    assert minimise(units, 0.5, offset_loss=0.15).labels == ("Q8", "Q8")  # saves 0.25 or more


def test_the_size_cap_forces_smaller_options():
    units = [[Option("Q8_0", 1.0, 0.1, 800), Option("Q4_K_M", 1.5, 0.3, 450)] for _ in range(3)]
    assert minimise(units, 10.0).labels == ("Q8_0",) * 3
    capped = minimise(units, 10.0, max_size_bytes=2 * 800 + 450)
    assert sorted(capped.labels) == ["Q4_K_M", "Q8_0", "Q8_0"] and capped.size_bytes == 2050
    assert minimise(units, 10.0, max_size_bytes=3 * 450).labels == ("Q4_K_M",) * 3


def test_a_budget_met_exactly_is_met():
    units = _upgrade_units([0.1, 0.2], [0.5, 0.6])
    least = least_loss(units)
    assert minimise(units, least.loss) == least
    assert minimise(units, 0.4).labels == ("Q4", "Q8")  # loss exactly 0.4


def test_ties_in_cost_go_to_the_least_loss_whatever_the_order():
    for first, second in [(Option("A", 1.0, 0.5), Option("B", 1.0, 0.2)), (Option("B", 1.0, 0.2), Option("A", 1.0, 0.5))]:
        units = [[first, second], [Option("C", 2.0, 0.0)]]
        assert minimise(units, 5.0).labels == ("B", "C")
    # ... but never at a cost: 1e-9 cheaper wins over any loss
    units = [[Option("A", 1.0, 0.5), Option("B", 1.0 + 1e-9, 0.0)]]
    assert minimise(units, 1.0).labels == ("A",)
    # least_loss breaks its ties by cost
    units = [[Option("A", 2.0, 0.1), Option("B", 1.0, 0.1), Option("C", 0.5, 0.4)]]
    assert least_loss(units).labels == ("B",)


def test_equal_options_give_the_same_answer_every_time():
    units = [[Option(label, 1.0, 0.1, 10) for label in ("X", "Y", "Z")] for _ in range(5)]
    answers = {minimise(units, 1.0).labels for _ in range(5)}
    assert len(answers) == 1


def test_small_losses_and_large_sizes_are_solved_as_well_as_unit_ones():
    """KLD contributions near 1e-6 and sizes near 1e9 bytes: the rows are normalised for the solver."""
    for seed in range(5):
        rng, units = _random_instance(200 + seed)
        scaled = [[Option(o.label, o.cost * 1e-3, o.loss * 1e-6, o.size_bytes * 10**8) for o in unit] for unit in units]
        max_loss = rng.uniform(0.5, 2.0)
        cap = sum(max(o.size_bytes for o in unit) for unit in units) * 3 // 4
        want = _brute(units, max_loss, cap=cap)
        if want is None:
            continue
        solution = minimise(scaled, max_loss * 1e-6, max_size_bytes=cap * 10**8)
        _check_solution(scaled, solution, max_loss * 1e-6, cap=cap * 10**8)
        assert solution.cost == pytest.approx(want[0] * 1e-3, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Infeasible budgets


def test_an_unreachable_budget_names_the_smallest_loss_and_its_assignment():
    units = [[Option("Q4_K_M", 1.0, 0.003), Option("Q8_0", 2.0, 0.0014)] for _ in range(3)]
    with pytest.raises(InfeasibleError) as raised:
        minimise(units, 0.001)
    assert str(raised.value) == ("no assignment meets max loss 0.001: the smallest predicted loss with the allowed options "
                                 "is 0.0042 (every unit at Q8_0)")
    assert raised.value.smallest_loss == pytest.approx(0.0042)
    assert raised.value.smallest_size_bytes == 0


def test_the_smallest_loss_under_a_cap_is_named_with_the_cap():
    units = [[Option("Q8_0", 2.0, 0.1, 800), Option("Q4_K_M", 1.0, 0.3, 450)] for _ in range(3)]
    with pytest.raises(InfeasibleError, match=r"within max size 2050 bytes is 0\.5 \(Q8_0 x 2, Q4_K_M x 1\)"):
        minimise(units, 0.4, max_size_bytes=2050)


def test_the_smallest_loss_shown_is_a_budget_that_works():
    rng = random.Random(3)
    units = [[Option(f"T{i}", rng.random(), rng.random() / 3) for i in range(3)] for _ in range(7)]
    with pytest.raises(InfeasibleError) as raised:
        minimise(units, 0.0)
    shown = str(raised.value).split(" is ")[1].split(" ")[0]
    assert float(shown) == pytest.approx(raised.value.smallest_loss, rel=1e-5)
    assert minimise(units, float(shown)).loss == pytest.approx(raised.value.smallest_loss)


def test_an_unreachable_size_cap_names_the_smallest_size():
    units = [[Option("Q8_0", 2.0, 0.1, 800), Option("Q4_K_M", 1.0, 0.3, 450)] for _ in range(2)]
    message = (r"no assignment fits max size 899 bytes: the smallest size with the allowed options is 900 bytes "
               r"\(every unit at Q4_K_M\)")
    for call in (lambda: minimise(units, 5.0, max_size_bytes=899), lambda: least_loss(units, max_size_bytes=899),
                 lambda: frontier(units, max_size_bytes=899)):
        with pytest.raises(InfeasibleError, match=message) as raised:
            call()
        assert raised.value.smallest_loss is None and raised.value.smallest_size_bytes == 900


# ---------------------------------------------------------------------------------------------
# The frontier


@pytest.mark.parametrize("seed", range(6))
def test_the_frontier_is_brute_force_optimal_sorted_and_non_dominated(seed):
    rng, units = _random_instance(300 + seed, n_units=5, n_options=4)
    offset = rng.uniform(-0.5, 0.5)
    cap = None if seed % 2 else sum(max(o.size_bytes for o in unit) for unit in units) * 2 // 3
    points = frontier(units, max_size_bytes=cap, points=12, offset_loss=offset)
    everything = _assignments(units, offset, cap)
    assert 2 <= len(points) <= 12
    for point in points:
        _check_solution(units, point, point.loss, offset, cap)
        assert point.cost == pytest.approx(_brute(units, point.loss, offset, cap)[0], abs=1e-9)
        assert not [a for a in everything if a[1] <= point.loss and a[0] < point.cost - 1e-9]
    assert all(a.loss < b.loss and a.cost > b.cost for a, b in zip(points, points[1:]))
    assert points[0].loss == pytest.approx(min(a[1] for a in everything), abs=1e-12)
    assert points[-1].cost == pytest.approx(min(a[0] for a in everything), abs=1e-9)


def test_a_frontier_of_one_point_when_the_cheapest_is_also_the_least_loss():
    units = [[Option("good", 1.0, 0.1), Option("bad", 2.0, 0.2)] for _ in range(3)]
    assert frontier(units) == [Solution(("good",) * 3, 3.0, math.fsum([0.1] * 3), 0)]


def test_a_frontier_of_two_points_is_its_two_ends():
    _, units = _random_instance(400, n_units=6, n_options=4)
    low = least_loss(units)
    cheapest = min(_assignments(units))
    assert [p.labels for p in frontier(units, points=2)] == [low.labels, cheapest[3]]


# ---------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Option("Q4_K_M", math.nan, 0.1), r"option 'Q4_K_M': cost must be a finite number, got nan"),
    (lambda: Option("Q4_K_M", 1.0, math.inf), r"option 'Q4_K_M': loss must be a finite number, got inf"),
    (lambda: Option("Q4_K_M", 1.0, 0.1, -5), r"option 'Q4_K_M': size_bytes must be a non-negative integer, got -5"),
    (lambda: Option("Q4_K_M", 1.0, 0.1, 2.5), r"size_bytes must be a non-negative integer, got 2.5"),
    (lambda: Option("", 1.0, 0.1), r"label must be a non-empty string"),
    (lambda: Option("Q4_K_M", "1", 0.1), r"cost must be a finite number, got '1'"),
])
def test_bad_options_are_refused(make, message):
    with pytest.raises(MqepiError, match=message):
        make()


GOOD = [Option("Q4_K_M", 1.0, 0.1, 10), Option("Q8_0", 2.0, 0.0, 20)]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: minimise([], 1.0), r"no units to assign options to"),
    (lambda: minimise([GOOD, []], 1.0), r"unit 1 has no options"),
    (lambda: minimise([GOOD, [GOOD[0], Option("Q8_0", 3, 0), GOOD[0]]], 1.0), r"unit 1: duplicate option labels Q4_K_M"),
    (lambda: minimise([GOOD, [GOOD[0], ("Q8_0", 2.0, 0.0)]], 1.0), r"unit 1, option 1: expected an Option, got tuple"),
    (lambda: minimise([GOOD, "Q8_0"], 1.0), r"unit 1: expected a sequence of Option, got str"),
    (lambda: minimise({0: GOOD}, 1.0), r"units must be a sequence"),
    (lambda: minimise([GOOD], math.nan), r"max_loss must be a finite number, got nan"),
    (lambda: minimise([GOOD], 1.0, offset_loss=math.inf), r"offset_loss must be a finite number, got inf"),
    (lambda: minimise([GOOD], 1.0, max_size_bytes=-1), r"max_size_bytes must be a non-negative integer, got -1"),
    (lambda: least_loss([GOOD], max_size_bytes=10.5), r"max_size_bytes must be a non-negative integer, got 10.5"),
    (lambda: frontier([GOOD], points=1), r"points must be an integer of at least 2, got 1"),
    (lambda: frontier([[]]), r"unit 0 has no options"),
])
def test_bad_problems_are_refused(call, message):
    with pytest.raises(MqepiError, match=message):
        call()


def test_an_assignment_within_the_solvers_tolerance_but_over_budget_is_cut_off(monkeypatch):
    """With the rows unscaled HiGHS accepts a budget exceeded by 1e-8 (its tolerance is 1e-6): the
    exact re-check must refuse that assignment and solve again without it."""
    monkeypatch.setattr(optimise, "SCALE", 1.0)
    seen = []
    solve_once = optimise._milp
    monkeypatch.setattr(optimise, "_milp", lambda *args: seen.append(solve_once(*args)) or seen[-1])
    units = [[Option("cheap", 0.0, 1.0), Option("dear", 1.0, 0.0)], [Option("only", 0.0, 0.0)]]
    assert minimise(units, 1.0 - 1e-8).labels == ("dear", "only")
    assert seen[0] == (0, 2)  # the solver's first answer: "cheap", 1e-8 over
