"""Plain-NumPy CLIP vision tower + LLaVA projector read from an mmproj GGUF (llama.cpp's legacy layout).

Independent of transformers: it reads only what the file says (clip.vision.* keys, v.* / mm.* tensors)
and follows transformers' semantics where llama.cpp departs from them (class token first, the feature
layer from clip.vision.feature_layer, erf GELU in the projector; LLaVA-NeXT pinpoints read as
(height, width), unpad with round(x, 7), image_newline after every row). float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
import gguf


def load(path) -> tuple[dict, dict[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    hp = {}
    for k, f in r.fields.items():
        if k.startswith("clip.") or k.startswith("general."):
            hp[k] = f.contents()
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
    return hp, w


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-1.702 * x))


def ffn_weights(w: dict, p: str, n_embd: int):
    """(up, up_bias, down, down_bias) of block p. Legacy files store fc1 (n_embd -> ff) as ffn_down; like
    clip.cpp, decide by shape: a `ffn_down` whose input width is n_embd is really the up projection."""
    down, up = w[p + "ffn_down.weight"], w[p + "ffn_up.weight"]
    db, ub = w.get(p + "ffn_down.bias"), w.get(p + "ffn_up.bias")
    if down.shape[1] == n_embd and down.shape[0] != n_embd:
        down, up, db, ub = up, down, ub, db
    return up, ub, down, db


def encode_tile(hp: dict, w: dict, tile: np.ndarray) -> np.ndarray:
    """tile: [3][S][S] normalized pixels -> [n_patches][n_embd_llm] projected features (CLS dropped)."""
    d = hp["clip.vision.embedding_length"]
    n_head = hp["clip.vision.attention.head_count"]
    eps = hp["clip.vision.attention.layer_norm_epsilon"]
    ps = hp["clip.vision.patch_size"]
    size = hp["clip.vision.image_size"]
    fl = hp.get("clip.vision.feature_layer")
    # Without the key, the file follows the legacy convention: blocks stored = blocks to run.
    n_run = int(max(fl)) if fl is not None else hp["clip.vision.block_count"]
    act = gelu_erf if hp.get("clip.use_gelu", False) else quick_gelu
    g = size // ps
    assert tile.shape == (3, size, size), tile.shape
    x = tile.astype(np.float64).reshape(3, g, ps, g, ps).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * ps * ps)
    x = x @ w["v.patch_embd.weight"].reshape(d, -1).T
    if "v.patch_embd.bias" in w:
        x = x + w["v.patch_embd.bias"]
    h = np.concatenate([w["v.class_embd"][None, :], x], 0) + w["v.position_embd.weight"]
    h = layer_norm(h, w["v.pre_ln.weight"], w["v.pre_ln.bias"], eps)
    n, hd = h.shape[0], d // n_head
    for il in range(n_run):
        p = f"v.blk.{il}."
        r = layer_norm(h, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        q = (r @ w[p + "attn_q.weight"].T + w[p + "attn_q.bias"]).reshape(n, n_head, hd).transpose(1, 0, 2)
        k = (r @ w[p + "attn_k.weight"].T + w[p + "attn_k.bias"]).reshape(n, n_head, hd).transpose(1, 0, 2)
        v = (r @ w[p + "attn_v.weight"].T + w[p + "attn_v.bias"]).reshape(n, n_head, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        h = h + a.transpose(1, 0, 2).reshape(n, d) @ w[p + "attn_out.weight"].T + w[p + "attn_out.bias"]
        r = layer_norm(h, w[p + "ln2.weight"], w[p + "ln2.bias"], eps)
        up, ub, down, db = ffn_weights(w, p, d)
        h = h + act(r @ up.T + ub) @ down.T + db
    f = h[1:]
    f = gelu_erf(f @ w["mm.0.weight"].T + w["mm.0.bias"])
    return f @ w["mm.2.weight"].T + w["mm.2.bias"]


def best_resolution_hf(pinpoints: list[int], width: int, height: int) -> tuple[int, int]:
    """transformers' select_best_resolution with the flattened pinpoints read as (height, width) pairs.
    Returns (best_w, best_h)."""
    best, best_eff, best_waste = None, 0, float("inf")
    for i in range(0, len(pinpoints), 2):
        ph, pw = pinpoints[i], pinpoints[i + 1]
        s = min(pw / width, ph / height)
        eff = min(int(width * s) * int(height * s), width * height)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (pw, ph), eff, waste
    return best


def pack_anyres(tile_feats: np.ndarray, width: int, height: int, grid_w: int, grid_h: int,
                newline: np.ndarray) -> np.ndarray:
    """tile_feats [1 + gw*gh][P*P][E] (overview first) -> the LLM-order sequence: overview, then the tile
    grid unpadded to the image's aspect ratio with `newline` after each row."""
    n, pp, e = tile_feats.shape
    p = int(round(math.sqrt(pp)))
    assert n == 1 + grid_w * grid_h and p * p == pp
    grid = tile_feats[1:].reshape(grid_h, grid_w, p, p, e).transpose(0, 2, 1, 3, 4).reshape(grid_h * p, grid_w * p, e)
    ch, cw = grid.shape[:2]
    if width / height > cw / ch:
        new_h = int(round(height * (cw / width), 7))
        pad = (ch - new_h) // 2
        grid = grid[pad:ch - pad]
    else:
        new_w = int(round(width * (ch / height), 7))
        pad = (cw - new_w) // 2
        grid = grid[:, pad:cw - pad]
    rows = np.concatenate([grid, np.broadcast_to(newline, (grid.shape[0], 1, e))], 1)
    return np.concatenate([tile_feats[0], rows.reshape(-1, e)], 0)
