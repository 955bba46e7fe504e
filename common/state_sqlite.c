/*
 * state_sqlite.c - the replication state store in SQLite (DIR/state.db).
 *
 * NOTES: only the supervisor opens it, on one connection, and writes it; workers ask the
 * supervisor. Opened with journal_mode=WAL, synchronous=FULL (a returned write is on disk),
 * busy_timeout 10000 ms and foreign_keys=ON. The schema is versioned by PRAGMA
 * user_version: each migration runs in one transaction together with the version bump,
 * and a file with a newer version than this build knows is refused, never touched.
 * Every write is one BEGIN IMMEDIATE ... COMMIT transaction: when a call returns 0 the
 * change is durable; on error it is rolled back and err carries sqlite3_errmsg()
 * (code WR_ESTATE). LSNs are uint64 and SQLite integers int64: they are stored as the
 * same 64-bit pattern (LSNs >= 2^63 read as negative in SQL) and compared as unsigned
 * where order matters (get_schema).
 *
 * Tables (schema version 1):
 *   pipeline              one row (id = 1): the apply slot's name and confirmed_flush, the
 *                         last flush LSN the apply worker reported durable in the
 *                         destination (where a restarted apply worker resumes).
 *   tables                one row per replicated table (relid = source pg_class oid): its
 *                         phase (name as in phase_name()), the phase LSN (FinishedCopy X,
 *                         Catchup L, SyncDone S), failures in a row (attempts), the error
 *                         of an Errored table (err_kind, err_msg, err_hint), and the wall
 *                         clock time of the last change (updated_at, ms since epoch).
 *   table_phase_history   the previous (phase, lsn, error) of a table, pushed by every
 *                         set_phase and popped by rollback_phase; newest = highest id.
 *   table_schemas         each schema version of a table, keyed by the LSN at which it
 *                         took effect (the copy's consistent point or a RELATION message).
 *   table_schema_columns  the columns of one schema version, in order (attnum from 1):
 *                         name, type oid, typmod, key and not-null flags.
 *   table_mappings        the destination table name chosen for a source table.
 *   copy_partitions       (replaced by copy_ranges in version 3; never used)
 *   errors                a log of table errors (each set_phase to Errored adds one), kept
 *                         for the operator; removed with the table.
 * Schema version 2 adds:
 *   pipeline_flags        pipeline-wide flags by name (integer value): "paused" (set by
 *                         walrelay pause, cleared by resume), "slot_lost_recopied" (the one
 *                         re-copy of on_slot_lost = recopy was used), "slot_lost" (the slot
 *                         was lost and dropped: walrelay run refuses to start).
 * Schema version 3 (issue 11) replaces copy_partitions with:
 *   copy_ranges           the plan of a table's parallel copy (state.h put_copy_plan): per
 *                         range (part = its index) the relation it reads (leaf), its pages
 *                         [first_page, end_page) (end_page 0: to the end), the consistent
 *                         point of the copy's snapshot (lsn, the same in every row), done
 *                         and the rows it held. Written by the supervisor when a sync worker
 *                         plans its copy and as each range commits in the destination.
 */
#include "state.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Migration N brings the schema from version N-1 to N. */
static const char *const sq_migrations[] = {
    NULL,
    /* 1: the first schema */
    "CREATE TABLE pipeline ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  slot_name TEXT NOT NULL,"
    "  confirmed_flush INTEGER NOT NULL"
    ");"
    "CREATE TABLE tables ("
    "  relid INTEGER PRIMARY KEY,"
    "  nsp TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  phase TEXT NOT NULL,"
    "  lsn INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  err_kind TEXT NOT NULL DEFAULT '',"
    "  err_msg TEXT NOT NULL DEFAULT '',"
    "  err_hint TEXT NOT NULL DEFAULT '',"
    "  updated_at INTEGER NOT NULL"
    ");"
    "CREATE TABLE table_phase_history ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  relid INTEGER NOT NULL REFERENCES tables (relid) ON DELETE CASCADE,"
    "  phase TEXT NOT NULL,"
    "  lsn INTEGER NOT NULL,"
    "  err_kind TEXT NOT NULL DEFAULT '',"
    "  err_msg TEXT NOT NULL DEFAULT '',"
    "  err_hint TEXT NOT NULL DEFAULT '',"
    "  at INTEGER NOT NULL"
    ");"
    "CREATE INDEX table_phase_history_relid ON table_phase_history (relid, id);"
    "CREATE TABLE table_schemas ("
    "  relid INTEGER NOT NULL,"
    "  lsn INTEGER NOT NULL,"
    "  nsp TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  replident TEXT NOT NULL,"
    "  PRIMARY KEY (relid, lsn)"
    ");"
    "CREATE TABLE table_schema_columns ("
    "  relid INTEGER NOT NULL,"
    "  lsn INTEGER NOT NULL,"
    "  attnum INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  type_oid INTEGER NOT NULL,"
    "  typmod INTEGER NOT NULL,"
    "  is_key INTEGER NOT NULL,"
    "  not_null INTEGER NOT NULL,"
    "  PRIMARY KEY (relid, lsn, attnum),"
    "  FOREIGN KEY (relid, lsn) REFERENCES table_schemas (relid, lsn) ON DELETE CASCADE"
    ");"
    "CREATE TABLE table_mappings ("
    "  relid INTEGER PRIMARY KEY,"
    "  dest_name TEXT NOT NULL"
    ");"
    "CREATE TABLE copy_partitions ("
    "  relid INTEGER NOT NULL,"
    "  part INTEGER NOT NULL,"
    "  lower_bound TEXT,"
    "  upper_bound TEXT,"
    "  state TEXT NOT NULL DEFAULT 'pending',"
    "  rows_copied INTEGER NOT NULL DEFAULT 0,"
    "  snapshot_lsn INTEGER NOT NULL DEFAULT 0,"
    "  updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (relid, part)"
    ");"
    "CREATE TABLE errors ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  relid INTEGER,"
    "  kind TEXT NOT NULL,"
    "  message TEXT NOT NULL,"
    "  hint TEXT NOT NULL DEFAULT '',"
    "  at INTEGER NOT NULL"
    ");"
    "CREATE INDEX errors_relid ON errors (relid);",
    /* 2: pipeline-wide flags (pause, lost slot) */
    "CREATE TABLE pipeline_flags ("
    "  name TEXT PRIMARY KEY,"
    "  value INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ");",
    /* 3: the parallel copy's ranges (issue 11); copy_partitions was never written */
    "DROP TABLE copy_partitions;"
    "CREATE TABLE copy_ranges ("
    "  relid INTEGER NOT NULL,"
    "  part INTEGER NOT NULL,"
    "  leaf INTEGER NOT NULL,"
    "  first_page INTEGER NOT NULL,"
    "  end_page INTEGER NOT NULL,"
    "  lsn INTEGER NOT NULL,"
    "  done INTEGER NOT NULL DEFAULT 0,"
    "  rows INTEGER NOT NULL DEFAULT 0,"
    "  updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (relid, part)"
    ");",
};

_Static_assert(sizeof(sq_migrations) / sizeof(sq_migrations[0]) == STATE_SCHEMA_VERSION + 1,
               "one migration per schema version");

/* Prepared once, reused: statement ids and their SQL. */
enum {
    SQ_GET_PROGRESS,
    SQ_SET_PROGRESS,
    SQ_ADD_TABLE,
    SQ_GET_TABLE,
    SQ_LIST_TABLES,
    SQ_DEL_TABLE,
    SQ_DEL_HISTORY,
    SQ_DEL_SCHEMA_COLS,
    SQ_DEL_SCHEMAS,
    SQ_DEL_MAPPING,
    SQ_DEL_PARTITIONS,
    SQ_DEL_ERRORS,
    SQ_PUSH_HISTORY,
    SQ_SET_PHASE,
    SQ_ADD_ERROR,
    SQ_SET_ATTEMPTS,
    SQ_LAST_HISTORY,
    SQ_DEL_HISTORY_ID,
    SQ_HISTORY_LEN,
    SQ_DEL_SCHEMA_VERSION_COLS,
    SQ_DEL_SCHEMA_VERSION,
    SQ_PUT_SCHEMA,
    SQ_PUT_COLUMN,
    SQ_FIND_SCHEMA,
    SQ_SCHEMA_COLS,
    SQ_PUT_MAPPING,
    SQ_GET_MAPPING,
    SQ_GET_FLAG,
    SQ_SET_FLAG,
    SQ_PUT_RANGE,
    SQ_RANGE_DONE,
    SQ_GET_RANGES,
    SQ_NSTMT
};

#define SQ_TABLE_COLS                                                                              \
    "relid, nsp, name, phase, lsn, attempts, err_kind, err_msg, err_hint, updated_at"

static const char *const sq_sql[SQ_NSTMT] = {
    [SQ_GET_PROGRESS] = "SELECT slot_name, confirmed_flush FROM pipeline WHERE id = 1",
    [SQ_SET_PROGRESS] = "INSERT INTO pipeline (id, slot_name, confirmed_flush) VALUES (1, ?1, ?2) "
                        "ON CONFLICT (id) DO UPDATE SET slot_name = excluded.slot_name, "
                        "confirmed_flush = excluded.confirmed_flush",
    [SQ_ADD_TABLE] = "INSERT INTO tables (relid, nsp, name, phase, lsn, attempts, updated_at) "
                     "VALUES (?1, ?2, ?3, ?4, 0, 0, ?5) ON CONFLICT (relid) DO NOTHING",
    [SQ_GET_TABLE] = "SELECT " SQ_TABLE_COLS " FROM tables WHERE relid = ?1",
    [SQ_LIST_TABLES] = "SELECT " SQ_TABLE_COLS " FROM tables ORDER BY relid",
    [SQ_DEL_TABLE] = "DELETE FROM tables WHERE relid = ?1",
    [SQ_DEL_HISTORY] = "DELETE FROM table_phase_history WHERE relid = ?1",
    [SQ_DEL_SCHEMA_COLS] = "DELETE FROM table_schema_columns WHERE relid = ?1",
    [SQ_DEL_SCHEMAS] = "DELETE FROM table_schemas WHERE relid = ?1",
    [SQ_DEL_MAPPING] = "DELETE FROM table_mappings WHERE relid = ?1",
    [SQ_DEL_PARTITIONS] = "DELETE FROM copy_ranges WHERE relid = ?1",
    [SQ_DEL_ERRORS] = "DELETE FROM errors WHERE relid = ?1",
    [SQ_PUSH_HISTORY] = "INSERT INTO table_phase_history "
                        "(relid, phase, lsn, err_kind, err_msg, err_hint, at) "
                        "SELECT relid, phase, lsn, err_kind, err_msg, err_hint, ?2 "
                        "FROM tables WHERE relid = ?1",
    [SQ_SET_PHASE] = "UPDATE tables SET phase = ?2, lsn = ?3, err_kind = ?4, err_msg = ?5, "
                     "err_hint = ?6, updated_at = ?7 WHERE relid = ?1",
    [SQ_ADD_ERROR] = "INSERT INTO errors (relid, kind, message, hint, at) "
                     "VALUES (?1, ?2, ?3, ?4, ?5)",
    [SQ_SET_ATTEMPTS] = "UPDATE tables SET attempts = ?2, updated_at = ?3 WHERE relid = ?1",
    [SQ_LAST_HISTORY] = "SELECT id, phase, lsn, err_kind, err_msg, err_hint "
                        "FROM table_phase_history WHERE relid = ?1 ORDER BY id DESC LIMIT 1",
    [SQ_DEL_HISTORY_ID] = "DELETE FROM table_phase_history WHERE id = ?1",
    [SQ_HISTORY_LEN] = "SELECT count(*) FROM table_phase_history WHERE relid = ?1",
    [SQ_DEL_SCHEMA_VERSION_COLS] = "DELETE FROM table_schema_columns "
                                   "WHERE relid = ?1 AND lsn = ?2",
    [SQ_DEL_SCHEMA_VERSION] = "DELETE FROM table_schemas WHERE relid = ?1 AND lsn = ?2",
    [SQ_PUT_SCHEMA] = "INSERT INTO table_schemas (relid, lsn, nsp, name, replident) "
                      "VALUES (?1, ?2, ?3, ?4, ?5)",
    [SQ_PUT_COLUMN] = "INSERT INTO table_schema_columns "
                      "(relid, lsn, attnum, name, type_oid, typmod, is_key, not_null) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    /* lsn <= ?2 and newest first, both as unsigned 64-bit: stored values with the top bit
     * set are negative and order after every non-negative one */
    [SQ_GET_FLAG] = "SELECT value FROM pipeline_flags WHERE name = ?1",
    [SQ_SET_FLAG] = "INSERT INTO pipeline_flags (name, value, updated_at) VALUES (?1, ?2, ?3) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
    [SQ_FIND_SCHEMA] = "SELECT lsn, nsp, name, replident FROM table_schemas "
                       "WHERE relid = ?1 AND CASE WHEN ?2 >= 0 THEN lsn >= 0 AND lsn <= ?2 "
                       "ELSE lsn >= 0 OR lsn <= ?2 END "
                       "ORDER BY (lsn < 0) DESC, lsn DESC LIMIT 1",
    [SQ_SCHEMA_COLS] = "SELECT name, type_oid, typmod, is_key, not_null "
                       "FROM table_schema_columns WHERE relid = ?1 AND lsn = ?2 ORDER BY attnum",
    [SQ_PUT_MAPPING] = "INSERT INTO table_mappings (relid, dest_name) VALUES (?1, ?2) "
                       "ON CONFLICT (relid) DO UPDATE SET dest_name = excluded.dest_name",
    [SQ_GET_MAPPING] = "SELECT dest_name FROM table_mappings WHERE relid = ?1",
    [SQ_PUT_RANGE] = "INSERT INTO copy_ranges (relid, part, leaf, first_page, end_page, lsn, done, "
                     "rows, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [SQ_RANGE_DONE] = "UPDATE copy_ranges SET done = 1, rows = ?3, updated_at = ?4 "
                      "WHERE relid = ?1 AND part = ?2",
    [SQ_GET_RANGES] = "SELECT part, leaf, first_page, end_page, lsn, done, rows FROM copy_ranges "
                      "WHERE relid = ?1 ORDER BY part",
};

typedef struct sq_store_s {
    state_store_t base; /* first: the public handle */
    sqlite3 *db;
    sqlite3_stmt *stmt[SQ_NSTMT];
} sq_store_t;

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static int64_t
sq_lsn_to_db(wr_lsn_t lsn)
{
    int64_t v;
    memcpy(&v, &lsn, sizeof(v));
    return v;
}

static wr_lsn_t
sq_lsn_from_db(int64_t v)
{
    wr_lsn_t lsn;
    memcpy(&lsn, &v, sizeof(lsn));
    return lsn;
}

static void
sq_col_text(sqlite3_stmt *st, int col, char *dst, size_t size)
{
    wr_copy_text(dst, size, (const char *)sqlite3_column_text(st, col));
}

/* A hint for the failures a person can do something about. */
static void
sq_hint(sq_store_t *s, wr_err_t *err)
{
    switch (sqlite3_errcode(s->db) & 0xff) {
    case SQLITE_FULL:
        wr_err_hint(err, "free disk space on the file system of the state directory");
        break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        wr_err_hint(err, "another process holds state.db locked; is another walrelay running "
                         "on this directory?");
        break;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN:
        wr_err_hint(err, "check that the state directory and state.db are writable by the "
                         "walrelay user");
        break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        wr_err_hint(err, "state.db is damaged or not a walrelay state file; restore it (with its "
                         "-wal file) from a backup, or walrelay drop DIR and start over (every "
                         "table is copied again)");
        break;
    default:
        break;
    }
}

static int sq_fail(sq_store_t *s, wr_err_t *err, const char *fmt, ...) WR_PRINTF(3, 4);

/* Sets err to "<what>: <sqlite3_errmsg>" (WR_ESTATE) with a hint where one helps. */
static int
sq_fail(sq_store_t *s, wr_err_t *err, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    state_err_detail(err, WR_ESTATE, what, sqlite3_errmsg(s->db));
    sq_hint(s, err);
    return WR_ESTATE;
}

/* The cached statement id, reset and unbound, or NULL with err set. */
static sqlite3_stmt *
sq_stmt(sq_store_t *s, int id, wr_err_t *err)
{
    if (!s->stmt[id] && sqlite3_prepare_v3(s->db, sq_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                           &s->stmt[id], NULL) != SQLITE_OK) {
        sq_fail(s, err, "preparing a state store statement");
        s->stmt[id] = NULL;
        return NULL;
    }
    return s->stmt[id];
}

static void
sq_release(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

/* Runs a statement that returns no rows; releases it. */
static int
sq_run(sq_store_t *s, sqlite3_stmt *st, wr_err_t *err, const char *what)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        sq_fail(s, err, "%s", what);
        sq_release(st);
        return WR_ESTATE;
    }
    sq_release(st);
    return 0;
}

/* Runs statement id with ?1 = relid. */
static int
sq_run_relid(sq_store_t *s, int id, uint32_t relid, wr_err_t *err, const char *what)
{
    sqlite3_stmt *st = sq_stmt(s, id, err);
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    return sq_run(s, st, err, what);
}

static int
sq_exec(sq_store_t *s, const char *sql, wr_err_t *err, const char *what)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail(s, err, "%s", what);
    return 0;
}

static int
sq_begin(sq_store_t *s, wr_err_t *err)
{
    return sq_exec(s, "BEGIN IMMEDIATE", err, "starting a state store transaction");
}

static int
sq_commit(sq_store_t *s, wr_err_t *err)
{
    int rc = sq_exec(s, "COMMIT", err, "committing to the state store");
    if (rc && !sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Rolls back after an error (err already set) and returns rc. */
static int
sq_abort(sq_store_t *s, int rc)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* operations                                                                           */
/* ------------------------------------------------------------------------------------ */

static int
sq_get_progress(state_store_t *base, state_progress_t *out, bool *found, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_GET_PROGRESS, err);
    int rc;
    memset(out, 0, sizeof(*out));
    *found = false;
    if (!st)
        return WR_ESTATE;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        sq_col_text(st, 0, out->slot_name, sizeof(out->slot_name));
        out->confirmed_flush = sq_lsn_from_db(sqlite3_column_int64(st, 1));
        *found = true;
    } else if (rc != SQLITE_DONE) {
        sq_fail(s, err, "reading the pipeline progress");
        sq_release(st);
        return WR_ESTATE;
    }
    sq_release(st);
    return 0;
}

static int
sq_set_progress(state_store_t *base, const state_progress_t *p, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    int rc;
    if ((rc = state_check_progress(p, err)))
        return rc;
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_SET_PROGRESS, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_text(st, 1, p->slot_name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sq_lsn_to_db(p->confirmed_flush));
    if ((rc = sq_run(s, st, err, "saving the pipeline progress")))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

static int
sq_add_table(state_store_t *base, uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    char what[64];
    int rc;
    if ((rc = state_check_table_names(relid, nsp, name, err)))
        return rc;
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_ADD_TABLE, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_text(st, 2, nsp, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, phase_name(PH_INIT), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, wr_wall_ms());
    snprintf(what, sizeof(what), "adding table %u", relid);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

static int
sq_add_tables(state_store_t *base, const state_new_table_t *t, size_t n, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    int64_t now = wr_wall_ms();
    sqlite3_stmt *st;
    char what[64];
    int rc;
    for (size_t i = 0; i < n; i++) {
        if ((rc = state_check_table_names(t[i].relid, t[i].nsp, t[i].name, err)) ||
            (rc = state_check_mapping(t[i].relid, t[i].dest_name, err)))
            return rc;
    }
    if ((rc = sq_begin(s, err)))
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (!(st = sq_stmt(s, SQ_ADD_TABLE, err)))
            return sq_abort(s, WR_ESTATE);
        sqlite3_bind_int64(st, 1, t[i].relid);
        sqlite3_bind_text(st, 2, t[i].nsp, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, t[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, phase_name(PH_INIT), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, now);
        snprintf(what, sizeof(what), "adding table %u", t[i].relid);
        if ((rc = sq_run(s, st, err, what)))
            return sq_abort(s, rc);
        if (!(st = sq_stmt(s, SQ_PUT_MAPPING, err)))
            return sq_abort(s, WR_ESTATE);
        sqlite3_bind_int64(st, 1, t[i].relid);
        sqlite3_bind_text(st, 2, t[i].dest_name, -1, SQLITE_STATIC);
        snprintf(what, sizeof(what), "saving the mapping of table %u", t[i].relid);
        if ((rc = sq_run(s, st, err, what)))
            return sq_abort(s, rc);
    }
    return sq_commit(s, err);
}

static int
sq_put_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t lsn, const state_copy_range_t *r,
                 size_t n, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    int64_t now = wr_wall_ms();
    sqlite3_stmt *st;
    int rc;
    if ((rc = state_check_copy_plan(relid, r, n, err)))
        return rc;
    if ((rc = sq_begin(s, err)))
        return rc;
    if ((rc = sq_run_relid(s, SQ_DEL_PARTITIONS, relid, err, "replacing a copy plan")))
        return sq_abort(s, rc);
    for (size_t i = 0; i < n; i++) {
        if (!(st = sq_stmt(s, SQ_PUT_RANGE, err)))
            return sq_abort(s, WR_ESTATE);
        sqlite3_bind_int64(st, 1, relid);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        sqlite3_bind_int64(st, 3, r[i].leaf);
        sqlite3_bind_int64(st, 4, r[i].first_page);
        sqlite3_bind_int64(st, 5, r[i].end_page);
        sqlite3_bind_int64(st, 6, sq_lsn_to_db(lsn));
        sqlite3_bind_int64(st, 7, r[i].done ? 1 : 0);
        sqlite3_bind_int64(st, 8, (int64_t)r[i].rows);
        sqlite3_bind_int64(st, 9, now);
        if ((rc = sq_run(s, st, err, "saving a copy plan")))
            return sq_abort(s, rc);
    }
    return sq_commit(s, err);
}

static int
sq_copy_range_done(state_store_t *base, uint32_t relid, uint32_t part, uint64_t rows, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    int rc;
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_RANGE_DONE, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, part);
    sqlite3_bind_int64(st, 3, (int64_t)rows);
    sqlite3_bind_int64(st, 4, wr_wall_ms());
    if ((rc = sq_run(s, st, err, "marking a copy range done")))
        return sq_abort(s, rc);
    if (sqlite3_changes(s->db) != 1)
        return sq_abort(s, state_err_no_range(err, relid, part));
    return sq_commit(s, err);
}

static int
sq_get_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t *lsn, state_copy_range_t **out,
                 size_t *n, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_GET_RANGES, err);
    state_copy_range_t *r = NULL;
    size_t cap = 0, k = 0;
    int step;
    *out = NULL;
    *n = 0;
    *lsn = 0;
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (k == cap) {
            state_copy_range_t *g;
            cap = cap ? cap * 2 : 16;
            if (!(g = realloc(r, cap * sizeof(*r)))) {
                free(r);
                sq_release(st);
                return wr_err_set(err, WR_ENOMEM, "out of memory reading a copy plan");
            }
            r = g;
        }
        r[k].leaf = (uint32_t)sqlite3_column_int64(st, 1);
        r[k].first_page = (uint32_t)sqlite3_column_int64(st, 2);
        r[k].end_page = (uint32_t)sqlite3_column_int64(st, 3);
        *lsn = sq_lsn_from_db(sqlite3_column_int64(st, 4));
        r[k].done = sqlite3_column_int64(st, 5) != 0;
        r[k].rows = (uint64_t)sqlite3_column_int64(st, 6);
        k++;
    }
    if (step != SQLITE_DONE) {
        free(r);
        sq_fail(s, err, "reading the copy plan of table %u", relid);
        sq_release(st);
        *lsn = 0;
        return WR_ESTATE;
    }
    sq_release(st);
    *out = r;
    *n = k;
    return 0;
}

static int
sq_remove_table(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    static const int ids[] = {SQ_DEL_HISTORY,    SQ_DEL_SCHEMA_COLS, SQ_DEL_SCHEMAS, SQ_DEL_MAPPING,
                              SQ_DEL_PARTITIONS, SQ_DEL_ERRORS,      SQ_DEL_TABLE};
    sq_store_t *s = (sq_store_t *)base;
    char what[64];
    size_t i;
    int rc;
    snprintf(what, sizeof(what), "removing table %u", relid);
    if ((rc = sq_begin(s, err)))
        return rc;
    for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        if ((rc = sq_run_relid(s, ids[i], relid, err, what)))
            return sq_abort(s, rc);
    return sq_commit(s, err);
}

/* Fills t from a row of SQ_TABLE_COLS. */
static int
sq_read_table(sq_store_t *s, sqlite3_stmt *st, state_table_t *t, wr_err_t *err)
{
    const char *phase = (const char *)sqlite3_column_text(st, 3);
    WR_UNUSED(s);
    memset(t, 0, sizeof(*t));
    t->relid = (uint32_t)sqlite3_column_int64(st, 0);
    sq_col_text(st, 1, t->nsp, sizeof(t->nsp));
    sq_col_text(st, 2, t->name, sizeof(t->name));
    if (phase_parse(phase, &t->phase) != 0)
        return wr_err_set(err, WR_ESTATE, "state.db holds an unknown phase \"%.32s\" for table %u",
                          phase ? phase : "", t->relid);
    t->lsn = sq_lsn_from_db(sqlite3_column_int64(st, 4));
    t->attempts = (uint32_t)sqlite3_column_int64(st, 5);
    sq_col_text(st, 6, t->err_kind, sizeof(t->err_kind));
    sq_col_text(st, 7, t->err_msg, sizeof(t->err_msg));
    sq_col_text(st, 8, t->err_hint, sizeof(t->err_hint));
    t->updated_at_ms = sqlite3_column_int64(st, 9);
    return 0;
}

static int
sq_get_table(state_store_t *base, uint32_t relid, state_table_t *out, bool *found, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_GET_TABLE, err);
    int rc = 0, step;
    *found = false;
    memset(out, 0, sizeof(*out));
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        rc = sq_read_table(s, st, out, err);
        *found = rc == 0;
    } else if (step != SQLITE_DONE) {
        rc = sq_fail(s, err, "reading table %u", relid);
    }
    sq_release(st);
    return rc;
}

static int
sq_list_tables(state_store_t *base, state_table_t **out, size_t *n, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_LIST_TABLES, err);
    state_table_t *v = NULL;
    size_t cap = 0, len = 0;
    int rc = 0, step;
    *out = NULL;
    *n = 0;
    if (!st)
        return WR_ESTATE;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            state_table_t *nv = realloc(v, ncap * sizeof(*v));
            if (!nv) {
                rc = wr_err_set(err, WR_ENOMEM, "out of memory listing tables");
                break;
            }
            v = nv;
            cap = ncap;
        }
        if ((rc = sq_read_table(s, st, &v[len], err)))
            break;
        len++;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = sq_fail(s, err, "listing tables");
    sq_release(st);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n = len;
    return 0;
}

static int
sq_set_phase(state_store_t *base, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
             const char *err_kind, const char *err_msg, const char *err_hint, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    state_table_t t; /* for the stored (cut) error fields */
    sqlite3_stmt *st;
    int64_t now = wr_wall_ms();
    char what[96];
    int rc;

    if ((rc = state_check_phase(relid, phase, err)))
        return rc;
    state_cut_errors(&t, phase, err_kind, err_msg, err_hint);
    snprintf(what, sizeof(what), "setting phase of table %u to \"%s\"", relid, phase_name(phase));
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_PUSH_HISTORY, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, now);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    if (sqlite3_changes(s->db) == 0)
        return sq_abort(s, state_err_no_table(err, "setting phase", relid));
    if (!(st = sq_stmt(s, SQ_SET_PHASE, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_text(st, 2, phase_name(phase), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, sq_lsn_to_db(lsn));
    sqlite3_bind_text(st, 4, t.err_kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, t.err_msg, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, t.err_hint, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, now);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    if (phase == PH_ERRORED) {
        /* the log keeps the full text */
        if (!(st = sq_stmt(s, SQ_ADD_ERROR, err)))
            return sq_abort(s, WR_ESTATE);
        sqlite3_bind_int64(st, 1, relid);
        sqlite3_bind_text(st, 2, err_kind ? err_kind : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, err_msg ? err_msg : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, err_hint ? err_hint : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, now);
        if ((rc = sq_run(s, st, err, what)))
            return sq_abort(s, rc);
    }
    return sq_commit(s, err);
}

static int
sq_set_attempts(state_store_t *base, uint32_t relid, uint32_t attempts, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    char what[64];
    int rc;
    snprintf(what, sizeof(what), "setting attempts of table %u", relid);
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_SET_ATTEMPTS, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, attempts);
    sqlite3_bind_int64(st, 3, wr_wall_ms());
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    if (sqlite3_changes(s->db) == 0)
        return sq_abort(s, state_err_no_table(err, "setting attempts", relid));
    return sq_commit(s, err);
}

static int
sq_rollback_phase(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st, *up;
    int64_t id;
    char what[64];
    int rc, step;

    snprintf(what, sizeof(what), "rolling back the phase of table %u", relid);
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_LAST_HISTORY, err)) || !(up = sq_stmt(s, SQ_SET_PHASE, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        sq_release(st);
        return sq_abort(s, state_err_no_history(err, relid));
    }
    if (step != SQLITE_ROW) {
        sq_fail(s, err, "%s", what);
        sq_release(st);
        return sq_abort(s, WR_ESTATE);
    }
    /* copy the history row into the table row; SQLITE_TRANSIENT: st is reset below */
    id = sqlite3_column_int64(st, 0);
    sqlite3_bind_int64(up, 1, relid);
    sqlite3_bind_value(up, 2, sqlite3_column_value(st, 1));
    sqlite3_bind_int64(up, 3, sqlite3_column_int64(st, 2));
    sqlite3_bind_value(up, 4, sqlite3_column_value(st, 3));
    sqlite3_bind_value(up, 5, sqlite3_column_value(st, 4));
    sqlite3_bind_value(up, 6, sqlite3_column_value(st, 5));
    sqlite3_bind_int64(up, 7, wr_wall_ms());
    sq_release(st);
    if ((rc = sq_run(s, up, err, what)))
        return sq_abort(s, rc);
    if (!(st = sq_stmt(s, SQ_DEL_HISTORY_ID, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, id);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

static int
sq_prev_phase(state_store_t *base, uint32_t relid, wr_phase_t *phase, wr_lsn_t *lsn, bool *found,
              wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_LAST_HISTORY, err);
    const char *name;
    int step, rc = 0;

    *found = false;
    *phase = PH_INIT;
    *lsn = 0;
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        name = (const char *)sqlite3_column_text(st, 1);
        if (phase_parse(name, phase) != 0)
            rc = wr_err_set(err, WR_ESTATE,
                            "state.db holds an unknown phase \"%.32s\" in the history of table %u",
                            name ? name : "", relid);
        *lsn = sq_lsn_from_db(sqlite3_column_int64(st, 2));
        *found = rc == 0;
    } else if (step != SQLITE_DONE) {
        rc = sq_fail(s, err, "reading the phase history of table %u", relid);
    }
    sq_release(st);
    return rc;
}

static int
sq_history_len(state_store_t *base, uint32_t relid, size_t *n, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_HISTORY_LEN, err);
    int rc = 0;
    *n = 0;
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    if (sqlite3_step(st) == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(st, 0);
    else
        rc = sq_fail(s, err, "counting the phase history of table %u", relid);
    sq_release(st);
    return rc;
}

static int
sq_put_schema(state_store_t *base, const wr_schema_t *schema, wr_lsn_t lsn, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    char what[96], rid[2];
    uint16_t i;
    int rc;

    if ((rc = state_check_schema(schema, err)))
        return rc;
    snprintf(what, sizeof(what), "saving the schema of table %u at " WR_LSN_FMT, schema->relid,
             WR_LSN_ARGS(lsn));
    rid[0] = schema->replident;
    rid[1] = '\0';
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_DEL_SCHEMA_VERSION_COLS, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, schema->relid);
    sqlite3_bind_int64(st, 2, sq_lsn_to_db(lsn));
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    if (!(st = sq_stmt(s, SQ_DEL_SCHEMA_VERSION, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, schema->relid);
    sqlite3_bind_int64(st, 2, sq_lsn_to_db(lsn));
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    if (!(st = sq_stmt(s, SQ_PUT_SCHEMA, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, schema->relid);
    sqlite3_bind_int64(st, 2, sq_lsn_to_db(lsn));
    sqlite3_bind_text(st, 3, schema->nsp ? schema->nsp : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, schema->name ? schema->name : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, rid, -1, SQLITE_STATIC);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    for (i = 0; i < schema->ncols; i++) {
        const wr_column_t *c = &schema->cols[i];
        if (!(st = sq_stmt(s, SQ_PUT_COLUMN, err)))
            return sq_abort(s, WR_ESTATE);
        sqlite3_bind_int64(st, 1, schema->relid);
        sqlite3_bind_int64(st, 2, sq_lsn_to_db(lsn));
        sqlite3_bind_int64(st, 3, (int64_t)i + 1);
        sqlite3_bind_text(st, 4, c->name ? c->name : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, c->type_oid);
        sqlite3_bind_int64(st, 6, c->typmod);
        sqlite3_bind_int(st, 7, c->is_key ? 1 : 0);
        sqlite3_bind_int(st, 8, c->not_null ? 1 : 0);
        if ((rc = sq_run(s, st, err, what)))
            return sq_abort(s, rc);
    }
    return sq_commit(s, err);
}

/* Reads the columns of schema version (relid, lsn) into a new schema. */
static int
sq_load_schema(sq_store_t *s, uint32_t relid, int64_t dblsn, const char *nsp, const char *name,
               char replident, wr_schema_t **out, wr_err_t *err)
{
    sqlite3_stmt *st = sq_stmt(s, SQ_SCHEMA_COLS, err);
    wr_column_t *cols = NULL;
    size_t n = 0, cap = 0, i;
    wr_schema_t *sc = NULL;
    int rc = 0, step;

    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, dblsn);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *cname = (const char *)sqlite3_column_text(st, 0);
        if (n == UINT16_MAX) {
            rc = wr_err_set(err, WR_ESTATE, "state.db holds more than %u columns for table %u",
                            UINT16_MAX, relid);
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            wr_column_t *nc = realloc(cols, ncap * sizeof(*cols));
            if (!nc) {
                rc = wr_err_set(err, WR_ENOMEM, "out of memory reading a schema");
                break;
            }
            cols = nc;
            cap = ncap;
        }
        memset(&cols[n], 0, sizeof(cols[n]));
        cols[n].name = wr_strdup(cname ? cname : "");
        if (!cols[n].name) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory reading a schema");
            break;
        }
        cols[n].type_oid = (uint32_t)sqlite3_column_int64(st, 1);
        cols[n].typmod = (int32_t)sqlite3_column_int64(st, 2);
        cols[n].is_key = sqlite3_column_int(st, 3) != 0;
        cols[n].not_null = sqlite3_column_int(st, 4) != 0;
        n++;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = sq_fail(s, err, "reading the schema of table %u", relid);
    sq_release(st);
    if (rc == 0) {
        sc = wr_schema_new(relid, nsp, name, (uint16_t)n);
        if (!sc)
            rc = wr_err_set(err, WR_ENOMEM, "out of memory reading a schema");
    }
    if (rc == 0) {
        sc->replident = replident;
        for (i = 0; i < n; i++) {
            sc->cols[i] = cols[i];
            cols[i].name = NULL; /* moved */
        }
        *out = sc;
    }
    for (i = 0; i < n; i++)
        free(cols[i].name);
    free(cols);
    return rc;
}

static int
sq_get_schema(state_store_t *base, uint32_t relid, wr_lsn_t at, wr_schema_t **out,
              wr_lsn_t *version_lsn, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_FIND_SCHEMA, err);
    char nsp[256], name[256];
    const char *rid;
    char replident;
    int64_t dblsn;
    int step;

    *out = NULL;
    if (version_lsn)
        *version_lsn = 0;
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, sq_lsn_to_db(at));
    step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        sq_release(st);
        return 0;
    }
    if (step != SQLITE_ROW) {
        sq_fail(s, err, "reading the schema of table %u", relid);
        sq_release(st);
        return WR_ESTATE;
    }
    dblsn = sqlite3_column_int64(st, 0);
    sq_col_text(st, 1, nsp, sizeof(nsp));
    sq_col_text(st, 2, name, sizeof(name));
    rid = (const char *)sqlite3_column_text(st, 3);
    replident = rid && rid[0] ? rid[0] : 'd';
    sq_release(st);
    if (version_lsn)
        *version_lsn = sq_lsn_from_db(dblsn);
    return sq_load_schema(s, relid, dblsn, nsp, name, replident, out, err);
}

static int
sq_put_mapping(state_store_t *base, uint32_t relid, const char *dest_name, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    char what[64];
    int rc;
    if ((rc = state_check_mapping(relid, dest_name, err)))
        return rc;
    snprintf(what, sizeof(what), "saving the mapping of table %u", relid);
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_PUT_MAPPING, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_text(st, 2, dest_name, -1, SQLITE_STATIC);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

static int
sq_get_mapping(state_store_t *base, uint32_t relid, char *buf, size_t len, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st = sq_stmt(s, SQ_GET_MAPPING, err);
    int rc, step;
    if ((rc = state_check_mapping_buffer(relid, buf, len, err)))
        return rc;
    if (!st)
        return WR_ESTATE;
    sqlite3_bind_int64(st, 1, relid);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        rc = state_copy_mapping(relid, (const char *)sqlite3_column_text(st, 0), buf, len, err);
    else if (step != SQLITE_DONE)
        rc = sq_fail(s, err, "reading the mapping of table %u", relid);
    sq_release(st);
    return rc;
}

static int
sq_get_flag(state_store_t *base, const char *name, int64_t *value, bool *found, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    int rc;

    *value = 0;
    *found = false;
    if ((rc = state_check_flag_name(name, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_GET_FLAG, err)))
        return WR_ESTATE;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *value = sqlite3_column_int64(st, 0);
        *found = true;
    } else if (rc != SQLITE_DONE) {
        sq_fail(s, err, "reading the pipeline flag \"%s\"", name);
        sq_release(st);
        return WR_ESTATE;
    }
    sq_release(st);
    return 0;
}

static int
sq_set_flag(state_store_t *base, const char *name, int64_t value, wr_err_t *err)
{
    sq_store_t *s = (sq_store_t *)base;
    sqlite3_stmt *st;
    char what[96];
    int rc;

    if ((rc = state_check_flag_name(name, err)))
        return rc;
    if ((rc = sq_begin(s, err)))
        return rc;
    if (!(st = sq_stmt(s, SQ_SET_FLAG, err)))
        return sq_abort(s, WR_ESTATE);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, value);
    sqlite3_bind_int64(st, 3, wr_wall_ms());
    snprintf(what, sizeof(what), "saving the pipeline flag \"%s\"", name);
    if ((rc = sq_run(s, st, err, what)))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

static void
sq_close(state_store_t *base)
{
    sq_store_t *s = (sq_store_t *)base;
    int i;
    if (!s)
        return;
    for (i = 0; i < SQ_NSTMT; i++)
        sqlite3_finalize(s->stmt[i]);
    sqlite3_close(s->db);
    free(s);
}

static const state_ops_t sq_ops = {
    .get_progress = sq_get_progress,
    .set_progress = sq_set_progress,
    .add_tables = sq_add_tables,
    .put_copy_plan = sq_put_copy_plan,
    .copy_range_done = sq_copy_range_done,
    .get_copy_plan = sq_get_copy_plan,
    .add_table = sq_add_table,
    .remove_table = sq_remove_table,
    .get_table = sq_get_table,
    .list_tables = sq_list_tables,
    .set_phase = sq_set_phase,
    .set_attempts = sq_set_attempts,
    .rollback_phase = sq_rollback_phase,
    .history_len = sq_history_len,
    .prev_phase = sq_prev_phase,
    .put_schema = sq_put_schema,
    .get_schema = sq_get_schema,
    .put_mapping = sq_put_mapping,
    .get_mapping = sq_get_mapping,
    .close = sq_close,
    .get_flag = sq_get_flag,
    .set_flag = sq_set_flag,
};

/* ------------------------------------------------------------------------------------ */
/* open and migrate                                                                     */
/* ------------------------------------------------------------------------------------ */

/* Runs a one-row, one-column pragma and returns its text (in buf) or integer (in *num). */
static int
sq_pragma(sq_store_t *s, const char *sql, char *buf, size_t len, int64_t *num, wr_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return sq_fail(s, err, "running \"%s\"", sql);
    if (sqlite3_step(st) == SQLITE_ROW) {
        if (buf)
            sq_col_text(st, 0, buf, len);
        if (num)
            *num = sqlite3_column_int64(st, 0);
    } else {
        rc = sq_fail(s, err, "running \"%s\"", sql);
    }
    sqlite3_finalize(st);
    return rc;
}

static int
sq_migrate(sq_store_t *s, wr_err_t *err)
{
    int64_t version = 0;
    char sql[64];
    int rc, v;

    if ((rc = sq_begin(s, err)))
        return rc;
    if ((rc = sq_pragma(s, "PRAGMA user_version", NULL, 0, &version, err)))
        return sq_abort(s, rc);
    if (version > STATE_SCHEMA_VERSION || version < 0) {
        wr_err_set(err, WR_ESTATE,
                   "state.db was written by a newer walrelay (schema %lld, this build knows %d)",
                   (long long)version, STATE_SCHEMA_VERSION);
        wr_err_hint(err, "run the walrelay version that wrote it (or a newer one), or restore a "
                         "state.db backup taken before the upgrade");
        return sq_abort(s, WR_ESTATE);
    }
    for (v = (int)version + 1; v <= STATE_SCHEMA_VERSION; v++) {
        char what[64];
        snprintf(what, sizeof(what), "migrating state.db to schema %d", v);
        if ((rc = sq_exec(s, sq_migrations[v], err, what)))
            return sq_abort(s, rc);
    }
    if (version == STATE_SCHEMA_VERSION)
        return sq_abort(s, 0); /* nothing to do: end the read transaction */
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", STATE_SCHEMA_VERSION);
    if ((rc = sq_exec(s, sql, err, "setting the state.db schema version")))
        return sq_abort(s, rc);
    return sq_commit(s, err);
}

int
state_open_sqlite(const char *path, state_store_t **out, wr_err_t *err)
{
    sq_store_t *s;
    char mode[32];
    int rc;

    *out = NULL;
    if (!path)
        return wr_err_set(err, WR_EINVAL, "opening the state store: no path");
    s = calloc(1, sizeof(*s));
    if (!s)
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the state store");
    s->base.ops = &sq_ops;
    rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        wr_err_set(err, WR_ESTATE, "opening state store \"%s\": %s", path,
                   s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        if (s->db)
            sq_hint(s, err);
        sq_close(&s->base);
        return WR_ESTATE;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, 10000);
    if ((rc = sq_pragma(s, "PRAGMA journal_mode = WAL", mode, sizeof(mode), NULL, err)))
        goto fail;
    if (strcmp(mode, "wal") != 0) {
        rc = wr_err_set(err, WR_ESTATE,
                        "state store \"%s\" cannot use WAL mode (journal mode is "
                        "\"%s\")",
                        path, mode);
        wr_err_hint(err, "put the state directory on a local file system");
        goto fail;
    }
    if ((rc = sq_exec(s, "PRAGMA synchronous = FULL", err, "setting synchronous = FULL")) ||
        (rc = sq_exec(s, "PRAGMA foreign_keys = ON", err, "enabling foreign keys")) ||
        (rc = sq_migrate(s, err)))
        goto fail;
    *out = &s->base;
    return 0;
fail:
    wr_err_prefix(err, "state store \"%s\": ", path);
    /* (issue 12) a damaged file is not retried by a service manager: a person decides */
    if ((sqlite3_errcode(s->db) & 0xff) == SQLITE_CORRUPT ||
        (sqlite3_errcode(s->db) & 0xff) == SQLITE_NOTADB)
        rc = err->code = WR_ECONFIG;
    sq_close(&s->base);
    return rc;
}
