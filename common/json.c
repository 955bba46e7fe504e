/*
 * json.c - the JSON writer and the value mapping of json.h.
 *
 * NOTES: pure code; see json.h for the mapping and the failure rule.
 */
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JW_OID_BOOL  16
#define JW_OID_INT2  21
#define JW_OID_INT4  23
#define JW_OID_JSON  114
#define JW_OID_JSONB 3802

void
jw_init(jw_buf_t *b)
{
    memset(b, 0, sizeof(*b));
}

void
jw_free(jw_buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

void
jw_reset(jw_buf_t *b)
{
    b->len = 0;
    b->failed = false;
    if (b->data)
        b->data[0] = '\0';
}

/* Makes room for n more bytes and the NUL; false (and failed set) if it cannot. */
static bool
jw_grow(jw_buf_t *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (b->failed)
        return false;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return false;
    }
    need = b->len + n + 1;
    if (need <= b->cap)
        return true;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    p = realloc(b->data, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void
jw_raw(jw_buf_t *b, const char *s, size_t n)
{
    if (!jw_grow(b, n))
        return;
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void
jw_lit(jw_buf_t *b, const char *s)
{
    jw_raw(b, s, strlen(s));
}

void
jw_str(jw_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    char *o;

    /* worst case: every byte becomes \u00XX (6 bytes), plus the quotes */
    if (n > (SIZE_MAX / 8) || !jw_grow(b, n * 6 + 2))
        return;
    o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        if (run) {
            memcpy(o, s + i - run, run);
            o += run;
            run = 0;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    if (run) {
        memcpy(o, s + n - run, run);
        o += run;
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->data);
}

void
jw_cstr(jw_buf_t *b, const char *s)
{
    if (s == NULL)
        jw_lit(b, "null");
    else
        jw_str(b, s, strlen(s));
}

/* Digits of v at the end of tmp (24 bytes); returns where they start. No snprintf: these
 * run several times per event. */
static char *
jw_digits(uint64_t v, char *end)
{
    char *p = end;

    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return p;
}

void
jw_i64(jw_buf_t *b, int64_t v)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p;

    p = jw_digits(v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, end);
    if (v < 0)
        *--p = '-';
    jw_raw(b, p, (size_t)(end - p));
}

void
jw_u64(jw_buf_t *b, uint64_t v)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p = jw_digits(v, end);

    jw_raw(b, p, (size_t)(end - p));
}

/* Upper-case hex of v without leading zeros ("0" for 0) before end. */
static char *
jw_hex(uint32_t v, char *end)
{
    static const char hex[] = "0123456789ABCDEF";
    char *p = end;

    do {
        *--p = hex[v & 15];
        v >>= 4;
    } while (v != 0);
    return p;
}

void
jw_lsn(jw_buf_t *b, uint64_t lsn)
{
    char tmp[24], *end = tmp + sizeof(tmp), *p = end;

    *--p = '"';
    p = jw_hex((uint32_t)lsn, p);
    *--p = '/';
    p = jw_hex((uint32_t)(lsn >> 32), p);
    *--p = '"';
    jw_raw(b, p, (size_t)(end - p));
}

void
jw_time(jw_buf_t *b, int64_t us)
{
    /* the events of a transaction share their commit time: the date part of the last
     * second formatted is kept (per thread) */
    static __thread int64_t cached_secs = INT64_MIN;
    static __thread char cached[32]; /* "\"YYYY-MM-DDTHH:MM:SS." */
    static __thread int cached_len;
    char tmp[48];
    int64_t secs = us / 1000000, frac = us % 1000000;

    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    if (secs != cached_secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        int n;

        if (gmtime_r(&t, &tm) == NULL) {
            jw_lit(b, "null");
            return;
        }
        n = snprintf(cached, sizeof(cached), "\"%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (n <= 0 || n >= (int)sizeof(cached)) {
            jw_lit(b, "null");
            return;
        }
        cached_len = n;
        cached_secs = secs;
    }
    memcpy(tmp, cached, (size_t)cached_len);
    for (int i = 5; i >= 0; i--) {
        tmp[cached_len + i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    tmp[cached_len + 6] = 'Z';
    tmp[cached_len + 7] = '"';
    jw_raw(b, tmp, (size_t)cached_len + 8);
}

/* A JSON number that int2/int4 output can produce: -?[0-9]+ without a leading zero
 * (except "0" itself). */
static bool
jw_is_int(const char *s, size_t n)
{
    size_t i = 0;

    if (n && s[0] == '-')
        i = 1;
    if (i == n || n - i > 11)
        return false;
    if (s[i] == '0' && n - i > 1)
        return false;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

void
jw_value(jw_buf_t *b, uint32_t type_oid, char kind, const char *data, size_t len)
{
    if (kind != 't' || data == NULL) {
        jw_lit(b, "null");
        return;
    }
    switch (type_oid) {
    case JW_OID_BOOL:
        if (len == 1 && data[0] == 't') {
            jw_lit(b, "true");
            return;
        }
        if (len == 1 && data[0] == 'f') {
            jw_lit(b, "false");
            return;
        }
        break;
    case JW_OID_INT2:
    case JW_OID_INT4:
        if (jw_is_int(data, len)) {
            jw_raw(b, data, len);
            return;
        }
        break;
    case JW_OID_JSON:
    case JW_OID_JSONB:
        /* PostgreSQL's output of json and jsonb is valid JSON (the input checked it) */
        if (len > 0) {
            jw_raw(b, data, len);
            return;
        }
        break;
    default:
        break;
    }
    jw_str(b, data, len);
}
