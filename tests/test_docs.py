"""The documentation is part of the product: the mkdocs site builds under `--strict`, every
public name has a docstring and a place in the API reference, every ```python block of
the README and the manual runs as written, and code and docs cite only what is in the
repository (docs/theory.md#…, sources by title), never a planning file or an internal
label."""

from __future__ import annotations

import ast
import contextlib
import difflib
import doctest
import importlib
import importlib.util
import inspect
import io
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


def test_the_generated_tables_are_those_the_code_gives():
    # The option tables of `dprnn-jax train` and `omega` (from their argparse parsers)
    # and the table of algorithm objects (from the registry and their dataclass
    # fields): docs/tables.py.
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "docs" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert set(tables.TABLES) == {"docs/training.md", "docs/algorithms.md", "docs/diagnostics.md"}
    for page in tables.TABLES:
        written = (ROOT / page).read_text(encoding="utf-8")
        expected = tables.regenerated(page)
        difference = "".join(
            difflib.unified_diff(
                written.splitlines(keepends=True), expected.splitlines(keepends=True), page, "code"
            )
        )
        assert not difference, f"run `python docs/tables.py`; {page} differs:\n{difference}"
    # What the issue found missing is there now.
    training = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "| `--cell` |" in training and "| `--checkpoint K` or `--checkpoint sqrt` |" in training
    algorithms = (ROOT / "docs" / "algorithms.md").read_text(encoding="utf-8")
    assert "`BPTT(truncation=None, checkpoint=None)`" in algorithms


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


# ---------------------------------------------------------------------------------------
# Every ```python block of the README and of docs/*.md runs as written. The blocks of one
# page share one namespace and run in order, as in a reader's session; a block that opens
# with `>>>` is a doctest (its printed output is compared). A page's blocks are run by one
# test, so a failure names the page, the block's line and the traceback in the page's own
# line numbers.
# ---------------------------------------------------------------------------------------

PYTHON_BLOCK = re.compile(
    r"^(?P<indent> *)```python\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
# A block that cannot run on one machine says so, visibly in the page source, right above
# its fence: `<!-- docs-test: skip, REASON -->`. The test then skips with that reason.
SKIP_MARK = re.compile(r"<!-- docs-test: skip, (?P<reason>(?:(?!-->).)+?) -->\s*\Z", re.S)
# Optional packages (extras of pyproject.toml) a page may use: a block that imports or
# names one that is not installed is not run, and the page's test skips saying so.
OPTIONAL_PACKAGES = {"torch": "pip install 'dprnn_jax[torch]'"}
# Blocks that train for many steps run shorter in the test, and only where the page says
# so in these words: page -> [(as written, as run)].
SHORTENED = {"docs/training.md": [("for s in range(1000):", "for s in range(3):")]}
SHORTENED_NOTE = "`tests/test_docs.py` runs this block with `{run}` for `{written}`"


def _code_pages() -> list[str]:
    pages = ["README.md", *(f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md")))]
    return [page for page in pages if PYTHON_BLOCK.search((ROOT / page).read_text("utf-8"))]


def _missing_optional_packages(code: str) -> list[str]:
    """The optional packages, not installed here, that a block imports or names."""
    tree = ast.parse(code if not code.lstrip().startswith(">>>") else "")
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return [
        package
        for package in OPTIONAL_PACKAGES
        if package in names and importlib.util.find_spec(package) is None
    ]


def _without_indent(code: str, indent: str) -> str:
    """A block's code without the indentation of its fence (a block inside a list)."""
    rows = code.splitlines(keepends=True)
    return "".join(row[len(indent) :] if row.startswith(indent) else row for row in rows)


def run_python_blocks(page: str) -> tuple[dict[int, str], dict[int, str]]:
    """Runs the ```python blocks of `page` in order in one namespace.

    Returns `(printed, not_run)`: the output of each block that ran and the reason for
    each that did not, by the block's first line in the page. Fails the calling test on
    the first block that raises or whose doctest output differs."""
    text = (ROOT / page).read_text(encoding="utf-8")
    shortened = SHORTENED.get(page, [])
    for written, run in shortened:
        note = SHORTENED_NOTE.format(run=run, written=written)
        assert note in text, f"{page} runs shorter in its test, but the page does not say: {note}"
        in_code = sum(block.group("code").count(written) for block in PYTHON_BLOCK.finditer(text))
        assert in_code == 1, f"{page}: {written!r} must occur once in its code, not {in_code} times"
    namespace: dict = {"__name__": "__docs__"}
    printed, not_run = {}, {}
    # A page may switch JAX's global options (float64) for its later blocks, as it would
    # in a reader's session; the tests after it get them back as they were.
    with _jax_options_restored():
        for block in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, block.start("code")) + 1  # the first line of code
            code = _without_indent(block.group("code"), block.group("indent"))
            for written, run in shortened:
                code = code.replace(written, run)
            mark = SKIP_MARK.search(text, 0, block.start())
            missing = _missing_optional_packages(code)
            if mark:
                not_run[line] = mark.group("reason")
            elif missing:
                not_run[line] = ", ".join(
                    f"needs {package}, which is not installed ({OPTIONAL_PACKAGES[package]})"
                    for package in missing
                )
            else:
                printed[line] = _run_block(page, line, code, namespace)
    return printed, not_run


@contextlib.contextmanager
def _jax_options_restored():
    import jax

    x64 = jax.config.jax_enable_x64
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", x64)


def _run_block(page: str, line: int, code: str, namespace: dict) -> str:
    """Runs one block (a doctest if it opens with `>>>`) and returns what it printed."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        if code.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(code, namespace, page, page, line - 1)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            report = io.StringIO()
            runner.run(test, out=report.write, clear_globs=False)
            if runner.failures:
                pytest.fail(f"{page}:{line}: doctest failed\n{report.getvalue()}", pytrace=False)
        else:
            # Blank lines in front, so that a traceback gives the page's line numbers.
            exec(compile("\n" * (line - 1) + code, page, "exec"), namespace)
    return output.getvalue()


@pytest.mark.parametrize("page", [page for page in _code_pages() if page != "README.md"])
def test_every_python_block_of_the_manual_runs_as_written(page):
    printed, not_run = run_python_blocks(page)
    assert printed or not_run, f"{page}: no python block found"
    if not_run:
        ran = ", ".join(f"{page}:{line}" for line in printed) or "none"
        reasons = "; ".join(f"{page}:{line} not run: {why}" for line, why in not_run.items())
        pytest.skip(f"ran and passed: {ran}; {reasons}")


def test_the_readmes_training_example_converges_as_it_prints():
    """The README's blocks run as written (as every page's), and its optax example prints
    what the README shows: the same starting loss and a per-step cross-entropy that falls
    to the printed level. Later values depend on rounding (another CPU, other XLA
    options), so they are compared with a tolerance."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Example: training with optax\s+```python\n(.*?)```", readme, re.S)
    assert code, "the README's optax example is missing"
    printed = re.search(r"prints \(CPU, float32\):\s+```\n(.*?)```", readme, re.S)
    assert printed, "the README no longer shows what the example prints"
    outputs, not_run = run_python_blocks("README.md")
    assert not not_run, not_run
    example_line = readme.count("\n", 0, code.start(1)) + 1
    pattern = re.compile(r"step\s+(\d+)\s+cross-entropy per step ([\d.]+)")
    ran = [(int(s), float(v)) for s, v in pattern.findall(outputs[example_line])]
    shown = [(int(s), float(v)) for s, v in pattern.findall(printed.group(1))]
    assert [s for s, _ in ran] == [s for s, _ in shown] == [0, 50, 100, 150, 200]
    losses = np.array([v for _, v in ran])
    expected = np.array([v for _, v in shown])
    np.testing.assert_allclose(losses[0], expected[0], atol=1e-3)  # before any update
    assert np.all(np.diff(losses) < 0), losses  # it converges: no spike
    assert losses[-1] < 0.02 < np.log(2), losses  # far below chance (log 2)
    np.testing.assert_allclose(losses, expected, rtol=0.5, atol=2e-3)
