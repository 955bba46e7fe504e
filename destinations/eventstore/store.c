/*
 * store.c - the event store engine (store.h) and the public C API of
 * walrelay/eventstore.h on top of it.
 *
 * NOTES: runs in whatever process opened the store: walrelay-apply and walrelay-sync (the
 * destination), the walrelay command (`walrelay events`, `walrelay check`) and programs
 * linked with libwalrelay-eventstore.so. It owns and persists the schema below, the same
 * on SQLite and PostgreSQL (types differ where the engines do):
 *
 *   es_events(position PK: dense from 1, commit order; aggregate_kind, aggregate_id,
 *             event_kind, stream_version, data, metadata, created_at, src_lsn, src_seq,
 *             src_sub; UNIQUE(src_lsn, src_seq, src_sub), UNIQUE(aggregate_kind,
 *             aggregate_id, stream_version)) + indexes (aggregate_kind, aggregate_id,
 *             position) and (event_kind, position)
 *   es_streams(aggregate_kind, aggregate_id PK, last_position, last_version,
 *             last_event_kind): moved forward in the same transaction as the events
 *   es_cdc_progress(slot_name PK, last_commit_lsn, last_seq, last_position, updated_at):
 *             the resume key per replication slot, written in the same transaction
 *   es_pipelines(slot_name PK, owner, created_at): which pipeline (host:directory) owns
 *             an apply slot's name in this store
 *   es_cdc_kinds(aggregate_kind PK, slot_name, relid, claimed_at): aggregate kinds that
 *             a pipeline writes; appends to them are conflicts
 *   es_copies(slot_name, relid PK, aggregate_kind, copy_lsn, started_at) and
 *   es_copy_rows(slot_name, relid, n PK, aggregate_id, data, metadata): staged copies
 *   es_meta(key PK, value): schema_version
 *
 * Locking, positions and the copy staging are described in store.h.
 * SQLite: WAL, synchronous=FULL (a COMMIT is durable before walrelay confirms the slot),
 * busy_timeout 60 s, a 16 MB page cache and a checkpoint every 16384 WAL pages (the
 * stream indexes take inserts all over: fewer checkpoints write each hot page fewer
 * times). 64 MB of cache was no faster for 1M events (bench/eventstore.py, RESULTS.md
 * 2026-12-04) and put the apply worker at ~110 MB instead of ~50.
 */
#include "store_db.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ES_API __attribute__((visibility("default")))

#define ES_LOAD_PAGE 1000

/* A stream touched by the flush being written (SQLite): its new last event. */
typedef struct es_sent_s {
    uint64_t hash; /* 0 = free slot */
    size_t off_kind, off_id, off_ekind;
    int64_t position, version;
    bool existed; /* SQLite: es_streams had the stream before this flush */
} es_sent_t;

typedef struct es_pend_s {
    char type; /* 'e' event, 'c' copied row */
    size_t off_kind, off_id, off_ekind, off_data, off_meta, off_slot;
    size_t stream; /* PostgreSQL flush: its stream's entry in smap */
    size_t len_data, len_meta;
    es_src_t src;
    uint32_t relid; /* 'c' */
    int64_t n;      /* 'c' */
} es_pend_t;

struct wr_es_store_s {
    es_db_t db;
    char where[600]; /* "event store "PATH"" or "event store in database "x"": no secret */
    bool tx;         /* es_tx_begin was called */
    bool db_tx;      /* a database transaction is open */
    bool locked;     /* the write lock is held and head is valid */
    int64_t head;
    int64_t tx_last; /* last position written in this transaction */
    /* pending rows of the transaction */
    char *arena;
    size_t alen, acap;
    es_pend_t *pend;
    size_t npend, pcap, nevents;
    /* numbering of the copy being staged */
    bool copy_known;
    char copy_slot[128];
    uint32_t copy_relid;
    int64_t copy_next;
    /* SQLite: the streams a flush touches (open addressing, strings in the arena) */
    struct es_sent_s *smap;
    size_t scap, smap_n; /* allocated, in use (a power of two) */
    /* PostgreSQL COPY text */
    char *cbuf;
    size_t clen, ccap;
    bool cfail;
    /* es_set_busy */
    es_busy_fn busy_fn;
    void *busy_arg;
    /* SQLite: es_ckpt_start */
    struct es_ckpt_s *ckpt;
};

/* ---- the SQL ---------------------------------------------------------------------- */

#define ES_STREAMS_UPSERT                                                                          \
    "INSERT INTO es_streams (aggregate_kind, aggregate_id, last_position, last_version, "          \
    "last_event_kind) "                                                                            \
    "SELECT aggregate_kind, aggregate_id, position, stream_version, event_kind FROM "              \
    "(SELECT aggregate_kind, aggregate_id, position, stream_version, event_kind, "                 \
    "row_number() OVER (PARTITION BY aggregate_kind, aggregate_id ORDER BY position DESC) AS rn "  \
    "FROM es_events WHERE position > $1) AS x WHERE rn = 1 "                                       \
    "ON CONFLICT (aggregate_kind, aggregate_id) DO UPDATE SET "                                    \
    "last_position = excluded.last_position, last_version = excluded.last_version, "               \
    "last_event_kind = excluded.last_event_kind"

/* PostgreSQL: the last versions of the streams a flush touches, their keys given as one
 * JSON array of [aggregate_kind, aggregate_id] pairs; NULL for a new stream. A correlated
 * subquery, one index probe per stream, whatever the planner thinks of the array: as a
 * join, its (cached) plan hashed a sequential scan of all of es_streams on every flush. */
#define ES_STREAM_VERSIONS                                                                         \
    "SELECT x.e ->> 0, x.e ->> 1, (SELECT s.last_version FROM es_streams s "                       \
    "WHERE s.aggregate_kind = (x.e ->> 0) AND s.aggregate_id = (x.e ->> 1)) "                      \
    "FROM json_array_elements(CAST($1 AS json)) AS x(e)"

#define ES_COPY_PUBLISH(TS)                                                                        \
    "INSERT INTO es_events (position, aggregate_kind, aggregate_id, event_kind, stream_version, "  \
    "data, metadata, created_at, src_lsn, src_seq, src_sub) "                                      \
    "SELECT CAST($1 AS BIGINT) + row_number() OVER (ORDER BY c.n), CAST($4 AS TEXT), "             \
    "c.aggregate_id, "                                                                             \
    "'insert', COALESCE(st.last_version, 0) + 1, c.data, c.metadata, " TS ", NULL, NULL, NULL "    \
    "FROM es_copy_rows c LEFT JOIN es_streams st "                                                 \
    "ON st.aggregate_kind = $4 AND st.aggregate_id = c.aggregate_id "                              \
    "WHERE c.slot_name = $2 AND c.relid = $3 ORDER BY c.n"

static const char *const es_sql[ES_Q_COUNT][2] = {
    [ES_Q_HEAD] = {"SELECT COALESCE(max(position), 0) FROM es_events",
                   "SELECT COALESCE(max(position), 0) FROM es_events"},
    [ES_Q_STREAM_VERSIONS] = {NULL, ES_STREAM_VERSIONS},
    [ES_Q_STREAMS_FROM_EVENTS] = {ES_STREAMS_UPSERT, ES_STREAMS_UPSERT}, /* SQLite: copies */
    [ES_Q_STREAM_GET] = {"SELECT last_position, last_version FROM es_streams "
                         "WHERE aggregate_kind = $1 AND aggregate_id = $2",
                         "SELECT last_position, last_version FROM es_streams "
                         "WHERE aggregate_kind = $1 AND aggregate_id = $2"},
    [ES_Q_PROGRESS_GET] = {"SELECT last_commit_lsn, last_seq FROM es_cdc_progress "
                           "WHERE slot_name = $1",
                           "SELECT last_commit_lsn, last_seq FROM es_cdc_progress "
                           "WHERE slot_name = $1"},
    [ES_Q_PROGRESS_PUT] =
        {"INSERT INTO es_cdc_progress (slot_name, last_commit_lsn, last_seq, last_position, "
         "updated_at) VALUES ($1, $2, $3, COALESCE(CAST($4 AS BIGINT), 0), $5) "
         "ON CONFLICT (slot_name) DO UPDATE SET last_commit_lsn = excluded.last_commit_lsn, "
         "last_seq = excluded.last_seq, "
         "last_position = COALESCE(CAST($4 AS BIGINT), es_cdc_progress.last_position), "
         "updated_at = excluded.updated_at",
         "INSERT INTO es_cdc_progress (slot_name, last_commit_lsn, last_seq, last_position, "
         "updated_at) VALUES ($1, $2, $3, COALESCE(CAST($4 AS BIGINT), 0), "
         "CAST($5 AS timestamptz)) "
         "ON CONFLICT (slot_name) DO UPDATE SET last_commit_lsn = excluded.last_commit_lsn, "
         "last_seq = excluded.last_seq, "
         "last_position = COALESCE(CAST($4 AS BIGINT), es_cdc_progress.last_position), "
         "updated_at = excluded.updated_at"},
    [ES_Q_PROGRESS_DEL] = {"DELETE FROM es_cdc_progress WHERE slot_name = $1",
                           "DELETE FROM es_cdc_progress WHERE slot_name = $1"},
    [ES_Q_PIPELINE_GET] = {"SELECT owner FROM es_pipelines WHERE slot_name = $1",
                           "SELECT owner FROM es_pipelines WHERE slot_name = $1"},
    [ES_Q_PIPELINE_PUT] = {"INSERT INTO es_pipelines (slot_name, owner, created_at) "
                           "VALUES ($1, $2, $3) ON CONFLICT (slot_name) DO NOTHING",
                           "INSERT INTO es_pipelines (slot_name, owner, created_at) "
                           "VALUES ($1, $2, CAST($3 AS timestamptz)) "
                           "ON CONFLICT (slot_name) DO NOTHING"},
    [ES_Q_KIND_GET] = {"SELECT slot_name, relid FROM es_cdc_kinds WHERE aggregate_kind = $1",
                       "SELECT slot_name, relid FROM es_cdc_kinds WHERE aggregate_kind = $1"},
    [ES_Q_KIND_PUT] = {"INSERT INTO es_cdc_kinds (aggregate_kind, slot_name, relid, claimed_at) "
                       "VALUES ($1, $2, $3, $4) ON CONFLICT (aggregate_kind) DO UPDATE SET "
                       "relid = excluded.relid",
                       "INSERT INTO es_cdc_kinds (aggregate_kind, slot_name, relid, claimed_at) "
                       "VALUES ($1, $2, $3, CAST($4 AS timestamptz)) "
                       "ON CONFLICT (aggregate_kind) DO UPDATE SET relid = excluded.relid"},
    [ES_Q_KIND_HAS_EVENTS] = {"SELECT 1 FROM es_events WHERE aggregate_kind = $1 LIMIT 1",
                              "SELECT 1 FROM es_events WHERE aggregate_kind = $1 LIMIT 1"},
    [ES_Q_COPY_DEL_ROWS] = {"DELETE FROM es_copy_rows WHERE slot_name = $1 AND relid = $2",
                            "DELETE FROM es_copy_rows WHERE slot_name = $1 AND relid = $2"},
    [ES_Q_COPY_DEL] = {"DELETE FROM es_copies WHERE slot_name = $1 AND relid = $2",
                       "DELETE FROM es_copies WHERE slot_name = $1 AND relid = $2"},
    [ES_Q_COPY_PUT] = {"INSERT INTO es_copies (slot_name, relid, aggregate_kind, copy_lsn, "
                       "started_at) VALUES ($1, $2, $3, $4, $5)",
                       "INSERT INTO es_copies (slot_name, relid, aggregate_kind, copy_lsn, "
                       "started_at) VALUES ($1, $2, $3, $4, CAST($5 AS timestamptz))"},
    [ES_Q_COPY_GET] = {"SELECT aggregate_kind FROM es_copies WHERE slot_name = $1 AND relid = $2",
                       "SELECT aggregate_kind FROM es_copies WHERE slot_name = $1 AND relid = $2"},
    [ES_Q_COPY_NEXT_N] = {"SELECT COALESCE(max(n) + 1, 0) FROM es_copy_rows "
                          "WHERE slot_name = $1 AND relid = $2",
                          "SELECT COALESCE(max(n) + 1, 0) FROM es_copy_rows "
                          "WHERE slot_name = $1 AND relid = $2"},
    [ES_Q_COPY_ROW_INS] = {"INSERT INTO es_copy_rows (slot_name, relid, n, aggregate_id, data, "
                           "metadata) VALUES ($1, $2, $3, $4, $5, $6)",
                           NULL},
    [ES_Q_COPY_PUBLISH] = {ES_COPY_PUBLISH("$5"), ES_COPY_PUBLISH("CAST($5 AS timestamptz)")},
    [ES_Q_EVENT_INS] = {"INSERT INTO es_events (position, aggregate_kind, aggregate_id, "
                        "event_kind, stream_version, data, metadata, created_at, src_lsn, "
                        "src_seq, src_sub) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        NULL},
    /* SQLite's flush knows whether the stream exists (it read its version): one B-tree
     * operation instead of the upsert's insert attempt and update */
    [ES_Q_STREAM_INS] = {"INSERT INTO es_streams (aggregate_kind, aggregate_id, last_position, "
                         "last_version, last_event_kind) VALUES ($1, $2, $3, $4, $5)",
                         NULL},
    [ES_Q_STREAM_UPD] = {"UPDATE es_streams SET last_position = $3, last_version = $4, "
                         "last_event_kind = $5 WHERE aggregate_kind = $1 AND aggregate_id = $2",
                         NULL},
};

static const char es_schema_sqlite[] =
    "CREATE TABLE IF NOT EXISTS es_events ("
    " position INTEGER PRIMARY KEY,"
    " aggregate_kind TEXT NOT NULL, aggregate_id TEXT NOT NULL, event_kind TEXT NOT NULL,"
    " stream_version INTEGER NOT NULL, data BLOB NOT NULL, metadata TEXT NOT NULL,"
    " created_at TEXT NOT NULL, src_lsn INTEGER, src_seq INTEGER, src_sub INTEGER,"
    " UNIQUE (src_lsn, src_seq, src_sub),"
    " UNIQUE (aggregate_kind, aggregate_id, stream_version));"
    "CREATE INDEX IF NOT EXISTS es_events_aggregate_idx"
    " ON es_events (aggregate_kind, aggregate_id, position);"
    "CREATE INDEX IF NOT EXISTS es_events_kind_idx ON es_events (event_kind, position);"
    "CREATE TABLE IF NOT EXISTS es_streams ("
    " aggregate_kind TEXT NOT NULL, aggregate_id TEXT NOT NULL,"
    " last_position INTEGER NOT NULL, last_version INTEGER NOT NULL,"
    " last_event_kind TEXT NOT NULL, PRIMARY KEY (aggregate_kind, aggregate_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS es_cdc_progress ("
    " slot_name TEXT PRIMARY KEY, last_commit_lsn INTEGER NOT NULL, last_seq INTEGER NOT NULL,"
    " last_position INTEGER NOT NULL DEFAULT 0, updated_at TEXT);"
    "CREATE TABLE IF NOT EXISTS es_pipelines ("
    " slot_name TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at TEXT);"
    "CREATE TABLE IF NOT EXISTS es_cdc_kinds ("
    " aggregate_kind TEXT PRIMARY KEY, slot_name TEXT NOT NULL, relid INTEGER,"
    " claimed_at TEXT);"
    "CREATE TABLE IF NOT EXISTS es_copies ("
    " slot_name TEXT NOT NULL, relid INTEGER NOT NULL, aggregate_kind TEXT NOT NULL,"
    " copy_lsn INTEGER, started_at TEXT, PRIMARY KEY (slot_name, relid));"
    "CREATE TABLE IF NOT EXISTS es_copy_rows ("
    " slot_name TEXT NOT NULL, relid INTEGER NOT NULL, n INTEGER NOT NULL,"
    " aggregate_id TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT NOT NULL,"
    " PRIMARY KEY (slot_name, relid, n));"
    "CREATE TABLE IF NOT EXISTS es_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT INTO es_meta (key, value) VALUES ('schema_version', '1')"
    " ON CONFLICT (key) DO NOTHING;";

static const char es_schema_pg[] =
    "CREATE TABLE IF NOT EXISTS es_events ("
    " position bigint PRIMARY KEY,"
    " aggregate_kind text COLLATE \"C\" NOT NULL, aggregate_id text COLLATE \"C\" NOT NULL,"
    " event_kind text COLLATE \"C\" NOT NULL,"
    " stream_version integer NOT NULL, data bytea NOT NULL, metadata jsonb NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " src_lsn bigint, src_seq integer, src_sub smallint,"
    " UNIQUE (src_lsn, src_seq, src_sub),"
    " UNIQUE (aggregate_kind, aggregate_id, stream_version));"
    "CREATE INDEX IF NOT EXISTS es_events_aggregate_idx"
    " ON es_events (aggregate_kind, aggregate_id, position);"
    "CREATE INDEX IF NOT EXISTS es_events_kind_idx ON es_events (event_kind, position);"
    "CREATE TABLE IF NOT EXISTS es_streams ("
    " aggregate_kind text COLLATE \"C\" NOT NULL, aggregate_id text COLLATE \"C\" NOT NULL,"
    " last_position bigint NOT NULL, last_version integer NOT NULL,"
    " last_event_kind text COLLATE \"C\" NOT NULL, PRIMARY KEY (aggregate_kind, aggregate_id));"
    "CREATE TABLE IF NOT EXISTS es_cdc_progress ("
    " slot_name text PRIMARY KEY, last_commit_lsn bigint NOT NULL, last_seq integer NOT NULL,"
    " last_position bigint NOT NULL DEFAULT 0, updated_at timestamptz);"
    "CREATE TABLE IF NOT EXISTS es_pipelines ("
    " slot_name text PRIMARY KEY, owner text NOT NULL, created_at timestamptz);"
    "CREATE TABLE IF NOT EXISTS es_cdc_kinds ("
    " aggregate_kind text COLLATE \"C\" PRIMARY KEY, slot_name text NOT NULL, relid bigint,"
    " claimed_at timestamptz);"
    "CREATE TABLE IF NOT EXISTS es_copies ("
    " slot_name text NOT NULL, relid bigint NOT NULL, aggregate_kind text NOT NULL,"
    " copy_lsn bigint, started_at timestamptz, PRIMARY KEY (slot_name, relid));"
    "CREATE TABLE IF NOT EXISTS es_copy_rows ("
    " slot_name text NOT NULL, relid bigint NOT NULL, n bigint NOT NULL,"
    " aggregate_id text COLLATE \"C\" NOT NULL, data bytea NOT NULL, metadata jsonb NOT NULL,"
    " PRIMARY KEY (slot_name, relid, n));"
    "CREATE TABLE IF NOT EXISTS es_meta (key text PRIMARY KEY, value text NOT NULL);"
    "INSERT INTO es_meta (key, value) VALUES ('schema_version', '1')"
    " ON CONFLICT (key) DO NOTHING;";

/* ---- errors ----------------------------------------------------------------------- */

int
es_err(wr_es_error_t *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    err->hint[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

void
es_hint(wr_es_error_t *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(err->hint, sizeof(err->hint), fmt, ap);
    va_end(ap);
}

/* Prefixes err's message with where the store is. */
static int
es_where(wr_es_store_t *s, wr_es_error_t *err, int code)
{
    size_t w, m, cap;

    if (err == NULL)
        return code;
    cap = sizeof(err->message) - 1;
    w = strlen(s->where);
    m = strlen(err->message);
    if (w + 2 > cap)
        return code;
    if (w + 2 + m > cap)
        m = cap - w - 2;
    memmove(err->message + w + 2, err->message, m);
    memcpy(err->message, s->where, w);
    err->message[w] = ':';
    err->message[w + 1] = ' ';
    err->message[w + 2 + m] = '\0';
    return code;
}

ES_API const char *
wr_es_code_name(int code)
{
    switch (code) {
    case WR_ES_OK:
        return "ok";
    case WR_ES_EMPTY_APPEND:
        return "empty_append";
    case WR_ES_CONFLICT:
        return "conflict";
    case WR_ES_ESTORE:
        return "store_error";
    case WR_ES_EINVAL:
        return "invalid";
    case WR_ES_ENOSTORE:
        return "no_store";
    case WR_ES_ENOMEM:
        return "out_of_memory";
    default:
        return "unknown";
    }
}

/* RFC 3339 UTC with microseconds, now (len >= 32). */
static void
es_now(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%06dZ", (int)(ts.tv_nsec / 1000));
}

/* ---- open / close ----------------------------------------------------------------- */

static int
es_schema_ensure(wr_es_store_t *s, int flags, wr_es_error_t *err)
{
    es_res_t r;
    int rc;
    bool have = false;

    if (s->db.backend == ES_BACKEND_SQLITE) {
        rc = es_db_query(&s->db, -1,
                         "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'es_meta'",
                         NULL, 0, &r, err);
    } else {
        rc = es_db_query(&s->db, -1, "SELECT to_regclass('es_meta') IS NOT NULL", NULL, 0, &r, err);
    }
    if (rc < 0)
        return es_where(s, err, rc);
    if ((rc = es_res_next(&r, err)) < 0) {
        es_res_close(&r);
        return es_where(s, err, rc);
    }
    if (rc > 0)
        have = s->db.backend == ES_BACKEND_SQLITE ? true : es_res_text(&r, 0, NULL)[0] == 't';
    es_res_close(&r);

    if (!have) {
        if (!(flags & WR_ES_OPEN_CREATE)) {
            es_err(err, WR_ES_ENOSTORE, "%s: no event store there (table es_meta is missing)",
                   s->where);
            es_hint(err, "the eventstore destination creates it when walrelay run starts; "
                         "check the path or conninfo");
            return WR_ES_ENOSTORE;
        }
        if (s->db.backend == ES_BACKEND_SQLITE) {
            rc = es_db_script(&s->db, "BEGIN IMMEDIATE", err);
            if (rc == 0)
                rc = es_db_script(&s->db, es_schema_sqlite, err);
        } else {
            /* several processes may create it at once: one at a time */
            rc = es_db_script(&s->db, "BEGIN; SELECT pg_advisory_xact_lock(2003122701)", err);
            if (rc == 0)
                rc = es_db_script(&s->db, es_schema_pg, err);
        }
        if (rc == 0)
            rc = es_db_script(&s->db, "COMMIT", err);
        if (rc < 0) {
            wr_es_error_t ign;
            (void)es_db_script(&s->db, "ROLLBACK", &ign);
            return es_where(s, err, rc);
        }
    }
    /* the version this code knows */
    rc = es_db_query(&s->db, -1, "SELECT value FROM es_meta WHERE key = 'schema_version'", NULL, 0,
                     &r, err);
    if (rc < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0 && atoi(es_res_text(&r, 0, NULL)) != ES_SCHEMA_VERSION) {
        es_err(err, WR_ES_ESTORE, "%s: schema version %s, this walrelay knows version %d", s->where,
               es_res_text(&r, 0, NULL), ES_SCHEMA_VERSION);
        es_hint(err, "use the walrelay release that wrote this store");
        rc = WR_ES_ESTORE;
    }
    es_res_close(&r);
    if (rc < 0)
        return rc;
    return 0;
}

static wr_es_store_t *
es_new(int backend)
{
    wr_es_store_t *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->db.backend = backend;
    s->db.sql = es_sql;
    return s;
}

int
es_open_sqlite(const char *path, int flags, wr_es_store_t **out, wr_es_error_t *err)
{
    wr_es_store_t *s;
    /* NOMUTEX: a handle is used from one thread at a time (eventstore.h), so SQLite's
     * per-connection mutex is not needed on every call */
    int oflags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
                 ((flags & WR_ES_OPEN_CREATE) ? SQLITE_OPEN_CREATE : 0);
    int rc;

    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return es_err(err, WR_ES_EINVAL, "the event store's SQLite path is empty");
    if ((s = es_new(ES_BACKEND_SQLITE)) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory");
    snprintf(s->where, sizeof(s->where), "event store \"%s\"", path);
    if (!(flags & WR_ES_OPEN_CREATE) && access(path, F_OK) != 0) {
        es_err(err, WR_ES_ENOSTORE, "%s: no such file", s->where);
        es_hint(err, "the eventstore destination creates it when walrelay run starts; check "
                     "[destination] path");
        free(s);
        return WR_ES_ENOSTORE;
    }
    if (sqlite3_open_v2(path, &s->db.sq, oflags, NULL) != SQLITE_OK) {
        es_err(err, WR_ES_ESTORE, "%s: cannot open: %s", s->where,
               s->db.sq ? sqlite3_errmsg(s->db.sq) : "out of memory");
        es_hint(err, "check that the directory exists and is writable");
        wr_es_close(s);
        return WR_ES_ESTORE;
    }
    sqlite3_busy_timeout(s->db.sq, 60000);
    rc = es_db_script(&s->db,
                      "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
                      "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384; "
                      "PRAGMA wal_autocheckpoint = " ES_STR(ES_CKPT_LIMIT_PAGES),
                      err);
    if (rc == 0)
        rc = es_schema_ensure(s, flags, err);
    else
        es_where(s, err, rc);
    if (rc < 0) {
        wr_es_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* NOTICEs (e.g. "relation already exists, skipping") are not for our users' stderr. */
static void
es_pg_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

int
es_open_pg(const char *conninfo, int flags, wr_es_store_t **out, wr_es_error_t *err)
{
    /* First walrelay's connection defaults (common/repl.c, docs/configuration.md
     * "Connection defaults"; this library does not link walrelay's common code): a store
     * gone without a FIN is noticed in bounded time. The conninfo's own settings win. */
    static const char *const keys[] = {"connect_timeout",  "keepalives",
                                       "keepalives_idle",  "keepalives_interval",
                                       "keepalives_count", "tcp_user_timeout",
                                       "dbname",           "fallback_application_name",
                                       "client_encoding",  NULL};
    const char *vals[] = {getenv("PGCONNECT_TIMEOUT") ? getenv("PGCONNECT_TIMEOUT") : "10",
                          "1",
                          "10",
                          "5",
                          "3",
                          "30000",
                          conninfo,
                          "walrelay-eventstore",
                          "UTF8",
                          NULL};
    wr_es_store_t *s;
    int rc;

    *out = NULL;
    if ((s = es_new(ES_BACKEND_PG)) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory");
    s->db.pg = PQconnectdbParams(keys, vals, 1);
    if (s->db.pg == NULL || PQstatus(s->db.pg) != CONNECTION_OK) {
        char msg[700];
        size_t n;

        snprintf(msg, sizeof(msg), "%s",
                 s->db.pg ? PQerrorMessage(s->db.pg) : "out of memory connecting");
        n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
            msg[--n] = '\0';
        es_err(err, WR_ES_ESTORE, "cannot connect to the event store's database: %s", msg);
        es_hint(err, "check [destination] conninfo (host, port, dbname, user; passwords belong "
                     "in ~/.pgpass)");
        wr_es_close(s);
        return WR_ES_ESTORE;
    }
    PQsetNoticeProcessor(s->db.pg, es_pg_notice, NULL);
    snprintf(s->where, sizeof(s->where), "event store in database \"%s\"", PQdb(s->db.pg));
    rc = es_db_script(&s->db, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'", err);
    if (rc == 0)
        rc = es_schema_ensure(s, flags, err);
    else
        es_where(s, err, rc);
    if (rc < 0) {
        wr_es_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int
es_backend(const wr_es_store_t *s)
{
    return s->db.backend;
}

ES_API int
wr_es_open(const char *spec, int flags, wr_es_store_t **out, wr_es_error_t *err)
{
    *out = NULL;
    if (spec != NULL && strncmp(spec, "sqlite:", 7) == 0)
        return es_open_sqlite(spec + 7, flags, out, err);
    if (spec != NULL && strncmp(spec, "postgres:", 9) == 0)
        return es_open_pg(spec + 9, flags, out, err);
    /* the text is not shown: it may be a conninfo with a password */
    es_err(err, WR_ES_EINVAL,
           "invalid event store specification: expected sqlite:PATH or postgres:CONNINFO");
    return WR_ES_EINVAL;
}

/* ---- SQLite: checkpoints in a thread of their own (es_ckpt_start) ------------------------ */

/* A passive checkpoint copies the WAL's frames into the database file, next to the
 * writer: SQLite's own locks let one connection checkpoint while another writes. */
typedef struct es_ckpt_s {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sqlite3 *db; /* the checkpointer's connection (used by its thread only) */
    bool due, stop;
    int woke_at; /* the WAL's size in pages when the checkpointer was last woken */
} es_ckpt_t;

static void *
es_ckpt_main(void *arg)
{
    es_ckpt_t *c = arg;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->due && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        c->due = false;
        pthread_mutex_unlock(&c->mu);
        /* SQLITE_BUSY (the writer checkpoints itself at the limit) or an I/O error: the
         * writer's own checkpoint at ES_CKPT_LIMIT_PAGES still bounds the WAL */
        (void)sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* The writer's WAL hook (after each commit, on the writer's thread; it replaces SQLite's
 * autocheckpoint): wakes the checkpointer every ES_CKPT_WAKE_PAGES new pages, and
 * checkpoints itself (passive, as the autocheckpoint did) once the WAL holds
 * ES_CKPT_LIMIT_PAGES, which bounds it as before: by then the checkpointer has copied
 * most of it, and the next transaction starts the WAL over. */
static int
es_ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    es_ckpt_t *c = arg;

    if (pages >= ES_CKPT_LIMIT_PAGES) {
        (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        return SQLITE_OK;
    }
    if (pages < c->woke_at) /* the WAL started over */
        c->woke_at = 0;
    if (pages - c->woke_at >= ES_CKPT_WAKE_PAGES) {
        c->woke_at = pages;
        pthread_mutex_lock(&c->mu);
        c->due = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

static void
es_ckpt_stop(wr_es_store_t *s)
{
    es_ckpt_t *c = s->ckpt;

    if (c == NULL)
        return;
    sqlite3_wal_hook(s->db.sq, NULL, NULL);
    sqlite3_wal_autocheckpoint(s->db.sq, ES_CKPT_LIMIT_PAGES);
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    sqlite3_close(c->db);
    free(c);
    s->ckpt = NULL;
}

int
es_ckpt_start(wr_es_store_t *s, wr_es_error_t *err)
{
    const char *path;
    es_ckpt_t *c;

    if (s->db.backend != ES_BACKEND_SQLITE || s->ckpt != NULL)
        return 0;
    if ((path = sqlite3_db_filename(s->db.sq, "main")) == NULL || path[0] == '\0')
        return es_err(err, WR_ES_EINVAL, "%s: no file to checkpoint", s->where);
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory");
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        es_err(err, WR_ES_ESTORE, "%s: cannot open a second connection: %s", s->where,
               c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sqlite3_close(c->db);
        free(c);
        return WR_ES_ESTORE;
    }
    sqlite3_busy_timeout(c->db, 1000);
    /* a connection learns that the file is in WAL mode when it first reads it: before
     * that, a checkpoint does nothing */
    if (sqlite3_exec(c->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) != SQLITE_OK) {
        es_err(err, WR_ES_ESTORE, "%s: a second connection cannot read it: %s", s->where,
               sqlite3_errmsg(c->db));
        sqlite3_close(c->db);
        free(c);
        return WR_ES_ESTORE;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->thread, NULL, es_ckpt_main, c) != 0) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        sqlite3_close(c->db);
        free(c);
        return es_err(err, WR_ES_ESTORE, "%s: cannot start the checkpoint thread", s->where);
    }
    s->ckpt = c;
    sqlite3_wal_hook(s->db.sq, es_ckpt_hook, c);
    return 0;
}

ES_API void
wr_es_close(wr_es_store_t *s)
{
    if (s == NULL)
        return;
    if (s->db_tx)
        es_tx_rollback(s);
    es_ckpt_stop(s);
    es_db_close(&s->db);
    free(s->arena);
    free(s->pend);
    free(s->cbuf);
    free(s->smap);
    free(s);
}

/* ---- transactions ------------------------------------------------------------------ */

static void
es_tx_reset(wr_es_store_t *s)
{
    s->tx = false;
    s->db_tx = false;
    s->locked = false;
    s->tx_last = 0;
    s->alen = 0;
    s->npend = 0;
    s->nevents = 0;
}

int
es_tx_begin(wr_es_store_t *s, wr_es_error_t *err)
{
    if (s->tx)
        return es_err(err, WR_ES_EINVAL, "a transaction is already open on this handle");
    es_tx_reset(s);
    s->tx = true;
    return 0;
}

bool
es_tx_open(const wr_es_store_t *s)
{
    return s->tx;
}

int64_t
es_tx_last_position(const wr_es_store_t *s)
{
    return s->tx_last;
}

static int
es_db_begin(wr_es_store_t *s, wr_es_error_t *err)
{
    int rc;

    if (s->db_tx)
        return 0;
    rc =
        es_db_script(&s->db, s->db.backend == ES_BACKEND_SQLITE ? "BEGIN IMMEDIATE" : "BEGIN", err);
    if (rc < 0)
        return es_where(s, err, rc);
    s->db_tx = true;
    return 0;
}

/* Takes the write lock (if not held) and reads the head. */
static int
es_lock(wr_es_store_t *s, wr_es_error_t *err)
{
    es_res_t r;
    int rc;

    if (s->locked)
        return 0;
    if ((rc = es_db_begin(s, err)) < 0)
        return rc;
    if (s->db.backend == ES_BACKEND_PG &&
        (rc = es_db_script(&s->db, "LOCK TABLE es_events IN EXCLUSIVE MODE", err)) < 0)
        return es_where(s, err, rc);
    if ((rc = es_db_query(&s->db, ES_Q_HEAD, NULL, NULL, 0, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0)
        s->head = es_res_i64(&r, 0);
    es_res_close(&r);
    if (rc < 0)
        return es_where(s, err, rc);
    s->locked = true;
    return 0;
}

static size_t
es_arena_put(wr_es_store_t *s, const char *p, size_t n)
{
    size_t off;

    if (s->alen + n + 1 > s->acap) {
        size_t cap = s->acap ? s->acap : 65536;
        char *a;

        while (cap < s->alen + n + 1)
            cap *= 2;
        if ((a = realloc(s->arena, cap)) == NULL)
            return (size_t)-1;
        s->arena = a;
        s->acap = cap;
    }
    off = s->alen;
    if (n)
        memcpy(s->arena + off, p, n);
    s->arena[off + n] = '\0';
    s->alen += n + 1;
    return off;
}

static es_pend_t *
es_pend_new(wr_es_store_t *s)
{
    if (s->npend == s->pcap) {
        size_t cap = s->pcap ? s->pcap * 2 : 256;
        es_pend_t *p = realloc(s->pend, cap * sizeof(*p));

        if (p == NULL)
            return NULL;
        s->pend = p;
        s->pcap = cap;
    }
    memset(&s->pend[s->npend], 0, sizeof(s->pend[0]));
    return &s->pend[s->npend++];
}

int
es_tx_add(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
          const char *event_kind, const char *data, size_t data_len, const char *metadata,
          size_t metadata_len, const es_src_t *src, wr_es_error_t *err)
{
    es_pend_t *p;

    if (!s->tx)
        return es_err(err, WR_ES_EINVAL, "no transaction is open on this handle");
    if ((p = es_pend_new(s)) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory buffering an event");
    p->type = 'e';
    p->off_kind = es_arena_put(s, aggregate_kind, strlen(aggregate_kind));
    p->off_id = es_arena_put(s, aggregate_id, strlen(aggregate_id));
    p->off_ekind = es_arena_put(s, event_kind, strlen(event_kind));
    p->off_data = es_arena_put(s, data, data_len);
    p->off_meta = es_arena_put(s, metadata, metadata_len);
    p->len_data = data_len;
    p->len_meta = metadata_len;
    if (src)
        p->src = *src;
    if (p->off_kind == (size_t)-1 || p->off_id == (size_t)-1 || p->off_ekind == (size_t)-1 ||
        p->off_data == (size_t)-1 || p->off_meta == (size_t)-1) {
        s->npend--;
        return es_err(err, WR_ES_ENOMEM, "out of memory buffering an event");
    }
    s->nevents++;
    if (s->alen >= ES_PENDING_MAX_BYTES || s->npend >= ES_PENDING_MAX_EVENTS)
        return es_tx_flush(s, err);
    return 0;
}

/* ---- PostgreSQL COPY text ---- */

static void
es_cb_grow(wr_es_store_t *s, size_t n)
{
    if (s->cfail || s->clen + n + 1 <= s->ccap)
        return;
    {
        size_t cap = s->ccap ? s->ccap : 65536;
        char *p;

        while (cap < s->clen + n + 1)
            cap *= 2;
        if ((p = realloc(s->cbuf, cap)) == NULL) {
            s->cfail = true;
            return;
        }
        s->cbuf = p;
        s->ccap = cap;
    }
}

static void
es_cb_raw(wr_es_store_t *s, const char *p, size_t n)
{
    es_cb_grow(s, n);
    if (s->cfail)
        return;
    memcpy(s->cbuf + s->clen, p, n);
    s->clen += n;
}

/* A text field: backslash, tab, newline and carriage return escaped (COPY text format). */
static void
es_cb_text(wr_es_store_t *s, const char *p, size_t n)
{
    es_cb_grow(s, n * 2);
    if (s->cfail)
        return;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        char *o = s->cbuf + s->clen;

        switch (c) {
        case '\\':
            o[0] = '\\', o[1] = '\\', s->clen += 2;
            break;
        case '\t':
            o[0] = '\\', o[1] = 't', s->clen += 2;
            break;
        case '\n':
            o[0] = '\\', o[1] = 'n', s->clen += 2;
            break;
        case '\r':
            o[0] = '\\', o[1] = 'r', s->clen += 2;
            break;
        default:
            o[0] = c, s->clen += 1;
        }
    }
}

/* A bytea field in hex: \\x... (the backslash itself escaped for COPY). */
static void
es_cb_bytea(wr_es_store_t *s, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    es_cb_grow(s, n * 2 + 3);
    if (s->cfail)
        return;
    memcpy(s->cbuf + s->clen, "\\\\x", 3);
    s->clen += 3;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        s->cbuf[s->clen++] = hex[c >> 4];
        s->cbuf[s->clen++] = hex[c & 15];
    }
}

static void
es_cb_i64(wr_es_store_t *s, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);

    es_cb_raw(s, tmp, (size_t)n);
}

static uint64_t
es_stream_hash(const char *kind, const char *id)
{
    uint64_t h = 1469598103934665603ULL;

    for (const unsigned char *p = (const unsigned char *)kind; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h ? h : 1;
}

/* The streams a flush touches: open addressing over twice the flush's events, keyed by
 * (aggregate_kind, aggregate_id), the strings in the arena. Emptied for each flush. */
static int
es_smap_reset(wr_es_store_t *s, wr_es_error_t *err)
{
    size_t cap = 16;

    while (cap < s->nevents * 2)
        cap *= 2;
    if (cap > s->scap) {
        es_sent_t *m = realloc(s->smap, cap * sizeof(*m));

        if (m == NULL)
            return es_err(err, WR_ES_ENOMEM, "out of memory writing events");
        s->smap = m;
        s->scap = cap;
    }
    memset(s->smap, 0, cap * sizeof(*s->smap));
    s->smap_n = cap;
    return 0;
}

/* The entry of stream (kind, id), or the free slot (hash 0) where it goes; *hash is its
 * hash, for the caller that fills the slot. */
static es_sent_t *
es_smap_slot(wr_es_store_t *s, const char *kind, const char *id, uint64_t *hash)
{
    const char *A = s->arena;
    uint64_t h = es_stream_hash(kind, id);
    size_t k = (size_t)h & (s->smap_n - 1);
    es_sent_t *e;

    for (;; k = (k + 1) & (s->smap_n - 1)) {
        e = &s->smap[k];
        if (e->hash == 0 ||
            (e->hash == h && strcmp(A + e->off_kind, kind) == 0 && strcmp(A + e->off_id, id) == 0))
            break;
    }
    *hash = h;
    return e;
}

/* A JSON string (quotes, backslashes and control characters escaped; the text is UTF-8
 * from PostgreSQL or the API, passed through). */
static void
es_cb_json_str(wr_es_store_t *s, const char *p)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(p);

    es_cb_grow(s, n * 6 + 2);
    if (s->cfail)
        return;
    s->cbuf[s->clen++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c == '"' || c == '\\') {
            s->cbuf[s->clen++] = '\\';
            s->cbuf[s->clen++] = (char)c;
        } else if (c < 0x20) {
            memcpy(s->cbuf + s->clen, "\\u00", 4);
            s->clen += 4;
            s->cbuf[s->clen++] = hex[c >> 4];
            s->cbuf[s->clen++] = hex[c & 15];
        } else {
            s->cbuf[s->clen++] = (char)c;
        }
    }
    s->cbuf[s->clen++] = '"';
}

/* SQLite: each event inserted straight into es_events, its stream_version from the
 * streams this flush touched or from es_streams; then one upsert per touched stream. One
 * writer holds the database, so nothing changes es_streams under us. */
static int
es_flush_sqlite(wr_es_store_t *s, const char *now, wr_es_error_t *err)
{
    const char *A = s->arena;
    size_t cap;
    int rc = 0;

    if ((rc = es_smap_reset(s, err)) < 0)
        return rc;
    cap = s->smap_n;
    for (size_t i = 0; i < s->npend && rc == 0; i++) {
        es_pend_t *p = &s->pend[i];

        if (s->busy_fn != NULL && i % ES_BUSY_EVERY == ES_BUSY_EVERY - 1)
            s->busy_fn(s->busy_arg);
        if (p->type == 'e') {
            const char *kind = A + p->off_kind, *id = A + p->off_id;
            uint64_t h;
            es_sent_t *e = es_smap_slot(s, kind, id, &h);

            if (e->hash == 0) {
                es_param_t q[2] = {es_pt(kind), es_pt(id)};
                es_res_t r;

                e->hash = h;
                e->off_kind = p->off_kind;
                e->off_id = p->off_id;
                e->version = 0;
                e->existed = false;
                if ((rc = es_db_query(&s->db, ES_Q_STREAM_GET, NULL, q, 2, &r, err)) < 0)
                    break;
                if ((rc = es_res_next(&r, err)) > 0) {
                    e->version = es_res_i64(&r, 1);
                    e->existed = true;
                }
                es_res_close(&r);
                if (rc < 0)
                    break;
                rc = 0;
            }
            e->position = ++s->head;
            e->version++;
            e->off_ekind = p->off_ekind;
            {
                es_param_t prm[11] = {
                    es_pi(e->position),
                    es_pt(kind),
                    es_pt(id),
                    es_pt(A + p->off_ekind),
                    es_pi(e->version),
                    es_pb(A + p->off_data, p->len_data),
                    {'t', 0, A + p->off_meta, p->len_meta},
                    es_pt(now),
                    p->src.set ? es_pi(p->src.lsn) : es_pnull(),
                    p->src.set ? es_pi(p->src.seq) : es_pnull(),
                    p->src.set ? es_pi(p->src.sub) : es_pnull(),
                };
                rc = es_db_exec(&s->db, ES_Q_EVENT_INS, NULL, prm, 11, NULL, err);
            }
        } else {
            es_param_t prm[6] = {
                es_pt(A + p->off_slot),
                es_pi(p->relid),
                es_pi(p->n),
                es_pt(A + p->off_id),
                es_pb(A + p->off_data, p->len_data),
                {'t', 0, A + p->off_meta, p->len_meta},
            };
            rc = es_db_exec(&s->db, ES_Q_COPY_ROW_INS, NULL, prm, 6, NULL, err);
        }
    }
    for (size_t k = 0; k < cap && rc == 0; k++) {
        const es_sent_t *e = &s->smap[k];

        if (s->busy_fn != NULL && k % ES_BUSY_EVERY == ES_BUSY_EVERY - 1)
            s->busy_fn(s->busy_arg);
        if (e->hash != 0) {
            es_param_t prm[5] = {es_pt(A + e->off_kind), es_pt(A + e->off_id), es_pi(e->position),
                                 es_pi(e->version), es_pt(A + e->off_ekind)};

            rc = es_db_exec(&s->db, e->existed ? ES_Q_STREAM_UPD : ES_Q_STREAM_INS, NULL, prm, 5,
                            NULL, err);
        }
    }
    return rc;
}

/* PostgreSQL (round trips matter): the last versions of the streams this flush touches,
 * in one query; then one COPY straight into es_events, each event with its position and
 * stream_version; then one upsert of es_streams from those events (first: the flush's
 * first position). The writer holds the lock on es_events (es_lock), so nothing changes
 * es_streams under us; a failure rolls the transaction back. */
static int
es_flush_pg_events(wr_es_store_t *s, const char *now, int64_t first, wr_es_error_t *err)
{
    const char *A = s->arena;
    bool any = false;
    int rc;

    if ((rc = es_smap_reset(s, err)) < 0)
        return rc;
    s->clen = 0;
    s->cfail = false;
    es_cb_raw(s, "[", 1);
    for (size_t i = 0; i < s->npend; i++) {
        es_pend_t *p = &s->pend[i];
        uint64_t h;
        es_sent_t *e;

        if (p->type != 'e')
            continue;
        e = es_smap_slot(s, A + p->off_kind, A + p->off_id, &h);
        p->stream = (size_t)(e - s->smap);
        if (e->hash != 0)
            continue;
        e->hash = h;
        e->off_kind = p->off_kind;
        e->off_id = p->off_id;
        e->version = 0;
        if (any)
            es_cb_raw(s, ",", 1);
        es_cb_raw(s, "[", 1);
        es_cb_json_str(s, A + p->off_kind);
        es_cb_raw(s, ",", 1);
        es_cb_json_str(s, A + p->off_id);
        es_cb_raw(s, "]", 1);
        any = true;
    }
    es_cb_raw(s, "]", 1);
    if (s->cfail)
        return es_err(err, WR_ES_ENOMEM, "out of memory writing events");
    s->cbuf[s->clen] = '\0';
    {
        es_param_t q[1] = {{'t', 0, s->cbuf, s->clen}};
        es_res_t r;

        if ((rc = es_db_query(&s->db, ES_Q_STREAM_VERSIONS, NULL, q, 1, &r, err)) < 0)
            return rc;
        while ((rc = es_res_next(&r, err)) > 0) {
            uint64_t h;
            es_sent_t *e = es_smap_slot(s, es_res_text(&r, 0, NULL), es_res_text(&r, 1, NULL), &h);

            if (e->hash != 0 && !es_res_null(&r, 2))
                e->version = es_res_i64(&r, 2);
        }
        es_res_close(&r);
        if (rc < 0)
            return rc;
    }
    s->clen = 0;
    for (size_t i = 0; i < s->npend; i++) {
        const es_pend_t *p = &s->pend[i];

        if (p->type != 'e')
            continue;
        es_cb_i64(s, ++s->head);
        es_cb_raw(s, "\t", 1);
        es_cb_text(s, A + p->off_kind, strlen(A + p->off_kind));
        es_cb_raw(s, "\t", 1);
        es_cb_text(s, A + p->off_id, strlen(A + p->off_id));
        es_cb_raw(s, "\t", 1);
        es_cb_text(s, A + p->off_ekind, strlen(A + p->off_ekind));
        es_cb_raw(s, "\t", 1);
        es_cb_i64(s, ++s->smap[p->stream].version);
        es_cb_raw(s, "\t", 1);
        es_cb_bytea(s, A + p->off_data, p->len_data);
        es_cb_raw(s, "\t", 1);
        es_cb_text(s, A + p->off_meta, p->len_meta);
        es_cb_raw(s, "\t", 1);
        es_cb_raw(s, now, strlen(now));
        if (p->src.set) {
            es_cb_raw(s, "\t", 1);
            es_cb_i64(s, p->src.lsn);
            es_cb_raw(s, "\t", 1);
            es_cb_i64(s, p->src.seq);
            es_cb_raw(s, "\t", 1);
            es_cb_i64(s, p->src.sub);
            es_cb_raw(s, "\n", 1);
        } else {
            es_cb_raw(s, "\t\\N\t\\N\t\\N\n", 10);
        }
    }
    if (s->cfail)
        return es_err(err, WR_ES_ENOMEM, "out of memory writing events");
    rc = es_db_copy_in(&s->db,
                       "COPY es_events (position, aggregate_kind, aggregate_id, event_kind, "
                       "stream_version, data, metadata, created_at, src_lsn, src_seq, src_sub) "
                       "FROM STDIN",
                       s->cbuf, s->clen, err);
    s->clen = 0;
    if (rc == 0) {
        es_param_t prm[1] = {es_pi(first - 1)};

        rc = es_db_exec(&s->db, ES_Q_STREAMS_FROM_EVENTS, NULL, prm, 1, NULL, err);
    }
    return rc;
}

/* Writes the pending rows: events (numbered from the head; SQLite: an INSERT each,
 * PostgreSQL: one COPY, both straight into es_events), copied rows into es_copy_rows. */
int
es_tx_flush(wr_es_store_t *s, wr_es_error_t *err)
{
    char now[40];
    int64_t first = 0;
    int rc = 0;

    if (s->npend == 0)
        return 0;
    if (!s->tx)
        return es_err(err, WR_ES_EINVAL, "no transaction is open on this handle");
    if ((rc = s->nevents > 0 ? es_lock(s, err) : es_db_begin(s, err)) < 0)
        return rc;
    es_now(now, sizeof(now));
    first = s->head + 1;

    if (s->db.backend == ES_BACKEND_SQLITE) {
        rc = es_flush_sqlite(s, now, err);
    } else {
        const char *A = s->arena;

        if (s->nevents > 0)
            rc = es_flush_pg_events(s, now, first, err);
        s->clen = 0;
        for (size_t i = 0; i < s->npend && rc == 0; i++) {
            es_pend_t *p = &s->pend[i];

            if (p->type != 'c')
                continue;
            es_cb_text(s, A + p->off_slot, strlen(A + p->off_slot));
            es_cb_raw(s, "\t", 1);
            es_cb_i64(s, p->relid);
            es_cb_raw(s, "\t", 1);
            es_cb_i64(s, p->n);
            es_cb_raw(s, "\t", 1);
            es_cb_text(s, A + p->off_id, strlen(A + p->off_id));
            es_cb_raw(s, "\t", 1);
            es_cb_bytea(s, A + p->off_data, p->len_data);
            es_cb_raw(s, "\t", 1);
            es_cb_text(s, A + p->off_meta, p->len_meta);
            es_cb_raw(s, "\n", 1);
        }
        if (rc == 0 && s->cfail)
            rc = es_err(err, WR_ES_ENOMEM, "out of memory writing copied rows");
        if (rc == 0 && s->clen > 0)
            rc = es_db_copy_in(&s->db,
                               "COPY es_copy_rows (slot_name, relid, n, aggregate_id, data, "
                               "metadata) FROM STDIN",
                               s->cbuf, s->clen, err);
        if (s->ccap > (8u << 20)) { /* do not keep a huge buffer around */
            free(s->cbuf);
            s->cbuf = NULL;
            s->ccap = 0;
        }
        s->clen = 0;
    }
    if (rc == 0 && s->nevents > 0)
        s->tx_last = s->head;
    if (rc < 0)
        return es_where(s, err, rc);
    s->npend = 0;
    s->nevents = 0;
    s->alen = 0;
    return 0;
}

int
es_tx_commit(wr_es_store_t *s, const char *slot, int64_t lsn, int32_t seq, wr_es_error_t *err)
{
    int rc;

    if (!s->tx)
        return es_err(err, WR_ES_EINVAL, "no transaction is open on this handle");
    if ((rc = es_tx_flush(s, err)) < 0)
        goto fail;
    if (slot != NULL) {
        char now[40];
        es_param_t prm[5];

        es_now(now, sizeof(now));
        prm[0] = es_pt(slot);
        prm[1] = es_pi(lsn);
        prm[2] = es_pi(seq);
        prm[3] = s->tx_last > 0 ? es_pi(s->tx_last) : es_pnull();
        prm[4] = es_pt(now);
        if ((rc = es_db_begin(s, err)) < 0)
            goto fail;
        if ((rc = es_db_exec(&s->db, ES_Q_PROGRESS_PUT, NULL, prm, 5, NULL, err)) < 0) {
            es_where(s, err, rc);
            goto fail;
        }
    }
    if (s->db_tx && (rc = es_db_script(&s->db, "COMMIT", err)) < 0) {
        es_where(s, err, rc);
        goto fail;
    }
    es_tx_reset(s);
    return 0;
fail:
    es_tx_rollback(s);
    return rc;
}

void
es_set_busy(wr_es_store_t *s, es_busy_fn fn, void *arg)
{
    s->busy_fn = fn;
    s->busy_arg = arg;
}

void
es_tx_rollback(wr_es_store_t *s)
{
    if (s->db_tx) {
        wr_es_error_t ign;
        (void)es_db_script(&s->db, "ROLLBACK", &ign);
    }
    s->copy_known = false;
    es_tx_reset(s);
}

/* Runs fn inside the open transaction, or in one of its own. */
typedef int (*es_tx_fn)(wr_es_store_t *s, void *arg, wr_es_error_t *err);

static int
es_in_tx(wr_es_store_t *s, es_tx_fn fn, void *arg, wr_es_error_t *err)
{
    bool own = !s->tx;
    int rc;

    if (own && (rc = es_tx_begin(s, err)) < 0)
        return rc;
    rc = fn(s, arg, err);
    if (!own)
        return rc;
    if (rc < 0 || rc == WR_ES_CONFLICT) {
        es_tx_rollback(s);
        return rc;
    }
    return es_tx_commit(s, NULL, 0, 0, err);
}

/* ---- CDC bookkeeping ------------------------------------------------------------------ */

int
es_progress_get(wr_es_store_t *s, const char *slot, bool *found, int64_t *lsn, int32_t *seq,
                wr_es_error_t *err)
{
    es_param_t prm[1] = {es_pt(slot)};
    es_res_t r;
    int rc;

    *found = false;
    if ((rc = es_db_query(&s->db, ES_Q_PROGRESS_GET, NULL, prm, 1, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0) {
        *found = true;
        *lsn = es_res_i64(&r, 0);
        *seq = (int32_t)es_res_i64(&r, 1);
    }
    es_res_close(&r);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

static int
es_progress_clear_fn(wr_es_store_t *s, void *arg, wr_es_error_t *err)
{
    es_param_t prm[1] = {es_pt(arg)};
    int rc;

    if ((rc = es_db_begin(s, err)) < 0)
        return rc;
    rc = es_db_exec(&s->db, ES_Q_PROGRESS_DEL, NULL, prm, 1, NULL, err);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

int
es_progress_clear(wr_es_store_t *s, const char *slot, wr_es_error_t *err)
{
    return es_in_tx(s, es_progress_clear_fn, (void *)slot, err);
}

/* The owner registered for slot into buf ("" if none). */
static int
es_pipeline_owner(wr_es_store_t *s, const char *slot, char *buf, size_t len, wr_es_error_t *err)
{
    es_param_t prm[1] = {es_pt(slot)};
    es_res_t r;
    int rc;

    buf[0] = '\0';
    if ((rc = es_db_query(&s->db, ES_Q_PIPELINE_GET, NULL, prm, 1, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0)
        snprintf(buf, len, "%s", es_res_text(&r, 0, NULL));
    es_res_close(&r);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

int
es_pipeline_register(wr_es_store_t *s, const char *slot, const char *owner, bool check_only,
                     wr_es_error_t *err)
{
    char have[600], now[40];
    int rc;

    if ((rc = es_pipeline_owner(s, slot, have, sizeof(have), err)) < 0)
        return rc;
    if (have[0] == '\0' && !check_only) {
        es_param_t prm[3];

        es_now(now, sizeof(now));
        prm[0] = es_pt(slot);
        prm[1] = es_pt(owner);
        prm[2] = es_pt(now);
        if ((rc = es_db_exec(&s->db, ES_Q_PIPELINE_PUT, NULL, prm, 3, NULL, err)) < 0)
            return es_where(s, err, rc);
        if ((rc = es_pipeline_owner(s, slot, have, sizeof(have), err)) < 0)
            return rc;
    }
    if (have[0] != '\0' && strcmp(have, owner) != 0) {
        es_err(err, WR_ES_CONFLICT,
               "conflict: %s already belongs to the pipeline with slot \"%s\" at \"%s\"; this "
               "one (\"%s\") would write the same streams a second time",
               s->where, slot, have, owner);
        es_hint(err,
                "give this pipeline another [pipeline] name or another event store; if the "
                "pipeline at \"%s\" is gone for good, DELETE FROM es_pipelines WHERE slot_name "
                "= '%s' in the store",
                have, slot);
        return WR_ES_CONFLICT;
    }
    return 0;
}

typedef struct es_claim_arg_s {
    const char *kind, *slot;
    uint32_t relid;
} es_claim_arg_t;

static int
es_kind_claim_fn(wr_es_store_t *s, void *arg, wr_es_error_t *err)
{
    es_claim_arg_t *a = arg;
    es_param_t prm[4];
    es_res_t r;
    char owner[200] = "", now[40];
    bool found = false, foreign = false;
    int rc;

    if ((rc = es_lock(s, err)) < 0)
        return rc;
    prm[0] = es_pt(a->kind);
    if ((rc = es_db_query(&s->db, ES_Q_KIND_GET, NULL, prm, 1, &r, err)) < 0)
        return es_where(s, err, rc);
    if ((rc = es_res_next(&r, err)) > 0) {
        found = true;
        snprintf(owner, sizeof(owner), "%s", es_res_text(&r, 0, NULL));
    }
    es_res_close(&r);
    if (rc < 0)
        return es_where(s, err, rc);
    if (found && strcmp(owner, a->slot) != 0) {
        es_err(err, WR_ES_CONFLICT,
               "conflict: the aggregate kind \"%s\" in %s is written by the pipeline with slot "
               "\"%s\"; a second pipeline cannot write it",
               a->kind, s->where, owner);
        es_hint(err, "replicate the table into another event store, or remove it from one of "
                     "the two publications");
        return WR_ES_CONFLICT;
    }
    if (!found) {
        if ((rc = es_db_query(&s->db, ES_Q_KIND_HAS_EVENTS, NULL, prm, 1, &r, err)) < 0)
            return es_where(s, err, rc);
        rc = es_res_next(&r, err);
        foreign = rc > 0;
        es_res_close(&r);
        if (rc < 0)
            return es_where(s, err, rc);
        if (foreign) {
            es_err(err, WR_ES_CONFLICT,
                   "conflict: the aggregate kind \"%s\" in %s already holds events that no "
                   "pipeline wrote (appended by an application)",
                   a->kind, s->where);
            es_hint(err, "replicate the table into another event store, or rename the "
                         "application's aggregate kind");
            return WR_ES_CONFLICT;
        }
    }
    es_now(now, sizeof(now));
    prm[1] = es_pt(a->slot);
    prm[2] = es_pi(a->relid);
    prm[3] = es_pt(now);
    rc = es_db_exec(&s->db, ES_Q_KIND_PUT, NULL, prm, 4, NULL, err);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

int
es_kind_claim(wr_es_store_t *s, const char *aggregate_kind, const char *slot, uint32_t relid,
              wr_es_error_t *err)
{
    es_claim_arg_t a = {aggregate_kind, slot, relid};

    return es_in_tx(s, es_kind_claim_fn, &a, err);
}

/* ---- copies ----------------------------------------------------------------------- */

int
es_copy_reset(wr_es_store_t *s, const char *slot, uint32_t relid, const char *aggregate_kind,
              int64_t copy_lsn, wr_es_error_t *err)
{
    char now[40];
    es_param_t prm[5];
    int rc;

    if (!s->tx)
        return es_err(err, WR_ES_EINVAL, "no transaction is open on this handle");
    es_now(now, sizeof(now));
    prm[0] = es_pt(slot);
    prm[1] = es_pi(relid);
    prm[2] = es_pt(aggregate_kind);
    prm[3] = es_pi(copy_lsn);
    prm[4] = es_pt(now);
    /* staged rows of this relid still in the buffer belong to the attempt being reset */
    for (size_t i = 0; i < s->npend; i++)
        if (s->pend[i].type == 'c' && s->pend[i].relid == relid)
            return es_err(err, WR_ES_EINVAL, "copy reset with rows of the copy still buffered");
    if ((rc = es_db_begin(s, err)) < 0)
        return rc;
    if ((rc = es_db_exec(&s->db, ES_Q_COPY_DEL_ROWS, NULL, prm, 2, NULL, err)) < 0 ||
        (rc = es_db_exec(&s->db, ES_Q_COPY_DEL, NULL, prm, 2, NULL, err)) < 0 ||
        (rc = es_db_exec(&s->db, ES_Q_COPY_PUT, NULL, prm, 5, NULL, err)) < 0)
        return es_where(s, err, rc);
    snprintf(s->copy_slot, sizeof(s->copy_slot), "%s", slot);
    s->copy_relid = relid;
    s->copy_next = 0;
    s->copy_known = true;
    return 0;
}

int
es_copy_add(wr_es_store_t *s, const char *slot, uint32_t relid, const char *aggregate_id,
            const char *data, size_t data_len, const char *metadata, size_t metadata_len,
            wr_es_error_t *err)
{
    es_pend_t *p;

    if (!s->tx)
        return es_err(err, WR_ES_EINVAL, "no transaction is open on this handle");
    if (!s->copy_known || s->copy_relid != relid || strcmp(s->copy_slot, slot) != 0) {
        es_param_t prm[2] = {es_pt(slot), es_pi(relid)};
        es_res_t r;
        int rc;

        if ((rc = es_db_query(&s->db, ES_Q_COPY_NEXT_N, NULL, prm, 2, &r, err)) < 0)
            return es_where(s, err, rc);
        rc = es_res_next(&r, err);
        s->copy_next = rc > 0 ? es_res_i64(&r, 0) : 0;
        es_res_close(&r);
        if (rc < 0)
            return es_where(s, err, rc);
        /* and the rows of this relid still in the buffer */
        for (size_t i = 0; i < s->npend; i++)
            if (s->pend[i].type == 'c' && s->pend[i].relid == relid && s->pend[i].n >= s->copy_next)
                s->copy_next = s->pend[i].n + 1;
        snprintf(s->copy_slot, sizeof(s->copy_slot), "%s", slot);
        s->copy_relid = relid;
        s->copy_known = true;
    }
    if ((p = es_pend_new(s)) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory buffering a copied row");
    p->type = 'c';
    p->relid = relid;
    p->n = s->copy_next;
    p->off_slot = es_arena_put(s, slot, strlen(slot));
    p->off_id = es_arena_put(s, aggregate_id, strlen(aggregate_id));
    p->off_data = es_arena_put(s, data, data_len);
    p->off_meta = es_arena_put(s, metadata, metadata_len);
    p->len_data = data_len;
    p->len_meta = metadata_len;
    if (p->off_slot == (size_t)-1 || p->off_id == (size_t)-1 || p->off_data == (size_t)-1 ||
        p->off_meta == (size_t)-1) {
        s->npend--;
        return es_err(err, WR_ES_ENOMEM, "out of memory buffering a copied row");
    }
    s->copy_next++;
    if (s->alen >= ES_PENDING_MAX_BYTES || s->npend >= ES_PENDING_MAX_EVENTS)
        return es_tx_flush(s, err);
    return 0;
}

typedef struct es_publish_arg_s {
    const char *slot;
    uint32_t relid;
    int64_t *published;
} es_publish_arg_t;

static int
es_copy_publish_fn(wr_es_store_t *s, void *arg, wr_es_error_t *err)
{
    es_publish_arg_t *a = arg;
    es_param_t prm[5];
    char kind[600], now[40];
    es_res_t r;
    int64_t before, rows = 0;
    int rc;

    *a->published = 0;
    prm[0] = es_pt(a->slot);
    prm[1] = es_pi(a->relid);
    if ((rc = es_db_query(&s->db, ES_Q_COPY_GET, NULL, prm, 2, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0)
        snprintf(kind, sizeof(kind), "%s", es_res_text(&r, 0, NULL));
    es_res_close(&r);
    if (rc <= 0)
        return rc < 0 ? es_where(s, err, rc) : 0; /* nothing staged */
    /* the transaction's own buffered rows first (their positions come before) */
    if ((rc = es_tx_flush(s, err)) < 0 || (rc = es_lock(s, err)) < 0)
        return rc;
    before = s->head;
    es_now(now, sizeof(now));
    prm[0] = es_pi(before);
    prm[1] = es_pt(a->slot);
    prm[2] = es_pi(a->relid);
    prm[3] = es_pt(kind);
    prm[4] = es_pt(now);
    if ((rc = es_db_exec(&s->db, ES_Q_COPY_PUBLISH, NULL, prm, 5, &rows, err)) < 0)
        return es_where(s, err, rc);
    if (rows > 0) {
        es_param_t p1[1] = {es_pi(before)};

        if ((rc = es_db_exec(&s->db, ES_Q_STREAMS_FROM_EVENTS, NULL, p1, 1, NULL, err)) < 0)
            return es_where(s, err, rc);
        s->head = before + rows;
        s->tx_last = s->head;
    }
    prm[0] = es_pt(a->slot);
    prm[1] = es_pi(a->relid);
    if ((rc = es_db_exec(&s->db, ES_Q_COPY_DEL_ROWS, NULL, prm, 2, NULL, err)) < 0 ||
        (rc = es_db_exec(&s->db, ES_Q_COPY_DEL, NULL, prm, 2, NULL, err)) < 0)
        return es_where(s, err, rc);
    if (s->copy_known && s->copy_relid == a->relid)
        s->copy_known = false;
    *a->published = rows;
    return 0;
}

int
es_copy_publish(wr_es_store_t *s, const char *slot, uint32_t relid, int64_t *published,
                wr_es_error_t *err)
{
    es_publish_arg_t a = {slot, relid, published};

    return es_in_tx(s, es_copy_publish_fn, &a, err);
}

/* ---- the public API ---------------------------------------------------------------- */

static int
es_check_name(const char *what, const char *v, wr_es_error_t *err)
{
    if (v == NULL || v[0] == '\0')
        return es_err(err, WR_ES_EINVAL, "the %s is empty", what);
    if (strlen(v) > 65535)
        return es_err(err, WR_ES_EINVAL, "the %s is longer than 65535 bytes", what);
    return 0;
}

ES_API int
wr_es_stream_version(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
                     wr_es_version_t *version, int64_t *count, wr_es_error_t *err)
{
    es_param_t prm[2] = {es_pt(aggregate_kind), es_pt(aggregate_id)};
    es_res_t r;
    int rc;

    version->set = false;
    version->position = 0;
    if (count)
        *count = 0;
    if ((rc = es_check_name("aggregate kind", aggregate_kind, err)) < 0 ||
        (rc = es_check_name("aggregate id", aggregate_id, err)) < 0)
        return rc;
    if ((rc = es_db_query(&s->db, ES_Q_STREAM_GET, NULL, prm, 2, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0) {
        version->set = true;
        version->position = es_res_i64(&r, 0);
        if (count)
            *count = es_res_i64(&r, 1);
    }
    es_res_close(&r);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

ES_API int
wr_es_head(wr_es_store_t *s, int64_t *position, wr_es_error_t *err)
{
    es_res_t r;
    int rc;

    *position = 0;
    if ((rc = es_db_query(&s->db, ES_Q_HEAD, NULL, NULL, 0, &r, err)) < 0)
        return es_where(s, err, rc);
    rc = es_res_next(&r, err);
    if (rc > 0)
        *position = es_res_i64(&r, 0);
    es_res_close(&r);
    return rc < 0 ? es_where(s, err, rc) : 0;
}

/* data: any JSON value; metadata: a JSON object or NULL. */
static int
es_check_event(const wr_es_new_event_t *e, size_t i, wr_es_error_t *err)
{
    json_error_t je;
    json_t *j;
    int rc;

    if ((rc = es_check_name("event kind", e->event_kind, err)) < 0)
        return es_err(err, rc, "event %zu: the event kind is empty", i + 1);
    if (e->data == NULL || e->data_len == 0)
        return es_err(err, WR_ES_EINVAL, "event %zu (%s): data is empty (it must be JSON)", i + 1,
                      e->event_kind);
    j = json_loadb(e->data, e->data_len, JSON_DECODE_ANY, &je);
    if (j == NULL)
        return es_err(err, WR_ES_EINVAL, "event %zu (%s): data is not JSON: %s at %d:%d", i + 1,
                      e->event_kind, je.text, je.line, je.column);
    json_decref(j);
    if (e->metadata != NULL) {
        j = json_loads(e->metadata, 0, &je);
        if (j == NULL)
            return es_err(err, WR_ES_EINVAL, "event %zu (%s): metadata is not JSON: %s", i + 1,
                          e->event_kind, je.text);
        rc = json_is_object(j) ? 0 : WR_ES_EINVAL;
        json_decref(j);
        if (rc < 0)
            return es_err(err, rc, "event %zu (%s): metadata must be a JSON object", i + 1,
                          e->event_kind);
    }
    return 0;
}

ES_API int
wr_es_append(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
             wr_es_expect_t expected, const wr_es_new_event_t *events, size_t n,
             wr_es_append_result_t *res, wr_es_error_t *err)
{
    wr_es_append_result_t dummy;
    es_param_t prm[2] = {es_pt(aggregate_kind), es_pt(aggregate_id)};
    wr_es_version_t cur = {false, 0};
    es_res_t r;
    bool pipeline = false;
    int rc;

    if (res == NULL)
        res = &dummy;
    memset(res, 0, sizeof(*res));
    if ((rc = es_check_name("aggregate kind", aggregate_kind, err)) < 0 ||
        (rc = es_check_name("aggregate id", aggregate_id, err)) < 0)
        return rc;
    if (expected.kind == WR_ES_EXPECT_AT && expected.position < 1)
        return es_err(err, WR_ES_EINVAL, "expected version %lld is not a position (>= 1)",
                      (long long)expected.position);
    if (expected.kind != WR_ES_EXPECT_ANY && expected.kind != WR_ES_EXPECT_NONE &&
        expected.kind != WR_ES_EXPECT_AT)
        return es_err(err, WR_ES_EINVAL, "unknown expectation %d", (int)expected.kind);
    if (n == 0)
        return WR_ES_EMPTY_APPEND;
    if (events == NULL)
        return es_err(err, WR_ES_EINVAL, "events is NULL");
    for (size_t i = 0; i < n; i++)
        if ((rc = es_check_event(&events[i], i, err)) < 0)
            return rc;
    if (s->tx)
        return es_err(err, WR_ES_EINVAL, "a transaction is open on this handle");

    if ((rc = es_tx_begin(s, err)) < 0 || (rc = es_lock(s, err)) < 0)
        goto fail;
    /* a stream of a replicated table belongs to its pipeline */
    if ((rc = es_db_query(&s->db, ES_Q_KIND_GET, NULL, prm, 1, &r, err)) < 0) {
        es_where(s, err, rc);
        goto fail;
    }
    rc = es_res_next(&r, err);
    pipeline = rc > 0;
    es_res_close(&r);
    if (rc < 0) {
        es_where(s, err, rc);
        goto fail;
    }
    if ((rc = es_db_query(&s->db, ES_Q_STREAM_GET, NULL, prm, 2, &r, err)) < 0) {
        es_where(s, err, rc);
        goto fail;
    }
    rc = es_res_next(&r, err);
    if (rc > 0) {
        cur.set = true;
        cur.position = es_res_i64(&r, 0);
    }
    es_res_close(&r);
    if (rc < 0) {
        es_where(s, err, rc);
        goto fail;
    }
    res->expected.set = expected.kind == WR_ES_EXPECT_AT;
    res->expected.position = expected.kind == WR_ES_EXPECT_AT ? expected.position : 0;
    res->actual = cur;
    if (pipeline) {
        res->conflict_reason = WR_ES_CONFLICT_PIPELINE;
        es_tx_rollback(s);
        es_err(err, WR_ES_CONFLICT,
               "the aggregate kind \"%s\" is written by a walrelay pipeline; its streams "
               "take no appends",
               aggregate_kind);
        return WR_ES_CONFLICT;
    }
    if ((expected.kind == WR_ES_EXPECT_NONE && cur.set) ||
        (expected.kind == WR_ES_EXPECT_AT && (!cur.set || cur.position != expected.position))) {
        res->conflict_reason = WR_ES_CONFLICT_VERSION;
        es_tx_rollback(s);
        es_err(err, WR_ES_CONFLICT, "the stream's version is not the expected one");
        return WR_ES_CONFLICT;
    }
    res->first_position = s->head + 1;
    for (size_t i = 0; i < n; i++) {
        const char *m = events[i].metadata ? events[i].metadata : "{}";

        if ((rc = es_tx_add(s, aggregate_kind, aggregate_id, events[i].event_kind, events[i].data,
                            events[i].data_len, m, strlen(m), NULL, err)) < 0)
            goto fail;
    }
    if ((rc = es_tx_flush(s, err)) < 0)
        goto fail;
    res->last_position = s->tx_last;
    rc = es_tx_commit(s, NULL, 0, 0, err);
    if (rc < 0)
        memset(res, 0, sizeof(*res));
    return rc;
fail:
    es_tx_rollback(s);
    memset(res, 0, sizeof(*res));
    return rc;
}

ES_API int
wr_es_append_expecting_new(wr_es_store_t *s, const char *aggregate_kind, const char *aggregate_id,
                           const wr_es_new_event_t *events, size_t n, wr_es_append_result_t *res,
                           wr_es_error_t *err)
{
    wr_es_expect_t e = {WR_ES_EXPECT_NONE, 0};

    return wr_es_append(s, aggregate_kind, aggregate_id, e, events, n, res, err);
}

/* Appends to b, growing it; false on OOM. */
static bool
es_sql_add(char **b, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);

    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        char *p;

        while (c < *len + n + 1)
            c *= 2;
        if ((p = realloc(*b, c)) == NULL)
            return false;
        *b = p;
        *cap = c;
    }
    memcpy(*b + *len, s, n + 1);
    *len += n;
    return true;
}

ES_API int
wr_es_load_each(wr_es_store_t *s, const wr_es_filter_t *filters, size_t nfilters, int64_t limit,
                wr_es_event_fn fn, void *arg, wr_es_error_t *err)
{
    char *sql = NULL;
    size_t len = 0, cap = 0;
    es_param_t *prm = NULL;
    int np = 2, rc = 0;
    int64_t cursor = 0, seen = 0;
    bool ok = true;

    if (nfilters == 0)
        return 0;
    if (filters == NULL)
        return es_err(err, WR_ES_EINVAL, "filters is NULL");
    if (nfilters > 1000)
        return es_err(err, WR_ES_EINVAL, "too many filters (%zu, at most 1000)", nfilters);
    if (limit < 0)
        return es_err(err, WR_ES_EINVAL, "negative limit %lld", (long long)limit);
    for (size_t i = 0; i < nfilters; i++) {
        const wr_es_filter_t *f = &filters[i];

        if (f->event_kind == NULL || f->event_kind[0] == '\0')
            return es_err(err, WR_ES_EINVAL, "filter %zu: the event kind is required", i + 1);
        if (f->has_after && f->after < 0)
            return es_err(err, WR_ES_EINVAL, "filter %zu: after %lld is negative", i + 1,
                          (long long)f->after);
        if ((f->aggregate_kind && f->aggregate_kind[0] == '\0') ||
            (f->aggregate_id && f->aggregate_id[0] == '\0'))
            return es_err(err, WR_ES_EINVAL,
                          "filter %zu: an aggregate kind or id that is given must not be empty",
                          i + 1);
    }
    if ((prm = calloc(2 + 4 * nfilters, sizeof(*prm))) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory");
    ok = es_sql_add(&sql, &len, &cap,
                    s->db.backend == ES_BACKEND_SQLITE
                        ? "SELECT position, aggregate_kind, aggregate_id, event_kind, "
                          "stream_version, data, metadata, created_at FROM es_events "
                          "WHERE position > $1 AND ("
                        : "SELECT position, aggregate_kind, aggregate_id, event_kind, "
                          "stream_version, data, metadata::text, "
                          "to_char(created_at AT TIME ZONE 'UTC', "
                          "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM es_events "
                          "WHERE position > $1 AND (");
    for (size_t i = 0; i < nfilters && ok; i++) {
        const wr_es_filter_t *f = &filters[i];
        char part[160];

        np++;
        snprintf(part, sizeof(part), "%s(event_kind = $%d", i ? " OR " : "", np);
        prm[np - 1] = es_pt(f->event_kind);
        ok = es_sql_add(&sql, &len, &cap, part);
        if (f->aggregate_kind) {
            np++;
            snprintf(part, sizeof(part), " AND aggregate_kind = $%d", np);
            prm[np - 1] = es_pt(f->aggregate_kind);
            ok = ok && es_sql_add(&sql, &len, &cap, part);
        }
        if (f->aggregate_id) {
            np++;
            snprintf(part, sizeof(part), " AND aggregate_id = $%d", np);
            prm[np - 1] = es_pt(f->aggregate_id);
            ok = ok && es_sql_add(&sql, &len, &cap, part);
        }
        if (f->has_after) {
            np++;
            snprintf(part, sizeof(part), " AND position > $%d", np);
            prm[np - 1] = es_pi(f->after);
            ok = ok && es_sql_add(&sql, &len, &cap, part);
        }
        ok = ok && es_sql_add(&sql, &len, &cap, ")");
    }
    ok = ok && es_sql_add(&sql, &len, &cap, ") ORDER BY position LIMIT $2");
    if (!ok) {
        rc = es_err(err, WR_ES_ENOMEM, "out of memory");
        goto out;
    }
    /* pages of ES_LOAD_PAGE events after the last position seen */
    for (;;) {
        int64_t page = ES_LOAD_PAGE, got = 0;
        es_res_t r;

        if (limit > 0 && limit - seen < page)
            page = limit - seen;
        if (page <= 0)
            break;
        prm[0] = es_pi(cursor);
        prm[1] = es_pi(page);
        if ((rc = es_db_query(&s->db, -1, sql, prm, np, &r, err)) < 0) {
            es_where(s, err, rc);
            goto out;
        }
        while ((rc = es_res_next(&r, err)) > 0) {
            wr_es_event_t ev;

            ev.position = es_res_i64(&r, 0);
            ev.aggregate_kind = es_res_text(&r, 1, NULL);
            ev.aggregate_id = es_res_text(&r, 2, NULL);
            ev.event_kind = es_res_text(&r, 3, NULL);
            ev.stream_version = es_res_i64(&r, 4);
            ev.data = es_res_blob(&r, 5, &ev.data_len);
            ev.metadata = es_res_text(&r, 6, NULL);
            ev.created_at = es_res_text(&r, 7, NULL);
            if (ev.data == NULL) {
                rc = es_err(err, WR_ES_ENOMEM, "out of memory reading event %lld",
                            (long long)ev.position);
                break;
            }
            cursor = ev.position;
            got++;
            seen++;
            if ((rc = fn(arg, &ev)) != 0)
                break;
        }
        es_res_close(&r);
        if (rc < 0 && err && err->message[0] && rc != WR_ES_ENOMEM)
            es_where(s, err, rc);
        if (rc != 0)
            goto out;
        if (got < page)
            break;
    }
out:
    free(sql);
    free(prm);
    return rc;
}

/* The list's memory: one block per event (the event's strings follow it). */
typedef struct es_list_priv_s {
    char **blocks;
    size_t n, cap;
} es_list_priv_t;

static int
es_list_add(void *arg, const wr_es_event_t *ev)
{
    wr_es_event_list_t *l = arg;
    es_list_priv_t *p = l->priv_;
    size_t lk = strlen(ev->aggregate_kind) + 1, li = strlen(ev->aggregate_id) + 1,
           le = strlen(ev->event_kind) + 1, lm = strlen(ev->metadata) + 1,
           lc = strlen(ev->created_at) + 1, ld = ev->data_len + 1;
    char *b, *o;

    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        char **nb = realloc(p->blocks, cap * sizeof(*nb));
        wr_es_event_t *ne = realloc(l->events, cap * sizeof(*ne));

        if (nb)
            p->blocks = nb;
        if (ne)
            l->events = ne;
        if (nb == NULL || ne == NULL)
            return WR_ES_ENOMEM;
        p->cap = cap;
    }
    if ((b = malloc(lk + li + le + lm + lc + ld)) == NULL)
        return WR_ES_ENOMEM;
    o = b;
    l->events[l->n] = *ev;
    memcpy(o, ev->aggregate_kind, lk), l->events[l->n].aggregate_kind = o, o += lk;
    memcpy(o, ev->aggregate_id, li), l->events[l->n].aggregate_id = o, o += li;
    memcpy(o, ev->event_kind, le), l->events[l->n].event_kind = o, o += le;
    memcpy(o, ev->metadata, lm), l->events[l->n].metadata = o, o += lm;
    memcpy(o, ev->created_at, lc), l->events[l->n].created_at = o, o += lc;
    memcpy(o, ev->data, ev->data_len), o[ev->data_len] = '\0', l->events[l->n].data = o;
    p->blocks[p->n++] = b;
    l->n++;
    return 0;
}

ES_API int
wr_es_load_events(wr_es_store_t *s, const wr_es_filter_t *filters, size_t nfilters, int64_t limit,
                  wr_es_event_list_t *out, wr_es_error_t *err)
{
    int rc;

    memset(out, 0, sizeof(*out));
    if ((out->priv_ = calloc(1, sizeof(es_list_priv_t))) == NULL)
        return es_err(err, WR_ES_ENOMEM, "out of memory");
    rc = wr_es_load_each(s, filters, nfilters, limit, es_list_add, out, err);
    if (rc == WR_ES_ENOMEM && (err == NULL || err->code != WR_ES_ENOMEM))
        es_err(err, WR_ES_ENOMEM, "out of memory collecting events");
    return rc;
}

ES_API void
wr_es_event_list_free(wr_es_event_list_t *list)
{
    es_list_priv_t *p;

    if (list == NULL)
        return;
    p = list->priv_;
    if (p != NULL) {
        for (size_t i = 0; i < p->n; i++)
            free(p->blocks[i]);
        free(p->blocks);
        free(p);
    }
    free(list->events);
    memset(list, 0, sizeof(*list));
}
