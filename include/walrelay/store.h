/*
 * walrelay/store.h - the walrelay state store ABI, version 1.
 *
 * The state store is where walrelay keeps what it needs to resume a pipeline after any
 * crash: the replication progress, each table's phase with its history, the schema of
 * each table by the LSN it took effect at, the destination name of each table, and a few
 * pipeline-wide flags. walrelay has three stores of its own ([state] backend = sqlite,
 * postgres) and loads any other from a shared object:
 *
 *     [state]
 *     backend = plugin
 *     library = /path/to/libmystore.so
 *     any_key = any value          ; every key but backend and library is handed over
 *
 * (`walrelay init DIR ... --state plugin:/path/to/libmystore.so` writes that). This header
 * is self-contained (only the C standard library), compiles as C11 and as C++, and is
 * installed with pkg-config file walrelay-store.pc:
 *     cc -shared -fPIC $(pkg-config --cflags walrelay-store) -o libmystore.so mystore.c
 * The seeds' SchemaStore, StateStore and CleanupStore are the three faces of wr_store_ops_t.
 *
 * NOTES (the contract; docs/custom-store.md explains it step by step):
 *
 * Loading. walrelay dlopen()s the library and calls walrelay_store_v1(), which returns a
 *   pointer to a static wr_store_ops_t. walrelay refuses it (exit code 2 at `walrelay
 *   check` and `walrelay run`, naming the library and what to fix) unless abi_version ==
 *   WR_STORE_ABI_VERSION, struct_size == sizeof(wr_store_ops_t) of this header, name is
 *   set and every function not marked optional is set.
 *
 * Who calls. Only the supervisor (`walrelay run`) writes the store: the workers ask it, it
 *   writes, then it tells them (persist, then act). It opens ONE instance (role
 *   "supervisor") for its whole life and calls it from one thread, one call at a time.
 *   `walrelay check` opens an instance with role "check" (check() only, while the pipeline
 *   may be running elsewhere: take no lease, write nothing), `walrelay drop` one with
 *   role "drop" (take the lease, then drop()). A store is for one pipeline:
 *   cfg->pipeline names it, and a store shared by several pipelines keeps their records
 *   apart by that name.
 *
 * Durability. A call that returns WR_STORE_OK has made its change durable: a crash of
 *   the process, the host or the store's server right after it loses nothing of it. A call
 *   that fails must leave the store as it was (or in a state that the same call, made
 *   again, completes): walrelay reports the error and either retries the call later or
 *   stops, it never assumes a failed write happened. Reads see every write this instance
 *   made before.
 *
 * Atomic. Each of these is all or nothing, also across a crash in the middle:
 *   set_phase      (the old phase pushed on the table's history AND the new one set),
 *   rollback_phase (the newest history entry popped AND restored as the phase),
 *   put_schema     (a version with all its columns: never a version with some of them),
 *   remove_table   (the table, its history, its schemas and its mapping),
 *   drop           (every record of the pipeline; or: calling drop again finishes it).
 *
 * The lease. A store that can be reached from more than one host (a database, a network
 *   service) MUST keep a second supervisor of the same pipeline from running: set
 *   WR_STORE_CAP_LEASE, take an exclusive per-pipeline lease in open() for the roles
 *   "supervisor" and "drop", and refuse with WR_STORE_ELEASE while another holds it.
 *   The lease lasts until close() (or until the process dies: it must not outlive a
 *   killed supervisor for long, or nobody can take over). If a store can lose its lease
 *   while open (a session that ends, a lease that expires), every call made after the
 *   loss must fail with WR_STORE_ELEASE WITHOUT writing, and check_lease() should report
 *   it: walrelay calls check_lease() every few seconds while the pipeline runs (also
 *   while it is quiet) and stops the pipeline (exit code 2) when the lease is lost.
 *   A store on the local disk only needs no lease: walrelay's lock on DIR/walrelay.pid
 *   already keeps a second supervisor off the same directory.
 *
 * Strings and buffers. Strings given to a call are NUL-terminated UTF-8 and valid only
 *   during that call: copy what you keep. What a call returns through pointers (tables,
 *   a schema, a mapping, the progress) belongs to the store and must stay valid until the
 *   next call on the same instance (or close()); walrelay copies it at once. Names: a
 *   table's schema and name are at most 127 bytes, a destination name at most 299, a slot
 *   name at most 63, a flag name 1 to 63 bytes, error kind/message/hint at most 31/511/255
 *   bytes (walrelay cuts longer text before it calls the store).
 *
 * Times and LSNs. LSNs are uint64 and compare as unsigned (get_schema's "at" goes up to
 *   UINT64_MAX): a store that keeps them as signed 64-bit integers must compare them as
 *   unsigned. updated_at_ms / at_ms are wall-clock milliseconds since 1970 given by
 *   walrelay: store them as given.
 *
 * Errors. A function returns WR_STORE_OK (0) or a negative WR_STORE_E* code and fills the
 *   wr_store_error_t it was given (wr_store_error_set below). WR_STORE_ENOTFOUND is an
 *   answer, not a failure (the table is not in the store, or has no earlier phase).
 *   WR_STORE_ECONFIG from validate(), open() or check() stops walrelay with exit code 2
 *   (a person must fix the configuration); WR_STORE_ELEASE from open() refuses to start
 *   (exit code 2), from any later call it fences the instance and stops the pipeline
 *   (exit code 2). Any other failure fails the one operation: a worker's request is
 *   refused (the worker is restarted and asks again), a progress save is tried again,
 *   and at start `walrelay check` / `run` report it and stop. Messages are one line, lowercase,
 *   identifiers in double quotes; a hint says what a person can do. Never put a password
 *   in a message or a log line.
 */
#ifndef WALRELAY_STORE_H
#define WALRELAY_STORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WR_STORE_ABI_VERSION  1
#define WR_STORE_ENTRY_SYMBOL "walrelay_store_v1"

/* ---- results ------------------------------------------------------------------------ */

enum {
    WR_STORE_OK = 0,
    WR_STORE_ECONFIG = -1,      /* configuration error: the pipeline stops (exit code 2) */
    WR_STORE_EUNAVAILABLE = -2, /* unreachable, timed out: the operation fails, tried later */
    WR_STORE_EIO = -3,          /* any other failure of the store: the operation fails */
    WR_STORE_ENOTFOUND = -4,    /* no such table (or no earlier phase): an answer */
    WR_STORE_ELEASE = -5,       /* another supervisor holds the pipeline's lease */
    WR_STORE_ENOMEM = -6,       /* out of memory */
    WR_STORE_EINVAL = -7,       /* an argument the store cannot take (too long, malformed) */
};

typedef struct wr_store_error_s {
    int code;     /* the WR_STORE_E* code returned */
    char key[64]; /* configuration errors: the [state] key at fault, else "" */
    char message[1024];
    char hint[512];
} wr_store_error_t;

/* ---- capabilities ------------------------------------------------------------------- */

/* open() takes an exclusive per-pipeline lease (roles "supervisor" and "drop") and
 * refuses with WR_STORE_ELEASE while another holds it. Required of a store other hosts
 * can reach (see "The lease"). */
#define WR_STORE_CAP_LEASE (1u << 0)

/* ---- records ------------------------------------------------------------------------ */

/* A table's replication phase (docs/lifecycle.md). Store it by name (wr_store_phase_name)
 * or by number: the numbers are part of the ABI. */
typedef enum {
    WR_STORE_PHASE_INIT = 0,
    WR_STORE_PHASE_DATASYNC = 1,
    WR_STORE_PHASE_FINISHEDCOPY = 2,
    WR_STORE_PHASE_SYNCWAIT = 3,
    WR_STORE_PHASE_CATCHUP = 4,
    WR_STORE_PHASE_SYNCDONE = 5,
    WR_STORE_PHASE_READY = 6,
    WR_STORE_PHASE_ERRORED = 7,
} wr_store_phase_t;

#define WR_STORE_PHASE_COUNT 8

/* One replicated table (relid = the source table's pg_class OID). */
typedef struct wr_store_table_s {
    uint32_t relid;
    const char *schema;   /* source schema, <= 127 bytes */
    const char *name;     /* source table name, <= 127 bytes */
    int phase;            /* wr_store_phase_t */
    uint64_t lsn;         /* the phase's LSN (FinishedCopy, Catchup, SyncDone), else 0 */
    uint32_t attempts;    /* failures in a row */
    const char *err_kind; /* ERRORED only, else "": <= 31, 511, 255 bytes */
    const char *err_msg;
    const char *err_hint;
    int64_t updated_at_ms; /* wall clock of the last change */
} wr_store_table_t;

/* A phase change (set_phase). */
typedef struct wr_store_phase_change_s {
    uint32_t relid;
    int phase; /* wr_store_phase_t */
    uint64_t lsn;
    const char *err_kind; /* "" unless phase is ERRORED */
    const char *err_msg;
    const char *err_hint;
    int64_t at_ms; /* the table's new updated_at_ms */
} wr_store_phase_change_t;

/* The apply slot and its durable position (where a restarted apply worker resumes). */
typedef struct wr_store_progress_s {
    const char *slot_name; /* <= 63 bytes */
    uint64_t confirmed_flush;
} wr_store_progress_t;

typedef struct wr_store_column_s {
    const char *name;
    uint32_t type_oid; /* pg_type OID */
    int32_t typmod;    /* -1 if none */
    bool key;          /* part of the replica identity key */
    bool not_null;
} wr_store_column_t;

/* One version of a table's schema. */
typedef struct wr_store_schema_s {
    uint32_t relid;
    const char *schema;    /* source schema */
    const char *name;      /* source table name */
    char replica_identity; /* 'd' default, 'f' full, 'i' index, 'n' nothing */
    uint16_t ncolumns;     /* may be 0 */
    const wr_store_column_t *columns;
} wr_store_schema_t;

/* ---- configuration and host --------------------------------------------------------- */

typedef struct wr_store_kv_s {
    const char *key;
    const char *value;
    int line; /* line of the key in the file */
} wr_store_kv_t;

/* Every key of [state] except backend and library, in file order. */
typedef struct wr_store_config_s {
    const char *path;     /* the configuration file, for messages */
    const char *dir;      /* the pipeline's directory (resolve relative paths against it) */
    const char *pipeline; /* [pipeline] name: the store keeps this pipeline's records */
    size_t nitems;
    const wr_store_kv_t *items;
} wr_store_config_t;

enum {
    WR_STORE_LOG_DEBUG = 0,
    WR_STORE_LOG_INFO = 1,
    WR_STORE_LOG_WARN = 2,
    WR_STORE_LOG_ERROR = 3
};

/* What walrelay offers the store; valid from open() to close(). */
typedef struct wr_store_host_s {
    uint32_t abi_version; /* WR_STORE_ABI_VERSION */
    uint32_t struct_size; /* sizeof(wr_store_host_t) of walrelay */
    const char *role;     /* "supervisor", "drop" or "check" */
    /* Logs one line through walrelay's logger (same format, pipeline= field, the same
     * redaction of secrets). Use wr_store_log() below. */
    void (*log)(void *ctx, int level, const char *message);
    void *ctx;
} wr_store_host_t;

/* ---- the operations table ----------------------------------------------------------- */

typedef struct wr_store_ops_s {
    uint32_t abi_version;  /* WR_STORE_ABI_VERSION */
    uint32_t struct_size;  /* sizeof(wr_store_ops_t) */
    const char *name;      /* short name for logs and `walrelay check`: "onefile" */
    uint32_t capabilities; /* WR_STORE_CAP_* */

    /* -- life -- */

    /* Checks the configuration without touching the outside world: unknown keys, missing
     * keys and bad values are WR_STORE_ECONFIG with err->key set. Called by `walrelay
     * check`, `run` and `drop` before open() (`walrelay init` only checks that the library
     * loads: the store's keys are added afterwards). */
    int (*validate)(const wr_store_config_t *cfg, wr_store_error_t *err);
    /* Opens an instance for host->role, creating or migrating what the store needs, and
     * for "supervisor" and "drop" takes the lease (WR_STORE_CAP_LEASE). *state is handed
     * to every other call. A failed open() releases what it took itself. */
    int (*open)(const wr_store_config_t *cfg, const wr_store_host_t *host, void **state,
                wr_store_error_t *err);
    /* Optional (NULL: nothing to check). `walrelay check`, on an instance opened with role
     * "check": reachable, writable, permissions. Fills summary (one line, no secret:
     * "file /srv/state/orders.json") when it returns OK. */
    int (*check)(void *state, char *summary, size_t summary_len, wr_store_error_t *err);
    /* Optional (NULL: the lease cannot be lost while open, or there is none). Verifies that
     * this instance still holds the pipeline's lease (reconnecting if it must, and then
     * taking the lease again first): WR_STORE_OK, WR_STORE_ELEASE once another holds it
     * (and then every later call fails with WR_STORE_ELEASE without writing), or
     * WR_STORE_EUNAVAILABLE if it cannot tell now. Called every few seconds. */
    int (*check_lease)(void *state, wr_store_error_t *err);
    /* Releases the instance and its lease; called once, also after a failed call (not
     * after a failed open()). */
    void (*close)(void *state);

    /* -- progress (StateStore) -- */

    /* *found = false (and *out untouched) if never set. */
    int (*get_progress)(void *state, wr_store_progress_t *out, bool *found, wr_store_error_t *err);
    int (*set_progress)(void *state, const wr_store_progress_t *progress, wr_store_error_t *err);

    /* -- tables and phases (StateStore) -- */

    /* Adds the table as given (phase INIT, lsn 0, attempts 0, no error, updated_at_ms
     * set); if the relid is there already, changes nothing and returns OK. */
    int (*add_table)(void *state, const wr_store_table_t *table, wr_store_error_t *err);
    /* *found = false if the table is not there. */
    int (*get_table)(void *state, uint32_t relid, wr_store_table_t *out, bool *found,
                     wr_store_error_t *err);
    /* Every table of the pipeline, in any order (walrelay sorts them): *tables points to
     * *n records owned by the store. */
    int (*list_tables)(void *state, const wr_store_table_t **tables, size_t *n,
                       wr_store_error_t *err);
    /* Atomically: pushes the table's current (phase, lsn, err_kind, err_msg, err_hint)
     * on its history, then sets the new ones and updated_at_ms = at_ms (attempts stay).
     * WR_STORE_ENOTFOUND if the table is not there (nothing changes). */
    int (*set_phase)(void *state, const wr_store_phase_change_t *change, wr_store_error_t *err);
    /* Atomically: pops the newest history entry and makes it the table's phase, lsn and
     * error (updated_at_ms = at_ms). WR_STORE_ENOTFOUND if the table is not there or its
     * history is empty (nothing changes). */
    int (*rollback_phase)(void *state, uint32_t relid, int64_t at_ms, wr_store_error_t *err);
    /* Number of history entries of the table (0 if it is not there). */
    int (*history_len)(void *state, uint32_t relid, size_t *n, wr_store_error_t *err);
    /* Sets the failures in a row (updated_at_ms = at_ms). WR_STORE_ENOTFOUND if the table
     * is not there. */
    int (*set_attempts)(void *state, uint32_t relid, uint32_t attempts, int64_t at_ms,
                        wr_store_error_t *err);

    /* -- schemas (SchemaStore) -- */

    /* Stores a schema version that took effect at lsn; replaces the version of the same
     * (relid, lsn). */
    int (*put_schema)(void *state, const wr_store_schema_t *schema, uint64_t lsn,
                      wr_store_error_t *err);
    /* The version of relid with the greatest lsn <= at (unsigned; at = UINT64_MAX: the
     * newest): *out points to it (owned by the store) and *version_lsn is its lsn; *out =
     * NULL if there is none. */
    int (*get_schema)(void *state, uint32_t relid, uint64_t at, const wr_store_schema_t **out,
                      uint64_t *version_lsn, wr_store_error_t *err);

    /* -- mappings (StateStore) -- */

    /* Sets (or replaces) the destination name of relid. */
    int (*put_mapping)(void *state, uint32_t relid, const char *dest_name, wr_store_error_t *err);
    /* *dest_name = the name (owned by the store), or NULL if there is none. */
    int (*get_mapping)(void *state, uint32_t relid, const char **dest_name, wr_store_error_t *err);

    /* -- pipeline flags -- */

    /* Named integers of the pipeline ("paused", "slot_lost", ...; walrelay may add names).
     * get_flag: *found = false and *value = 0 if never set. */
    int (*get_flag)(void *state, const char *name, int64_t *value, bool *found,
                    wr_store_error_t *err);
    int (*set_flag)(void *state, const char *name, int64_t value, int64_t at_ms,
                    wr_store_error_t *err);

    /* -- cleanup (CleanupStore) -- */

    /* Removes the table with its history, schemas and mapping, atomically; OK if it is not
     * there. (The table left the publication; its destination data stays.) */
    int (*remove_table)(void *state, uint32_t relid, wr_store_error_t *err);
    /* `walrelay drop`: deletes every record of the pipeline (role "drop", lease held);
     * *dropped = whether there was any. */
    int (*drop)(void *state, bool *dropped, wr_store_error_t *err);
} wr_store_ops_t;

/* The one symbol a plugin exports. */
typedef const wr_store_ops_t *(*wr_store_entry_fn)(void);
const wr_store_ops_t *walrelay_store_v1(void);

/* ---- helpers (static inline: nothing to link) --------------------------------------- */

/* Fills err and returns code: `return wr_store_error_set(err, WR_STORE_EIO, NULL, ...)`. */
static inline int wr_store_error_set(wr_store_error_t *err, int code, const char *key,
                                     const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static inline int
wr_store_error_set(wr_store_error_t *err, int code, const char *key, const char *fmt, ...)
{
    va_list ap;

    err->code = code;
    snprintf(err->key, sizeof(err->key), "%s", key ? key : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    err->hint[0] = '\0';
    return code;
}

/* Sets the hint of an error already set. */
static inline void
wr_store_error_hint(wr_store_error_t *err, const char *hint)
{
    snprintf(err->hint, sizeof(err->hint), "%s", hint ? hint : "");
}

/* Logs through walrelay (printf-style). */
static inline void wr_store_log(const wr_store_host_t *host, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline void
wr_store_log(const wr_store_host_t *host, int level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    if (!host || !host->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    host->log(host->ctx, level, line);
}

/* The value of a configuration key, or NULL if absent (the last one wins). */
static inline const char *
wr_store_config_get(const wr_store_config_t *cfg, const char *key)
{
    const char *v = NULL;

    for (size_t i = 0; i < cfg->nitems; i++)
        if (strcmp(cfg->items[i].key, key) == 0)
            v = cfg->items[i].value;
    return v;
}

/* The line of a configuration key (for messages), or 0 if absent. */
static inline int
wr_store_config_line(const wr_store_config_t *cfg, const char *key)
{
    int line = 0;

    for (size_t i = 0; i < cfg->nitems; i++)
        if (strcmp(cfg->items[i].key, key) == 0)
            line = cfg->items[i].line;
    return line;
}

/* "init", "datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready",
 * "errored"; NULL for a number that is not a phase. */
static inline const char *
wr_store_phase_name(int phase)
{
    static const char *const names[WR_STORE_PHASE_COUNT] = {
        "init", "datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready", "errored",
    };
    return phase >= 0 && phase < WR_STORE_PHASE_COUNT ? names[phase] : NULL;
}

/* The phase named name, or -1. */
static inline int
wr_store_phase_parse(const char *name)
{
    for (int p = 0; p < WR_STORE_PHASE_COUNT; p++)
        if (name && strcmp(name, wr_store_phase_name(p)) == 0)
            return p;
    return -1;
}

/* Formats an LSN as PostgreSQL does ("16/B374D848") into buf (>= 24 bytes). */
static inline const char *
wr_store_lsn_format(uint64_t lsn, char *buf, size_t size)
{
    snprintf(buf, size, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
    return buf;
}

#ifdef __cplusplus
}
#endif

#endif
