"""MLproject entry point `cv`: `medbench cv` with the same parameters."""

import sys

import _bootstrap  # noqa: F401

from medbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["cv", *sys.argv[1:]]))
