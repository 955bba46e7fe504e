/*
 * state.h - the replication state store: pipeline progress, each table's phase with its
 * history, schemas by LSN, destination table names, pipeline flags.
 *
 * NOTES: only the supervisor writes it; `walrelay status` never opens it (it asks the
 * supervisor), `walrelay check` opens a store only to check it, `walrelay drop` to delete
 * the pipeline's state. One interface, four implementations: state_open_sqlite()
 * (DIR/state.db, the default), state_open_postgres() (a schema of a PostgreSQL database,
 * with a lease), state_open_plugin() (a library built against walrelay/store.h, through
 * the adapter state_abi.c) and state_open_memory() (unit tests). These are the seeds'
 * SchemaStore, StateStore and CleanupStore in one table of functions. Every write is one
 * transaction: when a call returns 0 the change is durable. The argument checks and the
 * error texts all stores share are in state.c.
 */
#ifndef WR_STATE_H
#define WR_STATE_H

#include "config.h"
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

/* A table for add_tables: its source names and its destination table's name. */
typedef struct state_new_table_s {
    uint32_t relid;
    const char *nsp;
    const char *name;
    const char *dest_name;
} state_new_table_t;

/* (issue 11) One range of a table's parallel copy: the pages [first_page, end_page) of the
 * relation leaf (the table itself, or a partition of a table published through its root);
 * end_page 0: to the end of the relation. */
typedef struct state_copy_range_s {
    uint32_t leaf;
    uint32_t first_page;
    uint32_t end_page;
    bool done;
    uint64_t rows; /* rows it held, once done */
} state_copy_range_t;

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
    /* (added for issue 12) Optional (NULL: plugin stores, whose ABI has no such read). The
     * phase before the current one, i.e. what rollback_phase would restore (the newest
     * history entry), without changing anything; *found=false if none. Lets `walrelay
     * retry` decide first and then persist its decision in one write; without it, retry
     * always copies again from scratch (also one write). */
    int (*prev_phase)(state_store_t *s, uint32_t relid, wr_phase_t *phase, wr_lsn_t *lsn,
                      bool *found, wr_err_t *err);
    /* Optional (NULL: the store has no lease; DIR/walrelay.pid is the only guard). Checks
     * that this process still holds the pipeline's lease on a store other hosts can reach.
     * probe = false: only what the store already knows (no I/O; the supervisor asks every
     * tick); probe = true: asks the store (a round trip; reconnecting takes the lease again
     * first). 0: held (or, without probe, nothing known against it). WR_ECONFIG: lost,
     * another supervisor holds it; the store is fenced, every later call fails without
     * writing. Anything else: could not verify now (the store is unreachable). */
    int (*check_lease)(state_store_t *s, bool probe, wr_err_t *err);
    /* Optional (NULL: sqlite, whose file `walrelay drop` removes, and memory). Deletes
     * every record of the store's pipeline (walrelay drop, on a store opened for it, so
     * the lease is held); *dropped = whether there were any. */
    int (*drop_pipeline)(state_store_t *s, bool *dropped, wr_err_t *err);
    /* (issue 11) Optional (NULL: the supervisor calls add_table and put_mapping for each
     * table). add_table and put_mapping of n tables in one transaction, all or nothing: a
     * publication of thousands of tables is added with one durable write, not two a table.
     * The same argument checks as the two calls, before anything is written. */
    int (*add_tables)(state_store_t *s, const state_new_table_t *tables, size_t n, wr_err_t *err);
    /* (issue 11) Optional, all three or none (NULL: a copy that a crash interrupts starts
     * again from scratch). The plan of a table's parallel copy under the snapshot of its
     * slot's consistent point lsn: put_copy_plan replaces the table's plan (n = 0: removes
     * it), copy_range_done marks range `part` (its index in the plan) done with its rows
     * (WR_EINVAL if the table has no such range), get_copy_plan reads it back (*n = 0 and
     * *lsn = 0 if none; *out malloc'd, caller frees). remove_table removes it too. */
    int (*put_copy_plan)(state_store_t *s, uint32_t relid, wr_lsn_t lsn,
                         const state_copy_range_t *ranges, size_t n, wr_err_t *err);
    int (*copy_range_done)(state_store_t *s, uint32_t relid, uint32_t part, uint64_t rows,
                           wr_err_t *err);
    int (*get_copy_plan)(state_store_t *s, uint32_t relid, wr_lsn_t *lsn, state_copy_range_t **out,
                         size_t *n, wr_err_t *err);
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
/* `walrelay check`: reachable, and the user may create the schema / its tables; fills a
 * one-line summary. */
int state_check_postgres(const char *conninfo, const char *schema, char *summary, size_t len,
                         wr_err_t *err) WR_MUST_CHECK;
/* In-memory store with the same semantics. */
int state_open_memory(state_store_t **out, wr_err_t *err) WR_MUST_CHECK;

/* [state] backend = plugin (state_abi.c): loads cfg's [state] library, validates the
 * store's keys, opens an instance for role ("supervisor": the only writer, takes the
 * lease; "drop": takes the lease for drop_pipeline; "check"). Refusals of the library
 * and the store's own key errors are WR_ECONFIG "FILE:LINE: [state] KEY: ...". */
int state_open_plugin(const wr_config_t *cfg, const char *role, state_store_t **out,
                      wr_err_t *err) WR_MUST_CHECK;
/* The [state] checks beyond config.c, wherever a loaded configuration is used (check,
 * run, reload, drop): a plugin store's library loads and its validate() accepts its keys.
 * Other backends: nothing to do. */
int state_config_check(const wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* `walrelay init`: the plugin library loads (its keys are added afterwards). */
int state_init_check(const wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* `walrelay check` of a plugin store: load, validate, open("check"), its check(); fills a
 * one-line summary. */
int state_check_plugin(const wr_config_t *cfg, char *summary, size_t len,
                       wr_err_t *err) WR_MUST_CHECK;
#define STATE_SCHEMA_VERSION 3
/* (issue 11) Most ranges in one table's copy plan. */
#define STATE_MAX_COPY_RANGES 4096

/* ---- shared by the implementations (state.c) ---- */

#define STATE_FLAG_NAME_MAX 63

/* Argument checks each store makes before it touches anything: 0, or WR_EINVAL with the
 * message every store gives. */
int state_check_progress(const state_progress_t *p, wr_err_t *err) WR_MUST_CHECK;
int state_check_table_names(uint32_t relid, const char *nsp, const char *name,
                            wr_err_t *err) WR_MUST_CHECK;
int state_check_phase(uint32_t relid, wr_phase_t phase, wr_err_t *err) WR_MUST_CHECK;
int state_check_schema(const wr_schema_t *schema, wr_err_t *err) WR_MUST_CHECK;
int state_check_mapping(uint32_t relid, const char *dest_name, wr_err_t *err) WR_MUST_CHECK;
/* Also empties buf. */
int state_check_mapping_buffer(uint32_t relid, char *buf, size_t len, wr_err_t *err) WR_MUST_CHECK;
int state_check_flag_name(const char *name, wr_err_t *err) WR_MUST_CHECK;
/* (issue 11) A copy plan: at most STATE_MAX_COPY_RANGES ranges, ranges given if n > 0. */
int state_check_copy_plan(uint32_t relid, const state_copy_range_t *ranges, size_t n,
                          wr_err_t *err) WR_MUST_CHECK;
/* "marking range P of table R done: the table's copy plan has no such range" (WR_EINVAL). */
int state_err_no_range(wr_err_t *err, uint32_t relid, uint32_t part);
/* Copies a stored destination name into buf, or WR_EINVAL "needs N bytes" (never a cut). */
int state_copy_mapping(uint32_t relid, const char *dest_name, char *buf, size_t len,
                       wr_err_t *err) WR_MUST_CHECK;
/* "WHAT of table R: table is not in the state store" (WR_EINVAL); what: "setting phase". */
int state_err_no_table(wr_err_t *err, const char *what, uint32_t relid);
/* "rolling back the phase of table R: no earlier phase recorded" (WR_EINVAL). */
int state_err_no_history(wr_err_t *err, uint32_t relid);
/* "WHAT: DETAIL" with code; the detail (a server's or library's message) on one line. */
int state_err_detail(wr_err_t *err, int code, const char *what, const char *detail);
/* The error fields a store keeps for a phase: cut to t's field sizes at a UTF-8
 * boundary for Errored, empty otherwise. */
void state_cut_errors(state_table_t *t, wr_phase_t phase, const char *err_kind, const char *err_msg,
                      const char *err_hint);

/* Convenience wrappers: s->ops->x(s, ...). */
static inline void
state_close(state_store_t *s)
{
    if (s)
        s->ops->close(s);
}

#endif
