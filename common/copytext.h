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

/* (issue 7) Counts the rows of a COPY ... TO STDOUT (FORMAT binary) while its bytes are
 * passed through unparsed, and checks that they are a binary COPY's: the 11-byte
 * signature, the flags (no unknown critical flag) and the header extension, then rows (a
 * field count, then per field a length, -1 for NULL, and that many bytes), then the
 * trailer (a field count of -1) and nothing after it. The protocol does not tie CopyData
 * messages to rows (PostgreSQL 15 sends one row a message, the header glued to the first
 * and the trailer alone), so the scanner keeps its place across messages: any split of
 * the stream counts the same. expect_fields > 0 makes a row with another field count an
 * error (a COPY of another column list). */
typedef struct copy_bin_scan_s {
    int state;
    unsigned char acc[19]; /* a fixed-size item split across messages */
    size_t acc_n;
    uint32_t skip;     /* bytes of the header extension or of a value still to pass */
    int fields_left;   /* of the row being read */
    int expect_fields; /* 0: any */
    uint64_t rows;     /* complete rows so far */
} copy_bin_scan_t;

void copy_bin_scan_init(copy_bin_scan_t *s, int expect_fields);
/* The next bytes of the stream. *rows: the rows they completed. 0, or WR_EPROTO naming
 * what is wrong (the scanner then stays failed). */
int copy_bin_scan_feed(copy_bin_scan_t *s, const char *data, size_t len, int *rows,
                       wr_err_t *err) WR_MUST_CHECK;
/* The stream ended: 0 if it ended with the trailer, else WR_EPROTO. */
int copy_bin_scan_end(const copy_bin_scan_t *s, wr_err_t *err) WR_MUST_CHECK;

#endif
