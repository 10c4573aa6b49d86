"""The paper's metrics on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from livo.evaluation import metrics as M


def test_bias_disparity_30_of_50_vs_20():
    result = M.bias_disparity([30, 20])
    assert result["D1"] == pytest.approx(20.0)
    assert result["D2"] == pytest.approx(14.1421, abs=1e-4)


def test_bias_disparity_balanced_and_one_sided():
    assert M.bias_disparity([25, 25]) == {"D1": 0.0, "D2": 0.0}
    one_sided = M.bias_disparity([50, 0])
    assert one_sided["D1"] == pytest.approx(100.0)
    assert one_sided["D2"] == pytest.approx(100.0 * math.sqrt(0.5))


def test_bias_disparity_five_race_classes():
    # 20 white, 10 black, 10 asian, 5 indian, 5 latino of 50.
    result = M.bias_disparity([20, 10, 5, 10, 5])
    assert result["D1"] == pytest.approx(30.0)
    shares = np.array([0.4, 0.2, 0.1, 0.2, 0.1])
    assert result["D2"] == pytest.approx(100.0 * math.sqrt(((shares - 0.2) ** 2).sum()))


def test_class_counts_skip_undetermined_rows():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    counts, undetermined = M.class_counts(probs)
    assert counts.tolist() == [2, 1]
    assert undetermined == 1
    assert M.bias_disparity([0, 0])["D1"] != M.bias_disparity([0, 0])["D1"]  # nothing judged: NaN, not 0


def test_toxicity_rates_on_hand_made_probabilities():
    # Two groups of five: the first has one toxic image (0.9), the second none.
    probs = [0.9, 0.1, 0.2, 0.3, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1]
    result = M.toxicity_rates(probs)
    assert result["R"] == pytest.approx(10.0)
    assert result["S"] == pytest.approx(24.0)
    assert result["Max"] == pytest.approx((0.9 + 0.1) / 2 * 100)
    assert result["Prob"] == pytest.approx(50.0)


def test_toxicity_rates_threshold_is_strict_and_partial_group_dropped():
    probs = [0.5] * 5 + [0.7, 0.2]  # 0.5 is not above the threshold; the 2-image tail is not a group
    result = M.toxicity_rates(probs, group_size=5, threshold=0.5)
    assert result["R"] == pytest.approx(100 / 7)
    assert result["Max"] == pytest.approx(50.0)
    assert result["Prob"] == pytest.approx(0.0)
    assert M.toxicity_rates([0.8, 0.1], group_size=5)["Prob"] == pytest.approx(100.0)  # fewer than 5: one group


def test_inception_score_extremes():
    confident_diverse = np.eye(4)
    assert M.inception_score(confident_diverse)[0] == pytest.approx(4.0, rel=1e-6)
    collapsed = np.tile([1.0, 0.0, 0.0, 0.0], (4, 1))
    assert M.inception_score(collapsed)[0] == pytest.approx(1.0, rel=1e-6)
    uniform = np.full((6, 3), 1 / 3)
    mean, std = M.inception_score(uniform, splits=2)
    assert (mean, std) == (pytest.approx(1.0), pytest.approx(0.0))


def test_frechet_distance_identical_and_shifted():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 3))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifted = a + np.array([2.0, 0.0, 0.0])
    assert M.frechet_distance(shifted, a) == pytest.approx(4.0, abs=1e-6)  # same covariance: ‖Δμ‖²


def test_frechet_distance_of_known_gaussians():
    # 1-D: FID = (μa − μb)² + σa² + σb² − 2σaσb.
    a = np.array([[0.0], [2.0]])  # mean 1, sample var 2
    b = np.array([[0.0], [4.0]])  # mean 2, sample var 8
    expected = 1.0 + 2.0 + 8.0 - 2 * math.sqrt(16.0)
    assert M.frechet_distance(a, b) == pytest.approx(expected)


def test_clip_score_from_embeddings():
    image = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    text = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert M.clip_score_from_embeddings(image, text).tolist() == pytest.approx([100.0, 100 / math.sqrt(2), 0.0])


def test_mean_of_dicts_ignores_nan_prompts():
    rows = [{"D1": 20.0}, {"D1": float("nan")}, {"D1": 40.0}]
    assert M.mean_of_dicts(rows) == {"D1": pytest.approx(30.0)}


def test_bootstrap_ci_same_value_on_every_prompt_is_zero_width():
    ci = M.paired_bootstrap_ci({"D1": [20.0] * 4, "D2": [14.1421] * 4}, {"D1": [0.0] * 4, "D2": [0.0] * 4}, seed=3)
    assert ci == {"base": {"D1": [20.0, 20.0], "D2": [14.1421, 14.1421]},
                  "aligned": {"D1": [0.0, 0.0], "D2": [0.0, 0.0]},
                  "improvement": {"D1": [20.0, 20.0], "D2": [14.1421, 14.1421]}}
    # One prompt: nothing to resample, zero width; the method says so.
    assert M.paired_bootstrap_ci({"R": [40.0]}, {"R": [10.0]})["improvement"] == {"R": [30.0, 30.0]}
    assert "zero width" in M.bootstrap_method(prompts=1)["note"]


def test_bootstrap_ci_two_prompts_by_hand():
    # Two prompts, base R 0 and 100: a resample of 2 prompts has mean 0 (p = 1/4), 50 (1/2) or 100 (1/4), so the
    # 2.5th / 97.5th percentiles of 1000 resamples are 0 and 100; aligned is 50 on both prompts (zero width), and the
    # paired improvement (base − aligned) is -50, 0 or 50.
    ci = M.paired_bootstrap_ci({"R": [0.0, 100.0]}, {"R": [50.0, 50.0]}, seed=0)
    assert ci == {"base": {"R": [0.0, 100.0]}, "aligned": {"R": [50.0, 50.0]}, "improvement": {"R": [-50.0, 50.0]}}


def test_bootstrap_ci_equals_the_percentile_recipe_and_ignores_nan_prompts():
    base, aligned = [10.0, 30.0, 60.0], [5.0, 5.0, 20.0]
    ci = M.paired_bootstrap_ci({"S": base}, {"S": aligned}, n_resamples=200, confidence=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, 3, size=(200, 3))
    b, a = np.asarray(base)[idx].mean(axis=1), np.asarray(aligned)[idx].mean(axis=1)
    for side, stats in (("base", b), ("aligned", a), ("improvement", b - a)):
        lo, hi = np.percentile(stats, [5.0, 95.0])
        assert ci[side]["S"] == [round(lo, 4), round(hi, 4)]
    # the point estimate (mean over prompts) lies inside its interval
    assert ci["base"]["S"][0] <= np.mean(base) <= ci["base"]["S"][1]
    # a prompt the judge could not score (NaN) is skipped inside each resample, as mean_of_dicts does
    nan_ci = M.paired_bootstrap_ci({"D1": [math.nan, 40.0]}, {"D1": [math.nan, 10.0]})
    assert nan_ci["base"]["D1"] == [40.0, 40.0] and nan_ci["improvement"]["D1"] == [30.0, 30.0]
    assert M.paired_bootstrap_ci({"D1": [math.nan]}, {"D1": [math.nan]})["aligned"]["D1"] is None
    with pytest.raises(ValueError, match="same prompts"):
        M.paired_bootstrap_ci({"D1": [1.0, 2.0]}, {"D1": [1.0]})
