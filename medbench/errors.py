"""Error type for invalid user input, and a helper that suggests the closest valid name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["MedbenchError", "unknown_name_error"]


class MedbenchError(ValueError):
    """Invalid input: a name, file or value that the user can fix. The message says how."""


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> MedbenchError:
    """Build the error for an unknown `kind` name, listing close matches and all valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return MedbenchError(f"Unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}.")
