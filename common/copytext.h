/*
 * copytext.h - parser of COPY ... TO STDOUT text format rows.
 *
 * NOTES: runs in walrelay-sync on bytes from the server. One call parses one row (one
 * line as PQgetCopyData returns it, with or without its trailing newline): tab separated,
 * \N is NULL, backslash escapes (\b \f \n \r \t \v \\ \digits octal \xhex) are decoded.
 * Values are written into the parser's reusable buffer and point into it.
 */
#ifndef WR_COPYTEXT_H
#define WR_COPYTEXT_H

#include "schema.h"

typedef struct copy_parser_s {
    char *buf;
    size_t cap;
    wr_val_t *vals;
    size_t vcap;
} copy_parser_t;

void copy_parser_init(copy_parser_t *p);
void copy_parser_close(copy_parser_t *p);
/* Parses one line into row (row->vals points into the parser). expect_cols > 0 makes a
 * different column count an error. Returns 0 or WR_EPROTO/WR_ENOMEM. */
int copy_parse_line(copy_parser_t *p, const char *line, size_t len, int expect_cols, wr_row_t *row,
                    wr_err_t *err) WR_MUST_CHECK;

#endif
