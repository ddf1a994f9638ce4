"""The recurrent state of truncated BPTT is an explicit field of the batch (``Batch.state``) that
the runner owns: every method carries the same state, checkpoints round-trip it whatever its
structure, and no tensor gets an attribute."""

import io
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hgbench import Model, build_experiment, registry
from hgbench.streams import map_state
from hgbench.testing import registered
from test_paper_experiments import TINY_LM, TinyStreams

FIXED = [*TINY_LM, "outer_optimizer.lr=0", "inner_steps=2", "hyper_steps=3"]  # λ fixed: every method walks the same w


def states_equal(a, b) -> bool:
    flat_a, flat_b = [], []
    map_state(flat_a.append, a)
    map_state(flat_b.append, b)
    return type(a) is type(b) and len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))


def test_every_method_carries_bit_identical_state():
    """darts_fd, sama and unroll run the model at other weights than w; the state carried into the
    next window must not depend on that: it is computed once per window, at w, by the runner."""
    carried, skipped = {}, []
    with registered(TinyStreams):
        for method in registry.available("hypergrad"):
            exp = build_experiment(overrides=[*FIXED, f"hypergrad={method}"])
            if exp.skip_reason():
                skipped.append(method)
                continue
            for step in range(1, 4):
                exp.hyper_step(step)
            assert exp.train_sampler._drawn is None and exp.val_sampler._drawn is None  # every window carried
            carried[method] = (exp.train_sampler.state_dict(), exp.val_sampler.state_dict(), exp.w)
    assert {"darts_fd", "sama", "unroll", "neumann", "cg", "fixed"} <= set(carried), skipped
    first, (train0, val0, w0) = next(iter(carried.items()))
    assert train0["state"] is not None and val0["state"] is not None
    for method, (train, val, w) in carried.items():
        assert torch.equal(w, w0), method  # the same weights (λ fixed) ...
        assert train["k"] == train0["k"] and val["k"] == val0["k"], method
        assert states_equal(train["state"], train0["state"]), f"{method} carries another training state than {first}"
        assert states_equal(val["state"], val0["state"]), f"{method} carries another validation state than {first}"


class TinyRNNModule(nn.Module):
    """A one-layer tanh RNN whose state is a dict {"h": (N, H)} — not the lstm's per-layer (h, c)."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.embedding = nn.Embedding(vocab, hidden)
        self.cell = nn.Linear(2 * hidden, hidden)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x, state=None, return_state=False):
        h = self.embedding.weight.new_zeros(x.shape[0], self.hidden) if state is None else state["h"]
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell(torch.cat([self.embedding(x[:, t]), h], -1)))
            outs.append(h)
        logits = self.decoder(torch.stack(outs, 1))
        return (logits, {"h": h}) if return_state else logits


@dataclass
class TinyRNN(Model):
    name = "tiny_rnn"
    carries_state = True
    hidden: int = 3

    def build(self, input_shape, num_outputs):
        return TinyRNNModule(num_outputs, self.hidden)


def test_a_checkpoint_round_trips_any_models_state_and_resumes_bit_identically():
    overrides = [*(o for o in TINY_LM if not o.startswith("model")), "model=tiny_rnn", "hyper_steps=4", "inner_steps=2"]
    with registered([TinyStreams, TinyRNN]):
        whole = build_experiment(overrides=overrides)
        for step in range(1, 5):
            whole.hyper_step(step)
        first = build_experiment(overrides=overrides)
        for step in range(1, 3):
            first.hyper_step(step)
        first.step = 2
        saved = first.state_dict()
        assert isinstance(saved["train_sampler"]["state"], dict) and saved["train_sampler"]["state"]["h"].shape == (2, 3)
        buf = io.BytesIO()
        torch.save(saved, buf)
        buf.seek(0)
        resumed = build_experiment(overrides=overrides)
        resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert states_equal(resumed.train_sampler._state, first.train_sampler._state)
    assert states_equal(resumed.val_sampler._state, first.val_sampler._state)
    with registered([TinyStreams, TinyRNN]):
        for step in range(3, 5):
            resumed.hyper_step(step)
    assert torch.equal(resumed.w, whole.w) and torch.equal(resumed.lam, whole.lam)
    assert states_equal(resumed.train_sampler._state, whole.train_sampler._state)


def test_a_state_of_another_kind_is_refused_with_its_type():
    with pytest.raises(TypeError, match="tuples, lists and dicts, not str"):
        map_state(lambda t: t, {"h": "not a tensor"})


def test_no_tensor_gets_an_attribute_and_a_copied_input_runs_alike():
    with registered(TinyStreams):
        exp = build_experiment(overrides=[*FIXED, "hypergrad=darts_fd"])
        seen = []
        nxt = exp.train_sampler.next
        exp.train_sampler.next = lambda: seen.append(nxt()) or seen[-1]
        exp.hyper_step(1)
        exp.hyper_step(2)
    assert seen and all(not b.x.__dict__ and not b.y.__dict__ for b in seen)  # nothing hung on the batch's tensors
    b = seen[-1]
    assert b.state is not None
    lam = exp.lam.detach()
    loss = exp.problem.train_loss(exp.w, lam, b)
    for x in (b.x.clone(), b.x.to(torch.int32).to(torch.long), b.x[:, :].contiguous()):  # new tensors: the state is the batch's
        assert torch.equal(exp.problem.train_loss(exp.w, lam, b._replace(x=x)), loss)
    assert not torch.equal(exp.problem.train_loss(exp.w, lam, b._replace(state=None)), loss)  # the state matters


def test_the_plugin_kit_checks_a_stateful_models_contract():
    from hgbench import testing

    res = testing.check_model(TinyRNN, input_shape=(4,), num_outputs=5, x=torch.randint(0, 5, (2, 4)))
    assert "carries a recurrent state" in res.passed

    class Forgetful(TinyRNNModule):
        def forward(self, x, state=None, return_state=False):
            return super().forward(x, None, return_state)  # ignores the state it is given

    @dataclass
    class ForgetfulRNN(TinyRNN):
        name = "forgetful_rnn"

        def build(self, input_shape, num_outputs):
            return Forgetful(num_outputs, self.hidden)

    with pytest.raises(AssertionError, match="the forward must start from state"):
        testing.check_model(ForgetfulRNN, input_shape=(4,), num_outputs=5, x=torch.randint(0, 5, (2, 4)))
