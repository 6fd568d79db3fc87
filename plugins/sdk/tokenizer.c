// SentencePiece-style tokenizer (`tokenizer.ggml.model = "llama"`), a C port of llama.cpp's llm_tokenizer_spm
// and of its token_to_piece / detokenize. See docs/gguf-llava.md §4 for the algorithm.
//
// Encoding cost per raw fragment of n bytes is O(n log n): at most 3n bigrams enter a binary heap, every
// vocab lookup is a hash probe over at most max_piece_len bytes, and nothing recurses.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/gguf.h"
#include "vlm/log.h"
#include "vlm/tokenizer.h"

// Inputs above this are refused (symbol offsets are int32 and the escaped text is up to 3x the input).
#define MAX_INPUT_BYTES ((size_t)INT32_MAX / 4)

struct special {
    int32_t id;
    int32_t len;
};

struct vlm_tokenizer {
    int32_t n_vocab;
    char *text;       // every piece, NUL-terminated, back to back
    size_t *text_off; // [n_vocab]
    int32_t *text_len;
    float *scores;
    uint8_t *types; // enum vlm_token_type
    int32_t bos, eos, unk, pad, eot, eom;
    bool add_bos, add_eos, add_space_prefix;
    int32_t max_piece_len;
    int32_t byte_to_id[256]; // -1 where the vocab has no token for the byte
    int32_t *slots;          // open-addressing piece -> id table, -1 = empty
    uint64_t slot_mask;
    struct special *specials; // control/unknown/user-defined pieces, longest first
    int32_t n_specials;
};

// ---- piece -> id hash table --------------------------------------------------------------------------------

static uint64_t hash_bytes(const char *s, size_t n) {
    // FNV-1a with a final avalanche so the low bits used for the slot index are well mixed.
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static const char *piece_ptr(const struct vlm_tokenizer *tok, int32_t id) {
    return tok->text + tok->text_off[id];
}

static int32_t lookup(const struct vlm_tokenizer *tok, const char *s, size_t n) {
    if (n == 0 || n > (size_t)tok->max_piece_len) {
        return -1;
    }
    for (uint64_t i = hash_bytes(s, n) & tok->slot_mask;; i = (i + 1) & tok->slot_mask) {
        int32_t id = tok->slots[i];
        if (id < 0) {
            return -1;
        }
        if ((size_t)tok->text_len[id] == n && memcmp(piece_ptr(tok, id), s, n) == 0) {
            return id;
        }
    }
}

// Later duplicates replace earlier ones, as llama.cpp's `token_to_id[word] = i`.
static void insert(struct vlm_tokenizer *tok, int32_t id) {
    const char *s = piece_ptr(tok, id);
    size_t n = (size_t)tok->text_len[id];
    for (uint64_t i = hash_bytes(s, n) & tok->slot_mask;; i = (i + 1) & tok->slot_mask) {
        int32_t cur = tok->slots[i];
        if (cur < 0 || ((size_t)tok->text_len[cur] == n && memcmp(piece_ptr(tok, cur), s, n) == 0)) {
            tok->slots[i] = id;
            return;
        }
    }
}

// ---- loading -----------------------------------------------------------------------------------------------

static int hexval(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

// "<0xXX>" -> 0..255, else -1.
static int parse_byte_piece(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') {
        return -1;
    }
    int hi = hexval(s[3]), lo = hexval(s[4]);
    if (hi < 0 || lo < 0) {
        return -1;
    }
    return hi * 16 + lo;
}

// Reads a numeric per-token array (`n` elements) into floats; absent keys leave `out` as is.
static int read_num_array(const struct vlm_gguf *g, const char *key, uint64_t n, float *f32, uint8_t *u8,
                          struct vlm_diag *diag) {
    int64_t kv = vlm_gguf_find_key(g, key);
    if (kv < 0) {
        return 0;
    }
    enum vlm_gguf_type et;
    uint64_t cnt;
    if (vlm_gguf_kv_array(g, kv, &et, &cnt) != 0) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s is not an array", vlm_gguf_path(g), key);
    }
    if (cnt != n) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s has %llu entries, tokenizer.ggml.tokens has %llu",
                            vlm_gguf_path(g), key, (unsigned long long)cnt, (unsigned long long)n);
    }
    for (uint64_t i = 0; i < n; i++) {
        double v;
        if (vlm_gguf_array_get_num(g, kv, i, &v) != 0) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s: element %llu is not a number (array of %s)",
                                vlm_gguf_path(g), key, (unsigned long long)i, vlm_gguf_type_name(et));
        }
        if (f32) {
            f32[i] = (float)v;
        } else {
            // Unknown type values read as UNDEFINED, as llama.cpp does.
            u8[i] = (v >= 0 && v <= VLM_TOKEN_TYPE_BYTE && v == floor(v)) ? (uint8_t)v : VLM_TOKEN_TYPE_UNDEFINED;
        }
    }
    return 0;
}

// Reads an optional token id key. "None" values (-1, 0xFFFFFFFF) give -1. Out-of-range ids are an error when
// `strict`, else dropped with a warning (llama.cpp keeps going too).
static int read_id(const struct vlm_gguf *g, const char *key, int32_t n_vocab, bool strict, int32_t *id,
                   struct vlm_diag *diag) {
    int64_t v;
    int rc = vlm_gguf_get_int(g, key, &v, diag);
    if (rc == VLM_ENOENT) {
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    if (v == -1 || v == 0xFFFFFFFFLL) {
        *id = -1;
        return 0;
    }
    if (v < 0 || v >= n_vocab) {
        if (strict) {
            return vlm_diag_set(diag, VLM_EBADMODEL, "%s: %s = %lld is outside the vocabulary (%d tokens)",
                                vlm_gguf_path(g), key, (long long)v, n_vocab);
        }
        VLM_LOGW("%s: ignoring %s = %lld (vocabulary has %d tokens)", vlm_gguf_path(g), key, (long long)v, n_vocab);
        *id = -1;
        return 0;
    }
    *id = (int32_t)v;
    return 0;
}

static int read_bool(const struct vlm_gguf *g, const char *key, bool *out, struct vlm_diag *diag) {
    int rc = vlm_gguf_get_bool(g, key, out, diag);
    return rc == VLM_ENOENT ? 0 : rc;
}

static int cmp_special(const void *a, const void *b) {
    const struct special *x = a, *y = b;
    if (x->len != y->len) {
        return x->len > y->len ? -1 : 1;
    }
    return x->id < y->id ? -1 : x->id > y->id;
}

// Text llama.cpp matches for end-of-turn tokens when the file names no eot id.
static const char *const eot_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                        "<EOT>",      "<|end_of_text|>"};

int vlm_tokenizer_new(const struct vlm_gguf *g, struct vlm_tokenizer **out, struct vlm_diag *diag) {
    if (!g || !out) {
        return vlm_diag_set(diag, VLM_EINVAL, "%s: NULL argument", __func__);
    }
    const char *path = vlm_gguf_path(g);
    struct vlm_gguf_str model;
    int rc = vlm_gguf_get_str(g, "tokenizer.ggml.model", &model, diag);
    if (rc == VLM_ENOENT) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: no tokenizer (tokenizer.ggml.model missing)", path);
    }
    if (rc != 0) {
        return rc;
    }
    if (model.len != 5 || memcmp(model.ptr, "llama", 5) != 0) {
        return vlm_diag_set(diag, VLM_EUNSUPPORTED, "%s: tokenizer model '%.*s' is not supported (only 'llama')",
                            path, (int)(model.len > 64 ? 64 : model.len), model.ptr);
    }
    int64_t tokens_kv;
    uint64_t n;
    rc = vlm_gguf_get_str_array(g, "tokenizer.ggml.tokens", &tokens_kv, &n, diag);
    if (rc == VLM_ENOENT) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: tokenizer.ggml.tokens missing", path);
    }
    if (rc != 0) {
        return rc;
    }
    if (n == 0 || n > (uint64_t)INT32_MAX / 2) {
        return vlm_diag_set(diag, VLM_EBADMODEL, "%s: tokenizer.ggml.tokens has %llu entries", path,
                            (unsigned long long)n);
    }

    struct vlm_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        return vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", __func__);
    }
    tok->n_vocab = (int32_t)n;
    tok->bos = 1;
    tok->eos = 2;
    tok->unk = 0;
    tok->pad = -1;
    tok->eot = -1;
    tok->eom = -1;
    tok->add_bos = true;
    tok->add_eos = false;
    tok->add_space_prefix = true;

    tok->text_off = malloc(n * sizeof *tok->text_off);
    tok->text_len = malloc(n * sizeof *tok->text_len);
    tok->scores = calloc(n, sizeof *tok->scores);
    tok->types = malloc(n);
    if (!tok->text_off || !tok->text_len || !tok->scores || !tok->types) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", __func__);
        goto err_free;
    }
    memset(tok->types, VLM_TOKEN_TYPE_NORMAL, n);

    // Size the text arena; the file's strings are already known to lie inside it, so the sum is bounded.
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct vlm_gguf_str s = vlm_gguf_array_str(g, tokens_kv, i);
        if (s.len > (uint64_t)INT32_MAX / 2) {
            rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: token %llu is %llu bytes long", path, (unsigned long long)i,
                              (unsigned long long)s.len);
            goto err_free;
        }
        total += (s.len ? (size_t)s.len : 24) + 1;
    }
    tok->text = malloc(total);
    if (!tok->text) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory for %zu bytes of token text", __func__, total);
        goto err_free;
    }
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct vlm_gguf_str s = vlm_gguf_array_str(g, tokens_kv, i);
        char *dst = tok->text + off;
        size_t len;
        if (s.len == 0) {
            // llama.cpp renames empty pieces so they can never match text.
            len = (size_t)snprintf(dst, 24, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(dst, s.ptr, (size_t)s.len);
            len = (size_t)s.len;
            dst[len] = 0;
        }
        tok->text_off[i] = off;
        tok->text_len[i] = (int32_t)len;
        if ((int32_t)len > tok->max_piece_len) {
            tok->max_piece_len = (int32_t)len;
        }
        off += len + 1;
    }

    rc = read_num_array(g, "tokenizer.ggml.scores", n, tok->scores, NULL, diag);
    if (rc == 0) {
        rc = read_num_array(g, "tokenizer.ggml.token_type", n, NULL, tok->types, diag);
    }
    if (rc != 0) {
        goto err_free;
    }

    // A NaN score would make the merge order depend on heap layout; llama.cpp's comparator is undefined then.
    for (uint64_t i = 0; i < n; i++) {
        if (isnan(tok->scores[i])) {
            rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: token %llu has a NaN score", path, (unsigned long long)i);
            goto err_free;
        }
    }

    int32_t nv = tok->n_vocab;
    if ((rc = read_id(g, "tokenizer.ggml.bos_token_id", nv, true, &tok->bos, diag)) != 0 ||
        (rc = read_id(g, "tokenizer.ggml.eos_token_id", nv, true, &tok->eos, diag)) != 0 ||
        (rc = read_id(g, "tokenizer.ggml.unknown_token_id", nv, true, &tok->unk, diag)) != 0 ||
        (rc = read_id(g, "tokenizer.ggml.padding_token_id", nv, false, &tok->pad, diag)) != 0 ||
        (rc = read_id(g, "tokenizer.ggml.eot_token_id", nv, false, &tok->eot, diag)) != 0 ||
        (rc = read_id(g, "tokenizer.ggml.eom_token_id", nv, false, &tok->eom, diag)) != 0 ||
        (rc = read_bool(g, "tokenizer.ggml.add_bos_token", &tok->add_bos, diag)) != 0 ||
        (rc = read_bool(g, "tokenizer.ggml.add_eos_token", &tok->add_eos, diag)) != 0 ||
        (rc = read_bool(g, "tokenizer.ggml.add_space_prefix", &tok->add_space_prefix, diag)) != 0) {
        goto err_free;
    }
    // The SPM defaults (bos 1, eos 2, unk 0) may not exist in a tiny vocab.
    if (tok->bos >= nv || tok->eos >= nv || tok->unk >= nv) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: default special ids (bos %d, eos %d, unk %d) exceed the %d-token "
                          "vocabulary", path, tok->bos, tok->eos, tok->unk, nv);
        goto err_free;
    }
    if ((tok->add_bos && tok->bos < 0) || (tok->add_eos && tok->eos < 0)) {
        rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: add_%s_token is set but the vocabulary has no such token", path,
                          tok->add_bos && tok->bos < 0 ? "bos" : "eos");
        goto err_free;
    }

    // Hash table at load factor <= 1/2.
    uint64_t cap = 16;
    while (cap < n * 2) {
        cap *= 2;
    }
    tok->slots = malloc(cap * sizeof *tok->slots);
    if (!tok->slots) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", __func__);
        goto err_free;
    }
    memset(tok->slots, 0xff, cap * sizeof *tok->slots);
    tok->slot_mask = cap - 1;
    for (int32_t i = 0; i < nv; i++) {
        insert(tok, i);
    }

    int32_t n_specials = 0;
    for (int32_t i = 0; i < nv; i++) {
        uint8_t t = tok->types[i];
        if (t == VLM_TOKEN_TYPE_BYTE && parse_byte_piece(piece_ptr(tok, i), (size_t)tok->text_len[i]) < 0) {
            rc = vlm_diag_set(diag, VLM_EBADMODEL, "%s: byte token %d is '%.16s', expected <0xXX>", path, i,
                              piece_ptr(tok, i));
            goto err_free;
        }
        if (t == VLM_TOKEN_TYPE_CONTROL || t == VLM_TOKEN_TYPE_UNKNOWN || t == VLM_TOKEN_TYPE_USER_DEFINED) {
            n_specials++;
        }
    }
    tok->specials = malloc((size_t)(n_specials ? n_specials : 1) * sizeof *tok->specials);
    if (!tok->specials) {
        rc = vlm_diag_set(diag, VLM_ENOMEM, "%s: out of memory", __func__);
        goto err_free;
    }
    for (int32_t i = 0; i < nv; i++) {
        uint8_t t = tok->types[i];
        if (t == VLM_TOKEN_TYPE_CONTROL || t == VLM_TOKEN_TYPE_UNKNOWN || t == VLM_TOKEN_TYPE_USER_DEFINED) {
            tok->specials[tok->n_specials++] = (struct special){i, tok->text_len[i]};
        }
    }
    qsort(tok->specials, (size_t)tok->n_specials, sizeof *tok->specials, cmp_special);

    // Byte fallback table, as llama.cpp's byte_to_token: "<0xXX>" first, then the raw one-byte piece.
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char raw = (char)b;
        int32_t id = lookup(tok, name, sizeof name);
        tok->byte_to_id[b] = id >= 0 ? id : lookup(tok, &raw, 1);
    }

    if (tok->eot < 0) {
        for (int32_t i = 0; i < nv && tok->eot < 0; i++) {
            if (tok->types[i] != VLM_TOKEN_TYPE_CONTROL && tok->types[i] != VLM_TOKEN_TYPE_USER_DEFINED) {
                continue;
            }
            for (size_t k = 0; k < sizeof eot_texts / sizeof eot_texts[0]; k++) {
                if (strcmp(piece_ptr(tok, i), eot_texts[k]) == 0) {
                    tok->eot = i;
                    break;
                }
            }
        }
    }

    VLM_LOGD("%s: %d tokens, bos %d eos %d unk %d, add_bos %d add_eos %d space_prefix %d, %d special pieces",
             path, nv, tok->bos, tok->eos, tok->unk, tok->add_bos, tok->add_eos, tok->add_space_prefix,
             tok->n_specials);
    *out = tok;
    return 0;

err_free:
    vlm_tokenizer_free(tok);
    return rc;
}

void vlm_tokenizer_free(struct vlm_tokenizer *tok) {
    if (!tok) {
        return;
    }
    free(tok->text);
    free(tok->text_off);
    free(tok->text_len);
    free(tok->scores);
    free(tok->types);
    free(tok->slots);
    free(tok->specials);
    free(tok);
}

int32_t vlm_tokenizer_n_vocab(const struct vlm_tokenizer *tok) {
    return tok ? tok->n_vocab : 0;
}

int32_t vlm_tokenizer_bos(const struct vlm_tokenizer *tok) {
    return tok ? tok->bos : -1;
}

int32_t vlm_tokenizer_eos(const struct vlm_tokenizer *tok) {
    return tok ? tok->eos : -1;
}

bool vlm_tokenizer_add_bos(const struct vlm_tokenizer *tok) {
    return tok && tok->add_bos;
}

bool vlm_tokenizer_add_eos(const struct vlm_tokenizer *tok) {
    return tok && tok->add_eos;
}

bool vlm_tokenizer_is_eog(const struct vlm_tokenizer *tok, int32_t id) {
    return tok && id >= 0 && (id == tok->eos || id == tok->eot || id == tok->eom);
}

enum vlm_token_type vlm_tokenizer_token_type(const struct vlm_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) {
        return VLM_TOKEN_TYPE_UNDEFINED;
    }
    return (enum vlm_token_type)tok->types[id];
}

const char *vlm_tokenizer_piece(const struct vlm_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) {
        return "";
    }
    return piece_ptr(tok, id);
}

// ---- encoding ----------------------------------------------------------------------------------------------

struct out_ids {
    int32_t *ids;
    int64_t cap;
    int64_t n;
};

static void emit(struct out_ids *o, int32_t id) {
    if (o->n < o->cap) {
        o->ids[o->n] = id;
    }
    o->n++;
}

// A piece of the input: raw text (id < 0) or a matched special token.
struct frag {
    int32_t id;
    size_t off, len;
};

struct frag_list {
    struct frag *v;
    size_t n, cap;
};

static int frag_push(struct frag_list *l, struct frag f) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct frag *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            return VLM_ENOMEM;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = f;
    return 0;
}

// llama.cpp's tokenizer_st_partition: each special piece, longest first, splits every raw fragment at each of
// its leftmost non-overlapping occurrences.
static int partition(const struct vlm_tokenizer *tok, const char *text, size_t len, bool parse_special,
                     struct frag_list *cur, struct frag_list *next) {
    int rc = frag_push(cur, (struct frag){-1, 0, len});
    if (rc != 0) {
        return rc;
    }
    for (int32_t k = 0; k < tok->n_specials; k++) {
        int32_t id = tok->specials[k].id;
        if (!parse_special && tok->types[id] != VLM_TOKEN_TYPE_USER_DEFINED) {
            continue;
        }
        const char *piece = piece_ptr(tok, id);
        size_t plen = (size_t)tok->specials[k].len;
        // Cheap whole-text check first: most specials never occur.
        if (!memmem(text, len, piece, plen)) {
            continue;
        }
        next->n = 0;
        for (size_t f = 0; f < cur->n; f++) {
            struct frag fr = cur->v[f];
            if (fr.id >= 0) {
                if ((rc = frag_push(next, fr)) != 0) {
                    return rc;
                }
                continue;
            }
            size_t pos = fr.off, end = fr.off + fr.len;
            for (;;) {
                const char *m = memmem(text + pos, end - pos, piece, plen);
                if (!m) {
                    break;
                }
                size_t at = (size_t)(m - text);
                if (at > pos && (rc = frag_push(next, (struct frag){-1, pos, at - pos})) != 0) {
                    return rc;
                }
                if ((rc = frag_push(next, (struct frag){id, at, plen})) != 0) {
                    return rc;
                }
                pos = at + plen;
            }
            if (pos < end && (rc = frag_push(next, (struct frag){-1, pos, end - pos})) != 0) {
                return rc;
            }
        }
        struct frag_list t = *cur;
        *cur = *next;
        *next = t;
    }
    return 0;
}

struct sym {
    int32_t prev, next;
    int32_t off, n;
};

struct bigram {
    float score;
    int32_t left, right;
    int32_t size;
};

// Scratch reused across the fragments of one vlm_tokenize call.
struct work {
    char *esc;
    size_t esc_cap;
    struct sym *syms;
    size_t syms_cap;
    struct bigram *heap;
    size_t heap_cap, n_heap;
};

// Makes room for `need` elements of `elem` bytes in *p (capacity *cap, doubled as needed).
#define GROW(p, cap, need) grow_impl((void *)&(p), (p), &(cap), (need), sizeof *(p))

static int grow_impl(void *slot, void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) {
        return 0;
    }
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) {
        cap2 *= 2;
    }
    void *q = realloc(p, cap2 * elem);
    if (!q) {
        return VLM_ENOMEM;
    }
    memcpy(slot, &q, sizeof q); // stores the new pointer without type-punning through void **
    *cap = cap2;
    return 0;
}

// Higher score first; on equal scores the leftmost pair (llama.cpp's llm_bigram_spm::comparator).
static bool bigram_before(const struct bigram *a, const struct bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(struct work *w, struct bigram b) {
    // At most 3 pushes per symbol in all, but the heap rarely holds more than about one per symbol: grow it.
    int rc = GROW(w->heap, w->heap_cap, w->n_heap + 1);
    if (rc != 0) {
        return rc;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &w->heap[parent])) {
            break;
        }
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = b;
    return 0;
}

static struct bigram heap_pop(struct work *w) {
    struct bigram top = w->heap[0];
    struct bigram last = w->heap[--w->n_heap];
    size_t n = w->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && bigram_before(&w->heap[c + 1], &w->heap[c])) {
            c++;
        }
        if (!bigram_before(&w->heap[c], &last)) {
            break;
        }
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) {
        w->heap[i] = last;
    }
    return top;
}

static int try_add_bigram(const struct vlm_tokenizer *tok, struct work *w, int32_t left, int32_t right) {
    if (left < 0 || right < 0) {
        return 0;
    }
    int32_t size = w->syms[left].n + w->syms[right].n;
    int32_t id = lookup(tok, w->esc + w->syms[left].off, (size_t)size);
    if (id < 0) {
        return 0;
    }
    return heap_push(w, (struct bigram){tok->scores[id], left, right, size});
}

static int32_t utf8_len(uint8_t c) {
    static const uint8_t lut[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lut[c >> 4];
}

// Tokenizes the escaped raw fragment in w->esc (m > 0 bytes).
//
// llama.cpp's resegment() also consults a map of remembered merges before falling back to bytes, but that map
// only ever holds texts that are vocab entries (a bigram is pushed only when its text is one), while the
// fallback is reached only for texts that are not: the lookup can never hit, so it is left out here.
static int spm_fragment(const struct vlm_tokenizer *tok, struct work *w, int32_t m, struct out_ids *o) {
    int rc = GROW(w->syms, w->syms_cap, (size_t)m);
    if (rc != 0) {
        return rc;
    }
    const char *s = w->esc;
    struct sym *syms = w->syms;
    int32_t n_syms = 0;
    for (int32_t off = 0; off < m;) {
        int32_t n = utf8_len((uint8_t)s[off]);
        if (n > m - off) {
            n = m - off;
        }
        syms[n_syms] = (struct sym){n_syms - 1, off + n == m ? -1 : n_syms + 1, off, n};
        off += n;
        n_syms++;
    }
    w->n_heap = 0;
    for (int32_t i = 1; i < n_syms; i++) {
        if ((rc = try_add_bigram(tok, w, i - 1, i)) != 0) {
            return rc;
        }
    }
    while (w->n_heap > 0) {
        struct bigram b = heap_pop(w);
        struct sym *l = &syms[b.left], *r = &syms[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) {
            continue;
        }
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) {
            syms[r->next].prev = b.left;
        }
        if ((rc = try_add_bigram(tok, w, l->prev, b.left)) != 0 ||
            (rc = try_add_bigram(tok, w, b.left, l->next)) != 0) {
            return rc;
        }
    }
    for (int32_t i = 0; i != -1; i = syms[i].next) {
        int32_t id = lookup(tok, s + syms[i].off, (size_t)syms[i].n);
        if (id >= 0) {
            emit(o, id);
            continue;
        }
        for (int32_t j = 0; j < syms[i].n; j++) {
            int32_t b = tok->byte_to_id[(uint8_t)s[syms[i].off + j]];
            if (b < 0) {
                b = tok->unk;
            }
            if (b < 0) {
                return VLM_EBADMODEL; // no byte token and no unknown token: the text cannot be represented
            }
            emit(o, b);
        }
    }
    return 0;
}

int64_t vlm_tokenize(const struct vlm_tokenizer *tok, const char *text, size_t len, bool add_special,
                     bool parse_special, int32_t *ids, int64_t n_max) {
    if (!tok || (!text && len > 0) || n_max < 0 || (n_max > 0 && !ids)) {
        return VLM_EINVAL;
    }
    if (len > MAX_INPUT_BYTES) {
        return VLM_ETOOLARGE;
    }
    struct out_ids o = {ids, n_max, 0};
    struct frag_list cur = {0}, next = {0};
    struct work w = {0};
    int rc = 0;

    if (len > 0 && (rc = partition(tok, text, len, parse_special, &cur, &next)) != 0) {
        goto done;
    }
    if (add_special && tok->add_bos) {
        emit(&o, tok->bos);
    }
    bool prev_special = true;
    for (size_t f = 0; f < cur.n; f++) {
        const struct frag *fr = &cur.v[f];
        if (fr->id >= 0) {
            emit(&o, fr->id);
            prev_special = true;
            continue;
        }
        // Escaping turns each byte into at most 3 (' ' -> U+2581), plus the prefix space.
        if ((rc = GROW(w.esc, w.esc_cap, 3 * fr->len + 3)) != 0) {
            goto done;
        }
        int32_t m = 0;
        if (tok->add_space_prefix && prev_special) {
            memcpy(w.esc, "\xe2\x96\x81", 3);
            m = 3;
        }
        for (size_t i = 0; i < fr->len; i++) {
            char c = text[fr->off + i];
            if (c == ' ') {
                memcpy(w.esc + m, "\xe2\x96\x81", 3);
                m += 3;
            } else {
                w.esc[m++] = c;
            }
        }
        if ((rc = spm_fragment(tok, &w, m, &o)) != 0) {
            goto done;
        }
        prev_special = false;
    }
    if (add_special && tok->add_eos) {
        emit(&o, tok->eos);
    }

done:
    free(cur.v);
    free(next.v);
    free(w.esc);
    free(w.syms);
    free(w.heap);
    return rc != 0 ? rc : o.n;
}

// ---- decoding ----------------------------------------------------------------------------------------------

enum piece_mode {
    PIECE_EMPTY,
    PIECE_RAW,      // control/unknown/user-defined: the literal text
    PIECE_UNESCAPE, // normal: U+2581 -> ' '
    PIECE_BYTE,
};

struct piece_src {
    enum piece_mode mode;
    const char *p;
    size_t n;
    uint8_t byte;
};

// How llama.cpp's token_to_piece renders token `id` (which must be valid).
static struct piece_src piece_source(const struct vlm_tokenizer *tok, int32_t id, bool render_special) {
    struct piece_src src = {PIECE_EMPTY, piece_ptr(tok, id), (size_t)tok->text_len[id], 0};
    switch (tok->types[id]) {
    case VLM_TOKEN_TYPE_CONTROL:
    case VLM_TOKEN_TYPE_UNKNOWN:
        src.mode = render_special ? PIECE_RAW : PIECE_EMPTY;
        break;
    case VLM_TOKEN_TYPE_USER_DEFINED:
        src.mode = PIECE_RAW;
        break;
    case VLM_TOKEN_TYPE_NORMAL:
        src.mode = PIECE_UNESCAPE;
        break;
    case VLM_TOKEN_TYPE_BYTE:
        src.mode = PIECE_BYTE;
        src.byte = (uint8_t)parse_byte_piece(src.p, src.n); // validated at load
        break;
    default: // unused / undefined render as nothing, like llama.cpp
        break;
    }
    return src;
}

// Next output byte of the piece at *pos, or -1 at the end.
static int piece_next(const struct piece_src *src, size_t *pos) {
    switch (src->mode) {
    case PIECE_EMPTY:
        return -1;
    case PIECE_BYTE:
        return (*pos)++ == 0 ? src->byte : -1;
    case PIECE_RAW:
        return *pos < src->n ? (uint8_t)src->p[(*pos)++] : -1;
    case PIECE_UNESCAPE:
        if (*pos >= src->n) {
            return -1;
        }
        if (src->n - *pos >= 3 && memcmp(src->p + *pos, "\xe2\x96\x81", 3) == 0) {
            *pos += 3;
            return ' ';
        }
        return (uint8_t)src->p[(*pos)++];
    }
    return -1;
}

// Writes the piece (without one leading space when `lstrip`) if it fits in `cap`, and returns its full length.
// As llama.cpp's _try_copy, a piece that does not fit is not written at all (no cut UTF-8 sequences).
static int64_t piece_write(const struct vlm_tokenizer *tok, int32_t id, bool render_special, bool lstrip, char *buf,
                           int64_t cap) {
    struct piece_src src = piece_source(tok, id, render_special);
    int64_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t pos = 0;
        int c;
        bool first = true;
        n = 0;
        while ((c = piece_next(&src, &pos)) >= 0) {
            if (first && lstrip && c == ' ') {
                first = false;
                continue;
            }
            first = false;
            if (pass == 1) {
                buf[n] = (char)c;
            }
            n++;
        }
        if (n > cap || n == 0) {
            break;
        }
    }
    return n;
}

int32_t vlm_token_to_piece(const struct vlm_tokenizer *tok, int32_t id, bool render_special, char *buf, int32_t cap) {
    if (!tok || id < 0 || id >= tok->n_vocab || cap < 0 || (cap > 0 && !buf)) {
        return VLM_EINVAL;
    }
    // Pieces are at most INT32_MAX / 2 bytes (checked at load), so the length fits.
    return (int32_t)piece_write(tok, id, render_special, false, buf, cap);
}

int64_t vlm_detokenize(const struct vlm_tokenizer *tok, const int32_t *ids, int64_t n, bool remove_special,
                       bool render_special, char *buf, int64_t cap) {
    if (!tok || n < 0 || (n > 0 && !ids) || cap < 0 || (cap > 0 && !buf)) {
        return VLM_EINVAL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) {
            return VLM_EINVAL;
        }
    }
    bool remove_space = tok->add_space_prefix;
    if (remove_special && tok->add_bos && n > 0 && ids[0] == tok->bos) {
        remove_space = false;
        ids++;
        n--;
    }
    if (remove_special && tok->add_eos && n > 0 && ids[n - 1] == tok->eos) {
        n--;
    }
    int64_t total = 0;
    bool fits = true;
    for (int64_t i = 0; i < n; i++) {
        int64_t avail = fits ? cap - total : 0;
        int64_t k = piece_write(tok, ids[i], render_special, remove_space, fits && buf ? buf + total : NULL, avail);
        remove_space = false;
        // As llama.cpp: once a piece does not fit, nothing after it is written either.
        if (k > avail) {
            fits = false;
        }
        total += k;
    }
    if (total < cap) {
        buf[total] = 0;
    }
    return total;
}

// ---- streaming detokenizer ---------------------------------------------------------------------------------

struct sink {
    char *out;
    int64_t cap; // < 0: count only
    int64_t n;
};

static void sink_put(struct sink *k, const char *p, int n) {
    if (k->cap >= 0) {
        memcpy(k->out + k->n, p, (size_t)n);
    }
    k->n += n;
}

static void sink_fffd(struct sink *k) {
    sink_put(k, "\xef\xbf\xbd", 3);
}

// Is `b` a valid continuation at position `k` (1..3) of a sequence that starts with `lead`? (RFC 3629 table:
// excludes overlongs, surrogates and code points above U+10FFFF.)
static bool utf8_cont_ok(uint8_t lead, int k, uint8_t b) {
    if (k == 1) {
        switch (lead) {
        case 0xE0:
            return b >= 0xA0 && b <= 0xBF;
        case 0xED:
            return b >= 0x80 && b <= 0x9F;
        case 0xF0:
            return b >= 0x90 && b <= 0xBF;
        case 0xF4:
            return b >= 0x80 && b <= 0x8F;
        default:
            break;
        }
    }
    return b >= 0x80 && b <= 0xBF;
}

static int utf8_need(uint8_t lead) {
    if (lead >= 0xC2 && lead <= 0xDF) {
        return 2;
    }
    if (lead >= 0xE0 && lead <= 0xEF) {
        return 3;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
        return 4;
    }
    return 0;
}

// Feeds one byte through the UTF-8 assembler in `pend`/`*np`; invalid sequences become one U+FFFD per maximal
// ill-formed subpart (the Unicode "best practice" also used by browsers).
static void utf8_feed(uint8_t *pend, int *np, uint8_t b, struct sink *k) {
    if (*np > 0) {
        if (utf8_cont_ok(pend[0], *np, b)) {
            pend[(*np)++] = b;
            if (*np == utf8_need(pend[0])) {
                sink_put(k, (const char *)pend, *np);
                *np = 0;
            }
            return;
        }
        sink_fffd(k);
        *np = 0;
    }
    if (b < 0x80) {
        char c = (char)b;
        sink_put(k, &c, 1);
    } else if (utf8_need(b)) {
        pend[0] = b;
        *np = 1;
    } else {
        sink_fffd(k);
    }
}

void vlm_detok_stream_init(struct vlm_detok_stream *s, const struct vlm_tokenizer *tok, bool strip_leading_space,
                           bool render_special) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->first = strip_leading_space;
    s->render_special = render_special;
}

static int64_t stream_run(const struct vlm_detok_stream *s, int32_t id, uint8_t *pend, int *np, struct sink *k) {
    struct piece_src src = piece_source(s->tok, id, s->render_special);
    size_t pos = 0;
    int c;
    bool first = true;
    while ((c = piece_next(&src, &pos)) >= 0) {
        if (first && s->first && c == ' ') {
            first = false;
            continue;
        }
        first = false;
        utf8_feed(pend, np, (uint8_t)c, k);
    }
    return k->n;
}

int32_t vlm_detok_stream_push(struct vlm_detok_stream *s, int32_t id, char *out, int32_t cap) {
    if (!s || !s->tok || id < 0 || id >= s->tok->n_vocab || cap < 0 || (cap > 0 && !out) || s->n_pending < 0 ||
        s->n_pending > 3) {
        return VLM_EINVAL;
    }
    // Dry run on a copy of the state first, so a too-small buffer leaves the stream untouched.
    uint8_t pend[8];
    int np = s->n_pending;
    memcpy(pend, s->pending, sizeof pend);
    struct sink count = {NULL, -1, 0};
    int64_t need = stream_run(s, id, pend, &np, &count);
    if (need > cap) {
        return VLM_ERANGE;
    }
    struct sink k = {out, cap, 0};
    stream_run(s, id, s->pending, &s->n_pending, &k);
    s->first = false;
    return (int32_t)k.n;
}

int32_t vlm_detok_stream_flush(struct vlm_detok_stream *s, char *out, int32_t cap) {
    if (!s || cap < 0 || (cap > 0 && !out)) {
        return VLM_EINVAL;
    }
    if (s->n_pending == 0) {
        return 0;
    }
    if (cap < 3) {
        return VLM_ERANGE;
    }
    // Whatever is pending is an incomplete (hence ill-formed) sequence: one replacement character.
    memcpy(out, "\xef\xbf\xbd", 3);
    s->n_pending = 0;
    return 3;
}
