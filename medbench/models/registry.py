"""Model registry: one builder signature, one metadata record per model.

Every architecture module registers its builders with `register_model`. Builders take
`(in_channels, num_classes, **overrides)` and return an `nn.Module` that maps a float
`(B, C, H, W)` batch to raw logits `(B, K, H, W)` at the input size, for any H and W.
Pretrained weights are described apart from the architecture (`PretrainedSource`) and
loaded by `create_model`, so no other module branches on model names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medbench.errors import MedbenchError, unknown_name_error

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "PretrainedSource",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
]

log = logging.getLogger(__name__)

FAMILIES = ("SMA", "GP-VM", "peer")

Builder = Callable[..., nn.Module]
KeyMap = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PretrainedSource:
    """Where a model's ImageNet weights come from and how their keys map onto the model.

    Exactly one of `hub_id` (a Hugging Face hub repository, with `filename` and a pinned
    `revision`) or `url` (with its `sha256`) is set. `key_map` turns the downloaded state
    dict into keys of the full model; `None` means the keys already match.
    """

    description: str
    hub_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    key_map: KeyMap | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.hub_id is None) == (self.url is None):
            raise ValueError(f"PretrainedSource {self.description!r} needs exactly one of hub_id or url.")
        if self.hub_id is not None and not self.filename:
            raise ValueError(f"PretrainedSource {self.description!r}: hub_id needs a filename.")

    @property
    def location(self) -> str:
        if self.hub_id is not None:
            revision = self.revision or "main"
            return f"https://huggingface.co/{self.hub_id}/resolve/{revision}/{self.filename}"
        return str(self.url)


@dataclass(frozen=True)
class ModelInfo:
    """Registry metadata of one model.

    Attributes:
        name: registry name, lower case with underscores (`swinunet`).
        family: `SMA` (specialized medical architecture), `GP-VM` (general-purpose
            vision model) or `peer` (classic baseline outside the reference study).
        published_params_m: parameter count in millions reported by `params_source`,
            for 2-class output at `default_input_size`.
        params_source: the publication or repository that reports that count.
        default_input_size: side of the square input the model was designed for.
        gradcam_layer: dotted name of the module whose output Grad-CAM uses, or `None`
            to pick the last module with a spatial feature map.
        pretrained: ImageNet weights of the encoder, or `None` if the model is trained
            from scratch.
        allow_amp: whether mixed precision is allowed (the reference study trained
            SegNeXt in full precision).
    """

    name: str
    family: str
    published_params_m: float
    params_source: str
    default_input_size: int
    builder: Builder = field(compare=False, repr=False)
    gradcam_layer: str | None = None
    pretrained: PretrainedSource | None = None
    allow_amp: bool = True

    def as_dict(self) -> dict[str, object]:
        """Return the JSON-serializable metadata (without the builder)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "builder"}
        data["pretrained"] = self.pretrained.location if self.pretrained else None
        return data


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    family: str,
    published_params_m: float,
    params_source: str,
    default_input_size: int,
    gradcam_layer: str | None = None,
    pretrained: PretrainedSource | None = None,
    allow_amp: bool = True,
) -> Callable[[Builder], Builder]:
    """Register the decorated builder under its function name, with its metadata."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorator(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice.")
        _REGISTRY[name] = ModelInfo(
            name=name,
            family=family,
            published_params_m=published_params_m,
            params_source=params_source,
            default_input_size=default_input_size,
            builder=builder,
            gradcam_layer=gradcam_layer,
            pretrained=pretrained,
            allow_amp=allow_amp,
        )
        return builder

    return decorator


def list_models(family: str | None = None) -> list[str]:
    """Return the sorted names of registered models, optionally of one family."""
    _import_architectures()
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def get_model_info(name: str) -> ModelInfo:
    """Return the metadata of model `name`; unknown names raise with the closest matches."""
    _import_architectures()
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, _REGISTRY)
    return _REGISTRY[name]


def create_model(
    name: str,
    in_channels: int = 3,
    num_classes: int = 2,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **overrides: object,
) -> nn.Module:
    """Build registry model `name`.

    Args:
        name: a name from `list_models()`.
        in_channels: channels of the input image (3 for RGB).
        num_classes: output channels K, background included (2 for a binary task).
        pretrained: load the registry's ImageNet weights into the encoder. They are
            downloaded once into the Hugging Face or torch hub cache; offline, the error
            names the file to download and where to put it.
        weights: a local weight file to load instead of downloading (implies pretrained).
        overrides: builder keyword arguments; `None` values are dropped so that unset
            command-line options never replace a model's own defaults.

    Returns:
        A module mapping `(B, in_channels, H, W)` to logits `(B, num_classes, H, W)`.

    Example:
        >>> model = create_model("unet", in_channels=3, num_classes=2)
        >>> model(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """
    info = get_model_info(name)
    if in_channels < 1:
        raise MedbenchError(f"in_channels must be at least 1, got {in_channels}.")
    if num_classes < 2:
        raise MedbenchError(
            f"num_classes must be at least 2 (background included), got {num_classes}."
        )
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    model = info.builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
    if pretrained or weights is not None:
        from medbench.models.pretrained import load_pretrained

        if info.pretrained is None:
            raise MedbenchError(
                f"Model {name!r} has no pretrained weights in the registry; it trains from "
                "scratch. Drop --pretrained/--weights for this model."
            )
        load_pretrained(model, info.pretrained, weights)
    return model


def _import_architectures() -> None:
    # Importing the package registers every architecture module exactly once.
    import medbench.models  # noqa: F401
