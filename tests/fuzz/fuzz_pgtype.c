/*
 * fuzz_pgtype.c - libFuzzer target for the text-form parsers of pgtype.h (pgt_*).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is one
 * value's text form, given to every parser as an exactly-sized buffer that is not
 * NUL-terminated (as values point into a message). Also formats the first eight bytes as
 * a type OID and typmod through pgt_format_type (always NUL-terminated, within the buffer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/pgtype.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    int64_t i64;
    bool b, special;
    double d;
    uint8_t *out;
    size_t outlen = 0;

    if (pgt_parse_int64(s, size, &i64) == 0)
        sink += (uint64_t)i64;
    if (pgt_parse_bool(s, size, &b) == 0)
        sink += b;
    if (pgt_parse_double(s, size, &d, &special) == 0)
        sink += (uint64_t)special + (d == d);

    /* the header asks for (len-2)/2 bytes: give exactly that, so ASan sees an overrun */
    out = malloc(size >= 2 ? (size - 2) / 2 + 1 : 1);
    if (pgt_decode_bytea_hex(s, size, out, &outlen) == 0) {
        if (size < 2 || outlen > (size - 2) / 2)
            __builtin_trap();
        for (size_t i = 0; i < outlen; i++)
            sink += out[i];
    }
    free(out);

    if (size >= 8) {
        uint32_t oid =
            (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
        int32_t typmod = (int32_t)((uint32_t)data[4] << 24 | (uint32_t)data[5] << 16 |
                                   (uint32_t)data[6] << 8 | data[7]);
        size_t len = size > 8 ? (size_t)data[8] % 64 + 1 : 64;
        char *buf = malloc(len);

        if (pgt_format_type(oid, typmod, buf, len) && strlen(buf) >= len)
            __builtin_trap();
        sink += (uint64_t)strnlen(buf, len);
        free(buf);
    }
    return 0;
}
