/*
 * state.h - the replication state store: pipeline progress, each table's phase with its
 * history, schemas by LSN, destination table names.
 *
 * NOTES: DIR/state.db (SQLite, WAL mode, migrations by PRAGMA user_version). Only the
 * supervisor writes it; `walrelay status` never opens it (it asks the supervisor). One
 * interface, two implementations: state_open_sqlite() and state_open_memory() (tests).
 * These are the seeds' SchemaStore, StateStore and CleanupStore in one table of functions.
 * Every write is one SQLite transaction: when a call returns 0 the change is durable.
 */
#ifndef WR_STATE_H
#define WR_STATE_H

#include "phase.h"
#include "schema.h"

typedef struct state_table_s {
    uint32_t relid;
    char nsp[128];
    char name[128];
    wr_phase_t phase;
    wr_lsn_t lsn;      /* phase LSN: FinishedCopy X, Catchup L, SyncDone S */
    uint32_t attempts; /* failures in a row (sync worker restarts, error retries) */
    char err_kind[32];
    char err_msg[512];
    char err_hint[256];
    int64_t updated_at_ms; /* wall clock, ms since epoch */
} state_table_t;

typedef struct state_progress_s {
    char slot_name[64];
    wr_lsn_t confirmed_flush; /* last flush LSN the apply worker reported as durable */
} state_progress_t;

typedef struct state_store_s state_store_t;

typedef struct state_ops_s {
    int (*get_progress)(state_store_t *s, state_progress_t *out, bool *found, wr_err_t *err);
    int (*set_progress)(state_store_t *s, const state_progress_t *p, wr_err_t *err);
    /* Adds a table in Init if absent; no-op if present. */
    int (*add_table)(state_store_t *s, uint32_t relid, const char *nsp, const char *name,
                     wr_err_t *err);
    /* Removes the table, its history, schemas and mapping (CleanupStore). */
    int (*remove_table)(state_store_t *s, uint32_t relid, wr_err_t *err);
    int (*get_table)(state_store_t *s, uint32_t relid, state_table_t *out, bool *found,
                     wr_err_t *err);
    /* All tables ordered by relid; *out malloc'd (caller frees), *n set. */
    int (*list_tables)(state_store_t *s, state_table_t **out, size_t *n, wr_err_t *err);
    /* Sets phase + lsn (+ error fields when phase is Errored, else they are cleared) and
     * appends the previous phase to the history. Does not validate the transition. */
    int (*set_phase)(state_store_t *s, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
                     const char *err_kind, const char *err_msg, const char *err_hint,
                     wr_err_t *err);
    int (*set_attempts)(state_store_t *s, uint32_t relid, uint32_t attempts, wr_err_t *err);
    /* Restores the phase before the last set_phase (pops the history). WR_EINVAL if none. */
    int (*rollback_phase)(state_store_t *s, uint32_t relid, wr_err_t *err);
    /* Number of history entries for a table (for tests and status). */
    int (*history_len)(state_store_t *s, uint32_t relid, size_t *n, wr_err_t *err);
    /* Stores a schema version that took effect at lsn (replaces the same (relid, lsn)). */
    int (*put_schema)(state_store_t *s, const wr_schema_t *schema, wr_lsn_t lsn, wr_err_t *err);
    /* The newest schema with version lsn <= at (at = UINT64_MAX for the latest). *out
     * owned by the caller (wr_schema_free); NULL if none. */
    int (*get_schema)(state_store_t *s, uint32_t relid, wr_lsn_t at, wr_schema_t **out,
                      wr_lsn_t *version_lsn, wr_err_t *err);
    int (*put_mapping)(state_store_t *s, uint32_t relid, const char *dest_name, wr_err_t *err);
    /* buf gets "" if none. */
    int (*get_mapping)(state_store_t *s, uint32_t relid, char *buf, size_t len, wr_err_t *err);
    void (*close)(state_store_t *s);
    /* (added for issue 3) Pipeline-wide flags: a name (1..63 bytes) and an integer, e.g.
     * "paused" (walrelay pause) or "slot_lost_recopied" (on_slot_lost = recopy used).
     * get_flag: *found=false and *value=0 when never set. */
    int (*get_flag)(state_store_t *s, const char *name, int64_t *value, bool *found, wr_err_t *err);
    int (*set_flag)(state_store_t *s, const char *name, int64_t value, wr_err_t *err);
    /* (added for issue 12) The phase before the current one, i.e. what rollback_phase would
     * restore (the newest history entry), without changing anything; *found=false if none.
     * Lets `walrelay retry` decide first and then persist its decision in one write. */
    int (*prev_phase)(state_store_t *s, uint32_t relid, wr_phase_t *phase, wr_lsn_t *lsn,
                      bool *found, wr_err_t *err);
} state_ops_t;

struct state_store_s {
    const state_ops_t *ops;
};

/* Opens (creating and migrating) a SQLite store at path. */
int state_open_sqlite(const char *path, state_store_t **out, wr_err_t *err) WR_MUST_CHECK;
/* Opens (creating and migrating) the PostgreSQL store: schema `schema` of the database
 * conninfo names, rows of pipeline `pipeline`, and takes the pipeline's lease (a session
 * advisory lock held until close). Another holder of the lease: WR_ECONFIG naming the
 * pipeline (exit code 2). state_pg.c. */
int state_open_postgres(const char *conninfo, const char *schema, const char *pipeline,
                        state_store_t **out, wr_err_t *err) WR_MUST_CHECK;
/* Deletes every row of the store's pipeline (walrelay drop, on a store opened with
 * state_open_postgres, so the lease is held: a supervisor running elsewhere refuses it);
 * *dropped = whether there were any. */
int state_postgres_delete_pipeline(state_store_t *st, bool *dropped, wr_err_t *err) WR_MUST_CHECK;
/* `walrelay check`: reachable, and the user may create the schema / its tables; fills a
 * one-line summary. */
int state_check_postgres(const char *conninfo, const char *schema, char *summary, size_t len,
                         wr_err_t *err) WR_MUST_CHECK;
/* In-memory store with the same semantics. */
int state_open_memory(state_store_t **out, wr_err_t *err) WR_MUST_CHECK;
#define STATE_SCHEMA_VERSION 2

/* Convenience wrappers: s->ops->x(s, ...). */
static inline void
state_close(state_store_t *s)
{
    if (s)
        s->ops->close(s);
}

#endif
