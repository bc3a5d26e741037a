"""The explore page (`npvae explore RUN`) of the study note's VAE, and a screenshot of it for the README.

The page is written for the shared 784-400-20 run (trained once into runs/) with the same code as
`npvae explore`, npvae.explore.render(page_data(...)), into a temporary folder, and photographed
by headless Chromium (Debian's `chromium` package) at 1240 x 900: <out>/explore.png. To play with
the page itself, run `npvae explore runs/vae-l2-h400-z20` and open runs/vae-l2-h400-z20/explore.html.

    python demos/explore.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C
from npvae import explore
from npvae.settings import run_name

SIZE = (1240, 900)


def screenshot(page: Path, png: Path, size: tuple[int, int] = SIZE) -> Path:
    """Photograph a page with headless Chromium (its own throwaway profile). Returns png."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("demos/explore.py needs Chromium for its screenshot: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return png


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    vae, history = C.get_run(C.VAE_20, args.runs, args.quick)
    x_test, y_test = C.load_split("test", args.quick)
    name = f"{run_name(C.run_config(C.VAE_20, args.quick))} ({len(history)} epochs)"
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "explore.html"
        page.write_text(explore.render(explore.page_data(vae, x_test, y_test, name=name)), encoding="utf-8")
        C.heading("The page")
        print(f"{page.stat().st_size / 1e6:.2f} MB for {x_test.shape[0]} test images coded, "
              f"{min(explore.N_SHOWN, len(x_test))} carried")
        C.wrote(screenshot(page, args.out / "explore.png"))
    C.done(args)


if __name__ == "__main__":
    main()
