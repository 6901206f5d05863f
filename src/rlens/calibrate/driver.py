"""Drive the decoder layer by layer from cached hidden states (what makes greedy affordable).

One capture pass per sample runs the model's own forward (vision tower, embedding merge, rotary
positions, masks) and records, per decoder layer, the hidden state entering it and the keyword
arguments it was called with; the pass stops after the last layer. From then on a reduced
configuration whose first changed layer is ``l`` only runs layers ``l .. L-1`` from the cache,
through the reference reductions of :func:`rlens.reference.reduced` (same modules, same weights,
nothing copied). Samples of one shape run as one batch.

The capture pass also gathers what needs no divergence: the probe scores of every layer's FFN
(for static kept dimensions) and the size of each layer's update of the visual tokens (``stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from rlens.calibrate.data import Encoded
from rlens.families.base import Family
from rlens.plan import Plan, TokenPruning
from rlens.reference import reduced
from rlens.reference.tokens import map_positions
from rlens.reference.ffn import probe_positions, probe_scores


class _StopForward(Exception):
    """Raised after the last decoder layer: the capture pass needs no logits over all positions."""


@dataclass
class Group:
    """Samples of one shape, batched: ``hidden[l]`` enters layer l (``hidden[L]``: the full
    model's last output, read once after the capture pass)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    visual_span: tuple[int, int]
    positions: torch.Tensor
    ref_logp: torch.Tensor | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.sources)


@dataclass
class LayerStats:
    """Per-layer sums from the capture pass (divided by ``samples`` when read)."""

    probe_scores: list[torch.Tensor]  # [m] float64 sums of mean probe scores
    attn_update: list[float]  # |attention output| / |input| on visual tokens
    ffn_update: list[float]  # |FFN output| / |FFN input residual| on visual tokens
    layer_update: list[float]  # |layer output - input| / |input| on visual tokens
    samples: int = 0


class Driver:
    """Runs the decoder of ``model`` from cached per-layer hidden states."""

    def __init__(self, model: Any, family: type[Family], probes: int = 64, cache_device: str | None = None,
                 progress: bool = True) -> None:
        self.model = model
        self.family = family
        self.probes = probes
        self.cache_device = cache_device
        self.progress = progress
        self.layers = family.decoder_layers(model)
        self.num_layers = len(self.layers)
        self.layer_evals = 0  # decoder layers run over the whole calibration set (capture excluded)
        self.groups: list[Group] = []
        self.stats: LayerStats | None = None
        self.samples = 0
        self.dirty = False  # True once the cache holds a reduced configuration's states
        self.compute_device: torch.device | None = None  # where layer 0 received its input

    # ---- capture ---------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self, encoded: list[Encoded], batch_size: int = 8) -> None:
        """Run every sample once (full model), filling the cache, the stats and the references."""
        L = self.num_layers
        self.stats = LayerStats([torch.zeros(0, dtype=torch.float64)] * L, [0.0] * L, [0.0] * L, [0.0] * L)
        self.samples = len(encoded)
        groups: list[Group] = []
        for enc in tqdm(encoded, desc="calibrate: full-model pass", unit="sample", disable=not self.progress):
            hidden, kwargs = self._capture_one(enc)
            _add_to_groups(groups, hidden, kwargs, enc, batch_size)
        for g in groups:
            g.hidden = [torch.cat(h, dim=0) if isinstance(h, list) else h for h in g.hidden]
            g.ref_logp = self._log_probs(g.hidden[L], g.positions)
        self.groups = groups

    def _capture_one(self, enc: Encoded) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        L = self.num_layers
        hidden: list[torch.Tensor | None] = [None] * (L + 1)
        kwargs: list[dict[str, Any]] = [{} for _ in range(L)]
        handles = []
        for i, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(_pre_hook(i, hidden, kwargs, self._to_cache),
                                                           with_kwargs=True))
            handles += self._stat_hooks(i, layer, enc.visual_span)
        handles.append(self.layers[L - 1].register_forward_hook(_last_hook(hidden, L, self._to_cache)))
        entry = self.model if enc.entry == "model" else self.family.language_model(self.model)
        device = next(self.model.parameters()).device  # dispatched models: accelerate moves them on
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) and device.type != "meta" else v
                  for k, v in enc.inputs.items()}
        try:
            entry(**inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if any(h is None for h in hidden):
            raise RuntimeError("the capture pass did not reach every decoder layer")
        self._layer_update_stats(hidden, enc.visual_span)
        self.stats.samples += 1
        return hidden, kwargs  # type: ignore[return-value]

    def _to_cache(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if self.compute_device is None:
            self.compute_device = t.device
        return t.to(self.cache_device) if self.cache_device else t

    def _stat_hooks(self, i: int, layer: Any, span: tuple[int, int]) -> list[Any]:
        start, length = span
        stats = self.stats
        mlp = self.family.ffn(layer)
        gate, up, _ = self.family.ffn_linears(mlp)
        probes = self.probes

        def mlp_pre(module: Any, args: tuple, kw: dict) -> None:
            x = (args[0] if args else kw["x"])[:, start:start + length]
            h = torch.nn.functional.silu(gate(x)) * up(x)  # as ProbeFFN.hidden: same rows, same bits
            s = probe_scores(h[:, probe_positions(length, probes).to(x.device)]).double().sum(0).cpu()
            stats.probe_scores[i] = s if stats.probe_scores[i].numel() == 0 else stats.probe_scores[i] + s

        def mlp_post(module: Any, args: tuple, kw: dict, out: Any) -> None:
            x = (args[0] if args else kw["x"])[:, start:start + length]
            y = (out[0] if isinstance(out, tuple) else out)[:, start:start + length]
            stats.ffn_update[i] += float(y.norm() / x.norm().clamp_min(1e-12))

        def attn_post(module: Any, args: tuple, kw: dict, out: Any) -> None:
            x = (args[0] if args else kw["hidden_states"])[:, start:start + length]
            y = (out[0] if isinstance(out, tuple) else out)[:, start:start + length]
            stats.attn_update[i] += float(y.norm() / x.norm().clamp_min(1e-12))

        attn = self.family.attention(layer)
        return [mlp.register_forward_pre_hook(mlp_pre, with_kwargs=True),
                mlp.register_forward_hook(mlp_post, with_kwargs=True),
                attn.register_forward_hook(attn_post, with_kwargs=True)]

    def _layer_update_stats(self, hidden: list[torch.Tensor], span: tuple[int, int]) -> None:
        start, length = span
        for i in range(self.num_layers):
            a = hidden[i][:, start:start + length].float()
            b = hidden[i + 1][:, start:start + length].float()
            self.stats.layer_update[i] += float((b - a).norm() / a.norm().clamp_min(1e-12))

    # ---- running ---------------------------------------------------------------------------
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head of the language model (the logits of the HF forward)."""
        lm = self.family.language_model(self.model)
        return self.family.lm_head(self.model)(lm.norm(h))

    def _log_probs(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows = h[:, positions.to(h.device)]
        return torch.log_softmax(self.head(rows).float(), dim=-1)

    @torch.no_grad()
    def run(self, group: Group, start: int, entry: torch.Tensor | None = None,
            record: frozenset[int] = frozenset()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Layers ``start .. L-1`` on the cached input of ``start`` (or on ``entry``). Returns the
        last output and the inputs of the layers in ``record`` as this run computed them."""
        h = (group.hidden[start] if entry is None else entry).to(self.compute_device)
        saved: dict[int, torch.Tensor] = {}
        for i in range(start, self.num_layers):
            h = self.layers[i](h, **group.kwargs[i])
            h = h[0] if isinstance(h, tuple) else h
            if i + 1 in record:
                saved[i + 1] = self._to_cache(h)
        return h, saved

    def ensure_full_cache(self) -> None:
        """Make ``hidden`` the full model's again if a ranking committed reductions into it."""
        if self.dirty:
            inputs = frozenset(range(1, self.num_layers))
            with torch.no_grad():
                for g in self.groups:
                    _, saved = self.run(g, 0, record=inputs)
                    g.hidden[1:self.num_layers] = [saved[k] for k in range(1, self.num_layers)]
            self.layer_evals += self.num_layers
            self.dirty = False

    def divergence(self, plan: Plan, start: int = 0) -> float:
        """Mean over samples of the mean ``KL(P_full || P_reduced)`` at their target positions,
        with ``plan`` applied; layers before ``start`` must be unchanged from the cache."""
        return self.divergence_from(plan, start)[0]

    @torch.no_grad()
    def divergence_from(self, plan: Plan, start: int, entries: list[torch.Tensor] | None = None,
                        record: frozenset[int] = frozenset()) -> tuple[float, dict[int, list[torch.Tensor]]]:
        """:meth:`divergence`, optionally starting from ``entries`` (one input of layer ``start``
        per group, computed with ``plan``'s layers before ``start``) instead of the cache, and
        returning the inputs of the layers in ``record`` (per group) as this run computed them
        (for :meth:`commit`, or to resume from later) — only those up to ``pruning_start(plan)``:
        later inputs are pruned (shorter) and no run starts after it."""
        limit = pruning_start(plan)
        if entries is not None and start > limit:
            raise ValueError(f"cannot resume at layer {start}: token pruning runs from layer {limit}")
        start = min(start, limit)
        keep = frozenset(k for k in record if start < k < self.num_layers and k <= limit)
        states: dict[int, list[torch.Tensor]] = {k: [] for k in keep}
        total = 0.0
        with reduced(self.model, plan, self.family) as state:
            for gi, g in enumerate(self.groups):
                state.visual_span = g.visual_span
                out, saved = self.run(g, start, None if entries is None else entries[gi], keep)
                for k, v in saved.items():
                    states[k].append(v)
                logp = self._log_probs(out, _rows(state, g.positions, g.visual_span))
                ref = g.ref_logp.to(logp.device)
                kl = (ref.exp() * (ref - logp)).sum(-1).mean(-1)  # [B]
                total += float(kl.sum())
        self.layer_evals += self.num_layers - start
        return total / self.samples, states

    def commit(self, states: dict[int, list[torch.Tensor]]) -> None:
        """Make ``states`` (layer inputs per group, from :meth:`divergence_from`) the cache's."""
        for k, per_group in states.items():
            for g, h in zip(self.groups, per_group):
                g.hidden[k] = h
        self.dirty = True

    def state_bytes(self) -> int:
        """Bytes of one layer input over the whole calibration set."""
        return sum(g.hidden[0].numel() * g.hidden[0].element_size() for g in self.groups)

    @torch.no_grad()
    def withdrawal_divergence(self, layer: int) -> float:
        """VTW's criterion: mean over samples of ``KL(P_withdrawn || P_full)`` of the last prompt
        token's next-token distribution, visual tokens withdrawn from ``layer`` on (from the
        full-model cache: layers before ``layer`` are unchanged)."""
        self.ensure_full_cache()
        plan = Plan(model=_info_stub(self.num_layers), token_pruning=TokenPruning("vtw", layer))
        total = 0.0
        with reduced(self.model, plan, self.family) as state:
            for g in self.groups:
                state.visual_span = g.visual_span
                last = last_prompt_position(g.positions, g.hidden[0].shape[1])
                out, _ = self.run(g, layer)
                logp = self._log_probs(out, _rows(state, last, g.visual_span))
                full = g.ref_logp[:, (g.positions == last[0]).nonzero()[0]].to(logp.device)
                total += float((logp.exp() * (logp - full)).sum(-1).sum())
        self.layer_evals += self.num_layers - layer
        return total / self.samples


def pruning_start(plan: Plan) -> int:
    """The first layer a run must start from with ``plan``'s token pruning: the cache holds full
    (unpruned) layer inputs up to the pruning layer only; FastV also needs its score layer."""
    tp = plan.token_pruning
    if tp is None:
        return 1 << 30
    return tp.layer - 1 if tp.score_layer is not None else tp.layer


def last_prompt_position(positions: torch.Tensor, length: int) -> torch.Tensor:
    """The last prompt token: the first target position when an answer follows, else the last."""
    last = positions[0] if int(positions[-1]) < length - 1 else positions[-1]
    return last.reshape(1)


def _rows(state: Any, positions: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    prune = state.pruning
    if prune is None or prune.rows is None:
        return positions
    return map_positions(positions, span, prune.dropped)


def _info_stub(num_layers: int) -> Any:
    from rlens.plan import ModelInfo

    return ModelInfo("calibration", num_layers, 1, 1, "")


def _pre_hook(i: int, hidden: list, kwargs: list, to_cache: Any) -> Any:
    def hook(module: Any, args: tuple, kw: dict) -> None:
        kw = dict(kw)
        if args:
            hidden[i] = to_cache(args[0])
            if len(args) > 1:
                raise RuntimeError("decoder layers called with extra positional arguments are not supported")
        else:
            hidden[i] = to_cache(kw.pop("hidden_states"))
        kwargs[i] = kw

    return hook


def _last_hook(hidden: list, L: int, to_cache: Any) -> Any:
    def hook(module: Any, args: tuple, out: Any) -> None:
        hidden[L] = to_cache(out[0] if isinstance(out, tuple) else out)
        raise _StopForward

    return hook


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and (a is b or torch.equal(a, b.to(a.device))))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


def _add_to_groups(groups: list[Group], hidden: list[torch.Tensor], kwargs: list[dict[str, Any]],
                   enc: Encoded, batch_size: int) -> None:
    """Batch with an earlier sample of the same shape and layer arguments (masks, positions)."""
    for g in groups:
        if (g.size < batch_size and g.visual_span == enc.visual_span
                and g.hidden[0][0].shape == hidden[0].shape
                and tuple(g.positions.tolist()) == enc.positions and _same(g.kwargs, kwargs)):
            for store, h in zip(g.hidden, hidden):
                store.append(h)
            g.sources.append(enc.source)
            return
    groups.append(Group([[h] for h in hidden], kwargs, enc.visual_span,  # type: ignore[misc]
                        torch.tensor(enc.positions, dtype=torch.long), sources=[enc.source]))
