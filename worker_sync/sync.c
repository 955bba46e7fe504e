/*
 * sync.c - walrelay-sync: copies one table under its own slot's snapshot, then streams
 * that slot until the apply worker can take the table over (PostgreSQL's tablesync).
 *
 * NOTES: runs as `walrelay-sync DIR RELID`, one process per table being synchronised,
 * spawned by the supervisor with its channel on fd 3; one per table at a time, also
 * across a killed supervisor (byte RELID of DIR/workers.lock, taken before hello and
 * held until exit: wk_lock_role). It owns the replication slot
 * walrelay_<pipeline>_s<relid> and the destination stream "sync_<relid>". It never
 * writes state.db: every phase change is a set_phase request that the supervisor
 * validates, persists, and only then acks; this worker acts on a phase only after the
 * ack. It persists nothing itself except destination data and, in the same destination
 * transaction, the resume key of its catch-up stream.
 *
 * PHASES THIS WORKER OWNS
 *
 *   Init / DataSync -> DataSync -> FinishedCopy(X) -> SyncWait(X) ... Catchup(L) -> SyncDone(S)
 *
 * (Catchup is granted by the apply worker; Ready is set by the apply worker; Errored can be
 * requested by anyone.) Per phase, on start (the phase comes from the handshake's
 * "tables" message, i.e. from state.db):
 *
 *   Init, DataSync   The copy. Request DATASYNC (DataSync -> DataSync is legal: a crash
 *                    mid-copy redoes the copy). Drop the slot if it exists (a previous
 *                    attempt's), BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ on a
 *                    replication connection, CREATE_REPLICATION_SLOT ... (SNAPSHOT 'use')
 *                    giving the consistent point X, read the schema in that snapshot, send
 *                    it to the supervisor (schema message, lsn X), ensure the destination
 *                    table, then in destination transactions: truncate + forget the sync
 *                    stream's key + first batch; then one transaction per batch of
 *                    cfg.copy_batch_rows rows. COMMIT the source transaction, request
 *                    FINISHEDCOPY(X).
 *                    Persisted: DataSync before any work; destination batches as they
 *                    commit (worthless until FinishedCopy: a restart truncates them);
 *                    FinishedCopy(X) after the last batch is durable.
 *                    Restart action: redo the copy from scratch (the slot is dropped first).
 *                    (issue 11) A destination that copies by range (sqlite) takes the
 *                    parallel copy below instead: the slot's snapshot exported and held by
 *                    the supervisor, ranges of the table's pages read by several
 *                    connections, one destination transaction per range, the plan and
 *                    each committed range persisted (copy_plan, copy_range_done).
 *                    Restart action there: when the plan, the held snapshot and the slot
 *                    are all still there (a crash of this process), copy only the ranges
 *                    the destination has not committed; otherwise from scratch.
 *   FinishedCopy     Request SYNCWAIT(X). Restart action: the same (nothing else to do).
 *   SyncWait         Wait on the channel for table_state Catchup(L) (or Errored -> exit 0,
 *                    or Init -> start over). Persisted by the supervisor: SyncWait(X).
 *                    Restart action: wait again.
 *   Catchup(L)       START_REPLICATION on its own slot from 0/0 (the server resumes at the
 *                    slot's confirmed_flush), apply only this relid's changes, skipping
 *                    resume keys <= last_key("sync_<relid>"), one destination transaction
 *                    per source transaction, committed with the key of its last change.
 *                    Status updates report flush = end LSN of the last source commit whose
 *                    effects are durable (or, outside a transaction, the keepalive's WAL
 *                    end), so the slot's confirmed_flush is always <= what the destination
 *                    holds. current = end LSN of the last processed commit, or the WAL end
 *                    of a keepalive received outside a transaction. As soon as
 *                    current >= L: request SYNCDONE(current), drop the slot, forget the
 *                    stream's key, exit 0.
 *                    Persisted: destination data + key per source transaction; the slot's
 *                    confirmed_flush via status updates; SyncDone(S).
 *                    Restart action: resume streaming (keys already applied are skipped);
 *                    if confirmed_flush >= L already, go straight to SyncDone.
 *   SyncDone, Ready  Drop the slot if it still exists (a crash after SyncDone was
 *                    persisted), forget the stream's key, exit 0.
 *   Errored          Exit 0 (the apply worker drops inactive sync slots of errored tables).
 *
 * Slot lifetime. During the copy the slot is disposable: every exit path of the copy
 * (error, stop, signal, supervisor gone) drops it, and the next start drops it anyway.
 * From FinishedCopy on the slot is the only way to resume, so exits with code 1 and
 * stops keep it; only Errored (after the ack) and SyncDone (after the ack) drop it. If a
 * set_phase request itself fails, the slot is kept, because the request may have been
 * persisted with its ack lost.
 *
 * Errors. Exit 1 (restart with backoff; the supervisor escalates to Errored after
 * cfg.worker_max_failures failures in a row) for everything that may go away on a
 * retry: connections lost (WR_ECONN, WR_EEOF), local I/O and destination failures
 * (WR_EIO, WR_EDEST, WR_ENOMEM), state store refusals (WR_ESTATE), protocol surprises
 * from the server (WR_EPROTO from the stream). Errored + exit 2 for what a retry would
 * only repeat, because it is in the data or the table: the table is gone
 * ("table_missing"), a copied line does not parse against the schema ("copy_parse"), the
 * destination refuses a value or a change with WR_EINVAL / WR_EPROTO / WR_EUNSUPPORTED
 * ("dest_refused"), the table's columns changed under the handoff ("schema_changed"), the
 * slot disappeared or was invalidated during Catchup ("slot_missing", "slot_invalidated"),
 * anything else reported as WR_EUNSUPPORTED in the copy or the stream ("unsupported").
 * Exit 2 without Errored for pipeline-wide misconfiguration (WR_ECONFIG, WR_ESOURCE).
 * A connection problem (WR_ECONN) during the copy (Init, DataSync) first sets Errored with
 * kind "transient", then exits 1: the supervisor retries the table after
 * table_error_retry_delay_ms (syw_report_transient; docs/lifecycle.md). Later phases
 * keep their slot and just exit 1. Before either, a connection error is looked at once
 * more (common/srcprobe.h, issue 12): if the source does not answer at all, the worker
 * exits 4 (WR_EXIT_SOURCE_DOWN) in any phase, without Errored: the supervisor starts it
 * again for as long as the outage lasts; if it answers but refuses us, exit 2. Every
 * error exit sends ["worker_error", ...] with the error first.
 *
 * Raw copy (issue 7). A destination with write_copy (postgres) gets each line exactly as
 * the source's COPY TO STDOUT sent it, without parsing (syw_copy_raw), in one destination
 * transaction (progress is reported every copy_batch_rows rows); before its commit the
 * destination's copy_done runs (the postgres destination builds the primary key there,
 * once the rows are in). Where the destination's copy_binary says so, the COPY asks for
 * the binary format (the postgres destination: built-in types, same major version) and
 * each CopyData message goes through as it came; copy_bin_scan (common/copytext.c)
 * counts the rows and checks the format's framing (not the values: the target does).
 *
 * Metrics (proto/wkmetrics.h). COPY and stream bytes received, copy batches and catch-up
 * transactions (batches_total, batch and destination commit timings), the changes the
 * catch-up applied (events_total, counted when their destination transaction commits)
 * and status updates go to the supervisor as ["worker_metrics", ...] deltas with the copy
 * progress and from the catch-up loop, at most once a second, and once more at exit.
 * Rows copied come from ["copy_progress", ...] as before.
 *
 * Copy batching. PQgetCopyData returns one line per call and copy_parse_line reuses its
 * buffer for every line, so each parsed row's values are copied into a per-batch arena
 * (one growing char buffer, emptied after every batch, never freed until exit) and the
 * row/value arrays are allocated once: no allocation per row. A batch ends at
 * cfg.copy_batch_rows rows or when the arena would pass cfg.batch_max_bytes, so memory
 * stays bounded with wide rows. Value pointers are resolved from arena offsets just
 * before write_rows, because the arena may move while it grows.
 *
 * Schema. Read in the copy snapshot: columns attnum > 0, not dropped, not generated, in
 * attnum order; key = primary key, else the replica identity index (the contract's
 * choice). Relation messages of the table are compared with it (names, types, typmods,
 * replica identity), where the key flags are compared with what pgoutput derives from
 * REPLICA IDENTITY (FULL: every column; DEFAULT: the primary key; INDEX: that index;
 * NOTHING: none), not with the schema's key. Any difference means the table changed after
 * the copy's snapshot: catch-up does not alter the destination, it requests INIT and the
 * dispatcher copies the table again (syw_catchup_recopy), which follows every kind of
 * change exactly; so does a destination table that no longer matches when catch-up
 * resumes after a restart. A publication column list, or a difference that survives
 * three copies in this process, is Errored "schema_changed". With the schema the copy
 * reads the catalog facts (syw_load_meta: relfilenode, per attribute number replicated /
 * dropped / generated and the pg_attribute xmin) and records them as the table's schema
 * version (X, 0) in the copy's first destination transaction (reset_table, which also
 * creates the table again when its columns, types or key differ); the apply worker
 * compares later Relation messages with them (docs/destinations.md "Schema changes").
 *
 * The schema sent to the supervisor and registered for catch-up carries those Relation
 * key flags (syw_stream_schema), the same the apply worker registers; the copy-time
 * schema (primary key) only creates the destination table, whose PRIMARY KEY is then the
 * source's (docs/destinations.md, keying).
 *
 * Partitioned tables. With publish_via_partition_root the publication lists the root
 * (relkind 'p'), which COPY refuses: it is copied with COPY (SELECT cols FROM root), which
 * reads every partition, and its changes arrive under the root's relid. Without it the
 * leaves are listed and copied one by one like plain tables.
 *
 * Row filters (PostgreSQL 15, FOR TABLE t WHERE (...)). The stream carries only the rows
 * the filter accepts (pgoutput turns an UPDATE that moves a row into the filter into an
 * INSERT, out of it into a DELETE), so the copy must hold exactly those rows: the filter
 * is read in the copy's snapshot (syw_load_row_filter, pg_get_expr of
 * pg_publication_rel.prqual, none when the publication is FOR ALL TABLES or publishes the
 * table's schema, as pgoutput decides) and the table copied with COPY (SELECT cols FROM
 * ONLY t WHERE (filter)) (syw_copy_statement). With publish_via_partition_root the filter
 * is the root's and covers every partition. A filter changed later with ALTER
 * PUBLICATION is not applied to rows already copied (PostgreSQL's subscriber behaves the
 * same): `walrelay resync` copies the table again under the new one.
 *
 * Column lists (FOR TABLE t (a, b)) are refused at start by the preflight (the table goes
 * Errored "unsupported"; supervisor/preflight.c). A list added while running is caught by
 * the publication refresh, and before that by the Relation check here or in the apply
 * worker ("schema_changed").
 *
 * EXAMPLE FLOWS (X = consistent point, L = Catchup LSN granted by apply)
 *
 *   A fresh copy:
 *     sync:  tables says Init -> set DATASYNC (ack) -> create slot, X = 0/5000
 *     sync:  schema (lsn 0/5000) -> COPY 1,000,000 rows in 100 batches -> COMMIT
 *     sync:  set FINISHEDCOPY(0/5000) (ack) -> set SYNCWAIT(0/5000) (ack)
 *     apply: at a commit with end 0/7000: set CATCHUP(max(0/5000, 0/7000) = 0/7000),
 *            stops reading its stream
 *     sync:  table_state CATCHUP(0/7000); START_REPLICATION from the slot (0/5000);
 *            applies the table's rows of transactions committed between 0/5000 and
 *            0/7000; after a commit with end 0/7100 >= 0/7000: set SYNCDONE(0/7100),
 *            drops the slot, exit 0
 *     apply: resumes; applies the table's changes of transactions with final_lsn
 *            >= 0/7100 (earlier ones are in the destination already), sets READY once
 *            its durable flush >= 0/7100.
 *   (If apply was behind, e.g. at 0/4000, it grants CATCHUP(0/5000); the slot's
 *   confirmed_flush is already 0/5000, so sync goes straight to SYNCDONE(0/5000).)
 *
 *   A restart in Catchup:
 *     sync:  streaming with L = 0/9000; committed source transaction 0/8000 (end 0/8100)
 *            to the destination with key (0/8000, 3) and reported flush 0/7F00 only;
 *            midway through transaction 0/8200 (4 of its changes written to an open
 *            destination transaction) it is killed -9.
 *     sync:  restarted; tables says Catchup(0/9000); the slot's confirmed_flush is 0/7F00
 *            < L; last_key("sync_<relid>") = (0/8000, 3); START_REPLICATION resumes at
 *            0/7F00: transaction 0/8000 is replayed and all its changes skipped (keys
 *            <= (0/8000, 3)); transaction 0/8200 is applied in full (its partial
 *            destination transaction was rolled back by the crash); ... a keepalive
 *            outside a transaction with WAL end 0/9100 >= L: set SYNCDONE(0/9100), drop
 *            the slot, exit 0.
 *   (A SIGTERM instead of the kill commits the open destination transaction with the key
 *   (0/8200, 4) and exits 0; the replay then skips exactly those four changes.)
 *
 * What lives where. The stream engine common/stream.c (stm_*, shared with
 * walrelay-apply) owns the catch-up stream's replication connection (stm_connect,
 * START_REPLICATION in stm_start), the receive step (stm_recv) and the wait (stm_wait);
 * it frames and decodes the CopyData messages, tracks the source transaction
 * (Begin/Commit, the commit-LSN check, ordinals counted over every table, overflow an
 * error), translates changes into dest_event_t with their resume key, and calls
 * syw_on_relation / syw_on_change / syw_on_commit / syw_on_keepalive here. It also sends
 * the status updates: a requested reply at once, otherwise at least every status
 * interval (min(10 s, wal_sender_timeout / 3)), from the loop and, while this process is
 * inside a destination call or otherwise away from the loop, from the engine's status
 * keeper thread; the flush they report is the one given to stm_set_flush below, never
 * ahead of the destination. This file keeps the copy, the one-table filter (syw_on_change
 * drops other relids, which the engine has counted already), the skip-by-key, the
 * destination transaction per source transaction with its BEGIN/COMMIT events, the
 * flush position and the catch-up termination (current >= L). The table's catalog
 * (columns, keys, relkind, replica identity flags, catalog facts) and the publication's
 * column list are read through common/catalog.c (cat_*), the same reads the apply
 * worker's schema comparison uses.
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/copytext.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/pgoutput.h"
#include "common/phase.h"
#include "common/repl.h"
#include "common/srcprobe.h"
#include "common/stream.h"
#include "common/schema.h"
#include "proto/wkipc.h"
#include "proto/wkmetrics.h"
#include "common/wr.h"
#include "destinations/destination.h"

/* Returned by a phase step that moved the table on: dispatch again. Steps that end the
 * process return its exit code (0, 1, 2) instead. */
#define SYW_CONTINUE (-1)

#define SYW_POLL_MS             1000
#define SYW_CHAN_CHECK_MS       100 /* longest stretch of stream reading between channel reads */
#define SYW_DEFAULT_BATCH_ROWS  10000
#define SYW_DEFAULT_BATCH_BYTES (8 * 1024 * 1024)

typedef struct syw_s {
    wr_config_t cfg;
    uint32_t relid;
    char worker[32]; /* "sync-<relid>" */
    char slot[64];   /* walrelay_<pipeline>_s<relid> */
    char stream[64]; /* sync_<relid> */
    char table[300]; /* "nsp.name", for messages */
    char relkind;    /* pg_class.relkind: 'p' (partitioned) is copied with COPY (SELECT ...) */
    /* the pipeline's destination table name (tables message), or "" */
    char dest_name[300];
    /* the publication's row filter of the table (pg_get_expr), or NULL */
    char *row_filter;
    wk_chan_t chan;
    bool chan_open;
    dest_t *dest;
    PGconn *sql;    /* plain connection: slot management, catalog reads in Catchup */
    PGconn *repl;   /* replication connection of the copy */
    stm_t *cstream; /* the catch-up stream's engine while syw_catchup runs (its connection) */
    /* latest known phase of the table: handshake, our acked requests, table_state */
    wr_phase_t phase;
    wr_lsn_t lsn;
    bool stop; /* ["stop"] arrived */
    /* schema read in the copy snapshot (or from the catalog when resuming Catchup) */
    wr_schema_t *schema;
    uint8_t *relflags;      /* per column: the key flag pgoutput's Relation message must carry */
    bool schema_registered; /* ensure_table done on this destination handle */
    bool stream_registered; /* ensure_table done with syw_stream_schema() (for changes) */
    dest_tmeta_t meta;      /* catalog facts read with the copy's schema: its version */
    int recopies;           /* copies started again in this process for a schema change */
    wkm_t metrics;          /* counts for the supervisor's metrics (proto/wkmetrics.h) */
} syw_t;

/* Values of one copy batch: rows and values allocated once, text in an arena. */
typedef struct syw_batch_s {
    uint16_t ncols;
    size_t cap;     /* rows */
    size_t n;       /* rows filled */
    wr_row_t *rows; /* cap */
    wr_val_t *vals; /* cap * ncols */
    size_t *offs;   /* cap * ncols: arena offset of each text value */
    char *arena;
    size_t alen, acap;
    size_t max_bytes; /* end the batch before the arena passes this (unless empty) */
} syw_batch_t;

static volatile sig_atomic_t syw_signalled;

static void
syw_on_signal(int sig)
{
    WR_UNUSED(sig);
    syw_signalled = 1;
}

static bool
syw_should_stop(const syw_t *w)
{
    return syw_signalled || w->stop || w->chan.stop_requested;
}

/* Channel callback: keeps the table's latest phase and notes a stop request. */
static void
syw_on_msg(const ipc_msg_t *m, void *arg)
{
    syw_t *w = arg;

    switch (m->type) {
    case IPC_TABLE_STATE:
        if (m->u.table_state.relid != w->relid)
            break;
        w->phase = m->u.table_state.phase;
        w->lsn = m->u.table_state.lsn;
        log_debug("table state phase=%s lsn=" WR_LSN_FMT, phase_name(w->phase),
                  WR_LSN_ARGS(w->lsn));
        break;
    case IPC_TABLES:
        for (uint32_t i = 0; i < m->u.tables.n; i++) {
            if (m->u.tables.tables[i].relid == w->relid) {
                w->phase = m->u.tables.tables[i].phase;
                w->lsn = m->u.tables.tables[i].lsn;
            }
        }
        break;
    case IPC_STOP:
        w->stop = true;
        break;
    default:
        log_debug("ignoring message type=%s", ipc_type_name(m->type));
        break;
    }
}

/* Exit code for an error that is not the table's fault, and logs it: 0 for WR_ESTOP (a
 * stop arrived while waiting), 2 if the configuration or the source is wrong
 * (WR_ECONFIG, WR_ESOURCE: no restart), else 1 (restart with backoff). Callers route
 * WR_EUNSUPPORTED to Errored before they get here. */
/* The last error that made syw_fail return 1 (see syw_report_transient). */
static wr_err_t syw_last_err;
/* Set once the destination gave up waiting because we were asked to stop (issue 9,
 * syw_dest_interrupted): its WR_ECONN is a stop, not a failure. */
static bool syw_dest_gave_up;

static int
syw_fail(const char *what, const wr_err_t *err)
{
    if (err->code == WR_ESTOP || (err->code == WR_ECONN && syw_dest_gave_up)) {
        log_info("%s: %s", what, err->msg);
        return WR_EXIT_OK;
    }
    log_err(LOG_LVL_ERROR, what, err);
    if (err->code == WR_ECONFIG || err->code == WR_ESOURCE)
        return WR_EXIT_CONFIG;
    syw_last_err = *err;
    wr_err_prefix(&syw_last_err, "%s: ", what);
    return WR_EXIT_ERROR;
}

/* (added for issue 3) Before exiting 1 on a connection problem (WR_ECONN: connection lost,
 * server shutting down or in recovery, too many connections) during the copy, the table
 * goes Errored with kind "transient", if the channel still works: the supervisor retries it
 * after [retry] table_error_retry_delay_ms, up to table_error_retry_max_attempts, by rolling
 * it back to DataSync. Only during the copy: there the slot is disposable (dropped on every
 * exit), while from FinishedCopy on it is the only way to resume, and an Errored table's
 * sync slot is dropped; so later phases keep exiting 1 and are restarted with backoff. */
static void
syw_report_transient(syw_t *w)
{
    wr_err_t err;

    if (syw_last_err.code != WR_ECONN || !w->chan_open || syw_should_stop(w) ||
        (w->phase != PH_INIT && w->phase != PH_DATASYNC))
        return;
    wr_err_clear(&err);
    if (wk_chan_set_phase(&w->chan, w->relid, PH_ERRORED, 0, "transient", syw_last_err.msg,
                          syw_last_err.hint[0] ? syw_last_err.hint
                                               : "retried automatically; see [retry] "
                                                 "table_error_retry_delay_ms",
                          &err) < 0) {
        log_err(LOG_LVL_WARN, "requesting phase errored (transient)", &err);
        return;
    }
    w->phase = PH_ERRORED;
    log_info("table errored (transient), the supervisor retries it table=%s", w->table);
}

/* True for destination / parser errors that a retry would only repeat: the data itself
 * is refused. WR_EDEST is not among them: the sqlite destination uses it for I/O
 * failures and for values it cannot convert alike, so it is retried (and turns into
 * Errored through the supervisor's failure count). */
static bool
syw_is_data_error(int code)
{
    return code == WR_EINVAL || code == WR_EPROTO || code == WR_EUNSUPPORTED || code == WR_EDATA;
}

/* Requests ERRORED(kind, err) and returns the exit code: 2 once acked, 1 if the request
 * failed (the table keeps its phase; the next start will meet the same problem). */
static int
syw_set_errored(syw_t *w, const char *kind, const wr_err_t *cause)
{
    wr_err_t err;

    wr_err_clear(&err);
    log_err(LOG_LVL_ERROR, kind, cause);
    if (wk_chan_set_phase(&w->chan, w->relid, PH_ERRORED, 0, kind, cause->msg, cause->hint, &err) <
        0) {
        log_err(LOG_LVL_ERROR, "requesting phase errored", &err);
        return WR_EXIT_ERROR;
    }
    w->phase = PH_ERRORED;
    log_info("table errored table=%s kind=%s", w->table, kind);
    return WR_EXIT_CONFIG;
}

static int
syw_sql_connect(syw_t *w, wr_err_t *err)
{
    if (w->sql != NULL && PQstatus(w->sql) == CONNECTION_OK)
        return 0;
    if (w->sql != NULL) {
        PQfinish(w->sql);
        w->sql = NULL;
    }
    return repl_connect(w->cfg.source_conninfo, false, w->slot, &w->sql, err);
}

/* Closes the replication connections: the catch-up stream's (stopping its status keeper)
 * and the copy's. */
static void
syw_repl_close(syw_t *w)
{
    if (w->cstream != NULL)
        stm_disconnect(w->cstream);
    if (w->repl != NULL) {
        PQfinish(w->repl);
        w->repl = NULL;
    }
}

/* Closes the replication connection (so the slot is inactive) and drops the slot.
 * Logs instead of failing: callers are on their way out. Returns 0 or the error code. */
static int
syw_drop_slot(syw_t *w)
{
    wr_err_t err;
    int rc;

    wr_err_clear(&err);
    syw_repl_close(w);
    rc = syw_sql_connect(w, &err);
    if (rc == 0)
        rc = repl_drop_slot(w->sql, w->slot, &err);
    if (rc < 0) {
        wr_err_prefix(&err, "dropping slot \"%s\": ", w->slot);
        log_err(LOG_LVL_WARN, "slot not dropped", &err);
        return rc;
    }
    log_info("slot dropped slot=%s", w->slot);
    return 0;
}

/* Forgets the sync stream's resume key in its own destination transaction. */
static int
syw_clear_stream_key(syw_t *w, wr_err_t *err)
{
    int rc;

    if ((rc = w->dest->ops->begin(w->dest, err)) < 0)
        return rc;
    if ((rc = w->dest->ops->clear_key(w->dest, w->stream, err)) < 0 ||
        (rc = w->dest->ops->commit(w->dest, w->stream, NULL, err)) < 0) {
        wr_err_t rerr;
        if (w->dest->ops->rollback(w->dest, &rerr) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &rerr);
        return rc;
    }
    return 0;
}

/* ---- the destination's waits (issue 9; dest_set_host_hooks) ---- */

static void
syw_dest_waiting(void *arg, const char *message)
{
    syw_t *w = arg;
    ipc_msg_t m;
    wr_err_t err;

    memset(&m, 0, sizeof(m));
    m.type = IPC_DEST_WAIT;
    m.u.dest_wait.message = (char *)(message ? message : "");
    if (w->chan_open && wk_chan_send(&w->chan, &m, &err) != 0)
        log_debug("cannot report the destination's wait error=\"%s\"", err.msg);
}

static bool
syw_dest_interrupted(void *arg)
{
    syw_t *w = arg;
    wr_err_t err;

    if (w->chan_open && wk_chan_poll(&w->chan, 0, &err) != 0)
        syw_dest_gave_up = true; /* the supervisor is gone */
    else if (syw_should_stop(w))
        syw_dest_gave_up = true;
    return syw_dest_gave_up;
}

static int
syw_dest_open(syw_t *w, wr_err_t *err)
{
    dest_host_hooks_t hooks = {syw_dest_waiting, syw_dest_interrupted, w};

    if (w->dest != NULL)
        return 0;
    dest_set_host_hooks(&hooks);
    return dest_open(&w->cfg, "sync", &w->dest, err);
}

static void
syw_schema_reset(syw_t *w)
{
    wr_schema_free(w->schema);
    w->schema = NULL;
    free(w->relflags);
    w->relflags = NULL;
    w->schema_registered = false;
    w->stream_registered = false;
    dest_tmeta_clear(&w->meta);
}

/* Reads the table's schema with the connection's current snapshot (inside the copy
 * transaction: the slot's snapshot). Columns: attnum > 0, not dropped, not generated,
 * in attnum order. Key: primary key columns, else the replica identity index's. Also
 * computes, per column, the key flag pgoutput will put in its Relation message (which
 * follows REPLICA IDENTITY, not the primary key), so Relation messages can be compared.
 * Uses the simple query protocol only: walsender connections refuse the extended one.
 * *missing=true (and 0 returned) if the relation does not exist. */
static int
syw_load_schema(syw_t *w, PGconn *c, bool *missing, wr_err_t *err)
{
    dest_catalog_t cat;
    bool found = false;
    int rc;

    *missing = false;
    syw_schema_reset(w);
    /* A failing catalog query on a live connection is not a misconfiguration of the whole
     * pipeline: it is reported as WR_ECONN, i.e. retried. */
    rc = cat_read(c, w->relid, &cat, &found, err);
    if (rc != 0)
        return rc;
    if (!found) {
        *missing = true;
        return 0;
    }
    w->relkind = cat.relkind;
    snprintf(w->table, sizeof(w->table), "%s.%s", cat.schema->nsp, cat.schema->name);
    if (wr_schema_set_dest_name(cat.schema, w->dest_name) != 0) {
        dest_catalog_clear(&cat);
        return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of \"%s\"", w->table);
    }
    w->schema = cat.schema;
    w->relflags = cat.relflags;
    w->meta = cat.meta; /* syw_load_meta sets its version */
    cat.schema = NULL;
    cat.relflags = NULL;
    memset(&cat.meta, 0, sizeof(cat.meta));
    for (uint16_t i = 0; i < w->schema->ncols; i++)
        free(cat.missing[i]); /* the copy does not need the missing values */
    free(cat.missing);
    cat.missing = NULL;
    dest_catalog_clear(&cat);
    return 0;
}

/* Compares a Relation message of our relid with the schema we copied under. Fills err
 * (WR_EUNSUPPORTED) naming the first difference. */
static int
syw_check_relation(const syw_t *w, const pgo_msg_t *m, wr_err_t *err)
{
    const wr_schema_t *s = w->schema;

    if (strcmp(m->u.relation.nsp, s->nsp) != 0 || strcmp(m->u.relation.name, s->name) != 0)
        return wr_err_set(err, WR_EUNSUPPORTED, "table \"%s\" was renamed to \"%s.%s\"", w->table,
                          m->u.relation.nsp, m->u.relation.name);
    if (m->u.relation.replident != s->replident)
        return wr_err_set(err, WR_EUNSUPPORTED,
                          "replica identity of \"%s\" changed from '%c' to '%c'", w->table,
                          s->replident, m->u.relation.replident);
    if (m->u.relation.natts != s->ncols)
        return wr_err_set(err, WR_EUNSUPPORTED, "table \"%s\" has %u columns, copied with %u",
                          w->table, (unsigned)m->u.relation.natts, (unsigned)s->ncols);
    for (uint16_t i = 0; i < s->ncols; i++) {
        const pgo_relcol_t *rc = &m->u.relation.cols[i];
        const wr_column_t *c = &s->cols[i];

        if (strcmp(rc->name, c->name) != 0)
            return wr_err_set(err, WR_EUNSUPPORTED,
                              "column %u of \"%s\" is \"%s\", copied as \"%s\"", (unsigned)i + 1,
                              w->table, rc->name, c->name);
        if (rc->type_oid != c->type_oid || rc->typmod != c->typmod)
            return wr_err_set(err, WR_EUNSUPPORTED,
                              "column \"%s\" of \"%s\" has type %u (typmod %d), copied as type "
                              "%u (typmod %d)",
                              c->name, w->table, rc->type_oid, rc->typmod, c->type_oid, c->typmod);
        if ((rc->flags & 1) != w->relflags[i])
            return wr_err_set(err, WR_EUNSUPPORTED,
                              "replica identity of \"%s\" changed at column \"%s\"", w->table,
                              c->name);
    }
    return 0;
}

/* The schema as the stream describes the table: w->schema with the key flags of the
 * Relation message (w->relflags: REPLICA IDENTITY FULL flags every column, USING INDEX
 * the index's columns). It is what the supervisor stores (so it equals what the apply
 * worker sees) and what catch-up registers with the destination, whose keying rule
 * reads the flags that way; w->schema (key = primary key, else the identity index)
 * only creates the destination table. NULL on OOM; the caller frees it. */
static wr_schema_t *
syw_stream_schema(const syw_t *w)
{
    wr_schema_t *s = wr_schema_copy(w->schema);

    for (uint16_t i = 0; s != NULL && i < s->ncols; i++)
        s->cols[i].is_key = w->relflags[i] != 0;
    return s;
}

/* Sends the stream schema to the supervisor (schema message, version lsn). */
static int
syw_put_stream_schema(syw_t *w, wr_lsn_t lsn, wr_err_t *err)
{
    wr_schema_t *s = syw_stream_schema(w);
    int rc;

    if (s == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory copying the schema of \"%s\"", w->table);
    rc = wk_chan_put_schema(&w->chan, s, lsn, err);
    wr_schema_free(s);
    return rc;
}

/* Registers the stream schema with the destination before applying changes. */
static int
syw_register_stream_schema(syw_t *w, wr_err_t *err)
{
    wr_schema_t *s = syw_stream_schema(w);
    int rc;

    if (s == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory copying the schema of \"%s\"", w->table);
    rc = w->dest->ops->ensure_table(w->dest, s, err);
    wr_schema_free(s);
    return rc;
}

/* The catalog facts that go with the schema as its version in the destination
 * (dest_tmeta_t): relfilenode and, per attribute, whether it is replicated, dropped or
 * generated and its pg_attribute xmin. syw_load_schema read them in the same query as the
 * columns (so in the copy's snapshot, and always in agreement with w->schema); this
 * stamps them with the version (X, 0). The apply worker compares later Relation messages
 * with them by attribute number. */
static void
syw_load_meta(syw_t *w, wr_lsn_t x)
{
    w->meta.version.commit_lsn = x;
    w->meta.version.ordinal = 0;
}

/* The copy's first destination transaction: the table empty with the copy's schema
 * (dropped and created again if its columns differ, e.g. a re-copy after a schema
 * change) and its schema version recorded; a destination without reset_table gets
 * ensure_table + truncate_table. */
static int
syw_copy_reset_table(syw_t *w, wr_err_t *err)
{
    int rc;

    if (w->dest->ops->reset_table != NULL)
        rc = w->dest->ops->reset_table(w->dest, w->schema, &w->meta, err);
    else if ((rc = w->dest->ops->ensure_table(w->dest, w->schema, err)) == 0)
        rc = w->dest->ops->truncate_table(w->dest, w->relid, err);
    if (rc == 0)
        w->schema_registered = true;
    return rc;
}

/* True if the publication gives the table a column list: Relation messages then never
 * match the copied schema, and copying again cannot help. */
static bool
syw_column_list(syw_t *w)
{
    return cat_column_list(w->sql, w->cfg.publication, w->relid);
}

/* Reads, with the connection's snapshot (the copy's), the row filter under which the
 * publication streams the table's changes (PostgreSQL 15 FOR TABLE ... WHERE), decided as
 * pgoutput decides it (pgoutput_row_filter_init): the filter of the table's
 * pg_publication_rel row; none if the publication is FOR ALL TABLES or also publishes the
 * table's schema (TABLES IN SCHEMA; PostgreSQL 15's own tablesync would filter the copy
 * there while its stream does not), or if the row has no filter. w->relid is the relation
 * the stream names: with publish_via_partition_root the root, whose filter covers every
 * partition (PostgreSQL refuses a filter on a partitioned table without it). Sets
 * w->row_filter (pg_get_expr's text, allocated) or leaves it NULL. Simple query protocol. */
static int
syw_load_row_filter(syw_t *w, PGconn *c, wr_err_t *err)
{
    char sql[1024];
    char *lit;
    PGresult *res;
    int n;

    free(w->row_filter);
    w->row_filter = NULL;
    if (PQserverVersion(c) < 150000)
        return 0; /* no row filters before PostgreSQL 15 */
    lit = PQescapeLiteral(c, w->cfg.publication, strlen(w->cfg.publication));
    if (lit == NULL)
        return wr_err_set(err, WR_ENOMEM, "quoting publication \"%s\": %s", w->cfg.publication,
                          PQerrorMessage(c));
    n = snprintf(sql, sizeof(sql),
                 "SELECT pg_catalog.pg_get_expr(pr.prqual, pr.prrelid) "
                 "FROM pg_catalog.pg_publication p "
                 "JOIN pg_catalog.pg_publication_rel pr ON pr.prpubid = p.oid "
                 "JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid "
                 "WHERE p.pubname = %s AND pr.prrelid = %u AND pr.prqual IS NOT NULL "
                 "AND NOT p.puballtables AND NOT EXISTS (SELECT 1 FROM "
                 "pg_catalog.pg_publication_namespace pn WHERE pn.pnpubid = p.oid "
                 "AND pn.pnnspid = c.relnamespace)",
                 lit, w->relid);
    PQfreemem(lit);
    if (n < 0 || (size_t)n >= sizeof(sql))
        return wr_err_set(err, WR_EINVAL, "publication name \"%s\" is too long",
                          w->cfg.publication);
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        wr_err_set(err, WR_ECONN, "reading the row filter of \"%s\": %s", w->table,
                   PQerrorMessage(c));
        PQclear(res);
        return err->code;
    }
    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
        w->row_filter = wr_strdup(PQgetvalue(res, 0, 0));
        if (w->row_filter == NULL) {
            PQclear(res);
            return wr_err_set(err, WR_ENOMEM, "out of memory reading the row filter of \"%s\"",
                              w->table);
        }
    }
    PQclear(res);
    return 0;
}

/* ---- copy ---------------------------------------------------------------- */

static void
syw_batch_close(syw_batch_t *b)
{
    free(b->rows);
    free(b->vals);
    free(b->offs);
    free(b->arena);
    memset(b, 0, sizeof(*b));
}

static int
syw_batch_init(syw_batch_t *b, uint16_t ncols, size_t rows, size_t max_bytes, wr_err_t *err)
{
    size_t nv = rows * (ncols > 0 ? ncols : 1);

    memset(b, 0, sizeof(*b));
    b->ncols = ncols;
    b->cap = rows;
    b->max_bytes = max_bytes;
    b->rows = calloc(rows, sizeof(*b->rows));
    b->vals = calloc(nv, sizeof(*b->vals));
    b->offs = calloc(nv, sizeof(*b->offs));
    b->acap = 64 * 1024;
    b->arena = malloc(b->acap);
    if (b->rows == NULL || b->vals == NULL || b->offs == NULL || b->arena == NULL) {
        syw_batch_close(b);
        return wr_err_set(err, WR_ENOMEM, "out of memory for a copy batch of %zu rows", rows);
    }
    for (size_t i = 0; i < rows; i++) {
        b->rows[i].ncols = ncols;
        b->rows[i].vals = &b->vals[i * ncols];
    }
    return 0;
}

/* Bytes of text in a parsed row. */
static size_t
syw_row_bytes(const wr_row_t *row)
{
    size_t n = 0;

    for (uint16_t i = 0; i < row->ncols; i++)
        if (row->vals[i].kind == WR_VAL_TEXT || row->vals[i].kind == WR_VAL_BINARY)
            n += row->vals[i].len;
    return n;
}

/* True if the row does not fit the batch any more: the caller flushes first. */
static bool
syw_batch_full(const syw_batch_t *b, const wr_row_t *row)
{
    if (b->n == 0)
        return false;
    return b->n >= b->cap || b->alen + syw_row_bytes(row) > b->max_bytes;
}

/* Appends a copy of row (its values are in the parser's buffer). */
static int
syw_batch_add(syw_batch_t *b, const wr_row_t *row, wr_err_t *err)
{
    size_t need = syw_row_bytes(row);
    wr_val_t *dst = &b->vals[b->n * b->ncols];
    size_t *off = &b->offs[b->n * b->ncols];

    if (row->ncols != b->ncols)
        return wr_err_set(err, WR_EPROTO, "copied row has %u columns, expected %u",
                          (unsigned)row->ncols, (unsigned)b->ncols);
    if (b->alen + need > b->acap) {
        size_t ncap = b->acap;
        char *na;

        while (b->alen + need > ncap)
            ncap *= 2;
        na = realloc(b->arena, ncap);
        if (na == NULL)
            return wr_err_set(err, WR_ENOMEM, "out of memory for a copy batch (%zu bytes)", ncap);
        b->arena = na;
        b->acap = ncap;
    }
    for (uint16_t i = 0; i < row->ncols; i++) {
        const wr_val_t *v = &row->vals[i];

        dst[i].kind = v->kind;
        dst[i].len = v->len;
        dst[i].data = NULL;
        off[i] = b->alen;
        if ((v->kind == WR_VAL_TEXT || v->kind == WR_VAL_BINARY) && v->len > 0) {
            memcpy(b->arena + b->alen, v->data, v->len);
            b->alen += v->len;
        }
    }
    b->n++;
    return 0;
}

/* Points the batch's values into the arena (which may have moved while growing). */
static void
syw_batch_resolve(syw_batch_t *b)
{
    for (size_t i = 0; i < b->n * b->ncols; i++)
        if (b->vals[i].kind == WR_VAL_TEXT || b->vals[i].kind == WR_VAL_BINARY)
            b->vals[i].data = b->arena + b->offs[i];
}

typedef struct syw_copy_s {
    syw_batch_t batch;
    copy_parser_t parser;
    bool dest_open;  /* a destination transaction is open */
    bool reset_done; /* the first transaction (table emptied, catch-up key forgotten) ran */
    uint64_t rows;
    char *sql; /* the COPY statement */
    /* (issue 7) the raw path: lines handed to write_copy since the last commit */
    uint64_t raw_rows;
    size_t raw_bytes;
    bool binary;           /* ... in PostgreSQL's binary COPY format (copy_binary) */
    copy_bin_scan_t bscan; /* ... whose rows are counted as they pass */
    bool scan_failed;      /* ... and were not a binary COPY's: Errored "copy_parse" */
    int rr;                /* the parallel copy: the reader the writer looks at first */
} syw_copy_t;

/* Opens the destination transaction if none is open; the copy's first one also empties
 * (or creates) the table and forgets the catch-up key. */
static int
syw_copy_begin(syw_t *w, syw_copy_t *cp, wr_err_t *err)
{
    int rc;

    if (!cp->dest_open) {
        if ((rc = w->dest->ops->begin(w->dest, err)) < 0)
            return rc;
        cp->dest_open = true;
        wkm_batch_begin(&w->metrics);
    }
    if (!cp->reset_done) {
        if ((rc = syw_copy_reset_table(w, err)) < 0 ||
            (rc = w->dest->ops->clear_key(w->dest, w->stream, err)) < 0)
            return rc;
        cp->reset_done = true;
    }
    return 0;
}

/* Writes and commits the batch (the first transaction also empties the table and forgets
 * the catch-up key). The destination transaction is begun here, once the batch is
 * complete, so that none stays open while the COPY waits on the source (issue 12, defect
 * 2: a COPY waiting on a lock, or a selective row filter, held the write lock). last: the
 * copy's last transaction, where the destination's copy_done runs before the commit. */
static int
syw_copy_flush(syw_t *w, syw_copy_t *cp, bool last, wr_err_t *err)
{
    int64_t t0;
    int rc;

    if ((rc = syw_copy_begin(w, cp, err)) < 0)
        return rc;
    if (cp->batch.n > 0) {
        syw_batch_resolve(&cp->batch);
        if ((rc = w->dest->ops->write_rows(w->dest, w->relid, cp->batch.rows, cp->batch.n, err)) <
            0)
            return rc;
    }
    if (last && w->dest->ops->copy_done != NULL &&
        (rc = w->dest->ops->copy_done(w->dest, w->relid, err)) < 0)
        return rc;
    t0 = wkm_clock_us();
    if ((rc = w->dest->ops->commit(w->dest, w->stream, NULL, err)) < 0)
        return rc;
    wkm_batch_commit(&w->metrics, t0);
    cp->dest_open = false;
    cp->rows += cp->batch.n + cp->raw_rows;
    cp->batch.n = 0;
    cp->batch.alen = 0;
    cp->raw_rows = 0;
    cp->raw_bytes = 0;
    return 0;
}

/* (issue 7) A destination that speaks COPY (write_copy) gets the source's line untouched,
 * in one destination transaction for the whole copy: the data is streamed, not held, so
 * nothing bounds a batch, and a restart copies from scratch anyway (a commit in the middle
 * would only make the copy wait for the destination at every boundary). Every
 * copy_batch_rows rows (or batch_max_bytes bytes) returns 1: the caller reports progress. */
static int
syw_copy_raw(syw_t *w, syw_copy_t *cp, const char *line, size_t n, size_t batch_rows,
             size_t batch_bytes, wr_err_t *err)
{
    int rc, flushed = 0, rows = 1;

    /* a text COPY's messages are one row each; a binary COPY's rows are counted by the
     * scanner, whatever the messages' boundaries */
    if (cp->binary && (rc = copy_bin_scan_feed(&cp->bscan, line, n, &rows, err)) < 0) {
        cp->scan_failed = true;
        return rc;
    }
    if (cp->raw_rows > 0 && (cp->raw_rows >= batch_rows || cp->raw_bytes + n > batch_bytes)) {
        cp->rows += cp->raw_rows;
        cp->raw_rows = 0;
        cp->raw_bytes = 0;
        flushed = 1;
    }
    if ((rc = syw_copy_begin(w, cp, err)) < 0)
        return rc;
    if ((rc = w->dest->ops->write_copy(w->dest, w->relid, line, n, err)) < 0)
        return rc;
    cp->raw_rows += (uint64_t)rows;
    cp->raw_bytes += n;
    return flushed;
}

/* After every batch: tells the supervisor how far the copy is and reads the channel (a
 * stop or EOF is noticed here even while the server keeps sending). */
static int
syw_copy_progress(syw_t *w, syw_copy_t *cp, wr_err_t *err)
{
    ipc_msg_t msg;
    int rc;

    memset(&msg, 0, sizeof(msg));
    msg.type = IPC_COPY_PROGRESS;
    msg.u.copy_progress.relid = w->relid;
    msg.u.copy_progress.rows = cp->rows;
    if ((rc = wk_chan_send(&w->chan, &msg, err)) < 0 ||
        (rc = wkm_send(&w->metrics, &w->chan, false, err)) < 0)
        return rc;
    return wk_chan_poll(&w->chan, 0, err);
}

/* Builds COPY "nsp"."name" ("c1", ...) TO STDOUT, or, for a partitioned table or a
 * table with a row filter, COPY (SELECT "c1", ... FROM [ONLY] "nsp"."name" [WHERE
 * (filter)]) TO STDOUT as PostgreSQL's tablesync (copy_table): ONLY for a plain table, so
 * that tables inheriting from it are not read (COPY "nsp"."name" does not read them
 * either); a partitioned table is read with its partitions. */
static int
syw_copy_statement(syw_t *w, bool binary, char **out, wr_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    char *q;
    bool ok = f != NULL;

    *out = NULL;
    if (!ok)
        return wr_err_set(err, WR_ENOMEM, "out of memory building the COPY statement");
    /* COPY refuses a partitioned table (published with publish_via_partition_root): copy
     * a query over it instead, which reads every partition, as PostgreSQL's tablesync;
     * a row filter needs a query too */
    bool query = w->relkind == 'p' || w->row_filter != NULL;

    fputs(query ? "COPY (SELECT " : "COPY ", f);
    if (!query) {
        ok = (q = repl_quote_ident(w->repl, w->schema->nsp)) != NULL;
        if (ok) {
            fprintf(f, "%s.", q);
            PQfreemem(q);
            ok = (q = repl_quote_ident(w->repl, w->schema->name)) != NULL;
        }
        if (ok) {
            fprintf(f, "%s (", q);
            PQfreemem(q);
        }
    }
    for (uint16_t i = 0; ok && i < w->schema->ncols; i++) {
        ok = (q = repl_quote_ident(w->repl, w->schema->cols[i].name)) != NULL;
        if (ok) {
            fprintf(f, "%s%s", i > 0 ? ", " : "", q);
            PQfreemem(q);
        }
    }
    if (ok && query) {
        ok = (q = repl_quote_ident(w->repl, w->schema->nsp)) != NULL;
        if (ok) {
            fprintf(f, " FROM %s%s.", w->relkind == 'p' ? "" : "ONLY ", q);
            PQfreemem(q);
            ok = (q = repl_quote_ident(w->repl, w->schema->name)) != NULL;
        }
        if (ok) {
            fputs(q, f);
            PQfreemem(q);
        }
        if (ok && w->row_filter != NULL)
            fprintf(f, " WHERE (%s)", w->row_filter);
    }
    if (ok)
        fputs(binary ? ") TO STDOUT (FORMAT binary)" : ") TO STDOUT", f);
    if (fclose(f) != 0)
        ok = false;
    if (!ok) {
        free(buf);
        return wr_err_set(err, WR_ENOMEM, "quoting identifiers of \"%s\": %s", w->table,
                          PQerrorMessage(w->repl));
    }
    *out = buf;
    return 0;
}

/* Waits until the copy connection or the channel is readable (or SYW_POLL_MS passed),
 * then consumes what arrived. */
static int
syw_copy_wait(syw_t *w, wr_err_t *err)
{
    struct pollfd pf[2];
    int rc;

    pf[0].fd = PQsocket(w->repl);
    pf[0].events = POLLIN;
    pf[0].revents = 0;
    pf[1].fd = w->chan.fd;
    pf[1].events = POLLIN;
    pf[1].revents = 0;
    rc = poll(pf, 2, SYW_POLL_MS);
    if (rc < 0 && errno != EINTR)
        return wr_err_set(err, WR_EIO, "poll: %s", strerror(errno));
    /* unconditionally: messages that came behind an ack sit in the reader, not the fd */
    if ((rc = wk_chan_poll(&w->chan, 0, err)) < 0)
        return rc;
    if (PQconsumeInput(w->repl) == 0)
        return wr_err_set(err, WR_ECONN, "copying \"%s\": %s", w->table, PQerrorMessage(w->repl));
    return 0;
}

/* Ends a failed or interrupted copy: rolls the destination back, closes the source
 * transaction and drops the slot. Returns exit_code. */
static int
syw_copy_abort(syw_t *w, syw_copy_t *cp, int exit_code)
{
    if (cp->dest_open) {
        wr_err_t err;
        if (w->dest->ops->rollback(w->dest, &err) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &err);
        cp->dest_open = false;
    }
    (void)syw_drop_slot(w); /* closes the replication connection first */
    return exit_code;
}

/* Decides what a copy error means (see the header): Errored + 2 for refused data, else
 * 1 (or 2 for a pipeline-wide configuration problem). Drops the slot either way. */
static int
syw_copy_error(syw_t *w, syw_copy_t *cp, const char *kind, wr_err_t *err)
{
    int code;

    wr_err_prefix(err, "copying \"%s\": ", w->table);
    if (kind == NULL && err->code == WR_EUNSUPPORTED)
        kind = "unsupported";
    if (kind != NULL && syw_is_data_error(err->code)) {
        (void)syw_copy_abort(w, cp, 0);
        return syw_set_errored(w, kind, err);
    }
    code = syw_fail("copy failed", err);
    return syw_copy_abort(w, cp, code);
}

/* ---- the parallel, resumable copy (issue 11) -------------------------------------------
 *
 * For a destination whose range_writers is not 0 (sqlite). The slot is created with an
 * exported snapshot (SNAPSHOT 'export', outside a transaction) on the replication
 * connection, which then stays idle so the snapshot stays importable; the supervisor
 * imports it into a transaction of its own and exports it again (copy_plan; sup_copy.c),
 * so that it outlives this process. max_copy_connections_per_table reader threads each
 * open a normal connection, BEGIN ISOLATION LEVEL REPEATABLE READ and SET TRANSACTION
 * SNAPSHOT, so every range is read under the slot's consistent point X. The table's
 * relation(s) are split into ranges of pages (syw_plan: at least SYW_RANGE_MIN_PAGES, at
 * most SYW_RANGE_MAX_PAGES, about SYW_RANGES_PER_CONN per connection; each partition of a
 * table published through its root is split on its own; the last range of a relation has
 * no upper bound), claimed largest first, each read with
 *   COPY (SELECT cols FROM ONLY rel WHERE ctid >= '(a,0)' AND ctid < '(b,0)' [AND (filter)])
 * The destination table is emptied (reset_table), then the plan is persisted (copy_plan)
 * before the first range is read; a plan of one range (a table under SYW_RANGE_MIN_PAGES)
 * is not: there is nothing to resume, it is copied again from scratch.
 *
 * Writing (range_writers 1, sqlite): the main thread is the one writer. Readers parse their
 * ranges' rows (from the spools, below) into batches (two per reader, so a reader parses
 * while its other batch is written)
 * and the writer writes one range at a time: the batches of that range, in order, in one
 * destination transaction ended by commit_range (which records the range with its rows,
 * atomically with them), then copy_range_done to the supervisor. Readers of other ranges
 * fill their two batches meanwhile and wait. Memory: two batches per reader.
 * Writing (range_writers >= the readers, a destination whose writers do not wait for each
 * other): each reader opens its own destination handle (copy_resume registers the table
 * there) and writes and commits its ranges itself; the main thread reports each committed
 * range (syw_par_collect). Tested with sqlite made to say 4 writers (its writers then take
 * turns on the file's lock): the resume test passes the same.
 *
 * A restart in DataSync resumes instead of starting over when everything is still there:
 * the plan (copy_plan_get), the snapshot held by the supervisor, the slot with its
 * confirmed_flush at the plan's X. Then the destination says which ranges committed
 * (ranges_done, authoritative: a range whose copy_range_done was lost with the process
 * is done too, and is reported again), copy_resume takes the table up as reset_table left
 * it, and only the other ranges are read. Anything missing: the copy starts over (the slot
 * dropped and created again, an empty plan sent, which lets the held snapshot go).
 * Every exit of the copy that runs our code (an error, a stop, a signal) drops the slot,
 * as in the single COPY, so only a crash (kill -9) leaves something to resume.
 * Logged: "copy started ... ranges=N connections=K" or "copy resumed ... ranges_done=D/N
 * rows_kept=R", and "range copied part=P rows=R" for each range this process committed.
 *
 * Destination transactions (issue 12, defect 2). The table is emptied (or taken up) in a
 * transaction of its own, committed before any COPY is sent. A range commits atomically
 * (that is what makes it resumable), so its transaction holds the destination's write
 * lock from its first batch to its last: each reader therefore has a fetch thread that
 * reads a range's COPY whole into a spool file (an unlinked file in DIR/spool; two a
 * reader, so at most two ranges of SYW_RANGE_MAX_PAGES pages on disk), and the reader's
 * thread parses a range into batches for the writer only once it is all there, while the
 * fetch thread reads the next one. A COPY waiting on a lock, a selective row filter or a
 * slow network holds nothing in the destination: the range's transaction waits only for
 * local work (before, the apply worker's commits waited for the whole of a slow range).
 *
 * Not by range: a destination with write_copy (postgres, issue 7). It takes the source's
 * COPY bytes through one connection in one destination transaction for the whole copy
 * (syw_copy), which a crash rolls back whole, so there is nothing a range could keep;
 * max_copy_connections_per_table does not apply to it. Nor plugins and null
 * (range_writers NULL).
 */

#define SYW_RANGE_MIN_PAGES 1024  /* 8 MB of 8 kB pages: a smaller relation is one range */
#define SYW_RANGE_MAX_PAGES 16384 /* 128 MB: a range is one destination transaction */
#define SYW_RANGES_PER_CONN 4
#define SYW_MAX_RANGES      4096 /* STATE_MAX_COPY_RANGES, IPC_MAX_COPY_RANGES */
#define SYW_PAR_BATCH_BYTES (4 * 1024 * 1024)

typedef struct syw_range_s {
    uint32_t leaf;       /* relation read: the table, or one of its partitions */
    uint32_t first_page; /* ctid >= (first_page, 0) */
    uint32_t end_page;   /* ctid < (end_page, 0); 0: no upper bound */
    bool whole;          /* no ctid condition (a relation without pages: partitioned, foreign) */
    uint64_t pages;      /* size estimate, for largest first */
    bool claimed;        /* a reader took it */
    bool done;           /* committed in the destination */
    uint64_t rows;
} syw_range_t;

/* A batch on its way from a reader to the writer. */
typedef struct syw_pbatch_s {
    syw_batch_t b;
    bool ready; /* filled: the writer's until it clears this */
    uint32_t part;
    bool last; /* the range's last batch (possibly empty) */
} syw_pbatch_t;

typedef struct syw_par_s syw_par_t;

/* A range's COPY lines on disk (an unlinked file in DIR/spool). */
typedef struct syw_spool_s {
    FILE *f;
    uint32_t part;
    bool full; /* read whole: the parsing thread's until it clears this (par->mu) */
} syw_spool_t;

typedef struct syw_reader_s {
    syw_par_t *par;
    int id;
    PGconn *conn;
    PGcancel *cancel;
    pthread_t thread;
    bool started;
    syw_pbatch_t q[2]; /* filled and taken alternately */
    int fill, take;
    copy_parser_t parser;
    uint32_t leaf; /* the relation leafname names */
    char leafname[600];
    /* several writers (range_writers > 1): this reader's own destination handle, which
     * writes its ranges itself (only q[0] is used) */
    dest_t *dest;
    bool dest_open;
    uint64_t range_rows;
    const char *fail_kind; /* the Errored kind of its error, if the data is at fault */
    /* the network side (issue 12, defect 2): a fetch thread reads each range's COPY whole
     * into a spool file, which this reader's thread then parses into batches; two spools,
     * so the next range is read while this one is parsed and written */
    syw_spool_t sp[2];
    int sp_fill, sp_take;
    bool fetch_end; /* the fetch thread claims no more ranges (par->mu) */
    pthread_t fetch_thread;
    bool fetch_started;
    char *rbuf; /* a spool read back: lines found in place */
    size_t rcap, rlen, rpos;
} syw_reader_t;

struct syw_par_s {
    syw_t *w;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* every state change: a batch ready or freed, a reader done, stop */
    bool mu_ok;
    syw_range_t *ranges;
    uint32_t nranges;
    uint32_t *order; /* range indexes, largest first */
    syw_reader_t *readers;
    int nreaders;
    int nrunning;
    bool stop;        /* the writer gives up: readers end */
    bool failed;      /* a reader failed: err */
    const char *kind; /* its error is in the data: the Errored kind ("copy_parse", ...) */
    wr_err_t err;
    char *cols; /* the quoted column list */
    wr_lsn_t x; /* the snapshot's consistent point */
    char snapshot[64];
    uint64_t kept;     /* rows of ranges committed before this process */
    bool planned;      /* the plan is in the state store (copy_range_done reports each range) */
    bool *reported;    /* several writers: ranges whose commit the main thread has reported */
    uint64_t bytes;    /* COPY bytes the readers received, not yet counted in the metrics */
    size_t batch_rows; /* copy_batch_rows: the failpoint sync.mid_copy fires that often */
};

/* CPU time of this process (every thread), user and system: what a copy cost, whatever
 * else the machine runs (the log line; bench/run.py). */
static double
syw_cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void
syw_par_fail(syw_par_t *par, const wr_err_t *err, const char *kind)
{
    pthread_mutex_lock(&par->mu);
    if (!par->failed) {
        par->failed = true;
        par->kind = kind;
        par->err = *err;
    }
    par->stop = true;
    pthread_cond_broadcast(&par->cv);
    pthread_mutex_unlock(&par->mu);
}

/* Opens a normal connection in the copy's snapshot: BEGIN ISOLATION LEVEL REPEATABLE READ
 * READ ONLY; SET TRANSACTION SNAPSHOT. */
static int
syw_snapshot_connect(syw_t *w, const char *snapshot, PGconn **out, wr_err_t *err)
{
    char sql[128];
    int rc;

    *out = NULL;
    if ((rc = repl_connect(w->cfg.source_conninfo, false, w->slot, out, err)) < 0)
        return rc;
    snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", snapshot);
    if ((rc = repl_exec(*out, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err)) < 0 ||
        (rc = repl_exec(*out, sql, err)) < 0) {
        PQfinish(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}

/* The relation a range reads, as SQL ("nsp"."name"), looked up in the snapshot. */
static int
syw_leaf_name(syw_reader_t *r, uint32_t leaf, wr_err_t *err)
{
    char sql[256];
    PGresult *res;

    if (r->leaf == leaf && r->leafname[0])
        return 0;
    snprintf(sql, sizeof(sql),
             "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_class "
             "c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %u",
             leaf);
    res = PQexec(r->conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        wr_err_set(err, WR_ECONN, "looking up relation %u for the copy: %s", leaf,
                   PQresultStatus(res) == PGRES_TUPLES_OK ? "it does not exist"
                                                          : PQerrorMessage(r->conn));
        PQclear(res);
        return err->code;
    }
    snprintf(r->leafname, sizeof(r->leafname), "%s", PQgetvalue(res, 0, 0));
    r->leaf = leaf;
    PQclear(res);
    return 0;
}

/* Waits for the reader's fill batch to be free. WR_ESTOP if the copy stops meanwhile. */
static int
syw_reader_wait_free(syw_reader_t *r, wr_err_t *err)
{
    syw_par_t *par = r->par;
    int rc = 0;

    pthread_mutex_lock(&par->mu);
    while (r->q[r->fill].ready && !par->stop)
        pthread_cond_wait(&par->cv, &par->mu);
    if (par->stop)
        rc = wr_err_set(err, WR_ESTOP, "the copy stopped");
    pthread_mutex_unlock(&par->mu);
    return rc;
}

/* Hands the fill batch to the writer and moves on to the other one. */
static int
syw_reader_hand_over(syw_reader_t *r, uint32_t part, bool last, wr_err_t *err)
{
    syw_par_t *par = r->par;
    syw_pbatch_t *b = &r->q[r->fill];

    pthread_mutex_lock(&par->mu);
    b->part = part;
    b->last = last;
    b->ready = true;
    pthread_cond_broadcast(&par->cv);
    pthread_mutex_unlock(&par->mu);
    r->fill ^= 1;
    return syw_reader_wait_free(r, err);
}

/* Several writers: writes the batch with this reader's own destination handle; at the
 * range's end commits it (commit_range) and marks it done for the main thread to report. */
static int
syw_reader_write_own(syw_reader_t *r, uint32_t part, bool last, wr_err_t *err)
{
    syw_par_t *par = r->par;
    syw_t *w = par->w;
    syw_batch_t *b = &r->q[0].b;
    int rc;

    if (!r->dest_open) {
        if ((rc = r->dest->ops->begin(r->dest, err)) < 0)
            return rc;
        r->dest_open = true;
        r->range_rows = 0;
    }
    if (b->n > 0) {
        syw_batch_resolve(b);
        if ((rc = r->dest->ops->write_rows(r->dest, w->relid, b->rows, b->n, err)) < 0)
            return rc;
    }
    r->range_rows += b->n;
    b->n = 0;
    b->alen = 0;
    if (!last) {
        FAILPOINT("sync.mid_range");
        return 0;
    }
    r->dest_open = false; /* commit_range commits, or rolls back what it could not */
    if ((rc = r->dest->ops->commit_range(r->dest, w->relid, par->x, part, r->range_rows, err)) < 0)
        return rc;
    pthread_mutex_lock(&par->mu);
    par->ranges[part].done = true;
    par->ranges[part].rows = r->range_rows;
    pthread_cond_broadcast(&par->cv);
    pthread_mutex_unlock(&par->mu);
    return 0;
}

/* A batch is full, or the range ended: to the writer, or written here (several writers). */
static int
syw_reader_deliver(syw_reader_t *r, uint32_t part, bool last, wr_err_t *err)
{
    int rc;

    if (r->dest == NULL)
        return syw_reader_hand_over(r, part, last, err);
    if ((rc = syw_reader_write_own(r, part, last, err)) < 0) {
        r->fail_kind = "dest_refused"; /* syw_copy_error: Errored only for data errors */
        return rc == WR_ESTOP ? WR_ECONN : rc;
    }
    return 0;
}

/* Empties a spool, creating it the first time: an unlinked file in DIR/spool (nothing to
 * clean up after a crash). */
static int
syw_spool_reset(syw_reader_t *r, syw_spool_t *sp, wr_err_t *err)
{
    const syw_t *w = r->par->w;
    char dir[4096], path[4200];
    int fd;

    if (sp->f != NULL) {
        if (fflush(sp->f) != 0 || ftruncate(fileno(sp->f), 0) != 0 ||
            fseek(sp->f, 0, SEEK_SET) != 0)
            return wr_err_set(err, WR_EIO, "emptying the copy's spool file: %s", strerror(errno));
        return 0;
    }
    snprintf(dir, sizeof(dir), "%s/spool", w->cfg.dir ? w->cfg.dir : ".");
    snprintf(path, sizeof(path), "%s/sync-%u-%d.XXXXXX", dir, (unsigned)w->relid, r->id);
    if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || (fd = mkstemp(path)) < 0) {
        wr_err_set(err, WR_EIO, "cannot create the copy's spool file in \"%s\": %s", dir,
                   strerror(errno));
        wr_err_hint(err, "the configuration directory must be writable by walrelay and its "
                         "disk must have room for two ranges of the table (up to 256 MB) a "
                         "copy connection");
        return WR_EIO;
    }
    (void)unlink(path);
    if (!(sp->f = fdopen(fd, "w+b"))) {
        close(fd);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the copy's spool file");
    }
    setvbuf(sp->f, NULL, _IOFBF, 1 << 16);
    return 0;
}

/* The fetch thread's part: range part's COPY whole into spool sp (no destination
 * transaction waits on it). */
static int
syw_reader_fetch(syw_reader_t *r, syw_spool_t *sp, uint32_t part, wr_err_t *err)
{
    syw_par_t *par = r->par;
    syw_t *w = par->w;
    const syw_range_t *rg = &par->ranges[part];
    char *sql = NULL;
    size_t len = 0;
    FILE *f;
    PGresult *res;
    int rc;

    if ((rc = syw_leaf_name(r, rg->leaf, err)) < 0)
        return rc;
    if (!(f = open_memstream(&sql, &len)))
        return wr_err_set(err, WR_ENOMEM, "out of memory building a COPY statement");
    /* ONLY: not the tables that inherit from it; a partitioned root (the range of one
     * without partitions) is read as it is */
    fprintf(f, "COPY (SELECT %s FROM %s%s", par->cols,
            rg->leaf == w->relid && w->relkind == 'p' ? "" : "ONLY ", r->leafname);
    if (!rg->whole) {
        fprintf(f, " WHERE ctid >= '(%u,0)'::pg_catalog.tid", rg->first_page);
        if (rg->end_page > 0)
            fprintf(f, " AND ctid < '(%u,0)'::pg_catalog.tid", rg->end_page);
    }
    if (w->row_filter != NULL)
        fprintf(f, " %s (%s)", rg->whole ? "WHERE" : "AND", w->row_filter);
    fputs(") TO STDOUT", f);
    if (fclose(f) != 0) {
        free(sql);
        return wr_err_set(err, WR_ENOMEM, "out of memory building a COPY statement");
    }
    res = PQexec(r->conn, sql);
    free(sql);
    if (PQresultStatus(res) != PGRES_COPY_OUT) {
        wr_err_set(err, WR_ECONN, "copying range %u: %s", part, PQerrorMessage(r->conn));
        PQclear(res);
        return err->code;
    }
    PQclear(res);
    if ((rc = syw_spool_reset(r, sp, err)) < 0)
        return rc;
    for (uint64_t lines = 1, bytes = 0;; lines++) {
        char *line = NULL;
        int n = PQgetCopyData(r->conn, &line, 0);
        bool ok;

        if (n < 0 || lines % par->batch_rows == 0) {
            /* the main thread counts them in the metrics (wkm is not shared) */
            pthread_mutex_lock(&par->mu);
            par->bytes += bytes;
            pthread_mutex_unlock(&par->mu);
            bytes = 0;
        }
        if (n == -1)
            break;
        if (n < 0)
            return wr_err_set(err, WR_ECONN, "copying range %u: %s", part, PQerrorMessage(r->conn));
        bytes += (uint64_t)n;
        /* unlocked: the spool is the fetch thread's alone until it hands it over */
        ok = fwrite_unlocked(line, 1, (size_t)n, sp->f) == (size_t)n;
        PQfreemem(line);
        if (!ok)
            return wr_err_set(err, WR_EIO, "writing range %u to the copy's spool file: %s", part,
                              strerror(errno));
        if (lines % par->batch_rows == 0)
            FAILPOINT("sync.mid_copy"); /* a batch's worth read: a slow source */
    }
    while ((res = PQgetResult(r->conn)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            wr_err_set(err, WR_ECONN, "copying range %u: %s", part, PQerrorMessage(r->conn));
            PQclear(res);
            return err->code;
        }
        PQclear(res);
    }
    if (fflush(sp->f) != 0 || fseek(sp->f, 0, SEEK_SET) != 0)
        return wr_err_set(err, WR_EIO, "reading range %u back from the copy's spool file: %s", part,
                          strerror(errno));
    return 0;
}

/* The next line of spool sp (*line, *len, with its newline): 1, 0 at the end, or < 0. */
static int
syw_spool_next(syw_reader_t *r, syw_spool_t *sp, const char **line, size_t *len, wr_err_t *err)
{
    if (r->rbuf == NULL) {
        if (!(r->rbuf = malloc((size_t)1 << 20)))
            return wr_err_set(err, WR_ENOMEM, "out of memory reading the copy's spool file");
        r->rcap = (size_t)1 << 20;
    }
    for (;;) {
        char *nl = r->rpos < r->rlen ? memchr(r->rbuf + r->rpos, '\n', r->rlen - r->rpos) : NULL;
        size_t got;

        if (nl != NULL || (r->rpos < r->rlen && feof(sp->f))) {
            /* a line, or the last one without its newline */
            *line = r->rbuf + r->rpos;
            *len = nl ? (size_t)(nl + 1 - *line) : r->rlen - r->rpos;
            r->rpos += *len;
            return 1;
        }
        if (r->rpos == r->rlen && feof(sp->f))
            return 0;
        memmove(r->rbuf, r->rbuf + r->rpos, r->rlen - r->rpos);
        r->rlen -= r->rpos;
        r->rpos = 0;
        if (r->rlen == r->rcap) {
            size_t cap = r->rcap * 2;
            char *g = realloc(r->rbuf, cap);

            if (g == NULL)
                return wr_err_set(err, WR_ENOMEM, "out of memory reading the copy's spool file");
            r->rbuf = g;
            r->rcap = cap;
        }
        got = fread_unlocked(r->rbuf + r->rlen, 1, r->rcap - r->rlen, sp->f);
        if (got == 0 && ferror(sp->f))
            return wr_err_set(err, WR_EIO, "reading range %u back from the copy's spool file: %s",
                              sp->part, strerror(errno));
        r->rlen += got;
    }
}

/* The reader's part: the rows of a range read whole (spool sp) into batches, handed to the
 * writer or written here. */
static int
syw_reader_parse(syw_reader_t *r, syw_spool_t *sp, wr_err_t *err)
{
    syw_t *w = r->par->w;
    uint32_t part = sp->part;
    int rc;

    r->rlen = r->rpos = 0;
    for (;;) {
        const char *line = NULL;
        size_t n = 0;
        wr_row_t row;
        syw_batch_t *b = &r->q[r->fill].b;

        if ((rc = syw_spool_next(r, sp, &line, &n, err)) < 0)
            return rc;
        if (rc == 0)
            break;
        rc = copy_parse_line(&r->parser, line, n, w->schema->ncols, &row, err);
        if (rc == 0 && syw_batch_full(b, &row)) {
            if ((rc = syw_reader_deliver(r, part, false, err)) < 0)
                return rc;
            b = &r->q[r->fill].b;
        }
        if (rc == 0)
            rc = syw_batch_add(b, &row, err);
        if (rc < 0 && r->fail_kind == NULL && syw_is_data_error(rc))
            r->fail_kind = "copy_parse"; /* a line that does not parse */
        if (rc < 0)
            return rc;
    }
    return syw_reader_deliver(r, part, true, err);
}

/* The fetch thread of a reader: claims ranges, largest first, and reads each into the
 * reader's free spool. */
static void *
syw_fetch_main(void *arg)
{
    syw_reader_t *r = arg;
    syw_par_t *par = r->par;
    wr_err_t err;

    wr_err_clear(&err);
    {
        char name[16];
        snprintf(name, sizeof(name), "sync-fetch-%d", r->id);
        (void)pthread_setname_np(pthread_self(), name); /* for top, perf */
    }
    for (;;) {
        syw_spool_t *sp = &r->sp[r->sp_fill];
        uint32_t part = UINT32_MAX;
        int rc;

        pthread_mutex_lock(&par->mu);
        while (sp->full && !par->stop)
            pthread_cond_wait(&par->cv, &par->mu);
        for (uint32_t k = 0; !par->stop && k < par->nranges; k++) {
            syw_range_t *rg = &par->ranges[par->order[k]];
            if (!rg->claimed && !rg->done) {
                rg->claimed = true;
                part = par->order[k];
                break;
            }
        }
        pthread_mutex_unlock(&par->mu);
        if (part == UINT32_MAX)
            break;
        if ((rc = syw_reader_fetch(r, sp, part, &err)) < 0) {
            if (rc != WR_ESTOP)
                syw_par_fail(par, &err, NULL);
            break;
        }
        pthread_mutex_lock(&par->mu);
        sp->part = part;
        sp->full = true;
        pthread_cond_broadcast(&par->cv);
        pthread_mutex_unlock(&par->mu);
        r->sp_fill ^= 1;
    }
    pthread_mutex_lock(&par->mu);
    r->fetch_end = true;
    pthread_cond_broadcast(&par->cv);
    pthread_mutex_unlock(&par->mu);
    return NULL;
}

/* The reader's thread: parses the ranges its fetch thread read, in the order read. */
static void *
syw_reader_main(void *arg)
{
    syw_reader_t *r = arg;
    syw_par_t *par = r->par;
    wr_err_t err;

    wr_err_clear(&err);
    {
        char name[16];
        snprintf(name, sizeof(name), "sync-copy-%d", r->id);
        (void)pthread_setname_np(pthread_self(), name); /* for top, perf */
    }
    for (;;) {
        syw_spool_t *sp = &r->sp[r->sp_take];
        bool have;
        int rc;

        pthread_mutex_lock(&par->mu);
        while (!sp->full && !r->fetch_end && !par->stop)
            pthread_cond_wait(&par->cv, &par->mu);
        have = sp->full && !par->stop;
        pthread_mutex_unlock(&par->mu);
        if (!have)
            break;
        r->fail_kind = NULL;
        rc = syw_reader_parse(r, sp, &err);
        pthread_mutex_lock(&par->mu);
        sp->full = false;
        pthread_cond_broadcast(&par->cv);
        pthread_mutex_unlock(&par->mu);
        r->sp_take ^= 1;
        if (rc < 0) {
            if (rc != WR_ESTOP)
                syw_par_fail(par, &err, r->fail_kind);
            break;
        }
    }
    pthread_mutex_lock(&par->mu);
    par->nrunning--;
    pthread_cond_broadcast(&par->cv);
    pthread_mutex_unlock(&par->mu);
    return NULL;
}

/* Stops and joins the readers, closes their connections, frees everything. */
static void
syw_par_close(syw_par_t *par)
{
    if (par->mu_ok) {
        pthread_mutex_lock(&par->mu);
        par->stop = true;
        pthread_cond_broadcast(&par->cv);
        pthread_mutex_unlock(&par->mu);
    }
    for (int i = 0; i < par->nreaders; i++) {
        syw_reader_t *r = &par->readers[i];
        char buf[256];

        if (r->fetch_started && r->cancel)
            (void)PQcancel(r->cancel, buf, sizeof(buf)); /* a fetch waiting for COPY data */
    }
    for (int i = 0; i < par->nreaders; i++) {
        syw_reader_t *r = &par->readers[i];

        if (r->started)
            pthread_join(r->thread, NULL);
        if (r->fetch_started)
            pthread_join(r->fetch_thread, NULL);
        if (r->cancel)
            PQfreeCancel(r->cancel);
        if (r->conn)
            PQfinish(r->conn);
        if (r->dest)
            r->dest->ops->close(r->dest); /* rolls back a range not committed */
        syw_batch_close(&r->q[0].b);
        syw_batch_close(&r->q[1].b);
        copy_parser_close(&r->parser);
        for (int k = 0; k < 2; k++)
            if (r->sp[k].f)
                fclose(r->sp[k].f);
        free(r->rbuf);
    }
    free(par->readers);
    free(par->reported);
    free(par->ranges);
    free(par->order);
    free(par->cols);
    if (par->mu_ok) {
        pthread_mutex_destroy(&par->mu);
        pthread_cond_destroy(&par->cv);
    }
    memset(par, 0, sizeof(*par));
}

/* The relations of the table with their sizes in pages, read in the snapshot: the table
 * itself, or, for a partitioned table (published through its root), its leaf partitions.
 * Each becomes one or more ranges. */
static int
syw_plan(syw_t *w, syw_par_t *par, PGconn *c, int conns, wr_err_t *err)
{
    char sql[512];
    PGresult *res;
    uint64_t total = 0, per;
    uint32_t n = 0, cap = 0;
    int nrel;

    if (w->relkind == 'p')
        snprintf(sql, sizeof(sql),
                 "SELECT c.oid, c.relkind, CASE WHEN c.relkind IN ('r', 'm') THEN "
                 "pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')"
                 "::bigint ELSE 0 END FROM pg_catalog.pg_partition_tree(%u) t JOIN "
                 "pg_catalog.pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY c.oid",
                 w->relid);
    else
        snprintf(sql, sizeof(sql),
                 "SELECT c.oid, c.relkind, pg_catalog.pg_relation_size(c.oid) / "
                 "pg_catalog.current_setting('block_size')::bigint FROM pg_catalog.pg_class c "
                 "WHERE c.oid = %u",
                 w->relid);
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        wr_err_set(err, WR_ECONN, "sizing \"%s\" for the copy: %s", w->table, PQerrorMessage(c));
        PQclear(res);
        return err->code;
    }
    nrel = PQntuples(res);
    for (int i = 0; i < nrel; i++)
        total += strtoull(PQgetvalue(res, i, 2), NULL, 10);
    /* about SYW_RANGES_PER_CONN ranges a connection, none under the minimum, none over the
     * maximum, no more than SYW_MAX_RANGES in all */
    per = total / ((uint64_t)conns * SYW_RANGES_PER_CONN) + 1;
    if (per < SYW_RANGE_MIN_PAGES)
        per = SYW_RANGE_MIN_PAGES;
    if (per > SYW_RANGE_MAX_PAGES)
        per = SYW_RANGE_MAX_PAGES;
    if (total / per + (uint64_t)nrel > SYW_MAX_RANGES)
        per = total / (SYW_MAX_RANGES - (uint64_t)nrel) + 1;
    if ((uint64_t)nrel > SYW_MAX_RANGES) {
        PQclear(res);
        return wr_err_set(err, WR_EUNSUPPORTED,
                          "\"%s\" has %d partitions, at most %d are copied "
                          "by range",
                          w->table, nrel, SYW_MAX_RANGES);
    }
    for (int i = 0; i < nrel || (nrel == 0 && n == 0); i++) {
        /* a partitioned table without partitions: one range over the root, which is empty */
        uint32_t leaf = nrel ? (uint32_t)strtoul(PQgetvalue(res, i, 0), NULL, 10) : w->relid;
        char kind = nrel ? PQgetvalue(res, i, 1)[0] : 'p';
        uint64_t pages = nrel ? strtoull(PQgetvalue(res, i, 2), NULL, 10) : 0;
        uint64_t k = pages / per + (pages % per ? 1 : 0);

        if (k == 0)
            k = 1;
        for (uint64_t j = 0; j < k; j++) {
            syw_range_t *rg;

            if (n == cap) {
                syw_range_t *g;
                cap = cap ? cap * 2 : 16;
                if (!(g = realloc(par->ranges, cap * sizeof(*g)))) {
                    PQclear(res);
                    return wr_err_set(err, WR_ENOMEM, "out of memory planning the copy");
                }
                par->ranges = g;
            }
            rg = &par->ranges[n++];
            memset(rg, 0, sizeof(*rg));
            rg->leaf = leaf;
            /* relations without pages of their own are read whole, once */
            rg->whole = !(kind == 'r' || kind == 'm') || k == 1;
            rg->first_page = rg->whole ? 0 : (uint32_t)(j * per);
            rg->end_page = rg->whole || j == k - 1 ? 0 : (uint32_t)((j + 1) * per);
            rg->pages = j == k - 1 ? pages - j * per : per;
            if (rg->whole)
                rg->pages = pages;
        }
        if (nrel == 0)
            break;
    }
    PQclear(res);
    par->nranges = n;
    return 0;
}

/* Largest first (stable on the plan's order). */
static int
syw_par_order(syw_par_t *par, wr_err_t *err)
{
    if (!(par->order = calloc(par->nranges ? par->nranges : 1, sizeof(*par->order))))
        return wr_err_set(err, WR_ENOMEM, "out of memory ordering the copy's ranges");
    for (uint32_t i = 0; i < par->nranges; i++) {
        uint32_t j = i;
        while (j > 0 && par->ranges[par->order[j - 1]].pages < par->ranges[i].pages) {
            par->order[j] = par->order[j - 1];
            j--;
        }
        par->order[j] = i;
    }
    return 0;
}

/* The ranges as a range of the plan persisted with the snapshot for the supervisor. */
static int
syw_par_send_plan(syw_t *w, syw_par_t *par, const char *snapshot, char *held, size_t held_len,
                  wr_err_t *err)
{
    ipc_copy_range_t *ir = calloc(par->nranges ? par->nranges : 1, sizeof(*ir));
    int rc;

    if (!ir)
        return wr_err_set(err, WR_ENOMEM, "out of memory sending the copy plan");
    for (uint32_t i = 0; i < par->nranges; i++) {
        const syw_range_t *rg = &par->ranges[i];
        ir[i].leaf = rg->leaf;
        /* whole: pages [0, 0), i.e. from 0 to the end, without a ctid condition */
        ir[i].first_page = rg->first_page;
        ir[i].end_page = rg->end_page;
        ir[i].rows = rg->rows;
        ir[i].done = rg->done;
    }
    rc = wk_chan_copy_plan(&w->chan, w->relid, par->x, snapshot, ir, par->nranges, held, held_len,
                           err);
    free(ir);
    return rc;
}

/* The plan back from the supervisor (a restart): *ok false if there is none. */
static int
syw_par_load_plan(syw_t *w, syw_par_t *par, char *held, size_t held_len, bool *ok, wr_err_t *err)
{
    ipc_msg_t m;
    int rc;

    *ok = false;
    if ((rc = wk_chan_copy_plan_get(&w->chan, w->relid, &m, err)) < 0)
        return rc;
    if (m.u.copy_plan.n > 0 && m.u.copy_plan.n <= SYW_MAX_RANGES &&
        (par->ranges = calloc(m.u.copy_plan.n, sizeof(*par->ranges))) != NULL) {
        for (uint32_t i = 0; i < m.u.copy_plan.n; i++) {
            const ipc_copy_range_t *ir = &m.u.copy_plan.ranges[i];
            syw_range_t *rg = &par->ranges[i];

            rg->leaf = ir->leaf;
            rg->first_page = ir->first_page;
            rg->end_page = ir->end_page;
            rg->whole = ir->first_page == 0 && ir->end_page == 0;
            /* the size of an open range is not known any more: after the others */
            rg->pages = ir->end_page > ir->first_page ? ir->end_page - ir->first_page : 0;
        }
        par->nranges = m.u.copy_plan.n;
        par->x = m.u.copy_plan.lsn;
        snprintf(held, held_len, "%s", m.u.copy_plan.snapshot ? m.u.copy_plan.snapshot : "");
        *ok = held[0] != '\0';
    }
    ipc_msg_clear(&m);
    return 0;
}

/* Writes batch b (of reader r) in the open range transaction; at its last batch commits the
 * range and reports it. */
/* Counts the COPY bytes the readers received since the last call in the metrics (the
 * main thread's wkm_t; the readers only add to par->bytes). */
static void
syw_par_count_bytes(syw_t *w, syw_par_t *par)
{
    uint64_t n;

    pthread_mutex_lock(&par->mu);
    n = par->bytes;
    par->bytes = 0;
    pthread_mutex_unlock(&par->mu);
    if (n > 0)
        wkm_bytes(&w->metrics, (size_t)n);
}

static int
syw_par_write_batch(syw_t *w, syw_par_t *par, syw_copy_t *cp, syw_pbatch_t *b, uint64_t *range_rows,
                    wr_err_t *err)
{
    int64_t t0;
    int rc;

    if (!cp->dest_open) {
        if ((rc = w->dest->ops->begin(w->dest, err)) < 0)
            return rc;
        cp->dest_open = true;
        *range_rows = 0;
        wkm_batch_begin(&w->metrics);
    }
    if (b->b.n > 0) {
        syw_batch_resolve(&b->b);
        if ((rc = w->dest->ops->write_rows(w->dest, w->relid, b->b.rows, b->b.n, err)) < 0)
            return rc;
    }
    *range_rows += b->b.n;
    cp->rows += b->b.n; /* with the rows of earlier processes' ranges: for progress */
    if (!b->last) {
        FAILPOINT("sync.mid_range");
        return 0;
    }
    t0 = wkm_clock_us();
    if ((rc = w->dest->ops->commit_range(w->dest, w->relid, par->x, b->part, *range_rows, err)) <
        0) {
        cp->dest_open = false; /* commit_range rolls back what it could not commit */
        wkm_batch_rollback(&w->metrics);
        return rc;
    }
    wkm_batch_commit(&w->metrics, t0);
    cp->dest_open = false;
    pthread_mutex_lock(&par->mu);
    par->ranges[b->part].done = true;
    par->ranges[b->part].rows = *range_rows;
    pthread_mutex_unlock(&par->mu);
    log_info("range copied table=%s part=%u rows=%" PRIu64, w->table, b->part, *range_rows);
    if (par->planned &&
        (rc = wk_chan_copy_range_done(&w->chan, w->relid, b->part, *range_rows, err)) < 0)
        return rc;
    FAILPOINT("sync.after_range");
    return 0;
}

/* The writer (range_writers 1): one range at a time, its batches in order, until every
 * range is committed. Returns 0, WR_ESTOP (stop or signal), or an error (err; *kind the
 * Errored kind when a reader's error is in the data). */
static int
syw_par_write(syw_t *w, syw_par_t *par, syw_copy_t *cp, const char **kind, wr_err_t *err)
{
    int cur = -1; /* the reader whose range the open transaction holds */
    uint64_t range_rows = 0;
    int rc;

    *kind = NULL;
    for (;;) {
        syw_pbatch_t *b = NULL;
        bool all_done = true;

        if (syw_should_stop(w))
            return wr_err_set(err, WR_ESTOP, "stopped");
        pthread_mutex_lock(&par->mu);
        if (par->failed) {
            *err = par->err;
            *kind = par->kind;
            pthread_mutex_unlock(&par->mu);
            return err->code ? err->code : WR_ECONN;
        }
        if (cur < 0) {
            for (int i = 0; i < par->nreaders; i++) {
                syw_reader_t *r = &par->readers[(i + cp->rr) % par->nreaders];
                if (r->q[r->take].ready) {
                    cur = (i + cp->rr) % par->nreaders;
                    cp->rr = cur + 1;
                    break;
                }
            }
        }
        if (cur >= 0 && par->readers[cur].q[par->readers[cur].take].ready)
            b = &par->readers[cur].q[par->readers[cur].take];
        for (uint32_t i = 0; i < par->nranges; i++)
            all_done = all_done && par->ranges[i].done;
        if (b == NULL && all_done) {
            pthread_mutex_unlock(&par->mu);
            return 0;
        }
        if (b == NULL && par->nrunning == 0) {
            pthread_mutex_unlock(&par->mu);
            return wr_err_set(err, WR_EPROTO, "the copy's readers ended with ranges not copied");
        }
        if (b == NULL) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&par->cv, &par->mu, &ts);
            pthread_mutex_unlock(&par->mu);
            if ((rc = wk_chan_poll(&w->chan, 0, err)) < 0)
                return rc;
            continue;
        }
        pthread_mutex_unlock(&par->mu);
        rc = syw_par_write_batch(w, par, cp, b, &range_rows, err);
        pthread_mutex_lock(&par->mu);
        b->ready = false;
        b->b.n = 0;
        b->b.alen = 0;
        par->readers[cur].take ^= 1;
        if (b->last)
            cur = -1;
        pthread_cond_broadcast(&par->cv);
        pthread_mutex_unlock(&par->mu);
        if (rc < 0)
            return rc;
        syw_par_count_bytes(w, par);
        if ((rc = syw_copy_progress(w, cp, err)) < 0)
            return rc;
    }
}

/* Several writers (range_writers > 1): the readers write and commit their ranges with
 * their own destination handles; this thread reports each committed range (log, state
 * store, progress) and watches the channel, until every range is committed. Returns as
 * syw_par_write. */
static int
syw_par_collect(syw_t *w, syw_par_t *par, syw_copy_t *cp, const char **kind, wr_err_t *err)
{
    int rc;

    *kind = NULL;
    for (;;) {
        uint32_t part = UINT32_MAX;
        uint64_t rows = 0;
        bool all_done = true;

        if (syw_should_stop(w))
            return wr_err_set(err, WR_ESTOP, "stopped");
        pthread_mutex_lock(&par->mu);
        if (par->failed) {
            *err = par->err;
            *kind = par->kind;
            pthread_mutex_unlock(&par->mu);
            return err->code ? err->code : WR_ECONN;
        }
        for (uint32_t i = 0; i < par->nranges; i++) {
            all_done = all_done && par->ranges[i].done;
            if (part == UINT32_MAX && par->ranges[i].done && !par->reported[i]) {
                part = i;
                rows = par->ranges[i].rows;
                par->reported[i] = true;
            }
        }
        if (part == UINT32_MAX && all_done) {
            pthread_mutex_unlock(&par->mu);
            return 0;
        }
        if (part == UINT32_MAX && par->nrunning == 0) {
            pthread_mutex_unlock(&par->mu);
            return wr_err_set(err, WR_EPROTO, "the copy's writers ended with ranges not copied");
        }
        if (part == UINT32_MAX) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&par->cv, &par->mu, &ts);
            pthread_mutex_unlock(&par->mu);
            if ((rc = wk_chan_poll(&w->chan, 0, err)) < 0)
                return rc;
            continue;
        }
        pthread_mutex_unlock(&par->mu);
        cp->rows += rows;
        log_info("range copied table=%s part=%u rows=%" PRIu64, w->table, part, rows);
        if (par->planned && (rc = wk_chan_copy_range_done(&w->chan, w->relid, part, rows, err)) < 0)
            return rc;
        syw_par_count_bytes(w, par);
        if ((rc = syw_copy_progress(w, cp, err)) < 0)
            return rc;
        FAILPOINT("sync.after_range");
    }
}

/* Reports to the supervisor ranges the destination committed but the plan does not say
 * are done (the process died between the two). */
static int
syw_par_report_done(syw_t *w, syw_par_t *par, const bool *was_done, wr_err_t *err)
{
    int rc;

    for (uint32_t i = 0; i < par->nranges; i++) {
        if (par->ranges[i].done && !was_done[i] &&
            (rc = wk_chan_copy_range_done(&w->chan, w->relid, i, par->ranges[i].rows, err)) < 0)
            return rc;
    }
    return 0;
}

/* Starts the readers: connection in the snapshot, batches, thread. The first reader's
 * connection is opened by the caller (it read the schema and the plan). */
static int
syw_par_start(syw_t *w, syw_par_t *par, int nreaders, wr_err_t *err)
{
    size_t batch_rows =
        w->cfg.copy_batch_rows > 0 ? (size_t)w->cfg.copy_batch_rows : SYW_DEFAULT_BATCH_ROWS;
    size_t batch_bytes =
        w->cfg.batch_max_bytes > 0 ? (size_t)w->cfg.batch_max_bytes : SYW_DEFAULT_BATCH_BYTES;
    int rc;

    bool own = nreaders > 1 && w->dest->ops->range_writers(w->dest) >= nreaders;

    if (batch_bytes > SYW_PAR_BATCH_BYTES)
        batch_bytes = SYW_PAR_BATCH_BYTES; /* two a reader */
    par->batch_rows = batch_rows;
    if (own && !(par->reported = calloc(par->nranges, sizeof(*par->reported))))
        return wr_err_set(err, WR_ENOMEM, "out of memory for the copy's ranges");
    for (uint32_t i = 0; own && i < par->nranges; i++)
        par->reported[i] = par->ranges[i].done; /* committed before this process */
    for (int i = 0; i < nreaders; i++) {
        syw_reader_t *r = &par->readers[i];

        if (r->conn == NULL && (rc = syw_snapshot_connect(w, par->snapshot, &r->conn, err)) < 0)
            return rc;
        if (own) {
            /* its own handle, with the table taken up as the main one left it */
            if ((rc = dest_open(&w->cfg, "sync", &r->dest, err)) < 0 ||
                (rc = r->dest->ops->begin(r->dest, err)) < 0)
                return rc;
            if ((rc = r->dest->ops->copy_resume(r->dest, w->schema, err)) < 0 ||
                (rc = r->dest->ops->commit(r->dest, NULL, NULL, err)) < 0) {
                (void)r->dest->ops->rollback(r->dest, &(wr_err_t){0});
                return rc;
            }
        }
        if (!(r->cancel = PQgetCancel(r->conn)))
            return wr_err_set(err, WR_ENOMEM, "out of memory for a cancel request");
        for (int k = 0; k < 2; k++)
            if ((rc = syw_batch_init(&r->q[k].b, w->schema->ncols, batch_rows, batch_bytes, err)) <
                0)
                return rc;
    }
    par->nrunning = nreaders;
    for (int i = 0; i < nreaders; i++) {
        syw_reader_t *r = &par->readers[i];

        if (pthread_create(&r->thread, NULL, syw_reader_main, r) != 0) {
            pthread_mutex_lock(&par->mu);
            par->nrunning -= nreaders - i;
            pthread_mutex_unlock(&par->mu);
            return wr_err_set(err, WR_ENOMEM, "cannot start a copy thread: %s", strerror(errno));
        }
        r->started = true;
        if (pthread_create(&r->fetch_thread, NULL, syw_fetch_main, r) != 0) {
            pthread_mutex_lock(&par->mu);
            r->fetch_end = true; /* its reader thread ends at once */
            par->nrunning -= nreaders - i - 1;
            pthread_cond_broadcast(&par->cv);
            pthread_mutex_unlock(&par->mu);
            return wr_err_set(err, WR_ENOMEM, "cannot start a copy thread: %s", strerror(errno));
        }
        r->fetch_started = true;
    }
    return 0;
}

/* The quoted column list of the COPY statements. */
static int
syw_par_cols(syw_t *w, syw_par_t *par, PGconn *c, wr_err_t *err)
{
    size_t len = 0;
    FILE *f = open_memstream(&par->cols, &len);
    bool ok = f != NULL;

    for (uint16_t i = 0; ok && i < w->schema->ncols; i++) {
        char *q = repl_quote_ident(c, w->schema->cols[i].name);
        ok = q != NULL;
        if (ok) {
            fprintf(f, "%s%s", i ? ", " : "", q);
            PQfreemem(q);
        }
    }
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok)
        return wr_err_set(err, WR_ENOMEM, "quoting the columns of \"%s\"", w->table);
    return 0;
}

/* Contract step 1 for a destination that copies by range (see "the parallel, resumable
 * copy" above). Called by syw_copy with DataSync acked and the destination open. Returns
 * SYW_CONTINUE with the table in FinishedCopy, or an exit code. */
static int
syw_copy_ranges(syw_t *w)
{
    syw_par_t par;
    syw_copy_t cp;
    wr_err_t err;
    char held[64] = "";
    bool have_plan = false, resume = false, missing = false;
    const char *kind = NULL;
    bool *was_done = NULL;
    int conns =
        w->cfg.max_copy_connections_per_table > 0 ? w->cfg.max_copy_connections_per_table : 1;
    int nreaders, rc, code;
    int64_t t0 = wr_now_ms();
    double cpu0 = syw_cpu_seconds();
    uint32_t ndone = 0;
    wr_lsn_t x = 0;
    uint64_t kept = 0;

    memset(&par, 0, sizeof(par));
    memset(&cp, 0, sizeof(cp));
    wr_err_clear(&err);
    par.w = w;
    if (pthread_mutex_init(&par.mu, NULL) != 0 || pthread_cond_init(&par.cv, NULL) != 0) {
        wr_err_set(&err, WR_ENOMEM, "cannot make the copy's lock");
        return syw_fail("preparing the copy", &err);
    }
    par.mu_ok = true;

    /* resume what a crashed process began, if everything is still there */
    if (syw_par_load_plan(w, &par, held, sizeof(held), &have_plan, &err) < 0) {
        code = syw_fail("reading the copy plan", &err);
        goto out;
    }
    {
        bool found = false, active = false;
        wr_lsn_t confirmed = 0;

        if (repl_slot_info(w->sql, w->slot, &found, &active, &confirmed, NULL, 0, &err) < 0 ||
            (found && active && src_take_slot(w->sql, w->slot, &err) < 0)) {
            code = syw_fail("reading the slot", &err);
            goto out;
        }
        resume = have_plan && found && confirmed == par.x;
        if (!resume && found) {
            if (repl_drop_slot(w->sql, w->slot, &err) < 0) {
                code = syw_fail("dropping the previous slot", &err);
                goto out;
            }
            log_info("slot dropped slot=%s reason=recopy", w->slot);
        }
    }
    if (!(par.readers = calloc((size_t)conns, sizeof(*par.readers)))) {
        wr_err_set(&err, WR_ENOMEM, "out of memory for %d copy connections", conns);
        code = syw_fail("preparing the copy", &err);
        goto out;
    }
    for (int i = 0; i < conns; i++) {
        par.readers[i].par = &par;
        par.readers[i].id = i;
        copy_parser_init(&par.readers[i].parser);
    }
    par.nreaders = conns;
    if (resume) {
        snprintf(par.snapshot, sizeof(par.snapshot), "%s", held);
        if (syw_snapshot_connect(w, par.snapshot, &par.readers[0].conn, &err) < 0) {
            /* the held snapshot is gone (the supervisor restarted, the server ended it) */
            log_info("cannot resume the copy, starting over table=%s reason=\"%s\"", w->table,
                     err.msg);
            wr_err_clear(&err);
            resume = false;
            if (repl_drop_slot(w->sql, w->slot, &err) < 0) {
                code = syw_fail("dropping the previous slot", &err);
                goto out;
            }
        }
    }
    if (!resume) {
        free(par.ranges);
        par.ranges = NULL;
        par.nranges = 0;
        if (have_plan && wk_chan_copy_plan(&w->chan, w->relid, 0, "", NULL, 0, NULL, 0, &err) < 0) {
            code = syw_fail("forgetting the previous copy plan", &err);
            goto out;
        }
        if (repl_connect(w->cfg.source_conninfo, true, w->slot, &w->repl, &err) < 0) {
            code = syw_fail("connecting for the copy", &err);
            goto out;
        }
        if (repl_create_slot_export(w->repl, w->slot, &par.x, par.snapshot, sizeof(par.snapshot),
                                    &err) < 0) {
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        if (syw_snapshot_connect(w, par.snapshot, &par.readers[0].conn, &err) < 0) {
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
    }

    /* the schema, the row filter and (new) the plan, in the snapshot */
    if ((rc = syw_load_schema(w, par.readers[0].conn, &missing, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if (missing || w->schema->ncols == 0) {
        (void)syw_copy_abort(w, &cp, 0);
        if (missing) {
            wr_err_set(&err, WR_EUNSUPPORTED, "table %u (\"%s\") no longer exists", w->relid,
                       w->table);
            wr_err_hint(&err, "remove it from the publication, or recreate it and run \"walrelay "
                              "resync\"");
        } else {
            wr_err_set(&err, WR_EUNSUPPORTED, "table \"%s\" has no columns", w->table);
            wr_err_hint(&err, "add a column or remove the table from the publication");
        }
        code = syw_set_errored(w, missing ? "table_missing" : "unsupported", &err);
        goto out;
    }
    if (wr_schema_nkeys(w->schema) == 0 && w->schema->replident != 'f')
        log_warn("table has no key: updates and deletes will be refused table=%s", w->table);
    syw_load_meta(w, par.x);
    if ((rc = syw_load_row_filter(w, par.readers[0].conn, &err)) < 0 ||
        (rc = syw_par_cols(w, &par, par.readers[0].conn, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if (w->row_filter != NULL)
        log_info("copy applies the publication's row filter table=%s filter=\"%s\"", w->table,
                 w->row_filter);
    if (!resume && (rc = syw_plan(w, &par, par.readers[0].conn, conns, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if ((rc = syw_put_stream_schema(w, par.x, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }

    FAILPOINT("sync.before_copy");
    /* the destination: emptied (a new copy), or taken up (a resumed one), in a transaction
     * of its own that waits on nothing outside: the rows' transactions begin once a batch
     * is complete (issue 12, defect 2) */
    if ((rc = w->dest->ops->begin(w->dest, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    cp.dest_open = true;
    if (resume)
        rc = w->dest->ops->copy_resume(w->dest, w->schema, &err);
    else
        rc = syw_copy_reset_table(w, &err);
    if (rc == 0)
        rc = w->dest->ops->clear_key(w->dest, w->stream, &err);
    if (rc == 0) {
        w->schema_registered = true;
        rc = w->dest->ops->commit(w->dest, w->stream, NULL, &err);
    }
    cp.dest_open = false;
    if (rc < 0) {
        code = syw_copy_error(w, &cp, "dest_refused", &err);
        goto out;
    }
    /* the plan persisted and the snapshot held only now: a plan means the destination table
     * was emptied for it (a restart that finds one keeps the committed ranges). A copy of
     * one range has nothing to resume: no plan, no snapshot held (a small table's copy
     * costs no connection of the supervisor's and no state store write) */
    par.planned = resume || par.nranges > 1;
    if (!resume && par.planned &&
        (rc = syw_par_send_plan(w, &par, par.snapshot, held, sizeof(held), &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if (resume) {
        uint64_t *rows = calloc(par.nranges, sizeof(*rows));
        bool *done = calloc(par.nranges, sizeof(*done));

        was_done = calloc(par.nranges, sizeof(*was_done));
        if (!rows || !done || !was_done) {
            free(rows);
            free(done);
            wr_err_set(&err, WR_ENOMEM, "out of memory resuming the copy");
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        rc = w->dest->ops->ranges_done(w->dest, w->relid, par.x, done, rows, par.nranges, &err);
        for (uint32_t i = 0; rc == 0 && i < par.nranges; i++) {
            was_done[i] = false;
            par.ranges[i].done = done[i];
            par.ranges[i].rows = done[i] ? rows[i] : 0;
            if (done[i]) {
                ndone++;
                par.kept += rows[i];
            }
        }
        free(rows);
        free(done);
        if (rc < 0) {
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        /* the plan's done flags came with it: report what the destination has beyond them */
        {
            ipc_msg_t m;
            if (wk_chan_copy_plan_get(&w->chan, w->relid, &m, &err) == 0) {
                for (uint32_t i = 0; i < m.u.copy_plan.n && i < par.nranges; i++)
                    was_done[i] = m.u.copy_plan.ranges[i].done;
                ipc_msg_clear(&m);
            }
        }
        if ((rc = syw_par_report_done(w, &par, was_done, &err)) < 0) {
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        log_info("copy resumed table=%s slot=%s consistent_point=" WR_LSN_FMT
                 " ranges_done=%u/%u rows_kept=%" PRIu64 " connections=%d",
                 w->table, w->slot, WR_LSN_ARGS(par.x), ndone, par.nranges, par.kept, conns);
    } else {
        log_info("copy started table=%s slot=%s consistent_point=" WR_LSN_FMT
                 " ranges=%u connections=%d snapshot_held=%s",
                 w->table, w->slot, WR_LSN_ARGS(par.x), par.nranges, conns, held[0] ? "yes" : "no");
    }
    /* every reader imports the snapshot before the exporting connection may go */
    nreaders = (int)(par.nranges - ndone) < conns ? (int)(par.nranges - ndone) : conns;
    if (nreaders < 1)
        nreaders = 1;
    for (int i = nreaders; i < par.nreaders; i++) {
        copy_parser_close(&par.readers[i].parser);
        memset(&par.readers[i], 0, sizeof(par.readers[i]));
    }
    par.nreaders = nreaders;
    cp.rows = par.kept;
    if ((rc = syw_par_order(&par, &err)) < 0 || (rc = syw_par_start(w, &par, nreaders, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    syw_repl_close(w); /* everyone who needs the exported snapshot has imported it */

    if (par.readers[0].dest != NULL)
        rc = syw_par_collect(w, &par, &cp, &kind, &err);
    else
        rc = syw_par_write(w, &par, &cp, &kind, &err);
    if (rc == WR_ESTOP) {
        log_info("copy interrupted table=%s rows=%" PRIu64, w->table, cp.rows);
        syw_par_close(&par);
        code = syw_copy_abort(w, &cp, WR_EXIT_OK);
        goto out;
    }
    if (rc < 0) {
        syw_par_close(&par);
        code = syw_copy_error(w, &cp, kind ? kind : cp.dest_open ? "dest_refused" : NULL, &err);
        goto out;
    }
    x = par.x;
    kept = par.kept;
    syw_par_close(&par); /* every range is committed; the readers' transactions end */

    /* the copy's last transaction: what the destination put off until every row was in */
    if ((rc = w->dest->ops->begin(w->dest, &err)) == 0) {
        cp.dest_open = true;
        if (w->dest->ops->copy_done != NULL)
            rc = w->dest->ops->copy_done(w->dest, w->relid, &err);
        if (rc == 0)
            rc = w->dest->ops->commit(w->dest, w->stream, NULL, &err);
        cp.dest_open = rc < 0 && cp.dest_open;
    }
    if (rc == 0)
        rc = syw_copy_progress(w, &cp, &err);
    if (rc < 0) {
        code = syw_copy_error(w, &cp, cp.dest_open ? "dest_refused" : NULL, &err);
        goto out;
    }
    {
        double secs = (double)(wr_now_ms() - t0) / 1000.0;
        log_info("copy finished table=%s rows=%" PRIu64 " rows_this_run=%" PRIu64
                 " seconds=%.3f rows_per_second=%.0f cpu_seconds=%.3f",
                 w->table, cp.rows, cp.rows - kept, secs,
                 secs > 0 ? (double)(cp.rows - kept) / secs : (double)cp.rows,
                 syw_cpu_seconds() - cpu0);
    }

    FAILPOINT("sync.before_finishedcopy");
    if (wk_chan_set_phase(&w->chan, w->relid, PH_FINISHEDCOPY, x, "", "", "", &err) < 0) {
        code = syw_fail("requesting phase finishedcopy", &err);
        goto out;
    }
    w->phase = PH_FINISHEDCOPY;
    w->lsn = x;
    code = SYW_CONTINUE;
    FAILPOINT("sync.after_finishedcopy");

out:
    free(was_done);
    syw_par_close(&par);
    return code;
}

/* Contract step 1 (see the header). Returns SYW_CONTINUE with the table in FinishedCopy,
 * or an exit code. */
static int
syw_copy(syw_t *w)
{
    syw_copy_t cp;
    wr_err_t err;
    wr_lsn_t x = 0;
    bool missing = false;
    int64_t t0;
    int rc, code;
    size_t batch_rows;
    size_t batch_bytes;
    PGresult *res;

    memset(&cp, 0, sizeof(cp));
    wr_err_clear(&err);
    copy_parser_init(&cp.parser);

    if (wk_chan_set_phase(&w->chan, w->relid, PH_DATASYNC, 0, "", "", "", &err) < 0) {
        code = syw_fail("requesting phase datasync", &err);
        goto out;
    }
    w->phase = PH_DATASYNC;
    w->lsn = 0;
    FAILPOINT("sync.after_datasync");

    if (syw_sql_connect(w, &err) < 0 || syw_dest_open(w, &err) < 0) {
        code = syw_fail("preparing the copy", &err);
        goto out;
    }
    /* a destination that speaks COPY (write_copy: postgres) takes the whole copy in one
     * transaction through one connection, never by range (see the parallel copy's comment) */
    if (w->dest->ops->write_copy == NULL && w->dest->ops->range_writers != NULL &&
        w->dest->ops->range_writers(w->dest) > 0 && w->dest->ops->commit_range != NULL &&
        w->dest->ops->ranges_done != NULL && w->dest->ops->copy_resume != NULL) {
        code = syw_copy_ranges(w); /* issue 11: by range, resumable */
        goto out;
    }
    /* a previous attempt's slot (crash mid-copy, or a resync): its snapshot is useless */
    {
        bool found = false, active = false;
        wr_lsn_t confirmed;

        if (repl_slot_info(w->sql, w->slot, &found, &active, &confirmed, NULL, 0, &err) < 0 ||
            (found && active && src_take_slot(w->sql, w->slot, &err) < 0) ||
            (found && repl_drop_slot(w->sql, w->slot, &err) < 0)) {
            code = syw_fail("dropping the previous slot", &err);
            goto out;
        }
        if (found)
            log_info("slot dropped slot=%s reason=recopy", w->slot);
    }
    if (repl_connect(w->cfg.source_conninfo, true, w->slot, &w->repl, &err) < 0 ||
        repl_exec(w->repl, "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", &err) < 0) {
        code = syw_fail("starting the copy transaction", &err);
        syw_repl_close(w);
        goto out;
    }
    if (repl_create_slot(w->repl, w->slot, true, &x, &err) < 0) {
        /* the slot may exist if the command failed late: drop it too */
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    t0 = wr_now_ms();
    log_info("copy started table=%s slot=%s consistent_point=" WR_LSN_FMT, w->table, w->slot,
             WR_LSN_ARGS(x));

    if ((rc = syw_load_schema(w, w->repl, &missing, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if (missing) {
        (void)syw_copy_abort(w, &cp, 0);
        wr_err_set(&err, WR_EUNSUPPORTED, "table %u (\"%s\") no longer exists", w->relid, w->table);
        wr_err_hint(&err, "remove it from the publication, or recreate it and run \"walrelay "
                          "resync\"");
        code = syw_set_errored(w, "table_missing", &err);
        goto out;
    }
    if (w->schema->ncols == 0) {
        (void)syw_copy_abort(w, &cp, 0);
        wr_err_set(&err, WR_EUNSUPPORTED, "table \"%s\" has no columns", w->table);
        wr_err_hint(&err, "add a column or remove the table from the publication");
        code = syw_set_errored(w, "unsupported", &err);
        goto out;
    }
    if (wr_schema_nkeys(w->schema) == 0 && w->schema->replident != 'f')
        log_warn("table has no key: updates and deletes will be refused table=%s", w->table);
    syw_load_meta(w, x);
    if ((rc = syw_load_row_filter(w, w->repl, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    if (w->row_filter != NULL)
        log_info("copy applies the publication's row filter table=%s filter=\"%s\"", w->table,
                 w->row_filter);

    if ((rc = syw_put_stream_schema(w, x, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    FAILPOINT("sync.before_copy");
    /* the destination table is registered in the first destination transaction below
     * (syw_copy_reset_table), where it may have to be created again */

    batch_rows =
        w->cfg.copy_batch_rows > 0 ? (size_t)w->cfg.copy_batch_rows : SYW_DEFAULT_BATCH_ROWS;
    batch_bytes =
        w->cfg.batch_max_bytes > 0 ? (size_t)w->cfg.batch_max_bytes : SYW_DEFAULT_BATCH_BYTES;
    if ((rc = syw_batch_init(&cp.batch, w->schema->ncols, batch_rows, batch_bytes, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }

    /* the first destination transaction (truncate, forget the catch-up key, first batch)
     * begins with the first batch's flush, not before the COPY sends rows */

    /* (issue 7) the postgres destination takes built-in types in the binary format, which
     * both servers read and write with less work than text */
    if (w->dest->ops->write_copy != NULL && w->dest->ops->copy_binary != NULL &&
        (rc = w->dest->ops->copy_binary(w->dest, w->schema, PQserverVersion(w->repl), &cp.binary,
                                        &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    copy_bin_scan_init(&cp.bscan, w->schema->ncols);
    if ((rc = syw_copy_statement(w, cp.binary, &cp.sql, &err)) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    res = PQexec(w->repl, cp.sql);
    if (PQresultStatus(res) != PGRES_COPY_OUT) {
        /* lost connection, or a refusal someone may fix (permissions): retried */
        wr_err_set(&err, WR_ECONN, "%s", PQerrorMessage(w->repl));
        PQclear(res);
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    PQclear(res);

    for (;;) {
        char *line = NULL;
        int n;
        wr_row_t row;

        if (syw_should_stop(w)) {
            log_info("copy interrupted table=%s rows=%" PRIu64, w->table,
                     cp.rows + cp.batch.n + cp.raw_rows);
            code = syw_copy_abort(w, &cp, WR_EXIT_OK);
            goto out;
        }
        n = PQgetCopyData(w->repl, &line, 1);
        if (n == 0) {
            if ((rc = syw_copy_wait(w, &err)) < 0) {
                code = syw_copy_error(w, &cp, NULL, &err);
                goto out;
            }
            continue;
        }
        if (n == -1)
            break;
        if (n < 0) {
            wr_err_set(&err, WR_ECONN, "%s", PQerrorMessage(w->repl));
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        wkm_bytes(&w->metrics, (size_t)n);
        if (w->dest->ops->write_copy != NULL) {
            rc = syw_copy_raw(w, &cp, line, (size_t)n, batch_rows, batch_bytes, &err);
            PQfreemem(line);
            if (rc > 0 && (rc = syw_copy_progress(w, &cp, &err)) == 0)
                FAILPOINT("sync.mid_copy");
            if (rc < 0) {
                code = syw_copy_error(w, &cp,
                                      cp.scan_failed ? "copy_parse"
                                      : cp.dest_open ? "dest_refused"
                                                     : NULL,
                                      &err);
                goto out;
            }
            continue;
        }
        rc = copy_parse_line(&cp.parser, line, (size_t)n, w->schema->ncols, &row, &err);
        if (rc == 0 && syw_batch_full(&cp.batch, &row)) {
            /* the row lives in the parser's buffer: flushing does not touch it */
            if ((rc = syw_copy_flush(w, &cp, false, &err)) < 0 ||
                (rc = syw_copy_progress(w, &cp, &err)) < 0) {
                PQfreemem(line);
                code = syw_copy_error(w, &cp, cp.dest_open ? "dest_refused" : NULL, &err);
                goto out;
            }
            FAILPOINT("sync.mid_copy");
        }
        if (rc == 0)
            rc = syw_batch_add(&cp.batch, &row, &err);
        PQfreemem(line);
        if (rc < 0) {
            code = syw_copy_error(w, &cp, "copy_parse", &err);
            goto out;
        }
    }
    /* the COPY's own result, then the end of results */
    while ((res = PQgetResult(w->repl)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            wr_err_set(&err, WR_ECONN, "%s", PQerrorMessage(w->repl));
            PQclear(res);
            code = syw_copy_error(w, &cp, NULL, &err);
            goto out;
        }
        PQclear(res);
    }
    if (cp.binary && (rc = copy_bin_scan_end(&cp.bscan, &err)) < 0) {
        code = syw_copy_error(w, &cp, "copy_parse", &err);
        goto out;
    }
    if ((rc = syw_copy_flush(w, &cp, true, &err)) < 0 ||
        (rc = syw_copy_progress(w, &cp, &err)) < 0) {
        code = syw_copy_error(w, &cp, cp.dest_open ? "dest_refused" : NULL, &err);
        goto out;
    }
    if (repl_exec(w->repl, "COMMIT", &err) < 0) {
        code = syw_copy_error(w, &cp, NULL, &err);
        goto out;
    }
    syw_repl_close(w);
    {
        double secs = (double)(wr_now_ms() - t0) / 1000.0;
        log_info("copy finished table=%s rows=%" PRIu64
                 " seconds=%.3f rows_per_second=%.0f format=%s",
                 w->table, cp.rows, secs, secs > 0 ? (double)cp.rows / secs : (double)cp.rows,
                 cp.binary ? "binary" : "text");
    }

    FAILPOINT("sync.before_finishedcopy");
    /* Keep the slot if this request fails: it may have been persisted with the ack lost,
     * and then the slot is what the next start resumes from. */
    if (wk_chan_set_phase(&w->chan, w->relid, PH_FINISHEDCOPY, x, "", "", "", &err) < 0) {
        code = syw_fail("requesting phase finishedcopy", &err);
        goto out;
    }
    w->phase = PH_FINISHEDCOPY;
    w->lsn = x;
    code = SYW_CONTINUE;
    FAILPOINT("sync.after_finishedcopy");

out:
    syw_batch_close(&cp.batch);
    copy_parser_close(&cp.parser);
    free(cp.sql);
    return code;
}

/* ---- syncwait ------------------------------------------------------------ */

/* Contract step 2: FinishedCopy(X) -> SyncWait(X). */
static int
syw_request_syncwait(syw_t *w)
{
    wr_err_t err;

    wr_err_clear(&err);
    if (wk_chan_set_phase(&w->chan, w->relid, PH_SYNCWAIT, w->lsn, "", "", "", &err) < 0)
        return syw_fail("requesting phase syncwait", &err);
    w->phase = PH_SYNCWAIT;
    log_info("syncwait table=%s lsn=" WR_LSN_FMT, w->table, WR_LSN_ARGS(w->lsn));
    FAILPOINT("sync.after_syncwait");
    return SYW_CONTINUE;
}

/* Waits on the channel until the table leaves SyncWait (Catchup from the apply worker, or
 * Errored / Init from elsewhere). A stop or a signal exits 0 leaving SyncWait; EOF exits 1. */
static int
syw_wait_catchup(syw_t *w)
{
    wr_err_t err;

    wr_err_clear(&err);
    while (w->phase == PH_SYNCWAIT) {
        if (syw_should_stop(w)) {
            log_info("stopping while waiting for catchup table=%s", w->table);
            return WR_EXIT_OK;
        }
        if (wk_chan_poll(&w->chan, SYW_POLL_MS, &err) < 0)
            return syw_fail("waiting for catchup", &err);
    }
    return SYW_CONTINUE;
}

/* ---- catch-up ------------------------------------------------------------ */

typedef struct syw_stream_s {
    syw_t *w;
    stm_t stm;          /* the stream engine: connection, decoding, transaction, ordinals,
                         * status feedback; stm.flush is the flush reported (durable in the
                         * destination), stm.received the write position */
    int code;           /* exit code of a handler that returned STM_STOP */
    wr_lsn_t catchup;   /* L */
    wr_lsn_t current;   /* end of the last processed commit, or idle keepalive WAL end */
    bool dest_open;     /* a destination transaction is open (its BEGIN is written) */
    int64_t opened_ms;  /* when the open destination transaction was begun */
    bool relation_ok;   /* a Relation of our relid was seen and matched */
    dest_key_t last;    /* last key durable in the destination (skip <= this) */
    dest_key_t written; /* key of the last change written in the open transaction */
    uint64_t applied;
} syw_stream_t;

/* Contract step 4, end: SyncDone(S), drop the slot, forget the stream key, exit 0. The
 * slot is kept if the request fails (the phase may still be Catchup). */
static int
syw_syncdone(syw_t *w, wr_lsn_t s, uint64_t applied)
{
    wr_err_t err;

    wr_err_clear(&err);
    syw_repl_close(w);
    if (wk_chan_set_phase(&w->chan, w->relid, PH_SYNCDONE, s, "", "", "", &err) < 0)
        return syw_fail("requesting phase syncdone", &err);
    w->phase = PH_SYNCDONE;
    w->lsn = s;
    log_info("syncdone table=%s lsn=" WR_LSN_FMT " applied=%" PRIu64, w->table, WR_LSN_ARGS(s),
             applied);
    FAILPOINT("sync.before_slot_drop");
    (void)syw_drop_slot(w);
    if (syw_clear_stream_key(w, &err) < 0)
        log_err(LOG_LVL_WARN, "forgetting the catch-up key", &err);
    return WR_EXIT_OK;
}

/* Errored during catch-up: close the stream, roll back, request ERRORED, and drop the
 * slot only once that is acked. */
static int
syw_catchup_errored(syw_t *w, syw_stream_t *st, const char *kind, const wr_err_t *cause)
{
    int code;

    if (st->dest_open) {
        wr_err_t err;
        if (w->dest->ops->rollback(w->dest, &err) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &err);
        st->dest_open = false;
    }
    syw_repl_close(w);
    code = syw_set_errored(w, kind, cause);
    if (code == WR_EXIT_CONFIG)
        (void)syw_drop_slot(w);
    return code;
}

#define SYW_MAX_SCHEMA_RECOPIES 3

/* The table's columns changed after the copy (a Relation message of catch-up differs
 * from the copied schema, or the destination table does not match the catalog when
 * catch-up resumes). Catch-up does not alter the destination: it starts over, which
 * follows every kind of change exactly (the apply worker follows changes made after the
 * handoff). Closes the stream, rolls the open destination transaction back, requests
 * INIT and returns SYW_CONTINUE: the dispatcher runs the copy again (it drops the slot).
 * A publication column list, or the same mismatch after SYW_MAX_SCHEMA_RECOPIES copies,
 * ends in Errored "schema_changed". */
static int
syw_catchup_recopy(syw_t *w, syw_stream_t *st, const wr_err_t *cause)
{
    wr_err_t err;

    wr_err_clear(&err);
    if (st->dest_open) { /* before the catalog query below: no lock across it */
        if (w->dest->ops->rollback(w->dest, &err) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &err);
        st->dest_open = false;
    }
    if (syw_column_list(w)) {
        wr_err_t e = *cause;

        wr_err_prefix(&e, "the publication sends a column list, which walrelay does not support: ");
        wr_err_hint(&e, "publish the table without a column list, then run \"walrelay resync\" "
                        "for the table");
        return syw_catchup_errored(w, st, "schema_changed", &e);
    }
    if (++w->recopies > SYW_MAX_SCHEMA_RECOPIES) {
        wr_err_t e = *cause;

        wr_err_prefix(&e,
                      "still differs after copying the table %d times: ", SYW_MAX_SCHEMA_RECOPIES);
        wr_err_hint(&e, "check the table's definition, then run \"walrelay resync\" for it");
        return syw_catchup_errored(w, st, "schema_changed", &e);
    }
    if (st->dest_open) {
        if (w->dest->ops->rollback(w->dest, &err) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &err);
        st->dest_open = false;
    }
    syw_repl_close(w);
    log_warn("schema changed during catch-up, copying the table again table=%s reason=\"%s\"",
             w->table, cause->msg);
    if (wk_chan_set_phase(&w->chan, w->relid, PH_INIT, 0, "", "", "", &err) < 0)
        return syw_fail("requesting phase init", &err);
    w->phase = PH_INIT;
    w->lsn = 0;
    syw_schema_reset(w);
    return SYW_CONTINUE;
}

/* A transient catch-up error: roll back the open transaction (it will be replayed), keep
 * the slot, exit 1 (or 2 for configuration). WR_EUNSUPPORTED (something in the stream we
 * cannot replicate) is the table's problem: Errored. */
static int
syw_catchup_fail(syw_t *w, syw_stream_t *st, const char *what, const wr_err_t *err)
{
    if (err->code == WR_EUNSUPPORTED)
        return syw_catchup_errored(w, st, "unsupported", err);
    if (st->dest_open) {
        wr_err_t rerr;
        if (w->dest->ops->rollback(w->dest, &rerr) < 0)
            log_err(LOG_LVL_WARN, "destination rollback failed", &rerr);
        st->dest_open = false;
    }
    syw_repl_close(w);
    return syw_fail(what, err);
}

/* A destination write error: Errored for refused data, else transient. */
static int
syw_catchup_dest_error(syw_t *w, syw_stream_t *st, wr_err_t *err)
{
    wr_err_prefix(err, "applying changes of \"%s\": ", w->table);
    if (syw_is_data_error(err->code))
        return syw_catchup_errored(w, st, "dest_refused", err);
    return syw_catchup_fail(w, st, "catch-up failed", err);
}

/* Writes one change of our relid (key, xid, time and relid set by the engine) unless its key is
 * already in the destination. */
static int
syw_apply_event(syw_t *w, syw_stream_t *st, dest_event_t *ev, wr_err_t *err)
{
    int rc;

    if (dest_key_cmp(&ev->key, &st->last) <= 0)
        return 0; /* applied before a restart */
    if (!st->dest_open) {
        if ((rc = w->dest->ops->begin(w->dest, err)) < 0)
            return rc;
        st->dest_open = true;
        st->opened_ms = wr_now_ms();
        wkm_batch_begin(&w->metrics);
    }
    if (!st->stm.tx.begun) {
        /* once per source transaction, also when it spans destination transactions */
        dest_event_t begin;

        stm_boundary(&st->stm.tx, DEST_EV_BEGIN, 0, &begin);
        if ((rc = w->dest->ops->write_event(w->dest, &begin, err)) < 0)
            return rc;
        st->stm.tx.begun = true;
    }
    if ((rc = w->dest->ops->write_event(w->dest, ev, err)) < 0)
        return rc;
    wkm_event(&w->metrics, ev->relid, (int)ev->kind);
    st->written = ev->key;
    st->applied++;
    return 0;
}

/* Checks a change's tuple against our schema before writing it. */
static int
syw_check_tuple(const syw_t *w, const syw_stream_t *st, const wr_row_t *row, wr_err_t *err)
{
    if (!st->relation_ok)
        return wr_err_set(err, WR_EPROTO, "change of \"%s\" before its relation message", w->table);
    if (row->ncols != w->schema->ncols)
        return wr_err_set(err, WR_EUNSUPPORTED, "change of \"%s\" has %u columns, expected %u",
                          w->table, (unsigned)row->ncols, (unsigned)w->schema->ncols);
    return 0;
}

/* A handler's result that ends the processing of the stream (an exit code, or
 * SYW_CONTINUE when the table left Catchup). */
static int
syw_stop_with(syw_stream_t *st, int code)
{
    st->code = code;
    return STM_STOP;
}

/* ---- the engine's callbacks (common/stream.h) ----------------------------------------- */

static int
syw_on_relation(void *arg, stm_tx_t *tx, const pgo_msg_t *m, wr_err_t *err)
{
    syw_stream_t *st = arg;
    syw_t *w = st->w;

    (void)tx;
    if (m->u.relation.relid != w->relid)
        return 0;
    if (syw_check_relation(w, m, err) < 0)
        return syw_stop_with(st, syw_catchup_recopy(w, st, err));
    st->relation_ok = true;
    return 0;
}

/* The one-table filter: changes of other relids are counted (by the engine) and skipped. */
static int
syw_on_change(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    syw_stream_t *st = arg;
    syw_t *w = st->w;
    uint64_t before = st->applied;

    (void)tx;
    (void)msglen;
    if (ev->relid != w->relid)
        return 0;
    if (ev->kind != DEST_EV_TRUNCATE &&
        syw_check_tuple(w, st, ev->kind == DEST_EV_DELETE ? ev->old_row : ev->new_row, err) < 0) {
        /* a tuple that does not match the schema */
        if (err->code == WR_EPROTO)
            return syw_stop_with(st, syw_catchup_fail(w, st, "catch-up stream", err));
        wr_err_hint(err, "run \"walrelay resync\" for the table");
        return syw_stop_with(st, syw_catchup_errored(w, st, "schema_changed", err));
    }
    if (syw_apply_event(w, st, ev, err) < 0)
        return syw_stop_with(st, syw_catchup_dest_error(w, st, err));
    return st->applied != before ? STM_WRITTEN : 0;
}

static int
syw_on_commit(void *arg, stm_tx_t *tx, wr_lsn_t end, wr_err_t *err)
{
    syw_stream_t *st = arg;
    syw_t *w = st->w;

    if (st->dest_open || tx->begun) {
        dest_event_t ev;
        int64_t t0 = wkm_clock_us();
        int rc;

        /* its last changes may have been committed already (syw_catchup_chunk) */
        if (!st->dest_open) {
            if ((rc = w->dest->ops->begin(w->dest, err)) < 0)
                return syw_stop_with(st, syw_catchup_dest_error(w, st, err));
            st->dest_open = true;
            st->opened_ms = wr_now_ms();
            wkm_batch_begin(&w->metrics);
        }
        stm_boundary(tx, DEST_EV_COMMIT, end, &ev);
        wkm_transaction(&w->metrics);
        if ((rc = w->dest->ops->write_event(w->dest, &ev, err)) < 0 ||
            (rc = w->dest->ops->commit(w->dest, w->stream, &st->written, err)) < 0)
            return syw_stop_with(st, syw_catchup_dest_error(w, st, err));
        wkm_batch_commit(&w->metrics, t0);
        st->dest_open = false;
        st->last = st->written;
        FAILPOINT("sync.catchup_after_commit");
    }
    if (end > st->current)
        st->current = end;
    stm_set_flush(&st->stm, st->current);
    if (st->current >= st->catchup)
        return syw_stop_with(st, syw_syncdone(w, st->current, st->applied));
    return 0;
}

/* A requested reply is sent by the engine after this returns 0, with the flush moved
 * here. */
static int
syw_on_keepalive(void *arg, wr_lsn_t wal_end, bool reply, wr_err_t *err)
{
    syw_stream_t *st = arg;
    syw_t *w = st->w;

    (void)reply;
    (void)err;
    if (!st->stm.tx.in_tx) {
        /* nothing in flight: everything before wal_end was sent and handled */
        if (wal_end > st->current)
            st->current = wal_end;
        stm_set_flush(&st->stm, st->current);
        if (st->current >= st->catchup)
            return syw_stop_with(st, syw_syncdone(w, st->current, st->applied));
    }
    return 0;
}

/* The engine's hold callback: on a stop, or when the table left Catchup, the rest stays
 * buffered and the loop acts on it. */
static bool
syw_hold(void *arg)
{
    const syw_stream_t *st = arg;

    return syw_should_stop(st->w) || st->w->phase != PH_CATCHUP;
}

static const stm_handler_t syw_stream_handler = {
    .relation = syw_on_relation,
    .change = syw_on_change,
    .commit = syw_on_commit,
    .keepalive = syw_on_keepalive,
    .hold = syw_hold,
};

/* Commits the open destination transaction in the middle of a source transaction, with
 * the key of the last change written (a replay after a crash skips up to it; the flush
 * reported does not move until the source transaction's Commit). Called before the
 * stream is waited for and when the transaction has been open for batch_max_fill_ms, so
 * that the destination's write lock is never held across a wait on the network or a long
 * run of other tables' changes (issue 12, defect 2). Returns SYW_CONTINUE or an exit
 * code. */
static int
syw_catchup_chunk(syw_t *w, syw_stream_t *st)
{
    int64_t t0;
    wr_err_t err;

    if (!st->dest_open)
        return SYW_CONTINUE;
    wr_err_clear(&err);
    t0 = wkm_clock_us();
    if (w->dest->ops->commit(w->dest, w->stream, &st->written, &err) < 0) {
        st->dest_open = false; /* rolled back by the failed commit */
        wkm_batch_rollback(&w->metrics);
        return syw_catchup_dest_error(w, st, &err);
    }
    wkm_batch_commit(&w->metrics, t0);
    st->dest_open = false;
    st->last = st->written;
    return SYW_CONTINUE;
}

/* Stop or signal during catch-up: commit what is applied (with its key, so the replay
 * skips it), report the flush position, exit 0 leaving Catchup. */
static int
syw_catchup_stop(syw_t *w, syw_stream_t *st)
{
    wr_err_t err;

    wr_err_clear(&err);
    if (st->dest_open) {
        int64_t t0 = wkm_clock_us();

        if (w->dest->ops->commit(w->dest, w->stream, &st->written, &err) < 0)
            return syw_catchup_fail(w, st, "committing before stop", &err);
        wkm_batch_commit(&w->metrics, t0);
        st->dest_open = false;
        st->last = st->written;
    }
    if (stm_feedback(&st->stm, true, &err) < 0)
        log_err(LOG_LVL_WARN, "final status", &err);
    log_info("catchup stopped table=%s applied=%" PRIu64 " flushed=" WR_LSN_FMT, w->table,
             st->applied, WR_LSN_ARGS(st->stm.flush));
    syw_repl_close(w);
    return WR_EXIT_OK;
}

/* The streaming loop; see syw_catchup. The engine's receive step hands what libpq holds
 * to the callbacks above; between steps the loop sends status updates, waits on the
 * socket and the channel, and reads the channel (at least every SYW_CHAN_CHECK_MS while
 * the server keeps sending). */
static int
syw_stream(syw_t *w, syw_stream_t *st)
{
    wr_err_t err;
    bool readable = false;

    wr_err_clear(&err);
    for (;;) {
        int rc;

        if (syw_should_stop(w))
            return syw_catchup_stop(w, st);
        if (w->phase != PH_CATCHUP) {
            /* Errored or Init set elsewhere: let the dispatcher act on it */
            log_info("table left catchup table=%s phase=%s", w->table, phase_name(w->phase));
            if (st->dest_open) {
                if (w->dest->ops->rollback(w->dest, &err) < 0)
                    log_err(LOG_LVL_WARN, "destination rollback failed", &err);
                st->dest_open = false;
            }
            syw_repl_close(w);
            return SYW_CONTINUE;
        }
        if (w->lsn != st->catchup) {
            log_info("catchup lsn changed table=%s lsn=" WR_LSN_FMT, w->table, WR_LSN_ARGS(w->lsn));
            st->catchup = w->lsn;
        }
        /* what libpq holds (after reading the socket when it was readable) */
        st->code = SYW_CONTINUE;
        rc = stm_recv(&st->stm, readable, SYW_CHAN_CHECK_MS, NULL, &err);
        readable = false;
        if (rc == STM_STOP)
            return st->code; /* an exit code, or SYW_CONTINUE: the table left Catchup */
        if (rc < 0) {
            wr_err_prefix(&err, "slot \"%s\": ", w->slot);
            return syw_catchup_fail(w, st, "catch-up stream", &err);
        }
        /* about to wait on the network, or open for batch_max_fill_ms: no destination
         * transaction stays open (issue 12, defect 2: it held the write lock) */
        if (st->dest_open &&
            (rc == STM_IDLE || wr_now_ms() - st->opened_ms >= w->cfg.batch_max_fill_ms)) {
            int code = syw_catchup_chunk(w, st);

            if (code != SYW_CONTINUE)
                return code;
        }
        if (stm_feedback(&st->stm, false, &err) < 0)
            return syw_catchup_fail(w, st, "sending status", &err);
        {
            uint64_t bytes, status;

            stm_counters(&st->stm, &bytes, &status);
            wkm_stream_totals(&w->metrics, bytes, status);
        }
        if (wkm_send(&w->metrics, &w->chan, false, &err) < 0)
            return syw_catchup_fail(w, st, "supervisor channel", &err);
        if (rc == STM_IDLE && stm_wait(&st->stm, w->chan.fd, SYW_POLL_MS, &readable, &err) < 0)
            return syw_catchup_fail(w, st, "catch-up", &err);
        /* unconditionally: messages that came behind an ack sit in the reader, not the fd */
        if (wk_chan_poll(&w->chan, 0, &err) < 0)
            return syw_catchup_fail(w, st, "supervisor channel", &err);
    }
}

/* Contract step 4 (see the header). Returns SYW_CONTINUE if the table left Catchup
 * through someone else, or an exit code. */
static int
syw_catchup(syw_t *w)
{
    syw_stream_t st;
    wr_err_t err;
    bool found = false, active = false, key_found = false, missing = false;
    wr_lsn_t confirmed = 0;
    char wal_status[32] = "";
    int code;

    memset(&st, 0, sizeof(st));
    wr_err_clear(&err);
    stm_init(&st.stm, &syw_stream_handler, &st);
    st.w = w;
    w->cstream = &st.stm;
    st.catchup = w->lsn;
    log_info("catchup granted table=%s lsn=" WR_LSN_FMT, w->table, WR_LSN_ARGS(st.catchup));

    if (syw_sql_connect(w, &err) < 0 || syw_dest_open(w, &err) < 0) {
        code = syw_fail("preparing catch-up", &err);
        goto out;
    }
    if (repl_slot_info(w->sql, w->slot, &found, &active, &confirmed, wal_status, sizeof(wal_status),
                       &err) < 0) {
        code = syw_fail("reading the slot", &err);
        goto out;
    }
    if (!found) {
        wr_err_set(&err, WR_EUNSUPPORTED, "slot \"%s\" of table \"%s\" is missing in Catchup",
                   w->slot, w->table);
        wr_err_hint(&err, "the copy cannot be completed without it; run \"walrelay resync\" for "
                          "the table");
        code = syw_set_errored(w, "slot_missing", &err);
        goto out;
    }
    /* we hold the table's lock: an active slot is a walsender whose client is gone */
    if (active && src_take_slot(w->sql, w->slot, &err) < 0) {
        code = syw_fail("freeing the slot", &err);
        goto out;
    }
    if (strcmp(wal_status, "lost") == 0) {
        wr_err_set(&err, WR_EUNSUPPORTED, "slot \"%s\" of table \"%s\" was invalidated", w->slot,
                   w->table);
        wr_err_hint(&err, "the server removed WAL the catch-up needs (max_slot_wal_keep_size); "
                          "run \"walrelay resync\" for the table");
        code = syw_set_errored(w, "slot_invalidated", &err);
        if (code == WR_EXIT_CONFIG)
            (void)syw_drop_slot(w);
        goto out;
    }

    /* Resumed in Catchup: no copy-time schema in memory, take the catalog's. A change of
     * columns since the copy then shows as a mismatch with the Relation messages. */
    if (w->schema == NULL) {
        if (syw_load_schema(w, w->sql, &missing, &err) < 0) {
            code = syw_fail("reading the schema", &err);
            goto out;
        }
        if (missing) {
            wr_err_set(&err, WR_EUNSUPPORTED, "table %u (\"%s\") no longer exists", w->relid,
                       w->table);
            wr_err_hint(&err, "remove it from the publication, or recreate it and run \"walrelay "
                              "resync\"");
            code = syw_set_errored(w, "table_missing", &err);
            if (code == WR_EXIT_CONFIG)
                (void)syw_drop_slot(w);
            goto out;
        }
    }
    if (!w->stream_registered) {
        if (syw_register_stream_schema(w, &err) < 0) {
            wr_err_prefix(&err, "registering \"%s\": ", w->table);
            if (syw_is_data_error(err.code)) {
                /* the columns changed since the copy (catch-up resumed after a restart
                 * reads the catalog's schema): copy again */
                code = syw_catchup_recopy(w, &st, &err);
                goto out;
            }
            code = syw_fail("catch-up", &err);
            goto out;
        }
        w->schema_registered = true;
        w->stream_registered = true;
    }
    if (w->dest->ops->last_key(w->dest, w->stream, &st.last, &key_found, &err) < 0) {
        code = syw_fail("reading the catch-up key", &err);
        goto out;
    }
    if (!key_found)
        memset(&st.last, 0, sizeof(st.last));
    st.stm.received = st.current = confirmed;

    /* Already there (apply granted L <= X, or a crash after the slot reached L), and
     * the destination holds nothing past the slot: no need to stream. */
    if (confirmed >= st.catchup && st.last.commit_lsn < confirmed) {
        code = syw_syncdone(w, confirmed, 0);
        goto out;
    }

    /* from 0/0: the server resumes at the slot's confirmed flush, which is the flush
     * reported until the destination holds more */
    if (stm_connect(&st.stm, w->cfg.source_conninfo, w->slot, &err) < 0 ||
        stm_start(&st.stm, w->slot, 0, w->cfg.publication, confirmed, &err) < 0) {
        syw_repl_close(w);
        code = syw_fail("starting the catch-up stream", &err);
        goto out;
    }
    log_info("catchup streaming table=%s slot=%s from=" WR_LSN_FMT " last_key=" WR_LSN_FMT "/%u",
             w->table, w->slot, WR_LSN_ARGS(confirmed), WR_LSN_ARGS(st.last.commit_lsn),
             st.last.ordinal);
    FAILPOINT("sync.catchup_streaming");
    code = syw_stream(w, &st);

out:
    stm_close(&st.stm); /* stops the status keeper, closes the stream's connection */
    w->cstream = NULL;
    return code;
}

/* SyncDone / Ready on start: a previous run persisted SyncDone and may have died before
 * dropping the slot or forgetting the key. */
static int
syw_finish_done(syw_t *w)
{
    wr_err_t err;
    bool found = false, active = false;
    wr_lsn_t confirmed;

    wr_err_clear(&err);
    if (syw_sql_connect(w, &err) < 0)
        return syw_fail("connecting to drop the slot", &err);
    if (repl_slot_info(w->sql, w->slot, &found, &active, &confirmed, NULL, 0, &err) < 0)
        return syw_fail("reading the slot", &err);
    if (found && syw_drop_slot(w) < 0)
        return WR_EXIT_ERROR;
    if (syw_dest_open(w, &err) == 0 && syw_clear_stream_key(w, &err) == 0)
        return WR_EXIT_OK;
    log_err(LOG_LVL_WARN, "forgetting the catch-up key", &err);
    return WR_EXIT_OK;
}

/* The phase dispatcher: acts on the table's phase until an exit code comes out. */
static int
syw_run(syw_t *w)
{
    for (;;) {
        int rc;

        if (syw_should_stop(w))
            return WR_EXIT_OK; /* nothing in flight between phases */
        switch (w->phase) {
        case PH_INIT:
        case PH_DATASYNC:
            rc = syw_copy(w);
            break;
        case PH_FINISHEDCOPY:
            rc = syw_request_syncwait(w);
            break;
        case PH_SYNCWAIT:
            rc = syw_wait_catchup(w);
            break;
        case PH_CATCHUP:
            rc = syw_catchup(w);
            break;
        case PH_SYNCDONE:
        case PH_READY:
            return syw_finish_done(w);
        case PH_ERRORED:
            log_info("table is errored, nothing to do table=%s", w->table);
            return WR_EXIT_OK;
        default:
            log_error("unknown phase table=%s phase=%d", w->table, (int)w->phase);
            return WR_EXIT_ERROR;
        }
        if (rc != SYW_CONTINUE)
            return rc;
    }
}

static int
syw_parse_relid(const char *s, uint32_t *out)
{
    char *end = NULL;
    unsigned long v;

    if (s == NULL || *s < '0' || *s > '9')
        return WR_EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0 || v > UINT32_MAX)
        return WR_EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static void
syw_close(syw_t *w)
{
    syw_repl_close(w);
    if (w->sql != NULL) {
        PQfinish(w->sql);
        w->sql = NULL;
    }
    if (w->dest != NULL) {
        w->dest->ops->close(w->dest);
        w->dest = NULL;
    }
    if (w->chan_open) {
        wk_chan_close(&w->chan);
        w->chan_open = false;
    }
    syw_schema_reset(w);
    free(w->row_filter);
    w->row_filter = NULL;
    wkm_free(&w->metrics);
    cfg_free(&w->cfg);
}

int
main(int argc, char **argv)
{
    syw_t w;
    wr_err_t err;
    ipc_msg_t tables;
    struct sigaction sa;
    bool known = false;
    int code, lock_fd = -1; /* DIR/workers.lock, byte relid: held until exit */

    memset(&w, 0, sizeof(w));
    wr_err_clear(&err);
    cfg_defaults(&w.cfg);
    if (argc != 3 || syw_parse_relid(argv[2], &w.relid) < 0) {
        fprintf(stderr, "usage: walrelay-sync DIR RELID (started by \"walrelay run\")\n");
        return WR_EXIT_CONFIG;
    }
    snprintf(w.worker, sizeof(w.worker), "sync-%u", w.relid);
    log_init("-", w.worker);
    if (cfg_load_active(argv[1], &w.cfg, &err) < 0) {
        log_err(LOG_LVL_ERROR, "loading the configuration", &err);
        cfg_free(&w.cfg);
        return WR_EXIT_CONFIG;
    }
    log_init(w.cfg.pipeline_name, w.worker);
    log_set_level(w.cfg.log_level);
    log_set_format(w.cfg.log_format);
    cfg_sync_slot_name(&w.cfg, w.relid, w.slot, sizeof(w.slot));
    dest_sync_stream(w.relid, w.stream, sizeof(w.stream));
    snprintf(w.table, sizeof(w.table), "%u", w.relid);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = syw_on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    /* one sync worker per table at a time, also across a killed supervisor: the slot,
     * the stream key and the table's destination rows are touched only by the holder */
    if (wk_lock_role(argv[1], w.relid, WK_CHAN_FD, WK_LOCK_WAIT_MS, &lock_fd, &err) < 0) {
        code = syw_fail("taking the sync worker's lock", &err);
        goto out;
    }
    if (wk_chan_init(&w.chan, WK_CHAN_FD, &err) < 0) {
        code = syw_fail("opening the supervisor channel", &err);
        goto out;
    }
    w.chan_open = true;
    wk_chan_set_callback(&w.chan, syw_on_msg, &w);
    memset(&tables, 0, sizeof(tables));
    if (wk_chan_handshake(&w.chan, "sync", w.relid, &tables, &err) < 0) {
        code = syw_fail("handshake with the supervisor", &err);
        goto out;
    }
    for (uint32_t i = 0; i < tables.u.tables.n; i++) {
        const ipc_table_info_t *t = &tables.u.tables.tables[i];

        if (t->relid != w.relid)
            continue;
        known = true;
        w.phase = t->phase;
        w.lsn = t->lsn;
        snprintf(w.table, sizeof(w.table), "%s.%s", t->nsp, t->name);
        snprintf(w.dest_name, sizeof(w.dest_name), "%s", t->dest_name ? t->dest_name : "");
    }
    ipc_msg_clear(&tables);
    if (!known) {
        /* the supervisor decides which tables need a worker; none for this one */
        log_warn("table not in the supervisor's list, nothing to do relid=%u", w.relid);
        code = WR_EXIT_OK;
        goto out;
    }
    log_info("sync worker started table=%s relid=%u phase=%s lsn=" WR_LSN_FMT, w.table, w.relid,
             phase_name(w.phase), WR_LSN_ARGS(w.lsn));
    code = syw_run(&w);
    if (code == WR_EXIT_ERROR && syw_last_err.code == WR_ECONN && !syw_should_stop(&w)) {
        /* issue 12, defect 1: a source that is away is waited for (exit 4, not counted,
         * no "transient" error that runs out of attempts), one that refuses us stops */
        wr_err_t perr;

        wr_err_clear(&perr);
        switch (src_probe(&w.cfg, &perr)) {
        case SRC_DOWN:
            code = WR_EXIT_SOURCE_DOWN;
            break;
        case SRC_REFUSED:
            log_err(LOG_LVL_ERROR, "the source refuses the connection", &perr);
            syw_last_err = perr;
            code = WR_EXIT_CONFIG;
            break;
        case SRC_UP:
            /* back already, but it was starting up or shutting down a moment ago: an
             * outage that just ended, not an error of the copy to count */
            if (src_was_away(syw_last_err.msg))
                code = WR_EXIT_SOURCE_DOWN;
            break;
        }
    }
    if (code == WR_EXIT_ERROR)
        syw_report_transient(&w);
    if (code != WR_EXIT_OK && syw_last_err.msg[0] && w.chan_open)
        wk_chan_report_error(&w.chan,
                             code == WR_EXIT_SOURCE_DOWN ? "source_unavailable"
                             : code == WR_EXIT_CONFIG && syw_last_err.code == WR_ECONN
                                 ? "source_refused"
                                 : NULL,
                             &syw_last_err);
    if (code == WR_EXIT_OK && syw_signalled)
        log_info("stopped by signal table=%s phase=%s", w.table, phase_name(w.phase));
    {
        /* the last counts; best effort (the supervisor may be gone) */
        wr_err_t merr;

        if (wkm_send(&w.metrics, &w.chan, true, &merr) < 0)
            log_debug("last metrics not sent: %s", merr.msg);
    }

out:
    syw_close(&w);
    if (lock_fd >= 0)
        close(lock_fd); /* after everything of ours is closed */
    return code;
}
