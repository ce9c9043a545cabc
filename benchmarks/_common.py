"""Helpers shared by the benchmark scripts: the machine description and alternating timers."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))


def machine_header() -> str:
    """Lines naming the machine, library versions and the command that produced the numbers."""
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return "\n".join([
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {cpu}, {os.cpu_count()} logical cores, GPU {gpu}, torch threads {torch.get_num_threads()}",
        f"software: Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}",
        f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}",
    ])


def alternate(measures: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Time each callable once per round, in turn, so machine noise hits all of them alike.

    Returns the wall-clock seconds of every call, per name.
    """
    seconds: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            started = time.perf_counter()
            measure()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)
