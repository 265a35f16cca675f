"""Matrix-product flops of a compiled XLA program, with loops counted as many times as they run.

`compiled.cost_analysis()["flops"]` is XLA's own count, but XLA's cost model visits the
body of a `while` loop ONCE, whatever its trip count: for a backward pass written as a
`lax.scan`/`lax.fori_loop` it is the cost of one step, not of the pass. This module reads
the optimised HLO text instead and multiplies every loop body by the trip count that XLA
itself proved (`known_trip_count` in the while's backend config). Only `dot`
instructions are counted (2·M·N·K each): they are the (m, d) × (d, d) products the
complexity table is about.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
# `%name = shape op(operands), attributes`; a tuple shape is parenthesised and has spaces.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^()]*\)|\S+)\s+([\w\-]+)\((.*?)\)(.*)$"
)
_ARRAY_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


class HloFlops(NamedTuple):
    """Dot flops of a program; `exact` is False when some loop's trip count is unknown.

    Example:
        >>> HloFlops(flops=48, exact=True).flops
        48
    """

    flops: int
    exact: bool


def _dims(shape: str) -> tuple[int, ...] | None:
    match = _ARRAY_SHAPE.match(shape)
    if match is None:
        return None
    return tuple(int(v) for v in match.group(1).split(",") if v)


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    computations: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.strip() == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    return computations, entry


def hlo_dot_flops(hlo_text: str) -> HloFlops:
    """Counts 2·M·N·K for every dot, times the trip counts of its enclosing loops.

    Args:
        hlo_text: `jax.jit(f).lower(...).compile().as_text()`.

    Returns:
        `HloFlops(flops, exact)`; a loop without a known trip count (e.g. one whose bounds
        depend on an outer loop's index) is counted once and makes `exact` False.

    Example:
        >>> product = jax.jit(lambda a, b: a @ b).lower(jnp.ones((2, 3)), jnp.ones((3, 4)))
        >>> hlo_dot_flops(product.compile().as_text())  # 2 · 2 · 3 · 4
        HloFlops(flops=48, exact=True)
    """
    computations, entry = _computations(hlo_text)
    memo: dict[str, HloFlops] = {}

    def visit(name: str) -> HloFlops:
        if name in memo:
            return memo[name]
        memo[name] = HloFlops(0, True)  # guards against cycles
        shapes: dict[str, tuple[int, ...] | None] = {}
        total, exact = 0, True
        for line in computations.get(name, []):
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            target, shape, op, operands, attributes = match.groups()
            shapes[target] = _dims(shape)
            called = re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", attributes)
            if op == "dot":
                lhs = shapes.get(operands.split(",")[0].strip().lstrip("%"))
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attributes)
                out = shapes[target]
                if lhs is not None and out is not None and contracting is not None:
                    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i)
                    total += 2 * math.prod(out) * k
                else:
                    exact = False
            elif op == "while":
                body = visit(called[0]) if called else HloFlops(0, True)
                trips = _TRIP_COUNT.search(attributes)
                total += body.flops * (int(trips.group(1)) if trips else 1)
                exact = exact and body.exact and trips is not None
            elif op == "conditional":
                branches = re.findall(r"%?([\w.\-]+)", _branches(attributes))
                costs = [visit(branch) for branch in branches] or [HloFlops(0, True)]
                total += max(cost.flops for cost in costs)
                exact = exact and all(cost.exact for cost in costs)
            else:
                for callee in called:
                    cost = visit(callee)
                    total += cost.flops
                    exact = exact and cost.exact
        memo[name] = HloFlops(total, exact)
        return memo[name]

    return visit(entry)


def _branches(attributes: str) -> str:
    match = re.search(r"branch_computations=\{([^}]*)\}", attributes)
    return match.group(1) if match else ""
