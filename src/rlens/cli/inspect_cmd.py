"""``rlens inspect MODEL``: family, sizes and the per-layer prefill FLOPs table of a plan."""

from __future__ import annotations

import argparse
import json
import sys

from rlens.cli import add_model_argument
from rlens.cli.calibrate_cmd import add_pruning_method_flags
from rlens.cli.flags import add_flags, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a model's family, sizes and prefill FLOPs (optionally under a plan)",
        description="Show the family, layer count and sizes of MODEL and the per-layer and total prefill "
        "FLOPs, exact and in FastV's convention, for the unreduced model or under --plan.",
    )
    add_model_argument(p)
    p.add_argument("--plan", metavar="P", help="plan.json to account for (checked against the model)")
    from rlens.configs import InspectConfig

    add_flags(p, InspectConfig)
    add_pruning_method_flags(p.add_argument_group("token pruning added to the accounting (docs/token_pruning.md)"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.configs import InspectConfig
    from rlens.flops import Sizes, TokenLayout, plan_flops
    from rlens.models import load_config, load_model

    tokens = config_from_args(InspectConfig, args)  # checks the counts before loading anything
    plan = None
    if args.plan:
        from rlens.plan import load_plan

        loaded = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.load_dtype)
        config, family = loaded.config, loaded.family
        plan = load_plan(args.plan, loaded.info())
    else:
        config, family = load_config(args.model, trust_remote_code=args.trust_remote_code)
    sizes = family.sizes(config)
    plan = _with_pruning(plan, args, family, config, sizes)
    layout = TokenLayout(visual=tokens.visual_tokens, text_after=tokens.text_tokens - tokens.text_before,
                         text_before=tokens.text_before)
    report = plan_flops(plan, Sizes.from_family_sizes(sizes), layout)
    if args.json:
        out = {"family": family.name, "architecture": family.model_class, "sizes": sizes,
               "rope": family.rope_kind, "tokens": {"visual": layout.visual, "text": layout.text,
                                                   "text_before": layout.text_before},
               "plan": plan.summary() if plan else None, "flops": report.to_json()}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(format_table(family, sizes, plan, layout, report))
    return 0


def _with_pruning(plan, args, family, config, sizes):
    """``--fastv`` / ``--vtw`` on top of ``--plan`` (or of the unreduced model)."""
    from dataclasses import replace

    from rlens.errors import InputError
    from rlens.plan import ModelInfo, Plan, PlanError, TokenPruning, plan_from_dict
    from rlens.pruning import PRUNING_METHODS

    given = {m: getattr(args, m) for m in PRUNING_METHODS if getattr(args, m, None) is not None}
    if not given:
        return plan
    if len(given) > 1:
        raise InputError(f"give one token pruning method, not both {' and '.join('--' + m for m in given)}")
    (name, value), = given.items()
    PRUNING_METHODS[name].check(value)
    fields = PRUNING_METHODS[name].fixed(value, sizes["num_layers"])
    if fields is None:
        raise InputError(f"--{name} {value} is chosen at calibration; give a layer to inspect")
    tp = TokenPruning(name, **fields)
    if plan is None:
        plan = Plan(model=ModelInfo(family.model_class, sizes["num_layers"], sizes["hidden_size"],
                                    sizes["intermediate_size"], ""))
    out = replace(plan, token_pruning=tp)
    try:
        plan_from_dict(out.to_json(), f"--{name}")  # the plan file's validation
    except PlanError as e:
        raise InputError(str(e)) from None
    return out


def format_table(family, sizes, plan, layout, report) -> str:
    from rlens.flops import layer_layout

    lines = [
        f"family        {family.name} ({family.model_class}), rope={family.rope_kind}",
        "decoder       " + ", ".join(f"{k}={v}" for k, v in sizes.items()),
        f"tokens        {layout.visual} visual, {layout.text} text ({layout.text_before} before the image)",
        f"plan          {plan.summary() if plan else 'none (unreduced)'}",
        "",
        f"{'layer':>5} {'visual':>7} {'hollow W':>9} {'FFN keep':>9} {'GFLOPs':>10} {'vs full':>8}",
    ]
    full = report.full_total / len(report.layers)
    for lf in report.layers:
        lp = plan.layer(lf.index) if plan else None
        w = lp.hollow_window if lp and lp.hollow_window is not None else "-"
        k = lp.ffn_keep if lp and lp.ffn_keep is not None else "-"
        nv = layer_layout(layout, plan.token_pruning if plan else None, lf.index).visual
        lines.append(f"{lf.index:>5} {nv:>7} {w!s:>9} {k!s:>9} {lf.total / 1e9:>10.4f} {lf.total / full:>8.3f}")
    lines.append(f"total prefill {report.total / 1e9:.4f} GFLOPs; ratio {report.ratio:.4f} "
                 f"(FastV convention {report.ratio_fastv:.4f})")
    return "\n".join(lines)
