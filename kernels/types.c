// The type table: block geometry of every ggml type id (so any GGUF file can be validated, even one whose
// types we cannot compute with) and the reference converters of the ones we support.
#include "vlm/types.h"

#include "kernels/cpu/quant-ref.h"
#include "kernels/cpu/quants.h"

#define ROW(id, nm, bs, ts, to, from)                                                                            \
    [id] = {.name = nm, .blck_size = bs, .type_size = ts, .known = true, .to_float = to, .from_float = from}

static const struct vlm_type_traits type_table[VLM_TYPE_COUNT] = {
    ROW(VLM_TYPE_F32, "F32", 1, 4, vlm__dequant_row_f32, vlm__quant_row_f32_ref),
    ROW(VLM_TYPE_F16, "F16", 1, 2, vlm__dequant_row_f16, vlm__quant_row_f16_ref),
    ROW(VLM_TYPE_Q4_0, "Q4_0", VLM_QK4_0, sizeof(struct vlm_block_q4_0), vlm__dequant_row_q4_0,
        vlm__quant_row_q4_0_ref),
    ROW(VLM_TYPE_Q4_1, "Q4_1", VLM_QK4_1, sizeof(struct vlm_block_q4_1), vlm__dequant_row_q4_1,
        vlm__quant_row_q4_1_ref),
    [4] = {.name = NULL, .known = false}, // Q4_2, removed from ggml
    [5] = {.name = NULL, .known = false}, // Q4_3, removed from ggml
    ROW(VLM_TYPE_Q5_0, "Q5_0", VLM_QK5_0, sizeof(struct vlm_block_q5_0), vlm__dequant_row_q5_0,
        vlm__quant_row_q5_0_ref),
    ROW(VLM_TYPE_Q5_1, "Q5_1", VLM_QK5_1, sizeof(struct vlm_block_q5_1), vlm__dequant_row_q5_1,
        vlm__quant_row_q5_1_ref),
    ROW(VLM_TYPE_Q8_0, "Q8_0", VLM_QK8_0, sizeof(struct vlm_block_q8_0), vlm__dequant_row_q8_0,
        vlm__quant_row_q8_0_ref),
    ROW(VLM_TYPE_Q8_1, "Q8_1", VLM_QK8_1, sizeof(struct vlm_block_q8_1), vlm__dequant_row_q8_1,
        vlm__quant_row_q8_1_ref),
    ROW(VLM_TYPE_Q2_K, "Q2_K", VLM_QK_K, sizeof(struct vlm_block_q2_k), vlm__dequant_row_q2_k, NULL),
    ROW(VLM_TYPE_Q3_K, "Q3_K", VLM_QK_K, sizeof(struct vlm_block_q3_k), vlm__dequant_row_q3_k, NULL),
    ROW(VLM_TYPE_Q4_K, "Q4_K", VLM_QK_K, sizeof(struct vlm_block_q4_k), vlm__dequant_row_q4_k, NULL),
    ROW(VLM_TYPE_Q5_K, "Q5_K", VLM_QK_K, sizeof(struct vlm_block_q5_k), vlm__dequant_row_q5_k, NULL),
    ROW(VLM_TYPE_Q6_K, "Q6_K", VLM_QK_K, sizeof(struct vlm_block_q6_k), vlm__dequant_row_q6_k, NULL),
    ROW(VLM_TYPE_Q8_K, "Q8_K", VLM_QK_K, sizeof(struct vlm_block_q8_k), vlm__dequant_row_q8_k,
        vlm__quant_row_q8_k_ref),
    // Types we can size but not compute with: enough to validate a file and say which tensor is unsupported.
    ROW(16, "IQ2_XXS", 256, 66, NULL, NULL),
    ROW(17, "IQ2_XS", 256, 74, NULL, NULL),
    ROW(18, "IQ3_XXS", 256, 98, NULL, NULL),
    ROW(19, "IQ1_S", 256, 50, NULL, NULL),
    ROW(20, "IQ4_NL", 32, 18, NULL, NULL),
    ROW(21, "IQ3_S", 256, 110, NULL, NULL),
    ROW(22, "IQ2_S", 256, 82, NULL, NULL),
    ROW(23, "IQ4_XS", 256, 136, NULL, NULL),
    ROW(VLM_TYPE_I8, "I8", 1, 1, NULL, NULL),
    ROW(VLM_TYPE_I16, "I16", 1, 2, NULL, NULL),
    ROW(VLM_TYPE_I32, "I32", 1, 4, NULL, NULL),
    ROW(VLM_TYPE_I64, "I64", 1, 8, NULL, NULL),
    ROW(VLM_TYPE_F64, "F64", 1, 8, NULL, NULL),
    ROW(29, "IQ1_M", 256, 56, NULL, NULL),
    ROW(VLM_TYPE_BF16, "BF16", 1, 2, vlm__dequant_row_bf16, vlm__quant_row_bf16_ref),
    ROW(34, "TQ1_0", 256, 54, NULL, NULL),
    ROW(35, "TQ2_0", 256, 66, NULL, NULL),
    ROW(39, "MXFP4", 32, 17, NULL, NULL),
};

static const struct vlm_type_traits unknown_row = {.name = NULL, .known = false};

const struct vlm_type_traits *vlm_type_traits(int type) {
    if (type < 0 || type >= VLM_TYPE_COUNT) {
        return &unknown_row;
    }
    return &type_table[type];
}

const char *vlm_type_name(int type) {
    const char *name = vlm_type_traits(type)->name;
    return name ? name : "?";
}

size_t vlm_row_size(enum vlm_type type, int64_t n) {
    const struct vlm_type_traits *t = vlm_type_traits((int)type);
    if (!t->known || t->blck_size <= 0) {
        return 0;
    }
    return t->type_size * (size_t)(n / t->blck_size);
}

bool vlm_type_is_supported(enum vlm_type type) {
    const struct vlm_type_traits *t = vlm_type_traits((int)type);
    return t->to_float != NULL && vlm__cpu_type_traits(type) != NULL;
}
