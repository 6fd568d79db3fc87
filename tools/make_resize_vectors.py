#!/usr/bin/env python3
"""Writes the resize and anyres test vectors read by tests/test-preprocess.c into tests/data/resize/.

  python3 tools/make_resize_vectors.py [OUT_DIR]

Needs Pillow >= 13 (its resize runs the vertical pass first when the height shrinks by more than twice as many
pixels as the width; our resampler follows that order), numpy, and for anyres-tokens.txt transformers + torch.
CI does not run this: the outputs are committed (about 130 KB).

Outputs:
  cases.txt              one resize per line: `name filter in_w in_h out_w out_h` (filter: bicubic | bilinear)
  <name>.in.rgb          in_h x in_w x 3 bytes, RGB8, rows top to bottom
  <name>.out.rgb         Pillow's Image.resize((out_w, out_h), filter) of it, same layout
  anyres-tokens.txt      `W H best_w best_h grid_w grid_h rows cols n_tokens` per image size, from transformers'
                         select_best_resolution, LlavaNextProcessor._get_number_of_features and the model's
                         unpad_image (checked to agree), pinpoints [[336,672],[672,336],[672,672],[1008,336],
                         [336,1008]] read as (height, width), 336-px tiles, 24 patches per side.
"""
import os
import sys
import types

import numpy as np
from PIL import Image

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# (name, filter, in_w, in_h, out_w, out_h): up, down, odd ratios, one axis only, vertical-first orders, 1-px.
CASES = [
    ("up-2x", "bicubic", 24, 16, 48, 32),
    ("up-odd", "bicubic", 37, 23, 64, 41),
    ("down-odd", "bicubic", 67, 45, 23, 17),
    ("down-3x", "bicubic", 60, 42, 20, 14),
    ("mixed-vfirst", "bicubic", 50, 60, 83, 12),      # width up, height down: Pillow 13 goes vertical first
    ("down-vfirst", "bicubic", 40, 100, 30, 31),      # both down, height by > 2x the width's pixels
    ("down-hfirst-tie", "bicubic", 30, 90, 25, 80),  # H - h == 2 (W - w): still horizontal first
    ("mixed-hfirst", "bicubic", 30, 50, 12, 80),
    ("horiz-only", "bicubic", 41, 29, 20, 29),
    ("vert-only", "bicubic", 29, 41, 29, 77),
    ("one-px", "bicubic", 1, 1, 5, 3),
    ("thin", "bicubic", 7, 1, 3, 9),
    ("to-one", "bicubic", 45, 33, 1, 1),
    ("edges", "bicubic", 32, 32, 45, 19),             # 0/255 noise: exercises clamping of overshoot
    ("bl-up", "bilinear", 19, 13, 40, 31),
    ("bl-down", "bilinear", 61, 47, 21, 16),
    ("bl-vfirst", "bilinear", 40, 64, 47, 15),
]


def make_input(name, w, h, rng):
    yy, xx = np.mgrid[0:h, 0:w]
    if name == "edges":
        return (rng.integers(0, 2, (h, w, 3)) * 255).astype(np.uint8)
    smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 7 + yy * 13) % 256], -1)
    noise = rng.integers(0, 256, (h, w, 3))
    # half smooth, half noise, with a hard vertical edge in the middle
    out = np.where((xx < w // 2)[..., None], smooth, noise)
    return out.astype(np.uint8)


def write_resize(out_dir):
    rng = np.random.default_rng(20240611)
    lines = [f"# made by tools/make_resize_vectors.py with Pillow {Image.__version__}: "
             "name filter in_w in_h out_w out_h"]
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    for name, flt, iw, ih, ow, oh in CASES:
        a = make_input(name, iw, ih, rng)
        b = np.asarray(Image.fromarray(a, "RGB").resize((ow, oh), filters[flt]))
        assert b.shape == (oh, ow, 3)
        with open(os.path.join(out_dir, f"{name}.in.rgb"), "wb") as f:
            f.write(a.tobytes())
        with open(os.path.join(out_dir, f"{name}.out.rgb"), "wb") as f:
            f.write(np.ascontiguousarray(b).tobytes())
        lines.append(f"{name} {flt} {iw} {ih} {ow} {oh}")
    with open(os.path.join(out_dir, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def round7_edges(limit):
    """Image sizes where transformers' int(round(x, 7)) differs from int(x) in the unpad arithmetic."""
    found = []
    for gw, gh in {(p[1] // 336, p[0] // 336) for p in PINPOINTS}:
        cw, ch = 24 * gw, 24 * gh
        for w in range(1, limit):
            for h in range(1, limit):
                if w / h > cw / ch:
                    x = h * (cw / w)
                else:
                    x = w * (ch / h)
                if int(x) != int(round(x, 7)):
                    found.append((w, h))
    return found


def write_anyres(out_dir):
    import torch
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import unpad_image
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    proc = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=PINPOINTS),
        patch_size=14,
        num_additional_image_tokens=0,
    )
    proc._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, proc)

    sizes = [(640, 488), (570, 380), (1000, 667), (672, 672), (1000, 300), (300, 200), (336, 336), (50, 50),
             (200, 700), (1, 1), (1, 4000), (4000, 1), (336, 672), (672, 336), (1008, 336), (337, 336),
             (16384, 16384), (3, 2), (2, 3)]
    edges = round7_edges(700)
    sizes += edges[:12]
    rng = np.random.default_rng(7)
    for _ in range(160):
        sizes.append(tuple(int(v) for v in rng.integers(1, 2500, 2)))
    lines = ["# made by tools/make_resize_vectors.py: W H best_w best_h grid_w grid_h rows cols n_tokens"]
    seen = set()
    for w, h in sizes:
        if (w, h) in seen:
            continue
        seen.add((w, h))
        bh, bw = select_best_resolution((h, w), PINPOINTS)
        n = LlavaNextProcessor._get_number_of_features(proc, h, w, 336, 336)
        unpadded, newlines = proc._get_unpadded_features(h, w, 24, 24, bh // 336, bw // 336)
        t = unpad_image(torch.empty(1, 24 * (bh // 336), 24 * (bw // 336)), (h, w))
        rows, cols = t.shape[1:]  # rows is 0 for extreme strips such as 4000x1
        assert (unpadded, newlines) == (rows * cols, rows), (w, h, t.shape, unpadded, newlines)
        assert n == 576 + rows * (cols + 1)
        lines.append(f"{w} {h} {bw} {bh} {bw // 336} {bh // 336} {rows} {cols} {n}")
    with open(os.path.join(out_dir, "anyres-tokens.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return len(edges)


def main():
    major = int(Image.__version__.split(".")[0])
    if major < 13:
        sys.exit(f"Pillow {Image.__version__}: need >= 13 (pass order of resize)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "data", "resize")
    os.makedirs(out_dir, exist_ok=True)
    write_resize(out_dir)
    n_edges = write_anyres(out_dir)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{out_dir}: {len(CASES)} resize cases, {n_edges} round(x, 7) edge sizes found, {total} bytes")


if __name__ == "__main__":
    main()
