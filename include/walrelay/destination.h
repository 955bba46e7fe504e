/*
 * walrelay/destination.h - the walrelay destination ABI, version 1.
 *
 * A destination is where walrelay writes what it replicates from a PostgreSQL
 * publication: the rows that exist (the initial copy of each table) and then every
 * change in commit order. Built-in destinations and shared objects loaded with
 *
 *     [destination]
 *     type = plugin
 *     library = /path/to/libmydest.so
 *     any_key = any value          ; every key but type and library is handed over
 *
 * implement the same table of functions, wr_dest_ops_t. This header is self-contained
 * (only the C standard library) and is installed with pkg-config file
 * walrelay-destination.pc:   cc -shared -fPIC $(pkg-config --cflags walrelay-destination)
 *
 * NOTES (the contract; docs/custom-destination.md explains it with examples):
 *
 * Loading. walrelay dlopen()s the library and calls walrelay_destination_v1(), which
 *   returns a pointer to a static wr_dest_ops_t. walrelay refuses it (exit code 2 at
 *   `walrelay check` and `walrelay run`) unless abi_version == WR_DEST_ABI_VERSION and
 *   struct_size == sizeof(wr_dest_ops_t) of this header, and every function pointer that
 *   is not marked optional is set.
 *
 * Processes. walrelay runs one apply process and up to N table-copy processes; EACH opens
 *   its own instance (open() ... close()) in its own process, at the same time as the
 *   others. Instances of one pipeline write to different tables while a table is being
 *   copied, except during a table's catch-up, when the copy process writes that table's
 *   changes under its own stream while the apply process writes the others'. A
 *   destination shared between processes must tolerate concurrent writers (one
 *   transaction each, or append-only writes with atomic appends). Within one instance
 *   calls never overlap (no threads).
 *
 * Streams and resume keys. Every change has a resume key (commit LSN of its source
 *   transaction, ordinal of the change in that transaction, from 1): unique, the same on
 *   every redelivery, and increasing in delivery order within a stream. Begin has
 *   ordinal 0; Commit has the ordinal of the transaction's last change. A stream is a
 *   name: "apply" for the apply process, "sync_<relid>" for the copy process of one
 *   table (its copy and its catch-up).
 *
 * Durability. flush(stream, key) makes everything written so far through this instance
 *   durable; when the destination is WR_DEST_CAP_TRANSACTIONAL it stores key as the
 *   stream's last key IN THE SAME TRANSACTION as the data, and last_key(stream) reports
 *   it after a restart: walrelay then skips every change whose key is <= it, and the
 *   destination receives every change exactly once. walrelay confirms the replication
 *   slot (lets PostgreSQL remove the WAL) only up to what a flush reported durable.
 *   Without WR_DEST_CAP_TRANSACTIONAL delivery is AT LEAST ONCE: after a crash walrelay
 *   delivers again from the slot's confirmed position, and the key of each change is the
 *   idempotency key to deduplicate with. A crash before flush returns may lose nothing
 *   that walrelay does not deliver again. discard() abandons what was written since the
 *   last flush (a transactional destination rolls back; others may ignore it).
 *
 * Order. Within a stream, events arrive in commit order, and within a transaction in
 *   the source's order. A transaction may span several write_events calls and several
 *   flushes (large transactions are written in chunks); one write_events call may hold
 *   several transactions and several tables. After a restart a transaction may resume
 *   in its middle: its Begin is delivered again before the first change not yet stored.
 *
 * Copy. For each table: truncate_table() when the table is copied again, then
 *   write_table_rows() with batches of rows (first call may have nrows == 0: create the
 *   table), each batch followed by flush("sync_<relid>", NULL). A crash during a copy
 *   starts it again from truncate_table().
 *
 * Schema. A Relation event precedes the first change of a table in every instance and
 *   every change of its schema. With WR_DEST_CAP_SCHEMA_CHANGES the destination follows
 *   a changed Relation itself (add, drop, rename columns); without it, a table whose
 *   columns change is sent to the Errored phase with a hint to re-copy it (walrelay
 *   resync), and no change of the new shape reaches the destination.
 *
 * Values. Every value is the source's text form (PostgreSQL's output function, with
 *   DateStyle ISO, IntervalStyle postgres, extra_float_digits 3, UTF-8, TimeZone UTC),
 *   not NUL-terminated, with its kind: NULL, UNCHANGED (an unchanged TOASTed value of an
 *   UPDATE that the source did not send: keep the current value; never a NULL), or TEXT.
 *   Its type is the column's (type_oid, type_name, typmod). Pointers handed to a call are
 *   valid only during that call: copy what you keep.
 *
 * Waiting. A destination that retries (a server down, HTTP 503) may block inside a call
 *   for as long as it takes. While it does, it reports what it waits for with
 *   wr_dest_waiting() (shown by `walrelay status`) and calls wr_dest_interrupted() between
 *   attempts, giving up with WR_DEST_ETRANSIENT once it returns true. Both are members
 *   added to wr_dest_host_t after the first release of version 1: the host's struct_size
 *   says whether they are there, and the helpers check it, so a plugin built with this
 *   header runs on an older walrelay and the reverse.
 *
 * Errors. A function returns WR_DEST_OK (0) or a negative WR_DEST_E* code and fills the
 *   wr_dest_error_t it was given (wr_dest_error_set below). The code decides what
 *   walrelay does: CONFIG stops the pipeline (a person must fix the configuration);
 *   TRANSIENT and IO restart the process with backoff (the same changes are delivered
 *   again); DATA and UNSUPPORTED send the one table to the Errored phase (the others go
 *   on). Messages are one line, lowercase, identifiers in double quotes; a hint says what
 *   a person can do. Never put a password in a message or a log line.
 */
#ifndef WALRELAY_DESTINATION_H
#define WALRELAY_DESTINATION_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WR_DEST_ABI_VERSION  1
#define WR_DEST_ENTRY_SYMBOL "walrelay_destination_v1"

/* ---- results ------------------------------------------------------------------------ */

enum {
    WR_DEST_OK = 0,
    WR_DEST_ECONFIG = -1,      /* configuration error: the pipeline stops (exit code 2) */
    WR_DEST_ETRANSIENT = -2,   /* unreachable, timed out, restarting: retried with backoff */
    WR_DEST_EIO = -3,          /* any other failure of the destination: retried with backoff */
    WR_DEST_EDATA = -4,        /* this table's data cannot be written: the table is Errored */
    WR_DEST_EUNSUPPORTED = -5, /* this table cannot be replicated here: the table is Errored */
    WR_DEST_ENOMEM = -6,       /* out of memory: retried with backoff */
};

typedef struct wr_dest_error_s {
    int code;     /* the WR_DEST_E* code returned */
    char key[64]; /* configuration errors: the [destination] key at fault, else "" */
    char message[1024];
    char hint[512];
} wr_dest_error_t;

/* ---- capabilities ------------------------------------------------------------------- */

/* flush() stores the stream's key in the same transaction as the data; last_key()
 * reports it: exactly once. Without it: at least once. */
#define WR_DEST_CAP_TRANSACTIONAL (1u << 0)
/* Follows a Relation event that changes a table's columns. */
#define WR_DEST_CAP_SCHEMA_CHANGES (1u << 1)
/* discard() rolls back what was written since the last flush (with TRANSACTIONAL). */
#define WR_DEST_CAP_DISCARD (1u << 2)

/* ---- values, rows, relations -------------------------------------------------------- */

typedef enum {
    WR_DEST_VAL_NULL = 'n',
    WR_DEST_VAL_UNCHANGED = 'u', /* unchanged TOAST value: keep the destination's value */
    WR_DEST_VAL_TEXT = 't',
} wr_dest_val_kind_t;

typedef struct wr_dest_value_s {
    char kind;        /* wr_dest_val_kind_t */
    uint32_t len;     /* bytes at data (TEXT) */
    const char *data; /* the text form, NOT NUL-terminated; NULL unless TEXT */
} wr_dest_value_t;

typedef struct wr_dest_row_s {
    uint16_t ncols; /* == the relation's ncolumns */
    const wr_dest_value_t *values;
} wr_dest_row_t;

typedef struct wr_dest_column_s {
    const char *name;
    uint32_t type_oid;     /* pg_type OID (see WR_PG_* for the built-in ones) */
    const char *type_name; /* format_type(type_oid, typmod): "integer", "numeric(10,2)",
                            * "text[]", "public.mood"; never NULL */
    int32_t typmod;        /* -1 if none */
    bool not_null;
    bool key; /* part of the key rows are matched by: the primary key, else the replica
               * identity index; all columns under REPLICA IDENTITY FULL without one */
} wr_dest_column_t;

typedef struct wr_dest_relation_s {
    uint32_t relid;        /* source table OID: stable for the table's life */
    const char *schema;    /* source schema ("public") */
    const char *name;      /* source table name */
    const char *dest_name; /* the name walrelay maps the table to (unique per pipeline) */
    char replica_identity; /* 'd' default, 'f' full, 'i' index, 'n' nothing */
    uint16_t ncolumns;     /* replicated columns, in the source's order */
    const wr_dest_column_t *columns;
} wr_dest_relation_t;

/* ---- events ------------------------------------------------------------------------- */

typedef struct wr_dest_key_s {
    uint64_t commit_lsn; /* commit LSN of the source transaction */
    uint32_t ordinal;    /* of the change in its transaction, from 1; 0 for Begin */
} wr_dest_key_t;

typedef enum {
    WR_DEST_EV_BEGIN = 1,
    WR_DEST_EV_COMMIT,
    WR_DEST_EV_RELATION,
    WR_DEST_EV_INSERT,
    WR_DEST_EV_UPDATE,
    WR_DEST_EV_DELETE,
    WR_DEST_EV_TRUNCATE,
} wr_dest_event_kind_t;

/* Truncate flags */
#define WR_DEST_TRUNCATE_CASCADE          1
#define WR_DEST_TRUNCATE_RESTART_IDENTITY 2

/* One event. Which fields are set, by kind:
 *   BEGIN     key = (commit LSN, 0), xid, commit_time_us
 *   COMMIT    key = (commit LSN, last ordinal), end_lsn (end of the commit record: the
 *             position walrelay confirms once this is durable), xid, commit_time_us
 *   RELATION  relation (the table's schema from now on); key, xid as of the transaction
 *             it arrives in ((0, 0) outside one)
 *   INSERT    relation, new_row
 *   UPDATE    relation, new_row; old_kind 'K' (old_row holds the old key: the key
 *             changed; non-key columns are NULL), 'O' (old_row is the whole old row,
 *             REPLICA IDENTITY FULL) or 0 (no old_row: the key did not change)
 *   DELETE    relation, old_kind 'K' or 'O', old_row
 *   TRUNCATE  relation, truncate_flags; a TRUNCATE of several tables arrives as one
 *             event per table, consecutive, each with its own key
 * Every change carries its transaction's xid and commit_time_us. */
typedef struct wr_dest_event_s {
    int kind; /* wr_dest_event_kind_t */
    wr_dest_key_t key;
    uint32_t xid;
    int64_t commit_time_us; /* commit time, microseconds since 1970-01-01 UTC */
    uint64_t end_lsn;       /* COMMIT */
    const wr_dest_relation_t *relation;
    char old_kind;                /* UPDATE, DELETE */
    const wr_dest_row_t *old_row; /* UPDATE ('K', 'O'), DELETE */
    const wr_dest_row_t *new_row; /* INSERT, UPDATE */
    uint8_t truncate_flags;       /* TRUNCATE: WR_DEST_TRUNCATE_* */
} wr_dest_event_t;

/* ---- configuration and host --------------------------------------------------------- */

typedef struct wr_dest_kv_s {
    const char *key;
    const char *value;
    int line; /* line of the key in the file */
} wr_dest_kv_t;

/* Every key of [destination] except type and library, in file order. */
typedef struct wr_dest_config_s {
    const char *path; /* the configuration file, for messages */
    const char *dir;  /* the pipeline's directory (resolve relative paths against it) */
    const char *pipeline;
    size_t nitems;
    const wr_dest_kv_t *items;
} wr_dest_config_t;

enum { WR_DEST_LOG_DEBUG = 0, WR_DEST_LOG_INFO = 1, WR_DEST_LOG_WARN = 2, WR_DEST_LOG_ERROR = 3 };

/* What walrelay offers the destination; valid from open() to close(). */
typedef struct wr_dest_host_s {
    uint32_t abi_version; /* WR_DEST_ABI_VERSION */
    uint32_t struct_size; /* sizeof(wr_dest_host_t) of walrelay */
    const char *role;     /* "apply", "sync" or "check" */
    /* Logs one line through walrelay's logger (same format, pipeline= and worker=
     * fields, the same redaction of secrets). Use wr_dest_log() below. */
    void (*log)(void *ctx, int level, const char *message);
    void *ctx;
    /* ---- added after the first release of ABI version 1: present only when
     * struct_size covers them; use the helpers wr_dest_waiting() and
     * wr_dest_interrupted() below, which check. ---- */
    /* The destination is waiting on the outside world (retrying a request, a server that
     * is down): message says on what and the last error, one line, no secret; walrelay
     * shows it in `walrelay status` and logs it. NULL (or "") once the wait is over. Also
     * usable just before a call fails for good, to say why (a receiver that refused a
     * batch): walrelay shows it with the failure. */
    void (*waiting)(void *ctx, const char *message);
    /* True once walrelay wants this process to stop (walrelay stop, pause, SIGTERM) or its
     * supervisor is gone. A destination that retries "for as long as it takes" calls it
     * between attempts (it is cheap) and then gives up with WR_DEST_ETRANSIENT: the same
     * changes are delivered again after the restart. */
    bool (*interrupted)(void *ctx);
} wr_dest_host_t;

/* ---- the operations table ----------------------------------------------------------- */

typedef struct wr_dest_ops_s {
    uint32_t abi_version;  /* WR_DEST_ABI_VERSION */
    uint32_t struct_size;  /* sizeof(wr_dest_ops_t) */
    const char *name;      /* short name for logs and status: "webhook" */
    uint32_t capabilities; /* WR_DEST_CAP_* */

    /* Checks the configuration without touching the outside world: unknown keys,
     * missing keys and bad values are WR_DEST_ECONFIG with err->key set. Called by
     * `walrelay check`, `run`, every reload and in each process before open() (`walrelay
     * init` only checks that the library loads: the plugin's keys are added afterwards). */
    int (*validate)(const wr_dest_config_t *cfg, wr_dest_error_t *err);
    /* Opens an instance; *state is handed to every other call. */
    int (*open)(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state,
                wr_dest_error_t *err);
    /* Optional (NULL: nothing to check). `walrelay check`: reachable, writable,
     * permissions, on an instance opened with role "check". */
    int (*check)(void *state, wr_dest_error_t *err);
    /* Deletes every row of the table (before it is copied again). */
    int (*truncate_table)(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err);
    /* Copied rows of one table; nrows may be 0 (create the table if needed). */
    int (*write_table_rows)(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                            size_t nrows, wr_dest_error_t *err);
    /* A batch of events in order (see "Order"). */
    int (*write_events)(void *state, const wr_dest_event_t *events, size_t nevents,
                        wr_dest_error_t *err);
    /* Makes everything written so far durable; with WR_DEST_CAP_TRANSACTIONAL and key
     * not NULL, stores key as stream's last key in the same transaction. Returns only
     * once it is durable. */
    int (*flush)(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err);
    /* Optional unless WR_DEST_CAP_TRANSACTIONAL: the last key stored for stream;
     * *found = false if none. */
    int (*last_key)(void *state, const char *stream, wr_dest_key_t *key, bool *found,
                    wr_dest_error_t *err);
    /* Optional: forgets stream's key (a copy stream once its table is handed over to
     * "apply", or before a table is copied again). */
    int (*forget_stream)(void *state, const char *stream, wr_dest_error_t *err);
    /* Optional unless WR_DEST_CAP_DISCARD: abandons what was written since the last
     * flush. */
    int (*discard)(void *state, wr_dest_error_t *err);
    /* Releases the instance; called once, also after a failed call (but not after a
     * failed open(), which must release what it allocated itself). */
    void (*close)(void *state);
} wr_dest_ops_t;

/* The one symbol a plugin exports. */
typedef const wr_dest_ops_t *(*wr_dest_entry_fn)(void);
const wr_dest_ops_t *walrelay_destination_v1(void);

/* ---- helpers (static inline: nothing to link) --------------------------------------- */

/* Built-in type OIDs (pg_type.h) */
#define WR_PG_BOOL        16
#define WR_PG_BYTEA       17
#define WR_PG_INT8        20
#define WR_PG_INT2        21
#define WR_PG_INT4        23
#define WR_PG_TEXT        25
#define WR_PG_OID         26
#define WR_PG_JSON        114
#define WR_PG_FLOAT4      700
#define WR_PG_FLOAT8      701
#define WR_PG_BPCHAR      1042
#define WR_PG_VARCHAR     1043
#define WR_PG_DATE        1082
#define WR_PG_TIME        1083
#define WR_PG_TIMESTAMP   1114
#define WR_PG_TIMESTAMPTZ 1184
#define WR_PG_INTERVAL    1186
#define WR_PG_TIMETZ      1266
#define WR_PG_NUMERIC     1700
#define WR_PG_UUID        2950
#define WR_PG_JSONB       3802

/* Fills err and returns code: `return wr_dest_error_set(err, WR_DEST_EIO, NULL, ...)`. */
static inline int wr_dest_error_set(wr_dest_error_t *err, int code, const char *key,
                                    const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static inline int
wr_dest_error_set(wr_dest_error_t *err, int code, const char *key, const char *fmt, ...)
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
wr_dest_error_hint(wr_dest_error_t *err, const char *hint)
{
    snprintf(err->hint, sizeof(err->hint), "%s", hint ? hint : "");
}

/* Logs through walrelay (printf-style). */
static inline void wr_dest_log(const wr_dest_host_t *host, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline void
wr_dest_log(const wr_dest_host_t *host, int level, const char *fmt, ...)
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

/* True if the host (walrelay) provides field (a member of wr_dest_host_t added after the
 * first release of ABI version 1). */
#define WR_DEST_HOST_HAS(host, field)                                                              \
    ((host) != NULL &&                                                                             \
     (host)->struct_size >= offsetof(wr_dest_host_t, field) + sizeof((host)->field) &&             \
     (host)->field != NULL)

/* Tells walrelay what the destination waits for (printf-style; fmt NULL: the wait is
 * over). Does nothing with a walrelay that has no waiting callback. */
static inline void wr_dest_waiting(const wr_dest_host_t *host, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static inline void
wr_dest_waiting(const wr_dest_host_t *host, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    if (!WR_DEST_HOST_HAS(host, waiting))
        return;
    if (fmt == NULL) {
        host->waiting(host->ctx, NULL);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    host->waiting(host->ctx, line);
}

/* True once walrelay asks the process to stop (see wr_dest_host_t.interrupted); false with
 * a walrelay that has no such callback. */
static inline bool
wr_dest_interrupted(const wr_dest_host_t *host)
{
    return WR_DEST_HOST_HAS(host, interrupted) && host->interrupted(host->ctx);
}

/* The value of a configuration key, or NULL if absent (the last one wins). */
static inline const char *
wr_dest_config_get(const wr_dest_config_t *cfg, const char *key)
{
    const char *v = NULL;

    for (size_t i = 0; i < cfg->nitems; i++)
        if (strcmp(cfg->items[i].key, key) == 0)
            v = cfg->items[i].value;
    return v;
}

/* True if the value is SQL NULL. */
static inline bool
wr_dest_value_is_null(const wr_dest_value_t *v)
{
    return v->kind == WR_DEST_VAL_NULL;
}

/* Copies a TEXT value into buf as a C string. Returns its length, or -1 if the value is
 * not TEXT or does not fit (len + 1 bytes are needed). */
static inline long
wr_dest_value_cstr(const wr_dest_value_t *v, char *buf, size_t size)
{
    if (v->kind != WR_DEST_VAL_TEXT || (size_t)v->len + 1 > size)
        return -1;
    memcpy(buf, v->data, v->len);
    buf[v->len] = '\0';
    return (long)v->len;
}

/* int2, int4, int8, oid text form -> integer. Returns 0, or -1 if not TEXT or not an
 * integer that fits. */
static inline int
wr_dest_value_int64(const wr_dest_value_t *v, int64_t *out)
{
    char buf[32], *end;
    long long n;

    if (wr_dest_value_cstr(v, buf, sizeof(buf)) <= 0)
        return -1;
    errno = 0;
    n = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (int64_t)n;
    return 0;
}

/* bool text form ("t" / "f") -> bool. Returns 0, or -1. */
static inline int
wr_dest_value_bool(const wr_dest_value_t *v, bool *out)
{
    if (v->kind != WR_DEST_VAL_TEXT || v->len != 1 || (v->data[0] != 't' && v->data[0] != 'f'))
        return -1;
    *out = v->data[0] == 't';
    return 0;
}

/* float4, float8, numeric text form -> double (may round; "NaN", "Infinity" and
 * "-Infinity" too). Returns 0, or -1. */
static inline int
wr_dest_value_double(const wr_dest_value_t *v, double *out)
{
    char buf[512], *end;

    if (wr_dest_value_cstr(v, buf, sizeof(buf)) <= 0)
        return -1;
    errno = 0;
    *out = strtod(buf, &end);
    return (*end == '\0' && errno != EINVAL) ? 0 : -1;
}

/* Position of a column by name in a relation, or -1. */
static inline int
wr_dest_column_index(const wr_dest_relation_t *rel, const char *name)
{
    for (uint16_t i = 0; i < rel->ncolumns; i++)
        if (strcmp(rel->columns[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Compares two keys: <0, 0, >0. */
static inline int
wr_dest_key_cmp(const wr_dest_key_t *a, const wr_dest_key_t *b)
{
    if (a->commit_lsn != b->commit_lsn)
        return a->commit_lsn < b->commit_lsn ? -1 : 1;
    if (a->ordinal != b->ordinal)
        return a->ordinal < b->ordinal ? -1 : 1;
    return 0;
}

/* Formats an LSN as PostgreSQL does ("16/B374D848") into buf (>= 24 bytes). */
static inline const char *
wr_dest_lsn_format(uint64_t lsn, char *buf, size_t size)
{
    snprintf(buf, size, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
    return buf;
}

#ifdef __cplusplus
}
#endif

#endif
