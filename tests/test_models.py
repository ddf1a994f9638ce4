"""Model plugins (mlp, cnn, resnet, lstm): shapes, weight counts, the flat-weight functional path,
per-unit dropout masks, the hand-written LSTM against torch.nn.LSTM, and — for each new model —
IFT hypergradients against central finite differences of L_V(w*(λ)) on a tiny float64 instance.

The language model is checked on a small synthetic token set (a Markov chain), registered as a
test-only dataset plugin for this module and removed afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.func import functional_call

from hgbench import DataSplits, Dataset, build_experiment, hookimpl, registry
from hgbench.base import split_arrays
from hgbench.flat import FlatSpec
from hgbench.ift import HessianVectorProduct
from helpers import chord_solve, polish

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and far faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- a tiny token dataset for the language model ------------------------------------------------


@dataclass
class MarkovTokens(Dataset):
    """Test-only: token sequences from a random Markov chain; x = tokens, y = the next tokens."""

    name = "test_markov_tokens"
    vocab: int = 6
    seq_len: int = 5
    train_size: int = 12
    val_size: int = 10
    test_size: int = 10
    split_seed: int = 0

    def load(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.split_seed)
        n = self.train_size + self.val_size + self.test_size
        transitions = torch.softmax(3 * torch.randn(self.vocab, self.vocab, generator=g), dim=-1)
        s = torch.empty(n, self.seq_len + 1, dtype=torch.long)
        s[:, 0] = torch.randint(0, self.vocab, (n,), generator=g)
        for t in range(self.seq_len):
            s[:, t + 1] = torch.multinomial(transitions[s[:, t]], 1, generator=g)[:, 0]
        splits = split_arrays(s[:, :-1], s[:, 1:], (self.train_size, self.val_size, self.test_size), self.split_seed)
        return DataSplits(*splits, task="classification", num_outputs=self.vocab)


class _TestDatasets:
    @hookimpl
    def register_datasets(self):
        return [MarkovTokens]


@pytest.fixture(scope="module")
def tokens():
    registry.register(_TestDatasets(), name="test_models_datasets")
    try:
        yield MarkovTokens.name
    finally:
        registry.unregister("test_models_datasets")
        from hydra.core.config_store import ConfigStore  # drop the config stored for it, too

        ConfigStore.instance().repo.get("dataset", {}).pop(f"{MarkovTokens.name}.yaml", None)


# --- building modules directly ------------------------------------------------------------------


def build(name: str, input_shape, num_outputs: int = 10, seed: int = 0, **params):
    torch.manual_seed(seed)
    return registry.get("model", name)(**params).build(tuple(input_shape), num_outputs).to(F64)


def perturbed(net, scale: float = 0.1, seed: int = 0):
    """Add noise to every weight (Fixup starts some layers at zero, where masks could not show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def inputs(input_shape, n: int = 3, vocab: int = 10, seed: int = 0):
    """n random inputs: images (N, C, H, W) here, or, for a 1-D shape (T,), token ids (N, T) < vocab."""
    g = torch.Generator().manual_seed(seed)
    if len(input_shape) == 1:
        return torch.randint(0, vocab, (n, *input_shape), generator=g)
    return torch.randn(n, *input_shape, generator=g, dtype=F64)


SMALL = {  # (model, params, input_shape) small instances with every kind of dropout site
    "mlp": ("mlp", {"hidden": [5, 4], "activation": "tanh"}, (1, 8, 8)),
    "cnn": ("cnn", {"channels": [3, 4], "hidden": [6, 5], "kernel_size": 3}, (2, 9, 9)),
    "resnet": ("resnet", {"blocks": [1, 1], "width": 2}, (3, 8, 8)),
    "resnet_gn": ("resnet", {"blocks": [1, 1], "width": 4, "norm": "group", "groups": 2}, (3, 8, 8)),
    "lstm": ("lstm", {"embedding_dim": 4, "hidden_size": 5, "num_layers": 3}, (6,)),
    "lstm_untied": ("lstm", {"embedding_dim": 4, "hidden_size": 5, "num_layers": 2, "tie_weights": False}, (6,)),
}


@pytest.mark.parametrize(
    "name,params,input_shape",
    [
        ("cnn", {}, (1, 8, 8)),
        ("cnn", {}, (1, 28, 28)),
        ("cnn", {}, (3, 32, 32)),
        ("cnn", {"channels": [4, 8, 8], "hidden": [16, 12], "kernel_size": 3, "pool": "avg"}, (3, 32, 32)),
        ("cnn", {"kernel_size": 4}, (1, 9, 13)),
        ("resnet", {}, (1, 8, 8)),
        ("resnet", {}, (1, 28, 28)),
        ("resnet", {}, (3, 32, 32)),
        ("resnet", {"blocks": [2, 2, 2], "width": 4, "norm": "group"}, (3, 32, 32)),
        ("resnet", {"blocks": [1], "width": 3}, (1, 1, 1)),
        ("mlp", {}, (1, 8, 8)),
        ("lstm", {}, (7,)),
        ("lstm", {"num_layers": 1, "tie_weights": False, "hidden_size": 9}, (7,)),
    ],
)
def test_output_shapes(name, params, input_shape):
    net = build(name, input_shape, 10, **params)
    out = net(inputs(input_shape, n=3))
    expected = (3, *input_shape, 10) if name == "lstm" else (3, 10)
    assert out.shape == expected and torch.isfinite(out).all()


def test_bad_inputs_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="too small for 2 conv-pool stages"):
        build("cnn", (1, 3, 3))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build("resnet", (64,))
    with pytest.raises(ValueError, match="token sequences"):
        build("lstm", (1, 8, 8))
    with pytest.raises(ValueError, match="integer token ids"):
        build("lstm", (5,))(torch.randn(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="blocks"):
        registry.get("model", "resnet")(blocks=[])


# --- weight counts of the default-sized models ---------------------------------------------------


def n_weights(net) -> int:
    return FlatSpec.of(dict(net.named_parameters())).numel


def test_default_models_count_their_weights():
    # mlp 784-128-10
    assert n_weights(build("mlp", (784,))) == 785 * 128 + 129 * 10 == 101_770
    # cnn (LeNet-like) conv 5x5 (6) - pool - conv 5x5 (16) - pool - fc 120 - fc 10
    convs = lambda c: (c * 25 + 1) * 6 + (6 * 25 + 1) * 16  # noqa: E731
    assert n_weights(build("cnn", (1, 28, 28))) == convs(1) + (16 * 7 * 7 + 1) * 120 + 121 * 10 == 97_982
    assert n_weights(build("cnn", (3, 32, 32))) == convs(3) + (16 * 8 * 8 + 1) * 120 + 121 * 10 == 127_082
    assert n_weights(build("cnn", (1, 8, 8))) == convs(1) + (16 * 2 * 2 + 1) * 120 + 121 * 10 == 11_582
    # resnet-8, width 16: stem, 3 blocks of two 3x3 convs (+ 1x1 projections when the shape changes), fc
    convs = 3 * 16 * 9 + 2 * 16 * 16 * 9 + (16 * 32 * 9 + 32 * 32 * 9 + 16 * 32) + (32 * 64 * 9 + 64 * 64 * 9 + 32 * 64)
    fc = 64 * 10 + 10
    fixup = 1 + 3 * 5  # a scalar bias after the stem; per block 4 scalar biases and a multiplier
    group_norm = 2 * (16 + 2 * 16 + 3 * 32 + 3 * 64)  # weight and bias per channel of each norm
    assert n_weights(build("resnet", (3, 32, 32))) == convs + fc + fixup == 77_386
    assert n_weights(build("resnet", (3, 32, 32), norm="group")) == convs + fc + group_norm == 78_042
    assert n_weights(build("resnet", (3, 32, 32), blocks=[2, 2, 2])) > n_weights(build("resnet", (3, 32, 32)))
    # lstm on a 10,000-word vocabulary (Penn Treebank): tied decoder = embedding + one bias per word
    v, e, h = 10_000, 64, 64
    layer = lambda i, o: 4 * o * (i + o) + 4 * o  # noqa: E731  W_ih, W_hh, one bias
    tied = build("lstm", (35,), v)
    assert n_weights(tied) == v * e + layer(e, h) + layer(h, e) + v == 716_048
    names = [n for n, _ in tied.named_parameters()]
    assert "embedding.weight" in names and not any(n.startswith("decoder.") for n in names)
    untied = build("lstm", (35,), v, tie_weights=False)
    assert n_weights(untied) == v * e + layer(e, h) + layer(h, h) + (h + 1) * v == 1_356_048


# --- the functional path with flat weights -------------------------------------------------------


def masks_for(net, value: float = 0.5, n: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = lambda u: (u,) if n is None else (n, u)  # noqa: E731
    return {s: value + torch.rand(shape(u), generator=g, dtype=F64) for s, u in net.dropout_sites.items()}


@pytest.mark.parametrize("key", list(SMALL))
def test_functional_call_with_flat_views_matches_the_module(key):
    name, params, shape = SMALL[key]
    net = build(name, shape, 7, **params)
    x = inputs(shape, n=4, vocab=7)
    named = {n: p.detach() for n, p in net.named_parameters()}
    spec = FlatSpec.of(named)
    g = torch.Generator().manual_seed(1)
    w = (spec.flatten(named) + 0.1 * torch.randn(spec.numel, generator=g, dtype=F64)).requires_grad_(True)
    with torch.no_grad():  # the module holds the same (perturbed) weights
        for p, v in zip(net.parameters(), spec.unflatten(w.detach()).values(), strict=True):
            p.copy_(v)
    masks = masks_for(net, n=4)
    for kwargs in ({}, {"unit_masks": masks}):
        got = functional_call(net, spec.unflatten(w), (x,), kwargs)
        torch.testing.assert_close(got, net(x, **kwargs), rtol=1e-12, atol=1e-12)
    # every weight is used: the functional output has a gradient for every parameter tensor
    (grad,) = torch.autograd.grad(functional_call(net, spec.unflatten(w), (x,), {"unit_masks": masks}).square().sum(), w)
    for n, gn in spec.unflatten(grad).items():
        assert gn.abs().sum() > 0, n


@pytest.mark.parametrize(
    "model,dataset,overrides",
    [
        ("mlp", "digits", ["model.hidden=[6,5]"]),
        ("cnn", "digits", ["dataset.image=true", "model.channels=[2,3]", "model.hidden=[4]"]),
        ("resnet", "digits", ["dataset.image=true", "model.width=2"]),
        ("lstm", "tokens", ["model.embedding_dim=4", "model.hidden_size=3"]),
    ],
)
def test_the_problem_forward_matches_the_module_and_passes_unit_masks(request, model, dataset, overrides):
    if dataset == "tokens":
        dataset = request.getfixturevalue("tokens")
    exp = build_experiment(model=model, dataset=dataset, hyperparam="weight_decay_per_param",
                           overrides=["dataset.train_size=8", "dataset.val_size=8", *overrides])
    p = exp.problem
    x = p.data.train.x
    net = p.module
    torch.testing.assert_close(p.forward(p.w0, x), net(x))
    masks = masks_for(net, n=len(x))
    masks = {k: v.to(p.dtype) for k, v in masks.items()}
    torch.testing.assert_close(p.ctx.forward(p.w0, x, unit_masks=masks), net(x, unit_masks=masks))
    w1 = p.w0 + 0.1 * torch.randn(p.num_weights, generator=torch.Generator().manual_seed(0)).to(p.dtype)
    assert not torch.allclose(p.forward(w1, x, unit_masks=masks), p.forward(w1, x))


def test_mlp_keeps_its_parameters_and_outputs():
    net = build("mlp", (1, 8, 8), hidden=[5, 4], activation="elu")
    assert [n for n, _ in net.named_parameters()] == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    plain = torch.nn.Sequential(*net)  # the same layers as a plain Sequential
    x = inputs((1, 8, 8))
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
    assert net.dropout_sites == {"hidden0": 5, "hidden1": 4}


# --- per-unit dropout masks ------------------------------------------------------------------------


def test_dropout_sites_name_the_units():
    cnn = build("cnn", (2, 9, 9), channels=[3, 4], hidden=[6, 5], kernel_size=3)
    assert cnn.dropout_sites == {"conv0": 3, "conv1": 4, "hidden0": 6, "hidden1": 5}
    assert build("resnet", (3, 8, 8), blocks=[1, 1], width=2).dropout_sites == {"features": 4}
    assert build("lstm", (6,), embedding_dim=4, hidden_size=5, num_layers=3).dropout_sites == {
        "embedding": 4, "hidden0": 5, "hidden1": 5, "output": 4}  # tied: the last layer has embedding_dim units
    assert build("lstm", (6,), embedding_dim=4, hidden_size=5, num_layers=1, tie_weights=False).dropout_sites == {
        "embedding": 4, "output": 5}


@pytest.mark.parametrize("key", list(SMALL))
def test_masks_of_ones_change_nothing_and_zeros_cut_the_site(key):
    name, params, shape = SMALL[key]
    net = perturbed(build(name, shape, 7, **params))
    n = 4
    x1, x2 = inputs(shape, n=n, vocab=7, seed=1), inputs(shape, n=n, vocab=7, seed=2)
    plain = net(x1)
    assert net.dropout_sites
    for site, units in net.dropout_sites.items():
        ones = [torch.ones(units, dtype=F64), torch.ones(n, units, dtype=F64)]
        if name == "lstm":
            ones.append(torch.ones(n, shape[0], units, dtype=F64))
        for m in ones:
            m.requires_grad_(True)
            out = net(x1, unit_masks={site: m})
            torch.testing.assert_close(out, plain, rtol=0, atol=0)
            (gm,) = torch.autograd.grad(out.square().sum(), m)  # masks are differentiable
            assert gm.abs().sum() > 0, site
        # zeros: nothing before the site reaches the output any more
        zero = torch.zeros(units, dtype=F64)
        cut = net(x1, unit_masks={site: zero})
        torch.testing.assert_close(cut, net(x2, unit_masks={site: zero}), rtol=0, atol=1e-12)
        assert not torch.allclose(cut, plain)
        # a per-example mask: example 0 cut, the others untouched
        per_example = torch.ones(n, units, dtype=F64)
        per_example[0] = 0
        out = net(x1, unit_masks={site: per_example})
        torch.testing.assert_close(out[0], cut[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(out[1:], plain[1:], rtol=0, atol=1e-12)
        # a per-unit mask: cutting one unit changes the output, the whole site is not the same
        one_unit = torch.ones(units, dtype=F64)
        one_unit[0] = 0
        partial = net(x1, unit_masks={site: one_unit})
        assert not torch.allclose(partial, plain) and not torch.allclose(partial, cut)
    # all sites at once, unknown sites and misshapen masks
    assert torch.isfinite(net(x1, unit_masks=masks_for(net, n=n))).all()
    torch.testing.assert_close(net(x1, unit_masks={}), plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown dropout site"):
        net(x1, unit_masks={"nope": torch.ones(3, dtype=F64)})
    site, units = next(iter(net.dropout_sites.items()))
    with pytest.raises(ValueError, match=f"dropout site '{site}'"):
        net(x1, unit_masks={site: torch.ones(units + 1, dtype=F64)})


def test_lstm_masks_per_time_step():
    net = build("lstm", (6,), 7, embedding_dim=4, hidden_size=5, num_layers=2)
    x = inputs((6,), n=3, vocab=7)
    plain = net(x)
    m = torch.ones(3, 6, 4, dtype=F64)
    m[:, 2] = 0  # cut the last layer's output at step 2 only: logits there are the decoder bias
    out = net(x, unit_masks={"output": m})
    torch.testing.assert_close(out[:, 2], net.decoder_bias.expand(3, 7), rtol=0, atol=0)
    torch.testing.assert_close(out[:, [0, 1, 3, 4, 5]], plain[:, [0, 1, 3, 4, 5]], rtol=0, atol=0)
    out = net(x, unit_masks={"embedding": m})  # cut the input at step 2: earlier steps unchanged
    torch.testing.assert_close(out[:, :2], plain[:, :2], rtol=0, atol=0)
    assert not torch.allclose(out[:, 2:], plain[:, 2:])


# --- the hand-written LSTM -------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_hand_written_lstm_matches_torch_nn_lstm(tie):
    """Same weights (nn.LSTM's two biases summing to ours): same logits and same gradients."""
    net = build("lstm", (7,), 11, embedding_dim=4, hidden_size=5, num_layers=3, tie_weights=tie)
    g = torch.Generator().manual_seed(3)
    refs = []
    for layer in net.layers:
        ref = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True).to(F64)
        split = torch.rand(layer.bias.shape, generator=g, dtype=F64)
        with torch.no_grad():
            ref.weight_ih_l0.copy_(layer.weight_ih)
            ref.weight_hh_l0.copy_(layer.weight_hh)
            ref.bias_ih_l0.copy_(layer.bias * split)
            ref.bias_hh_l0.copy_(layer.bias * (1 - split))
        refs.append(ref)
    x = inputs((7,), n=4, vocab=11)
    h = net.embedding(x)
    for ref in refs:
        h = ref(h)[0]
    ref_out = torch.nn.functional.linear(h, net.embedding.weight, net.decoder_bias) if tie else net.decoder(h)
    out = net(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    y = inputs((7,), n=4, vocab=11, seed=5)
    loss = lambda o: torch.nn.functional.cross_entropy(o.reshape(-1, 11), y.reshape(-1))  # noqa: E731
    ours = torch.autograd.grad(loss(out), [p for l in net.layers for p in (l.weight_ih, l.weight_hh)])
    theirs = torch.autograd.grad(loss(ref_out), [p for r in refs for p in (r.weight_ih_l0, r.weight_hh_l0)])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_group_norm_matches_torch_group_norm():
    from hgbench.plugins.model.resnet import GroupNorm

    ours, ref = GroupNorm(2, 6).to(F64), torch.nn.GroupNorm(2, 6).to(F64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a, b in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
            a.copy_(torch.randn(6, generator=g, dtype=F64))
            b.copy_(a)
    x = torch.randn(3, 6, 5, 4, generator=g, dtype=F64, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(ours(x).sin().sum(), (x, ours.weight))
    gb = torch.autograd.grad(ref(x).sin().sum(), (x, ref.weight))
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_group_norm_resnet_batched_hvps_equal_the_hessian():
    """``exact`` builds the Hessian from batched HVPs (vmap); through GroupNorm that must work."""
    exp = build_experiment(model="resnet", dataset="digits", hyperparam="weight_decay_per_param",
                           overrides=["dtype=float64", "dataset.image=true", "dataset.train_size=10", "dataset.val_size=10",
                                      "model.blocks=[1,1]", "model.width=2", "model.norm=group", "model.groups=2",
                                      "model.activation=tanh", "hyperparam.init_decay=0.01"])
    p, lam = exp.problem, exp.lam.detach()
    w = exp.w.detach().requires_grad_(True)
    f = lambda w_: p.train_loss(w_, lam, p.full_batch("train"))  # noqa: E731
    (g,) = torch.autograd.grad(f(w), w, create_graph=True)
    hvp = HessianVectorProduct(g, w)
    eye = torch.eye(len(w), dtype=F64)
    torch.testing.assert_close(hvp.batched(eye), torch.autograd.functional.hessian(f, w.detach()), rtol=1e-9, atol=1e-11)
    assert torch.isfinite(exp.hypergradient("exact")["log_decay"]).all()


# --- IFT hypergradients against finite differences (float64, tiny instances) ----------------------

TINY = {  # model, dataset, overrides, decay, the parameter tensors whose largest coordinate is checked
    # 97 weights: conv 3x3 (1) - avg pool - conv 3x3 (2) - avg pool - fc 3 - fc 10, tanh, on 8x8 digits
    "cnn": ("cnn", "digits", ["dataset.image=true", "model.channels=[1,2]", "model.kernel_size=3", "model.hidden=[3]",
                              "model.activation=tanh", "model.pool=avg", "inner_optimizer.lr=0.03"], 0.003,
            ["convs.0.weight", "convs.1.weight", "fcs.0.weight", "out.bias"]),
    # 124 weights: a Fixup ResNet with two blocks (widths 1, then 2 with a projection), ELU, on 8x8 digits;
    # Adam at lr 0.01 (at 0.03 L-BFGS stops near a saddle, and Newton needs ~60 Hessians to leave it)
    "resnet": ("resnet", "digits", ["dataset.image=true", "model.blocks=[1,1]", "model.width=1",
                                    "model.activation=elu", "inner_optimizer.lr=0.01"], 0.01,
               ["stem.weight", "blocks.0.conv1.weight", "blocks.1.shortcut.0.weight", "fc.weight"]),
    # 144 weights: 6 tokens, embedding 3, two LSTM layers (2 units, then 3 for the tied decoder)
    "lstm": ("lstm", "tokens", ["model.embedding_dim=3", "model.hidden_size=2", "model.num_layers=2", "inner_optimizer.lr=0.03"], 0.003,
             ["embedding.weight", "layers.0.weight_hh", "layers.1.weight_ih", "decoder_bias"]),
}


def polish_fully(exp):
    """Newton (tests/helpers.py ``polish``) to ‖∇L_T‖ < 1e-12, then one more plain Newton step, to
    rounding error: finite differences of L_V(w*(λ)) must see no trace of where Newton stopped."""
    polish(exp, tol=1e-12)
    p, lam = exp.problem, exp.lam.detach()
    f = lambda w: p.train_loss(w, lam, p.full_batch("train"))  # noqa: E731
    w = exp.w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(w), w)
    exp.w = (w - torch.linalg.solve(torch.autograd.functional.hessian(f, w.detach(), vectorize=True), g)).detach()


def converge(exp, steps: int = 300, lbfgs_iterations: int = 1000):
    """The inner problem to its optimum: the experiment's own optimiser (Adam here) for ``steps``,
    full-batch L-BFGS to get close (Adam only hovers; Newton is slow from far away), then Newton."""
    exp.train_inner(steps)
    p, lam, batch = exp.problem, exp.lam.detach(), exp.problem.full_batch("train")
    w = exp.w.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=lbfgs_iterations, tolerance_grad=1e-10, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = p.train_loss(w, lam, batch)
        loss.backward()
        return loss

    opt.step(closure)
    exp.w = w.detach()
    polish_fully(exp)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(TINY))
def test_ift_hypergradient_matches_finite_differences(request, key):
    """exact and cg hypergradients = central differences of L_V(w*(λ)) along the largest coordinate
    of several parameter tensors (from the first layer to the last) and one random direction."""
    model, dataset, overrides, decay, tensors = TINY[key]
    if dataset == "tokens":
        dataset = request.getfixturevalue("tokens")
    else:
        overrides = ["dataset.train_size=30", "dataset.val_size=30", *overrides]
    exp = build_experiment(model=model, dataset=dataset, hyperparam="weight_decay_per_param", inner_optimizer="adam",
                           overrides=["dtype=float64", f"hyperparam.init_decay={decay}", *overrides])
    p = exp.problem
    assert p.num_weights < 150
    g = torch.Generator().manual_seed(1)
    exp.lam.data += 0.5 * torch.randn(p.num_hyperparams, generator=g, dtype=F64)
    converge(exp)
    lam0, w0 = exp.lam.detach().clone(), exp.w.clone()
    train, val = p.full_batch("train"), p.full_batch("val")
    f = lambda w: p.train_loss(w, lam0, train)  # noqa: E731
    w_ = w0.clone().requires_grad_(True)
    assert torch.autograd.grad(f(w_), w_)[0].norm() < 1e-10  # at a stationary point ...
    h0 = torch.autograd.functional.hessian(f, w0, vectorize=True)
    assert torch.linalg.eigvalsh(h0).min() > 1e-4  # ... a minimum
    assert (w0.abs() > 1e-6).double().mean() > 0.9  # ... not a collapsed one (decay can switch whole layers off)

    exact = exp.hypergradient("exact")["log_decay"]
    cg = exp.hypergradient("cg", iterations=1000, tol=1e-13)["log_decay"]
    scale = exact.abs().max()
    torch.testing.assert_close(cg, exact, rtol=0, atol=1e-8 * scale.item())

    chol = torch.linalg.cholesky(h0)

    def val_loss_at_optimum(lam):
        """L_V at w*(λ) for λ within eps of λ0, by chord steps from w0 (helpers.chord_solve: the
        Hessian at (w0, λ0) kept, a few gradients instead of a Hessian per Newton step) to
        ‖∇L_T‖ < 1e-12."""
        w = chord_solve(exp, lam, w0, chol, train, floor=1e-12)
        assert w is not None, "the chord steps stalled above 1e-12"
        return p.val_loss(w, lam, val)

    eps = 1e-5
    hg = p.lam_spec.unflatten(exact.clone())  # views shaped like the weights ("log_decay" per weight)
    per_weight = p.w_spec.unflatten(hg["log_decay"])
    directions = []
    for name in tensors:  # the largest coordinate of each tensor: every part of the model is checked
        d = torch.zeros_like(lam0)
        view = p.w_spec.unflatten(d)[name]
        view.view(-1)[per_weight[name].abs().argmax()] = 1.0
        assert (exact @ d).abs() > 1e-3 * scale, name  # ... and matters
        directions.append(d)
    directions.append(torch.randn(len(lam0), generator=g, dtype=F64) / math.sqrt(len(lam0)))  # all at once
    for d in directions:
        fd = (val_loss_at_optimum(lam0 + eps * d) - val_loss_at_optimum(lam0 - eps * d)) / (2 * eps)
        assert abs(fd - exact @ d) <= 1e-6 * scale, (fd.item(), (exact @ d).item())  # seen: < 5e-8
    exp.lam.data, exp.w = lam0, w0


# --- default-sized models run a cg hypergradient in float32 ---------------------------------------


@pytest.mark.parametrize(
    "model,dataset,overrides",
    [
        ("mlp", "digits", []),
        ("cnn", "mnist_5k", ["dataset.image=true"]),
        ("resnet", "digits", ["dataset.image=true"]),
        ("resnet", "digits", ["dataset.image=true", "model.norm=group"]),
        ("lstm", "tokens", ["dataset.vocab=500", "dataset.seq_len=20"]),
    ],
)
def test_cg_hypergradient_runs_on_default_sized_models(request, model, dataset, overrides):
    if dataset == "tokens":
        dataset = request.getfixturevalue("tokens")
    exp = build_experiment(model=model, dataset=dataset, hyperparam="weight_decay_per_param", hypergrad="cg",
                           overrides=["dataset.train_size=16", "dataset.val_size=16", "dataset.test_size=16",
                                      "hypergrad.iterations=3", *overrides])
    p = exp.problem
    assert p.dtype == torch.float32 and p.num_weights > 5_000
    before = exp.w.clone()
    exp.train_inner(2)
    assert not torch.equal(exp.w, before)
    hg = exp.hypergradient()["log_decay"]
    assert hg.shape == (p.num_weights,) and hg.dtype == torch.float32
    assert torch.isfinite(hg).all() and hg.abs().max() > 0
    metrics = exp.evaluate()
    assert all(math.isfinite(metrics[f"{s}_loss"]) for s in ("train", "val", "test"))
