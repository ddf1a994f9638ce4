"""The outcome study's reading (benchmarks/outcome.py): curves and the per-configuration table from
a tiny fake store (runs and metric histories shaped as hgbench.report's readers return them)."""

import math

import pandas as pd

from hgbench.benchmarks import outcome


def _fake():
    runs, hist = [], []
    for method, speed, shift in (("cg", 1.0, 0.0), ("cg_nystrom", 2.0, 0.0), ("identity", 1.0, 0.1)):
        for seed in (0, 1, 2):
            rid = f"{method}-{seed}"
            runs.append({"run_id": rid, "problem": "weight_decay", "method": method, "seed": seed, "status": "finished",
                         "load_avg_start": 5.0, "load_avg_end": 6.0})
            for step in range(0, 5):
                val = 1.0 + shift - 0.1 * step * speed - 0.01 * seed
                hist += [(rid, "val_loss", step, val), (rid, "test_loss", step, val + 0.05),
                         (rid, "elapsed_s", step, float(step)), *([(rid, "hvp_calls", step, 10.0)] if step else []),
                         *([(rid, "hg_rel_err", step, 0.1 / speed * (1 + step))] if step in (2, 4) else [])]
    runs.append({"run_id": "kfac-0", "problem": "reweighting", "method": "kfac", "seed": 0, "status": "skipped",
                 "skip_reason": "no Gauss-Newton form", "load_avg_start": math.nan, "load_avg_end": math.nan})
    return pd.DataFrame(runs), pd.DataFrame(hist, columns=["run_id", "key", "step", "value"])


def test_outcome_table_from_a_fake_store(tmp_path):
    runs, hist = _fake()
    cv = outcome.curves_from_history(runs, hist)
    runs = outcome.with_accuracy(runs, hist)
    assert len(cv) == 3 * 3 * 5 and cv["hvps"].max() == 40.0  # cumulative products up to each evaluation
    tab, targets = outcome.table(runs, cv)
    # final losses: cg 0.60, 0.59, 0.58 (mean 0.59); cg_nystrom 0.20, 0.19, 0.18; identity 0.70, 0.69, 0.68
    assert math.isclose(targets["weight_decay (2)"], 0.59)  # the median of the configurations' mean final losses (cg's)
    assert math.isclose(targets["weight_decay"], 0.7)  # every run reaches it (identity's seed 0 ends there)
    row = {r["method"]: r for r in tab.to_dict("records")}
    assert math.isclose(row["cg"]["d_val_loss_mean"], -0.1) and math.isclose(row["cg"]["d_val_loss_max"], -0.1)  # paired by seed
    assert row["cg"]["seeds"] == 3 and row["cg"]["reached"] == "3/3" and row["cg_nystrom"]["reached2"] == "3/3"
    assert row["identity"]["reached2"] == "0/3"  # identity ends above target 2: not reached, never extrapolated
    assert row["cg_nystrom"]["time_to_target_s_mean"] < row["cg"]["time_to_target_s_mean"]
    assert row["cg_nystrom"]["hvps_to_target_mean"] < row["cg"]["hvps_to_target_mean"]
    assert math.isclose(row["cg"]["val_loss_std"], 0.01)
    assert row["kfac"]["reached"].startswith("skipped: no Gauss-Newton form")
    assert math.isclose(row["cg"]["hg_rel_err_max"], 0.4) and math.isclose(row["cg_nystrom"]["hg_rel_err_min"], 0.2)
    md = outcome.markdown(tab)
    assert "`cg_nystrom`" in md and "skipped" in md
    outcome.plot(cv, tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0


def test_differences_from_identity_get_a_t_interval_over_the_seeds():
    runs, hist = _fake()
    last = (hist["run_id"] == "cg-2") & (hist["key"] == "val_loss") & (hist["step"] == 4)
    hist.loc[last, "value"] += 0.03  # cg − identity by seed: −0.10, −0.10, −0.07
    tab, _ = outcome.table(outcome.with_accuracy(runs, hist), outcome.curves_from_history(runs, hist))
    cg = tab.set_index("method").loc["cg"]
    half = 4.302653 * 0.0173205 / 3 ** 0.5  # t(0.975, 2) · s / √n
    assert math.isclose(cg["d_val_loss_mean"], -0.09) and math.isclose(cg["d_val_loss_lo"], -0.09 - half, rel_tol=1e-4)
    assert math.isclose(cg["d_val_loss_hi"], -0.09 + half, rel_tol=1e-4)
    assert math.isclose(cg["d_val_loss_min"], -0.1) and math.isclose(cg["d_val_loss_max"], -0.07)  # the range stays in the CSV
    md = outcome.markdown(tab)
    assert f"-0.0900 [{-0.09 - half:+.4f}, {-0.09 + half:+.4f}] |" in md
    assert "+0.0000 [+0.0000, +0.0000], within noise" in md  # identity against itself


def test_every_curve_row_names_the_commit_its_run_came_from():
    runs, hist = _fake()
    runs["tags.mlflow.source.git.commit"] = ["a" * 40] * 4 + ["b" * 40] * 5 + [None]
    runs["tags.hgbench.git_dirty"] = ["false"] * 4 + ["true"] * 5 + [None]
    cv = outcome.curves_from_history(runs, hist)
    by_run = cv.groupby("run_id")["commit"].unique().map(list).to_dict()
    assert by_run["cg-0"] == ["a" * 12] and by_run["cg_nystrom-0"] == ["a" * 12] and by_run["cg_nystrom-1"] == ["b" * 12 + "+dirty"]
    assert outcome.run_commit(runs.iloc[-1]) == "unknown"  # no git tag: said, not guessed


def test_configurations_that_differ_get_their_own_label():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "problem": ["p"] * 3, "method": ["cg_nystrom", "cg_nystrom", "cg"],
                         "params.hypergrad.refresh_every": ["10", "1", None]})
    assert list(outcome.label_configurations(runs)["method"]) == ["cg_nystrom (refresh_every=10)",
                                                                  "cg_nystrom (refresh_every=1)", "cg"]


def test_outcome_grid_commands():
    cmds = outcome.commands("sqlite:////tmp/x.db", quick=True)
    assert [c[1] for c in cmds] == ["sweep=outcome_weight_decay", "sweep=outcome_reweighting", "sweep=outcome_reweighting_linear",
                                    "sweep=outcome_weight_decay"]  # + Nystrom CG with its sketch rebuilt every hyper-step
    assert all("num_threads=1" in c and "hydra.launcher.n_jobs=2" in c for c in cmds)
