/*
 * destination.h - the one interface every destination implements (the seeds'
 * Destination trait, made C): open, make a table from a schema, truncate, write copied
 * rows, write change events, commit with the resume key, report the last applied key.
 *
 * NOTES: each worker process opens its own destination handle; rows never cross a
 * socket. A transactional destination stores the resume key of the last applied change
 * per stream ("apply", or "sync_<relid>" for a sync worker's catch-up) in the same
 * transaction as the data, so a replay after a crash can skip what is already there:
 * exactly once. All writes happen between begin() and commit()/rollback().
 */
#ifndef WR_DESTINATION_H
#define WR_DESTINATION_H

#include "../common/config.h"
#include "../common/schema.h"

/* Resume key: (commit LSN, ordinal of the change in its transaction). Compare with
 * dest_key_cmp. The ordinal counts from 1; (lsn, 0) means "before any change of lsn". */
typedef struct dest_key_s {
    wr_lsn_t commit_lsn;
    uint32_t ordinal;
} dest_key_t;

static inline int
dest_key_cmp(const dest_key_t *a, const dest_key_t *b)
{
    if (a->commit_lsn != b->commit_lsn)
        return a->commit_lsn < b->commit_lsn ? -1 : 1;
    if (a->ordinal != b->ordinal)
        return a->ordinal < b->ordinal ? -1 : 1;
    return 0;
}

typedef enum {
    DEST_EV_INSERT = 1,
    DEST_EV_UPDATE,
    DEST_EV_DELETE,
    DEST_EV_TRUNCATE,
    /* Transaction boundaries (the seeds' Begin and Commit events). A worker writes BEGIN
     * before the first change of a source transaction that it writes to the destination
     * (key = (final LSN, 0)), and COMMIT after the last one (key = (commit LSN, ordinal
     * of the transaction's last change), end_lsn set). Both carry xid and commit_ts. A
     * transaction may span destination batches; after a restart its BEGIN is written
     * again before the first change not yet stored. Destinations that apply changes
     * directly (sqlite) ignore them. */
    DEST_EV_BEGIN,
    DEST_EV_COMMIT,
} dest_ev_kind_t;

typedef struct dest_event_s {
    dest_ev_kind_t kind;
    dest_key_t key;
    uint32_t xid;
    uint32_t relid;
    char old_kind;           /* update/delete: 0, 'K' (key columns only) or 'O' (old row) */
    const wr_row_t *old_row; /* update with 'K'/'O', delete; else NULL */
    const wr_row_t *new_row; /* insert, update; else NULL */
    uint8_t truncate_flags;  /* truncate: 1 CASCADE, 2 RESTART IDENTITY */
    int64_t commit_ts;       /* commit time, microseconds since the Unix epoch (all kinds) */
    wr_lsn_t end_lsn;        /* commit: end of the transaction's commit record */
} dest_event_t;

/* pgoutput timestamps count microseconds from 2000-01-01; dest_event_t from 1970-01-01. */
#define DEST_PG_EPOCH_OFFSET_US INT64_C(946684800000000)

/* ---- schema versions (issue 3: schema changes while streaming) ------------------------
 * Added for schema changes; additive. A destination that tracks schemas records, per
 * table, each schema version with the catalog facts it was derived from, so the apply
 * worker can compare the next Relation message by attribute number (pgoutput sends none):
 * see dest_ddl_plan() and docs/destinations.md "Schema changes". */

/* Catalog facts about a source table that go with a schema version. */
typedef struct dest_tmeta_s {
    dest_key_t version;   /* where the schema took effect: (X, 0) for a copy at consistent
                           * point X, else the key of the last change before it */
    uint32_t relfilenode; /* pg_class.relfilenode then; a new one = rewritten or truncated */
    uint16_t natts;       /* attributes then (attnum 1..natts, dropped and generated too);
                           * 0 = unknown (a table registered before versions existed) */
    char *attstate;       /* natts chars + NUL, by attnum: 'l' replicated column, 'd' dropped,
                           * 'g' generated; owned */
    uint32_t *attxmin;    /* natts entries: xmin of each pg_attribute row; owned */
} dest_tmeta_t;

/* Frees what m owns and zeroes it. */
void dest_tmeta_clear(dest_tmeta_t *m);
/* Deep copy into *dst (zeroed first); WR_ENOMEM on failure. */
int dest_tmeta_copy(dest_tmeta_t *dst, const dest_tmeta_t *src) WR_MUST_CHECK;

/* How to change a destination table from an old schema to a new one (the new schema's
 * columns in order). Type changes get here only for a destination with DEST_DDL_RETYPE (a
 * column whose type differs between the two schemas); otherwise the table is copied again. */
typedef struct dest_alter_s {
    const int32_t *src;       /* per new column: index of the same column (same attnum) in the
                               * old schema, or -1 for a column that was added */
    const wr_val_t *fill;     /* per new column, used where src is -1: the value the rows that
                               * existed before have (WR_VAL_NULL or WR_VAL_TEXT) */
    const dest_tmeta_t *meta; /* recorded with the new schema as its version */
    const char *summary;      /* e.g. add column "c", drop column "b": for logs */
} dest_alter_t;

/* The source catalog's view of a table now (read by the apply worker). */
typedef struct dest_catalog_s {
    wr_schema_t *schema; /* replicated columns in attnum order; key = primary key, else
                          * the replica identity index (as the copy reads it); owned */
    dest_tmeta_t meta;   /* version unused */
    char relkind;        /* 'r', 'p' ... */
    char **missing;      /* per schema column: text of attmissingval (what rows that
                          * predate the column read), NULL if none; owned */
    uint8_t *relflags;   /* per schema column: the key flag pgoutput's Relation carries
                          * (REPLICA IDENTITY FULL: all, DEFAULT: primary key, INDEX: the
                          * index, NOTHING: none); owned */
} dest_catalog_t;

void dest_catalog_clear(dest_catalog_t *c);

typedef enum {
    DEST_DDL_NONE = 0, /* same schema, same catalog facts */
    DEST_DDL_REFRESH,  /* same columns; record the new catalog facts as a version */
    DEST_DDL_FOLLOW,   /* alter the destination exactly (add / drop / rename, new key) */
    DEST_DDL_RECOPY,   /* cannot be followed exactly: copy the table again */
} dest_ddl_action_t;

typedef struct dest_ddl_plan_s {
    dest_ddl_action_t action;
    uint16_t ncols;    /* of the catalog schema */
    int32_t *src;      /* FOLLOW: see dest_alter_t; owned */
    wr_val_t *fill;    /* FOLLOW: points into the catalog's missing values; owned array */
    bool key_changed;  /* FOLLOW: the key columns differ */
    char summary[768]; /* FOLLOW/REFRESH: what changed; RECOPY: why */
} dest_ddl_plan_t;

/* Compares the destination's schema version (schema + meta; schema NULL if none) with the
 * catalog now and decides. Rules (docs/destinations.md): columns are matched by attnum;
 * a type change, an added column while the table was rewritten (a volatile default), a
 * drop together with an add (indistinguishable from a rename plus later changes), a
 * generated column turned normal, a rewrite while a column was altered, a renamed table,
 * an added column of a partitioned table -> RECOPY; drops, renames, adds (rows that
 * existed get attmissingval, else NULL) and key changes -> FOLLOW. Returns 0 or
 * WR_ENOMEM. */
int dest_ddl_plan(const wr_schema_t *dschema, const dest_tmeta_t *dmeta, const dest_catalog_t *cat,
                  dest_ddl_plan_t *plan, wr_err_t *err) WR_MUST_CHECK;
/* dest_ddl_plan with the destination's DEST_DDL_* flags. With DEST_DDL_RETYPE a type or typmod
 * change of a column is FOLLOWed (alter_table sees the same column with another type in its
 * two schemas) when the table was not rewritten since the destination's version (the same
 * relfilenode: PostgreSQL changed the column's label and kept every stored value, e.g.
 * varchar(10) to varchar(20), varchar to text, numeric(10,2) to numeric(12,2), timestamp(3) to
 * timestamp(6)); a change that rewrote the table (int to bigint, any USING) is copied again,
 * because the rewritten values are not in the stream and the catalog does not say which
 * conversion made them. */
int dest_ddl_plan_flags(const wr_schema_t *dschema, const dest_tmeta_t *dmeta,
                        const dest_catalog_t *cat, unsigned flags, dest_ddl_plan_t *plan,
                        wr_err_t *err) WR_MUST_CHECK;
void dest_ddl_plan_free(dest_ddl_plan_t *plan);
/* True if a Relation message's schema (key flags = what pgoutput flags) describes the
 * catalog's table: same names, types, typmods, order, replica identity and flags. Else
 * fills why (one line). */
bool dest_ddl_relation_matches(const wr_schema_t *rel, const dest_catalog_t *cat, char *why,
                               size_t len);

typedef struct dest_s dest_t;

typedef struct dest_ops_s {
    const char *name;
    /* Opens the destination described by cfg. */
    int (*open)(const wr_config_t *cfg, dest_t **out, wr_err_t *err);
    /* Registers the table's schema; creates the destination table if it does not exist.
     * Called again with a new schema when the source's changes (issue 3 handles
     * alteration; a differing column set here is an error naming both). Outside or
     * inside a transaction. */
    int (*ensure_table)(dest_t *d, const wr_schema_t *schema, wr_err_t *err);
    int (*begin)(dest_t *d, wr_err_t *err);
    /* Deletes every row of the table (re-copy, TRUNCATE). Inside a transaction. */
    int (*truncate_table)(dest_t *d, uint32_t relid, wr_err_t *err);
    /* Copied rows, column order of the registered schema. Inside a transaction. */
    int (*write_rows)(dest_t *d, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err);
    /* One change. Inside a transaction. */
    int (*write_event)(dest_t *d, const dest_event_t *ev, wr_err_t *err);
    /* Commits; if key is not NULL, stores it as stream's last applied key in the same
     * transaction. Returns only once the data is durable (or, with durable below, once it
     * is visible: durable says when it is durable). */
    int (*commit)(dest_t *d, const char *stream, const dest_key_t *key, wr_err_t *err);
    int (*rollback)(dest_t *d, wr_err_t *err);
    /* Last key committed for stream; *found=false if none (or not transactional). */
    int (*last_key)(dest_t *d, const char *stream, dest_key_t *out, bool *found, wr_err_t *err);
    /* Forgets a stream's key (a sync worker's, once the table is Ready; or on re-copy). */
    int (*clear_key)(dest_t *d, const char *stream, wr_err_t *err);
    /* Row count of a table, for status and tests; -1 if unknown. */
    int64_t (*count_rows)(dest_t *d, uint32_t relid);
    void (*close)(dest_t *d);

    /* ---- schema versions (issue 3; NULL in a destination that does not track them:
     * the workers then skip the comparison) ---- */
    /* The table's newest schema version: *schema (caller frees; NULL if the destination
     * knows no schema for relid) and *meta (caller clears; natts 0 if the table was
     * registered without catalog facts). Outside or inside a transaction. */
    int (*get_version)(dest_t *d, uint32_t relid, wr_schema_t **schema, dest_tmeta_t *meta,
                       wr_err_t *err);
    /* Records a version (schema + meta) without changing the table: new catalog facts for
     * the same columns. change says why ("refresh"). Inside a transaction. */
    int (*put_version)(dest_t *d, const wr_schema_t *schema, const dest_tmeta_t *meta,
                       const char *change, wr_err_t *err);
    /* Changes the table from old_schema (its current version) to new_schema by plan, in
     * the caller's transaction, and records the version; rows that existed get the fill
     * of each added column. The caller registers the change's schema with ensure_table
     * afterwards. Table-specific refusals are WR_EUNSUPPORTED or WR_EDATA (a new key
     * that the rows violate). Inside a transaction. */
    int (*alter_table)(dest_t *d, const wr_schema_t *old_schema, const wr_schema_t *new_schema,
                       const dest_alter_t *plan, wr_err_t *err);
    /* For a copy: leaves the table empty with exactly this schema (dropped and created
     * again if its columns or key differ, else its rows deleted), registers it like
     * ensure_table and records meta as its only version. Inside a transaction. */
    int (*reset_table)(dest_t *d, const wr_schema_t *schema, const dest_tmeta_t *meta,
                       wr_err_t *err);

    /* ---- streamed transactions (issue 11; NULL in a destination that cannot take
     * them: the apply worker then spools a streamed transaction and writes it at its
     * commit, see worker_apply/apply.c STREAMED TRANSACTIONS) ---- */
    /* True if this instance takes a transaction's changes before the transaction's
     * commit LSN is known: its write_event uses neither the key nor commit_ts of a change
     * and needs no BEGIN/COMMIT events (none are written for such a transaction), and
     * savepoint / rollback_to work. */
    bool (*can_stream)(dest_t *d);
    /* Sets a savepoint named name (letters, digits, _) in the open transaction; rollback_to
     * undoes everything written after it (the savepoint itself stays, later ones go).
     * Tables created after the savepoint are forgotten and must be registered again with
     * ensure_table. Inside a transaction. */
    int (*savepoint)(dest_t *d, const char *name, wr_err_t *err);
    int (*rollback_to)(dest_t *d, const char *name, wr_err_t *err);
    /* (issue 12) Forgets whatever this handle cached about the table (its registration,
     * statements, the columns UPDATE/DELETE match on): another process copies it again,
     * possibly with other columns or another key, and the next ensure_table must read
     * the destination afresh. Outside a transaction. NULL if nothing is cached. */
    int (*forget_table)(dest_t *d, uint32_t relid, wr_err_t *err);
    /* ---- added for the postgres destination (issue 7); optional, NULL where the
     * destination does not need them (the workers then use the calls above) ---- */
    /* The copy's rows exactly as the source's COPY ... TO STDOUT (text format) sends them:
     * whole lines, each ending in '\n', columns in the order of the schema reset_table
     * registered (the binary format instead when copy_binary said so). Lets a destination
     * that speaks COPY pass the bytes through untouched instead of write_rows. Inside a
     * transaction; errors may show only at commit. */
    int (*write_copy)(dest_t *d, uint32_t relid, const char *data, size_t len, wr_err_t *err);
    /* Asked once per copy by a worker that will call write_copy, before it sends the COPY
     * to the source: *binary = true if the destination takes this copy in PostgreSQL's
     * binary COPY format instead (COPY ... TO STDOUT (FORMAT binary)). Then write_copy gets
     * the source's CopyData messages untouched, the signature in the first and the trailer
     * in the last, in order, and no other call for the table comes between them.
     * source_version is the source's server_version_num. NULL: always text. Outside or
     * inside a transaction; an error (the destination cannot be reached) is the copy's. */
    int (*copy_binary)(dest_t *d, const wr_schema_t *s, int source_version, bool *binary,
                       wr_err_t *err);
    /* Every row of the copy of relid has been written (write_copy or write_rows): called in
     * the copy's last transaction, before its commit, so that what the destination put off
     * until the rows were in (postgres: the primary key and indexes; sqlite: the primary
     * key's index, the durability of the copy's earlier commits) commits with them. */
    int (*copy_done)(dest_t *d, uint32_t relid, wr_err_t *err);
    /* Writes what write_event held back in the open transaction (a destination that
     * applies changes in batches), so that a failure shows before commit() and can be
     * pinned on one table: then *relid names it (0 if the failure is not one table's),
     * that table's held-back changes are dropped and the transaction stays usable for the
     * others; the caller marks the table errored and calls flush again. 0 when everything
     * is written. */
    int (*flush)(dest_t *d, uint32_t *relid, wr_err_t *err);
    /* flush and commit in one call, which may save a round trip: a failure of one table is
     * reported as by flush (*relid, that table's changes dropped, the transaction still
     * open: call again); 0 means committed with the key, as commit(). NULL: the worker
     * calls flush, then commit. */
    int (*flush_commit)(dest_t *d, const char *stream, const dest_key_t *key, uint32_t *relid,
                        wr_err_t *err);
    /* ---- the parallel, resumable copy (issue 11); optional ----
     * A destination whose range_writers says so copies a table in ranges of its pages, each
     * range in one destination transaction committed with commit_range, so that a sync
     * worker that dies mid-copy is followed by one that copies only the ranges not
     * committed (ranges_done), under the same snapshot (worker_sync/sync.c). The copy
     * begins with reset_table (or copy_resume in the new process) in a transaction of its
     * own, and ends with copy_done in another. range_writers NULL or 0: one COPY, the calls
     * above (write_copy or write_rows, copy_done); a destination with write_copy copies
     * with one COPY whatever range_writers says (postgres: one destination transaction
     * for the whole copy). */
    /* How many handles may write ranges of one table at the same time, each in its own
     * transaction: 1 for a destination with one writer (sqlite), more where writers do not
     * wait for each other; 0 when this handle does not copy by range. */
    int (*range_writers)(dest_t *d);
    /* Commits the open transaction, which holds the rows of range `part` of the copy of relid
     * under the snapshot of lsn, with a record that it does: atomic with the rows, and durable
     * when this returns. */
    int (*commit_range)(dest_t *d, uint32_t relid, wr_lsn_t lsn, uint32_t part, uint64_t rows,
                        wr_err_t *err);
    /* Which ranges of the copy of relid under lsn commit_range committed: done[i] = true and
     * rows[i] set for each such part i < n (the others are left as they are). Outside a
     * transaction. */
    int (*ranges_done)(dest_t *d, uint32_t relid, wr_lsn_t lsn, bool *done, uint64_t *rows,
                       uint32_t n, wr_err_t *err);
    /* The copy of schema's table goes on in a new process: the rows of its committed ranges
     * stay; registers the table as ensure_table does and takes up what reset_table began for
     * the copy (sqlite: the staging table, the commits' durability). Inside a transaction. */
    int (*copy_resume)(dest_t *d, const wr_schema_t *schema, wr_err_t *err);
    /* DEST_DDL_* flags: schema changes this destination follows beyond dest_ddl_plan's
     * default rules (0 for sqlite). */
    unsigned ddl_flags;
    /* A destination whose commit() returns once the data is visible, before it is durable
     * (postgres in the apply worker commits with synchronous_commit = off, as PostgreSQL's
     * own subscriber does, and watches its WAL flush): *n = how many of this handle's
     * commits (counted from 1, in the order they returned) are durable now. It may ask the
     * server: call it a few times a second at most. The worker confirms a position to the
     * source only once the commit holding it is durable. NULL: every commit is durable
     * when it returns. */
    int (*durable)(dest_t *d, uint64_t *n, wr_err_t *err);
} dest_ops_t;

/* dest_ops_t.ddl_flags: the destination changes a column's type in place (ALTER COLUMN ...
 * TYPE) where the source's values did not change (see dest_ddl_plan_flags). */
#define DEST_DDL_RETYPE 1u

struct dest_s {
    const dest_ops_t *ops;
};

/* What a worker lets its destination do while the destination waits on the outside world
 * (the ABI host's waiting and interrupted, include/walrelay/destination.h "Waiting").
 * Process-wide: a worker sets them once, after dest_open; without them a destination's
 * wait is only logged and never interrupted. Called on the worker's thread, from inside a
 * destination call. */
typedef struct dest_host_hooks_s {
    /* message: what the destination waits for and its last error; NULL: the wait is over */
    void (*waiting)(void *arg, const char *message);
    /* true: give up waiting (a stop was asked for, or the supervisor is gone) */
    bool (*interrupted)(void *arg);
    void *arg;
} dest_host_hooks_t;

void dest_set_host_hooks(const dest_host_hooks_t *hooks);

/* The same waiting and interrupted for an in-tree destination (postgres): waiting logs
 * the message once per change (redacted, as for a plugin) and reports it through the
 * worker's hook (walrelay status); NULL or "" ends the wait. interrupted is false without
 * hooks. name: the destination's type, for the log line. */
void dest_host_waiting(const char *name, const char *message);
bool dest_host_interrupted(void);
/* True once a worker set its hooks (walrelay check and tools set none: a destination
 * there reports a failure at once instead of waiting). */
bool dest_host_hooked(void);

/* While a destination waits for its server's answer, the worker may keep reading its own
 * input: the apply worker reads the replication socket into the stream engine's buffer
 * then, so that the walsender goes on decoding while the destination works (decoding and
 * applying overlap instead of taking turns). fd is watched; fn is called when it is
 * readable and must not block or process anything; it returns false to be left alone
 * until the destination's next wait (its buffer is full enough, or the stream failed: the
 * worker's next read reports that). Process-wide; fd -1 = none. */
typedef bool (*dest_readahead_fn)(void *arg);
void dest_set_readahead(int fd, dest_readahead_fn fn, void *arg);
/* The registered fd (-1 if none), and one call of its function (false: stop watching). */
int dest_readahead_fd(void);
bool dest_readahead(void);
/* The same for a destination busy on the CPU rather than waiting (the event store's
 * SQLite flush): call it about once a millisecond of work; it reads ahead only if the fd
 * is readable now, and never blocks. */
void dest_readahead_poll(void);

/* Opens cfg's destination through the registry (destinations/registry.h): validates the
 * [destination] keys (dest_config_check; fills the default type), then the type's open.
 * role: "apply", "sync" or "check" (handed to ABI destinations). */
int dest_open(wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err) WR_MUST_CHECK;
/* Stream name for a sync worker's catch-up: "sync_<relid>". */
void dest_sync_stream(uint32_t relid, char *buf, size_t len);
/* Destination table name for a source table: "name" for schema public, else
 * "nsp__name". */
void dest_table_name(const char *nsp, const char *name, char *buf, size_t len);
/* The destination table of a schema: its dest_name (the unique name the pipeline chose
 * and recorded in the state store's mappings, issue 12) if set, else dest_table_name().
 * Every destination names its tables with this. */
void dest_schema_table_name(const wr_schema_t *s, char *buf, size_t len);

extern const dest_ops_t dest_sqlite_ops;
extern const dest_ops_t dest_postgres_ops;

#endif
