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

int
copy_binary_rows(const char *msg, size_t len, bool first, int *rows, wr_err_t *err)
{
    static const char sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};
    const unsigned char *m = (const unsigned char *)msg;

    *rows = 0;
    if (first) {
        uint32_t ext;

        if (len < 19 || memcmp(m, sig, sizeof(sig)) != 0)
            return wr_err_set(err, WR_EPROTO,
                              "binary COPY data does not begin with the PGCOPY signature "
                              "(%zu bytes)",
                              len);
        /* the flags' high half is what a reader must understand: none defined */
        if (m[11] != 0 || m[12] != 0)
            return wr_err_set(err, WR_EPROTO, "binary COPY header has unknown critical flags");
        ext = (uint32_t)m[15] << 24 | (uint32_t)m[16] << 16 | (uint32_t)m[17] << 8 | m[18];
        if (ext > len - 19)
            return wr_err_set(err, WR_EPROTO,
                              "binary COPY header extension of %u bytes is longer than its "
                              "message",
                              ext);
        m += 19 + (size_t)ext;
        len -= 19 + (size_t)ext;
        if (len == 0)
            return 0;
    }
    if (len < 2)
        return wr_err_set(err, WR_EPROTO, "binary COPY message of %zu bytes holds no field count",
                          len);
    if (m[0] == 0xff && m[1] == 0xff)
        return 0; /* the trailer */
    if (m[0] & 0x80)
        return wr_err_set(err, WR_EPROTO, "binary COPY row has a negative field count");
    *rows = 1;
    return 0;
}
