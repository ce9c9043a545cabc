"""Contract tests parametrized over the registry: every registered model gets them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medbench.errors import MedbenchError
from medbench.models import FAMILIES, create_model, get_model_info, list_models

MODELS = list_models()


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_forward_backward_shape(name, size):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=3)
    x = torch.randn(2, 3, *size)
    logits = model(x)
    assert logits.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()
    logits.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", MODELS)
def test_few_steps_lower_loss(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=2)
    x = torch.randn(2, 3, 64, 64)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 16:48] = 1
    x[:, 0] += 2.0 * target  # a learnable signal
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", MODELS)
def test_metadata_complete(name):
    info = get_model_info(name)
    assert info.family in FAMILIES
    assert info.published_params_m > 0
    assert info.params_source
    assert info.default_input_size >= 64
    json.dumps(info.as_dict())


@pytest.mark.parametrize("name", [n for n in MODELS if get_model_info(n).family != "peer"])
def test_param_count_matches_study(name):
    info = get_model_info(name)
    measured = count_params(create_model(name, in_channels=3, num_classes=2)) / 1e6
    assert measured == pytest.approx(info.published_params_m, rel=0.05)


def test_swinunet_param_count_matches_paper():
    # Cao et al. report 27.17 M parameters for Swin-Unet at 224x224.
    measured = count_params(create_model("swinunet", num_classes=2)) / 1e6
    assert measured == pytest.approx(27.17, abs=0.05)


def test_unknown_model_suggests_close_name():
    with pytest.raises(MedbenchError, match=r"Did you mean 'swinunet'"):
        create_model("swin_unet")


def test_num_classes_below_two_rejected():
    with pytest.raises(MedbenchError, match="num_classes"):
        create_model("unet", num_classes=1)


def test_none_overrides_keep_model_defaults():
    model = create_model("unet", base_channels=None)
    assert count_params(model) == count_params(create_model("unet"))
