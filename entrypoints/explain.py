"""MLproject entry point `explain`: `medbench explain` with the same parameters."""

import sys

import _bootstrap  # noqa: F401

from medbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
