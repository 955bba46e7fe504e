/*
 * pgtype.c - strict parsers of PostgreSQL text forms, and format_type() of built-in types.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- format_type ------------------------------------------------------------------------ */

/* Element type of a built-in array type, or 0. */
static uint32_t
pgt_array_elem(uint32_t oid)
{
    static const uint32_t map[][2] = {
        {1000, 16},   {1001, 17},   {1002, 18},   {1003, 19},   {1016, 20},   {1005, 21},
        {1007, 23},   {1009, 25},   {1028, 26},   {199, 114},   {143, 142},   {1021, 700},
        {1022, 701},  {791, 790},   {1014, 1042}, {1015, 1043}, {1182, 1082}, {1183, 1083},
        {1115, 1114}, {1185, 1184}, {1187, 1186}, {1270, 1266}, {1231, 1700}, {2951, 2950},
        {3807, 3802}, {1561, 1560}, {1563, 1562}, {1041, 869},  {651, 650},   {1040, 829},
        {775, 774},   {1017, 600},  {3643, 3614}, {3645, 3615}, {1006, 22},   {1008, 24},
        {1010, 27},   {1011, 28},   {1012, 29},   {1013, 30},   {1018, 601},  {1019, 602},
        {1020, 603},  {1027, 604},  {629, 628},   {719, 718},   {3221, 3220}, {2211, 2206},
        {4073, 4072}, {3905, 3904}, {3907, 3906}, {3909, 3908}, {3911, 3910}, {3913, 3912},
        {3927, 3926}, {2287, 2249},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (map[i][0] == oid)
            return map[i][1];
    return 0;
}

/* format_type() of a built-in scalar type without its typmod, or NULL. */
static const char *
pgt_scalar_name(uint32_t oid)
{
    switch (oid) {
    case 16:
        return "boolean";
    case 17:
        return "bytea";
    case 18:
        return "\"char\"";
    case 19:
        return "name";
    case 20:
        return "bigint";
    case 21:
        return "smallint";
    case 22:
        return "int2vector";
    case 23:
        return "integer";
    case 24:
        return "regproc";
    case 25:
        return "text";
    case 26:
        return "oid";
    case 27:
        return "tid";
    case 28:
        return "xid";
    case 29:
        return "cid";
    case 30:
        return "oidvector";
    case 114:
        return "json";
    case 142:
        return "xml";
    case 600:
        return "point";
    case 601:
        return "lseg";
    case 602:
        return "path";
    case 603:
        return "box";
    case 604:
        return "polygon";
    case 628:
        return "line";
    case 650:
        return "cidr";
    case 700:
        return "real";
    case 701:
        return "double precision";
    case 718:
        return "circle";
    case 774:
        return "macaddr8";
    case 790:
        return "money";
    case 829:
        return "macaddr";
    case 869:
        return "inet";
    case 1042:
        return "character";
    case 1043:
        return "character varying";
    case 1082:
        return "date";
    case 1083:
        return "time without time zone";
    case 1114:
        return "timestamp without time zone";
    case 1184:
        return "timestamp with time zone";
    case 1186:
        return "interval";
    case 1266:
        return "time with time zone";
    case 1560:
        return "bit";
    case 1562:
        return "bit varying";
    case 1700:
        return "numeric";
    case 2249:
        return "record";
    case 2950:
        return "uuid";
    case 3220:
        return "pg_lsn";
    case 2206:
        return "regtype";
    case 3614:
        return "tsvector";
    case 3615:
        return "tsquery";
    case 3802:
        return "jsonb";
    case 3904:
        return "int4range";
    case 3906:
        return "numrange";
    case 3908:
        return "tsrange";
    case 3910:
        return "tstzrange";
    case 3912:
        return "daterange";
    case 3926:
        return "int8range";
    case 4072:
        return "jsonpath";
    default:
        return NULL;
    }
}

/* The interval typmod's fields (" day to second") as intervaltypmodout writes them. */
static const char *
pgt_interval_fields(int32_t typmod)
{
    enum {
        MON = 1 << 1,
        YEAR = 1 << 2,
        DAY = 1 << 3,
        HOUR = 1 << 10,
        MIN = 1 << 11,
        SEC = 1 << 12,
        FULL = 0x7FFF
    };
    switch ((typmod >> 16) & 0x7FFF) {
    case YEAR:
        return " year";
    case MON:
        return " month";
    case DAY:
        return " day";
    case HOUR:
        return " hour";
    case MIN:
        return " minute";
    case SEC:
        return " second";
    case YEAR | MON:
        return " year to month";
    case DAY | HOUR:
        return " day to hour";
    case DAY | HOUR | MIN:
        return " day to minute";
    case DAY | HOUR | MIN | SEC:
        return " day to second";
    case HOUR | MIN:
        return " hour to minute";
    case HOUR | MIN | SEC:
        return " hour to second";
    case MIN | SEC:
        return " minute to second";
    case FULL:
        return "";
    default:
        return NULL;
    }
}

/* Writes the scalar's name with its typmod. Returns the length or -1. */
static int
pgt_format_scalar(uint32_t oid, int32_t typmod, char *buf, size_t len)
{
    const char *name = pgt_scalar_name(oid);

    if (name == NULL)
        return -1;
    if (typmod < 0) {
        /* format_type writes bpchar for a character column without a length */
        return snprintf(buf, len, "%s", oid == PGT_BPCHAR ? "bpchar" : name);
    }
    switch (oid) {
    case PGT_NUMERIC: {
        int32_t t = typmod - 4;
        int scale = (((t & 0x7ff) ^ 1024) - 1024);
        return snprintf(buf, len, "numeric(%d,%d)", (t >> 16) & 0xffff, scale);
    }
    case PGT_VARCHAR:
        return snprintf(buf, len, "character varying(%d)", (int)(typmod - 4));
    case PGT_BPCHAR:
        return snprintf(buf, len, "character(%d)", (int)(typmod - 4));
    case PGT_TIME:
        return snprintf(buf, len, "time(%d) without time zone", (int)typmod);
    case PGT_TIMETZ:
        return snprintf(buf, len, "time(%d) with time zone", (int)typmod);
    case PGT_TIMESTAMP:
        return snprintf(buf, len, "timestamp(%d) without time zone", (int)typmod);
    case PGT_TIMESTAMPTZ:
        return snprintf(buf, len, "timestamp(%d) with time zone", (int)typmod);
    case 1560:
        return snprintf(buf, len, "bit(%d)", (int)typmod);
    case 1562:
        return snprintf(buf, len, "bit varying(%d)", (int)typmod);
    case PGT_INTERVAL: {
        const char *f = pgt_interval_fields(typmod);
        int prec = typmod & 0xFFFF;
        if (f == NULL)
            return -1;
        if (prec == 0xFFFF)
            return snprintf(buf, len, "interval%s", f);
        return snprintf(buf, len, "interval%s(%d)", f, prec);
    }
    default:
        return snprintf(buf, len, "%s", name);
    }
}

bool
pgt_format_type(uint32_t oid, int32_t typmod, char *buf, size_t len)
{
    uint32_t elem = pgt_array_elem(oid);
    int n;

    if (len == 0)
        return false;
    n = pgt_format_scalar(elem ? elem : oid, typmod, buf, len);
    if (n < 0 || (size_t)n >= len) {
        buf[0] = '\0';
        return false;
    }
    if (elem) {
        if ((size_t)n + 3 > len) {
            buf[0] = '\0';
            return false;
        }
        memcpy(buf + n, "[]", 3);
    }
    return true;
}
