"""``kfac``: IFT with H⁻¹∂L_V/∂w replaced by the inverse of a damped K-FAC approximation of the
Gauss–Newton matrix (Liao, Dangel & Yu, "Efficient Bilevel Optimization with KFAC-Based
Hypergradients", AISTATS 2026), through curvlinops (``hgbench.kfac``; ``pip install
'hgbench[kfac]'``):

    v = (K + (d̄ + damping)·I)⁻¹ ∂L_V/∂w,

K the Kronecker-factored data term (exact loss Hessian in the outputs), d̄ the penalty's mean
diagonal (the mean decay: exact for one global decay, an approximation for per-tensor or
per-weight decays — use ``cg`` with ``preconditioner=kfac`` for the exact IFT solve with K-FAC
speeding it up). Cost: a forward pass and one backward pass per output dimension on the batch,
then eigendecompositions of the factors; no curvature-vector products (``hvp_calls`` 0). Covers
Linear and Conv2d layers; any other layer with parameters (norms, embeddings, the LSTM) and
families without a penalty are skipped with the reason, as is every run when curvlinops is not
installed."""

from __future__ import annotations

from dataclasses import dataclass

from hgbench import Damping, hookimpl
from hgbench.ift import ift_hypergradient


@dataclass
class Kfac(Damping):
    name = "kfac"
    damping: float = 0.0  # added to the penalty's mean diagonal; > 0 needed where the family's penalty is 0

    def __post_init__(self):
        super().__post_init__()
        self._used: dict[str, float] = {}

    def skip(self, problem):
        from hgbench import kfac

        return kfac.unsupported(problem) or super().skip(problem)

    def compute(self, problem):
        from hgbench import kfac

        parts = problem.parts()

        def solve(matvec, b):
            inverse, d_mean = kfac.build(parts, problem.w, problem.lam, self.damping)
            self._used = {"penalty_mean": d_mean}
            return inverse(b)

        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam, solve)

    def metrics(self):
        return dict(self._used)


@hookimpl
def register_hypergradients():
    return [Kfac]
