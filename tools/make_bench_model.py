#!/usr/bin/env python3
"""Write random-weight GGUF models of TinyLlama-1.1B shape for speed benchmarks.

The files follow llama.cpp's `llama` layout (see shared/docs/gguf-llava.md §3) and carry the real Llama-2
SentencePiece vocabulary copied from a vocab-only GGUF, so both llama.cpp and vlm-run load and tokenize them.
The weights are noise (N(0, 0.02), fixed seed, norm gains 1): outputs are meaningless, but every matrix has the
real size and type, which is all a throughput benchmark needs. Every weight matrix is stored in the requested
type ("pure", like llama-quantize --pure); norm gains stay F32.

Tensors are generated, quantized and written one at a time, in row chunks, so memory stays well under 1 GB even
though the F32 master of 1.1B parameters would be 4.4 GB.

Usage: make_bench_model.py OUT_DIR [--types f16,q8_0,q4_0] [--seed 1234] [--layers 22] [--force]
Writes OUT_DIR/tinyllama-rand-<type>.gguf (default OUT_DIR: ~/.cache/vlmd-bench).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

DEFAULT_VOCAB = "/work/shared/testdata/ggml-vocab-llama-spm.gguf"

# TinyLlama-1.1B-Chat-v1.0 hyper-parameters.
N_EMBD = 2048
N_LAYER = 22
N_HEAD = 32
N_HEAD_KV = 4
N_FF = 5632
N_VOCAB = 32000
N_CTX = 2048
ROPE_BASE = 10000.0
RMS_EPS = 1e-5
HEAD_DIM = N_EMBD // N_HEAD

TYPES = {
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (QT.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

ROW_CHUNK = 512  # rows generated and quantized at a time


def tensor_list(n_layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) in llama.cpp's order; numpy shape is (rows=out, cols=in), the reverse of ggml's ne."""
    t = [("token_embd.weight", (N_VOCAB, N_EMBD))]
    for i in range(n_layer):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (N_EMBD,)),
            (p + "attn_q.weight", (N_HEAD * HEAD_DIM, N_EMBD)),
            (p + "attn_k.weight", (N_HEAD_KV * HEAD_DIM, N_EMBD)),
            (p + "attn_v.weight", (N_HEAD_KV * HEAD_DIM, N_EMBD)),
            (p + "attn_output.weight", (N_EMBD, N_HEAD * HEAD_DIM)),
            (p + "ffn_norm.weight", (N_EMBD,)),
            (p + "ffn_gate.weight", (N_FF, N_EMBD)),
            (p + "ffn_up.weight", (N_FF, N_EMBD)),
            (p + "ffn_down.weight", (N_EMBD, N_FF)),
        ]
    t += [("output_norm.weight", (N_EMBD,)), ("output.weight", (N_VOCAB, N_EMBD))]
    return t


def stored(shape: tuple[int, ...], qtype: QT) -> tuple[tuple[int, ...], np.dtype, int, QT | None]:
    """Shape/dtype/nbytes as GGUFWriter.add_tensor_info wants them for a tensor stored as qtype."""
    if len(shape) == 1:
        return shape, np.dtype(np.float32), shape[0] * 4, None
    if qtype == QT.F16:
        return shape, np.dtype(np.float16), shape[0] * shape[1] * 2, None
    bshape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return bshape, np.dtype(np.uint8), bshape[0] * bshape[1], qtype


def make_tensor(name: str, shape: tuple[int, ...], qtype: QT, seed: int) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    # Seed per tensor name so every type gets the same underlying weights, whatever the tensor order.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows, cols = shape
    parts = []
    for r0 in range(0, rows, ROW_CHUNK):
        n = min(ROW_CHUNK, rows - r0)
        w = rng.standard_normal((n, cols), dtype=np.float32)
        w *= np.float32(0.02)
        parts.append(gguf.quants.quantize(w, qtype))
        del w
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def copy_tokenizer(w: gguf.GGUFWriter, vocab_path: str) -> None:
    r = gguf.GGUFReader(vocab_path)
    f = r.fields

    def get(key: str):
        return f[key].contents() if key in f else None

    if get("tokenizer.ggml.model") != "llama":
        raise SystemExit(f"{vocab_path}: expected a SentencePiece ('llama') vocabulary")
    tokens = get("tokenizer.ggml.tokens")
    if len(tokens) != N_VOCAB:
        raise SystemExit(f"{vocab_path}: {len(tokens)} tokens, expected {N_VOCAB}")
    w.add_tokenizer_model("llama")
    if get("tokenizer.ggml.pre") is not None:
        w.add_tokenizer_pre(get("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_scores([float(x) for x in get("tokenizer.ggml.scores")])
    w.add_token_types([int(x) for x in get("tokenizer.ggml.token_type")])
    for key, fn in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                    ("unknown_token_id", w.add_unk_token_id), ("padding_token_id", w.add_pad_token_id)):
        v = get("tokenizer.ggml." + key)
        if v is not None:
            fn(int(v))
    for key, fn in (("add_bos_token", w.add_add_bos_token), ("add_eos_token", w.add_add_eos_token)):
        v = get("tokenizer.ggml." + key)
        if v is not None:
            fn(bool(v))


def write_model(path: Path, tname: str, seed: int, n_layer: int, vocab: str) -> None:
    qtype, ftype = TYPES[tname]
    tmp = path.with_suffix(".gguf.tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"TinyLlama-1.1B shape, random weights ({tname}, seed {seed})")
    w.add_file_type(int(ftype))
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(N_VOCAB)
    copy_tokenizer(w, vocab)

    tensors = tensor_list(n_layer)
    for name, shape in tensors:
        s, dt, nbytes, raw = stored(shape, qtype)
        w.add_tensor_info(name, s, dt, nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0 = time.perf_counter()
    for i, (name, shape) in enumerate(tensors):
        data = make_tensor(name, shape, qtype, seed)
        w.write_tensor_data(data)
        del data
        if i % 45 == 0:
            print(f"  {path.name}: {i + 1}/{len(tensors)} tensors, {time.perf_counter() - t0:.0f} s", flush=True)
    w.close()
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=os.path.expanduser("~/.cache/vlmd-bench"))
    ap.add_argument("--types", default="f16,q8_0,q4_0", help="comma list of " + ",".join(TYPES))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--layers", type=int, default=N_LAYER, help="block count (smaller for quick tests)")
    ap.add_argument("--vocab", default=DEFAULT_VOCAB, help="vocab-only GGUF to copy the tokenizer from")
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    a = ap.parse_args(argv)

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for tname in [t.strip().lower() for t in a.types.split(",") if t.strip()]:
        if tname not in TYPES:
            ap.error(f"unknown type {tname!r} (known: {', '.join(TYPES)})")
        suffix = "" if a.layers == N_LAYER else f"-{a.layers}l"
        path = out / f"tinyllama-rand-{tname}{suffix}.gguf"
        if path.exists() and not a.force:
            print(f"{path}: exists, kept (--force to rewrite)")
            continue
        t0 = time.perf_counter()
        write_model(path, tname, a.seed, a.layers, a.vocab)
        print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
