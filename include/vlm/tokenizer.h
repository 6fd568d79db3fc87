// Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata. Supports `tokenizer.ggml.model = "llama"`
// (SentencePiece-style BPE with byte fallback), reproducing llama.cpp's llm_tokenizer_spm exactly.
//
// A tokenizer is immutable after creation and may be shared by threads. It copies what it needs out of the
// GGUF reader, which may be closed afterwards.
#ifndef VLM_TOKENIZER_H
#define VLM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vlm_gguf;
struct vlm_tokenizer;

// llama.cpp's token attributes (`tokenizer.ggml.token_type` values).
enum vlm_token_type {
    VLM_TOKEN_TYPE_UNDEFINED = 0,
    VLM_TOKEN_TYPE_NORMAL = 1,
    VLM_TOKEN_TYPE_UNKNOWN = 2,
    VLM_TOKEN_TYPE_CONTROL = 3,
    VLM_TOKEN_TYPE_USER_DEFINED = 4,
    VLM_TOKEN_TYPE_UNUSED = 5,
    VLM_TOKEN_TYPE_BYTE = 6,
};

// Creates a tokenizer from `g`'s metadata. VLM_EUNSUPPORTED for other tokenizer models, VLM_EBADMODEL for
// inconsistent metadata (array lengths differ, special ids out of range, bad byte-token names).
VLM_API int vlm_tokenizer_new(const struct vlm_gguf *g, struct vlm_tokenizer **out, struct vlm_diag *diag);
VLM_API void vlm_tokenizer_free(struct vlm_tokenizer *tok);

VLM_API int32_t vlm_tokenizer_n_vocab(const struct vlm_tokenizer *tok);
VLM_API int32_t vlm_tokenizer_bos(const struct vlm_tokenizer *tok); // -1 if none
VLM_API int32_t vlm_tokenizer_eos(const struct vlm_tokenizer *tok); // -1 if none
VLM_API bool vlm_tokenizer_add_bos(const struct vlm_tokenizer *tok);
VLM_API bool vlm_tokenizer_add_eos(const struct vlm_tokenizer *tok);
// True for tokens that end generation (EOS, EOT).
VLM_API bool vlm_tokenizer_is_eog(const struct vlm_tokenizer *tok, int32_t id);
VLM_API enum vlm_token_type vlm_tokenizer_token_type(const struct vlm_tokenizer *tok, int32_t id);
// The raw piece text of a token (with U+2581 for spaces), NUL-terminated; "" for bad ids.
VLM_API const char *vlm_tokenizer_piece(const struct vlm_tokenizer *tok, int32_t id);

// Tokenizes `len` bytes of `text`. add_special: prepend BOS / append EOS as the vocab asks.
// parse_special: match control-token text (e.g. "</s>") as those tokens; user-defined tokens always match.
// Writes at most `n_max` ids; returns the number of tokens the text needs (which may exceed n_max, so callers
// can size a buffer and call again), or a negative VLM_E* code.
VLM_API int64_t vlm_tokenize(const struct vlm_tokenizer *tok, const char *text, size_t len, bool add_special,
                             bool parse_special, int32_t *ids, int64_t n_max);

// Appends the text of one token to `buf` (at most `cap` bytes, not NUL-terminated): the piece with spaces
// restored, the byte of a byte token, "" for control tokens unless `render_special`. Returns the number of
// bytes the piece needs (may exceed cap) or a negative code for a bad id.
VLM_API int32_t vlm_token_to_piece(const struct vlm_tokenizer *tok, int32_t id, bool render_special, char *buf,
                                   int32_t cap);

// Whole-sequence detokenization as llama.cpp's llama_detokenize: drops the leading space of the first piece
// (add_space_prefix), skips BOS when remove_special. Returns bytes needed (may exceed cap), NUL-terminates
// when room.
VLM_API int64_t vlm_detokenize(const struct vlm_tokenizer *tok, const int32_t *ids, int64_t n, bool remove_special,
                               bool render_special, char *buf, int64_t cap);

// Streaming detokenizer: feed tokens one by one; it emits only complete UTF-8 characters and holds back an
// incomplete tail until the next token completes it (or flush at the end emits what is left, invalid bytes
// replaced by U+FFFD). Caller-allocated; no heap use.
struct vlm_detok_stream {
    const struct vlm_tokenizer *tok;
    bool first;         // strip the leading space of the first piece
    bool render_special;
    uint8_t pending[8]; // incomplete UTF-8 tail
    int n_pending;
};

VLM_API void vlm_detok_stream_init(struct vlm_detok_stream *s, const struct vlm_tokenizer *tok, bool strip_leading_space,
                                   bool render_special);
// Writes the complete text now available (at most cap bytes; a piece is at most 256 bytes, so cap >= 512 is
// always enough) and returns its length, or a negative code.
VLM_API int32_t vlm_detok_stream_push(struct vlm_detok_stream *s, int32_t id, char *out, int32_t cap);
VLM_API int32_t vlm_detok_stream_flush(struct vlm_detok_stream *s, char *out, int32_t cap);

#ifdef __cplusplus
}
#endif

#endif // VLM_TOKENIZER_H
