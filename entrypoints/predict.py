"""MLproject entry point `predict`: `medbench predict` with the same parameters."""

import sys

import _bootstrap  # noqa: F401

from medbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
