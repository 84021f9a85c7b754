"""One training iteration, and the per-machine choices that make it fast.

:class:`TrainingStep` runs forward, loss, backward, gradient clipping and the optimiser step for a
batch, entirely on the device: it never reads a tensor back to the host (no ``.item()``, no
``bool()`` of a tensor), so on a GPU the host can queue the next iteration while the current one
runs. Losses are summed on the device and read once per epoch (:meth:`TrainingStep.pop_mean_loss`).

The choices it applies, each one function so that logs and tests see the same rule:

* autocast dtype: :func:`vessel_seg.device.amp_dtype` (bf16 on CUDA GPUs and CPUs with native bf16,
  fp16 on older CUDA GPUs, none elsewhere); a ``GradScaler`` only for fp16
  (:func:`make_grad_scaler`);
* memory format: :func:`vessel_seg.device.preferred_memory_format` (channels_last_3d on CPU and on
  CUDA in half precision);
* ``torch.compile``: :func:`compile_decision`; a compile that fails at the first step falls back to
  eager execution with one warning instead of ending the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vessel_seg.device import autocast

log = logging.getLogger(__name__)

# torch.compile in "auto" mode: compiling the ResU-Net's forward, backward and evaluation graphs costs
# about COMPILE_COST_SECONDS once; the compiled step is assumed to save COMPILE_SAVING_SECONDS_PER_ITERATION
# (about 10% of a typical 0.1 s GPU step). Compiling pays when the run has at least
# COMPILE_MIN_ITERATIONS training iterations left (epochs x iterations per epoch), i.e. 6000: 24 of
# nnU-Net's 250-iteration epochs. Both constants are estimates, not measurements on this project.
COMPILE_COST_SECONDS = 60.0
COMPILE_SAVING_SECONDS_PER_ITERATION = 0.01
COMPILE_MIN_ITERATIONS = round(COMPILE_COST_SECONDS / COMPILE_SAVING_SECONDS_PER_ITERATION)


@dataclass(frozen=True)
class CompileDecision:
    enabled: bool
    reason: str

    def __str__(self) -> str:
        return f"{'on' if self.enabled else 'off'} ({self.reason})"


def compile_decision(mode: str, device: torch.device, iterations: int) -> CompileDecision:
    """Whether to ``torch.compile`` the model for a run of ``iterations`` training iterations.

    ``on`` and ``off`` are obeyed. ``auto`` compiles on CUDA only (on CPU and MPS compiling is slow
    and gains little), and only for runs of at least :data:`COMPILE_MIN_ITERATIONS` iterations.
    """
    if mode == "on":
        return CompileDecision(True, "requested")
    if mode == "off":
        return CompileDecision(False, "requested")
    if mode != "auto":
        raise ValueError(f"compile must be auto, on or off, not {mode!r}")
    if device.type != "cuda":
        return CompileDecision(False, f"auto: only on CUDA, not {device.type}")
    if iterations < COMPILE_MIN_ITERATIONS:
        return CompileDecision(
            False, f"auto: {iterations} iterations are too few to repay ~{COMPILE_COST_SECONDS:.0f} s of compiling "
            f"(needs >= {COMPILE_MIN_ITERATIONS})",
        )
    return CompileDecision(True, f"auto: {iterations} iterations on CUDA")


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 autocast (whose range underflows small gradients); None otherwise.

    bf16 has float32's exponent range and needs no scaling.
    """
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


class TrainingStep:
    """Forward, loss, backward, clipping and optimiser step of one batch, without host synchronisation.

    Parameters
    ----------
    model
        The network as trained (possibly DDP-wrapped); compiled here when ``compile_model``.
    optimizer, loss_fn
        ``loss_fn(model(data), target)`` is minimised.
    device
        Where batches go (copied with ``non_blocking=True``, from pinned memory on CUDA).
    dtype
        Autocast dtype (``torch.bfloat16``, ``torch.float16``) or None for float32.
    grad_clip
        Maximum gradient norm (``clip_grad_norm_``; its norm is not read back).
    memory_format
        Applied to 5D input batches (the network's parameters should already use it).
    scaler
        The ``GradScaler`` to use; by default :func:`make_grad_scaler` (one for fp16 only).
    compile_model
        ``torch.compile`` the model; if compiling fails at the first training or evaluation call,
        the step warns once and runs the eager model from then on.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        device: torch.device,
        *,
        dtype: torch.dtype | None = None,
        grad_clip: float = 12.0,
        memory_format: torch.memory_format = torch.contiguous_format,
        scaler: torch.amp.GradScaler | None = None,
        compile_model: bool = False,
    ):
        self.eager_model = model
        self.model = torch.compile(model) if compile_model else model
        self.compiled = compile_model
        self._checked: set[str] = set()  # modes ("train", "eval") whose compiled first call succeeded
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.device = device
        self.dtype = dtype
        self.grad_clip = grad_clip
        self.memory_format = memory_format
        self.scaler = scaler if scaler is not None else make_grad_scaler(device, dtype)
        self._foreach = True if device.type in ("cuda", "cpu") else None
        self.loss_sum = torch.zeros((), device=device)
        self.iterations = 0

    def to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``data`` and ``target`` of a batch on the device, ``data`` in the step's memory format."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        if data.ndim == 5 and self.memory_format != torch.contiguous_format:
            data = data.contiguous(memory_format=self.memory_format)
        return data, target

    def __call__(self, batch: dict) -> torch.Tensor:
        """Train on ``batch``; returns the detached loss (a device tensor, not read back)."""
        data, target = self.to_device(batch)
        loss = self._guarded("train", self._train, data, target)
        self.loss_sum += loss
        self.iterations += 1
        return loss

    def _train(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype is not None, self.dtype):
            loss = self.loss_fn(self.model(data), target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)  # fused optimisers take the inf check without a sync
            self.scaler.update()
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
        return loss.detach()

    def _clip(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.eager_model.parameters(), self.grad_clip, foreach=self._foreach)

    def evaluate(self, batch: dict) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``(outputs, target, loss)`` of ``batch`` without gradients; nothing is read back."""
        data, target = self.to_device(batch)
        return self._guarded("eval", self._evaluate, data, target)

    def _evaluate(self, data: torch.Tensor, target: torch.Tensor):
        with torch.no_grad(), autocast(self.device, self.dtype is not None, self.dtype):
            out = self.model(data)
            loss = self.loss_fn(out, target)
        return out, target, loss.detach()

    def _guarded(self, mode: str, fn: Callable, data: torch.Tensor, target: torch.Tensor):
        """``fn(data, target)``; on the first compiled call of ``mode``, fall back to eager on failure."""
        if not self.compiled or mode in self._checked:
            return fn(data, target)
        try:
            result = fn(data, target)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compiler errors come in many types (dynamo, inductor, a missing C compiler)
            message = (str(exc).strip().splitlines() or [""])[0][:200]
            log.warning("torch.compile failed (%s: %s); continuing without compiling", type(exc).__name__, message)
            self.model, self.compiled = self.eager_model, False
            return fn(data, target)  # zero_grad comes first, so nothing of the failed attempt remains
        self._checked.add(mode)
        return result

    def pop_mean_loss(self) -> float:
        """Mean training loss since the last call (one host synchronisation), then reset."""
        total, count = self.loss_sum.item(), self.iterations
        self.loss_sum.zero_()
        self.iterations = 0
        return total / max(count, 1)
