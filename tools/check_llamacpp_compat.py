#!/usr/bin/env python3
"""Format compatibility: do the GGUF files our converter writes load and run in llama.cpp?

Loads every golden LLM (tests/data/golden/*/model-*.gguf) with llama-cpp-python, evaluates the golden prompt and
compares llama.cpp's logits at every prompt position with transformers' (logits.f32), as a fraction of the logit
range; also checks that llama.cpp's tokenizer gives the golden prompt ids. Needs `pip install llama-cpp-python`
(see bench/README.md for the build flags). Not part of CI.

Expected: F32/F16 files within ~1e-3 of the range (llama.cpp keeps an F16 KV cache), Q8_0 within ~3e-2;
mistral-swa differs on purpose: llama.cpp's llama architecture ignores llama.attention.sliding_window, so it
runs full attention where transformers (and vlmd) use the window.
"""
import os
import sys

import numpy as np

try:
    import llama_cpp
except ImportError:
    sys.exit("llama-cpp-python is not installed (pip install llama-cpp-python)")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "golden")


def read_meta(path):
    meta = {}
    for line in open(path, encoding="utf-8"):
        key, _, val = line.rstrip("\n").partition(" ")
        meta[key] = val
    return meta


def main():
    worst = 0.0
    for name in sorted(os.listdir(ROOT)):
        d = os.path.join(ROOT, name)
        if not os.path.exists(os.path.join(d, "golden.txt")):
            continue
        meta = read_meta(os.path.join(d, "golden.txt"))
        prompt = [int(x) for x in meta["prompt"].split()]
        n_vocab = int(meta["n_vocab"])
        gold = np.fromfile(os.path.join(d, "logits.f32"), dtype=np.float32).reshape(len(prompt), n_vocab)
        rng = float(meta["logit_range"])
        for f in sorted(x for x in os.listdir(d) if x.endswith(".gguf")):
            llm = llama_cpp.Llama(os.path.join(d, f), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
            llm.eval(prompt)
            logits = np.array(llm.scores[: len(prompt)])
            ids = llm.tokenize(meta["prompt_text"].encode(), add_bos=True, special=False)
            rel = float(np.abs(logits - gold).max() / rng)
            if name != "mistral-swa":
                worst = max(worst, rel)
            print(f"{name:12s} {f:16s} llama.cpp max|dlogit|/range = {rel:.2e}  tokenizer ids equal: {ids == prompt}")
    print(f"worst (excluding the sliding-window model): {worst:.2e}")


if __name__ == "__main__":
    main()
