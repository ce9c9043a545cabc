"""Explain a trained run: Grad-CAM maps of its worst and of random samples, logged to the run.

The run's `config.<field>` params name the dataset and fold, `checkpoints/best.pt` (or a
logged or registered model) gives the weights, and `metrics/per_image_metrics.csv` the
Dice of every evaluated image. Figures, a scores CSV and mean scores go back to the run.
"""

from __future__ import annotations

import csv
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medbench import tracking
from medbench.data import PreparedDataset, SegmentationDataset, prepare_dataset, to_tensor
from medbench.data.splits import load_splits
from medbench.errors import MedbenchError
from medbench.explain.cam import CAM_METHODS, compute_cam, find_target_layer, make_cam
from medbench.explain.figures import ExplainedSample, save_grid, save_sample
from medbench.explain.scores import cam_iou, energy_pointing
from medbench.metrics import nan_mean
from medbench.models import create_model, get_model_info
from medbench.training.checkpoint import load_checkpoint
from medbench.training.evaluate import evaluate
from medbench.training.losses import SegmentationLoss
from medbench.training.run import resolve_device

__all__ = ["ExplainConfig", "ExplainResult", "explain", "explain_run"]

log = logging.getLogger(__name__)

# Artifact folder and metric prefix per method; MLflow metric keys cannot contain "+".
PREFIXES = {"gradcam": "gradcam", "gradcam++": "gradcam_pp"}
CHECKPOINT_ARTIFACT = "checkpoints/best.pt"
PER_IMAGE_ARTIFACT = "metrics/per_image_metrics.csv"
SPLITS_ARTIFACT = "data/splits.json"
EVALUATION_BATCH_SIZE = 8


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of one explanation. Field names are the flags of `medbench explain`.

    Attributes:
        run_id: MLflow run trained by `medbench train`; its checkpoint is explained.
        model_uri: `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/ID/model`; the
            model is explained on the data of the run that logged it. Set exactly one of
            `run_id` and `model_uri`.
        samples: N, the number of worst images by Dice and, again, of random images.
        method: `gradcam` or `gradcam++`.
        classes: foreground class indices to explain, 1..K-1; `None` for all.
        layer: dotted module name of the target layer; `None` for the registry's
            `gradcam_layer`, or the automatic default where the registry has none.
        seed: seed of the random sample choice.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
    """

    run_id: str | None = None
    model_uri: str | None = None
    samples: int = 4
    method: str = "gradcam"
    classes: tuple[int, ...] | None = None
    layer: str | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if (self.run_id is None) == (self.model_uri is None):
            raise MedbenchError("Pass exactly one of --run-id and --model-uri.")
        if self.samples < 1:
            raise MedbenchError(f"samples must be at least 1, got {self.samples}.")
        if self.method not in CAM_METHODS:
            raise MedbenchError(f"method must be one of {', '.join(CAM_METHODS)}, got {self.method!r}.")

    @property
    def prefix(self) -> str:
        return PREFIXES[self.method]


@dataclass(frozen=True)
class ExplainResult:
    """Outcome of one explanation: the run that received the maps, and their scores.

    Attributes:
        run_id: run that received the artifacts and metrics.
        layer: target layer used.
        metrics: logged mean scores, keyed `<prefix>/<score>[/<class>]`.
        rows: the scores CSV, one dict per sample and class.
    """

    run_id: str
    layer: str
    metrics: dict[str, float]
    rows: list[dict[str, object]]


@dataclass(frozen=True)
class _RunSettings:
    model: str
    dataset: str
    data_dir: str | None
    image_size: int
    max_images: int | None
    num_folds: int
    split_seed: int
    fold: int


def explain_run(run_id: str, samples: int = 4, **options: object) -> ExplainResult:
    """Explain run `run_id` with `samples` worst and `samples` random images; see `ExplainConfig` for `options`."""
    return explain(ExplainConfig(run_id=run_id, samples=samples, **options))


def explain(config: ExplainConfig) -> ExplainResult:
    """Compute Grad-CAM maps and scores for a run and log them under `<prefix>/` of that run.

    Artifacts: one PNG per sample (`worst_00_<id>.png`, `random_00_<id>.png`), `grid.png`
    and `scores.csv` with CAM-IoU and energy pointing game per sample and class. Metrics:
    their means `<prefix>/cam_iou`, `<prefix>/energy_pointing`, per class
    `<prefix>/cam_iou/<class>`, the mean ground-truth area share `<prefix>/gt_share` (the
    pointing score of a uniform map) and the counts of undefined scores
    `<prefix>/cam_iou_excluded`, `<prefix>/energy_pointing_excluded`. The prefix is
    `gradcam` or `gradcam_pp`. Explaining a run again replaces files of the same names.
    """
    run_id = config.run_id or tracking.model_source_run(str(config.model_uri))
    settings = _run_settings(tracking.get_run(run_id))
    device = resolve_device(config.device)

    with tempfile.TemporaryDirectory() as tmp:
        model = _load_model(config, run_id, Path(tmp)).to(device)
        prepared = _prepared_dataset(settings, run_id, Path(tmp))
    classes = _check_classes(config.classes, prepared.class_names)
    _, val_indices = prepared.fold_indices(settings.fold)
    dice = _dice_per_image(run_id, model, prepared, val_indices, device)
    chosen = _choose_samples(val_indices, dice, prepared.ids, config.samples, config.seed)

    layer = find_target_layer(model, config.layer or get_model_info(settings.model).gradcam_layer)
    log.info("Explaining run %s with %s on layer %s (%s)", run_id, config.method, layer.name, layer.output.layout)
    explained = _explain_samples(model, layer, config.method, prepared, chosen, dice, classes, device)
    rows = _score_rows(explained, prepared.class_names)
    metrics = _mean_scores(rows, config.prefix, [prepared.class_names[k] for k in classes])

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rank_in_group: dict[str, int] = {}
        for sample in explained:
            rank = rank_in_group[sample.group] = rank_in_group.get(sample.group, -1) + 1
            save_sample(folder / f"{sample.group}_{rank:02d}_{_file_name(sample.id)}.png", sample,
                        prepared.class_names)
        save_grid(folder / "grid.png", explained, prepared.class_names)
        _write_csv(folder / "scores.csv", rows)
        tags = {
            f"{config.prefix}.layer": layer.name,
            f"{config.prefix}.layer_automatic": layer.automatic,
            f"{config.prefix}.samples": config.samples,
            f"{config.prefix}.seed": config.seed,
            f"{config.prefix}.model": config.model_uri or CHECKPOINT_ARTIFACT,
        }
        tracking.log_to_run(run_id, metrics, tags, folder, config.prefix)
    return ExplainResult(run_id, layer.name, metrics, rows)


def _run_settings(run) -> _RunSettings:
    params = run.data.params

    def value(field: str) -> str | None:
        key = f"config.{field}"
        if key not in params:
            raise MedbenchError(
                f"Run {run.info.run_id} has no param {key!r}: it was not made by `medbench train`, "
                "which records its configuration as config.<field> params."
            )
        return None if params[key] in ("None", "") else params[key]

    def integer(field: str) -> int | None:
        text = value(field)
        return None if text is None else int(text)

    return _RunSettings(
        model=str(value("model")),
        dataset=str(value("dataset")),
        data_dir=value("data_dir"),
        image_size=int(value("image_size")),
        max_images=integer("max_images"),
        num_folds=int(value("num_folds")),
        split_seed=int(value("split_seed")),
        fold=int(value("fold")),
    )


def _load_model(config: ExplainConfig, run_id: str, tmp: Path) -> nn.Module:
    """Load the model of `config.model_uri`, else the run's best checkpoint, else the model logged by the run."""
    if config.model_uri is not None:
        return tracking.load_model(config.model_uri)
    checkpoint = tracking.download_run_artifact(run_id, CHECKPOINT_ARTIFACT, tmp)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        model = create_model(state["model_name"], state.get("in_channels", 3), state["num_classes"])
        model.load_state_dict(state["model"])
        return model
    try:
        return tracking.load_model(f"runs:/{run_id}/model")
    except MedbenchError as error:
        raise MedbenchError(
            f"Run {run_id} has no model: no {CHECKPOINT_ARTIFACT} artifact and no logged model named 'model'. "
            "Explain a run that `medbench train` finished, or pass --model-uri."
        ) from error


def _prepared_dataset(settings: _RunSettings, run_id: str, tmp: Path) -> PreparedDataset:
    """The run's prepared dataset; its folds must equal the run's logged `splits.json`."""
    prepared = prepare_dataset(
        settings.dataset, settings.data_dir, settings.image_size, settings.max_images,
        settings.num_folds, settings.split_seed, progress=False,
    )
    logged = tracking.download_run_artifact(run_id, SPLITS_ARTIFACT, tmp)
    if logged is not None:
        run_fold = load_splits(logged)["folds"][settings.fold]["val"]
        if sorted(run_fold) != sorted(prepared.splits["folds"][settings.fold]["val"]):
            raise MedbenchError(
                f"The data of {settings.dataset} changed since run {run_id}: fold {settings.fold} of "
                f"{prepared.path / 'splits.json'} differs from the run's {SPLITS_ARTIFACT}. Restore the "
                "dataset files the run was trained on."
            )
    return prepared


def _check_classes(classes: tuple[int, ...] | None, class_names: list[str]) -> list[int]:
    foreground = list(range(1, len(class_names)))
    if classes is None:
        return foreground
    for class_index in classes:
        if class_index not in foreground:
            raise MedbenchError(
                f"Class index {class_index} is out of range: the run's classes are "
                f"{', '.join(f'{k} {n}' for k, n in enumerate(class_names))}; choose foreground classes "
                f"{foreground[0]}..{foreground[-1]}."
            )
    return list(dict.fromkeys(classes))


def _dice_per_image(
    run_id: str, model: nn.Module, prepared: PreparedDataset, indices: list[int], device: torch.device
) -> dict[int, float]:
    """Dice over all foreground classes of each evaluated image, from the run's per-image CSV if it has one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.download_run_artifact(run_id, PER_IMAGE_ARTIFACT, Path(tmp))
        if path is not None:
            with open(path, newline="") as handle:
                by_id = {row["id"]: float(row["dice"]) for row in csv.DictReader(handle)}
            position = {sample_id: i for i, sample_id in enumerate(prepared.ids)}
            if set(by_id) == {prepared.ids[i] for i in indices}:
                return {position[sample_id]: value for sample_id, value in by_id.items()}
            log.warning("Run %s: %s does not list the images of its fold; evaluating again", run_id, PER_IMAGE_ARTIFACT)
    loader = DataLoader(SegmentationDataset(prepared, indices), batch_size=EVALUATION_BATCH_SIZE)
    evaluation = evaluate(model, loader, prepared.num_classes, prepared.class_names, device,
                          SegmentationLoss(prepared.num_classes))
    rows = evaluation.per_image(prepared.ids)
    return {index: float(row["dice"]) for index, row in zip(evaluation.indices, rows)}


def _choose_samples(
    indices: list[int], dice: dict[int, float], ids: list[str], count: int, seed: int
) -> list[tuple[int, str]]:
    """`count` images with the lowest Dice (undefined Dice last), then `count` random others.

    Ties in Dice are broken by sample id, so the choice depends only on the data and `seed`.
    """
    ordered = sorted(indices, key=lambda i: (np.isnan(dice[i]), dice[i] if not np.isnan(dice[i]) else 0.0, ids[i]))
    worst = ordered[:count]
    rest = sorted(set(indices) - set(worst), key=lambda i: ids[i])
    rng = np.random.default_rng(seed)
    random = [rest[i] for i in rng.choice(len(rest), size=min(count, len(rest)), replace=False)] if rest else []
    return [(i, "worst") for i in worst] + [(i, "random") for i in random]


def _explain_samples(
    model: nn.Module,
    layer,
    method: str,
    prepared: PreparedDataset,
    chosen: list[tuple[int, str]],
    dice: dict[int, float],
    classes: list[int],
    device: torch.device,
) -> list[ExplainedSample]:
    """Predict each chosen image and compute one map per class over the class's predicted region.

    Where the model predicts no pixel of the class, the map explains the class's logits
    over the whole image instead (column `target_region` of the scores CSV).
    """
    images, masks = prepared.images, prepared.masks
    size = (prepared.manifest["settings"]["image_size"],) * 2
    cam = make_cam(model, layer, method, size)
    explained = []
    try:
        for index, group in chosen:
            image = np.asarray(images[index])
            x = to_tensor(image).to(device)
            with torch.no_grad():
                prediction = model(x.unsqueeze(0))[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
            cams = {}
            for class_index in classes:
                region = prediction == class_index
                cams[class_index] = compute_cam(cam, x, class_index, region if region.any() else np.ones_like(region))
            explained.append(ExplainedSample(
                id=prepared.ids[index], group=group, dice=dice[index], image=image,
                target=np.asarray(masks[index]), prediction=prediction, cams=cams,
            ))
    finally:
        cam.activations_and_grads.release()
    return explained


def _score_rows(samples: list[ExplainedSample], class_names: list[str]) -> list[dict[str, object]]:
    rows = []
    for sample in samples:
        for class_index, cam in sample.cams.items():
            truth = sample.target == class_index
            rows.append({
                "id": sample.id,
                "group": sample.group,
                "dice": sample.dice,
                "class": class_names[class_index],
                "class_index": class_index,
                "target_region": "predicted" if (sample.prediction == class_index).any() else "whole_image",
                "gt_share": float(truth.mean()),
                "cam_iou": cam_iou(cam, truth),
                "energy_pointing": energy_pointing(cam, truth),
            })
    return rows


def _mean_scores(rows: list[dict[str, object]], prefix: str, class_names: list[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for score in ("cam_iou", "energy_pointing"):
        metrics[tracking.metric_key(prefix, score)], excluded = nan_mean(r[score] for r in rows)
        metrics[tracking.metric_key(prefix, f"{score}_excluded")] = float(excluded)
        for class_name in class_names:
            values = [r[score] for r in rows if r["class"] == class_name]
            metrics[tracking.metric_key(prefix, score, class_name)], _ = nan_mean(values)
    metrics[tracking.metric_key(prefix, "gt_share")], _ = nan_mean(r["gt_share"] for r in rows)
    return metrics


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _file_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)
