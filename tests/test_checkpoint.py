"""Tests for npvae.checkpoint: exact round trips, atomic saves and clear errors for bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(epoch: int = 3, hidden: int = 4) -> Checkpoint:
    """A small but realistic checkpoint: mixed dtypes, 0-d arrays, real PCG64 states."""
    rng = np.random.default_rng(0)
    model_gen, data_gen = np.random.default_rng(123), np.random.default_rng(456)
    model_gen.normal(size=7)  # advance so the state is not the seed's initial state
    return Checkpoint(
        params={"enc0.W": rng.normal(size=(6, hidden)).astype(np.float32),
                "enc0.b": np.zeros(hidden, dtype=np.float32),
                "dec0.W": rng.normal(size=(hidden, 6)),  # float64
                "scale": np.array(0.5)},                  # 0-d
        optimizer_state={"t": np.array(5), "m": rng.normal(size=10), "v": rng.random(10)},
        rng_state={"model": model_gen.bit_generator.state, "data": data_gen.bit_generator.state},
        epoch=epoch,
        history=[{"epoch": 1, "loss": 1.5, "split": "train"}, {"epoch": 2, "loss": 0.75, "split": "train"}],
        config={"latent_dim": 2, "hidden": [hidden], "lr": 1e-3, "name": "vae"},
    )


def assert_arrays_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and bytes (so NaN and -0.0 count too)."""
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(array).tobytes(), name


def assert_checkpoints_equal(got: Checkpoint, want: Checkpoint) -> None:
    assert_arrays_identical(got.params, want.params)
    assert_arrays_identical(got.optimizer_state, want.optimizer_state)
    assert got.epoch == want.epoch and isinstance(got.epoch, int)
    assert got.history == want.history
    assert got.config == want.config
    assert got.rng_state == want.rng_state


def expected_of(ckpt: Checkpoint) -> dict:
    return {name: (a.shape, a.dtype) for name, a in ckpt.params.items()}


def raises_checkpoint_error(path: Path, *words: str, **kwargs) -> CheckpointError:
    """Load ``path`` expecting a CheckpointError that starts with the path and mentions ``words``."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert any(word in message for word in words), message
    return info.value


# ----------------------------------------------------------------------------- round trip


def test_round_trip_everything(tmp_path):
    ckpt = make_checkpoint()
    returned = save_checkpoint(tmp_path / "run" / "ckpt.npz", ckpt)  # parent dir is created
    assert returned == tmp_path / "run" / "ckpt.npz" and returned.is_file()
    loaded = load_checkpoint(returned, expected_params=expected_of(ckpt))
    assert_checkpoints_equal(loaded, ckpt)
    assert loaded.params["enc0.W"].dtype == np.float32 and loaded.params["dec0.W"].dtype == np.float64
    assert loaded.optimizer_state["t"].shape == () and int(loaded.optimizer_state["t"]) == 5


def test_layout_inside_the_npz(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint(epoch=9))
    with np.load(path, allow_pickle=False) as npz:  # strings as '<U' arrays need no pickle
        assert set(npz.files) == {"param/enc0.W", "param/enc0.b", "param/dec0.W", "param/scale",
                                  "optim/t", "optim/m", "optim/v", "meta"}
        meta = npz["meta"]
    assert meta.shape == () and meta.dtype.kind == "U"
    info = json.loads(str(meta[()]))
    assert info["format"] == "npvae-checkpoint" and info["version"] == 1 and info["epoch"] == 9
    assert set(info) == {"format", "version", "epoch", "history", "config", "rng_state", "members"}
    assert info["members"] == sorted(["param/enc0.W", "param/enc0.b", "param/dec0.W", "param/scale",
                                      "optim/t", "optim/m", "optim/v"])
    with zipfile.ZipFile(path) as zf:  # np.savez, not savez_compressed
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_a_damaged_zip_directory_that_hides_members_is_refused(tmp_path):
    # One flipped bit in a directory entry's comment length makes zipfile read the rest of the
    # directory as a comment: np.load then lists fewer members, without any error of its own.
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint())
    blob = bytearray(path.read_bytes())
    entry = blob.find(b"PK\x01\x02")                 # the first central-directory entry
    blob[entry + 33] ^= 0x80                          # high byte of its comment length
    path.write_bytes(bytes(blob))
    with np.load(path, allow_pickle=False) as npz:
        assert len(npz.files) < 8                     # members hidden, and np.load says nothing
    with pytest.raises(CheckpointError, match=r"c\.npz: damaged file: members .* are missing"):
        load_checkpoint(path)


def test_checkpoints_without_a_member_list_still_load(tmp_path):
    # written before npvae listed the members in meta
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint())
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    info = json.loads(str(arrays["meta"][()]))
    del info["members"]
    arrays["meta"] = np.array(json.dumps(info))
    np.savez(path, **arrays)
    assert load_checkpoint(path).epoch == make_checkpoint().epoch


@pytest.mark.parametrize("field, value", [("rng_state", None), ("config", []), ("history", {})])
def test_save_refuses_what_load_would_refuse_and_keeps_the_old_file(tmp_path, field, value):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(epoch=2))
    bad = make_checkpoint(epoch=3)
    setattr(bad, field, value)
    with pytest.raises(CheckpointError, match=field):
        save_checkpoint(path, bad)
    assert load_checkpoint(path).epoch == 2


def test_restored_rng_state_reproduces_the_same_draws(tmp_path):
    ckpt = make_checkpoint()
    gen = np.random.default_rng(123)
    gen.normal(size=7)
    expected_draws = gen.normal(size=5)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.npz", ckpt))
    fresh = np.random.default_rng()
    fresh.bit_generator.state = loaded.rng_state["model"]
    np.testing.assert_array_equal(fresh.normal(size=5), expected_draws)
    assert loaded.rng_state["model"]["state"]["state"] > 2**64  # big Python ints survive JSON


def test_path_without_npz_suffix_is_used_as_is(tmp_path):
    path = save_checkpoint(tmp_path / "latest.ckpt", make_checkpoint())
    assert path == tmp_path / "latest.ckpt" and path.exists()
    assert not (tmp_path / "latest.ckpt.npz").exists()
    assert load_checkpoint(str(path)).epoch == 3


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_mode_follows_the_umask_like_a_normal_file(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint())
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_numpy_scalars_in_history_are_saved_as_numbers(tmp_path):
    ckpt = make_checkpoint()
    ckpt.history = [{"loss": np.float32(0.25), "epoch": np.int64(1)}]
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.npz", ckpt))
    assert loaded.history == [{"loss": 0.25, "epoch": 1}]


dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True),
                       dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                                 min_side=0, max_side=4))),
                       max_size=5),
       st.integers(min_value=0, max_value=10**6))
def test_round_trip_hypothesis(params, epoch):
    ckpt = Checkpoint(params=params, optimizer_state={"t": np.array(epoch)}, rng_state={},
                      epoch=epoch, history=[], config={})
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_checkpoint(save_checkpoint(Path(tmp) / "c.npz", ckpt),
                                 expected_params=expected_of(ckpt))
    assert_checkpoints_equal(loaded, ckpt)


# ----------------------------------------------------------------------------- atomic save


def test_crash_inside_savez_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint(epoch=1))
    before = path.read_bytes()

    def crashing_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_checkpoint(epoch=2))
    assert path.read_bytes() == before
    assert load_checkpoint(path).epoch == 1
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file was removed


def test_crash_in_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint(epoch=1))

    def failing_replace(src, dst):
        raise KeyboardInterrupt  # even an interrupt must not leave the temporary file behind

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_checkpoint(epoch=2))
    monkeypatch.undo()
    assert_checkpoints_equal(load_checkpoint(path), make_checkpoint(epoch=1))
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_process_killed_mid_write_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint(epoch=1))
    script = textwrap.dedent(f"""
        import os, numpy as np
        from npvae.checkpoint import Checkpoint, save_checkpoint
        def dying_savez(file, *args, **kwargs):
            file.write(b"PK\\x03\\x04" + bytes(1000))
            file.flush()
            os._exit(9)  # like SIGKILL: no cleanup at all
        np.savez = dying_savez
        save_checkpoint({str(path)!r}, Checkpoint({{}}, {{}}, {{}}, 2, [], {{}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert result.returncode == 9
    assert_checkpoints_equal(load_checkpoint(path), make_checkpoint(epoch=1))
    leftovers = [name for name in os.listdir(tmp_path) if name != "ckpt.npz"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # only a stray temp file


def test_invalid_checkpoint_is_refused_before_writing(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint(epoch=1))
    bad_config = make_checkpoint(epoch=2)
    bad_config.config = {"activation": np.tanh}
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(path, bad_config)
    bad_param = make_checkpoint(epoch=2)
    bad_param.params["enc0.W"] = np.array([{"a": 1}], dtype=object)
    with pytest.raises(CheckpointError, match="object array"):
        save_checkpoint(path, bad_param)
    bad_epoch = make_checkpoint()
    bad_epoch.epoch = 2.5
    with pytest.raises(CheckpointError, match="epoch"):
        save_checkpoint(path, bad_epoch)
    assert load_checkpoint(path).epoch == 1
    assert os.listdir(tmp_path) == ["ckpt.npz"]


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    raises_checkpoint_error(tmp_path / "nope.npz", "not found")


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", bytes(range(256)) * 4],
                         ids=["empty", "text", "random-bytes"])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    raises_checkpoint_error(path, "not an npz")


def test_single_npy_file_is_not_an_npz(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as f:
        np.save(f, np.arange(5))
    raises_checkpoint_error(path, "not an npz")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, fraction):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    raises_checkpoint_error(path, "truncated")


def test_corrupted_member_fails_its_crc(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", make_checkpoint())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("optim/m.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.file_size - 3] ^= 0xFF  # a data byte
    path.write_bytes(bytes(data))
    err = raises_checkpoint_error(path, "corrupted")
    assert not isinstance(err.__cause__, CheckpointError)


def write_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def good_meta(**changes) -> np.ndarray:
    info = {"format": "npvae-checkpoint", "version": 1, "epoch": 0, "history": [],
            "config": {}, "rng_state": {}}
    info.update(changes)
    return np.array(json.dumps({k: v for k, v in info.items() if v is not ...}))


@pytest.mark.parametrize("arrays, words", [
    ({"param/W": np.ones(2)}, ["missing", "meta"]),
    ({"meta": np.array("{not json")}, ["JSON"]),
    ({"meta": np.zeros(3)}, ["text"]),
    ({"meta": good_meta(format="something-else")}, ["format"]),
    ({"meta": np.array("[1, 2]")}, ["format"]),
    ({"meta": good_meta(version=2)}, ["version"]),
    ({"meta": good_meta(epoch=...)}, ["missing the key 'epoch'"]),
    ({"meta": good_meta(history={"not": "a list"})}, ["history"]),
    ({"meta": good_meta(), "weights": np.ones(2)}, ["unexpected member"]),
], ids=["no-meta", "bad-json", "meta-not-text", "wrong-format", "meta-not-object",
        "future-version", "missing-key", "wrong-type", "stray-member"])
def test_bad_contents(tmp_path, arrays, words):
    path = write_npz(tmp_path / "ckpt.npz", **arrays)
    raises_checkpoint_error(path, *words)


def test_object_array_member_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=good_meta(), **{"param/W": np.array([{"a": 1}, None], dtype=object)})
    err = raises_checkpoint_error(path, "pickle")
    assert "param/W" in str(err)


@pytest.mark.parametrize("change, words", [
    (lambda e: e.pop("dec0.W"), ["unexpected parameters ['dec0.W']"]),
    (lambda e: e.update({"dec1.W": ((2, 2), np.float64)}), ["missing parameters ['dec1.W']"]),
    (lambda e: e.update({"enc0.W": ((6, 8), np.float32)}),
     ["another architecture: enc0.W has shape (6, 4), expected (6, 8)"]),
    (lambda e: e.update({"enc0.W": ((6, 4), np.float64)}),
     ["enc0.W has dtype float32, expected float64"]),
], ids=["extra-in-file", "missing-in-file", "shape", "dtype"])
def test_other_architecture(tmp_path, change, words):
    ckpt = make_checkpoint()
    path = save_checkpoint(tmp_path / "ckpt.npz", ckpt)
    expected = expected_of(ckpt)
    change(expected)
    raises_checkpoint_error(path, *words, expected_params=expected)
