"""Command-line adapters: parse flags into the stage's typed config, call it, map errors to exit 2."""


def add_model_argument(p) -> None:
    """MODEL, --trust-remote-code and --load-dtype: every command that loads a model takes them."""
    p.add_argument("model", metavar="MODEL", help="preset name (e.g. tiny-qwen2-vl) or save_pretrained directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow custom model code from a local directory (off by default)")
    p.add_argument("--load-dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="dtype the weights are loaded and held in; auto: the checkpoint's own (default). "
                        "Independent of the exported graph's --dtype: an fp16 bundle exports from bf16 weights")
