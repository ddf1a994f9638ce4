"""The experiment: the paper's Algorithm 1 with lifecycle hooks.

    repeat hyper_steps times:
        inner_steps optimiser steps on w (warm-started), with λ fixed
        one hypergradient (the configured method) and one hyper-optimiser step on λ
        every eval_every hyper-steps: train/val/test loss and accuracy

Read top to bottom: ``run`` (the loop, with the hooks), ``hyper_step`` (one iteration), then its
pieces. Recorders (MLflow, progress, checkpoints) are plugins on the ``on_run_*`` hooks; the loop
never imports them. ``Experiment`` is also what the Python API returns, so a notebook runs the
same code. Elsewhere, each in a module named for it: building a config's plugins once
(``hgbench.parts``), the run's own process-wide state (``hgbench.process_state``), stop signals
(``hgbench.stop``), truncated BPTT's windows and their recurrent state (``hgbench.streams``), the
accuracy checks against a reference (``hgbench.accuracy``) and what a checkpoint holds
(``hgbench.checkpoint``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from hgbench import accuracy, checkpoint, machine, registry, stop
from hgbench.base import Batch, HypergradientMethod
from hgbench.compiled import InnerLoss
from hgbench.config import build_plugin, config_tags, to_dict
from hgbench.errors import ConfigError, DivergenceError, HgbenchError, RecordingError, SkipRun
from hgbench.hookspecs import RunContext, RunResult
from hgbench.ift import count_gradients, count_products
from hgbench.memory import PeakMemory
from hgbench.parts import Parts, build_parts
from hgbench.problem import Problem, Sampler
from hgbench.process_state import RunProcessState
from hgbench.streams import evaluate_streams, samplers, stream_count

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_recording(ctx: RunContext, step: int) -> None:
    """A run whose results cannot be recorded (a recorder failed, the disk is full) stops now:
    going on would compute what nothing keeps, and end as if it had been stored."""
    if ctx.recording_errors:
        e = ctx.recording_errors[0]
        raise RecordingError(f"recording failed at hyper-step {step} ({e.source}: {e.error}); the run was stopped")


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
        self.retrain = parts.retrain  # the retraining check's settings (reference=retrain), or None
        self.inner_optimizer = parts.inner_optimizer
        self.problem = Problem(parts.dataset, parts.model, parts.family, device=self.device, dtype=DTYPES[cfg.dtype], seed=cfg.seed)
        self.problem.inner_optimizer = self.inner_optimizer
        if self.reference is not None:
            why = self.reference.skip(self.problem)
            if why:
                raise ConfigError(f"reference.method {self.reference.name!r} cannot run on this problem: {why} "
                                  "(presets: reference=ggn_cg | minres | exact_damped | retrain)")
        self.w = self.problem.w0.clone()
        self.lam = self.problem.lam0.clone().requires_grad_(True)
        self.inner_state = self.inner_optimizer.init(self.w)
        # the inner step's L_T, compiled with compile=true (framework/compiled.py)
        self.inner_loss = InnerLoss(self._inner_loss, compile=bool(cfg.compile))
        self.outer_optimizer = parts.outer_optimizer([self.lam])
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        # shuffled minibatches, or for truncated BPTT (hgbench.streams) the windows of every stream
        # in order, each from the recurrent state the last one ended in
        self.streams = stream_count(self.problem)
        self.train_sampler, self.val_sampler = samplers(self.problem, cfg, self.generator)
        if self.retrain is not None and self.streams:
            raise ConfigError("reference.retrain: the retraining check does not carry a recurrent state through its retraining "
                              "(truncated BPTT) yet; use reference=ggn_cg | minres | exact_damped here")
        self.step = 0  # hyper-steps done; > 0 after load_state_dict (a resumed run)
        # eval_every: null = about 30 evaluations per run, whatever its length
        self.eval_every = cfg.eval_every or max(1, cfg.hyper_steps // 30)
        self.nonfinite_in_a_row = self.nonfinite_skipped = 0
        self.history: dict[str, Any] = {}  # the latest value of every metric (the run's summary)
        # torch's global RNG and determinism, this experiment's while it works (_own_state)
        self.process_state = RunProcessState(int(cfg.seed) + 1, self.device, cfg.deterministic)
        self._own_state = self.process_state.owned

    # --- the whole run, with hooks -----------------------------------------------------------
    def run(self, tags: dict[str, str] | None = None, resumed_from: str | None = None) -> RunResult:
        """Algorithm 1 from start (or from a loaded checkpoint) to end, with the lifecycle hooks;
        never raises for a failed run (the result says FAILED / SKIPPED and why), except
        KeyboardInterrupt (SIGTERM under the CLI), which is recorded as KILLED first."""
        try:
            with self._own_state():
                return self._run(tags, resumed_from)
        finally:
            stop.clear_stop()  # a stop ends this run, never the next one in the process

    def _run(self, tags: dict[str, str] | None, resumed_from: str | None) -> RunResult:
        all_tags = {**config_tags(self.cfg), "hgbench.device": str(self.device), "hgbench.memory_kind": self.memory.kind, **(tags or {})}
        if resumed_from:
            all_tags.update({"hgbench.resumed_from": resumed_from, "hgbench.resumed_at_step": str(self.step)})
        ctx = RunContext(self.cfg, self, all_tags, resumed_from=resumed_from)
        hook = registry.SafeHooks(ctx)
        summary: dict[str, Any] = {"num_weights": self.problem.num_weights, "num_hyperparams": self.problem.num_hyperparams}
        hook.on_run_start()
        step = self.step
        summary["load_avg_start"] = machine.load_average()  # recorded: timings can be judged later
        if self.device.type == "cpu":
            machine.warn_if_oversubscribed(summary["load_avg_start"])
        try:
            _check_recording(ctx, step)
            stop.check_stop()
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
                stop.check_stop()
            status, error = "FINISHED", None
        except SkipRun as exc:
            status, error = "SKIPPED", exc
        except KeyboardInterrupt as exc:
            status, error = "KILLED", exc
        except Exception as exc:  # recorded, then reported to the caller
            status, error = "FAILED", exc
            summary["failed_step"] = getattr(exc, "step", step)
        summary["runtime_s"] = time.perf_counter() - self.t_start
        summary["load_avg_end"] = machine.load_average()
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
        rng = self.process_state.snapshot() if check else None
        with count_products() as products, count_gradients() as grads:
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
               "hvp_calls": products.value, "grad_calls": grads.value, **{f"hypergrad/{k}": float(v) for k, v in method_metrics.items()}}
        # truncated BPTT: the next windows start from these windows' states at w (untimed; the
        # same for every method, whatever weights it ran the model at)
        self.train_sampler.carry_state(self.w)
        self.val_sampler.carry_state(self.w)
        if check:  # at the same (w, λ), batches and noise as the method's; not timed
            out.update(self.accuracy(hg, tb, vb, rng, step))
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

    # --- the pieces of Algorithm 1 -----------------------------------------------------------
    def _inner_loss(self, w: Tensor, lam: Tensor, x: Tensor, y: Tensor, idx: Tensor | None, state: Any = None) -> Tensor:
        return self.problem.train_loss(w, lam, Batch(x, y, idx, state))

    def train_inner(self, steps: int) -> Tensor | None:
        """``steps`` inner optimiser steps on w with λ fixed; returns the last training loss."""
        lam = self.lam.detach()
        loss = None
        with self._own_state():
            for _ in range(steps):
                w = self.w.requires_grad_(True)
                loss = self.inner_loss(w, lam, *self.train_sampler.next())
                (g,) = torch.autograd.grad(loss, w)
                self.train_sampler.carry_state(self.w)  # truncated BPTT: the next window starts where this one ended
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

    def accuracy(self, hg: Tensor, train_batch: Batch, val_batch: Batch, rng: dict[str, Tensor], step: int = 0) -> dict[str, float]:
        """The accuracy checks (``hgbench.accuracy``) of the method's hypergradient ``hg`` at the
        same (w, λ), batches and noise (torch's RNG replayed from ``rng``, where the method
        started), and with ``reference.retrain`` the retraining check. Changes no state: the RNG
        is put back where the method left it, so a run's trajectory is the same with or without
        the checks."""
        after = self.process_state.snapshot()
        try:
            self.process_state.restore(rng)
            ref = self.hypergradient_flat(self.reference, train_batch, val_batch)  # type: ignore[arg-type]
            out = accuracy.hypergradient_error(hg, ref)
            self.process_state.restore(rng)
            out.update(accuracy.curvature_at(self.problem, self.w, self.lam, train_batch, int(self.cfg.reference.lanczos_steps)))
            if self.retrain is not None:
                out.update(self.retraining_check(hg, ref, rng, step))
            return out
        finally:
            self.process_state.restore(after)

    def retraining_check(self, hg: Tensor, ref: Tensor | None, rng: dict[str, Tensor], step: int) -> dict[str, float]:
        """``accuracy.retraining_check`` at the current (w, λ) and inner optimiser state: T
        minibatches drawn from the train split by a generator of its own (seeded by the run's seed
        and ``step``: the run's own batch order is untouched), the full validation split, and
        torch's RNG reset to ``rng`` before each retraining (the same noise on both sides)."""
        settings = self.retrain
        assert settings is not None
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + int(step))
        batches = accuracy.ReplayBatches(Sampler(self.problem.data.train, self.cfg.train_batch_size, gen), settings.steps)
        return accuracy.retraining_check(self.problem, self.w, self.lam, self.inner_optimizer, self.inner_state, hg, ref, settings, batches,
                                         self.problem.full_batch("val"), gen, lambda: self.process_state.restore(rng))

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
        rng = self.process_state.snapshot()  # noisy families draw from it: put it back afterwards
        method_state = self.method.state_dict()  # a warm start must not start from the warm-up's solve
        w = self.w.detach().requires_grad_(True)
        torch.autograd.grad(self.inner_loss(w, self.lam.detach(), *tb), w)  # compiles here with compile=true
        self.hypergradient_flat(self.method, tb, vb)
        self.method.load_state_dict(method_state)
        self.process_state.restore(rng)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def skip_reason(self) -> str | None:
        for plugin in (self.method, self.problem.model, self.problem.dataset):  # the family: in Problem
            reason = plugin.skip(self.problem)
            if reason:
                return f"{plugin.kind} {plugin.name!r}: {reason}"
        return None

    def seed_rng(self, seed: int) -> None:
        """Set this experiment's own RNG (the one it swaps in while it works: dropout and
        augmentation noise, a method's random draws) to ``seed``: a benchmark that asks for the
        same draws at each point, however often earlier points were called for timing."""
        self.process_state.seed(seed)

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is (``hgbench.checkpoint``)."""
        return checkpoint.experiment_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoint.restore_experiment(self, state)
