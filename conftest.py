"""Repository-wide pytest configuration: how the suite compiles, and the namespace of the
docstring examples.

**Compilation.** Nearly all of the suite's time is XLA compiling small programs that
then run for milliseconds. On a CPU, XLA's legacy elemental emitters at LLVM -O0
(`--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0`) compile them
two to four times faster; they change how XLA emits machine code, not which operations
it computes, and every comparison of the suite holds to the same tolerances either way.
So a test run sets them in `XLA_FLAGS` before JAX starts, for its workers and for every
process they start (the command-line children, the notebooks' kernels), where this XLA
has them (probed in a child process once: an unknown flag would abort). Set
`DPRNN_JAX_TEST_XLA_DEFAULTS=1` to run the suite with XLA's defaults instead, as users'
programs and the benchmarks compile. Whatever the flags, tests/test_default_compiler.py
compiles a core subset with XLA's default pipeline per program, since that pipeline has
been seen to miscompile what the cheap one compiles right
(docs/algorithms.md#the-compiler-users-get).

**One compilation cache per run.** Many tests, the command-line children and the
notebooks' kernels compile the same programs (the same loss of the same shapes, a
training step, JAX's eager operations) in separate processes. A run points JAX's
persistent compilation cache at a fresh temporary folder, for every program however
cheap, so each is compiled once per run; the folder is removed when the run ends, so no
run reuses what another compiled (a fresh clone and a rerun do the same work). An
executable comes back from the cache only for the same program compiled with the same
XLA options and flags, so the cache changes no number.

**Examples.** `python -m pytest` also runs every `Example:` section of the `dprnn_jax`
package as a doctest (`--doctest-modules`, pyproject.toml). The examples are written as
a user of the library would after `import dprnn_jax as dj`: they see `dj`, `jax`, `jnp`,
`np`, `optax` and every name of `dprnn_jax.__all__` and of the public namespaces
(`Omega`, `init_rnn`, `resolve_method`, …). Plots render with Agg, without a display. A
run of the examples alone (`python -m pytest -n 2 -q dprnn_jax`) also turns off JAX's
own optimisations (`jax_disable_most_optimizations`); a run that also holds tests keeps
them, so no test ever reuses a program compiled so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from _pytest.doctest import DoctestItem

os.environ.setdefault("MPLBACKEND", "Agg")

# `python -m dprnn_jax` runs the main job when imported: not a module to collect.
collect_ignore = ["dprnn_jax/__main__.py"]

CHEAP_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
PROBE = "import jax; jax.jit(lambda x: x + 1)(1.0); print(jax.default_backend())"


def _cheap_xla_flags() -> str | None:
    """CHEAP_XLA_FLAGS where a child process on the default backend, a CPU, runs a jitted
    function with them; None if asked for the defaults, already set, or not usable."""
    current = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DPRNN_JAX_TEST_XLA_DEFAULTS") or CHEAP_XLA_FLAGS in current:
        return None
    environment = {**os.environ, "XLA_FLAGS": f"{current} {CHEAP_XLA_FLAGS}".strip()}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0 or probe.stdout.strip().splitlines()[-1:] != ["cpu"]:
        return None
    return environment["XLA_FLAGS"]


# JAX's options of its persistent compilation cache, as environment variables.
CACHE_VARIABLES = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def _start_compilation_cache(config) -> None:
    """JAX's persistent compilation cache in a fresh folder, for this process, its
    workers and every process they start; unless the environment already names one."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="dprnn_jax-test-compilation-cache-")
    config._dprnn_jax_compilation_cache = folder
    os.environ.update(CACHE_VARIABLES, JAX_COMPILATION_CACHE_DIR=folder)
    if "jax" in sys.modules:  # read its environment already: tell it too
        import jax

        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
    # An xdist worker inherits the environment of the process that started it.
    if hasattr(config, "workerinput"):
        return
    flags = _cheap_xla_flags()
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags
    _start_compilation_cache(config)


def pytest_unconfigure(config):
    folder = getattr(config, "_dprnn_jax_compilation_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


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
