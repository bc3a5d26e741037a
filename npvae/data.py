"""Loading, checking, caching, preprocessing and minibatching of MNIST-style IDX image datasets."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import re
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .checkpoint import atomic_write

BUNDLED_DIR = Path(__file__).resolve().parent / "datasets" / "mnist"

# The standard file names of one split: (images, labels). Each may also end in ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Published MD5 sums of the *uncompressed* MNIST files.
MNIST_MD5 = {
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
}

# Public IDX datasets that download_dataset() knows: base URL, SHA-256 and size in bytes of each .gz file.
DATASETS: dict[str, dict] = {
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "files": {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        "sizes": {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
                  "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542},
    },
    "fashion-mnist": {
        "url": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "files": {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        "sizes": {"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
                  "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148},
    },
}

# ----------------------------------------------------------------------------- IDX format
# An IDX file is: two zero bytes, a type code, the number of dimensions d, then d
# big-endian uint32 sizes, then the elements in C order, big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {(np.dtype(t).kind, np.dtype(t).itemsize): code for code, t in _IDX_TYPES.items()}


def _idx_header(data: bytes, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check the header at the start of `data`: (element dtype, dims, header length in bytes)."""
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: bad IDX magic number {data[:4].hex()} (must start with 0000)")
    if data[2] not in _IDX_TYPES:
        raise ValueError(f"{source}: unknown IDX element type code 0x{data[2]:02x}")
    ndim = data[3]
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{source}: truncated header: {ndim} dimensions need {header_len} bytes, file has {len(data)}")
    return np.dtype(_IDX_TYPES[data[2]]), struct.unpack(f">{ndim}I", data[4:header_len]), header_len


def _payload_bytes(dtype: np.dtype, dims: tuple[int, ...]) -> int:
    return math.prod(dims) * dtype.itemsize


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array of its header's shape.

    Every field is checked; any problem raises ValueError naming `source`. The payload
    must hold exactly prod(dims) elements: a short or over-long file is refused.
    """
    dtype, dims, header_len = _idx_header(data, source)
    expected = _payload_bytes(dtype, dims)
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "over-long"
        raise ValueError(f"{source}: {what} data: dims {dims} of {dtype.name} need {expected} bytes "
                         f"after the header, found {actual}")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    except ValueError as exc:      # too many dimensions, or sizes NumPy cannot index
        raise ValueError(f"{source}: an array of dims {dims[:8]}{' ...' if len(dims) > 8 else ''} "
                         f"({len(dims)} dimensions) cannot be held by NumPy ({exc})") from None
    return array.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def encode_idx(array: np.ndarray) -> bytes:
    """Return the bytes of an uncompressed IDX file holding `array` (1 to 255 dims)."""
    array = np.asarray(array)
    code = _IDX_CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()


def _read_at_most(f, limit: int) -> bytes:
    """Up to `limit` bytes from the binary file object f, read in chunks (no buffer of `limit` bytes
    is allocated up front: a header may declare far more than the file holds)."""
    chunks, left = [], limit
    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_raw(path: str | os.PathLike) -> bytes:
    """Read an IDX file, gunzipping it if it starts with the gzip magic bytes.

    Reads no more than its header declares, plus one byte to tell an over-long file: a small .gz
    that expands to gigabytes costs no memory.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"     # an IDX file starts with 00 00, so no ambiguity
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if gzipped else raw
        try:
            data = _read_at_most(f, 4)
            if len(data) == 4:
                data += _read_at_most(f, 4 * data[3])
            dtype, dims, _ = _idx_header(data, str(path))
            return data + _read_at_most(f, _payload_bytes(dtype, dims) + 1)
        except (OSError, EOFError, zlib.error, struct.error) as exc:
            if not gzipped:
                raise
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from its content) into an array."""
    return decode_idx(_read_raw(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzip-compressed if `path` ends with ".gz"."""
    data = encode_idx(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(path, lambda f: f.write(data))     # a failed write keeps the previous file


# ----------------------------------------------------------------------------- caching
# Decoded arrays are cached twice, both keyed by (resolved path, mtime, ctime, inode, size, expected
# MD5) - the ctime and inode because tools that copy files can restore an mtime, and MNIST-like
# data sets have files of equal sizes:
#  * in memory, for the life of the process (read-only arrays; loaders hand out copies);
#  * on disk as a .npy file under cache_root()/arrays, with the SHA-256 of the .npy bytes
#    stored beside it in a ".sha256" file. A cache file whose hash does not match, or that
#    np.load (allow_pickle=False) cannot read, is ignored and rebuilt from the source.
# An entry built with an MD5 check is only ever written after that check passed.
_MEMORY_CACHE: dict[tuple, np.ndarray] = {}
CACHE_STATS: Counter = Counter()  # "decoded", "disk_hits", "memory_hits": handy for tests


def cache_root() -> Path:
    """The npvae cache folder: $NPVAE_CACHE_DIR, else $XDG_CACHE_HOME/npvae, else ~/.cache/npvae."""
    if os.environ.get("NPVAE_CACHE_DIR"):
        return Path(os.environ["NPVAE_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "npvae"


def clear_memory_cache() -> None:
    """Forget the decoded arrays held in memory (the .npy cache on disk is kept)."""
    _MEMORY_CACHE.clear()


def _disk_cache_path(key: tuple) -> Path:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
    return cache_root() / "arrays" / f"{Path(key[0]).name.split('.')[0]}-{digest}.npy"


def _read_disk_cache(key: tuple) -> np.ndarray | None:
    npy = _disk_cache_path(key)
    try:
        blob = npy.read_bytes()
        recorded = npy.with_suffix(".sha256").read_text().strip()
        if hashlib.sha256(blob).hexdigest() != recorded:
            return None
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception:  # missing, unreadable or malformed: never trusted, simply rebuilt
        return None


def _write_disk_cache(key: tuple, array: np.ndarray) -> None:
    """Best effort: an unwritable cache folder only costs speed."""
    npy = _disk_cache_path(key)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    blob = buffer.getvalue()
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        for target, content in ((npy, blob), (npy.with_suffix(".sha256"), hashlib.sha256(blob).hexdigest().encode())):
            fd, tmp = tempfile.mkstemp(dir=npy.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(tmp, target)
    except OSError:
        pass


def _load_idx_cached(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """read_idx(path) through both caches, checking the uncompressed MD5 if one is given."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_size, expected_md5)
    if key in _MEMORY_CACHE:
        CACHE_STATS["memory_hits"] += 1
        return _MEMORY_CACHE[key]
    array = _read_disk_cache(key)
    if array is not None:
        CACHE_STATS["disk_hits"] += 1
    else:
        raw = _read_raw(path)
        if expected_md5 is not None:
            actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
            if actual != expected_md5:
                raise ValueError(f"{path}: MD5 of the uncompressed bytes is {actual}, the published MNIST sum is "
                                 f"{expected_md5}; refusing a modified or corrupted file")
        array = decode_idx(raw, str(path))
        CACHE_STATS["decoded"] += 1
        _write_disk_cache(key, array)
    array.setflags(write=False)
    _MEMORY_CACHE[key] = array
    return array


# ----------------------------------------------------------------------------- loaders
def _find_files(folder: Path, split: str) -> list[Path]:
    found, missing = [], []
    for stem in SPLIT_FILES[split]:
        candidates = [folder / stem, folder / (stem + ".gz")]
        hit = next((p for p in candidates if p.is_file()), None)
        found.append(hit)
        if hit is None:
            missing.append(stem)
    if missing:
        expected = ", ".join(n for pair in SPLIT_FILES.values() for n in pair)
        raise ValueError(f"{folder}: missing {', '.join(missing)} (plain or .gz). An IDX dataset folder must hold "
                         f"the four files {expected}, each either uncompressed or with a .gz suffix")
    return found


def load_mnist_uint8(split: str = "train", data_dir: str | os.PathLike | None = None,
                     verify: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as raw pixels: images uint8 (N, 784 or H*W), labels int64 (N,).

    data_dir=None loads the bundled MNIST copy; otherwise a folder holding the standard
    file names (see SPLIT_FILES; plain or .gz), e.g. Fashion-MNIST or KMNIST. Only the
    two files of the requested split need to be present.

    verify: check the MD5 of the uncompressed bytes against the published MNIST sums and
    refuse a file that differs. None (default) means "yes for the bundled copy, no for a
    data_dir": a folder of Fashion-MNIST has the very same names and shapes, so there is
    no way to guess that a folder is meant to be MNIST; pass verify=True to insist.
    Every file is always checked structurally (see decode_idx).

    Decoded arrays are cached in memory and as SHA-256-checked .npy files under
    cache_root(), so every load after the first takes a fraction of a second. The images
    returned are read-only views of the in-memory cache (so nobody can damage it); the labels
    are a new array.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = BUNDLED_DIR if data_dir is None else Path(data_dir)
    if verify is None:
        verify = data_dir is None
    image_path, label_path = _find_files(folder, split)
    images = _load_idx_cached(image_path, MNIST_MD5[SPLIT_FILES[split][0]] if verify else None)
    labels = _load_idx_cached(label_path, MNIST_MD5[SPLIT_FILES[split][1]] if verify else None)
    for path, array, ndim in ((image_path, images, 3), (label_path, labels, 1)):
        if array.dtype != np.uint8 or array.ndim != ndim:
            raise ValueError(f"{path}: expected {ndim}-d uint8 data, found {array.ndim}-d {array.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{image_path} holds 0 images (its header declares dims {images.shape}); a data set "
                         f"needs at least one image")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels")
    # The images are the cache's own read-only array (a view, no copy: 47 MB saved for the
    # training set); writing to them raises an error. Copy them to change them.
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def to_float(images_uint8: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Convert uint8 pixels of any shape to floats in [0, 1] (pixel / 255) of the given dtype."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8:
        raise ValueError(f"to_float expects uint8 pixels, got {images_uint8.dtype}")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    out = images_uint8.astype(dtype)
    out /= 255
    return out


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (`to_float`); floating-point images unchanged."""
    images = np.asarray(images)
    return to_float(images) if images.dtype == np.uint8 else images


def in_batches(fn, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """np.concatenate([fn(x[s:s + batch_size]) for each batch]): a model (or any fn) run over
    data `batch_size` rows at a time, so that no intermediate array is of the whole data's size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return np.concatenate([fn(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
               verify: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split: images float32 (N, 784) in [0, 1] (pixel / 255), labels int64 (N,).

    Same arguments, checks and caching as load_mnist_uint8 (see there): the bundled MNIST
    is MD5-verified, a custom data_dir only structurally unless verify=True.
    """
    images, labels = load_mnist_uint8(split, data_dir, verify)
    return to_float(images), labels


# ----------------------------------------------------------------------------- download
# The most a download of unknown size (no `sizes` entry, no Content-Length) may write to disk.
MAX_DOWNLOAD_BYTES = 256 << 20
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_file(url: str, target: Path, sha256: str, timeout: float, size: int | None = None) -> None:
    """Stream `url` to a temp file beside `target`, check its size and SHA-256, then rename atomically.

    At most `size` bytes (else the Content-Length, else MAX_DOWNLOAD_BYTES) are written, plus
    one to tell that the server sends more.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest, received, declared = hashlib.sha256(), 0, None
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    declared = response.headers.get("Content-Length")
                    limit = size if size is not None else int(declared) if declared else MAX_DOWNLOAD_BYTES
                    if declared is not None and int(declared) > limit:
                        raise ValueError(f"{url}: the server announces {declared} bytes, the file has {limit}; "
                                         f"refusing it")
                    while received <= limit and (chunk := response.read(min(1 << 16, limit + 1 - received))):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionError(f"download of {url} failed after {received} bytes: {exc}") from exc
        if received > limit:
            raise ValueError(f"{url}: the server sends more than the {limit} bytes of the file; stopped "
                             f"there and discarded it")
        if declared is not None and received != int(declared):
            raise ConnectionError(f"download of {url} was cut short: got {received} of {declared} bytes")
        if digest.hexdigest() != sha256:
            raise ValueError(f"{url}: SHA-256 is {digest.hexdigest()}, expected {sha256}; file discarded")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_dataset(name: str, cache_dir: str | os.PathLike | None = None, base_url: str | None = None,
                     files: dict[str, str] | None = None, timeout: float = 30.0,
                     sizes: dict[str, int] | None = None) -> Path:
    """Download the files of a public IDX dataset and return the folder holding them.

    name: a key of DATASETS, or any folder name if base_url and files are given.
    files: {file name: SHA-256 hex digest}; defaults to the registry entry. A hash is
    always required: each file goes to a temp file in the target folder, is verified,
    and only then renamed into place, so a partial or corrupted download never looks
    valid. Files already present with the right hash are not fetched again.
    sizes: {file name: size in bytes}, defaulting to the registry entry's (when `files` is too);
    a download stops at its file's size (a server sending more is refused), or for a file of unknown
    size at the Content-Length, else at MAX_DOWNLOAD_BYTES.
    The folder is `cache_dir/name`, with cache_dir defaulting to cache_root()/"datasets";
    pass it as data_dir to load_mnist. Raises ValueError for a bad argument or a hash
    mismatch, ConnectionError for a network failure or truncated transfer.
    """
    entry = DATASETS.get(name, {})
    base_url = base_url or entry.get("url")
    sizes = sizes if sizes is not None else entry.get("sizes", {}) if not files else {}
    files = files or entry.get("files")
    if not base_url or not files:
        raise ValueError(f"unknown dataset {name!r}: known are {sorted(DATASETS)}; otherwise pass base_url and files")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"dataset name {name!r} is not a plain folder name")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ValueError(f"base_url must be http(s), got {base_url!r}")
    for file_name, sha256 in files.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", file_name):
            raise ValueError(f"file name {file_name!r} is not a plain file name")
        if not re.fullmatch(r"[0-9a-f]{64}", str(sha256)):
            raise ValueError(f"{file_name}: SHA-256 must be 64 lowercase hex digits, got {sha256!r}")
    folder = (Path(cache_dir) if cache_dir is not None else cache_root() / "datasets") / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, sha256 in files.items():
        target = folder / file_name
        if target.is_file() and _sha256_file(target) == sha256:
            continue
        _download_file(base_url.rstrip("/") + "/" + file_name, target, sha256, timeout, sizes.get(file_name))
    return folder


# ----------------------------------------------------------------------------- preprocessing
def binarize(images: np.ndarray, mode: str = "none", rng: np.random.Generator | None = None) -> np.ndarray:
    """Binarize float pixels in [0, 1] of any shape; the output keeps the input's float dtype.

    "none": the pixels unchanged (continuous data, the default).
    "static": 1 where pixel > 0.5, else 0; the same every call.
    "dynamic": a fresh Bernoulli(pixel) draw from `rng` (a numpy.random.Generator) on every
    call; call it once per epoch. This is the standard protocol for MNIST likelihoods.
    """
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"binarize expects float pixels in [0, 1], got {images.dtype}; see to_float")
    if images.size and not (images.min() >= 0 and images.max() <= 1):     # NaN fails both
        found = "NaN" if np.isnan(images).any() else f"values from {images.min()} to {images.max()}"
        raise ValueError(f"binarize expects pixels in [0, 1], got {found}; scale them first (see to_float)")
    if mode == "none":
        return images
    if mode == "static":
        return (images > 0.5).astype(images.dtype)
    if mode == "dynamic":
        if not isinstance(rng, np.random.Generator):
            raise ValueError("dynamic binarization needs rng=np.random.default_rng(seed)")
        uniform = rng.random(images.shape, dtype=np.float32 if images.dtype == np.float32 else np.float64)
        return (uniform < images).astype(images.dtype)
    raise ValueError(f"mode must be 'none', 'static' or 'dynamic', got {mode!r}")


# ----------------------------------------------------------------------------- minibatches
def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def minibatch_indices(n: int, batch_size: int, rng: np.random.Generator | None = None,
                      shuffle: bool = True, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Yield int64 index arrays of shape (batch_size,) covering range(n) once: one epoch.

    With shuffle=True the order is a permutation drawn from `rng` (required); the last,
    shorter batch is yielded unless drop_last=True. No index is dropped or repeated.
    """
    n = _check_count(n, "n", 0)
    batch_size = _check_count(batch_size, "batch_size", 1)
    if shuffle and not isinstance(rng, np.random.Generator):
        raise ValueError("shuffle=True needs rng=np.random.default_rng(seed)")
    order = rng.permutation(n).astype(np.int64) if shuffle else np.arange(n, dtype=np.int64)
    stop = n - n % batch_size if drop_last else n
    return (order[start:start + batch_size] for start in range(0, stop, batch_size))


def iterate_minibatches(arrays: np.ndarray | Sequence[np.ndarray], batch_size: int,
                        rng: np.random.Generator | None = None, shuffle: bool = True,
                        drop_last: bool = False) -> Iterator[np.ndarray | tuple[np.ndarray, ...]]:
    """Yield minibatches of one array (N, ...) or a tuple of arrays sharing their first axis.

    A single array yields arrays (B, ...); a tuple/list yields tuples of aligned rows.
    """
    single = isinstance(arrays, np.ndarray)
    group = (arrays,) if single else tuple(arrays)
    if not group or len({len(a) for a in group}) != 1:
        raise ValueError(f"arrays must be non-empty and share their first axis, got lengths {[len(a) for a in group]}")
    batches = minibatch_indices(len(group[0]), batch_size, rng, shuffle, drop_last)
    if single:
        return (arrays[idx] for idx in batches)
    return (tuple(a[idx] for a in group) for idx in batches)


def train_val_split(n: int, val_size: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split range(n) into sorted, disjoint int64 index arrays (train_idx, val_idx).

    val_size: a count in [0, n] or a fraction in [0, 1). The result depends only on the
    arguments (its own Generator seeded with `seed`), so every call gives the same split.
    """
    n = _check_count(n, "n", 0)
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"a fractional val_size must be in [0, 1), got {val_size}")
        val_size = int(round(val_size * n))
    val_size = _check_count(val_size, "val_size", 0)
    if val_size > n:
        raise ValueError(f"val_size {val_size} exceeds the {n} examples")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.sort(order[val_size:]), np.sort(order[:val_size])
