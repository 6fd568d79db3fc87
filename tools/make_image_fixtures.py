#!/usr/bin/env python3
"""Writes the image decoder fixtures in tests/data/images/ (read by tests/test-image.c).

Needs Pillow and numpy (not CI: the outputs are committed). Deterministic: same Pillow, same bytes.

Every decodable fixture X gets X.rgb: what transformers' load_image sees, i.e.
PIL.ImageOps.exif_transpose(Image.open(X)).convert("RGB"), as raw RGB8 rows. The real photos get only a sampled
grid (every STRIDE-th pixel in both directions, starting at 0) in X.grid.rgb, to keep the repository small.

MANIFEST, one fixture per line, tab-separated, paths relative to tests/data/images:
    good   <file>  <width>  <height>  <max abs diff allowed vs X.rgb>
    photo  <file>  <width>  <height>  <grid stride>  <max abs diff allowed vs X.grid.rgb>
    bad    <file>  <VLM error name>  <substring the message must contain>
PNG and lossless WebP must match exactly. JPEG and lossy WebP get a small tolerance because Pillow bundles its
own libjpeg-turbo / libwebp (tests/test-image.c prints the max difference it measures).

Usage: python3 tools/make_image_fixtures.py [--out tests/data/images] [--photos /work/shared/testdata]
"""
import argparse
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

W, H = 17, 11  # odd sizes exercise partial MCUs, chroma edges and every Adam7 pass
# Measured here: 0 for every fixture and photo (Debian's libjpeg-turbo 2.1.5 / libwebp 1.2.4 against Pillow 13's
# bundled libjpeg-turbo 3.2 / libwebp 1.6); 1 leaves room for IDCT/upsampling rounding in other library builds.
JPEG_TOL = 1
WEBP_LOSSY_TOL = 1
PHOTO_STRIDE = 7
PHOTOS = [("test-1.jpeg", 640, 488), ("extreme_ironing.jpg", 570, 380), ("waterview.jpg", 1000, 667)]


def pattern(w=W, h=H, seed=1):
    """Smooth gradients plus a little noise: no symmetry, so any wrong flip or rotation shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.int32)
    g = (y * 255 // max(h - 1, 1)).astype(np.int32)
    b = ((x * 7 + y * 13) % 64 * 4).astype(np.int32)
    img = np.stack([r, g, b], axis=-1) + rng.integers(-12, 13, (h, w, 3))
    img[0, 0] = (255, 0, 0)  # a marked corner
    return np.clip(img, 0, 255).astype(np.uint8)


def pattern16(w=W, h=H, channels=3, seed=2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, (h, w, channels), dtype=np.uint32).astype(np.uint16)


# ---- PNG writer (Pillow cannot write 16-bit colour, Adam7 or broken files) ----------------------------------------

def chunk(typ, data):
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def pack_rows(samples, bit_depth):
    """samples: [h][w][c] integers -> list of raw scanlines (without filter byte)."""
    rows = []
    for row in samples:
        flat = np.asarray(row).reshape(-1)
        if bit_depth == 16:
            rows.append(flat.astype(">u2").tobytes())
        elif bit_depth == 8:
            rows.append(flat.astype(np.uint8).tobytes())
        else:
            per = 8 // bit_depth
            out = bytearray()
            for i in range(0, len(flat), per):
                v = 0
                for j in range(per):
                    v <<= bit_depth
                    if i + j < len(flat):
                        v |= int(flat[i + j])
                out.append(v)
            rows.append(bytes(out))
    return rows


def make_png(samples, color_type, bit_depth, plte=None, trns=None, interlace=False, before_idat=(), after_idat=(),
             iend=True, idat_split=None):
    samples = np.asarray(samples)
    h, w = samples.shape[:2]
    raw = bytearray()
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for r in pack_rows(sub, bit_depth):
                raw += b"\0" + r
    else:
        for r in pack_rows(samples, bit_depth):
            raw += b"\0" + r
    z = zlib.compress(bytes(raw), 9)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0,
                                                             1 if interlace else 0))
    for c in before_idat:
        out += c
    if plte is not None:
        out += chunk(b"PLTE", bytes(plte))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    if idat_split:
        for i in range(0, len(z), idat_split):
            out += chunk(b"IDAT", z[i:i + idat_split])
    else:
        out += chunk(b"IDAT", z)
    for c in after_idat:
        out += c
    if iend:
        out += chunk(b"IEND", b"")
    return out


def tiff_orientation(value, big_endian=False, ifd_offset=8):
    e = ">" if big_endian else "<"
    head = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "I", ifd_offset)
    head += b"\0" * (ifd_offset - 8)
    ifd = struct.pack(e + "H", 2)
    ifd += struct.pack(e + "HHI", 0x010F, 2, 4) + b"cam\0"  # Make, inline ASCII
    ifd += struct.pack(e + "HHIHH", 0x0112, 3, 1, value, 0)
    ifd += struct.pack(e + "I", 0)
    return head + ifd


# ---- helpers --------------------------------------------------------------------------------------------------------

class Writer:
    def __init__(self, root):
        self.root = root
        self.lines = []

    def put(self, rel, data):
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def good(self, rel, data, tol=0, expect=None):
        """expect: the pixels, for files Pillow refuses to open although the image data is intact."""
        p = self.put(rel, data)
        try:
            arr = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any Pillow failure
            if expect is None:
                raise
            print(f"  {rel}: Pillow refuses it ({e}); expected pixels given by the script")
            arr = expect
        (self.root / (rel + ".rgb")).write_bytes(np.ascontiguousarray(arr).tobytes())
        self.lines.append(f"good\t{rel}\t{arr.shape[1]}\t{arr.shape[0]}\t{tol}")

    def bad(self, rel, data, code, msg):
        self.put(rel, data)
        self.lines.append(f"bad\t{rel}\t{code}\t{msg}")

    def photo(self, rel, src, w, h):
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, p)
        im = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
        assert im.size == (w, h), (rel, im.size)
        grid = np.ascontiguousarray(np.asarray(im)[::PHOTO_STRIDE, ::PHOTO_STRIDE])
        (self.root / (rel + ".grid.rgb")).write_bytes(grid.tobytes())
        self.lines.append(f"photo\t{rel}\t{w}\t{h}\t{PHOTO_STRIDE}\t{JPEG_TOL}")


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def jpeg_segments(data):
    """Splits a JPEG into (marker, bytes) up to SOS; returns (segments, scan data start)."""
    segs, i = [], 2
    while True:
        assert data[i] == 0xFF
        m = data[i + 1]
        n = struct.unpack(">H", data[i + 2:i + 4])[0]
        segs.append((m, i, i + 2 + n))
        if m == 0xDA:
            return segs
        i += 2 + n


def set_jpeg_size(data, w, h):
    for m, a, _ in jpeg_segments(data):
        if m in (0xC0, 0xC1, 0xC2):
            return data[:a + 5] + struct.pack(">HH", h, w) + data[a + 9:]
    raise ValueError("no SOF")


def set_png_size(data, w, h):
    ihdr = struct.pack(">II", w, h) + data[24:29]
    return data[:8] + chunk(b"IHDR", ihdr) + data[33:]


def set_png_color(data, bit_depth, color_type):
    ihdr = data[16:24] + bytes([bit_depth, color_type]) + data[26:29]
    return data[:8] + chunk(b"IHDR", ihdr) + data[33:]


def drop_jpeg_sof(data):
    for m, a, b in jpeg_segments(data):
        if m in (0xC0, 0xC1, 0xC2):
            return data[:a] + data[b:]
    raise ValueError("no SOF")


def many_scans(prog, n_scans):
    """A progressive JPEG whose first scan (DC first pass) is repeated until there are n_scans scans: libjpeg
    warns about the bogus progression and would keep decoding every scan without a limit."""
    segs = jpeg_segments(prog)
    sos_start = segs[-1][1]
    nxt = sos_start + 2
    while True:  # end of the first scan's entropy data: next marker that is not RSTn or a stuffed 0
        nxt = prog.index(b"\xff", nxt + 1)
        if prog[nxt + 1] != 0 and not 0xD0 <= prog[nxt + 1] <= 0xD7:
            break
    first = prog[sos_start:nxt]
    rest = prog[nxt:]
    n_orig = prog.count(b"\xff\xda")
    return prog[:sos_start] + first * (n_scans - n_orig + 1) + rest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/data/images"))
    ap.add_argument("--photos", default="/work/shared/testdata")
    args = ap.parse_args()
    root = Path(args.out)
    for sub in ("good", "bad", "photos"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    wr = Writer(root)
    rgb = pattern()
    im = Image.fromarray(rgb, "RGB")
    grey = Image.fromarray(rgb[..., 1].copy(), "L")

    # ---- PNG: Pillow-written -------------------------------------------------------------------------------------
    wr.good("good/png-rgb8.png", pil_bytes(im, "PNG"))
    wr.good("good/png-grey8.png", pil_bytes(grey, "PNG"))
    wr.good("good/png-grey1.png", pil_bytes(grey.convert("1"), "PNG"))
    pal = im.quantize(200)
    wr.good("good/png-pal8.png", pil_bytes(pal, "PNG"))
    wr.good("good/png-pal4.png", pil_bytes(im.quantize(16), "PNG", bits=4))
    wr.good("good/png-pal-trns.png", pil_bytes(pal, "PNG", transparency=3))
    rgba = im.copy()
    rgba.putalpha(Image.fromarray((rgb[..., 0] // 2 + rgb[..., 2] // 3).astype(np.uint8), "L"))
    wr.good("good/png-rgba8.png", pil_bytes(rgba, "PNG"))
    la = grey.copy()
    la.putalpha(Image.fromarray(rgb[..., 0], "L"))
    wr.good("good/png-la8.png", pil_bytes(la, "PNG"))
    wr.good("good/png-grey8-trns.png", pil_bytes(grey, "PNG", transparency=100))
    exif = Image.Exif()
    exif[0x0112] = 6
    wr.good("good/png-exif6.png", pil_bytes(im, "PNG", exif=exif))
    wr.good("good/png-1x1.png", pil_bytes(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))

    # ---- PNG: our writer (16-bit, low bit depths, Adam7) -----------------------------------------------------------
    rgb16 = pattern16()
    g16 = pattern16(channels=1, seed=3)
    g16[0, :4, 0] = [0, 100, 255, 256]  # the saturation edge of Pillow's I;16 -> RGB
    wr.good("good/png-rgb16.png", make_png(rgb16, 2, 16))
    wr.good("good/png-rgba16.png", make_png(pattern16(channels=4, seed=4), 6, 16))
    wr.good("good/png-la16.png", make_png(pattern16(channels=2, seed=5), 4, 16))
    wr.good("good/png-grey16.png", make_png(g16, 0, 16))
    wr.good("good/png-grey16-small.png", make_png(g16 >> 8, 0, 16))  # all <= 255: the values pass through
    wr.good("good/png-grey16-trns.png", make_png(g16, 0, 16, trns=struct.pack(">H", 256)))
    wr.good("good/png-grey2.png", make_png(rgb[..., :1] >> 6, 0, 2))
    wr.good("good/png-grey4.png", make_png(rgb[..., :1] >> 4, 0, 4))
    pal_idx = (np.asarray(pal)[..., None]).astype(np.uint8)
    pal_rgb = pal.getpalette()[:256 * 3]
    wr.good("good/png-rgb8-adam7.png", make_png(rgb, 2, 8, interlace=True))
    wr.good("good/png-pal8-adam7.png", make_png(pal_idx, 3, 8, plte=pal_rgb, interlace=True))
    wr.good("good/png-grey16-adam7.png", make_png(g16, 0, 16, interlace=True))
    wr.good("good/png-rgba16-adam7.png", make_png(pattern16(channels=4, seed=6), 6, 16, interlace=True))
    wr.good("good/png-grey1-adam7.png", make_png(rgb[..., :1] >> 7, 0, 1, interlace=True))
    wr.good("good/png-multi-idat.png", make_png(rgb, 2, 8, idat_split=50))

    # ---- JPEG ----------------------------------------------------------------------------------------------------
    wr.good("good/jpeg-420.jpg", pil_bytes(im, "JPEG", quality=90), JPEG_TOL)
    wr.good("good/jpeg-422.jpg", pil_bytes(im, "JPEG", quality=90, subsampling=1), JPEG_TOL)
    wr.good("good/jpeg-444.jpg", pil_bytes(im, "JPEG", quality=90, subsampling=0), JPEG_TOL)
    prog = pil_bytes(im, "JPEG", quality=90, progressive=True)
    wr.good("good/jpeg-progressive.jpg", prog, JPEG_TOL)
    wr.good("good/jpeg-grey.jpg", pil_bytes(grey, "JPEG", quality=90), JPEG_TOL)
    wr.good("good/jpeg-grey-progressive.jpg", pil_bytes(grey, "JPEG", quality=90, progressive=True), JPEG_TOL)
    cmyk = Image.fromarray(np.concatenate([255 - rgb, (rgb[..., :1] // 3)], axis=-1), "CMYK")
    wr.good("good/jpeg-cmyk.jpg", pil_bytes(cmyk, "JPEG", quality=95), JPEG_TOL)
    wr.good("good/jpeg-1x1.jpg", pil_bytes(Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"), JPEG_TOL)
    wr.good("good/jpeg-restart.jpg", pil_bytes(im, "JPEG", quality=90, restart_marker_blocks=1), JPEG_TOL)
    for o in range(1, 9):
        wr.good(f"good/jpeg-exif{o}.jpg", pil_bytes(im, "JPEG", quality=90, exif=b"Exif\0\0" + tiff_orientation(o)),
                JPEG_TOL)
    for o in (3, 6, 8):
        wr.good(f"good/jpeg-exif{o}-be.jpg",
                pil_bytes(im, "JPEG", quality=90, exif=b"Exif\0\0" + tiff_orientation(o, big_endian=True, ifd_offset=14)),
                JPEG_TOL)
    wr.good("good/jpeg-exif-badifd.jpg",
            pil_bytes(im, "JPEG", quality=90, exif=b"Exif\0\0II*\0" + struct.pack("<I", 5000) + b"\0" * 8), JPEG_TOL)
    wr.good("good/jpeg-exif-orient9.jpg",
            pil_bytes(im, "JPEG", quality=90, exif=b"Exif\0\0" + tiff_orientation(9)), JPEG_TOL)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    wr.good("good/jpeg-xmp8.jpg", pil_bytes(im, "JPEG", quality=90, xmp=xmp), JPEG_TOL)

    # ---- WebP ----------------------------------------------------------------------------------------------------
    wr.good("good/webp-lossy.webp", pil_bytes(im, "WEBP", quality=90), WEBP_LOSSY_TOL)
    wr.good("good/webp-lossless.webp", pil_bytes(im, "WEBP", lossless=True))
    wr.good("good/webp-lossless-alpha.webp", pil_bytes(rgba, "WEBP", lossless=True, exact=True))
    wr.good("good/webp-lossy-alpha.webp", pil_bytes(rgba, "WEBP", quality=90), WEBP_LOSSY_TOL)
    exif3 = Image.Exif()
    exif3[0x0112] = 3
    wr.good("good/webp-exif3.webp", pil_bytes(im, "WEBP", lossless=True, exif=exif3))

    # ---- bad corpus ------------------------------------------------------------------------------------------------
    base = pil_bytes(im, "JPEG", quality=90)
    sos = jpeg_segments(base)[-1][1]
    wr.bad("bad/empty.bin", b"", "EUNSUPPORTED", "empty image data")
    wr.bad("bad/jpeg-soi-only.jpg", base[:3], "EBADIMAGE", "truncated JPEG data")
    wr.bad("bad/jpeg-trunc-header.jpg", base[:sos // 2], "EBADIMAGE", "truncated JPEG data")
    wr.bad("bad/jpeg-trunc-scan.jpg", base[:(sos + len(base)) // 2], "EBADIMAGE", "truncated JPEG data")
    wr.bad("bad/jpeg-no-eoi.jpg", base[:-2], "EBADIMAGE", "truncated JPEG data")
    wr.bad("bad/jpeg-prog-trunc.jpg", prog[:len(prog) * 2 // 3], "EBADIMAGE", "truncated JPEG data")
    wr.bad("bad/jpeg-65500x65500.jpg", set_jpeg_size(base, 65500, 65500), "ETOOLARGE",
           "image 65500x65500 exceeds the 16384-pixel side limit")
    wr.bad("bad/jpeg-65535x65535.jpg", set_jpeg_size(base, 65535, 65535), "ETOOLARGE",
           "image 65535x65535 exceeds the 16384-pixel side limit")
    wr.bad("bad/jpeg-9000x9000.jpg", set_jpeg_size(base, 9000, 9000), "ETOOLARGE",
           "image 9000x9000 has 81000000 pixels, over the 67108864-pixel limit")
    wr.bad("bad/jpeg-zero-width.jpg", set_jpeg_size(base, 0, 11), "EBADIMAGE", "corrupt JPEG")
    wr.bad("bad/jpeg-500-scans.jpg", many_scans(prog, 500), "ETOOLARGE", "JPEG has more than 100 scans")
    wr.bad("bad/jpeg-no-sof.jpg", drop_jpeg_sof(base), "EBADIMAGE", "corrupt JPEG")

    png = pil_bytes(im, "PNG")
    wr.bad("bad/png-sig-only.png", png[:8], "EBADIMAGE", "truncated PNG data")
    wr.bad("bad/png-trunc-ihdr.png", png[:20], "EBADIMAGE", "truncated PNG data")
    wr.bad("bad/png-trunc-after-ihdr.png", png[:33], "EBADIMAGE", "truncated PNG data")
    wr.bad("bad/png-trunc-idat.png", png[:len(png) // 2], "EBADIMAGE", "truncated PNG data")
    wr.bad("bad/png-trunc-crc.png", png[:-14], "EBADIMAGE", "truncated PNG data")
    wr.bad("bad/png-100000x100000.png", set_png_size(png, 100000, 100000), "ETOOLARGE",
           "image 100000x100000 exceeds the 16384-pixel side limit")
    wr.bad("bad/png-10000x10000.png", set_png_size(png, 10000, 10000), "ETOOLARGE",
           "image 10000x10000 has 100000000 pixels, over the 67108864-pixel limit")
    wr.bad("bad/png-zero-height.png", set_png_size(png, 17, 0), "EBADIMAGE", "zero-size image")
    wr.bad("bad/png-2g-width.png", set_png_size(png, 0x7FFFFFFF, 1), "ETOOLARGE", "exceeds the 16384-pixel side")
    bad_magic = bytearray(png)
    bad_magic[1] = ord("Q")
    wr.bad("bad/png-wrong-magic.png", bytes(bad_magic), "EUNSUPPORTED", "unsupported image format (unknown)")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR CRC
    wr.bad("bad/png-ihdr-bad-crc.png", bytes(bad_crc), "EBADIMAGE", "CRC error")
    idat_crc = make_png(rgb, 2, 8)
    i = idat_crc.index(b"IEND") - 4 - 4  # the IDAT CRC sits just before IEND's length field
    idat_crc = idat_crc[:i] + bytes([idat_crc[i] ^ 0x55]) + idat_crc[i + 1:]
    wr.bad("bad/png-idat-bad-crc.png", idat_crc, "EBADIMAGE", "CRC error")
    z = bytearray(make_png(rgb, 2, 8))
    j = z.index(b"IDAT") + 4 + 20
    z[j:j + 8] = b"\xff" * 8
    body = bytes(z[z.index(b"IDAT"):z.index(b"IEND") - 8])
    z[z.index(b"IEND") - 8:z.index(b"IEND") - 4] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    wr.bad("bad/png-bad-zlib.png", bytes(z), "EBADIMAGE", "corrupt PNG")
    short_idat = make_png(rgb[:5], 2, 8)  # IDAT holds 5 rows, IHDR says 11
    wr.bad("bad/png-short-idat.png", set_png_size(short_idat, W, H), "EBADIMAGE", "corrupt PNG")
    wr.bad("bad/png-bad-colortype.png", set_png_color(make_png(rgb, 2, 8), 8, 5), "EBADIMAGE", "corrupt PNG")
    wr.bad("bad/png-bad-depth.png", set_png_color(make_png(rgb, 2, 8), 4, 2), "EBADIMAGE", "corrupt PNG")
    no_plte = make_png(pal_idx, 3, 8)
    wr.bad("bad/png-pal-no-plte.png", no_plte, "EBADIMAGE", "corrupt PNG")
    # Decodable despite damage or abuse (checked against Pillow like the good ones):
    wr.good("bad/png-no-iend.png", make_png(rgb, 2, 8, iend=False), expect=rgb)
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    wr.good("bad/png-huge-iccp.png", make_png(rgb, 2, 8, before_idat=[chunk(b"iCCP", b"icc\0\0" + bomb)]),
            expect=rgb)
    wr.good("bad/png-huge-ztxt.png", make_png(rgb, 2, 8, before_idat=[chunk(b"zTXt", b"Comment\0\0" + bomb)]),
            expect=rgb)
    texts = [chunk(b"tEXt", b"k\0") for _ in range(10000)]
    wr.good("bad/png-10000-text.png", make_png(rgb, 2, 8, before_idat=texts), expect=rgb)
    # Pillow refuses any chunk with a bad CRC, ancillary ones too; so do we (png_set_crc_action).
    wr.bad("bad/png-ancillary-bad-crc.png",
           make_png(rgb, 2, 8, before_idat=[chunk(b"tEXt", b"k\0v")[:-1] + b"\0"]), "EBADIMAGE", "CRC error")

    webp = pil_bytes(im, "WEBP", quality=90)
    webpl = pil_bytes(im, "WEBP", lossless=True)
    wr.bad("bad/webp-trunc-riff.webp", webp[:12], "EBADIMAGE", "truncated WebP data")
    wr.bad("bad/webp-trunc-header.webp", webp[:24], "EBADIMAGE", "truncated WebP data")
    wr.bad("bad/webp-trunc-data.webp", webp[:len(webp) * 2 // 3], "EBADIMAGE", "truncated WebP data")
    wr.bad("bad/webp-lossless-trunc.webp", webpl[:len(webpl) * 2 // 3], "EBADIMAGE", "truncated WebP data")
    frames = [Image.fromarray(pattern(seed=s), "RGB") for s in (1, 2, 3)]
    anim = io.BytesIO()
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    wr.bad("bad/webp-animated.webp", anim.getvalue(), "EUNSUPPORTED", "animated WebP is not supported")
    junk = bytearray(webp)
    junk[23:26] = b"\0\0\0"  # VP8 key-frame start code
    wr.bad("bad/webp-corrupt.webp", bytes(junk), "EBADIMAGE", "WebP")

    wr.bad("bad/image.gif", pil_bytes(im, "GIF"), "EUNSUPPORTED", "unsupported image format (GIF)")
    wr.bad("bad/image.bmp", pil_bytes(im, "BMP"), "EUNSUPPORTED", "unsupported image format (BMP)")
    wr.bad("bad/image.tiff", pil_bytes(im, "TIFF"), "EUNSUPPORTED", "unsupported image format (TIFF)")
    wr.bad("bad/image.jp2", pil_bytes(im, "JPEG2000"), "EUNSUPPORTED", "unsupported image format (JPEG 2000)")
    wr.bad("bad/image.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="17" '
           b'height="11"><rect width="17" height="11" fill="red"/></svg>\n', "EUNSUPPORTED",
           "unsupported image format (SVG/XML)")
    wr.bad("bad/riff-wave.wav", b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 28, "EUNSUPPORTED", "unsupported image format")

    # ---- real photos ---------------------------------------------------------------------------------------------
    for name, w, h in PHOTOS:
        wr.photo("photos/" + name, Path(args.photos) / name, w, h)

    (root / "MANIFEST").write_text(
        "# Written by tools/make_image_fixtures.py; read by tests/test-image.c. Format: see the script's docstring.\n"
        + "\n".join(wr.lines) + "\n")
    print(f"{len(wr.lines)} fixtures in {root}")


if __name__ == "__main__":
    main()
