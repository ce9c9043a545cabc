"""The `medbench` command line. Flags are the `TrainConfig` field names with dashes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from medbench.errors import MedbenchError

__all__ = ["main"]


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # MLproject passes unset parameters as empty strings; they mean "use the preset".
    def parse_or_none(text: str) -> Any:
        if text.strip() in ("", "none", "None"):
            return None
        return parse(text)

    parse_or_none.__name__ = parse.__name__
    return parse_or_none


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `TrainConfig`; unset ones (None) take the preset's value."""
    from medbench.config import PRESETS

    integer, real, text, boolean = _optional(int), _optional(float), _optional(str), _optional(parse_bool)
    parser.add_argument("--model", required=True, help="registry model name (see `medbench models`)")
    parser.add_argument("--dataset", required=True, help="dataset name (see `medbench datasets`)")
    parser.add_argument("--data-dir", type=text, help="folder of this dataset; default <data root>/<dataset>")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="protocol preset (default quick)")
    parser.add_argument("--fold", type=integer, help="fold evaluated by this run (default 0)")
    parser.add_argument("--num-folds", type=integer, help="number of cross-validation folds (default 5)")
    parser.add_argument("--seed", type=integer, help="training seed (default 0)")
    parser.add_argument("--split-seed", type=integer, help="seed of the fold assignment (default 0)")
    parser.add_argument("--epochs", type=integer, help="maximum epochs")
    parser.add_argument("--image-size", type=integer, help="square working resolution in pixels")
    parser.add_argument("--batch-size", type=integer, help="training batch size")
    parser.add_argument("--lr", type=real, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=real, help="AdamW weight decay")
    parser.add_argument("--patience", type=integer, help="early-stopping patience in epochs")
    parser.add_argument("--min-delta", type=real, help="smallest validation IoU gain that counts")
    parser.add_argument("--max-images", type=integer, help="use the first N images only; 0 for all")
    parser.add_argument("--amp", type=boolean, nargs="?", const=True, help="bfloat16 mixed precision on CUDA")
    parser.add_argument("--pretrained", type=boolean, nargs="?", const=True, help="load ImageNet encoder weights")
    parser.add_argument("--weights", type=text, help="local weight file instead of the download")
    parser.add_argument("--num-workers", type=integer, help="data loader worker processes (default 0)")
    parser.add_argument("--device", type=text, help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--deterministic", type=boolean, nargs="?", const=True, help="deterministic algorithms")
    parser.add_argument("--experiment", type=text, help="MLflow experiment name (default medbench)")
    parser.add_argument("--register", type=boolean, nargs="?", const=True, help="register the model (default true)")
    parser.add_argument("--channels-last", type=boolean, nargs="?", const=True,
                        help="channels-last memory format for the model and inputs (default false)")
    parser.add_argument("--compile", type=boolean, nargs="?", const=True,
                        help="run the model through torch.compile (default false)")
    parser.add_argument("--resume", type=text,
                        help="continue an interrupted run from its last checkpoint: 'last' or an MLflow run id")

    parser.add_argument("--explain", type=integer, metavar="N",
                        help="at the end, Grad-CAM for the N worst and N random test images (default 0: off)")


def parse_floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers such as `1e-4,5e-5,1e-5`; an empty string is an empty tuple."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming an Optuna study: `--study-name` and `--storage`."""
    text = _optional(str)
    parser.add_argument("--study-name", type=text, help="Optuna study name")
    parser.add_argument("--storage", type=text, help="SQLAlchemy URL of the Optuna storage (default sqlite:///optuna.db)")


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `TuneConfig` besides the training protocol; unset ones take its defaults."""
    from medbench.tuning import DEFAULT_LR_GRID

    integer, text, floats = _optional(int), _optional(str), _optional(parse_floats)
    add_study_arguments(parser)
    parser.add_argument("--sampler", type=text, help="grid (default) or tpe")
    parser.add_argument("--n-trials", type=integer, help="trial budget of tpe (default 10); grid: the grid size")
    parser.add_argument("--metric", type=text, help="objective, e.g. val/iou (default), val/dice, test/hd95")
    parser.add_argument("--lr-grid", type=parse_floats, default=DEFAULT_LR_GRID,
                        help="learning rates of the grid (default 1e-4,5e-5,1e-5)")
    parser.add_argument("--weight-decay-grid", type=floats,
                        help="weight decays of the grid (default: not searched)")
    parser.add_argument("--lr-range", type=floats, help="low,high learning rate of tpe (default 1e-5,1e-3)")
    parser.add_argument("--weight-decay-range", type=floats,
                        help="low,high weight decay of tpe (default 1e-4,1e-1)")
    parser.add_argument("--pruner", type=text, help="none (default) or median")
    parser.add_argument("--heartbeat-interval", type=integer,
                        help="seconds between heartbeats of a running trial (default 30)")
    parser.add_argument("--inner-val", type=_optional(parse_bool), nargs="?", const=True,
                        help="stop early and read val/ objectives on an inner split of the training ids")


def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `CVConfig` besides the training protocol."""
    boolean, text = _optional(parse_bool), _optional(str)
    add_study_arguments(parser)
    parser.add_argument("--inner-val", type=boolean, nargs="?", const=True,
                        help="stop early on an inner split of the training folds (default false)")
    parser.add_argument("--test-dataset", type=text, help="evaluate the fold models' ensemble on this dataset")
    parser.add_argument("--test-data-dir", type=text, help="folder of --test-dataset")


def _fields_from_args(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """Collect the set arguments named after fields of `config_type`, except the nested training protocol."""
    return {
        name: getattr(args, name)
        for name in config_type.__dataclass_fields__
        if name != "train" and getattr(args, name, None) is not None
    }


def _config_from_args(args: argparse.Namespace):
    from medbench.config import TrainConfig, resolve_train_config

    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if f != "preset" and hasattr(args, f)}
    return resolve_train_config(args.preset, **fields)


def _command_train(args: argparse.Namespace) -> int:
    from medbench.training import distributed
    from medbench.training.run import resolve_device, train

    config = _config_from_args(args)
    with distributed.process_group(resolve_device(config.device).type) as ctx:
        result = train(config)
    if ctx is not None and not ctx.is_main:
        return 0
    print(f"run {result.run_id} finished: " + ", ".join(
        f"{k} {v:.4f}" for k, v in result.metrics.items() if k in ("test/dice", "test/iou", "test/hd95")
    ))
    if result.model_version:
        print(f"registered model version: models:/medbench-{config.dataset}-{config.model}/{result.model_version}")
    return 0


def _command_tune(args: argparse.Namespace) -> int:
    from medbench.tuning import TuneConfig, tune

    if args.resume:
        raise MedbenchError("tune does not take --resume: run a worker again with the same --study-name and "
                            "settings, and it continues the study (finished trials are kept).")
    config = TuneConfig(train=_config_from_args(args), **_fields_from_args(TuneConfig, args))
    result = tune(config)
    states = ", ".join(f"{count} {state}" for state, count in result.trial_states.items() if count)
    print(f"study {result.study_name}: {states}; best {config.metric} {result.best_value:.4f} with "
          + ", ".join(f"{name} {value:g}" for name, value in result.best_params.items())
          + f" (parent run {result.parent_run_id})")
    return 0


def _command_cv(args: argparse.Namespace) -> int:
    from medbench.cv import MEAN, STD, CVConfig, cross_validate

    if args.fold is not None:
        raise MedbenchError("cv trains every fold; leave out --fold (use `medbench train --fold K` for one fold).")
    if args.resume:
        raise MedbenchError("cv does not take --resume: leave it out and run cv again, which trains every fold "
                            "from the start.")
    config = CVConfig(train=_config_from_args(args), **_fields_from_args(CVConfig, args))
    result = cross_validate(config)
    print(f"cross-validation parent run {result.parent_run_id}: " + ", ".join(
        f"{name} {result.summary[f'{MEAN}/test/{name}']:.4f} ± {result.summary.get(f'{STD}/test/{name}', float('nan')):.4f}"
        for name in ("dice", "iou", "hd95") if f"{MEAN}/test/{name}" in result.summary
    ))
    return 0


def parse_classes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class indices separated by commas, such as 1,2; got {text!r}")


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ExplainConfig`; empty values (MLproject's unset parameters) take the defaults."""
    integer, text = _optional(int), _optional(str)
    parser.add_argument("--run-id", type=text, help="MLflow run trained by `medbench train`")
    parser.add_argument("--model-uri", type=text, help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/model")
    parser.add_argument("--samples", type=integer, metavar="N", help="N worst and N random test images (default 4)")
    parser.add_argument("--method", type=text, help="gradcam or gradcam++ (default gradcam)")
    parser.add_argument("--classes", type=_optional(parse_classes), help="foreground class indices, such as 1,2 (default all)")
    parser.add_argument("--layer", type=text, help="dotted module name of the target layer (default: the registry's)")
    parser.add_argument("--seed", type=integer, help="seed of the random image choice (default 0)")
    parser.add_argument("--device", type=text, help="auto, cpu, cuda or cuda:N (default auto)")


def _command_explain(args: argparse.Namespace) -> int:
    from medbench.explain import ExplainConfig, explain

    fields = {name: getattr(args, name) for name in ExplainConfig.__dataclass_fields__}
    result = explain(ExplainConfig(**{k: v for k, v in fields.items() if v is not None}))
    print(f"run {result.run_id}: Grad-CAM on layer {result.layer}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in result.metrics.items() if k.count("/") == 1
    ))
    return 0


def _count_parameters(name: str) -> int:
    """Parameters of model `name` for 2 classes, built without memory where the model allows it."""
    import torch

    from medbench.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, in_channels=3, num_classes=2)
    except (NotImplementedError, RuntimeError):
        # Some constructors compute values from tensors (drop-path rates), which meta tensors lack.
        model = create_model(name, in_channels=3, num_classes=2)
    return sum(p.numel() for p in model.parameters())


def _command_models(args: argparse.Namespace) -> int:
    from medbench.models import get_model_info, list_models

    for name in list_models(args.family):
        info = get_model_info(name)
        measured = _count_parameters(name)
        record = {
            "name": name,
            "family": info.family,
            "params_measured": measured,
            "params_published": round(info.published_params_m * 1e6),
            "default_input_size": info.default_input_size,
            "params_source": info.params_source,
            "pretrained": info.pretrained.location if info.pretrained else None,
            "gradcam_layer": info.gradcam_layer,
            "allow_amp": info.allow_amp,
        }
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{name:28s} {info.family:6s} {measured / 1e6:7.2f} M (published {info.published_params_m:g} M)  "
                  f"input {info.default_input_size}")
    return 0


def _command_datasets(args: argparse.Namespace) -> int:
    from medbench.data import data_root, get_source, list_datasets

    for name in list_datasets():
        source = get_source(name)
        folder = data_root() / name
        record = {
            "name": name,
            "classes": list(source.class_names),
            "modality": source.modality,
            "layout": source.layout,
            "folder": str(folder),
            "present": source.is_present(folder),
        }
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{name:16s} {source.modality:14s} classes {', '.join(source.class_names):40s} "
                  f"{'present' if record['present'] else 'missing'} at {folder}")
    return 0


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `PrepareConfig`; unset ones (None) take the field's default."""
    integer, real, text, boolean = _optional(int), _optional(float), _optional(str), _optional(parse_bool)
    parser.add_argument("--dataset", required=True, help="dataset name (see `medbench datasets`)")
    parser.add_argument("--data-dir", type=text, help="folder of this dataset; default <data root>/<dataset>")
    parser.add_argument("--image-size", type=integer, help="square working resolution in pixels (default 512)")
    parser.add_argument("--max-images", type=integer, help="keep the first N images after duplicate removal; 0 for all")
    parser.add_argument("--num-folds", type=integer, help="number of cross-validation folds (default 5)")
    parser.add_argument("--split-seed", type=integer, help="seed of the test, fold and inner-validation split (default 0)")
    parser.add_argument("--split", type=text, help="kfold (default) or official (published subsets, ISIC 2018)")
    parser.add_argument("--test-fraction", type=real, help="share held out as a test split before the folds (default 0)")
    parser.add_argument("--inner-val-fraction", type=real, help="share of each fold's training ids for inner validation "
                        "(default 0.1)")
    parser.add_argument("--near-duplicate-distance", type=integer, help="largest perceptual-hash distance (of 256 bits) "
                        "counted as a duplicate (default 36); negative for exact copies only")
    parser.add_argument("--experiment", type=text, help="MLflow experiment of the dataset-card run (default medbench-data)")
    parser.add_argument("--log-run", type=boolean, nargs="?", const=True, help="record the card in MLflow (default true)")


def _command_prepare(args: argparse.Namespace) -> int:
    from medbench.config import PrepareConfig
    from medbench.preparing import prepare

    fields = {f: getattr(args, f) for f in PrepareConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    if fields.get("max_images") == 0:
        del fields["max_images"]
    result = prepare(PrepareConfig(**fields))
    counts = result.card["counts"]
    shares = ", ".join(f"{name} {share:.2%}" for name, share in result.card["class_pixel_share"].items())
    print(f"prepared {counts['prepared_images']} of {counts['source_images']} images "
          f"({counts['duplicates_removed']} duplicates removed) at {result.prepared.path}")
    print(f"class pixel shares: {shares}")
    if result.run_id:
        print(f"dataset card logged to run {result.run_id}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `CompareConfig`; unset ones (None) take its defaults."""
    names, integer, real, text, boolean = (
        _optional(_names), _optional(int), _optional(float), _optional(str), _optional(parse_bool))
    parser.add_argument("--experiments", type=names, help="comma-separated MLflow experiments to read (default medbench)")
    parser.add_argument("--datasets", type=names, help="comma-separated datasets to compare (default all found)")
    parser.add_argument("--models", type=names, help="comma-separated models to compare (default all found)")
    parser.add_argument("--metric", type=text, help="ranking and champion metric: dice, iou, precision, recall, "
                        "hd95, dice/<class>, hd95/<class> (default dice)")
    parser.add_argument("--alpha", type=real, help="significance level of the Nemenyi critical difference (default 0.05)")
    parser.add_argument("--efficiency", type=boolean, nargs="?", const=True,
                        help="measure MACs, latency and peak memory of every model (default true)")
    parser.add_argument("--efficiency-size", type=integer, help="image side for efficiency (default: the runs' size)")
    parser.add_argument("--device", type=text, help="device of the efficiency measurements (default cpu)")
    parser.add_argument("--champion", type=boolean, nargs="?", const=True,
                        help="set the registry alias champion per dataset (default true)")
    parser.add_argument("--output", type=text, help="local report folder (default compare_report)")
    parser.add_argument("--experiment", type=text, help="MLflow experiment of the compare run (default medbench-compare)")


def _command_compare(args: argparse.Namespace) -> int:
    from medbench.compare import CompareConfig, compare

    fields = {f: getattr(args, f) for f in CompareConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    result = compare(CompareConfig(**fields))
    columns = ["dataset", "family", "model", "rank", f"{args.metric or 'dice'}_mean"]
    print(result.table[columns].to_string(index=False))
    for champion in result.champions.values():
        print(f"champion of {champion.dataset}: {champion.uri} (version {champion.version})")
    print(f"compare run {result.run_id}; report: {result.folder / 'report.html'}")
    return 0


def _command_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medbench.predict import predict

    result = predict(args.model_uri, Path(args.input), Path(args.output), args.device or "cpu")
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {len(result.masks)} masks and overlays to {args.output}; class areas in {result.areas_csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medbench", description="Benchmark medical and general-purpose segmentation models, tracked in MLflow."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model on one fold of one dataset")
    add_train_arguments(train)
    train.set_defaults(handler=_command_train)

    tune = commands.add_parser("tune", help="tune the learning rate of one model on one dataset with Optuna")
    add_train_arguments(tune)
    add_tune_arguments(tune)
    tune.set_defaults(handler=_command_tune)

    cv = commands.add_parser("cv", help="train every fold of one model on one dataset and summarize the folds")
    add_train_arguments(cv)
    add_cv_arguments(cv)
    cv.set_defaults(handler=_command_cv)

    prepare = commands.add_parser("prepare", help="prepare a dataset (duplicates, arrays, splits) and log its card")
    add_prepare_arguments(prepare)
    prepare.set_defaults(handler=_command_prepare)

    explain = commands.add_parser("explain", help="Grad-CAM maps and scores of a trained run, logged to the run")
    add_explain_arguments(explain)
    explain.set_defaults(handler=_command_explain)

    models = commands.add_parser("models", help="list registered models")
    models.add_argument("--family", choices=["SMA", "GP-VM", "peer"], help="only this family")
    models.add_argument("--json", action="store_true", help="one JSON object per line")
    models.set_defaults(handler=_command_models)

    datasets = commands.add_parser("datasets", help="list dataset sources and whether their data is present")
    datasets.add_argument("--json", action="store_true", help="one JSON object per line")
    datasets.set_defaults(handler=_command_datasets)

    compare = commands.add_parser("compare", help="compare trained models; write tables, tests, plots, report")
    add_compare_arguments(compare)
    compare.set_defaults(handler=_command_compare)

    predict = commands.add_parser("predict", help="segment a folder of images with a registered model")
    predict.add_argument("--model-uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    predict.add_argument("--input", required=True, help="folder of images to segment")
    predict.add_argument("--output", required=True, help="folder for mask and overlay PNGs and class_areas.csv")
    predict.add_argument("--device", type=_optional(str), help="cpu, cuda or cuda:N (default cpu)")
    predict.set_defaults(handler=_command_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except MedbenchError as error:
        print(f"medbench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
