/*
 * event_json.h - the one JSON encoding of a change, shared by the streaming sinks (http,
 * jsonl, nats): a destination event of the public ABI (walrelay/destination.h) or a copied
 * row becomes one JSON object (docs/events.md).
 *
 * NOTES: pure code on top of common/json.h (the project's one writer and value mapping);
 * no I/O, linked into walrelay-apply and walrelay-sync. Writes into the caller's jw_buf_t,
 * whose memory is reused between events, so encoding allocates only while a buffer grows.
 *
 * The object, field by field, always in this order and always present:
 *   key             the resume key as a string that sorts like the key:
 *                   "<commit LSN, 16 hex digits>:<ordinal, 10 decimal digits>",
 *                   e.g. "00000000016B3748:0000000003"; the same on every redelivery.
 *                   Copied rows: "copy:<relid>:<attempt>:<row number, 10 digits>", where
 *                   attempt is the copy's start (microseconds since 1970, 16 digits): a
 *                   copy that starts again after a crash uses new keys
 *   op              "insert", "update", "delete", "truncate"
 *   phase           "stream" for changes, "copy" for copied rows (and the "truncate" that
 *                   opens every copy of a table: drop what an earlier copy delivered)
 *   table           "schema.name" of the source table
 *   commit_lsn      "X/X" (PostgreSQL's form); null for copied rows
 *   xid             the source transaction id (number); null for copied rows
 *   commit_time     RFC 3339 UTC with microseconds; null for copied rows
 *   new             column -> value (insert, update); null otherwise
 *   old             column -> value: the key columns (the key changed, REPLICA IDENTITY
 *                   DEFAULT / USING INDEX) or the whole old row (FULL), as the source sent
 *                   it; null when the source sent none (insert, update of a non-key column)
 *   unchanged_toast columns of new whose value did not change and was not sent (UPDATE of
 *                   a row with a TOASTed value): absent from new, never a null in its place
 * and, on truncate only, "cascade" and "restart_identity" (booleans).
 * Values: json.h's mapping (NULL null, bool, int2/int4 numbers, json/jsonb embedded,
 * everything else the PostgreSQL text form as a string).
 */
#ifndef WR_EVENT_JSON_H
#define WR_EVENT_JSON_H

#include <walrelay/destination.h>

#include "../common/json.h"

/* "00000000016B3748:0000000003" (27 characters) or a copy key (at most 56) + NUL */
#define EVJ_KEY_LEN 64

/* The key string of a change. Returns buf. */
const char *evj_key(const wr_dest_key_t *k, char buf[EVJ_KEY_LEN]);
/* The key string of the n-th copied row (n from 1; 0 for the copy's opening truncate) of
 * a copy of relid that started at attempt_us. Returns buf. */
const char *evj_copy_key(uint32_t relid, int64_t attempt_us, uint64_t n, char buf[EVJ_KEY_LEN]);
/* Parses a change key written by evj_key. Returns 0, or -1 if s is not one (a copy key
 * included). */
int evj_key_parse(const char *s, size_t len, wr_dest_key_t *out);

/* True if the event is a change (INSERT, UPDATE, DELETE, TRUNCATE with a relation): the
 * events that have a JSON form. BEGIN, COMMIT and RELATION have none. */
bool evj_is_change(const wr_dest_event_t *ev);
/* The op name of a change ("insert" ...), NULL for other events. */
const char *evj_op(const wr_dest_event_t *ev);

/* Appends the JSON object of a change (evj_is_change must be true). The key string is
 * written from ev->key. Check jw_failed(b) afterwards. */
void evj_event(jw_buf_t *b, const wr_dest_event_t *ev);
/* Appends the JSON object of a copied row: op "insert", phase "copy", key as given. */
void evj_copy_row(jw_buf_t *b, const wr_dest_relation_t *rel, const wr_dest_row_t *row,
                  const char *key);
/* Appends the "truncate" with phase "copy" that opens a copy of rel. */
void evj_copy_truncate(jw_buf_t *b, const wr_dest_relation_t *rel, const char *key);

#endif
