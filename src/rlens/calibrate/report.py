"""The calibration report: a printed table and ``plan.report.png`` beside the plan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlens.flops import TokenLayout

if TYPE_CHECKING:  # pragma: no cover
    from rlens.calibrate.rankings import RankResult


@dataclass(frozen=True)
class CalibrationReport:
    method: str
    rankings: dict[str, RankResult]  # "both", or "attention" and "ffn"
    num_layers: int
    chosen: int  # layers reduced (per ranking)
    flops_ratio: float
    flops_curve: tuple[float, ...]  # FLOPs ratio with the first k layers reduced, k = 0..L
    budget: float | None
    plan_divergence: float  # divergence of the final plan on the calibration set
    layout: TokenLayout
    samples: int
    seconds: float
    capture_seconds: float
    layer_evals: int

    @property
    def proportion(self) -> float:
        return self.chosen / self.num_layers

    @property
    def full_pass_equivalents(self) -> float:
        """Decoder layers run after the capture pass, in full passes over the calibration set."""
        return self.layer_evals / self.num_layers


def report_path_for(plan_path: str | os.PathLike[str]) -> Path:
    """``plan.json`` -> ``plan.report.png`` (same folder)."""
    p = Path(plan_path)
    return p.with_name(p.stem + ".report.png")


def format_table(report: CalibrationReport) -> str:
    """The printed summary: one row per ranking position, then the plan's totals."""
    kinds = list(report.rankings)
    first = report.rankings[kinds[0]]
    value = "score" if first.method == "stats" else ("divergence" if first.cumulative else "alone")
    head = ["step"] + [f"{k}:layer" for k in kinds] + [f"{k}:{value}" for k in kinds] + ["flops", "reduced"]
    rows = []
    for i in range(report.num_layers):
        cells = [str(i + 1)]
        cells += [str(report.rankings[k].order[i]) for k in kinds]
        cells += [f"{report.rankings[k].steps[i]:.4g}" if i < len(report.rankings[k].steps) else "-"
                  for k in kinds]
        cells += [f"{report.flops_curve[i + 1]:.3f}", "yes" if i < report.chosen else ""]
        rows.append(cells)
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lay = report.layout
    budget = f", budget {report.budget}" if report.budget is not None else ""
    lines.append(
        f"{report.method} ranking ({', '.join(kinds)}) on {report.samples} samples "
        f"({lay.visual} visual + {lay.text} text tokens): "
        f"{report.chosen} of {report.num_layers} layers reduced "
        f"(proportion {report.proportion:.3f}{budget}), FLOPs ratio {report.flops_ratio:.4f}, "
        f"divergence {report.plan_divergence:.4g}"
    )
    lines.append(
        f"cost: {report.seconds:.1f} s ({report.capture_seconds:.1f} s capture), {report.layer_evals} layer "
        f"evaluations = {report.full_pass_equivalents:.1f} full passes"
    )
    return "\n".join(lines)


def write_report(report: CalibrationReport, png_path: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Divergence per ranking step, FLOPs ratio vs proportion, per-layer sensitivity bars.

    Written through :func:`rlens.fileio.output_writer`: a file there is replaced only if it is an
    rlens report (PNG text ``Software: rlens``) and ``overwrite``."""
    from rlens.fileio import output_writer

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _plot_steps(axes[0], report)
    _plot_flops(axes[1], report)
    _plot_sensitivity(axes[2], report)
    fig.suptitle(f"rlens calibrate — {report.method} ranking, {report.samples} samples")
    fig.tight_layout()
    try:
        with output_writer(png_path, "report", overwrite) as tmp:
            fig.savefig(tmp, dpi=110, format="png", metadata={"Software": "rlens"})
    finally:
        plt.close(fig)
    return Path(os.path.abspath(png_path))


def _plot_steps(ax, report: CalibrationReport) -> None:
    for kind, r in report.rankings.items():
        xs = range(1, len(r.steps) + 1)
        ax.plot(xs, r.steps, marker="o", ms=3, label=kind)
    ax.axvline(report.chosen + 0.5, color="grey", ls="--", lw=1)
    first = next(iter(report.rankings.values()))
    ylabel = {"greedy": "divergence, first k reduced", "fast": "divergence, layer alone",
              "stats": "visual update score"}[first.method]
    ax.set(xlabel="ranking step k", ylabel=ylabel, title="divergence per ranking step")
    ax.legend(fontsize=8)


def _plot_flops(ax, report: CalibrationReport) -> None:
    L = report.num_layers
    ax.plot([k / L for k in range(L + 1)], report.flops_curve, marker="o", ms=3)
    ax.plot([report.proportion], [report.flops_ratio], "r*", ms=12, label="plan")
    if report.budget is not None:
        ax.axhline(report.budget, color="red", ls=":", lw=1, label="budget")
    ax.set(xlabel="proportion of layers reduced", ylabel="prefill FLOPs ratio",
           title="FLOPs ratio vs proportion")
    ax.legend(fontsize=8)


def _plot_sensitivity(ax, report: CalibrationReport) -> None:
    kinds = list(report.rankings)
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        r = report.rankings[kind]
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(report.num_layers)]
        ax.bar(xs, r.sensitivity, width=width, label=kind)
    first = report.rankings[kinds[0]]
    ax.set(xlabel="decoder layer", ylabel="score" if first.method == "stats" else "divergence reduced alone",
           title="per-layer sensitivity")
    ax.legend(fontsize=8)
