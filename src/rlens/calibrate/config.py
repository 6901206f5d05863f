"""The typed configuration of the calibrate stage (DESIGN §3.3): declared in :mod:`rlens.configs`
with the other stages' (one light module the CLI derives its flags from)."""

from rlens.configs import DEFAULT_PROPORTION, FFN_MODES, RANKINGS, CalibrationConfig

__all__ = ["DEFAULT_PROPORTION", "FFN_MODES", "RANKINGS", "CalibrationConfig"]
