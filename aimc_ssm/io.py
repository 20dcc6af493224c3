"""Files and identities: atomic writes, checkpoints, config hashes, package versions, figures, strict configs.

Everything the suite writes goes through `atomic_write` (a temporary file beside the target, then a
rename), so a killed run never leaves half a file; `config_key` names what a trained model or a
measurement depends on, so caches and result tables tell runs apart.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch


def from_dict_strict(cls, d: dict, what: str):
    """cls(**d), refusing keys cls does not have, so a typo in a saved config is an error, not a default."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known keys: {sorted(known)}")
    return cls(**d)


def config_key(*configs) -> str:
    """Stable short hash of dataclasses/dicts; the torch device (a TrainConfig's `compute`) is not part
    of a model's identity."""
    payload = []
    for c in configs:
        d = asdict(c) if hasattr(c, "__dataclass_fields__") else dict(c)
        d.pop("compute", None)
        payload.append(d)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    try:
        import aihwkit

        versions["aihwkit"] = str(aihwkit.__version__)
    except ImportError:
        pass
    from . import __version__

    versions["aimc_ssm"] = __version__
    return versions


def atomic_write(path: Path, write, mode: str = "w") -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_checkpoint(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    atomic_write(Path(path), lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight"), "wb")
    plt.close(fig)
