"""Tests for npvae.data: IDX reading/writing, MNIST loading and caching, download, preprocessing, minibatches."""

import gzip
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae import data

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Point the npvae cache at a temp folder for the whole session (never the real home)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPVAE_CACHE_DIR", str(tmp_path_factory.mktemp("npvae-cache")))
        yield


@pytest.fixture(scope="session")
def mnist_test():
    return data.load_mnist("test")


@pytest.fixture(scope="session")
def mnist_train_uint8():
    return data.load_mnist_uint8("train")


def _fake_dataset(folder: Path, n_train=12, n_test=5, gz=True, seed=0):
    """Write a small random IDX dataset under the standard names; return its arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, array in zip(data.SPLIT_FILES[split], (images, labels)):
            data.write_idx(folder / (stem + (".gz" if gz else "")), array)
        arrays[split] = (images.reshape(n, 784), labels.astype(np.int64))
    return arrays


# ----------------------------------------------------------------------------- IDX round trip
small_arrays = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))


@FAST
@given(array=small_arrays)
def test_encode_decode_round_trip(array):
    out = data.decode_idx(data.encode_idx(array))
    assert out.dtype == np.uint8 and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


@FAST
@given(array=small_arrays, gz=st.booleans())
def test_write_read_round_trip_files(array, gz):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("x.idx.gz" if gz else "x.idx")
        data.write_idx(path, array)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
        np.testing.assert_array_equal(data.read_idx(path), array)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_other_idx_types(dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    out = data.decode_idx(data.encode_idx(array))
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_encode_rejects_unsupported_arrays():
    with pytest.raises(ValueError, match="dtype"):
        data.encode_idx(np.zeros(3, dtype=np.uint16))
    with pytest.raises(ValueError, match="shape"):
        data.encode_idx(np.array(5, dtype=np.uint8))


# ----------------------------------------------------------------------------- IDX fuzzing
VALID = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
VALID_BYTES = data.encode_idx(VALID)  # 4-byte magic, 12 bytes of dims, 24 bytes of data
HEADER_LEN = 16


def _decode_or_value_error(blob, source="fuzz"):
    """Decode and return the array, or None if (and only if) a ValueError naming the source was raised."""
    try:
        return data.decode_idx(blob, source)
    except ValueError as exc:
        assert source in str(exc)
        return None


@FAST
@given(blob=st.binary(max_size=64))
def test_random_bytes_only_value_error(blob):
    out = _decode_or_value_error(blob)
    if out is not None:  # random bytes that happen to form a valid file: exact size, never short
        assert out.nbytes == len(blob) - 4 - 4 * out.ndim


@FAST
@given(blob=st.binary(max_size=64))
def test_random_gzip_bytes_only_value_error(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "junk.gz"
        path.write_bytes(b"\x1f\x8b" + blob)
        with pytest.raises(ValueError, match="junk.gz"):
            data.read_idx(path)


def test_every_truncation_is_refused(tmp_path):
    for cut in range(len(VALID_BYTES)):  # magic, dims and data regions alike
        assert _decode_or_value_error(VALID_BYTES[:cut]) is None, cut
    gz_bytes = gzip.compress(VALID_BYTES)
    for cut in range(len(gz_bytes)):
        path = tmp_path / "cut.gz"
        path.write_bytes(gz_bytes[:cut])
        with pytest.raises(ValueError, match="cut.gz"):
            data.read_idx(path)


@FAST
@given(extra=st.binary(min_size=1, max_size=32))
def test_appended_bytes_are_refused(extra):
    with pytest.raises(ValueError, match="over-long"):
        data.decode_idx(VALID_BYTES + extra, "fuzz")
    with tempfile.TemporaryDirectory() as folder:  # after a gzip stream: refused or ignored padding
        path = Path(folder) / "x.gz"
        path.write_bytes(gzip.compress(VALID_BYTES) + extra)
        try:
            np.testing.assert_array_equal(data.read_idx(path), VALID)
        except ValueError as exc:
            assert "x.gz" in str(exc)


def test_header_bit_flips_never_give_a_short_array():
    for position in range(HEADER_LEN):
        for bit in range(8):
            blob = bytearray(VALID_BYTES)
            blob[position] ^= 1 << bit
            out = _decode_or_value_error(bytes(blob))
            if out is not None:  # e.g. uint8 -> int8: still exactly the 24 payload bytes
                assert out.nbytes == len(VALID_BYTES) - HEADER_LEN and out.size == VALID.size


@FAST
@given(position=st.integers(HEADER_LEN, len(VALID_BYTES) - 1), value=st.integers(0, 255))
def test_data_byte_changes_keep_the_shape(position, value):
    blob = bytearray(VALID_BYTES)
    blob[position] = value
    out = data.decode_idx(bytes(blob))
    assert out.shape == VALID.shape
    assert out.reshape(-1)[position - HEADER_LEN] == value


def test_specific_header_errors_are_explained():
    cases = {
        b"\x01\x00\x08\x01\x00\x00\x00\x01\x00": "magic",
        b"\x00\x00\x07\x01\x00\x00\x00\x01\x00": "element type",
        b"\x00\x00\x08\x00": "0 dimensions",
        b"\x00\x00\x08\x03\x00\x00": "truncated header",
        b"\x00\x00\x08\x01\xff\xff\xff\xff\x00": "truncated data",
    }
    for blob, message in cases.items():
        with pytest.raises(ValueError, match=message):
            data.decode_idx(blob)


@pytest.mark.parametrize("dims", [(0, 2**32 - 1, 2**32 - 1), (1,) * 255])
def test_headers_numpy_cannot_hold_are_explained_naming_the_file(dims, tmp_path):
    # 0 images of 2^32-1 x 2^32-1 pixels ("array is too big"); 255 dimensions (NumPy holds 64)
    path = tmp_path / "odd-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
                     + bytes(int(np.prod(dims, dtype=object))))
    with pytest.raises(ValueError, match=f"{path}: an array of dims .* \\({len(dims)} dimensions\\) cannot be held"):
        data.read_idx(path)


def test_a_data_set_of_0_images_is_refused_naming_the_file(tmp_path):
    for split, n in (("train", 0), ("t10k", 3)):
        data.write_idx(tmp_path / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        data.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte holds 0 images"):
        data.load_mnist_uint8("train", tmp_path)


def test_a_gz_that_expands_beyond_its_header_is_refused_without_reading_it_all(tmp_path):
    # a header declaring 100 images of 28 x 28 (78,400 bytes), then 64 MiB of zeros: 64 KB as .gz
    import tracemalloc
    path = tmp_path / "bomb-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (100, 28, 28))
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="over-long data: dims \\(100, 28, 28\\) of uint8 need 78400 bytes "
                                             "after the header, found 78401"):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak                    # read no more than the header declares plus one byte


# ----------------------------------------------------------------------------- bundled MNIST
def test_mnist_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 784) and images.dtype == np.float32
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_train_split(mnist_train_uint8):
    images, labels = mnist_train_uint8
    assert images.shape == (60000, 784) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    np.testing.assert_array_equal(data.to_float(images[:100]), data.load_mnist("train")[0][:100])


def test_returned_images_are_read_only_and_labels_private(mnist_test):
    images, labels = data.load_mnist_uint8("test")
    assert not images.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        images[:] = 0
    labels[:] = -1
    again, labels_again = data.load_mnist_uint8("test")
    np.testing.assert_array_equal(data.to_float(again), mnist_test[0])
    np.testing.assert_array_equal(labels_again, mnist_test[1])


def test_uncompressed_copy_loads_the_same(tmp_path, mnist_test):
    for stem in data.SPLIT_FILES["test"]:
        (tmp_path / stem).write_bytes(gzip.decompress((data.BUNDLED_DIR / (stem + ".gz")).read_bytes()))
    images, labels = data.load_mnist("test", data_dir=tmp_path, verify=True)
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])


def test_tampered_mnist_copy_is_refused(tmp_path, mnist_test):
    for stem in data.SPLIT_FILES["test"]:
        shutil.copy(data.BUNDLED_DIR / (stem + ".gz"), tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[16 + 400] ^= 0xFF  # one pixel of the first image
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*MD5"):
        data.load_mnist("test", data_dir=tmp_path, verify=True)
    images, _ = data.load_mnist("test", data_dir=tmp_path)  # structurally fine: loads without verify
    assert (images != mnist_test[0]).sum() == 1


def test_missing_file_lists_expected_names(tmp_path):
    _fake_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError) as info:
        data.load_mnist("test", data_dir=tmp_path)
    for pair in data.SPLIT_FILES.values():
        for name in pair:
            assert name in str(info.value)
    data.load_mnist("train", data_dir=tmp_path)  # the other split is complete


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation")


# ----------------------------------------------------------------------------- custom IDX datasets
@pytest.mark.parametrize("gz", [True, False])
def test_custom_dataset_loads_structurally(tmp_path, gz):
    arrays = _fake_dataset(tmp_path, gz=gz)
    for split in ("train", "test"):
        images, labels = data.load_mnist(split, data_dir=tmp_path)
        np.testing.assert_array_equal(images, data.to_float(arrays[split][0]))
        np.testing.assert_array_equal(labels, arrays[split][1])
    with pytest.raises(ValueError, match="MD5"):  # it is not MNIST
        data.load_mnist("test", data_dir=tmp_path, verify=True)


def test_custom_dataset_with_wrong_types_or_sizes(tmp_path):
    _fake_dataset(tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), dtype=np.int16))
    with pytest.raises(ValueError, match="t10k-images.*uint8"):
        data.load_mnist("test", data_dir=tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="4 images but .* 5 labels"):
        data.load_mnist("test", data_dir=tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="t10k-labels.*1-d"):
        data.load_mnist("test", data_dir=tmp_path)


# ----------------------------------------------------------------------------- cache
@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPVAE_CACHE_DIR", str(cache))
    data.clear_memory_cache()
    data.CACHE_STATS.clear()
    yield cache
    data.clear_memory_cache()


def test_cache_root_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NPVAE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_root() == tmp_path / "npvae"
    monkeypatch.setenv("NPVAE_CACHE_DIR", str(tmp_path / "x"))
    assert data.cache_root() == tmp_path / "x"


def test_second_load_comes_from_cache(tmp_path, fresh_cache):
    arrays = _fake_dataset(tmp_path / "ds")
    data.load_mnist("train", data_dir=tmp_path / "ds")
    assert data.CACHE_STATS == {"decoded": 2}
    assert len(list((fresh_cache / "arrays").glob("*.npy"))) == 2
    data.load_mnist("train", data_dir=tmp_path / "ds")
    assert data.CACHE_STATS["memory_hits"] == 2
    data.clear_memory_cache()
    images, labels = data.load_mnist_uint8("train", data_dir=tmp_path / "ds")
    assert data.CACHE_STATS["disk_hits"] == 2 and data.CACHE_STATS["decoded"] == 2
    np.testing.assert_array_equal(images, arrays["train"][0])
    np.testing.assert_array_equal(labels, arrays["train"][1])


def test_changed_source_file_is_not_served_from_cache(tmp_path, fresh_cache):
    _fake_dataset(tmp_path, seed=0)
    data.load_mnist("test", data_dir=tmp_path)
    arrays = _fake_dataset(tmp_path, seed=1, n_test=6)  # new content, new size
    images, _ = data.load_mnist_uint8("test", data_dir=tmp_path)
    np.testing.assert_array_equal(images, arrays["test"][0])


def test_changed_file_with_the_same_size_and_restored_mtime_is_not_served_from_cache(tmp_path, fresh_cache):
    # `cp -p`, `rsync -t` and `tar x` restore modification times, and MNIST-like files share sizes
    _fake_dataset(tmp_path, seed=0, gz=False)
    name = tmp_path / data.SPLIT_FILES["test"][0]
    before = name.stat()
    data.load_mnist_uint8("test", data_dir=tmp_path)
    arrays = _fake_dataset(tmp_path, seed=1, gz=False)              # same sizes, new pixels
    os.utime(name, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert name.stat().st_size == before.st_size and name.stat().st_mtime_ns == before.st_mtime_ns
    for clear in (False, True):                                     # neither cache may serve it
        if clear:
            data.clear_memory_cache()
        images, _ = data.load_mnist_uint8("test", data_dir=tmp_path)
        np.testing.assert_array_equal(images, arrays["test"][0])


def test_write_idx_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "x-idx1-ubyte"
    data.write_idx(path, np.arange(5, dtype=np.uint8))

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)       # the last step of an atomic write
    with pytest.raises(OSError):
        data.write_idx(path, np.arange(100, dtype=np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(data.read_idx(path), np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # no temporary file left


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage_with_matching_hash", "no_hash"])
def test_corrupted_cache_is_rebuilt(tmp_path, fresh_cache, damage):
    arrays = _fake_dataset(tmp_path / "ds")
    data.load_mnist("test", data_dir=tmp_path / "ds")
    npy = next((fresh_cache / "arrays").glob("t10k-images*.npy"))
    blob = bytearray(npy.read_bytes())
    if damage == "flip":
        blob[-1] ^= 0xFF
        npy.write_bytes(bytes(blob))
    elif damage == "truncate":
        npy.write_bytes(bytes(blob[:-10]))
    elif damage == "garbage_with_matching_hash":
        npy.write_bytes(b"not a numpy file")
        npy.with_suffix(".sha256").write_text(hashlib.sha256(b"not a numpy file").hexdigest())
    else:
        npy.with_suffix(".sha256").unlink()
    data.clear_memory_cache()
    data.CACHE_STATS.clear()
    images, _ = data.load_mnist_uint8("test", data_dir=tmp_path / "ds")
    np.testing.assert_array_equal(images, arrays["test"][0])
    assert data.CACHE_STATS["decoded"] == 1 and data.CACHE_STATS["disk_hits"] == 1  # images rebuilt, labels hit
    recorded = npy.with_suffix(".sha256").read_text()
    assert hashlib.sha256(npy.read_bytes()).hexdigest() == recorded  # the cache entry was rewritten


# ----------------------------------------------------------------------------- preprocessing
def test_to_float():
    pixels = np.array([[0, 51, 255]], dtype=np.uint8)
    out = data.to_float(pixels)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_array_equal(out, np.float32([[0, 0.2, 1]]))
    assert data.to_float(pixels, np.float64).dtype == np.float64
    with pytest.raises(ValueError):
        data.to_float(out)
    with pytest.raises(ValueError):
        data.to_float(pixels, np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_modes(dtype):
    x = np.random.default_rng(0).random((200, 50)).astype(dtype)
    assert data.binarize(x) is x
    static = data.binarize(x, "static")
    assert static.dtype == dtype
    np.testing.assert_array_equal(static, (x > 0.5).astype(dtype))
    a = data.binarize(x, "dynamic", np.random.default_rng(1))
    b = data.binarize(x, "dynamic", np.random.default_rng(1))
    assert a.dtype == dtype and set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)  # same seed, same draw
    rng = np.random.default_rng(2)
    assert not np.array_equal(data.binarize(x, "dynamic", rng), data.binarize(x, "dynamic", rng))  # fresh per epoch
    assert abs(a.mean() - x.mean()) < 0.02  # Bernoulli(pixel)
    np.testing.assert_array_equal(data.binarize(np.float32([0, 1]), "dynamic", rng), [0, 1])


def test_binarize_errors():
    x = np.zeros((2, 3), dtype=np.float32)
    for rng in (None, np.random.RandomState(0), 0):
        with pytest.raises(ValueError, match="Generator|default_rng"):
            data.binarize(x, "dynamic", rng)
    with pytest.raises(ValueError, match="mode"):
        data.binarize(x, "stochastic")
    with pytest.raises(ValueError, match="float"):
        data.binarize(np.zeros(3, dtype=np.uint8), "static")


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
@pytest.mark.parametrize("bad, words", [(2.0, "values from 0.0 to 2.0"), (-1.0, "values from -1.0 to 0.5"),
                                        (np.nan, "NaN")])
def test_binarize_refuses_pixels_outside_0_1_and_nan(mode, bad, words):
    x = np.array([[0.0, 0.5, bad]], dtype=np.float32)
    with pytest.raises(ValueError, match=f"binarize expects pixels in \\[0, 1\\], got {words}; scale them first"):
        data.binarize(x, mode, np.random.default_rng(0))
    assert data.binarize(np.array([[0.0, 1.0]]), mode, np.random.default_rng(0)).tolist() == [[0.0, 1.0]]


# ----------------------------------------------------------------------------- minibatches
@FAST
@given(n=st.integers(0, 300), batch_size=st.integers(1, 64), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_minibatches_cover_each_index_once(n, batch_size, drop_last, shuffle, seed):
    batches = list(data.minibatch_indices(n, batch_size, np.random.default_rng(seed), shuffle, drop_last))
    assert all(b.dtype == np.int64 for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1])
    seen = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert len(np.unique(seen)) == len(seen)  # nothing repeated
    if drop_last:
        assert len(seen) == n - n % batch_size and all(len(b) == batch_size for b in batches)
    else:
        assert sorted(seen.tolist()) == list(range(n))  # nothing dropped
    if not shuffle:
        assert seen.tolist() == list(range(len(seen)))
    again = list(data.minibatch_indices(n, batch_size, np.random.default_rng(seed), shuffle, drop_last))
    assert all(np.array_equal(x, y) for x, y in zip(batches, again)) and len(batches) == len(again)


def test_minibatch_epochs_differ_and_argument_errors():
    rng = np.random.default_rng(0)
    first, second = (np.concatenate(list(data.minibatch_indices(100, 32, rng))) for _ in range(2))
    assert not np.array_equal(first, second)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            data.minibatch_indices(10, bad, rng)
    with pytest.raises(ValueError, match="n must"):
        data.minibatch_indices(-1, 4, rng)
    with pytest.raises(ValueError, match="rng"):
        data.minibatch_indices(10, 4, None)
    assert len(list(data.minibatch_indices(10, 4, None, shuffle=False))) == 3


def test_iterate_minibatches():
    x = np.arange(20).reshape(10, 2)
    y = np.arange(10) * 10
    for xb, yb in data.iterate_minibatches((x, y), 3, np.random.default_rng(0)):
        np.testing.assert_array_equal(xb[:, 0] * 5, yb)  # rows stay aligned
    batches = list(data.iterate_minibatches(x, 4, np.random.default_rng(0), drop_last=True))
    assert [b.shape for b in batches] == [(4, 2), (4, 2)]
    with pytest.raises(ValueError, match="first axis"):
        list(data.iterate_minibatches((x, y[:5]), 3, np.random.default_rng(0)))


@FAST
@given(n=st.integers(0, 500), fraction=st.floats(0, 0.99), seed=st.integers(0, 100))
def test_train_val_split_deterministic_and_disjoint(n, fraction, seed):
    np.random.seed(seed + 1)  # global state must not matter
    train, val = data.train_val_split(n, fraction, seed)
    np.random.seed(seed + 2)
    train2, val2 = data.train_val_split(n, fraction, seed)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert train.dtype == val.dtype == np.int64
    assert len(val) == round(fraction * n)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


def test_train_val_split_counts_and_errors():
    train, val = data.train_val_split(60000, 10000)
    assert len(train) == 50000 and len(val) == 10000
    assert not np.array_equal(val, data.train_val_split(60000, 10000, seed=1)[1])
    for bad in (1.0, -0.1, -1, 11, "3"):
        with pytest.raises(ValueError):
            data.train_val_split(10, bad)


# ----------------------------------------------------------------------------- download (127.0.0.1 only)
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def do_GET(self):
        self.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        if self.path.startswith("/flood/"):  # no Content-Length, and 8 MB more than the file
            self.end_headers()
            self.wfile.write(body)
            for _ in range(128):
                self.wfile.write(bytes(1 << 16))
            self.close_connection = True
            return
        if self.path.startswith("/cut/"):  # promise more bytes than are sent, then hang up
            self.send_header("Content-Length", str(len(body) * 2))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    source = tmp_path / "source"
    source.mkdir()
    _fake_dataset(source)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    files["bad.gz"] = b"corrupted"
    handler = type("Handler", (_Handler,), {"files": files, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _sums(files):
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items() if name != "bad.gz"}


def test_download_and_load(server, tmp_path):
    url, files, requests = server
    folder = data.download_dataset("fake", cache_dir=tmp_path / "c", base_url=url + "/ds/", files=_sums(files),
                                   timeout=5)
    assert folder == tmp_path / "c" / "fake"
    assert sorted(p.name for p in folder.iterdir()) == sorted(_sums(files))
    images, labels = data.load_mnist("test", data_dir=folder)
    assert images.shape == (5, 784) and labels.shape == (5,)
    count = len(requests)
    data.download_dataset("fake", cache_dir=tmp_path / "c", base_url=url, files=_sums(files), timeout=5)
    assert len(requests) == count  # already present and verified: nothing fetched


def test_download_default_folder_is_in_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE_DIR", str(tmp_path / "cache"))
    url, files, _ = server
    name = "t10k-labels-idx1-ubyte.gz"
    folder = data.download_dataset("fake", base_url=url, files={name: _sums(files)[name]}, timeout=5)
    assert folder == tmp_path / "cache" / "datasets" / "fake" and (folder / name).is_file()


def test_download_hash_mismatch_leaves_nothing(server, tmp_path):
    url, _, _ = server
    wrong = "0" * 64
    with pytest.raises(ValueError, match="SHA-256"):
        data.download_dataset("fake", cache_dir=tmp_path, base_url=url, files={"bad.gz": wrong}, timeout=5)
    assert list((tmp_path / "fake").iterdir()) == []


def test_download_replaces_a_corrupted_local_file(server, tmp_path):
    url, files, _ = server
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / name).write_bytes(b"half a file")
    data.download_dataset("fake", cache_dir=tmp_path, base_url=url, files={name: _sums(files)[name]}, timeout=5)
    assert (tmp_path / "fake" / name).read_bytes() == files[name]


def test_download_cut_short_leaves_nothing(server, tmp_path):
    url, files, _ = server
    name = "train-images-idx3-ubyte.gz"
    with pytest.raises(ConnectionError, match="cut short|failed"):
        data.download_dataset("fake", cache_dir=tmp_path, base_url=url + "/cut/", files={name: _sums(files)[name]},
                              timeout=5)
    assert list((tmp_path / "fake").iterdir()) == []


def test_a_download_stops_at_the_files_known_size(server, tmp_path, monkeypatch):
    # the server sends the file and 8 MB more, without a Content-Length
    url, files, _ = server
    name = "t10k-labels-idx1-ubyte.gz"
    written = []
    real_fdopen = os.fdopen

    def counting_fdopen(fd, *args, **kwargs):     # count the bytes that reach the temporary file
        f = real_fdopen(fd, *args, **kwargs)
        write = f.write
        f.write = lambda chunk: written.append(len(chunk)) or write(chunk)
        return f
    monkeypatch.setattr(os, "fdopen", counting_fdopen)
    with pytest.raises(ValueError, match=f"sends more than the {len(files[name])} bytes of the file"):
        data.download_dataset("fake", cache_dir=tmp_path, base_url=url + "/flood/", files={name: _sums(files)[name]},
                              sizes={name: len(files[name])}, timeout=5)
    assert sum(written) == len(files[name]) + 1                # the file's size, plus the byte that tells
    assert not list((tmp_path / "fake").iterdir())
    assert data.DATASETS["mnist"]["sizes"]["t10k-labels-idx1-ubyte.gz"] == 4542    # a registry file's size is known


def test_download_http_error(server, tmp_path):
    url, _, _ = server
    with pytest.raises(ConnectionError, match="404"):
        data.download_dataset("fake", cache_dir=tmp_path, base_url=url, files={"nope.gz": "a" * 64}, timeout=5)
    assert list((tmp_path / "fake").iterdir()) == []


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        data.download_dataset("no-such-set", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="http"):
        data.download_dataset("x", cache_dir=tmp_path, base_url="file:///etc", files={"a.gz": "a" * 64})
    with pytest.raises(ValueError, match="SHA-256"):
        data.download_dataset("x", cache_dir=tmp_path, base_url="http://127.0.0.1:1", files={"a.gz": "abc"})
    with pytest.raises(ValueError, match="plain"):
        data.download_dataset("x", cache_dir=tmp_path, base_url="http://127.0.0.1:1", files={"../a.gz": "a" * 64})
    with pytest.raises(ValueError, match="plain"):
        data.download_dataset("../x", cache_dir=tmp_path, base_url="http://127.0.0.1:1", files={"a.gz": "a" * 64})
    assert not (tmp_path / "x").exists()


def test_registry_entries_are_complete():
    for entry in data.DATASETS.values():
        assert entry["url"].startswith("https://")
        assert sorted(entry["files"]) == sorted(n + ".gz" for pair in data.SPLIT_FILES.values() for n in pair)
        assert all(len(h) == 64 for h in entry["files"].values())
        assert sorted(entry["sizes"]) == sorted(entry["files"]) and all(n > 0 for n in entry["sizes"].values())
