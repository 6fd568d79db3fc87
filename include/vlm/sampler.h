// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded RNG; and the stop
// conditions of a generation (EOS, stop strings, max tokens).
//
// Order of the chain, as llama.cpp's default sampler: repetition penalty -> top-k -> top-p -> min-p ->
// temperature -> draw. temperature <= 0 means greedy (argmax, ties to the lowest id). Same seed, same params,
// same logits: same tokens.
#ifndef VLM_SAMPLER_H
#define VLM_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vlm_sampler_params {
    float temperature;    // <= 0: greedy
    int32_t top_k;        // <= 0: off
    float top_p;          // >= 1: off
    float min_p;          // <= 0: off
    float repeat_penalty; // 1: off; >1 divides positive / multiplies negative logits of recent tokens
    int32_t repeat_last_n; // how many recent tokens the penalty looks at (0: off, -1: all seen)
    uint64_t seed;
};

// Defaults as llama.cpp's CLI: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0,
// repeat_last_n 64, seed 0xFFFFFFFF... replaced by a fixed default seed (42) so runs are reproducible.
VLM_API struct vlm_sampler_params vlm_sampler_default_params(void);

struct vlm_sampler;

// `n_vocab` sizes the scratch buffers once; no allocation happens while sampling.
VLM_API int vlm_sampler_new(const struct vlm_sampler_params *p, int32_t n_vocab, struct vlm_sampler **out);
VLM_API void vlm_sampler_free(struct vlm_sampler *s);
VLM_API void vlm_sampler_reset(struct vlm_sampler *s); // forget history, reseed

// Chooses the next token from `logits` (n_vocab floats, not modified).
VLM_API int32_t vlm_sampler_sample(struct vlm_sampler *s, const float *logits);
// Records a token in the history used by the repetition penalty (prompt tokens and accepted tokens).
VLM_API void vlm_sampler_accept(struct vlm_sampler *s, int32_t token);

// Stop strings: finds whether the generated text ends a stop string, or might be starting one.
// Returns the byte offset in `text` where a stop string begins (text before it is final), or -1. `*partial`
// is set to the length of a suffix of text that is a prefix of some stop string (hold it back while
// streaming).
VLM_API int64_t vlm_stop_find(const char *const *stops, int n_stops, const char *text, size_t len, size_t *partial);

#ifdef __cplusplus
}
#endif

#endif // VLM_SAMPLER_H
