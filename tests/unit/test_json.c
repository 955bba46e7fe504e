/*
 * test_json.c - unit tests of common/json.c: escaping, numbers, LSNs, times, and the
 * value mapping every JSON destination shares (docs/events.md).
 */
#include "unit.h"

#include "common/json.h"

static const char *
value(jw_buf_t *b, uint32_t oid, char kind, const char *s)
{
    jw_reset(b);
    jw_value(b, oid, kind, s, s ? strlen(s) : 0);
    return b->data;
}

static void
test_escape(void)
{
    jw_buf_t b;
    const char in[] = "a\"b\\c\nd\te\x01\x1f\r\b\f\xc3\xa9\xf0\x9f\x98\x80";

    jw_init(&b);
    jw_str(&b, in, sizeof(in) - 1);
    CHECK_STR_EQ(b.data, "\"a\\\"b\\\\c\\nd\\te\\u0001\\u001f\\r\\b\\f\xc3\xa9\xf0\x9f\x98\x80\"");
    jw_reset(&b);
    jw_str(&b, "", 0);
    CHECK_STR_EQ(b.data, "\"\"");
    jw_reset(&b);
    jw_str(&b, "x\0y", 3); /* an embedded NUL is escaped, not a terminator */
    CHECK_STR_EQ(b.data, "\"x\\u0000y\"");
    jw_reset(&b);
    jw_cstr(&b, NULL);
    CHECK_STR_EQ(b.data, "null");
    CHECK(!jw_failed(&b));
    jw_free(&b);
}

static void
test_numbers_lsn_time(void)
{
    jw_buf_t b;

    jw_init(&b);
    jw_i64(&b, INT64_MIN);
    jw_lit(&b, ",");
    jw_u64(&b, UINT64_MAX);
    jw_lit(&b, ",");
    jw_lsn(&b, 0x16B374D848ULL);
    CHECK_STR_EQ(b.data, "-9223372036854775808,18446744073709551615,\"16/B374D848\"");
    jw_reset(&b);
    jw_time(&b, INT64_C(1764693085123456));
    CHECK_STR_EQ(b.data, "\"2025-12-02T16:31:25.123456Z\"");
    jw_reset(&b);
    jw_time(&b, -1); /* before the epoch: the fraction stays positive */
    CHECK_STR_EQ(b.data, "\"1969-12-31T23:59:59.999999Z\"");
    /* the same second again, another fraction; then the next second (the date part of
     * the last second is cached) */
    jw_reset(&b);
    jw_time(&b, INT64_C(1764693085123456));
    jw_time(&b, INT64_C(1764693085000007));
    jw_time(&b, INT64_C(1764693086000000));
    CHECK_STR_EQ(b.data, "\"2025-12-02T16:31:25.123456Z\"\"2025-12-02T16:31:25.000007Z\""
                         "\"2025-12-02T16:31:26.000000Z\"");
    jw_reset(&b);
    jw_i64(&b, 0);
    jw_i64(&b, -7);
    jw_u64(&b, 10);
    jw_lsn(&b, 0);
    jw_lsn(&b, 0xFFFFFFFFFFFFFFFFULL);
    CHECK_STR_EQ(b.data, "0-710\"0/0\"\"FFFFFFFF/FFFFFFFF\"");
    jw_free(&b);
}

static void
test_value_mapping(void)
{
    jw_buf_t b;

    jw_init(&b);
    CHECK_STR_EQ(value(&b, 23, 'n', NULL), "null");
    CHECK_STR_EQ(value(&b, 16, 't', "t"), "true");
    CHECK_STR_EQ(value(&b, 16, 't', "f"), "false");
    CHECK_STR_EQ(value(&b, 21, 't', "-32768"), "-32768");
    CHECK_STR_EQ(value(&b, 23, 't', "0"), "0");
    CHECK_STR_EQ(value(&b, 23, 't', "2147483647"), "2147483647");
    /* int8 and numeric keep their precision as strings */
    CHECK_STR_EQ(value(&b, 20, 't', "9223372036854775807"), "\"9223372036854775807\"");
    CHECK_STR_EQ(value(&b, 1700, 't', "NaN"), "\"NaN\"");
    CHECK_STR_EQ(value(&b, 701, 't', "-Infinity"), "\"-Infinity\"");
    CHECK_STR_EQ(value(&b, 3802, 't', "{\"a\": [1, null]}"), "{\"a\": [1, null]}");
    CHECK_STR_EQ(value(&b, 114, 't', " [1,2] "), " [1,2] ");
    CHECK_STR_EQ(value(&b, 17, 't', "\\xdead"), "\"\\\\xdead\"");
    CHECK_STR_EQ(value(&b, 1007, 't', "{1,NULL,3}"), "\"{1,NULL,3}\"");
    /* a text form that is not of the type's shape stays valid JSON */
    CHECK_STR_EQ(value(&b, 23, 't', "012"), "\"012\"");
    CHECK_STR_EQ(value(&b, 23, 't', ""), "\"\"");
    CHECK_STR_EQ(value(&b, 16, 't', "true"), "\"true\"");
    CHECK_STR_EQ(value(&b, 3802, 't', ""), "\"\"");
    CHECK_STR_EQ(value(&b, 25, 'u', NULL), "null");
    CHECK(!jw_failed(&b));
    jw_free(&b);
}

static void
test_growth(void)
{
    jw_buf_t b;
    char big[5000];

    memset(big, '\n', sizeof(big));
    jw_init(&b);
    for (int i = 0; i < 20; i++)
        jw_str(&b, big, sizeof(big));
    CHECK_INT_EQ(b.len, 20 * (2 * 5000 + 2));
    CHECK_INT_EQ(strlen(b.data), b.len);
    CHECK(!jw_failed(&b));
    jw_free(&b);
}

int
main(void)
{
    RUN(test_escape);
    RUN(test_numbers_lsn_time);
    RUN(test_value_mapping);
    RUN(test_growth);
    return unit_done();
}
