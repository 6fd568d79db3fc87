#!/usr/bin/env python3
"""Build tiny random-weight Llama/Mistral models and record what transformers computes for them.

    python3 tools/make_llm_goldens.py [--out tests/data/golden] [--only NAME ...] [--keep-checkpoints DIR]

For every model in MODELS: build it with transformers (seeded), save it as an HF checkpoint in a
temp dir together with a 1000-piece SentencePiece tokenizer cut from the Llama-2 vocab, convert it
with tools/convert_hf_to_gguf.py to F32/F16/Q8_0 GGUFs, and write into OUT/<name>/:

    model-f32.gguf model-f16.gguf model-q8_0.gguf
    logits.f32   little-endian float32 [n_prompt][n_vocab]: transformers logits at every prompt position
    golden.txt   name, n_vocab, prompt_text, prompt ids (with BOS), 32 greedy ids, their top1-top2
                 margins, logit_range (max - min over logits.f32)

Also checks, and fails loudly otherwise: the prompt ids equal sentencepiece's and a llama.cpp-style
SPM tokenizer's (tools/vlmtools/spm.py) ids; transformers generate() equals a full-recompute greedy
loop; Mistral's sliding window changes the output; each F32 GGUF, read back with gguf.GGUFReader and
un-permuted, rebuilds a model with identical logits. Needs torch, transformers, sentencepiece,
protobuf, safetensors, gguf, numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import gguf  # noqa: E402
import torch  # noqa: E402

import convert_hf_to_gguf as conv  # noqa: E402
from vlmtools import ref_forward  # noqa: E402
from vlmtools.spm import SpmTokenizer  # noqa: E402

VOCAB_GGUF = Path(os.environ.get("VLM_SPM_VOCAB", "/work/shared/testdata/ggml-vocab-llama-spm.gguf"))
N_VOCAB = 1000
N_GEN = 32
SEED = 1234

# seed: torch seed of the model; init_range: std of the normal init of every Linear/Embedding
# (transformers initializer_range); out_tail: sigma of heavy_tail_rows(), 0 keeps the Gaussian
# lm_head. The three were picked with --survey (see tools/README.md).
MODELS = [
    dict(name="llama-mha", cls="llama", hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16, ff=160,
         theta=10000.0, tied=False, sliding_window=None, seed=10, init_range=0.1, out_tail=1.0,
         prompt="The quick brown fox jumps over the dog"),
    dict(name="llama-gqa", cls="llama", hidden=96, layers=3, heads=4, kv_heads=2, head_dim=24, ff=256,
         theta=10000.0, tied=False, sliding_window=None, seed=7, init_range=0.05, out_tail=0.75,
         prompt="In the beginning there was nothing but a small light"),
    dict(name="llama-hd64", cls="llama", hidden=128, layers=2, heads=2, kv_heads=1, head_dim=64, ff=128,
         theta=10000.0, tied=True, sliding_window=None, seed=29, init_range=0.1, out_tail=0.5,
         prompt="She said that the answer is not in the book"),
    dict(name="mistral-swa", cls="mistral", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ff=192,
         theta=1e6, tied=False, sliding_window=8, seed=1, init_range=0.1, out_tail=1.0,
         prompt="Once upon a time, a girl went home!"),
]


# --------------------------------------------------------------------------------------------------
# vocabulary


def read_llama2_vocab(path: Path) -> tuple[list[str], list[float], list[int]]:
    r = gguf.GGUFReader(str(path))
    f = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    f = r.fields["tokenizer.ggml.scores"]
    scores = [float(f.parts[i][0]) for i in f.data]
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    return toks, scores, types


def select_vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """ids 0..258 as in Llama-2 (unk, bos, eos, 256 bytes), then Llama-2's merged pieces in id order,
    then the single characters those pieces are made of (Llama-2 keeps them at the end too).

    A literal cut of the first n pieces has no single characters at all (Llama-2 stores them at
    ids >= 29871); sentencepiece and llama.cpp still merge e.g. "e"+"r" into "er", but transformers'
    converter only makes merges whose halves are in the vocab, so HF would byte-encode everything
    and the three tokenizers would disagree. A piece is taken only if some split of it into two
    taken pieces/characters exists, and all its characters are added, which makes the vocab closed
    under the merges all three tokenizers derive from it."""
    toks, scores, types = read_llama2_vocab(VOCAB_GGUF)
    char_ids = {t: i for i, t in enumerate(toks) if len(t) == 1 and types[i] == 1}
    multi: list[int] = []
    have: set[str] = set()
    chars: set[str] = set()
    for i in range(259, len(toks)):
        t = toks[i]
        if types[i] != 1 or len(t) < 2:
            continue
        if not any((t[:k] in have or len(t[:k]) == 1) and (t[k:] in have or len(t[k:]) == 1)
                   for k in range(1, len(t))):
            continue
        new_chars = set(t) - chars
        if any(c not in char_ids for c in new_chars):
            continue
        if 259 + len(multi) + 1 + len(chars | new_chars) > n:
            if 259 + len(multi) + len(chars) >= n:
                break
            continue
        multi.append(i)
        have.add(t)
        chars |= new_chars
    ids = list(range(259)) + multi + sorted(char_ids[c] for c in chars)
    assert len(ids) == n, len(ids)
    return [toks[i] for i in ids], [scores[i] for i in ids], [types[i] for i in ids]


def write_sentencepiece_model(path: Path, toks, scores, types) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    for t, s, y in zip(toks, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, s, y
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(toks)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name = "identity"  # Llama-2: no normalization, no whitespace collapsing
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    path.write_bytes(m.SerializeToString())


# --------------------------------------------------------------------------------------------------
# models


def build_model(spec: dict, init_range: float, out_tail: float, sliding_window="spec", seed: int | None = None):
    seed = spec.get("seed", SEED) if seed is None else seed
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
    common = dict(vocab_size=N_VOCAB, hidden_size=spec["hidden"], intermediate_size=spec["ff"],
                  num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                  num_key_value_heads=spec["kv_heads"], head_dim=spec["head_dim"], rms_norm_eps=1e-5,
                  rope_theta=spec["theta"], tie_word_embeddings=spec["tied"], initializer_range=init_range,
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    if spec["cls"] == "mistral":
        sw = spec["sliding_window"] if sliding_window == "spec" else sliding_window
        cfg = MistralConfig(sliding_window=sw, **common)
        cls = MistralForCausalLM
    else:
        cfg = LlamaConfig(**common)
        cls = LlamaForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm gains: not all ones, so a norm mix-up changes the result
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
        if out_tail > 0:
            head = model.lm_head.weight if not spec["tied"] else model.model.embed_tokens.weight
            head.mul_(heavy_tail_rows(head.shape[0], out_tail, g))
    model.eval()
    return model


def heavy_tail_rows(n_rows: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Log-normal per-row scale for the output matrix.

    Given the final hidden state, logits of a Gaussian lm_head are Gaussian across the vocab, for
    which the top1-top2 gap is ~4% of the range whatever the init scale. Row scales exp(sigma*N(0,1))
    give the logits a heavy upper tail, like a trained model's, so the winner stands clear."""
    return torch.exp(sigma * torch.randn(n_rows, 1, generator=g))


@torch.no_grad()
def logits_of(model, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids])).logits[0].float().numpy()


@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Full recompute each step (no KV cache), recording top1 - top2 of the raw logits."""
    ids = list(prompt)
    out, margins = [], []
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top = np.sort(last)[-2:]
        nxt = int(np.argmax(last))
        out.append(nxt)
        margins.append(float(top[1] - top[0]))
        ids.append(nxt)
    return out, margins


@torch.no_grad()
def hf_generate(model, prompt: list[int], n: int) -> list[int]:
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    res = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return res[0, len(prompt):].tolist()


# --------------------------------------------------------------------------------------------------
# independent check of the converter: GGUF -> torch state dict -> same logits


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def model_from_gguf(path: Path, spec: dict, dequant: bool = False):
    r = gguf.GGUFReader(str(path))

    def kv(key):
        return r.fields[key].contents()
    assert kv("general.architecture") == "llama"
    n_head, n_head_kv = kv("llama.attention.head_count"), kv("llama.attention.head_count_kv")
    assert kv("llama.embedding_length") == spec["hidden"] and kv("llama.block_count") == spec["layers"]
    assert kv("llama.feed_forward_length") == spec["ff"] and n_head == spec["heads"]
    assert n_head_kv == spec["kv_heads"] and kv("llama.rope.dimension_count") == spec["head_dim"]
    assert abs(kv("llama.rope.freq_base") - spec["theta"]) <= 1e-6 * spec["theta"]
    assert abs(kv("llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-9
    assert kv("llama.vocab_size") == N_VOCAB and len(r.fields["tokenizer.ggml.tokens"].data) == N_VOCAB
    sw = r.fields.get("llama.attention.sliding_window")
    assert (sw.contents() if sw else None) == spec["sliding_window"]
    names = {t.name for t in r.tensors}
    assert ("output.weight" in names) == (not spec["tied"])

    inv = {v: k for k, v in conv.TOP_MAP.items()}
    inv_blk = {v: k for k, v in conv.BLOCK_MAP.items()}
    sd = {}
    for t in r.tensors:
        if dequant:
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            a = np.array(t.data, dtype=np.float32)
        a = a.reshape([int(x) for x in reversed(t.shape)])
        if t.name.startswith("blk."):
            _, il, rest = t.name.split(".", 2)
            hf = f"model.layers.{il}.{inv_blk[rest]}"
            if rest.startswith("attn_q."):
                a = unpermute_qk(a, n_head)
            elif rest.startswith("attn_k."):
                a = unpermute_qk(a, n_head_kv)
        else:
            hf = inv[t.name]
        sd[hf] = torch.from_numpy(a.copy())
    model = build_model(spec, 0.02, 0.0)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= ({"lm_head.weight"} if spec["tied"] else set()), missing
    if spec["tied"]:
        model.tie_weights()
        assert torch.equal(model.lm_head.weight, sd["model.embed_tokens.weight"])
    return model


# --------------------------------------------------------------------------------------------------


def fmt(x: float) -> str:
    return f"{x:.6g}"


def make_one(spec: dict, vocab, out_root: Path, keep: Path | None = None) -> dict:
    from transformers import LlamaTokenizer
    import sentencepiece as spm

    toks, scores, types = vocab
    name = spec["name"]
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as td:
        src = Path(td) / name
        src.mkdir()
        init_range, out_tail = spec["init_range"], spec["out_tail"]
        model = build_model(spec, init_range, out_tail)
        model.save_pretrained(str(src), safe_serialization=True)
        write_sentencepiece_model(src / "tokenizer.model", toks, scores, types)
        tok = LlamaTokenizer.from_pretrained(str(src), add_bos_token=True, add_eos_token=False)
        tok.save_pretrained(str(src))  # tokenizer.json + tokenizer_config.json, as a real checkpoint has
        tc = json.loads((src / "tokenizer_config.json").read_text())
        tc.update(add_bos_token=True, add_eos_token=False)  # as in Llama-2's tokenizer_config.json
        (src / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))

        prompt_text = spec["prompt"]
        prompt = tok(prompt_text, add_special_tokens=True)["input_ids"]
        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        ref = SpmTokenizer(toks, scores, types)
        assert prompt[0] == 1 and prompt[1:] == sp.encode(prompt_text), (prompt, sp.encode(prompt_text))
        assert ref.encode(prompt_text) == prompt, (ref.encode(prompt_text), prompt)
        assert 10 <= len(prompt) <= 20, len(prompt)
        n_bytes = sum(1 for t in prompt if 3 <= t <= 258)

        logits = logits_of(model, prompt)
        gen, margins = greedy(model, prompt, N_GEN)
        gen_hf = hf_generate(model, prompt, N_GEN)
        assert gen_hf == gen, f"{name}: generate() {gen_hf} != greedy loop {gen}"

        if spec["sliding_window"]:
            full = build_model(spec, init_range, out_tail, sliding_window=None)
            gen_full, _ = greedy(full, prompt, N_GEN)
            seq = prompt + gen
            d = np.abs(logits_of(full, seq) - logits_of(model, seq)).max()
            assert d > 1e-2, f"{name}: sliding window does not change the logits (max diff {d})"
            assert np.abs(logits_of(full, prompt[:spec['sliding_window']]) -
                          logits_of(model, prompt[:spec['sliding_window']])).max() < 1e-5
            swa_note = (f"max |logit diff| vs no window over prompt+greedy {d:.3g}; "
                        f"greedy tokens differ at {sum(a != b for a, b in zip(gen, gen_full))}/{N_GEN} steps")
        else:
            swa_note = None

        for ot in ("f32", "f16", "q8_0"):
            conv.convert(src, out / f"model-{ot}.gguf", ot, name=name)
        # the tokenizer.json path of the converter must give the same tokenization of the prompt
        alt = Path(td) / "alt"
        alt.mkdir()
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (alt / f).write_bytes((src / f).read_bytes())
        v_json = conv.load_vocab(alt, conv.HParams(json.loads((src / "config.json").read_text())))
        ref_json = SpmTokenizer([t.decode() for t in v_json.tokens], v_json.scores, v_json.types)
        assert [t.decode() for t in v_json.tokens] == toks and v_json.types == types
        assert ref_json.encode(prompt_text) == prompt
        if keep is not None:  # the HF checkpoint itself, for other converters (tools/check_converter_compat.py)
            shutil.copytree(src, keep / name, dirs_exist_ok=True)

    # independent converter check
    back = model_from_gguf(out / "model-f32.gguf", spec)
    d_back = float(np.abs(logits_of(back, prompt) - logits).max())
    assert d_back == 0.0, f"{name}: GGUF round trip changes logits by {d_back}"

    rng_ = float(logits.max() - logits.min())
    # Runtime-side check: NumPy llama forward on the stored (permuted) weights with RoPE mode NORM.
    ref_logits = ref_forward.forward(*ref_forward.load(out / "model-f32.gguf"), prompt + gen)
    d_ref = float(np.abs(ref_logits[:len(prompt)] - logits).max()) / rng_
    assert d_ref < 1e-4, f"{name}: NumPy NORM-RoPE forward differs by {d_ref} of the range"
    assert ref_logits[len(prompt) - 1:-1].argmax(-1).tolist() == gen, f"{name}: NumPy greedy differs"
    # What the C golden test will see with the quantized files, if it dequantizes exactly.
    quant = {}
    for ot, bound in (("f16", 0.01), ("q8_0", 0.05)):
        qm = model_from_gguf(out / f"model-{ot}.gguf", spec, dequant=True)
        err = float(np.abs(logits_of(qm, prompt) - logits).max()) / rng_
        qgen, _ = greedy(qm, prompt, N_GEN)
        low = [i for i, m in enumerate(margins) if m < bound * rng_]
        first_low = low[0] if low else N_GEN
        same = next((i for i, (a, b) in enumerate(zip(qgen, gen)) if a != b), N_GEN)
        assert err < bound, f"{name}: {ot} logits off by {err:.4f} of the range"
        assert same >= first_low, f"{name}: {ot} greedy differs at step {same}, before margin drop at {first_low}"
        quant[ot] = (err, first_low, same)
    (out / "logits.f32").write_bytes(logits.astype("<f4").tobytes())
    lines = [f"name {name}", f"n_vocab {N_VOCAB}", f"prompt_text {prompt_text}",
             "prompt " + " ".join(map(str, prompt)), "greedy " + " ".join(map(str, gen)),
             "greedy_margin " + " ".join(fmt(m) for m in margins), f"logit_range {fmt(rng_)}"]
    (out / "golden.txt").write_text("\n".join(lines) + "\n")
    rel = np.array(margins) / rng_
    size = sum(f.stat().st_size for f in out.iterdir())
    return dict(name=name, n_prompt=len(prompt), n_bytes=n_bytes, range=rng_, min=float(rel.min()),
                median=float(np.median(rel)), above5=int((rel > 0.05).sum()), above1=int((rel > 0.01).sum()),
                distinct=len(set(gen)), swa=swa_note, size=size, quant=quant, d_ref=d_ref)


@torch.no_grad()
def requantized(model, spec: dict, qtype):
    """Copy of model whose 2-D weights went through qtype and back (what a GGUF of that type holds)."""
    q = build_model(spec, spec.get("init_range", 0.02), 0.0)
    q.load_state_dict(model.state_dict())
    for p in q.parameters():
        if p.ndim == 2:
            w = p.detach().numpy()
            p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
                                     .reshape(w.shape).astype(np.float32)))
    return q


def survey(prompt_ids: dict, names) -> None:
    """Print margin and quantization-error statistics over a grid of seeds / init ranges / tail sigmas
    (nothing is written). See tools/README.md for how a setting was picked."""
    for spec in MODELS:
        if names and spec["name"] not in names:
            continue
        ids = prompt_ids[spec["name"]]
        for seed in list(range(12)) + [SEED]:
            for tail in (0.0, 0.5, 0.75, 1.0, 1.5):
                for ir in (0.02, 0.05, 0.1, 0.2):
                    m = build_model(spec, ir, tail, seed=seed)
                    logits = logits_of(m, ids)
                    rng_ = logits.max() - logits.min()
                    gen, margins = greedy(m, ids, N_GEN)
                    rel = np.array(margins) / rng_
                    q8 = requantized(m, spec, gguf.GGMLQuantizationType.Q8_0)
                    err = np.abs(logits_of(q8, ids) - logits).max() / rng_
                    first_low = next((i for i, r in enumerate(rel) if r < 0.05), N_GEN)
                    first_low1 = next((i for i, r in enumerate(rel) if r < 0.01), N_GEN)
                    print(f"{spec['name']:12s} seed {seed:4d} tail {tail:.2f} init {ir:.2f} | margin/range "
                          f"min {rel.min():.4f} median {np.median(rel):.4f} >5% {(rel > 0.05).sum():2d} "
                          f"first<1% {first_low1:2d} first<5% {first_low:2d} distinct {len(set(gen)):2d} q8err {err:.4f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "golden")
    ap.add_argument("--only", nargs="*", help="model names to (re)build")
    ap.add_argument("--survey", action="store_true", help="print margin stats for several init scales")
    ap.add_argument("--keep-checkpoints", type=Path, metavar="DIR",
                    help="also copy each model's HF checkpoint folder to DIR/<name> (outputs unchanged)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    vocab = select_vocab(N_VOCAB)

    if args.survey:
        ref = SpmTokenizer(*vocab)
        ids = {s["name"]: ref.encode(s["prompt"]) for s in MODELS}
        survey(ids, args.only)
        return 0

    for spec in MODELS:
        if args.only and spec["name"] not in args.only:
            continue
        s = make_one(spec, vocab, args.out, args.keep_checkpoints)
        print(f"{s['name']:12s} prompt {s['n_prompt']} tok ({s['n_bytes']} byte tokens)  range {s['range']:.2f}  "
              f"margin/range min {s['min']:.4f} median {s['median']:.4f}  >5%: {s['above5']}/{N_GEN}  "
              f">1%: {s['above1']}/{N_GEN}  distinct greedy ids {s['distinct']}  dir {s['size'] / 1e6:.2f} MB")
        print(f"{'':12s} numpy NORM-RoPE forward of model-f32.gguf: max |diff| {s['d_ref']:.2e} of range")
        for ot, (err, first_low, same) in s["quant"].items():
            print(f"{'':12s} {ot}: max |logit err| {err:.5f} of range; first step under its margin bound "
                  f"{first_low}; greedy equal for {same}/{N_GEN} steps")
        if s["swa"]:
            print(f"{'':12s} sliding window: {s['swa']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
