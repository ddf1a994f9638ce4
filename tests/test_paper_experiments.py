"""The groundwork of the paper's experiments (issue 11): Boston housing, perplexity and truncated
BPTT for language models, distillation judged by fresh models, honest report pictures, and the
paper presets at a tiny size. Everything in-process and tiny (a few seconds in all)."""

import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from hgbench import ConfigError, DataSplits, Dataset, build_experiment, compose_config
from hgbench.base import Split
from hgbench.testing import registered

# --- dataset=boston: the CSV inside mlxtend --------------------------------------------------


def test_boston_reads_the_real_csv_standardised_with_training_statistics():
    from hgbench.plugins.dataset.boston import Boston, csv_path, table

    assert csv_path().name == "boston_housing.csv"
    x, y = table()
    assert x.shape == (506, 13) and y.shape == (506,)
    assert x[0, 0].item() == pytest.approx(0.00632) and y[0].item() == pytest.approx(24.0)  # the first row of the classic file
    d = Boston().load()
    assert (len(d.train.x), len(d.val.x), len(d.test.x)) == (300, 100, 106) and d.task == "regression"
    torch.testing.assert_close(d.train.x.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(d.train.x.std(0), torch.ones(13, dtype=torch.float64))
    assert d.val.x.mean(0).abs().max() > 1e-3  # val/test use the training statistics, not their own
    assert d.train.y.mean().abs() < 1e-12 and d.meta["target_std"] == pytest.approx(9.2, abs=0.6)
    again, other = Boston().load(), Boston(split_seed=1).load()
    assert torch.equal(again.val.x, d.val.x) and not torch.equal(other.val.x, d.val.x)
    with pytest.raises(ConfigError, match="506 rows"):
        Boston(train_size=400, val_size=200)


def test_boston_without_mlxtend_names_the_install_command(monkeypatch):
    from hgbench.plugins.dataset import _common, boston

    monkeypatch.setattr(_common, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install mlxtend==0\.25\.0"):
        boston.csv_path()


def test_boston_linear_per_weight_decay_is_14_hyperparameters():
    exp = build_experiment(overrides=["dataset=boston", "model=linear", "hyperparam=weight_decay_per_param", "dtype=float64"])
    assert exp.problem.num_weights == exp.problem.num_hyperparams == 14  # 13 weights + 1 bias, each decayed


# --- sequence tasks: perplexity and truncated BPTT -------------------------------------------

BPTT, STREAMS, WINDOWS = 4, 2, 3  # per split: 2 streams of 3 windows of 4 tokens


def stream_split(seed):
    """Rows in stream layout (row k·B + b = window k of stream b) cut from random token streams;
    returns the split and the streams themselves, (B, K·T + 1)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 11, (STREAMS, WINDOWS * BPTT + 1), generator=g)
    xs, ys = [], []
    for k in range(WINDOWS):
        for b in range(STREAMS):
            xs.append(tokens[b, k * BPTT:(k + 1) * BPTT])
            ys.append(tokens[b, k * BPTT + 1:(k + 1) * BPTT + 1])
    return Split(torch.stack(xs), torch.stack(ys)), tokens


@dataclass
class TinyStreams(Dataset):
    name = "tiny_streams"

    def load(self):
        return DataSplits(*(stream_split(s)[0] for s in (0, 1, 2)), task="classification", num_outputs=11,
                          input_shape=(BPTT,), streams=STREAMS)


TINY_LM = ["dataset=tiny_streams", "model=lstm", "model.embedding_dim=3", "model.hidden_size=3", "hyperparam=weight_decay",
           "dtype=float64", "train_batch_size=null", "val_batch_size=null", "inner_steps=1", "hyper_steps=2", "eval_every=1",
           "warmup=false"]


@pytest.fixture
def tiny_lm():
    with registered(TinyStreams):
        yield build_experiment(overrides=TINY_LM)


def test_ptb_stream_layout_puts_window_k_of_stream_b_at_row_k_times_b_plus_b():
    from hgbench.plugins.dataset.ptb import PTB, sequences

    s = sequences(torch.arange(25), 2)  # 12 windows of 2 tokens
    out = PTB(streams=3, train_size=6).stream_layout(s, 6, "train_size", "train", torch.Generator().manual_seed(0))
    start = out.x[0, 0].item() // 2  # a contiguous run of 6 windows from a seeded start
    want = [start + b * 2 + k for k in range(2) for b in range(3)]  # 3 streams of 2 windows
    assert out.x[:, 0].tolist() == [2 * w for w in want] and torch.equal(out.y, out.x + 1)
    with pytest.raises(ConfigError, match="multiple of streams=3"):
        PTB(streams=3, train_size=7)


def test_the_state_carries_from_window_to_window_and_resets_at_an_epoch(tiny_lm):
    exp = tiny_lm
    assert exp.streams == STREAMS and type(exp.train_sampler).__name__ == "StreamSampler"
    first = exp.train_sampler.next()
    assert first.state is None and first.idx.tolist() == [0, 1]  # zeros at the start
    with pytest.raises(RuntimeError, match="call carry_state"):  # a window is carried before the next is drawn
        exp.train_sampler.next()
    exp.train_sampler.carry_state(exp.w)
    second = exp.train_sampler.next()
    _, want = exp.problem.forward_with_state(exp.w, first.x)  # window 0's final state at w
    assert second.idx.tolist() == [2, 3]
    assert all(torch.equal(a, b) for got, ref in zip(second.state, want, strict=True) for a, b in zip(got, ref, strict=True))
    assert not any(t.requires_grad for layer in second.state for t in layer)  # detached: truncated BPTT
    exp.train_sampler.carry_state(exp.w)
    exp.train_sampler.next()  # window 2, the last
    exp.train_sampler.carry_state(exp.w)
    wrapped = exp.train_sampler.next()
    assert wrapped.idx.tolist() == [0, 1] and wrapped.state is None  # an epoch boundary: zeros again
    # carrying the state is continuing the sequence: window 1 from window 0's state = the tail of both windows in one go
    _, tokens = stream_split(0)
    whole = exp.problem.forward(exp.w, tokens[:, : 2 * BPTT])
    torch.testing.assert_close(exp.problem.forward(exp.w, second.x, second.state), whole[:, BPTT:])
    # and the family's loss runs the model from the batch's state: L_T on window 1 depends on it
    lam = exp.lam.detach()
    assert exp.problem.train_loss(exp.w, lam, second) != exp.problem.train_loss(exp.w, lam, second._replace(state=None))


@pytest.mark.parametrize("method", ["fixed", "identity"])
def test_every_training_window_starts_from_the_state_the_previous_one_ended_in(method):
    """Also with hypergrad=fixed, which never runs the model on its hyper-step's window: the no-tuning
    baseline's streams must not restart from zeros once per hyper-step."""
    with registered(TinyStreams):
        exp = build_experiment(overrides=[*TINY_LM, f"hypergrad={method}"])
    seen = []
    nxt = exp.train_sampler.next
    exp.train_sampler.next = lambda: seen.append(nxt()) or seen[-1]
    for step in (1, 2):
        exp.hyper_step(step)
    assert len(seen) == 4  # inner_steps=1 + the hypergradient's window, twice
    for k, b in enumerate(seen):
        at_epoch_start = k % WINDOWS == 0
        assert (b.state is None) == at_epoch_start, k


def test_evaluation_carries_the_state_and_sequence_tasks_log_perplexity(tiny_lm):
    exp = tiny_lm
    import torch.nn.functional as F

    _, tokens = stream_split(1)  # the val split: each stream evaluated as one sequence from zeros
    out = exp.problem.forward(exp.w, tokens[:, :-1])
    want = F.cross_entropy(out.reshape(-1, 11), tokens[:, 1:].reshape(-1)).item()
    metrics = exp.evaluate()
    assert metrics["val_loss"] == pytest.approx(want, rel=1e-12)
    for split in ("train", "val", "test"):
        assert metrics[f"{split}_ppl"] == pytest.approx(math.exp(metrics[f"{split}_loss"]))
    # a run hands them to the recorders (MLflow logs that dict as is) at every evaluation, with the state carried
    seen = []
    exp.problem.family.metrics = lambda lam, _seen=seen: _seen.append(1) or {}  # counts the evaluations
    result = exp.run()
    assert result.status == "FINISHED", result.error
    assert len(seen) == 3 and result.summary["val_ppl"] == pytest.approx(math.exp(result.summary["val_loss"]))
    assert math.isfinite(result.summary["test_ppl"])


def test_truncated_bptt_refuses_minibatches_of_another_size():
    with registered(TinyStreams), pytest.raises(ConfigError, match="train_batch_size=5.*2 streams"):
        build_experiment(overrides=TINY_LM + ["train_batch_size=5"])


# --- distillation judged the paper's way -----------------------------------------------------

TINY_DISTILL = ["dataset=digits", "dataset.train_size=100", "dataset.val_size=50", "dataset.test_size=100", "model=linear",
                "hyperparam=distill", "hyperparam.fresh_steps=20", "hyperparam.fresh_lr=0.5", "hyperparam.fresh_seeds=3"]


def test_fresh_models_learn_from_the_images_only():
    exp = build_experiment(overrides=TINY_DISTILL + ["hyperparam.init=zeros"])
    fam, spec = exp.problem.family, exp.problem.lam_spec
    lam = spec.unflatten(exp.lam.detach())
    assert lam["images"].abs().max() == 0  # init: zeros
    before = fam.metrics(lam)
    assert set(before) == {f"distill/{k}{s}" for k in ("fresh_test_acc", "random_real_fresh_test_acc",
                                                       "class_mean_fresh_test_acc") for s in ("", "_std")}
    exp.train_inner(30)  # move the co-trained weights: the fresh evaluation must not see them
    assert fam.metrics(lam) == before
    assert before["distill/fresh_test_acc"] < 0.25  # blank images teach nothing (10 classes)
    # the learned images = the class means: the same recipe, the same result as the class-mean baseline
    means = fam.baseline_images("class_mean", 0)
    assert fam.metrics({"images": means})["distill/fresh_test_acc"] == before["distill/class_mean_fresh_test_acc"] > 0.5
    # fresh initialisations: new for every seed and not the run's own
    w0, w1 = fam.fresh_init(exp.problem.ctx, 1), fam.fresh_init(exp.problem.ctx, 2)
    assert not torch.equal(w0, w1) and not torch.equal(w0, exp.problem.w0)


def test_distilled_png_has_one_colour_scale_and_square_pixels():
    exp = build_experiment(overrides=TINY_DISTILL + ["hyperparam.init=noise"])
    lam = exp.problem.lam_spec.unflatten(exp.lam.detach())
    lam["images"][3] *= 5.0  # one bright image must not be rescaled on its own
    fig = exp.problem.family.figures(lam)["distilled.png"]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 10 and len({im.get_clim() for im in images}) == 1
    assert images[0].get_clim()[1] == pytest.approx(lam["images"].max().item())
    assert {ax.get_aspect() for ax in fig.axes if ax.get_images()} == {1.0}
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    import matplotlib.pyplot as plt

    plt.close(fig)


# --- the report's pictures -------------------------------------------------------------------


def test_memory_is_drawn_only_where_resolved_above_noise(monkeypatch, tmp_path):
    from hgbench import plots

    assert plots.memory_resolved([0.3, 0.9, 0.1], "cpu_peak_rss_growth") == (False, 1.0)  # sub-MB RSS noise
    assert plots.memory_resolved([6.1, 6.3], "cpu_peak_rss_growth")[0]
    assert not plots.memory_resolved([2.0, 9.0], "cpu_peak_rss_growth")[0]  # the spread over seeds is the noise
    assert plots.memory_resolved([0.5], "cuda_max_allocated")[0]  # exact counts: no floor
    runs = pd.DataFrame({"tick": ["cg", "cg", "neumann", "neumann"], "series": ["cg", "cg", "neumann", "neumann"],
                         "peak_memory_mb": [0.2, 0.6, 6.1, 6.2], "memory_kind": ["cpu_peak_rss_growth"] * 4})
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.plot_peak_memory(runs, {"cg": "C0", "neumann": "C1"}, tmp_path / "m.png")
    texts = [t.get_text() for t in figs[0].axes[0].texts]
    assert texts[0].startswith("not resolved") and texts[1].startswith("6.15 MB (min–max 6.1–6.2)")


def test_val_loss_plot_shows_the_effect_against_the_fixed_run(monkeypatch, tmp_path):
    from hgbench import plots

    rows, metrics = [], []
    for method, seed, losses in (("fixed", 0, [2.3, 1.0, 0.9]), ("neumann", 0, [2.3, 0.8, 0.5]),
                                 ("fixed", 1, [2.3, 1.1, 1.0]), ("neumann", 1, [2.3, 0.9, 0.7])):
        rid = f"{method}{seed}"
        rows.append({"run_id": rid, "series": method, "method": method, "family": "weight_decay", "seed": seed,
                     "dataset": "digits", "model": "mlp", "val_loss": losses[-1], "optuna_total_s": float("nan")})
        for step, v in enumerate(losses):
            metrics += [{"run_id": rid, "key": "val_loss", "step": step, "value": v},
                        {"run_id": rid, "key": "elapsed_s", "step": step, "value": 0.1 * step}]
    runs, metrics = pd.DataFrame(rows), pd.DataFrame(metrics)
    wide = metrics.pivot_table(index=["run_id", "step"], columns="key", values="value").reset_index() \
        .merge(runs[["run_id", "series", "dataset", "model"]], on="run_id")
    rel = plots.relative_to_fixed(runs, wide).set_index(["run_id", "step"])["delta"]
    assert rel[("neumann0", 2)] == pytest.approx(-0.4) and rel[("neumann1", 1)] == pytest.approx(-0.2)
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.plot_val_loss_vs_time(runs, metrics, {"fixed": "C0", "neumann": "C1"}, tmp_path / "v.png")
    assert len(figs[0].axes) == 2 and "effect of the hyper-optimisation" in figs[0].axes[1].get_title()
    without = runs[runs["method"] != "fixed"]
    plots.plot_val_loss_vs_time(without, metrics[metrics["run_id"].isin(without["run_id"])], {"neumann": "C1"}, tmp_path / "w.png")
    assert len(figs[1].axes) == 1  # no fixed run: no second row


def test_summary_shows_perplexity_and_fresh_accuracy_columns():
    from hgbench.report import aggregate, summary_table

    runs = pd.DataFrame([{"method": "neumann", "family": "distill", "dataset": "mnist_5k", "model": "linear", "status": "finished",
                          "seed": s, "val_ppl": 100.0 + s, "hp/distill/fresh_test_acc": 0.5 + 0.1 * s} for s in (0, 1)])
    text = summary_table(aggregate(runs))
    assert "val ppl" in text and "fresh test acc (learned images)" in text and "0.5500 ± 0.071" in text


# --- the paper presets, tiny ------------------------------------------------------------------


def test_paper_boston_preset_runs_tiny():
    cfg = compose_config(["experiment=paper_boston_inverse"])
    assert cfg.outer_optimizer._target_ == "torch.optim.RMSprop" and cfg.inner_optimizer._target_ == "hgbench.optim.Adam"
    assert cfg.train_batch_size is None and cfg.val_batch_size is None
    exp = build_experiment(overrides=["experiment=paper_boston_inverse", "hyper_steps=2", "eval_every=1"])
    assert exp.problem.num_hyperparams == 14
    result = exp.run()
    assert result.status == "FINISHED", result.error
    assert -1 <= result.summary["hg_cosine"] <= 1 and math.isfinite(result.summary["test_loss"])


def test_paper_distill_preset_runs_tiny():
    cfg = compose_config(["experiment=paper_distill_mnist"])
    assert (cfg.model.name, cfg.hyperparam.init, cfg.hyperparam.per_class, cfg.dataset.name) == ("linear", "zeros", 1, "mnist_5k")
    assert cfg.hyperparam.fresh_seeds >= 3 and cfg.val_batch_size is not None  # real validation minibatches
    # the preset on digits, so the test needs no MNIST parse (test_sweeps runs every preset on its own data)
    exp = build_experiment(overrides=["experiment=paper_distill_mnist", "hyper_steps=2", "eval_every=2", "dataset=digits",
                                      "hyperparam.fresh_steps=10"])
    assert exp.problem.num_hyperparams == 10 * 64
    result = exp.run()
    assert result.status == "FINISHED", result.error
    assert 0 <= result.summary["hp/distill/fresh_test_acc"] <= 1 and "hp/distill/class_mean_fresh_test_acc" in result.summary


def test_the_inverse_quality_study_compares_with_the_exact_hypergradient(tmp_path, monkeypatch):
    """``hgbench-bench paper_inverse --quick``: CG with more steps than Boston has weights is the
    exact solve (ℓ2 ≈ 0, cosine 1); Neumann with 0 steps equals CG's first iterate in direction
    (both ∝ ∂L_V/∂w: the same cosine) and Neumann's error falls with its terms."""
    from hgbench.benchmarks import paper_inverse

    monkeypatch.setattr(paper_inverse, "METHODS", (("neumann", 0), ("neumann", 5), ("cg", 20)))
    rows = paper_inverse.run(tmp_path, quick=True, device="cpu")
    mean = {m: sum(r["l2"] for r in rows if r["method"] == m) / sum(1 for r in rows if r["method"] == m) for m in ("neumann 0", "neumann 5", "cg 20")}
    assert mean["cg 20"] < 1e-12 * mean["neumann 0"] and mean["neumann 5"] < mean["neumann 0"]
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-9) for r in rows if r["method"] == "cg 20")
    import csv

    with open(tmp_path / "inverse_steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    cos = {(r["method"], r["i"]): r["cosine"] for r in steps if r["at_step"] == "1"}
    assert float(cos[("cg", "1")]) == pytest.approx(float(cos[("neumann", "0")]), rel=1e-9)  # CG's first iterate ∝ b, like Neumann's 0th
    assert cos[("cg", "0")] in ("", "nan")  # CG with no step answers 0: no direction, no cosine
    readme = (tmp_path / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "higher cosine" in readme and (tmp_path / "inverse_steps.png").stat().st_size > 10_000
    from hgbench.benchmarks import output

    ivs = output.read_csv(tmp_path / "inverse_intervals.csv")
    assert {(r["method"], r["quantity"]) for r in ivs if r["where"] == "along the runs"} >= {
        ("neumann 0", "cosine_minus_cg20"), ("neumann 5", "l2_minus_cg20"), ("neumann 5", "share_larger_l2")}
    assert all(r["n"] == 1 and r["lo"] == r["hi"] == "" for r in ivs)  # one seed (--quick): no interval
    l2 = next(r for r in ivs if (r["method"], r["quantity"]) == ("neumann 0", "l2_minus_cg20"))
    assert l2["mean"] > 0  # CG 20 is exact here: Neumann 0's ℓ2 is larger
    assert "cosine − CG 20's" in readme and "Student's t interval" in readme and "one seed: no interval" in readme


def test_the_inverse_quality_seeds_draw_their_own_split(monkeypatch):
    """Each seed of the inverse-quality study is its own Boston split, not only its own init."""
    import hgbench
    from hgbench.benchmarks import paper_inverse

    seen = []

    def capture(overrides):
        seen.append(overrides)
        raise RuntimeError("captured")

    monkeypatch.setattr(hgbench, "build_experiment", capture)
    with pytest.raises(RuntimeError, match="captured"):
        paper_inverse.trajectory("neumann", 0, 3, 1, 1, "cpu")
    assert "seed=3" in seen[0] and "dataset.split_seed=3" in seen[0]
    assert len(paper_inverse.SEEDS) >= 3


def test_the_docs_name_only_presets_and_studies_that_exist():
    """Every ``experiment=<name>`` in README.md and results/paper/README.md is a preset under
    conf/experiment/, and every ``hgbench-bench <study> --out <folder>`` there writes where
    ``STUDY_OUT`` says, into a committed folder with its own README."""
    import re
    from pathlib import Path

    from hgbench.benchmarks import STUDIES, STUDY_OUT

    root = Path(__file__).resolve().parent.parent
    presets = {p.stem for p in (root / "conf" / "experiment").glob("*.yaml")}
    text = (root / "README.md").read_text() + (root / "results" / "paper" / "README.md").read_text()
    named = set(re.findall(r"experiment=([a-z0-9_]+)", text))
    assert named and named <= presets, sorted(named - presets)
    runs = re.findall(r"hgbench-bench (paper_[a-z_]+) --out ([\w/]+)", text)
    assert {s for s, _ in runs} == {s for s in STUDIES if s.startswith("paper_")}  # every paper study is documented
    for study, out in runs:
        assert out == STUDY_OUT[study], (study, out)
        assert (root / STUDY_OUT[study] / "README.md").exists(), study
