/*
 * walrelay/eventstore.h - read and append events in a walrelay event store, from C.
 *
 * The `eventstore` destination of walrelay turns every replicated change of a PostgreSQL
 * publication into an event (docs/eventstore.md): one global, dense position per event
 * (1, 2, 3, ... in commit order), one stream per aggregate (aggregate_kind "schema.table",
 * aggregate_id the canonical JSON array of the primary key's values, e.g. ["42"]), kept in
 * SQLite or PostgreSQL with the same schema. This library reads such a store and appends
 * events to streams that no pipeline writes, with the semantics of an event-sourcing store:
 *
 *   wr_es_stream_version()        the global position of a stream's last event, or none
 *   wr_es_append()                append events to a stream if its version is what the
 *                                 caller expects (a position, "none" for a new stream, or
 *                                 unchecked); atomic, consecutive positions
 *   wr_es_append_expecting_new()  append only if the stream has no event
 *   wr_es_load_events()           the union of filters, deduplicated, ascending position
 *
 * Link with pkg-config walrelay-eventstore (libwalrelay-eventstore.so). The header needs
 * only the C standard library.
 *
 * NOTES (the contract):
 *
 * Stores. wr_es_open() takes "sqlite:PATH" (a database file) or "postgres:CONNINFO" (a
 *   libpq connection string; tables in the connection's first search_path schema). It
 *   opens an existing store; WR_ES_OPEN_CREATE creates the schema when it is missing.
 *   One handle is one connection: use it from one thread at a time. Handles in
 *   different processes (walrelay's workers, other services) may write at once.
 *
 * Positions. Positions are assigned by the one writer that holds the store's write lock
 *   (SQLite: the write transaction; PostgreSQL: an EXCLUSIVE lock on es_events, which
 *   plain readers do not wait for), from the last position + 1, and become visible in
 *   order: a reader that loads "after the last position I saw" again and again never
 *   skips an event and never sees one twice.
 *
 * Versions. A stream's version is the position of its last event (wr_es_version_t,
 *   "none" when it has no event). Each event also carries stream_version, its ordinal in
 *   its stream (1, 2, 3, ...).
 *
 * Appends. events must be non-empty: n == 0 returns WR_ES_EMPTY_APPEND and consumes no
 *   position. With WR_ES_EXPECT_AT(P) the append conflicts unless the stream's version
 *   is P (an empty stream's version is none); WR_ES_EXPECT_NONE conflicts unless the
 *   stream is empty; WR_ES_EXPECT_ANY never conflicts on the version. A stream whose
 *   aggregate kind a walrelay pipeline writes (a replicated table) refuses every append
 *   with WR_ES_CONFLICT (reason WR_ES_CONFLICT_PIPELINE): its history belongs to the
 *   source database. A conflict reports {expected, actual} and writes nothing. On
 *   WR_ES_OK the events have the consecutive positions first..last, in the given order.
 *   data must be JSON (any value); metadata a JSON object or NULL ({}).
 *
 * Loads. A filter has a required event kind and optional aggregate kind, aggregate id and
 *   after (only positions strictly greater, for that filter alone). The result is the
 *   union of the filters, each event once, in ascending position; no filter gives no
 *   event; a negative after is WR_ES_EINVAL. limit > 0 stops after that many events.
 *
 * Results. Functions return WR_ES_OK (0), WR_ES_EMPTY_APPEND or WR_ES_CONFLICT (> 0,
 *   appends only), or a negative error and fill the wr_es_error_t (message, and a hint
 *   when a person can act). A store error leaves nothing half written (the transaction
 *   is rolled back). Messages never contain a password.
 */
#ifndef WALRELAY_EVENTSTORE_H
#define WALRELAY_EVENTSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WR_ES_API_VERSION 1

/* ---- results ------------------------------------------------------------------------ */

enum {
    WR_ES_OK = 0,
    WR_ES_EMPTY_APPEND = 1, /* append of no event: nothing written, no position used */
    WR_ES_CONFLICT = 2,     /* append refused: see wr_es_append_result_t.expected/actual */
    WR_ES_ESTORE = -1,      /* the store failed (SQL error, connection lost, disk) */
    WR_ES_EINVAL = -2,      /* a bad argument: negative after, bad JSON, empty kind ... */
    WR_ES_ENOSTORE = -3,    /* no event store there (missing file, database without it) */
    WR_ES_ENOMEM = -4,      /* out of memory */
};

typedef struct wr_es_error_s {
    int code; /* the negative code returned */
    char message[1024];
    char hint[512];
} wr_es_error_t;

/* "ok", "empty_append", "conflict", "store_error", "invalid", "no_store", "out_of_memory" */
const char *wr_es_code_name(int code);

/* ---- values ------------------------------------------------------------------------- */

/* A stream version: the position of the stream's last event, or none. */
typedef struct wr_es_version_s {
    bool set; /* false: none (the stream has no event) */
    int64_t position;
} wr_es_version_t;

typedef enum wr_es_expect_kind_e {
    WR_ES_EXPECT_ANY = 0, /* unchecked */
    WR_ES_EXPECT_NONE,    /* the stream must be empty */
    WR_ES_EXPECT_AT,      /* the stream's version must be position */
} wr_es_expect_kind_t;

typedef struct wr_es_expect_s {
    wr_es_expect_kind_t kind;
    int64_t position; /* WR_ES_EXPECT_AT */
} wr_es_expect_t;

/* An event to append. */
typedef struct wr_es_new_event_s {
    const char *event_kind; /* non-empty */
    const char *data;       /* JSON text, data_len bytes */
    size_t data_len;
    const char *metadata; /* JSON object text (NUL-terminated), or NULL for {} */
} wr_es_new_event_t;

enum { WR_ES_CONFLICT_VERSION = 1, WR_ES_CONFLICT_PIPELINE = 2 };

typedef struct wr_es_append_result_s {
    /* WR_ES_OK: positions first..last (consecutive) */
    int64_t first_position;
    int64_t last_position;
    /* WR_ES_CONFLICT: what the caller expected (set=false: none; for WR_ES_EXPECT_ANY,
     * which conflicts only on a pipeline's stream, also set=false) and the stream's
     * version when the append was refused */
    wr_es_version_t expected;
    wr_es_version_t actual;
    int conflict_reason; /* WR_ES_CONFLICT_VERSION or WR_ES_CONFLICT_PIPELINE */
} wr_es_append_result_t;

typedef struct wr_es_filter_s {
    const char *event_kind;     /* required */
    const char *aggregate_kind; /* NULL: any */
    const char *aggregate_id;   /* NULL: any */
    bool has_after;
    int64_t after; /* with has_after: positions > after only; negative is WR_ES_EINVAL */
} wr_es_filter_t;

/* A stored event. Pointers are valid during the callback (wr_es_load_each) or until
 * wr_es_event_list_free (wr_es_load_events). */
typedef struct wr_es_event_s {
    int64_t position;
    const char *aggregate_kind;
    const char *aggregate_id;
    const char *event_kind;
    int64_t stream_version; /* ordinal in its stream, from 1 */
    const char *data;       /* JSON text, data_len bytes, NUL-terminated */
    size_t data_len;
    const char *metadata;   /* JSON object text */
    const char *created_at; /* RFC 3339, UTC: "2026-01-02T03:04:05.123456Z" */
} wr_es_event_t;

typedef struct wr_es_event_list_s {
    wr_es_event_t *events;
    size_t n;
    void *priv_; /* owned memory */
} wr_es_event_list_t;

/* ---- the store ---------------------------------------------------------------------- */

typedef struct wr_es_store_s wr_es_store_t;

#define WR_ES_OPEN_CREATE 1 /* create the schema (and the SQLite file) when missing */

/* Opens "sqlite:PATH" or "postgres:CONNINFO". WR_ES_ENOSTORE if there is no event store
 * there (without WR_ES_OPEN_CREATE); WR_ES_EINVAL for a spec of another form. */
int wr_es_open(const char *spec, int flags, wr_es_store_t **out, wr_es_error_t *err);
void wr_es_close(wr_es_store_t *s);

/* The stream's version (position of its last event) in *version, set=false if it has no
 * event; *count (may be NULL) its number of events (its last stream_version), 0 if none. */
int wr_es_stream_version(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
                         wr_es_version_t *version, int64_t *count, wr_es_error_t *err);

/* Appends n events to the stream, atomically, if expected holds. Returns WR_ES_OK,
 * WR_ES_EMPTY_APPEND, WR_ES_CONFLICT, or an error. res may be NULL. */
int wr_es_append(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
                 wr_es_expect_t expected, const wr_es_new_event_t *events, size_t n,
                 wr_es_append_result_t *res, wr_es_error_t *err);

/* wr_es_append with WR_ES_EXPECT_NONE: conflicts ({none, last}) if the stream has any
 * event. */
int wr_es_append_expecting_new(wr_es_store_t *s, const char *aggregate_kind,
                               const char *aggregate_id, const wr_es_new_event_t *events, size_t n,
                               wr_es_append_result_t *res, wr_es_error_t *err);

/* Calls fn for each event of the union of the filters in ascending position (at most
 * limit events when limit > 0). fn returns 0 to go on, anything else to stop (returned
 * as is). Reads in pages, so memory stays small whatever the result's size. */
typedef int (*wr_es_event_fn)(void *arg, const wr_es_event_t *ev);
int wr_es_load_each(wr_es_store_t *s, const wr_es_filter_t *filters, size_t nfilters, int64_t limit,
                    wr_es_event_fn fn, void *arg, wr_es_error_t *err);

/* The same into a list (free it with wr_es_event_list_free, also after an error). */
int wr_es_load_events(wr_es_store_t *s, const wr_es_filter_t *filters, size_t nfilters,
                      int64_t limit, wr_es_event_list_t *out, wr_es_error_t *err);
void wr_es_event_list_free(wr_es_event_list_t *list);

/* The highest position in the store, 0 when it is empty. */
int wr_es_head(wr_es_store_t *s, int64_t *position, wr_es_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
