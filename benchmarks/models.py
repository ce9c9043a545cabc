"""Parameters, MACs, CPU latency per image and peak memory of every registered model.

    python benchmarks/models.py [--sizes 224 512] [--models unet swinunet ...] [--output FILE]

One row per model and input size, measured with `medbench.efficiency.measure_efficiency`
(PyTorch's FlopCounterMode for MACs, `torch.utils.benchmark` median latency at batch 1,
peak memory of one forward pass), written as a Markdown table to stdout and, with
`--output`, to a file. The published parameter count of the registry is shown beside the
measured one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _common
import torch

from medbench.efficiency import measure_efficiency
from medbench.models import get_model_info, list_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="square input sides in pixels")
    parser.add_argument("--models", nargs="+", default=None, help="registry names (default all)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = [_common.machine_header(), "",
             "| model | family | params measured (M) | params published (M) | input | GMACs | CPU latency (ms/image) | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.models or list_models():
        info = get_model_info(name)
        for size in args.sizes:
            result = measure_efficiency(name, size, num_classes=2, device="cpu")
            row = (f"| {name} | {info.family} | {result.params / 1e6:.2f} | {info.published_params_m:g} | {size} | "
                   f"{result.macs / 1e9:.1f} | {result.latency_ms:.0f} | {result.peak_memory_mb:.0f} |")
            lines.append(row)
            print(row, flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
