"""The accuracy checks a run makes every ``reference.every`` hyper-steps (not timed): how far the
method's hypergradient is from the reference method's at the same point, how far w is from the
optimum the IFT assumes (the inner gradient's norm), and the training Hessian's extreme
eigenvalues (Lanczos Ritz values; a negative smallest one means every IFT method's assumption
H ≻ 0 fails there)."""

from __future__ import annotations

import torch
from torch import Tensor

from hgbench.base import Batch
from hgbench.ift import HessianVectorProduct
from hgbench.linalg import lanczos_extremes
from hgbench.problem import Problem


def hypergradient_error(hg: Tensor, ref: Tensor) -> dict[str, float]:
    """``hg`` against the reference hypergradient ``ref``: its norm, the cosine between them and
    the relative error ‖hg − ref‖ / ‖ref‖ (NaN where a norm is zero)."""
    g, ref = hg.detach().double(), ref.detach().double()
    ref_norm, g_norm = torch.linalg.vector_norm(ref).item(), torch.linalg.vector_norm(g).item()
    return {
        "hg_ref_norm": ref_norm,
        "hg_cosine": (g @ ref).item() / (g_norm * ref_norm) if g_norm * ref_norm > 0 else float("nan"),
        "hg_rel_err": torch.linalg.vector_norm(g - ref).item() / ref_norm if ref_norm > 0 else float("nan"),
    }


def curvature_at(problem: Problem, w: Tensor, lam: Tensor, batch: Batch, lanczos_steps: int) -> dict[str, float]:
    """‖∂L_T/∂w‖ at (w, λ) on ``batch`` and, with ``lanczos_steps`` > 0, the extreme eigenvalues
    of the training Hessian there (``hess_eig_max``, ``hess_eig_min``)."""
    w = w.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(problem.train_loss(w, lam.detach(), batch), w, create_graph=True)
    out = {"inner_grad_norm": torch.linalg.vector_norm(gw.detach()).item()}
    if lanczos_steps:
        hvp = HessianVectorProduct(gw, w)
        out["hess_eig_max"], out["hess_eig_min"] = lanczos_extremes(lambda v: hvp(v).detach(), w.numel(), lanczos_steps, like=w.detach())
    return out
