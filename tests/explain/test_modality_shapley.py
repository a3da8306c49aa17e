"""Modality Shapley values: the exact formula's properties, and the game of a masking fusion checked by hand."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import torch

from lightning_fusion.config import load_config, to_dict
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.explain.contributions import modality_contributions
from lightning_fusion.explain.shapley import modality_shapley, shapley_values, subset_masks
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _marginal_average(values: np.ndarray, players: int) -> np.ndarray:
    """Shapley values by their definition: the average marginal contribution over every order of the players."""
    index = {tuple(row): s for s, row in enumerate(subset_masks(players))}
    phi = np.zeros(players)
    orders = list(permutations(range(players)))
    for order in orders:
        held = np.zeros(players, dtype=bool)
        for player in order:
            before = values[index[tuple(held)]]
            held[player] = True
            phi[player] += values[index[tuple(held)]] - before
    return phi / len(orders)


@pytest.mark.parametrize("players", [1, 2, 3, 4])
def test_values_are_the_average_marginal_contribution_and_sum_to_all_minus_none(players):
    rng = np.random.default_rng(players)
    games = rng.uniform(size=(5, 2**players))
    phi = shapley_values(games)
    assert phi.shape == (5, players)
    np.testing.assert_allclose(phi.sum(axis=1), games[:, -1] - games[:, 0], atol=1e-12)  # efficiency
    for game, values in zip(games, phi):
        np.testing.assert_allclose(values, _marginal_average(game, players), atol=1e-12)


def test_a_player_that_changes_nothing_gets_zero_and_symmetric_players_share_equally():
    masks = subset_masks(3)
    rng = np.random.default_rng(0)
    # player 1 is a null player: v depends only on players 0 and 2
    by_others = rng.uniform(size=4)
    game = by_others[masks[:, 0] * 1 + masks[:, 2] * 2]
    phi = shapley_values(game)
    assert phi[1] == pytest.approx(0, abs=1e-12) and abs(phi[0]) + abs(phi[2]) > 1e-3
    # an additive game gives each player its own term; players 0 and 1 alike get the same
    terms = np.array([0.2, 0.2, -0.1])
    np.testing.assert_allclose(shapley_values(masks @ terms + 0.5), terms, atol=1e-12)


def test_a_table_that_is_not_two_to_the_m_is_refused():
    with pytest.raises(ValueError, match="2\\^M entries on its last axis"):
        shapley_values(np.zeros(6))
    with pytest.raises(ValueError, match="2\\^M entries"):
        shapley_values(np.zeros(1))


# --------------------------------------------------------------------------------------------------
# A masking fusion's game
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(small_cohort_master):
    config = load_config(None, small_overrides(small_cohort_master))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return small_cohort_master, datamodule, next(iter(datamodule.val_dataloader()))


def _module(cohort, fusion: str, class_weights=True) -> FusionLitModule:
    root, datamodule, _ = cohort
    config = load_config(None, small_overrides(root, **{"model.fusion": fusion}))
    specs = {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in datamodule.specs.items()}
    torch.manual_seed(0)
    weights = datamodule.class_weights if class_weights else None
    return FusionLitModule(to_dict(config), specs, datamodule.classes, weights).train()


@pytest.mark.parametrize("fusion", ["gated", "attention", "late_weighted", "lmf"])
def test_each_subset_is_the_model_with_the_others_marked_missing(cohort, fusion):
    _, datamodule, batch = cohort
    module = _module(cohort, fusion)
    n = len(batch["label"])
    no_table = torch.ones(n, dtype=torch.bool)
    no_table[2] = False
    given = batch | {"present": {"tabular": no_table}}
    result = modality_shapley(module, given)
    assert module.training  # the mode fit left it in is restored
    module.eval()
    rows = torch.arange(n)
    with torch.no_grad():
        full = module(given).softmax(dim=1)
        target = full.argmax(dim=1)
        only = {
            "image": module(batch | {"present": {"tabular": torch.zeros(n, dtype=torch.bool)}}).softmax(dim=1),
            "tabular": module(batch | {"present": {"image": torch.zeros(n, dtype=torch.bool)}}).softmax(dim=1),
        }
    np.testing.assert_array_equal(result.target, target.numpy())
    np.testing.assert_allclose(result.full, full[rows, target].numpy(), atol=1e-6)
    counts = np.bincount(datamodule.datasets["train"].labels, minlength=len(datamodule.classes))
    prior = (counts / counts.sum())[target.numpy()]
    np.testing.assert_allclose(result.baseline, prior, atol=1e-9)
    # subsets: bit 0 = image, bit 1 = tabular (the module's modality order)
    assert list(module.modalities) == ["image", "tabular"]
    keep = np.arange(n) != 2
    np.testing.assert_allclose(result.subsets[keep, 1], only["image"][rows, target].numpy()[keep], atol=1e-6)
    np.testing.assert_allclose(result.subsets[keep, 2], only["tabular"][rows, target].numpy()[keep], atol=1e-6)
    # two players by hand: φ_image = ½(v(I) − v(∅)) + ½(v(I,T) − v(T))
    v = result.subsets
    np.testing.assert_allclose(result.values["image"], 0.5 * (v[:, 1] - v[:, 0]) + 0.5 * (v[:, 3] - v[:, 2]))
    total = result.values["image"] + result.values["tabular"]
    np.testing.assert_allclose(total, result.full - result.baseline, atol=1e-9)
    # the patient without its table: the table is a null player, the image holds the whole difference
    assert result.values["tabular"][2] == pytest.approx(0, abs=1e-12)
    assert result.values["image"][2] == pytest.approx(result.full[2] - result.baseline[2])


def test_drop_one_contributions_carry_the_shapley_values_or_say_why_not(cohort):
    _, _, batch = cohort
    drops = modality_contributions(_module(cohort, "gated"), batch)
    assert set(drops.shapley) == {"image", "tabular"} and drops.shapley_skipped is None
    total = drops.shapley["image"] + drops.shapley["tabular"]
    np.testing.assert_allclose(total, drops.probability - drops.shapley_baseline, atol=1e-6)

    concat = modality_contributions(_module(cohort, "concat"), batch)
    assert concat.shapley is None and concat.deltas  # the drop-one deltas are still there
    assert "model.fusion 'concat' does not" in concat.shapley_skipped and "gated" in concat.shapley_skipped
    with pytest.raises(ValueError, match="model.fusion 'early' does not"):
        modality_shapley(_module(cohort, "early"), batch)
    unweighted = modality_contributions(_module(cohort, "gated", class_weights=False), batch)
    assert unweighted.shapley is None and "training split's class frequencies" in unweighted.shapley_skipped
