"""The documentation is part of the product: the mkdocs site builds under `--strict`, every
public name has a docstring and a place in the API reference, and code and docs cite
only what is in the repository (docs/theory.md#…, sources by title), never a planning
file or an internal label."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

NAMESPACES = (
    "dprnn_jax",
    "dprnn_jax.backward",
    "dprnn_jax.diagnostics",
    "dprnn_jax.training",
    "dprnn_jax.interop",
)

# Where citations are checked: the package, the manual, the scripts, the notebooks and the
# committed results, plus the top-level files that point into them.
CITING_DIRS = ("dprnn_jax", "docs", "scripts", "notebooks", "results")
CITING_FILES = ("README.md", "mkdocs.yml", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".yml", ".yaml", ".toml", ".js", ".json", ".txt"}
# Directories whose citations are still being rewritten by their owner.
CITATION_EXCLUSIONS: tuple[str, ...] = ()
FORBIDDEN_CITATIONS = re.compile(r"DESIGN\.md|seed 00\d", re.IGNORECASE)
# `docs/<page>.md#<anchor>` as code and docs cite the manual.
DOC_CITATION = re.compile(r"docs/([\w/-]+)\.md#([\w-]+)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by `mkdocs build --strict`, or the test fails with mkdocs' output."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(
            f"mkdocs build --strict failed (exit status {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return site_dir


def test_mkdocs_builds_strict(site):
    pages = ["", "theory", "algorithms", "cells", "interop", "diagnostics", "training"]
    pages += ["performance", "references", "api", "api/backward", "api/diagnostics"]
    pages += ["api/training", "api/interop"]
    for page in pages:
        assert (site / page / "index.html").is_file(), f"no page docs/{page or 'index'}.md"


def _public_objects(module_name: str):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        yield name, getattr(module, name)


def _own_docstring(obj) -> str:
    # A class's __doc__ is its own (never inherited); NamedTuple and dataclass fill in
    # `Name(field, …)` when there is none, which is not documentation.
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc, re.DOTALL):
        return ""
    return doc


@pytest.mark.parametrize("module_name", NAMESPACES)
def test_every_public_class_and_function_has_a_docstring(module_name):
    pytest.importorskip(module_name)
    missing = [
        name
        for name, obj in _public_objects(module_name)
        if (inspect.isclass(obj) or callable(obj)) and not _own_docstring(obj)
    ]
    assert not missing, f"{module_name}: public names without a docstring: {missing}"


def test_every_top_level_name_is_in_the_api_reference():
    # The namespace pages render whole modules; the top-level page lists the rest by name.
    import dprnn_jax

    in_namespaces = set()
    for module_name in NAMESPACES[1:]:
        module = pytest.importorskip(module_name)
        in_namespaces |= set(module.__all__)
    page = (ROOT / "docs" / "api" / "index.md").read_text(encoding="utf-8")
    absent = [
        name
        for name in dprnn_jax.__all__
        if name not in in_namespaces
        and f"::: dprnn_jax.{name}\n" not in page
        and f"`{name}`" not in page
    ]
    assert not absent, f"top-level names missing from docs/api/index.md: {absent}"


def _citing_files():
    paths = [ROOT / name for name in CITING_FILES]
    for directory in CITING_DIRS:
        paths += sorted(
            path
            for path in (ROOT / directory).rglob("*")
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts
        )
    for path in paths:
        relative = path.relative_to(ROOT).as_posix()
        if not relative.startswith(CITATION_EXCLUSIONS):
            yield relative, path.read_text(encoding="utf-8")


def test_no_citation_of_planning_files_or_internal_labels():
    offences = [
        f"{relative}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"
        for relative, text in _citing_files()
        for match in FORBIDDEN_CITATIONS.finditer(text)
    ]
    assert not offences, (
        "cite docs/theory.md#… or a source by its title (docs/references.md), not:\n"
        + "\n".join(offences)
    )


def test_cited_doc_anchors_exist(site):
    # Every `docs/<page>.md#<anchor>` in code, docs and notebooks names a heading of the
    # built site (the exclusions above apply to forbidden citations only).
    cited = {}
    roots = [ROOT / name for name in ("dprnn_jax", "scripts", "notebooks", "docs", "README.md")]
    for root in roots:
        files = [root] if root.is_file() else root.rglob("*")
        for path in files:
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                for match in DOC_CITATION.finditer(path.read_text(encoding="utf-8")):
                    cited.setdefault(match.groups(), path.relative_to(ROOT).as_posix())
    assert cited, "expected the code to cite the manual"
    broken = []
    for (page, anchor), where in sorted(cited.items()):
        html = site / ("" if page == "index" else page) / "index.html"
        if not html.is_file() or f'id="{anchor}"' not in html.read_text(encoding="utf-8"):
            broken.append(f"{where}: docs/{page}.md#{anchor}")
    assert not broken, "citations of missing pages or headings:\n" + "\n".join(broken)


def test_the_readmes_training_example_converges_as_it_prints(capsys):
    """The README's first example runs as written and prints what the README shows: the
    same starting loss and a per-step cross-entropy that falls to the printed level.
    Later values depend on rounding (another CPU, other XLA options), so they are
    compared with a tolerance."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Example: training with optax\s+```python\n(.*?)```", readme, re.S)
    assert code, "the README's optax example is missing"
    printed = re.search(r"prints \(CPU, float32\):\s+```\n(.*?)```", readme, re.S)
    assert printed, "the README no longer shows what the example prints"
    exec(compile(code.group(1), "README.md", "exec"), {})
    pattern = re.compile(r"step\s+(\d+)\s+cross-entropy per step ([\d.]+)")
    ran = [(int(s), float(v)) for s, v in pattern.findall(capsys.readouterr().out)]
    shown = [(int(s), float(v)) for s, v in pattern.findall(printed.group(1))]
    assert [s for s, _ in ran] == [s for s, _ in shown] == [0, 50, 100, 150, 200]
    losses = np.array([v for _, v in ran])
    expected = np.array([v for _, v in shown])
    np.testing.assert_allclose(losses[0], expected[0], atol=1e-3)  # before any update
    assert np.all(np.diff(losses) < 0), losses  # it converges: no spike
    assert losses[-1] < 0.02 < np.log(2), losses  # far below chance (log 2)
    np.testing.assert_allclose(losses, expected, rtol=0.5, atol=2e-3)
