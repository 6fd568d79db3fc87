#!/usr/bin/env python3
"""Convert a Hugging Face LLaVA / LLaVA-NeXT checkpoint into an LLM GGUF plus an mmproj GGUF.

    convert_llava_to_gguf.py SRC_DIR OUT_DIR [--outtype f32|f16] [--name NAME]
                             [--preprocess auto|pad|crop|anyres] [-v]

SRC_DIR is a `LlavaForConditionalGeneration` or `LlavaNextForConditionalGeneration` checkpoint (CLIP
vision tower, 2-layer MLP projector, Llama or Mistral text model): config.json, *.safetensors or
pytorch_model*.bin (transformers 4 key names `language_model.model.*`, `vision_tower.vision_model.*`,
or transformers 5 names `model.language_model.*`, `model.vision_tower.*`), the LLM's tokenizer
(tokenizer.model and/or tokenizer.json, tokenizer_config.json, added_tokens.json) and optionally
preprocessor_config.json.

OUT_DIR gets
  llm-<outtype>.gguf     arch `llama`, written by tools/convert_hf_to_gguf.py's code from the text part
                         (tokenizer included; the `<image>` token keeps its id, typed CONTROL)
  mmproj-<outtype>.gguf  arch `clip` in the layout of llama.cpp's legacy
                         tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py (see tools/README.md):
                         v.* vision tower with fc1 -> ffn_down / fc2 -> ffn_up (llama.cpp's naming quirk),
                         only the blocks up to the feature layer, no post-LN; mm.0 / mm.2 projector;
                         model.image_newline for LLaVA-NeXT.

Exit status 1 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import convert_hf_to_gguf as conv  # noqa: E402
from convert_hf_to_gguf import ConvertError, gguf  # noqa: E402

SUPPORTED = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
TEXT_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
OUTTYPES = ("f32", "f16")

# What clip.vision.image_aspect_ratio says about preprocessing (tools/README.md, tests/data/vlm/FORMAT.md):
#   "pad"    original LLaVA 1.5: expand2square with the mean colour, then resize + center crop
#   "crop"   llava-hf CLIPImageProcessor: resize shortest edge + center crop (original LLaVA calls it "square")
#   "anyres" LLaVA-NeXT: best pinpoint resolution, tiles + overview
PREPROCESS = ("pad", "crop", "anyres")

# HF CLIP vision tower (prefixes stripped) -> llama.cpp legacy mmproj names.
VISION_TOP = {
    "embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "embeddings.class_embedding": "v.class_embd",
    "embeddings.position_embedding.weight": "v.position_embd.weight",
    "pre_layrnorm.weight": "v.pre_ln.weight",
    "pre_layrnorm.bias": "v.pre_ln.bias",
}
VISION_BLOCK = {
    "layer_norm1": "ln1",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "layer_norm2": "ln2",
    # Backwards on purpose: llama.cpp's legacy converter writes fc1 (hidden -> ff) as ffn_down and fc2 as
    # ffn_up; clip.cpp recognises the swap by shape. Every LLaVA mmproj in circulation has it.
    "mlp.fc1": "ffn_down",
    "mlp.fc2": "ffn_up",
}
VISION_SKIPPED = ("post_layernorm.weight", "post_layernorm.bias", "embeddings.position_ids")
VBLOCK_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# --------------------------------------------------------------------------------------------------
# checkpoint parsing


class LlavaParams:
    def __init__(self, cfg: dict):
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED:
            raise ConvertError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED)})")
        self.arch = arch
        self.next = arch == "LlavaNextForConditionalGeneration"
        vc, tc = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
        vtype = vc.get("model_type", "clip_vision_model")
        if vtype != "clip_vision_model":
            raise ConvertError(f"vision tower {vtype!r} is not supported (only CLIP)")
        ttype = tc.get("model_type", "llama")
        if ttype not in TEXT_ARCH:
            raise ConvertError(f"text model {ttype!r} is not supported (llama, mistral)")
        self.text_cfg = dict(tc)
        self.text_cfg["architectures"] = [TEXT_ARCH[ttype]]
        # transformers' CLIPVisionConfig defaults, for configs that leave them out
        self.v_embd = int(vc.get("hidden_size", 768))
        self.v_ff = int(vc.get("intermediate_size", 3072))
        self.v_head = int(vc.get("num_attention_heads", 12))
        self.v_layer = int(vc.get("num_hidden_layers", 12))
        self.image_size = int(vc.get("image_size", 224))
        self.patch_size = int(vc.get("patch_size", 32))
        self.v_eps = float(vc.get("layer_norm_eps", 1e-5))
        self.projection_dim = int(vc.get("projection_dim", 512))
        act = vc.get("hidden_act", "quick_gelu")
        if act not in ("quick_gelu", "gelu"):
            raise ConvertError(f"vision hidden_act {act!r} is not supported (quick_gelu, gelu)")
        self.use_gelu = act == "gelu"
        if self.v_embd % self.v_head:
            raise ConvertError("vision hidden_size is not a multiple of num_attention_heads")
        if self.image_size % self.patch_size:
            raise ConvertError("vision image_size is not a multiple of patch_size")
        if int(vc.get("num_channels", 3)) != 3:
            raise ConvertError("vision num_channels must be 3")

        strategy = cfg.get("vision_feature_select_strategy", "default")
        if strategy != "default":
            # clip.cpp always drops the class token for LLaVA; "full" has no mmproj spelling.
            raise ConvertError(f"vision_feature_select_strategy {strategy!r} is not supported (default)")
        fl = cfg.get("vision_feature_layer", -2)
        fl = [fl] if isinstance(fl, int) else list(fl)
        # hidden_states[k]: k = 0 is the embedding output (after pre-LN), k = i + 1 the output of block i;
        # negative k counts from the end of those num_hidden_layers + 1 entries.
        self.feature_layers = [k if k >= 0 else self.v_layer + 1 + k for k in fl]
        if not self.feature_layers or any(not 0 <= k <= self.v_layer for k in self.feature_layers):
            raise ConvertError(f"vision_feature_layer {fl} out of range for {self.v_layer} layers")
        if len(self.feature_layers) != 1:
            raise ConvertError("several vision_feature_layer entries are not supported")
        self.block_count = max(self.feature_layers)

        act = cfg.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise ConvertError(f"projector_hidden_act {act!r} is not supported (gelu)")
        if not cfg.get("multimodal_projector_bias", True):
            raise ConvertError("a projector without bias is not supported")
        self.n_embd_text = int(tc.get("hidden_size", 4096))
        self.image_token_id = cfg.get("image_token_id", cfg.get("image_token_index"))
        self.pinpoints = cfg.get("image_grid_pinpoints") if self.next else None
        if self.next and not self.pinpoints:
            raise ConvertError("LLaVA-NeXT config without image_grid_pinpoints")


def split_state_dict(sd: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """Splits a LLaVA state dict into (text model in LlamaForCausalLM names, vision tower without
    prefixes, projector/newline) and accepts transformers 4 and 5 key spellings."""
    text, vision, proj = {}, {}, {}
    for k, v in sd.items():
        m = re.match(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$", k)
        if m:
            vision[m.group(1)] = v
            continue
        m = re.match(r"^(?:model\.)?multi_modal_projector\.(.+)$", k)
        if m:
            proj[m.group(1)] = v
            continue
        if re.match(r"^(?:model\.)?image_newline$", k):
            proj["image_newline"] = v
            continue
        m = re.match(r"^language_model\.(model\.|lm_head\.)(.+)$", k)  # transformers 4
        if m:
            text[("model." if m.group(1) == "model." else "lm_head.") + m.group(2)] = v
            continue
        m = re.match(r"^model\.language_model\.(.+)$", k)  # transformers 5
        if m:
            text["model." + m.group(1)] = v
            continue
        if k == "lm_head.weight":
            text[k] = v
            continue
        raise ConvertError(f"unexpected tensor {k!r}")
    return text, vision, proj


# --------------------------------------------------------------------------------------------------
# mmproj


def mmproj_tensors(vision: dict, proj: dict, p: LlavaParams) -> list[tuple[str, np.ndarray]]:
    out: dict[str, np.ndarray] = {}
    for k, v in vision.items():
        if k in VISION_SKIPPED:
            continue  # CLIP's post-LN is not on LLaVA's path (hidden_states[k] are pre-post-LN)
        if k in VISION_TOP:
            out[VISION_TOP[k]] = v
            continue
        m = VBLOCK_RE.match(k)
        if not m or m.group(2) not in VISION_BLOCK:
            raise ConvertError(f"unexpected vision tensor {k!r}")
        il = int(m.group(1))
        if il >= p.v_layer:
            raise ConvertError(f"vision tensor {k!r} beyond num_hidden_layers")
        if il >= p.block_count:
            continue  # blocks after the feature layer never run
        out[f"v.blk.{il}.{VISION_BLOCK[m.group(2)]}.{m.group(3)}"] = v
    for k, v in proj.items():
        m = re.match(r"^linear_([12])\.(weight|bias)$", k)
        if m:
            out[f"mm.{0 if m.group(1) == '1' else 2}.{m.group(2)}"] = v
        elif k == "image_newline":
            if not p.next:
                raise ConvertError("image_newline in a LLaVA 1.5 checkpoint")
            out["model.image_newline"] = v
        else:
            raise ConvertError(f"unexpected projector tensor {k!r}")

    d, ff, e = p.v_embd, p.v_ff, p.n_embd_text
    ps, n_pos = p.patch_size, (p.image_size // p.patch_size) ** 2 + 1
    want = {"v.patch_embd.weight": (d, 3, ps, ps), "v.class_embd": (d,), "v.position_embd.weight": (n_pos, d),
            "v.pre_ln.weight": (d,), "v.pre_ln.bias": (d,),
            "mm.0.weight": (e, d), "mm.0.bias": (e,), "mm.2.weight": (e, e), "mm.2.bias": (e,)}
    for il in range(p.block_count):
        b = f"v.blk.{il}."
        for n in ("ln1", "ln2"):
            want[b + n + ".weight"] = want[b + n + ".bias"] = (d,)
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            want[b + n + ".weight"], want[b + n + ".bias"] = (d, d), (d,)
        want[b + "ffn_down.weight"], want[b + "ffn_down.bias"] = (ff, d), (ff,)  # fc1
        want[b + "ffn_up.weight"], want[b + "ffn_up.bias"] = (d, ff), (d,)  # fc2
    if p.next:
        want["model.image_newline"] = (e,)
    missing = [n for n in want if n not in out]
    if missing:
        raise ConvertError(f"checkpoint lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    for n, a in out.items():
        if n in want and tuple(a.shape) != want[n]:
            raise ConvertError(f"{n}: shape {tuple(a.shape)}, config implies {want[n]}")
    extra = [n for n in out if n not in want and n != "v.patch_embd.bias"]
    if extra:
        raise ConvertError(f"unexpected tensors {extra[:4]}")

    def order(n):  # projector first, then the tower in llama.cpp's order
        if n.startswith("mm."):
            return (0, 0, n)
        if n == "model.image_newline":
            return (1, 0, n)
        if n.startswith("v.blk."):
            return (3, int(n.split(".")[2]), n)
        return (2, 0, n)
    return [(n, np.ascontiguousarray(out[n], dtype=np.float32)) for n in sorted(out, key=order)]


def mmproj_encode(name: str, a: np.ndarray, outtype: str):
    """f16: the legacy converter's rule (4-D and 2-D `.weight` tensors F16, the rest F32).
    f32: everything F32, the patch kernel included (the legacy converter forces it to F16 because old
    ggml had no F32 im2col; current ggml has one)."""
    if outtype == "f16" and (a.ndim == 4 or (a.ndim == 2 and name.endswith(".weight"))):
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16
    return a.astype(np.float32), gguf.GGMLQuantizationType.F32


def preprocess_mode(src: Path, p: LlavaParams, override: str) -> str:
    if override != "auto":
        if (override == "anyres") != p.next:
            raise ConvertError(f"--preprocess {override} does not fit {p.arch}")
        return override
    if p.next:
        return "anyres"
    # llava-hf's LLaVA 1.5 processor is a plain CLIPImageProcessor (resize + center crop); the original
    # repo's pad-to-square is not part of the HF checkpoint. --preprocess pad restores it.
    if image_processor_config(src).get("image_aspect_ratio") == "pad":
        return "pad"
    return "crop"


def image_processor_config(src: Path) -> dict:
    """preprocessor_config.json (transformers 4, llava-hf) or processor_config.json's image_processor
    (transformers 5); empty if neither exists."""
    pc = src / "preprocessor_config.json"
    if pc.is_file():
        return json.loads(pc.read_text(encoding="utf-8"))
    pc = src / "processor_config.json"
    if pc.is_file():
        return json.loads(pc.read_text(encoding="utf-8")).get("image_processor") or {}
    return {}


def preprocessor_stats(src: Path) -> tuple[list[float], list[float]]:
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # OpenAI CLIP
    d = image_processor_config(src)
    mean, std = d.get("image_mean", mean), d.get("image_std", std)
    if len(mean) != 3 or len(std) != 3:
        raise ConvertError("preprocessor_config.json: image_mean/image_std need 3 values")
    return [float(x) for x in mean], [float(x) for x in std]


def write_mmproj(src: Path, out: Path, p: LlavaParams, vision: dict, proj: dict, outtype: str, name: str,
                 mode: str, verbose: bool) -> None:
    tensors = mmproj_tensors(vision, proj, p)
    mean, std = preprocessor_stats(src)
    w = gguf.GGUFWriter(str(out), "clip")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_file_type(0 if outtype == "f32" else 1)
    w.add_name(name)
    w.add_description("image encoder for LLaVA")
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", p.image_size)
    w.add_uint32("clip.vision.patch_size", p.patch_size)
    w.add_uint32("clip.vision.embedding_length", p.v_embd)
    w.add_uint32("clip.vision.feed_forward_length", p.v_ff)
    w.add_uint32("clip.vision.projection_dim", p.projection_dim)
    w.add_uint32("clip.vision.attention.head_count", p.v_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", p.v_eps)
    w.add_uint32("clip.vision.block_count", p.block_count)
    if p.pinpoints:
        # Flattened as in config.json. transformers reads each pair as (height, width), original LLaVA and
        # llama.cpp as (width, height); the standard sets are symmetric, only ties differ.
        w.add_array("clip.vision.image_grid_pinpoints", [int(x) for pair in p.pinpoints for x in pair])
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
    w.add_string("clip.vision.image_aspect_ratio", mode)
    w.add_array("clip.vision.feature_layer", p.feature_layers)
    w.add_array("clip.vision.image_mean", mean)
    w.add_array("clip.vision.image_std", std)
    w.add_bool("clip.use_gelu", p.use_gelu)
    for n, a in tensors:
        enc, qt = mmproj_encode(n, a, outtype)
        if verbose:
            print(f"{n:32s} {str(tuple(a.shape)):20s} -> {qt.name}")
        w.add_tensor(n, enc, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------------
# LLM


@contextlib.contextmanager
def _state_dict_override(sd: dict):
    """convert_hf_to_gguf.convert() reads the weights itself; hand it the already split text weights
    instead of copying them into a second checkpoint on disk."""
    saved = conv.load_state_dict
    conv.load_state_dict = lambda _src: sd
    try:
        yield
    finally:
        conv.load_state_dict = saved


def add_missing_added_tokens(tdir: Path) -> None:
    """Tokens past the SentencePiece model (`<image>`, `<pad>`) must reach convert_hf_to_gguf, which reads
    them from added_tokens.json (ids) and tokenizer_config.json's added_tokens_decoder (special flag).
    llava-hf checkpoints saved by transformers 4 have both; transformers 5 writes neither and keeps added
    tokens only in tokenizer.json. Rebuild both files in the scratch copy from whichever source exists."""
    tc_path = tdir / "tokenizer_config.json"
    if not (tdir / "tokenizer.model").is_file():
        return  # the tokenizer.json path of convert_hf_to_gguf reads added tokens itself
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString((tdir / "tokenizer.model").read_bytes())
    n_base = len(m.pieces)
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    dec = dict(tc.get("added_tokens_decoder") or {})
    tj_path = tdir / "tokenizer.json"
    if tj_path.is_file():
        for t in json.loads(tj_path.read_text(encoding="utf-8")).get("added_tokens", []):
            dec.setdefault(str(t["id"]), {"content": t["content"], "special": bool(t.get("special", False))})
    extra = {d["content"]: int(i) for i, d in dec.items() if int(i) >= n_base}
    at_path = tdir / "added_tokens.json"
    if at_path.is_file():
        extra.update(json.loads(at_path.read_text(encoding="utf-8")))
    if extra:
        at_path.write_text(json.dumps(extra), encoding="utf-8")
    if dec:
        tc["added_tokens_decoder"] = dec
        tc_path.write_text(json.dumps(tc), encoding="utf-8")


def write_llm(src: Path, out: Path, p: LlavaParams, text: dict, outtype: str, name: str, verbose: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="llava-llm-") as td:
        tdir = Path(td)
        (tdir / "config.json").write_text(json.dumps(p.text_cfg), encoding="utf-8")
        for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                  "chat_template.jinja", "chat_template.json", "special_tokens_map.json"):
            if (src / f).is_file():
                shutil.copyfile(src / f, tdir / f)
        add_missing_added_tokens(tdir)
        with _state_dict_override(text):
            conv.convert(tdir, out, outtype, name=name, verbose=verbose)


# --------------------------------------------------------------------------------------------------


def convert(src: Path, out_dir: Path, outtype: str = "f16", name: str | None = None, preprocess: str = "auto",
            verbose: bool = False) -> tuple[Path, Path]:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r} (f32, f16)")
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    p = LlavaParams(cfg)
    text, vision, proj = split_state_dict(conv.load_state_dict(src))
    if p.image_token_id is not None and not 0 <= int(p.image_token_id) < int(p.text_cfg.get("vocab_size", 0)):
        raise ConvertError(f"image_token_id {p.image_token_id} outside the text vocab")
    name = name or src.resolve().name
    mode = preprocess_mode(src, p, preprocess)
    out_dir.mkdir(parents=True, exist_ok=True)
    llm, mmproj = out_dir / f"llm-{outtype}.gguf", out_dir / f"mmproj-{outtype}.gguf"
    write_llm(src, llm, p, text, outtype, name, verbose)
    write_mmproj(src, mmproj, p, vision, proj, outtype, name, mode, verbose)
    return llm, mmproj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="HF LLaVA / LLaVA-NeXT checkpoint directory")
    ap.add_argument("out_dir", type=Path, help="directory for llm-<type>.gguf and mmproj-<type>.gguf")
    ap.add_argument("--outtype", choices=OUTTYPES, default="f16")
    ap.add_argument("--name", help="general.name (default: source directory name)")
    ap.add_argument("--preprocess", choices=("auto",) + PREPROCESS, default="auto",
                    help="clip.vision.image_aspect_ratio to write (auto: anyres for NeXT, else what "
                         "preprocessor_config.json says: pad if it has image_aspect_ratio=pad, otherwise crop)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out_dir, args.outtype, args.name, args.preprocess, args.verbose)
    except (ConvertError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"convert_llava_to_gguf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
