"""Command-line adapters: parse flags into the stage's typed config, call it, map errors to exit 2."""


def add_model_argument(p) -> None:
    """MODEL, --trust-remote-code and --load-dtype: every command that loads a model takes them."""
    from rlens.cli.flags import add_flags
    from rlens.configs import ModelSource

    p.add_argument("model", metavar="MODEL", help="preset name (e.g. tiny-qwen2-vl) or save_pretrained directory")
    add_flags(p, ModelSource)
