"""The paper's dataset distillation (issue 11, experiment 3): the Fashion-MNIST preset at a tiny
size, the fresh models' validation score (chosen on validation, never on test), and the study
``hgbench-bench paper_distill --quick`` — every grid cell, the choice, fresh accuracy from the
learned images only, the README and pictures. In-process and tiny (a few seconds in all)."""

import csv
import math
from pathlib import Path

import pytest

from hgbench import build_experiment, compose_config

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (sudo apt-get install -y dataset-fashion-mnist)")
def test_paper_distill_fashion_preset_runs_tiny_and_scores_fresh_models_on_validation():
    cfg = compose_config(["experiment=paper_distill_fashion_mnist"])
    assert (cfg.dataset.name, cfg.model.name, cfg.hyperparam.name, cfg.hyperparam.init, cfg.hyperparam.per_class) == (
        "fashion_mnist", "linear", "distill", "zeros", 1)
    assert cfg.hyperparam.fresh_seeds >= 3 and cfg.val_batch_size is not None and cfg.inner_steps == 5
    exp = build_experiment(overrides=["experiment=paper_distill_fashion_mnist", "dataset.train_size=200", "dataset.val_size=50",
                                      "dataset.test_size=100", "hyper_steps=2", "eval_every=2", "hyperparam.fresh_steps=10",
                                      "hyperparam.fresh_val=true", "warmup=false"])
    assert exp.problem.num_hyperparams == 10 * 784
    result = exp.run()
    assert result.status == "FINISHED", result.error
    s = result.summary
    assert all(0 <= s[f"hp/distill/{k}"] <= 1 for k in ("fresh_test_acc", "fresh_val_acc", "random_real_fresh_test_acc",
                                                         "class_mean_fresh_test_acc"))
    # the validation score comes from the same fresh models and leaves the test number as it was without it
    fam = exp.problem.family
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    with_val = fam.metrics(lam)
    fam.fresh_val = False
    without = fam.metrics(lam)
    assert "distill/fresh_val_acc" not in without and without["distill/fresh_test_acc"] == with_val["distill/fresh_test_acc"]


@pytest.mark.slow
def test_the_distillation_study_chooses_on_validation_and_judges_by_fresh_models(tmp_path, monkeypatch):
    """``hgbench-bench paper_distill --quick``: both presets (on a tiny digits problem), every cell of
    the grid for each, the cell with the best fresh VALIDATION accuracy chosen and run with every
    seed, blank images (step 0) teaching a fresh model nothing while real images do."""
    from hgbench.benchmarks import paper_distill

    runs = paper_distill.run(tmp_path, quick=True, device="cpu")
    q = paper_distill.QUICK
    with open(tmp_path / "distill_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs)
    for ds, _, _ in paper_distill.DATASETS:
        grid = [r for r in runs if r["dataset"] == ds and r["stage"] == "grid"]
        assert sorted((r["lr"], r["method"]) for r in grid) == sorted((lr, m) for lr in q["lrs"] for m in q["methods"])
        assert all(r["status"] == "finished" and math.isfinite(r["fresh_val_acc"]) for r in grid)
        best = max(grid, key=lambda r: r["fresh_val_acc"])
        assert paper_distill.chosen_setting(runs, ds) == best["setting"]
        chosen = paper_distill.seeds_of(runs, ds, best["setting"])
        assert [r["seed"] for r in chosen] == list(q["seeds"]) and all(0 <= r["fresh_test_acc"] <= 1 for r in chosen)
        assert len(paper_distill.seeds_of(runs, ds, paper_distill.setting(*paper_distill.FIRST))) == len(q["seeds"])
    with open(tmp_path / "distill_curve.csv", newline="") as f:
        curve = list(csv.DictReader(f))
    start = [r for r in curve if r["step"] == "0"]
    assert len(start) == len(runs)
    # zero images (the start) teach a fresh model nothing; the real-image baselines do — the fresh
    # number is the images', whatever the co-trained weights are
    assert all(float(r["fresh_test_acc"]) < 0.25 < 0.5 < float(r["class_mean_test_acc"]) for r in start)
    with open(tmp_path / "distilled_images.csv", newline="") as f:
        images = list(csv.DictReader(f))
    assert len(images) == 2 * 10 * len(q["seeds"]) and all(len(r["pixels"].split()) == 64 for r in images)  # digits: 8×8
    readme = (tmp_path / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "Where we differ from the paper" in readme and "chosen on validation" in readme
    assert "random real images" in readme and "class-mean" in readme and "--max-wait-min 0" in readme
    for png in ("distilled_mnist.png", "distilled_fashion_mnist.png", "fresh_vs_step.png"):
        assert (tmp_path / png).stat().st_size > 5_000
    # selection on a seed that is not reported; the per-example rows of every reported run, the
    # logged accuracies example by example, one test split for all; the README's intervals
    assert all(r["seed"] == paper_distill.SELECT_SEED for r in runs if r["stage"] == "grid")
    assert all(r["seed"] in q["seeds"] for r in runs if r["stage"] == "seeds")
    from hgbench.benchmarks import per_example

    corr = per_example.read_gz(tmp_path / "distill_correct.csv.gz")
    seeds_runs = [r for r in runs if r["stage"] == "seeds"]
    assert len(corr) == len(seeds_runs) * (3 * 3 + 1) and all(r["commit"] for r in corr)
    assert len({(r["dataset"], r["fingerprint"]) for r in corr}) == 2
    for r in seeds_runs:
        x = paper_distill.scores(corr, r["dataset"], r["setting"], "learned", [r["seed"]])
        assert abs(x.mean() - r["fresh_test_acc"]) < 1e-6
    assert "within noise" in readme or "above" in readme or "below" in readme
    assert f"seed {paper_distill.SELECT_SEED}" in readme
    (tmp_path / "README.md").unlink()
    drawn = []
    monkeypatch.setattr(paper_distill, "draw", lambda out, runs, curve, images: drawn.append(len(images)))  # drawn above
    paper_distill.rewrite(tmp_path)  # the README again from the CSVs alone: the same text
    assert (tmp_path / "README.md").read_text() == readme and drawn == [len(images)]
