"""Runtime: bundle -> answers (DESIGN §7). Imports neither torch nor the export code.

``Session.from_bundle(path, backend="onnxruntime", providers=("cpu",))`` then
``session.generate(image, prompt, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0, stream=False)``.
"""

from rlens.runtime.backends import BACKENDS, Backend, BackendError, TensorSpec
from rlens.runtime.manifest import Manifest, read_manifest
from rlens.runtime.sampling import Sampler
from rlens.runtime.session import Prompt, Session, Stats, Stream

__all__ = ["BACKENDS", "Backend", "BackendError", "Manifest", "Prompt", "Sampler", "Session", "Stats", "Stream",
           "TensorSpec", "read_manifest"]
