"""``Session.from_bundle(path)``: image + prompt -> text through a bundle's graphs (DESIGN §7).

Processor files -> vision graph -> embedding merge -> position ids (M-RoPE in numpy) -> prefill
with ``visual_span`` -> decode with the KV cache. No torch, no export code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlens.configs import GenerationConfig as _GEN
from rlens.errors import InputError
from rlens.processing import check_sequence_length
import rlens.runtime.positions as pos_mod
from rlens.runtime.backends import Backend, make_backend
from rlens.runtime.manifest import Manifest, read_manifest
from rlens.runtime.memory import resident_bytes
from rlens.runtime.prepare import Pixels, Preparer, Tokens
from rlens.runtime.sampling import Sampler


@dataclass
class Prompt:
    """Everything a prefill needs, kept so callers (tests, bench) can inspect or reuse it."""

    tokens: Tokens
    pixels: Pixels | None
    features: np.ndarray | None  # [N_v, H]

    @property
    def input_ids(self) -> np.ndarray:
        return self.tokens.input_ids


@dataclass
class Stats:
    prompt_tokens: int = 0
    visual_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # start of generate() to the first new token (processing, vision, prefill)
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass
class Stream:
    """Iterator of text pieces; ``ids``, ``text`` and ``stats`` are complete once it is exhausted."""

    session: Session
    token_iter: Iterator[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stats: Stats = field(default_factory=lambda: Stats())

    def __iter__(self) -> Iterator[str]:
        for tok in self.token_iter:
            self.ids.append(tok)
            text = self.session.preparer.decode(self.ids)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                continue
            piece, self.text = text[len(self.text):], text
            if piece:
                yield piece
        final = self.session.preparer.decode(self.ids)
        if final != self.text:
            piece, self.text = final[len(self.text):], final
            yield piece


class Session:
    """A bundle loaded on one backend. Use as a context manager or call :meth:`close`."""

    def __init__(self, manifest: Manifest, backend: str = "onnxruntime", providers: tuple[str, ...] | None = None,
                 **options: Any) -> None:
        self.manifest = manifest
        self.backend = backend
        self.runners: dict[str, Backend] = {}
        #: resident memory each graph's runner kept after activation (weights, prepacked copies)
        self.resident: dict[str, int | None] = {}
        try:
            for name in ("vision", "embed_tokens", "decoder"):
                if manifest.graph(name):
                    before = resident_bytes()
                    self.runners[name] = make_backend(backend, manifest.graph_path(name), providers, bundle=manifest,
                                                      graph=name, **options).activate()
                    after = resident_bytes()
                    self.resident[name] = None if before is None or after is None else after - before
        except BaseException:
            self.close()
            raise
        vision = self.runners.get("vision")
        self.preparer = Preparer(manifest, vision.inputs if vision else None)
        # Set up the chat template and the image processor now: load time, not time to first token.
        _ = self.preparer.processor.template
        if vision:
            _ = self.preparer.processor.image_processor
            _warm_image_decoders()
        dec = self.runners["decoder"].inputs
        self.float_dtype = dec["inputs_embeds"].dtype
        self.mrope = len(dec["position_ids"].shape) == 3
        m = manifest.model
        self.kv_shape = (1, m.num_kv_heads, 0, m.head_dim)
        #: the stats of the generate call that finished last (each call fills its own Stream.stats)
        self.stats = Stats()
        self.load_s = 0.0  # set by from_bundle: manifest + hashes + graphs + processor

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "onnxruntime", providers: tuple[str, ...] | None = None,
                    *, check_hashes: bool = True, digest: str | None = None, **options: Any) -> Session:
        """Open a bundle (manifest, its root digest, file hashes checked) and load its graphs;
        :attr:`load_s` is the time that took (reported apart from time to first token).

        ``digest``: the manifest's expected root digest (``manifest.json`` → ``digest``), to pin a
        bundle you trust; any other bundle is then refused.
        """
        t0 = time.perf_counter()
        sess = cls(read_manifest(path, check_hashes=check_hashes, digest=digest), backend,
                   tuple(providers) if providers else None, **options)
        sess.load_s = time.perf_counter() - t0
        return sess

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- preparation ---------------------------------------------------------------------------
    def prepare(self, images: Any, prompt: str) -> Prompt:
        """Process one image and the prompt: pixels, vision features, token ids with the span."""
        image = _one_image(images)
        if image is None:
            return Prompt(self.preparer.tokens(prompt, 0), None, None)
        if "vision" not in self.runners:
            raise InputError(f"bundle {self.manifest.folder} has no vision graph; call generate without an image")
        pixels = self.preparer.pixels(image)
        features = self.runners["vision"].infer(pixels.feeds)["image_features"]
        features = features.reshape(-1, features.shape[-1])
        if pixels.grid is not None and int(np.prod(pixels.grid)) != features.shape[0]:
            raise InputError(f"the vision graph gave {features.shape[0]} features for a {pixels.grid} grid")
        return Prompt(self.preparer.tokens(prompt, features.shape[0]), pixels, features)

    def check_length(self, prompt: Prompt, max_new_tokens: int) -> None:
        n = prompt.input_ids.shape[1]
        check_sequence_length(n + max_new_tokens, self.preparer.max_sequence,
                              f"prompt + image ({n} tokens, {prompt.tokens.span[1]} visual) + {max_new_tokens} new tokens")

    def embeddings(self, prompt: Prompt) -> np.ndarray:
        """Token embeddings with the visual span replaced by the vision features."""
        emb = self.runners["embed_tokens"].infer({"input_ids": prompt.input_ids})["inputs_embeds"]
        emb = emb.astype(self.float_dtype, copy=True)
        start, length = prompt.tokens.span
        if length:
            emb[0, start:start + length] = prompt.features.astype(self.float_dtype)
        return emb

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, images: Any, prompt: str, max_new_tokens: int = _GEN.max_new_tokens,
                 temperature: float = _GEN.temperature, top_p: float = _GEN.top_p, seed: int | None = _GEN.seed,
                 stream: bool = False) -> str | Stream:
        """The answer text, or with ``stream=True`` a :class:`Stream` of text pieces."""
        t0 = time.perf_counter()
        sampler = Sampler(temperature, top_p, seed)
        prepared = self.prepare(images, prompt)
        stats = Stats()
        out = Stream(self, self.generate_ids(prepared, max_new_tokens, sampler, t0=t0, stats=stats), stats=stats)
        if stream:
            return out
        for _ in out:
            pass
        return out.text

    def generate_ids(self, prompt: Prompt, max_new_tokens: int, sampler: Sampler | None = None,
                     t0: float | None = None, stats: Stats | None = None) -> Iterator[int]:
        """New token ids (greedy by default), ending after the end-of-sequence token if one comes.

        ``stats`` (a fresh :class:`Stats` when omitted) is this call's own: concurrent calls on one
        session never mix their numbers; ``session.stats`` is the last finished call's.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        self.check_length(prompt, max_new_tokens)
        return self._loop(prompt, max_new_tokens, sampler or Sampler(), t0 or time.perf_counter(),
                          stats if stats is not None else Stats())

    def _loop(self, prompt: Prompt, max_new_tokens: int, sampler: Sampler, t0: float, st: Stats) -> Iterator[int]:
        seq = prompt.input_ids.shape[1]
        st.prompt_tokens, st.visual_tokens = seq, prompt.tokens.span[1]
        ids_pos = pos_mod.prefill_positions(seq, prompt.tokens.span, prompt.pixels.grid if prompt.pixels else None,
                                            self.mrope)
        t1 = time.perf_counter()
        out = self.decoder_step(self.embeddings(prompt), ids_pos, None, prompt.tokens.span, past_len=0)
        st.prefill_s = time.perf_counter() - t1
        position = pos_mod.next_position(ids_pos)
        eos = self._eos_ids()
        t_first = 0.0
        for i in range(max_new_tokens):
            tok = sampler(out["logits"][0, -1])
            st.new_tokens = i + 1
            if i == 0:
                t_first = time.perf_counter()
                st.ttft_s = t_first - t0
            yield tok
            if tok in eos or i + 1 == max_new_tokens:
                self.stats = st
                break
            emb = self.runners["embed_tokens"].infer({"input_ids": np.asarray([[tok]], dtype=np.int64)})
            past = [out[f"present.{j}.{t}"] for j in range(self.manifest.num_layers) for t in ("key", "value")]
            out = self.decoder_step(emb["inputs_embeds"].astype(self.float_dtype),
                                    pos_mod.step_positions(position + i, self.mrope), past, (0, 0), past_len=seq + i)
            st.decode_s = time.perf_counter() - t_first

    def decoder_step(self, embeds: np.ndarray, position_ids: np.ndarray, past: list[np.ndarray] | None,
                     span: tuple[int, int], past_len: int | None = None) -> dict[str, np.ndarray]:
        """One decoder call: a prefill chunk (``past=None``) or decode step(s) on the KV cache.

        ``past_len`` is the unpruned past length (tokens already seen): with FastV/VTW bundles the
        layers' caches are shorter than that, and ``attention_mask`` always covers the full length.
        """
        n = self.manifest.num_layers
        if past is None:
            empty = np.zeros(self.kv_shape, dtype=self.float_dtype)
            past = [empty] * (2 * n)
        if past_len is None:
            past_len = max(p.shape[2] for p in past)
        total = past_len + embeds.shape[1]
        feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": position_ids, "visual_span": np.asarray(span, dtype=np.int64)}
        for j in range(n):
            feeds[f"past_key_values.{j}.key"] = past[2 * j]
            feeds[f"past_key_values.{j}.value"] = past[2 * j + 1]
        return self.runners["decoder"].infer(feeds)

    def _eos_ids(self) -> set[int]:
        eos = self.manifest.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.preparer.processor.eos_token_id is not None:
            ids.add(int(self.preparer.processor.eos_token_id))
        return {int(i) for i in ids}


def _warm_image_decoders() -> None:
    """PIL imports its common format plugins (PNG, JPEG, BMP, GIF, PPM) on first open; do that during
    load (``preinit``: the rarer formats are still imported on demand, as ``Image.open`` does)."""
    from PIL import Image

    Image.preinit()


def _one_image(images: Any) -> Any:
    if isinstance(images, (list, tuple)):
        if len(images) > 1:
            raise InputError(f"got {len(images)} images; this bundle supports one visual span, so one image per prompt")
        return images[0] if images else None
    return images
