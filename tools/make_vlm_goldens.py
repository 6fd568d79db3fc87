#!/usr/bin/env python3
"""Vision golden data for vlmd: test images, real-scale preprocessing tiles, tiny LLaVA models and cases.

    python3 tools/make_vlm_goldens.py [--out tests/data/vlm] [--only images preprocess llava15-tiny llava16-tiny]
    python3 tools/make_vlm_goldens.py --out DIR --only llava15-tiny llava16-tiny --keep-checkpoints CKPT_DIR
    python3 tools/make_vlm_goldens.py --survey        # margins per seed for the tiny models, writes nothing

Writes what tests/data/vlm/FORMAT.md describes:
  images/       the three photos of ../shared/testdata plus synthetic PNGs of other aspect ratios
  preprocess/   336-px tiles (RGB8 PNG, before rescale/normalize) + meta.txt from transformers' processors
                in modes llava15-pad (original LLaVA expand2square), llava15-hf, llava16 (anyres)
  models/       llava15-tiny (LlavaForConditionalGeneration, Llama) and llava16-tiny
                (LlavaNextForConditionalGeneration, Mistral): llm-f32.gguf + mmproj-f32.gguf from
                tools/convert_llava_to_gguf.py and cases/ recorded from transformers (float32, eager)

Checks (fails loudly otherwise): tiles reproduce pixel_values (< 1e-6); the processor's image-token count
equals the model's feature count; generate() equals a full-recompute greedy loop; the mmproj + LLM GGUFs,
run by the NumPy references tools/vlmtools/ref_clip.py and ref_forward.py, reproduce the recorded
features and last logits within 1e-4 of their range and the 32 greedy tokens.
Needs torch, transformers (>= 5), pillow, sentencepiece, protobuf, safetensors, gguf, numpy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import convert_llava_to_gguf as lconv  # noqa: E402
import make_llm_goldens as llm_g  # noqa: E402
from vlmtools import ref_clip, ref_forward  # noqa: E402

TESTDATA = Path("/work/shared/testdata")
PHOTOS = ["test-1.jpeg", "extreme_ironing.jpg", "waterview.jpg"]
SYNTH = [(300, 200), (1000, 300), (200, 700), (336, 336), (50, 50)]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
N_GEN = 32
IMAGE_TOKEN = "<image>"
IMAGE_ID = 1000            # right after the 1000-piece SentencePiece vocab, like Llama's 32000
N_VOCAB = 1001

VICUNA = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions. USER: <image>\nWhat is in this picture? ASSISTANT:")
VICUNA_TWO = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the human's questions. USER: <image>\n<image>\n"
              "What is different between these pictures? ASSISTANT:")
MISTRAL = "[INST] <image>\nWhat is in this picture? [/INST]"

TILE = 56                  # tiny CLIP: 56 px, patch 14 -> 4x4 = 16 tokens per tile
MODELS = {
    "llava15-tiny": dict(
        cls="llava", text="llama", v_hidden=64, v_heads=4, v_layers=3, v_ff=128, t_hidden=64, t_layers=2,
        t_heads=4, t_kv=4, t_ff=128, theta=10000.0, seed=4, init_range=0.1, out_tail=0.5,
        cases=[("test-1", [PHOTOS[0]], VICUNA), ("waterview", [PHOTOS[2]], VICUNA),
               ("synth-1000x300", ["synth-1000x300.png"], VICUNA),
               ("synth-200x700", ["synth-200x700.png"], VICUNA),
               ("two-images", [PHOTOS[1], "synth-300x200.png"], VICUNA_TWO)]),
    "llava16-tiny": dict(
        cls="llava_next", text="mistral", v_hidden=64, v_heads=4, v_layers=3, v_ff=128, t_hidden=64, t_layers=2,
        t_heads=4, t_kv=2, t_ff=128, theta=1e6, seed=4, init_range=0.1, out_tail=1.0,
        pinpoints=[[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]],
        cases=None),  # every image, see image_names()
}


def image_names() -> list[str]:
    return PHOTOS + [f"synth-{w}x{h}.png" for w, h in SYNTH]


def stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def fmt(x: float) -> str:
    return f"{x:.6g}"


# --------------------------------------------------------------------------------------------------
# images


def synth_image(w: int, h: int, seed: int) -> Image.Image:
    """Smooth gradients plus hard-edged shapes: resampling differences show at the edges, the gradients
    keep the PNG small."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    r = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * (u * 1.3 + 0.2 * seed)))
    g = 255 * v
    b = 255 * (0.5 + 0.5 * np.cos(2 * np.pi * (u + v) * 0.8))
    img = Image.fromarray(np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    s = min(w, h)
    d.ellipse([w * 0.1, h * 0.15, w * 0.1 + s * 0.45, h * 0.15 + s * 0.45], fill=(250, 240, 20))
    d.rectangle([w * 0.55, h * 0.5, w * 0.9, h * 0.85], fill=(20, 30, 160), outline=(255, 255, 255))
    d.line([0, h - 1, w - 1, 0], fill=(0, 0, 0), width=max(1, s // 40))
    for i in range(6):  # thin stripes: aliasing shows when downscaling without antialiasing
        xx = int(w * (0.05 + 0.03 * i))
        d.line([xx, int(h * 0.7), xx, h - 1], fill=(255, 0, 0) if i % 2 else (0, 255, 255), width=1)
    return img


def make_images(out: Path) -> None:
    d = out / "images"
    d.mkdir(parents=True, exist_ok=True)
    for f in PHOTOS:
        shutil.copyfile(TESTDATA / f, d / f)
    for i, (w, h) in enumerate(SYNTH):
        synth_image(w, h, i).save(d / f"synth-{w}x{h}.png", optimize=True)


def load_rgb(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im.convert("RGB")


# --------------------------------------------------------------------------------------------------
# processors


def clip_processor(size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def next_processor(size: int, pinpoints):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    return LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                      image_grid_pinpoints=pinpoints, do_pad=True)


def expand2square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Original LLaVA (llava/mm_utils.py): paste centred (floor) on a max(W, H) square of `color`."""
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    res = Image.new(img.mode, (s, s), color)
    res.paste(img, ((s - w) // 2, (s - h) // 2))
    return res


def tiles_and_pixels(proc, img: Image.Image) -> tuple[np.ndarray, np.ndarray, dict]:
    """Runs the processor twice: without rescale/normalize (RGB8 tiles) and as configured. Checks that
    pixel_values == (tile/255 - mean)/std, so a C implementation can be tested on the tiles alone."""
    full = proc(images=[img], return_tensors="np")
    raw = proc(images=[img], return_tensors="np", do_rescale=False, do_normalize=False)
    pv, tiles = np.asarray(full["pixel_values"]), np.asarray(raw["pixel_values"])
    if pv.ndim == 5:
        pv, tiles = pv[0], tiles[0]
    assert tiles.dtype == np.uint8 or np.array_equal(tiles, tiles.round()), tiles.dtype
    tiles = tiles.astype(np.uint8)
    mean = np.array(proc.image_mean, dtype=np.float32)[None, :, None, None]
    std = np.array(proc.image_std, dtype=np.float32)[None, :, None, None]
    again = (tiles.astype(np.float32) / np.float32(255.0) - mean) / std
    err = float(np.abs(again - pv).max())
    assert err < 1e-6, f"tiles do not reproduce pixel_values ({err})"
    return tiles, pv.astype(np.float32), {k: v for k, v in full.items() if k != "pixel_values"}


def grid_of(pinpoints, w: int, h: int, tile: int) -> tuple[int, int, int, int]:
    from transformers.image_processing_utils import select_best_resolution
    bh, bw = select_best_resolution((h, w), pinpoints)
    bw2, bh2 = ref_clip.best_resolution_hf([x for p in pinpoints for x in p], w, h)
    assert (bw2, bh2) == (bw, bh)
    return bw // tile, bh // tile, bw, bh


def make_preprocess(out: Path, tok_dir: Path, budget_mb: float) -> list[str]:
    from transformers import LlavaNextProcessor, LlamaTokenizer
    tok = LlamaTokenizer.from_pretrained(str(tok_dir))
    root = out / "preprocess"
    if root.exists():
        shutil.rmtree(root)
    lines = []
    clip = clip_processor(336)
    nxt = next_processor(336, PINPOINTS_336)
    nproc = LlavaNextProcessor(image_processor=nxt, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    pad_color = tuple(int(255 * m) for m in CLIP_MEAN)
    assert pad_color == (122, 116, 104)
    for mode in ("llava15-pad", "llava15-hf", "llava16"):
        for name in image_names():
            img = load_rgb(out / "images" / name)
            w, h = img.size
            meta = [f"mode {mode}", f"image {w} {h}"]
            if mode == "llava16":
                tiles, pv, extra = tiles_and_pixels(nxt, img)
                assert [int(x) for x in extra["image_sizes"][0]] == [h, w]
                gw, gh, bw, bh = grid_of(PINPOINTS_336, w, h, 336)
                ids = nproc(text=IMAGE_TOKEN, images=[img], return_tensors="np")["input_ids"][0]
                n_tok = int((ids == nproc.image_token_id).sum())
                assert len(tiles) == 1 + gw * gh
                meta += [f"n_tiles {len(tiles)}", f"grid {gw} {gh}", f"best_resolution {bw} {bh}",
                         f"n_image_tokens {n_tok}"]
            else:
                src = expand2square(img, pad_color) if mode == "llava15-pad" else img
                tiles, pv, _ = tiles_and_pixels(clip, src)
                meta += [f"n_tiles {len(tiles)}", "grid 0 0", f"n_image_tokens {(336 // 14) ** 2}"]
            d = root / mode / stem(name)
            d.mkdir(parents=True)
            for i, t in enumerate(tiles):
                Image.fromarray(np.ascontiguousarray(t.transpose(1, 2, 0)), "RGB").save(
                    d / f"tile-{i:02d}.png", optimize=True, compress_level=9)
            (d / "meta.txt").write_text("\n".join(meta) + "\n")
    # Size budget: drop the largest photo folders of llava16 first, then of the other modes.
    def total():
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6
    dropped = []
    for mode in ("llava16", "llava15-pad", "llava15-hf"):
        for name in sorted(PHOTOS, key=lambda n: -sum(f.stat().st_size for f in (root / mode / stem(n)).glob("*"))):
            if total() <= budget_mb:
                break
            shutil.rmtree(root / mode / stem(name))
            dropped.append(f"{mode}/{stem(name)}")
    lines.append(f"preprocess: {total():.2f} MB" + (f", dropped {', '.join(dropped)}" if dropped else ""))
    for mode in ("llava15-pad", "llava15-hf", "llava16"):
        for name in image_names():
            m = root / mode / stem(name) / "meta.txt"
            if m.is_file() and mode == "llava16":
                kv = dict(line.split(" ", 1) for line in m.read_text().splitlines())
                lines.append(f"  {mode:12s} {name:22s} {kv['image']:>9s}  grid {kv['grid']}  tokens {kv['n_image_tokens']}")
    return lines


# --------------------------------------------------------------------------------------------------
# tokenizer shared by the tiny models


def make_tokenizer(tdir: Path, vocab) -> None:
    from transformers import LlamaTokenizer
    toks, scores, types = vocab
    llm_g.write_sentencepiece_model(tdir / "tokenizer.model", toks, scores, types)
    tok = LlamaTokenizer.from_pretrained(str(tdir), add_bos_token=True, add_eos_token=False)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_ID, tok.convert_tokens_to_ids(IMAGE_TOKEN)
    tok.save_pretrained(str(tdir))
    tc = json.loads((tdir / "tokenizer_config.json").read_text())
    tc.update(add_bos_token=True, add_eos_token=False)
    (tdir / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))


# --------------------------------------------------------------------------------------------------
# tiny models


def build_model(spec: dict, seed: int | None = None):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig)
    seed = spec["seed"] if seed is None else seed
    vc = CLIPVisionConfig(hidden_size=spec["v_hidden"], intermediate_size=spec["v_ff"],
                          num_hidden_layers=spec["v_layers"], num_attention_heads=spec["v_heads"],
                          image_size=TILE, patch_size=14, hidden_act="quick_gelu", projection_dim=32,
                          layer_norm_eps=1e-5, attn_implementation="eager")
    common = dict(vocab_size=N_VOCAB, hidden_size=spec["t_hidden"], intermediate_size=spec["t_ff"],
                  num_hidden_layers=spec["t_layers"], num_attention_heads=spec["t_heads"],
                  num_key_value_heads=spec["t_kv"], head_dim=spec["t_hidden"] // spec["t_heads"], rms_norm_eps=1e-5,
                  rope_theta=spec["theta"], tie_word_embeddings=False, initializer_range=spec["init_range"],
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    if spec["text"] == "mistral":
        tc = MistralConfig(sliding_window=None, **common)
    else:
        tc = LlamaConfig(**common)
    if spec["cls"] == "llava_next":
        cfg = LlavaNextConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE_ID, vision_feature_layer=-2,
                              vision_feature_select_strategy="default", projector_hidden_act="gelu",
                              image_grid_pinpoints=spec["pinpoints"], tie_word_embeddings=False,
                              image_seq_length=(TILE // 14) ** 2, attn_implementation="eager")
        cls = LlavaNextForConditionalGeneration
    else:
        cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE_ID, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          tie_word_embeddings=False, image_seq_length=(TILE // 14) ** 2, attn_implementation="eager")
        cls = LlavaForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 1:
                continue
            if name.endswith("norm.weight") or "layer_norm" in name and name.endswith(".weight") \
                    or "layrnorm.weight" in name or "layernorm.weight" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))   # a swapped or missing norm shows
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))  # a dropped bias shows
            else:  # class_embedding, image_newline
                p.copy_(torch.randn(p.shape, generator=g))
        head = model.lm_head.weight
        head.mul_(llm_g.heavy_tail_rows(head.shape[0], spec["out_tail"], g))
    model.eval()
    return model


def make_processor(spec: dict, tok_dir: Path):
    from transformers import LlamaTokenizer, LlavaNextProcessor, LlavaProcessor
    tok = LlamaTokenizer.from_pretrained(str(tok_dir))
    if spec["cls"] == "llava_next":
        return LlavaNextProcessor(image_processor=next_processor(TILE, spec["pinpoints"]), tokenizer=tok,
                                  patch_size=14, vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1)
    return LlavaProcessor(image_processor=clip_processor(TILE), tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


@torch.no_grad()
def run_case(model, proc, spec: dict, images: list[Image.Image], prompt: str) -> dict:
    inputs = proc(text=prompt, images=images, return_tensors="pt")
    ids = inputs["input_ids"][0]
    pv = inputs["pixel_values"].float()
    inner = model.model
    kw = dict(vision_feature_layer=-2, vision_feature_select_strategy="default")
    if spec["cls"] == "llava_next":
        sizes = inputs["image_sizes"]
        feats = inner.get_image_features(pv, sizes, **kw).pooler_output
    else:
        sizes = None
        feats = inner.get_image_features(pv, **kw).pooler_output
    per_image = [int(f.shape[0]) for f in feats]
    feats = torch.cat(list(feats), 0)
    is_img = ids == IMAGE_ID
    # the processor's own count (the run lengths of <image> in input_ids) must equal the model's
    runs, cur = [], 0
    for t in ids.tolist() + [-999]:
        if t == IMAGE_ID:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    assert runs == per_image, (runs, per_image)
    emb = inner.get_input_embeddings()(ids[None])
    emb[0, is_img] = feats
    out = model(**inputs)
    logits = out.logits[0, -1].float().numpy()
    same = model(inputs_embeds=emb).logits[0, -1].float().numpy()
    assert np.array_equal(logits, same), np.abs(logits - same).max()
    # greedy, full recompute on embeddings (the image is never re-encoded)
    gen, margins, e = [], [], emb
    for _ in range(N_GEN):
        last = model(inputs_embeds=e).logits[0, -1].float().numpy()
        top = np.sort(last)[-2:]
        nxt = int(np.argmax(last))
        gen.append(nxt)
        margins.append(float(top[1] - top[0]))
        e = torch.cat([e, inner.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    hf = model.generate(**inputs, max_new_tokens=N_GEN, min_new_tokens=N_GEN, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert hf == gen, f"generate() {hf} != greedy loop {gen}"
    if spec["cls"] == "llava_next":
        pv = pv[0] if pv.ndim == 5 else pv
        grids = []
        for (h, w) in sizes.tolist():
            gw, gh, _, _ = grid_of(spec["pinpoints"], w, h, TILE)
            grids.append((gw, gh))
    else:
        grids = [(0, 0)] * len(images)
    ids_l = ids.tolist()
    collapsed = []
    for i, t in enumerate(ids_l):
        if t == IMAGE_ID:
            if i == 0 or ids_l[i - 1] != IMAGE_ID:
                collapsed.append(-1)
        else:
            collapsed.append(t)
    return dict(ids=ids_l, collapsed=collapsed, n_img=per_image, grids=grids, pv=pv.numpy().astype(np.float32),
                feats=feats.float().numpy(), logits=logits, gen=gen, margins=margins)


def spec_cases(spec: dict) -> list[tuple[str, list[str], str]]:
    if spec["cases"] is not None:
        return spec["cases"]
    return [(stem(n), [n], MISTRAL) for n in image_names()]


def verify_gguf(mdir: Path, spec: dict, case_name: str, rec: dict) -> dict:
    """Runtime-side check: NumPy CLIP + projector (+ anyres packing) on mmproj-f32.gguf, NumPy llama on
    llm-f32.gguf with the features spliced in."""
    hp, w = ref_clip.load(mdir / "mmproj-f32.gguf")
    s = hp["clip.vision.image_size"]
    pv = rec["pv"].astype(np.float64)
    feats, t0 = [], 0
    for (gw, gh), img_w_h in zip(rec["grids"], rec["sizes_wh"]):
        n_t = 1 + gw * gh if spec["cls"] == "llava_next" else 1
        tf = np.stack([ref_clip.encode_tile(hp, w, pv[t0 + i].reshape(3, s, s)) for i in range(n_t)])
        t0 += n_t
        if spec["cls"] == "llava_next":
            pp = hp["clip.vision.image_grid_pinpoints"]
            bw, bh = ref_clip.best_resolution_hf(pp, *img_w_h)
            assert (bw // s, bh // s) == (gw, gh)
            feats.append(ref_clip.pack_anyres(tf, *img_w_h, gw, gh, w["model.image_newline"]))
        else:
            feats.append(tf[0])
    feats = np.concatenate(feats, 0)
    assert feats.shape == rec["feats"].shape, (feats.shape, rec["feats"].shape)
    frange = float(rec["feats"].max() - rec["feats"].min())
    d_feat = float(np.abs(feats - rec["feats"]).max()) / frange

    lhp, lw = ref_forward.load(mdir / "llm-f32.gguf")
    assert "output.weight" in lw  # the trick below needs an untied output matrix
    n_vocab = lw["token_embd.weight"].shape[0]
    lw = dict(lw)
    lw["token_embd.weight"] = np.concatenate([lw["token_embd.weight"], feats], 0)
    ids, k = [], 0
    for t in rec["ids"]:  # image positions index the appended feature rows
        if t == IMAGE_ID:
            ids.append(n_vocab + k)
            k += 1
        else:
            ids.append(t)
    full = ids + rec["gen"]
    logits = ref_forward.forward(lhp, lw, full)
    lrange = float(rec["logits"].max() - rec["logits"].min())
    d_logit = float(np.abs(logits[len(ids) - 1] - rec["logits"]).max()) / lrange
    greedy_ok = logits[len(ids) - 1:-1].argmax(-1).tolist() == rec["gen"]
    assert d_feat < 1e-4, f"{case_name}: NumPy features differ by {d_feat} of the range"
    assert d_logit < 1e-4, f"{case_name}: NumPy logits differ by {d_logit} of the range"
    assert greedy_ok, f"{case_name}: NumPy greedy differs"
    return dict(d_feat=d_feat, d_logit=d_logit)


def make_model(name: str, spec: dict, out: Path, tok_dir: Path, report: list[str],
               keep: Path | None = None) -> None:
    mdir = out / "models" / name
    if mdir.exists():
        shutil.rmtree(mdir)
    (mdir / "cases").mkdir(parents=True)
    model = build_model(spec)
    proc = make_processor(spec, tok_dir)
    with tempfile.TemporaryDirectory(prefix=f"vlm-{name}-") as td:
        src = Path(td) / name
        model.save_pretrained(str(src), safe_serialization=True)
        proc.save_pretrained(str(src))
        for f in tok_dir.iterdir():
            if not (src / f.name).exists():
                shutil.copyfile(f, src / f.name)
        lconv.convert(src, mdir, "f32", name=name)
        if keep is not None:  # the HF checkpoint itself, for other converters (tools/check_converter_compat.py)
            shutil.copytree(src, keep / name, dirs_exist_ok=True)
    # the image token survives the conversion, as a control token
    import gguf
    r = gguf.GGUFReader(str(mdir / "llm-f32.gguf"))
    f = r.fields["tokenizer.ggml.tokens"]
    assert bytes(f.parts[f.data[IMAGE_ID]]).decode() == IMAGE_TOKEN
    assert int(r.fields["tokenizer.ggml.token_type"].parts[r.fields["tokenizer.ggml.token_type"].data[IMAGE_ID]][0]) == 3

    rows = []
    for case, imgs, prompt in spec_cases(spec):
        pil = [load_rgb(out / "images" / n) for n in imgs]
        rec = run_case(model, proc, spec, pil, prompt)
        rec["sizes_wh"] = [im.size for im in pil]
        chk = verify_gguf(mdir, spec, case, rec)
        lrange = float(rec["logits"].max() - rec["logits"].min())
        lines = ["image " + " ".join(imgs),
                 "prompt_text " + prompt.replace("\n", "\\n"),
                 "input_ids " + " ".join(map(str, rec["collapsed"])),
                 "n_image_tokens " + " ".join(map(str, rec["n_img"])),
                 "grid " + " ".join(f"{gw} {gh}" for gw, gh in rec["grids"]),
                 "greedy " + " ".join(map(str, rec["gen"])),
                 "greedy_margin " + " ".join(fmt(m) for m in rec["margins"]),
                 f"logit_range {fmt(lrange)}"]
        (mdir / "cases" / f"{case}.txt").write_text("\n".join(lines) + "\n")
        (mdir / "cases" / f"{case}.pixel_values.f32").write_bytes(rec["pv"].astype("<f4").tobytes())
        (mdir / "cases" / f"{case}.features.f32").write_bytes(rec["feats"].astype("<f4").tobytes())
        (mdir / "cases" / f"{case}.logits.f32").write_bytes(rec["logits"].astype("<f4").tobytes())
        rel = np.array(rec["margins"]) / lrange
        rows.append(rel)
        report.append(f"  {case:22s} tiles {rec['pv'].shape[0]:2d} grid {' '.join(f'{a}x{b}' for a, b in rec['grids']):9s} "
                      f"img tokens {'+'.join(map(str, rec['n_img'])):7s} prompt {len(rec['ids']):4d}  range {lrange:6.2f}  "
                      f"margin/range min {rel.min():.4f} median {np.median(rel):.4f} distinct {len(set(rec['gen'])):2d}  "
                      f"numpy feat {chk['d_feat']:.1e} logit {chk['d_logit']:.1e}")
    allrel = np.concatenate(rows)
    size = sum(p.stat().st_size for p in mdir.rglob("*") if p.is_file())
    report.insert(len(report) - len(rows), f"{name}: dir {size / 1e6:.2f} MB; over all cases margin/range min "
                  f"{allrel.min():.4f} median {np.median(allrel):.4f}")


@torch.no_grad()
def survey(out: Path, tok_dir: Path) -> None:
    for name, spec in MODELS.items():
        proc = make_processor(spec, tok_dir)
        cases = spec_cases(spec)
        for seed in range(8):
            for tail in (0.5, 0.75, 1.0):
                for ir in (0.05, 0.1):
                    s = dict(spec, seed=seed, out_tail=tail, init_range=ir)
                    model = build_model(s)
                    mins, meds, dist = [], [], []
                    for case, imgs, prompt in cases:
                        inputs = proc(text=prompt, images=[load_rgb(out / "images" / n) for n in imgs],
                                      return_tensors="pt")
                        seq = inputs["input_ids"]
                        rels = []
                        lg = model(**inputs).logits[0, -1]
                        gen = model.generate(**inputs, max_new_tokens=N_GEN, min_new_tokens=N_GEN, do_sample=False,
                                             eos_token_id=None, pad_token_id=0, output_scores=True,
                                             return_dict_in_generate=True)
                        rng_ = float(lg.max() - lg.min())
                        for sc in gen.scores:
                            top = torch.topk(sc[0], 2).values
                            rels.append(float(top[0] - top[1]) / rng_)
                        mins.append(min(rels))
                        dist.append(len(set(gen.sequences[0, seq.shape[1]:].tolist())))
                        meds.append(float(np.median(rels)))
                        del seq
                    print(f"{name} seed {seed:2d} tail {tail:.2f} init {ir:.2f}: min {min(mins):.4f} "
                          f"median-of-medians {np.median(meds):.4f} distinct min {min(dist)} median {np.median(dist)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "vlm")
    ap.add_argument("--only", nargs="*", help="parts: images preprocess llava15-tiny llava16-tiny")
    ap.add_argument("--survey", action="store_true")
    ap.add_argument("--preprocess-budget-mb", type=float, default=6.0)
    ap.add_argument("--keep-checkpoints", type=Path, metavar="DIR",
                    help="also copy each tiny model's HF checkpoint folder to DIR/<name> (outputs unchanged)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    want = set(args.only or ["images", "preprocess", *MODELS])
    vocab = llm_g.select_vocab(1000)
    report = []
    with tempfile.TemporaryDirectory(prefix="vlm-tok-") as td:
        tok_dir = Path(td)
        make_tokenizer(tok_dir, vocab)
        if "images" in want or not (args.out / "images").is_dir():
            make_images(args.out)
        if args.survey:
            survey(args.out, tok_dir)
            return 0
        if "preprocess" in want:
            report += make_preprocess(args.out, tok_dir, args.preprocess_budget_mb)
        for name, spec in MODELS.items():
            if name in want:
                make_model(name, spec, args.out, tok_dir, report, args.keep_checkpoints)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
