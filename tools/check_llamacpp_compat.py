#!/usr/bin/env python3
"""Format compatibility: do the GGUF files our converters write load and run in llama.cpp?

Two parts, both through llama-cpp-python (see bench/README.md for the build; the vision part needs a build with
libmtmd, i.e. without -DLLAVA_BUILD=OFF). Not part of CI.

llm: loads every golden LLM (tests/data/golden/*/model-*.gguf), evaluates the golden prompt and compares
  llama.cpp's logits at every prompt position with transformers' (logits.f32), as a fraction of the logit range;
  also checks that llama.cpp's tokenizer gives the golden prompt ids.
  Expected: F32/F16 files within ~1e-3 of the range (llama.cpp keeps an F16 KV cache), Q8_0 within ~3e-2;
  mistral-swa differs on purpose: llama.cpp's llama architecture ignores llama.attention.sliding_window, so it
  runs full attention where transformers (and vlmd) use the window.

vision: the tiny LLaVA goldens (tests/data/vlm/models/{llava15,llava16}-tiny/{llm,mmproj}-f32.gguf, written by
  tools/convert_llava_to_gguf.py) in llama.cpp's libmtmd:
  1. the pair loads (mtmd_init_from_file), and llama.cpp encodes each golden case's image from its file;
     its token count and embeddings are compared with transformers' (cases/<case>.features.f32);
  2. encoder alone: llama.cpp gets transformers' preprocessed tile itself (pixel_values turned back into RGB8, so
     llama.cpp's resize is a copy) and its output is compared with (a) the golden features and (b) a numpy
     replica of llama.cpp's LLaVA graph (class token appended after the patches, position rows in sequence
     order, rows 1..N kept, tanh-GELU projector) run on the same file. Agreement with (b) and disagreement with
     (a) shows the file is read as intended and that the gap is llama.cpp's layout (shared/docs/gguf-llava.md
     §5.3), not the file. The replica also runs the transformers layout, which must reproduce the goldens;
  3. LLM: llama.cpp runs llm-f32.gguf on the golden input_ids with transformers' image features spliced in as
     embeddings: final logits against logits.f32, and 32 greedy tokens against the golden ones.
  Expected: loads; llama.cpp-vs-replica within ~1e-3 of the range; llama.cpp-vs-golden far apart (its layout);
  LLM logits within ~1e-3 of the range; greedy tokens equal unless a golden margin is tiny.

Usage: check_llamacpp_compat.py [--part llm|vision|all] [--threads 2] [-v]
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROOT = os.path.join(REPO, "tests", "data", "golden")
VLM_ROOT = os.path.join(REPO, "tests", "data", "vlm")


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed (see bench/README.md)")
    return llama_cpp


def read_meta(path):
    meta = {}
    for line in open(path, encoding="utf-8"):
        key, _, val = line.rstrip("\n").partition(" ")
        meta[key] = val
    return meta


# ----------------------------------------------------------------------------------------------------------------
# llm part


def check_llm(threads: int) -> float:
    llama_cpp = import_llama_cpp()
    worst = 0.0
    for name in sorted(os.listdir(ROOT)):
        d = os.path.join(ROOT, name)
        if not os.path.exists(os.path.join(d, "golden.txt")):
            continue
        meta = read_meta(os.path.join(d, "golden.txt"))
        prompt = [int(x) for x in meta["prompt"].split()]
        n_vocab = int(meta["n_vocab"])
        gold = np.fromfile(os.path.join(d, "logits.f32"), dtype=np.float32).reshape(len(prompt), n_vocab)
        rng = float(meta["logit_range"])
        for f in sorted(x for x in os.listdir(d) if x.endswith(".gguf")):
            llm = llama_cpp.Llama(os.path.join(d, f), n_ctx=128, logits_all=True, verbose=False, n_threads=threads)
            llm.eval(prompt)
            logits = np.array(llm.scores[: len(prompt)])
            ids = llm.tokenize(meta["prompt_text"].encode(), add_bos=True, special=False)
            rel = float(np.abs(logits - gold).max() / rng)
            if name != "mistral-swa":
                worst = max(worst, rel)
            print(f"{name:12s} {f:16s} llama.cpp max|dlogit|/range = {rel:.2e}  tokenizer ids equal: {ids == prompt}")
            llm.close()
    print(f"worst (excluding the sliding-window model): {worst:.2e}")
    return worst


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp through ctypes: an LLM context fed token ids or embeddings, and libmtmd (also used by
# bench/bench_vision.py)


def quiet_llama_logs(llama_cpp, verbose: bool) -> None:
    """llama-cpp-python's log callback prints everything until a Llama object sets its level; keep errors only
    (or everything with verbose), for libllama and libmtmd alike."""
    from llama_cpp import _logger

    _logger.set_verbose(verbose)


class LlamaLM:
    """A llama.cpp context on one GGUF LLM; decode() takes token ids or embedding rows at explicit positions."""

    def __init__(self, path: str, threads: int = 2, n_ctx: int = 512, verbose: bool = False):
        self.lc = lc = import_llama_cpp()
        quiet_llama_logs(lc, verbose)
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))

    def reset(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def decode(self, pos0: int, ids=None, embd: np.ndarray | None = None, want_logits: bool = True) -> None:
        lc = self.lc
        n = len(ids) if ids is not None else embd.shape[0]
        b = lc.llama_batch_init(n, 0 if ids is not None else self.n_embd, 1)
        try:
            if ids is not None:
                for i, t in enumerate(ids):
                    b.token[i] = int(t)
            else:
                e = np.ascontiguousarray(embd, dtype=np.float32)
                if e.shape[1] != self.n_embd:
                    raise ValueError(f"embedding width {e.shape[1]} != model n_embd {self.n_embd}")
                ctypes.memmove(b.embd, e.ctypes.data, e.nbytes)
            for i in range(n):
                b.pos[i] = pos0 + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if (want_logits and i == n - 1) else 0
            b.n_tokens = n
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")
        finally:
            lc.llama_batch_free(b)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        lc = self.lc
        raw = text.encode()
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(lc.llama_model_get_vocab(self.model), raw, len(raw), buf, len(buf), add_special, True)
        if n < 0:
            raise RuntimeError("llama_tokenize failed")
        return list(buf[:n])

    def last_logits(self) -> np.ndarray:
        p = self.lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy()

    def run_prompt(self, input_ids: list[int], image_embd: list[np.ndarray]) -> np.ndarray:
        """input_ids with each run of image tokens written as one -1 (the golden format); image_embd in order.
        Returns the logits at the last position; the KV cache then holds the prompt."""
        self.reset()
        pos, seg, k = 0, [], 0
        for t in input_ids + [None]:
            if t is None or t == -1:
                if seg:
                    self.decode(pos, ids=seg, want_logits=t is None)
                    pos += len(seg)
                    seg = []
                if t == -1:
                    self.decode(pos, embd=image_embd[k], want_logits=False)
                    pos += image_embd[k].shape[0]
                    k += 1
            else:
                seg.append(t)
        self.n_past = pos
        return self.last_logits()

    def greedy(self, first_logits: np.ndarray, n: int) -> list[int]:
        out, logits = [], first_logits
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            self.decode(self.n_past, ids=[tok])
            self.n_past += 1
            logits = self.last_logits()
        return out

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


class Mtmd:
    """llama.cpp's libmtmd (the vision side of llama-mtmd-cli / llama-server) on an mmproj GGUF. mtmd needs a
    text model: only its n_embd (must equal the projector's output width) and its vocabulary are used here."""

    def __init__(self, llm_path: str, mmproj_path: str, threads: int = 2, warmup: bool = True,
                 verbose: bool = False):
        self.lc = lc = import_llama_cpp()
        try:
            import llama_cpp.mtmd_cpp as mt
        except (ImportError, OSError, FileNotFoundError) as e:
            raise SystemExit(f"llama-cpp-python has no libmtmd ({e}): rebuild it without -DLLAVA_BUILD=OFF "
                             "(bench/README.md, 'Vision encoder')")
        self.mt = mt
        quiet_llama_logs(lc, verbose)
        from llama_cpp import _logger

        mt.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        mt.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(llm_path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {llm_path}")
        cp = mt.mtmd_context_params_default()
        cp.use_gpu = False
        cp.n_threads = threads
        cp.print_timings = False
        cp.warmup = warmup
        t0 = time.perf_counter()
        self.ctx = mt.mtmd_init_from_file(mmproj_path.encode(), self.model, cp)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise RuntimeError(f"mtmd_init_from_file failed for {mmproj_path} (run with -v for llama.cpp's log)")
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.marker = mt.mtmd_default_marker().decode()
        self.vision = bool(mt.mtmd_support_vision(self.ctx))

    def bitmap_from_file(self, path: str):
        bm = self.mt.mtmd_helper_bitmap_init_from_file(self.ctx, path.encode(), False)
        if not bm:
            raise RuntimeError(f"llama.cpp could not read the image {path}")
        return bm

    def bitmap_from_rgb(self, rgb: np.ndarray):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w, _ = rgb.shape
        buf = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        bm = self.mt.mtmd_bitmap_init(w, h, buf)
        if not bm:
            raise RuntimeError("mtmd_bitmap_init failed")
        return bm

    def free_bitmap(self, bm) -> None:
        self.mt.mtmd_bitmap_free(bm)

    def encode(self, bm, text: str | None = None) -> dict:
        """Tokenize a prompt holding one image marker (preprocessing happens here) and encode its image chunks.
        Returns the times (ms), the image token count and the embeddings [n_tokens][n_embd] of all chunks."""
        mt = self.mt
        text = text if text is not None else self.marker
        chunks = mt.mtmd_input_chunks_init()
        try:
            raw = text.encode()
            inp = mt.mtmd_input_text(raw, len(raw), True, True)
            bms = (mt.mtmd_bitmap_p_ctypes * 1)(bm)
            t0 = time.perf_counter()
            rc = mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), bms, 1)
            t1 = time.perf_counter()
            if rc != 0:
                raise RuntimeError(f"mtmd_tokenize failed ({rc})")
            # LLaVA 1.6 (llava-uhd path): one image chunk for the overview, then one per tile.
            embd, n_tok, enc_ms = [], 0, 0.0
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                c = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(c) != mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    continue
                n = mt.mtmd_input_chunk_get_n_tokens(c)
                t2 = time.perf_counter()
                rc = mt.mtmd_encode_chunk(self.ctx, c)
                enc_ms += (time.perf_counter() - t2) * 1e3
                if rc != 0:
                    raise RuntimeError(f"mtmd_encode_chunk failed ({rc})")
                p = mt.mtmd_get_output_embd(self.ctx)
                embd.append(np.ctypeslib.as_array(p, shape=(n * self.n_embd,)).reshape(n, self.n_embd).copy())
                n_tok += n
            if not embd:
                raise RuntimeError("no image chunk after mtmd_tokenize")
            return {"tokenize_ms": (t1 - t0) * 1e3, "encode_ms": enc_ms, "n_tokens": int(n_tok),
                    "n_chunks": len(embd), "embd": np.vstack(embd)}
        finally:
            mt.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        self.mt.mtmd_free(self.ctx)
        self.lc.llama_model_free(self.model)


# ----------------------------------------------------------------------------------------------------------------
# numpy replica of the CLIP + MLP projector in an mmproj file, in both token layouts


def load_mmproj(path: str) -> tuple[dict, dict]:
    import gguf

    r = gguf.GGUFReader(path)
    hp = {}
    for k, f in r.fields.items():
        if k.startswith("clip.") or k.startswith("general."):
            try:
                hp[k] = f.contents()
            except Exception:
                pass
    t = {}
    for x in r.tensors:
        a = np.array(x.data)
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        t[x.name] = a.astype(np.float32).reshape([int(d) for d in reversed(x.shape)])
    return hp, t


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def clip_features(hp: dict, t: dict, pix: np.ndarray, llama_cpp_layout: bool) -> np.ndarray:
    """pix: [3][S][S] normalized. transformers layout: CLS first, position row p for sequence row p, erf-GELU
    projector. llama.cpp layout (clip_graph_llava): patches then CLS, positions 0..N in sequence order, rows
    1..N kept (patch 0 dropped, CLS kept last), tanh-GELU projector. Blocks: up to clip.vision.feature_layer, or
    block_count - 1 without it (llama.cpp's LLaVA graph) / block_count (our reading of converter files)."""
    eps = float(hp.get("clip.vision.attention.layer_norm_epsilon", 1e-5))
    n_head = int(hp["clip.vision.attention.head_count"])
    ps = int(hp["clip.vision.patch_size"])
    w = t["v.patch_embd.weight"]  # [D][3][P][P]
    d = w.shape[0]
    s = pix.shape[-1]
    g = s // ps
    patches = pix.reshape(3, g, ps, g, ps).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * ps * ps)
    x = patches.astype(np.float64) @ w.reshape(d, -1).T.astype(np.float64)
    if "v.patch_embd.bias" in t:
        x = x + t["v.patch_embd.bias"]
    cls = t["v.class_embd"].reshape(1, d)
    seq = np.vstack([x, cls]) if llama_cpp_layout else np.vstack([cls, x])
    seq = seq + t["v.position_embd.weight"][: seq.shape[0]]
    seq = layer_norm(seq, t["v.pre_ln.weight"], t["v.pre_ln.bias"], eps)
    fl = hp.get("clip.vision.feature_layer")
    n_blocks = int(max(fl)) if fl else int(hp["clip.vision.block_count"]) - (1 if llama_cpp_layout else 0)
    act = (lambda v: v / (1.0 + np.exp(-1.702 * v))) if not hp.get("clip.use_gelu", False) else gelu_erf
    n, dh = seq.shape[0], d // n_head
    for i in range(n_blocks):
        p = f"v.blk.{i}."
        h = layer_norm(seq, t[p + "ln1.weight"], t[p + "ln1.bias"], eps)
        q = (h @ t[p + "attn_q.weight"].T + t[p + "attn_q.bias"]).reshape(n, n_head, dh).transpose(1, 0, 2)
        k = (h @ t[p + "attn_k.weight"].T + t[p + "attn_k.bias"]).reshape(n, n_head, dh).transpose(1, 0, 2)
        v = (h @ t[p + "attn_v.weight"].T + t[p + "attn_v.bias"]).reshape(n, n_head, dh).transpose(1, 0, 2)
        a = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(n, d)
        seq = seq + o @ t[p + "attn_out.weight"].T + t[p + "attn_out.bias"]
        h = layer_norm(seq, t[p + "ln2.weight"], t[p + "ln2.bias"], eps)
        # The legacy names are swapped (ffn_down holds fc1); decide by shape as clip.cpp does.
        up, down = ("ffn_down", "ffn_up") if t[p + "ffn_down.weight"].shape[1] == d else ("ffn_up", "ffn_down")
        h = act(h @ t[p + up + ".weight"].T + t[p + up + ".bias"])
        seq = seq + h @ t[p + down + ".weight"].T + t[p + down + ".bias"]
    f = seq[1:]
    y = f @ t["mm.0.weight"].T + t["mm.0.bias"]
    y = gelu_tanh(y) if llama_cpp_layout else gelu_erf(y)
    return (y @ t["mm.2.weight"].T + t["mm.2.bias"]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# vision part


def read_case(path: str) -> dict:
    c = {}
    for line in open(path, encoding="utf-8"):
        k, _, v = line.rstrip("\n").partition(" ")
        c[k] = v
    c["images"] = c["image"].split()
    c["input_ids"] = [int(x) for x in c["input_ids"].split()]
    c["n_image_tokens"] = [int(x) for x in c["n_image_tokens"].split()]
    g = [int(x) for x in c["grid"].split()]
    c["grids"] = list(zip(g[0::2], g[1::2]))
    c["greedy"] = [int(x) for x in c["greedy"].split()]
    c["greedy_margin"] = [float(x) for x in c["greedy_margin"].split()]
    c["logit_range"] = float(c["logit_range"])
    return c


def rel_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """max |a-b| over the range of b, mean |a-b| over the range of b, mean per-row cosine."""
    r = float(b.max() - b.min()) or 1.0
    d = np.abs(a.astype(np.float64) - b)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(d.max() / r), float(d.mean() / r), float(cos.mean())


def fmt_rel(t: tuple[float, float, float]) -> str:
    return f"max {t[0]:.2e} mean {t[1]:.2e} of range, cos {t[2]:.4f}"


def check_vision(threads: int, verbose: bool) -> dict:
    summary = {}
    for model in ("llava15-tiny", "llava16-tiny"):
        d = os.path.join(VLM_ROOT, "models", model)
        llm_path, mm_path = os.path.join(d, "llm-f32.gguf"), os.path.join(d, "mmproj-f32.gguf")
        hp, tens = load_mmproj(mm_path)
        size = int(hp["clip.vision.image_size"])
        mean = np.array(hp["clip.vision.image_mean"], dtype=np.float32).reshape(3, 1, 1)
        std = np.array(hp["clip.vision.image_std"], dtype=np.float32).reshape(3, 1, 1)
        n_per_tile = (size // int(hp["clip.vision.patch_size"])) ** 2
        print(f"\n== {model}: llama.cpp mtmd_init_from_file({os.path.relpath(mm_path, REPO)}, "
              f"llama_model_load_from_file({os.path.basename(llm_path)}))")
        mtmd = Mtmd(llm_path, mm_path, threads=threads, warmup=False, verbose=verbose)
        print(f"   loaded in {mtmd.load_ms:.0f} ms, vision {mtmd.vision}, n_embd {mtmd.n_embd}, "
              f"feature_layer {hp.get('clip.vision.feature_layer')}, block_count {hp['clip.vision.block_count']}, "
              f"aspect {hp.get('clip.vision.image_aspect_ratio')}, pinpoints "
              f"{hp.get('clip.vision.image_grid_pinpoints')}")
        lm = LlamaLM(llm_path, threads=threads, verbose=verbose)
        cdir = os.path.join(d, "cases")
        res = summary.setdefault(model, {"enc_vs_replica": 0.0, "ref_vs_golden": 0.0, "logits": 0.0,
                                         "greedy_equal": 0, "greedy_total": 0, "counts": []})
        for cf in sorted(x for x in os.listdir(cdir) if x.endswith(".txt")):
            name = cf[:-4]
            c = read_case(os.path.join(cdir, cf))
            n_img = sum(c["n_image_tokens"])
            feats = np.fromfile(os.path.join(cdir, name + ".features.f32"), dtype=np.float32).reshape(n_img, -1)
            pv = np.fromfile(os.path.join(cdir, name + ".pixel_values.f32"), dtype=np.float32).reshape(-1, 3, size,
                                                                                                      size)
            print(f"-- {name}: images {' '.join(c['images'])}, transformers image tokens {c['n_image_tokens']}, "
                  f"grid {c['grids']}")
            # 1. llama.cpp end to end from the image file (its own decode + preprocessing).
            off = 0
            for k, img in enumerate(c["images"]):
                bm = mtmd.bitmap_from_file(os.path.join(VLM_ROOT, "images", img))
                r = mtmd.encode(bm)
                mtmd.free_bitmap(bm)
                ref = feats[off: off + c["n_image_tokens"][k]]
                line = (f"   [1] {img}: llama.cpp {r['n_tokens']} image tokens in {r['n_chunks']} chunk(s) "
                        f"(transformers {ref.shape[0]})")
                res["counts"].append((name, img, r["n_tokens"], ref.shape[0]))
                if r["n_tokens"] == ref.shape[0]:
                    line += "; vs golden features: " + fmt_rel(rel_diff(r["embd"], ref))
                else:
                    # This llama.cpp puts the LLaVA 1.6 overview chunk LAST (mtmd.cpp: ov_img_first stays false
                    # for PROJECTOR_TYPE_MLP), transformers first; tiles are plain 16-token chunks in between.
                    line += ("; its last chunk (the overview) vs golden overview rows: "
                             + fmt_rel(rel_diff(r["embd"][-n_per_tile:], ref[:n_per_tile])))
                print(line)
                off += ref.shape[0]
            # 2. encoder alone on transformers' first tile of the first image (overview tile for 1.6).
            tile = np.clip(np.rint((pv[0] * std + mean) * 255.0), 0, 255).astype(np.uint8)
            back = (tile.astype(np.float32) / 255.0 - mean) / std
            assert np.abs(back - pv[0]).max() < 1e-5, "pixel_values are not RGB8 tiles"
            bm = mtmd.bitmap_from_rgb(tile.transpose(1, 2, 0))
            r = mtmd.encode(bm)
            mtmd.free_bitmap(bm)
            enc = r["embd"][:n_per_tile]  # a 1.6 file could add tiles; the first n_per_tile rows are the overview
            ours_ref = clip_features(hp, tens, pv[0], llama_cpp_layout=False)
            emu = clip_features(hp, tens, pv[0], llama_cpp_layout=True)
            gold_tile = feats[:n_per_tile]
            e_vs_emu = rel_diff(enc, emu)
            ref_vs_gold = rel_diff(ours_ref, gold_tile)
            res["enc_vs_replica"] = max(res["enc_vs_replica"], e_vs_emu[0])
            res["ref_vs_golden"] = max(res["ref_vs_golden"], ref_vs_gold[0])
            print(f"   [2] transformers' tile 0 ({size}x{size} RGB8) into llama.cpp: {r['n_tokens']} tokens")
            print(f"       llama.cpp vs golden features (tile 0):          {fmt_rel(rel_diff(enc, gold_tile))}")
            print(f"       llama.cpp vs replica of llama.cpp's layout:      {fmt_rel(e_vs_emu)}")
            print(f"       replica, transformers layout, vs golden:         {fmt_rel(ref_vs_gold)}")
            # Same replica, aligned: llama.cpp's rows 0..N-2 are patches 1..N-1 with shifted positions.
            # llama.cpp's row j is patch j+1 (position row j+1, where transformers uses j+2): same patch, shifted
            # position, so close to but not equal to golden row j+1.
            print(f"       llama.cpp rows 0..{n_per_tile - 2} vs golden rows 1..{n_per_tile - 1} (same patches): "
                  f"{fmt_rel(rel_diff(enc[:-1], gold_tile[1:]))}")
            # 3. LLM: llama.cpp's tokenizer on the prompt text (split at the markers, as mtmd does; BOS on the first
            # part only), then golden ids with transformers' features spliced in.
            parts = c["prompt_text"].replace("\\n", "\n").split("<image>")
            ids = []
            for k, part in enumerate(parts):
                if k:
                    ids.append(-1)
                ids += lm.tokenize(part, add_special=(k == 0)) if part else []
            if ids == c["input_ids"]:
                print(f"   [3] llama.cpp tokenizer on the prompt text: {len(ids)} ids, equal to transformers' input_ids")
            else:
                j = next((i for i, (x, y) in enumerate(zip(ids, c["input_ids"])) if x != y),
                         min(len(ids), len(c["input_ids"])))
                print(f"   [3] llama.cpp tokenizer on the prompt text: differs from transformers' input_ids at {j}: "
                      f"llama.cpp {ids[max(0, j - 2):j + 3]} vs {c['input_ids'][max(0, j - 2):j + 3]} (lengths "
                      f"{len(ids)}/{len(c['input_ids'])})")
            embs, off = [], 0
            for n in c["n_image_tokens"]:
                embs.append(feats[off: off + n])
                off += n
            logits = lm.run_prompt(c["input_ids"], embs)
            gold_logits = np.fromfile(os.path.join(cdir, name + ".logits.f32"), dtype=np.float32)
            rel = float(np.abs(logits - gold_logits).max() / c["logit_range"])
            greedy = lm.greedy(logits, len(c["greedy"]))
            n_eq = 0
            while n_eq < len(greedy) and greedy[n_eq] == c["greedy"][n_eq]:
                n_eq += 1
            res["logits"] = max(res["logits"], rel)
            res["greedy_equal"] += n_eq
            res["greedy_total"] += len(greedy)
            div = "" if n_eq == len(greedy) else (f" (first difference at {n_eq}: llama.cpp {greedy[n_eq]}, golden "
                                                  f"{c['greedy'][n_eq]}, golden margin {c['greedy_margin'][n_eq]:.3g})")
            print(f"   [3] llama.cpp LLM on golden ids + golden features: last logits max|d|/range {rel:.2e}; "
                  f"greedy {n_eq}/{len(greedy)} equal{div}")
        lm.close()
        mtmd.close()
    print("\nvision summary:")
    for m, r in summary.items():
        print(f"  {m}: llama.cpp encoder vs replica of its layout max {r['enc_vs_replica']:.2e} of range; replica "
              f"(transformers layout) vs golden {r['ref_vs_golden']:.2e}; LLM logits vs golden "
              f"{r['logits']:.2e}; greedy {r['greedy_equal']}/{r['greedy_total']} equal")
    return summary


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all", choices=("llm", "vision", "all"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    a = ap.parse_args(argv)
    lc = import_llama_cpp()
    print(f"llama-cpp-python {lc.__version__}; {lc.llama_print_system_info().decode().strip()}")
    if a.part in ("llm", "all"):
        check_llm(a.threads)
    if a.part in ("vision", "all"):
        check_vision(a.threads, a.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
