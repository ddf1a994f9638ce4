"""End-to-end: the ``hgbench`` Hydra app recording to MLflow, and its errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import hgbench_in_process, run_cli
from mlflow.tracking import MlflowClient

SMALL = ["dataset=digits", "hyper_steps=6", "inner_steps=3", "eval_every=3", "dataset.train_size=200", "dataset.val_size=100"]


def hgbench(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "hgbench.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def only_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hgbench")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_run_records_params_metrics_and_tags(tmp_path, mlflow_db):
    """The command's main() in this process (what a process of its own adds — exit code, one-line
    errors — is test_bad_input_through_the_real_command's; many processes recording at once:
    test_concurrency.py)."""
    out = hgbench_in_process(tmp_path, *SMALL)
    assert out.returncode == 0, out.stderr
    assert "FINISHED" in out.stdout and "mlflow ui --backend-store-uri sqlite:///" in out.stdout
    client, run = only_run(tmp_path)
    # the printed commands run in a fresh shell (the venv's mlflow by its path) and the link opens
    # the experiment's runs table, not MLflow's GenAI overview
    assert f"browse it: {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri sqlite:///" in out.stdout
    assert (f"then open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning"
            "&viewStateShareKey=hgbench") in out.stdout
    from hgbench import store  # the view that link names is the experiment's (tests/test_mlflow_ui.py opens it)

    assert client.get_experiment(run.info.experiment_id).tags[store.VIEW_TAG] == store.default_view()
    assert list(tmp_path.rglob("*.log")) == []  # Hydra's per-job log file stayed empty: not written at all
    (ds,) = client.get_run(run.info.run_id).inputs.dataset_inputs  # the UI's Dataset column
    assert ds.dataset.name == "digits" and ds.dataset.source_type == "hgbench" and '"train_size": 200' in ds.dataset.source
    assert json.loads(ds.dataset.profile) == {"train": 200, "val": 100, "test": 1797 - 300}
    assert run.info.status == "FINISHED"
    p, t = run.data.params, run.data.tags
    assert p["hypergrad.name"] == "neumann" and p["hypergrad.iterations"] == "5" and p["hyper_steps"] == "6"
    assert int(p["num_weights"]) == int(p["num_hyperparams"]) == 64 * 128 + 128 + 128 * 10 + 10
    assert t["hgbench.hypergrad"] == "neumann" and t["hgbench.hyperparam"] == "weight_decay" and p["hyperparam.granularity"] == "per_param"
    assert t["hgbench.dataset"] == "digits" and t["hgbench.model"] == "mlp" and t["hgbench.device"] == "cpu"
    assert t["hgbench.status"] == "finished" and "mlflow.source.git.commit" in t
    steps = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    for key in ("hypergrad_norm", "hypergrad_time_s", "inner_time_s"):
        assert steps(key) == [1, 2, 3, 4, 5, 6], key
    for key in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert steps(key) == [0, 3, 6], key
    m = run.data.metrics
    assert m["runtime_s"] > 0 and m["peak_memory_mb"] >= 0 and 0 <= m["val_acc"] <= 1
    assert m["hypergrad_norm"] > 0
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.slow
def test_diverging_hypergradient_ends_the_run_as_failed(tmp_path, mlflow_db):
    out = hgbench_in_process(tmp_path, *SMALL, "hypergrad.alpha=1e6", "hypergrad.iterations=20")
    assert out.returncode == 1
    assert "not finite at hyper-step 1" in out.stdout
    client, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "hypergradient is not finite" in run.data.tags["hgbench.error"]
    assert run.data.tags["hgbench.failed_step"] == "1"
    assert "error.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.slow
def test_too_large_for_exact_is_skipped_with_its_reason(tmp_path, mlflow_db):
    """A skipped single run exits 3 (README: exit status): nothing was trained, which a script
    must be able to tell from a finished run (0)."""
    from hgbench.cli import EXIT_SKIPPED

    out = hgbench_in_process(tmp_path, *SMALL, "hypergrad=exact", "hypergrad.max_weights=1000")
    assert out.returncode == EXIT_SKIPPED == 3 and "SKIPPED" in out.stdout
    _, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["hgbench.status"] == "skipped"
    assert "max_weights=1,000" in run.data.tags["hgbench.skip_reason"]


def _registered(text: str) -> str:
    """``text`` with the lists that grow as plugins are added filled in from the registry, so a new
    plugin or parameter does not break the test (the message's form is what is tested)."""
    from hgbench import registry

    def params(name: str) -> list[str]:
        return sorted(registry.get("hypergrad", name).defaults())

    return text.format(hypergrads=", ".join(registry.available("hypergrad")), datasets=", ".join(registry.available("dataset")),
                       neumann_params=", ".join(params("neumann")), cg_keys=", ".join(sorted([*params("cg"), "name"])))


@pytest.mark.parametrize(
    "args,expected",
    [
        (["hyperparam.name=nope"], ["unknown hyperparam 'nope'", "weight_decay", "weight_decay_per_param"]),
        (["+hypergrad.foo=1"], ["hypergrad.foo: unknown parameter", "Allowed: {neumann_params}"]),
        (["hypergrad.iterations=abc"], ["hypergrad.iterations='abc'", "expects int"]),
        (["hypergrad.iterations=-2"], ["iterations must be >= 0, got -2"]),
        (["inner_steps=0"], ["inner_steps=0: must be >= 1"]),
        (["+foo=1"], ["foo=1: unknown config key", "hyper_steps", "inner_steps"]),
        (["hyper_steps=abc"], ["hyper_steps='abc': expected int"]),
        (["dtype=float16"], ["dtype='float16': expected 'float32' | 'float64'"]),
        (["+mlflow.port=1"], ["mlflow.port=1: unknown config key", "tracking_uri"]),
        (["+inner_optimizer.lrr=0.1"], ["inner_optimizer:", "'lrr'", "Allowed parameters of hgbench.optim.SGD: lr, momentum, nesterov"]),
        (["outer_optimizer.lr=-1"], ["outer_optimizer: Invalid learning rate: -1"]),
        (["model.hidden=[0]"], ["hidden widths must be >= 1"]),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_error(tmp_path, monkeypatch, args, expected):
    code, out, err = run_cli(monkeypatch, tmp_path, *args)
    assert code == 2
    assert err.startswith("hgbench: error: ") and out == ""
    for piece in expected:
        assert _registered(piece) in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was started: no outputs/, no mlflow.db


@pytest.mark.parametrize("args,line", [
    (["hypergrad=neuman"], "hypergrad=neuman: hypergrad has no option 'neuman' — did you mean neumann? Available: {hypergrads}"),
    (["dataset=nope"], "dataset=nope: dataset has no option 'nope'. Available: {datasets}"),
    (["hyper_step=100"], "hyper_step=100: unknown key 'hyper_step' in the config — did you mean hyper_steps? Allowed: "),
    (["hypergrad=cg", "hypergrad.iteration=20"], "hypergrad.iteration=20: unknown key 'iteration' of hypergrad 'cg' — "
                                                 "did you mean hypergrad.iterations? Allowed in hypergrad: {cg_keys}"),
    (["-m", "hypergrad=neumann,neuman", "seed=0,1"], "hypergrad=neuman: hypergrad has no option 'neuman' — did you mean neumann?"),
    (["-m", "seed=0,1", "hyper_step=100"], "hyper_step=100: unknown key 'hyper_step' in the config — did you mean hyper_steps?"),
    (["hydra/launcher=jobib"], "hydra/launcher=jobib: hydra/launcher has no option 'jobib' — did you mean joblib?"),
])
def test_what_hydra_refuses_is_one_line_too(tmp_path, monkeypatch, args, line):
    """The forms people type most — a mistyped group option or key, in a run or a grid — are one
    line naming the override, the closest valid name and what is allowed, exit 2; no Hydra
    traceback or `+key` advice, and no outputs/ folder left behind."""
    code, out, err = run_cli(monkeypatch, tmp_path, *args)
    assert code == 2 and out == ""
    assert err.startswith("hgbench: error: " + _registered(line)), err
    assert err.count("\n") == 1 and "To append to your config" not in err and "HYDRA_FULL_ERROR" not in err
    assert list(tmp_path.iterdir()) == []  # no outputs/, multirun/ or mlflow.db


def test_overrides_hydra_composes_are_not_refused_early(tmp_path, monkeypatch):
    """Valid grids, interval sweeps for Optuna and `+key` additions pass the early check (an
    unknown `+key` is then refused by hgbench's own schema, in one line)."""
    from hgbench.cli_checks import check_overrides

    assert check_overrides(["-m", "hypergrad=neumann,cg", "seed=range(0,3)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]) is None
    assert check_overrides(["hydra/sweeper=optuna", "hyperparam.init_decay=tag(log, interval(1e-5, 1))"]) is None
    assert check_overrides(["+foo=1"]) is None
    code, _, err = run_cli(monkeypatch, tmp_path, "+foo=1")
    assert code == 2 and "foo=1: unknown config key" in err


@pytest.mark.slow
def test_bad_input_through_the_real_command(tmp_path):
    """The same path as above, in a process of its own: exit code 2 and one line, no traceback."""
    out = hgbench(tmp_path, "hypergrad.iterations=abc")
    assert out.returncode == 2
    assert out.stderr == "hgbench: error: hypergrad.iterations='abc': 'neumann' expects int\n"


def test_a_bug_in_a_plugin_shows_its_traceback_and_is_recorded(tmp_path, mlflow_db, monkeypatch):
    """A config mistake is one line; a plugin's own bug (here a TypeError in its load()) is not
    hidden as one: its traceback is shown, and the run is recorded as FAILED."""
    from dataclasses import dataclass

    from hgbench import Dataset, hookimpl, registry

    @dataclass
    class Broken(Dataset):
        name = "broken_data"

        def load(self):
            return len(None)  # a bug: TypeError

    class Plugin:
        @hookimpl
        def register_datasets(self):
            return [Broken]

    registry.register(Plugin(), name="broken_plugin")
    try:
        from hgbench.hydra_config import register_plugin_configs

        register_plugin_configs()
        code, out, err = run_cli(monkeypatch, tmp_path, "dataset=broken_data", "hyper_steps=2")
    finally:
        registry.unregister("broken_plugin")
    assert code == 1
    assert "Traceback" in err and "TypeError: object of type 'NoneType' has no len()" in err
    assert "hgbench run FAILED before it started" in out
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["hgbench.error"].startswith("TypeError")


@pytest.mark.slow
def test_a_bug_in_a_plugins_own_checks_does_not_stop_the_grid(tmp_path, mlflow_db, monkeypatch):
    """A TypeError raised while the config is built (a plugin's __post_init__) in a grid: its
    traceback is shown, the job is recorded FAILED, and the other jobs run."""
    from dataclasses import dataclass

    from hgbench import hookimpl, registry

    identity = registry.get("hypergrad", "identity")

    @dataclass
    class BrokenCheck(identity):
        name = "broken_check"

        def __post_init__(self):
            raise TypeError("a bug in the plugin's check")

    class Plugin:
        @hookimpl
        def register_hypergradients(self):
            return [BrokenCheck]

    registry.register(Plugin(), name="broken_check_plugin")
    try:
        code, out, err = run_cli(monkeypatch, tmp_path, "-m", "hypergrad=broken_check,identity", *SMALL)
    finally:
        registry.unregister("broken_check_plugin")
    assert code == 1  # a grid with a failed job exits non-zero, after every job ran
    assert "TypeError: a bug in the plugin's check" in err and "Traceback" in err
    assert "2 jobs — 1 failed, 1 finished" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hgbench").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


@pytest.mark.parametrize("multirun", [False, True])
def test_an_unreachable_store_stops_the_job_before_any_work(tmp_path, monkeypatch, multirun):
    code, out, err = run_cli(monkeypatch, tmp_path, *(["-m"] if multirun else []), *SMALL, "mlflow.tracking_uri=http://127.0.0.1:9")
    assert code == 2
    assert "hgbench: error: cannot use the MLflow store at http://127.0.0.1:9" in err
    assert "hgbench run" not in out  # nothing was trained
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made a run folder


def test_a_run_on_a_tracking_server_points_at_the_server_ui():
    from hgbench.cli import format_summary
    from hgbench import compose_config
    from hgbench.hookspecs import RunResult

    info = {"mlflow_run_id": "abc", "mlflow_experiment": "e", "mlflow_tracking_uri": "http://127.0.0.1:5000"}
    summary = {"num_weights": 1, "num_hyperparams": 1, "runtime_s": 1.0}
    text = format_summary(compose_config(), RunResult("FINISHED", summary, info))
    assert "browse it: open http://127.0.0.1:5000" in text and "mlflow ui" not in text
    info["mlflow_experiment_id"] = "7"
    text = format_summary(compose_config(), RunResult("FINISHED", summary, info))
    assert "browse it: open http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in text
    from hgbench.store import browse_lines

    assert browse_lines("http://h:1/", "7", run_ids=["a", "b"]) == [
        "browse it: open http://h:1/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=hgbench",
        "compare these 2 runs: open http://h:1/#/compare-runs?runs=%5B%22a%22%2C%22b%22%5D&experiments=%5B%227%22%5D"]


def test_the_summary_of_a_sequence_task_shows_perplexity():
    from hgbench.cli import format_summary
    from hgbench import compose_config
    from hgbench.hookspecs import RunResult

    summary = {"num_weights": 1, "num_hyperparams": 1, "runtime_s": 1.0, "val_loss": 5.0, "val_ppl": math.exp(5.0),
               "initial": {"val_loss": 9.0, "val_ppl": math.exp(9.0)}}
    text = format_summary(compose_config(), RunResult("FINISHED", summary, {}))
    assert "ppl (start → end)" in text and f"{math.exp(9.0):.2f} → {math.exp(5.0):.2f}" in text
    summary = {k: v for k, v in summary.items() if "ppl" not in k} | {"initial": {"val_loss": 9.0}}
    assert "ppl" not in format_summary(compose_config(), RunResult("FINISHED", summary, {}))


@pytest.mark.slow
def test_mlflow_tracking_uri_in_the_environment_is_respected(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    out = hgbench_in_process(tmp_path, *SMALL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert elsewhere.exists() and not (tmp_path / "mlflow.db").exists()
    assert f"at sqlite:///{elsewhere}" in out.stdout


def test_runs_are_named_after_their_configuration():
    """MLflow run names say what each run is (not a random 'awesome-cow-15'): plugins, seed and the
    values a grid job sets; recording-only settings stay out."""
    from hgbench import compose_config
    from hgbench.plugins.recorder.mlflow_recorder import run_name

    cfg = compose_config(["experiment=quick", "seed=1", "hypergrad.iterations=5"])
    tags = {"hgbench.overrides": "experiment=quick seed=1 hypergrad.iterations=5 inner_optimizer.lr=0.2 resume=false "
                                 "mlflow.experiment=x hydra.launcher.n_jobs=2 hyper_steps=50"}
    assert run_name(cfg, tags) == "neumann·weight_decay·digits·mlp·s1·iterations=5·inner_lr=0.2·hyper_steps=50"
    assert run_name(cfg, {}) == "neumann·weight_decay·digits·mlp·s1"


# --- help, refusals that leave nothing behind, exit statuses ------------------------------------

CONF = Path(__file__).resolve().parent.parent / "conf"


def assert_app_help(out: str) -> None:
    """`hgbench --help` as Hydra apps give it: each group (plugin kinds, presets, optimisers) with
    its options, then the composed config, so every top-level key."""
    from hgbench import compose_config, registry

    groups = {kind: registry.available(kind) for kind in registry.KINDS}
    # a config group is a folder of yaml files (not conf/__pycache__, which importing hgbench.conf writes)
    groups |= {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONF.iterdir()
               if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml"))}
    assert len(groups) >= 9
    for group, options in groups.items():
        assert f"\n{group}: {', '.join(sorted(options))}\n" in out, group
    for key in compose_config():
        if key != "hydra":
            assert f"\n{key}:" in out, key
    assert "--hydra-help" in out and "hgbench-plugins" in out and "3 skipped" in out


def test_info_and_cfg_work_and_create_nothing(tmp_path, monkeypatch):
    """`--info` and `--cfg job` (which compose the config, as `--help` does, so need the plugins'
    configs registered first) work and create nothing. `--help`, `-h` and `--hydra-help`:
    test_the_help_flags (slow: Hydra's help lists the groups at seconds a flag)."""
    import yaml

    from hgbench import compose_config

    code, out, err = run_cli(monkeypatch, tmp_path, "--info", "defaults")
    assert code == 0 and "hypergrad/neumann" in out and "dataset/mnist_5k" in out, err
    code, out, _ = run_cli(monkeypatch, tmp_path, "--cfg", "job", "hypergrad=cg", "seed=3")
    job = yaml.safe_load(out)
    assert code == 0 and list(job) == [k for k in compose_config() if k != "hydra"]
    assert job["hypergrad"]["name"] == "cg" and job["seed"] == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_help_flags(tmp_path, monkeypatch):
    for flag in ("--help", "-h"):
        code, out, err = run_cli(monkeypatch, tmp_path, flag)
        assert code == 0, err
        assert_app_help(out)
    code, out, _ = run_cli(monkeypatch, tmp_path, "--hydra-help")
    assert code == 0 and "== Flags ==" in out and "hydra/launcher: " in out and "slurm" in out
    assert list(tmp_path.iterdir()) == []


def hide_fashion_mnist(monkeypatch):
    """This machine as one without the Debian package dataset-fashion-mnist: the plugin finds none
    of its files (in whatever folder it looks)."""
    from hgbench.plugins.dataset import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "_find", lambda root, stem: None)


@pytest.mark.parametrize("args,env,message", [
    (["hyper_steps=abc"], None, "hyper_steps='abc': expected int"),
    (["hyper_steps=2.5"], None, "hyper_steps=2.5: expected int"),
    (["hypergrad.iterations=abc"], None, "hypergrad.iterations='abc': 'neumann' expects int"),
    (["-m", "seed=0,1", "hyper_steps=10,abc"], None, "hyper_steps='abc': expected int"),  # a later value of a grid
    (["-m", "hypergrad=neumann,cg", "hypergrad.iterations=5,x"], None, "hypergrad.iterations='x': "),
    (["mlflow.tracking_uri=sqlite:////nonexistent/dir/mlflow.db"], None,
     "mlflow.tracking_uri=sqlite:////nonexistent/dir/mlflow.db: the store's folder /nonexistent/dir does not exist"),
    (["mlflow.tracking_uri=sqlite://x.db"], None, "did you mean sqlite:///x.db?"),
    (["mlflow.tracking_uri=runs.db"], None, "a file path, not a store URI: for a SQLite file write sqlite:///runs.db"),
    (["-m", "seed=0,1"], "./mlruns", "$MLFLOW_TRACKING_URI=./mlruns: a folder path, not a store URI"),
    ([], "sqlite:////nonexistent/dir/mlflow.db", "$MLFLOW_TRACKING_URI=sqlite:////nonexistent/dir/mlflow.db: the store's folder"),
    (["experiment=paper_distill_fashion_mnist"], None, "dataset 'fashion_mnist': missing train-images-idx3-ubyte.gz"),
    (["-m", "experiment=quick,paper_distill_fashion_mnist"], None, "install the Debian package with: sudo apt-get install -y dataset-fashion-mnist"),
])
def test_a_refused_command_leaves_nothing_behind(tmp_path, monkeypatch, args, env, message):
    """Wrong types, unusable store URIs and missing data are refused before Hydra creates a run
    folder and before the store is touched — single runs and every value of a grid: one line,
    exit 2, and the launch folder stays empty (no outputs/, multirun/, mlflow.db)."""
    hide_fashion_mnist(monkeypatch)
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    code, out, err = run_cli(monkeypatch, tmp_path, *args)
    assert code == 2 and out == "", out
    assert err.startswith("hgbench: error: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    assert not Path("/nonexistent").exists()


def test_a_grid_job_whose_value_a_plugin_refuses_is_not_refused_early():
    """In a grid only what is a typo (an unknown key or plugin, a wrong type) refuses the whole
    command: a value that one job's plugin refuses fails that job alone, recorded (see
    test_sweeps.py), while the rest of the grid runs."""
    from hgbench.cli_checks import preflight

    assert preflight(["-m", "dataset=digits", "hypergrad.iterations=5,-1"]) is None
    assert "iterations must be >= 0, got -1" in preflight(["dataset=digits", "hypergrad.iterations=-1"])
    assert "unknown hyperparam 'nope'" in preflight(["-m", "dataset=digits", "hyperparam.name=weight_decay,nope"])


def test_every_value_of_a_sweep_presets_grid_is_checked():
    """A `sweep=` preset's own grid (hydra.sweeper.params) is checked value by value like a
    command line's, as a grid; the command line's own values win over the preset's."""
    import yaml

    from hgbench.cli_checks import _composed

    params = yaml.safe_load((CONF / "sweep" / "methods_x_seeds.yaml").read_text())["hydra"]["sweeper"]["params"]
    problem, configs, multirun = _composed(["sweep=methods_x_seeds", "seed=5"])
    assert problem is None and multirun
    assert sorted({c.hypergrad.name for c in configs}) == sorted(params["hypergrad"].split(","))
    assert {c.seed for c in configs} == {5}


def test_store_uri_hints(tmp_path, monkeypatch):
    """What a tracking URI's string shows is wrong, with the URI to write instead; nothing is
    created while looking."""
    from hgbench.store import uri_problem

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "such"
    assert uri_problem(f"sqlite:///{missing}/mlflow.db") == (
        f"the store's folder {missing} does not exist: create it (mkdir -p {missing}) or correct the path")
    assert "did you mean sqlite:///x.db?" in uri_problem("sqlite://x.db")
    assert "did you mean sqlite:///runs/x.db?" in uri_problem("sqlite:runs/x.db")
    assert uri_problem("runs.db").endswith("write sqlite:///runs.db")
    assert uri_problem("/data/runs.sqlite").endswith("write sqlite:////data/runs.sqlite")
    for folder_store in ("./mlruns", "mlruns", "file:./mlruns"):
        assert "e.g. sqlite:///mlruns.db, or to a tracking server" in uri_problem(folder_store), folder_store
    (tmp_path / "afile").write_text("")
    assert "is not a folder" in uri_problem("sqlite:///afile/mlflow.db")
    for fine in ("sqlite:///mlflow.db", f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///file:{tmp_path}/x.db?mode=ro&uri=true",
                 "http://127.0.0.1:5000", "https://mlflow.example.org", "postgresql://u:p@db/mlflow", "databricks"):
        assert uri_problem(fine) is None, fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def heavy_imports_after(tmp_path, *commands) -> dict:
    """In a fresh interpreter: which of torch and MLflow are loaded after `import hgbench.cli`
    ("import") and after each of ``commands`` (an argv, run through ``hgbench.cli.main`` in turn),
    with each command's exit code and stderr."""
    code = """if True:
        import contextlib, io, json, sys
        import hgbench.cli as cli
        heavy = lambda: sorted(m for m in ("torch", "mlflow") if m in sys.modules)
        seen = {"import": heavy()}
        for i, argv in enumerate(json.loads(sys.argv[1])):
            sys.argv = ["hgbench", *argv]
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    cli.main()
                except SystemExit as exc:
                    seen[f"exit{i}"] = exc.code
            seen[f"after{i}"], seen[f"err{i}"] = heavy(), err.getvalue()
        print(json.dumps(seen))
    """
    out = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []
    return json.loads(out.stdout)


def test_the_cli_module_and_a_refused_store_uri_load_neither_torch_nor_mlflow(tmp_path):
    """A refused command answers before the heavy imports where it can: `import hgbench.cli`
    loads neither torch nor MLflow, and a store URI given on the command line is refused before
    either (one interpreter of its own: this one has them all)."""
    seen = heavy_imports_after(tmp_path, ["mlflow.tracking_uri=runs.db"])
    assert seen["import"] == [] and seen["after0"] == [], seen
    assert seen["exit0"] == 2 and "write sqlite:///runs.db" in seen["err0"]


@pytest.mark.slow
def test_a_typo_is_refused_without_importing_mlflow(tmp_path):
    """A typo needs the plugins' configs (so torch), never MLflow."""
    seen = heavy_imports_after(tmp_path, ["hyper_step=1"], ["-m", "seed=0,1", "hyper_steps=3,abc"])
    assert seen["after0"] == seen["after1"] == ["torch"], seen
    assert seen["exit0"] == seen["exit1"] == 2
    assert "did you mean hyper_steps?" in seen["err0"] and "hyper_steps='abc': expected int" in seen["err1"]
