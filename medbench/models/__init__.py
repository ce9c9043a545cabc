"""Segmentation models behind one registry. Importing this package registers them all."""

from medbench.models import (  # noqa: F401  (registration)
    deeplabv3plus,
    internimage,
    segnext,
    transnext,
    segformer,
    swinunet,
    unet,
    upernet,
    vwformer,
)
from medbench.models.registry import (
    FAMILIES,
    ModelInfo,
    PretrainedSource,
    create_model,
    get_model_info,
    list_models,
    register_model,
)

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "PretrainedSource",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
]
