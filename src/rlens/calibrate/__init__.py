"""Calibrate stage: HF model + calibration data -> plan.json (DESIGN §3.3, §3.4, §4)."""

from rlens.calibrate.api import choose_vtw_layer, dispatch_for_calibration, plan_from_encoded, plan_from_model, \
    with_token_pruning
from rlens.calibrate.config import CalibrationConfig
from rlens.calibrate.data import CalibrationSample, Encoded, builtin_calibration_set, load_calibration_data
from rlens.calibrate.rankings import RankResult
from rlens.calibrate.report import CalibrationReport, format_table, report_path_for, write_report

__all__ = [
    "CalibrationConfig",
    "CalibrationReport",
    "CalibrationSample",
    "Encoded",
    "RankResult",
    "builtin_calibration_set",
    "choose_vtw_layer",
    "dispatch_for_calibration",
    "format_table",
    "load_calibration_data",
    "plan_from_encoded",
    "plan_from_model",
    "report_path_for",
    "with_token_pruning",
    "write_report",
]
