"""Base classes of the four plugin kinds, and the small containers they exchange.

Every plugin is a dataclass: its fields are its parameters (typed, with defaults — the one place
a plugin's defaults are written; hgbench makes its Hydra config ``<kind>=<name>`` from them), its
``name`` is the option name on the command line. A plugin may refuse a combination it cannot run
by returning a reason from ``skip(problem)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from hgbench.errors import ConfigError
from hgbench.flat import FlatSpec
from hgbench.ift import HessianVectorProduct, ift_hypergradient


class Batch(NamedTuple):
    """A minibatch: inputs, targets, the examples' indices in their split and, for a model that
    carries a recurrent state between batches (``Model.carries_state``), the state this batch
    starts from (None = the model's zero state). The runner owns ``state`` (``hgbench.streams``);
    the losses only read it, so it is a constant of L_T(w, λ; batch)."""

    x: Tensor
    y: Tensor
    idx: Tensor | None = None
    state: Any = None


class Split(NamedTuple):
    x: Tensor
    y: Tensor


@dataclass
class DataSplits:
    """What a dataset plugin returns: train/val/test tensors and what the model needs to know."""

    train: Split
    val: Split
    test: Split
    task: str  # "classification" | "regression"
    num_outputs: int  # classes (or vocabulary size), or regression targets
    input_shape: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. a language model's vocabulary
    # B for splits laid out as B parallel streams for truncated BPTT (example k·B + b is window k
    # of stream b; ``hgbench.streams``); None: independent examples, shuffled into minibatches
    streams: int | None = None

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if not self.input_shape:
            self.input_shape = tuple(self.train.x.shape[1:])


@dataclass
class ProblemContext:
    """What a hyperparameter family may use: the functional model, the task loss, the data."""

    # forward(w, x, **kwargs) -> outputs; in the context a loss gets for a batch with a recurrent
    # state (``Batch.state``), it runs the model from that state
    forward: Callable[..., Tensor]
    data_loss: Callable[..., Tensor]  # data_loss(outputs, y, reduction="mean")
    module: nn.Module
    w_spec: FlatSpec
    data: DataSplits
    device: torch.device
    dtype: torch.dtype


@dataclass
class Plugin:
    """Common base: a ``name``, typed parameters (dataclass fields) and a ``skip`` reason."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    # other names that select this plugin with some parameters preset, e.g.
    # {"weight_decay_per_param": {"granularity": "per_param"}}: an old name kept working
    aliases: ClassVar[dict[str, dict[str, Any]]] = {}

    def skip(self, problem: Any) -> str | None:
        """Return why this plugin cannot run on ``problem`` (a ``hgbench.problem.Problem``:
        its ``data``, ``module``, sizes) — then the run is skipped — or None."""
        return None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The plugin's parameters and their default values (what its config file holds)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = "???"  # OmegaConf's mandatory value
        return out

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GaussNewtonParts(NamedTuple):
    """The pieces of L_T = ℓ(f(w; x), y) + P(w, λ) that a Kronecker-factored curvature
    (``hgbench.kfac``) needs: the model as a module (its parameters named as in ``w_spec``), the
    training batch's inputs and targets, the task, and the penalty ``penalty(w, λ)``."""

    module: nn.Module
    w_spec: FlatSpec
    x: Tensor
    y: Tensor
    task: str
    penalty: Callable[[Tensor, Tensor], Tensor]


@dataclass
class Bilevel:
    """Everything a hypergradient method may use, at one point (w, λ).

    ``train_loss(w, lam)`` and ``val_loss(w, lam)`` are closures over fixed batches; ``w`` and
    ``lam`` are flat 1-D tensors (see ``hgbench.flat``). ``inner_optimizer`` with its current
    ``inner_state`` is the inner update rule, for methods that unroll it.
    """

    train_loss: Callable[[Tensor, Tensor], Tensor]
    val_loss: Callable[[Tensor, Tensor], Tensor]
    w: Tensor
    lam: Tensor
    inner_optimizer: Any = None
    inner_state: dict[str, Tensor] | None = None
    # (w, λ) -> v ↦ G v, the Gauss–Newton matrix of L_T (``hgbench.ift.GaussNewtonProduct``);
    # None when the family's training loss is not a task loss plus a penalty
    ggn: Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]] | None = None
    # n -> a fresh minibatch of n training examples (drawn with torch's global RNG, which the run
    # owns), and batch -> the Bilevel on it: for curvature on its own batch (``hessian_batch_size``)
    sample_train: Callable[[int], Batch] | None = None
    on_train_batch: Callable[[Batch], "Bilevel"] | None = None
    # the model, batch and penalty behind ``ggn`` (K-FAC, ``hgbench.kfac``); None where ``ggn`` is
    # None or the batch carries a recurrent state
    gauss_newton_parts: GaussNewtonParts | None = None

    def parts(self, batch_size: int | None = None) -> GaussNewtonParts:
        """``gauss_newton_parts``, or those of a fresh training minibatch of ``batch_size``."""
        if batch_size is not None:
            if self.sample_train is None or self.on_train_batch is None:
                raise ValueError("hessian_batch_size needs a problem that can draw training batches (Bilevel.sample_train)")
            return self.on_train_batch(self.sample_train(batch_size)).parts()
        if self.gauss_newton_parts is None:
            raise ValueError(GGN_UNAVAILABLE.replace("curvature='ggn'", "K-FAC"))
        return self.gauss_newton_parts

    def curvature(self, kind: str, batch_size: int | None = None) -> Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]] | None:
        """The curvature a method solves with: None for the Hessian (the IFT's own), the
        Gauss–Newton product factory for ``"ggn"``. With ``batch_size`` the products are on a
        minibatch of that many training examples of their own, drawn now — not the batch of
        ∂L_T/∂w and of the mixed term (stochastic curvature: cheaper products, more variance)."""
        if kind not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {kind!r}")
        if kind == "ggn" and self.ggn is None:
            raise ValueError(GGN_UNAVAILABLE)
        if batch_size is None:
            return None if kind == "hessian" else self.ggn
        if self.sample_train is None or self.on_train_batch is None:
            raise ValueError("hessian_batch_size needs a problem that can draw training batches (Bilevel.sample_train)")
        other = self.on_train_batch(self.sample_train(batch_size))
        if kind == "ggn":
            return other.ggn

        def hessian(w: Tensor, lam: Tensor) -> Callable[[Tensor], Tensor]:
            (g,) = torch.autograd.grad(other.train_loss(w, lam), w, create_graph=True)
            return HessianVectorProduct(g, w)
        return hessian


GGN_UNAVAILABLE = ("curvature='ggn' needs a hyperparameter family whose training loss is the task loss plus a penalty on "
                   "the weights (it implements penalty(), as weight_decay does); use curvature='hessian'")


@dataclass
class HypergradientMethod(Plugin):
    """Approximates dL_V/dλ at (w, λ). ``compute`` returns a flat tensor shaped like ``lam``."""

    kind: ClassVar[str] = "hypergrad"
    # the parameter that sets the method's cost (Neumann's iterations, unroll's steps), which the
    # accuracy–cost frontier (``hgbench-bench frontier``) varies; None: a method of one cost
    budget: ClassVar[str | None] = None

    def __post_init__(self):
        """Checks of the method's parameters: a subclass (or option mixin below) with checks of
        its own runs them in its ``__post_init__`` after ``super().__post_init__()``."""

    @property
    def state(self) -> dict[str, Tensor]:
        """Tensors the method carries from one hyper-step to the next (a warm start's last
        solution): saved in checkpoints (``state_dict``), put back after the untimed warm-up."""
        st = self.__dict__.get("_state")
        if st is None:
            st = self.__dict__["_state"] = {}
        return st

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.state.clear()
        self.state.update(state)

    def metrics(self) -> dict[str, float]:
        """Scalars of the last ``compute`` worth recording (e.g. the step size a method chose);
        the runner logs them every hyper-step as ``hypergrad/<key>``."""
        return {}

    def compute(self, problem: Bilevel) -> Tensor:
        raise NotImplementedError


# --- options several methods share: each stated once, as a base class a method derives from ---------
# A method has an option by deriving from its class (``class MyMethod(Curvature, Damping)``), so
# hgbench knows it has it by type, not by looking a field up by name: a misspelt option is an
# unknown field, refused when the config is checked.


@dataclass
class Curvature(HypergradientMethod):
    """A method that solves with the training loss's curvature: ``curvature`` picks the matrix
    (the Hessian H, or the Gauss–Newton G ⪰ 0 where the family has a penalty), and
    ``hessian_batch_size`` puts its products on a training minibatch of their own.
    ``curvature_product(problem)`` is what ``ift_hypergradient`` takes as its curvature."""

    curvature: Literal["hessian", "ggn"] = "hessian"  # the matrix inverted: H, or the Gauss–Newton G ⪰ 0
    hessian_batch_size: int | None = None  # HVPs on their own training minibatch of this size; None: the hypergradient's batch

    def __post_init__(self):
        super().__post_init__()
        if self.curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {self.curvature!r}")
        if self.hessian_batch_size is not None and self.hessian_batch_size < 1:
            raise ValueError(f"hessian_batch_size must be >= 1 or null, got {self.hessian_batch_size}")

    def skip(self, problem: Any) -> str | None:
        """``ggn`` needs a family with a penalty."""
        if self.curvature == "ggn" and not problem.supports_ggn:
            return GGN_UNAVAILABLE
        return super().skip(problem)

    def curvature_product(self, problem: Bilevel) -> Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]] | None:
        return problem.curvature(self.curvature, self.hessian_batch_size)


@dataclass
class Damping(HypergradientMethod):
    """A method that solves (H + damping·I) x = b: ``damping`` ≥ 0 shifts the curvature's spectrum
    (a method that needs it positive checks that in its own ``__post_init__``)."""

    damping: float = 0.0  # added to the curvature's diagonal

    def __post_init__(self):
        super().__post_init__()
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")


@dataclass
class WarmStart(HypergradientMethod):
    """A method whose solve can start from the previous hyper-step's solution (``warm_start``):
    w moves little between hyper-steps, so that is a good guess (its residual costs one more
    product)."""

    warm_start: bool = False  # start from the previous hyper-step's solution (one more product)

    def warm_solve(self, solve: Callable[..., Tensor], key: str = "x0") -> Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]:
        """``solve(matvec, b, x0=...)`` started from this method's previous solution when
        ``warm_start`` is on (and the sizes agree), and that solution kept for the next."""
        if not self.warm_start:
            return solve

        def warm(matvec: Callable[[Tensor], Tensor], b: Tensor) -> Tensor:
            prev = self.state.get(key)
            x0 = prev.to(b.device, b.dtype) if prev is not None and prev.shape == b.shape else None
            x = solve(matvec, b, x0=x0)
            self.state[key] = x.detach()
            return x
        return warm


PRECONDITIONERS = ("none", "jacobi", "nystrom", "kfac")


def _takes(function: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclass
class Preconditioner(HypergradientMethod):
    """A Krylov method whose solve can be preconditioned: ``preconditioner`` picks P ≈ C + μI
    (C the curvature, μ = ``damping`` + ``preconditioner_shift``), applied as v ↦ P⁻¹v
    (``hgbench.linalg``):

    - ``none``: plain;
    - ``jacobi``: diag(C) — exact from n unit-vector products when the weights number at most
      ``preconditioner_rank``, else Hutchinson's estimate from ``preconditioner_rank``
      Rademacher probes (a baseline: weights with only their decay on the diagonal gain nothing);
    - ``nystrom``: the randomized rank-``preconditioner_rank`` Nyström sketch of C (Frangella,
      Tropp & Udell 2023): ``preconditioner_rank`` products in one batched backward;
    - ``kfac``: K-FAC of the Gauss–Newton matrix (``hgbench.kfac``, curvlinops: the ``kfac``
      extra) plus the penalty's mean diagonal, inverted exactly; Linear and Conv2d layers only
      (``skip`` names any other layer). Its build is a forward and backward passes of the batch,
      not curvature-vector products (``preconditioner_products`` is 0); it is not in the
      checkpoint (rebuilt after a resume).

    The preconditioner is built at the first hyper-step and rebuilt every ``refresh_every``
    hyper-steps — in between it is reused at the new w (a stale P changes the speed, never the
    answer) — and kept in ``state`` (so in checkpoints). ``preconditioner_metrics()`` are the
    numbers of the last build: refreshes so far and the products this hyper-step's build took."""

    preconditioner: Literal["none", "jacobi", "nystrom", "kfac"] = "none"  # P ≈ curvature + damping: none | jacobi | nystrom | kfac
    preconditioner_rank: int = 100  # nystrom: the sketch's rank; jacobi: Hutchinson probes (exact diagonal when n ≤ this)
    refresh_every: int = 10  # rebuild the preconditioner every this many hyper-steps (1: every step), reuse it in between
    preconditioner_shift: float = 0.0  # added to damping in P only (regularises P where the system has no damping)

    def __post_init__(self):
        super().__post_init__()
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}, got {self.preconditioner!r}")
        if self.preconditioner_rank < 1:
            raise ValueError(f"preconditioner_rank must be >= 1, got {self.preconditioner_rank}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if self.preconditioner_shift < 0:
            raise ValueError(f"preconditioner_shift must be >= 0, got {self.preconditioner_shift}")
        self._built: dict[str, float] = {}

    def skip(self, problem: Any) -> str | None:
        """``kfac`` needs curvlinops and a model whose layers it covers."""
        if self.preconditioner == "kfac":
            from hgbench import kfac

            reason = kfac.unsupported(problem)
            if reason:
                return f"preconditioner=kfac: {reason}"
        return super().skip(problem)

    def preconditioner_metrics(self) -> dict[str, float]:
        return dict(self._built)

    def build_preconditioner(self, matvec: Callable[[Tensor], Tensor], b: Tensor, problem: Bilevel,
                             damping: float = 0.0) -> Callable[[Tensor], Tensor] | None:
        """v ↦ P⁻¹v for the system (C + damping·I) x = b, C the curvature whose products
        ``matvec`` computes; None for ``none``. Rebuilt (counting the products it takes) when
        there is none yet, when its size no longer fits, or every ``refresh_every`` calls."""
        from hgbench import linalg
        from hgbench.ift import count_products

        if self.preconditioner == "none":
            return None
        mu = damping + self.preconditioner_shift
        st = self.state
        keys = {"jacobi": ("pc_diag",), "nystrom": ("pc_u", "pc_eigs"), "kfac": ()}[self.preconditioner]
        have = all(k in st for k in keys) and int(st.get("pc_n", torch.tensor(-1))) == b.numel()
        if self.preconditioner == "kfac":  # curvlinops' operator: kept on the method, not in the state
            op = self.__dict__.get("_kfac")
            have = have and op is not None and (op.dtype, op.device) == (b.dtype, b.device)
        age = int(st["pc_age"]) if "pc_age" in st else 0
        refresh = not have or age >= self.refresh_every
        built = 0
        if refresh:
            with count_products() as n:
                if self.preconditioner == "jacobi":
                    st["pc_diag"], _exact = linalg.diagonal(matvec, b, self.preconditioner_rank)
                elif self.preconditioner == "nystrom":
                    st["pc_u"], st["pc_eigs"] = linalg.nystrom_sketch(matvec, b, self.preconditioner_rank)
                else:
                    from hgbench import kfac

                    parts = problem.parts(getattr(self, "hessian_batch_size", None))
                    self.__dict__["_kfac"], _ = kfac.build(parts, problem.w, problem.lam, mu)
            built = n.value
            st["pc_n"] = torch.tensor(b.numel())
            st["pc_refreshes"] = torch.tensor(int(st["pc_refreshes"]) + 1 if "pc_refreshes" in st else 1)
            age = 0
        st["pc_age"] = torch.tensor(age + 1)
        self._built = {"preconditioner_refreshes": float(st["pc_refreshes"]), "preconditioner_products": float(built)}
        if self.preconditioner == "jacobi":
            return linalg.DiagonalPreconditioner(st["pc_diag"].to(b.device, b.dtype), mu)
        if self.preconditioner == "nystrom":
            return linalg.NystromPreconditioner(st["pc_u"].to(b.device, b.dtype), st["pc_eigs"].to(b.device, b.dtype), mu)
        return self.__dict__["_kfac"]


@dataclass
class KrylovMethod(Preconditioner, WarmStart, Damping, Curvature):
    """IFT with (H + damping·I)⁻¹∂L_V/∂w from an iterative solver, ``solver(matvec, b,
    iterations=, tol=, damping=, x0=)`` (``hgbench.linalg.cg_solve``, ``minres_solve``): a new
    Krylov method is a subclass setting its ``name`` and ``solver = <that function>``. A solver
    that also takes ``M=`` (v ↦ P⁻¹v) can be preconditioned (``Preconditioner``), and one that
    takes ``info=`` (a dict it fills with ``iterations``) reports the iterations it used, logged
    every hyper-step as ``hypergrad/iterations``."""

    budget: ClassVar[str | None] = "iterations"
    solver: ClassVar[Callable[..., Tensor]]
    iterations: int = 10
    tol: float = 0.0  # stop when the residual ≤ tol·‖b‖; 0 = always run all iterations

    def __post_init__(self):
        super().__post_init__()
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if not callable(getattr(type(self), "solver", None)):
            raise TypeError(f"{type(self).__name__} is a KrylovMethod without a solver: set solver = <function> in the class")
        if self.preconditioner != "none" and not _takes(type(self).solver, "M"):
            raise ValueError(f"{self.name or type(self).__name__}'s solver takes no preconditioner (M=); use preconditioner=none")
        self._info: dict[str, float] = {}

    def compute(self, problem: Bilevel) -> Tensor:
        # through the class: a plain function stays unbound (a staticmethod works too)
        solver = type(self).solver
        self._info = {}
        settings = {"info": self._info} if _takes(solver, "info") else {}
        base = functools.partial(solver, iterations=self.iterations, tol=self.tol, damping=self.damping, **settings)

        def solve(matvec: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None) -> Tensor:
            m = self.build_preconditioner(matvec, b, problem, self.damping)
            return base(matvec, b, x0=x0) if m is None else base(matvec, b, x0=x0, M=m)

        return ift_hypergradient(problem.train_loss, problem.val_loss, problem.w, problem.lam,
                                 self.warm_solve(solve), self.curvature_product(problem))

    def metrics(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self._info.items()}, **self.preconditioner_metrics()}


@dataclass
class HyperparamFamily(Plugin):
    """Says what λ is and where it enters the losses.

    ``init_hyperparams`` returns λ's initial tensors by name; the framework keeps them as one flat
    vector and hands them back to ``training_loss``/``validation_loss`` as a dict of views.
    ``ctx.forward(w, x)`` is the model's functional forward and ``ctx.data_loss(out, y)`` the
    task's loss (cross-entropy or mean squared error).
    """

    kind: ClassVar[str] = "hyperparam"

    def init_hyperparams(self, ctx: ProblemContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def training_loss(self, w: Tensor, lam: dict[str, Tensor], batch: Batch, ctx: ProblemContext) -> Tensor:
        raise NotImplementedError

    def validation_loss(self, w: Tensor, lam: dict[str, Tensor], batch: Batch, ctx: ProblemContext) -> Tensor:
        """L_V; the default is the plain data loss (no direct dependence on λ)."""
        return ctx.data_loss(ctx.forward(w, batch.x), batch.y)

    def penalty(self, w: Tensor, lam: dict[str, Tensor], ctx: ProblemContext) -> Tensor:
        """For a family whose training loss is the plain task loss of the training batch plus a
        penalty on the weights — ``L_T = ctx.data_loss(ctx.forward(w, x), y) + P(w, λ)`` — return
        P. Implementing it makes the Gauss–Newton curvature (``curvature=ggn``) available to the
        methods; families that change the forward pass or the data term (dropout, augmentation,
        reweighting) do not implement it."""
        raise NotImplementedError

    def metrics(self, lam: dict[str, Tensor]) -> dict[str, float]:
        """Scalars worth plotting over hyper-steps (e.g. the mean decay); logged on eval steps."""
        return {}

    def figures(self, lam: dict[str, Tensor]) -> dict[str, Any]:
        """Matplotlib figures of the final λ by file name (e.g. distilled images); the MLflow
        recorder saves them as artifacts at the end of the run. Make them as
        ``matplotlib.figure.Figure(...)`` objects, not with pyplot, so the user's backend (a
        notebook's) is never switched."""
        return {}


@dataclass
class Dataset(Plugin):
    """Loads data (offline) and splits it into train/val/test tensors."""

    kind: ClassVar[str] = "dataset"

    def load(self) -> DataSplits:
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise ``FileNotFoundError`` / ``ModuleNotFoundError`` (saying how to install what is
        missing) when ``load()`` could not find its data — cheaply: files and packages are looked
        for, nothing is read. The CLI calls it before a run or grid starts, so a missing dataset
        stops the command before anything is created. The default finds nothing missing (data
        that is generated, or bundled with a required package)."""


@dataclass
class Model(Plugin):
    """Builds an ``nn.Module``; hgbench calls it functionally with flat weights.

    ``carries_state = True`` declares a model that carries a recurrent state from one batch to
    the next (truncated BPTT over a dataset laid out as streams, ``DataSplits.streams``). Its
    module's forward then takes ``state=`` — the state the batch starts from, None for its zero
    state, any nesting of tuples, lists and dicts of tensors — and, with ``return_state=True``,
    returns ``(outputs, final_state)``. The model never keeps the state itself: the runner does
    (``Batch.state``, ``hgbench.streams``)."""

    kind: ClassVar[str] = "model"
    carries_state: ClassVar[bool] = False

    def build(self, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
        raise NotImplementedError


def split_arrays(x: Tensor, y: Tensor, sizes: tuple[int | None, int | None, int | None], seed: int) -> tuple[Split, Split, Split]:
    """Shuffle (x, y) with ``seed`` and cut train/val/test of the given sizes (None = the rest)."""
    n = len(x)
    fixed = sum(s for s in sizes if s is not None)
    rest = [i for i, s in enumerate(sizes) if s is None]
    if fixed > n or (rest and len(rest) > 1):
        raise ConfigError(f"split sizes {sizes} do not fit {n} examples (at most one may be null)")
    sizes = tuple(n - fixed if s is None else s for s in sizes)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for s in sizes:
        idx = perm[start : start + s]
        out.append(Split(x[idx], y[idx]))
        start += s
    return tuple(out)
