"""``rlens run BUNDLE --image IMG --prompt TEXT``: answer on stdout, timings on stderr. Torch-free."""

from __future__ import annotations

import argparse
import sys

from rlens.cli.flags import LazyChoices


def add_provider_flag(p: argparse.ArgumentParser) -> None:
    def backends():
        from rlens.runtime.backends import BACKENDS

        return BACKENDS

    p.add_argument("--backend", choices=LazyChoices(backends), default="onnxruntime", metavar="NAME",
                   help="runtime backend, one of %(choices)s (default %(default)s); tensorrt runs the engines of "
                        "rlens build-engine, built on this GPU")
    p.add_argument("--providers", default="cpu", metavar="LIST",
                   help="ONNX Runtime execution providers in priority order, comma separated: cpu, cuda, "
                        "tensorrt (or full names like CUDAExecutionProvider); CPU is always the fallback "
                        "(default cpu)")


def providers_of(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(p.strip() for p in args.providers.split(",") if p.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="answer a prompt about an image with a bundle",
        description="Run BUNDLE (made by `rlens export`) on one image and a prompt: processor, vision "
                    "graph, prefill with the visual span, decode with the KV cache. Prints the answer on "
                    "stdout, time-to-first-token and tokens/s on stderr. Does not need torch.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--image", required=True, metavar="IMG", help="image file (one image)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the question or instruction")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate at most (64)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default 1.0)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads (0 = ONNX Runtime's)")
    p.add_argument("--digest", metavar="SHA256",
                   help="run the bundle only if its manifest digest is this (manifest.json 'digest'; docs/bundle.md)")
    add_provider_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.runtime import Session

    with Session.from_bundle(args.bundle, backend=args.backend, providers=providers_of(args),
                             threads=args.threads, digest=args.digest) as sess:
        out = sess.generate(args.image, args.prompt, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed, stream=True)
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
