"""Typed user errors. The CLI maps every :class:`RlensError` to one line on stderr and exit code 2."""

from __future__ import annotations


class RlensError(Exception):
    """An error caused by the user's input (bad file, unsupported model, ...): exit code 2."""

    exit_code = 2


class PlanError(RlensError):
    """A plan.json that is malformed, of another version, or does not match the model."""


class ModelError(RlensError):
    """A model that cannot be loaded or is not supported."""


class InputError(RlensError):
    """A bad input: image, prompt, token sequence, data file."""


class BundleError(RlensError):
    """A bundle that is missing files, of another version, or damaged."""


class OutputError(RlensError):
    """An output path rlens may not write (not absent and not an rlens artifact, locked, unwritable)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every ``finally``/cleanup runs as for Ctrl-C."""
