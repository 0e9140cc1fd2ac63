"""NSGA-II through pymoo ask/tell: reproducible from the seed, exactly resumable from its state."""

import json

import numpy as np
import pytest
from pymoo.core.problem import Problem

from diffusion_accel.search import NsgaDriver, Operators

N_VAR = 24
WEIGHTS = np.random.default_rng(7).random(N_VAR)


def objectives(X):
    return np.stack([X.mean(1), ((~X) * WEIGHTS).sum(1) + 0.05 * np.sin(X @ WEIGHTS)], 1)


def run(generations, seed=0, restart_after=None, operators=None):
    problem = Problem(n_var=N_VAR, n_obj=2, xl=0, xu=1, vtype=bool)
    start = np.random.default_rng(1).random((6, N_VAR)) < 0.5
    driver = NsgaDriver(problem, start, seed, operators)
    asked = []
    for g in range(generations):
        X = driver.ask()
        asked.append(X)
        driver.tell(X, objectives(X))
        if g == restart_after:
            state = json.loads(json.dumps(driver.state()))  # through JSON, like the checkpoint
            driver = NsgaDriver(problem, start, seed, operators)
            driver.load_state(state)
    return asked, driver.population()


def test_first_ask_is_the_seeded_population():
    asked, _ = run(1)
    assert np.array_equal(asked[0], np.random.default_rng(1).random((6, N_VAR)) < 0.5)


def test_same_seed_same_search_whatever_the_global_numpy_state():
    np.random.seed(0)
    a = run(6, seed=5)
    np.random.seed(123)
    b = run(6, seed=5)
    c = run(6, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert np.array_equal(a[1][1], b[1][1])
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], c[0]))


@pytest.mark.parametrize("crossover", ["uniform", "hux", "two-point"])
def test_restart_from_saved_state_continues_exactly(crossover):
    ops = Operators(crossover=crossover, bit_flip_prob=0.1)
    full_asked, full_pop = run(7, operators=ops)
    resumed_asked, resumed_pop = run(7, restart_after=2, operators=ops)
    assert all(np.array_equal(x, y) for x, y in zip(full_asked, resumed_asked))
    assert np.array_equal(full_pop[0], resumed_pop[0]) and np.array_equal(full_pop[1], resumed_pop[1])


def test_operators_and_tell_validate_input():
    with pytest.raises(ValueError, match="Unknown crossover"):
        Operators(crossover="blend")
    with pytest.raises(ValueError, match="crossover_prob"):
        Operators(crossover_prob=1.5)
    with pytest.raises(ValueError, match="bit_flip_prob"):
        Operators(bit_flip_prob=0.0)
    problem = Problem(n_var=4, n_obj=2, xl=0, xu=1, vtype=bool)
    driver = NsgaDriver(problem, np.eye(4, dtype=bool), 0)
    X = driver.ask()
    with pytest.raises(ValueError, match="last ask"):
        driver.tell(X[::-1], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        driver.tell(X, np.full((4, 2), np.inf))


def test_mutation_flips_bits_at_the_configured_rate():
    problem = Problem(n_var=400, n_obj=2, xl=0, xu=1, vtype=bool)
    start = np.zeros((4, 400), dtype=bool)
    start[np.arange(4), np.arange(4)] = True
    driver = NsgaDriver(problem, start, 0, Operators(crossover_prob=0.0, bit_flip_prob=0.25))
    X = driver.ask()
    driver.tell(X, np.stack([X.sum(1), -X.sum(1)], 1).astype(float))
    off = driver.ask()
    rate = off.mean()  # parents are (almost) all zeros, so ones come from mutation
    assert 0.18 < rate < 0.32


def test_integer_genes_resume_exactly_and_stay_in_range():
    from diffusion_accel.search.problem import GeneProblem

    problem = GeneProblem([3, 2, 3, 3, 2, 3])
    start = np.array([[0] * 6, [1] * 6, [2, 1, 2, 2, 1, 2], [0, 1, 0, 1, 0, 1]])

    def objectives(X):
        return np.stack([X.sum(1), (X == 0).sum(1)], 1).astype(float)

    a = NsgaDriver(problem, start, seed=1)
    a.tell(X := a.ask(), objectives(X))
    state = json.loads(json.dumps(a.state()))
    b = NsgaDriver(problem, start, seed=1)
    b.load_state(state)
    for _ in range(3):
        Xa, Xb = a.ask(), b.ask()
        assert np.array_equal(Xa, Xb) and Xa.dtype == np.int64
        assert (Xa >= 0).all() and (Xa <= problem.xu).all()
        a.tell(Xa, objectives(Xa))
        b.tell(Xb, objectives(Xb))
