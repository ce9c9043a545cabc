"""HD95 of `medbench.metrics.hd95` against MONAI and medpy on 512x512 mask pairs.

    python benchmarks/hd95_speed.py [--pairs 20] [--rounds 5]

Each round times the three implementations in turn over the same pairs. MONAI's
`compute_hausdorff_distance(percentile=95)` has medbench's definition (the larger of the two
directed 95th percentiles) and must agree to 1e-6 relative: it computes in float32. medpy's
`hd95` takes the 95th percentile of both directions pooled, so its values differ; the
script reports by how much.
"""

from __future__ import annotations

import argparse
import warnings

import _common
import numpy as np
import torch
from scipy import ndimage

SIZE = 512


def mask_pairs(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Irregular lesion-like masks and predictions that overlap them imperfectly."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        field = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 24)
        noise = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 8)
        threshold = np.quantile(field, rng.uniform(0.75, 0.95))
        target = field > threshold
        prediction = field + 0.3 * noise * field.std() / noise.std() > threshold
        pairs.append((prediction, target))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="mask pairs per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from medpy.metric.binary import hd95 as medpy_hd95
    from monai.metrics import compute_hausdorff_distance

    from medbench.metrics import hd95

    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's deprecation notices
    pairs = mask_pairs(args.pairs)

    def ours() -> list[float]:
        return [hd95(p, t).value for p, t in pairs]

    def monai() -> list[float]:
        return [float(compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                                                 percentile=95)) for p, t in pairs]

    def medpy() -> list[float]:
        return [float(medpy_hd95(p, t)) for p, t in pairs]

    seconds = _common.alternate({"medbench": ours, "monai": monai, "medpy": medpy}, args.rounds)
    per_pair = {name: _common.median(values) / len(pairs) * 1e3 for name, values in seconds.items()}
    ours_values, monai_values, medpy_values = np.array(ours()), np.array(monai()), np.array(medpy())
    relative = np.abs(ours_values - monai_values) / np.maximum(np.abs(monai_values), 1e-12)
    medpy_gap = (medpy_values - ours_values) / ours_values

    print(_common.machine_header())
    print(f"{len(pairs)} mask pairs of {SIZE}x{SIZE}, {args.rounds} alternating rounds, median per pair:")
    for name, milliseconds in per_pair.items():
        print(f"  {name:9s} {milliseconds:8.2f} ms")
    print(f"speed-up vs MONAI: {per_pair['monai'] / per_pair['medbench']:.1f}x (goal >= 3)")
    print(f"speed-up vs medpy: {per_pair['medpy'] / per_pair['medbench']:.1f}x (goal >= 10)")
    print(f"max relative difference to MONAI: {relative.max():.2e} (goal <= 1e-6)")
    print(f"medpy minus medbench, relative: median {np.median(medpy_gap):+.3f}, "
          f"range {medpy_gap.min():+.3f} .. {medpy_gap.max():+.3f} (pooled directions)")


if __name__ == "__main__":
    main()
