"""The PyTorch selective scan, one step per element (CPU default) against chunked prefix scans.

    python benchmarks/selective_scan.py [--rounds 3] [--batch 2] [--chunk-sizes 1 16 64]

Times one forward and backward pass of `selective_scan_torch` at the sizes of Swin-UMamba's
four encoder stages for a 224x224 input. These are VMamba-Tiny's: 4 scan paths, 16 states,
sequence lengths 56x56 to 7x7, and 2 x 96 to 2 x 768 channels per path. Chunk size 1 steps through the
sequence; larger chunk sizes run a parallel prefix scan inside each chunk. The chunk sizes
alternate within each round, and the table gives the median seconds per stage and the
ratio to chunk size 1.
"""

from __future__ import annotations

import argparse

import _common
import torch

from medbench.models.ops.selective_scan import selective_scan_torch

PATHS, STATE = 4, 16
# (side of the square feature map, channels per path) of VMamba-Tiny's stages at 224x224
STAGES = ((56, 192), (28, 384), (14, 768), (7, 1536))


def make_inputs(batch: int, side: int, channels: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(side)
    length, total = side * side, PATHS * channels

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_(True)

    return dict(u=rand(batch, total, length), delta=rand(batch, total, length),
                A=(-torch.rand(total, STATE, generator=generator) * STATE).requires_grad_(True),
                B=rand(batch, PATHS, STATE, length), C=rand(batch, PATHS, STATE, length),
                D=rand(total), delta_bias=rand(total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per chunk size and stage")
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 16, 64], help="chunk sizes to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(_common.machine_header())
    print(f"forward and backward of one scan, batch {args.batch}, median of {args.rounds} rounds, seconds")
    print()
    print("| stage (length x channels) | " + " | ".join(f"chunk {c}" for c in args.chunk_sizes) + " |")
    print("|---" * (len(args.chunk_sizes) + 1) + "|")
    for side, channels in STAGES:
        inputs = make_inputs(args.batch, side, channels)

        def run(chunk_size: int) -> None:
            y = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=chunk_size)
            y.sum().backward()

        for chunk_size in args.chunk_sizes:  # one untimed pass each
            run(chunk_size)
        seconds = _common.alternate({str(c): (lambda c=c: run(c)) for c in args.chunk_sizes}, args.rounds)
        medians = {c: _common.median(seconds[str(c)]) for c in args.chunk_sizes}
        base = medians[args.chunk_sizes[0]]
        cells = [f"{medians[c]:.3f} ({medians[c] / base:.1f}x)" for c in args.chunk_sizes]
        print(f"| {side * side} x {PATHS * channels} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
