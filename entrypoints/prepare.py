"""MLproject entry point `prepare`: `medbench prepare` with the same parameters."""

import sys

import _bootstrap  # noqa: F401

from medbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
