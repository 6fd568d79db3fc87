"""Plain-NumPy forward pass of a llama-arch GGUF, the way llama.cpp (and vlmd) computes it.

Reads the weights as stored (Q/K rows already permuted) and applies RoPE mode NORM (rotate adjacent
pairs), so agreement with transformers (rotate-half on un-permuted weights) checks the converter's
layout from the runtime's side. Honours `llama.attention.sliding_window` W like transformers:
query i sees keys j with i - W < j <= i. float64 throughout; any tensor type gguf can dequantize.
"""

from __future__ import annotations

import numpy as np
import gguf


def load(path) -> tuple[dict, dict[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    hp = {k: r.fields[k].contents() for k in r.fields if k.startswith("llama.")}
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
    return hp, w


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def rope_norm(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """x [n_tok, n_head, d]; rotates (x[2i], x[2i+1]) by pos * base^(-2i/d)."""
    d = x.shape[-1]
    theta = pos[:, None] * base ** (-np.arange(0, d, 2) / d)  # [n_tok, d/2]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def forward(hp: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    n_layer = hp["llama.block_count"]
    n_head = hp["llama.attention.head_count"]
    n_kv = hp.get("llama.attention.head_count_kv", n_head)
    eps = hp["llama.attention.layer_norm_rms_epsilon"]
    base = hp.get("llama.rope.freq_base", 10000.0)
    win = hp.get("llama.attention.sliding_window")
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = j <= i
    if win:
        allowed &= j > i - win
    h = w["token_embd.weight"][ids]
    for il in range(n_layer):
        p = f"blk.{il}."
        x = rms_norm(h, w[p + "attn_norm.weight"], eps)
        q = x @ w[p + "attn_q.weight"].T
        k = x @ w[p + "attn_k.weight"].T
        v = x @ w[p + "attn_v.weight"].T
        d = q.shape[1] // n_head
        q = rope_norm(q.reshape(n, n_head, d), pos, base)
        k = rope_norm(k.reshape(n, n_kv, d), pos, base)
        v = v.reshape(n, n_kv, d)
        att = np.empty((n, n_head, d))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(d)
            s = np.where(allowed, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        h = h + att.reshape(n, -1) @ w[p + "attn_output.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"], eps)
        g = x @ w[p + "ffn_gate.weight"].T
        u = x @ w[p + "ffn_up.weight"].T
        h = h + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rms_norm(h, w["output_norm.weight"], eps)
    out = w.get("output.weight", w["token_embd.weight"])
    return x @ out.T
