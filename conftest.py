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


def pytest_collection_modifyitems(config, items):
    if items and all(isinstance(item, DoctestItem) for item in items):
        import jax

        jax.config.update("jax_disable_most_optimizations", True)
