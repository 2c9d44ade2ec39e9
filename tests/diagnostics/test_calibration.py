import torch
import pytest

from prefalign.diagnostics.calibration import expected_calibration_error, fit_temperature, reliability_bins


def test_ece_hand_example():
    # confidences 0.9, 0.9 (one right, one wrong) and 0.6 (right), 0.3 -> predicts b at 0.7 (b won: right)
    probs = [0.9, 0.9, 0.6, 0.3]
    outcomes = [1, 0, 1, 0]
    bins = reliability_bins(probs, outcomes, n_bins=5)  # edges 0.5, 0.6, 0.7, 0.8, 0.9, 1.0
    counts = [b.count for b in bins]
    assert counts == [1, 1, 0, 2, 0]
    # bin (0.5,0.6]: conf 0.6 acc 1; (0.6,0.7]: conf 0.7 acc 1; (0.8,0.9]: conf 0.9 acc 0.5
    expected = 0.25 * 0.4 + 0.25 * 0.3 + 0.5 * 0.4
    assert expected_calibration_error(probs, outcomes, n_bins=5) == pytest.approx(expected)


def test_perfectly_calibrated_sample_has_small_ece_and_temperature_one():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(z)).double()
    assert expected_calibration_error(torch.sigmoid(z), y) < 0.02
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    # an overconfident model (logits x3) is fixed by T ~ 3
    assert fit_temperature(3 * z, y) == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(torch.sigmoid(3 * z), y) > 0.05


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        reliability_bins([1.5], [1])
    with pytest.raises(ValueError, match="aligned"):
        reliability_bins([0.5, 0.6], [1])
