"""MLproject entry point `tune`: `medbench tune` with the same parameters."""

import sys

import _bootstrap  # noqa: F401

from medbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
