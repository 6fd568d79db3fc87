#!/usr/bin/env python3
"""Convert a Hugging Face Llama/Mistral checkpoint directory to a llama.cpp-layout GGUF.

    convert_hf_to_gguf.py SRC_DIR OUT.gguf [--outtype f32|f16|q8_0|q4_0] [--name NAME]

Input: config.json (LlamaForCausalLM or MistralForCausalLM), weights as *.safetensors (single or
sharded) or pytorch_model*.bin, and a tokenizer: tokenizer.model (SentencePiece, preferred, as in
llama.cpp) or tokenizer.json (HF BPE with byte fallback, as produced from a Llama SentencePiece
model), plus optional tokenizer_config.json / chat_template.jinja / added_tokens.json.

Output follows llama.cpp's convert_hf_to_gguf.py `LlamaModel` (arch `llama`): tensor names
`token_embd`, `blk.N.attn_{norm,q,k,v,output}`, `blk.N.ffn_{norm,gate,up,down}`, `output_norm`,
`output` (omitted when the embeddings are tied); q_proj/k_proj rows permuted from HF's
rotate-half order back to the interleaved order used by RoPE mode NORM.

Deliberate differences from llama.cpp's converter (see tools/README.md):
  * Mistral configs with `sliding_window` set also get `llama.attention.sliding_window` (u32).
    llama.cpp ignores the key (full causal attention); vlmd honours it.
  * `--outtype q4_0` exists (llama.cpp needs llama-quantize for that) and uses Q4_0 for every
    2-D weight, including token_embd and output.
  * tokenizer.json-only checkpoints get merge-rank scores instead of llama.cpp's constant -1000,
    so the SPM merge order survives the conversion.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf.quants import quantize as gguf_quantize
except ImportError:  # pragma: no cover - the tool cannot work without it
    sys.exit("convert_hf_to_gguf.py needs the `gguf` Python package (pip install gguf)")

SUPPORTED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")

# SentencePiece ModelProto.SentencePiece.Type values coincide with llama.cpp's token types.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

OUTTYPES = {
    # name: (2-D tensor type, general.file_type)
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

BLOCK_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.down_proj.bias": "ffn_down.bias",
}
TOP_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# hyperparameters


class HParams:
    def __init__(self, cfg: dict):
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHS:
            raise ConvertError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")
        self.arch = arch

        def need(key):
            if cfg.get(key) is None:
                raise ConvertError(f"config.json: missing {key!r}")
            return cfg[key]

        self.n_embd = int(need("hidden_size"))
        self.n_layer = int(need("num_hidden_layers"))
        self.n_ff = int(need("intermediate_size"))
        self.n_head = int(need("num_attention_heads"))
        self.n_head_kv = int(cfg.get("num_key_value_heads") or self.n_head)
        self.head_dim_explicit = cfg.get("head_dim") is not None
        self.head_dim = int(cfg["head_dim"]) if self.head_dim_explicit else self.n_embd // self.n_head
        self.n_vocab = int(need("vocab_size"))
        self.n_ctx = int(cfg.get("max_position_embeddings") or 4096)
        self.rms_eps = float(cfg.get("rms_norm_eps") or 1e-5)
        # transformers >= 5 moved rope_theta into rope_parameters; older configs have it top-level.
        rope_params = cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta", rope_params.get("rope_theta"))
        self.rope_theta = float(theta) if theta is not None else 10000.0
        scaling = cfg.get("rope_scaling") or None
        if scaling is None and rope_params.get("rope_type", "default") != "default":
            scaling = rope_params
        self.rope_scaling = scaling
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        sw = cfg.get("sliding_window") if arch == "MistralForCausalLM" else None
        self.sliding_window = int(sw) if sw is not None else None
        self.hidden_act = cfg.get("hidden_act", "silu")
        if self.hidden_act != "silu":
            raise ConvertError(f"config.json: hidden_act {self.hidden_act!r} is not supported (llama needs silu)")
        if self.n_head % self.n_head_kv != 0:
            raise ConvertError(f"config.json: num_attention_heads {self.n_head} not a multiple of "
                               f"num_key_value_heads {self.n_head_kv}")
        if self.head_dim % 2 != 0:
            raise ConvertError(f"config.json: head dim {self.head_dim} must be even for RoPE")
        self.bos_id = cfg.get("bos_token_id")
        self.eos_id = cfg.get("eos_token_id")
        self.pad_id = cfg.get("pad_token_id")


# --------------------------------------------------------------------------------------------------
# weights


def load_state_dict(src: Path) -> dict[str, np.ndarray]:
    """Returns every tensor of the checkpoint as a float32 numpy array (names as in the checkpoint)."""
    out: dict[str, np.ndarray] = {}
    st_files = sorted(src.glob("*.safetensors"))
    if st_files:
        from safetensors import safe_open
        for f in st_files:
            # framework "pt" copes with bf16, which numpy cannot represent.
            try:
                import torch  # noqa: F401
                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        out[k] = fh.get_tensor(k).float().numpy()
            except ImportError:
                with safe_open(str(f), framework="numpy") as fh:
                    for k in fh.keys():
                        out[k] = np.asarray(fh.get_tensor(k), dtype=np.float32)
        return out
    bin_files = sorted(src.glob("pytorch_model*.bin"))
    if bin_files:
        import torch
        for f in bin_files:
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
            for k, v in sd.items():
                out[k] = v.float().numpy()
        return out
    raise ConvertError(f"{src}: no *.safetensors or pytorch_model*.bin found")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> interleaved order (llama.cpp LlamaModel.permute).

    Rows of one head are viewed as [2, d/2]; swapping gives [d/2, 2], i.e. HF row j*(d/2)+i lands on
    row 2i+j. Works for weights [rows, in] and biases [rows]."""
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ConvertError(f"cannot permute {rows} rows for {n_head} heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def map_tensors(sd: dict[str, np.ndarray], hp: HParams) -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = []
    seen = set()
    for name in sd:
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base
        if name == "lm_head.weight" and hp.tied:
            continue  # tied: the runtime reuses token_embd
        m = LAYER_RE.match(name)
        if m:
            il, rest = int(m.group(1)), m.group(2)
            if rest not in BLOCK_MAP or il >= hp.n_layer:
                raise ConvertError(f"unexpected tensor {name!r}")
            new = f"blk.{il}.{BLOCK_MAP[rest]}"
        elif name in TOP_MAP:
            new = TOP_MAP[name]
        else:
            raise ConvertError(f"unexpected tensor {name!r}")
        data = sd[name]
        if rest_is(name, "q_proj"):
            data = permute_qk(data, hp.n_head)
        elif rest_is(name, "k_proj"):
            data = permute_qk(data, hp.n_head_kv)
        if new in seen:
            raise ConvertError(f"duplicate tensor {new}")
        seen.add(new)
        out.append((new, np.ascontiguousarray(data, dtype=np.float32)))

    required = ["token_embd.weight", "output_norm.weight"]
    for il in range(hp.n_layer):
        required += [f"blk.{il}.{n}" for n in ("attn_norm.weight", "attn_q.weight", "attn_k.weight",
                                               "attn_v.weight", "attn_output.weight", "ffn_norm.weight",
                                               "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
    missing = [n for n in required if n not in seen]
    if missing:
        raise ConvertError(f"checkpoint lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")

    q_rows, kv_rows = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes = {"token_embd.weight": (hp.n_vocab, hp.n_embd), "output.weight": (hp.n_vocab, hp.n_embd),
              "attn_q.weight": (q_rows, hp.n_embd), "attn_k.weight": (kv_rows, hp.n_embd),
              "attn_v.weight": (kv_rows, hp.n_embd), "attn_output.weight": (hp.n_embd, q_rows),
              "ffn_gate.weight": (hp.n_ff, hp.n_embd), "ffn_up.weight": (hp.n_ff, hp.n_embd),
              "ffn_down.weight": (hp.n_embd, hp.n_ff)}
    for new, data in out:
        want = shapes.get(new) or shapes.get(new.split(".", 2)[-1])
        if want is not None and tuple(data.shape) != want:
            raise ConvertError(f"{new}: shape {tuple(data.shape)}, config implies {want}")

    # llama.cpp's order: embeddings, blocks in order, then output_norm/output.
    def order(item):
        n = item[0]
        if n == "token_embd.weight":
            return (0, 0, n)
        if n.startswith("blk."):
            return (1, int(n.split(".")[1]), n)
        return (2, 0 if n == "output_norm.weight" else 1, n)
    out.sort(key=order)
    return out


def rest_is(name: str, proj: str) -> bool:
    return name.endswith(f"self_attn.{proj}.weight") or name.endswith(f"self_attn.{proj}.bias")


def encode_tensor(data: np.ndarray, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """1-D tensors stay F32; 2-D ones get the out type (F16 if a row cannot be split into blocks)."""
    qtype = OUTTYPES[outtype][0]
    if data.ndim != 2 or qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[1] % block != 0:
        # Same fallback as llama.cpp: rows that are not whole blocks cannot be quantized.
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf_quantize(data, qtype), qtype


# --------------------------------------------------------------------------------------------------
# tokenizer


class Vocab:
    def __init__(self):
        self.tokens: list[bytes] = []
        self.scores: list[float] = []
        self.types: list[int] = []
        self.bos = self.eos = self.unk = self.pad = None
        self.add_bos = True
        self.add_eos = False
        self.add_space_prefix = None
        self.chat_template = None


def vocab_from_sentencepiece(path: Path) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    v = Vocab()
    for p in m.pieces:
        v.tokens.append(p.piece.encode("utf-8"))
        v.scores.append(float(p.score))
        v.types.append(int(p.type) if 1 <= int(p.type) <= 6 else TOKEN_NORMAL)
    ts = m.trainer_spec
    n = len(v.tokens)
    v.unk = ts.unk_id if 0 <= ts.unk_id < n else None
    v.bos = ts.bos_id if 0 <= ts.bos_id < n else None
    v.eos = ts.eos_id if 0 <= ts.eos_id < n else None
    v.pad = ts.pad_id if 0 <= ts.pad_id < n else None
    v.add_space_prefix = bool(m.normalizer_spec.add_dummy_prefix)
    return v


def vocab_from_tokenizer_json(path: Path) -> Vocab:
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        raise ConvertError(f"{path}: only Llama-style BPE tokenizers with byte_fallback are supported")
    vocab: dict[str, int] = model["vocab"]
    n = max(vocab.values()) + 1
    for t in tj.get("added_tokens", []):
        n = max(n, t["id"] + 1)
    toks: list[str | None] = [None] * n
    for piece, i in vocab.items():
        toks[i] = piece
    # SPM merges the best-scored pair; HF BPE applies merges by rank. A piece made by merge r gets
    # score -r so both orders agree (llama.cpp writes -1000 for all, which loses the order).
    scores = [0.0] * n
    ranked = set()
    for r, mg in enumerate(model.get("merges", [])):
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        i = vocab.get(a + b)
        if i is not None and i not in ranked:
            ranked.add(i)
            scores[i] = -float(r)
    v = Vocab()
    specials = {}
    for t in tj.get("added_tokens", []):
        specials[t["id"]] = t
    for i in range(n):
        piece = toks[i]
        if i in specials:
            piece = specials[i]["content"]
            ttype = TOKEN_CONTROL if specials[i].get("special", False) else TOKEN_USER_DEFINED
            score = 0.0 if ttype == TOKEN_CONTROL else -1000.0
        elif piece is None:
            piece, ttype, score = f"[PAD{i}]", TOKEN_UNUSED, -1000.0
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            ttype, score = TOKEN_BYTE, 0.0
        else:
            ttype, score = TOKEN_NORMAL, scores[i]
        v.tokens.append(piece.encode("utf-8"))
        v.scores.append(score)
        v.types.append(ttype)
    unk = model.get("unk_token")
    if unk is not None and unk in vocab:
        v.unk = vocab[unk]
        v.types[v.unk] = TOKEN_UNKNOWN
    return v


def token_content(tok) -> str | None:
    if tok is None:
        return None
    if isinstance(tok, dict):
        return tok.get("content")
    return str(tok)


def load_vocab(src: Path, hp: HParams) -> Vocab:
    if (src / "tokenizer.model").is_file():
        v = vocab_from_sentencepiece(src / "tokenizer.model")
    elif (src / "tokenizer.json").is_file():
        v = vocab_from_tokenizer_json(src / "tokenizer.json")
    else:
        raise ConvertError(f"{src}: no tokenizer.model or tokenizer.json")

    index = {t: i for i, t in enumerate(v.tokens)}
    added = src / "added_tokens.json"
    if added.is_file():
        for text, tid in json.loads(added.read_text(encoding="utf-8")).items():
            while tid >= len(v.tokens):
                v.tokens.append(f"[PAD{len(v.tokens)}]".encode())
                v.scores.append(-1000.0)
                v.types.append(TOKEN_UNUSED)
            v.tokens[tid], v.scores[tid], v.types[tid] = text.encode("utf-8"), -1000.0, TOKEN_USER_DEFINED
        index = {t: i for i, t in enumerate(v.tokens)}

    tc_path = src / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    for sid, data in (tc.get("added_tokens_decoder") or {}).items():
        tid = int(sid)
        if tid >= len(v.tokens):
            continue  # llama.cpp drops ids past the vocab as well
        text = data["content"]
        if data.get("special"):
            v.types[tid] = TOKEN_CONTROL
        elif v.types[tid] != TOKEN_CONTROL and v.tokens[tid] != text.encode("utf-8"):
            v.types[tid] = TOKEN_USER_DEFINED
            v.scores[tid] = -1000.0
        v.tokens[tid] = text.encode("utf-8")
    index = {t: i for i, t in enumerate(v.tokens)}

    # Special ids: tokenizer_config names first, then config.json ids, then the SPM model's.
    for kind in ("bos", "eos", "unk", "pad"):
        text = token_content(tc.get(f"{kind}_token"))
        tid = index.get(text.encode("utf-8")) if text is not None else None
        if tid is None and kind in ("bos", "eos", "pad"):
            cfg_id = getattr(hp, f"{kind}_id")
            if isinstance(cfg_id, list):
                cfg_id = cfg_id[0] if cfg_id else None
            tid = cfg_id
        if tid is not None:
            setattr(v, kind, int(tid))
    if "add_bos_token" in tc:
        v.add_bos = bool(tc["add_bos_token"])
    if "add_eos_token" in tc:
        v.add_eos = bool(tc["add_eos_token"])

    tmpl = tc.get("chat_template")
    if tmpl is None and (src / "chat_template.jinja").is_file():
        tmpl = (src / "chat_template.jinja").read_text(encoding="utf-8")
    if tmpl is None and (src / "chat_template.json").is_file():
        tmpl = json.loads((src / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    if isinstance(tmpl, list):  # named templates: llama.cpp keeps the default one
        named = {t.get("name"): t.get("template") for t in tmpl}
        tmpl = named.get("default")
    v.chat_template = tmpl

    # The embedding matrix decides the vocab size; pad or reject like llama.cpp.
    if len(v.tokens) > hp.n_vocab:
        raise ConvertError(f"tokenizer has {len(v.tokens)} tokens, config vocab_size is {hp.n_vocab}")
    while len(v.tokens) < hp.n_vocab:
        v.tokens.append(f"[PAD{len(v.tokens)}]".encode())
        v.scores.append(-1000.0)
        v.types.append(TOKEN_UNUSED)
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(v, kind)
        if tid is not None and not 0 <= tid < hp.n_vocab:
            setattr(v, kind, None)
    if v.unk is not None:
        # tokenizer.json lists <unk> among the special added tokens; SentencePiece types it UNKNOWN.
        v.types[v.unk] = TOKEN_UNKNOWN
    return v


# --------------------------------------------------------------------------------------------------
# writer


def convert(src: Path, out: Path, outtype: str = "f16", name: str | None = None, verbose: bool = False) -> None:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}")
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    hp = HParams(cfg)
    vocab = load_vocab(src, hp)
    tensors = map_tensors(load_state_dict(src), hp)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name or src.resolve().name)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.head_dim_explicit:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    w.add_file_type(OUTTYPES[outtype][1])
    w.add_vocab_size(hp.n_vocab)
    w.add_rope_dimension_count(hp.head_dim)
    if hp.rope_scaling:
        rtype = hp.rope_scaling.get("rope_type") or hp.rope_scaling.get("type")
        if rtype == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(hp.rope_scaling["factor"]))
        else:
            raise ConvertError(f"rope scaling {rtype!r} is not supported")
    if hp.sliding_window is not None:
        # Not part of llama.cpp's `llama` arch (it ignores the key); vlmd's runtime honours it.
        w.add_uint32("llama.attention.sliding_window", hp.sliding_window)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.bos is not None:
        w.add_bos_token_id(vocab.bos)
    if vocab.eos is not None:
        w.add_eos_token_id(vocab.eos)
    if vocab.unk is not None:
        w.add_unk_token_id(vocab.unk)
    if vocab.pad is not None:
        w.add_pad_token_id(vocab.pad)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None and not vocab.add_space_prefix:
        w.add_add_space_prefix(False)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)

    for tname, data in tensors:
        enc, qtype = encode_tensor(data, outtype)
        if verbose:
            print(f"{tname:32s} {str(tuple(data.shape)):16s} -> {qtype.name}")
        w.add_tensor(tname, enc, raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="HF checkpoint directory")
    ap.add_argument("out", type=Path, help="output .gguf")
    ap.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16")
    ap.add_argument("--name", help="general.name (default: source directory name)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out, args.outtype, args.name, args.verbose)
    except (ConvertError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"convert_hf_to_gguf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
