"""The per-iteration training step and the per-machine choices behind it (dtype, scaler, compile, layout)."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from vessel_seg import device as device_module
from vessel_seg.device import amp_dtype, autocast, cpu_has_fast_bf16, mixed_precision_enabled, preferred_memory_format
from vessel_seg.networks.resunet import build_network
from vessel_seg.planners.plans import NetworkTopology
from vessel_seg.trainers.losses import build_loss
from vessel_seg.trainers.optimization import build_optimizer
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.step import (
    COMPILE_MIN_ITERATIONS,
    TrainingStep,
    compile_decision,
    make_grad_scaler,
)
from vessel_seg.trainers.validation import PseudoMetrics

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
TOPOLOGY = NetworkTopology(
    dim=3,
    features_per_stage=[4, 8, 16],
    kernel_sizes=[[3, 3, 3]] * 3,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    blocks_per_stage=[1, 1, 1],
    blocks_per_stage_decoder=[1, 1],
)


def _parts(optimizer: str = "sgd"):
    """A tiny 3D ResU-Net with deep supervision, its loss, optimiser and a fixed 32^3 batch."""
    torch.manual_seed(0)
    network = build_network(TOPOLOGY, in_channels=1, num_classes=2)
    settings = TrainingSettings(optimizer=optimizer, num_workers=0)
    loss_fn = build_loss("dice_ce", network.deep_supervision, network.num_outputs)
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(2, 1, 32, 32, 32, generator=generator)
    target = (torch.rand(2, 1, 32, 32, 32, generator=generator) > 0.8).float()
    return network, settings, loss_fn, {"data": data, "target": target}


def _plain_step(network, optimizer, loss_fn, batch, grad_clip: float) -> torch.Tensor:
    """The training step as train() computed it before TrainingStep existed (fp32)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(network(batch["data"]), batch["target"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


@contextmanager
def no_host_reads(monkeypatch):
    """Every way of reading a tensor back to the host raises inside the block."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the training step")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        yield


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fp32_step_matches_the_plain_computation_exactly(optimizer):
    network, settings, loss_fn, batch = _parts(optimizer)
    reference = copy.deepcopy(network)
    reference_optimizer = build_optimizer(reference, settings)  # torch's default kernels
    step = TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU, grad_clip=settings.grad_clip)
    for _ in range(3):
        expected = _plain_step(reference, reference_optimizer, loss_fn, batch, settings.grad_clip)
        loss = step(batch)
        assert torch.equal(loss, expected)
    for a, b in zip(network.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # foreach vs per-tensor optimiser kernels


def test_mean_loss_is_read_once_per_epoch_and_resets():
    network, settings, loss_fn, batch = _parts()
    step = TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU)
    losses = [float(step(batch)) for _ in range(3)]
    assert step.pop_mean_loss() == pytest.approx(np.mean(losses), rel=1e-6)
    assert step.iterations == 0 and float(step.loss_sum) == 0.0


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16 (autocast would be emulated)")
def test_bf16_step_agrees_with_fp32_within_bf16_tolerance():
    network, settings, loss_fn, batch = _parts()
    reference = copy.deepcopy(network)
    expected = _plain_step(reference, build_optimizer(reference, settings), loss_fn, batch, settings.grad_clip)
    step = TrainingStep(
        network, build_optimizer(network, settings, CPU), loss_fn, CPU, dtype=torch.bfloat16,
        memory_format=preferred_memory_format(CPU, 3, torch.bfloat16),
    )
    network.to(memory_format=torch.channels_last_3d)
    loss = step(batch)
    assert step.scaler is None and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_step_and_evaluation_never_read_tensors_back(monkeypatch, dtype):
    if dtype is not None and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16")
    network, settings, loss_fn, batch = _parts()
    step = TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU, dtype=dtype)
    metrics = PseudoMetrics(2)
    with no_host_reads(monkeypatch):
        for _ in range(2):
            loss = step(batch)
        network.eval()
        out, target, val_loss = step.evaluate(batch)
        metrics.update(out[0].float(), target)
    assert isinstance(loss, torch.Tensor) and loss.device == CPU and not loss.requires_grad
    assert isinstance(val_loss, torch.Tensor) and step.iterations == 2
    assert 0 <= metrics.dice <= 1  # reading the metrics afterwards is the epoch's one sync


def test_fp16_step_has_a_grad_scaler_and_trains():
    network, settings, loss_fn, batch = _parts()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, fused=True)
    step = TrainingStep(network, optimizer, loss_fn, CPU, dtype=torch.float16)
    assert isinstance(step.scaler, torch.amp.GradScaler)
    before = [p.detach().clone() for p in network.parameters()]
    losses = [step(batch) for _ in range(2)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


def test_grad_scaler_only_for_fp16():
    assert make_grad_scaler(CPU, None) is None
    assert make_grad_scaler(CPU, torch.bfloat16) is None
    assert isinstance(make_grad_scaler(CPU, torch.float16), torch.amp.GradScaler)
    network, settings, loss_fn, _ = _parts()
    for dtype in (None, torch.bfloat16):
        assert TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU, dtype=dtype).scaler is None


def _cuda_bf16(monkeypatch, supported: bool) -> list:
    calls = []

    def is_bf16_supported(including_emulation: bool = True):
        calls.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return calls


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_dtype_on_cuda_depends_on_native_bf16(monkeypatch, supported, expected):
    calls = _cuda_bf16(monkeypatch, supported)
    assert amp_dtype(CUDA) == expected
    assert calls == [False]  # emulated bf16 (Volta, Turing) is slower than fp16: it does not count
    assert amp_dtype(CUDA, requested=False) is None
    assert mixed_precision_enabled(CUDA, True) and not mixed_precision_enabled(CUDA, False)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_dtype_on_cpu_depends_on_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: native)
    assert amp_dtype(CPU) == expected
    assert mixed_precision_enabled(CPU, True) == native
    assert amp_dtype(CPU, requested=False) is None
    assert amp_dtype(MPS) is None


def test_autocast_uses_the_chosen_dtype(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    with autocast(CPU, True):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(CPU, True, torch.float16):
        assert torch.get_autocast_dtype("cpu") == torch.float16
    with autocast(CPU, False):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: False)
    with autocast(CPU, True):
        assert not torch.is_autocast_enabled("cpu")


def test_memory_format_rule():
    last, plain = torch.channels_last_3d, torch.contiguous_format
    assert preferred_memory_format(CPU, 3, None) == last
    assert preferred_memory_format(CPU, 3, torch.bfloat16) == last
    assert preferred_memory_format(CUDA, 3, torch.bfloat16) == last
    assert preferred_memory_format(CUDA, 3, torch.float16) == last
    assert preferred_memory_format(CUDA, 3, None) == plain  # fp32 on CUDA: NCDHW
    assert preferred_memory_format(MPS, 3, None) == plain
    assert preferred_memory_format(CPU, 2, None) == plain
    assert preferred_memory_format(CPU, 3, None, allowed=False) == plain


def test_step_puts_5d_batches_into_its_memory_format():
    network, settings, loss_fn, batch = _parts()
    step = TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU, memory_format=torch.channels_last_3d)
    data, target = step.to_device(batch)
    assert data.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(data, batch["data"])
    assert torch.equal(target, batch["target"])


def test_compile_decision():
    long_run, short_run = COMPILE_MIN_ITERATIONS, COMPILE_MIN_ITERATIONS - 1
    assert not compile_decision("auto", CPU, 10**9).enabled
    assert not compile_decision("auto", MPS, 10**9).enabled
    assert compile_decision("auto", CUDA, long_run).enabled
    assert compile_decision("auto", CUDA, 1000 * 250).enabled  # nnU-Net's default run length
    assert not compile_decision("auto", CUDA, short_run).enabled
    assert not compile_decision("auto", CUDA, 10 * 50).enabled  # a quick test run
    assert compile_decision("on", CPU, 1).enabled and not compile_decision("off", CUDA, 10**9).enabled
    assert str(compile_decision("auto", CPU, 1)).startswith("off (auto")
    with pytest.raises(ValueError):
        compile_decision("sometimes", CUDA, 1)


def test_compile_setting_is_tri_state_and_accepts_booleans():
    assert TrainingSettings().compile == "auto"
    assert TrainingSettings(compile=True).compile == "on" and TrainingSettings(compile=False).compile == "off"
    with pytest.raises(ValueError):
        TrainingSettings(compile="maybe")
    from vessel_seg.cli.train import build_parser
    from vessel_seg.trainers.variants import variant_settings

    parse = build_parser().parse_args
    assert parse(["1", "3d_fullres", "0"]).compile is None  # not given: the variant's or the default setting
    assert variant_settings("vsTrainer", {"compile": parse(["1", "3d_fullres", "0"]).compile}).compile == "auto"
    assert parse(["1", "3d_fullres", "0", "--compile"]).compile == "on"
    assert parse(["1", "3d_fullres", "0", "--compile", "off"]).compile == "off"


def test_failed_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise RuntimeError("backend compiler failed\nlong traceback")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: Broken())
    network, settings, loss_fn, batch = _parts()
    reference = copy.deepcopy(network)
    expected = _plain_step(reference, build_optimizer(reference, settings, CPU), loss_fn, batch, settings.grad_clip)
    step = TrainingStep(network, build_optimizer(network, settings, CPU), loss_fn, CPU, compile_model=True)
    with caplog.at_level(logging.WARNING, logger="vessel_seg.trainers.step"):
        first = step(batch)
        step(batch)
        step.evaluate(batch)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "long traceback" not in warnings[0].getMessage()
    assert not step.compiled and step.model is network
    assert torch.equal(first, expected)  # the failed attempt left nothing behind


def test_optimizer_kernels_follow_the_device():
    network, settings, _, _ = _parts()
    for name in ("sgd", "adamw"):
        settings = TrainingSettings(optimizer=name)
        assert build_optimizer(network, settings, CPU).param_groups[0]["foreach"] is True
        assert build_optimizer(network, settings, CUDA).param_groups[0]["fused"] is True


def test_resumed_optimizer_keeps_this_machines_kernels():
    from vessel_seg.trainers.optimization import with_this_machines_kernels

    network, settings, loss_fn, batch = _parts()
    saved = build_optimizer(network, settings)  # e.g. saved by an older version: default kernels
    TrainingStep(network, saved, loss_fn, CPU)(batch)
    optimizer = build_optimizer(network, settings, CPU)
    optimizer.load_state_dict(with_this_machines_kernels(saved.state_dict(), optimizer))
    assert optimizer.param_groups[0]["foreach"] is True
    assert optimizer.state_dict()["state"].keys() == saved.state_dict()["state"].keys()


def test_pseudo_metrics_match_a_direct_count():
    generator = torch.Generator().manual_seed(5)
    metrics = PseudoMetrics(3)
    preds, refs = [], []
    for _ in range(2):
        logits = torch.randn(2, 3, 8, 8, 8, generator=generator)
        target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=generator).float()
        metrics.update(logits, target)
        preds.append(logits.argmax(1).numpy())
        refs.append(target[:, 0].long().numpy())
    pred, ref = np.concatenate(preds), np.concatenate(refs)
    dice = []
    for c in (1, 2):
        tp, fp, fn = ((pred == c) & (ref == c)).sum(), ((pred == c) & (ref != c)).sum(), ((pred != c) & (ref == c)).sum()
        dice.append(2 * tp / (2 * tp + fp + fn))
    assert metrics.dice == pytest.approx(np.mean(dice))
    assert len(metrics.cldice_values) == 4 and 0 <= metrics.cldice <= 1
    assert metrics.dice == pytest.approx(np.mean(dice))  # reading twice adds nothing
