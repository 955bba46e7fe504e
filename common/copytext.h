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

/* (issue 7) How many rows one CopyData message of a COPY ... TO STDOUT (FORMAT binary)
 * holds, for counting them while the bytes are passed through unparsed. first: the COPY's
 * first message, which begins with the 11-byte signature, the flags and the header
 * extension (checked and skipped). PostgreSQL sends each row in a message of its own and
 * the trailer (a field count of -1) after the last, so *rows is 1 for a message that
 * begins with a field count, 0 for the trailer or a header alone. Returns 0, or
 * WR_EPROTO for a signature, header or message that is not a binary COPY's. */
int copy_binary_rows(const char *msg, size_t len, bool first, int *rows,
                     wr_err_t *err) WR_MUST_CHECK;

#endif
