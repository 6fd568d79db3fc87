#!/usr/bin/env python3
"""Side-by-side LLM throughput: vlm-run against llama.cpp (through llama-cpp-python), same machine, same files.

For each model file: prefill of a fixed prompt of exactly P tokens (default 128, BOS included) and greedy decode
of G tokens (default 64) right after it. The two engines alternate (ours, theirs, ours, theirs, ...) for N
repeats after one untimed warm-up each; medians are reported, with the ratio ours/theirs (> 1: we are faster).

llama.cpp timings are llama.cpp's own (llama_perf_context: t_p_eval_ms for the prompt batch, t_eval_ms for the
single-token decodes), i.e. without Python overhead; wall-clock times around the calls are kept in the JSON too.
vlm-run timings are the ones it prints in its stats line (see parse_vlm_stats).

Usage:
  bench/bench_llm.py [MODEL.gguf ...] [--vlm-run build/bin/vlm-run] [--repeats 5] [--threads 2]
                     [--engines ours,llama.cpp] [--json out.json]
Without MODEL arguments the models made by tools/make_bench_model.py in ~/.cache/vlmd-bench are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/vlmd-bench"))
DEFAULT_TYPES = ("f16", "q8_0", "q4_0")

# Plain English, long enough for 128 tokens; made into an exact-length prompt by build_prompt().
PROMPT_SOURCE = (
    "The history of the lighthouse is a story of engineering, weather and patience. Early towers burned wood "
    "or coal in open braziers, and their light was weak, smoky and easily lost in rain. In the eighteenth "
    "century oil lamps with polished reflectors made the beam far stronger, and later the Fresnel lens, built "
    "from rings of glass prisms, bent almost all of the light into a narrow horizontal band that sailors could "
    "see from more than twenty miles away. Keepers lived at the stations with their families, trimming wicks, "
    "cleaning glass and winding the clockwork that turned the lens through the night. Storms could cut them "
    "off for weeks, so every station kept stores of food, fuel and spare parts. Electric lamps arrived at the "
    "end of the nineteenth century, and automation slowly removed the need for resident keepers. Today most "
    "lights run unattended, watched by remote sensors, while satellite navigation has made them less vital "
    "than before. Yet many sailors still feel relief when a familiar flash appears on the horizon at night."
)


# ----------------------------------------------------------------------------------------------------------------
# vlm-run side


def vlm_run_command(binary: str, model: str, prompt: str, n_gen: int, threads: int, n_ctx: int,
                    extra: list[str]) -> list[str]:
    """Command line for one vlm-run measurement; adapt here if vlm-run's flags change."""
    return [binary, "--model", model, "-p", prompt, "-n", str(n_gen), "-t", str(threads), "-c", str(n_ctx),
            "--temp", "0", "--json-stats", *extra]


def parse_vlm_stats(text: str) -> dict | None:
    """Last JSON object in vlm-run's output that has the timing keys, e.g.
    {"prompt_tokens":128,"prefill_ms":812.5,"gen_tokens":64,"decode_evals":63,"decode_ms":2101.3,...};
    None if there is none. decode_n is the number of single-token forward passes that decode_ms covers:
    decode_evals when given (the first generated token comes from the prefill's logits), else gen_tokens.
    Also accepts key=value lines (prompt_tokens=128 prefill_ms=812.5 ...) in case --stats prints that form."""
    keys = ("prompt_tokens", "prefill_ms", "gen_tokens", "decode_ms")
    found = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and all(k in obj for k in keys):
                found = obj
            continue
        kv = dict(re.findall(r"(\w+)\s*[=:]\s*([0-9.eE+-]+)", line))
        if all(k in kv for k in keys):
            found = {k: float(v) for k, v in kv.items()}
    if found is None:
        return None
    out = {"prompt_tokens": int(found["prompt_tokens"]), "prefill_ms": float(found["prefill_ms"]),
           "gen_tokens": int(found["gen_tokens"]), "decode_ms": float(found["decode_ms"]),
           "decode_n": int(found.get("decode_evals", found["gen_tokens"]))}
    for k in ("stop", "threads"):
        if k in found:
            out[k] = found[k]
    return out


def run_ours(binary: str, model: str, prompt: str, n_gen: int, threads: int, n_ctx: int, extra: list[str]) -> dict:
    cmd = vlm_run_command(binary, model, prompt, n_gen, threads, n_ctx, extra)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    st = parse_vlm_stats(p.stderr) or parse_vlm_stats(p.stdout)
    if p.returncode != 0 or st is None:
        tail = (p.stderr or p.stdout)[-1500:]
        raise RuntimeError(f"vlm-run failed (rc {p.returncode}, stats {'found' if st else 'missing'}):\n"
                           f"  {shlex.join(cmd[:3])} ...\n{tail}")
    st["process_wall_s"] = wall
    st["text"] = p.stdout.strip("\n")
    return st


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp side


class LlamaCpp:
    def __init__(self, model: str, threads: int, n_ctx: int, n_batch: int):
        try:
            import llama_cpp
        except ImportError:
            raise SystemExit("llama_cpp is not installed: see bench/README.md (it also tokenizes the prompt)")

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.ctx = self.llm.ctx
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def detokenize(self, toks: list[int]) -> str:
        return self.llm.detokenize(toks).decode("utf-8", errors="replace")

    def _perf(self):
        return self.lc.llama_perf_context(self.ctx)

    def run(self, prompt_tokens: list[int], n_gen: int) -> dict:
        import numpy as np

        llm = self.llm
        llm.reset()  # eval() then drops every KV cell past n_tokens = 0
        self.lc.llama_perf_context_reset(self.ctx)
        t0 = time.perf_counter()
        llm.eval(prompt_tokens)
        # llama.cpp books a batch's time into its perf counters only at the next synchronize.
        self.lc.llama_synchronize(self.ctx)
        t1 = time.perf_counter()
        pf = self._perf()
        prefill = {"ms": pf.t_p_eval_ms, "n": pf.n_p_eval, "wall_ms": (t1 - t0) * 1e3}

        self.lc.llama_perf_context_reset(self.ctx)
        gen = []
        t0 = time.perf_counter()
        for _ in range(n_gen):
            # Llama.eval() keeps no logits unless logits_all, so read the last row from the context directly.
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            tok = int(np.argmax(logits))
            gen.append(tok)
            llm.eval([tok])  # EOS is ignored on purpose: every run decodes exactly n_gen tokens
        self.lc.llama_synchronize(self.ctx)
        t1 = time.perf_counter()
        pd = self._perf()
        return {"prompt_tokens": len(prompt_tokens), "prefill_ms": prefill["ms"], "prefill_n": prefill["n"],
                "prefill_wall_ms": prefill["wall_ms"], "gen_tokens": n_gen, "decode_ms": pd.t_eval_ms,
                "decode_n": pd.n_eval, "decode_wall_ms": (t1 - t0) * 1e3, "gen_ids": gen,
                "text": self.detokenize(gen)}

    def close(self):
        self.llm.close()


def build_prompt(ll: LlamaCpp, n_tokens: int) -> tuple[str, list[int]]:
    """Text whose tokenization (BOS included) is exactly n_tokens ids, and those ids. Words are added while they
    fit; " a" (one token in this vocabulary) fills the rest."""
    words = PROMPT_SOURCE.split()
    text = ""
    for w in words:
        cand = (text + " " + w) if text else w
        if len(ll.tokenize(cand)) > n_tokens:
            break
        text = cand
    while len(ll.tokenize(text)) < n_tokens:
        text += " a"
    toks = ll.tokenize(text)
    if len(toks) != n_tokens:
        raise SystemExit(f"could not build a {n_tokens}-token prompt (got {len(toks)})")
    return text, toks


# ----------------------------------------------------------------------------------------------------------------
# report


def machine_info(threads: int) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "threads_used": threads, "python": platform.python_version(), "date": dt.date.today().isoformat()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
        fam = re.search(r"^CPU family:\s*(\d+)", out, re.M)
        if fam:
            info["cpu_family"] = int(fam.group(1))
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception as e:  # report without the peer rather than not at all
        info["llama_cpp_python"] = f"unavailable: {e}"
    return info


class ForeignLoad:
    """CPU time used by other processes while a measurement runs, in CPUs (0 = machine otherwise idle): the
    machine is shared, and a busy neighbour halves a 2-thread figure. Busy jiffies from /proc/stat minus this
    process's and its children's CPU time."""

    def __init__(self):
        self.ok = os.path.exists("/proc/stat")

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        if self.ok:
            self.b0, self.o0, self.t0 = self._busy_s(), self._own_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.ok:
            el = time.perf_counter() - self.t0
            self.cpus = max(0.0, (self._busy_s() - self.b0) - (self._own_s() - self.o0)) / el if el > 0 else 0.0
        else:
            self.cpus = float("nan")
        return False


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait (up to max_wait seconds) until other processes use at most threshold CPUs over a 1 s sample;
    returns the seconds waited."""
    t0 = time.perf_counter()
    if threshold <= 0 or not os.path.exists("/proc/stat"):
        return 0.0
    while time.perf_counter() - t0 < max_wait:
        with ForeignLoad() as load:
            time.sleep(1.0)
        if load.cpus <= threshold:
            break
    return time.perf_counter() - t0


def rate(n: float, ms: float) -> float:
    return n / ms * 1e3 if ms > 0 else float("nan")


def summarize(runs: list[dict]) -> dict:
    if not runs:
        return {}
    pf = [rate(r["prompt_tokens"], r["prefill_ms"]) for r in runs]
    dc = [rate(r["decode_n"], r["decode_ms"]) for r in runs]
    return {"prefill_tok_s": statistics.median(pf), "decode_tok_s": statistics.median(dc),
            "prefill_tok_s_all": pf, "decode_tok_s_all": dc,
            "prompt_tokens": runs[0]["prompt_tokens"], "gen_tokens": runs[0]["gen_tokens"],
            "foreign_cpus_median": statistics.median(r.get("foreign_cpus", float("nan")) for r in runs)}


def fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def worst_load(res: dict) -> float | None:
    loads = [r.get("foreign_cpus", 0.0) for eng in ("ours", "llama.cpp") for r in res.get(eng, {}).get("runs", [])]
    return max(loads) if loads else None


def markdown(results: list[dict], info: dict) -> str:
    lines = [f"Machine: {info.get('cpu')} ({info.get('logical_cpus')} logical CPUs), threads used: "
             f"{info['threads_used']}; llama-cpp-python {info.get('llama_cpp_python')}; {info['date']}", "",
             "| model | size MiB | llama.cpp prefill t/s | ours prefill t/s | ratio | llama.cpp decode t/s "
             "| ours decode t/s | ratio | other load (CPUs, worst run) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        th, us = r.get("llama.cpp", {}), r.get("ours", {})

        def ratio(key):
            if th.get(key) and us.get(key):
                return us[key] / th[key]
            return None

        lines.append(f"| {r['model_name']} | {r['size_mib']:.0f} | {fmt(th.get('prefill_tok_s'))} | "
                     f"{fmt(us.get('prefill_tok_s'))} | {fmt(ratio('prefill_tok_s'))} | "
                     f"{fmt(th.get('decode_tok_s'))} | {fmt(us.get('decode_tok_s'))} | {fmt(ratio('decode_tok_s'))} | "
                     f"{fmt(worst_load(r))} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="GGUF files (default: tinyllama-rand-{f16,q8_0,q4_0}.gguf in cache)")
    ap.add_argument("--vlm-run", default=str(REPO / "build" / "bin" / "vlm-run"))
    ap.add_argument("--vlm-args", default="", help="extra arguments for vlm-run (one shell-quoted string)")
    ap.add_argument("--engines", default="ours,llama.cpp", help="comma list: ours, llama.cpp")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--quiet-cpus", type=float, default=0.3,
                    help="before each run wait until other processes use at most this many CPUs, and redo a run "
                         "during which they used more (0: never wait)")
    ap.add_argument("--max-wait", type=float, default=120, help="seconds to wait for quiet before each run")
    ap.add_argument("--retries", type=int, default=2, help="redos of a run disturbed by other processes")
    ap.add_argument("--json", default=str(DEFAULT_CACHE / "bench-llm.json"),
                    help="where to write the full results")
    a = ap.parse_args(argv)

    engines = {e.strip() for e in a.engines.split(",") if e.strip()}
    if not engines <= {"ours", "llama.cpp"}:
        ap.error(f"unknown engine in {a.engines!r}")
    if "ours" in engines and not os.access(a.vlm_run, os.X_OK):
        print(f"note: {a.vlm_run} not found or not executable: measuring llama.cpp only", file=sys.stderr)
        engines.discard("ours")
    models = a.models or [str(DEFAULT_CACHE / f"tinyllama-rand-{t}.gguf") for t in DEFAULT_TYPES]
    missing = [m for m in models if not os.path.exists(m)]
    if missing:
        ap.error("missing model files (make them with tools/make_bench_model.py): " + ", ".join(missing))
    extra = shlex.split(a.vlm_args)

    info = machine_info(a.threads)
    results = []
    for model in models:
        name = Path(model).name
        print(f"== {name}", file=sys.stderr, flush=True)
        # llama-cpp-python is also the reference tokenizer for the prompt, so it is loaded even when only our
        # engine is timed.
        ll = LlamaCpp(model, a.threads, a.n_ctx, a.n_batch)
        text, toks = build_prompt(ll, a.prompt_tokens)
        runs: dict[str, list[dict]] = {"ours": [], "llama.cpp": []}
        order = [e for e in ("ours", "llama.cpp") if e in engines]
        for rep in range(-1, a.repeats):  # rep -1: untimed warm-up (page cache, repacking, CPU clocks)
            for eng in order:
                r = None
                for attempt in range(1 + a.retries):
                    waited = wait_quiet(a.quiet_cpus, a.max_wait)
                    with ForeignLoad() as load:
                        if eng == "ours":
                            cand = run_ours(a.vlm_run, model, text, a.gen_tokens, a.threads, a.n_ctx, extra)
                        else:
                            cand = ll.run(toks, a.gen_tokens)
                    cand["foreign_cpus"], cand["waited_s"], cand["attempt"] = load.cpus, waited, attempt
                    if r is None or cand["foreign_cpus"] < r["foreign_cpus"]:
                        r = cand
                    if load.cpus <= a.quiet_cpus or rep < 0:
                        break
                if eng == "ours" and r["prompt_tokens"] != a.prompt_tokens:
                    print(f"warning: vlm-run saw {r['prompt_tokens']} prompt tokens, expected "
                          f"{a.prompt_tokens}", file=sys.stderr)
                if rep >= 0:
                    runs[eng].append(r)
                print(f"  {'warmup' if rep < 0 else f'rep {rep}'} {eng}: prefill "
                      f"{rate(r['prompt_tokens'], r['prefill_ms']):.2f} t/s, decode "
                      f"{rate(r['decode_n'], r['decode_ms']):.2f} t/s, other processes "
                      f"{load.cpus:.2f} CPUs", file=sys.stderr, flush=True)
        ll.close()
        res = {"model": model, "model_name": name, "size_mib": os.path.getsize(model) / 2**20,
               "prompt_text": text, "prompt_ids": toks}
        for eng in order:
            res[eng] = summarize(runs[eng])
            res[eng]["runs"] = runs[eng]
        if runs["ours"] and runs["llama.cpp"]:
            # Same weights, both greedy: the texts should agree for a while (random weights give flat logits, so
            # an early divergence is a hint, not proof, of a numerical difference).
            ours_t, theirs_t = runs["ours"][0]["text"], runs["llama.cpp"][0]["text"]
            n = 0
            while n < min(len(ours_t), len(theirs_t)) and ours_t[n] == theirs_t[n]:
                n += 1
            res["greedy_text_common_prefix_chars"] = n
            print(f"  greedy texts agree on the first {n} chars (ours {len(ours_t)}, llama.cpp {len(theirs_t)})",
                  file=sys.stderr)
        results.append(res)

    doc = {"machine": info, "settings": {k: v for k, v in vars(a).items() if k != "models"},
           "results": results}
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
    print(markdown(results, info))
    print(f"\n(full results: {a.json})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
