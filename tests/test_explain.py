"""Grad-CAM: maps for every registry model, target layers, scores and a sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medbench.errors import MedbenchError
from medbench.explain import cam_iou, compute_cam, energy_pointing, find_target_layer, make_cam, otsu_mask
from medbench.explain.cam import probe_layers
from medbench.models import create_model, get_model_info, list_models

SIZE = 64


def square_batch(count: int, seed: int, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright square each at a random place; the square is class 1."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, SIZE, SIZE, generator=generator) * 0.5
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for i in range(count):
        top, left = torch.randint(0, SIZE - side + 1, (2,), generator=generator).tolist()
        masks[i, top:top + side, left:left + side] = 1
    images += 2.0 * masks[:, None].float()
    return images, masks


def train_steps(model: nn.Module, steps: int, lr: float, seed: int = 0, batch: int = 4) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        images, masks = square_batch(batch, seed + step)
        optimizer.zero_grad()
        F.cross_entropy(model(images), masks).backward()
        optimizer.step()
    model.eval()


def cam_of(model: nn.Module, layer_name: str | None, image: torch.Tensor, region: np.ndarray, probe=None):
    layer = find_target_layer(model, layer_name, probe=probe)
    cam = make_cam(model, layer, "gradcam", tuple(image.shape[-2:]))
    try:
        return layer, compute_cam(cam, image, 1, region)
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("name", list_models())
def test_cam_every_model(name):
    # A few steps on the square task, so that late decoder layers are not ~0 as with random weights.
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=2)
    train_steps(model, steps=5, lr=1e-3, batch=2)
    images, masks = square_batch(1, seed=99)
    square = masks[0].numpy() == 1
    probe = probe_layers(model)

    for layer_name in (get_model_info(name).gradcam_layer, None):
        layer = find_target_layer(model, layer_name, probe=probe)
        cam = make_cam(model, layer, "gradcam", (SIZE, SIZE))
        try:
            maps = [compute_cam(cam, images[0], 1, square), compute_cam(cam, images[0], 0, ~square)]
        finally:
            cam.activations_and_grads.release()
        for class_map in maps:
            assert class_map.shape == (SIZE, SIZE), layer.name
            assert np.isfinite(class_map).all(), layer.name
        # Grad-CAM's ReLU zeroes a map where no channel raises the class. After 5 steps this
        # zeroes one class's map of some models (class 1 of DeepLabV3+, MISSFormer, SegNeXt and
        # VWFormer among 17 models tried), but it zeroed both maps of none of them.
        assert any(m.max() > m.min() for m in maps), f"{name}: constant CAMs on layer {layer.name}"


def test_bright_square_sanity():
    # The square is the only signal, so a trained model's map for it must put most of its
    # energy inside the square, far above its area share (16x16 of 64x64 = 1/16). With
    # random weights the score is about 0.3 on this data; after 10 steps about 0.9.
    torch.manual_seed(0)
    model = create_model("unet", in_channels=3, num_classes=2, base_channels=8)
    train_steps(model, steps=10, lr=3e-3)
    images, masks = square_batch(6, seed=1000)
    area_share = 16 * 16 / SIZE**2
    scores = []
    for image, mask in zip(images, masks):
        with torch.no_grad():
            predicted = model(image[None])[0].argmax(0).numpy() == 1
        assert predicted.any()
        _, cam = cam_of(model, None, image, predicted)
        scores.append(energy_pointing(cam, mask.numpy() == 1))
    assert np.mean(scores) > 0.7 > 10 * area_share, scores


class TokenModel(nn.Module):
    """A convolution, a token MLP on (B, N, C), and a 1x1 head: the MLP is the last feature layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stem(x)  # (B, 8, H/2, W/2)
        b, c, h, w = features.shape
        tokens = self.mlp(features.flatten(2).transpose(1, 2))  # (B, N, 8)
        features = tokens.transpose(1, 2).reshape(b, c, h, w)
        return F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear")


class ChannelsLastModel(nn.Module):
    """A convolution whose output goes through a LayerNorm on (B, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_token_layer_default(size):
    torch.manual_seed(0)
    model = TokenModel()
    image = torch.randn(3, *size)
    layer, cam = cam_of(model, None, image, np.ones(size, dtype=bool))
    assert layer.name == "mlp"
    assert layer.output.layout == "tokens"
    assert cam.shape == size
    assert cam.max() > cam.min()


def test_channels_last_layer_default():
    torch.manual_seed(0)
    layer, cam = cam_of(ChannelsLastModel(), None, torch.randn(3, 40, 40), np.ones((40, 40), dtype=bool))
    assert layer.name == "norm"
    assert layer.output.layout == "channels_last"
    assert cam.shape == (40, 40)


def test_unknown_layer_suggests_names():
    model = create_model("unet", num_classes=2)
    with pytest.raises(MedbenchError, match=r"no module named 'up\.3\.convv'\. Did you mean 'up\.3\.conv'"):
        find_target_layer(model, "up.3.convv")


def test_layer_changed_in_place_rejected():
    # The batch norm's output is overwritten by the in-place ReLU that follows it.
    model = create_model("unet", num_classes=2)
    with pytest.raises(MedbenchError, match=r"'up\.3\.conv\.0\.1' is not a spatial feature map"):
        find_target_layer(model, "up.3.conv.0.1")


def test_otsu_mask_bimodal():
    cam = np.full((4, 4), 0.1)
    cam[:2, :2] = 0.9
    expected = np.zeros((4, 4), dtype=bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(otsu_mask(cam), expected)
    assert not otsu_mask(np.zeros((4, 4))).any()


def test_cam_iou_hand_computed():
    cam = np.zeros((4, 4))
    cam[:2, :2] = 1.0  # Otsu keeps these 4 pixels
    target = np.zeros((4, 4), dtype=bool)
    target[:2, :3] = True  # 6 pixels, 4 of them shared
    assert cam_iou(cam, target) == pytest.approx(4 / 6)
    assert math.isnan(cam_iou(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool)))
    assert cam_iou(np.zeros((4, 4)), target) == 0.0


def test_energy_pointing_hand_computed():
    cam = np.array([[1.0, 0.5], [0.25, 0.25]])
    target = np.array([[True, False], [True, False]])
    assert energy_pointing(cam, target) == pytest.approx(1.25 / 2.0)
    assert energy_pointing(np.ones((2, 2)), target) == pytest.approx(0.5)  # uniform map: the area share
    assert math.isnan(energy_pointing(np.zeros((2, 2)), target))
    assert math.isnan(energy_pointing(cam, np.zeros((2, 2), dtype=bool)))
