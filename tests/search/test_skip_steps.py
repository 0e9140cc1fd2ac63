"""search_skipped_steps / spread_skips: the local search over step-skip sets (pure: a toy score)."""

import pytest

from diffusion_accel.search.skip_steps import search_skipped_steps, spread_skips


def test_spread_skips_keeps_first_and_last_step():
    assert spread_skips(20, 10) == (1, 3, 5, 7, 9, 10, 12, 14, 16, 18)  # computes 0, 2, 4, 6, 8, 11, ..., 19
    skipped = spread_skips(20, 14)
    assert len(skipped) == 14 and 0 not in skipped and 19 not in skipped
    assert spread_skips(5, 4) == (1, 2, 3, 4)
    assert spread_skips(5, 0) == ()


def test_search_reaches_the_optimum_of_a_separable_score():
    target = (1, 2, 4, 5, 7, 9, 11, 13, 15, 17)

    def score(skipped):
        return -sum(abs(a - b) for a, b in zip(skipped, target))

    found = search_skipped_steps(score, 20, 10)
    assert found.skipped == target and found.score == 0
    # memoised: no set measured twice, the start first
    sets = [s for s, _ in found.evaluations]
    assert len(sets) == len(set(sets)) and sets[0] == spread_skips(20, 10)


def test_search_stops_at_a_local_optimum_and_never_gets_worse():
    calls = []

    def score(skipped):
        calls.append(skipped)
        return 1.0 if skipped == (1, 2) else 0.0  # flat around the start (2, 3): no move gains

    found = search_skipped_steps(score, 5, 2, start=(2, 3))
    assert found.skipped == (2, 3) and found.score == 0.0
    assert len(calls) == len(found.evaluations) == 1 + 2  # start, then its neighbours (1, 3), (2, 4) (then stop)


def test_search_respects_max_evaluations_and_reach():
    found = search_skipped_steps(lambda s: -s[0], 20, 3, start=(10, 11, 12), max_evaluations=4)
    assert len(found.evaluations) == 4
    far = search_skipped_steps(lambda s: -s[0], 20, 1, start=(10,), reach=3)
    assert far.skipped == (1,)
    assert far.score == max(v for _, v in far.evaluations)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 20, "count": 20}, "count must lie"),
    ({"steps": 20, "count": 3, "start": (0, 1, 2)}, "start must hold 3 distinct steps"),
    ({"steps": 20, "count": 3, "start": (1, 1, 2)}, "start must hold 3 distinct steps"),
    ({"steps": 20, "count": 3, "reach": 0}, "reach must be"),
    ({"steps": 20, "count": 3, "max_evaluations": 0}, "max_evaluations must be"),
])
def test_bad_inputs_raise_value_errors_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_skipped_steps(lambda s: 0.0, **kwargs)
