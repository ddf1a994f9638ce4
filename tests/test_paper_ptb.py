"""The paper's RNN-regularisation experiment (issue 11, experiment 5): the lstm's AWD-LSTM
regularisers (DropConnect on the recurrent weights, word dropout, AR / TAR activations), the
``dropout_rates`` family (the paper's 7 hyperparameters), the per-unit family's extras, the presets
``paper_ptb`` / ``paper_ptb_awd`` at a tiny size and the ``paper_ptb`` study's quick run — on a
made-up 30-word corpus in place of PTB (loading the real one takes seconds)."""

import math

import pytest
import torch

from hgbench import ConfigError, build_experiment, testing

WORDS = 30
TINY = ["dataset.bptt=5", "dataset.streams=2", "dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4",
        "model.embedding_dim=4", "model.hidden_size=3", "hyper_steps=2", "inner_steps=2", "warmup=false", "mlflow.enabled=false"]


@pytest.fixture
def tiny_corpus(monkeypatch):
    """``dataset=ptb`` reads a random 30-word corpus (500 tokens per split) instead of PTB."""
    from hgbench.plugins.dataset import ptb

    g = torch.Generator().manual_seed(0)
    ids = {s: torch.randint(0, WORDS, (500,), generator=g) for s in ("train", "valid", "test")}
    monkeypatch.setattr(ptb, "corpus", lambda: (tuple(f"w{i}" for i in range(WORDS)), ids))


def lstm(**kw):
    from hgbench.plugins.model.lstm import LSTM

    torch.manual_seed(0)
    return LSTM(**{"embedding_dim": 4, "hidden_size": 3, "num_layers": 2, **kw}).build((6,), WORDS)


def test_lstm_regularisers_are_off_unless_given_and_act_where_they_should():
    m, x = lstm(), torch.randint(0, WORDS, (2, 6), generator=torch.Generator().manual_seed(1))
    plain = m(x)
    ones = {s: torch.ones(shape) for s, shape in m.weight_drop_sites.items()}
    assert m.weight_drop_sites == {"hh0": (12, 3), "hh1": (16, 4)} and m.vocab_size == WORDS
    assert torch.equal(m(x, weight_masks=ones, word_mask=torch.ones(WORDS), activations={}), plain)
    # DropConnect on weight_hh: the first step has no h_{t-1}, so it is untouched; later steps change
    dropped = m(x, weight_masks={"hh0": torch.zeros(12, 3)})
    assert torch.equal(dropped[:, 0], plain[:, 0]) and not torch.allclose(dropped[:, 1:], plain[:, 1:])
    # word dropout zeroes every occurrence of the word's embedding, and only the input side (tied decoder intact)
    mask = torch.ones(WORDS)
    mask[x[0, 0]] = 0
    acts = {}
    out = m(x, word_mask=mask, activations=acts)
    ref = m(torch.where(x == x[0, 0], 0, x), unit_masks={"embedding": (x != x[0, 0]).float().unsqueeze(-1).expand(2, 6, 4)})
    torch.testing.assert_close(out, ref)
    assert acts["output"].shape == (2, 6, 4) and torch.equal(acts["output"], acts["output_raw"])  # no output mask given
    with pytest.raises(ConfigError, match=r"unknown weight-drop site\(s\) \['hh2'\]"):
        m(x, weight_masks={"hh2": torch.ones(1)})


def test_dropout_rates_learns_the_papers_seven_and_each_meets_w(tiny_corpus):
    exp = build_experiment(overrides=["experiment=paper_ptb", *TINY])
    p = exp.problem
    lam = p.lam_spec.unflatten(p.lam0)
    assert list(lam) == ["embedding", "hidden0", "output", "weight_hh", "word", "ar", "tar"] and p.num_hyperparams == 7
    metrics = p.family.metrics(lam)
    assert metrics["drop_rate/weight_hh"] == pytest.approx(0.05) and metrics["ar"] == pytest.approx(0.01)
    w = p.w0.clone().requires_grad_(True)
    lam_flat = p.lam0.clone().requires_grad_(True)
    torch.manual_seed(0)
    (gw,) = torch.autograd.grad(p.train_loss(w, lam_flat, p.full_batch("train")), w, create_graph=True)
    (mixed,) = torch.autograd.grad(gw @ torch.randn_like(gw), lam_flat)
    assert (mixed != 0).all(), "every one of the 7 enters L_T with w (a zero here: IFT would never move it)"
    per_unit = build_experiment(overrides=["experiment=paper_ptb", "hyperparam=dropout_per_unit", *TINY]).problem
    assert per_unit.num_hyperparams == (4 + 3 + 4) + (12 * 3 + 16 * 4) + 3  # per unit at 3 sites, per weight_hh weight, word, AR, TAR
    with pytest.raises(ConfigError, match="weight_drop needs model=lstm"):
        build_experiment(overrides=["dataset=synthetic_linear", "model=mlp", "model.hidden=[3]", "hyperparam=dropout_rates",
                                    "hyperparam.weight_drop=0.1", "mlflow.enabled=false"])


def test_dropout_rates_meets_the_family_contract_on_an_lstm(tiny_corpus):
    testing.check_family("dropout_rates", dataset="ptb", model="lstm", dataset_params={"bptt": 5, "train_size": 6, "val_size": 4, "test_size": 4},
                         model_params={"embedding_dim": 4, "hidden_size": 3}, weight_drop=0.1, word_dropout=0.1, ar=0.01, tar=0.01)


@pytest.mark.parametrize("preset", ["paper_ptb", "paper_ptb_awd"])
def test_the_ptb_presets_run_at_a_tiny_size(tiny_corpus, preset):
    exp = build_experiment(overrides=[f"experiment={preset}", *TINY, "eval_every=1"])
    result = exp.run()
    assert result.status == "FINISHED", result.error
    assert exp.streams == 2 and math.isfinite(result.summary["val_ppl"]) and math.isfinite(result.summary["test_ppl"])
    assert result.summary["hp/drop_rate/word"] != pytest.approx(0.05, abs=1e-9)  # λ moved: the IFT runs
    cfg = exp.cfg
    assert (cfg.model.hidden_size, cfg.dataset.bptt) == (3, 5)  # the tiny overrides won


@pytest.mark.slow  # a study's quick run (the README's definition of slow)
def test_the_ptb_study_quick_run_compares_no_tuning_with_both_ift_variants(tiny_corpus, tmp_path):
    from hgbench.benchmarks import paper_ptb

    rows = paper_ptb.run(tmp_path, quick=True, device="cpu")
    by = {r["config"]: r for r in rows}
    assert list(by) == ["fixed", "ift_7", "ift_per_unit"]
    assert all(math.isfinite(r[f"{s}_ppl"]) and r[f"{s}_ppl"] > 1 for r in rows for s in ("val", "test", "best_val", "best_test"))
    assert all(r["best_val_ppl"] <= r["val_ppl"] for r in rows)  # the best point is the lowest of the curve, the last included
    assert by["fixed"]["hp_word"] == pytest.approx(0.05) and by["fixed"]["hp_ar"] == pytest.approx(0.01)  # no tuning: λ as started
    assert by["ift_7"]["hp_word"] != pytest.approx(0.05) and by["ift_7"]["num_hyperparams"] == 7
    assert by["ift_per_unit"]["num_hyperparams"] > 7 and 0 < by["ift_per_unit"]["hp_weight_hh"] < 1
    readme = (tmp_path / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "75.72 / 71.91" in readme and "Where we differ from the paper" in readme
    assert "Differences, paired by seed" in readme and "one seed: no interval" in readme
    assert (tmp_path / "ptb.png").stat().st_size > 10_000
    from hgbench.benchmarks.output import read_csv

    diffs = read_csv(tmp_path / "ptb_diffs.csv")
    d = next(r for r in diffs if (r["a"], r["b"], r["metric"]) == ("ift_7", "fixed", "val_ppl"))
    assert d["reduction"] == pytest.approx(by["fixed"]["val_ppl"] - by["ift_7"]["val_ppl"], rel=1e-4)  # b − a, paired by seed
    assert d["seeds"] == 1 and d["lo"] == d["hi"] == "" and d["interval"] == "none (one seed)"  # one seed: no interval
    again = paper_ptb.reading(*(read_csv(tmp_path / f"{n}.csv") for n in ("ptb", "ptb_curve", "ptb_hparams")), quick=True)
    assert again == readme  # what rewrite() writes, from the CSVs alone
    paper_ptb.rewrite(tmp_path)  # the differences again too, naming the runs' commit beside this tree's
    redone = read_csv(tmp_path / "ptb_diffs.csv")
    assert {r["runs_commit"] for r in redone} == {str(read_csv(tmp_path / "ptb.csv")[0]["commit"])} and len(redone) == len(diffs)
    assert [r["reduction"] for r in redone] == pytest.approx([r["reduction"] for r in diffs], abs=1e-3)  # from the CSV's 6 digits


def test_ptb_differences_are_paired_by_seed_and_their_word_follows_the_interval():
    from hgbench.benchmarks import paper_ptb

    rows = [{"config": c, "seed": s, **{k: base + s + (0 if c == "fixed" else shift) for k in paper_ptb.METRICS}}
            for c, shift in (("fixed", 0.0), ("ift_7", -5.0), ("ift_per_unit", 0.0)) for s, base in ((0, 100.0), (1, 150.0), (2, 200.0))]
    rows[-1]["val_ppl"] += 3  # per-unit, seed 2: 3 ppl worse than no tuning, the others equal
    d = {(r["a"], r["b"], r["metric"]): r for r in paper_ptb.differences(rows)}
    seven = d[("ift_7", "fixed", "val_ppl")]
    assert seven["reduction"] == pytest.approx(5.0) and seven["lo"] == pytest.approx(5.0) and not seven["within_noise"]  # seed spread cancels
    assert "gain" in paper_ptb._diff(seven)
    unit = d[("ift_per_unit", "fixed", "val_ppl")]
    # 0, 0, −3: mean −1, s = √3, Student's t(0.975, 2) = 4.302653: −1 ± 4.302653
    assert unit["reduction"] == pytest.approx(-1.0) and unit["lo"] == pytest.approx(-5.302653) and unit["hi"] == pytest.approx(3.302653)
    assert unit["per_seed"] == "+0.00 +0.00 -3.00" and unit["interval"] == "student_t_2df"
    assert unit["within_noise"] and "within noise" in paper_ptb._diff(unit)
    assert d[("ift_per_unit", "ift_7", "test_ppl")]["reduction"] == pytest.approx(-5.0) and "loss" in paper_ptb._diff(d[("ift_per_unit", "ift_7", "test_ppl")])


def test_the_ptb_pilot_reports_the_validation_curve_and_its_cost(tiny_corpus):
    from hgbench.benchmarks import paper_ptb

    rows = paper_ptb.pilot(8, 4, ("dataset.bptt=5", "dataset.streams=2", "dataset.train_size=8", "dataset.val_size=4",
                                  "dataset.test_size=4", "model.embedding_dim=4", "model.hidden_size=3", "inner_steps=2"), echo=False)
    assert [r["inner_steps"] for r in rows] == [4, 8] and all(1 < r["val_ppl"] < 10 * WORDS for r in rows)
    assert all(r["cpu_s"] > 0 and r["threads"] == 1 for r in rows) and rows[1]["wall_s"] >= rows[0]["wall_s"]


def test_the_reading_names_the_inner_learning_rate_schedule():
    from hgbench.benchmarks.paper_ptb import _schedule

    assert _schedule({"inner_lr": "0.01", "inner_decay": "0.5", "inner_decay_every": "664"}) == "lr 0.01, halved every 664 steps"
    assert _schedule({"inner_lr": 0.02, "inner_decay": 0.1, "inner_decay_every": 100}) == "lr 0.02, × 0.1 every 100 steps"
    assert _schedule({"inner_lr": 0.01, "inner_decay": 1.0, "inner_decay_every": 0}) == "lr 0.01"  # constant
    assert "inner_optimizer.decay" in _schedule({"inner_lr": 0.01})  # rows from before the columns: where it is set
