"""Peak CPU memory of a forward pass, on modules whose allocations can be counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medbench.efficiency import _peak_memory_mb, measure_efficiency

MIB = 2**20


class TwoTemporaries(nn.Module):
    """Module with a 1000-float weight and a 24-float buffer, whose forward pass keeps two input-sized tensors alive."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1000))
        self.register_buffer("offset", torch.zeros(24))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2) + 1


def test_cpu_peak_counts_weights_input_and_live_temporaries():
    example = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        peak = _peak_memory_mb(TwoTemporaries(), example)
    input_bytes = 3 * 32 * 32 * 4
    # weights and buffer, the input, then the product and the sum alive together
    expected = (1000 * 4 + 24 * 4 + input_bytes + 2 * input_bytes) / MIB
    # Up to 1 KiB more for the scalar operands, which the profiler also records.
    assert peak == pytest.approx(expected, abs=1024 / MIB)


def test_cpu_peak_of_registry_model_exceeds_its_weights():
    result = measure_efficiency("unet", 64)
    weight_mib = result.params * 4 / MIB
    assert result.peak_memory_mb > weight_mib
    assert result.peak_memory_mb < weight_mib + 200
