#!/usr/bin/env python3
"""Golden vectors for tests/test-quants.c, made with gguf-py (the reference Python implementation of ggml's
block formats), so our C converters are checked against an independent implementation.

One file per type, tests/data/quants/<NAME>.bin, little-endian:
    u32 magic 'VQV1' (0x31565156), u32 ggml type id, u32 n (elements), u32 has_input
    f32 input[n]              (only when has_input: the floats gguf-py quantized)
    u8  blocks[row_size(n)]   (gguf-py's quantize(input), or random valid blocks when gguf-py cannot quantize)
    f32 expected[n]           (gguf-py's dequantize(blocks))

Usage: python3 tools/make_quant_vectors.py [out_dir]   (default tests/data/quants)
"""
import os
import struct
import sys
import warnings

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
import gguf.quants as gq

MAGIC = 0x31565156


def special_floats(rng, n):
    """Random values with a sprinkle of edge cases for the float formats."""
    x = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 100.0], n)).astype(np.float32)
    edge = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, -1e6, 6.0e-8, 3.0e-8, 1.0e-5, -6.1e-5,
                     np.inf, -np.inf, np.nan, 1.0e-40, -3.4e38, 0.333333343, 1.00048828125], dtype=np.float32)
    x[:len(edge)] = edge
    return x


def block_floats(rng, n, bs):
    """Per-block random scales so blocks differ in range; one block all zero, one with a tie for max |x|."""
    x = rng.standard_normal(n).astype(np.float32)
    scales = rng.choice([1e-4, 0.02, 1.0, 30.0], n // bs).astype(np.float32)
    x *= np.repeat(scales, bs)
    if n // bs >= 3:
        x[bs:2 * bs] = 0.0
        x[2 * bs + 3] = 7.0
        x[2 * bs + 9] = -7.0
    return x.astype(np.float32)


def random_kquant_blocks(rng, qtype, nblocks):
    """Random bytes, with the fp16 scale fields replaced by finite values of a plausible size."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)
    # offsets of fp16 fields inside each block
    fields = {
        T.Q2_K: [80, 82],
        T.Q3_K: [108],
        T.Q4_K: [0, 2],
        T.Q5_K: [0, 2],
        T.Q6_K: [208],
    }[qtype]
    for off in fields:
        vals = (rng.standard_normal(nblocks) * 0.01).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(nblocks, 2)
    return raw.reshape(-1)


def write(path, qtype, n, inp, blocks, expected):
    with open(path, "wb") as f:
        f.write(struct.pack("<4I", MAGIC, int(qtype), n, 1 if inp is not None else 0))
        if inp is not None:
            f.write(np.asarray(inp, dtype="<f4").tobytes())
        f.write(np.asarray(blocks, dtype=np.uint8).tobytes())
        f.write(np.asarray(expected, dtype="<f4").tobytes())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                              "quants")
    os.makedirs(out, exist_ok=True)
    # gguf-py's F16 cast warns on the deliberate overflow cases (65520, -1e6, -3.4e38 -> inf)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    rng = np.random.default_rng(20240611)

    for qtype in (T.F16, T.BF16):
        n = 256
        x = special_floats(rng, n)
        blocks = np.asarray(gq.quantize(x, qtype)).view(np.uint8).reshape(-1)
        exp = gq.dequantize(blocks, qtype).astype(np.float32).reshape(-1)
        write(os.path.join(out, qtype.name + ".bin"), qtype, n, x, blocks, exp)

    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        n = 32 * 8
        x = block_floats(rng, n, 32)
        blocks = np.asarray(gq.quantize(x.reshape(1, -1), qtype)).view(np.uint8).reshape(-1)
        exp = gq.dequantize(blocks.reshape(1, -1), qtype).astype(np.float32).reshape(-1)
        write(os.path.join(out, qtype.name + ".bin"), qtype, n, x, blocks, exp)

    for qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        nblocks = 3
        n = 256 * nblocks
        blocks = random_kquant_blocks(rng, qtype, nblocks)
        exp = gq.dequantize(blocks.reshape(1, -1), qtype).astype(np.float32).reshape(-1)
        write(os.path.join(out, qtype.name + ".bin"), qtype, n, None, blocks, exp)

    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {len(os.listdir(out))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main()
