#!/usr/bin/env python3
"""Writes the GGUF test fixtures under tests/data/gguf/.

Valid files:
  all-types.gguf  v3, written with gguf.GGUFWriter: every metadata type, arrays, empty array/string, tensors of
                  several types (F32, F16, Q8_0, I32, 3-D and 4-D), custom alignment 64.
  v2.gguf         v2, packed by hand (gguf-py only writes v3), default alignment 32.
  kv-only.gguf    v3, no tensors, ends right after the metadata with no padding (like llama.cpp's vocab files).
  zero-size.gguf  v3, tensors with a zero dimension (size 0) followed by a normal one.
Corrupt files: corrupt/*.gguf, each packed by hand with struct, and corrupt/MANIFEST with one line per file:
  filename<TAB>substring the reader's error message must contain

The values are mirrored in tests/test-gguf.c; change both together. CI does not run this script: the outputs are
committed. Usage: python3 tools/make_gguf_fixtures.py [--out tests/data/gguf]
"""

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

# gguf value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
              F64: "d"}
# ggml types
T_F32, T_F16, T_Q8_0, T_I32 = 0, 1, 8, 26


# ---- valid files -------------------------------------------------------------------------------------------------

def q8_0_bytes(n_blocks: int) -> np.ndarray:
    """Q8_0 blocks as raw bytes: d = 0.5 (f16), then qs[j] = ((b * 32 + j) % 256) - 128 as int8."""
    out = bytearray()
    for b in range(n_blocks):
        out += np.float16(0.5).tobytes()
        out += bytes((((b * 32 + j) % 256) - 128) & 0xFF for j in range(32))
    return np.frombuffer(bytes(out), dtype=np.uint8).copy()


def write_all_types(path: Path) -> None:
    import gguf

    class Writer(gguf.GGUFWriter):
        # gguf-py refuses empty arrays; the format allows them (element type + count 0).
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    V = gguf.GGUFValueType
    w = Writer(str(path), "test")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.str", "hello, gguf \u2713")
    w.add_key_value("test.str_empty", "", V.STRING)  # add_string() drops empty strings
    w.add_uint64("test.u64", (1 << 63) + 5)
    w.add_int64("test.i64", -(1 << 62))
    w.add_float64("test.f64", 3.141592653589793)
    w.add_key_value("test.arr_i32", [1, -2, 3, -4, 5], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.arr_u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_f32", [0.5, -1.25, 1e10], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("test.arr_f64", [0.1, -2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_key_value("test.arr_u64", [0, (1 << 64) - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("test.arr_str", ["a", "", "hello world", "\u2603"], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("test.arr_empty", [], V.ARRAY, sub_type=V.INT32)

    Q = gguf.GGMLQuantizationType
    w.add_tensor("f32_vec", np.arange(10, dtype=np.float32) * 0.25 - 1.0)           # ne [10]
    w.add_tensor("f16_mat", ((np.arange(24, dtype=np.float32) - 12) * 0.5).astype(np.float16).reshape(3, 8))
    w.add_tensor("q8_0_mat", q8_0_bytes(4).reshape(2, 68), raw_dtype=Q.Q8_0)        # ne [64, 2]
    w.add_tensor("i32_vec", np.arange(7, dtype=np.int32) * 1000)                    # ne [7]
    w.add_tensor("t3d", np.arange(24, dtype=np.float32).reshape(2, 3, 4))           # ne [4, 3, 2]
    w.add_tensor("t4d", -np.arange(30, dtype=np.float32).reshape(2, 1, 3, 5))       # ne [5, 3, 1, 2]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def p_str(s, e="<"):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(e + "Q", len(b)) + b


def p_kv(key, vtype, val, e="<", sub=None):
    out = p_str(key, e) + struct.pack(e + "I", vtype & 0xFFFFFFFF)
    if vtype == STR:
        out += p_str(val, e)
    elif vtype == ARR:
        out += struct.pack(e + "IQ", sub, len(val))
        for x in val:
            out += p_str(x, e) if sub == STR else struct.pack(e + SCALAR_FMT[sub], x)
    else:
        out += struct.pack(e + SCALAR_FMT[vtype], val)
    return out


def p_ti(name, ne, ttype, offset, e="<"):
    out = p_str(name, e) + struct.pack(e + "I", len(ne))
    for n in ne:
        out += struct.pack(e + "q", n) if n < 0 else struct.pack(e + "Q", n)
    return out + struct.pack(e + "iQ", ttype, offset)


def p_header(version, n_tensors, n_kv, e="<", magic=b"GGUF"):
    return magic + struct.pack(e + "Iqq", version, n_tensors, n_kv)


def pad_to(buf: bytes, align: int) -> bytes:
    return buf + b"\0" * ((-len(buf)) % align)


def write_v2(path: Path) -> None:
    kvs = [p_kv("general.architecture", STR, "v2test"),
           p_kv("v2.count", U32, 7),
           p_kv("v2.names", ARR, ["x", "yz"], sub=STR)]
    a = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32).tobytes()        # 16 bytes, padded to 32
    b = np.array([0.5, -0.5, 2.0, -2.0], dtype=np.float16).tobytes()     # ne [2, 2], 8 bytes
    tis = [p_ti("a", [4], T_F32, 0), p_ti("b", [2, 2], T_F16, 32)]
    buf = p_header(2, len(tis), len(kvs)) + b"".join(kvs) + b"".join(tis)
    buf = pad_to(buf, 32) + pad_to(a, 32) + b
    path.write_bytes(buf)


def write_kv_only(path: Path) -> None:
    kvs = [p_kv("general.architecture", STR, "kvonly"),
           p_kv("kv.tokens", ARR, ["<unk>", "<s>", "</s>", "\u2581the"], sub=STR),
           p_kv("kv.scores", ARR, [0.0, -1.0, -2.0, -3.5], sub=F32)]
    path.write_bytes(p_header(3, 0, len(kvs)) + b"".join(kvs))


def write_zero_size(path: Path) -> None:
    """Zero-element tensors (a 0 in any dim) take no bytes; the tensor after them starts at the same offset."""
    kvs = [p_kv("general.architecture", STR, "zero")]
    tis = [p_ti("empty_rows", [0, 5], T_F32, 0), p_ti("empty_q8", [32, 0, 3], T_Q8_0, 0),
           p_ti("after", [4], T_F32, 0)]
    buf = pad_to(p_header(3, len(tis), len(kvs)) + b"".join(kvs) + b"".join(tis), 32)
    path.write_bytes(buf + np.array([9.0, 8.0, 7.0, 6.0], dtype=np.float32).tobytes())


# ---- corrupt files -----------------------------------------------------------------------------------------------

def base_parts(e="<"):
    """A small valid file as parts, so corrupt variants can swap one piece."""
    kvs = [p_kv("general.name", STR, "corrupt-file test model " + "x" * 100, e),
           p_kv("general.architecture", STR, "llama", e),
           p_kv("general.alignment", U32, 32, e),
           p_kv("test.arr", ARR, list(range(8)), e, sub=I32),
           p_kv("test.names", ARR, ["alpha", "beta", "gamma"], e, sub=STR)]
    tis = [p_ti("tok_embd.weight", [8, 2], T_F32, 0, e), p_ti("norm.weight", [8], T_F32, 64, e)]
    data = np.arange(16, dtype=np.float32).tobytes() + np.ones(8, dtype=np.float32).tobytes()
    return kvs, tis, data


def assemble(kvs, tis, data, version=3, e="<", n_tensors=None, n_kv=None, align=32, magic=b"GGUF"):
    head = p_header(version, len(tis) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv, e,
                    magic)
    meta = head + b"".join(kvs) + b"".join(tis)
    return pad_to(meta, align) + data


def corrupt_files():
    """Yields (name, bytes, expected substring)."""
    kvs, tis, data = base_parts()
    good = assemble(kvs, tis, data)
    hdr = 24
    kv_ends = []
    pos = hdr
    for k in kvs:
        pos += len(k)
        kv_ends.append(pos)
    ti_start = kv_ends[-1]
    meta_end = ti_start + sum(len(t) for t in tis)

    # header
    yield "empty", b"", "file is empty"
    yield "bad-magic", b"GGML" + good[4:], "bad magic 'GGML'"
    yield "magic-only", b"GGUF", "truncated header: file has 4 bytes"
    yield "version-0", good[:4] + struct.pack("<I", 0) + good[8:], "unsupported GGUF version 0 (expected 2 or 3)"
    yield "version-1", good[:4] + struct.pack("<I", 1) + good[8:], "GGUF version 1 is no longer supported"
    yield "version-4", good[:4] + struct.pack("<I", 4) + good[8:], "unsupported GGUF version 4 (expected 2 or 3)"
    yield "version-huge", good[:4] + struct.pack("<I", 0x7FFFFFFF) + good[8:], "unsupported GGUF version 2147483647"
    bkvs, btis, _ = base_parts(">")
    big = assemble(bkvs, btis, np.arange(16, dtype=">f4").tobytes() + np.ones(8, dtype=">f4").tobytes(), e=">")
    yield "big-endian", big, "wrong endianness"
    yield "trunc-header", good[:20], "truncated header: file has 20 bytes, a GGUF header needs 24"
    yield "n-tensors-huge", assemble(kvs, tis, data, n_tensors=1 << 40), "tensor count 1099511627776 is impossible"
    yield "n-tensors-negative", assemble(kvs, tis, data, n_tensors=-1), "tensor count -1 is impossible"
    # 4 tensor infos cannot fit in the bytes after the metadata of a file cut after its 2 real infos
    yield "n-tensors-too-many", assemble(kvs, tis, data, n_tensors=4)[:meta_end], "tensor count 4 needs more than"
    yield "n-kv-huge", assemble(kvs, tis, data, n_kv=1 << 62), "kv count 4611686018427387904 is impossible"
    yield "n-kv-negative", assemble(kvs, tis, data, n_kv=-5), "kv count -5 is impossible"

    # truncation in each section (the reader must name the field it was reading)
    def kv_at(i):
        return hdr if i == 0 else kv_ends[i - 1]

    p = kv_at(2)  # general.alignment: key length 8, key 17, type 4, value 4
    yield "trunc-key-length", good[:p + 3], "length of key of kv 2"
    yield "trunc-key", good[:p + 8 + 5], "key of kv 2: string length 17"
    yield "trunc-value-type", good[:p + 8 + 17 + 2], "value type of key 'general.alignment'"
    yield "trunc-value-scalar", good[:p + 8 + 17 + 4 + 2], "UINT32 value of key 'general.alignment'"
    p = kv_at(1) + 8 + 20 + 4  # general.architecture value
    yield "trunc-value-str-length", good[:p + 5], "length of value of key 'general.architecture'"
    yield "trunc-value-str", good[:p + 8 + 3], "value of key 'general.architecture': string length 5"
    p = kv_at(3) + 8 + 8 + 4  # test.arr array header
    yield "trunc-array-header", good[:p + 6], "array header of key 'test.arr'"
    yield "trunc-array-body", good[:p + 12 + 10], "key 'test.arr': array of 8 INT32 elements"
    p = kv_at(4) + 8 + 10 + 4 + 12  # test.names elements: "alpha", "beta", "gamma"
    yield "trunc-array-str", good[:p + 8 + 5 + 8 + 4 + 8 + 2], "string 2 of array 'test.names': string length 5"
    yield "trunc-array-str-length", good[:p + 8 + 5 + 8 + 4 + 3], "length of string 2 of array 'test.names'"
    yield "trunc-tensor-table", good[:ti_start + 8 + 4], "tensor count 2 needs more than"
    t1 = ti_start + len(tis[0])  # second tensor info: name length 8, name 11, n_dims 4, ne 8, type 4, offset 8
    yield "trunc-tensor-name", good[:t1 + 8 + 5], "name of tensor 1"
    yield "trunc-tensor-info", good[:t1 + 8 + 11 + 4 + 3], "shape, type and offset of tensor 'norm.weight'"
    yield "data-missing", good[:meta_end], "data section missing"
    yield "trunc-data", good[:len(good) - 10], "tensor 'norm.weight': data at offset"

    # keys and values
    def with_kv(i, kv):
        k2 = list(kvs)
        k2[i] = kv
        return assemble(k2, tis, data)

    yield "key-length-huge", with_kv(3, struct.pack("<Q", 1 << 60) + kvs[3][8:]), \
        "key of kv 3: string length 1152921504606846976"
    yield "key-empty", with_kv(2, p_kv("", U8, 1)), f"kv 2 at offset {kv_at(2)}: empty key"
    yield "key-duplicate", with_kv(2, p_kv("general.architecture", STR, "again")), \
        "duplicate key 'general.architecture'"
    yield "key-nul", with_kv(2, p_kv("test\0arr", U8, 1)), "key 'test\\x00arr': contains a NUL byte"
    yield "value-type-unknown", with_kv(2, p_str("test.x") + struct.pack("<I", 13) + b"\0" * 8), \
        "key 'test.x': unknown value type 13"
    yield "value-type-negative", with_kv(2, p_str("test.x") + struct.pack("<i", -1) + b"\0" * 8), \
        "key 'test.x': unknown value type 4294967295"
    yield "array-nested", with_kv(2, p_str("test.arr") + struct.pack("<IIQ", ARR, ARR, 1) + struct.pack("<IQ", U8, 0)),\
        "key 'test.arr': nested arrays are not supported"
    yield "array-type-unknown", with_kv(2, p_str("test.arr") + struct.pack("<IIQ", ARR, 99, 1) + b"\0" * 8), \
        "key 'test.arr': unknown array element type 99"
    tiny = p_header(3, 0, 1) + p_str("a") + struct.pack("<IIQ", ARR, U8, 1 << 63)
    yield "array-count-2p63", tiny, "key 'a': array of 9223372036854775808 UINT8 elements"
    yield "array-str-count-huge", with_kv(4, p_str("test.names") + struct.pack("<IIQ", ARR, STR, 1 << 40)), \
        "key 'test.names': array of 1099511627776 STRING elements"
    yield "string-length-past-end", with_kv(1, p_str("general.architecture") + struct.pack("<IQ", STR, 5000) + b"llama"),\
        "value of key 'general.architecture': string length 5000"
    yield "alignment-0", with_kv(2, p_kv("general.alignment", U32, 0)), "non-zero power of two, got 0"
    yield "alignment-3", with_kv(2, p_kv("general.alignment", U32, 3)), "non-zero power of two, got 3"
    yield "alignment-int32", with_kv(2, p_kv("general.alignment", I32, 32)), \
        "general.alignment has type INT32, expected UINT32"
    yield "alignment-string", with_kv(2, p_kv("general.alignment", STR, "32")), \
        "general.alignment has type STRING, expected UINT32"

    # tensor infos
    def with_ti(i, ti, d=data):
        t2 = list(tis)
        t2[i] = ti
        return assemble(kvs, t2, d)

    yield "tensor-name-long", with_ti(1, p_ti("n" * 64, [8], T_F32, 64)), "name too long (64 bytes, at most 63)"
    yield "tensor-name-dup", with_ti(1, p_ti("tok_embd.weight", [8], T_F32, 64)), \
        "duplicate tensor name 'tok_embd.weight'"
    yield "tensor-name-nul", with_ti(1, p_ti("norm\0weight", [8], T_F32, 64)), "name contains a NUL byte"
    yield "n-dims-0", with_ti(1, p_ti("norm.weight", [], T_F32, 64) + b"\0" * 8), "n_dims 0 out of range 1..4"
    yield "n-dims-5", with_ti(1, p_ti("norm.weight", [8, 1, 1, 1, 1], T_F32, 64)), "n_dims 5 out of range 1..4"
    yield "ne-negative", with_ti(1, p_ti("norm.weight", [8, -1], T_F32, 64)), "negative dimension ne[1] = -1"
    yield "ne-overflow", with_ti(1, p_ti("norm.weight", [1 << 32, 1 << 32], T_F32, 64)), "element count"
    yield "size-overflow", with_ti(1, p_ti("norm.weight", [1 << 31, 1 << 31], T_F32, 64)), \
        "byte size of 2147483648 x 2147483648 x 1 x 1 F32 overflows"
    yield "type-41", with_ti(1, p_ti("norm.weight", [8], 41, 64)), "unknown tensor type 41"
    yield "type-4-removed", with_ti(1, p_ti("norm.weight", [8], 4, 64)), "unknown tensor type 4"
    yield "type-7fffffff", with_ti(1, p_ti("norm.weight", [8], 0x7FFFFFFF, 64)), "unknown tensor type 2147483647"
    yield "type-negative", with_ti(1, p_ti("norm.weight", [8], -1, 64)), "unknown tensor type -1"
    yield "ne0-not-block-multiple", with_ti(1, p_ti("norm.weight", [33], T_Q8_0, 64)), \
        "ne[0] = 33 is not a multiple of the Q8_0 block size 32"
    yield "offset-unaligned", with_ti(1, p_ti("norm.weight", [8], T_F32, 65)), "data offset 65 is not aligned to 32"
    yield "offset-past-eof", with_ti(1, p_ti("norm.weight", [8], T_F32, 4096)), "data offset 4096 lies past end of file"
    yield "offset-size-past-eof", with_ti(1, p_ti("norm.weight", [1024], T_F32, 64)), \
        "extends past end of file (size"
    yield "tensors-overlap", with_ti(1, p_ti("norm.weight", [8], T_F32, 32)), \
        "tensor 'norm.weight': data offset 32 overlaps 'tok_embd.weight', expected 64"
    yield "tensors-gap", with_ti(1, p_ti("norm.weight", [8], T_F32, 96), data + b"\0" * 64), \
        "tensor 'norm.weight': data offset 96 leaves a gap after 'tok_embd.weight', expected 64"
    swapped = [p_ti("tok_embd.weight", [8, 2], T_F32, 32), p_ti("norm.weight", [8], T_F32, 0)]
    yield "tensors-reordered", assemble(kvs, swapped, data + b"\0" * 32), \
        "tensor 'tok_embd.weight': data offset 32 leaves a gap after the start of the data section, expected 0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "data" / "gguf"))
    args = ap.parse_args()
    out = Path(args.out)
    (out / "corrupt").mkdir(parents=True, exist_ok=True)
    write_all_types(out / "all-types.gguf")
    write_v2(out / "v2.gguf")
    write_kv_only(out / "kv-only.gguf")
    write_zero_size(out / "zero-size.gguf")
    names = set()
    lines = []
    for name, buf, expect in corrupt_files():
        assert name not in names, name
        assert "\t" not in expect and "\n" not in expect
        names.add(name)
        fn = name + ".gguf"
        (out / "corrupt" / fn).write_bytes(buf)
        lines.append(f"{fn}\t{expect}\n")
    for old in (out / "corrupt").glob("*.gguf"):
        if old.name[:-5] not in names:
            old.unlink()
    (out / "corrupt" / "MANIFEST").write_text("".join(lines))
    print(f"wrote 4 valid files and {len(lines)} corrupt files to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
