/*
 * pgtype.h - built-in PostgreSQL type OIDs and the conversions of their text forms that
 * destinations need (bool, integers, floats, bytea hex).
 *
 * NOTES: pure functions on outside bytes; fuzzed.
 */
#ifndef WR_PGTYPE_H
#define WR_PGTYPE_H

#include "wr.h"

#define PGT_BOOL        16
#define PGT_BYTEA       17
#define PGT_CHAR        18
#define PGT_NAME        19
#define PGT_INT8        20
#define PGT_INT2        21
#define PGT_INT4        23
#define PGT_TEXT        25
#define PGT_OID         26
#define PGT_JSON        114
#define PGT_XML         142
#define PGT_FLOAT4      700
#define PGT_FLOAT8      701
#define PGT_MONEY       790
#define PGT_BPCHAR      1042
#define PGT_VARCHAR     1043
#define PGT_DATE        1082
#define PGT_TIME        1083
#define PGT_TIMESTAMP   1114
#define PGT_TIMESTAMPTZ 1184
#define PGT_INTERVAL    1186
#define PGT_TIMETZ      1266
#define PGT_NUMERIC     1700
#define PGT_UUID        2950
#define PGT_JSONB       3802

/* How a destination with SQLite-like storage classes should hold a type. */
typedef enum {
    PGT_CLASS_INTEGER, /* int2, int4, int8, oid, bool (0/1) */
    PGT_CLASS_REAL,    /* float4, float8 (NaN/Infinity kept as text) */
    PGT_CLASS_TEXT,    /* everything else, in PostgreSQL's text form (numeric too: exact) */
    PGT_CLASS_BLOB,    /* bytea */
} pgt_class_t;

pgt_class_t pgt_class(uint32_t type_oid);
/* Declared SQLite column type for a PostgreSQL type ("INTEGER", "REAL", "TEXT", "BLOB"). */
const char *pgt_sqlite_decl(uint32_t type_oid);
/* Parses an integer text form (int2/4/8, oid). Returns 0 or WR_EINVAL. */
int pgt_parse_int64(const char *s, size_t len, int64_t *out) WR_MUST_CHECK;
/* Parses "t"/"f" (also "true"/"false"). Returns 0 or WR_EINVAL. */
int pgt_parse_bool(const char *s, size_t len, bool *out) WR_MUST_CHECK;
/* Parses a float text form; sets *is_special for NaN/Infinity/-Infinity. Returns 0 or WR_EINVAL. */
int pgt_parse_double(const char *s, size_t len, double *out, bool *is_special) WR_MUST_CHECK;
/* Decodes bytea hex output ("\x0a0b"). out must hold (len-2)/2 bytes; sets *outlen. */
int pgt_decode_bytea_hex(const char *s, size_t len, uint8_t *out, size_t *outlen) WR_MUST_CHECK;

#endif
