"""Training components: REX schedule, early stopping, losses, checkpoints, splits."""

from __future__ import annotations

import pytest
import torch

from medbench.data.splits import make_folds
from medbench.errors import MedbenchError
from medbench.training.checkpoint import load_checkpoint, save_checkpoint
from medbench.training.losses import SegmentationLoss
from medbench.training.loop import EarlyStopping
from medbench.training.schedule import rex_factor, rex_schedule


def test_rex_factor_values():
    assert rex_factor(0, 100) == 1.0
    assert rex_factor(50, 100) == pytest.approx(0.5 / 0.75)
    assert rex_factor(100, 100) == 0.0


def test_rex_schedule_steps_learning_rate():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = rex_schedule(optimizer, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3 * rex_factor(s, 4) for s in range(4)])


def test_early_stopping_patience_and_delta():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(0.5)
    assert not stopper.update(0.505)  # below min_delta
    assert not stopper.should_stop
    assert not stopper.update(0.4)
    assert stopper.should_stop


def test_binary_loss_is_bce_of_logit_margin():
    logits = torch.tensor([[[[2.0]], [[0.5]]]])  # (1, 2, 1, 1)
    target = torch.tensor([[[0]]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(-1.5), torch.tensor(0.0))
    assert SegmentationLoss(2)(logits, target) == pytest.approx(expected.item())


def test_multiclass_loss_is_cross_entropy():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert SegmentationLoss(3)(logits, target) == pytest.approx(expected.item())


def test_checkpoint_roundtrip_and_unsafe_rejected(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {"model": "unet"}, "epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))
    torch.save({"model": {}, "config": {}, "evil": object()}, path)
    with pytest.raises(MedbenchError, match="weights_only"):
        load_checkpoint(path)


def test_folds_deterministic_and_grouped():
    ids = [f"p{i // 3}_{i % 3}" for i in range(30)]
    groups = [i.split("_")[0] for i in ids]
    folds = make_folds(ids, groups, 5, seed=1)
    assert folds == make_folds(ids, groups, 5, seed=1)
    assert folds != make_folds(ids, groups, 5, seed=2)
    assert sorted(i for f in folds for i in f) == sorted(ids)
    for group in set(groups):
        assert sum(any(i.startswith(group + "_") for i in f) for f in folds) == 1
    assert {len(f) for f in folds} == {6}


def test_augmentation_steps_fire_independently():
    import numpy as np

    from medbench.data.dataset import augmentation

    transform = augmentation("default", seed=0)
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 1] = 255  # one marked pixel, off both diagonals
    corners = set()
    for _ in range(200):
        out = transform(image=image, mask=image[..., 0])["mask"]
        corners.add(tuple(np.argwhere(out == 255)[0]) if (out == 255).any() else None)
    # Independent flips and rotations put the pixel at all eight border positions that
    # the dihedral group reaches; correlated steps reach only some of them.
    dihedral = {(0, 1), (0, 6), (7, 1), (7, 6), (1, 0), (6, 0), (1, 7), (6, 7)}
    assert dihedral <= corners
