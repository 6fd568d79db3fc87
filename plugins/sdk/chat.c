// Prompt formats and image splicing (see include/vlm/chat.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm/chat.h"

#define VICUNA_SYSTEM                                                                                            \
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "  \
    "detailed, and polite answers to the human's questions."

const char *vlm_chat_format_name(enum vlm_chat_format f) {
    switch (f) {
    case VLM_CHAT_AUTO:
        return "auto";
    case VLM_CHAT_VICUNA:
        return "vicuna";
    case VLM_CHAT_MISTRAL:
        return "mistral";
    default:
        return "none";
    }
}

int vlm_chat_format_from_name(const char *name, enum vlm_chat_format *out) {
    static const enum vlm_chat_format all[] = {VLM_CHAT_AUTO, VLM_CHAT_NONE, VLM_CHAT_VICUNA, VLM_CHAT_MISTRAL};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (name && !strcmp(name, vlm_chat_format_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    }
    return VLM_EINVAL;
}

enum vlm_chat_format vlm_chat_format_auto(int n_markers, int n_images, const char *llm_name, bool llm_template_inst,
                                          bool mmproj_anyres) {
    if (n_images == 0 || n_markers > 0) {
        return VLM_CHAT_NONE;
    }
    if (llm_template_inst || (llm_name && strcasestr(llm_name, "mistral"))) {
        return VLM_CHAT_MISTRAL;
    }
    if (llm_name && strcasestr(llm_name, "vicuna")) {
        return VLM_CHAT_VICUNA;
    }
    return mmproj_anyres ? VLM_CHAT_MISTRAL : VLM_CHAT_VICUNA;
}

int vlm_chat_count_markers(const char *text) {
    int n = 0;
    const size_t mlen = strlen(VLM_IMAGE_MARKER);
    for (const char *p = strstr(text, VLM_IMAGE_MARKER); p; p = strstr(p + mlen, VLM_IMAGE_MARKER)) {
        n++;
    }
    return n;
}

char *vlm_chat_format_prompt(const char *user, int n_images, enum vlm_chat_format f) {
    int n_markers = vlm_chat_count_markers(user);
    size_t cap = strlen(user) + (size_t)(n_images > 0 ? n_images : 0) * (sizeof VLM_IMAGE_MARKER + 1) +
                 sizeof VICUNA_SYSTEM + 64;
    char *out = malloc(cap);
    if (!out) {
        return NULL;
    }
    size_t len = 0;
    out[0] = 0;
#define PUT(str) len += (size_t)snprintf(out + len, cap - len, "%s", (str))
    if (f == VLM_CHAT_VICUNA) {
        PUT(VICUNA_SYSTEM " USER: ");
    } else if (f == VLM_CHAT_MISTRAL) {
        PUT("[INST] ");
    }
    for (int i = 0; n_markers == 0 && i < n_images; i++) {
        PUT(VLM_IMAGE_MARKER "\n");
    }
    PUT(user);
    if (f == VLM_CHAT_VICUNA) {
        PUT(" ASSISTANT:");
    } else if (f == VLM_CHAT_MISTRAL) {
        PUT(" [/INST]");
    }
#undef PUT
    return out;
}

// Tokenizes `len` bytes of `text` as the text right after an image: transformers' Llama tokenizers (legacy =
// False, and the fast Metaspace "first" scheme) give text that follows a special token no leading "▁". Our
// tokenizer always adds it (as llama.cpp does), so tokenize "\n" + text and drop what "\n" alone gives (the lone
// "▁" and the newline byte, which merges with nothing); if that prefix does not come out, keep the plain
// tokenization. Returns the count (writes at most n_max ids) or a negative code.
static int64_t tokenize_after_image(const struct vlm_tokenizer *tok, const char *text, size_t len,
                                    bool parse_special, int32_t *ids, int64_t n_max) {
    int32_t pre[8];
    int64_t n_pre = vlm_tokenize(tok, "\n", 1, false, false, pre, 8);
    char *buf = malloc(len + 2);
    if (!buf) {
        return VLM_ENOMEM;
    }
    buf[0] = '\n';
    memcpy(buf + 1, text, len);
    buf[len + 1] = 0;
    int64_t n = vlm_tokenize(tok, buf, len + 1, false, parse_special, NULL, 0);
    int32_t *all = n > 0 ? malloc((size_t)n * sizeof *all) : NULL;
    int64_t out = VLM_ENOMEM;
    if (n < 0) {
        out = n;
    } else if (all) {
        vlm_tokenize(tok, buf, len + 1, false, parse_special, all, n);
        if (n_pre > 0 && n_pre <= 8 && n >= n_pre && !memcmp(all, pre, (size_t)n_pre * sizeof *pre)) {
            out = n - n_pre;
            memcpy(ids, all + n_pre, (size_t)(out < n_max ? out : n_max) * sizeof *ids);
        } else {
            out = vlm_tokenize(tok, text, len, false, parse_special, ids, n_max);
        }
    }
    free(all);
    free(buf);
    return out;
}

int vlm_chat_tokenize(const struct vlm_tokenizer *tok, const char *text, bool add_bos, bool parse_special, bool split,
                      int32_t **ids, int64_t *starts, int max_chunks) {
    int64_t cap = 256, n = 0;
    int32_t *buf = malloc((size_t)cap * sizeof *buf);
    if (!buf) {
        return VLM_ENOMEM;
    }
    const size_t mlen = strlen(VLM_IMAGE_MARKER);
    int n_chunks = 0;
    const char *p = text;
    for (;;) {
        const char *m = split ? strstr(p, VLM_IMAGE_MARKER) : NULL;
        size_t len = m ? (size_t)(m - p) : strlen(p);
        if (n_chunks == max_chunks) {
            free(buf);
            return VLM_EINVAL;
        }
        starts[n_chunks] = n;
        for (int pass = 0; pass < 2 && len > 0; pass++) { // pass 0 sizes, pass 1 writes
            int64_t got = n_chunks == 0 ? vlm_tokenize(tok, p, len, add_bos, parse_special, buf + n, cap - n)
                                        : tokenize_after_image(tok, p, len, parse_special, buf + n, cap - n);
            if (got < 0) {
                free(buf);
                return (int)got;
            }
            if (n + got <= cap) {
                n += got;
                break;
            }
            while (n + got > cap) {
                cap *= 2;
            }
            int32_t *nb = realloc(buf, (size_t)cap * sizeof *buf);
            if (!nb) {
                free(buf);
                return VLM_ENOMEM;
            }
            buf = nb;
        }
        if (len == 0 && n_chunks == 0 && add_bos) { // a prompt that starts with an image still gets BOS
            int64_t got = vlm_tokenize(tok, "", 0, true, false, buf + n, cap - n);
            n += got > 0 && got <= cap - n ? got : 0;
        }
        n_chunks++;
        if (!m) {
            break;
        }
        p = m + mlen;
    }
    starts[n_chunks] = n;
    *ids = buf;
    return n_chunks;
}
