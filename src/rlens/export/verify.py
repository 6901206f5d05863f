"""Verification at export: run ONNX Runtime on sample inputs and compare with the PyTorch golden
(Hugging Face's own forward, under :func:`rlens.reference.reduced` when the plan reduces).

The decoder check runs a prefill chunk with a visual span and then decode steps through the
same graph, comparing logits and every present KV tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlens.export.decoder import DecoderGeometry
from rlens.plan import Plan
from rlens.runtime.positions import prefill_positions


@dataclass
class DecoderSample:
    """Inputs of one decoder call (numpy, graph names)."""

    feeds: dict[str, np.ndarray]
    span: tuple[int, int]


@dataclass
class Comparison:
    max_abs_diff: float = 0.0
    per_output: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        if got.shape != want.shape:
            raise AssertionError(f"{name}: ONNX shape {got.shape} != reference {want.shape}")
        d = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        self.per_output[name] = max(self.per_output.get(name, 0.0), d)
        self.max_abs_diff = max(self.max_abs_diff, d)


def positions(geo: DecoderGeometry, batch: int, past: int, seq: int, span: tuple[int, int]) -> np.ndarray:
    """The runtime's position ids (M-RoPE with a synthetic grid on the span), shifted by ``past``."""
    pos = prefill_positions(seq, span, None, bool(geo.mrope_section)) + past
    return np.broadcast_to(pos, (*pos.shape[:-2], batch, seq)).copy()


def sample(geo: DecoderGeometry, seed: int, batch: int, seq: int, span: tuple[int, int],
           past_kv: list[np.ndarray] | None = None, past_pos: int = 0, dtype: Any = np.float32,
           past_len: int | None = None) -> DecoderSample:
    """``past_len``: the full (unpruned) past length, the attention mask's; default: layer 0's."""
    rng = np.random.default_rng(seed)
    past = past_len if past_len is not None else (0 if past_kv is None else past_kv[0].shape[2])
    feeds: dict[str, np.ndarray] = {
        "inputs_embeds": rng.standard_normal((batch, seq, geo.hidden)).astype(dtype),
        "attention_mask": np.ones((batch, past + seq), dtype=np.int64),
        "position_ids": positions(geo, batch, past_pos, seq, span),
    }
    empty = np.zeros((batch, geo.kv_heads, 0, geo.head_dim), dtype=dtype)
    for i in range(geo.num_layers):
        for j, t in enumerate(("key", "value")):
            feeds[f"past_key_values.{i}.{t}"] = empty if past_kv is None else past_kv[2 * i + j]
    feeds["visual_span"] = np.asarray(span, dtype=np.int64)
    return DecoderSample(feeds, span)


def reference_step(loaded: Any, plan: Plan, s: DecoderSample) -> tuple[np.ndarray, list[np.ndarray]]:
    """The PyTorch golden of one decoder call: last-position logits and present KV (numpy)."""
    import torch

    from rlens import hf_compat
    from rlens.reference import reduced

    fam, model = loaded.family, loaded.model
    lm = fam.language_model(model)
    f = s.feeds
    n = fam.sizes(model.config)["num_layers"]
    cache = hf_compat.new_cache(fam.text_config(model.config))
    if any(f[f"past_key_values.{i}.key"].shape[2] for i in range(n)):
        for i in range(n):
            hf_compat.cache_update(cache, torch.from_numpy(f[f"past_key_values.{i}.key"]).float(),
                                   torch.from_numpy(f[f"past_key_values.{i}.value"]).float(), i)
    with torch.no_grad(), reduced(model, plan, fam) as state:
        state.visual_span = s.span
        out = hf_compat.call_with_cache(lm, cache, inputs_embeds=torch.from_numpy(f["inputs_embeds"]).float(),
                                        attention_mask=torch.from_numpy(f["attention_mask"]),
                                        position_ids=torch.from_numpy(f["position_ids"]), use_cache=True)
        logits = fam.lm_head(model)(out.last_hidden_state[:, -1:])
    present = []
    for k, v in hf_compat.cache_tensors(hf_compat.output_cache(out)):
        present += [k.numpy(), v.numpy()]
    return logits.numpy(), present


def check_decoder(session: Any, loaded: Any, plan: Plan, geo: DecoderGeometry, *, steps: int = 3,
                  seq: int = 24, span: tuple[int, int] = (3, 14), batch: int = 1, seed: int = 0,
                  dtype: Any = np.float32) -> Comparison:
    """Prefill (with a visual span) + ``steps`` single-token decode steps: ONNX vs the golden."""
    cmp = Comparison()
    s = sample(geo, seed, batch, seq, span, dtype=dtype)
    past_pos = int(s.feeds["position_ids"].max()) + 1
    total = seq
    for step in range(steps + 1):
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, s.feeds)))
        logits, present = reference_step(loaded, plan, _as_fp32(s))
        tag = "prefill" if step == 0 else "decode"
        cmp.add(f"{tag}.logits", got["logits"], logits)
        for i in range(geo.num_layers):
            cmp.add(f"{tag}.present.key", got[f"present.{i}.key"], present[2 * i])
            cmp.add(f"{tag}.present.value", got[f"present.{i}.value"], present[2 * i + 1])
        kv = [got[f"present.{i}.{t}"] for i in range(geo.num_layers) for t in ("key", "value")]
        s = sample(geo, seed + step + 1, batch, 1, (0, 0), kv, past_pos + step, dtype=dtype, past_len=total)
        total += 1
    return cmp


def _as_fp32(s: DecoderSample) -> DecoderSample:
    feeds = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in s.feeds.items()}
    return DecoderSample(feeds, s.span)
