"""Training images per second at 512x512 per model and option set, and the share of the FLOP floor.

    python benchmarks/gpu_throughput.py [--models unet,swinunet,segformer_b3] [--image-size 512]
        [--batch-size 8] [--steps 20] [--device cuda]

For each model and each option set (fp32; bf16 autocast; bf16 + channels-last; bf16 +
channels-last + torch.compile) it times `--steps` training steps (AdamW, the medbench loss)
after warm-up steps, on random inputs of the working size. The floor of a training step
is 3 x the forward FLOPs (forward, and a backward of about twice the forward), counted by
`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add); the share of the floor
is that count times images per second over the measured bf16 matrix-multiply rate. Models
that do not allow mixed precision (registry `allow_amp`) run the bf16 sets in fp32.
On a CPU, pass small sizes to check that the script runs.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import _common
import torch
from torch.utils.flop_counter import FlopCounterMode

OPTION_SETS = {
    "fp32": {"amp": False, "channels_last": False, "compile": False},
    "bf16": {"amp": True, "channels_last": False, "compile": False},
    "bf16+cl": {"amp": True, "channels_last": True, "compile": False},
    "bf16+cl+compile": {"amp": True, "channels_last": True, "compile": True},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int) -> float:
    """Measured bf16 (CUDA) or fp32 (CPU) matrix-multiply rate in FLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def forward_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> int:
    """FLOPs of one forward pass of one image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops()


def images_per_second(name: str, options: dict[str, bool], args: argparse.Namespace, device: torch.device) -> float:
    from medbench.models import create_model, get_model_info
    from medbench.training.losses import SegmentationLoss

    model = create_model(name, 3, 2).to(device)
    memory_format = torch.channels_last if options["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if options["compile"] else model
    amp = options["amp"] and get_model_info(name).allow_amp and device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = SegmentationLoss(2)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.to(memory_format=memory_format)
    masks = torch.randint(0, 2, (args.batch_size, args.image_size, args.image_size), device=device)

    def step() -> None:
        context = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with context:
            loss = loss_fn(forward(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.batch_size * args.steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,swinunet,segformer_b3", help="comma-separated registry names")
    parser.add_argument("--options", default=",".join(OPTION_SETS), help="comma-separated option sets")
    parser.add_argument("--image-size", type=int, default=512, help="square input size in pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="images per training step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    from medbench.models import create_model

    rate = matmul_rate(device, 8192 if device.type == "cuda" else 1024)
    print(_common.machine_header())
    print(f"matrix-multiply rate: {rate / 1e12:.1f} TFLOP/s; {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'model':16s} {'options':18s} {'images/s':>9s} {'GFLOP/img':>10s} {'floor share':>11s}")
    for name in args.models.split(","):
        flops = forward_flops(create_model(name, 3, 2).to(device).eval(), args.image_size, device)
        for option_name in args.options.split(","):
            try:
                throughput = images_per_second(name, OPTION_SETS[option_name], args, device)
            except Exception as error:  # report and go on: one failing option must not hide the rest
                print(f"{name:16s} {option_name:18s} failed: {type(error).__name__}: {str(error)[:200]}")
                continue
            share = 3 * flops * throughput / rate
            print(f"{name:16s} {option_name:18s} {throughput:9.1f} {3 * flops / 1e9:10.1f} {100 * share:10.1f}%")
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
