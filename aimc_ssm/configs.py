"""Strict construction of the suite's dataclass configs from dicts (JSON files, checkpoints)."""
from __future__ import annotations

from dataclasses import fields


def from_dict_strict(cls, d: dict, what: str):
    """cls(**d), refusing keys cls does not have, so a typo in a saved config is an error, not a default."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known keys: {sorted(known)}")
    return cls(**d)
