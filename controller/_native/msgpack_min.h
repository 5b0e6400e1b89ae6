/* The few msgpack shapes the hot path reads and writes, byte for byte as msgpack-python's
 * Packer(use_bin_type=True) writes them (the smallest encoding of each int, str8 for short
 * text, float64 for floats), so the journal records and events the compiled path writes are
 * identical to the pure Python engine's. Anything the reader does not know is "not mine":
 * the caller hands the message to the Python path, which reads every msgpack. */

#ifndef FILLALLOC_MSGPACK_MIN_H
#define FILLALLOC_MSGPACK_MIN_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* -- reading ------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
} mp_reader;

enum { MP_NONE = 0, MP_INT, MP_UINT, MP_FLOAT, MP_STR };

typedef struct {
    int kind;
    int64_t i;        /* MP_INT: any msgpack int that fits int64 */
    uint64_t u;       /* MP_UINT: a uint64 above INT64_MAX */
    double f;         /* MP_FLOAT: float32 or float64, as a double (exactly) */
    const char *s;    /* MP_STR: the bytes (not NUL-terminated) */
    size_t len;
} mp_value;

static inline uint64_t mp_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++)
        v = (v << 8) | p[k];
    return v;
}

/* The next `len` bytes as a string value; 0 if the message ends first. */
static int mp_take_str(mp_reader *r, size_t len, mp_value *out)
{
    if ((size_t)(r->end - r->at) < len)
        return 0;
    out->kind = MP_STR;
    out->s = (const char *)r->at;
    out->len = len;
    r->at += len;
    return 1;
}

/* Read one scalar (int, float, str); 0 for anything else or a truncated message. */
static int mp_read_value(mp_reader *r, mp_value *out)
{
    if (r->at >= r->end)
        return 0;
    unsigned char b = *r->at++;
    size_t avail = (size_t)(r->end - r->at);
    int width = 0;
    out->kind = MP_NONE;
    if (b <= 0x7f) {
        out->kind = MP_INT;
        out->i = b;
        return 1;
    }
    if (b >= 0xe0) {
        out->kind = MP_INT;
        out->i = (int8_t)b;
        return 1;
    }
    if (b >= 0xa0 && b <= 0xbf)
        return mp_take_str(r, b & 0x1f, out);
    switch (b) {
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        width = 1 << (b - 0xcc);
        if (avail < (size_t)width)
            return 0;
        out->u = mp_be(r->at, width);
        r->at += width;
        if (out->u > (uint64_t)INT64_MAX) {
            out->kind = MP_UINT;
        } else {
            out->kind = MP_INT;
            out->i = (int64_t)out->u;
        }
        return 1;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        width = 1 << (b - 0xd0);
        if (avail < (size_t)width)
            return 0;
        uint64_t raw = mp_be(r->at, width);
        r->at += width;
        int shift = 64 - 8 * width;
        out->kind = MP_INT;
        out->i = shift ? (int64_t)(raw << shift) >> shift : (int64_t)raw;
        return 1;
    }
    case 0xca: {
        if (avail < 4)
            return 0;
        uint32_t raw = (uint32_t)mp_be(r->at, 4);
        float f;
        memcpy(&f, &raw, 4);
        r->at += 4;
        out->kind = MP_FLOAT;
        out->f = (double)f;
        return 1;
    }
    case 0xcb: {
        if (avail < 8)
            return 0;
        uint64_t raw = mp_be(r->at, 8);
        double d;
        memcpy(&d, &raw, 8);
        r->at += 8;
        out->kind = MP_FLOAT;
        out->f = d;
        return 1;
    }
    case 0xd9: case 0xda: case 0xdb: {
        width = 1 << (b - 0xd9);
        if (avail < (size_t)width)
            return 0;
        size_t len = (size_t)mp_be(r->at, width);
        r->at += width;
        return mp_take_str(r, len, out);
    }
    default:
        return 0;  /* nil, bool, bin, ext, array, map: not on the fast path */
    }
}

/* The entry count of a map header; -1 if the next value is not a map. */
static long mp_read_map_header(mp_reader *r)
{
    if (r->at >= r->end)
        return -1;
    unsigned char b = *r->at;
    if (b >= 0x80 && b <= 0x8f) {
        r->at++;
        return b & 0x0f;
    }
    if (b == 0xde && r->end - r->at >= 3) {
        r->at += 3;
        return (long)mp_be(r->at - 2, 2);
    }
    return -1;
}

/* -- writing ------------------------------------------------------------------------- */

/* A growable byte buffer; `failed` is set (and further writes ignored) on out of memory. */
typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
    int failed;
} mp_buf;

static int mp_reserve(mp_buf *b, size_t more)
{
    if (b->failed)
        return 0;
    if (b->len + more <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    unsigned char *grown = realloc(b->data, cap);
    if (grown == NULL) {
        b->failed = 1;
        return 0;
    }
    b->data = grown;
    b->cap = cap;
    return 1;
}

static inline void mp_put(mp_buf *b, const void *bytes, size_t n)
{
    if (mp_reserve(b, n)) {
        memcpy(b->data + b->len, bytes, n);
        b->len += n;
    }
}

static inline void mp_put_be(mp_buf *b, unsigned char head, uint64_t v, int width)
{
    unsigned char tmp[9];
    tmp[0] = head;
    for (int k = 0; k < width; k++)
        tmp[1 + k] = (unsigned char)(v >> (8 * (width - 1 - k)));
    mp_put(b, tmp, (size_t)width + 1);
}

/* An int as msgpack-python packs it: positive ints unsigned, the smallest that holds them. */
static void mp_put_int(mp_buf *b, int64_t v)
{
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128) {
            unsigned char c = (unsigned char)u;
            mp_put(b, &c, 1);
        } else if (u <= 0xff) {
            mp_put_be(b, 0xcc, u, 1);
        } else if (u <= 0xffff) {
            mp_put_be(b, 0xcd, u, 2);
        } else if (u <= 0xffffffffULL) {
            mp_put_be(b, 0xce, u, 4);
        } else {
            mp_put_be(b, 0xcf, u, 8);
        }
    } else if (v >= -32) {
        unsigned char c = (unsigned char)(int8_t)v;
        mp_put(b, &c, 1);
    } else if (v >= -128) {
        mp_put_be(b, 0xd0, (uint64_t)v & 0xff, 1);
    } else if (v >= -32768) {
        mp_put_be(b, 0xd1, (uint64_t)v & 0xffff, 2);
    } else if (v >= -2147483648LL) {
        mp_put_be(b, 0xd2, (uint64_t)v & 0xffffffffULL, 4);
    } else {
        mp_put_be(b, 0xd3, (uint64_t)v, 8);
    }
}

static void mp_put_str(mp_buf *b, const char *s, size_t len)
{
    if (len < 32) {
        unsigned char c = (unsigned char)(0xa0 | len);
        mp_put(b, &c, 1);
    } else if (len <= 0xff) {
        mp_put_be(b, 0xd9, len, 1);
    } else if (len <= 0xffff) {
        mp_put_be(b, 0xda, len, 2);
    } else {
        mp_put_be(b, 0xdb, len, 4);
    }
    mp_put(b, s, len);
}

static void mp_put_double(mp_buf *b, double d)
{
    uint64_t raw;
    memcpy(&raw, &d, 8);
    mp_put_be(b, 0xcb, raw, 8);
}

/* A map's or an array's header: the fix form up to 15 entries, then 16- and 32-bit counts. */
static void mp_put_header(mp_buf *b, size_t n, unsigned char fix, unsigned char wide)
{
    if (n <= 15) {
        unsigned char c = (unsigned char)(fix | n);
        mp_put(b, &c, 1);
    } else if (n <= 0xffff) {
        mp_put_be(b, wide, n, 2);
    } else {
        mp_put_be(b, wide + 1, n, 4);
    }
}

static void mp_put_map_header(mp_buf *b, size_t n) { mp_put_header(b, n, 0x80, 0xde); }

static void mp_put_array_header(mp_buf *b, size_t n) { mp_put_header(b, n, 0x90, 0xdc); }

/* -- CRC-32 (zlib's), for journal record frames ---------------------------------------- */

static uint32_t crc_table[256];
static int crc_ready = 0;

static void crc32_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
    crc_ready = 1;
}

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

#endif
