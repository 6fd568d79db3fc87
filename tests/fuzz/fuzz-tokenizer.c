// libFuzzer entry point for the tokenizer (plugins/sdk/tokenizer.c) with a real vocabulary: the llama SPM vocab of
// tests/data/vocab (32000 tokens, byte fallback), loaded once.
//
// Input: first byte = flags, the rest = text (or, with bit 3, a sequence of token ids: little-endian uint16 each,
// taken modulo the vocabulary size). Flags: bit 0 add_special, bit 1 parse_special, bit 2 render_special.
// Oracles, each an abort():
//   - tokenize succeeds on any bytes; asking with no room, exact room and half the room gives the same count,
//     and a short buffer gets the same leading ids; every id is in range; BOS first when asked for;
//   - detokenize reports the same length with no room, exact room and one byte short;
//   - round trip: text that is valid UTF-8 without U+2581, tokenized with no special tokens, detokenizes to itself;
//   - the streaming detokenizer's output (pushes + flush) is always valid UTF-8, never longer than the room given,
//     and equals detokenize's whenever that one is valid UTF-8 (no BOS in front);
//   - every token's piece has the length vlm_token_to_piece reports.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/gguf.h"
#include "vlm/log.h"
#include "vlm/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TEXT 4096
#define MAX_IDS (MAX_TEXT + 8)
#define STREAM_CAP 512 // what tokenizer.h says is always enough for one push

static struct vlm_tokenizer *tok;
static bool has_user_defined; // such tokens match inside plain text and break the simple round trip

// Says which oracle failed (inlining hides the line from the stack trace).
static void fail(int line, const char *what) {
    fprintf(stderr, "fuzz-tokenizer.c:%d: check failed: %s\n", line, what);
    abort();
}
#define check(ok) ((ok) ? (void)0 : fail(__LINE__, #ok))

static void setup(void) {
    vlm_log_set_level(VLM_LOG_ERROR);
    struct vlm_gguf *g = NULL;
    check(vlm_gguf_open(VLM_TEST_DATA_DIR "/vocab/ggml-vocab-llama-spm.gguf", &g, NULL) == 0);
    check(vlm_tokenizer_new(g, &tok, NULL) == 0);
    vlm_gguf_close(g);
    for (int32_t i = 0; i < vlm_tokenizer_n_vocab(tok); i++) {
        has_user_defined |= vlm_tokenizer_token_type(tok, i) == VLM_TOKEN_TYPE_USER_DEFINED;
    }
}

// RFC 3629 UTF-8 (no overlongs, surrogates, or code points above U+10FFFF). Unlike vlm_proto_utf8_valid, NUL is
// allowed: a byte token <0x00> decodes to it.
static bool utf8_valid(const void *buf, size_t n) {
    const uint8_t *p = buf;
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (n - i <= k || p[i + 1] < lo || p[i + 1] > hi) {
            return false;
        }
        for (size_t j = 2; j <= k; j++) {
            if (p[i + j] < 0x80 || p[i + j] > 0xBF) {
                return false;
            }
        }
        i += k + 1;
    }
    return true;
}

static bool has_sp_mark(const uint8_t *p, size_t n) {
    for (size_t i = 0; i + 2 < n; i++) {
        if (p[i] == 0xe2 && p[i + 1] == 0x96 && p[i + 2] == 0x81) {
            return true;
        }
    }
    return false;
}

static int32_t ids[MAX_IDS], ids2[MAX_IDS];
static char text_out[16 * MAX_IDS + 64], stream_out[16 * MAX_IDS + 64 + STREAM_CAP];

// Checks detokenize's length reporting and the streaming detokenizer against it; returns detokenize's length.
static int64_t check_detok(const int32_t *v, int64_t n, bool remove_special, bool render_special) {
    int64_t need = vlm_detokenize(tok, v, n, remove_special, render_special, NULL, 0);
    check(need >= 0 && need < (int64_t)sizeof text_out);
    check(vlm_detokenize(tok, v, n, remove_special, render_special, text_out, need) == need);
    if (need > 0) {
        char small[1];
        check(vlm_detokenize(tok, v, n, remove_special, render_special, small, 0) == need);
        check(vlm_detokenize(tok, v, n, remove_special, render_special, text_out, need - 1) == need);
    }
    check(vlm_detokenize(tok, v, n, remove_special, render_special, text_out, need + 1) == need &&
          text_out[need] == 0);

    struct vlm_detok_stream s;
    vlm_detok_stream_init(&s, tok, true, render_special);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t k = vlm_detok_stream_push(&s, v[i], stream_out + m, STREAM_CAP);
        check(k >= 0 && k <= STREAM_CAP);
        m += k;
    }
    int32_t k = vlm_detok_stream_flush(&s, stream_out + m, STREAM_CAP);
    check(k >= 0 && k <= STREAM_CAP);
    m += k;
    check(utf8_valid(stream_out, (size_t)m));
    const bool bos_first = n > 0 && v[0] == vlm_tokenizer_bos(tok);
    if (!bos_first && !remove_special && utf8_valid(text_out, (size_t)need)) {
        check(m == need && memcmp(stream_out, text_out, (size_t)need) == 0);
    }
    return need;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) {
        setup();
    }
    if (size < 1) {
        return 0;
    }
    const uint8_t flags = data[0];
    const bool add_special = flags & 1, parse_special = flags & 2, render_special = flags & 4;
    data++;
    size--;
    const int32_t n_vocab = vlm_tokenizer_n_vocab(tok);

    if (flags & 8) { // raw id sequences: the decoders must cope with any order of pieces, bytes and specials
        int64_t n = 0;
        for (size_t i = 0; i + 1 < size && n < MAX_IDS; i += 2) {
            ids[n++] = (int32_t)((data[i] | (uint32_t)data[i + 1] << 8) % (uint32_t)n_vocab);
        }
        check_detok(ids, n, add_special, render_special);
        for (int64_t i = 0; i < n; i++) {
            char piece[300];
            int32_t need = vlm_token_to_piece(tok, ids[i], render_special, NULL, 0);
            check(need >= 0 && need <= 256);
            check(vlm_token_to_piece(tok, ids[i], render_special, piece, need) == need);
        }
        return 0;
    }

    if (size > MAX_TEXT) {
        size = MAX_TEXT;
    }
    // An exact-size copy, so ASan sees a read past the end of the text.
    char *text = malloc(size ? size : 1);
    check(text != NULL);
    if (size) {
        memcpy(text, data, size);
    }
    int64_t n = vlm_tokenize(tok, text, size, add_special, parse_special, NULL, 0);
    check(n >= 0 && n <= MAX_IDS);
    check(vlm_tokenize(tok, text, size, add_special, parse_special, ids, n) == n);
    int64_t half = n / 2;
    if (half > 0) {
        check(vlm_tokenize(tok, text, size, add_special, parse_special, ids2, half) == n);
        check(memcmp(ids, ids2, sizeof ids[0] * (size_t)half) == 0);
    }
    for (int64_t i = 0; i < n; i++) {
        check(ids[i] >= 0 && ids[i] < n_vocab);
    }
    if (add_special && vlm_tokenizer_add_bos(tok)) {
        check(n > 0 && ids[0] == vlm_tokenizer_bos(tok));
    }
    if (size == 0 && !add_special) {
        check(n == 0);
    }

    int64_t len = check_detok(ids, n, false, render_special);
    if (!add_special && !parse_special && !has_user_defined && utf8_valid(text, size) &&
        !has_sp_mark(data, size)) {
        check(len == (int64_t)size && memcmp(text_out, text, size) == 0);
    }
    free(text);
    return 0;
}
