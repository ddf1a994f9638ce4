"""The paper's learned data augmentation (issue 11, experiment 4): the paper's U-Net augmenter
(weight count, identity start, x + tanh(residual), one noise value per image), the CIFAR-10 /
ResNet-18 preset at a tiny size on a fake CIFAR-10 folder in the real pickle format, and
``hgbench-bench paper_augment --quick`` (the MNIST preset, its data swapped for that folder)."""

import math
import pickle

import numpy as np
import pytest
import torch

from hgbench import build_experiment


@pytest.fixture
def cifar_dir(tmp_path):
    """A tiny CIFAR-10 in the real format: data_batch_1..5 (8 images each) and test_batch (8)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
        with open(folder / f, "wb") as fh:
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, 8)], b"data": data}, fh)
    return folder


def test_the_paper_augmenter_on_the_cifar10_preset(cifar_dir):
    """6,659 weights on 3 channels (the paper's count), 6,497 on 1; x̃ = x at the start; the
    residual is bounded by tanh; the noise is one value per image; the preset runs end to end."""
    from hgbench.plugins.hyperparam.augment_net import PaperUNet, normal_per_image

    assert sum(p.numel() for p in PaperUNet(1, 1, 8).parameters()) == 6497
    exp = build_experiment(overrides=["experiment=paper_augment_cifar10", f"dataset.root={cifar_dir}", "dataset.train_size=16",
                                      "dataset.val_size=8", "dataset.test_size=8", "model.blocks=[1]", "model.width=4",
                                      "train_batch_size=8", "val_batch_size=8", "hyper_steps=1", "inner_steps=1",
                                      "hypergrad.iterations=3", "device=cpu", "warmup=false", "progress=false"])
    fam, x = exp.problem.family, exp.problem.data.train.x[:4]
    assert exp.problem.num_hyperparams == 6659 and x.shape[1:] == (3, 32, 32)
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    assert torch.equal(fam.augment(lam, x), x)  # the zero-initialised output layer: no augmentation
    big = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) * 3 for k, v in lam.items()}
    d = fam.augment(big, x) - x
    assert 0.1 < d.abs().max() <= 1.0 + 1e-6  # x + tanh(r): a random augmenter moves pixels, by at most 1
    z = normal_per_image((5, 1, 6, 7), x, fixed=False)
    assert torch.equal(z, z[:, :, :1, :1].expand_as(z)) and z[:, 0, 0, 0].unique().numel() == 5
    result = exp.run()
    assert result.status == "FINISHED", result.error
    assert math.isfinite(result.summary["test_acc"]) and result.summary["hypergrad_norm"] > 0


@pytest.mark.slow  # a study's quick run (the README's definition of slow)
def test_the_augmentation_study_compares_the_four_arms_on_the_same_seeds(tmp_path, cifar_dir, monkeypatch):
    """``--quick``: every arm has every evaluation; ``none`` never augments (x̃ = x exactly at every
    step: it trains on clean images); each tuned arm's augmenter has moved; the table, the paired
    differences to ``none``, the plots and the README's honest parts are written."""
    from hgbench.benchmarks import paper_augment

    monkeypatch.setattr(paper_augment, "QUICK", ("dataset=cifar10", f"dataset.root={cifar_dir}", "dataset.train_size=16",
                                                 "dataset.val_size=8", "dataset.test_size=8", "train_batch_size=8",
                                                 "val_batch_size=8", "inner_steps=1"))
    rows = paper_augment.run(tmp_path / "out", quick=True, device="cpu")
    arms = [a for a, _, _ in paper_augment.ARMS]
    assert {(r["arm"], r["step"]) for r in rows} == {(a, s) for a in arms for s in (0, 1, 2)}
    assert all(math.isfinite(r["test_acc"]) and math.isfinite(r["val_acc"]) for r in rows)
    assert all(r["aug_change"] == 0.0 for r in rows if r["arm"] == "none")
    assert all(r["aug_change"] > 0 for r in rows if r["arm"] != "none" and r["step"] == 2)
    assert all(r["num_hyperparams"] == 6659 for r in rows)  # 3-channel input: the paper's count
    s = {r["arm"]: r for r in paper_augment.summary(rows)}
    assert "test_acc_vs_none_mean" not in s["none"] and all("test_acc_vs_none_mean" in s[a] for a in arms[1:])
    out = tmp_path / "out"
    readme = (out / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "Where we differ from the paper" in readme and "6,659" in readme
    assert "What \"no tuning\" means here" in readme
    for f in ("augmentation.csv", "augmentation_summary.csv", "augmentation.png", "augmentations.png"):
        assert (out / f).stat().st_size > 500
    # the per-example rows: one per arm and split, the logged accuracy example by example, the
    # same test images for every arm; the README's differences carry intervals
    from hgbench.benchmarks import per_example

    corr = per_example.read_gz(out / "augmentation_correct.csv.gz")
    assert {(r["arm"], r["split"]) for r in corr} == {(a, sp) for a in arms for sp in ("val", "test")}
    last = {r["arm"]: r for r in rows if r["step"] == 2}
    for r in corr:
        assert abs(per_example.decode(r["correct"]).mean() - last[r["arm"]][f"{r['split']}_acc"]) < 1e-9
        assert r["commit"] and len(r["correct"]) == int(r["n"]) == 8
    assert len({r["fingerprint"] for r in corr if r["split"] == "test"}) == 1
    s = {r["arm"]: r for r in paper_augment.summary(rows, corr)}
    assert all(s[a]["test_acc_vs_none_lo"] <= s[a]["test_acc_vs_none_diff"] <= s[a]["test_acc_vs_none_hi"] for a in arms[1:])
    assert "test_acc_vs_identity_diff" in s["unroll 3"] and "test_acc_vs_identity_diff" not in s["identity"]
    assert "within noise" in readme or "gain" in readme or "loss" in readme


def test_the_augmentation_intervals_refuse_arms_scored_on_different_images():
    """Arms are compared only on the same examples in the same order: a fingerprint that differs
    between two arms at one seed is an error, not a silently unpaired comparison."""
    from hgbench.benchmarks import paper_augment

    row = {"seed": 0, "split": "test", "step": 2, "n": 4, "acc": 0.5, "correct": "1100"}
    good = [{**row, "arm": "none", "fingerprint": "a"}, {**row, "arm": "identity", "fingerprint": "a"}]
    paper_augment.check_pairs(good)
    i = paper_augment.intervals(good, n_boot=200)
    assert i[("identity", "none", "test")]["diff"] == 0.0 and i[("none", "", "test")]["diff"] == 0.5
    with pytest.raises(AssertionError, match="different fingerprint"):
        paper_augment.check_pairs([*good, {**row, "arm": "unroll 3", "fingerprint": "b"}])
