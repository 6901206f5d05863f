"""Export: plan + model -> bundle/ (DESIGN §5).

``bundle_from_plan(loaded, plan, out_dir, ExportConfig(...))`` is the one entry point.
"""

from rlens.export.bundle import ExportConfig
from rlens.export.writer import bundle_from_plan

__all__ = ["ExportConfig", "bundle_from_plan"]
