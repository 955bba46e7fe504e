/*
 * test_copytext.c - unit tests of common/copytext.c (COPY text rows) and common/pgtype.c
 * (storage classes and strict parsers of PostgreSQL text forms).
 *
 * NOTES: pure functions, no files, no server.
 */
#include "unit.h"

#include "common/copytext.h"
#include "common/pgtype.h"

#include <math.h>

/* Checks that value i of row is text equal to the `len` bytes at `want`, NUL-terminated. */
#define CHECK_VAL(row, i, want, wlen)                                                              \
    do {                                                                                           \
        const wr_val_t *_v = &(row).vals[i];                                                       \
        CHECK_INT_EQ(_v->kind, WR_VAL_TEXT);                                                       \
        CHECK_INT_EQ(_v->len, (wlen));                                                             \
        if (_v->kind == WR_VAL_TEXT && _v->len == (wlen)) {                                        \
            CHECK(memcmp(_v->data, (want), (wlen)) == 0);                                          \
            CHECK_INT_EQ(_v->data[_v->len], '\0');                                                 \
        }                                                                                          \
    } while (0)
#define CHECK_TEXT(row, i, want) CHECK_VAL(row, i, want, strlen(want))
#define CHECK_NULL(row, i)                                                                         \
    do {                                                                                           \
        CHECK_INT_EQ((row).vals[i].kind, WR_VAL_NULL);                                             \
        CHECK((row).vals[i].data == NULL);                                                         \
        CHECK_INT_EQ((row).vals[i].len, 0);                                                        \
    } while (0)

static int
parse(copy_parser_t *p, const char *line, int expect, wr_row_t *row, wr_err_t *err)
{
    wr_err_clear(err);
    return copy_parse_line(p, line, strlen(line), expect, row, err);
}

static void
test_simple_row(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;

    copy_parser_init(&p);
    CHECK_INT_EQ(parse(&p, "1\tabc\t\\N\n", 3, &row, &err), 0);
    CHECK_INT_EQ(row.ncols, 3);
    CHECK_TEXT(row, 0, "1");
    CHECK_TEXT(row, 1, "abc");
    CHECK_NULL(row, 2);

    /* without its newline, and with "\r\n" */
    CHECK_INT_EQ(parse(&p, "x\ty", 2, &row, &err), 0);
    CHECK_TEXT(row, 0, "x");
    CHECK_TEXT(row, 1, "y");
    CHECK_INT_EQ(parse(&p, "x\ty\r\n", 2, &row, &err), 0);
    CHECK_INT_EQ(row.ncols, 2);
    CHECK_TEXT(row, 1, "y");

    /* expect_cols 0: any width */
    CHECK_INT_EQ(parse(&p, "a\tb\tc\td\n", 0, &row, &err), 0);
    CHECK_INT_EQ(row.ncols, 4);
    CHECK_TEXT(row, 3, "d");
    copy_parser_close(&p);
}

static void
test_escapes(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;

    copy_parser_init(&p);
    CHECK_INT_EQ(parse(&p, "a\\tb\\nc\\\\d\\re\\bf\\fg\\vh\n", 1, &row, &err), 0);
    CHECK_TEXT(row, 0, "a\tb\nc\\d\re\bf\fg\vh");

    /* octal: 1 to 3 digits, value cut to a byte; \0 is a NUL byte inside the value */
    CHECK_INT_EQ(parse(&p, "\\101\\7\\1234\\777\t\\0x\n", 2, &row, &err), 0);
    CHECK_VAL(row, 0,
              "A\a"
              "S4\xff",
              5);
    CHECK_VAL(row, 1, "\0x", 2);

    /* hex: 1 or 2 digits; \x without a hex digit is the letter x */
    CHECK_INT_EQ(parse(&p, "\\x41\\x4g\\xZ\\x7e7\t\\x\n", 2, &row, &err), 0);
    CHECK_VAL(row, 0, "A\x04gxZ~7", 7);
    CHECK_TEXT(row, 1, "x");

    /* any other escaped character is itself, including N inside a longer field */
    CHECK_INT_EQ(parse(&p, "\\q\\.\\N\t\\Nx\tx\\N\t\\\\\n", 4, &row, &err), 0);
    CHECK_TEXT(row, 0, "q.N");
    CHECK_TEXT(row, 1, "Nx");
    CHECK_TEXT(row, 2, "xN");
    CHECK_TEXT(row, 3, "\\");

    /* escaped tab does not split a field */
    CHECK_INT_EQ(parse(&p, "a\\tb\tc\n", 2, &row, &err), 0);
    CHECK_TEXT(row, 0, "a\tb");
    CHECK_TEXT(row, 1, "c");

    /* octal and hex escapes cut short by the end of the line are still complete */
    CHECK_INT_EQ(parse(&p, "a\\1\n", 1, &row, &err), 0);
    CHECK_VAL(row, 0, "a\x01", 2);
    CHECK_INT_EQ(parse(&p, "a\\x4", 1, &row, &err), 0);
    CHECK_VAL(row, 0, "a\x04", 2);
    copy_parser_close(&p);
}

static void
test_null_vs_text(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;

    copy_parser_init(&p);
    /* the text "\N" is sent as \\N: text, not NULL */
    CHECK_INT_EQ(parse(&p, "\\\\N\t\\N\n", 2, &row, &err), 0);
    CHECK_TEXT(row, 0, "\\N");
    CHECK_NULL(row, 1);

    /* empty string vs NULL */
    CHECK_INT_EQ(parse(&p, "\t\\N\t\n", 3, &row, &err), 0);
    CHECK_TEXT(row, 0, "");
    CHECK_NULL(row, 1);
    CHECK_TEXT(row, 2, "");

    /* an empty line is one empty string (a one-column table) */
    CHECK_INT_EQ(parse(&p, "\n", 1, &row, &err), 0);
    CHECK_INT_EQ(row.ncols, 1);
    CHECK_TEXT(row, 0, "");
    CHECK_INT_EQ(copy_parse_line(&p, "", 0, 1, &row, &err), 0);
    CHECK_INT_EQ(row.ncols, 1);
    CHECK_TEXT(row, 0, "");

    /* a row of NULLs only */
    CHECK_INT_EQ(parse(&p, "\\N\t\\N\n", 2, &row, &err), 0);
    CHECK_NULL(row, 0);
    CHECK_NULL(row, 1);
    copy_parser_close(&p);
}

static void
test_column_mismatch(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;

    copy_parser_init(&p);
    CHECK_INT_EQ(parse(&p, "a\tb\n", 3, &row, &err), WR_EPROTO);
    CHECK_STR_EQ(err.msg, "COPY row has 2 columns, expected 3");
    CHECK_INT_EQ(parse(&p, "a\tb\tc\td\n", 3, &row, &err), WR_EPROTO);
    CHECK_STR_EQ(err.msg, "COPY row has 4 columns, expected 3");
    /* a trailing tab is one more (empty) column */
    CHECK_INT_EQ(parse(&p, "a\tb\tc\t\n", 3, &row, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "has 4 columns");
    /* the parser is still usable after an error */
    CHECK_INT_EQ(parse(&p, "a\tb\tc\n", 3, &row, &err), 0);
    CHECK_TEXT(row, 2, "c");
    copy_parser_close(&p);
}

static void
test_malformed(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;
    char *wide;

    copy_parser_init(&p);
    /* truncated escape at the end of the line, with or without the newline */
    CHECK_INT_EQ(parse(&p, "abc\\", 1, &row, &err), WR_EPROTO);
    CHECK_STR_EQ(err.msg, "COPY row ends inside a backslash escape (column 1)");
    CHECK_INT_EQ(parse(&p, "a\tb\\\n", 2, &row, &err), WR_EPROTO);
    CHECK_STR_EQ(err.msg, "COPY row ends inside a backslash escape (column 2)");
    CHECK_INT_EQ(parse(&p, "\\", 0, &row, &err), WR_EPROTO);
    /* a raw newline or carriage return inside a row is not COPY text */
    CHECK_INT_EQ(parse(&p, "a\nb\n", 0, &row, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "unescaped newline");
    CHECK_INT_EQ(parse(&p, "a\rb\tc\n", 0, &row, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "unescaped carriage return in COPY row (column 1)");

    /* more columns than a row can hold */
    wide = malloc(70001);
    CHECK(wide != NULL);
    if (wide) {
        memset(wide, '\t', 70000);
        wide[70000] = '\0';
        CHECK_INT_EQ(parse(&p, wide, 0, &row, &err), WR_EPROTO);
        CHECK_CONTAINS(err.msg, "more than 65535 columns");
        /* 1600 columns (PostgreSQL's limit) are fine */
        wide[1599] = '\0';
        CHECK_INT_EQ(parse(&p, wide, 1600, &row, &err), 0);
        CHECK_INT_EQ(row.ncols, 1600);
        CHECK_TEXT(row, 1599, "");
        free(wide);
    }
    copy_parser_close(&p);
}

static void
test_buffer_reuse(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;
    char line[4096], want[64];
    char *buf;
    wr_val_t *vals;
    size_t cap, vcap;

    copy_parser_init(&p);
    /* warm up with a long, wide row */
    memset(line, 'w', 3000);
    line[3000] = '\0';
    for (int i = 1; i < 40; i++) /* 39 tabs: 40 columns */
        line[i * 50] = '\t';
    CHECK_INT_EQ(parse(&p, line, 40, &row, &err), 0);
    buf = p.buf;
    cap = p.cap;
    vals = p.vals;
    vcap = p.vcap;
    CHECK(cap >= 3001);
    CHECK(vcap >= 40);

    /* then many shorter rows: same buffers, right values each time */
    for (int i = 0; i < 500; i++) {
        snprintf(line, sizeof(line), "%d\tname %d\t%s\n", i, i, i % 2 ? "\\N" : "x\\ty");
        CHECK_INT_EQ(parse(&p, line, 3, &row, &err), 0);
        snprintf(want, sizeof(want), "%d", i);
        CHECK_TEXT(row, 0, want);
        snprintf(want, sizeof(want), "name %d", i);
        CHECK_TEXT(row, 1, want);
        if (i % 2)
            CHECK_NULL(row, 2);
        else
            CHECK_TEXT(row, 2, "x\ty");
    }
    CHECK(p.buf == buf);
    CHECK_U64_EQ(p.cap, cap);
    CHECK(p.vals == vals);
    CHECK_U64_EQ(p.vcap, vcap);
    CHECK(row.vals == p.vals);

    /* values point into the parser's buffer */
    CHECK(row.vals[1].data >= p.buf && row.vals[1].data < p.buf + p.cap);

    /* a longer row grows the buffer once */
    memset(line, 'z', 4000);
    line[4000] = '\0';
    CHECK_INT_EQ(parse(&p, line, 1, &row, &err), 0);
    CHECK_INT_EQ(row.vals[0].len, 4000);
    CHECK(p.cap >= 4001);
    copy_parser_close(&p);
    CHECK(p.buf == NULL && p.vals == NULL && p.cap == 0);
}

static void
test_copy_bytea(void)
{
    copy_parser_t p;
    wr_row_t row;
    wr_err_t err;
    uint8_t out[8];
    size_t n = 99;

    /* bytea in COPY text: the backslash of \x is itself escaped */
    copy_parser_init(&p);
    CHECK_INT_EQ(parse(&p, "\\\\x0a0bff\n", 1, &row, &err), 0);
    CHECK_TEXT(row, 0, "\\x0a0bff");
    CHECK_INT_EQ(pgt_decode_bytea_hex(row.vals[0].data, row.vals[0].len, out, &n), 0);
    CHECK_U64_EQ(n, 3);
    CHECK_INT_EQ(out[0], 0x0a);
    CHECK_INT_EQ(out[1], 0x0b);
    CHECK_INT_EQ(out[2], 0xff);
    copy_parser_close(&p);
}

/* --- pgtype ---------------------------------------------------------------------------- */

/* format_type() text of PostgreSQL 15 for each (oid, typmod): the strings were taken
 * from SELECT format_type(...) on a PostgreSQL 15 server (tests/integration/
 * test_plugin_loader.py compares against a live server too). */
static void
test_pgt_format_type(void)
{
    static const struct {
        uint32_t oid;
        int32_t typmod;
        const char *want;
    } cases[] = {
        {16, -1, "boolean"},
        {17, -1, "bytea"},
        {18, -1, "\"char\""},
        {20, -1, "bigint"},
        {21, -1, "smallint"},
        {23, -1, "integer"},
        {25, -1, "text"},
        {26, -1, "oid"},
        {114, -1, "json"},
        {700, -1, "real"},
        {701, -1, "double precision"},
        {790, -1, "money"},
        {1042, -1, "bpchar"},
        {1042, 14, "character(10)"},
        {1043, -1, "character varying"},
        {1043, 24, "character varying(20)"},
        {1082, -1, "date"},
        {1083, -1, "time without time zone"},
        {1083, 3, "time(3) without time zone"},
        {1266, 0, "time(0) with time zone"},
        {1114, -1, "timestamp without time zone"},
        {1114, 6, "timestamp(6) without time zone"},
        {1184, -1, "timestamp with time zone"},
        {1184, 2, "timestamp(2) with time zone"},
        {1186, -1, "interval"},
        {1186, 0x7FFF0003, "interval(3)"},
        {1186, (int32_t)((((1 << 3) | (1 << 10) | (1 << 11) | (1 << 12)) << 16) | 0xFFFF),
         "interval day to second"},
        {1186, (int32_t)(((1 << 2 | 1 << 1) << 16) | 0xFFFF), "interval year to month"},
        {1186, (int32_t)(((1 << 11 | 1 << 12) << 16) | 2), "interval minute to second(2)"},
        {1700, -1, "numeric"},
        {1700, ((10 << 16) | 2) + 4, "numeric(10,2)"},
        {1700, ((5 << 16) | 0) + 4, "numeric(5,0)"},
        {1700, ((5 << 16) | (0x7ff & -2)) + 4, "numeric(5,-2)"},
        {1560, 8, "bit(8)"},
        {1560, -1, "bit"},
        {1562, 16, "bit varying(16)"},
        {1562, -1, "bit varying"},
        {2950, -1, "uuid"},
        {3802, -1, "jsonb"},
        {869, -1, "inet"},
        {1007, -1, "integer[]"},
        {1009, -1, "text[]"},
        {1231, ((12 << 16) | 4) + 4, "numeric(12,4)[]"},
        {1015, 14, "character varying(10)[]"},
        {1115, 3, "timestamp(3) without time zone[]"},
        {3807, -1, "jsonb[]"},
    };
    char buf[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool ok = pgt_format_type(cases[i].oid, cases[i].typmod, buf, sizeof(buf));
        CHECK(ok);
        CHECK_STR_EQ(buf, cases[i].want);
    }
    CHECK(!pgt_format_type(16385, -1, buf, sizeof(buf))); /* a user type */
    CHECK_STR_EQ(buf, "");
    CHECK(!pgt_format_type(1700, ((10 << 16) | 2) + 4, buf, 8)); /* too small */
    CHECK(!pgt_format_type(1007, -1, buf, 8));                   /* "integer" fits, "[]" not */
}

static int
int64_of(const char *s, int64_t *out)
{
    *out = 7777;
    return pgt_parse_int64(s, strlen(s), out);
}

static void
test_pgt_int64(void)
{
    int64_t v;

    CHECK_INT_EQ(int64_of("0", &v), 0);
    CHECK_INT_EQ(v, 0);
    CHECK_INT_EQ(int64_of("-1", &v), 0);
    CHECK_INT_EQ(v, -1);
    CHECK_INT_EQ(int64_of("+42", &v), 0);
    CHECK_INT_EQ(v, 42);
    CHECK_INT_EQ(int64_of("007", &v), 0);
    CHECK_INT_EQ(v, 7);
    CHECK_INT_EQ(int64_of("9223372036854775807", &v), 0);
    CHECK(v == INT64_MAX);
    CHECK_INT_EQ(int64_of("-9223372036854775808", &v), 0);
    CHECK(v == INT64_MIN);
    CHECK_INT_EQ(int64_of("4294967295", &v), 0); /* oid */
    CHECK_INT_EQ(v, 4294967295LL);

    CHECK_INT_EQ(int64_of("9223372036854775808", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("-9223372036854775809", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("99999999999999999999999", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("-", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("+", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("1a", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of(" 1", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("1 ", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("--1", &v), WR_EINVAL);
    CHECK_INT_EQ(int64_of("1.0", &v), WR_EINVAL);
    CHECK_INT_EQ(v, 7777); /* untouched on error */

    /* bounded by len, not by a NUL */
    CHECK_INT_EQ(pgt_parse_int64("123xyz", 3, &v), 0);
    CHECK_INT_EQ(v, 123);
    CHECK_INT_EQ(pgt_parse_int64("12\0"
                                 "3",
                                 4, &v),
                 WR_EINVAL);
}

static void
test_pgt_bool(void)
{
    bool b = false;
    CHECK_INT_EQ(pgt_parse_bool("t", 1, &b), 0);
    CHECK(b);
    CHECK_INT_EQ(pgt_parse_bool("f", 1, &b), 0);
    CHECK(!b);
    CHECK_INT_EQ(pgt_parse_bool("true", 4, &b), 0);
    CHECK(b);
    CHECK_INT_EQ(pgt_parse_bool("false", 5, &b), 0);
    CHECK(!b);
    CHECK_INT_EQ(pgt_parse_bool("tx", 1, &b), 0); /* len-bounded */
    CHECK(b);
    CHECK_INT_EQ(pgt_parse_bool("T", 1, &b), WR_EINVAL);
    CHECK_INT_EQ(pgt_parse_bool("yes", 3, &b), WR_EINVAL);
    CHECK_INT_EQ(pgt_parse_bool("", 0, &b), WR_EINVAL);
    CHECK_INT_EQ(pgt_parse_bool("tr", 2, &b), WR_EINVAL);
    CHECK_INT_EQ(pgt_parse_bool("truex", 5, &b), WR_EINVAL);
    CHECK_INT_EQ(pgt_parse_bool("1", 1, &b), WR_EINVAL);
}

static int
dbl_of(const char *s, double *d, bool *special)
{
    return pgt_parse_double(s, strlen(s), d, special);
}

static void
test_pgt_double(void)
{
    double d;
    bool sp = true;
    char big[80];

    CHECK_INT_EQ(dbl_of("1.5", &d, &sp), 0);
    CHECK(d == 1.5);
    CHECK(!sp);
    CHECK_INT_EQ(dbl_of("-0", &d, &sp), 0);
    CHECK(d == 0.0 && signbit(d));
    CHECK_INT_EQ(dbl_of("1e+300", &d, &sp), 0);
    CHECK(d == 1e300);
    CHECK_INT_EQ(dbl_of("-1.7976931348623157e+308", &d, &sp), 0);
    CHECK(d == -1.7976931348623157e+308);
    CHECK_INT_EQ(dbl_of("5e-324", &d, &sp), 0); /* denormal */
    CHECK(d > 0.0);
    CHECK_INT_EQ(dbl_of("3.4028235e+38", &d, &sp), 0); /* float4 max */
    CHECK(!sp);

    CHECK_INT_EQ(dbl_of("NaN", &d, &sp), 0);
    CHECK(sp);
    CHECK(isnan(d));
    CHECK_INT_EQ(dbl_of("Infinity", &d, &sp), 0);
    CHECK(sp);
    CHECK(isinf(d) && d > 0);
    CHECK_INT_EQ(dbl_of("-Infinity", &d, &sp), 0);
    CHECK(sp);
    CHECK(isinf(d) && d < 0);
    CHECK_INT_EQ(pgt_parse_double("NaN", 3, &d, NULL), 0); /* is_special may be NULL */

    CHECK_INT_EQ(dbl_of("1e400", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("inf", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("nan", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("+Infinity", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("0x10", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of(" 1", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("1 ", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("1.5abc", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("1e", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("-", &d, &sp), WR_EINVAL);
    CHECK_INT_EQ(dbl_of("1,5", &d, &sp), WR_EINVAL);
    memset(big, '1', 70);
    big[70] = '\0';
    CHECK_INT_EQ(dbl_of(big, &d, &sp), WR_EINVAL);

    /* bounded by len: the bytes after it are not read */
    CHECK_INT_EQ(pgt_parse_double("2.5xyz", 3, &d, &sp), 0);
    CHECK(d == 2.5);
    CHECK_INT_EQ(pgt_parse_double("NaNx", 3, &d, &sp), 0);
    CHECK(sp);
}

static void
test_pgt_bytea(void)
{
    uint8_t out[8] = {0};
    size_t n = 99;

    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x", 2, out, &n), 0);
    CHECK_U64_EQ(n, 0);
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x00aBfF", 8, out, &n), 0);
    CHECK_U64_EQ(n, 3);
    CHECK_INT_EQ(out[0], 0x00);
    CHECK_INT_EQ(out[1], 0xab);
    CHECK_INT_EQ(out[2], 0xff);

    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x0", 3, out, &n), WR_EINVAL);   /* odd */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\xzz", 4, out, &n), WR_EINVAL);  /* not hex */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x0g", 4, out, &n), WR_EINVAL);  /* not hex */
    CHECK_INT_EQ(pgt_decode_bytea_hex("x00", 3, out, &n), WR_EINVAL);    /* no backslash */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\X00", 4, out, &n), WR_EINVAL);  /* upper X */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\000", 4, out, &n), WR_EINVAL);  /* escape format */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x 00", 5, out, &n), WR_EINVAL); /* space */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\", 1, out, &n), WR_EINVAL);
    CHECK_INT_EQ(pgt_decode_bytea_hex("", 0, out, &n), WR_EINVAL);
    /* bounded by len */
    CHECK_INT_EQ(pgt_decode_bytea_hex("\\x0102zz", 6, out, &n), 0);
    CHECK_U64_EQ(n, 2);
    CHECK_INT_EQ(out[1], 0x02);
}

/* CopyData messages of COPY ... TO STDOUT (FORMAT binary) as PostgreSQL 15 sent them
 * (captured with psycopg, one message per read): the signature and header glued to the
 * first row, the trailer alone; with no rows, header and trailer in one message. */
/* COPY (SELECT 42::int4, 'hi'::text, NULL::text) TO STDOUT (FORMAT binary) */
static const unsigned char bin_first[] = {
    0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00,
    0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x02, 0x68, 0x69, 0xff, 0xff, 0xff, 0xff};
static const unsigned char bin_trailer[] = {0xff, 0xff};
/* COPY (SELECT 1 WHERE false) TO STDOUT (FORMAT binary) */
static const unsigned char bin_empty[] = {0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a,
                                          0xff, 0x0d, 0x0a, 0x00, 0x00, 0x00, 0x00,
                                          0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff};

/* Feeds data in pieces of `step` bytes (0: whole); returns the first error or 0, with the
 * rows counted in *rows. */
static int
bin_feed(copy_bin_scan_t *s, const unsigned char *data, size_t len, size_t step, uint64_t *rows,
         wr_err_t *err)
{
    size_t off = 0;

    *rows = 0;
    if (step == 0)
        step = len;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        int r = -1, rc = copy_bin_scan_feed(s, (const char *)data + off, n, &r, err);

        if (rc < 0)
            return rc;
        CHECK(r >= 0);
        *rows += (uint64_t)r;
        off += n;
    }
    return 0;
}

static void
test_copy_bin_scan(void)
{
    unsigned char stream[128], buf[128];
    size_t rowlen = sizeof(bin_first) - 19, slen = 0;
    copy_bin_scan_t s;
    uint64_t rows;
    wr_err_t err;
    int r;

    /* two rows and the trailer, as three messages (PostgreSQL's split) */
    memcpy(stream, bin_first, sizeof(bin_first));
    slen = sizeof(bin_first);
    memcpy(stream + slen, bin_first + 19, rowlen);
    slen += rowlen;
    memcpy(stream + slen, bin_trailer, sizeof(bin_trailer));
    slen += sizeof(bin_trailer);
    copy_bin_scan_init(&s, 3);
    CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)bin_first, sizeof(bin_first), &r, &err), 0);
    CHECK_INT_EQ(r, 1);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), WR_EPROTO); /* no trailer yet */
    CHECK(strstr(err.msg, "without its trailer") != NULL);
    CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)bin_first + 19, rowlen, &r, &err), 0);
    CHECK_INT_EQ(r, 1);
    CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)bin_trailer, 2, &r, &err), 0);
    CHECK_INT_EQ(r, 0);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), 0);
    CHECK(s.rows == 2);

    /* any split of the same bytes counts the same: two pieces at every offset, and one
     * byte at a time */
    for (size_t cut = 0; cut <= slen; cut++) {
        int r1 = -1, r2 = -1;

        copy_bin_scan_init(&s, 3);
        CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)stream, cut, &r1, &err), 0);
        CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)stream + cut, slen - cut, &r2, &err), 0);
        CHECK_INT_EQ(r1 + r2, 2);
        CHECK_INT_EQ(copy_bin_scan_end(&s, &err), 0);
    }
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, stream, slen, 1, &rows, &err), 0);
    CHECK(rows == 2);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), 0);

    /* an empty table: header and trailer in one message */
    copy_bin_scan_init(&s, 3);
    CHECK_INT_EQ(bin_feed(&s, bin_empty, sizeof(bin_empty), 0, &rows, &err), 0);
    CHECK(rows == 0);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), 0);
    /* a header alone is not a whole COPY; half a header neither */
    copy_bin_scan_init(&s, 3);
    CHECK_INT_EQ(bin_feed(&s, bin_empty, 19, 0, &rows, &err), 0);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), WR_EPROTO);
    copy_bin_scan_init(&s, 3);
    CHECK_INT_EQ(bin_feed(&s, bin_empty, 10, 0, &rows, &err), 0);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "before its header was whole") != NULL);

    /* a header extension is skipped, also when split */
    memcpy(buf, bin_first, 19);
    buf[18] = 3;
    memcpy(buf + 19, "abc", 3);
    memcpy(buf + 22, bin_first + 19, rowlen);
    memcpy(buf + 22 + rowlen, bin_trailer, 2);
    for (size_t step = 0; step < 5; step++) {
        copy_bin_scan_init(&s, 3);
        CHECK_INT_EQ(bin_feed(&s, buf, 22 + rowlen + 2, step, &rows, &err), 0);
        CHECK(rows == 1);
        CHECK_INT_EQ(copy_bin_scan_end(&s, &err), 0);
    }

    /* text COPY data where binary was asked for: named */
    copy_bin_scan_init(&s, 0);
    r = -1;
    CHECK_INT_EQ(copy_bin_scan_feed(&s, "1\tone\n2\ttwo\n3\tthree\n", 20, &r, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "PGCOPY signature") != NULL);
    CHECK_INT_EQ(r, 0);
    /* ... and the scanner stays failed */
    CHECK_INT_EQ(copy_bin_scan_feed(&s, (const char *)bin_empty, sizeof(bin_empty), &r, &err),
                 WR_EPROTO);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), WR_EPROTO);
    /* an unknown critical flag (bit 16 and up) */
    memcpy(buf, bin_first, sizeof(bin_first));
    buf[12] = 0x01;
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, buf, sizeof(bin_first), 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "critical flags") != NULL);
    /* an extension that cannot be */
    memcpy(buf, bin_first, sizeof(bin_first));
    buf[15] = 0x80;
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, buf, sizeof(bin_first), 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "extension") != NULL);
    /* a negative field count other than the trailer's */
    memcpy(buf, bin_first, sizeof(bin_first));
    buf[19] = 0x80;
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, buf, sizeof(bin_first), 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "field count") != NULL);
    /* a field length below -1 */
    memcpy(buf, bin_first, sizeof(bin_first));
    buf[21] = 0xff;
    buf[22] = 0xff;
    buf[23] = 0xff;
    buf[24] = 0xfe;
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, buf, sizeof(bin_first), 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "length -2") != NULL);
    /* rows of another column list */
    copy_bin_scan_init(&s, 4);
    CHECK_INT_EQ(bin_feed(&s, bin_first, sizeof(bin_first), 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "3 fields, expected 4") != NULL);
    /* anything after the trailer */
    memcpy(buf, bin_empty, sizeof(bin_empty));
    buf[sizeof(bin_empty)] = 0;
    copy_bin_scan_init(&s, 0);
    CHECK_INT_EQ(bin_feed(&s, buf, sizeof(bin_empty) + 1, 0, &rows, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "after the trailer") != NULL);
    /* a stream cut in the middle of a value */
    copy_bin_scan_init(&s, 3);
    CHECK_INT_EQ(bin_feed(&s, bin_first, 34, 0, &rows, &err), 0);
    CHECK(rows == 0);
    CHECK_INT_EQ(copy_bin_scan_end(&s, &err), WR_EPROTO);
}

int
main(void)
{
    RUN(test_simple_row);
    RUN(test_escapes);
    RUN(test_null_vs_text);
    RUN(test_column_mismatch);
    RUN(test_malformed);
    RUN(test_buffer_reuse);
    RUN(test_copy_bytea);
    RUN(test_copy_bin_scan);
    RUN(test_pgt_format_type);
    RUN(test_pgt_int64);
    RUN(test_pgt_bool);
    RUN(test_pgt_double);
    RUN(test_pgt_bytea);
    return unit_done();
}
