"""``lstm``: a word-level LSTM language model: embedding → ``num_layers`` LSTM layers → linear
decoder (optionally tied to the embedding, Press & Wolf 2017 / Inan et al. 2017).

Input (N, T) int64 token ids, output (N, T, vocab) next-token logits; the vocabulary size is the
dataset's ``num_outputs``. Every sequence starts from zero hidden and cell states, unless its
batch carries a state (truncated BPTT, below); either way L_T is a plain function of w and the
batch.

Truncated BPTT (``LSTM.carries_state = True``, ``hgbench.streams``): for a dataset laid out as
parallel token streams (e.g. ``dataset=ptb dataset.streams=B``) the runner hands each batch the
state the previous window of the same streams ended in (``Batch.state``); the forward then starts
each layer from ``state`` — one (h, c) pair per layer, each (N, H), or None for zeros — and with
``return_state=True`` also returns the per-layer (h, c) it ends in. The model keeps no state of its
own; the runner computes and carries it. Gradients never cross a window boundary; the state does.

The recurrence is written out here — a Python loop over time steps with matmuls — instead of
``torch.nn.LSTM``, because cuDNN's fused LSTM kernel does not support double backward, and every
IFT hypergradient needs Hessian-vector products (double backward) of the training loss. Each layer
keeps ``torch.nn.LSTM``'s weights and gate order (i, f, g, o): ``weight_ih`` (4H, in),
``weight_hh`` (4H, H) and ONE bias (4H,) (nn.LSTM's ``bias_ih + bias_hh``; two biases would only
add a flat direction to the Hessian). The input-to-hidden part of the gates of all time steps
is one fused linear per layer; each step adds ``h_{t-1} @ weight_hhᵀ``.

Layer l has ``hidden_size`` units, except that with ``tie_weights`` the last layer has
``embedding_dim`` units (as in AWD-LSTM, Merity et al. 2018) so that the decoder can reuse the
embedding matrix: logits = h · Eᵀ + b.

Dropout sites (per-unit masks, see ``plugins/model/_units.py``): ``embedding`` (the embedded
tokens fed to the first layer), ``hidden0`` … ``hidden{L-2}`` (the outputs of each layer but the
last, fed to the next) and ``output`` (the last layer's outputs, fed to the decoder). A mask of
shape (batch, units) is shared by all time steps (variational dropout, Gal & Ghahramani 2016);
(batch, T, units) masks each step separately.

Regularisers of AWD-LSTM (Merity et al. 2018) that a hyperparameter family can drive through
``forward``'s keyword arguments (each off when not given, so the plain model is unchanged):

- ``weight_masks``: DropConnect on the hidden-to-hidden weights (AWD-LSTM's ``WeightDrop``) — a
  factor per weight for ``hh0`` … ``hh{L-1}`` (``weight_drop_sites``: site -> weight_hh's shape),
  shaped like ``weight_hh`` (4H, H) or broadcastable to it; one mask for the whole batch and every
  time step, as in AWD-LSTM;
- ``word_mask``: embedding dropout of whole words — a (vocab,) factor per word (``vocab_size``)
  multiplying every occurrence of that word's embedding in the batch (AWD-LSTM's
  ``embedded_dropout``; the tied decoder keeps the unmasked matrix);
- ``activations``: a dict the forward fills with the last layer's outputs, ``output_raw`` before
  and ``output`` after the ``output`` site's mask (N, T, units), for activation regularisation
  (AR, on ``output``) and temporal activation regularisation (TAR, on ``output_raw``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hgbench import ConfigError, Model, hookimpl
from hgbench.plugins.model._units import apply_mask, check_sites


def check_weight_sites(weight_masks: dict[str, Tensor] | None, sites: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """The DropConnect masks as a dict ({} for None); raises for a site the model does not have."""
    if not weight_masks:
        return {}
    unknown = sorted(set(weight_masks) - set(sites))
    if unknown:
        raise ConfigError(f"unknown weight-drop site(s) {unknown}; this model's sites: {sorted(sites)}")
    return {k: v for k, v in weight_masks.items() if v is not None}


class LSTMLayer(nn.Module):
    """One LSTM layer over a whole (N, T, in) sequence, from zero or given states."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # torch.nn.LSTM's initialisation
        for p in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None,
                weight_mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """(outputs (N, T, H), final (h, c)) from zero states, or from ``state`` = (h0, c0), each (N, H);
        ``weight_mask`` multiplies ``weight_hh`` (DropConnect) for every step."""
        n, t = x.shape[:2]
        hs = self.hidden_size
        gates_x = F.linear(x, self.weight_ih, self.bias)  # (N, T, 4H): every step's input part at once
        w_hh_t = (self.weight_hh if weight_mask is None else self.weight_hh * weight_mask).t()
        h, c = (None, None) if state is None else state
        outs = []
        for step in range(t):
            g = gates_x[:, step] if h is None else torch.addmm(gates_x[:, step], h, w_hh_t)
            i = torch.sigmoid(g[:, :hs])
            f = torch.sigmoid(g[:, hs : 2 * hs])
            cand = torch.tanh(g[:, 2 * hs : 3 * hs])
            o = torch.sigmoid(g[:, 3 * hs :])
            c = i * cand if c is None else f * c + i * cand
            h = o * torch.tanh(c)
            outs.append(h)
        if not outs:
            return x.new_zeros(n, 0, hs), state
        return torch.stack(outs, dim=1), (h, c)


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, embedding_dim: int, hidden_size: int, num_layers: int, tie_weights: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding_dim)
        sizes = [hidden_size] * num_layers
        if tie_weights:
            sizes[-1] = embedding_dim
        self.layers = nn.ModuleList()
        width = embedding_dim
        for s in sizes:
            self.layers.append(LSTMLayer(width, s))
            width = s
        self.tie_weights = tie_weights
        if tie_weights:
            self.decoder_bias = nn.Parameter(torch.zeros(vocab))
        else:
            self.decoder = nn.Linear(width, vocab)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.dropout_sites = {"embedding": embedding_dim}
        self.dropout_sites.update({f"hidden{i}": s for i, s in enumerate(sizes[:-1])})
        self.dropout_sites["output"] = sizes[-1]
        self.weight_drop_sites = {f"hh{i}": (4 * s, s) for i, s in enumerate(sizes)}  # DropConnect: site -> weight_hh's shape
        self.vocab_size = vocab  # embedding dropout: one factor per word

    records_activations = True  # forward(activations={}) fills the last layer's outputs (AR / TAR)

    def forward(self, x: Tensor, unit_masks: dict[str, Tensor] | None = None, weight_masks: dict[str, Tensor] | None = None,
                word_mask: Tensor | None = None, activations: dict[str, Tensor] | None = None,
                state: list[tuple[Tensor, Tensor]] | None = None, return_state: bool = False):
        """Next-token logits (N, T, vocab) from ``state`` (per layer (h, c); None: zeros); with
        ``return_state`` the pair (logits, the per-layer (h, c) the sequences end in)."""
        if x.dim() != 2 or x.is_floating_point():
            raise ValueError(f"lstm expects (N, T) integer token ids, got {x.dtype} of shape {tuple(x.shape)}")
        masks = check_sites(unit_masks, self.dropout_sites)
        wmasks = check_weight_sites(weight_masks, self.weight_drop_sites)
        initial = state
        if initial is not None and (len(initial) != len(self.layers) or initial[0][0].shape[0] != x.shape[0]):
            raise ValueError(f"lstm: the carried state ({len(initial)} layers, batch {initial[0][0].shape[0]}) does not fit "
                             f"this batch ({len(self.layers)} layers, batch {x.shape[0]})")
        emb = self.embedding(x)
        if word_mask is not None:
            if word_mask.shape != (self.vocab_size,):
                raise ValueError(f"lstm: word_mask must have shape ({self.vocab_size},) (one factor per word), got {tuple(word_mask.shape)}")
            emb = emb * word_mask[x].unsqueeze(-1)
        h = apply_mask(emb, masks.get("embedding"), -1, "embedding")
        last = len(self.layers) - 1
        final = []
        for i, layer in enumerate(self.layers):
            site = "output" if i == last else f"hidden{i}"
            out, layer_state = layer(h, None if initial is None else initial[i], wmasks.get(f"hh{i}"))
            h = apply_mask(out, masks.get(site), -1, site)
            final.append(layer_state)
        if activations is not None:
            activations["output_raw"], activations["output"] = out, h
        logits = F.linear(h, self.embedding.weight, self.decoder_bias) if self.tie_weights else self.decoder(h)
        if return_state:
            return logits, (initial if x.shape[1] == 0 else final)  # an empty window leaves the state as it was
        return logits


@dataclass
class LSTM(Model):
    name = "lstm"
    carries_state = True  # forward(x, state=...) and return_state=True: truncated BPTT (module docstring)
    embedding_dim: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    tie_weights: bool = True  # the decoder reuses the embedding; the last layer then has embedding_dim units

    def __post_init__(self):
        for k in ("embedding_dim", "hidden_size", "num_layers"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    def build(self, input_shape, num_outputs):
        if len(input_shape) != 1:
            raise ConfigError(f"lstm expects (N, T) token sequences, got input_shape={tuple(input_shape)}")
        return LSTMLanguageModel(num_outputs, self.embedding_dim, self.hidden_size, self.num_layers, self.tie_weights)


@hookimpl
def register_models():
    return [LSTM]
