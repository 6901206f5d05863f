"""Command-line adapters: parse flags into the stage's typed config, call it, map errors to exit 2."""
