/*
 * fuzz_copytext.c - libFuzzer target for the COPY text row parser (copy_parse_line).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is one
 * line as PQgetCopyData returns it; the parser is kept across inputs (its buffers are
 * reused as in a sync worker). The line is parsed once without and once with an expected
 * column count, and every value is read back. The same bytes go to copy_binary_rows, as
 * a binary COPY's first message and as a later one (issue 7).
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
    for (int first = 0; first < 2; first++) {
        int rows = -1;

        err.msg[0] = '\0';
        rc = copy_binary_rows((const char *)data, size, first != 0, &rows, &err);
        if (rows != 0 && rows != 1)
            __builtin_trap();
        if (rc != 0 && (err.msg[0] == '\0' || rows != 0))
            __builtin_trap();
    }
    return 0;
}
