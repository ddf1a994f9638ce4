"""The paper's "overfitting a small validation set" (issue 11, experiment 2): ``hgbench-bench
paper_overfit --quick`` runs both presets (``paper_overfit`` on MNIST, ``paper_overfit_lstm`` on
PTB) at a tiny size through the real framework, for every decay family, and writes its CSVs, plots
and README. One study run, shared by the tests (a few seconds in all)."""

import math

import pytest

INIT_DECAY = {"linear": 0.0366, "lstm": 2.0e-6}  # the authors' log decays −4 and log(1e-6) under exp(λ)·w², in ½·d·w²


# the study's quick run, through the real framework: an end-to-end run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The quick study on the linear model and the LSTM (the MLP and CNN run the same code with
    another ``model=``), every built experiment's config kept."""
    import hgbench
    from hgbench.benchmarks import paper_overfit

    out = tmp_path_factory.mktemp("overfitting")
    cfgs = []
    build = hgbench.build_experiment

    def spy(*args, **kwargs):
        exp = build(*args, **kwargs)
        cfgs.append(exp.cfg)
        return exp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hgbench, "build_experiment", spy)
        mp.setattr(paper_overfit, "MODELS", ("linear", "lstm"))
        rows = paper_overfit.run(out, quick=True, device="cpu")
    return out, rows, cfgs


def test_the_presets_hold_the_papers_settings(study):
    _, _, cfgs = study
    assert len(cfgs) == 2 * 3  # two models × three families, one seed
    for cfg in cfgs:
        assert cfg.train_batch_size is None and cfg.val_batch_size is None  # full batches
        assert cfg.inner_optimizer._target_ == "hgbench.optim.Adam" and cfg.hypergrad.name in ("identity", "fixed")
        if cfg.hypergrad.name == "identity":
            assert cfg.hypergrad.scale == 1.0  # the authors' identity: ∂L_V/∂w unscaled
        if cfg.dataset.name == "mnist":
            assert (cfg.dataset.train_size, cfg.dataset.val_size) == (50, 50) and cfg.outer_optimizer._target_ == "torch.optim.RMSprop"
            assert cfg.inner_steps == 5 and cfg.warmup_steps == 0
        else:
            assert cfg.dataset.name == "ptb" and cfg.model.name == "lstm" and cfg.outer_optimizer._target_ == "torch.optim.Adam"
            assert cfg.inner_steps == 1


def test_every_cell_is_run_from_the_same_start_and_recorded(study):
    from hgbench.benchmarks.paper_overfit import FAMILIES, QUICK_STEPS

    _, rows, _ = study
    cells: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["family"]), []).append(r["step"])
    assert set(cells) == {(m, f) for m in ("linear", "lstm") for f in FAMILIES}
    assert all(sorted(steps) == list(range(QUICK_STEPS + 1)) for steps in cells.values())
    for r in rows:
        for split in ("train", "val", "test"):
            assert 0 <= r[f"{split}_acc"] <= 1 and math.isfinite(r[f"{split}_loss"])
        if r["model"] == "lstm":
            assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-9) and math.isfinite(r["test_ppl"])
    by = {(r["model"], r["family"], r["step"]): r for r in rows}
    for m in ("linear", "lstm"):
        start = [by[(m, f, 0)] for f in FAMILIES]
        # the families differ only in how λ moves: same decay, same data, same initialisation at step 0
        assert len({(r["val_loss"], r["test_loss"]) for r in start}) == 1
        assert by[(m, "per-weight", 0)]["mean_log_decay"] == pytest.approx(math.log(INIT_DECAY[m]), abs=1e-5)
        assert by[(m, "global", 0)]["decay"] == pytest.approx(INIT_DECAY[m], rel=1e-5)
        pw, gl, fx = (by[(m, f, QUICK_STEPS)] for f in ("per-weight", "global", "fixed"))
        assert pw["num_hyperparams"] == pw["num_weights"] > 1 and gl["num_hyperparams"] == 1
        assert pw["std_log_decay"] > 1e-3 and fx["std_log_decay"] < 1e-5  # the per-weight decays moved apart; the fixed ones did not
        assert fx["mean_log_decay"] == pytest.approx(math.log(INIT_DECAY[m]), abs=1e-5)
    assert {r["n_train"] for r in rows if r["model"] == "linear"} == {50}


def test_the_study_writes_its_csvs_plots_and_a_reading(study):
    from hgbench.benchmarks import paper_overfit

    out, _, _ = study
    for name in ("overfitting.csv", "overfitting_lstm.csv"):
        assert (out / name).stat().st_size > 500
    for name in ("overfitting.png", "overfitting_lstm.png"):
        assert (out / name).stat().st_size > 10_000
    readme = (out / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "| linear | per-weight |" in readme and "Where we differ from the paper" in readme
    assert "**Reading**" in readme and "**Reading (LSTM)**" in readme and "--quick --out results/paper/overfitting" in readme
    # the per-example rows: val and test of every run, the logged accuracy example by example, the
    # same examples for every family at one model and seed; the README's differences carry intervals
    from hgbench.benchmarks import per_example

    corr = per_example.read_gz(out / "overfitting_correct.csv.gz")
    _, rows, _ = study
    last = {(r["model"], r["family"]): r for r in rows if r["step"] == paper_overfit.QUICK_STEPS}
    assert {(r["model"], r["family"], r["split"]) for r in corr} == {(*k, sp) for k in last for sp in ("val", "test")}
    for r in corr:
        assert abs(per_example.decode(r["correct"]).mean() - last[(r["model"], r["family"])][f"{r['split']}_acc"]) < 1e-9
        assert r["commit"] and (r["nll"] != "") == (r["model"] == "lstm")
    assert len({(r["model"], r["split"], r["fingerprint"]) for r in corr}) == 4
    iv = paper_overfit.intervals(corr, n_boot=200)
    assert all(i["lo"] <= i["diff"] <= i["hi"] for i in iv.values())
    assert ("linear", "gap per-weight − fixed") in iv and ("lstm", "nll val per-weight − fixed") in iv
    assert "Differences with their intervals" in readme and "[" in readme
    bad = [dict(r) for r in corr]
    bad[0]["fingerprint"] = "other"
    with pytest.raises(AssertionError, match="different fingerprint"):
        paper_overfit.check_pairs(bad)
    with pytest.MonkeyPatch.context() as mp:  # the README again from the CSVs (not the plots: seconds): the same reading
        mp.setattr(paper_overfit, "plot", lambda rows, out: None)
        mp.setattr(paper_overfit, "plot_lstm", lambda rows, out: None)
        paper_overfit.rewrite(out)
    assert (out / "README.md").read_text() == readme
