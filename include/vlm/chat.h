// Prompt formats and image splicing: how a user's question and images become the token and embedding runs an
// LLM is fed, exactly as transformers' LLaVA processors lay them out (../shared/docs/gguf-llava.md §7).
// Shared by vlm-run and the daemon so both give the same tokens.
#ifndef VLM_CHAT_H
#define VLM_CHAT_H

#include <stdbool.h>
#include <stdint.h>

#include "vlm/error.h"
#include "vlm/export.h"
#include "vlm/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VLM_IMAGE_MARKER "<image>"

enum vlm_chat_format {
    VLM_CHAT_AUTO = 0,    // decide from the models (see vlm_chat_format_auto)
    VLM_CHAT_NONE = 1,    // the prompt as given
    VLM_CHAT_VICUNA = 2,  // LLaVA 1.5 / 1.6-Vicuna: llava_v1 conversation ("SYSTEM USER: ... ASSISTANT:")
    VLM_CHAT_MISTRAL = 3, // LLaVA 1.6 Mistral: mistral_instruct ("[INST] ... [/INST]")
};

VLM_API const char *vlm_chat_format_name(enum vlm_chat_format f);
// Parses "auto", "none", "vicuna", "mistral"; VLM_EINVAL otherwise.
VLM_API int vlm_chat_format_from_name(const char *name, enum vlm_chat_format *out);

// The automatic choice: a prompt that carries its own markers (or has no images) is used as given; otherwise
// the LLM's metadata decides ([INST] in its chat template or "mistral" in its name => mistral, "vicuna" =>
// vicuna), then the mmproj's kind (anyres => mistral, as most LLaVA 1.6 GGUFs in use are the Mistral one).
VLM_API enum vlm_chat_format vlm_chat_format_auto(int n_markers, int n_images, const char *llm_name,
                                                  bool llm_template_inst, bool mmproj_anyres);

VLM_API int vlm_chat_count_markers(const char *text);

// The full prompt text with one marker per image: when the user's text has no markers, LLaVA's layout puts
// "<image>\n" per image in front of the question. Returns a malloc'd string, or NULL when out of memory.
VLM_API char *vlm_chat_format_prompt(const char *user, int n_images, enum vlm_chat_format f);

// Splits `text` at the image markers (when `split`) and tokenizes every chunk on its own, as transformers' LLaVA
// processors do: BOS only in front of the first chunk, and no leading space in a chunk that follows an image
// (so "\n" right after an image is the single newline byte token). Chunk c is ids[starts[c] .. starts[c + 1]);
// `starts` has room for max_chunks + 1 entries. Returns the number of chunks (markers + 1), or a negative code
// (VLM_EINVAL: more than max_chunks chunks); *ids is malloc'd (free it).
VLM_API int vlm_chat_tokenize(const struct vlm_tokenizer *tok, const char *text, bool add_bos, bool parse_special,
                              bool split, int32_t **ids, int64_t *starts, int max_chunks);

#ifdef __cplusplus
}
#endif

#endif // VLM_CHAT_H
