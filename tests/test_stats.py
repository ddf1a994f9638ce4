"""The intervals the published studies quote (hgbench.benchmarks.stats), against known answers."""

import math

import numpy as np
import pytest

from hgbench.benchmarks.stats import bootstrap_mean, paired_bootstrap, t_interval, verdict


def test_paired_bootstrap_of_identical_and_opposite_predictions():
    rng = np.random.default_rng(1)
    a = rng.random((3, 500)) < 0.9
    same = paired_bootstrap(a, a, n_boot=200)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0 and same["within_noise"] == 1.0
    best = paired_bootstrap(np.ones((3, 500)), np.zeros((3, 500)), n_boot=200)
    assert best["lo"] == best["hi"] == 1.0 and best["within_noise"] == 0.0


def test_paired_bootstrap_matches_the_binomial_width_for_one_seed():
    # two independent classifiers at 90 % on 4,000 examples: the difference's s.d. is
    # sqrt(2 * 0.9 * 0.1 / 4000); the 95 % interval is about +-1.96 of it around the observed difference
    rng = np.random.default_rng(0)
    a, b = rng.random(4000) < 0.9, rng.random(4000) < 0.9
    r = paired_bootstrap(a, b, n_boot=4000)
    half = (r["hi"] - r["lo"]) / 2
    expected = 1.96 * math.sqrt(2 * 0.9 * 0.1 / 4000)
    assert half == pytest.approx(expected, rel=0.12)
    assert r["lo"] < r["diff"] < r["hi"] and r["n_seeds"] == 1 and r["n_examples"] == 4000


def test_paired_bootstrap_counts_the_seed_spread():
    # one example set, seeds that disagree strongly: the interval must be wider than the test-set-only one
    rng = np.random.default_rng(2)
    base = rng.random(2000) < 0.9
    a = np.stack([base, base, base])
    b = np.stack([np.roll(base, k) if k else base for k in (0, 7, 13)])  # seed 0 equal, seeds 1-2 unrelated
    one = paired_bootstrap(a[1], b[1], n_boot=1000)
    three = paired_bootstrap(a, b, n_boot=1000)
    assert three["hi"] - three["lo"] > 0.5 * (one["hi"] - one["lo"])
    with pytest.raises(ValueError, match="same seeds x test examples"):
        paired_bootstrap(a, b[:, :10])


def test_bootstrap_mean_and_verdict_words():
    r = bootstrap_mean([0.01, 0.02, 0.03], n_boot=2000)
    assert r["mean"] == pytest.approx(0.02) and 0.01 <= r["lo"] <= r["hi"] <= 0.03 and r["within_noise"] == 0.0
    assert verdict(r).endswith("gain") and verdict(r).startswith("+2.00 points")
    noisy = bootstrap_mean([-0.01, 0.02], n_boot=2000)
    assert verdict(noisy).endswith("within noise")
    assert verdict({"diff": -0.05, "lo": -0.07, "hi": -0.03}).endswith("loss")


def test_t_interval_is_students_and_wider_than_the_bootstrap_on_three_seeds():
    """t(0.975, 2) = 4.3027 (tables): [1, 2, 3] gives 2 ± 4.3027 · 1 / √3. Three paired differences
    of one sign but a wide spread (the first PTB study's 0.7, 10.7, 35.2 ppl) are a "gain" to the
    bootstrap (its interval is their range) and within noise to t."""
    r = t_interval([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["n"] == 3
    assert abs(r["hi"] - (2 + 4.302653 / 3 ** 0.5)) < 1e-5 and abs(r["lo"] - (2 - 4.302653 / 3 ** 0.5)) < 1e-5
    assert r["within_noise"]
    d = [0.7, 10.7, 35.2]
    b = bootstrap_mean(d)
    assert abs(b["lo"] - 0.7) < 1e-9 and abs(b["hi"] - 35.2) < 1e-9 and not b["within_noise"]
    assert t_interval(d)["within_noise"] and "within noise" in verdict(t_interval(d), unit="ppl", scale=1.0)
    assert not t_interval([10.0, 11.0, 12.0])["within_noise"]  # a steady gain is one
    one = t_interval([4.0])  # one seed: no interval
    assert one["mean"] == 4.0 and one["n"] == 1 and math.isnan(one["lo"]) and math.isnan(one["hi"]) and one["within_noise"]
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])
