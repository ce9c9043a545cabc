"""Segmentation models behind one registry. Importing this package registers them all."""

from medbench.models import (  # noqa: F401  (registration)
    attention_unet,
    deeplabv3plus,
    hiformer,
    internimage,
    missformer,
    segformer,
    segnext,
    swin_umamba,
    swinunet,
    transnext,
    transunet,
    ukan,
    unet,
    unetplusplus,
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
