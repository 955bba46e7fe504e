/*
 * schema.h - the value model shared by decoders, workers and destinations.
 *
 * NOTES: a row is an array of values in the source's text (or binary) form, exactly as
 * pgoutput TupleData or COPY text carry them; destinations convert per column type.
 * Values point into a buffer owned by whoever produced the row (decoder message buffer,
 * COPY line buffer): they are valid until that producer is called again.
 */
#ifndef WR_SCHEMA_H
#define WR_SCHEMA_H

#include "wr.h"

typedef enum {
    WR_VAL_NULL = 'n',
    WR_VAL_UNCHANGED = 'u', /* unchanged TOAST: keep the destination's current value */
    WR_VAL_TEXT = 't',
    WR_VAL_BINARY = 'b',
} wr_val_kind_t;

typedef struct wr_val_s {
    char kind; /* wr_val_kind_t */
    uint32_t len;
    const char *data; /* not NUL-terminated; NULL for null/unchanged */
} wr_val_t;

typedef struct wr_row_s {
    uint16_t ncols;
    wr_val_t *vals;
} wr_row_t;

typedef struct wr_column_s {
    char *name;
    uint32_t type_oid;
    int32_t typmod;
    bool is_key; /* part of the replica identity / primary key */
    bool not_null;
    char *type_name; /* format_type(type_oid, typmod) ("numeric(10,2)", "public.mood"); NULL if
                      * not known; owned; ignored by wr_schema_equal */
} wr_column_t;

typedef struct wr_schema_s {
    uint32_t relid;
    char *nsp;
    char *name;
    char replident; /* 'd' default, 'n' nothing, 'f' full, 'i' index */
    uint16_t ncols;
    wr_column_t *cols;
    /* (issue 12) the destination table name the pipeline chose for the table (state store
     * mappings, unique in the pipeline); NULL = dest_table_name(nsp, name). Owned; copied
     * by wr_schema_copy, ignored by wr_schema_equal and by the IPC schema encoding. */
    char *dest_name;
} wr_schema_t;

/* Allocates an empty schema with ncols zeroed columns; NULL on OOM. */
wr_schema_t *wr_schema_new(uint32_t relid, const char *nsp, const char *name, uint16_t ncols);
/* Deep copy; NULL on OOM. */
wr_schema_t *wr_schema_copy(const wr_schema_t *s);
void wr_schema_free(wr_schema_t *s);
/* True if both describe the same columns (names, types, typmods, key flags, replident;
 * type_name is ignored). */
bool wr_schema_equal(const wr_schema_t *a, const wr_schema_t *b);
/* Sets (a copy of) dest_name, or clears it for NULL or ""; 0 or WR_ENOMEM. */
int wr_schema_set_dest_name(wr_schema_t *s, const char *dest_name) WR_MUST_CHECK;
/* Number of key columns. */
int wr_schema_nkeys(const wr_schema_t *s);

#endif
