"""The documents' links hold (issue 18): every code link in docs/*.md and the README names a function
or class that exists in the file it points at, every relative link reaches a file, and every
#anchor a heading."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", REPO / "demos" / "CAPTIONS.md", *DOCS]

# [`module.Name.method`](../npvae/module.py): a code link, the dotted name in backticks.
CODE_LINK = re.compile(r"\[`([\w.]+)`\]\(([^)#\s]+\.py)\)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def code_links(page: Path) -> list[tuple[str, Path]]:
    return [(name, (page.parent / target).resolve()) for name, target in CODE_LINK.findall(page.read_text(encoding="utf-8"))]


@lru_cache(maxsize=None)
def definitions(path: Path) -> dict[str, dict[str, ast.ClassDef | ast.FunctionDef | None]]:
    """Top-level functions and classes of a Python file: {name: {method name: node}} (functions
    map to {}), a class's methods including those of its bases defined in the same file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def methods(cls: ast.ClassDef, seen=()) -> dict:
        own = {m.name: m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                own = {**methods(classes[base.id], (*seen, cls.name)), **own}
        return own

    out: dict = {n.name: {} for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    out.update({name: methods(cls) for name, cls in classes.items()})
    return out


def resolves(name: str, path: Path) -> str | None:
    """None if `module.Name[.method]` exists in path, else what is wrong."""
    module, *rest = name.split(".")
    if module != path.stem:
        return f"{name}: the link's module {module!r} is not its file {path.name}"
    if not rest or len(rest) > 2:
        return f"{name}: expected module.Name or module.Class.method"
    defs = definitions(path)
    if rest[0] not in defs:
        return f"{name}: {path.name} has no top-level function or class {rest[0]!r}"
    if len(rest) == 2 and rest[1] not in defs[rest[0]]:
        return f"{name}: {rest[0]} in {path.name} has no method {rest[1]!r}"
    return None


ALL_CODE_LINKS = [(rel(page), name, target) for page in PAGES for name, target in code_links(page)]


def test_the_maths_page_links_the_code():
    assert len(code_links(REPO / "docs" / "maths.md")) >= 30


@pytest.mark.parametrize("page, name, target", ALL_CODE_LINKS, ids=[f"{p}:{n}" for p, n, _ in ALL_CODE_LINKS])
def test_code_link_names_something_that_exists(page, name, target):
    assert target.is_file(), f"{page}: [{name}] points at {target}, which does not exist"
    problem = resolves(name, target)
    assert problem is None, f"{page}: {problem}"


# Every derivation issue 18 asks for, by the function that computes it.
REQUIRED = ["layers.Dense.forward", "layers.Dense.backward", "layers.ReLU", "layers.LeakyReLU", "layers.Tanh",
            "layers.Sigmoid", "layers.Softplus", "layers.sigmoid", "layers.Sequential", "layers.mlp",
            "losses.l2_reconstruction", "losses.bernoulli_reconstruction", "losses.kl_standard_normal",
            "losses.kl_per_example", "losses.l2_per_example", "losses.bernoulli_per_example",
            "losses.softmax_cross_entropy", "models.Reparameterize.forward", "models.Reparameterize.backward",
            "models.VAE.loss_and_grads", "models.Autoencoder.loss_and_grads", "models.VAE.sample",
            "optim.Adam.step", "optim.SGD.step", "gradcheck.rel_error", "gradcheck.numerical_gradient",
            "evaluate.log_px_iwae", "evaluate.nll_constant", "evaluate.active_units"]


def test_the_maths_page_covers_every_step():
    linked = {name for name, _ in code_links(REPO / "docs" / "maths.md")}
    assert not [name for name in REQUIRED if name not in linked]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_github_slug():
    assert github_slug("4. The reparameterization: z = mu + sigma * eps") == "4-the-reparameterization-z--mu--sigma--eps"
    assert github_slug("### `--quick`".lstrip("# ")) == "--quick"
    assert github_slug("Speed: `npvae bench`") == "speed-npvae-bench"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_and_anchors_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):        # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{rel(page)}: " + "; ".join(broken)


def test_the_readme_links_the_maths_and_the_glossary_in_its_first_section():
    first = REPO.joinpath("README.md").read_text(encoding="utf-8").split("\n## ")[0]
    assert "(docs/maths.md)" in first and "(docs/glossary.md)" in first


GLOSSARY_TERMS = ["ELBO", "KL", "Prior", "Posterior", "Nats", "lerp and slerp", "Active units", "IWAE",
                  "Code standard deviation", "Temperature", "Beta", "Warm-up", "Binarization", "Matmul floor",
                  "`--quick`", "Study note", "Seed"]


def test_the_glossary_defines_the_readmes_terms():
    headings = re.findall(r"^### (.+)$", (REPO / "docs" / "glossary.md").read_text(encoding="utf-8"), re.M)
    missing = [t for t in GLOSSARY_TERMS if not any(t.lower() in h.lower() for h in headings)]
    assert not missing


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "demos" / "CAPTIONS.md"], ids=rel)
def test_no_undefined_words_left(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bthe seed\b(?!s)|\bseed's\b", text, re.I)   # "the study note", not "the seed"
    assert "code-spread" not in text and "code spread" not in text     # replaced by "code standard deviations"
