"""Data-path benchmarks on NeoPolyp-Small, written up in BENCHMARKS.md.

    MEDBENCH_DATA_DIR=/path/to/data python benchmarks/bench_data.py [--loader] [--memory] [--duplicates]

--loader      training batches per second of the data loader (quick preset: 128x128,
              batch 8, the dataset's augmentation, no worker processes) against the
              training steps per second of the fastest model (Swin-Unet), measured in
              alternating rounds in one process; reports medians and their ratio.
--memory      peak resident memory of a child process that iterates every training
              batch of NeoPolyp-Small at 512x512 from the memory-mapped cache, against a
              child that loads the same arrays into memory (np.load without mmap).
--duplicates  perceptual-hash distances between NeoPolyp-Small images: how many pairs lie
              within each distance, which is how the near-duplicate threshold was read off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medbench.data import SegmentationDataset, augmentation, prepare_dataset  # noqa: E402

DATASET = "neopolyp_small"
ROUNDS = 3


def loader_rate(prepared, batches: int) -> float:
    train, _ = prepared.fold_indices(0)
    dataset = SegmentationDataset(prepared, train, augmentation(prepared.augmentation, 0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, num_workers=0)
    start = time.perf_counter()
    for count, _ in enumerate(loader, start=1):
        if count == batches:
            break
    return batches / (time.perf_counter() - start)


def model_rate(model, optimizer, steps: int) -> float:
    images, masks = torch.randn(8, 3, 128, 128), torch.randint(0, 3, (8, 128, 128))
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def bench_loader() -> dict:
    from medbench.models import create_model

    prepared = prepare_dataset(DATASET, image_size=128, max_images=160, progress=False)
    model = create_model("swinunet", 3, prepared.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model_rate(model, optimizer, 1)  # warm-up
    loaders, models = [], []
    for _ in range(ROUNDS):  # alternate, so that load on the shared machine hits both alike
        loaders.append(loader_rate(prepared, 15))
        models.append(model_rate(model, optimizer, 3))
    loader, step = statistics.median(loaders), statistics.median(models)
    return {"loader_batches_per_s": loader, "swinunet_steps_per_s": step, "ratio": loader / step,
            "loader_rounds": loaders, "model_rounds": models}


def child_iterate(path: str, mode: str) -> None:
    """Iterate every training batch of the prepared folder at `path`; print peak RSS in MB."""
    from medbench.data.prepare import _load

    prepared = _load(Path(path))
    before = _status_mb("VmRSS")
    if mode == "in-memory":  # the peer: whole arrays read into memory
        images, masks = np.load(prepared.path / "images.npy"), np.load(prepared.path / "masks.npy")
        dataset = SegmentationDataset(prepared, range(len(prepared.ids)), augmentation(prepared.augmentation, 0))
        dataset._images, dataset._masks = images, masks
    else:
        dataset = SegmentationDataset(prepared, range(len(prepared.ids)), augmentation(prepared.augmentation, 0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=0)
    checksum = 0.0
    for images_batch, masks_batch, _ in loader:
        checksum += float(masks_batch.float().mean())
    # VmHWM is the peak resident memory of this process image (ru_maxrss would include the
    # parent's peak, which Linux keeps across exec). RssFile counts pages of mapped files,
    # which the kernel can drop and read again. RssAnon is memory the process owns.
    print(json.dumps({"mode": mode, "rss_after_imports_mb": before, "peak_rss_mb": _status_mb("VmHWM"),
                      "batches": len(loader), "rss_anon_mb": _status_mb("RssAnon"),
                      "rss_file_mb": _status_mb("RssFile")}))


def _status_mb(field: str) -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) / 1024


def bench_memory() -> dict:
    prepared = prepare_dataset(DATASET, image_size=512, progress=True)
    results: dict[str, list[float]] = {"memory-mapped": [], "in-memory": []}
    details: list[dict] = []
    for _ in range(2):
        for mode in results:
            output = subprocess.run(
                [sys.executable, __file__, "--child", str(prepared.path), mode], capture_output=True, text=True,
                check=True,
            ).stdout
            record = json.loads(output.strip().splitlines()[-1])
            results[mode].append(record["peak_rss_mb"])
            details.append(record)
    sizes = {name: (prepared.path / name).stat().st_size / 2**20 for name in ("images.npy", "masks.npy")}
    return {"images": len(prepared.ids), "array_files_mb": sizes, "peak_rss_mb": results, "runs": details,
            "ratio_in_memory_to_mapped": max(results["in-memory"]) / max(results["memory-mapped"])}


def bench_duplicates() -> dict:
    from medbench.data.duplicates import _bits
    from medbench.data.prepare import _perceptual_hashes
    from medbench.data.sources import get_source

    source = get_source(DATASET)
    samples = source.samples(source.folder())
    checksums = {s.id: (source.checksum(s.image), "") for s in samples}
    bits = _bits(_perceptual_hashes(source, samples, checksums, progress=True))
    distances = np.bitwise_count(bits[:, None, :] ^ bits[None]).sum(axis=2)
    upper = distances[np.triu_indices(len(samples), 1)]
    return {f"pairs_within_{d}": int((upper <= d).sum()) for d in (0, 8, 16, 24, 30, 36, 40, 44, 52)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_iterate(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loader", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--duplicates", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = [name for name in ("loader", "memory", "duplicates") if getattr(args, name)] or ["loader", "memory"]
    for name in chosen:
        result = globals()[f"bench_{name}"]()
        print(json.dumps({name: result}, indent=1), flush=True)


if __name__ == "__main__":
    main()
