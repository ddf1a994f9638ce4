"""Grids through Hydra's launchers, failures and skips inside grids, presets."""

from pathlib import Path

import pytest
from helpers import failure_report
from helpers import hgbench_in_process as hgbench
from mlflow.tracking import MlflowClient

from hgbench import compose_config

CONF = Path(__file__).resolve().parent.parent / "conf"
TINY = ["dataset=digits", "model.hidden=[16]", "hyper_steps=4", "inner_steps=2", "eval_every=2",
        "dataset.train_size=100", "dataset.val_size=100"]


def runs_of(cwd, experiment="hgbench"):
    client = MlflowClient(f"sqlite:///{Path(cwd) / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


# a grid through the joblib and submitit_local launchers, every run complete: test_concurrency.py


@pytest.mark.slow
def test_failing_and_skipped_jobs_do_not_stop_the_grid(tmp_path, mlflow_db):
    # α = 1e6 diverges at the first hyper-step; iterations = -1 cannot even be built
    out = hgbench(tmp_path, "-m", "hypergrad=neumann", "hypergrad.alpha=1e6,0.05", "hypergrad.iterations=20,-1", *TINY)
    assert out.returncode == 1, "a failed job makes the sweep exit non-zero"
    assert "4 jobs — 3 failed, 1 finished" in out.stdout
    assert "not finite at hyper-step 1" in out.stdout and "iterations must be >= 0, got -1" in out.stdout
    _, runs = runs_of(tmp_path)
    assert len(runs) == 4  # N jobs launched = N runs recorded
    by = {(r.data.params["hypergrad.alpha"], r.data.params["hypergrad.iterations"]): r for r in runs}
    assert by[("0.05", "20")].info.status == "FINISHED"
    diverged = by[("1000000.0", "20")]
    assert diverged.info.status == "FAILED" and diverged.data.tags["hgbench.failed_step"] == "1"
    assert "DivergenceError: the hypergradient is not finite" in diverged.data.tags["hgbench.error"]
    for alpha in ("1000000.0", "0.05"):
        bad = by[(alpha, "-1")]
        assert bad.info.status == "FAILED" and "iterations must be >= 0" in bad.data.tags["hgbench.error"]


@pytest.mark.slow
def test_a_skipped_combination_is_recorded_with_its_reason(tmp_path, mlflow_db):
    skip = tmp_path
    out = hgbench(skip, "-m", "hypergrad=exact,cg", *TINY, "model.hidden=[128]")  # 9,610 weights
    assert out.returncode == 0, "skipping is not failing"
    _, runs = runs_of(skip)
    st = {r.data.tags["hgbench.hypergrad"]: r for r in runs}
    assert st["exact"].info.status == "KILLED" and st["exact"].data.tags["hgbench.status"] == "skipped"
    assert "max_weights=5,000" in st["exact"].data.tags["hgbench.skip_reason"]
    assert st["cg"].info.status == "FINISHED"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_presets_compose(preset):
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.hypergrad.name and cfg.dataset.name


# presets that run at a tiny size in a test of their own instead of below (grids are left out too:
# a swept `experiment=` cannot carry a preset's own sweep; each grid preset has its own test)
OWN_TINY_TEST = {"paper_ptb_awd": "tests/test_paper_ptb.py (40 streams: its splits must be 40 × k windows)",
                 "paper_ptb": "tests/test_paper_ptb.py (the whole training split: every evaluation walks 929,589 tokens)",
                 "paper_augment_cifar10": "tests/test_paper_augment.py (a fake CIFAR-10 folder)",
                 "paper_val_split": "tests/test_paper_val_split.py (its 162-job grid and the study's quick run)"}


def missing_data(preset: str) -> str | None:
    """Why the data of ``preset`` is not installed on this machine (what its dataset's
    ``check_available`` says, naming what to install), or None."""
    from hgbench.config import build_plugin

    try:
        build_plugin("dataset", compose_config([f"experiment={preset}"]).dataset).check_available()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        return str(exc)
    return None


def test_a_preset_whose_data_is_missing_is_left_out_with_its_reason(monkeypatch):
    """As on a machine without the Debian package dataset-fashion-mnist (the plugin finds none of
    its files): the Fashion-MNIST preset is left out of the presets' grid below with the reason."""
    from hgbench.plugins.dataset import fashion_mnist

    assert missing_data("paper_distill_mnist") is None
    monkeypatch.setattr(fashion_mnist, "_find", lambda root, stem: None)
    why = missing_data("paper_distill_fashion_mnist")
    assert why.startswith("dataset 'fashion_mnist': missing train-images-idx3-ubyte.gz") and "apt-get install -y dataset-fashion-mnist" in why
    assert missing_data("paper_distill_mnist") is None


def test_a_failed_command_is_reported_with_its_jobs_reasons():
    from types import SimpleNamespace

    out = SimpleNamespace(returncode=1, stderr="some warning\n", stdout="\n".join([
        "hgbench run FAILED in 0.1 s — neumann · weight_decay · digits · mlp", "  reason: the hypergradient is not finite", "  train  1.0 → 2.0",
        "hgbench sweep 123: 2 jobs — 1 failed, 1 finished", "  #0   FAILED    seed=0  (DivergenceError: boom)", "  #1   FINISHED  seed=1"]))
    report = failure_report(out)
    assert "reason: the hypergradient is not finite" in report and "#0   FAILED    seed=0  (DivergenceError: boom)" in report
    assert "some warning" in report and "train  1.0" not in report and report.startswith("exit 1")


@pytest.mark.slow
def test_every_single_run_experiment_runs(tmp_path, mlflow_db):
    """Every single-run preset, two hyper-steps each, in one grid; a preset whose data is not
    installed here (Fashion-MNIST without its Debian package) is left out, and the test then ends
    as skipped with the reason, after the others ran."""
    singles = [p.stem for p in (CONF / "experiment").glob("*.yaml")
               if "MULTIRUN" not in p.read_text() and "sweeper" not in p.read_text() and p.stem not in OWN_TINY_TEST]
    missing = {p: why for p in singles if (why := missing_data(p))}
    singles = [p for p in singles if p not in missing]
    # small evaluation splits (every dataset has these keys), two inner steps per hyper-step (the
    # presets' 5 to 10 more of the same code took half the test's time) and evaluations at the start
    # and the end only (each evaluates the whole training split, and distillation trains 9 fresh
    # models per evaluation): the presets run as they are otherwise
    out = hgbench(tmp_path, "-m", f"experiment={','.join(singles)}", "hyper_steps=2", "inner_steps=2", "eval_every=2",
                  "dataset.val_size=10", "dataset.test_size=10", "mlflow.experiment=presets")
    assert out.returncode == 0, failure_report(out)
    client, runs = runs_of(tmp_path, "presets")
    assert len(runs) == len(singles) and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert int(r.data.params["num_hyperparams"]) > 0 and int(r.data.params["num_weights"]) > 0
    by_family = {r.data.tags["hgbench.hyperparam"]: r for r in runs}
    assert int(by_family["distill"].data.params["num_hyperparams"]) == 10 * 784
    assert "distilled.png" in [a.path for a in client.list_artifacts(by_family["distill"].info.run_id)]
    assert "augmentations.png" in [a.path for a in client.list_artifacts(by_family["augment_net"].info.run_id)]
    big = [r for r in runs if r.data.params["hyperparam.name"] == "weight_decay" and r.data.params["hyperparam.granularity"] == "per_param"]
    assert max(int(r.data.params["num_hyperparams"]) for r in big) > 1_000_000
    if missing:
        pytest.skip(f"the other {len(singles)} presets ran; left out, their data is not installed: "
                    + "; ".join(f"{p} ({why})" for p, why in sorted(missing.items())))


@pytest.mark.slow
def test_methods_x_seeds_sweep_preset(tmp_path, mlflow_db):
    out = hgbench(tmp_path, "sweep=methods_x_seeds", "seed=0", "hyper_steps=2", "eval_every=1", "model.hidden=[8]")
    assert out.returncode == 0, failure_report(out)
    _, runs = runs_of(tmp_path, "methods_x_seeds")
    assert sorted(r.data.tags["hgbench.hypergrad"] for r in runs) == sorted(
        ["neumann", "cg", "identity", "unroll", "exact", "fixed"])
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_optuna_black_box_baseline(tmp_path, mlflow_db):
    out = hgbench(tmp_path, "sweep=optuna_weight_decay", "hydra.sweeper.n_trials=3", "hyper_steps=2", "eval_every=1")
    assert out.returncode == 0, failure_report(out)
    _, runs = runs_of(tmp_path, "methods_x_seeds")
    assert len(runs) == 3
    assert {r.data.tags["hgbench.sweeper"] for r in runs} == {"optuna"}
    assert {r.data.tags["hgbench.hypergrad"] for r in runs} == {"fixed"}
    assert len({r.data.params["hyperparam.init_decay"] for r in runs}) == 3  # the tuner chose λ
    assert list(tmp_path.glob("multirun/*/*/optimization_results.yaml"))


def test_slurm_example_launcher_config_composes(tmp_path):
    out = hgbench(tmp_path, "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher")
    assert out.returncode == 0, out.stderr
    assert "SlurmLauncher" in out.stdout and "gpus_per_node: 1" in out.stdout


def test_sweep_summary_formatting():
    from hgbench.callbacks import format_sweep_summary

    text = format_sweep_summary([
        {"job_num": 0, "status": "FINISHED", "overrides": "seed=0", "val_loss": 0.5, "test_loss": 0.6},
        {"job_num": 1, "status": "FAILED", "overrides": "seed=1", "error": "DivergenceError: boom", "val_loss": 2.3},
    ])
    assert "2 jobs — 1 failed, 1 finished" in text
    assert "val_loss=0.5000" in text and "boom" in text and "val_loss=2.3" not in text
    text = format_sweep_summary([{"job_num": 0, "status": "FINISHED", "overrides": "seed=0", "val_loss": 5.0, "val_ppl": 148.41}])
    assert "val_loss=5.0000  val_ppl=148.41" in text  # sequence tasks: perplexity too


def test_sweep_summary_shows_runtime_memory_and_load_and_flags_a_contended_runtime():
    from hgbench.callbacks import format_sweep_summary

    job = {"status": "FINISHED", "val_loss": 0.5, "test_loss": 0.6, "hg_cosine": 0.91234, "runtime_s": 12.34,
           "peak_memory_mb": 18.6, "cores": 2}
    text = format_sweep_summary([{**job, "job_num": 0, "overrides": "seed=0", "load_avg_start": 0.4, "load_avg_end": 1.9},
                                {**job, "job_num": 1, "overrides": "seed=1", "load_avg_start": 1.2, "load_avg_end": 4.5}])
    quiet, busy = text.splitlines()[1:3]
    assert quiet.endswith("val_loss=0.5000  test_loss=0.6000  hg_cosine=0.912  12.3 s  18.6 MB  load 0.4→1.9")
    assert busy.endswith("12.3 s*  18.6 MB  load 1.2→4.5")
    assert text.splitlines()[-1].startswith("  * runtime measured at a load average above the 2 cores")
    assert "*" not in format_sweep_summary([{**job, "job_num": 0, "overrides": "", "load_avg_start": 0.1, "load_avg_end": 2.0}])
