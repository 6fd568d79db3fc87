#!/usr/bin/env python3
"""Files made by llama.cpp's own converters from our golden checkpoints must load in vlmd and give our tokens.

    python3 tools/check_converter_compat.py LLAMACPP_DIR [--work DIR] [--build build] [--legacy-python PY]

LLAMACPP_DIR is a llama.cpp source tree, or at least these parts of one (llama.cpp code is never copied into
this repository):
    convert_hf_to_gguf.py, conversion/ (newer trees split the model classes out), gguf-py/
    tools/mtmd/legacy-models/llava_surgery_v2.py, convert_image_encoder_to_gguf.py
How to obtain it: `git clone https://github.com/ggml-org/llama.cpp`, or, without GitHub access, the sdist of the
llama-cpp-python version we test against, which vendors the whole tree:
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp    # -> /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp
The legacy CLIP converter needs transformers 4 (it uses CLIPVisionModel.vision_model, gone in transformers 5;
llama.cpp pins transformers==4.57.6). Give such a Python with --legacy-python, e.g.
    python3 -m venv --system-site-packages /tmp/lcpp-venv && /tmp/lcpp-venv/bin/pip install transformers==4.57.6

What it does (all under --work, default /tmp/vlm-converter-compat):
 1. Rebuilds the goldens with tools/make_llm_goldens.py / make_vlm_goldens.py into the work dir, keeping the HF
    checkpoints (--keep-checkpoints), and checks they equal the committed tests/data ones byte for byte.
 2. LLM: llama.cpp's convert_hf_to_gguf.py (--outtype f32 and f16) on the 4 tiny checkpoints. Diffs keys and
    tensors against our converter's files, runs both through vlmd's plugins (a small C harness built against
    build/lib/libvlm.so: greedy 32 tokens, no EOS stop) and through build/bin/vlm-run (text), compares.
 3. LLaVA 1.5 / 1.6: the checkpoint is first put in the layout a transformers-4 llava-hf checkpoint has on the Hub
    (vision keys `vision_tower.vision_model.*`, added tokens in added_tokens.json / added_tokens_decoder);
    LLM: convert_hf_to_gguf.py directly for 1.5 (it registers LlavaForConditionalGeneration), for 1.6 after
    exporting the language model as a MistralForCausalLM folder (llama.cpp's docs/multimodal/llava.md);
    mmproj: llava_surgery_v2.py -C, then the vision tower + projector in a folder with a CLIP vision config
    (docs/multimodal/llava.md, LLaVA 1.6 steps 3-5) and convert_image_encoder_to_gguf.py --clip-model-is-vision,
    in three variants: f16 (the default), --use-f32, and --use-f32 with vision_feature_layer in the config.
    Every golden case runs on our files and on theirs; for LLaVA 1.5 their file has no image_aspect_ratio, so
    vlmd pads (original LLaVA) where transformers' llava-hf processor crops: those cases are also compared with a
    transformers reference fed expand2square'd images.
Exit status 0 when every difference is one this header explains (see tools/README.md), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
LLM_MODELS = ["llama-mha", "llama-gqa", "llama-hd64", "mistral-swa"]
VLM_MODELS = ["llava15-tiny", "llava16-tiny"]
N_GEN = 32
# A greedy divergence is explained by numerics when the reference's top1-top2 margin at that step is under
# this fraction of the logit range (F16 weights: ~1e-3 of the range, see tools/README.md).
NUMERIC_MARGIN = 0.01

HARNESS_C = r"""
// Greedy run through vlmd's plugins: compat-greedy PLUGIN_DIR LLM MMPROJ|- N_GEN LOGITS_OUT PROMPT [IMAGE...]
// The prompt is used as given ('<image>' markers split it as vlm-run does; "\n" is a newline). No EOS stop.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vlm/backend.h"
#include "vlm/chat.h"
#include "vlm/gguf.h"
#include "vlm/image.h"
#include "vlm/plugin.h"
#include "vlm/vision.h"
#define MAX_IMAGES 8
static int die(const char *what, const struct vlm_diag *d) {
    fprintf(stderr, "compat-greedy: %s: %s\n", what, d ? d->msg : "");
    return 1;
}
static int32_t argmax2(const float *x, int32_t n, float *margin) {
    int32_t b = 0, s = -1;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > x[b]) { s = b; b = i; } else if (s < 0 || x[i] > x[s]) { s = i; }
    }
    *margin = s >= 0 ? x[b] - x[s] : 0.0f;
    return b;
}
int main(int argc, char **argv) {
    if (argc < 7) return die("usage: PLUGIN_DIR LLM MMPROJ|- N_GEN LOGITS_OUT PROMPT [IMAGE...]", NULL);
    const char *pdir = argv[1], *llm_path = argv[2], *mm_path = argv[3], *logits_out = argv[5];
    int n_gen = atoi(argv[4]), n_images = argc - 7;
    if (n_images > MAX_IMAGES) return die("too many images", NULL);
    char *prompt = malloc(strlen(argv[6]) + 1);
    size_t j = 0;
    for (const char *p = argv[6]; *p; p++) {
        if (p[0] == '\\' && p[1] == 'n') { prompt[j++] = '\n'; p++; } else { prompt[j++] = *p; }
    }
    prompt[j] = 0;
    struct vlm_diag diag = {0};
    struct vlm_gguf *g;
    struct vlm_gguf_str s;
    char arch[64];
    if (vlm_gguf_open(llm_path, &g, &diag)) return die("open llm", &diag);
    if (vlm_gguf_get_str(g, "general.architecture", &s, NULL)) return die("no general.architecture", NULL);
    snprintf(arch, sizeof arch, "%.*s", (int)s.len, s.ptr);
    vlm_gguf_close(g);
    struct vlm_plugin *plugin;
    if (vlm_plugin_open_for_arch(pdir, VLM_PLUGIN_KIND_LLM, arch, &plugin, &diag)) return die("llm plugin", &diag);
    struct vlm_backend *be;
    struct vlm_backend_cpu_params bp = {.n_threads = 2};
    if (vlm_backend_cpu_new(&bp, &be, &diag)) return die("backend", &diag);
    struct vlm_host host = {.abi_version = VLM_PLUGIN_ABI_VERSION, .backend = be};
    const struct vlm_llm_ops *ops = vlm_plugin_desc(plugin)->llm;
    struct vlm_llm_params lp = {.n_ctx = 1024, .kv_type = VLM_TYPE_F32};
    void *model;
    if (ops->load(&host, llm_path, &lp, &model, &diag)) return die("load llm", &diag);
    struct vlm_llm_info info;
    ops->info(model, &info);
    struct vlm_vision vis = {0};
    struct vlm_vision_embedding emb[MAX_IMAGES] = {{0}};
    if (n_images > 0 && vlm_vision_open(pdir, mm_path, &host, info.n_embd, &vis, &diag)) return die("open mmproj", &diag);
    for (int i = 0; i < n_images; i++) {
        struct vlm_image img = {0};
        if (vlm_image_load(argv[7 + i], NULL, &img, &diag)) return die("load image", &diag);
        if (vlm_vision_embed(vis.enc, vis.enc_model, vis.proj, vis.proj_model, &img, &emb[i], &diag))
            return die("embed image", &diag);
        vlm_image_free(&img);
    }
    const struct vlm_tokenizer *tok = ops->tokenizer(model);
    int32_t *ids;
    int64_t starts[MAX_IMAGES + 2];
    int n_chunks = vlm_chat_tokenize(tok, prompt, true, false, n_images > 0, &ids, starts, MAX_IMAGES + 1);
    if (n_chunks != n_images + 1) return die("prompt markers do not match the images", NULL);
    void *sess;
    if (ops->session_new(model, 0, &sess, &diag)) return die("session", &diag);
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits);
    printf("n_image_tokens");
    for (int i = 0; i < n_images; i++) printf(" %d", emb[i].n);
    printf("\ngrid");
    for (int i = 0; i < n_images; i++) printf(" %d %d", emb[i].grid_w, emb[i].grid_h);
    printf("\nprompt_ids");
    for (int c = 0; c < n_chunks; c++) {
        int32_t n = (int32_t)(starts[c + 1] - starts[c]);
        for (int32_t k = 0; k < n; k++) printf(" %d", ids[starts[c] + k]);
        if (n > 0) {
            struct vlm_llm_batch b = {.tokens = ids + starts[c], .n = n};
            if (ops->session_eval(sess, &b, logits, &diag)) return die("eval", &diag);
        }
        if (c < n_images) {
            printf(" -1");
            struct vlm_llm_batch b = {.embd = emb[c].embd, .n = emb[c].n};
            if (ops->session_eval(sess, &b, logits, &diag)) return die("eval image", &diag);
        }
    }
    FILE *f = fopen(logits_out, "wb");
    if (!f || fwrite(logits, sizeof *logits, (size_t)info.n_vocab, f) != (size_t)info.n_vocab || fclose(f))
        return die("write logits", NULL);
    int32_t *gen = malloc((size_t)n_gen * sizeof *gen);
    float *margin = malloc((size_t)n_gen * sizeof *margin);
    for (int i = 0; i < n_gen; i++) {
        gen[i] = argmax2(logits, info.n_vocab, &margin[i]);
        struct vlm_llm_batch b = {.tokens = &gen[i], .n = 1};
        if (i + 1 < n_gen && ops->session_eval(sess, &b, logits, &diag)) return die("eval", &diag);
    }
    printf("\ngreedy");
    for (int i = 0; i < n_gen; i++) printf(" %d", gen[i]);
    printf("\nmargin");
    for (int i = 0; i < n_gen; i++) printf(" %.6g", (double)margin[i]);
    printf("\n");
    ops->session_free(sess);
    for (int i = 0; i < n_images; i++) vlm_vision_embedding_free(&emb[i]);
    vlm_vision_close(&vis);
    ops->unload(model);
    vlm_plugin_close(plugin);
    vlm_backend_free(be);
    free(gen); free(margin); free(logits); free(ids); free(prompt);
    return 0;
}
"""


class Ctx:
    def __init__(self, args):
        self.lcpp = args.llamacpp.resolve()
        self.work = args.work.resolve()
        self.build = args.build.resolve()
        self.legacy_py = args.legacy_python
        self.plugins = self.build / "lib" / "vlmd" / "plugins"
        self.vlm_run = self.build / "bin" / "vlm-run"
        self.harness = self.work / "compat-greedy"
        self.report: list[str] = []
        self.unexplained: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.report.append(line)


def run(cmd, log: Path | None = None, env: dict | None = None, cwd: Path | None = None) -> str:
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=e, cwd=cwd)
    if log is not None:
        log.write_text(f"$ {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


# ---- GGUF differences -----------------------------------------------------------------------------------------

def gguf_summary(path: Path):
    import gguf
    r = gguf.GGUFReader(str(path))
    kv = {}
    for k, f in r.fields.items():
        if not k.startswith("GGUF."):
            kv[k] = f.contents()
    return kv, {t.name: t for t in r.tensors}


def gguf_diff(ours: Path, theirs: Path) -> list[str]:
    """Keys and tensors that differ, one line each (array keys: the first differing entries)."""
    import gguf
    ka, ta = gguf_summary(ours)
    kb, tb = gguf_summary(theirs)
    out = []
    for k in sorted(set(ka) | set(kb)):
        if k not in ka or k not in kb:
            v = ka.get(k, kb.get(k))
            out.append(f"key {k}: only in {'ours' if k in ka else 'theirs'} ({str(v)[:60]})")
        elif ka[k] != kb[k]:
            a, b = ka[k], kb[k]
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                idx = [i for i in range(len(a)) if a[i] != b[i]]
                out.append(f"key {k}: {len(idx)} entries differ, e.g. [{idx[0]}] ours {a[idx[0]]!r} theirs {b[idx[0]]!r}")
            else:
                out.append(f"key {k}: ours {str(a)[:60]!s} theirs {str(b)[:60]!s}")
    for n in sorted(set(ta) | set(tb)):
        if n not in ta or n not in tb:
            out.append(f"tensor {n}: only in {'ours' if n in ta else 'theirs'}")
            continue
        x, y = ta[n], tb[n]
        note = ""
        if x.tensor_type != y.tensor_type:
            note = f" type ours {x.tensor_type.name} theirs {y.tensor_type.name}"
        if list(x.shape) != list(y.shape):
            out.append(f"tensor {n}: shape ours {list(x.shape)} theirs {list(y.shape)}{note}")
            continue
        dx = gguf.quants.dequantize(x.data, x.tensor_type).astype(np.float64).ravel()
        dy = gguf.quants.dequantize(y.data, y.tensor_type).astype(np.float64).ravel()
        d = float(np.abs(dx - dy).max()) if dx.size else 0.0
        if d or note:
            rng = float(np.abs(dx).max()) or 1.0
            out.append(f"tensor {n}:{note} max|diff| {d:.3g} ({d / rng:.2g} of max|w|)")
    return out


# ---- running vlmd ---------------------------------------------------------------------------------------------

def build_harness(c: Ctx) -> None:
    src = c.work / "compat-greedy.c"
    src.write_text(HARNESS_C)
    run(["cc", "-std=c11", "-O2", "-I", ROOT / "include", src, "-o", c.harness, "-L", c.build / "lib", "-lvlm",
         f"-Wl,-rpath,{c.build / 'lib'}", "-lm"])


def greedy_vlmd(c: Ctx, llm: Path, prompt: str, mmproj: Path | None = None, images: list[Path] = ()) -> dict:
    lo = c.work / "logits.tmp"
    out = run([c.harness, c.plugins, llm, mmproj or "-", N_GEN, lo, prompt, *images])
    r = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        r[k] = v.split()
    return dict(ids=[int(x) for x in r["prompt_ids"]], gen=[int(x) for x in r["greedy"]],
                margin=[float(x) for x in r["margin"]], n_img=[int(x) for x in r["n_image_tokens"]],
                logits=np.fromfile(lo, dtype="<f4"))


def vlm_run_text(c: Ctx, llm: Path, prompt: str, mmproj: Path | None = None, images: list[Path] = ()) -> str:
    cmd = [c.vlm_run, "--model", llm, "-p", prompt.replace("\\n", "\n"), "-n", N_GEN, "--temp", 0, "-t", 2,
           "--plugin-dir", c.plugins]
    if mmproj:
        cmd += ["--mmproj", mmproj, "--chat-format", "none"]
        for im in images:
            cmd += ["--image", im]
    return run(cmd)


def first_diff(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def compare(c: Ctx, label: str, got: dict, ref_gen: list[int], ref_margin: list[float], ref_range: float,
            ref_name: str, ours_logits: np.ndarray | None = None) -> bool:
    """One report line; returns True when equal or when the first difference is at a step whose reference margin
    is under NUMERIC_MARGIN of the range."""
    k = first_diff(got["gen"], ref_gen)
    ld = ""
    if ours_logits is not None:
        ld = f"  last-prompt logits vs ours: max|d| {np.abs(got['logits'] - ours_logits).max() / ref_range:.1e} of range"
    if k is None:
        c.say(f"  {label:44s} == {ref_name} (32/32){ld}")
        return True
    rel = ref_margin[k] / ref_range
    ok = rel < NUMERIC_MARGIN
    c.say(f"  {label:44s} != {ref_name}: first differing step {k} ({got['gen'][k]} vs {ref_gen[k]}), "
          f"reference margin there {rel:.2%} of range{ld}")
    return ok


# ---- step 1: goldens + checkpoints ----------------------------------------------------------------------------

def make_goldens(c: Ctx) -> None:
    w = c.work
    run([sys.executable, TOOLS / "make_llm_goldens.py", "--out", w / "ours-llm", "--keep-checkpoints", w / "ckpt-llm"],
        log=w / "make_llm_goldens.log")
    run([sys.executable, TOOLS / "make_vlm_goldens.py", "--out", w / "ours-vlm", "--only", *VLM_MODELS,
         "--keep-checkpoints", w / "ckpt-vlm"], log=w / "make_vlm_goldens.log")
    same, diff = 0, []
    for n in LLM_MODELS:
        for f in ("model-f32.gguf", "model-f16.gguf", "golden.txt", "logits.f32"):
            a, b = w / "ours-llm" / n / f, ROOT / "tests/data/golden" / n / f
            if a.read_bytes() == b.read_bytes():
                same += 1
            else:
                diff.append(f"golden/{n}/{f}")
    for n in VLM_MODELS:
        base = w / "ours-vlm/models" / n
        for a in sorted(p for p in base.rglob("*") if p.is_file()):
            b = ROOT / "tests/data/vlm/models" / n / a.relative_to(base)
            if b.is_file() and a.read_bytes() == b.read_bytes():
                same += 1
            else:
                diff.append(str(b))
    c.say(f"goldens rebuilt in {w}: {same} files equal to the committed ones" +
          (f", DIFFERENT: {', '.join(diff)}" if diff else ""))
    if diff:
        c.unexplained.append("regenerated goldens differ from tests/data")


# ---- step 2: LLM ----------------------------------------------------------------------------------------------

def golden_txt(path: Path) -> dict:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


def transformers_no_window(ckpt: Path, prompt: list[int]) -> tuple[list[int], list[float]]:
    """transformers' greedy for the checkpoint with sliding_window=None (what a file without the key means)."""
    import torch
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, str(TOOLS))
    import make_llm_goldens as llm_g
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    m = AutoModelForCausalLM.from_pretrained(str(ckpt), sliding_window=None, attn_implementation="eager").eval()
    assert m.config.sliding_window is None
    return llm_g.greedy(m, prompt, N_GEN)


def check_llm(c: Ctx) -> None:
    c.say("\n## LLM: llama.cpp convert_hf_to_gguf.py vs tools/convert_hf_to_gguf.py")
    td = c.work / "theirs-llm"
    td.mkdir(exist_ok=True)
    for n in LLM_MODELS:
        g = golden_txt(c.work / "ours-llm" / n / "golden.txt")
        prompt, gold = g["prompt_text"], [int(x) for x in g["greedy"].split()]
        gold_m = [float(x) for x in g["greedy_margin"].split()]
        rng = float(g["logit_range"])
        c.say(f"\n{n}: prompt {prompt!r}")
        for ot in ("f32", "f16"):
            ours = c.work / "ours-llm" / n / f"model-{ot}.gguf"
            theirs = td / f"{n}-{ot}.gguf"
            run([sys.executable, c.lcpp / "convert_hf_to_gguf.py", c.work / "ckpt-llm" / n, "--outtype", ot,
                 "--outfile", theirs], log=td / f"{n}-{ot}.log")
            diffs = [d for d in gguf_diff(ours, theirs)
                     if not d.startswith(("key general.name:", "key general.size_label", "key general.type",
                                          "key tokenizer.ggml.add_sep_token"))]
            c.say(f"  {ot}: file differences beyond general.name/size_label/type and add_sep_token: "
                  + ("; ".join(diffs) if diffs else "none (all tensors bit-identical)"))
            o = greedy_vlmd(c, ours, prompt)
            t = greedy_vlmd(c, theirs, prompt)
            ok = o["ids"] == t["ids"]
            if not ok:
                c.say(f"  {ot}: PROMPT IDS DIFFER ours {o['ids']} theirs {t['ids']}")
            ok &= compare(c, f"{ot} theirs vs ours", t, o["gen"], o["margin"], rng, "ours", o["logits"])
            if ot == "f32" and not compare(c, "f32 ours vs transformers", o, gold, gold_m, rng, "golden"):
                c.unexplained.append(f"{n}: our own file differs from the golden")
            tr, trr = vlm_run_text(c, ours, prompt), vlm_run_text(c, theirs, prompt)
            c.say(f"  {ot}: vlm-run text output {'identical' if tr == trr else 'DIFFERENT'} ({len(tr)} bytes)")
            if n == "mistral-swa":
                # their file has no llama.attention.sliding_window: full attention, as llama.cpp runs it
                if ot == "f32":
                    ref, ref_m = transformers_no_window(c.work / "ckpt-llm" / n, o["ids"])
                    ok2 = compare(c, "f32 theirs vs transformers sliding_window=None", t, ref, ref_m, rng,
                                  "no-window ref")
                    if not ok2:
                        c.unexplained.append(f"{n} {ot}: their file does not reproduce the no-window reference")
                continue
            if not ok:
                c.unexplained.append(f"{n} {ot}")


# ---- step 3: LLaVA --------------------------------------------------------------------------------------------

def hub_layout(src: Path, dst: Path) -> None:
    """The checkpoint as a transformers-4 llava-hf checkpoint on the Hub has it (what llama.cpp's scripts expect):
    vision keys under vision_tower.vision_model., added tokens listed in added_tokens.json and
    tokenizer_config.json's added_tokens_decoder. Tensor values are not touched."""
    from safetensors.numpy import load_file, save_file
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    t = load_file(str(src / "model.safetensors"))
    t = {("vision_tower.vision_model." + k[len("vision_tower."):]
          if k.startswith("vision_tower.") and "vision_model." not in k else k): v for k, v in t.items()}
    save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tj = json.loads((src / "tokenizer.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    dec = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
           for a in tj["added_tokens"]}
    tc["added_tokens_decoder"] = dec
    tc.pop("extra_special_tokens", None)
    tc.update(add_bos_token=True, add_eos_token=False)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    (dst / "added_tokens.json").write_text(json.dumps({a["content"]: a["id"] for a in tj["added_tokens"]
                                                       if a["id"] >= 1000}, indent=2))


def export_text_model(hub: Path, dst: Path) -> None:
    """llama.cpp's docs/multimodal/llava.md: export only the LLM of a LLaVA-NeXT checkpoint for convert_hf_to_gguf."""
    from safetensors.numpy import load_file, save_file
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    cfg = json.loads((hub / "config.json").read_text())
    tc = dict(cfg["text_config"])
    tc["architectures"] = ["MistralForCausalLM" if tc["model_type"] == "mistral" else "LlamaForCausalLM"]
    tc.setdefault("torch_dtype", "float32")
    (dst / "config.json").write_text(json.dumps(tc, indent=2))
    t = load_file(str(hub / "model.safetensors"))
    lm = {}
    for k, v in t.items():
        if k.startswith("language_model.model."):
            lm["model." + k[len("language_model.model."):]] = v
        elif k == "language_model.lm_head.weight":
            lm["lm_head.weight"] = v
    save_file(lm, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        shutil.copyfile(hub / f, dst / f)


def legacy_mmproj(c: Ctx, hub: Path, out: Path, use_f32: bool, feature_layer: bool) -> Path:
    legacy = c.lcpp / "tools/mtmd/legacy-models"
    env = {"PYTHONPATH": str(c.lcpp / "gguf-py")}
    if not (hub / "llava.projector").exists():
        run([c.legacy_py, legacy / "llava_surgery_v2.py", "-C", "-m", hub], log=hub / "surgery.log", env=env)
    if out.exists():
        shutil.rmtree(out)
    vit = out / "vit"
    vit.mkdir(parents=True)
    shutil.copyfile(hub / "llava.clip", vit / "pytorch_model.bin")
    shutil.copyfile(hub / "llava.projector", vit / "llava.projector")
    cfg = json.loads((hub / "config.json").read_text())
    vc = dict(cfg["vision_config"], architectures=["CLIPVisionModel"], model_type="clip_vision_model")
    if "image_grid_pinpoints" in cfg:  # LLaVA 1.6 (the keys of the config_vit.json llava.md downloads)
        vc.update(image_grid_pinpoints=cfg["image_grid_pinpoints"], mm_patch_merge_type="spatial_unpad")
    if feature_layer:
        vc["vision_feature_layer"] = cfg["vision_feature_layer"]
    (vit / "config.json").write_text(json.dumps(vc, indent=2))
    cmd = [c.legacy_py, legacy / "convert_image_encoder_to_gguf.py", "-m", vit, "--llava-projector",
           vit / "llava.projector", "--output-dir", out, "--clip-model-is-vision"]
    run(cmd + (["--use-f32"] if use_f32 else []), log=out / "convert.log", env=env)
    return out / f"mmproj-model-{'f32' if use_f32 else 'f16'}.gguf"


def case_list(mdir: Path) -> list[tuple[str, dict]]:
    out = []
    for p in sorted((mdir / "cases").glob("*.txt")):
        out.append((p.stem, golden_txt(p)))
    return out


def pad_reference(c: Ctx, name: str, ckpt: Path, images: list[Path], prompt: str) -> tuple[list[int], list[float], float]:
    """transformers on expand2square'd images (original LLaVA's pad), the mode vlmd picks for an mmproj without
    clip.vision.image_aspect_ratio."""
    import torch
    from transformers import LlavaForConditionalGeneration
    sys.path.insert(0, str(TOOLS))
    import make_vlm_goldens as vg
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    key = ("model", name)
    if key not in _cache:
        _cache[key] = LlavaForConditionalGeneration.from_pretrained(str(ckpt), attn_implementation="eager").eval()
    spec = vg.MODELS[name]
    proc = vg.make_processor(spec, ckpt)
    color = tuple(int(255 * m) for m in vg.CLIP_MEAN)
    pil = [vg.expand2square(vg.load_rgb(p), color) for p in images]
    rec = vg.run_case(_cache[key], proc, spec, pil, prompt.replace("\\n", "\n"))
    return rec["gen"], rec["margins"], float(rec["logits"].max() - rec["logits"].min())


_cache: dict = {}


def check_llava(c: Ctx) -> None:
    c.say("\n## LLaVA: llama.cpp legacy route (llava_surgery_v2 + convert_image_encoder_to_gguf) + convert_hf_to_gguf")
    imgdir = c.work / "ours-vlm" / "images"
    for name in VLM_MODELS:
        ours_dir = c.work / "ours-vlm/models" / name
        td = c.work / "theirs-vlm" / name
        td.mkdir(parents=True, exist_ok=True)
        hub = td / "hub"
        hub_layout(c.work / "ckpt-vlm" / name, hub)
        is16 = "pinpoints" in json.dumps(json.loads((hub / "config.json").read_text()))
        llm_src = hub
        if is16:  # LlavaNextForConditionalGeneration is not a convert_hf_to_gguf.py text model
            llm_src = td / "llm-export"
            export_text_model(hub, llm_src)
        llms = {}
        for ot in ("f32", "f16"):
            llms[ot] = td / f"llm-{ot}.gguf"
            run([sys.executable, c.lcpp / "convert_hf_to_gguf.py", llm_src, "--outtype", ot, "--outfile", llms[ot]],
                log=td / f"llm-{ot}.log")
        variants = {
            "f16 (default)": (legacy_mmproj(c, hub, td / "mm-f16", False, False), llms["f16"]),
            "--use-f32": (legacy_mmproj(c, hub, td / "mm-f32", True, False), llms["f32"]),
            "--use-f32 +vision_feature_layer": (legacy_mmproj(c, hub, td / "mm-f32-fl", True, True), llms["f32"]),
        }
        c.say(f"\n{name}: LLM from {'an exported MistralForCausalLM folder' if is16 else 'the Llava checkpoint directly'}")
        diffs = [d for d in gguf_diff(ours_dir / "llm-f32.gguf", llms["f32"])
                 if not d.startswith(("key general.name:", "key general.size_label", "key general.type",
                                      "key tokenizer.ggml.add_sep_token"))]
        c.say("  LLM f32 file differences beyond general.name/size_label/type, add_sep_token: "
              + ("; ".join(diffs) if diffs else "none (all tensors bit-identical)"))
        for vname, (mm, _) in variants.items():
            c.say(f"  mmproj {vname} vs ours: " + "; ".join(gguf_diff(ours_dir / "mmproj-f32.gguf", mm)))
        for case, g in case_list(ours_dir):
            imgs = [imgdir / n for n in g["image"].split()]
            prompt = g["prompt_text"]
            gold = [int(x) for x in g["greedy"].split()]
            gold_m = [float(x) for x in g["greedy_margin"].split()]
            rng = float(g["logit_range"])
            o = greedy_vlmd(c, ours_dir / "llm-f32.gguf", prompt, ours_dir / "mmproj-f32.gguf", imgs)
            c.say(f" case {case} ({' '.join(g['image'].split())}): ours n_image_tokens {o['n_img']}")
            if not compare(c, "ours vs transformers", o, gold, gold_m, rng, "golden"):
                c.unexplained.append(f"{name}/{case}: our own files differ from the golden")
            square = all(_size(p)[0] == _size(p)[1] for p in imgs)
            pad_ref = None
            if not is16 and not square:
                pad_ref = pad_reference(c, name, c.work / "ckpt-vlm" / name, imgs, prompt)
            for vname, (mm, llm) in variants.items():
                t = greedy_vlmd(c, llm, prompt, mm, imgs)
                if t["ids"] != o["ids"] or t["n_img"] != o["n_img"]:
                    c.say(f"  {vname}: PROMPT LAYOUT DIFFERS: n_image_tokens {t['n_img']} vs {o['n_img']}")
                    c.unexplained.append(f"{name}/{case} {vname}: prompt layout")
                    continue
                if pad_ref is None:
                    ok = compare(c, f"theirs {vname}", t, o["gen"], o["margin"], rng, "ours", o["logits"])
                else:  # their 1.5 file means pad; ours says crop (llava-hf's processor)
                    compare(c, f"theirs {vname}", t, o["gen"], o["margin"], rng, "ours (crop)")
                    ok = compare(c, f"theirs {vname}", t, pad_ref[0], pad_ref[1], pad_ref[2], "transformers pad-ref")
                if not ok:
                    c.unexplained.append(f"{name}/{case} {vname}")
        # the command-line runner loads their pair too
        case, g = case_list(ours_dir)[0]
        imgs = [imgdir / n for n in g["image"].split()]
        mm, llm = variants["--use-f32"]
        txt = vlm_run_text(c, llm, g["prompt_text"], mm, imgs)
        c.say(f"  vlm-run on their --use-f32 pair, case {case}: ran, {len(txt)} bytes of text")


def _size(p: Path) -> tuple[int, int]:
    from PIL import Image
    with Image.open(p) as im:
        return im.size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llamacpp", type=Path, help="llama.cpp tree (see the header for what it must hold)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vlm-converter-compat"))
    ap.add_argument("--build", type=Path, default=ROOT / "build", help="vlmd build dir (libvlm.so, plugins, vlm-run)")
    ap.add_argument("--legacy-python", default=sys.executable,
                    help="Python with transformers 4.x, torch, safetensors for the legacy CLIP scripts")
    ap.add_argument("--skip-goldens", action="store_true", help="reuse the goldens/checkpoints already in --work")
    args = ap.parse_args()
    for f in ("convert_hf_to_gguf.py", "gguf-py", "tools/mtmd/legacy-models/llava_surgery_v2.py",
              "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py"):
        if not (args.llamacpp / f).exists():
            print(f"{args.llamacpp / f}: missing (see the header of {Path(__file__).name})", file=sys.stderr)
            return 2
    v = subprocess.run([args.legacy_python, "-c", "import transformers; print(transformers.__version__)"],
                       capture_output=True, text=True).stdout.strip()
    if not v.startswith("4."):
        print(f"--legacy-python {args.legacy_python} has transformers {v or '?'}; the legacy CLIP converter needs 4.x "
              "(see the header)", file=sys.stderr)
        return 2
    c = Ctx(args)
    c.work.mkdir(parents=True, exist_ok=True)
    c.say(f"llama.cpp tree: {c.lcpp}; legacy Python: {args.legacy_python} (transformers {v}); vlmd build: {c.build}")
    if not args.skip_goldens:
        make_goldens(c)
    build_harness(c)
    check_llm(c)
    check_llava(c)
    c.say("\n" + ("all differences explained" if not c.unexplained else "UNEXPLAINED: " + "; ".join(c.unexplained)))
    (c.work / "report.txt").write_text("\n".join(c.report) + "\n")
    return 1 if c.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
