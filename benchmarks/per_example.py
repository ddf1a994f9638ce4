"""Per-example test results for the paper studies' intervals: which test examples a run gets right
(``correct``), a fingerprint of the split it was scored on (``fingerprint``: arms are compared only
on the same examples in the same order), a compact text form of a 0/1 row (``encode`` /
``decode`` for the gzipped CSVs; ``pack`` / ``unpack``, 8 bits to a byte in base64, for one cell of
a plain CSV), a gzipped CSV of one row per run with the machine facts (``write_gz`` / ``read_gz``),
and the interval of a difference of two paired differences measured on two splits of different
sizes (``gap_bootstrap``: e.g. (val − test) of one arm minus (val − test) of another)."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hgbench.benchmarks.machine import machine_info
from hgbench.benchmarks.output import META_COLUMNS


@torch.no_grad()
def correct(problem, w: torch.Tensor, split: str, batch_size: int = 4096) -> np.ndarray:
    """0/1 per target of ``split`` (per example; per token, flattened, for sequences), in the
    split's order: whether the argmax of the model at flat weights ``w`` (eval mode, as
    ``Problem.evaluate``: ``Problem.outputs``) is the label. Its mean is the split's ``<split>_acc``."""
    out = [(o.argmax(-1) == y).reshape(-1).cpu() for o, y in problem.outputs(w, split, batch_size)]
    return torch.cat(out).numpy().astype(np.uint8) if out else np.zeros(0, dtype=np.uint8)


@torch.no_grad()
def token_nll(problem, w: torch.Tensor, split: str, batch_size: int = 4096) -> np.ndarray:
    """Cross-entropy per target of ``split`` (per token for sequences), in the split's order; its
    mean is ``<split>_loss`` and exp of it ``<split>_ppl``."""
    out = [problem.data_loss(o, y, reduction="none").reshape(-1).double().cpu() for o, y in problem.outputs(w, split, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fingerprint(split) -> str:
    """A short hash of a split's inputs and labels, in order: equal fingerprints = the same
    examples in the same order."""
    h = hashlib.sha1()
    for t in (split.x, split.y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode(bits) -> str:
    """A 0/1 row as a string of '0' and '1' (gzip makes it compact)."""
    return "".join("1" if b else "0" for b in np.asarray(bits).reshape(-1))


def decode(s: str) -> np.ndarray:
    return np.frombuffer(str(s).encode(), dtype=np.uint8) - ord("0")


PACKED = "b64:"  # the prefix of a ``pack``ed row (so that ``output.read_csv`` keeps the cell a string)


def pack(bits) -> str:
    """A 0/1 (or bool) row as ``b64:<its bits packed 8 to a byte, base64>``: one compact CSV cell."""
    b = np.asarray(bits, dtype=bool).ravel()
    return PACKED + base64.b64encode(np.packbits(b).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    """The first ``n`` bits of a ``pack``ed row, as uint8 0/1."""
    text = str(text)
    if not text.startswith(PACKED):
        raise ValueError(f"not a packed correctness vector: {text[:20]!r}")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text[len(PACKED):]), dtype=np.uint8))[:n]
    if bits.size != n:
        raise ValueError(f"a packed vector of {bits.size} bits, {n} expected")
    return bits


def encode_floats(v, digits: int = 4) -> str:
    return " ".join(f"{x:.{digits}g}" for x in np.asarray(v, dtype=np.float64).reshape(-1))


def decode_floats(s: str) -> np.ndarray:
    return np.array([float(x) for x in str(s).split()], dtype=np.float64)


def write_gz(out: Path, name: str, rows: list[dict[str, Any]], device: torch.device | str = "cpu") -> Path:
    """``<out>/<name>.csv.gz``: one row per run, the machine facts (commit included) on every row."""
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info(device)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cols += [c for c in META_COLUMNS if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({**{c: meta.get(c, "") for c in META_COLUMNS}, **r})
    path = out / f"{name}.csv.gz"
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same rows give the same bytes
        f.write(buf.getvalue().encode())
    return path


def read_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def same_examples(rows: list[dict[str, Any]], key: str, by: tuple[str, ...]) -> None:
    """Raise unless every row with the same values of ``by`` has the same ``key`` fingerprint (the
    arms compared at one seed were scored on the same examples in the same order)."""
    seen: dict[tuple, Any] = {}
    for r in rows:
        k = tuple(r[b] for b in by)
        if seen.setdefault(k, r[key]) != r[key]:
            raise AssertionError(f"rows with {dict(zip(by, k, strict=True))} were scored on different {key}: "
                                 f"{seen[k]} and {r[key]}")


def gap_bootstrap(a_val, b_val, a_test, b_test, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """(mean a_val − mean a_test) − (mean b_val − mean b_test) with a paired bootstrap interval:
    arrays of shape (seeds, examples), val and test of their own sizes, a and b paired on the same
    examples. Each replicate draws the seeds, the validation examples and the test examples with
    replacement (the same draws for a and b), as ``stats.paired_bootstrap`` does for one split."""
    dv = np.atleast_2d(np.asarray(a_val, np.float64) - np.asarray(b_val, np.float64))
    dt = np.atleast_2d(np.asarray(a_test, np.float64) - np.asarray(b_test, np.float64))
    if dv.shape[0] != dt.shape[0]:
        raise ValueError(f"gap_bootstrap needs the same seeds on both splits, got {dv.shape[0]} and {dt.shape[0]}")
    n = dv.shape[0]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for r in range(n_boot):
        rows = rng.integers(0, n, n) if n > 1 else np.zeros(1, dtype=int)
        reps[r] = (dv[np.ix_(rows, rng.integers(0, dv.shape[1], dv.shape[1]))].mean()
                   - dt[np.ix_(rows, rng.integers(0, dt.shape[1], dt.shape[1]))].mean())
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(dv.mean() - dt.mean()), "lo": float(lo), "hi": float(hi), "level": level, "n_seeds": n,
            "within_noise": float(lo <= 0 <= hi)}
