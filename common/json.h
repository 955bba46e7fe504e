/*
 * json.h - a small JSON writer: a growable buffer, string escaping, and the one mapping of
 * a PostgreSQL value (type OID + text form) to JSON that every JSON-speaking destination
 * uses (docs/events.md "Values").
 *
 * NOTES: pure code, no I/O; linked into every process. Writers append to a jw_buf_t
 * whose memory is reused between events (jw_reset keeps the allocation), so the hot path
 * allocates only while a buffer grows to its high-water mark. An allocation failure is
 * sticky: later appends do nothing and jw_failed() reports it, so a caller checks once
 * per event instead of after every append.
 *
 * Value mapping (the same for webhooks, JSON lines, NATS and the event store):
 *   NULL -> null; bool -> true / false; int2, int4 -> a JSON number (the text form);
 *   json, jsonb -> the value embedded as JSON; everything else (int8, oid, numeric, floats,
 *   dates and times, bytea as "\x...", arrays, ranges, ...) -> the PostgreSQL text form as
 *   a JSON string, so no value loses precision. An unchanged TOAST value has no JSON form:
 *   callers omit the column and list it in "unchanged_toast".
 */
#ifndef WR_JSON_H
#define WR_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct jw_buf_s {
    char *data; /* NUL-terminated while !failed */
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed: the content is incomplete */
} jw_buf_t;

void jw_init(jw_buf_t *b);
/* Frees the memory; the buffer can be used again after jw_init. */
void jw_free(jw_buf_t *b);
/* Empties the buffer, keeping its memory; clears failed. */
void jw_reset(jw_buf_t *b);
static inline bool
jw_failed(const jw_buf_t *b)
{
    return b->failed;
}

/* Appends n bytes as they are (JSON the caller vouches for). */
void jw_raw(jw_buf_t *b, const char *s, size_t n);
/* Appends a NUL-terminated string as it is. */
void jw_lit(jw_buf_t *b, const char *s);
/* Appends n bytes as a quoted JSON string: '"', '\\' and control characters escaped;
 * bytes >= 0x80 are copied (the source's text is UTF-8). */
void jw_str(jw_buf_t *b, const char *s, size_t n);
/* jw_str of a NUL-terminated string (NULL -> null). */
void jw_cstr(jw_buf_t *b, const char *s);
void jw_i64(jw_buf_t *b, int64_t v);
void jw_u64(jw_buf_t *b, uint64_t v);
/* An LSN as a JSON string "16/B374D848". */
void jw_lsn(jw_buf_t *b, uint64_t lsn);
/* A time (microseconds since 1970-01-01 UTC) as an RFC 3339 JSON string in UTC with
 * microseconds: "2026-12-02T16:31:25.123456Z". */
void jw_time(jw_buf_t *b, int64_t us);
/* One value by the mapping above. kind is 'n' (NULL) or 't' (text); an int2/int4 or bool
 * whose text is not of that type's form is written as a string (never invalid JSON).
 * kind 'u' (unchanged) writes null: callers are expected to omit such columns. */
void jw_value(jw_buf_t *b, uint32_t type_oid, char kind, const char *data, size_t len);

#endif
