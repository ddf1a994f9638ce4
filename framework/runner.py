"""The experiment: the paper's Algorithm 1 with lifecycle hooks.

    repeat hyper_steps times:
        inner_steps optimiser steps on w (warm-started), with λ fixed
        one hypergradient (the configured method) and one hyper-optimiser step on λ
        every eval_every hyper-steps: train/val/test loss and accuracy

Recorders (MLflow, progress) are plugins on the ``on_run_*`` hooks; the loop itself never imports
them. ``Experiment`` is also what the Python API returns, so a notebook runs the same code.

A config is checked and its plugins built once (``build_parts``: no data loaded yet, so a typo
fails in seconds); ``Experiment(cfg, parts)`` then loads the data and assembles the problem.
Process-wide state a run needs — torch's global RNG (dropout and augmentation noise draw from
it) and ``deterministic`` algorithms — is the experiment's own while it works and is put back
afterwards, so runs sharing a worker process never see each other's.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import Tensor

from hgbench import registry
from hgbench.base import Batch, Dataset, HypergradientMethod, HyperparamFamily, Model
from hgbench.compiled import InnerLoss
from hgbench.config import build_plugin, config_tags, to_dict
from hgbench.errors import ConfigError, DivergenceError, HgbenchError, RecordingError, SkipRun
from hgbench.hookspecs import RunContext, RunResult
from hgbench.ift import HessianVectorProduct, count_products
from hgbench.linalg import lanczos_extremes
from hgbench.memory import PeakMemory
from hgbench.problem import Problem, Sampler
from hgbench.schema import check_run_config, instantiate_checked

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# a stop asked for by a signal handler (the CLI's SIGTERM): the run ends as KILLED at the next
# point where that is safe — between hyper-steps, never in the middle of an MLflow write.
# ``Experiment.run`` clears it when it returns, so the next run in the process starts clean.
_stop_requested: list[str] = []


# a stop of the whole process's work (a grid, or a grid worker): jobs that have not started yet
# are not started. It lives here, in an imported module, not in the CLI's: under ``python -m
# hgbench.cli`` the CLI is ``__main__``, and a joblib worker gets a fresh copy of its globals
# with every job.
_grid_stop: list[str] = []


def request_stop(reason: str) -> None:
    _stop_requested.append(reason)


def request_grid_stop(reason: str) -> None:
    _grid_stop.append(reason)


def grid_stop_reason() -> str | None:
    return _grid_stop[0] if _grid_stop else None


def clear_grid_stop() -> None:
    _grid_stop.clear()


def stop_requested() -> bool:
    return bool(_stop_requested)


def _check_stop() -> None:
    if _stop_requested:
        raise KeyboardInterrupt(_stop_requested[0])


def _check_recording(ctx: RunContext, step: int) -> None:
    """A run whose results cannot be recorded (a recorder failed, the disk is full) stops now:
    going on would compute what nothing keeps, and end as if it had been stored."""
    if ctx.recording_errors:
        e = ctx.recording_errors[0]
        raise RecordingError(f"recording failed at hyper-step {step} ({e.source}: {e.error}); the run was stopped")


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def oversubscription_warning(load: float, threads: int, cores: int | None) -> str | None:
    """A warning when other work already keeps every core busy and this run adds several torch
    threads: on contended cores they crawl (a hyper-step measured 16x slower at a load of 5 on 2
    cores), and run times stop meaning much."""
    cores = cores or 1
    if math.isfinite(load) and load >= cores and threads > 1:
        return (f"hgbench: warning: load average {load:.1f} on {cores} cores and this run uses {threads} torch threads: "
                f"timings will be slow and noisy; set num_threads=1 (or run fewer jobs at once)")
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    return torch.device(name)


@dataclass
class Parts:
    """Everything a config names, built and checked — no data loaded yet."""

    device: torch.device
    dataset: Dataset
    model: Model
    family: HyperparamFamily
    method: HypergradientMethod
    inner_optimizer: Any
    outer_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer]  # params -> optimiser
    reference: HypergradientMethod | None = None  # the accuracy metrics' reference (reference.every > 0)


def build_parts(cfg: DictConfig) -> Parts:
    """Check the whole config — the top-level schema, the device, each plugin's typed
    parameters, both optimisers — and build its pieces. Raises ConfigError /
    UnknownPluginError naming the key; nothing is loaded, so this takes milliseconds."""
    check_run_config(cfg)
    device = resolve_device(str(cfg.device))
    built = {kind: build_plugin(kind, cfg[kind]) for kind in registry.KINDS}
    inner = instantiate_checked(cfg.inner_optimizer, "inner_optimizer")
    outer = instantiate_checked(cfg.outer_optimizer, "outer_optimizer")
    try:  # torch.optim checks its settings (e.g. a negative learning rate) only once given parameters
        outer([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"outer_optimizer: {exc}") from exc
    reference = None
    if cfg.reference.every > 0:
        try:
            reference = build_plugin("hypergrad", cfg.reference.method)
        except HgbenchError as exc:
            raise ConfigError(f"reference.method: {exc} (presets: reference=ggn_cg | minres | exact_damped)") from exc
    return Parts(device, built["dataset"], built["model"], built["hyperparam"], built["hypergrad"], inner, outer, reference)  # type: ignore[arg-type]


class Experiment:
    """Problem + hypergradient method + inner/outer optimisers, built from a composed config."""

    def __init__(self, cfg: DictConfig, parts: Parts | None = None):
        """``parts``: the config's pieces from ``build_parts(cfg)`` (built here if not given)."""
        self.cfg = cfg
        parts = parts or build_parts(cfg)
        self.device = parts.device
        self.memory = PeakMemory(self.device)
        self.t_start = time.perf_counter()
        self.method: HypergradientMethod = parts.method
        self.reference: HypergradientMethod | None = parts.reference
        self.inner_optimizer = parts.inner_optimizer
        self.problem = Problem(parts.dataset, parts.model, parts.family, device=self.device, dtype=DTYPES[cfg.dtype], seed=cfg.seed)
        self.problem.inner_optimizer = self.inner_optimizer
        if self.reference is not None:
            why = self.reference.skip(self.problem)
            if why:
                raise ConfigError(f"reference.method {self.reference.name!r} cannot run on this problem: {why} "
                                  "(presets: reference=ggn_cg | minres | exact_damped)")
        self.w = self.problem.w0.clone()
        self.lam = self.problem.lam0.clone().requires_grad_(True)
        self.inner_state = self.inner_optimizer.init(self.w)
        # the inner step's L_T, compiled with compile=true (framework/compiled.py)
        self.inner_loss = InnerLoss(self._inner_loss, compile=bool(cfg.compile))
        self.outer_optimizer = parts.outer_optimizer([self.lam])
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        # truncated BPTT: a dataset laid out as parallel token streams (meta["streams"]) and a model
        # that carries its recurrent state (module.carries_state) walk the windows in order
        self.streams = int(self.problem.data.meta.get("streams") or 0) if getattr(self.problem.module, "carries_state", False) else 0
        if self.streams:
            check_stream_config(cfg, self.streams)
            self.train_sampler: Sampler | StreamSampler = StreamSampler(self.problem.data.train, self.streams)
            self.val_sampler: Sampler | StreamSampler = StreamSampler(self.problem.data.val, self.streams)
        else:
            self.train_sampler = Sampler(self.problem.data.train, cfg.train_batch_size, self.generator)
            self.val_sampler = Sampler(self.problem.data.val, cfg.val_batch_size, self.generator)
        self.step = 0  # hyper-steps done; > 0 after load_state_dict (a resumed run)
        # eval_every: null = about 30 evaluations per run, whatever its length
        self.eval_every = cfg.eval_every or max(1, cfg.hyper_steps // 30)
        self.nonfinite_in_a_row = self.nonfinite_skipped = 0
        self.history: dict[str, Any] = {}  # the latest value of every metric (the run's summary)
        # torch's global RNG as this experiment left it (swapped in while it works: _own_state)
        self._rng = {"cpu": torch.Generator().manual_seed(int(cfg.seed) + 1).get_state()}
        if self.device.type == "cuda":
            self._rng["cuda"] = torch.Generator(self.device).manual_seed(int(cfg.seed) + 1).get_state()
        self._owning = 0  # nesting depth of _own_state

    @contextlib.contextmanager
    def _own_state(self):
        """Swap in this experiment's process-wide state — torch's global RNG and, with
        ``deterministic=true``, deterministic algorithms — and put the caller's back after."""
        if self._owning:
            self._owning += 1
            try:
                yield
            finally:
                self._owning -= 1
            return
        cuda = self.device.type == "cuda"
        outer_rng = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if cuda else None
        outer_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        set_env = self.cfg.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        torch.set_rng_state(self._rng["cpu"])
        if cuda:
            torch.cuda.set_rng_state(self._rng["cuda"], self.device)
        if self.cfg.deterministic:
            if set_env:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True)
        self._owning = 1
        try:
            yield
        finally:
            self._owning = 0
            self._rng["cpu"] = torch.get_rng_state()
            torch.set_rng_state(outer_rng)
            if cuda:
                self._rng["cuda"] = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)
            torch.use_deterministic_algorithms(outer_det[0], warn_only=outer_det[1])
            if set_env:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    def _rng_state(self, kind: str) -> Tensor:
        """This experiment's RNG state, live if it is working now."""
        if not self._owning:
            return self._rng[kind]
        return torch.get_rng_state() if kind == "cpu" else torch.cuda.get_rng_state(self.device)

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is (tensors on the CPU, so
        ``torch.load(..., weights_only=True)`` reads it back)."""
        cpu = lambda v: v.detach().cpu() if isinstance(v, Tensor) else v  # noqa: E731
        state = {
            "step": self.step,
            "w": cpu(self.w),
            "lam": cpu(self.lam),
            "inner_state": {k: cpu(v) for k, v in self.inner_state.items()},
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "train_sampler": self.train_sampler.state_dict(),
            "val_sampler": self.val_sampler.state_dict(),
            "torch_rng": self._rng_state("cpu"),
            "history": dict(self.history),
            "method_state": {k: cpu(v) for k, v in self.method.state_dict().items()},  # e.g. a warm start's last solution
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = self._rng_state("cuda")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = lambda v: v.to(self.device) if isinstance(v, Tensor) else v  # noqa: E731
        self.step = int(state["step"])
        self.w = dev(state["w"]).to(self.problem.dtype)
        with torch.no_grad():
            self.lam.copy_(dev(state["lam"]))
        self.inner_state = {k: dev(v) for k, v in state["inner_state"].items()}
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.generator.set_state(state["generator"])
        self.train_sampler.load_state_dict(state["train_sampler"])
        self.val_sampler.load_state_dict(state["val_sampler"])
        self._rng["cpu"] = state["torch_rng"]
        if "cuda_rng" in state and self.device.type == "cuda":
            self._rng["cuda"] = state["cuda_rng"]
        if self._owning:
            torch.set_rng_state(self._rng["cpu"])
            if "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
        self.history = dict(state["history"])
        self.method.load_state_dict({k: dev(v) for k, v in state.get("method_state", {}).items()})

    # --- the pieces of Algorithm 1 -----------------------------------------------------------
    def _inner_loss(self, w: Tensor, lam: Tensor, x: Tensor, y: Tensor, idx: Tensor | None) -> Tensor:
        return self.problem.train_loss(w, lam, Batch(x, y, idx))

    def train_inner(self, steps: int) -> Tensor | None:
        """``steps`` inner optimiser steps on w with λ fixed; returns the last training loss."""
        lam = self.lam.detach()
        loss = None
        with self._own_state():
            for _ in range(steps):
                w = self.w.requires_grad_(True)
                loss = self.inner_loss(w, lam, *self.train_sampler.next())
                (g,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    self.w, self.inner_state = self.inner_optimizer.step(self.w.detach(), g, self.inner_state)
        return None if loss is None else loss.detach()

    def hypergradient_flat(self, method: HypergradientMethod, train_batch: Batch, val_batch: Batch) -> Tensor:
        bl = self.problem.bilevel(train_batch, val_batch, self.w.detach(), self.lam.detach(), self.inner_optimizer, self.inner_state)
        with self._own_state():
            try:
                return method.compute(bl)
            except (HgbenchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a plugin's own failure: the console names the plugin and the error's type
                exc.hgbench_plugin = f"hypergrad {method.name!r} compute()"  # type: ignore[attr-defined]
                raise

    def hypergradient(self, method: str | HypergradientMethod | None = None, train_batch: Batch | None = None, val_batch: Batch | None = None, **params: Any) -> dict[str, Tensor]:
        """dL_V/dλ at the current (w, λ), shaped like λ, by a named method (its config defaults
        overridden by ``params``). Batches default to the full train and val splits."""
        if method is None:
            m = self.method
        elif isinstance(method, str):
            node = dict(registry.get("hypergrad", method).defaults(), name=method)
            if self.cfg.hypergrad.name == method:
                node.update(to_dict(self.cfg.hypergrad))
            m = build_plugin("hypergrad", node, **params)
        else:
            m = method
        hg = self.hypergradient_flat(m, train_batch or self.problem.full_batch("train"), val_batch or self.problem.full_batch("val"))
        return self.problem.lam_spec.unflatten(hg)

    def hyper_step(self, step: int = 0) -> dict[str, float]:
        """One iteration of Algorithm 1; returns its metrics."""
        with self._own_state():  # the accuracy checks replay this experiment's RNG, not the caller's
            return self._hyper_step(step)

    def _hyper_step(self, step: int) -> dict[str, float]:
        cuda = self.device.type == "cuda"
        t0 = time.perf_counter()
        last_loss = self.train_inner(self.cfg.inner_steps)
        if cuda:
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        tb, vb = self.train_sampler.next(), self.val_sampler.next()
        check = self.reference is not None and step > 0 and step % self.cfg.reference.every == 0
        rng = self._rng_snapshot() if check else None
        with count_products() as products:
            hg = self.hypergradient_flat(self.method, tb, vb)
        method_metrics = self.method.metrics()
        norm = torch.linalg.vector_norm(hg)
        if cuda:
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        norm_f, loss_f = torch.stack([norm.detach().double(), last_loss.double()]).tolist()
        if not math.isfinite(loss_f):
            raise DivergenceError("the training loss", step)
        out = {"inner_time_s": t1 - t0, "hypergrad_time_s": t2 - t1, "hypergrad_norm": norm_f, "inner_loss": loss_f,
               "hvp_calls": products.value, **{f"hypergrad/{k}": float(v) for k, v in method_metrics.items()}}
        carry = getattr(tb.x, "carry", None)
        if carry is not None and carry.final is None:
            # truncated BPTT, and the method never ran the model on its window (fixed: no tuning): run it
            # once, untimed, so the next window starts from this one's state as in every other arm —
            # not from zeros
            with torch.no_grad():
                self.problem.forward(self.w, tb.x)
        if check:  # at the same (w, λ), batches and noise as the method's; not timed
            out.update(self.accuracy(hg, tb, vb, rng))
            out["reference_time_s"] = time.perf_counter() - t2
            self.t_start += out["reference_time_s"]  # elapsed_s leaves the checks out
        if not math.isfinite(norm_f):
            # on_nonfinite=skip: drop this hypergradient (λ unchanged), up to max_nonfinite_skips in a row
            self.nonfinite_in_a_row += 1
            if self.cfg.on_nonfinite == "fail" or self.nonfinite_in_a_row > self.cfg.max_nonfinite_skips:
                raise DivergenceError("the hypergradient", step)
            self.nonfinite_skipped += 1
            out["hypergrad_norm"] = float("nan")
            out["nonfinite_skipped"] = self.nonfinite_skipped
            return out
        self.nonfinite_in_a_row = 0
        clip = self.cfg.hypergrad_clip
        if clip is not None and norm_f > clip:
            hg = hg * (clip / norm_f)
        self.outer_optimizer.zero_grad(set_to_none=True)
        self.lam.grad = hg.to(self.lam.dtype)
        self.outer_optimizer.step()
        return out

    def seed_rng(self, seed: int) -> None:
        """Set this experiment's own RNG (the one it swaps in while it works: dropout and
        augmentation noise, a method's random draws) to ``seed``: a benchmark that asks for the
        same draws at each point, however often earlier points were called for timing."""
        if self._owning:
            raise RuntimeError("seed_rng while the experiment is working")
        self._rng["cpu"] = torch.Generator().manual_seed(int(seed)).get_state()
        if self.device.type == "cuda":
            self._rng["cuda"] = torch.Generator(self.device).manual_seed(int(seed)).get_state()

    def _rng_snapshot(self) -> dict[str, Tensor]:
        snap = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            snap["cuda"] = torch.cuda.get_rng_state(self.device)
        return snap

    def _rng_restore(self, snap: dict[str, Tensor]) -> None:
        torch.set_rng_state(snap["cpu"])
        if "cuda" in snap:
            torch.cuda.set_rng_state(snap["cuda"], self.device)

    def accuracy(self, hg: Tensor, train_batch: Batch, val_batch: Batch, rng: dict[str, Tensor]) -> dict[str, float]:
        """How far the method's hypergradient ``hg`` is from the reference method's at the same
        (w, λ), batches and noise (torch's RNG replayed from ``rng``, where the method started),
        how far w is from the optimum the IFT assumes, and the training Hessian's extreme
        eigenvalues (Lanczos Ritz values). Changes no state: the RNG is put back where the method
        left it, so a run's trajectory is the same with or without the checks."""
        after = self._rng_snapshot()
        try:
            self._rng_restore(rng)
            ref = self.hypergradient_flat(self.reference, train_batch, val_batch).double()  # type: ignore[arg-type]
            g = hg.detach().double()
            ref_norm, g_norm = torch.linalg.vector_norm(ref).item(), torch.linalg.vector_norm(g).item()
            out = {
                "hg_ref_norm": ref_norm,
                "hg_cosine": (g @ ref).item() / (g_norm * ref_norm) if g_norm * ref_norm > 0 else float("nan"),
                "hg_rel_err": torch.linalg.vector_norm(g - ref).item() / ref_norm if ref_norm > 0 else float("nan"),
            }
            self._rng_restore(rng)
            w = self.w.detach().requires_grad_(True)
            (gw,) = torch.autograd.grad(self.problem.train_loss(w, self.lam.detach(), train_batch), w, create_graph=True)
            out["inner_grad_norm"] = torch.linalg.vector_norm(gw.detach()).item()
            steps = int(self.cfg.reference.lanczos_steps)
            if steps:
                hvp = HessianVectorProduct(gw, w)
                out["hess_eig_max"], out["hess_eig_min"] = lanczos_extremes(lambda v: hvp(v).detach(), w.numel(), steps, like=w.detach())
            return out
        finally:
            self._rng_restore(after)

    def evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        tokens = self.problem.data.task == "classification" and self.problem.data.train.y.dim() > 1
        for split in ("train", "val", "test"):
            if len(getattr(self.problem.data, split).x):
                if self.streams:
                    out.update(evaluate_streams(self.problem, self.w, split, self.streams))
                else:
                    out.update(self.problem.evaluate(self.w, split, self.cfg.eval_batch_size))
                if tokens:  # sequence models: perplexity = exp(mean cross-entropy per token)
                    out[f"{split}_ppl"] = math.exp(min(out[f"{split}_loss"], 700.0))
        with torch.no_grad():
            lam = self.problem.lam_spec.unflatten(self.lam.detach())
            out.update({f"hp/{k}": float(v) for k, v in self.problem.family.metrics(lam).items()})
        return out

    def warm_up(self) -> None:
        """One untimed inner gradient and hypergradient that change no state (weights, λ,
        optimiser and sampler untouched): one-time costs (lazy initialisation, first autograd and
        vmap calls) then stay out of the first hyper-step's timing and out of method comparisons."""
        def head(split: str, n: int | None) -> Batch:
            s = getattr(self.problem.data, split)
            k = len(s.x) if n is None else min(n, len(s.x))
            return Batch(s.x[:k], s.y[:k], torch.arange(k, device=self.device))

        tb, vb = head("train", self.cfg.train_batch_size), head("val", self.cfg.val_batch_size)
        rng = self._rng_snapshot()  # noisy families draw from it: put it back afterwards
        method_state = self.method.state_dict()  # a warm start must not start from the warm-up's solve
        w = self.w.detach().requires_grad_(True)
        torch.autograd.grad(self.inner_loss(w, self.lam.detach(), *tb), w)  # compiles here with compile=true
        self.hypergradient_flat(self.method, tb, vb)
        self.method.load_state_dict(method_state)
        self._rng_restore(rng)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def skip_reason(self) -> str | None:
        for plugin in (self.method, self.problem.model, self.problem.dataset):  # the family: in Problem
            reason = plugin.skip(self.problem)
            if reason:
                return f"{plugin.kind} {plugin.name!r}: {reason}"
        return None

    # --- the whole run, with hooks -----------------------------------------------------------
    def run(self, tags: dict[str, str] | None = None, resumed_from: str | None = None) -> RunResult:
        """Algorithm 1 from start (or from a loaded checkpoint) to end, with the lifecycle hooks;
        never raises for a failed run (the result says FAILED / SKIPPED and why), except
        KeyboardInterrupt (SIGTERM under the CLI), which is recorded as KILLED first."""
        try:
            with self._own_state():
                return self._run(tags, resumed_from)
        finally:
            _stop_requested.clear()  # a stop ends this run, never the next one in the process

    def _run(self, tags: dict[str, str] | None, resumed_from: str | None) -> RunResult:
        all_tags = {**config_tags(self.cfg), "hgbench.device": str(self.device), "hgbench.memory_kind": self.memory.kind, **(tags or {})}
        if resumed_from:
            all_tags.update({"hgbench.resumed_from": resumed_from, "hgbench.resumed_at_step": str(self.step)})
        ctx = RunContext(self.cfg, self, all_tags, resumed_from=resumed_from)
        hook = registry.SafeHooks(ctx)
        summary: dict[str, Any] = {"num_weights": self.problem.num_weights, "num_hyperparams": self.problem.num_hyperparams}
        hook.on_run_start()
        step = self.step
        summary["load_avg_start"] = load_average()  # recorded: timings can be judged later
        warning = oversubscription_warning(summary["load_avg_start"], torch.get_num_threads(), os.cpu_count())
        if warning and self.device.type == "cpu":
            print(warning, file=sys.stderr, flush=True)
        try:
            _check_recording(ctx, step)
            _check_stop()
            reason = self.skip_reason()
            if reason:
                raise SkipRun(reason)
            if self.cfg.warmup:
                self.warm_up()
            # runtime and peak memory cover the run itself: after data loading, recorder set-up
            # and the warm-up (a resumed run counts from its restart)
            self.memory.start()
            self.t_start = time.perf_counter() - float(self.history.get("elapsed_s", 0.0))
            if self.step == 0:
                self.train_inner(self.cfg.warmup_steps)
                metrics = self.evaluate()
                self.history.update(metrics)
                self.history["initial"] = dict(metrics)
                hook.on_hyper_step(step=0, metrics={**metrics, "elapsed_s": 0.0})
                _check_recording(ctx, 0)
            summary.update(self.history)
            while self.step < self.cfg.hyper_steps:
                step = self.step + 1
                metrics = self.hyper_step(step)
                if step % self.eval_every == 0 or step == self.cfg.hyper_steps:
                    metrics.update(self.evaluate())
                metrics["elapsed_s"] = time.perf_counter() - self.t_start
                self.step = step
                self.history.update(metrics)
                summary.update(metrics)
                if metrics.get("hess_eig_min", 0.0) < 0 and "hessian_indefinite" not in ctx.info:
                    ctx.info["hessian_indefinite"] = (
                        f"the training Hessian is indefinite (smallest eigenvalue estimate {metrics['hess_eig_min']:.3g} "
                        f"at hyper-step {step}): every IFT method assumes H ≻ 0 there")
                hook.on_hyper_step(step=step, metrics=metrics)
                _check_recording(ctx, step)
                _check_stop()
            status, error = "FINISHED", None
        except SkipRun as exc:
            status, error = "SKIPPED", exc
        except KeyboardInterrupt as exc:
            status, error = "KILLED", exc
        except Exception as exc:  # recorded, then reported to the caller
            status, error = "FAILED", exc
            summary["failed_step"] = getattr(exc, "step", step)
        summary["runtime_s"] = time.perf_counter() - self.t_start
        summary["load_avg_end"] = load_average()
        summary["peak_memory_mb"] = self.memory.peak_mb()
        summary["memory_kind"] = self.memory.kind
        summary["hyper_steps_done"] = self.step
        if self.inner_loss.status != "off":
            ctx.info["compile"] = self.inner_loss.status
            ctx.info["compile_note"] = self.inner_loss.note
        hook.on_run_end(status=status, error=error, summary=summary)
        self.last_result = RunResult(status, summary, ctx.info, error, ctx.plugin_errors, ctx.recording_errors)
        if status == "KILLED":
            raise error  # type: ignore[misc]
        return self.last_result


class Carry:
    """The recurrent state a batch of token windows starts from (``initial``; None = zeros) and,
    once a model that carries state has run on it, the state it ended in (``final``, detached from
    the graph). A ``StreamSampler`` hangs one on each batch's input tensor as ``x.carry``; a model
    with ``carries_state = True`` reads ``initial`` and writes ``final`` there. Being part of the
    batch, the state is a constant of L_T(w, λ; batch): every hypergradient method sees a plain
    function of w and λ."""

    __slots__ = ("initial", "final")

    def __init__(self, initial: Any = None):
        self.initial, self.final = initial, None


class StreamSampler:
    """Truncated BPTT over a split laid out as ``streams`` parallel token streams (example
    k·B + b is window k of stream b, ``DataSplits.meta["streams"]`` = B): batch k is window k of
    every stream (rows [kB, (k+1)B)), k = 0, 1, … in order; its ``x.carry.initial`` is the final
    state the model reached on batch k − 1 (detached: gradients stop at the window boundary).
    After the last window the walk starts again at window 0 from zero states (an epoch)."""

    def __init__(self, split, streams: int):
        self.split, self.streams = split, streams
        self.windows = len(split.x) // streams
        self._k, self._prev = 0, None

    def next(self) -> Batch:
        if self._k >= self.windows:  # epoch boundary: the streams start over, from zero states
            self._k, self._prev = 0, None
        lo, hi = self._k * self.streams, (self._k + 1) * self.streams
        x = self.split.x[lo:hi]
        x.carry = Carry(None if self._prev is None else self._prev.final)  # type: ignore[attr-defined]
        self._prev = x.carry  # type: ignore[attr-defined]
        self._k += 1
        return Batch(x, self.split.y[lo:hi], torch.arange(lo, hi, device=x.device))

    def state_dict(self) -> dict:
        final = None if self._prev is None else self._prev.final
        return {"k": self._k, "state": None if final is None else [[t.detach().cpu() for t in layer] for layer in final]}

    def load_state_dict(self, state: dict) -> None:
        self._k = int(state["k"])
        self._prev = None
        if state.get("state") is not None:
            self._prev = Carry()
            self._prev.final = [tuple(t.to(self.split.x.device) for t in layer) for layer in state["state"]]


def check_stream_config(cfg: DictConfig, streams: int) -> None:
    """In truncated-BPTT mode a batch is one window of every stream."""
    for key in ("train_batch_size", "val_batch_size"):
        if cfg[key] is not None and cfg[key] != streams:
            raise ConfigError(f"{key}={cfg[key]}: the dataset is laid out as {streams} streams for truncated BPTT, "
                              f"so a batch is one window of each stream; set {key}=null (or {streams})")
    if cfg.compile:
        raise ConfigError("compile=true cannot carry the recurrent state between batches (truncated BPTT); set compile=false")


@torch.no_grad()
def evaluate_streams(problem: Problem, w: Tensor, split: str, streams: int) -> dict[str, float]:
    """Mean loss (and accuracy) per token of a split laid out as parallel streams, every window
    starting from the state the previous window of its stream ended in (zeros at the start)."""
    s = getattr(problem.data, split)
    sampler = StreamSampler(s, streams)
    total = torch.zeros((), device=problem.device, dtype=torch.float64)
    correct = torch.zeros((), device=problem.device, dtype=torch.float64)
    problem.module.eval()
    try:
        for _ in range(sampler.windows):
            b = sampler.next()
            out = problem.forward(w, b.x)
            total += problem.data_loss(out, b.y, reduction="sum").double()
            correct += (out.argmax(-1) == b.y).sum()
    finally:
        problem.module.train()
    n = max(sampler.windows * streams * (s.y[:1].numel()), 1)
    return {f"{split}_loss": total.item() / n, f"{split}_acc": correct.item() / n}


def record_unbuilt(cfg: DictConfig, error: BaseException, tags: dict[str, str] | None = None) -> RunResult:
    """A run that could not be built is still recorded — SKIPPED for a ``SkipRun`` (an
    incompatible combination), else FAILED — with the reason, so a grid of N jobs leaves N runs.
    The hooks see ``run.experiment = None``."""
    status = "SKIPPED" if isinstance(error, SkipRun) else "FAILED"
    ctx = RunContext(cfg, None, {**config_tags(cfg), **(tags or {})})
    hook = registry.SafeHooks(ctx)
    summary: dict[str, Any] = {"failed_step": 0, "hyper_steps_done": 0}
    hook.on_run_start()
    hook.on_run_end(status=status, error=error, summary=summary)
    return RunResult(status, summary, ctx.info, error, ctx.plugin_errors, ctx.recording_errors)
