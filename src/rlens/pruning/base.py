"""What a visual-token pruning method declares (docs/token_pruning.md). Generic code (plan
validation, FLOPs, the reference, decoder export, calibration, the CLI) asks the method; it never
names one. Pure Python: importing this imports neither torch nor onnx.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from rlens.errors import InputError


class PruningMethod:
    """Base class. A method is one short file: a subclass with its class attributes and flag
    parsing, registered with :func:`rlens.pruning.register`.

    Every method prunes in prefill from layer K = ``TokenPruning.layer`` on, keeping
    ``N_v - floor(ratio * N_v)`` visual tokens (text tokens always stay); ``ranks_tokens`` methods
    keep the top ones by layer K-1's head-averaged last-query attention (ties: lower index),
    the others keep none (``fixed_ratio`` 1)."""

    name: ClassVar[str]
    title: ClassVar[str]
    #: the layer before K ranks the visual tokens (so K >= 1)
    ranks_tokens: ClassVar[bool] = False
    #: share of visual tokens dropped, fixed by the method (None: the plan's ``ratio``, required)
    fixed_ratio: ClassVar[float | None] = None
    #: the ``--<name>`` flag of ``rlens calibrate`` / ``rlens-export`` / ``rlens inspect``
    metavar: ClassVar[str]
    help: ClassVar[str]

    @property
    def min_layer(self) -> int:
        return 1 if self.ranks_tokens else 0

    def parse_flag(self, value: str) -> Any:
        """argparse ``type=`` of the flag (raise ``argparse.ArgumentTypeError``)."""
        raise NotImplementedError

    def check(self, value: Any) -> None:
        """Validate the flag's value in a config (raise :class:`InputError`)."""

    def fixed(self, value: Any, num_layers: int) -> dict[str, Any] | None:
        """The ``TokenPruning`` fields (``layer``, ``ratio``, ...; not ``method``) the flag's value
        fixes, or None when calibration chooses them (after the capture pass, :meth:`choose`).
        Fields, not a ``TokenPruning``: this package sits below :mod:`rlens.plan`."""
        raise NotImplementedError

    def choose(self, driver: Any, config: Any) -> dict[str, Any]:
        """Calibration's choice (``TokenPruning`` fields) when :meth:`fixed` returned None."""
        raise NotImplementedError(f"{self.name} has no calibration-time choice")

    def describe(self, tp: Any) -> str:
        return f"{self.title} from layer {tp.layer}" + (f" R={tp.ratio:g}" if self.fixed_ratio is None else "")

    def _check_layer(self, k: int, num_layers: int) -> None:
        if k > num_layers:
            raise InputError(f"--{self.name} layer {k} is beyond the model's {num_layers} layers")


#: method name -> method (one instance each), filled by :func:`register`
PRUNING_METHODS: dict[str, PruningMethod] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator adding a method (one instance) to the registry."""
    if cls.name in PRUNING_METHODS:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    PRUNING_METHODS[cls.name] = cls()
    return cls


def layer_or_auto(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a layer index, got {value!r}") from None
