"""Save and load training checkpoints as plain ``.npz`` files, written atomically and read without pickle.

Layout of a checkpoint file (an uncompressed zip archive written by ``np.savez``):

* ``param/<name>``  one array per model parameter, e.g. ``param/enc0.W``;
* ``optim/<name>``  one array per optimizer-state entry, e.g. ``optim/t`` (0-d), ``optim/m``;
* ``meta``          a 0-d NumPy unicode string holding JSON with the keys ``format``
  (``"npvae-checkpoint"``), ``version`` (1), ``epoch``, ``history``, ``config``, ``rng_state``
  and ``members`` (the sorted names of the other members: a damaged zip directory can hide
  members from the reader without any other error, and this list finds it).

Everything is numbers or text, so the file is read with ``allow_pickle=False``: loading a
checkpoint can never run code hidden in the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "check_architecture", "atomic_write",
           "atomic_write_text"]

FORMAT = "npvae-checkpoint"
VERSION = 1
_PARAM, _OPTIM, _META = "param/", "optim/", "meta"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # first local file header / empty archive
_META_KEYS = {"epoch": int, "history": list, "config": dict, "rng_state": dict}


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; the message starts with the file path, then the problem."""


@dataclass
class Checkpoint:
    """Everything needed to resume training exactly where it stopped.

    ``params`` and ``optimizer_state`` map names to arrays (scalars as 0-d arrays); their dtypes
    and shapes survive a round trip exactly. ``rng_state``, ``history`` and ``config`` go through
    JSON, so tuples come back as lists, dict keys as strings and NumPy scalars as Python numbers.
    """

    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    rng_state: dict
    epoch: int
    history: list[dict]
    config: dict


def _error(path: Path, problem: str) -> CheckpointError:
    """Build the error every failure raises: ``"<path>: <problem>"``."""
    return CheckpointError(f"{path}: {problem}")


def _json_default(obj: Any) -> Any:
    """Let ``json.dumps`` accept NumPy scalars and arrays (e.g. an MT19937 key or a float32 loss)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_meta_types(path: Path, info: dict) -> None:
    """Each of epoch, history, config and rng_state is there, with its type (on save and on load)."""
    for key, kind in _META_KEYS.items():
        if key not in info:
            raise _error(path, f"{_META!r} is missing the key {key!r}")
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise _error(path, f"{_META!r} key {key!r} should be {kind.__name__}, "
                               f"got {type(info[key]).__name__}")


def _arrays_to_save(path: Path, ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """Check the checkpoint and flatten it into the ``{member name: array}`` dict given to ``np.savez``."""
    if isinstance(ckpt.epoch, bool) or not isinstance(ckpt.epoch, (int, np.integer)):
        raise _error(path, f"epoch must be an int, got {type(ckpt.epoch).__name__}")
    arrays = {}
    for prefix, group in ((_PARAM, ckpt.params), (_OPTIM, ckpt.optimizer_state)):
        for name, value in group.items():
            if not isinstance(name, str) or not name:
                raise _error(path, f"{prefix}{name!r}: names must be non-empty strings")
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise _error(path, f"{prefix}{name} is an object array; only numeric/text arrays "
                                   "can be saved without pickle")
            arrays[prefix + name] = array
    meta = {"format": FORMAT, "version": VERSION, "epoch": int(ckpt.epoch),
            "history": ckpt.history, "config": ckpt.config, "rng_state": ckpt.rng_state,
            "members": sorted(arrays)}
    try:
        meta_text = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise _error(path, f"history/config/rng_state is not JSON serialisable ({exc})") from exc
    _check_meta_types(path, json.loads(meta_text))    # what load_checkpoint will read back: never unloadable
    # meta first in the archive (a 0-d '<U' array: plain text, no pickle needed), so that a damaged
    # directory entry hides members after it, which the list finds, rather than meta itself
    return {_META: np.array(meta_text), **arrays}


def _fsync_directory(directory: Path) -> None:
    """Best effort: make the rename itself durable (not possible on every OS, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace the file `path` atomically: write(f) fills an open binary file.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and only
    then renamed over ``path`` (``os.replace`` is atomic). A crash at any moment therefore
    leaves either the previous file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Like tempfile.mkstemp (same directory, so the rename never crosses file systems; O_EXCL, so
    # never an existing file) but with mode 0o666 minus the umask instead of mkstemp's owner-only 0o600.
    tmp_name = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:  # also on KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:   # name the file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` for UTF-8 text (config.json, history.csv, eval.json, ...)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (see `atomic_write`) and return the path.

    The file is written to exactly ``path``: no ``.npz`` suffix is added.
    """
    path = Path(path)
    arrays = _arrays_to_save(path, ckpt)  # validate before touching the disk
    return atomic_write(path, lambda f: np.savez(f, **arrays))  # a file object: np.savez adds no ".npz"


def _read_members(path: Path) -> dict[str, np.ndarray]:
    """Read every member of the npz eagerly, turning every failure into a ``CheckpointError``."""
    try:
        with open(path, "rb") as f:
            signature = f.read(4)
    except FileNotFoundError:
        raise _error(path, "file not found (missing checkpoint)") from None
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if signature not in _ZIP_SIGNATURES:
        what = "the file is empty" if not signature else "it does not start with a zip signature"
        raise _error(path, f"not an npz file ({what})")

    members: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            # np.load is lazy: a bad CRC or a cut member only shows up when it is read, so read all now.
            for name in npz.files:
                try:
                    members[name] = npz[name]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    raise _error(path, f"member {name!r} is an object array that needs pickle; "
                                       "refusing to load it (allow_pickle=False)") from exc
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, ...
        raise _error(path, f"truncated or corrupted npz file ({type(exc).__name__}: {exc})") from exc
    return members


def _parse_meta(path: Path, meta: np.ndarray | None) -> dict:
    """Decode and check the JSON held by the ``meta`` member."""
    if meta is None:
        raise _error(path, f"missing the {_META!r} member (not an npvae checkpoint)")
    if meta.shape != () or meta.dtype.kind != "U":
        raise _error(path, f"{_META!r} should be a 0-d text array, got dtype {meta.dtype} shape {meta.shape}")
    try:
        info = json.loads(str(meta[()]))
    except json.JSONDecodeError as exc:
        raise _error(path, f"{_META!r} is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise _error(path, f"wrong format {found!r}: not an npvae checkpoint (expected {FORMAT!r})")
    if info.get("version") != VERSION:
        raise _error(path, f"unsupported checkpoint version {info.get('version')!r} "
                           f"(this npvae reads version {VERSION})")
    _check_meta_types(path, info)
    return info


def check_architecture(path: Path, params: dict[str, np.ndarray],
                       expected: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Refuse parameters whose names, shapes or dtypes differ from what the model expects."""
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing:
        raise _error(path, f"from another architecture: missing parameters {missing}")
    if extra:
        raise _error(path, f"from another architecture: unexpected parameters {extra}")
    for name, (shape, dtype) in expected.items():
        array = params[name]
        if array.shape != tuple(shape):
            raise _error(path, f"from another architecture: {name} has shape {array.shape}, "
                               f"expected {tuple(shape)}")
        if array.dtype != np.dtype(dtype):
            raise _error(path, f"from another architecture: {name} has dtype {array.dtype}, "
                               f"expected {np.dtype(dtype)}")


def load_checkpoint(path: str | os.PathLike, *,
                    expected_params: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
                    ) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`, never unpickling anything.

    If ``expected_params`` maps each parameter name to ``(shape, dtype)``, the file must hold
    exactly those parameters. Every problem raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    members = _read_members(path)
    info = _parse_meta(path, members.pop(_META, None))
    listed = info.get("members")          # absent in checkpoints written before npvae listed them
    if listed is not None and sorted(members) != listed:
        missing, extra = sorted(set(listed) - set(members)), sorted(set(members) - set(listed))
        raise _error(path, f"damaged file: members {missing} are missing" + (f", {extra} unexpected" if extra else "")
                     if missing else f"damaged file: unexpected members {extra}")
    params: dict[str, np.ndarray] = {}
    optimizer_state: dict[str, np.ndarray] = {}
    for name, array in members.items():
        if name.startswith(_PARAM) and len(name) > len(_PARAM):
            params[name[len(_PARAM):]] = array
        elif name.startswith(_OPTIM) and len(name) > len(_OPTIM):
            optimizer_state[name[len(_OPTIM):]] = array
        else:
            raise _error(path, f"unexpected member {name!r} (expected param/..., optim/... or meta)")
    if expected_params is not None:
        check_architecture(path, params, expected_params)
    return Checkpoint(params=params, optimizer_state=optimizer_state, rng_state=info["rng_state"],
                      epoch=info["epoch"], history=info["history"], config=info["config"])
