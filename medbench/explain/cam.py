"""Grad-CAM target layers and class activation maps for any registry model.

pytorch-grad-cam computes the maps. This module finds the layer (the registry's
`gradcam_layer`, or an automatic default), works out how that layer lays out its output,
and turns token or channels-last outputs into the `(B, C, h, w)` maps the library expects.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

from medbench.errors import MedbenchError, unknown_name_error

__all__ = [
    "CAM_METHODS",
    "LayerOutput",
    "LayerProbe",
    "TargetLayer",
    "compute_cam",
    "find_target_layer",
    "make_cam",
    "probe_layers",
]

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}

# Two probe inputs of one aspect ratio, the second twice the side of the first. A spatial
# axis of a layer's output grows about 2x with the input, a little more where the model
# pads to a multiple of its stride. A token axis grows about 4x, and channel axes stay.
PROBE_SIZE = (64, 96)
PROBE_SCALE = 2
SPATIAL_GROWTH = (1.5, 3.0)
TOKEN_GROWTH = (PROBE_SCALE**2 * 0.6, PROBE_SCALE**2 * 1.8)
# How many candidate layers an unknown-layer error lists.
LISTED_CANDIDATES = 10


@dataclass(frozen=True)
class LayerOutput:
    """Output layout of a module.

    `layout` is `channels_first` (B, C, h, w), `channels_last` (B, h, w, C) or `tokens`
    (B, N, C) with N = h * w; `shape` is the output shape at the first probe input.
    """

    layout: str
    shape: tuple[int, ...]

    @property
    def spatial_size(self) -> tuple[int, int]:
        if self.layout == "channels_first":
            return self.shape[2], self.shape[3]
        if self.layout == "channels_last":
            return self.shape[1], self.shape[2]
        return _token_grid(self.shape[1], PROBE_SIZE)


@dataclass(frozen=True)
class TargetLayer:
    """The module Grad-CAM reads, its dotted name, and its output layout."""

    name: str
    module: nn.Module
    output: LayerOutput
    automatic: bool

    def reshape_transform(self, input_size: tuple[int, int]):
        """Return pytorch-grad-cam's `reshape_transform` for inputs of `input_size` (H, W), or `None`."""
        if self.output.layout == "channels_first":
            return None
        if self.output.layout == "channels_last":
            return lambda tensor: tensor.permute(0, 3, 1, 2)

        def tokens_to_map(tensor: torch.Tensor) -> torch.Tensor:
            h, w = _token_grid(tensor.shape[1], input_size)
            return tensor.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], h, w)

        return tokens_to_map


def _token_grid(tokens: int, input_size: Sequence[int]) -> tuple[int, int]:
    # The factor pair h * w = tokens whose aspect ratio is closest to the input's.
    ratio = math.log(input_size[0] / input_size[1])
    pairs = [(h, tokens // h) for h in range(1, tokens + 1) if tokens % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - ratio))


def _grew(small: int, large: int, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= large / small <= bounds[1]


def _classify(small: tuple[int, ...], large: tuple[int, ...]) -> str | None:
    """Layout of an output of shape `small` at the first probe and `large` at the second.

    Models that resize every input to one internal size give the same shape at both
    probes, so there a square pair of axes marks the spatial ones.
    """
    if small[0] != 1 or large[0] != 1 or len(small) != len(large):
        return None  # the batch axis moved (windows, heads): not one map per image
    if len(small) == 4:
        same_size = small == large
        if small[1] == large[1] and _grew(small[2], large[2], SPATIAL_GROWTH) and _grew(small[3], large[3], SPATIAL_GROWTH):
            return "channels_first"
        if small[3] == large[3] and _grew(small[1], large[1], SPATIAL_GROWTH) and _grew(small[2], large[2], SPATIAL_GROWTH):
            return "channels_last"
        if same_size and small[2] == small[3]:
            return "channels_first"
        if same_size and small[1] == small[2]:
            return "channels_last"
    if len(small) == 3:
        if small[2] == large[2] and _grew(small[1], large[1], TOKEN_GROWTH):
            return "tokens"
        if small == large and math.isqrt(small[1]) ** 2 == small[1]:
            return "tokens"
    return None


@dataclass(frozen=True)
class LayerProbe:
    """Output layouts of a model's submodules, measured once by `probe_layers`.

    Attributes:
        layouts: dotted name -> layout, for the submodules whose output is a spatial map.
        order: all submodule names in the order their forward calls finished.
        num_classes: logit channels K of the model.
    """

    layouts: dict[str, LayerOutput]
    order: list[str]
    num_classes: int


def probe_layers(model: nn.Module, in_channels: int = 3) -> LayerProbe:
    """Run two probe inputs through `model` in eval mode and classify every submodule's output.

    Left out of `layouts` are outputs that a later operation changes in place (Grad-CAM
    would read the changed values) and modules called more than once per forward pass
    (Grad-CAM keeps one activation per layer).
    """
    names = {module: name for name, module in model.named_modules() if name}
    shapes: list[dict[str, tuple[int, ...]]] = [{}, {}]
    changed: set[str] = set()
    called_again: set[str] = set()
    order: list[str] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    for probe, scale in enumerate((1, PROBE_SCALE)):
        records: list[tuple[str, torch.Tensor, int]] = []

        def record(module, _inputs, output):
            if isinstance(output, torch.Tensor):
                records.append((names[module], output, output._version))

        handles = [module.register_forward_hook(record) for module in names]
        try:
            with torch.no_grad():
                logits = model(torch.zeros(1, in_channels, PROBE_SIZE[0] * scale, PROBE_SIZE[1] * scale, device=device))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        for name, output, version in records:
            if name in shapes[probe]:
                called_again.add(name)
            shapes[probe].setdefault(name, tuple(output.shape))
            if output._version != version:
                changed.add(name)
        if probe == 0:
            order = list(dict.fromkeys(name for name, _, _ in records))

    layouts = {}
    for name in order:
        if name in changed or name in called_again or name not in shapes[1]:
            continue
        layout = _classify(shapes[0][name], shapes[1][name])
        if layout is not None:
            layouts[name] = LayerOutput(layout, shapes[0][name])
    return LayerProbe(layouts, order, int(logits.shape[1]))


def find_target_layer(
    model: nn.Module, name: str | None = None, in_channels: int = 3, probe: LayerProbe | None = None
) -> TargetLayer:
    """Find the layer whose output Grad-CAM uses.

    Args:
        model: a registry model, mapping (B, in_channels, H, W) to logits (B, K, H, W).
        name: dotted module name (`model.get_submodule(name)`), usually the registry's
            `ModelInfo.gradcam_layer`. `None` picks the last module, in forward order,
            whose output is a spatial feature map: (B, C, h, w), (B, h, w, C) or tokens
            (B, h * w, C) with h and w above 1. That output must stay unchanged by later
            in-place operations, and C must differ from K because outputs with K
            channels are taken for logits.
        in_channels: channels of the model's input.
        probe: the result of `probe_layers(model)`, to reuse; measured here when `None`.

    Raises:
        MedbenchError: `name` is not a module of `model` (the message lists the closest
            names), or its output is not a spatial feature map.
    """
    probe = probe or probe_layers(model, in_channels)
    layouts, order, num_classes = probe.layouts, probe.order, probe.num_classes

    if name is None:
        candidates = [
            n for n in order
            if n in layouts and min(layouts[n].spatial_size) > 1 and _channels(layouts[n]) != num_classes
        ]
        if not candidates:
            raise MedbenchError(
                f"{type(model).__name__} has no module with a spatial feature map output; set its "
                "registry entry's gradcam_layer or pass --layer."
            )
        name = candidates[-1]
        return TargetLayer(name, model.get_submodule(name), layouts[name], automatic=True)

    all_names = [n for n, _ in model.named_modules() if n]
    if name not in all_names:
        close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.6)
        spatial = [n for n in order if n in layouts][-LISTED_CANDIDATES:]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise MedbenchError(
            f"{type(model).__name__} has no module named {name!r}.{hint} Modules with a spatial "
            f"feature map output, last {len(spatial)} in forward order: {', '.join(spatial)}."
        )
    if name not in layouts:
        raise MedbenchError(
            f"The output of module {name!r} is not a spatial feature map (B, C, h, w), (B, h, w, C) or "
            "tokens (B, h * w, C), computed once per forward pass and left unchanged by later layers; choose another layer, for example "
            f"{', '.join(repr(n) for n in [n for n in order if n in layouts][-3:])}."
        )
    return TargetLayer(name, model.get_submodule(name), layouts[name], automatic=False)


def _channels(output: LayerOutput) -> int:
    return output.shape[1] if output.layout == "channels_first" else output.shape[-1]


def make_cam(model: nn.Module, layer: TargetLayer, method: str, input_size: tuple[int, int]):
    """Build pytorch-grad-cam's `method` (`gradcam` or `gradcam++`) on `layer` for inputs of `input_size`.

    Call `.activations_and_grads.release()` on the result when done, to remove its hooks.
    """
    if method not in CAM_METHODS:
        raise unknown_name_error("CAM method", method, CAM_METHODS)
    return CAM_METHODS[method](model, [layer.module], reshape_transform=layer.reshape_transform(input_size))


def compute_cam(cam, image: torch.Tensor, class_index: int, region: np.ndarray) -> np.ndarray:
    """Compute the class activation map of one image for the logits of `class_index` summed over `region`.

    Args:
        cam: a CAM object from `make_cam`.
        image: normalized input (C, H, W).
        class_index: logit channel to explain, 0..K-1.
        region: (H, W) boolean mask of the pixels whose logits are summed.

    Returns:
        (H, W) float32 map scaled to [0, 1] by pytorch-grad-cam; all zeros when no
        activation raises the target.
    """
    target = SemanticSegmentationTarget(class_index, region.astype(np.float32))
    return cam(input_tensor=image.unsqueeze(0), targets=[target])[0]
