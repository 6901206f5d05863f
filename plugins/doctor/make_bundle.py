"""Re-create plugins/doctor/bundle-hollow-fp16, the bundle ``rlens doctor`` builds an engine from
(needs torch and the export extra, i.e. a desktop; the device only reads the result):
tiny-llava (random weights from its fixed seed), fp16, plugin attention, every layer hollow
with W = 8, no vision graph (the doctor checks the decoder). About 560 KB.

    python plugins/doctor/make_bundle.py
"""

from pathlib import Path

from rlens.export import ExportConfig, bundle_from_plan
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan

OUT = Path(__file__).resolve().parent / "bundle-hollow-fp16"

if __name__ == "__main__":
    loaded = load_model("tiny-llava")
    info = loaded.info()
    plan = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=8) for i in range(info.num_layers)))
    config = ExportConfig(attention="plugin", dtype="fp16", vision=False, overwrite=True)
    print(bundle_from_plan(loaded, plan, OUT, config))
