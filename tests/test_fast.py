"""The fast twin (npvae.fast) against the textbook path: issue 12's proof that they agree.

- Every layer twin (Dense, ReLU, LeakyReLU, Tanh, Sigmoid, Softplus) and the `_Plain` fallback, the
  Sequential twin, both reconstruction losses and both model twins (VAE and Autoencoder, both
  likelihoods, float32 and float64, shapes drawn by hypothesis): the same outputs and gradients,
  bit for bit, also when the twin's reused buffers change size between calls.
- The fused optimizers against the textbook SGD and Adam over 1,000 steps (bit for bit; Adam's
  m and v except where the subnormal flush set an entry below 1e-30 to 0), and the conversions
  of Adam's state between the two.
- The subnormal flush of FusedAdam: it removes the subnormals and leaves the parameters alone.
- fit(fast=True) against fit(fast=False) on MNIST; fit on the fast path resumes bit for bit.

"Bit for bit" is checked on the bytes (dtype, shape and every bit, so even -0.0 against 0.0
would fail), which is stricter than np.array_equal; each check also asserts np.array_equal.
The twin's results live in buffers that its next call overwrites, so every value compared is
copied out first.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from npvae import fast, layers, losses
from npvae.data import load_mnist_uint8
from npvae.layers import Dense, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh, mlp
from npvae.models import VAE, Autoencoder
from npvae.optim import SGD, Adam
from npvae.train import fit

FAST = settings(max_examples=30, deadline=None, database=None)
DTYPES = (np.float32, np.float64)


def assert_same_bits(got, want, what: str) -> None:
    """got and want hold the same numbers bit for bit: dtype, shape and bytes."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, textbook {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, textbook {want.shape}"
    assert np.array_equal(got, want), (
        f"{what}: {np.count_nonzero(got != want)} of {got.size} entries differ, the largest by "
        f"{np.max(np.abs(got.astype(np.float64) - want)):.3g}")
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), \
        f"{what}: equal numbers with other bits (signed zeros)"


def unit_batch(rng: np.random.Generator, n: int, d: int, dtype) -> np.ndarray:
    """n images of d pixels in [0, 1], some exactly 0 and some exactly 1 (as in MNIST)."""
    x = rng.uniform(0, 1, (n, d))
    x[rng.random((n, d)) < 0.3] = 0
    x[rng.random((n, d)) < 0.1] = 1
    return x.astype(dtype)


def signals(rng: np.random.Generator, n: int, d: int, dtype, scale: float) -> np.ndarray:
    """Normal draws times scale, with some exact zeros (ReLU's kink, LeakyReLU's switch)."""
    x = rng.standard_normal((n, d)) * scale
    x[rng.random((n, d)) < 0.1] = 0
    return x.astype(dtype)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


LAYERS = {"dense": Dense, "relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid,
          "softplus": Softplus}


def test_every_layer_type_has_a_twin_or_the_plain_fallback():
    """Dense, ReLU, Tanh and Sigmoid (at least) have twins of their own; a layer type without one
    runs its textbook forward and backward through _Plain (the next test checks both ways for
    every layer type)."""
    assert set(LAYERS) == {"dense", *layers.ACTIVATIONS}, "a layer type this file does not test"
    for name, cls in LAYERS.items():
        layer = Dense(3, 2, rng=0) if cls is Dense else cls()
        twin = fast._layer_twin(layer)
        assert type(twin) is fast.TWINS.get(cls, fast._Plain) and twin.layer is layer
        if name in ("dense", "relu", "tanh", "sigmoid"):
            assert type(twin) is not fast._Plain, name
    assert type(fast._layer_twin(layers.Sequential([]))) is fast._Plain


@FAST
@given(name=st.sampled_from(sorted(LAYERS)), plain=st.booleans(), dtype=st.sampled_from(DTYPES),
       n1=st.integers(1, 6), n2=st.integers(1, 6), d_in=st.integers(1, 7), d_out=st.integers(1, 7),
       scale=st.sampled_from([0.5, 3.0, 100.0]), seed=st.integers(0, 2**32 - 1))
def test_layer_twin_is_bitwise_the_textbook_layer(name, plain, dtype, n1, n2, d_in, d_out, scale, seed):
    """forward output, dx and the parameter gradients, at batch sizes n1, n2, then n1 again, for
    the layer's twin (plain=False) and for the _Plain fallback (plain=True).

    scale 100 drives tanh and sigmoid into saturation (and exp(-x) into overflow in float32)."""
    n2 = n2 if n2 != n1 else n1 + 1                    # another batch size: the buffers change shape
    rng = np.random.default_rng(seed)
    layer = Dense(d_in, d_out, rng=rng, dtype=dtype) if name == "dense" else LAYERS[name]()
    if name == "dense":
        layer.params["b"][...] = rng.standard_normal(d_out)      # a non-zero bias
    d_y = d_out if name == "dense" else d_in
    twin = fast._Plain(layer) if plain else fast._layer_twin(layer)
    # As _flat_grads does; NaN shows that the twin writes every entry.
    twin.grads = {k: np.full_like(p, np.nan) for k, p in layer.params.items()}

    batches = {n: (signals(rng, n, d_in, dtype, scale), rng.standard_normal((n, d_y)).astype(dtype))
               for n in (n1, n2)}
    textbook = {}
    for n, (x, dout) in batches.items():
        y = layer.forward(x).copy()
        dx = layer.backward(dout).copy()
        textbook[n] = y, dx, {k: g.copy() for k, g in layer.grads.items()}

    for call, n in enumerate((n1, n2, n1)):
        x, dout = batches[n]
        x_before, dout_before = x.copy(), dout.copy()
        y, dx, grads = textbook[n]
        where = f"{type(twin).__name__}({name}) {np.dtype(dtype)} call {call} (N={n})"
        assert_same_bits(twin.forward(x).copy(), y, f"{where}: forward")
        assert_same_bits(twin.backward(dout, need_dx=True).copy(), dx, f"{where}: dx")
        for k, g in grads.items():
            assert_same_bits(twin.grads[k].copy(), g, f"{where}: d{k}")
        assert_same_bits(x, x_before, f"{where}: x untouched")
        assert_same_bits(dout, dout_before, f"{where}: dout untouched")

    if name == "dense" and not plain:          # need_dx=False skips dx and still fills the gradients
        x, dout = batches[n2]
        for g in twin.grads.values():
            g[...] = np.nan
        twin.forward(x)
        assert twin.backward(dout, need_dx=False) is None
        for k, g in textbook[n2][2].items():
            assert_same_bits(twin.grads[k].copy(), g, f"dense {np.dtype(dtype)}, need_dx=False: d{k}")


@FAST
@given(hidden=st.lists(st.integers(1, 6), min_size=0, max_size=2), d_in=st.integers(1, 6),
       d_out=st.integers(1, 6), act=st.sampled_from(sorted(layers.ACTIVATIONS)),
       final=st.sampled_from([None, *sorted(layers.ACTIVATIONS)]), dtype=st.sampled_from(DTYPES),
       n1=st.integers(1, 5), n2=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_sequential_twin_is_bitwise_the_textbook_sequential(hidden, d_in, d_out, act, final, dtype, n1, n2,
                                                              seed):
    n2 = n2 if n2 != n1 else n1 + 1
    sizes = [d_in, *hidden, d_out]
    seq = mlp(sizes, act, final_activation=final, rng=seed, dtype=dtype)
    twin = fast.SequentialTwin(mlp(sizes, act, final_activation=final, rng=seed, dtype=dtype))
    assert list(twin.grads) == list(twin.params) == [f"{i}.{k}" for i in range(len(sizes) - 1) for k in "Wb"]
    for key, p in twin.params.items():          # packing kept the values
        i, k = key.split(".")
        assert_same_bits(p, seq.dense_layers[int(i)].params[k], f"packed {key}")

    rng = np.random.default_rng(seed)
    batches = {n: (signals(rng, n, d_in, dtype, 2.0), rng.standard_normal((n, d_out)).astype(dtype))
               for n in (n1, n2)}
    textbook = {}
    for n, (x, dout) in batches.items():
        y = seq.forward(x).copy()
        dx = seq.backward(dout).copy()
        textbook[n] = y, dx, {f"{i}.{k}": g.copy() for i, layer in enumerate(seq.dense_layers)
                              for k, g in layer.grads.items()}
    for call, n in enumerate((n1, n2, n1)):
        x, dout = batches[n]
        y, dx, grads = textbook[n]
        where = f"mlp {sizes} {act}/{final} {np.dtype(dtype)} call {call} (N={n})"
        assert_same_bits(twin.forward(x).copy(), y, f"{where}: forward")
        assert_same_bits(twin.backward(dout).copy(), dx, f"{where}: dx")
        assert list(twin.grads) == list(grads)
        for k, g in grads.items():
            assert_same_bits(twin.grads[k].copy(), g, f"{where}: d{k}")


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@FAST
@given(likelihood=st.sampled_from(["l2", "bernoulli"]), dtype=st.sampled_from(DTYPES),
       n1=st.integers(1, 6), n2=st.integers(1, 6), d=st.integers(1, 9),
       scale=st.sampled_from([0.5, 4.0, 100.0]), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_loss_twin_is_bitwise_the_textbook_loss(likelihood, dtype, n1, n2, d, scale, seed):
    """The loss value (as a float, exactly) and dlogits, at batch sizes n1, n2, n1 on one buffers dict.

    scale 100 saturates the sigmoid (and overflows exp(-l) in float32)."""
    n2 = n2 if n2 != n1 else n1 + 1
    twin_loss = {"l2": fast.l2_reconstruction, "bernoulli": fast.bernoulli_reconstruction}[likelihood]
    assert fast.RECONSTRUCTION[likelihood] is twin_loss
    rng = np.random.default_rng(seed)
    batches = {n: (signals(rng, n, d, dtype, scale), unit_batch(rng, n, d, dtype)) for n in (n1, n2)}
    textbook = {n: losses.RECONSTRUCTION[likelihood](logits, x) for n, (logits, x) in batches.items()}
    buffers: dict = {}
    for call, n in enumerate((n1, n2, n1)):
        logits, x = batches[n]
        before = logits.copy(), x.copy()
        loss, dlogits = twin_loss(logits, x, buffers)
        where = f"{likelihood} {np.dtype(dtype)} call {call} (N={n})"
        assert type(loss) is float
        assert loss == textbook[n][0], f"{where}: loss {loss!r}, textbook {textbook[n][0]!r}"
        assert_same_bits(dlogits.copy(), textbook[n][1], f"{where}: dlogits")
        assert_same_bits(logits, before[0], f"{where}: logits untouched")
        assert_same_bits(x, before[1], f"{where}: x untouched")


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------


def build(kind: str, d: int, hidden: list[int], z: int, likelihood: str, activation: str, dtype, beta: float,
          decoder_hidden: list[int] | None):
    if kind == "vae":
        return VAE(d, hidden, z, likelihood=likelihood, beta=beta, activation=activation, dtype=dtype, rng=0,
                   decoder_hidden_dims=decoder_hidden)
    return Autoencoder(d, hidden, z, activation=activation, dtype=dtype, rng=0, likelihood=likelihood,
                       decoder_hidden_dims=decoder_hidden)


@pytest.mark.parametrize("kind", ["vae", "ae"])
@settings(max_examples=40, deadline=None, database=None)
@given(likelihood=st.sampled_from(["l2", "bernoulli"]), dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(sorted(layers.ACTIVATIONS)),
       hidden=st.lists(st.integers(1, 8), min_size=0, max_size=2),
       decoder_hidden=st.one_of(st.none(), st.lists(st.integers(1, 8), min_size=0, max_size=2)),
       d=st.integers(1, 12), z=st.integers(1, 4), n1=st.integers(1, 6), n2=st.integers(1, 6),
       beta=st.sampled_from([1.0, 0.3, 0.0, 2.5]), seed=st.integers(0, 2**32 - 1))
@example(likelihood="l2", dtype=np.float32, activation="relu", hidden=[], decoder_hidden=None, d=7, z=2,
         n1=3, n2=5, beta=1.0, seed=1)
@example(likelihood="bernoulli", dtype=np.float64, activation="tanh", hidden=[6, 4], decoder_hidden=None,
         d=9, z=3, n1=4, n2=2, beta=0.3, seed=2)
def test_model_twin_is_bitwise_the_textbook_model(kind, likelihood, dtype, activation, hidden, decoder_hidden,
                                                  d, z, n1, n2, beta, seed):
    """Report dicts (equal floats) and every gradient, at batch sizes n1, n2, then n1 again.

    Two models built from the same seed: the textbook one keeps its own arrays, the twin packs
    the other's parameters into its flat buffer."""
    n2 = n2 if n2 != n1 else n1 + 1
    model = build(kind, d, hidden, z, likelihood, activation, dtype, beta, decoder_hidden)
    other = build(kind, d, hidden, z, likelihood, activation, dtype, beta, decoder_hidden)
    twin = fast.twin(other)
    assert type(twin) is (fast.FastVAE if kind == "vae" else fast.FastAutoencoder)
    assert fast.twin(other) is twin                  # made once
    assert list(twin.params) == list(twin.grads) == list(model.params)
    for k, p in twin.params.items():                 # packing kept the values
        assert_same_bits(p, model.params[k], f"packed {k}")

    rng = np.random.default_rng(seed)
    batches = {n: (unit_batch(rng, n, d, dtype), rng.standard_normal((n, z)).astype(dtype)) for n in (n1, n2)}
    textbook = {}
    for n, (x, eps) in batches.items():
        report, grads = model.loss_and_grads(x, eps) if kind == "vae" else model.loss_and_grads(x)
        textbook[n] = report, {k: g.copy() for k, g in grads.items()}
    for call, n in enumerate((n1, n2, n1)):
        x, eps = batches[n]
        report, grads = twin.loss_and_grads(x, eps) if kind == "vae" else twin.loss_and_grads(x)
        where = f"{model!r} {activation} {np.dtype(dtype)} call {call} (N={n})"
        assert report == textbook[n][0], f"{where}: report {report}, textbook {textbook[n][0]}"
        assert list(grads) == list(textbook[n][1])
        for k, g in textbook[n][1].items():
            assert_same_bits(grads[k].copy(), g, f"{where}: d{k}")
            assert np.shares_memory(grads[k], twin.flat_grads)

    if kind == "vae":            # eps=None: both draw it from their model's generator (seeded alike)
        x = batches[n2][0]
        report, grads = model.loss_and_grads(x)
        grads = {k: g.copy() for k, g in grads.items()}
        fast_report, fast_grads = twin.loss_and_grads(x)
        assert fast_report == report
        for k, g in grads.items():
            assert_same_bits(fast_grads[k].copy(), g, f"eps=None: d{k}")


# --------------------------------------------------------------------------------------------
# Optimizers: 1,000 steps on the same gradients
# --------------------------------------------------------------------------------------------


SHAPES = {"a.W": (7, 5), "a.b": (5,), "b.W": (3, 4, 2), "b.b": (11,)}
SCALES = {"a.W": 1.0, "a.b": 1e-2, "b.W": 1e-4, "b.b": 10.0}     # gradient sizes, per array
STEPS, DEAD_FROM = 1000, 300


def initial_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-0.1, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}


def gradient_stream(seed: int):
    """STEPS float32 gradient dicts from a seeded generator; from step DEAD_FROM on, a fixed quarter
    of the entries is exactly 0 (dead units: their Adam state decays towards the subnormals)."""
    rng = np.random.default_rng([seed, 1])
    dead = {k: rng.random(s) < 0.25 for k, s in SHAPES.items()}
    for step in range(1, STEPS + 1):
        g = {k: (rng.standard_normal(s) * SCALES[k]).astype(np.float32) for k, s in SHAPES.items()}
        if step >= DEAD_FROM:
            for k in g:
                g[k][dead[k]] = 0
        yield step, g


def flat64(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in SHAPES])


def in_lockstep(textbook_cls, fused_cls, threads: int, **settings):
    """The textbook and the fused optimizer stepped on the same gradient stream (the fused one
    finding its scratch space both ways, in turn), their parameters compared bit for bit after
    every step. Yields (step, textbook, fused) after each step."""
    textbook_params = initial_params(0)
    flat, params = fast.pack(initial_params(0))
    _, grads = fast.pack({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    textbook, fused = textbook_cls(textbook_params, **settings), fused_cls(params, threads=threads, **settings)
    for step, g in gradient_stream(0):
        textbook.step({k: v.copy() for k, v in g.items()})
        for k in SHAPES:
            grads[k][...] = g[k]
        fused.step(grads, overwrite_grads=step % 2 == 1)
        for k in SHAPES:
            assert_same_bits(params[k], textbook_params[k], f"step {step}: {k}")
        yield step, textbook, fused
    assert flat is fused.flat


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_sgd_is_bitwise_the_textbook_sgd_over_1000_steps(threads):
    """v <- momentum v + g; p <- p - lr v: the same float32 operations, so the same bits, on any
    number of threads (each splits the buffer into parts)."""
    for step, textbook, fused in in_lockstep(SGD, fast.FusedSGD, threads, lr=0.01, momentum=0.9):
        pass                                        # in_lockstep compares the parameters at every step
    assert_same_bits(fused.state_dict()["velocity"], flat64(textbook.velocity).astype(np.float32), "velocity")

    # The state moves both ways exactly.
    back = SGD(initial_params(1), lr=0.5)
    fused.to_textbook(back)
    assert back.lr == fused.lr
    for k in SHAPES:
        assert_same_bits(back.velocity[k], textbook.velocity[k], f"to_textbook velocity {k}")
    again = fast.FusedSGD(fast.pack(initial_params(0))[1], lr=0.01)
    again.load_state_dict(textbook.state_dict())
    assert_same_bits(again.velocity, fused.velocity, "load_state_dict of the textbook state")


def assert_moment_same_or_flushed(fused_moment, textbook_moment: dict, where: str) -> int:
    """The fused m (or v) is the textbook's bit for bit, except in entries that the flush set to 0
    where the textbook's value is below FLUSH_BELOW in size. Returns how many were flushed."""
    want = np.concatenate([textbook_moment[k].ravel() for k in SHAPES])
    differ = fused_moment != want
    assert np.all(fused_moment[differ] == 0), f"{where}: {np.count_nonzero(differ)} entries differ, not all flushed"
    assert np.all(np.abs(want[differ]) < fast.FLUSH_BELOW), f"{where}: a flushed entry was not below FLUSH_BELOW"
    assert_same_bits(fused_moment[~differ], want[~differ], where)
    return int(np.count_nonzero(differ))


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_adam_is_bitwise_the_textbook_adam_over_1000_steps(threads):
    """The textbook's float32 operations in its order: the same parameters bit for bit at every
    step, and the same m and v except the entries that the subnormal flush set to 0 (below 1e-30:
    on the dead entries of the stream, whose m decays by b1 = 0.9 a step)."""
    flushed = 0
    for step, textbook, fused in in_lockstep(Adam, fast.FusedAdam, threads, lr=1e-3):
        if step % 50 == 0 or step == 1:
            m, v = fused.moments()
            flushed = assert_moment_same_or_flushed(m, textbook.m, f"step {step}: m")
            assert_moment_same_or_flushed(v, textbook.v, f"step {step}: v")
    assert fused.t == textbook.t == STEPS
    # The flush ran, so the comparison above covered it.
    assert flushed > 0, "no entry was flushed: the stream's dead entries should reach 1e-30"


def test_fused_adam_state_converts_to_and_from_the_textbook_adam():
    textbook = Adam(initial_params(0), lr=1e-3)
    for step, g in gradient_stream(0):
        textbook.step(g)
        if step == 400:
            break
    b1, b2 = textbook.b1, textbook.b2

    # load_state_dict takes the textbook Adam's state, exactly.
    fused = fast.FusedAdam(fast.pack(initial_params(0))[1], lr=1e-3)
    fused.load_state_dict(textbook.state_dict())
    assert fused.t == textbook.t == 400
    m, v = fused.moments()
    assert_same_bits(m, flat64(textbook.m).astype(np.float32), "m loaded from the textbook state")
    assert_same_bits(v, flat64(textbook.v).astype(np.float32), "v loaded from the textbook state")

    # to_textbook writes m and v back, exactly, shaped like the parameters.
    back = Adam(initial_params(1), lr=0.5)
    fused.to_textbook(back)
    assert (back.t, back.lr) == (fused.t, fused.lr)
    for k, shape in SHAPES.items():
        assert_same_bits(back.m[k], textbook.m[k], f"to_textbook m {k}")
        assert_same_bits(back.v[k], textbook.v[k], f"to_textbook v {k}")
    # ... and its state is a state the textbook Adam loads itself.
    Adam(initial_params(0)).load_state_dict(back.state_dict())

    # A checkpoint from the fused Adam of before (decaying sums m_sum = m / (1 - b1), v_sum =
    # v / (1 - b2)) loads as m = (1 - b1) m_sum, v = (1 - b2) v_sum: one rounding each.
    m_sum, v_sum = flat64(textbook.m) / (1 - b1), flat64(textbook.v) / (1 - b2)
    old = fast.FusedAdam(fast.pack(initial_params(0))[1], lr=1e-3)
    old.load_state_dict({"t": np.array(400), "m_sum": m_sum.astype(np.float32), "v_sum": v_sum.astype(np.float32)})
    m_old, v_old = old.moments()
    assert old.t == 400
    np.testing.assert_array_max_ulp(m_old, flat64(textbook.m).astype(np.float32), maxulp=2)
    np.testing.assert_array_max_ulp(v_old, flat64(textbook.v).astype(np.float32), maxulp=2)


# --------------------------------------------------------------------------------------------
# The subnormal flush
# --------------------------------------------------------------------------------------------


def flush_run(steps: int, stop_at_subnormal: bool = False):
    """FusedAdam on 200 float32 parameters with gradients ~1e-3; from step 50 on, 40 of them get
    exactly 0. Returns (params at every step, the subnormal count of the state at every step)."""
    rng = np.random.default_rng(7)
    _, params = fast.pack({"w": rng.uniform(-0.1, 0.1, (4, 50)).astype(np.float32)})
    _, grads = fast.pack({"w": np.zeros((4, 50), np.float32)})
    dead = np.zeros((4, 50), bool)
    dead[:, :10] = True
    opt = fast.FusedAdam(params, lr=1e-3)
    trail, counts = [], []
    for step in range(1, steps + 1):
        grads["w"][...] = rng.standard_normal((4, 50)) * 1e-3
        if step >= 50:
            grads["w"][dead] = 0
        opt.step(grads)
        trail.append(params["w"].copy())
        counts.append(fast.count_subnormals(opt.state_dict()))
        if stop_at_subnormal and counts[-1]:
            break
    return opt, trail, counts


def test_flush_keeps_fused_adam_free_of_subnormals_and_leaves_the_parameters_alone(monkeypatch):
    every = fast.FLUSH_EVERY
    # The flush's promise: an entry at FLUSH_BELOW does not decay (by b1 = 0.9 a step) into the
    # subnormals before the next flush.
    assert 0.9 ** every * fast.FLUSH_BELOW > np.finfo(np.float32).tiny
    # Without the flush: m of a dead entry, ~1e-3, decays by b1 = 0.9 a step into the
    # subnormals (below 1.2e-38) some 800 steps after step 50, and sticks there.
    with monkeypatch.context() as m:
        m.setattr(fast, "FLUSH_EVERY", 10**12)
        _, _, counts = flush_run(2000, stop_at_subnormal=True)
        first = len(counts)                              # the first step with a subnormal
        assert counts[-1] > 0 and first < 2000
        steps = first + every
        _, trail_off, counts_off = flush_run(steps)
    flushed, trail_on, counts_on = flush_run(steps)
    assert counts_off[-1] >= 40, "the run without the flush should hold subnormals (the test could not fail)"
    assert max(counts_on) == 0, f"subnormals in the flushed state at step {np.argmax(counts_on) + 1}"
    assert fast.count_subnormals(flushed.state_dict()) == 0
    assert np.all(flushed.m.reshape(4, 50)[:, :10] == 0)
    # The flushed values (below 1e-30) move a parameter of size ~0.1 by far less than half its
    # ulp (about 1e-30 * lr / sqrt(v)): the parameters are the same, bit for bit.
    for step, (on, off) in enumerate(zip(trail_on, trail_off), start=1):
        assert_same_bits(on, off, f"parameters at step {step}, with and without the flush")


def test_count_subnormals():
    tiny = np.finfo(np.float32).tiny
    state = {"t": np.array(5), "m": np.array([0, tiny, tiny / 2, -tiny / 4, 1], np.float32),
             "v": np.array([np.finfo(np.float64).tiny / 8, 1e-300])}
    assert fast.count_subnormals(state) == 3


# --------------------------------------------------------------------------------------------
# fit on the fast twin and on the textbook path
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    train, _ = load_mnist_uint8("train")
    test, _ = load_mnist_uint8("test")
    return train[:6000], test[:1000]


def fit_test_loss(images, eval_images, likelihood: str, fast_path: bool, epochs: int) -> float:
    model = VAE(784, [400], 20, likelihood=likelihood, rng=0)
    history = fit(model, Adam(model.params, lr=1e-3), images, epochs=epochs, batch_size=128, rng=0,
                  eval_images=eval_images, log=io.StringIO(), fast=fast_path)
    return history[-1]["test_loss"]


# The same test loss "to 4 decimals" is checked as |a - b| < 5e-5, not round(a, 4) == round(b, 4):
# two losses 1e-9 apart on either side of a rounding boundary (x.xxxx5) round differently.
@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
def test_fit_fast_and_textbook_give_the_same_test_loss_small(mnist, likelihood):
    """The always-run version: 1 epoch on 1,000 images."""
    train, test = mnist
    a = fit_test_loss(train[:1000], test, likelihood, True, epochs=1)
    b = fit_test_loss(train[:1000], test, likelihood, False, epochs=1)
    assert abs(a - b) < 5e-5, (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
def test_fit_fast_and_textbook_give_the_same_test_loss_on_6000_mnist_images(mnist, likelihood):
    """Issue 12's pinned check: VAE 784-[400]-20, Adam 1e-3, batch 128, two epochs on the first
    6,000 training images, tested on the first 1,000 test images."""
    train, test = mnist
    a = fit_test_loss(train, test, likelihood, True, epochs=2)
    b = fit_test_loss(train, test, likelihood, False, epochs=2)
    assert abs(a - b) < 5e-5, (a, b)


def test_fit_with_sgd_is_bitwise_the_same_on_both_paths(mnist, monkeypatch):
    """SGD's fused update is the textbook's, and so are the twin's gradients: a whole epoch of fit
    gives the same parameters, momentum and losses, bit for bit (the fused update on 1 and on 3
    threads)."""
    train, test = mnist
    results = []
    for fast_path, threads in ((True, "1"), (True, "3"), (False, "1")):
        monkeypatch.setenv("NPVAE_THREADS", threads)
        model = VAE(784, [64], 8, rng=0)
        opt = SGD(model.params, lr=0.01, momentum=0.9)
        history = fit(model, opt, train[:1000], epochs=1, rng=0, eval_images=test[:300], log=io.StringIO(),
                      fast=fast_path)
        results.append((model, opt, history))
    model, opt, history = results[-1]
    drop = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    for (fast_model, fast_opt, fast_history), threads in zip(results, (1, 3)):
        for k in model.params:
            assert_same_bits(fast_model.params[k], model.params[k], f"{threads} threads: param {k}")
            assert_same_bits(fast_opt.velocity[k], opt.velocity[k], f"{threads} threads: velocity {k}")
        assert drop(fast_history) == drop(history)


@pytest.mark.parametrize("optimizer", ["textbook adam", "fused adam"])
def test_fit_fast_resumes_bitwise(mnist, optimizer):
    """3 epochs, then fit again to 6, gives the bits of 6 epochs in one go."""
    train, test = mnist
    train, test = train[:600], test[:200]

    def start():
        model = VAE(784, [32], 4, rng=0)
        opt = (Adam(model.params, lr=1e-3) if optimizer == "textbook adam"
               else fast.make_optimizer("adam", model, 1e-3))
        return model, opt

    model, opt = start()
    rng = np.random.default_rng(0)
    history = fit(model, opt, train, epochs=3, rng=rng, eval_images=test, log=io.StringIO())
    history = fit(model, opt, train, epochs=6, rng=rng, eval_images=test, history=history, log=io.StringIO())
    one_model, one_opt = start()
    one_go = fit(one_model, one_opt, train, epochs=6, rng=np.random.default_rng(0), eval_images=test,
                 log=io.StringIO())

    assert isinstance(opt, Adam if optimizer == "textbook adam" else fast.FusedAdam)
    for k in model.params:
        assert_same_bits(model.params[k], one_model.params[k], f"param {k}")
    state, one_state = opt.state_dict(), one_opt.state_dict()
    assert state.keys() == one_state.keys()
    for k in state:
        assert_same_bits(state[k], one_state[k], f"optimizer state {k}")
    drop = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert len(history) == 6 and drop(history) == drop(one_go)


def test_fit_textbook_refuses_a_fused_optimizer(mnist):
    train, _ = mnist
    model = VAE(784, [16], 2, rng=0)
    opt = fast.make_optimizer("adam", model, 1e-3)
    assert isinstance(opt, fast.FusedAdam)
    before = {k: p.copy() for k, p in model.params.items()}
    with pytest.raises(ValueError, match=r"fit\(fast=False\).*textbook optimizer.*not a fused one"):
        fit(model, opt, train[:256], epochs=1, log=io.StringIO(), fast=False)
    for k, p in model.params.items():
        assert_same_bits(p, before[k], f"param {k} after the refusal")
