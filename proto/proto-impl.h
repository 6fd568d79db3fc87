// Internal to proto/: the msgpack header decoder shared by the scanner and the decoders, and a cursor over
// bytes that the scanner has already checked (the cursor still checks every bound: it is also used on bytes
// handed to vlm_proto_parse).
#ifndef VLM_PROTO_IMPL_H
#define VLM_PROTO_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/proto.h"

enum vlm__mp_kind {
    VLM__MP_NIL = 1,
    VLM__MP_BOOL,
    VLM__MP_UINT,  // non-negative integer (any encoding)
    VLM__MP_INT,   // negative integer
    VLM__MP_FLOAT, // float32 or float64
    VLM__MP_STR,
    VLM__MP_BIN,
    VLM__MP_EXT,
    VLM__MP_ARRAY,
    VLM__MP_MAP,
};

// One decoded header.
struct vlm__mp_hdr {
    enum vlm__mp_kind kind;
    uint32_t hsize;   // header bytes (type byte, length/count, ext type)
    uint64_t payload; // bytes after the header: value bytes of scalars, body of str/bin/ext; 0 for containers
    uint64_t count;   // array elements or map pairs
    bool is_f32;      // FLOAT: 4-byte payload
};

// Decodes the header at p (avail bytes present). Returns 1, 0 when more bytes are needed to read the header
// itself, or -1 for the never-used byte 0xc1.
int vlm__mp_header(const uint8_t *p, size_t avail, struct vlm__mp_hdr *h);

// A decoded object: scalars carry their value, str/bin/ext their body, containers their count (the cursor then
// stands on the first element).
struct vlm__mp_obj {
    enum vlm__mp_kind kind;
    bool b;
    uint64_t u; // UINT
    int64_t i;  // INT (negative)
    double f;   // FLOAT
    const uint8_t *ptr; // str/bin/ext body
    uint64_t len;       // str/bin/ext length, array elements, map pairs
};

struct vlm__mp_cur {
    const uint8_t *p;
    const uint8_t *end;
};

// Reads one object (for containers: the header only). Returns 0, or -1 when the bytes are short or malformed.
int vlm__mp_read(struct vlm__mp_cur *c, struct vlm__mp_obj *o);
// Skips one complete object, containers included, without recursion. Returns 0 or -1.
int vlm__mp_skip(struct vlm__mp_cur *c);

// Maps a method name to its enum (VLM_RPC_UNKNOWN when not ours).
enum vlm_rpc_method vlm__rpc_method_lookup(const uint8_t *name, uint64_t len);

#endif // VLM_PROTO_IMPL_H
