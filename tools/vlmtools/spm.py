"""Reference SentencePiece-BPE tokenizer, following llama.cpp's `llm_tokenizer_spm` (docs §4.2).

Used by make_llm_goldens.py to check that the golden prompt ids (from transformers) are what a
llama.cpp-compatible tokenizer produces from the GGUF vocabulary. No special-token parsing: the
golden prompts are plain text.
"""

from __future__ import annotations

import heapq

TOKEN_BYTE = 6


class SpmTokenizer:
    def __init__(self, tokens: list[str], scores: list[float], types: list[int], bos: int = 1,
                 add_bos: bool = True, add_space_prefix: bool = True):
        self.tokens = tokens
        self.scores = scores
        self.index = {t: i for i, t in enumerate(tokens)}
        self.byte_ids = {}
        for i, (t, ty) in enumerate(zip(tokens, types)):
            if ty == TOKEN_BYTE:
                self.byte_ids[int(t[3:5], 16)] = i
        self.bos = bos
        self.add_bos = add_bos
        self.add_space_prefix = add_space_prefix

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        out = [self.bos] if add_special and self.add_bos else []
        if not text:
            return out
        if self.add_space_prefix:
            text = " " + text
        text = text.replace(" ", "\u2581")
        syms = list(text)  # one symbol per code point
        prev = list(range(-1, len(syms) - 1))
        nxt = list(range(1, len(syms) + 1))
        nxt[-1] = -1
        alive = [True] * len(syms)
        rev: dict[str, tuple[str, str]] = {}
        heap: list[tuple[float, int, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = syms[left] + syms[right]
            tid = self.index.get(s)
            if tid is None:
                return
            # max-score first, ties to the leftmost pair
            heapq.heappush(heap, (-self.scores[tid], left, right, len(s), s))
            rev[s] = (syms[left], syms[right])

        for i in range(len(syms) - 1):
            push(i, i + 1)
        while heap:
            _, left, right, size, s = heapq.heappop(heap)
            if not alive[left] or not alive[right] or len(syms[left]) + len(syms[right]) != size:
                continue
            if nxt[left] != right:
                continue
            syms[left] = s
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        def emit(s: str) -> None:
            tid = self.index.get(s)
            if tid is not None:
                out.append(tid)
            elif s in rev:
                emit(rev[s][0])
                emit(rev[s][1])
            else:
                for b in s.encode("utf-8"):
                    out.append(self.byte_ids[b])

        i = 0
        while i != -1 and i < len(syms):
            emit(syms[i])
            i = nxt[i]
        return out
