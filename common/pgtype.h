/*
 * pgtype.h - built-in PostgreSQL type OIDs, their format_type() names, and the
 * conversions of their text forms that destinations need (bool, integers, floats, bytea hex).
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

/* format_type(oid, typmod) of a built-in type (and arrays of them: "numeric(10,2)[]"),
 * as PostgreSQL 15 writes it, into buf. false (buf "") if oid is not a built-in type
 * known here (a user-defined type: its name comes from pgoutput's Type message) or buf is
 * too small. */
bool pgt_format_type(uint32_t oid, int32_t typmod, char *buf, size_t len);
/* Parses an integer text form (int2/4/8, oid). Returns 0 or WR_EINVAL. */
int pgt_parse_int64(const char *s, size_t len, int64_t *out) WR_MUST_CHECK;
/* Parses "t"/"f" (also "true"/"false"). Returns 0 or WR_EINVAL. */
int pgt_parse_bool(const char *s, size_t len, bool *out) WR_MUST_CHECK;
/* Parses a float text form; sets *is_special for NaN/Infinity/-Infinity. Returns 0 or WR_EINVAL. */
int pgt_parse_double(const char *s, size_t len, double *out, bool *is_special) WR_MUST_CHECK;
/* Decodes bytea hex output ("\x0a0b"). out must hold (len-2)/2 bytes; sets *outlen. */
int pgt_decode_bytea_hex(const char *s, size_t len, uint8_t *out, size_t *outlen) WR_MUST_CHECK;

#endif
