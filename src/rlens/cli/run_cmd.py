"""``rlens run BUNDLE --image IMG --prompt TEXT``: answer on stdout, timings on stderr. Torch-free."""

from __future__ import annotations

import argparse
import sys

from rlens.cli.flags import add_flags, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="answer a prompt about an image with a bundle",
        description="Run BUNDLE (made by `rlens export`) on one image and a prompt: processor, vision "
                    "graph, prefill with the visual span, decode with the KV cache. Prints the answer on "
                    "stdout, time-to-first-token and tokens/s on stderr. Does not need torch.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--image", required=True, metavar="IMG", help="image file (one image)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the question or instruction")
    from rlens.configs import GenerationConfig, RunnerConfig

    add_flags(p, GenerationConfig)
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--digest", metavar="SHA256",
                   help="run the bundle only if its manifest digest is this (manifest.json 'digest'; docs/bundle.md)")
    add_flags(p, RunnerConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from rlens.configs import GenerationConfig, RunnerConfig
    from rlens.runtime import Session

    runner, gen = config_from_args(RunnerConfig, args), config_from_args(GenerationConfig, args)
    with Session.from_bundle(args.bundle, backend=runner.backend, providers=runner.provider_list,
                             threads=runner.threads, digest=args.digest) as sess:
        out = sess.generate(args.image, args.prompt, **asdict(gen), stream=True)
        for piece in out:
            if args.stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        print("" if args.stream else out.text)
        st = out.stats
        print(f"rlens: {st.prompt_tokens} prompt tokens ({st.visual_tokens} visual), {st.new_tokens} new; "
              f"load {sess.load_s * 1e3:.1f} ms; "
              f"time to first token {st.ttft_s * 1e3:.1f} ms (prefill {st.prefill_s * 1e3:.1f} ms), "
              f"{st.tokens_per_s:.1f} tokens/s", file=sys.stderr)
    return 0
