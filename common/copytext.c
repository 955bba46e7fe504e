/*
 * copytext.c - parser of COPY ... TO STDOUT rows in text format.
 *
 * NOTES: runs in walrelay-sync on rows the server sends (one row per PQgetCopyData call).
 * Follows PostgreSQL's CopyReadAttributesText (src/backend/commands/copyfromparse.c):
 * fields are separated by tabs; a field that is exactly \N is NULL (an escaped \N inside
 * a longer field is the letter N); \b \f \n \r \t \v are the control characters, \ and
 * 1 to 3 octal digits a byte, \x and 1 or 2 hex digits a byte, \ and any other character
 * that character. The server never sends a row ending in a lone backslash or containing a
 * raw newline: both are WR_EPROTO here.
 *
 * Memory: decoded text is never longer than the line, so the parser's buffer grows to the
 * longest line seen and each value is written there, NUL-terminated (a tab becomes the
 * terminator of the field before it). The values array grows to the widest row seen.
 * After the first rows no call allocates. Values are valid until the next call.
 */
#include "copytext.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <stdlib.h>
#include <string.h>

#define COPY_MAX_COLS 65535 /* wr_row_t.ncols is a uint16_t */

void
copy_parser_init(copy_parser_t *p)
{
    memset(p, 0, sizeof(*p));
}

void
copy_parser_close(copy_parser_t *p)
{
    if (!p)
        return;
    free(p->buf);
    free(p->vals);
    memset(p, 0, sizeof(*p));
}

static int
copy_reserve_buf(copy_parser_t *p, size_t need, wr_err_t *err)
{
    size_t cap;
    char *nb;
    if (need <= p->cap)
        return 0;
    cap = p->cap ? p->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    nb = realloc(p->buf, cap);
    if (!nb)
        return wr_err_set(err, WR_ENOMEM, "out of memory for a COPY row of %zu bytes", need);
    p->buf = nb;
    p->cap = cap;
    return 0;
}

static int
copy_reserve_vals(copy_parser_t *p, size_t need, wr_err_t *err)
{
    size_t cap;
    wr_val_t *nv;
    if (need <= p->vcap)
        return 0;
    cap = p->vcap ? p->vcap : 16;
    while (cap < need)
        cap *= 2;
    nv = realloc(p->vals, cap * sizeof(*nv));
    if (!nv)
        return wr_err_set(err, WR_ENOMEM, "out of memory for a COPY row of %zu columns", need);
    p->vals = nv;
    p->vcap = cap;
    return 0;
}

static int
copy_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
copy_parse_line(copy_parser_t *p, const char *line, size_t len, int expect_cols, wr_row_t *row,
                wr_err_t *err)
{
    const char *in, *end;
    char *out;
    size_t ncols = 0;
    int rc;

    if (!line && len > 0)
        return wr_err_set(err, WR_EINVAL, "no COPY row given");
    if (len >= UINT32_MAX)
        return wr_err_set(err, WR_EPROTO, "COPY row is too long (%zu bytes)", len);
    /* the row terminator: "\n" or "\r\n" */
    if (len > 0 && line[len - 1] == '\n') {
        len--;
        if (len > 0 && line[len - 1] == '\r')
            len--;
    }
    if ((rc = copy_reserve_buf(p, len + 1, err)) < 0)
        return rc;

    in = line;
    end = line + len;
    out = p->buf;
    for (;;) {
        /* one field: from `in` up to a tab or the end */
        const char *start = in;
        char *ostart = out;
        bool is_null;

        if (ncols >= COPY_MAX_COLS)
            return wr_err_set(err, WR_EPROTO, "COPY row has more than %d columns", COPY_MAX_COLS);
        if ((rc = copy_reserve_vals(p, ncols + 1, err)) < 0)
            return rc;

        while (in < end && *in != '\t') {
            char c = *in++;
            if (c == '\n' || c == '\r')
                return wr_err_set(err, WR_EPROTO, "unescaped %s in COPY row (column %zu)",
                                  c == '\n' ? "newline" : "carriage return", ncols + 1);
            if (c != '\\') {
                *out++ = c;
                continue;
            }
            if (in >= end)
                return wr_err_set(err, WR_EPROTO,
                                  "COPY row ends inside a backslash escape (column %zu)",
                                  ncols + 1);
            c = *in++;
            switch (c) {
            case 'b':
                *out++ = '\b';
                break;
            case 'f':
                *out++ = '\f';
                break;
            case 'n':
                *out++ = '\n';
                break;
            case 'r':
                *out++ = '\r';
                break;
            case 't':
                *out++ = '\t';
                break;
            case 'v':
                *out++ = '\v';
                break;
            case '0':
            case '1':
            case '2':
            case '3':
            case '4':
            case '5':
            case '6':
            case '7': {
                int val = c - '0';
                for (int i = 0; i < 2 && in < end && *in >= '0' && *in <= '7'; i++)
                    val = (val << 3) + (*in++ - '0');
                *out++ = (char)(val & 0xff);
                break;
            }
            case 'x':
                if (in < end && copy_hexval(*in) >= 0) {
                    int val = copy_hexval(*in++);
                    if (in < end && copy_hexval(*in) >= 0)
                        val = (val << 4) + copy_hexval(*in++);
                    *out++ = (char)val;
                } else {
                    *out++ = 'x';
                }
                break;
            default:
                *out++ = c; /* \\ and any other escaped character stand for themselves */
                break;
            }
        }

        is_null = in - start == 2 && start[0] == '\\' && start[1] == 'N';
        if (is_null) {
            p->vals[ncols].kind = WR_VAL_NULL;
            p->vals[ncols].len = 0;
            p->vals[ncols].data = NULL;
            out = ostart;
        } else {
            p->vals[ncols].kind = WR_VAL_TEXT;
            p->vals[ncols].len = (uint32_t)(out - ostart);
            p->vals[ncols].data = ostart;
            *out++ = '\0';
        }
        ncols++;
        if (in >= end)
            break;
        in++; /* the tab */
    }

    if (expect_cols > 0 && ncols != (size_t)expect_cols)
        return wr_err_set(err, WR_EPROTO, "COPY row has %zu columns, expected %d", ncols,
                          expect_cols);
    row->ncols = (uint16_t)ncols;
    row->vals = p->vals;
    return 0;
}

enum { CBS_HEADER, CBS_EXTENSION, CBS_FIELD_COUNT, CBS_FIELD_LEN, CBS_VALUE, CBS_DONE, CBS_FAILED };

void
copy_bin_scan_init(copy_bin_scan_t *s, int expect_fields)
{
    memset(s, 0, sizeof(*s));
    s->state = CBS_HEADER;
    s->expect_fields = expect_fields;
}

static uint32_t
cbs_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int cbs_fail(copy_bin_scan_t *s, wr_err_t *err, const char *fmt, ...) WR_PRINTF(3, 4);

static int
cbs_fail(copy_bin_scan_t *s, wr_err_t *err, const char *fmt, ...)
{
    char msg[200];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s->state = CBS_FAILED;
    return wr_err_set(err, WR_EPROTO, "binary COPY data: %s (after %" PRIu64 " rows)", msg,
                      s->rows);
}

/* A row's field count was read, or one of its fields ended: counts the row when it is whole. */
static void
cbs_field_done(copy_bin_scan_t *s, int *rows)
{
    if (s->fields_left > 0) {
        s->state = CBS_FIELD_LEN;
        return;
    }
    s->rows++;
    (*rows)++;
    s->state = CBS_FIELD_COUNT;
}

int
copy_bin_scan_feed(copy_bin_scan_t *s, const char *data, size_t len, int *rows, wr_err_t *err)
{
    static const char sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};
    const unsigned char *p = (const unsigned char *)data, *end = p + len;

    *rows = 0;
    if (s->state == CBS_FAILED)
        return wr_err_set(err, WR_EPROTO, "binary COPY data: the stream failed earlier");
    while (p < end) {
        const unsigned char *item;
        size_t want, take;

        switch (s->state) {
        case CBS_EXTENSION:
        case CBS_VALUE:
            take = (size_t)(end - p) < s->skip ? (size_t)(end - p) : s->skip;
            p += take;
            s->skip -= (uint32_t)take;
            if (s->skip > 0)
                break;
            if (s->state == CBS_EXTENSION)
                s->state = CBS_FIELD_COUNT;
            else {
                s->fields_left--;
                cbs_field_done(s, rows);
            }
            break;
        case CBS_DONE:
            return cbs_fail(s, err, "%zu bytes after the trailer", (size_t)(end - p));
        default:
            /* a fixed-size item: the header (19 bytes), a field count (2), a length (4) */
            want = s->state == CBS_HEADER ? 19 : s->state == CBS_FIELD_COUNT ? 2 : 4;
            if (s->acc_n == 0 && (size_t)(end - p) >= want) {
                item = p; /* whole in this message: read in place */
                p += want;
            } else {
                take = want - s->acc_n < (size_t)(end - p) ? want - s->acc_n : (size_t)(end - p);
                memcpy(s->acc + s->acc_n, p, take);
                s->acc_n += take;
                p += take;
                if (s->acc_n < want)
                    break;
                s->acc_n = 0;
                item = s->acc;
            }
            if (s->state == CBS_HEADER) {
                if (memcmp(item, sig, sizeof(sig)) != 0)
                    return cbs_fail(s, err, "it does not begin with the PGCOPY signature");
                /* the flags' high half is what a reader must understand: none defined */
                if (item[11] != 0 || item[12] != 0)
                    return cbs_fail(s, err, "the header has unknown critical flags");
                s->skip = cbs_be32(item + 15);
                if (s->skip > 0x7fffffffu)
                    return cbs_fail(s, err, "a header extension of %u bytes", s->skip);
                s->state = s->skip > 0 ? CBS_EXTENSION : CBS_FIELD_COUNT;
            } else if (s->state == CBS_FIELD_COUNT) {
                int n = (int16_t)((uint16_t)item[0] << 8 | item[1]);

                if (n == -1) {
                    s->state = CBS_DONE;
                } else if (n < 0) {
                    return cbs_fail(s, err, "a row with a field count of %d", n);
                } else if (s->expect_fields > 0 && n != s->expect_fields) {
                    return cbs_fail(s, err, "a row of %d fields, expected %d", n, s->expect_fields);
                } else {
                    s->fields_left = n;
                    cbs_field_done(s, rows);
                }
            } else {
                int32_t flen = (int32_t)cbs_be32(item);

                if (flen == -1) { /* NULL */
                    s->fields_left--;
                    cbs_field_done(s, rows);
                } else if (flen < 0) {
                    return cbs_fail(s, err, "a field of length %d", (int)flen);
                } else if (flen == 0) {
                    s->fields_left--;
                    cbs_field_done(s, rows);
                } else {
                    s->skip = (uint32_t)flen;
                    s->state = CBS_VALUE;
                }
            }
            break;
        }
    }
    return 0;
}

int
copy_bin_scan_end(const copy_bin_scan_t *s, wr_err_t *err)
{
    if (s->state == CBS_DONE)
        return 0;
    return wr_err_set(err, WR_EPROTO, "binary COPY data ended %s (after %" PRIu64 " rows)",
                      s->state == CBS_FAILED   ? "after an error"
                      : s->state == CBS_HEADER ? "before its header was whole"
                                               : "without its trailer",
                      s->rows);
}
