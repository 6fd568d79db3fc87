// Text generation over an LLM plugin session: prefill a prompt (token runs and embedding runs, e.g. images),
// then sample, stream and stop. Shared by vlm-run and the daemon's workers so both produce the same tokens
// for the same seed.
#ifndef VLM_GENERATE_H
#define VLM_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/plugin.h"
#include "vlm/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

// A loaded LLM: the plugin's operations and its model instance (borrowed).
struct vlm_llm {
    const struct vlm_llm_ops *ops;
    void *model;
};

// One run of prompt input: token ids or embeddings (n rows of the model's n_embd floats).
struct vlm_prompt_part {
    const int32_t *tokens;
    const float *embd;
    int32_t n;
};

enum vlm_stop_reason {
    VLM_STOP_NONE = 0,
    VLM_STOP_EOS = 1,       // the model emitted an end-of-generation token
    VLM_STOP_STRING = 2,    // a stop string appeared (it is not emitted)
    VLM_STOP_LENGTH = 3,    // n_predict tokens were generated
    VLM_STOP_CONTEXT = 4,   // the context is full
    VLM_STOP_CANCELLED = 5, // the piece callback or the host asked to stop
};

struct vlm_generate_params {
    int32_t n_predict;          // tokens to generate at most; < 0: until EOS or the context is full
    struct vlm_sampler_params sampling;
    const char *const *stops;   // stop strings (may be NULL)
    int n_stops;
};

struct vlm_generate_stats {
    int32_t n_prompt;     // prompt rows evaluated (tokens + embeddings)
    int32_t n_gen;        // tokens generated (sampled), including a final EOS
    double prefill_ms;    // prompt evaluation until the first sampled token's logits
    int32_t n_decode;     // single-token evaluations during decode (n_gen - 1 when stopped by length)
    double decode_ms;     // time of the decode loop (sampling + evaluations)
    enum vlm_stop_reason stop;
};

// Receives each piece of text as it becomes final (complete UTF-8, not part of a possible stop string).
// Return false to stop generating (VLM_STOP_CANCELLED).
typedef bool (*vlm_generate_piece_cb)(const char *text, size_t len, void *user);

// Prefills `parts` into `session` (which may already hold a conversation prefix) and generates. Tokens
// sampled are written to `out_tokens` (capacity `out_cap`, may be NULL). Returns 0 when generation ended
// normally (see stats->stop), or a negative code (VLM_ECANCELED when the host cancelled an evaluation).
VLM_API int vlm_generate(const struct vlm_llm *llm, void *session, const struct vlm_prompt_part *parts, int n_parts,
                         const struct vlm_generate_params *params, vlm_generate_piece_cb cb, void *user,
                         int32_t *out_tokens, int32_t out_cap, struct vlm_generate_stats *stats,
                         struct vlm_diag *diag);

// Monotonic clock in milliseconds (for stats).
VLM_API double vlm_time_ms(void);

#ifdef __cplusplus
}
#endif

#endif // VLM_GENERATE_H
