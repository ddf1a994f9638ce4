"""The validation-split experiment (``experiment=paper_val_split``, ``hgbench-bench paper_val_split``):
the MNIST pool option it needs (``dataset.total_size`` / ``dataset.val_fraction``), its Hydra grid,
and the preset and study at a tiny size.

Full MNIST's pickle takes seconds to read, so these tests hand the ``mnist`` plugin a small
stand-in of the same layout (``read_pickle`` patched: 784 pixels in [0, 1), 10 classes, a train,
a validation and a test part); ``tests/test_datasets.py`` reads the real file.
"""

import math

import numpy as np
import pytest
import torch

from hgbench import registry
from hgbench.config import build_plugin
from hgbench.errors import ConfigError
from hgbench.plugins.dataset import mnist

PARTS = {"train": 400, "val": 60, "test": 300}


def fake_parts():
    """Separable 10-class 'digits': a class prototype plus noise (so a linear model learns them)."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 784, generator=g)
    out = []
    for n in PARTS.values():
        y = torch.arange(n) % 10
        x = (0.6 * protos[y] + 0.4 * torch.rand(n, 784, generator=g)).clamp(0, 0.999)
        out.append((x, y.long()))
    return tuple(out)


@pytest.fixture
def fake_mnist(monkeypatch):
    parts = fake_parts()
    monkeypatch.setattr(mnist, "read_pickle", lambda: parts)
    return parts


def rows_of(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x.numpy())}


def pool(**params):
    return registry.get("dataset", "mnist")(train_size=None, val_size=None, test_size=None, **params).load()


def test_one_pool_is_split_by_the_fraction_and_is_the_same_examples_for_every_fraction(fake_mnist):
    train_part, val_part, test_part = (rows_of(x) for x, _ in fake_mnist)
    pools, tests = [], []
    for f, n_val in ((0.1, 10), (0.25, 25), (0.9, 90)):
        d = pool(total_size=100, val_fraction=f, split_seed=3)
        assert (len(d.val.x), len(d.train.x)) == (n_val, 100 - n_val)
        tr, va = rows_of(d.train.x), rows_of(d.val.x)
        assert not tr & va and (tr | va) <= train_part  # disjoint, both from the train part
        pools.append(tr | va)
        tests.append(d.test.x)
    assert pools[0] == pools[1] == pools[2]  # the fraction never changes which N examples are used
    assert all(torch.equal(t, tests[0]) for t in tests) and rows_of(tests[0]) == test_part  # the whole test part, fixed
    small = pool(total_size=40, val_fraction=0.5, split_seed=3)
    assert rows_of(small.train.x) | rows_of(small.val.x) <= pools[0]  # a smaller pool is a prefix of a larger one
    other = pool(total_size=100, val_fraction=0.1, split_seed=4)
    assert rows_of(other.train.x) | rows_of(other.val.x) != pools[0]  # split_seed draws another pool
    assert not (rows_of(other.val.x) & val_part)  # never from the pickle's validation part


@pytest.mark.parametrize("params,message", [
    ({"total_size": 100}, "total_size and val_fraction go together"),
    ({"total_size": 100, "val_fraction": 0.5, "train_size": 50000}, "set train_size=null and val_size=null"),
    ({"total_size": 100, "val_fraction": 1.0, "train_size": None, "val_size": None}, "val_fraction must be a fraction in (0, 1)"),
    ({"total_size": 10, "val_fraction": 0.01, "train_size": None, "val_size": None}, "leaves 0 validation and 10 training"),
])
def test_pool_options_are_checked_before_loading(params, message):
    with pytest.raises(ConfigError) as err:
        build_plugin("dataset", {"name": "mnist", **params})
    assert message in str(err.value)


def test_the_presets_grid_is_every_size_fraction_family_and_seed():
    """``hgbench -m experiment=paper_val_split`` sweeps hydra.sweeper.params: 3 × 9 × 2 × 3 = 162
    jobs, the study's own grid, and every (size, fraction) cell is a valid dataset."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hgbench.benchmarks import paper_val_split as study
    from hgbench.hydra_config import CONFIG_MODULE, register_plugin_configs

    register_plugin_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper_val_split"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]), None)
    jobs = [dict(o.split("=", 1) for o in job) for batch in batches for job in batch]
    assert len(jobs) == len({tuple(sorted(j.items())) for j in jobs}) == 162
    assert {int(j["dataset.total_size"]) for j in jobs} == set(study.SIZES)
    assert {float(j["dataset.val_fraction"]) for j in jobs} == set(study.FRACTIONS)
    assert {j["hyperparam.granularity"] for j in jobs} == {fam for fam, _ in study.FAMILIES}
    assert {int(j["seed"]) for j in jobs} == set(study.SEEDS)
    base = {k: v for k, v in dict(cfg.dataset).items() if k not in ("total_size", "val_fraction", "split_seed")}
    for n in study.SIZES:
        for f in study.FRACTIONS:
            sizes = build_plugin("dataset", {**base, "total_size": n, "val_fraction": f}).pool_sizes()
            assert sizes["val_size"] + sizes["train_size"] == n and sizes["val_size"] == round(f * n)
    assert cfg.dataset.split_seed == cfg.seed and cfg.dataset.test_size is None  # each seed its own pool; all of the test part


def test_the_study_runs_the_preset_and_reports_every_cell(fake_mnist, tmp_path):
    """``hgbench-bench paper_val_split --quick`` on the stand-in: every (family, fraction) cell
    FINISHED with a finite test accuracy measured on the fixed test set, 1 vs 7,850 hyperparameters,
    the README and plot written and ``rewrite`` giving the same README back."""
    from hgbench.benchmarks import paper_val_split as study

    rows = study.run(tmp_path, quick=True, device="cpu")
    cells = {(r["family"], r["val_fraction"]) for r in rows}
    assert cells == {(fam, f) for fam, _ in study.FAMILIES for f in study.FRACTIONS_QUICK}
    for r in rows:
        assert r["status"] == "FINISHED" and r["hyper_steps"] == 3
        assert r["n_test"] == PARTS["test"] and r["n_train"] + r["n_val"] == r["total_size"]
        assert r["n_val"] == round(r["val_fraction"] * r["total_size"])
        assert math.isfinite(r["test_acc"]) and 0.1 < r["test_acc"] <= 1  # learnable stand-in: above chance
        assert r["num_hyperparams"] == (1 if r["family"] == "global" else 7850)
    per_weight = [r for r in rows if r["family"] == "per_param"]
    assert all(r["std_log_decay"] > 0 for r in per_weight)  # the decays moved apart: λ was tuned
    readme = (tmp_path / "README.md").read_text()
    assert "QUICK SMOKE RUN" in readme and "**Reading**" in readme and "Where we differ from the paper" in readme
    assert (tmp_path / "validation_split.png").stat().st_size > 10_000
    # per-example test correctness, saved per run: its mean is the run's test accuracy
    from hgbench.benchmarks import output, per_example

    correct = output.read_csv(tmp_path / "validation_split_correct.csv")
    assert len(correct) == len(rows)
    acc = {(r["family"], r["val_fraction"], r["seed"]): r["test_acc"] for r in rows}
    for r in correct:
        bits = per_example.unpack(r["correct"], r["n_test"])
        assert bits.mean() == pytest.approx(acc[(r["family"], r["val_fraction"], r["seed"])], abs=1e-6)
    ivs = output.read_csv(tmp_path / "validation_split_intervals.csv")
    kinds = {r["comparison"] for r in ivs}
    assert kinds == {"best_minus_fraction", "per_weight_minus_global"}
    assert all(r["lo"] <= r["diff"] <= r["hi"] and r["n_examples"] == PARTS["test"] for r in ivs)
    assert "**Intervals**" in readme and "paired bootstrap" in readme
    study.rewrite(tmp_path)
    assert (tmp_path / "README.md").read_text() == readme


def test_packed_correctness_round_trips():
    from hgbench.benchmarks import per_example

    bits = (np.arange(797) % 3 == 0).astype(np.uint8)
    text = per_example.pack(bits)
    assert text.startswith("b64:") and len(text) < 150
    assert np.array_equal(per_example.unpack(text, 797), bits)
    with pytest.raises(ValueError):
        per_example.unpack(text, 900)
