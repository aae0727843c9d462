"""The objective a step minimises: a data term plus weighted regularisers.

Contract: `value(data_term, regularisers, terms)` is
`data_term(terms.pred, terms.target) + sum(w * reg(terms) for w, reg in regularisers)`.
`terms` (`Terms`) holds everything a term may need for one batch item: the
network output `out` (1, H, W, C), the operator's output `pred`, the
observation `target`, the item's `op_args` and the fit's `shared` arrays
(e.g. classifier weights, passed as arguments so they are never baked into
the compiled program). A regulariser is any hashable callable of `terms`
(a frozen dataclass, or a module-level function); `losses.TotalVariation`
is the built-in one (`FitConfig.tv_weight`, `tv_beta`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class Terms(NamedTuple):
    out: jax.Array
    pred: jax.Array
    target: jax.Array
    op_args: Any
    shared: Any


def value(data_term: Callable, regularisers: tuple, terms: Terms) -> jax.Array:
    # A data term that needs more than (pred, target), e.g. `losses.Perceptual` (the fit's `shared`), says so.
    loss = data_term(terms) if getattr(data_term, "takes_terms", False) else data_term(terms.pred, terms.target)
    for weight, regulariser in regularisers:
        loss = loss + weight * regulariser(terms)
    return loss


def check_regularisers(regularisers) -> tuple:
    """`regularisers` as a tuple of (weight, callable) pairs, or a ValueError saying what is wrong."""
    out = []
    for entry in regularisers:
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
            raise ValueError(f"regularisers must be (weight, function) pairs, got {entry!r}")
        weight, fn = entry
        try:
            hash(fn)
        except TypeError:
            raise ValueError(f"regulariser {fn!r} must be hashable (a frozen dataclass or a function)") from None
        out.append((float(weight), fn))
    return tuple(out)
