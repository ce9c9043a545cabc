"""Download, verify and load ImageNet weights described by a `PretrainedSource`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medbench.errors import MedbenchError
from medbench.models.registry import PretrainedSource

__all__ = ["LoadReport", "fetch_weights", "load_pretrained", "read_state_dict", "sha256_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    """What `load_pretrained` did: keys loaded, model keys left at random init, file keys unused."""

    path: Path
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatched: tuple[str, ...]


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(source: PretrainedSource, weights: str | Path | None = None) -> Path:
    """Return a local weight file: `weights` if given, else the cached or downloaded file.

    Hub files go through `huggingface_hub` (cache under `HF_HOME`), URL files through the
    torch hub cache (`TORCH_HOME`) and are checked against `source.sha256`.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MedbenchError(f"Weight file {path} does not exist. Pass an existing file to --weights.")
        return path
    if source.hub_id is not None:
        return _fetch_from_hub(source)
    return _fetch_from_url(source)


def _offline_message(source: PretrainedSource, cause: Exception, where: str) -> str:
    return (
        f"Could not get the pretrained weights {source.description} from {source.location} "
        f"({type(cause).__name__}: {cause}). On a machine with internet access download that file, "
        f"then pass it with --weights PATH, or place it {where}."
    )


def _fetch_from_hub(source: PretrainedSource) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source.hub_id, source.filename, revision=source.revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        where = (
            "in the Hugging Face cache (run `hf download "
            f"{source.hub_id} {source.filename}"
            + (f" --revision {source.revision}" if source.revision else "")
            + "` there and copy HF_HOME)"
        )
        raise MedbenchError(_offline_message(source, error, where)) from error


def _fetch_from_url(source: PretrainedSource) -> Path:
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(str(source.url)).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(str(source.url), str(target), progress=True)
        except OSError as error:
            raise MedbenchError(_offline_message(source, error, f"at {target}")) from error
    if source.sha256 and sha256_of(target) != source.sha256:
        raise MedbenchError(
            f"Weight file {target} does not match SHA-256 {source.sha256}. Delete it and download "
            f"it again from {source.url}."
        )
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.safetensors` or a torch file (loaded with weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise MedbenchError(
            f"Could not read weight file {path} as a tensor-only torch checkpoint: {error}. "
            "Pass a state dict saved with torch.save or a .safetensors file."
        ) from error
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(data, Mapping) and wrapper in data and isinstance(data[wrapper], Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping):
        raise MedbenchError(f"Weight file {path} contains a {type(data).__name__}, not a state dict.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_pretrained(
    model: nn.Module, source: PretrainedSource, weights: str | Path | None = None
) -> LoadReport:
    """Load `source` (or the local file `weights`) into `model`, reporting the key match.

    Tensors whose shape differs from the model's (a first convolution for another number
    of input channels, a classifier head) are skipped and reported, not loaded.
    """
    path = fetch_weights(source, weights)
    state = read_state_dict(path)
    if source.key_map is not None:
        state = source.key_map(state)
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise MedbenchError(
            f"No tensor of {path} matches the model: is it the file for {source.description}? "
            f"First keys in the file: {list(state)[:5]}."
        )
    result = model.load_state_dict(usable, strict=False)
    report = LoadReport(
        path=path,
        loaded=tuple(sorted(usable)),
        missing=tuple(sorted(result.missing_keys)),
        unexpected=tuple(sorted(k for k in state if k not in own)),
        shape_mismatched=tuple(sorted(mismatched)),
    )
    log.info(
        "Loaded %d tensors from %s; %d model tensors keep their initialization, %d file tensors "
        "unused, %d skipped for shape.",
        len(report.loaded), path, len(report.missing), len(report.unexpected),
        len(report.shape_mismatched),
    )
    if report.shape_mismatched:
        log.warning("Skipped for shape mismatch: %s", ", ".join(report.shape_mismatched[:10]))
    return report
