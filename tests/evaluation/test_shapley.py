"""Exact Shapley values of modalities: the axioms, a hand-computed example, paired bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fusion.evaluation.bootstrap import point_metrics
from lightning_fusion.evaluation.shapley import all_subsets, chance_level, shapley_values, subset_shapley


def _random_game(players, seed, empty=0.5):
    rng = np.random.default_rng(seed)
    return {s: float(rng.uniform(0.4, 1.0)) for s in all_subsets(players)}, empty


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_efficiency_values_sum_to_the_whole_minus_the_empty_set(m):
    players = [f"m{i}" for i in range(m)]
    scores, empty = _random_game(players, seed=m)
    values = shapley_values(scores, players, empty)
    assert sum(values.values()) == pytest.approx(scores[frozenset(players)] - empty)


def test_symmetric_modalities_get_the_same_value():
    players = ["image", "signal", "tabular"]
    scores, empty = _random_game(players, seed=1)
    # image and signal interchangeable: swapping them in any subset leaves its score unchanged
    swap = {"image": "signal", "signal": "image", "tabular": "tabular"}
    for subset in all_subsets(players):
        mirrored = frozenset(swap[p] for p in subset)
        scores[mirrored] = scores[subset] = max(scores[subset], scores[mirrored])
    values = shapley_values(scores, players, empty)
    assert values["image"] == pytest.approx(values["signal"])
    assert values["tabular"] != pytest.approx(values["image"])  # the game is not trivially symmetric


def test_a_dummy_modality_gets_zero():
    players = ["image", "tabular", "noise"]
    base, empty = _random_game(["image", "tabular"], seed=2)
    base[frozenset()] = empty
    scores = {s: base[s - {"noise"}] for s in all_subsets(players)}  # adding noise never changes a score
    values = shapley_values(scores, players, empty)
    assert values["noise"] == pytest.approx(0.0, abs=1e-12)
    assert values["image"] + values["tabular"] == pytest.approx(base[frozenset({"image", "tabular"})] - empty)


def test_hand_computed_three_player_example():
    # phi_A = 10/3 + 20/6 + 20/6 + 30/3 = 20; phi_B = 20/3 + 30/6 + 30/6 + 40/3 = 30;
    # phi_C = 30/3 + 40/6 + 40/6 + 50/3 = 40
    scores = {("A",): 10, ("B",): 20, ("C",): 30, ("A", "B"): 40, ("A", "C"): 50, ("B", "C"): 60, ("A", "B", "C"): 90}
    values = shapley_values(scores, ["A", "B", "C"], empty=0.0)
    assert values == pytest.approx({"A": 20.0, "B": 30.0, "C": 40.0})
    shifted = shapley_values({k: v + 5 for k, v in scores.items()}, ["A", "B", "C"], empty=5.0)
    assert shifted == pytest.approx(values)  # only differences from v(empty) count


def test_replicate_arrays_give_the_scalar_values_per_replicate():
    players = ["a", "b", "c"]
    games = [_random_game(players, seed=s)[0] for s in range(4)]
    stacked = {s: np.array([g[s] for g in games]) for s in all_subsets(players)}
    values = shapley_values(stacked, players, 0.5)
    for r, game in enumerate(games):
        assert {p: v[r] for p, v in values.items()} == pytest.approx(shapley_values(game, players, 0.5))


def test_missing_or_foreign_subsets_are_named():
    scores = {("a",): 0.7, ("a", "b"): 0.9}
    with pytest.raises(ValueError, match=r"missing: \[\['b'\]\]"):
        shapley_values(scores, ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="not of"):
        shapley_values(scores | {("b",): 0.6, ("c",): 0.6}, ["a", "b"], 0.5)
    with pytest.raises(TypeError, match="string 'a'"):
        shapley_values({"a": 0.7}, ["a"], 0.5)


def test_chance_levels():
    assert chance_level("auroc", 3) == 0.5
    assert chance_level("balanced_accuracy", 2) == 0.5
    assert chance_level("balanced_accuracy", 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="known"):
        chance_level("f1_macro", 2)


def _probs(labels, skill, rng, k=3):
    logits = rng.normal(size=(len(labels), k)) + skill * np.eye(k)[labels]
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def test_subset_shapley_points_intervals_and_a_dummy_with_a_zero_interval():
    rng = np.random.default_rng(0)
    labels = np.arange(45) % 3
    image, tabular = _probs(labels, 2.5, rng), _probs(labels, 0.8, rng)
    both = (image + tabular) / 2
    probs = {
        ("image",): image,
        ("tabular",): tabular,
        ("noise",): np.full((45, 3), 1 / 3),  # predicts nothing
        ("image", "tabular"): both,
        ("image", "noise"): image,
        ("noise", "tabular"): tabular,
        ("image", "noise", "tabular"): both,
    }
    result = subset_shapley(labels, probs, ["image", "tabular", "noise"], n_resamples=1000, seed=0)
    for metric in ("auroc", "balanced_accuracy"):
        values = result.values[metric]
        whole = point_metrics(labels, both)[metric]
        assert result.subset_scores[metric][frozenset({"image", "tabular", "noise"})].value == pytest.approx(whole)
        assert sum(v.value for v in values.values()) == pytest.approx(whole - result.empty[metric])
        assert values["noise"].value == pytest.approx(0, abs=1e-12)
        # same resampled rows for every subset model: the dummy's difference is 0 in every replicate
        assert (values["noise"].low, values["noise"].high) == pytest.approx((0, 0), abs=1e-12)
        assert values["image"].value > values["tabular"].value
        assert values["image"].low <= values["image"].value <= values["image"].high
        assert values["image"].high > values["image"].low  # a real interval, not a point
    assert result.empty == {"auroc": 0.5, "balanced_accuracy": pytest.approx(1 / 3)}


def test_subset_shapley_needs_the_same_rows_for_every_model():
    labels = np.arange(30) % 2
    with pytest.raises(ValueError, match="same N = 30"):
        subset_shapley(labels, {("a",): np.full((30, 2), 0.5), ("b",): np.full((29, 2), 0.5)}, ["a", "b"])
