/*
 * fuzz_copytext.c - libFuzzer target for the COPY text row parser (copy_parse_line).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is one
 * line as PQgetCopyData returns it; the parser is kept across inputs (its buffers are
 * reused as in a sync worker). The line is parsed once without and once with an expected
 * column count, and every value is read back. The same bytes go to the binary COPY
 * scanner (issue 7), whole and cut in two: the counts and the verdicts must agree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/copytext.h"

static copy_parser_t parser;
static int parser_ready;
static volatile unsigned sink;

static void
touch_row(const wr_row_t *row)
{
    for (uint16_t i = 0; i < row->ncols; i++) {
        const wr_val_t *v = &row->vals[i];

        if (v->kind == 'n') {
            if (v->len != 0)
                __builtin_trap();
            continue;
        }
        if (v->kind != 't')
            __builtin_trap();
        for (uint32_t j = 0; j < v->len; j++)
            sink += (unsigned char)v->data[j];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    wr_row_t row;
    wr_err_t err;
    int rc;

    if (!parser_ready) {
        copy_parser_init(&parser);
        parser_ready = 1;
    }
    rc = copy_parse_line(&parser, (const char *)data, size, 0, &row, &err);
    if (rc == 0) {
        int ncols = row.ncols;

        touch_row(&row);
        /* the same line with its own column count must parse again, one more must not */
        if (copy_parse_line(&parser, (const char *)data, size, ncols, &row, &err) != 0)
            __builtin_trap();
        if (row.ncols != ncols)
            __builtin_trap();
        touch_row(&row);
        if (copy_parse_line(&parser, (const char *)data, size, ncols + 1, &row, &err) == 0)
            __builtin_trap();
    } else if (err.msg[0] == '\0') {
        __builtin_trap();
    }
    /* the same bytes as a binary COPY stream: whole, and cut in two where the first byte
     * says; both must count the same rows and fail or end alike */
    {
        copy_bin_scan_t whole, cut;
        size_t at = size > 0 ? data[0] % (size + 1) : 0;
        int r0 = -1, r1 = -1, r2 = 0, rc0, rc1, rc2 = 0;

        copy_bin_scan_init(&whole, size > 1 ? data[1] % 4 : 0);
        copy_bin_scan_init(&cut, whole.expect_fields);
        err.msg[0] = '\0';
        rc0 = copy_bin_scan_feed(&whole, (const char *)data, size, &r0, &err);
        if (rc0 != 0 && err.msg[0] == '\0')
            __builtin_trap();
        rc1 = copy_bin_scan_feed(&cut, (const char *)data, at, &r1, &err);
        if (rc1 == 0)
            rc2 = copy_bin_scan_feed(&cut, (const char *)data + at, size - at, &r2, &err);
        if (r0 < 0 || r1 < 0 || r2 < 0 || (uint64_t)r0 != whole.rows)
            __builtin_trap();
        if ((rc0 == 0) != (rc1 == 0 && rc2 == 0))
            __builtin_trap();
        if (rc0 == 0 &&
            (r0 != r1 + r2 || whole.rows != cut.rows ||
             (copy_bin_scan_end(&whole, &err) == 0) != (copy_bin_scan_end(&cut, &err) == 0)))
            __builtin_trap();
    }
    return 0;
}
