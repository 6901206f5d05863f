"""Calibrate stage: HF model + calibration data -> plan.json (DESIGN §3.3, §3.4, §4)."""

from rlens.calibrate.api import dispatch_for_calibration, plan_from_encoded, plan_from_model
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
    "dispatch_for_calibration",
    "format_table",
    "load_calibration_data",
    "plan_from_encoded",
    "plan_from_model",
    "report_path_for",
    "write_report",
]
