"""Duplicate detection before splitting: identical bytes first, then perceptual hashes.

A duplicate split across folds leaks training data into validation, so duplicates are
removed before any split. Exact copies are found by file checksum. Near-duplicates
(re-encoded, resized, slightly recoloured copies) are found with imagehash's DCT
perceptual hash at `PHASH_SIZE` 16, a 256-bit hash of the grayscale image, compared by
Hamming distance.

`NEAR_DUPLICATE_DISTANCE` 36 of 256 bits was read off NeoPolyp-Small's 1,000 images
(`benchmarks/bench_data.py --duplicates` counts the pairs per distance). There a JPEG
re-encoded at quality 70 and resized by 0.9 lies 0-2 bits from its source, and the same
frame under another light mode 10-30 bits. Consecutive frames of one polyp lie about 36
bits apart, and the closest pairs of different scenes 40 bits and more.
NOTE: checked by eye on NeoPolyp-Small only; other modalities may need another value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEAR_DUPLICATE_DISTANCE", "PHASH_SIZE", "find_duplicates", "perceptual_hash"]

PHASH_SIZE = 16
NEAR_DUPLICATE_DISTANCE = 36


def perceptual_hash(image: np.ndarray) -> str:
    """DCT perceptual hash of an (H, W, 3) uint8 image as a hex string of PHASH_SIZE**2 bits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(image), hash_size=PHASH_SIZE))


def _bits(hex_hashes: list[str]) -> np.ndarray:
    return np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hex_hashes])  # (N, bytes)


def find_duplicates(
    ids: list[str],
    checksums: list[str],
    groups: list[str],
    hashes: list[str] | None,
    max_distance: int = NEAR_DUPLICATE_DISTANCE,
) -> tuple[list[str], list[dict]]:
    """Return the kept ids, in the order of `ids`, and one record per removed id.

    An id is removed when its checksum equals an earlier kept id's (`identical bytes`,
    distance 0), or when its perceptual hash lies within `max_distance` bits of an
    earlier kept id of another group (`perceptual hash`). Within one group (a patient)
    similar images are expected, such as two frames of one heart, and folds keep a group
    together anyway, so they are not compared. The record names the removed `id`, the
    `kept` twin (the nearest kept id), the `reason` and the Hamming `distance`.
    `hashes=None` or a negative `max_distance` skips the perceptual pass.
    """
    kept_positions: list[int] = []
    removed: list[dict] = []
    first_with_checksum: dict[str, str] = {}
    for position, (sample_id, checksum) in enumerate(zip(ids, checksums, strict=True)):
        if checksum in first_with_checksum:
            removed.append({"id": sample_id, "kept": first_with_checksum[checksum], "reason": "identical bytes",
                            "distance": 0})
            continue
        first_with_checksum[checksum] = sample_id
        kept_positions.append(position)
    if hashes is None or max_distance < 0:
        return [ids[p] for p in kept_positions], removed

    bits = _bits([hashes[p] for p in kept_positions])
    group_array = np.array([groups[p] for p in kept_positions])
    keep = np.zeros(len(kept_positions), dtype=bool)
    for row, position in enumerate(kept_positions):
        candidates = np.flatnonzero(keep & (group_array != group_array[row]))
        if candidates.size:
            distances = np.bitwise_count(bits[candidates] ^ bits[row]).sum(axis=1)
            nearest = int(distances.argmin())
            if distances[nearest] <= max_distance:
                twin = ids[kept_positions[candidates[nearest]]]
                removed.append({"id": ids[position], "kept": twin, "reason": "perceptual hash",
                                "distance": int(distances[nearest])})
                continue
        keep[row] = True
    return [ids[p] for p, k in zip(kept_positions, keep) if k], removed
