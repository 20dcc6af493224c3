"""Files and identities: atomic writes, verified checkpoints, run identities, config hashes, package
versions, figures, strict configs.

Everything the suite writes goes through `atomic_write` (a temporary file beside the target, then a
rename), so a killed run never leaves half a file, and the file gets the permissions of any file the
user creates (their umask), not a temporary file's 0600. A checkpoint has its SHA-256 beside it
(`best.pt.sha256`, in `sha256sum` format) and is read only whole and unchanged (`load_checkpoint`);
a run directory holds the identity of its run (`config.json`: the hash of its configs, the package
version and the checkpoint format), so that a cache can tell its own runs from others'.
`config_key` names what a trained model or a measurement depends on, so caches and result tables
tell runs apart.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import secrets
from dataclasses import asdict, fields
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1  # raise it when what a checkpoint or run directory holds changes meaning
CHECKSUM_SUFFIX = ".sha256"
RUN_CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: no checksum beside it, truncated or changed since it was
    written, or unreadable. The message names the file and what to do."""


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


# -- atomic writes -----------------------------------------------------------------------------------
def atomic_write(path: Path, write, mode: str = "w") -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named hidden file beside `path`, open for writing: (descriptor, its path).

    Created as open() creates any file (0666 less the umask), unlike tempfile.mkstemp's 0600, so that
    the file renamed into place is as readable as the user's other files."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def remove_temporaries(path: Path) -> None:
    """Delete the temporary files that killed writers of `path` left beside it. Only for a caller that
    holds the lock of every writer of `path`: another writer's temporary file would be deleted under it."""
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        tmp.unlink(missing_ok=True)


# -- checkpoints -------------------------------------------------------------------------------------
def checksum_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + CHECKSUM_SUFFIX)


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save(obj) to `path` atomically, then its SHA-256 beside it (`sha256sum -c` reads it)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data), "wb")
    atomic_write(checksum_path(path), lambda f: f.write(f"{hashlib.sha256(data).hexdigest()}  {Path(path).name}\n"))


def verified_bytes(path: Path) -> bytes:
    """The bytes of a checkpoint, checked against the checksum beside it; CheckpointError otherwise."""
    path = Path(path)
    fix = f"delete {path} (and {checksum_path(path).name}) to compute it again"
    data = path.read_bytes()
    try:
        recorded = checksum_path(path).read_text().split()[0]
    except FileNotFoundError as err:
        raise CheckpointError(
            f"{path} has no checksum beside it ({checksum_path(path).name}), so it cannot be verified: written by an "
            f"interrupted run or by an earlier version of aimc-ssm; {fix}"
        ) from err
    except IndexError as err:
        raise CheckpointError(f"{path}: its checksum file {checksum_path(path).name} is empty; {fix}") from err
    if hashlib.sha256(data).hexdigest() != recorded:
        raise CheckpointError(f"{path} ({len(data)} bytes) does not match its checksum: truncated or changed since it was written; {fix}")
    return data


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by save_checkpoint, read whole: its checksum verified first, tensors only."""
    data = verified_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # a verified file torch cannot read: written by another torch or format
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it to compute it again") from err


# -- run identities ----------------------------------------------------------------------------------
def run_identity(*configs) -> dict:
    """What a run directory's files belong to: the hash of the configs that decide them, the package
    version that wrote them and the checkpoint format. Two runs may share files only if these agree."""
    from . import __version__

    return {"key": config_key(*configs), "aimc_ssm": __version__, "format": CHECKPOINT_FORMAT}


def write_run_config(run_dir: Path, identity: dict, configs: dict) -> None:
    """run_dir/config.json: the identity, and the configs it hashes in readable form."""
    atomic_write(Path(run_dir) / RUN_CONFIG, lambda f: f.write(json.dumps({**identity, "configs": configs}, indent=2)))


def run_config_mismatch(run_dir: Path, identity: dict) -> str | None:
    """Why run_dir's files may not belong to the run of `identity` (None: they may): its config.json is
    missing, unreadable, or names other configs, another version or another format."""
    try:
        stored = json.loads((Path(run_dir) / RUN_CONFIG).read_text())
    except FileNotFoundError:
        return f"it has no {RUN_CONFIG} (written by an earlier version of aimc-ssm, or not by it)"
    except (ValueError, UnicodeDecodeError) as err:
        return f"its {RUN_CONFIG} cannot be read ({err})"
    if not isinstance(stored, dict):
        return f"its {RUN_CONFIG} holds no run identity"
    differing = [name for name in identity if stored.get(name) != identity[name]]
    if differing:
        return "its " + ", ".join(f"{name} is {stored.get(name)!r}, not {identity[name]!r}" for name in differing)
    return None


# -- figures -----------------------------------------------------------------------------------------
def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    atomic_write(Path(path), lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight"), "wb")
    plt.close(fig)
