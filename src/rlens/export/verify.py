"""Verification at export: run ONNX Runtime on sample inputs and compare with the PyTorch golden
(Hugging Face's own forward, under :func:`rlens.reference.reduced` when the plan reduces).

The decoder check runs a prefill chunk with a visual span and then decode steps through the
same graph, comparing logits and every present KV tensor. The golden chain runs first and keeps
only its outputs, so an export can free the PyTorch weights before ONNX Runtime loads the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@dataclass(frozen=True)
class VerifySpan:
    """The decoder call verification runs: a prefill of ``seq`` tokens with ``span`` = (start,
    length) visual tokens, then ``steps`` single-token decode steps."""

    seq: int = 24
    span: tuple[int, int] = (3, 14)
    steps: int = 3

    def manifest(self) -> dict[str, Any]:
        return {"sequence": self.seq, "visual_start": self.span[0], "visual_length": self.span[1],
                "decode_steps": self.steps}


TEXT_BEFORE, TEXT_AFTER = 3, 7


def span_for_plan(plan: Plan, max_positions: int | None, steps: int = 3) -> VerifySpan:
    """A visual span that exercises the plan: at least 2*max(W)+1 tokens (a hollow layer's mask
    differs from dense attention and spans several windows) and more than M probes (the probe
    stride is used), capped so every position stays below ``max_positions``."""
    length = 14
    windows = [lp.hollow_window for lp in plan.layers if lp.hollow_window is not None]
    if windows:
        length = max(length, 2 * max(windows) + 1)
    if any(lp.ffn_keep is not None for lp in plan.layers):
        length = max(length, plan.ffn_probes + 1)
    if max_positions:
        length = max(1, min(length, max_positions - TEXT_BEFORE - TEXT_AFTER - steps))
    return VerifySpan(TEXT_BEFORE + length + TEXT_AFTER, (TEXT_BEFORE, length), steps)


@dataclass
class Golden:
    """The PyTorch golden of a verification run: per call, its fresh inputs, logits and present KV."""

    spec: VerifySpan
    feeds: list[dict[str, np.ndarray]]  # inputs_embeds / attention_mask / position_ids / visual_span
    logits: list[np.ndarray]
    present: list[list[np.ndarray]]


def _fresh(s: DecoderSample) -> dict[str, np.ndarray]:
    return {k: v for k, v in s.feeds.items() if not k.startswith("past_key_values.")}


def _chain(geo: DecoderGeometry, spec: VerifySpan, run: Any, *, batch: int, seed: int, dtype: Any) -> None:
    """Prefill + decode steps; ``run(step, sample)`` returns the present KV the next step reads."""
    s = sample(geo, seed, batch, spec.seq, spec.span, dtype=dtype)
    past_pos = int(s.feeds["position_ids"].max()) + 1
    total = spec.seq
    for step in range(spec.steps + 1):
        kv = run(step, s)
        s = sample(geo, seed + step + 1, batch, 1, (0, 0), kv, past_pos + step, dtype=dtype, past_len=total)
        total += 1


def decoder_golden(loaded: Any, plan: Plan, geo: DecoderGeometry, spec: VerifySpan = VerifySpan(), *,
                   batch: int = 1, seed: int = 0, dtype: Any = np.float32) -> Golden:
    """Run the golden chain (its own KV cache). Inputs are rounded to ``dtype`` as the graph gets
    them; the model runs in fp32 whatever dtype it was loaded in (:func:`fp32_compute`)."""
    golden = Golden(spec, [], [], [])

    def run(step: int, s: DecoderSample) -> list[np.ndarray]:
        logits, present = reference_step(loaded, plan, _as_fp32(s))
        golden.feeds.append(_fresh(s))
        golden.logits.append(logits)
        golden.present.append(present)
        return [p.astype(dtype) for p in present]

    with fp32_compute(loaded):
        _chain(geo, spec, run, batch=batch, seed=seed, dtype=dtype)
    return golden


def compare_decoder(session: Any, golden: Golden, geo: DecoderGeometry, *, batch: int = 1, seed: int = 0,
                    dtype: Any = np.float32) -> Comparison:
    """Run the ONNX chain (its own KV cache) on the golden's inputs and compare every output."""
    cmp = Comparison()
    names = [o.name for o in session.get_outputs()]

    def run(step: int, s: DecoderSample) -> list[np.ndarray]:
        for k, v in golden.feeds[step].items():
            if not np.array_equal(s.feeds[k], v):
                raise AssertionError(f"verification input {k} of step {step} differs from the golden's")
        got = dict(zip(names, session.run(None, s.feeds)))
        tag = "prefill" if step == 0 else "decode"
        cmp.add(f"{tag}.logits", got["logits"], golden.logits[step])
        for i in range(geo.num_layers):
            cmp.add(f"{tag}.present.key", got[f"present.{i}.key"], golden.present[step][2 * i])
            cmp.add(f"{tag}.present.value", got[f"present.{i}.value"], golden.present[step][2 * i + 1])
        return [got[f"present.{i}.{t}"] for i in range(geo.num_layers) for t in ("key", "value")]

    _chain(geo, golden.spec, run, batch=batch, seed=seed, dtype=dtype)
    return cmp


def check_decoder(session: Any, loaded: Any, plan: Plan, geo: DecoderGeometry, *, steps: int = 3,
                  seq: int = 24, span: tuple[int, int] = (3, 14), batch: int = 1, seed: int = 0,
                  dtype: Any = np.float32) -> Comparison:
    """Prefill (with a visual span) + ``steps`` single-token decode steps: ONNX vs the golden."""
    golden = decoder_golden(loaded, plan, geo, VerifySpan(seq, span, steps), batch=batch, seed=seed, dtype=dtype)
    return compare_decoder(session, golden, geo, batch=batch, seed=seed, dtype=dtype)


@contextmanager
def fp32_compute(loaded: Any) -> Iterator[None]:
    """Run the language model's layers, final norm and LM head in fp32 even when the model was
    loaded in fp16/bf16: each module is cast up just before its forward and back right after
    (exact: fp16/bf16 -> fp32 -> fp16/bf16 round-trips), so only one layer is ever held in fp32."""
    import torch

    fam, model = loaded.family, loaded.model
    lm = fam.language_model(model)
    low = []
    for m in (*fam.decoder_layers(model), lm.norm, fam.lm_head(model)):
        dtypes = {p.dtype for p in m.parameters()} - {torch.float32}
        if dtypes:
            low.append((m, dtypes.pop()))
    def up(mod: Any, args: Any) -> None:
        mod.float()

    def down(dtype: Any) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            mod.to(dtype)
        return hook

    handles = []
    for m, dtype in low:
        handles += [m.register_forward_pre_hook(up), m.register_forward_hook(down(dtype))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, dtype in low:
            m.to(dtype)


def _as_fp32(s: DecoderSample) -> DecoderSample:
    feeds = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in s.feeds.items()}
    return DecoderSample(feeds, s.span)
