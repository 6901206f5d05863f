"""Command-line adapters: parse flags into the stage's typed config, call it, map errors to exit 2."""


def add_model_argument(p) -> None:
    """MODEL and --trust-remote-code: every command that loads a model takes both."""
    p.add_argument("model", metavar="MODEL", help="preset name (e.g. tiny-qwen2-vl) or save_pretrained directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow custom model code from a local directory (off by default)")
