"""Efficiency of a registry model: parameters, MACs, latency and peak memory of one forward pass.

`compare` measures each model once per (image size, number of classes), on random weights
(the figures do not depend on trained values) and a batch of one image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from medbench.models import create_model

__all__ = ["Efficiency", "measure_efficiency"]

log = logging.getLogger(__name__)

# Seconds of repeated forward passes that `torch.utils.benchmark` spends per latency estimate.
LATENCY_MIN_RUN_S = 0.5


@dataclass(frozen=True)
class Efficiency:
    """Cost of one forward pass of a (1, 3, S, S) image.

    Attributes:
        params: number of parameters.
        macs: multiply-accumulate operations, half of the FLOPs that `FlopCounterMode`
            counts (convolutions, matrix products and attention only; element-wise
            operations are not counted).
        latency_ms: median wall-clock latency in milliseconds (`torch.utils.benchmark`).
        peak_memory_mb: peak memory of the forward pass in MiB, weights included
            (CUDA: `max_memory_allocated`; CPU: the PyTorch profiler's allocation events);
            NaN when it could not be measured.
        device: the device measured on.
        image_size: side S of the input.
    """

    params: int
    macs: float
    latency_ms: float
    peak_memory_mb: float
    device: str
    image_size: int


def measure_efficiency(
    model_name: str, image_size: int, num_classes: int = 2, device: str = "cpu"
) -> Efficiency:
    """Measure registry model `model_name` at `image_size` x `image_size` with `num_classes` outputs.

    Args:
        model_name: a name from `medbench models`.
        image_size: side of the square input in pixels.
        num_classes: output channels, background included.
        device: `cpu`, `cuda` or `cuda:N`.
    """
    target = torch.device(device)
    model = create_model(model_name, 3, num_classes).to(target).eval()
    example = torch.randn(1, 3, image_size, image_size, device=target)
    params = sum(p.numel() for p in model.parameters())

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(example)
        timer = benchmark.Timer(stmt="model(example)", globals={"model": model, "example": example})
        latency = timer.blocked_autorange(min_run_time=LATENCY_MIN_RUN_S).median * 1000
        peak = _peak_memory_mb(model, example)
    return Efficiency(params, counter.get_total_flops() / 2, latency, peak, str(target), image_size)


def _peak_memory_mb(model: torch.nn.Module, example: torch.Tensor) -> float:
    if example.device.type == "cuda":
        torch.cuda.synchronize(example.device)
        torch.cuda.reset_peak_memory_stats(example.device)
        model(example)
        torch.cuda.synchronize(example.device)
        return torch.cuda.max_memory_allocated(example.device) / 2**20
    # NOTE: PyTorch has no public peak-memory counter for the CPU allocator. The profiler's
    # allocation events are read through `kineto_results`, a private attribute (torch 2.14),
    # so a failure gives NaN.
    # The profiler's MemoryProfileTimeline gives the same figure, but its analysis ran for
    # over 10 minutes on Swin-UMamba at 512x512 (tens of thousands of scan steps). Summing
    # the allocation events in time order takes seconds.
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            model(example)
        events = sorted(
            (event.start_ns(), event.nbytes())
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        )
        allocated = peak = 0
        for _, nbytes in events:  # nbytes is negative for a release
            allocated += nbytes
            peak = max(peak, allocated)
        resident = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers(), example))
        return (resident + peak) / 2**20
    except Exception as error:  # noqa: BLE001 - any profiler failure only loses this one figure
        log.warning("Peak CPU memory of %s not measured: %s", type(model).__name__, error)
        return math.nan
