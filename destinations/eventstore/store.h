/*
 * store.h - the event store engine behind walrelay/eventstore.h: one handle on a SQLite
 * file or a PostgreSQL database holding the schema of docs/eventstore.md, the writer's
 * transaction (pending events, the write lock, dense positions), the CDC bookkeeping the
 * destination needs (resume keys per slot, pipelines, claimed aggregate kinds, staged
 * copies) and the read path.
 *
 * NOTES: linked into libwalrelay-eventstore.so (the public wr_es_* functions), into the
 * eventstore destination (walrelay-apply, walrelay-sync) and into the walrelay command
 * (`walrelay events`, preflight). No global state; one handle = one connection, used by
 * one thread. Depends on SQLite, libpq and jansson only (not on walrelay's common/), so
 * the shared library stands alone.
 *
 * THE WRITER'S TRANSACTION (es_tx_*)
 *
 *   es_tx_add() only buffers an event (its strings copied into an arena). Positions are
 *   assigned when the buffer is flushed (es_tx_flush(), at commit, or when the buffer
 *   passes ES_PENDING_MAX_BYTES / ES_PENDING_MAX_EVENTS): the writer takes the store's
 *   write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE es_events IN EXCLUSIVE
 *   MODE, which plain SELECTs do not wait for), reads the head (max position) once, and
 *   numbers the events head+1, head+2, ... It keeps the lock until COMMIT, so no other
 *   writer can take positions in between and every position becomes visible in order.
 *   SQLite: each event is one prepared INSERT into es_events, its stream_version taken
 *   from the streams this flush already touched or else from es_streams; then one upsert
 *   per touched stream. PostgreSQL (round trips matter): one query for the last versions
 *   of the streams the flush touches (their keys as one JSON array), one COPY straight
 *   into es_events with each event's position and stream_version, one upsert of
 *   es_streams from those events. Other statements of the
 * transaction (progress, claims, copy staging) run at once inside the same database transaction;
 * only events, claims and copy publication need the lock (PostgreSQL takes it lazily, SQLite holds
 * its write transaction from the first statement). A failure rolls everything back.
 *
 * COPIES (es_copy_*)
 *
 *   Copied rows are staged in es_copy_rows under (pipeline, relid), numbered in copy
 *   order, in as many transactions as the copy takes; es_copies records the attempt.
 *   es_copy_reset() throws away an earlier attempt's staging. es_copy_publish() turns a
 *   complete staging into `insert` events at the end of the log (one INSERT ... SELECT
 *   under the lock) and deletes it, in one transaction: nothing of a copy is visible
 *   before it is complete, and a crash mid-copy leaves only staging that the next attempt
 *   throws away.
 */
#ifndef WR_ES_STORE_H
#define WR_ES_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "walrelay/eventstore.h"

#define ES_MUST_CHECK __attribute__((warn_unused_result))

#define ES_SCHEMA_VERSION     1
#define ES_PENDING_MAX_BYTES  (4u * 1024u * 1024u)
#define ES_PENDING_MAX_EVENTS 4096u

enum { ES_BACKEND_SQLITE = 1, ES_BACKEND_PG = 2 };

/* Opens a SQLite file (created with WR_ES_OPEN_CREATE) or a PostgreSQL database.
 * flags: WR_ES_OPEN_CREATE. */
int es_open_sqlite(const char *path, int flags, wr_es_store_t **out,
                   wr_es_error_t *err) ES_MUST_CHECK;
int es_open_pg(const char *conninfo, int flags, wr_es_store_t **out,
               wr_es_error_t *err) ES_MUST_CHECK;
int es_backend(const wr_es_store_t *s);

/* Sets err (printf-style); returns code. */
int es_err(wr_es_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void es_hint(wr_es_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The source of a CDC event: (commit LSN as int64 bits, ordinal - 1, index in the change). */
typedef struct es_src_s {
    bool set;
    int64_t lsn;
    int32_t seq;
    int16_t sub;
} es_src_t;

/* ---- the writer's transaction ---- */

/* Starts a logical transaction (nothing touches the database yet). */
int es_tx_begin(wr_es_store_t *s, wr_es_error_t *err) ES_MUST_CHECK;
bool es_tx_open(const wr_es_store_t *s);
/* Buffers one event; strings are copied. metadata must be a JSON object, data JSON. */
int es_tx_add(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
              const char *event_kind, const char *data, size_t data_len, const char *metadata,
              size_t metadata_len, const es_src_t *src, wr_es_error_t *err) ES_MUST_CHECK;
/* Writes the buffered events into the open database transaction (taking the lock). */
int es_tx_flush(wr_es_store_t *s, wr_es_error_t *err) ES_MUST_CHECK;
/* Flushes, stores (slot, lsn, seq) as the slot's progress if slot is not NULL, commits.
 * Durable on return. */
int es_tx_commit(wr_es_store_t *s, const char *slot, int64_t lsn, int32_t seq,
                 wr_es_error_t *err) ES_MUST_CHECK;
/* Abandons the transaction (and whatever it wrote). */
void es_tx_rollback(wr_es_store_t *s);
/* While a flush writes its events (SQLite: CPU-bound, tens of milliseconds for a full
 * buffer), fn(arg) is called every ES_BUSY_EVERY events, so that the caller can do a
 * little of its own work meanwhile (the apply worker reads its stream ahead). fn must
 * not use this handle. NULL: none. */
#define ES_BUSY_EVERY 64u
typedef void (*es_busy_fn)(void *arg);
void es_set_busy(wr_es_store_t *s, es_busy_fn fn, void *arg);
/* SQLite: checkpoints move to a thread with its own connection, woken every
 * ES_CKPT_WAKE_PAGES pages of WAL, so that the writer (the apply worker) does not copy the
 * WAL into the database file itself; the writer still checkpoints at ES_CKPT_LIMIT_PAGES
 * (SQLite's autocheckpoint without the thread), which bounds the WAL as before. Stopped
 * by wr_es_close. PostgreSQL: nothing. */
#define ES_CKPT_WAKE_PAGES  4096
#define ES_CKPT_LIMIT_PAGES 16384
#define ES_STR_(x)          #x
#define ES_STR(x)           ES_STR_(x)
int es_ckpt_start(wr_es_store_t *s, wr_es_error_t *err) ES_MUST_CHECK;
/* Last position this transaction wrote, 0 if none yet. */
int64_t es_tx_last_position(const wr_es_store_t *s);

/* ---- CDC bookkeeping (inside the open transaction when there is one, else in one of
 * their own) ---- */

/* The slot's progress: *found=false if none. */
int es_progress_get(wr_es_store_t *s, const char *slot, bool *found, int64_t *lsn, int32_t *seq,
                    wr_es_error_t *err) ES_MUST_CHECK;
int es_progress_clear(wr_es_store_t *s, const char *slot, wr_es_error_t *err) ES_MUST_CHECK;
/* Registers the pipeline (its apply slot) with its owner ("host:dir"); a different owner
 * already registered is WR_ES_CONFLICT (a second pipeline on the same store and slot),
 * message and hint set. check_only: compare, register nothing. */
int es_pipeline_register(wr_es_store_t *s, const char *slot, const char *owner, bool check_only,
                         wr_es_error_t *err) ES_MUST_CHECK;
/* Claims an aggregate kind for the pipeline (slot). WR_ES_CONFLICT (message set) if
 * another pipeline claimed it, or if it holds events that no pipeline wrote. */
int es_kind_claim(wr_es_store_t *s, const char *aggregate_kind, const char *slot, uint32_t relid,
                  wr_es_error_t *err) ES_MUST_CHECK;

/* ---- copies ---- */

/* Starts a copy attempt of relid for the pipeline: earlier staging is deleted. Inside
 * the open transaction. */
int es_copy_reset(wr_es_store_t *s, const char *slot, uint32_t relid, const char *aggregate_kind,
                  int64_t copy_lsn, wr_es_error_t *err) ES_MUST_CHECK;
/* Stages one copied row (aggregate id, data, metadata). Inside the open transaction. */
int es_copy_add(wr_es_store_t *s, const char *slot, uint32_t relid, const char *aggregate_id,
                const char *data, size_t data_len, const char *metadata, size_t metadata_len,
                wr_es_error_t *err) ES_MUST_CHECK;
/* If a staged copy of relid exists: appends its rows as `insert` events (under the lock,
 * after the transaction's buffered events) and deletes the staging. *published = rows.
 * Inside the open transaction, or in its own. */
int es_copy_publish(wr_es_store_t *s, const char *slot, uint32_t relid, int64_t *published,
                    wr_es_error_t *err) ES_MUST_CHECK;

/* ---- text forms (filter.c) ---- */

/* Parses 'event_kind=K[,aggregate_kind=T][,aggregate_id=ID][,after=P]' into f: event_kind
 * required, each key at most once, after >= 0; an aggregate_id starting with '[' is a
 * JSON array (commas inside). text is cut in place and f's strings point into it. 0, or
 * WR_ES_EINVAL with err naming the problem. */
int es_filter_parse(char *text, wr_es_filter_t *f, wr_es_error_t *err) ES_MUST_CHECK;
/* Copies JSON text in to out (at least strlen(in) + 1 bytes) without the whitespace
 * between tokens; strings are kept as they are. Returns the length written. */
size_t es_json_minify(const char *in, char *out);

#endif
