"""The formulas against hand values, and the acceptance estimator."""

from __future__ import annotations

import pytest

from specjax.metrics import expected_tokens_per_round, predicted_speedup, summarize


def test_expected_tokens_per_round_hand_values():
    assert expected_tokens_per_round(0.8, 5) == pytest.approx(3.68928, abs=1e-5)  # the seed claim: 3.69
    assert round(expected_tokens_per_round(0.8, 5), 2) == 3.69
    assert expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(1.0, 4) == 5.0
    assert expected_tokens_per_round(0.5, 1) == pytest.approx(1.5)


def test_predicted_speedup():
    # Leviathan et al.: a = 0.8, G = 5, c = 0.05, v = 1 -> 3.69 / 1.25
    assert predicted_speedup(0.8, 5, 0.05) == pytest.approx(3.68928 / 1.25, abs=1e-4)
    assert predicted_speedup(0.5, 4, 0.1, v=1.2) == pytest.approx(expected_tokens_per_round(0.5, 4) / 1.6)
    with pytest.raises(ValueError):
        expected_tokens_per_round(1.5, 3)


def test_summarize_estimates_acceptance_from_reached_proposals():
    # one row, G = 3, four rounds accepting 3, 0, 1, 2 proposals
    accepted_at = [[3, 2, 1]]  # position 0 accepted in 3 rounds, position 1 in 2, position 2 in 1
    reached_at = [[4, 3, 2]]
    s = summarize(rounds=[4], drafted=[12], accepted=[6], accepted_at=accepted_at, reached_at=reached_at,
                  emitted=[10])
    # reached: position 0 in 4 rounds, position 1 in 3, position 2 in 2 -> 6 / 9
    assert s["acceptance_rate"] == pytest.approx(6 / 9)
    assert s["accepted_per_drafted"] == pytest.approx(0.5)
    assert s["acceptance_by_position"] == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert s["mean_tokens_per_round"] == pytest.approx(2.5)
