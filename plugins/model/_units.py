"""Shared pieces of the model plugins: activations and per-unit masks ("dropout sites").

The per-unit dropout contract (used by hyperparameter families that learn one dropout rate per
unit): a module MAY expose ``dropout_sites: dict[str, int]`` (site name -> number of units), and
its ``forward(x, unit_masks=None)`` then accepts ``unit_masks: dict[str, Tensor] | None``. When a
site's mask is given, the activations at that site are multiplied by it. A mask is shaped

- ``(units,)``: one factor per unit, shared by every example (and position / time step);
- ``(batch, units)``: one factor per example and unit, shared over positions / time steps
  (for an LSTM this is "variational" dropout, the same mask at every step);
- the activation's full shape, e.g. ``(batch, T, units)`` for an LSTM: used as is.

Sites left out of the dict (or ``unit_masks=None``) are untouched, so outputs without masks are
exactly those of the plain model. Unknown site names are an error (a typo must not pass silently).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from hgbench.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def check_sites(unit_masks: Mapping[str, Tensor] | None, sites: Mapping[str, int]) -> dict[str, Tensor]:
    """The masks as a dict ({} for None); raises for a site the model does not have."""
    if not unit_masks:
        return {}
    unknown = sorted(set(unit_masks) - set(sites))
    if unknown:
        raise ConfigError(f"unknown dropout site(s) {unknown}; this model's sites: {sorted(sites)}")
    return {k: v for k, v in unit_masks.items() if v is not None}


def apply_mask(h: Tensor, mask: Tensor | None, unit_dim: int, site: str = "") -> Tensor:
    """``h`` times a per-unit ``mask`` broadcast over everything but batch and units.

    ``unit_dim`` is the axis of ``h`` that holds the units (1 for (N, C, H, W) feature maps,
    -1 for (N, units) or (N, T, units)); the batch is axis 0.
    """
    if mask is None:
        return h
    unit_dim = unit_dim % h.dim()
    units = h.shape[unit_dim]
    if mask.dim() == h.dim():
        return h * mask
    shape = [1] * h.dim()
    if mask.dim() == 1 and mask.shape[0] == units:
        shape[unit_dim] = units
    elif mask.dim() == 2 and mask.shape[1] == units and mask.shape[0] in (1, h.shape[0]):
        shape[0], shape[unit_dim] = mask.shape[0], units
    else:
        raise ConfigError(
            f"dropout site {site!r}: a mask of shape {tuple(mask.shape)} does not fit activations of shape "
            f"{tuple(h.shape)} ({units} units); expected ({units},), (batch, {units}) or {tuple(h.shape)}"
        )
    return h * mask.reshape(shape)
