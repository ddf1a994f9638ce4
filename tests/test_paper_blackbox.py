"""Issue 11, experiment 7: gradient-based against black-box tuning at equal compute. The presets
search the same space (one global decay, the inner learning rate fixed), the study's quick run
(``experiment=paper_blackbox`` at a tiny size, and Optuna trials of it) and its reading."""

import math

import pytest

from hgbench import compose_config


def test_the_optuna_sweep_searches_the_ift_runs_space_on_the_same_task():
    from hgbench.benchmarks.paper_blackbox import optuna_space

    ift = compose_config(["experiment=paper_blackbox"])
    bb = compose_config(["sweep=optuna_weight_decay"])
    assert bb.hypergrad.name == "fixed" and ift.hypergrad.name == "neumann"
    for key in ("dataset", "model", "inner_optimizer", "inner_steps", "hyper_steps", "train_batch_size", "val_batch_size"):
        assert bb[key] == ift[key], key  # the same task and the same weight updates per trial as per IFT run
    assert bb.hyperparam.granularity == ift.hyperparam.granularity == "global"
    space = optuna_space()
    assert space["name"] == "hyperparam.init_decay" and space["log"]  # only the decay: no inner learning rate
    # IFT starts at the log-centre of the interval Optuna searches
    assert math.log(ift.hyperparam.init_decay) == pytest.approx((math.log(space["low"]) + math.log(space["high"])) / 2)


def rows_of(side, seed, points):
    return [{"side": side, "seed": seed, "t_s": t, "val_loss": v, "test_loss": v + 0.1, "test_acc": 0.9, "decay": 1e-3,
             "grad_eq": 10.0 * t, "step": 1} for t, v in points]


def test_who_is_ahead_counts_a_side_without_a_result_as_behind():
    from hgbench.benchmarks import paper_blackbox as pb

    rows = rows_of("ift", 0, [(2.0, 0.5), (4.0, 0.3)]) + rows_of("optuna", 0, [(3.0, 0.4), (7.0, 0.2)])
    assert pb.budgets(rows) == {0: 4.0}
    assert pb.ahead(rows, 0.25) == {"ift": 0, "optuna": 0, "tie": 1}  # at 1 s: neither has a result
    assert pb.ahead(rows, 0.5) == {"ift": 1, "optuna": 0, "tie": 0}   # at 2 s: only IFT
    assert pb.ahead(rows, 0.75)["optuna"] == 1 and pb.ahead(rows, 1.0)["ift"] == 1
    assert pb.catch_up(rows) == {0: 7.0 / 4.0}  # Optuna's 0.2 at 7 s beats IFT's 0.3 at B = 4 s


@pytest.mark.slow  # a study's quick run (the README's definition of slow)
def test_the_quick_study_gives_both_sides_the_same_weight_updates_and_counts_the_hypergradients(tmp_path):
    from hgbench.benchmarks import output, paper_blackbox as pb

    pb.run(tmp_path, quick=True, device="cpu")
    rows = output.read_csv(tmp_path / "blackbox.csv")
    assert {r["side"] for r in rows} == set(pb.SIDES)
    ift = [r for r in rows if r["side"] == "ift"]
    trials = sorted((r for r in rows if r["side"] == "optuna"), key=lambda r: r["trial"])
    per_run = ift[-1]["weight_updates"]
    assert per_run == 3 * 10 and [r["weight_updates"] for r in trials] == [per_run * (i + 1) for i in range(len(trials))]
    assert ift[-1]["hvp_per_hypergrad"] == 5 and ift[-1]["grad_eq"] > per_run + 3  # Neumann-5's cost is counted
    space = pb.optuna_space()
    assert all(space["low"] <= r["decay"] <= space["high"] for r in trials) and len({r["decay"] for r in trials}) == len(trials)
    assert trials[-1]["t_s"] >= 2.0 * ift[-1]["t_s"] or len(trials) == 2  # Optuna runs on to extend × B (quick: 2 trials at most)
    assert all(math.isfinite(r[k]) for r in rows for k in ("val_loss", "test_loss", "t_s", "grad_eq"))
    text = (tmp_path / "README.md").read_text()
    assert "QUICK SMOKE RUN" in text and "at 25 % of B" in text and "Where we differ from the paper" in text
    assert (tmp_path / "blackbox.png").stat().st_size > 10_000
    from hgbench.benchmarks import per_example

    for r in rows:  # each row's per-example test correctness is its test accuracy
        assert per_example.unpack(r["test_correct"], r["n_test"]).mean() == pytest.approx(r["test_acc"], abs=1e-6)
    ivs = {r["comparison"]: r for r in output.read_csv(tmp_path / "blackbox_intervals.csv")}
    # the comparisons at a time (× B) exist only where both sides had a result by then, which depends on
    # the machine's load; the end-of-run one (per-weight against one decay) always does
    assert "ift_per_weight_end_minus_ift_end: test_acc" in ivs, sorted(ivs)
    for acc in (r for k, r in ivs.items() if k.endswith(": test_acc")):
        assert acc["lo"] <= acc["value"] <= acc["hi"] and acc["n_examples"] == 797
    assert "**Intervals**" in text and "depends on the machine's load" in text


def test_the_reports_optuna_cost_is_in_weight_updates_of_all_trials():
    import pandas as pd

    from hgbench.report import weight_updates

    trials = pd.DataFrame({"params.hyper_steps": ["200", "200", "100"], "params.inner_steps": ["10", "10", "10"]})
    assert weight_updates(trials) == "5,000"
    assert weight_updates(trials.drop(columns="params.inner_steps")) == "—"  # unknown: not guessed


def test_the_intervals_pair_the_sides_choices_seed_by_seed():
    import numpy as np

    from hgbench.benchmarks import paper_blackbox as pb, per_example

    rows = []
    for seed in (0, 1, 2):
        ift = rows_of("ift", seed, [(2.0, 0.5), (4.0, 0.3)])
        opt = rows_of("optuna", seed, [(3.0, 0.4 + 0.01 * seed), (7.0, 0.2)])
        for r in ift + opt:  # IFT right on every test example, Optuna on none
            r["n_test"] = 50
            r["test_correct"] = per_example.pack(np.full(50, r["side"] == "ift"))
            r["test_acc"] = 1.0 if r["side"] == "ift" else 0.0
        rows += ift + opt
    ivs = {r["comparison"]: r for r in pb.intervals(rows, extend=2.0, n_boot=200)}
    acc = ivs["optuna_at_1B_minus_ift_at_1B: test_acc"]
    assert acc["value"] == acc["lo"] == acc["hi"] == -1.0 and acc["n_seeds"] == 3
    val = ivs["optuna_at_1B_minus_ift_at_1B: val_loss"]  # Optuna 0.40/0.41/0.42 vs IFT 0.3
    assert val["value"] == pytest.approx(0.11) and val["lo"] > 0 and not val["within_noise"]
    assert ivs["optuna_catch_up_time_over_B (seeds that caught up)"]["value"] == pytest.approx(7.0 / 4.0)
    assert "optuna_at_0.25B_minus_ift_at_0.25B: val_loss" not in ivs  # no side has a result at 1 s


def test_who_is_ahead_follows_the_interval_not_the_count_of_seeds():
    """IFT lower on 5 of 5 seeds, but by 0.01 to 2.0: the t interval of Optuna − IFT includes 0,
    so neither side is ahead beyond noise; a steady difference is a lead; one side alone leads."""
    from hgbench.benchmarks import paper_blackbox as pb
    from hgbench.benchmarks.stats import t_interval

    wins = {"ift": 5, "optuna": 0, "tie": 0}
    wide = pb._row("x", t_interval([0.01, 0.02, 0.05, 0.1, 2.0]))
    assert pb.lead_words(wins, wide).startswith("neither side is ahead beyond noise (Optuna − IFT +0.4360 [")
    assert pb.lead_words(wins, pb._row("x", t_interval([0.10, 0.11, 0.12, 0.10, 0.11]))).startswith("IFT is ahead (")
    assert pb.lead_words(wins, pb._row("x", t_interval([-0.10, -0.11, -0.12, -0.10, -0.11]))).startswith("Optuna is ahead (")
    assert pb.lead_words(wins, None) == "IFT is ahead"  # Optuna has no trial yet
