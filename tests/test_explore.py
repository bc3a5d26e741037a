"""Tests of npvae/explore.py: the page's data (fast), and the page itself in headless Chromium.

The browser tests drive Debian's `chromium` over the DevTools protocol on a pipe (fds 3 and 4,
`--remote-debugging-pipe`), with nothing but the standard library: load the page from file://,
read its console, its network requests and a screenshot, move the pointer, and call
window.npvae.decode. They skip where chromium is not installed, except under CI (.ci/run sets
NPVAE_CI=1), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npvae import explore
from npvae.__main__ import main
from npvae.data import load_mnist_uint8
from npvae.models import build_model
from npvae.folders import load_run
from npvae.settings import DEFAULTS, model_config


def _train_tiny_run(out: Path, *extra: str) -> Path:
    code = main(["train", "--train-size", "500", "--test-size", "300", "--hidden", "32", "--epochs", "1",
                 "--out", str(out), "--no-figures", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A 2-D VAE, a 5-D VAE (drawn on its principal plane) and a 3-D autoencoder."""
    base = tmp_path_factory.mktemp("runs")
    return {"vae2": _train_tiny_run(base / "vae2", "--latent", "2"),
            "vae5": _train_tiny_run(base / "vae5", "--latent", "5", "--activation", "tanh"),
            "ae": _train_tiny_run(base / "ae", "--model", "ae", "--latent", "3")}


def _page_data_of(html: str) -> dict:
    """The DATA object written into a page."""
    text = re.search(r"const DATA = (.*?);\n", html).group(1)
    return json.loads(text.replace("<\\/", "</"))


def _unb64(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


# --------------------------------------------------------------------------------------------
# The page's data and the command (no browser)
# --------------------------------------------------------------------------------------------


def test_explore_writes_the_page_into_the_run_folder(tiny_runs, capsys):
    run = tiny_runs["vae2"]
    assert main(["explore", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    html = (run / "explore.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "/*NPVAE_DATA*/" not in html
    data = _page_data_of(html)
    assert data["kind"] == "vae" and data["latentDim"] == 2 and data["nShown"] == 300
    assert data["plane"]["pca"] is False


def test_explore_out_option_and_a_missing_run(tiny_runs, tmp_path, capsys):
    out = tmp_path / "sub" / "page.html"
    assert main(["explore", str(tiny_runs["ae"]), "--out", str(out)]) == 0
    assert out.exists()
    assert main(["explore", str(tmp_path / "nothing")]) == 1
    assert "npvae explore:" in capsys.readouterr().err


def test_page_carries_the_decoder_images_and_codes_exactly(tiny_runs):
    model, _ = load_run(tiny_runs["vae5"])
    x, y = load_mnist_uint8("test")
    x, y = x[:300], y[:300]
    data = explore.page_data(model, x, y, n_shown=100)
    for i, layer in enumerate(data["decoder"]):
        W, b = model.params[f"dec{i}.W"], model.params[f"dec{i}.b"]
        assert layer["shape"] == list(W.shape)
        np.testing.assert_array_equal(_unb64(layer["W"], "<f4").reshape(W.shape), W)
        np.testing.assert_array_equal(_unb64(layer["b"], "<f4"), b)
    assert len(data["decoder"]) == 2
    np.testing.assert_array_equal(_unb64(data["images"], "u1").reshape(100, 784), x[:100])
    assert data["labels"] == y[:100].tolist()
    codes = model.codes(x.astype(np.float32) / 255)
    np.testing.assert_allclose(_unb64(data["codes"], "<f4").reshape(100, 5), codes[:100], rtol=1e-6)
    # the plane: orthonormal axes through the mean code; the centres: each digit's mean code
    axes = np.array(data["plane"]["axes"])
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-9)
    np.testing.assert_allclose(data["plane"]["origin"], codes.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data["centres"]["3"], codes[y == 3].mean(0), rtol=1e-5, atol=1e-6)
    # the active units are npvae evaluate's: Var[mu] > 0.01 over the images given
    var = codes.astype(np.float64).var(0)
    assert data["active"] == (var > 0.01).tolist()
    assert np.all(np.array(data["sliders"]["lo"]) <= codes.min(0))
    assert np.all(np.array(data["sliders"]["hi"]) >= codes.max(0))


def test_float_images_travel_as_the_same_bytes(tiny_runs):
    model, _ = load_run(tiny_runs["vae2"])
    x, y = load_mnist_uint8("test")
    as_uint8 = explore.page_data(model, x[:60], y[:60])
    as_float = explore.page_data(model, x[:60].astype(np.float32) / 255, y[:60])
    assert as_float["images"] == as_uint8["images"]
    np.testing.assert_allclose(_unb64(as_float["codes"], "<f4"), _unb64(as_uint8["codes"], "<f4"), rtol=1e-5, atol=1e-6)


def test_autoencoder_page_marks_no_inactive_unit_and_says_why(tiny_runs):
    html = explore.write_page(tiny_runs["ae"]).read_text()
    assert _page_data_of(html)["active"] is None
    assert "An autoencoder has no KL term" in html


def test_default_run_page_is_under_5_mb():
    # The page's size depends on the architecture, not on the training: a fresh 784-400-20 VAE.
    model = build_model(model_config(DEFAULTS), rng=0)
    x, y = load_mnist_uint8("test")
    html = explore.render(explore.page_data(model, x, y))
    assert len(html.encode()) < 5_000_000


def test_template_asks_for_nothing_from_the_network():
    text = explore.TEMPLATE.read_text()
    for pattern in (r"https?:", r"\bsrc\s*=", r"\bhref\s*=", r"url\(", r"@import", r"fetch\(", r"XMLHttpRequest"):
        assert not re.search(pattern, text), pattern
    assert "default-src 'none'" in text        # and the page's policy forbids every request anyway


def test_data_cannot_close_the_script_early(tiny_runs):
    model, _ = load_run(tiny_runs["vae2"])
    x, y = load_mnist_uint8("test")
    html = explore.render(explore.page_data(model, x[:50], y[:50], name="a</script><b>"))
    assert html.count("</script>") == 1
    assert _page_data_of(html)["name"] == "a</script><b>"


def test_one_dimensional_latent_space_is_refused(tmp_path, capsys):
    run = _train_tiny_run(tmp_path / "z1", "--latent", "1")
    assert main(["explore", str(run)]) == 1
    assert "latent_dim >= 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol
# --------------------------------------------------------------------------------------------

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
WIDTH, HEIGHT = 1240, 900


class Browser:
    """Chromium --headless, spoken to in JSON messages ended by a NUL byte: we write on its fd 3
    and read its fd 4. Replies carry the id of their command; events are collected in order."""

    def __init__(self, exe: str, profile: Path) -> None:
        child_in, self._write_fd = os.pipe()
        self._read_fd, child_out = os.pipe()

        def onto_fds_3_and_4():               # in the child, before exec
            a, b = fcntl.fcntl(child_in, fcntl.F_DUPFD, 10), fcntl.fcntl(child_out, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--hide-scrollbars",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}"]
        self.proc = subprocess.Popen([exe, *flags, "about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=onto_fds_3_and_4, close_fds=False)
        os.close(child_in)
        os.close(child_out)
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._next_id = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        with os.fdopen(self._read_fd, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                *messages, pending = (pending + chunk).split(b"\0")
                with self._cond:
                    for m in map(json.loads, messages):
                        if "id" in m:
                            self._replies[m["id"]] = m
                        else:
                            self.events.append(m)
                    self._cond.notify_all()

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        with self._cond:
            self._next_id += 1
            i = self._next_id
        message = {"id": i, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: i in self._replies, timeout):
                raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
            reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, OSError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._write_fd)


class Page:
    """One tab with a file loaded: what it printed, what it requested, and a way to ask it things."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.browser, self.url = browser, path.resolve().as_uri()
        self.target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.send("Target.attachToTarget", targetId=self.target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=self.url)
        deadline = time.monotonic() + 60
        while not self.events("Page.loadEventFired") or not self.evaluate("!!(window.npvae && window.npvae.ready)"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: window.npvae.ready not true after 60 s; console: {self.errors()}")
            time.sleep(0.05)

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, session=self.session, **params)

    def events(self, method: str) -> list[dict]:
        with self.browser._cond:
            return [e["params"] for e in self.browser.events
                    if e.get("sessionId") == self.session and e["method"] == method]

    def evaluate(self, expression: str):
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error / console.assert, and the browser's own error log."""
        found = [e["exceptionDetails"].get("exception", {}).get("description", e["exceptionDetails"]["text"])
                 for e in self.events("Runtime.exceptionThrown")]
        found += [" ".join(str(a.get("value", a.get("description"))) for a in e["args"])
                  for e in self.events("Runtime.consoleAPICalled") if e["type"] in ("error", "assert")]
        found += [e["entry"]["text"] for e in self.events("Log.entryAdded") if e["entry"]["level"] == "error"]
        return found

    def requests(self) -> list[str]:
        """The URL of every request the tab made, the page itself included."""
        return [e["request"]["url"] for e in self.events("Network.requestWillBeSent")]

    def screenshot(self) -> np.ndarray:
        """The viewport as RGB floats in [0, 1], (HEIGHT, WIDTH, 3)."""
        import matplotlib.image
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]

    def move_pointer(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def rect(self, element_id: str) -> dict:
        return self.evaluate(f"(() => {{ const r = document.getElementById({element_id!r}).getBoundingClientRect();"
                             f" return {{left: r.left, top: r.top, width: r.width, height: r.height}}; }})()")

    def canvas_pixels(self, element_id: str) -> np.ndarray:
        return np.array(self.evaluate(f"(() => {{ const c = document.getElementById({element_id!r});"
                                      f" return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }})()"))

    def close(self) -> None:
        self.browser.send("Target.closeTarget", targetId=self.target)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        message = ("chromium is not installed: the page's browser tests need Debian's chromium "
                   "(apt-get install chromium); .ci/run installs it")
        if os.environ.get("NPVAE_CI"):
            pytest.fail(message)
        pytest.skip(message)
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture
def open_page(browser):
    pages = []

    def _open(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]
    yield _open
    for page in pages:
        page.close()


def _page_decode(page: Page, z: np.ndarray) -> np.ndarray:
    """window.npvae.decode on each row of z. (N, Z) -> (N, 784)."""
    return np.array(page.evaluate(f"{json.dumps(z.tolist())}.map((z) => Array.from(window.npvae.decode(z)))"))


def _fixed_codes(model, n_random: int = 6) -> np.ndarray:
    """The codes of four test images and a few draws from N(0, 2^2 I), float64. (N, Z)."""
    x, _ = load_mnist_uint8("test")
    codes = model.codes(x[:4].astype(model.dtype) / 255).astype(np.float64)
    draws = 2 * np.random.default_rng(0).standard_normal((n_random, model.latent_dim))
    return np.concatenate([codes, draws])


# One page in the default suite (about a second, the browser's start included), the others slow.
@pytest.mark.parametrize("name", ["vae2", pytest.param("vae5", marks=pytest.mark.slow),
                                  pytest.param("ae", marks=pytest.mark.slow)])
def test_page_in_chromium(tiny_runs, open_page, name):
    run = tiny_runs[name]
    model, _ = load_run(run)
    page = open_page(explore.write_page(run))
    assert page.evaluate("window.npvae.latentDim") == model.latent_dim

    # the page's arithmetic: its decoder is npvae's, within 1e-5 per pixel (float32 weights)
    z = _fixed_codes(model)
    decoded = _page_decode(page, z)
    assert decoded.shape == (len(z), 784)
    assert np.all((decoded >= 0) & (decoded <= 1))
    np.testing.assert_allclose(decoded, model.decode(z.astype(model.dtype)), rtol=0, atol=1e-5)

    # a screenshot: not blank, and the plane shows the dots of every digit in its colour
    shot = page.screenshot()
    assert shot.shape == (HEIGHT, WIDTH, 3) and shot.std() > 0.1
    r = page.rect("plane")
    plane = shot[int(r["top"]):int(r["top"] + r["height"]), int(r["left"]):int(r["left"] + r["width"])]
    colours = page.evaluate("COLOURS")
    for digit in sorted(set(page.evaluate("DATA.labels"))):
        rgb = np.array([int(colours[digit][k:k + 2], 16) for k in (1, 3, 5)]) / 255
        dots = np.sum(np.all(np.abs(plane - rgb) < 0.05, axis=-1))
        assert dots > 20, f"digit {digit}: only {dots} pixels of its colour {colours[digit]} on the plane"

    # the pointer over the plane decodes the point under it: different points, different images
    at = lambda fx, fy: (r["left"] + fx * r["width"], r["top"] + fy * r["height"])   # noqa: E731
    before = page.canvas_pixels("decoded")
    page.move_pointer(*at(0.3, 0.3))
    first = page.canvas_pixels("decoded")
    page.move_pointer(*at(0.7, 0.6))
    second = page.canvas_pixels("decoded")
    page.move_pointer(*at(0.3, 0.3))
    assert not np.array_equal(first, before) and not np.array_equal(first, second)
    np.testing.assert_array_equal(page.canvas_pixels("decoded"), first)
    assert page.evaluate("document.getElementById('where').textContent") == "the point under the pointer"

    # no console error, and no request but the page itself
    assert page.errors() == []
    assert page.requests() == [page.url]
    text = page.evaluate("document.body.innerText")
    assert ("An autoencoder has no KL term" in text) == (name == "ae")
    marked = page.evaluate("document.querySelectorAll('#sliders label.inactive').length")
    assert marked == (0 if name == "ae" else explore.page_data(model, *load_mnist_uint8("test"))["active"].count(False))


@pytest.mark.slow
@pytest.mark.parametrize("activation, hidden, latent, dtype", [
    ("relu", [40], 3, "float32"), ("leaky_relu", [40], 3, "float32"), ("tanh", [40, 30], 3, "float32"),
    ("sigmoid", [40], 3, "float32"), ("softplus", [40], 3, "float32"), ("relu", [40, 30], 3, "float64"),
    ("relu", [400], 20, "float32")])                      # the last: the default run's 784-400-20
def test_page_decoder_matches_numpy_for_every_activation(tmp_path, open_page, activation, hidden, latent, dtype):
    model = build_model({**model_config(DEFAULTS), "hidden_dims": hidden, "latent_dim": latent,
                         "activation": activation, "dtype": dtype}, rng=1)
    for k, v in model.params.items():     # larger weights than the initialisation's, so every
        v *= 3                            # activation works away from its linear region
    x, y = load_mnist_uint8("test")
    path = tmp_path / "page.html"
    path.write_text(explore.render(explore.page_data(model, x[:200], y[:200])))
    page = open_page(path)
    z = _fixed_codes(model)
    # float64 models: the page carries float32 weights, so the decodes agree to float32 rounding
    np.testing.assert_allclose(_page_decode(page, z), model.decode(z), rtol=0, atol=1e-5)
    assert page.errors() == []


@pytest.mark.slow
def test_the_browser_checks_can_fail(tmp_path, open_page, tiny_runs):
    """A page that throws, logs an error and asks for an image elsewhere: the checks above see all three."""
    html = explore.write_page(tiny_runs["vae2"], tmp_path / "good.html").read_text()
    html = html.replace("default-src 'none'; ", "")                       # let the request through
    html = html.replace("window.npvae.ready = true;",
                        "window.npvae.ready = true; console.error('broken'); "
                        "setTimeout(() => { throw new Error('thrown'); });")
    html = html.replace("</body>", '<img alt="" src="http://example.invalid/x.png"></body>')
    bad = tmp_path / "bad.html"
    bad.write_text(html)
    page = open_page(bad)
    time.sleep(0.5)
    errors = " | ".join(page.errors())
    assert "broken" in errors and "thrown" in errors
    assert "http://example.invalid/x.png" in page.requests()


@pytest.mark.slow
def test_controls_in_chromium(tiny_runs, open_page):
    """A click on a dot picks it as A; a slider moves one coordinate; "go to the centre" goes to
    the chosen digit's centre; the plane through 0, A and B holds A and B."""
    run = tiny_runs["vae5"]
    page = open_page(explore.write_page(run))
    r = page.rect("plane")
    strip = page.canvas_pixels("linear")
    k = 42                                                  # click the dot of test image 42
    x, y = page.evaluate(f"toPixel(DOTS[{k}])")
    page.send("Input.dispatchMouseEvent", type="mousePressed", x=r["left"] + x, y=r["top"] + y, button="left", clickCount=1)
    page.send("Input.dispatchMouseEvent", type="mouseReleased", x=r["left"] + x, y=r["top"] + y, button="left", clickCount=1)
    picked = page.evaluate("state.picks[0]")
    assert np.hypot(*(np.array(page.evaluate(f"toPixel(DOTS[{picked}])")) - [x, y])) < 1   # that dot, or one under it
    assert page.evaluate(f"state.z") == page.evaluate(f"CODES[{picked}]")
    assert not np.array_equal(page.canvas_pixels("linear"), strip)

    decoded = page.canvas_pixels("decoded")
    page.evaluate("(() => { const s = document.getElementById('slider0'); s.value = Number(s.min);"
                  " s.dispatchEvent(new Event('input')); })()")
    z = page.evaluate("state.z")
    assert z[0] == pytest.approx(page.evaluate("Number(document.getElementById('slider0').min)"))
    assert z[1:] == page.evaluate(f"CODES[{picked}]")[1:]
    assert not np.array_equal(page.canvas_pixels("decoded"), decoded)

    page.evaluate("document.getElementById('digit').value = '3'; document.getElementById('jump').click()")
    np.testing.assert_allclose(page.evaluate("state.z"), page.evaluate("DATA.centres['3']"), atol=1e-12)

    page.evaluate("document.getElementById('plane-ab').click()")
    for n in page.evaluate("state.picks"):
        a = np.array(page.evaluate(f"CODES[{n}]"))
        np.testing.assert_allclose(page.evaluate(f"planeToLatent(...latentToPlane(CODES[{n}]))"), a, atol=1e-6)
    assert "through 0, A and B" in page.evaluate("document.getElementById('plane-caption').textContent")
    assert page.errors() == []
