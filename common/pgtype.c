/*
 * pgtype.c - storage class of PostgreSQL types and strict parsers of their text forms.
 *
 * NOTES: pure functions, used by destinations in every worker (walrelay-apply,
 * walrelay-sync) on values from the server; no state, no allocation. Parsers accept
 * exactly what PostgreSQL's output functions write (no surrounding whitespace, no
 * locale), so anything else is WR_EINVAL rather than a guess. Inputs are not
 * NUL-terminated: every read is bounded by len. pgt_parse_double uses strtod, which
 * assumes the C locale (no walrelay process calls setlocale).
 */
#include "pgtype.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

pgt_class_t
pgt_class(uint32_t type_oid)
{
    switch (type_oid) {
    case PGT_INT2:
    case PGT_INT4:
    case PGT_INT8:
    case PGT_OID:
    case PGT_BOOL:
        return PGT_CLASS_INTEGER;
    case PGT_FLOAT4:
    case PGT_FLOAT8:
        return PGT_CLASS_REAL;
    case PGT_BYTEA:
        return PGT_CLASS_BLOB;
    default:
        /* numeric and money stay text: exact, and money's form depends on lc_monetary */
        return PGT_CLASS_TEXT;
    }
}

const char *
pgt_sqlite_decl(uint32_t type_oid)
{
    switch (pgt_class(type_oid)) {
    case PGT_CLASS_INTEGER:
        return "INTEGER";
    case PGT_CLASS_REAL:
        return "REAL";
    case PGT_CLASS_BLOB:
        return "BLOB";
    case PGT_CLASS_TEXT:
    default:
        return "TEXT";
    }
}

int
pgt_parse_int64(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    uint64_t v = 0, limit;

    if (!s || len == 0)
        return WR_EINVAL;
    if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len)
        return WR_EINVAL;
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9')
            return WR_EINVAL;
        d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10)
            return WR_EINVAL;
        v = v * 10 + d;
    }
    if (neg)
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    else
        *out = (int64_t)v;
    return 0;
}

int
pgt_parse_bool(const char *s, size_t len, bool *out)
{
    if (!s)
        return WR_EINVAL;
    if ((len == 1 && s[0] == 't') || (len == 4 && memcmp(s, "true", 4) == 0)) {
        *out = true;
        return 0;
    }
    if ((len == 1 && s[0] == 'f') || (len == 5 && memcmp(s, "false", 5) == 0)) {
        *out = false;
        return 0;
    }
    return WR_EINVAL;
}

int
pgt_parse_double(const char *s, size_t len, double *out, bool *is_special)
{
    char buf[64];
    char *end;
    double v;

    if (is_special)
        *is_special = false;
    if (!s || len == 0 || len >= sizeof(buf))
        return WR_EINVAL;
    if (len == 3 && memcmp(s, "NaN", 3) == 0) {
        *out = NAN;
        goto special;
    }
    if (len == 8 && memcmp(s, "Infinity", 8) == 0) {
        *out = INFINITY;
        goto special;
    }
    if (len == 9 && memcmp(s, "-Infinity", 9) == 0) {
        *out = -INFINITY;
        goto special;
    }
    /* only a plain decimal form: strtod would also take "inf", "0x1p3" and spaces */
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
            return WR_EINVAL;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    v = strtod(buf, &end);
    if (end != buf + len)
        return WR_EINVAL;
    if (errno == ERANGE && isinf(v))
        return WR_EINVAL; /* overflow; underflow to a denormal or zero is kept */
    *out = v;
    return 0;
special:
    if (is_special)
        *is_special = true;
    return 0;
}

int
pgt_decode_bytea_hex(const char *s, size_t len, uint8_t *out, size_t *outlen)
{
    size_t n;

    if (!s || len < 2 || s[0] != '\\' || s[1] != 'x' || (len - 2) % 2 != 0)
        return WR_EINVAL;
    n = (len - 2) / 2;
    for (size_t i = 2; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return WR_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        char hi = s[2 + 2 * i], lo = s[3 + 2 * i];
        int h = hi <= '9' ? hi - '0' : (hi | 0x20) - 'a' + 10;
        int l = lo <= '9' ? lo - '0' : (lo | 0x20) - 'a' + 10;
        out[i] = (uint8_t)((h << 4) | l);
    }
    *outlen = n;
    return 0;
}
