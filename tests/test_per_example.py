"""The per-example rows behind the paper studies' intervals (benchmarks/per_example.py): 0/1 rows
round-trip through their text form and a gzipped CSV with the commit, the correctness of a model
is its logged accuracy example by example, and the gap interval covers its difference."""

import numpy as np
import torch

from hgbench.benchmarks import per_example


def test_rows_round_trip_through_the_gzipped_csv_with_the_commit(tmp_path):
    bits = np.array([1, 0, 0, 1, 1], dtype=np.uint8)
    assert per_example.encode(bits) == "10011"
    assert np.array_equal(per_example.decode("10011"), bits)
    assert np.allclose(per_example.decode_floats(per_example.encode_floats([0.5, 1.25])), [0.5, 1.25])
    path = per_example.write_gz(tmp_path, "c", [{"arm": "a", "correct": "10011"}])
    assert path.name == "c.csv.gz"
    (row,) = per_example.read_gz(path)
    assert row["correct"] == "10011" and row["arm"] == "a" and row["commit"]


def test_correctness_is_the_logged_accuracy_example_by_example():
    """On a small problem (a linear model, in eval mode as ``Problem.evaluate``): the 0/1 row's mean
    is the split's accuracy, the per-target losses' mean its loss; fingerprints tell splits apart."""
    import functools
    from types import SimpleNamespace

    import torch.nn.functional as F

    from hgbench.problem import Problem

    g = torch.Generator().manual_seed(0)
    split = SimpleNamespace(x=torch.randn(30, 4, generator=g), y=torch.randint(0, 3, (30,), generator=g))
    other = SimpleNamespace(x=split.x.flip(0), y=split.y.flip(0))
    module = torch.nn.Linear(4, 3)
    w = torch.randn(4, 3, generator=g)
    problem = SimpleNamespace(data=SimpleNamespace(test=split, val=other), module=module, forward=lambda w, x: x @ w,
                              data_loss=lambda out, y, reduction="mean": F.cross_entropy(out, y, reduction=reduction))
    problem.outputs = functools.partial(Problem.outputs, problem)  # the real chunking, eval mode and all
    c = per_example.correct(problem, w, "test", batch_size=7)
    assert c.shape == (30,) and set(np.unique(c)) <= {0, 1} and module.training
    assert abs(c.mean() - ((split.x @ w).argmax(-1) == split.y).double().mean().item()) < 1e-12
    assert abs(per_example.token_nll(problem, w, "test", batch_size=7).mean() - F.cross_entropy(split.x @ w, split.y).item()) < 1e-6
    assert per_example.fingerprint(split) == per_example.fingerprint(SimpleNamespace(x=split.x.clone(), y=split.y.clone()))
    assert per_example.fingerprint(split) != per_example.fingerprint(other)


def test_the_gap_interval_covers_its_difference_and_sees_a_large_one():
    rng = np.random.default_rng(0)
    a_val, b_val = np.ones((3, 50)), (rng.random((3, 50)) < 0.7).astype(float)
    a_test, b_test = (rng.random((3, 400)) < 0.72).astype(float), (rng.random((3, 400)) < 0.7).astype(float)
    g = per_example.gap_bootstrap(a_val, b_val, a_test, b_test, n_boot=500)
    assert g["lo"] <= g["diff"] <= g["hi"] and g["lo"] > 0 and not g["within_noise"]
    z = per_example.gap_bootstrap(b_val, b_val, b_test, b_test, n_boot=200)
    assert z["diff"] == 0 and z["within_noise"]
