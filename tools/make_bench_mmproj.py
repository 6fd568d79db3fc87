#!/usr/bin/env python3
"""Write a random-weight LLaVA-1.5 mmproj GGUF of the real CLIP ViT-L/14-336 shape, for encoder speed benchmarks.

The file follows llama.cpp's legacy mmproj layout (shared/docs/gguf-llava.md §5) exactly as
convert_image_encoder_to_gguf.py writes it for LLaVA 1.5: 23 stored blocks, the fc1/fc2 names swapped
(`ffn_down` holds fc1), no post-LN, 2-layer MLP projector 1024 -> 4096 -> 4096, F16 matrices (and the 4-D patch
kernel and the position table), F32 vectors. Weights are noise (N(0, 0.02), fixed seed; LayerNorm gains 1): the
outputs mean nothing, but every matrix has the real size and type, which is all a timing needs. Both llama.cpp
(llama-mtmd-cli / llama-cpp-python) and vlmd load it.

With --anyres the file is a LLaVA 1.6 one instead: the standard grid pinpoints, merge type spatial_unpad and a
`model.image_newline`, so an image becomes an overview plus 2-4 tiles (the batched-tiles timing).

Usage: make_bench_mmproj.py [OUT_DIR] [--anyres] [--seed 1234] [--force]
Writes OUT_DIR/mmproj-clip-vit-l-14-336-rand-f16.gguf, or ...-anyres-f16.gguf (default OUT_DIR:
~/.cache/vlmd-bench).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import gguf

IMAGE = 336
PATCH = 14
N_EMBD = 1024
N_FF = 4096
N_HEAD = 16
N_BLOCKS = 23  # 24-layer tower minus the last block, as the legacy converter stores it
N_PROJ = 4096  # LLM width of a 7B LLaVA
N_POS = (IMAGE // PATCH) ** 2 + 1
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
NAME = "mmproj-clip-vit-l-14-336-rand-f16.gguf"
NAME_ANYRES = "mmproj-clip-vit-l-14-336-rand-anyres-f16.gguf"
PINPOINTS = [336, 672, 672, 336, 672, 672, 1008, 336, 336, 1008]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default=str(Path.home() / ".cache" / "vlmd-bench"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    ap.add_argument("--anyres", action="store_true", help="LLaVA 1.6 (anyres + image_newline) variant")
    args = ap.parse_args()

    out = Path(args.out_dir) / (NAME_ANYRES if args.anyres else NAME)
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to rewrite)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    def noise(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(str(out), "clip")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_file_type(1)
    w.add_name("openai/clip-vit-large-patch14-336 (random weights)")
    w.add_description("image encoder for LLaVA (random-weight benchmark file)")
    w.add_uint32("clip.vision.image_size", IMAGE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", N_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", N_FF)
    w.add_uint32("clip.vision.projection_dim", 768)
    w.add_uint32("clip.vision.attention.head_count", N_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.block_count", N_BLOCKS)
    w.add_array("clip.vision.image_mean", MEAN)
    w.add_array("clip.vision.image_std", STD)
    w.add_bool("clip.use_gelu", False)
    if args.anyres:
        w.add_array("clip.vision.image_grid_pinpoints", PINPOINTS)
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
        w.add_string("clip.vision.image_aspect_ratio", "anyres")

    f16, f32 = np.float16, np.float32
    # numpy shapes are the reverse of ggml's ne
    w.add_tensor("mm.0.weight", noise(N_PROJ, N_EMBD).astype(f16))
    w.add_tensor("mm.0.bias", noise(N_PROJ))
    w.add_tensor("mm.2.weight", noise(N_PROJ, N_PROJ).astype(f16))
    w.add_tensor("mm.2.bias", noise(N_PROJ))
    if args.anyres:
        w.add_tensor("model.image_newline", noise(N_PROJ))
    w.add_tensor("v.class_embd", noise(N_EMBD))
    w.add_tensor("v.patch_embd.weight", noise(N_EMBD, 3, PATCH, PATCH).astype(f16))
    w.add_tensor("v.position_embd.weight", noise(N_POS, N_EMBD).astype(f16))
    w.add_tensor("v.pre_ln.weight", np.ones(N_EMBD, dtype=f32))
    w.add_tensor("v.pre_ln.bias", np.zeros(N_EMBD, dtype=f32))
    for i in range(N_BLOCKS):
        p = f"v.blk.{i}."
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(p + n + ".weight", noise(N_EMBD, N_EMBD).astype(f16))
            w.add_tensor(p + n + ".bias", noise(N_EMBD))
        w.add_tensor(p + "ln1.weight", np.ones(N_EMBD, dtype=f32))
        w.add_tensor(p + "ln1.bias", np.zeros(N_EMBD, dtype=f32))
        # legacy naming: ffn_down holds fc1 (1024 -> 4096), ffn_up holds fc2 (4096 -> 1024)
        w.add_tensor(p + "ffn_down.weight", noise(N_FF, N_EMBD).astype(f16))
        w.add_tensor(p + "ffn_down.bias", noise(N_FF))
        w.add_tensor(p + "ffn_up.weight", noise(N_EMBD, N_FF).astype(f16))
        w.add_tensor(p + "ffn_up.bias", noise(N_EMBD))
        w.add_tensor(p + "ln2.weight", np.ones(N_EMBD, dtype=f32))
        w.add_tensor(p + "ln2.bias", np.zeros(N_EMBD, dtype=f32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
