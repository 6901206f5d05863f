"""``rlens bench``: prefill latency, decode speed, memory and the analytic FLOPs ratio of bundles.

The decoder is fed synthetic ``inputs_embeds`` (seeded normal noise, no image, no vision graph)
with a visual span of N tokens between ``text_before`` and ``text_after`` text tokens and M-RoPE
positions on a near-square grid. With a second bundle the two are alternated A/B/A/B in one
process and each ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rlens.configs import BenchConfig
from rlens.errors import InputError
from rlens.processing import check_sequence_length
import rlens.runtime.positions as pos_mod
from rlens.runtime.memory import peak_bytes
from rlens.runtime.session import Session

NOTE = ("synthetic decoder inputs: seeded random inputs_embeds with a visual span, no image and no vision "
        "graph; prefill = one decoder call over the whole prompt, decode = single-token steps on its KV cache")


class Bench:
    """One bundle under test: its session, synthetic inputs and timings."""

    def __init__(self, path: str | Path, cfg: BenchConfig, providers: tuple[str, ...] | None = None,
                 backend: str = "onnxruntime", **options: Any) -> None:
        self.session = Session.from_bundle(path, backend, providers, **options)
        try:
            check_sequence_length(cfg.seq + cfg.decode_tokens, self.session.preparer.max_sequence,
                                  f"the bench sequence of {path} (visual + text + decode tokens)")
        except InputError:
            self.session.close()
            raise
        self.load_s = self.session.load_s
        self.resident = self.session.resident.get("decoder")
        self.cfg = cfg
        sess = self.session
        hidden = sess.manifest.model.hidden_size
        rng = np.random.default_rng(cfg.seed)
        self.embeds = rng.standard_normal((1, cfg.seq, hidden)).astype(sess.float_dtype)
        self.step = rng.standard_normal((1, 1, hidden)).astype(sess.float_dtype)
        grid = (1, *pos_mod.square_grid(cfg.visual_tokens)) if cfg.visual_tokens else None
        self.positions = pos_mod.prefill_positions(cfg.seq, cfg.span, grid, sess.mrope)
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []  # seconds per decode token, one per repeat

    def run(self, record: bool = True) -> None:
        sess, cfg = self.session, self.cfg
        t0 = time.perf_counter()
        out = sess.decoder_step(self.embeds, self.positions, None, cfg.span, past_len=0)
        t1 = time.perf_counter()
        nxt = pos_mod.next_position(self.positions)
        n = sess.manifest.num_layers
        for i in range(cfg.decode_tokens):
            past = [out[f"present.{j}.{t}"] for j in range(n) for t in ("key", "value")]
            out = sess.decoder_step(self.step, pos_mod.step_positions(nxt + i, sess.mrope), past, (0, 0),
                                    past_len=self.embeds.shape[1] + i)
        t2 = time.perf_counter()
        if record:
            self.prefill_s.append(t1 - t0)
            self.decode_s.append((t2 - t1) / cfg.decode_tokens)

    def flops_ratio(self) -> float | None:
        """Analytic prefill FLOPs of the bundle's plan over the unreduced model, at this layout."""
        from rlens.flops import Sizes, TokenLayout, plan_flops
        from rlens.plan import plan_from_json_text

        path = self.session.manifest.folder / "plan.json"
        if not path.is_file():
            return 1.0
        plan = plan_from_json_text(path.read_text(), str(path))
        sizes = Sizes.from_family_sizes(self.session.manifest.model.sizes())
        cfg = self.cfg
        layout = TokenLayout(visual=cfg.visual_tokens, text_after=cfg.text_tokens - cfg.text_before,
                             text_before=cfg.text_before)
        return plan_flops(plan, sizes, layout).ratio

    def summary(self) -> dict[str, Any]:
        m = self.session.manifest
        decode = statistics.median(self.decode_s)
        return {"bundle": str(m.folder), "plan": (m.raw.get("plan") or {}).get("summary"), "dtype": m.dtype,
                "providers": self.session.runners["decoder"].extra().get("providers"),
                "load_s": round(self.load_s, 4), "prefill_s": round(statistics.median(self.prefill_s), 6),
                "prefill_s_all": [round(x, 6) for x in self.prefill_s],
                "decode_ms_per_token": round(decode * 1e3, 4), "decode_tokens_per_s": round(1.0 / decode, 3),
                "weights_bytes": m.graph_bytes("decoder"), "decoder_resident_bytes": self.resident,
                "flops_ratio": self.flops_ratio()}


def bench(bundle: str | Path, against: str | Path | None = None, cfg: BenchConfig | None = None,
          providers: tuple[str, ...] | None = None, backend: str = "onnxruntime", **options: Any) -> dict[str, Any]:
    """Benchmark ``bundle`` (and ``against`` alternately); a JSON-ready dict (docs/runtime.md)."""
    cfg = cfg or BenchConfig()
    options.setdefault("spin", against is None)
    benches = [Bench(bundle, cfg, providers, backend, **options)]
    if against is not None:
        benches.append(Bench(against, cfg, providers, backend, **options))
    try:
        for _ in range(cfg.warmup):
            for b in benches:
                b.run(record=False)
        for _ in range(cfg.repeat):
            for b in benches:
                b.run()
        result: dict[str, Any] = {"note": NOTE, "config": asdict(cfg), "layout": {
            "text_before": cfg.text_before, "visual": cfg.visual_tokens,
            "text_after": cfg.text_tokens - cfg.text_before}}
        result["bundles"] = [b.summary() for b in benches]
        if against is not None:
            result["ratios"] = ratios(*benches)
        result["peak_rss_bytes"] = peak_bytes()
        return result
    finally:
        for b in benches:
            b.session.close()


def ratios(a: Bench, b: Bench) -> dict[str, float]:
    """``a / b`` per quantity; timing ratios are the median over the A/B pairs."""
    prefill = statistics.median(x / y for x, y in zip(a.prefill_s, b.prefill_s))
    decode = statistics.median(x / y for x, y in zip(a.decode_s, b.decode_s))
    fa, fb = a.flops_ratio(), b.flops_ratio()
    flops = fa / fb if fa is not None and fb else None
    out = {"prefill": round(prefill, 4), "decode_time": round(decode, 4),
           "weights": round(a.session.manifest.graph_bytes("decoder") / b.session.manifest.graph_bytes("decoder"), 4),
           "flops": None if flops is None else round(flops, 4)}
    out["prefill_over_flops"] = None if flops is None else round(prefill / flops, 4)
    out["resident_weights"] = round(a.resident / b.resident, 4) if a.resident and b.resident else None
    return out


def format_table(result: dict[str, Any]) -> str:
    rows = [f"{'bundle':<40} {'load ms':>8} {'prefill ms':>11} {'decode tok/s':>13} {'weights MB':>11} "
            f"{'resident MB':>12} {'FLOPs ratio':>12}"]
    for b in result["bundles"]:
        flops = "-" if b["flops_ratio"] is None else f"{b['flops_ratio']:.3f}"
        res = "-" if b["decoder_resident_bytes"] is None else f"{b['decoder_resident_bytes'] / 1e6:.1f}"
        rows.append(f"{Path(b['bundle']).name[:40]:<40} {b['load_s'] * 1e3:>8.0f} {b['prefill_s'] * 1e3:>11.1f} "
                    f"{b['decode_tokens_per_s']:>13.2f} {b['weights_bytes'] / 1e6:>11.1f} {res:>12} {flops:>12}")
    if "ratios" in result:
        r = result["ratios"]
        rows.append("ratios (bundle / against, median of pairs): " + ", ".join(f"{k} {v}" for k, v in r.items()))
    rows.append(f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB; {result['note']}")
    return "\n".join(rows)
