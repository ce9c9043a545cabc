"""Grad-CAM for every registry model: target layers, maps, scores, figures and MLflow records."""

from medbench.explain.cam import CAM_METHODS, TargetLayer, compute_cam, find_target_layer, make_cam
from medbench.explain.runner import ExplainConfig, ExplainResult, explain, explain_run
from medbench.explain.scores import cam_iou, energy_pointing, otsu_mask

__all__ = [
    "CAM_METHODS",
    "ExplainConfig",
    "ExplainResult",
    "TargetLayer",
    "cam_iou",
    "compute_cam",
    "energy_pointing",
    "explain",
    "explain_run",
    "find_target_layer",
    "make_cam",
    "otsu_mask",
]
