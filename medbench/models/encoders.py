"""Feature-pyramid encoders shared by several decoders, and their ImageNet weight sources."""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from torch import nn

from medbench.models.layers import pad_to_multiple
from medbench.models.registry import PretrainedSource

__all__ = ["PaddedSmpModel", "TimmPyramid", "prefixed_key_map", "smp_encoder_source", "timm_hub_source"]


class TimmPyramid(nn.Module):
    """A timm backbone that returns its four stage outputs at strides 4, 8, 16 and 32.

    The backbone keeps timm's own module names (no `features_only` wrapper, which renames
    `stages.0` to `stages_0`), so timm checkpoints load with a plain key prefix. The
    classifier head is removed.

    Args:
        model_name: timm architecture name, e.g. `convnext_small`.
        in_channels: input image channels.
        drop_path_rate: stochastic depth rate of the backbone.
    """

    def __init__(self, model_name: str, in_channels: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.model = timm.create_model(
            model_name, pretrained=False, in_chans=in_channels, num_classes=0,
            drop_path_rate=drop_path_rate,
        )
        self.model.prune_intermediate_layers(indices=4, prune_head=True)
        self.out_channels = [info["num_chs"] for info in self.model.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, intermediates_only=True)


def prefixed_key_map(prefix: str, skip: tuple[str, ...] = ("head.",)):
    """Return a key map that puts `prefix` before every upstream key, dropping keys starting with `skip`."""

    def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"{prefix}{k}": v for k, v in state.items() if not k.startswith(skip)}

    return key_map


def smp_encoder_source(encoder_name: str, description: str, prefix: str) -> PretrainedSource:
    """Describe smp's ImageNet checkpoint of `encoder_name`, reusing smp's pinned hub commit."""
    hub = smp_encoders[encoder_name]["pretrained_settings"]["imagenet"]
    return PretrainedSource(
        description=description,
        hub_id=hub["repo_id"],
        filename="model.safetensors",
        revision=hub["revision"],
        key_map=prefixed_key_map(prefix, skip=()),
    )


def timm_hub_source(hub_id: str, description: str, prefix: str) -> PretrainedSource:
    """Describe a timm hub checkpoint whose keys load under `prefix` + `model.`."""
    # NOTE: no revision is pinned because the hub commit could not be looked up offline;
    # the hub cache records the resolved commit on first download.
    return PretrainedSource(
        description=description,
        hub_id=hub_id,
        filename="model.safetensors",
        key_map=prefixed_key_map(f"{prefix}model."),
    )


class PaddedSmpModel(nn.Module):
    """A segmentation-models-pytorch model under `net`, for any input size.

    Inputs are zero-padded to a multiple of `multiple` (the model's total downsampling)
    and the logits are cropped back to the input size.
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.multiple)
        return self.net(x)[..., :h, :w]
