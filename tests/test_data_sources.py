"""Dataset sources, decoding, duplicates and splits on tiny fixtures in the official layouts."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from data_fixtures import camus_frame, make_camus, make_isic, make_neopolyp, smooth_image
from PIL import Image

from medbench.data import prepare_dataset
from medbench.data.duplicates import NEAR_DUPLICATE_DISTANCE, find_duplicates, perceptual_hash
from medbench.data.imageio import read_image
from medbench.data.sources import decode_palette
from medbench.data.splits import build_splits
from medbench.errors import MedbenchError

PALETTE = {(0, 0, 0): 0, (0, 255, 0): 1, (255, 0, 0): 2}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDBENCH_DATA_DIR", str(tmp_path / "data-root"))


# --- palette decoding -------------------------------------------------------------------


def test_palette_decoding_noisy_colours():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    colours = np.array([(0, 0, 0), (0, 255, 0), (255, 0, 0)], np.int16)[labels]
    noisy = np.clip(colours + rng.normal(0, 20, colours.shape), 0, 255).astype(np.uint8)
    decoded, ambiguous = decode_palette(noisy, "noisy.png", PALETTE, 240)
    assert np.array_equal(decoded, labels)
    assert ambiguous == 0.0  # noise of 20 per channel stays far below 120


def test_palette_decoding_blends_are_ambiguous():
    # (128, 128, 0) lies 180.3 from red and from green and 181.0 from black: nearest is
    # red or green, and beyond 240 / 2 it counts as ambiguous. (30, 200, 10) is green.
    pixels = np.array([[[128, 128, 0], [30, 200, 10], [250, 5, 5], [5, 5, 5]]], np.uint8)
    decoded, ambiguous = decode_palette(pixels, "blend.png", PALETTE, 240)
    assert decoded[0, 1:].tolist() == [1, 2, 0]
    assert decoded[0, 0] in (1, 2)
    assert ambiguous == pytest.approx(0.25)


def test_palette_colour_beyond_tolerance(tmp_path):
    folder = make_neopolyp(tmp_path / "neo")
    mask_path = folder / "train_gt" / "train_gt" / "case04.jpeg"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:8, :8] = (0, 0, 255)  # blue: 255 from every palette colour
    Image.fromarray(mask).save(mask_path, quality=95)
    with pytest.raises(MedbenchError, match=r"case04\.jpeg has \d+ pixels farther than 240.0 .* palette"):
        prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, num_folds=2, progress=False)


def test_neopolyp_fixture_decodes_three_classes(tmp_path):
    prepared = prepare_dataset("neopolyp_small", data_dir=make_neopolyp(tmp_path / "neo"), image_size=32,
                               num_folds=3, progress=False)
    assert prepared.class_names == ["background", "non-neoplastic", "neoplastic"]
    assert set(np.unique(prepared.masks)) == {0, 1, 2}
    assert prepared.manifest["images_with_class"] == [12, 12, 12]
    assert prepared.augmentation == "endoscopy"


# --- duplicates -------------------------------------------------------------------------


def reencoded_resized(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    height, width = image.shape[:2]
    Image.fromarray(image).resize((int(width * 0.9), int(height * 0.9))).save(buffer, "JPEG", quality=70)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_duplicate_detection_cases():
    original = smooth_image(1, (120, 160))
    different = smooth_image(2, (120, 160))
    ids = ["a", "b", "c", "d"]
    checksums = ["sum-a", "sum-a", "sum-c", "sum-d"]  # b is a byte-identical copy of a
    hashes = [perceptual_hash(x) for x in (original, original, reencoded_resized(original), different)]
    kept, removed = find_duplicates(ids, checksums, ids, hashes)
    assert kept == ["a", "d"]
    assert removed[0] == {"id": "b", "kept": "a", "reason": "identical bytes", "distance": 0}
    assert removed[1]["id"] == "c"
    assert removed[1]["kept"] == "a"
    assert removed[1]["reason"] == "perceptual hash"
    assert removed[1]["distance"] <= NEAR_DUPLICATE_DISTANCE


def test_different_images_not_duplicates():
    hashes = [perceptual_hash(smooth_image(seed, (120, 160))) for seed in range(20)]
    ids = [f"img{i}" for i in range(20)]
    kept, removed = find_duplicates(ids, ids, ids, hashes)
    assert removed == []
    assert kept == ids


def test_duplicates_within_group_kept():
    image = smooth_image(3, (120, 160))
    hashes = [perceptual_hash(image), perceptual_hash(reencoded_resized(image))]
    kept, removed = find_duplicates(["p1_ED", "p1_ES"], ["x", "y"], ["p1", "p1"], hashes)
    assert kept == ["p1_ED", "p1_ES"]
    assert removed == []


def test_prepare_lists_duplicates_in_manifest(tmp_path):
    folder = make_neopolyp(tmp_path / "neo")
    images, masks = folder / "train" / "train", folder / "train_gt" / "train_gt"
    (images / "zcopy.jpeg").write_bytes((images / "case03.jpeg").read_bytes())
    (masks / "zcopy.jpeg").write_bytes((masks / "case03.jpeg").read_bytes())
    Image.fromarray(reencoded_resized(np.asarray(Image.open(images / "case05.jpeg")))).save(images / "zsmall.jpeg")
    Image.open(masks / "case05.jpeg").resize((57, 43)).save(masks / "zsmall.jpeg")
    prepared = prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, num_folds=3, progress=False)
    removed = {d["id"]: d for d in prepared.manifest["duplicates"]}
    assert set(removed) == {"zcopy", "zsmall"}
    assert removed["zcopy"]["kept"] == "case03"
    assert removed["zcopy"]["reason"] == "identical bytes"
    assert removed["zsmall"]["kept"] == "case05"
    assert removed["zsmall"]["reason"] == "perceptual hash"
    assert len(prepared.ids) == 12
    card = json.loads((prepared.path / "dataset_card.json").read_text())
    assert card["counts"]["duplicates_removed"] == 2
    assert card["counts"]["source_images"] == 14


# --- splits -----------------------------------------------------------------------------


def test_splits_deterministic_and_disjoint():
    ids = [f"p{g:02d}_{k}" for g in range(20) for k in range(3)]
    groups = [i.split("_")[0] for i in ids]
    first = build_splits(ids, groups, 4, seed=7, test_fraction=0.2, inner_val_fraction=0.25)
    assert first == build_splits(ids, groups, 4, seed=7, test_fraction=0.2, inner_val_fraction=0.25)
    assert first != build_splits(ids, groups, 4, seed=8, test_fraction=0.2, inner_val_fraction=0.25)
    test = set(first["test"])
    assert len(test) == 12  # 4 whole groups of 3: round(0.2 * 60)
    assert sorted(i for f in first["folds"] for i in f["val"]) == sorted(set(ids) - test)
    for fold in first["folds"]:
        assert not set(fold["train"]) & set(fold["val"])
        assert not (set(fold["train"]) | set(fold["val"])) & test
        assert set(fold["inner_val"]) | set(fold["inner_train"]) == set(fold["train"])
        assert not set(fold["inner_val"]) & set(fold["inner_train"])
        assert len(fold["inner_val"]) >= round(0.25 * len(fold["train"]))
        inner_groups = {i.split("_")[0] for i in fold["inner_val"]}
        assert not inner_groups & {i.split("_")[0] for i in fold["inner_train"]}


def test_isic_pool_and_official_split(tmp_path):
    folder = make_isic(tmp_path / "isic")
    pooled = prepare_dataset("isic2018", data_dir=folder, image_size=32, num_folds=3, progress=False)
    assert len(pooled.ids) == 18
    assert pooled.splits["mode"] == "kfold"
    official = prepare_dataset("isic2018", data_dir=folder, image_size=32, split="official", progress=False)
    fold = official.splits["folds"][0]
    assert official.splits["num_folds"] == 1
    assert fold["train"] == [f"ISIC_{n:07d}" for n in range(10)]
    assert fold["val"] == [f"ISIC_{n:07d}" for n in range(10, 14)]
    assert official.splits["test"] == [f"ISIC_{n:07d}" for n in range(14, 18)]
    assert [len(x) for x in official.fold_indices(0)] == [10, 4]
    assert len(official.test_indices()) == 4
    assert set(np.unique(official.masks)) == {0, 1}


def test_official_split_needs_subsets(tmp_path):
    folder = make_neopolyp(tmp_path / "neo")
    with pytest.raises(MedbenchError, match="no official subsets"):
        prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, split="official", progress=False)


# --- CAMUS ------------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["nifti", "mhd"])
def test_camus_folds_group_patients(tmp_path, release):
    folder = make_camus(tmp_path / "camus", patients=6, release=release)
    prepared = prepare_dataset("camus", data_dir=folder, image_size=32, num_folds=3, progress=False)
    assert len(prepared.ids) == 24  # 6 patients x 2 views x 2 frames, no frame removed as duplicate
    assert prepared.splits["grouping"] == "patient"
    patient_folds = {}
    for fold in prepared.splits["folds"]:
        for sample_id in fold["val"]:
            patient_folds.setdefault(sample_id.split("_")[0], set()).add(fold["fold"])
    assert len(patient_folds) == 6
    assert all(len(folds) == 1 for folds in patient_folds.values())
    assert set(np.unique(prepared.masks)) == {0, 1, 2, 3}


def test_camus_nifti_and_mhd_agree(tmp_path):
    nifti = prepare_dataset("camus", data_dir=make_camus(tmp_path / "n", 3, "nifti"), image_size=36, num_folds=3,
                            progress=False)
    mhd = prepare_dataset("camus", data_dir=make_camus(tmp_path / "m", 3, "mhd"), image_size=36, num_folds=3,
                          progress=False)
    assert nifti.ids == mhd.ids
    assert np.array_equal(nifti.masks, mhd.masks)
    assert np.array_equal(nifti.images, mhd.images)
    # orientation: the stored frame comes back as written (36 rows, 28 columns), not transposed
    image, labels = camus_frame(1, "2CH", "ED")
    assert nifti.manifest["samples"][0]["original_size"] == [36, 28]
    resized = np.asarray(Image.fromarray(labels).resize((36, 36), Image.Resampling.NEAREST))
    assert np.array_equal(nifti.masks[0], resized)


def test_camus_truncated_raw(tmp_path):
    folder = make_camus(tmp_path / "camus", 3, "mhd")
    raw = folder / "training" / "patient0002" / "patient0002_4CH_ES.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(MedbenchError, match=r"Cannot read image .*patient0002_4CH_ES\.mhd"):
        prepare_dataset("camus", data_dir=folder, image_size=32, num_folds=3, progress=False)


def test_camus_frame_without_ground_truth(tmp_path):
    folder = make_camus(tmp_path / "camus", 3, "nifti")
    (folder / "database_nifti" / "patient0003" / "patient0003_2CH_ES_gt.nii.gz").unlink()
    with pytest.raises(MedbenchError, match=r"1 CAMUS frames .* no ground truth .*patient0003_2CH_ES"):
        prepare_dataset("camus", data_dir=folder, image_size=32, num_folds=3, progress=False)


# --- bad and unusual input --------------------------------------------------------------


def test_missing_mask_folder(tmp_path):
    folder = make_neopolyp(tmp_path / "neo")
    (folder / "train_gt" / "train_gt").rename(folder / "train_gt" / "masks")
    with pytest.raises(MedbenchError, match=r"Missing masks folder .*train_gt/train_gt"):
        prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, progress=False)


def test_mask_without_image(tmp_path):
    folder = make_isic(tmp_path / "isic")
    (folder / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0000011.jpg").unlink()
    with pytest.raises(MedbenchError, match=r"1 masks in .*Validation_GroundTruth have no image.*ISIC_0000011"):
        prepare_dataset("isic2018", data_dir=folder, image_size=32, progress=False)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit gray pixels, with a tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12000, 40000])  # over the limit, and over Pillow's own hard limit
def test_decompression_bomb(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(MedbenchError, match=r"bomb\.png .*over the limit of 89478485 .*decompression bomb"):
        read_image(path)


def test_sixteen_bit_gray_image(tmp_path):
    values = np.array([[0, 1024], [2048, 4095]], np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    assert image.shape == (2, 2, 3)
    # scaled by the image's maximum 4095: 1024 -> 63.77 -> 64, 2048 -> 127.53 -> 128
    assert image[..., 0].tolist() == [[0, 64], [128, 255]]


def test_rgba_image(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_image(path)
    assert image.shape == (4, 4, 3)
    assert image[0, 0].tolist() == [200, 0, 0]


def test_palette_mode_label_mask(tmp_path):
    from test_bad_input import make_folder

    folder = make_folder(tmp_path / "ds", spec={"class_names": ["background", "a", "b"], "mask_format": "labels"})
    for path in (folder / "masks").iterdir():
        labels = (np.asarray(Image.open(path)) > 0).astype(np.uint8) * 2
        indexed = Image.fromarray(labels, "L").convert("P")
        indexed.putpalette([0, 0, 0, 10, 10, 10, 250, 250, 250] + [0] * 759)
        indexed.save(path)
    assert Image.open(folder / "masks" / "img00.png").mode == "P"
    prepared = prepare_dataset("folder", data_dir=folder, image_size=32, progress=False)
    assert set(np.unique(prepared.masks)) == {0, 2}


def save_jpeg_with_orientation(array: np.ndarray, path, orientation: int | None) -> None:
    image = Image.fromarray(array)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("mask_orientation", [6, None])
def test_exif_rotated_jpeg(tmp_path, mask_orientation):
    folder = make_neopolyp(tmp_path / "neo", n=6)
    image_path = folder / "train" / "train" / "case02.jpeg"
    mask_path = folder / "train_gt" / "train_gt" / "case02.jpeg"
    stored_image = np.asarray(Image.open(image_path))
    stored_mask = np.asarray(Image.open(mask_path))
    save_jpeg_with_orientation(stored_image, image_path, 6)  # 6: display rotated 90 degrees clockwise
    save_jpeg_with_orientation(stored_mask, mask_path, mask_orientation)
    if mask_orientation is None:
        with pytest.raises(MedbenchError, match=r"case02\.jpeg has EXIF orientation 6 but its mask .* has 1"):
            prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, num_folds=2, progress=False)
        return
    prepared = prepare_dataset("neopolyp_small", data_dir=folder, image_size=32, num_folds=2,
                               near_duplicate_distance=-1, progress=False)
    record = prepared.manifest["samples"][prepared.ids.index("case02")]
    assert record["original_size"] == [64, 48]  # height and width swapped by the rotation
    image = read_image(image_path)
    assert np.abs(image.astype(int) - np.rot90(stored_image, k=-1).astype(int)).mean() < 3
