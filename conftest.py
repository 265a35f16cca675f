"""Repository-wide pytest configuration: the namespace of the docstring examples.

`python -m pytest` also runs every `Example:` section of the `dprnn_jax` package as a
doctest (`--doctest-modules`, pyproject.toml). The examples are written as a user of
the library would after `import dprnn_jax as dj`: they see `dj`, `jax`, `jnp`, `np`,
`optax` and every name of `dprnn_jax.__all__` and of the public namespaces (`Omega`,
`init_rnn`, `resolve_method`, …). Plots render with Agg, without a display.

A run of the examples alone (`python -m pytest -n 2 -q dprnn_jax`) compiles many tiny
programs once each, where XLA's optimisation passes cost more time than they save: that
run turns them off (`jax_disable_most_optimizations`, about a quarter of its time). A run
that also holds tests keeps the default, so no test ever reuses a program compiled so.

The notebooks (`--nbmake`) run in kernels of their own, which compile each of their
small programs once: they get XLA's cheap CPU code generation through `XLA_FLAGS` (the
options of tests/helpers.py's CHEAP_COMPILE; their time halves), where this XLA has them.
"""

from __future__ import annotations

import os

import pytest
from _pytest.doctest import DoctestItem

os.environ.setdefault("MPLBACKEND", "Agg")

# `python -m dprnn_jax` runs the main job when imported: not a module to collect.
collect_ignore = ["dprnn_jax/__main__.py"]


@pytest.fixture(autouse=True, scope="session")
def _docstring_example_names(doctest_namespace):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import dprnn_jax as dj

    for module in (dj, dj.backward, dj.diagnostics, dj.training):
        doctest_namespace.update({name: getattr(module, name) for name in module.__all__})
    doctest_namespace.update(dj=dj, jax=jax, jnp=jnp, np=np, optax=optax)


# XLA's CPU options for code generation that compiles fast (see tests/helpers.py).
CHEAP_XLA_FLAGS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def _notebook_xla_flags() -> str | None:
    """`XLA_FLAGS` for the notebooks' kernels, or None where this XLA lacks the options
    (an unknown flag in XLA_FLAGS is a fatal error)."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CHEAP_XLA_FLAGS).lower(1.0).compile()
    except Exception:
        return None
    return " ".join(f"--{name}={str(value).lower()}" for name, value in CHEAP_XLA_FLAGS.items())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    flags = _notebook_xla_flags() if item.path.suffix == ".ipynb" else None
    if flags is None:
        yield
        return
    previous = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = f"{previous} {flags}" if previous else flags
    try:
        yield
    finally:
        if previous is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = previous


def pytest_collection_modifyitems(config, items):
    if items and all(isinstance(item, DoctestItem) for item in items):
        import jax

        jax.config.update("jax_disable_most_optimizations", True)
