"""The registry of gradient algorithms, and the one place where `method=` is resolved.

Every function that takes `method=` accepts an algorithm object (`Omega(truncation=32)`)
or its name (`"omega"`), with today's option keywords for the name form
(`method="omega", truncation=32` means `Omega(truncation=32)`). Adding an algorithm means
adding its module and one entry here; the tests take their list from `ALGORITHMS`, so a
new algorithm cannot skip the oracle.

    >>> METHODS
    ('omega', 'bptt', 'naive', 'scan', 'rtrl', 'autodiff')
    >>> ALGORITHMS["bptt"] is BPTT
    True
"""

from __future__ import annotations

import dataclasses

from .autodiff import Autodiff
from .base import GradientAlgorithm
from .bptt import BPTT
from .checkpoint import Checkpointed
from .naive import Naive
from .omega import Omega
from .parallel_scan import ParallelScan
from .rflo import RFLO
from .rtrl import RTRL
from .snap import SnAp
from .uoro import UORO

ALGORITHMS: dict[str, type[GradientAlgorithm]] = {
    cls.name: cls for cls in (Omega, BPTT, Naive, ParallelScan, RTRL, Autodiff)
}
METHODS: tuple[str, ...] = tuple(ALGORITHMS)
# The approximate online algorithms, used as objects (`method=SnAp(n=1)`): not in
# `ALGORITHMS`, whose members are all exact (the oracle tests take that list).
APPROXIMATIONS: dict[str, type[GradientAlgorithm]] = {cls.name: cls for cls in (SnAp, UORO, RFLO)}
# The approximations under the names the command line gives them (`--method snap1`),
# each with its default options.
APPROXIMATION_NAMES: dict[str, GradientAlgorithm] = {
    "snap1": SnAp(n=1),
    "snap2": SnAp(n=2),
    "uoro": UORO(),
    "rflo": RFLO(),
}


def _option_names(cls: type[GradientAlgorithm]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def resolve_method(method: object = "omega", **options: object) -> GradientAlgorithm:
    """The algorithm object that `method=` (and the option keywords) stand for.

    Args:
        method: a `GradientAlgorithm` (e.g. `Omega(truncation=32)`) or a name in
            `METHODS` ("omega", "bptt", "naive", "scan", "rtrl", "autodiff").
        **options: `truncation=`, `tol=`, `block=` with a name; None means "not given".
            With an object they must all be None: its options live inside it.

    Returns:
        A `GradientAlgorithm`.

    Raises:
        ValueError: an unknown name, an option the algorithm does not take, an invalid
            option value, or an object together with an option keyword.
        TypeError: `method` is neither a name nor a `GradientAlgorithm`.

    Example:
        >>> resolve_method("omega", truncation=32) == Omega(truncation=32)
        True
    """
    given = {key: value for key, value in options.items() if value is not None}
    if isinstance(method, GradientAlgorithm):
        if given:
            keywords = ", ".join(f"{key}={value!r}" for key, value in given.items())
            raise ValueError(
                f"method={method} is an algorithm object, so its options belong inside it, "
                f"got also {keywords}; write e.g. method={type(method).__name__}"
                f"({keywords}) instead."
            )
        return method
    if isinstance(method, type) and issubclass(method, GradientAlgorithm):
        raise TypeError(
            f"method must be an algorithm object or a name, got the class "
            f"{method.__name__}; write method={method.__name__}()."
        )
    if not isinstance(method, str) or method not in ALGORITHMS:
        if not isinstance(method, str):
            raise TypeError(
                f"method must be a name in {list(METHODS)} or a GradientAlgorithm such as "
                f"dprnn_jax.Omega(), got {type(method).__name__} {method!r}."
            )
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    cls = ALGORITHMS[method]
    for key, value in given.items():
        if key not in _option_names(cls):
            takers = [name for name, other in ALGORITHMS.items() if key in _option_names(other)]
            if key == "block":
                raise ValueError(
                    f'block={value!r} applies only to method="omega" (Ω triangles of block '
                    f'steps), got method={method!r}; drop block or use method="omega".'
                )
            raise ValueError(
                f"{key} is an option of methods {takers}, got method={method!r} with "
                f"{key}={value!r}; use method='omega'."
            )
    return cls(**given)


def algorithm_from_dict(record: dict) -> GradientAlgorithm:
    """Rebuilds an algorithm from `GradientAlgorithm.to_dict()` (e.g. from metrics.json).

    Example:
        >>> record = Omega(truncation=4).to_dict()
        >>> record["name"], algorithm_from_dict(record) == Omega(truncation=4)
        ('omega', True)
    """
    record = dict(record)
    if record.get("name") == Checkpointed.name:
        return Checkpointed(algorithm_from_dict(record["algorithm"]), record["segment"])
    if record.get("name") in APPROXIMATIONS:
        return APPROXIMATIONS[record.pop("name")](**record)
    return resolve_method(record.pop("name"), **record)
