"""The Python API runs the CLI's code path: same config names, same methods, same recording."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from hgbench import ConfigError, UnknownPluginError, build_experiment, compose_config


def test_compare_methods_in_a_notebook(ridge):
    ridge.train_inner(3000)  # SGD close to the optimum
    hg = {m: ridge.hypergradient(m)["log_decay"] for m in ("exact", "cg", "neumann")}
    assert all(v.shape == (8,) for v in hg.values())
    torch.testing.assert_close(hg["cg"], hg["exact"], rtol=1e-6, atol=1e-10)  # 10 CG steps ≥ 8 weights
    # neumann with more iterations gets closer to exact
    err = lambda i: (ridge.hypergradient("neumann", iterations=i)["log_decay"] - hg["exact"]).norm()  # noqa: E731
    assert err(50) < err(5) < err(0)


def test_a_configured_method_keeps_its_settings_and_keywords_override_them():
    exp = build_experiment(dataset="synthetic_linear", model="linear", hypergrad="cg", overrides=["hypergrad.iterations=1"])
    one = exp.hypergradient()["log_decay"]
    torch.testing.assert_close(exp.hypergradient("cg")["log_decay"], one)
    assert not torch.allclose(exp.hypergradient("cg", iterations=20)["log_decay"], one)


def test_api_errors_are_the_cli_errors():
    with pytest.raises(UnknownPluginError, match="Available hypergrad plugins"):
        build_experiment(overrides=["hypergrad.name=nope"])
    exp = build_experiment(dataset="synthetic_linear", model="linear")
    with pytest.raises(ConfigError, match="hypergrad.iterations=2.5: 'neumann' expects int"):
        exp.hypergradient("neumann", iterations=2.5)


def test_api_run_records_like_the_cli(tmp_path, copy_store):
    uri = f"sqlite:///{copy_store(tmp_path / 'store.db')}"
    exp = build_experiment(
        record=True, dataset="synthetic_linear", model="linear",
        overrides=[f"mlflow.tracking_uri={uri}", "mlflow.experiment=api", "hyper_steps=4", "eval_every=2"],
    )
    result = exp.run()
    assert result.status == "FINISHED" and result.info["mlflow_tracking_uri"] == uri
    run = MlflowClient(uri).get_run(result.info["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["num_hyperparams"] == "21"
    assert "val_loss" in run.data.metrics and "val_acc" not in run.data.metrics  # regression: no accuracy


def test_compose_config_matches_the_defaults():
    cfg = compose_config()
    assert (cfg.hypergrad.name, cfg.hyperparam.name, cfg.dataset.name, cfg.model.name) == (
        "neumann", "weight_decay", "mnist_5k", "mlp")
    assert cfg.hyperparam.granularity == "per_param"  # the default is the alias weight_decay_per_param


def test_a_composition_is_reused_only_while_the_configs_it_read_are_unchanged(monkeypatch):
    """compose_config keeps recent results (Hydra takes ~0.2 s a composition): the same overrides
    give an equal, independent copy; a config stored, replaced or removed in Hydra's store, a
    plugin registered or unregistered, or a touched conf/ file make it compose again."""
    import os
    from dataclasses import dataclass
    from importlib.resources import files

    from hydra.core.config_store import ConfigStore

    from hgbench import Dataset, api, hookimpl, registry
    from hgbench.hydra_config import CONFIG_MODULE

    calls = []
    real = api.compose
    monkeypatch.setattr(api, "compose", lambda *a, **k: calls.append(k["overrides"]) or real(*a, **k))
    ov = ["dataset=synthetic_linear", "model=linear", "seed=7"]
    first = compose_config(ov)
    first.seed = 8  # a caller's change stays in its own copy
    again = compose_config(ov)
    assert len(calls) == 1 and again.seed == 7 and again.dataset == compose_config(ov).dataset and len(calls) == 1

    cs = ConfigStore.instance()
    cs.store(group="dataset", name="synthetic_linear_copy", node={"name": "synthetic_linear", "train_size": 11})
    try:
        assert compose_config(ov).dataset.name == "synthetic_linear" and len(calls) == 2  # the store changed
        assert compose_config([*ov, "dataset=synthetic_linear_copy"]).dataset.train_size == 11
        cs.store(group="dataset", name="synthetic_linear_copy", node={"name": "synthetic_linear", "train_size": 12})
        assert compose_config([*ov, "dataset=synthetic_linear_copy"]).dataset.train_size == 12  # replaced
    finally:
        cs.repo["dataset"].pop("synthetic_linear_copy.yaml")
    with pytest.raises(Exception, match="synthetic_linear_copy"):
        compose_config([*ov, "dataset=synthetic_linear_copy"])  # removed

    @dataclass
    class Tiny(Dataset):
        name = "test_api_tiny"
        size: int = 3

    class Plugin:
        @hookimpl
        def register_datasets(self):
            return [Tiny]

    compose_config(ov)  # the store changed since it was composed last: composed again
    n = len(calls)
    compose_config(ov)
    assert len(calls) == n  # nothing changed since: reused
    registry.register(Plugin(), name="test_api_tiny")
    try:
        assert compose_config([*ov, "dataset=test_api_tiny"]).dataset.size == 3
        compose_config(ov)
        assert len(calls) == n + 2  # the plugin's config is new in the store
    finally:
        registry.unregister("test_api_tiny")
    with pytest.raises(Exception, match="test_api_tiny"):
        compose_config([*ov, "dataset=test_api_tiny"])

    yaml = files(CONFIG_MODULE) / "config.yaml"
    st = os.stat(yaml)
    compose_config(ov)
    n = len(calls)
    compose_config(ov)
    assert len(calls) == n
    os.utime(yaml, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        compose_config(ov)
        assert len(calls) == n + 1  # an edited preset or default is read again
    finally:
        os.utime(yaml, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_warm_up_changes_no_state():
    ov = ["dataset=digits", "model.hidden=[16]", "hyper_steps=3", "eval_every=3", "hypergrad=unroll",
          "inner_optimizer.momentum=0.9"]
    a, b = (build_experiment(overrides=ov + [f"warmup={flag}"]).run() for flag in ("true", "false"))
    assert a.status == b.status == "FINISHED"
    for key in ("val_loss", "test_loss", "train_loss", "hypergrad_norm"):
        assert a.summary[key] == b.summary[key], key


def test_nonfinite_policy_skip_survives_isolated_nans_and_clip_bounds_the_step():
    import math

    from hgbench import DivergenceError

    exp = build_experiment(overrides=["experiment=quick", "hyper_steps=6", "on_nonfinite=skip", "max_nonfinite_skips=2"])
    real, calls = exp.method.compute, []

    def flaky(bl):  # NaN at hyper-steps 2 and 3, fine otherwise
        calls.append(1)
        g = real(bl)
        return g * float("nan") if len(calls) in (3, 4) else g  # call 1 is the warm-up

    exp.method.compute = flaky
    result = exp.run()
    assert result.status == "FINISHED" and result.summary["nonfinite_skipped"] == 2

    exp = build_experiment(overrides=["experiment=quick", "hyper_steps=6", "on_nonfinite=skip", "max_nonfinite_skips=2"])
    exp.method.compute = lambda bl: real(bl) * float("nan")
    result = exp.run()
    assert result.status == "FAILED" and isinstance(result.error, DivergenceError)
    assert result.summary["failed_step"] == 3  # the third NaN in a row

    exp = build_experiment(overrides=["experiment=quick", "hyper_steps=1", "hypergrad_clip=1e-7", "outer_optimizer=sgd", "outer_optimizer.lr=1.0", "dtype=float64"])
    lam0 = exp.lam.detach().clone()
    exp.run()
    assert math.isclose((exp.lam.detach() - lam0).norm().item(), 1e-7, rel_tol=1e-6)  # unclipped: 1.6e-6


def test_peak_memory_is_measured_alike_for_runs_sharing_a_process():
    """Three runs in one process, each building the full Hessian once (one hyper-step: the peak is
    the Hessian's, which a second step would only repeat)."""
    peaks = [build_experiment(overrides=["experiment=quick", "hypergrad=exact", "hyper_steps=1", "warmup=false"]).run().summary["peak_memory_mb"]
             for _ in range(3)]
    assert min(peaks) > 20  # the 2,410² Hessian alone is 23 MB in float32
    assert max(peaks) < 1.5 * min(peaks), peaks


def test_progress_bar_shows_hyper_steps_and_val_loss_only_when_asked(capsys):
    build_experiment(progress=True, overrides=["experiment=quick", "hyper_steps=4", "eval_every=2"]).run()
    err = capsys.readouterr().err
    assert "4/4" in err and "hyper-step" in err and "val_loss" in err
    assert "at step 4" in err  # the shown loss names the evaluation it comes from
    build_experiment(overrides=["experiment=quick", "hyper_steps=4", "eval_every=2"]).run()  # progress=false
    assert "hyper-step" not in capsys.readouterr().err


def test_without_a_terminal_progress_is_a_line_every_tenth_with_an_eta(capsys):
    """progress=auto on a non-terminal stderr (as here, captured): no bar, one line per 10 % of
    the hyper-steps, each with the elapsed time, an ETA and the latest validation loss."""
    build_experiment(overrides=["experiment=quick", "hyper_steps=20", "eval_every=5", "progress=auto"]).run()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "hyper-step" in ln]
    assert [ln.split("hyper-step ")[1].split(" ")[0] for ln in lines] == [f"{s}/20" for s in range(2, 21, 2)]
    assert all(ln.startswith("hgbench: neumann·weight_decay·digits: ") and " elapsed, " in ln for ln in lines)
    assert all("ETA " in ln for ln in lines[:-1]) and lines[-1].split(", ")[2] == "done"
    assert [ln.rsplit(" ", 1)[1] for ln in lines[:4]] == ["0", "0", "5", "5"]  # "val_loss … at step N": the latest evaluation
    assert lines[-1].endswith("at step 20")
    assert "\r" not in "".join(lines) and "it/s" not in "".join(lines)  # not tqdm's bar


def test_a_slow_run_without_a_terminal_says_its_progress_every_minute(monkeypatch):
    """Hyper-steps that take minutes each: a line every minute, between the 10 % marks, whose ETA
    follows from the time per hyper-step so far."""
    from hgbench.plugins.recorder import progress

    now = [0.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    lines = progress.ProgressLines("m", total=100)
    assert lines.step(0, {"val_loss": 2.5}) is None  # the clock starts at step 0
    said = {}
    for step in range(1, 11):
        now[0] += 25.0  # 25 s per hyper-step
        said[step] = lines.step(step, {})
    assert [s for s, line in said.items() if line] == [3, 6, 9, 10]  # 75 s, 150 s, 225 s; and 10 %
    assert said[3].endswith("hyper-step 3/100 (3 %), 1 min 15 s elapsed, ETA 40 min 25 s, val_loss 2.5000 at step 0")


def test_eval_every_null_gives_about_thirty_points_per_run():
    """eval_every: null (the default) scales with hyper_steps: a 90-step run is evaluated every 3
    steps, not twice (as a fixed 100 would)."""
    from hgbench import compose_config

    assert compose_config().eval_every is None
    exp = build_experiment(overrides=["experiment=quick", "hyper_steps=90", "eval_every=null", "inner_steps=1"])
    assert exp.eval_every == 3
    assert build_experiment(overrides=["experiment=quick", "hyper_steps=10", "eval_every=null"]).eval_every == 1
    assert build_experiment(overrides=["experiment=quick", "eval_every=7"]).eval_every == 7
