"""Pretrained loading from local files written by the test; no network."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medbench.errors import MedbenchError
from medbench.models import create_model, get_model_info, list_models
from medbench.models.pretrained import fetch_weights, load_pretrained

PRETRAINED = [n for n in list_models() if get_model_info(n).pretrained is not None]


def _encoder_file(name: str, tmp_path, fill: float) -> tuple[str, dict]:
    """Write a weight file in the upstream key layout, by inverting the registry key map."""
    model = create_model(name)
    source = get_model_info(name).pretrained
    # Recover the upstream names by mapping a probe of every model key.
    upstream = {}
    for key, value in model.state_dict().items():
        for prefix in ("encoder.", "net.encoder."):
            if key.startswith(prefix):
                candidate = key[len(prefix):]
                if source.key_map({candidate: value}).get(key) is not None:
                    upstream[candidate] = torch.full_like(value, fill)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in upstream.items()}, str(path))
    return str(path), upstream


@pytest.mark.parametrize("name", PRETRAINED)
def test_local_weights_loaded(name, tmp_path):
    path, upstream = _encoder_file(name, tmp_path, fill=0.125)
    assert upstream, "the key map matched no model tensor"
    model = create_model(name, weights=path)
    state = model.state_dict()
    loaded = [k for k in state if torch.is_floating_point(state[k]) and torch.all(state[k] == 0.125)]
    # Integer buffers (batch norm's num_batches_tracked) cannot hold the fill value.
    floating = [k for k, v in upstream.items() if torch.is_floating_point(v)]
    assert len(loaded) >= len(floating) * 0.9


@pytest.mark.parametrize("name", PRETRAINED)
def test_offline_download_error_names_file(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline_download(url, *args, **kwargs):
        raise OSError(f"no network in tests: {url}")

    # URL sources go through the torch hub, which HF_HUB_OFFLINE does not stop.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    source = get_model_info(name).pretrained
    with pytest.raises(MedbenchError, match="--weights") as error:
        fetch_weights(source)
    assert source.location in str(error.value)


def test_unrelated_weight_file_rejected(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    model = create_model("swinunet")
    with pytest.raises(MedbenchError, match="matches the model"):
        load_pretrained(model, get_model_info("swinunet").pretrained, path)


def test_shape_mismatch_reported_not_loaded(tmp_path):
    model = create_model("swinunet", in_channels=1)
    source = get_model_info("swinunet").pretrained
    rgb = create_model("swinunet", in_channels=3).state_dict()
    upstream = {k[len("encoder."):]: v for k, v in rgb.items() if k.startswith("encoder.")}
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in upstream.items()}, str(path))
    report = load_pretrained(model, source, path)
    assert "encoder.patch_embed.proj.weight" in report.shape_mismatched
    assert "encoder.patch_embed.proj.weight" not in report.loaded


def test_pretrained_for_scratch_model_rejected():
    with pytest.raises(MedbenchError, match="from scratch"):
        create_model("unet", pretrained=True)


def test_pickled_object_weight_file_rejected(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(MedbenchError, match="tensor-only"):
        load_pretrained(create_model("swinunet"), get_model_info("swinunet").pretrained, path)
