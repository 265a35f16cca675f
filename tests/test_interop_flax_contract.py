"""The contract of "drop-in": Flax's own recurrent tests pass with Flax's RNN swapped for
the library's.

The installed Flax's test files (`tests/nnx/nn/recurrent_test.py` and
`tests/linen/linen_recurrent_test.py`) are fetched once, with pip, from the sdist of
that version (never copied into this repository) and kept in the temp directory for
later runs. Each file is imported as a module whose `nnx` (resp. `nn`) is Flax's with
`RNN` (and `Bidirectional`) replaced by `dj.interop.nnx.RNN` (resp. `dj.interop.FlaxRNN`)
with the non-default `method=Omega()`; every one of its TestCase tests then runs
in-process. A Flax upgrade that changes the contract fails here, naming the Flax test.
Without network (or pip) the tests are skipped, with pip's reason.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path

import pytest

import dprnn_jax as dj
from dprnn_jax import interop

FLAX_VERSION = importlib.metadata.version("flax")
TEST_FILES = {
    "nnx": "tests/nnx/nn/recurrent_test.py",
    "linen": "tests/linen/linen_recurrent_test.py",
}


@pytest.fixture(scope="session")
def flax_test_files() -> Path:
    """The directory holding the installed Flax's two recurrent test files, fetched with
    `pip download` of its sdist on the first run on this machine."""
    cache = Path(tempfile.gettempdir()) / f"dprnn_jax-flax-{FLAX_VERSION}-tests"
    if all((cache / path).is_file() for path in TEST_FILES.values()):
        return cache
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--timeout",
            "10",
            "--retries",
            "1",
            "--dest",
            download,
            f"flax=={FLAX_VERSION}",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download of flax=={FLAX_VERSION}'s sdist took over 300 s")
        archives = list(Path(download).glob("flax-*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
            pytest.skip(
                f"Flax's test files could not be fetched (pip download of "
                f"flax=={FLAX_VERSION}'s sdist failed: {' '.join(reason)})"
            )
        # Extracted beside the cache and renamed into place: two workers may race.
        staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=cache.name + "."))
        with tarfile.open(archives[0]) as archive:
            for path in TEST_FILES.values():
                member = archive.getmember(f"flax-{FLAX_VERSION}/{path}")
                target = staging / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
        try:
            os.replace(staging, cache)
        except OSError:  # another worker put its copy there first
            if not all((cache / path).is_file() for path in TEST_FILES.values()):
                return staging
            shutil.rmtree(staging, ignore_errors=True)
    return cache


class _Swapped(types.ModuleType):
    """A Flax namespace (`flax.nnx`, `flax.linen`) with some names replaced."""

    def __init__(self, namespace: types.ModuleType, replacements: dict[str, object]):
        super().__init__(namespace.__name__)
        self._namespace = namespace
        self.__dict__.update(replacements)

    def __getattr__(self, name: str):
        return getattr(self._namespace, name)


def _counting(cls, constructed: list, **defaults):
    """`cls` with other defaults, recording each construction (the swap happened)."""

    @functools.wraps(cls, updated=())
    def make(*args, **kwargs):
        constructed.append(cls)
        return cls(*args, **{**defaults, **kwargs})

    return make


def _run_flax_tests(path: Path, global_name: str, replacements: dict) -> unittest.TestResult:
    spec = importlib.util.spec_from_file_location(f"flax_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setattr(module, global_name, _Swapped(getattr(module, global_name), replacements))
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = unittest.TestResult()
    suite.run(result)
    return result


def _failures(result: unittest.TestResult) -> str:
    return "\n\n".join(
        f"Flax test {test.id().removeprefix('flax_')} failed:\n{trace}"
        for test, trace in result.failures + result.errors
    )


@pytest.mark.parametrize("suite", ["nnx", "linen"])
def test_flax_recurrent_tests_pass_with_the_library_rnn(suite, flax_test_files, record_property):
    constructed: list = []
    if suite == "nnx":
        replacements = {
            "RNN": _counting(interop.nnx.RNN, constructed, method=dj.Omega()),
            "Bidirectional": _counting(interop.nnx.Bidirectional, constructed),
        }
        global_name = "nnx"
    else:
        replacements = {"RNN": _counting(interop.FlaxRNN, constructed, method=dj.Omega())}
        global_name = "nn"
    result = _run_flax_tests(flax_test_files / TEST_FILES[suite], global_name, replacements)
    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped)
    record_property(f"flax {FLAX_VERSION} {suite} recurrent tests", f"{passed}/{result.testsRun}")
    print(f"flax {FLAX_VERSION} {suite} recurrent tests: {passed}/{result.testsRun} pass")
    assert not result.failures and not result.errors, _failures(result)
    assert not result.skipped, result.skipped
    assert result.testsRun > 0 and constructed, "no Flax test built the library's RNN"
