/*
 * apply.c - walrelay-apply: streams the pipeline's slot and applies the changes of Ready
 * tables to the destination, confirms the flush LSN, and runs the apply side of the
 * table handoff.
 *
 * NOTES: one process per pipeline, started by the supervisor as `walrelay-apply DIR`
 * with its channel on fd 3; one at a time, also across a killed supervisor (byte 0 of
 * DIR/workers.lock, taken before hello and held until exit: wk_lock_role). It owns the
 * slot walrelay_<pipeline> (created here when missing) and the destination stream "apply"
 * (its resume key). It persists nothing
 * itself except through the destination (data + key in one transaction) and through
 * set_phase / schema requests that the supervisor persists in state.db.
 *
 * THE STREAM LOOP
 *
 *   The stream engine common/stream.c (stm_*, shared with walrelay-sync) owns the
 *   replication connection: stm_connect (replication=database, reads wal_sender_timeout),
 *   CREATE_REPLICATION_SLOT on it when the slot is missing, stm_start
 *   (START_REPLICATION from 0/0: the server resumes at the slot's confirmed_flush). One
 *   stm_wait() waits on the replication socket and on fd 3, at most 1 s, less when a
 *   status update or the open batch's fill deadline is due; the channel is read first,
 *   then stm_recv() hands every CopyData libpq holds to the engine (returning to read the
 *   channel every APW_CHAN_CHECK_MS). While the stream brings a backlog
 *   (APW_GATHER_MIN_RATE), the stm_wait() after a read comes APW_GATHER_US after that
 *   read at the earliest, so that a busy stream is read a hundred messages or more at a
 *   time. Each CopyData
 *   is a keepalive 'k' or an XLogData 'w' carrying one pgoutput message. The engine
 *   frames and decodes them, keeps the transaction state and ordinals below, translates
 *   changes into dest_event_t with their key, and calls apw_on_relation / apw_on_change
 *   / apw_on_commit / apw_on_keepalive here (apw_hold leaves the rest buffered on a stop
 *   or a CATCHUP); it also sends the status updates (FEEDBACK). This file keeps what to
 *   apply, batching, the skip by resume key, schema changes and the handoff:
 *
 *     Begin     final_lsn = the commit LSN, ordinal = 0
 *     Relation  cached per relid; a schema that differs from the cached one is sent to
 *               the supervisor (schema request, lsn = the transaction's final_lsn, or
 *               the last received position outside a transaction), and the table is
 *               registered again with the destination before its next write; every
 *               Relation (changed or not) also marks the table for a schema comparison
 *               at its next applied change (SCHEMA CHANGES below)
 *     I/U/D     ordinal += 1; TRUNCATE: ordinal += 1 per listed relid. Every change
 *               counts, also those of tables we skip, so that the resume key
 *               (final_lsn, ordinal) of a change is the same in every replay
 *     Commit    commit_lsn must equal Begin's final_lsn; end_lsn is the transaction's
 *               position for feedback and the handoff. More than UINT32_MAX changes in
 *               one transaction is an error (WR_EUNSUPPORTED)
 *     Type, Origin, Message: ignored
 *
 *   A change of table T is applied iff T is READY, or T is SYNCDONE(S) with
 *   S <= final_lsn (the sync worker applied the earlier ones), and its key is greater
 *   than the destination's last key of stream "apply" read at start (a replay after a
 *   crash skips what is already there: exactly once).
 *
 * STATES THIS WORKER OWNS (see phase.h; the supervisor persists, then acks)
 *
 *   SYNCWAIT -> CATCHUP(L)   granted here, L = max(X, Y, K+1): X the sync worker's
 *                            consistent point, Y the end_lsn of the last commit processed
 *                            (or the last received WAL position when idle), K the commit
 *                            LSN of the destination's resume key. K matters after a
 *                            restart: the slot replays from its older confirmed position,
 *                            and every change up to K is skipped for all tables, so the
 *                            sync worker must cover the table's changes up to K itself
 *                            (PostgreSQL's max(X, Y) alone lost rows here: test_crash)
 *   SYNCDONE(S) -> READY     once this worker's durable flush >= S
 *   any -> ERRORED           when a change of the table cannot be applied (no key for an
 *                            UPDATE, a value the destination rejects); the other tables
 *                            go on, and the table's later changes are skipped
 *   READY/SYNCDONE -> INIT   a schema change that can only be followed by copying the
 *                            table again (the supervisor starts its sync worker)
 *   READY/SYNCDONE -> ERRORED kind "schema_changed": a schema change a copy cannot help
 *
 * SCHEMA CHANGES (docs/destinations.md "Schema changes")
 *
 *   At the first change of a table that this worker applies after a Relation message of
 *   it (apw_ddl_reconcile; replayed changes are skipped before, so a replayed older
 *   Relation never alters anything), the destination's newest schema version
 *   (get_version: schema + catalog facts by attribute number) is compared with the
 *   catalog read now on the SQL connection, after checking that the catalog still
 *   describes the Relation message (common/catalog.c, cat_read, shared with
 *   walrelay-sync's copy). dest_ddl_plan() decides: nothing; record new catalog
 *   facts (put_version, in the open batch); follow (commit the open batch up to the
 *   change before, then alter_table in a new batch that also holds the changes after it,
 *   version = the key of the change before); copy again (commit the open batch, INIT,
 *   the reason in the log); or ERRORED "schema_changed". A batch rolled back after an
 *   alteration marks the table for another comparison. A table that leaves READY /
 *   SYNCDONE is compared and registered again before its next change.
 *
 * THE HANDOFF SIDE (PostgreSQL's process_syncing_tables_for_apply)
 *
 *   At a transaction boundary - after a Commit, or when idle outside a transaction -
 *   for each table in SYNCWAIT: commit the open destination batch, request CATCHUP(L),
 *   and after the ack stop reading the replication stream (status updates still go out
 *   at the engine's interval, inside wal_sender_timeout, so the walsender does not time
 *   us out; see FEEDBACK) until the table's table_state is no longer CATCHUP:
 *   SYNCDONE(S), or ERRORED / INIT when the sync failed or was reset.
 *   Stopping is what makes L exact: nothing past Y is applied by us until the sync
 *   worker has caught up to at least L, and from SYNCDONE(S) on we apply the table's
 *   transactions with final_lsn >= S while the sync worker applied those before.
 *   On (re)start, a table already in CATCHUP is waited for the same way before any
 *   transaction is processed. A table is in SYNCWAIT or CATCHUP only while its sync worker
 *   runs: the supervisor sets FINISHEDCOPY when that worker is gone (issue 12, defect 8),
 *   which ends our wait; a CATCHUP request refused because the table left SYNCWAIT
 *   meanwhile is not an error. We never wait for a worker that does not exist.
 *
 *   Example: sync copies at X = 0/1000 and asks SYNCWAIT. We are idle at Y = 0/1800:
 *   CATCHUP(0/1800), we pause. Sync streams its slot from 0/1000, applies T's changes up
 *   to the commit ending at 0/1900 (>= 0/1800) and stores SYNCDONE(0/1900). We resume;
 *   the transaction committed at 0/18F0 (end 0/1900) is skipped for T (0/1900 > 0/18F0),
 *   later ones are applied. Our flush passes 0/1900: READY.
 *
 *   INIT acknowledged (issue 12, defect 6): a table_state Init (resync, retry, a re-copy)
 *   is answered with ["table_ack", relid, init, lsn] once the open batch, which may hold
 *   the table's changes, is committed (apw_send_acks, at the top of the loop or in the
 *   catch-up wait; the stream reading stops early for it). The supervisor starts the copy
 *   only after that ack, or once this process has exited, so the copy's truncate comes
 *   after every write of ours and nothing we write lands after it.
 *
 *   Before READY is requested the destination key is brought up to the last processed
 *   transaction (an empty destination commit if needed): after READY a replay from an
 *   older confirmed_flush would otherwise apply T's changes that the sync worker
 *   already applied, because T is now READY.
 *
 * BATCHING (COMMIT ON IDLE)
 *
 *   Changes go straight into one open destination transaction (begun lazily at the
 *   first write); memory stays bounded whatever the source transaction's size. The batch
 *   is committed with the resume key
 *     - as soon as the stream is idle at a transaction boundary: after a source Commit,
 *       when libpq holds no further message (stm_recv returned STM_IDLE) and a poll()
 *       with no timeout finds the socket not readable. A quiet source so never waits for
 *       a timer (latency = one destination commit), while under load the stream always
 *       has more buffered and the batch grows - group commit - up to the two limits:
 *     - at a source Commit when it is due: cfg.batch_max_fill_ms since its first write,
 *       or cfg.batch_max_bytes written (sizes of the applied pgoutput messages); the key
 *       is (final_lsn, last ordinal) of that transaction;
 *     - at a transaction boundary as soon as nothing more of the stream can be read and
 *       the transaction committed less than 250 ms ago on the source (apw_caught_up): a
 *       group commit, so that a live change waits for the next commit only while more
 *       changes are arriving; a backlog is drained in full batches;
 *     - in the middle of a transaction once the bytes exceed batch_max_bytes, with the
 *       key (final_lsn, ordinal) of the last change processed; the flush does not move
 *       past the previous complete transaction until this one's Commit is committed;
 *     - when max_fill_ms passed, also in the middle of a transaction (issue 12, defect
 *       2: no batch holds the destination's write lock while the stream waits), and
 *       before any handoff step.
 *   Exactly once does not change: every commit carries the key of what it holds, at a
 *   boundary or (mid-transaction) of its last change. A transaction that wrote nothing
 *   with no batch open moves the flush directly. While a streamed transaction is open in
 *   the batch (below) it commits only with that transaction.
 *   A destination that holds changes back (dest_ops_t.flush, postgres) writes them just
 *   before each commit; a failure of one table there sets that table ERRORED (persisted
 *   first) and the batch commits without its changes (apw_batch_flush). A destination
 *   whose commits become durable after they return (dest_ops_t.durable, postgres with
 *   synchronous_commit = off) is asked which are, every 200 ms while some are not, and
 *   the flush position waits for them (apw_flush_to, apw_durable_poll). While the
 *   destination waits for its server, the replication socket is drained into libpq's
 *   buffer (dest_set_readahead, apw_readahead), so that the walsender keeps decoding.
 *
 * STREAMED TRANSACTIONS (issue 11: pgoutput protocol version 2, [source] streaming = 1)
 *
 *   The server streams a transaction whose decoded changes pass logical_decoding_work_mem
 *   while it is still running: blocks Stream Start(xid) .. changes (each with the xid of
 *   its subtransaction) .. Stream Stop, with complete transactions (Begin .. Commit) that
 *   commit meanwhile between the blocks, and at the end Stream Commit (commit LSN, end
 *   LSN) or Stream Abort (xid, subxid). The commit LSN - the first half of the resume key
 *   - is not known until the end. Two ways to apply one:
 *
 *   Written as it arrives ("direct"; one streamed transaction X at a time), when the
 *   destination can take it (dest_ops_t.can_stream: sqlite in table mode), no table is in
 *   a handoff phase, and the destination's key K cannot cover X (K's commit LSN <= the LSN
 *   where X starts: X commits later than it starts, so X is not in the destination). At
 *   X's first block the open batch (complete transactions only) commits; X's changes then
 *   go into a new batch as they arrive, counted in X's own ordinals (apw_sx_t.tx), with a
 *   destination savepoint before the first change of each subtransaction. The batch does
 *   not commit while X is open: no idle commit, no fill or size commit, no handoff step
 *   (they wait for X's end). Transactions that commit between X's blocks are written into
 *   the same batch behind X's changes, in stream order, each skipped by key as usual.
 *   Stream order is a commit order for the destination: a row X changed stays locked by X,
 *   so a transaction that committed meanwhile changed other rows, and a row that X changes
 *   after such a commit arrives in a later block than that commit.
 *     Stream Commit: X gets its commit LSN; the batch commits with key (commit LSN, X's
 *       last ordinal) - the greatest key in it, since the others committed earlier - and
 *       the flush moves to X's end. Exactly once: the key and the data of X and of the
 *       transactions behind it commit together, or nothing does.
 *     Stream Abort of a subtransaction: ROLLBACK TO its savepoint, and X's ordinal goes back
 *       to what it was there. Exact, because what follows a subtransaction's first change
 *       in X belongs to it or to its own subtransactions, which abort with it (PostgreSQL's
 *       apply worker truncates its spool file at the same point); the ordinals then match
 *       those of the same transaction sent whole by a server that did not stream it.
 *     Stream Abort of X: the batch holds only X (nothing behind it): rolled back. Exact.
 *     A crash (kill -9) anywhere: nothing of X is committed until its Stream Commit; the
 *       server replays from the slot's confirmed position, which never passes an
 *       uncommitted batch. After the commit and before the flush reached the server the
 *       replay streams X again: K's commit LSN is then past X's start, so X is spooled
 *       and skipped by the key at its Stream Commit.
 *   What cannot be exact in place: an abort (of X or of a subtransaction) when other
 *   transactions were written behind the point it rolls back to - the rollback would take
 *   them too - and a schema change inside X or behind it (its version key needs a commit
 *   LSN; apw_ddl_commit_before would commit X's half). Then walrelay RESTREAMS: it rolls
 *   the batch back, marks X to be spooled, skips by the key of what this process
 *   committed, and starts the stream again from the slot's confirmed position (one
 *   restart per such transaction; apw_restream). PostgreSQL's own apply worker spools
 *   every streamed transaction unless it runs parallel apply workers.
 *
 *   Spooled: every other streamed transaction (a second one while X is open, a
 *   destination without can_stream - the ABI destinations, eventstore, sqlite history
 *   mode -, a table being handed over, a replay after a restart, a restreamed one). Its
 *   messages are appended as received to DIR/spool/apply-<xid>.spool (a 64 kB stdio
 *   buffer: memory stays bounded, disk holds the transaction); a subtransaction's abort
 *   truncates the file at its first message, X's abort deletes it. At Stream Commit the
 *   file is read back message by message through the engine (stm_replay_*) as one
 *   transaction with its commit LSN: ordinals, the key skip, the handoff filter
 *   (SYNCDONE S <= commit LSN), batching with mid-transaction commits, schema changes
 *   and BEGIN/COMMIT events all exactly as for a transaction sent whole, so at-least-once
 *   destinations see each event once per delivery with its final key, and the handoff
 *   rules hold unchanged. Spool files are deleted at their end, on a restream and at
 *   start (what a crashed run left: the server streams it again).
 *
 *   The handoff: CATCHUP is granted at boundaries outside X only (Y then includes X
 *   whole or nothing of it), and a table in SYNCWAIT while X streams is not READY, so X's
 *   changes to it are the sync worker's (L >= X's end). The sync worker's own catch-up
 *   stream keeps protocol version 1: it applies one table up to a catch-up LSN and stops
 *   at the first commit at or past it, which needs each transaction's commit LSN before
 *   its changes; a large transaction in that short window is spilled by the server and
 *   sent at its commit, as before.
 *   A long X keeps the sqlite write lock for its whole duration: a sync worker copying
 *   into the same file then waits (and retries after busy_timeout).
 *
 * FEEDBACK
 *
 *   Standby status 'r' (sent by the engine): write = last received, flush = apply =
 *   end_lsn of the last commit made durable in the destination (apw_flush_to, which
 *   hands it to stm_set_flush); never regresses. With nothing in flight (not in a
 *   transaction, no open batch) a keepalive's WAL end counts as flushed, so an idle
 *   publication does not pin WAL. A keepalive asking for a reply is answered at once
 *   (after apw_on_keepalive moved the flush); otherwise a status goes out when the flush
 *   moved (at most once a second) and at least every status interval, min(10 s,
 *   wal_sender_timeout / 3) of this connection. While this process is away from the loop
 *   - inside a destination call (a long commit, a rebuilding ALTER, a destination that
 *   blocks), waiting for a catch-up or for the supervisor's ack - the engine's status
 *   keeper thread sends the same updates with the last flush given to stm_set_flush, so
 *   the walsender never times us out and never sees a flush the destination does not
 *   hold (common/stream.h, THE STATUS KEEPER). ["progress", flush, received, events]
 *   goes to the supervisor at most once a second when it changed (events = changes
 *   applied by this process).
 *
 * METRICS (proto/wkmetrics.h)
 *
 *   ["streaming", start] goes to the supervisor once START_REPLICATION succeeded (its
 *   readiness: sd_notify READY=1, /readyz). Changes per table and operation, source
 *   transactions with applied changes, batches and their timings are counted per
 *   destination batch and reported when the batch commits (a rolled-back batch is
 *   replayed and counted then); bytes of CopyData received and status updates sent as
 *   they happen; with them the commit time of the last transaction processed and
 *   whether everything received is durable (walrelay_lag_seconds is 0 then).
 *   ["worker_metrics", ...] deltas go out with the progress, at most once a second.
 *
 * RESTART BEHAVIOUR
 *
 *   Exit 0 on SIGTERM/SIGINT or ["stop"]: the open batch is committed if we are at a
 *   transaction boundary, else rolled back (the server replays that transaction from
 *   the confirmed flush and the key skips what was committed), a last status update
 *   reports the durable flush. Exit 1 (restart with backoff): connection lost while the
 *   source answers, destination error, supervisor gone (EOF on fd 3, at once). Exit 2 (no
 *   restart): bad config, source misconfigured, or it refuses us (authentication, role).
 *   Exit 4 (WR_EXIT_SOURCE_DOWN): a connection error and the source does not answer a
 *   probe (common/srcprobe.h): the supervisor starts us again for as long as it takes.
 *   Every error exit first sends ["worker_error", ...]; a "progress" right after
 *   START_REPLICATION tells the supervisor the source is reachable again.
 *   Exit 3 (WR_EXIT_SLOT_LOST): the slot lost required WAL (wal_status 'lost') or is
 *   missing while a table is past SyncWait (Catchup, SyncDone, Ready): the changes since
 *   are gone from the source, and a new slot would stream on under tables that look
 *   synchronised (issue 12, defect 3). The slot is left as it is;
 *   ["worker_error", "slot_lost" | "slot_missing", ...] tells the supervisor which, and it
 *   stops the pipeline (exit 2 of walrelay run, with the message and what to do) or, with
 *   [pipeline] on_slot_lost = recopy, sets every table to Init once and starts us again.
 *   A missing or lost slot while no table is past SyncWait is replaced at start (a lost
 *   one dropped first): nothing was streamed from it. A new slot is created with SNAPSHOT
 *   'nothing' after clearing the "apply" key, which belongs to the old slot. Inactive sync
 *   slots of tables that are READY, SYNCDONE or ERRORED are dropped (again whenever a
 *   table reaches one of those phases): a sync worker killed with -9 leaves no slot
 *   behind. A pipeline name can never make another pipeline's apply slot look like one
 *   of our sync slots: names ending in _s<digits> are refused (common/config.c).
 *
 *   ["table_removed", relid] (the table left the publication; the supervisor removed its
 *   state and drops its sync slot): the entry is marked at once, so nothing of that table
 *   is applied any more, and freed at the top of the next loop turn (the channel callback
 *   may run while a loop over the tables waits for an ack). Its destination data stays.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/catalog.h"
#include "common/config.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/pgoutput.h"
#include "common/repl.h"
#include "common/srcprobe.h"
#include "common/stream.h"
#include "proto/wkipc.h"
#include "proto/wkmetrics.h"
#include "destinations/destination.h"

#define APW_CHAN_CHECK_MS 100 /* longest stretch of stream reading between channel checks */
#define APW_PROGRESS_MS   1000
#define APW_POLL_MAX_MS   1000
/* A busy stream: a read of the socket is followed by the next poll() APW_GATHER_US after
 * it at the earliest, unless the worker spent that long on what it read or the socket
 * holds APW_GATHER_BYTES already (then it is the slower side, and a pause would only cap
 * its rate), so that the next read brings a hundred messages or more instead of a few.
 * The walsender sends each change as its own segment: a worker faster than its walsender
 * that reads as soon as poll() says readable gets one or two messages a read, a poll()
 * and a recv() each (in a drain of 1M changes, 0.9M syscalls: three quarters of the
 * worker's CPU on this VM; gathered, 28k; bench/RESULTS.md 2026-12-04). Before, only a
 * read of 16 messages or more was followed by a gather, and a worker that kept up never
 * made one. */
#define APW_GATHER_US    1000
#define APW_GATHER_BYTES 16384
/* ...and only while the stream brings a backlog's rate: at least APW_GATHER_MIN_RATE
 * messages per millisecond over the last window of APW_RATE_WIN_US. Live traffic stays
 * under it (5,000 single-row transactions a second are 15 messages a millisecond) and a
 * pause would only add its millisecond to their latency (bench/RESULTS.md 2026-12-04); a
 * drain reads 100 or more a millisecond, gathered or not. A quiet stream never pauses. */
#define APW_GATHER_MIN_RATE 50
#define APW_RATE_WIN_US     10000
#define APW_STREAM          "apply"

typedef struct apw_table_s {
    uint32_t relid;
    char *nsp; /* from the supervisor; NULL for a relid it did not list */
    char *name;
    /* the pipeline's destination table name (tables / table_state), or NULL */
    char *dest_name;
    bool known; /* listed by the supervisor (tables / table_state) */
    wr_phase_t phase;
    wr_lsn_t lsn;
    wr_schema_t *schema; /* last Relation message; owned */
    bool dest_ready;     /* ensure_table done with this schema in this process */
    bool rel_pending;    /* a Relation arrived (or the phase changed): compare the schema
                          * with the destination's before the next change (apw_ddl_reconcile) */
    bool ddl_in_batch;   /* the open batch altered the destination table */
    int ddl_recopies;    /* re-copies asked for in a row by this process (loop guard) */
    bool removed;        /* ["table_removed"] arrived: freed at the next loop turn */
    bool ack_due;        /* table_state Init arrived: acknowledge it (apw_send_acks) */
} apw_table_t;

/* A savepoint of the streamed transaction written straight into the batch: set before
 * the first change of a subtransaction (STREAMED TRANSACTIONS). */
typedef struct apw_sp_s {
    uint32_t subxid;
    uint32_t ordinal; /* the transaction's ordinal before the subtransaction's first change */
    uint64_t mixed;   /* apw_sx_t.mixed then */
} apw_sp_t;

/* A streamed transaction spooled to DIR/spool/apply-<xid>.spool until its Stream Commit:
 * records of [Int32 length][pgoutput message as received]. */
typedef struct apw_spool_s {
    uint32_t xid;
    FILE *f;
    char *path;
    uint64_t bytes; /* written so far (the file's size) */
    uint64_t msgs;
    struct apw_spsub_s {
        uint32_t subxid;
        uint64_t off; /* where its first message starts */
    } * subs;
    size_t nsubs, subcap;
    struct apw_spool_s *next;
} apw_spool_t;

/* Streamed transactions (protocol version 2): see the file header. */
typedef struct apw_sx_s {
    bool direct;    /* xid's changes go straight into the open batch as they arrive */
    bool in_direct; /* a change of xid is being written (apw_on_change, schema checks) */
    uint32_t xid;
    stm_tx_t tx;    /* its ordinals (final_lsn 0: not known before its Stream Commit) */
    uint64_t mixed; /* changes of other transactions written into the batch since it began */
    apw_sp_t *sps;
    size_t nsps, spcap;
    apw_spool_t *spools;
    uint32_t *forced; /* xids to spool, not write directly (after a restream) */
    size_t nforced, forcedcap;
    bool restream_due; /* roll back and restart the stream (apw_restream) */
    const char *restream_why;
    char *dir;     /* DIR/spool */
    uint8_t *rbuf; /* replay buffer */
    size_t rcap;
    uint64_t n_direct, n_spooled, n_restreams;
} apw_sx_t;

typedef struct apw_s {
    wr_config_t cfg;
    char slot[64];
    wk_chan_t chan;
    dest_t *dest;
    PGconn *sql;
    stm_t stm; /* the stream engine: the replication connection, decoding, transaction,
                * ordinals, received, status feedback (and its keeper thread) */

    /* relid -> table: entries array + open-addressing index */
    apw_table_t **tabs;
    size_t ntabs, tabcap;
    apw_table_t **idx;
    size_t idxcap; /* power of two */
    int n_handoff; /* tables in SYNCWAIT, CATCHUP or SYNCDONE */
    int n_catchup;
    bool cleanup_due;
    bool oom;        /* set by the channel callback */
    bool remove_due; /* some entries are marked removed */
    bool ack_due;    /* some table's Init waits for ["table_ack"] (apw_send_acks) */
    bool slot_lost;  /* the slot is lost or missing under synced tables: exit WR_EXIT_SLOT_LOST */
    const char *slot_kind; /* "slot_lost" or "slot_missing", for the supervisor */
    int lock_fd;           /* DIR/workers.lock, byte 0: held for the life of the process */

    /* resume */
    bool skip_found;
    dest_key_t skip_key;    /* "apply" key at start: changes <= it are already applied */
    dest_key_t durable_key; /* last key committed by this process (or skip_key) */
    dest_key_t last_tx_key; /* (final_lsn, ordinal count) of the last complete transaction */

    /* destination batch */
    bool batch_open;
    bool batch_ddl; /* the batch holds a schema change (failpoint, rollback) */
    int64_t batch_start_ms;
    int64_t chan_checked_ms; /* when the main loop last read the channel */
    size_t last_read_n;      /* messages the last read of the socket brought */
    int64_t last_read_us;    /* when it was made (apw_now_us) */
    int64_t rate_win_us;     /* the rate window's start (apw_now_us) */
    size_t rate_win_n;       /* messages read in it */
    bool backlog;            /* the last full window's rate was APW_GATHER_MIN_RATE or more */
    int64_t batch_bytes;
    wr_lsn_t batch_pending_flush; /* end_lsn of the last complete transaction in it; 0 none */

    /* positions (received: a->stm.received) */
    wr_lsn_t flush;
    wr_lsn_t ka_end; /* WAL end of the last keepalive */
    /* (issue 7) a destination whose commits become durable after they return
     * (dest_ops_t.durable): flush positions wait here for their commit */
    uint64_t commits;         /* destination commits made by this process */
    uint64_t durable_commits; /* ... of which the destination said they are durable */
    struct {
        uint64_t seq; /* durable once durable_commits >= seq */
        wr_lsn_t lsn;
    } * dpend;
    size_t ndpend, dpendcap;
    int64_t durable_poll_ms;
    /* (issue 7) reading the stream ahead while the destination waits (apw_readahead) */
    bool reading_ahead;     /* inside apw_readahead's stm_recv: apw_hold keeps everything */
    int readahead_n;        /* its socket reads since the loop last processed the stream */
    size_t readahead_bytes; /* ... and what the socket held before each (FIONREAD) */
    uint64_t events;

    int64_t last_progress_ms;
    wkm_t metrics;          /* counts for the supervisor's metrics (proto/wkmetrics.h) */
    apw_sx_t sx;            /* streamed transactions */
    uint64_t idle_commits;  /* batches committed because the stream was idle */
    int64_t last_commit_ts; /* commit time of the last source transaction processed */
    wr_lsn_t prog_flush, prog_recv;
    uint64_t prog_events;
} apw_t;

static volatile sig_atomic_t apw_signalled;

static void
apw_on_signal(int sig)
{
    WR_UNUSED(sig);
    apw_signalled = 1;
}

static bool
apw_stopping(const apw_t *a)
{
    return apw_signalled || a->chan.stop_requested;
}

/* ---- the destination's waits (issue 9; dest_set_host_hooks) ---------------------------- */

/* The destination waits on the outside world (a webhook answering 503, a NATS server
 * down): the supervisor shows it in status. NULL: the wait is over. */
static void
apw_dest_waiting(void *arg, const char *message)
{
    apw_t *a = arg;
    ipc_msg_t m;
    wr_err_t err;

    memset(&m, 0, sizeof(m));
    m.type = IPC_DEST_WAIT;
    m.u.dest_wait.message = (char *)(message ? message : "");
    if (a->chan.fd >= 0 && wk_chan_send(&a->chan, &m, &err) != 0)
        log_debug("cannot report the destination's wait error=\"%s\"", err.msg);
}

/* Between a waiting destination's attempts: reads the channel (["stop"], EOF). */
static bool
apw_dest_interrupted(void *arg)
{
    apw_t *a = arg;
    wr_err_t err;

    if (a->chan.fd >= 0 && wk_chan_poll(&a->chan, 0, &err) != 0)
        return true; /* the supervisor is gone */
    return apw_stopping(a);
}

static wr_lsn_t
apw_max(wr_lsn_t x, wr_lsn_t y)
{
    return x > y ? x : y;
}

/* Asks for a restream (STREAMED TRANSACTIONS): the handlers return STM_STOP, the loop
 * calls apw_restream. Returns STM_STOP. */
static int
apw_restream_due(apw_t *a, const char *why)
{
    if (!a->sx.restream_due) {
        a->sx.restream_due = true;
        a->sx.restream_why = why;
    }
    return STM_STOP;
}

/* True at a point where the batch may commit with a complete transaction's key: not
 * inside a source transaction, and no streamed transaction open in the batch. */
static bool
apw_at_boundary(const apw_t *a)
{
    return !a->stm.tx.in_tx && !a->sx.direct;
}

/* ---- the table map ------------------------------------------------------------------ */

static size_t
apw_hash(uint32_t relid, size_t cap)
{
    return (size_t)((relid * 2654435761u) & (uint32_t)(cap - 1));
}

static apw_table_t *
apw_table_find(const apw_t *a, uint32_t relid)
{
    if (a->idxcap == 0)
        return NULL;
    for (size_t i = apw_hash(relid, a->idxcap);; i = (i + 1) & (a->idxcap - 1)) {
        apw_table_t *t = a->idx[i];
        if (t == NULL)
            return NULL;
        if (t->relid == relid)
            return t;
    }
}

static int
apw_index_grow(apw_t *a)
{
    size_t cap = a->idxcap ? a->idxcap * 2 : 64;
    apw_table_t **idx = calloc(cap, sizeof(*idx));

    if (idx == NULL)
        return WR_ENOMEM;
    for (size_t k = 0; k < a->ntabs; k++) {
        size_t i = apw_hash(a->tabs[k]->relid, cap);
        while (idx[i] != NULL)
            i = (i + 1) & (cap - 1);
        idx[i] = a->tabs[k];
    }
    free(a->idx);
    a->idx = idx;
    a->idxcap = cap;
    return 0;
}

/* The entry of relid, created (unknown, INIT) when absent; NULL on OOM. */
static apw_table_t *
apw_table_get(apw_t *a, uint32_t relid)
{
    apw_table_t *t = apw_table_find(a, relid);
    size_t i;

    if (t != NULL)
        return t;
    if ((a->ntabs + 1) * 2 > a->idxcap && apw_index_grow(a) != 0)
        return NULL;
    if (a->ntabs == a->tabcap) {
        size_t cap = a->tabcap ? a->tabcap * 2 : 64;
        apw_table_t **tabs = realloc(a->tabs, cap * sizeof(*tabs));
        if (tabs == NULL)
            return NULL;
        a->tabs = tabs;
        a->tabcap = cap;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->relid = relid;
    t->phase = PH_INIT;
    a->tabs[a->ntabs++] = t;
    for (i = apw_hash(relid, a->idxcap); a->idx[i] != NULL; i = (i + 1) & (a->idxcap - 1))
        ;
    a->idx[i] = t;
    return t;
}

static void
apw_recount(apw_t *a)
{
    a->n_handoff = 0;
    a->n_catchup = 0;
    for (size_t k = 0; k < a->ntabs; k++) {
        const apw_table_t *t = a->tabs[k];
        if (!t->known)
            continue;
        if (t->phase == PH_SYNCWAIT || t->phase == PH_CATCHUP || t->phase == PH_SYNCDONE)
            a->n_handoff++;
        if (t->phase == PH_CATCHUP)
            a->n_catchup++;
    }
}

static void apw_ddl_on_phase(apw_table_t *t);

/* Records a persisted phase of a table (from the supervisor or our own acked request). */
static void
apw_table_set(apw_t *a, apw_table_t *t, wr_phase_t phase, wr_lsn_t lsn)
{
    t->known = true;
    t->removed = false;
    t->phase = phase;
    t->lsn = lsn;
    apw_ddl_on_phase(t);
    if (phase == PH_READY || phase == PH_SYNCDONE || phase == PH_ERRORED)
        a->cleanup_due = true;
    apw_recount(a);
}

/* Records the destination table name the supervisor chose (tables, table_state); "" or
 * NULL leaves the one known. */
static void
apw_table_dest_name(apw_t *a, apw_table_t *t, const char *dest_name)
{
    char *copy;

    if (dest_name == NULL || dest_name[0] == '\0' ||
        (t->dest_name != NULL && strcmp(t->dest_name, dest_name) == 0))
        return;
    if ((copy = wr_strdup(dest_name)) == NULL) {
        a->oom = true;
        return;
    }
    free(t->dest_name);
    t->dest_name = copy;
    t->dest_ready = false; /* registered again under that name */
}

static const char *
apw_table_label(const apw_table_t *t, char *buf, size_t len)
{
    const char *nsp = t->nsp ? t->nsp : (t->schema ? t->schema->nsp : NULL);
    const char *name = t->name ? t->name : (t->schema ? t->schema->name : NULL);

    if (name != NULL)
        snprintf(buf, len, "%s.%s", nsp ? nsp : "?", name);
    else
        snprintf(buf, len, "relid %u", (unsigned)t->relid);
    return buf;
}

static void
apw_tables_merge(apw_t *a, const ipc_msg_t *m)
{
    for (size_t k = 0; k < a->ntabs; k++)
        a->tabs[k]->known = false;
    for (uint32_t i = 0; i < m->u.tables.n; i++) {
        const ipc_table_info_t *ti = &m->u.tables.tables[i];
        apw_table_t *t = apw_table_get(a, ti->relid);

        if (t == NULL) {
            a->oom = true;
            return;
        }
        if (ti->nsp != NULL && (t->nsp == NULL || strcmp(t->nsp, ti->nsp) != 0)) {
            free(t->nsp);
            t->nsp = wr_strdup(ti->nsp);
        }
        if (ti->name != NULL && (t->name == NULL || strcmp(t->name, ti->name) != 0)) {
            free(t->name);
            t->name = wr_strdup(ti->name);
        }
        apw_table_dest_name(a, t, ti->dest_name);
        t->known = true;
        t->removed = false;
        t->phase = ti->phase;
        t->lsn = ti->lsn;
        apw_ddl_on_phase(t);
        if (t->phase == PH_READY || t->phase == PH_SYNCDONE || t->phase == PH_ERRORED)
            a->cleanup_due = true;
    }
    apw_recount(a);
}

/* Frees the entries marked by ["table_removed"] and rebuilds the index. Only called where
 * no pointer to an entry is held (the top of the loop). */
static void
apw_purge_removed(apw_t *a)
{
    size_t n = 0;

    a->remove_due = false;
    for (size_t k = 0; k < a->ntabs; k++) {
        apw_table_t *t = a->tabs[k];
        if (!t->removed) {
            a->tabs[n++] = t;
            continue;
        }
        free(t->nsp);
        free(t->name);
        free(t->dest_name);
        wr_schema_free(t->schema);
        free(t);
    }
    a->ntabs = n;
    if (a->idxcap == 0)
        return;
    memset(a->idx, 0, a->idxcap * sizeof(*a->idx));
    for (size_t k = 0; k < a->ntabs; k++) {
        size_t i = apw_hash(a->tabs[k]->relid, a->idxcap);
        while (a->idx[i] != NULL)
            i = (i + 1) & (a->idxcap - 1);
        a->idx[i] = a->tabs[k];
    }
    apw_recount(a);
}

/* Channel callback: messages that are not the ack a request waits for. Only records
 * state; the loop acts on it. */
static void
apw_on_msg(const ipc_msg_t *m, void *arg)
{
    apw_t *a = arg;
    apw_table_t *t;

    switch (m->type) {
    case IPC_TABLE_STATE:
        t = apw_table_get(a, m->u.table_state.relid);
        if (t == NULL) {
            a->oom = true;
            return;
        }
        log_info("table state relid=%u phase=%s lsn=" WR_LSN_FMT, (unsigned)m->u.table_state.relid,
                 phase_name(m->u.table_state.phase), WR_LSN_ARGS(m->u.table_state.lsn));
        apw_table_dest_name(a, t, m->u.table_state.dest_name);
        apw_table_set(a, t, m->u.table_state.phase, m->u.table_state.lsn);
        if (t->phase == PH_INIT) {
            /* a copy waits for us: acknowledge once what we wrote of it is durable */
            t->ack_due = true;
            a->ack_due = true;
        }
        break;
    case IPC_TABLES:
        apw_tables_merge(a, m);
        break;
    case IPC_TABLE_REMOVED:
        t = apw_table_find(a, m->u.table_removed.relid);
        if (t == NULL)
            break;
        log_info("table no longer published, forgetting it relid=%u",
                 (unsigned)m->u.table_removed.relid);
        t->known = false; /* nothing of it is applied from now on */
        t->phase = PH_INIT;
        t->removed = true;
        a->remove_due = true;
        apw_recount(a);
        break;
    case IPC_STOP:
        log_info("stop requested by the supervisor");
        break;
    default:
        log_debug("ignoring message from the supervisor type=%s", ipc_type_name(m->type));
        break;
    }
}

/* ---- feedback ------------------------------------------------------------------------- */

static int apw_durable_poll(apw_t *a, bool force, wr_err_t *err);

/* A standby status update when due (or at once with force): the engine's, with the
 * flush given to apw_flush_to (after asking a destination whose commits become durable
 * later which are, apw_durable_poll). */
static int
apw_send_status(apw_t *a, bool force, wr_err_t *err)
{
    int rc = apw_durable_poll(a, force, err);

    if (rc != 0)
        return rc;
    return stm_feedback(&a->stm, force, err);
}

/* The engine's byte and status counts into the metrics. */
static void
apw_metrics_stream(apw_t *a)
{
    uint64_t bytes, status;

    stm_counters(&a->stm, &bytes, &status);
    wkm_stream_totals(&a->metrics, bytes, status);
}

static int
apw_send_progress(apw_t *a, bool force, wr_err_t *err)
{
    int64_t now = wr_now_ms();
    ipc_msg_t m;
    int rc;

    /* metrics: caught up = everything received is durable and nothing waits */
    wkm_position(&a->metrics, a->last_commit_ts,
                 !a->stm.tx.in_tx && !a->batch_open && a->n_catchup == 0 &&
                     a->stm.received <= a->flush);
    apw_metrics_stream(a);
    rc = wkm_send(&a->metrics, &a->chan, force, err);
    if (rc != 0)
        return rc;
    if (a->flush == a->prog_flush && a->stm.received == a->prog_recv && a->events == a->prog_events)
        return 0;
    if (!force && now - a->last_progress_ms < APW_PROGRESS_MS)
        return 0;
    memset(&m, 0, sizeof(m));
    m.type = IPC_PROGRESS;
    m.u.progress.flush_lsn = a->flush;
    m.u.progress.received_lsn = a->stm.received;
    m.u.progress.events = a->events;
    rc = wk_chan_send(&a->chan, &m, err);
    if (rc != 0)
        return rc;
    a->last_progress_ms = now;
    a->prog_flush = a->flush;
    a->prog_recv = a->stm.received;
    a->prog_events = a->events;
    return 0;
}

/* Moves the durable flush forward (never back). With a destination whose commits become
 * durable later (dest_ops_t.durable), a position that needs a commit not yet durable
 * waits in dpend until apw_durable_poll learns it is. */
static void
apw_flush_to(apw_t *a, wr_lsn_t lsn)
{
    if (lsn <= a->flush)
        return;
    if (a->dest != NULL && a->dest->ops->durable != NULL && a->durable_commits < a->commits) {
        if (a->ndpend > 0 && a->dpend[a->ndpend - 1].seq == a->commits) {
            if (lsn > a->dpend[a->ndpend - 1].lsn)
                a->dpend[a->ndpend - 1].lsn = lsn;
            return;
        }
        if (a->ndpend == a->dpendcap) {
            size_t cap = a->dpendcap ? a->dpendcap * 2 : 64;
            void *n = realloc(a->dpend, cap * sizeof(*a->dpend));

            if (n == NULL)
                return; /* the position is reported with a later one */
            a->dpend = n;
            a->dpendcap = cap;
        }
        a->dpend[a->ndpend].seq = a->commits;
        a->dpend[a->ndpend].lsn = lsn;
        a->ndpend++;
        return;
    }
    a->flush = lsn;
    stm_set_flush(&a->stm, a->flush);
}

#define APW_DURABLE_POLL_MS 200

/* Asks the destination which commits are durable (at most every APW_DURABLE_POLL_MS
 * unless force) and moves the flush over the positions that waited for them. */
static int
apw_durable_poll(apw_t *a, bool force, wr_err_t *err)
{
    int64_t now = wr_now_ms();
    uint64_t n = 0;
    size_t k = 0;
    int rc;

    if (a->ndpend == 0 || a->dest == NULL || a->dest->ops->durable == NULL)
        return 0;
    if (!force && now - a->durable_poll_ms < APW_DURABLE_POLL_MS)
        return 0;
    a->durable_poll_ms = now;
    rc = a->dest->ops->durable(a->dest, &n, err);
    if (rc != 0)
        return rc;
    a->durable_commits = n;
    while (k < a->ndpend && a->dpend[k].seq <= n) {
        if (a->dpend[k].lsn > a->flush)
            a->flush = a->dpend[k].lsn;
        k++;
    }
    memmove(a->dpend, a->dpend + k, (a->ndpend - k) * sizeof(*a->dpend));
    a->ndpend -= k;
    stm_set_flush(&a->stm, a->flush);
    return 0;
}

/* ---- the destination batch ------------------------------------------------------------ */

static bool apw_table_specific(int code);
static int apw_table_fail(apw_t *a, apw_table_t *t, const wr_err_t *cause, wr_err_t *err);

/* (issue 7) A destination that holds changes back (dest_ops_t.flush: postgres) writes them
 * before the commit, so that a failure that belongs to one table is pinned on it: the
 * table goes ERRORED, persisted before the resume key moves past its changes, its
 * held-back changes are dropped, and the other tables' changes commit. */
static int
apw_batch_flush(apw_t *a, wr_err_t *err)
{
    for (;;) {
        uint32_t relid = 0;
        apw_table_t *t;
        wr_err_t werr;
        int rc;

        wr_err_clear(&werr);
        rc = a->dest->ops->flush(a->dest, &relid, &werr);
        if (rc == 0)
            return 0;
        t = relid != 0 ? apw_table_find(a, relid) : NULL;
        if (t == NULL || !apw_table_specific(rc)) {
            *err = werr;
            return rc;
        }
        rc = apw_table_fail(a, t, &werr, err);
        if (rc != 0)
            return rc;
    }
}

/* The same with dest_ops_t.flush_commit (one call that may save a round trip); on an
 * error that is not one table's the destination has rolled the batch back. */
static int
apw_batch_flush_commit(apw_t *a, const dest_key_t *key, wr_err_t *err)
{
    for (;;) {
        uint32_t relid = 0;
        apw_table_t *t;
        wr_err_t werr;
        int rc;

        wr_err_clear(&werr);
        rc = a->dest->ops->flush_commit(a->dest, APW_STREAM, key, &relid, &werr);
        if (rc == 0)
            return 0;
        t = relid != 0 ? apw_table_find(a, relid) : NULL;
        if (t == NULL || !apw_table_specific(rc)) {
            wr_err_t rerr;

            if (a->dest->ops->rollback(a->dest, &rerr) != 0)
                log_err(LOG_LVL_WARN, "rolling back the destination batch", &rerr);
            *err = werr;
            return rc;
        }
        rc = apw_table_fail(a, t, &werr, err);
        if (rc != 0)
            return rc;
    }
}

/* Commits the open batch. Inside a transaction the key is the last change processed and
 * the flush moves only to the last complete transaction in the batch; outside, the key
 * is the last transaction's and the flush moves to its end. */
static int
apw_batch_commit(apw_t *a, wr_err_t *err)
{
    dest_key_t key;
    int64_t t0 = wkm_clock_us();
    int rc;

    if (!a->batch_open)
        return 0;
    /* a streamed transaction written into the batch as it arrives: the batch commits only
     * with it, at its Stream Commit (STREAMED TRANSACTIONS) */
    if (a->sx.direct)
        return 0;
    if (a->stm.tx.in_tx) {
        key.commit_lsn = a->stm.tx.final_lsn;
        key.ordinal = a->stm.tx.ordinal;
    } else {
        key = a->last_tx_key;
    }
    FAILPOINT("apply.before_commit");
    FAILPOINT("apply.dest_commit");
    if (a->dest->ops->flush_commit != NULL) {
        rc = apw_batch_flush_commit(a, &key, err);
        if (rc != 0) {
            a->batch_open = false;
            wr_err_prefix(err, "committing the destination batch: ");
            return rc < 0 ? rc : WR_EDEST;
        }
        goto committed;
    }
    if (a->dest->ops->flush != NULL && (rc = apw_batch_flush(a, err)) != 0) {
        wr_err_t rerr;

        if (a->dest->ops->rollback(a->dest, &rerr) != 0)
            log_err(LOG_LVL_WARN, "rolling back the destination batch", &rerr);
        a->batch_open = false;
        wr_err_prefix(err, "writing the destination batch: ");
        return rc < 0 ? rc : WR_EDEST;
    }
    rc = a->dest->ops->commit(a->dest, APW_STREAM, &key, err);
    a->batch_open = false;
    if (rc != 0) {
        wr_err_prefix(err, "committing the destination batch: ");
        return rc < 0 ? rc : WR_EDEST;
    }
committed:
    a->batch_open = false;
    a->commits++;
    wkm_batch_commit(&a->metrics, t0);
    log_debug("batch committed key=" WR_LSN_FMT "/%u bytes=%lld", WR_LSN_ARGS(key.commit_lsn),
              (unsigned)key.ordinal, (long long)a->batch_bytes);
    a->durable_key = key;
    a->batch_bytes = 0;
    if (a->batch_pending_flush != 0)
        apw_flush_to(a, a->batch_pending_flush);
    a->batch_pending_flush = 0;
    /* nothing in flight any more: a keepalive that came while the batch was open counts
     * now (one that came inside a transaction is below that transaction's end) */
    if (!a->stm.tx.in_tx)
        apw_flush_to(a, a->ka_end);
    if (a->batch_ddl) {
        a->batch_ddl = false;
        for (size_t k = 0; k < a->ntabs; k++)
            a->tabs[k]->ddl_in_batch = false;
        FAILPOINT("apply.after_schema_change");
    }
    FAILPOINT(a->stm.tx.in_tx ? "apply.mid_txn_chunk" : "apply.after_commit");
    return 0;
}

/* Abandons the open batch (stop in the middle of a transaction). */
static void
apw_batch_rollback(apw_t *a)
{
    wr_err_t err;

    if (!a->batch_open)
        return;
    if (a->dest->ops->rollback(a->dest, &err) != 0)
        log_err(LOG_LVL_WARN, "rolling back the destination batch", &err);
    wkm_batch_rollback(&a->metrics);
    a->batch_open = false;
    a->batch_bytes = 0;
    a->batch_pending_flush = 0;
    a->stm.tx.begun = false; /* written again before the next change */
    /* a streamed transaction written into it is gone with it (its caller decides what
     * comes next: apw_on_stream_abort, apw_restream, apw_stop) */
    a->sx.direct = false;
    a->sx.nsps = 0;
    a->sx.mixed = 0;
    /* a table the rolled-back transaction created is gone again */
    for (size_t k = 0; k < a->ntabs; k++) {
        a->tabs[k]->dest_ready = false;
        /* and a schema change it made: compare again */
        a->tabs[k]->rel_pending = a->tabs[k]->rel_pending || a->tabs[k]->ddl_in_batch;
        a->tabs[k]->ddl_in_batch = false;
    }
    a->batch_ddl = false;
}

/* A table goes to Init: another process copies it again, maybe with other columns or
 * another key (a REPLICA IDENTITY FULL table that lost its primary key). What our
 * destination handle cached about it (the columns UPDATE/DELETE match on, statements)
 * is dropped, so that the next ensure_table reads the destination afresh (issue 12,
 * defect 5: DELETE used to match by the old key and removed every duplicate). No batch
 * may be open. */
static int
apw_dest_forget(apw_t *a, apw_table_t *t, wr_err_t *err)
{
    t->dest_ready = false;
    if (a->dest->ops->forget_table == NULL)
        return 0;
    return a->dest->ops->forget_table(a->dest, t->relid, err);
}

/* Acknowledges the tables whose Init arrived (issue 12, defect 6): the open batch, which
 * may hold their changes, is committed first (also inside a source transaction: its key
 * lets a replay resume there), and from Init on nothing of them is written. Only then
 * does the supervisor start their copy, whose truncate must come after every write of
 * ours. Called where no change is half-processed: the top of the loop and the catch-up
 * wait. */
static int
apw_send_acks(apw_t *a, wr_err_t *err)
{
    int rc;

    a->ack_due = false;
    rc = apw_batch_commit(a, err);
    if (rc != 0)
        return rc;
    for (size_t k = 0; k < a->ntabs; k++) {
        apw_table_t *t = a->tabs[k];
        ipc_msg_t m;

        if (!t->ack_due)
            continue;
        t->ack_due = false;
        if (t->phase == PH_INIT && (rc = apw_dest_forget(a, t, err)) != 0)
            return rc;
        memset(&m, 0, sizeof(m));
        m.type = IPC_TABLE_ACK;
        m.u.table_state.relid = t->relid;
        m.u.table_state.phase = t->phase;
        m.u.table_state.lsn = t->lsn;
        rc = wk_chan_send(&a->chan, &m, err);
        if (rc != 0)
            return rc;
        log_debug("table state acknowledged relid=%u phase=%s", (unsigned)t->relid,
                  phase_name(t->phase));
    }
    return 0;
}

/* ---- table errors ----------------------------------------------------------------------- */

static bool
apw_table_specific(int code)
{
    return code == WR_EUNSUPPORTED || code == WR_EINVAL || code == WR_EDATA;
}

/* Marks a table ERRORED because one of its changes cannot be applied; the others go on.
 * Returns 0, or an error if the supervisor could not record it. */
static int
apw_table_fail(apw_t *a, apw_table_t *t, const wr_err_t *cause, wr_err_t *err)
{
    char label[256];
    int rc;

    apw_table_label(t, label, sizeof(label));
    log_error("cannot apply a change, table set to errored table=%s relid=%u lsn=" WR_LSN_FMT
              " error=\"%s\"%s%s",
              label, (unsigned)t->relid, WR_LSN_ARGS(a->stm.tx.final_lsn), cause->msg,
              cause->hint[0] ? " hint=" : "", cause->hint);
    rc = wk_chan_set_phase(&a->chan, t->relid, PH_ERRORED, a->stm.tx.final_lsn,
                           wr_err_code_name(cause->code), cause->msg, cause->hint, err);
    if (rc != 0)
        return rc;
    apw_table_set(a, t, PH_ERRORED, a->stm.tx.final_lsn);
    return 0;
}

/* ---- schema changes ------------------------------------------------------------------- */

#define APW_DDL_MAX_RECOPIES 3

static int apw_sql_conn(apw_t *a, wr_err_t *err);

/* A boolean column of a catalog row. */
/* Reads the table's catalog now (common/catalog.c, one query, one snapshot) on the SQL
 * connection, reconnecting it if it broke. *found=false if the relation is gone. */
static int
apw_ddl_catalog(apw_t *a, uint32_t relid, dest_catalog_t *cat, bool *found, wr_err_t *err)
{
    int rc;

    memset(cat, 0, sizeof(*cat));
    *found = false;
    if ((rc = apw_sql_conn(a, err)) != 0)
        return rc;
    return cat_read(a->sql, relid, cat, found, err);
}

/* True if the publication gives the table a column list (PostgreSQL 15): its Relation
 * messages then never match the catalog, and a copy cannot help. */
static bool
apw_ddl_column_list(apw_t *a, uint32_t relid)
{
    return cat_column_list(a->sql, a->cfg.publication, relid);
}

/* True if a Relation message's schema has the same table name and columns (names, types,
 * typmods, order) as the destination's version; keys are not compared. */
static bool
apw_ddl_same_columns(const wr_schema_t *rel, const wr_schema_t *ds)
{
    if (strcmp(rel->nsp, ds->nsp) != 0 || strcmp(rel->name, ds->name) != 0 ||
        rel->ncols != ds->ncols)
        return false;
    for (uint16_t i = 0; i < rel->ncols; i++) {
        if (strcmp(rel->cols[i].name, ds->cols[i].name) != 0 ||
            rel->cols[i].type_oid != ds->cols[i].type_oid ||
            rel->cols[i].typmod != ds->cols[i].typmod)
            return false;
    }
    return true;
}

/* Commits the open batch up to the change before the current one (the current change
 * is written after the schema step, in the next batch). */
static int
apw_ddl_commit_before(apw_t *a, wr_err_t *err)
{
    uint32_t ord = a->stm.tx.ordinal;
    int rc;

    if (a->sx.direct)
        return apw_restream_due(a, "a schema change while a streamed transaction is open");
    if (!a->batch_open)
        return 0;
    a->stm.tx.ordinal = ord > 0 ? ord - 1 : 0;
    rc = apw_batch_commit(a, err);
    a->stm.tx.ordinal = ord;
    return rc;
}

static int
apw_ddl_batch_begin(apw_t *a, wr_err_t *err)
{
    int rc;

    if (a->batch_open)
        return 0;
    rc = a->dest->ops->begin(a->dest, err);
    if (rc != 0)
        return rc;
    a->batch_open = true;
    a->batch_start_ms = wr_now_ms();
    a->batch_bytes = 0;
    a->batch_pending_flush = 0;
    return 0;
}

/* The table cannot be followed and a copy would not help: ERRORED "schema_changed". */
static int
apw_ddl_errored(apw_t *a, apw_table_t *t, const char *msg, const char *hint, wr_err_t *err)
{
    char label[256];
    int rc;

    apw_table_label(t, label, sizeof(label));
    rc = apw_ddl_commit_before(a, err);
    if (rc != 0)
        return rc;
    log_error("schema change cannot be followed, table set to errored table=%s relid=%u "
              "lsn=" WR_LSN_FMT " error=\"%s\" hint=\"%s\"",
              label, (unsigned)t->relid, WR_LSN_ARGS(a->stm.tx.final_lsn), msg, hint);
    rc = wk_chan_set_phase(&a->chan, t->relid, PH_ERRORED, a->stm.tx.final_lsn, "schema_changed",
                           msg, hint, err);
    if (rc != 0)
        return rc;
    apw_table_set(a, t, PH_ERRORED, a->stm.tx.final_lsn);
    return 1;
}

/* Sends the table back to INIT: the supervisor starts a sync worker that copies it again
 * (dropping and creating the destination table when its columns differ) and hands it
 * over as usual; until then its changes are skipped. */
static int
apw_ddl_recopy(apw_t *a, apw_table_t *t, const char *reason, wr_err_t *err)
{
    char label[256], msg[1024];
    int rc;

    apw_table_label(t, label, sizeof(label));
    if (++t->ddl_recopies > APW_DDL_MAX_RECOPIES) {
        snprintf(msg, sizeof(msg),
                 "schema change of \"%s\" still not followed after copying the table %d times: "
                 "%s",
                 label, APW_DDL_MAX_RECOPIES, reason);
        return apw_ddl_errored(a, t, msg,
                               "check the table's definition and the publication, then run "
                               "\"walrelay resync\" for the table",
                               err);
    }
    rc = apw_ddl_commit_before(a, err);
    if (rc != 0)
        return rc;
    log_warn("schema change cannot be followed exactly, copying the table again table=%s "
             "relid=%u lsn=" WR_LSN_FMT " reason=\"%s\"",
             label, (unsigned)t->relid, WR_LSN_ARGS(a->stm.tx.final_lsn), reason);
    rc = wk_chan_set_phase(&a->chan, t->relid, PH_INIT, a->stm.tx.final_lsn, NULL, NULL, NULL, err);
    if (rc != 0)
        return rc;
    apw_table_set(a, t, PH_INIT, a->stm.tx.final_lsn);
    rc = a->batch_open ? 0 : apw_dest_forget(a, t, err); /* the batch was committed above */
    if (rc != 0)
        return rc;
    return 1;
}

/* Compares the table's last Relation message with the destination's schema version and
 * the catalog, at the first change of the table after that message that this worker
 * applies (a replayed change never gets here, so a replayed older Relation never alters
 * anything). Returns 0 to write the change, 1 if the table left READY/SYNCDONE (its
 * change is skipped), or an error. See docs/destinations.md "Schema changes". */
static int
apw_ddl_reconcile(apw_t *a, apw_table_t *t, wr_err_t *err)
{
    const dest_ops_t *ops = a->dest->ops;
    dest_key_t before = {a->stm.tx.final_lsn, a->stm.tx.ordinal > 0 ? a->stm.tx.ordinal - 1 : 0};
    wr_schema_t *ds = NULL;
    dest_tmeta_t dm, meta;
    dest_catalog_t cat;
    dest_ddl_plan_t plan;
    char label[256], why[512];
    bool found = false;
    wr_err_t werr;
    int rc;

    t->rel_pending = false;
    if (ops->get_version == NULL)
        return 0; /* the destination keeps no schema: nothing can be wrong */
    if (a->sx.in_direct) {
        /* a streamed transaction's commit LSN is past the change's own LSN: a version at
         * or before it is older than the change */
        before.commit_lsn = a->stm.msg_lsn;
        before.ordinal = 0;
    }
    memset(&dm, 0, sizeof(dm));
    memset(&meta, 0, sizeof(meta));
    memset(&plan, 0, sizeof(plan));
    wr_err_clear(&werr);
    apw_table_label(t, label, sizeof(label));
    rc = ops->get_version(a->dest, t->relid, &ds, &dm, err);
    if (rc != 0)
        return rc;
    memset(&cat, 0, sizeof(cat));
    if (a->sx.in_direct && ds != NULL && dest_key_cmp(&dm.version, &before) > 0) {
        /* newer than the change's LSN: only the commit LSN can tell */
        rc = apw_restream_due(a, "a schema version to compare inside a streamed transaction");
        goto out;
    }
    if (ds != NULL && dest_key_cmp(&dm.version, &before) > 0) {
        /* the destination holds a newer schema: never alter it backwards (a replayed
         * change does not get here; this is a safety net) */
        log_warn("relation older than the destination's schema version, not altering table=%s "
                 "relid=%u version=" WR_LSN_FMT "/%u change=" WR_LSN_FMT "/%u",
                 label, (unsigned)t->relid, WR_LSN_ARGS(dm.version.commit_lsn),
                 (unsigned)dm.version.ordinal, WR_LSN_ARGS(before.commit_lsn),
                 (unsigned)before.ordinal);
        goto out;
    }
    /* the catalog is read on the network: what the batch holds before this change is
     * committed first, so that no destination lock is held meanwhile - except while a
     * streamed transaction is written as it arrives: it holds the batch until its end
     * anyway, and its first change of each table comes after a Relation message (a
     * restream for every such transaction would spool them all) */
    rc = a->sx.direct ? 0 : apw_ddl_commit_before(a, err);
    if (rc == 0)
        rc = apw_ddl_catalog(a, t->relid, &cat, &found, err);
    if (rc != 0)
        goto out;
    if (found && wr_schema_set_dest_name(cat.schema, t->dest_name) != 0) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory reading the catalog of \"%s\"", label);
        goto out;
    }
    if (!found) {
        /* dropped since this change: the publication refresh cleans the table up */
        log_info("table no longer in the catalog, applying its changes as they come table=%s "
                 "relid=%u",
                 label, (unsigned)t->relid);
        goto out;
    }
    if (!dest_ddl_relation_matches(t->schema, &cat, why, sizeof(why))) {
        if (a->sx.in_direct) {
            rc = apw_restream_due(a, "a schema change inside a streamed transaction");
            goto out;
        }
        if (ds != NULL && apw_ddl_same_columns(t->schema, ds)) {
            /* The table changed again after this point of the stream, but at this point it
             * has the destination's columns: apply as they are. The later change brings
             * its own Relation message before the table's next change. */
            log_debug("catalog ahead of the stream, columns unchanged here table=%s relid=%u "
                      "why=\"%s\"",
                      label, (unsigned)t->relid, why);
            goto out;
        }
        if (apw_ddl_column_list(a, t->relid)) {
            char msg[768];

            snprintf(msg, sizeof(msg),
                     "the publication sends a column list of \"%.200s\", which walrelay does "
                     "not support (%.400s)",
                     label, why);
            rc = apw_ddl_errored(a, t, msg,
                                 "publish the table without a column list, then run \"walrelay "
                                 "resync\" for the table",
                                 err);
            goto out;
        }
        char reason[700];

        snprintf(reason, sizeof(reason),
                 "the table changed again after this point of the stream (%.500s), the columns "
                 "at this point cannot be read from the catalog",
                 why);
        rc = apw_ddl_recopy(a, t, reason, err);
        goto out;
    }
    rc = dest_ddl_plan_flags(ds, &dm, &cat, ops->ddl_flags, &plan, err);
    if (rc != 0)
        goto out;
    if (plan.action == DEST_DDL_NONE) {
        t->ddl_recopies = 0;
        goto out;
    }
    if (a->sx.in_direct) {
        /* the version key (the change before) is not known yet */
        rc = apw_restream_due(a, "a schema change inside a streamed transaction");
        goto out;
    }
    if (plan.action == DEST_DDL_RECOPY) {
        rc = apw_ddl_recopy(a, t, plan.summary, err);
        goto out;
    }
    t->ddl_recopies = 0;
    rc = dest_tmeta_copy(&meta, &cat.meta);
    if (rc != 0) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory recording the schema of \"%s\"", label);
        goto out;
    }
    meta.version = before;
    if (plan.action == DEST_DDL_REFRESH) {
        rc = apw_ddl_batch_begin(a, err);
        if (rc == 0)
            rc = ops->put_version(a->dest, cat.schema, &meta, plan.summary, err);
        if (rc == 0)
            log_info("schema version recorded table=%s relid=%u version=" WR_LSN_FMT
                     "/%u change=\"%s\"",
                     label, (unsigned)t->relid, WR_LSN_ARGS(before.commit_lsn),
                     (unsigned)before.ordinal, plan.summary);
        goto out;
    }
    /* FOLLOW: the earlier changes committed on their own, then the alteration in the same
     * destination transaction as the changes that follow it */
    rc = apw_ddl_commit_before(a, err);
    if (rc == 0)
        rc = apw_ddl_batch_begin(a, err);
    if (rc != 0)
        goto out;
    {
        dest_alter_t alt = {plan.src, plan.fill, &meta, plan.summary};

        rc = ops->alter_table(a->dest, ds, cat.schema, &alt, &werr);
    }
    if (rc != 0) {
        apw_batch_rollback(a);
        if (rc == WR_EUNSUPPORTED || rc == WR_EDATA || rc == WR_EINVAL) {
            rc = apw_ddl_errored(a, t, werr.msg,
                                 werr.hint[0] ? werr.hint : "run \"walrelay resync\" for the table",
                                 err);
            goto out;
        }
        *err = werr;
        goto out;
    }
    t->dest_ready = false; /* register the Relation's schema again */
    t->ddl_in_batch = true;
    a->batch_ddl = true;
    log_info("schema change followed table=%s relid=%u version=" WR_LSN_FMT "/%u change=\"%s\"",
             label, (unsigned)t->relid, WR_LSN_ARGS(before.commit_lsn), (unsigned)before.ordinal,
             plan.summary);
out:
    dest_ddl_plan_free(&plan);
    dest_tmeta_clear(&meta);
    dest_tmeta_clear(&dm);
    dest_catalog_clear(&cat);
    wr_schema_free(ds);
    return rc;
}

/* A table that left READY/SYNCDONE (re-copy, error, resync) is compared again, and
 * registered with the destination again, before its next change is applied. */
static void
apw_ddl_on_phase(apw_table_t *t)
{
    if (t->phase != PH_READY && t->phase != PH_SYNCDONE) {
        t->rel_pending = true;
        t->dest_ready = false;
    }
}

/* ---- applying changes ----------------------------------------------------------------- */

/* A streamed transaction written as it arrives starts only while no table is in a
 * handoff phase, and no handoff step runs until it ends: READY is all it needs. */
static bool
apw_applies(const apw_t *a, const apw_table_t *t, const stm_tx_t *tx)
{
    if (t == NULL || !t->known)
        return false;
    if (t->phase == PH_READY)
        return true;
    return t->phase == PH_SYNCDONE && tx != &a->sx.tx && t->lsn <= tx->final_lsn;
}

/* True if the change with the current key was committed before (replay). A streamed
 * transaction written as it arrives is never one (checked at its Stream Start). */
static bool
apw_already_applied(const apw_t *a, const stm_tx_t *tx)
{
    dest_key_t k = {tx->final_lsn, tx->ordinal};

    return tx != &a->sx.tx && a->skip_found && dest_key_cmp(&k, &a->skip_key) <= 0;
}

/* Writes one change of table t. A table-specific failure marks the table ERRORED and
 * returns 0; anything else is returned. */
/* Writes the BEGIN (before the transaction's first written change) or COMMIT (at its
 * Commit, when a BEGIN was written) event of the transaction being received, opening a
 * batch if none is open (a large transaction may have committed one in its middle). */
static int
apw_write_boundary(apw_t *a, dest_ev_kind_t kind, wr_lsn_t end_lsn, wr_err_t *err)
{
    dest_event_t ev;
    int rc;

    if (!a->batch_open) {
        rc = a->dest->ops->begin(a->dest, err);
        if (rc != 0)
            return rc;
        a->batch_open = true;
        a->batch_start_ms = wr_now_ms();
        a->batch_bytes = 0;
        a->batch_pending_flush = 0;
        wkm_batch_begin(&a->metrics);
    }
    stm_boundary(&a->stm.tx, kind, end_lsn, &ev);
    rc = a->dest->ops->write_event(a->dest, &ev, err);
    if (rc != 0)
        return rc;
    a->stm.tx.begun = kind == DEST_EV_BEGIN;
    return 0;
}

static int
apw_write(apw_t *a, apw_table_t *t, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    wr_err_t werr;
    int rc;

    wr_err_clear(&werr);
    if (t->schema == NULL)
        return wr_err_set(err, WR_EPROTO, "change for relid %u before its relation message",
                          (unsigned)t->relid);
    if (t->rel_pending) {
        rc = apw_ddl_reconcile(a, t, err);
        if (a->sx.restream_due)
            return STM_STOP;
        if (rc != 0)
            return rc > 0 ? 0 : rc; /* > 0: the table left READY/SYNCDONE, skip its change */
    }
    if (!t->dest_ready) {
        /* under the name the pipeline chose (it may have come after the Relation) */
        if (wr_schema_set_dest_name(t->schema, t->dest_name) != 0)
            return wr_err_set(err, WR_ENOMEM, "out of memory registering relid %u",
                              (unsigned)t->relid);
        rc = a->dest->ops->ensure_table(a->dest, t->schema, &werr);
        if (rc != 0) {
            if (apw_table_specific(rc))
                return apw_table_fail(a, t, &werr, err);
            *err = werr;
            return rc;
        }
        t->dest_ready = true;
    }
    if (!a->batch_open) {
        FAILPOINT("apply.before_batch_begin");
        rc = a->dest->ops->begin(a->dest, err);
        if (rc != 0)
            return rc;
        a->batch_open = true;
        a->batch_start_ms = wr_now_ms();
        a->batch_bytes = 0;
        a->batch_pending_flush = 0;
        wkm_batch_begin(&a->metrics);
    }
    if (!tx->begun) {
        rc = apw_write_boundary(a, DEST_EV_BEGIN, 0, err);
        if (rc != 0)
            return rc;
    }
    if (a->sx.direct && tx != &a->sx.tx)
        a->sx.mixed++; /* another transaction's change after the streamed one's */
    rc = a->dest->ops->write_event(a->dest, ev, &werr);
    if (rc != 0) {
        if (apw_table_specific(rc))
            return apw_table_fail(a, t, &werr, err);
        *err = werr;
        return rc;
    }
    a->events++;
    wkm_event(&a->metrics, t->relid, (int)ev->kind);
    a->batch_bytes += (int64_t)msglen;
    /* a large transaction: commit what we have, the key lets a replay resume here */
    if (a->batch_bytes >= a->cfg.batch_max_bytes)
        return apw_batch_commit(a, err);
    return 0;
}

/* Checks an UPDATE/DELETE can be applied by key; fills cause if not. */
static bool
apw_has_key(const apw_table_t *t, char oldkind, const char *what, wr_err_t *cause)
{
    char label[256];

    if (oldkind == 'O' || (t->schema != NULL && wr_schema_nkeys(t->schema) > 0))
        return true;
    apw_table_label(t, label, sizeof(label));
    wr_err_set(cause, WR_EUNSUPPORTED,
               "cannot apply %s to table \"%s\": it has no replica identity key", what, label);
    wr_err_hint(cause, "give the table a primary key (or REPLICA IDENTITY FULL), then resync it");
    return false;
}

/* The engine's change callback (stream.h): ev carries the key, xid, time and relid. */
static int
apw_on_change(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    apw_t *a = arg;
    apw_table_t *t = apw_table_find(a, ev->relid);
    uint64_t before = a->events;
    wr_err_t cause;
    int rc;

    if (!apw_applies(a, t, tx) || apw_already_applied(a, tx))
        return 0;
    if ((ev->kind == DEST_EV_UPDATE || ev->kind == DEST_EV_DELETE) &&
        !apw_has_key(t, ev->old_kind, ev->kind == DEST_EV_UPDATE ? "an update" : "a delete",
                     &cause))
        return apw_table_fail(a, t, &cause, err);
    rc = apw_write(a, t, tx, ev, msglen, err);
    if (rc != 0)
        return rc;
    return a->events != before ? STM_WRITTEN : 0;
}

static int
apw_on_relation(void *arg, stm_tx_t *tx, const pgo_msg_t *m, wr_err_t *err)
{
    apw_t *a = arg;
    wr_schema_t *s = pgo_relation_schema(m);
    apw_table_t *t;
    wr_err_t serr;
    int rc;

    (void)tx;
    if (s != NULL && pgo_schema_type_names(&a->stm.dec, s) != 0) {
        wr_schema_free(s);
        s = NULL;
    }
    if (s == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory caching relation %u",
                          (unsigned)m->u.relation.relid);
    t = apw_table_get(a, m->u.relation.relid);
    if (t == NULL) {
        wr_schema_free(s);
        return wr_err_set(err, WR_ENOMEM, "out of memory caching relation %u",
                          (unsigned)m->u.relation.relid);
    }
    /* compared with the destination and the catalog at the table's next applied change:
     * also when the message is unchanged (ADD PRIMARY KEY under REPLICA IDENTITY FULL, a
     * type changed and back, a rewrite leave it identical) */
    t->rel_pending = true;
    /* (no next change past UINT32_MAX: the engine refuses it, issue 12 defect 10) */
    if (a->stm.tx.in_tx && a->skip_found && a->stm.tx.ordinal < UINT32_MAX) {
        dest_key_t next = {a->stm.tx.final_lsn, a->stm.tx.ordinal + 1};

        if (dest_key_cmp(&next, &a->skip_key) <= 0)
            log_info("relation of an applied transaction, destination not altered table=%s.%s "
                     "relid=%u lsn=" WR_LSN_FMT " columns=%u",
                     s->nsp, s->name, (unsigned)s->relid, WR_LSN_ARGS(a->stm.tx.final_lsn),
                     (unsigned)s->ncols);
    }
    if (t->schema != NULL && wr_schema_equal(t->schema, s)) {
        wr_schema_free(s);
        return 0;
    }
    log_debug("relation relid=%u table=%s.%s columns=%u", (unsigned)s->relid, s->nsp, s->name,
              (unsigned)s->ncols);
    if (t->known) {
        wr_lsn_t lsn = a->stm.tx.in_tx ? a->stm.tx.final_lsn : a->stm.received;

        wr_err_clear(&serr);
        rc = wk_chan_put_schema(&a->chan, s, lsn, &serr);
        if (rc == WR_ESTATE) {
            log_err(LOG_LVL_WARN, "the supervisor did not record a schema", &serr);
        } else if (rc != 0) {
            wr_schema_free(s);
            *err = serr;
            return rc;
        }
    }
    wr_schema_free(t->schema);
    t->schema = s;
    t->dest_ready = false;
    return 0;
}

/* ---- the handoff ---------------------------------------------------------------------- */

/* Waits, without reading the replication stream, until no table is in CATCHUP (the sync
 * worker stored SYNCDONE, or the table went ERRORED / INIT), or a stop is requested.
 * Status updates keep the walsender from timing us out: the engine's interval (inside
 * wal_sender_timeout), from here and from the status keeper while the channel blocks. */
static int
apw_wait_catchup(apw_t *a, wr_err_t *err)
{
    int rc;

    for (size_t k = 0; k < a->ntabs; k++) {
        const apw_table_t *t = a->tabs[k];
        if (t->known && t->phase == PH_CATCHUP)
            log_info("waiting for table catch-up relid=%u lsn=" WR_LSN_FMT, (unsigned)t->relid,
                     WR_LSN_ARGS(t->lsn));
    }
    while (a->n_catchup > 0 && !apw_stopping(a)) {
        int64_t left;

        if (a->oom)
            return wr_err_set(err, WR_ENOMEM, "out of memory recording table states");
        if (a->ack_due && (rc = apw_send_acks(a, err)) != 0)
            return rc;
        rc = apw_send_status(a, false, err);
        if (rc == 0)
            rc = apw_send_progress(a, false, err);
        if (rc != 0)
            return rc;
        left = stm_feedback_wait_ms(&a->stm);
        rc = wk_chan_poll(&a->chan, left > APW_POLL_MAX_MS ? APW_POLL_MAX_MS : (int)left, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The destination key must cover every processed transaction before a table goes READY
 * (see the file header); commits an empty transaction carrying the key if needed. */
static int
apw_key_catch_up(apw_t *a, wr_err_t *err)
{
    int rc;

    rc = apw_batch_commit(a, err);
    if (rc != 0)
        return rc;
    if (dest_key_cmp(&a->durable_key, &a->last_tx_key) >= 0)
        return 0;
    rc = a->dest->ops->begin(a->dest, err);
    if (rc != 0)
        return rc;
    rc = a->dest->ops->commit(a->dest, APW_STREAM, &a->last_tx_key, err);
    if (rc != 0)
        return rc;
    a->commits++;
    a->durable_key = a->last_tx_key;
    return 0;
}

/* At a transaction boundary (y = end_lsn of the last commit, or the last received
 * position when idle): marks SYNCDONE tables READY once flushed past their LSN, grants
 * CATCHUP to SYNCWAIT tables and waits for each. */
static int
apw_boundary(apw_t *a, wr_lsn_t y, wr_err_t *err)
{
    bool again = true;
    int rc;

    /* a streamed transaction open in the batch: every handoff step commits first; they
     * wait for its end (STREAMED TRANSACTIONS) */
    if (a->sx.direct)
        return 0;
    while (again && a->n_handoff > 0 && !apw_stopping(a)) {
        again = false;
        for (size_t k = 0; k < a->ntabs && !apw_stopping(a); k++) {
            apw_table_t *t = a->tabs[k];
            char label[256];

            if (!t->known)
                continue;
            if (t->phase == PH_SYNCDONE && a->flush >= t->lsn) {
                wr_lsn_t s = t->lsn;

                rc = apw_key_catch_up(a, err);
                if (rc != 0)
                    return rc;
                FAILPOINT("apply.before_ready");
                rc = wk_chan_set_phase(&a->chan, t->relid, PH_READY, a->flush, NULL, NULL, NULL,
                                       err);
                if (rc != 0)
                    return rc;
                apw_table_set(a, t, PH_READY, a->flush);
                FAILPOINT("apply.after_ready");
                log_info("table ready table=%s relid=%u syncdone=" WR_LSN_FMT " flush=" WR_LSN_FMT,
                         apw_table_label(t, label, sizeof(label)), (unsigned)t->relid,
                         WR_LSN_ARGS(s), WR_LSN_ARGS(a->flush));
            } else if (t->phase == PH_SYNCWAIT) {
                wr_lsn_t x = t->lsn;
                /* after a restart, transactions up to the resume key are replayed but not
                 * applied again (for any table): L must pass it (robust: test_crash) */
                wr_lsn_t l = apw_max(apw_max(x, y), a->skip_found ? a->skip_key.commit_lsn + 1 : 0);

                rc = apw_batch_commit(a, err);
                if (rc != 0)
                    return rc;
                rc = wk_chan_set_phase(&a->chan, t->relid, PH_CATCHUP, l, NULL, NULL, NULL, err);
                if (rc == WR_ESTATE && t->phase != PH_SYNCWAIT) {
                    /* its sync worker went away meanwhile (the supervisor set FinishedCopy,
                     * which arrived before this refusal): nothing to wait for */
                    log_info("catch-up not granted, the table left syncwait table=%s relid=%u "
                             "phase=%s",
                             apw_table_label(t, label, sizeof(label)), (unsigned)t->relid,
                             phase_name(t->phase));
                    wr_err_clear(err);
                    again = true;
                    break;
                }
                if (rc != 0)
                    return rc;
                apw_table_set(a, t, PH_CATCHUP, l);
                FAILPOINT("apply.catchup_granted");
                log_info("catch-up granted table=%s relid=%u lsn=" WR_LSN_FMT
                         " syncwait=" WR_LSN_FMT " position=" WR_LSN_FMT,
                         apw_table_label(t, label, sizeof(label)), (unsigned)t->relid,
                         WR_LSN_ARGS(l), WR_LSN_ARGS(x), WR_LSN_ARGS(y));
                rc = apw_wait_catchup(a, err);
                if (rc != 0)
                    return rc;
                log_info("catch-up over table=%s relid=%u phase=%s lsn=" WR_LSN_FMT,
                         apw_table_label(t, label, sizeof(label)), (unsigned)t->relid,
                         phase_name(t->phase), WR_LSN_ARGS(t->lsn));
                again = true; /* phases changed while we waited */
                break;
            }
        }
    }
    return 0;
}

/* ---- streamed transactions (protocol version 2) ----------------------------------------- */

static bool
apw_forced(const apw_t *a, uint32_t xid)
{
    for (size_t i = 0; i < a->sx.nforced; i++)
        if (a->sx.forced[i] == xid)
            return true;
    return false;
}

static apw_spool_t *
apw_spool_find(const apw_t *a, uint32_t xid)
{
    for (apw_spool_t *sp = a->sx.spools; sp != NULL; sp = sp->next)
        if (sp->xid == xid)
            return sp;
    return NULL;
}

/* Closes, deletes and frees the spool of xid. */
static void
apw_spool_drop(apw_t *a, uint32_t xid)
{
    for (apw_spool_t **pp = &a->sx.spools; *pp != NULL; pp = &(*pp)->next) {
        apw_spool_t *sp = *pp;

        if (sp->xid != xid)
            continue;
        *pp = sp->next;
        if (sp->f != NULL)
            fclose(sp->f);
        if (sp->path != NULL && unlink(sp->path) != 0 && errno != ENOENT)
            log_warn("cannot remove a spool file path=%s error=\"%s\"", sp->path, strerror(errno));
        free(sp->path);
        free(sp->subs);
        free(sp);
        return;
    }
}

static void
apw_spool_drop_all(apw_t *a)
{
    while (a->sx.spools != NULL)
        apw_spool_drop(a, a->sx.spools->xid);
}

/* Removes the spool files an earlier run left behind (a crash): what they held is sent
 * again by the server, which replays from the slot's confirmed position. */
static void
apw_spool_cleanup(apw_t *a)
{
    DIR *dir = opendir(a->sx.dir);
    struct dirent *de;
    char path[4096];

    if (dir == NULL)
        return;
    while ((de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "apply-", 6) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", a->sx.dir, de->d_name);
        if (unlink(path) == 0)
            log_info("removed a spool file of an earlier run path=%s", path);
    }
    closedir(dir);
}

static int
apw_spool_open(apw_t *a, uint32_t xid, wr_err_t *err)
{
    apw_spool_t *sp = calloc(1, sizeof(*sp));
    char path[4096];

    if (sp == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory spooling transaction %u", (unsigned)xid);
    if (mkdir(a->sx.dir, 0700) != 0 && errno != EEXIST) {
        free(sp);
        wr_err_set(err, WR_EIO, "cannot create the spool directory \"%s\": %s", a->sx.dir,
                   strerror(errno));
        wr_err_hint(err, "the configuration directory must be writable by walrelay");
        return WR_EIO;
    }
    snprintf(path, sizeof(path), "%s/apply-%u.spool", a->sx.dir, (unsigned)xid);
    sp->xid = xid;
    sp->path = wr_strdup(path);
    sp->f = sp->path ? fopen(path, "w+b") : NULL;
    if (sp->f == NULL) {
        int e = errno;

        free(sp->path);
        free(sp);
        wr_err_set(err, WR_EIO, "cannot create the spool file \"%s\": %s", path, strerror(e));
        wr_err_hint(err, "the configuration directory must be writable by walrelay and its "
                         "disk must have room for the largest transaction");
        return WR_EIO;
    }
    setvbuf(sp->f, NULL, _IOFBF, 1 << 16);
    sp->next = a->sx.spools;
    a->sx.spools = sp;
    a->sx.n_spooled++;
    return 0;
}

static int
apw_spool_io_error(apw_spool_t *sp, const char *what, wr_err_t *err)
{
    wr_err_set(err, WR_EIO, "%s the spool file \"%s\" of transaction %u: %s", what, sp->path,
               (unsigned)sp->xid, strerror(errno));
    wr_err_hint(err, "the disk of the configuration directory must have room for the largest "
                     "streamed transaction");
    return WR_EIO;
}

/* Appends one message of a block to the spool; a subtransaction's first message is
 * remembered with its offset (a Stream Abort of it truncates the file there). */
static int
apw_spool_append(apw_t *a, apw_spool_t *sp, const pgo_msg_t *m, const uint8_t *raw, size_t len,
                 wr_err_t *err)
{
    uint8_t hdr[4];

    (void)a;
    if (m->xid != 0 && m->xid != sp->xid) {
        bool known = false;

        for (size_t i = 0; i < sp->nsubs && !known; i++)
            known = sp->subs[i].subxid == m->xid;
        if (!known) {
            if (sp->nsubs == sp->subcap) {
                size_t cap = sp->subcap ? sp->subcap * 2 : 8;
                struct apw_spsub_s *n = realloc(sp->subs, cap * sizeof(*n));

                if (n == NULL)
                    return wr_err_set(err, WR_ENOMEM, "out of memory spooling transaction %u",
                                      (unsigned)sp->xid);
                sp->subs = n;
                sp->subcap = cap;
            }
            sp->subs[sp->nsubs].subxid = m->xid;
            sp->subs[sp->nsubs].off = sp->bytes;
            sp->nsubs++;
        }
    }
    if (len > UINT32_MAX)
        return wr_err_set(err, WR_EPROTO, "streamed message of %zu bytes", len);
    hdr[0] = (uint8_t)(len >> 24);
    hdr[1] = (uint8_t)(len >> 16);
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
    if (fwrite(hdr, 1, 4, sp->f) != 4 || fwrite(raw, 1, len, sp->f) != len)
        return apw_spool_io_error(sp, "writing", err);
    sp->bytes += 4 + (uint64_t)len;
    sp->msgs++;
    return 0;
}

/* A subtransaction rolled back: its messages are the tail of the spool from its first
 * one on (everything after it belongs to it or to its subtransactions, which PostgreSQL
 * aborts with it), so the file is cut there - PostgreSQL's own apply worker does the same
 * (worker.c, apply_handle_stream_abort). */
static int
apw_spool_truncate(apw_spool_t *sp, uint32_t subxid, wr_err_t *err)
{
    size_t i;

    for (i = 0; i < sp->nsubs; i++)
        if (sp->subs[i].subxid == subxid)
            break;
    if (i == sp->nsubs)
        return 0; /* nothing of it was streamed */
    if (fflush(sp->f) != 0 || ftruncate(fileno(sp->f), (off_t)sp->subs[i].off) != 0 ||
        fseeko(sp->f, (off_t)sp->subs[i].off, SEEK_SET) != 0)
        return apw_spool_io_error(sp, "truncating", err);
    log_debug("spooled subtransaction rolled back xid=%u subxid=%u bytes=%llu->%llu",
              (unsigned)sp->xid, (unsigned)subxid, (unsigned long long)sp->bytes,
              (unsigned long long)sp->subs[i].off);
    sp->bytes = sp->subs[i].off;
    sp->nsubs = i;
    return 0;
}

/* Stream Commit of a spooled transaction: its messages go through the normal path as
 * one transaction with its commit LSN (ordinals, resume key, skip, handoff filter,
 * batching, schema changes: all as if it had not been streamed). */
static int
apw_spool_replay(apw_t *a, apw_spool_t *sp, const pgo_msg_t *c, wr_err_t *err)
{
    uint64_t left = sp->bytes;
    int rc;

    if (fflush(sp->f) != 0 || fseeko(sp->f, 0, SEEK_SET) != 0)
        return apw_spool_io_error(sp, "reading", err);
    log_info("applying a spooled streamed transaction xid=%u commit_lsn=" WR_LSN_FMT
             " messages=%llu bytes=%llu",
             (unsigned)sp->xid, WR_LSN_ARGS(c->u.stream_commit.commit_lsn),
             (unsigned long long)sp->msgs, (unsigned long long)sp->bytes);
    rc = stm_replay_begin(&a->stm, sp->xid, c->u.stream_commit.commit_lsn, c->u.stream_commit.ts,
                          err);
    while (rc == 0 && left > 0) {
        uint8_t hdr[4];
        uint32_t len;

        if (left < 4 || fread(hdr, 1, 4, sp->f) != 4)
            return apw_spool_io_error(sp, "reading", err);
        len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        left -= 4;
        if (len == 0 || len > left)
            return wr_err_set(err, WR_EIO, "spool file \"%s\" is damaged at offset %llu", sp->path,
                              (unsigned long long)(sp->bytes - left - 4));
        if (len > a->sx.rcap) {
            size_t cap = a->sx.rcap ? a->sx.rcap : 4096;
            uint8_t *n;

            while (cap < len)
                cap *= 2;
            n = realloc(a->sx.rbuf, cap);
            if (n == NULL)
                return wr_err_set(err, WR_ENOMEM, "out of memory replaying a message of %u bytes",
                                  (unsigned)len);
            a->sx.rbuf = n;
            a->sx.rcap = cap;
        }
        if (fread(a->sx.rbuf, 1, len, sp->f) != len)
            return apw_spool_io_error(sp, "reading", err);
        left -= len;
        rc = stm_replay_msg(&a->stm, a->sx.rbuf, len, err);
    }
    if (rc == 0)
        rc = stm_replay_commit(&a->stm, c->u.stream_commit.commit_lsn, c->u.stream_commit.end_lsn,
                               c->u.stream_commit.ts, err);
    return rc;
}

/* Whether transaction xid, whose first block starts at lsn, is written as it arrives;
 * why not in *why. */
static bool
apw_direct_ok(const apw_t *a, uint32_t xid, wr_lsn_t lsn, const char **why)
{
    const dest_ops_t *ops = a->dest->ops;

    if (ops->can_stream == NULL || ops->savepoint == NULL || ops->rollback_to == NULL ||
        !ops->can_stream(a->dest))
        *why = "the destination takes changes only with their commit LSN";
    else if (a->sx.direct)
        *why = "another streamed transaction is written as it arrives";
    else if (apw_forced(a, xid))
        *why = "restreamed";
    else if (a->n_handoff > 0)
        *why = "a table is being handed over";
    else if (lsn == 0 || (a->skip_found && a->skip_key.commit_lsn > lsn))
        /* the destination's key is past the start of this transaction: it may hold it
         * already, which only its commit LSN can tell */
        *why = "replaying after a restart";
    else
        return true;
    return false;
}

static int
apw_on_stream_start(void *arg, uint32_t xid, bool first, wr_lsn_t lsn, wr_err_t *err)
{
    apw_t *a = arg;
    const char *why = NULL;
    int rc;

    if (!first) {
        if ((a->sx.direct && a->sx.xid == xid) || apw_spool_find(a, xid) != NULL)
            return 0;
        return wr_err_set(err, WR_EPROTO,
                          "stream start of transaction %u continues a transaction whose first "
                          "block was not received",
                          (unsigned)xid);
    }
    if ((a->sx.direct && a->sx.xid == xid) || apw_spool_find(a, xid) != NULL)
        return wr_err_set(err, WR_EPROTO,
                          "first stream block of transaction %u, which is already streaming",
                          (unsigned)xid);
    if (!apw_direct_ok(a, xid, lsn, &why)) {
        log_info("large transaction streamed, spooled until its commit xid=%u lsn=" WR_LSN_FMT
                 " reason=\"%s\"",
                 (unsigned)xid, WR_LSN_ARGS(lsn), why);
        return apw_spool_open(a, xid, err);
    }
    /* the batch holds only complete transactions now: commit them, so that an abort of
     * this one can roll the batch back whole */
    rc = apw_batch_commit(a, err);
    if (rc == 0 && !a->batch_open)
        rc = apw_ddl_batch_begin(a, err);
    if (rc != 0)
        return rc;
    wkm_batch_begin(&a->metrics);
    a->sx.direct = true;
    a->sx.xid = xid;
    memset(&a->sx.tx, 0, sizeof(a->sx.tx));
    a->sx.tx.in_tx = true;
    a->sx.tx.xid = xid;
    a->sx.tx.begun = true; /* no BEGIN/COMMIT events (dest_ops_t.can_stream) */
    a->sx.mixed = 0;
    a->sx.nsps = 0;
    a->sx.n_direct++;
    log_info("large transaction streamed, written as it arrives xid=%u lsn=" WR_LSN_FMT,
             (unsigned)xid, WR_LSN_ARGS(lsn));
    return 0;
}

static int
apw_on_stream_stop(void *arg, uint32_t xid, wr_err_t *err)
{
    (void)arg;
    (void)xid;
    (void)err;
    return 0;
}

static int apw_on_relation(void *arg, stm_tx_t *tx, const pgo_msg_t *m, wr_err_t *err);

/* A savepoint before the first change of a subtransaction of the direct transaction. */
static int
apw_direct_savepoint(apw_t *a, uint32_t subxid, wr_err_t *err)
{
    char name[32];
    int rc;

    for (size_t i = 0; i < a->sx.nsps; i++)
        if (a->sx.sps[i].subxid == subxid)
            return 0;
    if (a->sx.nsps == a->sx.spcap) {
        size_t cap = a->sx.spcap ? a->sx.spcap * 2 : 16;
        apw_sp_t *n = realloc(a->sx.sps, cap * sizeof(*n));

        if (n == NULL)
            return wr_err_set(err, WR_ENOMEM, "out of memory recording a savepoint");
        a->sx.sps = n;
        a->sx.spcap = cap;
    }
    snprintf(name, sizeof(name), "wr_sub_%u", (unsigned)subxid);
    rc = a->dest->ops->savepoint(a->dest, name, err);
    if (rc != 0)
        return rc;
    a->sx.sps[a->sx.nsps].subxid = subxid;
    a->sx.sps[a->sx.nsps].ordinal = a->sx.tx.ordinal;
    a->sx.sps[a->sx.nsps].mixed = a->sx.mixed;
    a->sx.nsps++;
    return 0;
}

static int
apw_on_stream_msg(void *arg, uint32_t xid, const pgo_msg_t *m, const uint8_t *raw, size_t len,
                  wr_err_t *err)
{
    apw_t *a = arg;
    apw_spool_t *sp;
    int rc;

    if (!(a->sx.direct && a->sx.xid == xid)) {
        sp = apw_spool_find(a, xid);
        if (sp == NULL)
            return wr_err_set(err, WR_EPROTO,
                              "streamed message '%c' of transaction %u outside its stream", m->type,
                              (unsigned)xid);
        return apw_spool_append(a, sp, m, raw, len, err);
    }
    switch (m->type) {
    case PGO_RELATION: {
        apw_table_t *t = apw_table_find(a, m->u.relation.relid);
        wr_schema_t *s = pgo_relation_schema(m);
        bool changed;

        if (s == NULL || pgo_schema_type_names(&a->stm.dec, s) != 0) {
            wr_schema_free(s);
            return wr_err_set(err, WR_ENOMEM, "out of memory caching relation %u",
                              (unsigned)m->u.relation.relid);
        }
        changed = t != NULL && t->schema != NULL && !wr_schema_equal(t->schema, s);
        wr_schema_free(s);
        if (changed)
            /* a schema change inside the transaction: its version key needs the commit LSN */
            return apw_restream_due(a, "a schema change inside a streamed transaction");
        return apw_on_relation(a, &a->sx.tx, m, err);
    }
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
    case PGO_TRUNCATE:
        if (m->xid != xid && m->xid != 0) {
            rc = apw_direct_savepoint(a, m->xid, err);
            if (rc != 0)
                return rc;
        }
        a->sx.in_direct = true;
        rc = stm_dispatch_change(&a->stm, &a->sx.tx, m, len, err);
        a->sx.in_direct = false;
        return rc;
    default: /* Type (remembered by the decoder), Message: nothing to do */
        return 0;
    }
}

static int apw_on_commit(void *arg, stm_tx_t *tx, wr_lsn_t end, wr_err_t *err);

static int
apw_on_stream_commit(void *arg, const pgo_msg_t *m, wr_err_t *err)
{
    apw_t *a = arg;
    uint32_t xid = m->u.stream_commit.xid;
    apw_spool_t *sp;
    int rc;

    if (a->sx.direct && a->sx.xid == xid) {
        stm_tx_t *tx = &a->sx.tx;

        tx->in_tx = false;
        tx->final_lsn = m->u.stream_commit.commit_lsn;
        tx->commit_ts = m->u.stream_commit.ts + DEST_PG_EPOCH_OFFSET_US;
        log_info("streamed transaction committed xid=%u commit_lsn=" WR_LSN_FMT
                 " changes=%u other_changes=%llu",
                 (unsigned)xid, WR_LSN_ARGS(tx->final_lsn), (unsigned)tx->ordinal,
                 (unsigned long long)a->sx.mixed);
        a->sx.direct = false;
        a->sx.nsps = 0;
        a->sx.mixed = 0;
        /* committed now with its key; the flush moves to its end */
        wkm_transaction(&a->metrics);
        a->last_commit_ts = tx->commit_ts;
        a->last_tx_key.commit_lsn = tx->final_lsn;
        a->last_tx_key.ordinal = tx->ordinal;
        a->batch_pending_flush = m->u.stream_commit.end_lsn;
        FAILPOINT("apply.stream_commit");
        rc = apw_batch_commit(a, err);
        if (rc != 0)
            return rc;
        FAILPOINT("apply.stream_committed");
        return apw_boundary(a, m->u.stream_commit.end_lsn, err);
    }
    sp = apw_spool_find(a, xid);
    if (sp == NULL)
        return wr_err_set(err, WR_EPROTO,
                          "stream commit of transaction %u, which was not streamed (commit "
                          "LSN " WR_LSN_FMT ")",
                          (unsigned)xid, WR_LSN_ARGS(m->u.stream_commit.commit_lsn));
    rc = apw_spool_replay(a, sp, m, err);
    apw_spool_drop(a, xid);
    return rc;
}

static int
apw_on_stream_abort(void *arg, uint32_t xid, uint32_t subxid, wr_err_t *err)
{
    apw_t *a = arg;
    apw_spool_t *sp;

    if (a->sx.direct && a->sx.xid == xid) {
        size_t i;
        char name[32];
        int rc;

        if (subxid == xid) {
            if (a->sx.mixed > 0)
                return apw_restream_due(a, "a streamed transaction aborted after other "
                                           "transactions were written behind it");
            log_info("streamed transaction aborted, rolled back xid=%u changes=%u", (unsigned)xid,
                     (unsigned)a->sx.tx.ordinal);
            apw_batch_rollback(a);
            return 0;
        }
        for (i = 0; i < a->sx.nsps; i++)
            if (a->sx.sps[i].subxid == subxid)
                break;
        if (i == a->sx.nsps)
            return 0; /* nothing of it was written */
        if (a->sx.mixed > a->sx.sps[i].mixed)
            return apw_restream_due(a, "a subtransaction rolled back after other transactions "
                                       "were written behind it");
        snprintf(name, sizeof(name), "wr_sub_%u", (unsigned)subxid);
        rc = a->dest->ops->rollback_to(a->dest, name, err);
        if (rc != 0)
            return rc;
        log_debug("streamed subtransaction rolled back xid=%u subxid=%u ordinal=%u->%u",
                  (unsigned)xid, (unsigned)subxid, (unsigned)a->sx.tx.ordinal,
                  (unsigned)a->sx.sps[i].ordinal);
        /* the changes counted after the savepoint are gone: so are their ordinals, as in
         * the transaction PostgreSQL sends whole when it does not stream it */
        a->sx.tx.ordinal = a->sx.sps[i].ordinal;
        a->sx.nsps = i;
        for (size_t k = 0; k < a->ntabs; k++)
            a->tabs[k]->dest_ready = false; /* tables made after the savepoint are gone */
        return 0;
    }
    sp = apw_spool_find(a, xid);
    if (sp == NULL) {
        log_debug("stream abort of a transaction not streamed here xid=%u subxid=%u", (unsigned)xid,
                  (unsigned)subxid);
        return 0;
    }
    if (subxid == xid) {
        log_info("spooled streamed transaction aborted xid=%u messages=%llu", (unsigned)xid,
                 (unsigned long long)sp->msgs);
        apw_spool_drop(a, xid);
        return 0;
    }
    return apw_spool_truncate(sp, subxid, err);
}

/* Rolls the batch back and starts the stream again from the slot's confirmed position,
 * with the transaction that was written as it arrived now spooled (see the file
 * header: the cases where writing it directly cannot be made exact). Everything this
 * process committed since it started is skipped by its key. */
static int
apw_restream(apw_t *a, wr_err_t *err)
{
    char app[96];
    int rc;

    a->sx.restream_due = false;
    log_info("restarting the stream to spool a streamed transaction xid=%u reason=\"%s\"",
             (unsigned)a->sx.xid, a->sx.restream_why ? a->sx.restream_why : "?");
    if (a->sx.direct && !apw_forced(a, a->sx.xid)) {
        if (a->sx.nforced == a->sx.forcedcap) {
            size_t cap = a->sx.forcedcap ? a->sx.forcedcap * 2 : 8;
            uint32_t *n = realloc(a->sx.forced, cap * sizeof(*n));

            if (n == NULL)
                return wr_err_set(err, WR_ENOMEM, "out of memory restarting the stream");
            a->sx.forced = n;
            a->sx.forcedcap = cap;
        }
        a->sx.forced[a->sx.nforced++] = a->sx.xid;
    }
    apw_batch_rollback(a);
    apw_spool_drop_all(a);
    if (a->durable_key.commit_lsn != 0) {
        a->skip_found = true;
        a->skip_key = a->durable_key;
    }
    a->sx.n_restreams++;
    FAILPOINT("apply.restream");
    stm_disconnect(&a->stm);
    snprintf(app, sizeof(app), "walrelay_%s_apply", a->cfg.pipeline_name);
    rc = stm_connect(&a->stm, a->cfg.source_conninfo, app, err);
    if (rc == 0)
        rc = stm_start(&a->stm, a->slot, 0, a->cfg.publication, a->flush, err);
    return rc;
}

/* ---- the stream ----------------------------------------------------------------------- */

/* The engine's commit callback: the commit LSN is checked, in_tx already false and
 * received moved to end. */
static int
apw_on_commit(void *arg, stm_tx_t *tx, wr_lsn_t end, wr_err_t *err)
{
    apw_t *a = arg;

    if (tx->begun) {
        int rc = apw_write_boundary(a, DEST_EV_COMMIT, end, err);

        if (rc != 0)
            return rc;
        wkm_transaction(&a->metrics);
    }
    a->last_commit_ts = tx->commit_ts;
    a->last_tx_key.commit_lsn = tx->final_lsn;
    a->last_tx_key.ordinal = tx->ordinal;
    if (a->batch_open) {
        int64_t age = wr_now_ms() - a->batch_start_ms;
        int rc;

        a->batch_pending_flush = end;
        if (age >= a->cfg.batch_max_fill_ms || a->batch_bytes >= a->cfg.batch_max_bytes) {
            rc = apw_batch_commit(a, err);
            if (rc != 0)
                return rc;
        }
    } else {
        /* nothing of this transaction is pending: what it wrote is committed already */
        apw_flush_to(a, end);
    }
    return apw_boundary(a, end, err);
}

/* The engine's keepalive callback (received already moved to wal_end). A requested
 * reply is sent by the engine after this, with the flush moved here. */
static int
apw_on_keepalive(void *arg, wr_lsn_t wal_end, bool reply, wr_err_t *err)
{
    apw_t *a = arg;

    (void)reply;
    (void)err;
    a->ka_end = apw_max(a->ka_end, wal_end);
    /* nothing in flight: everything up to the WAL end is as good as flushed */
    if (!a->stm.tx.in_tx && !a->batch_open)
        apw_flush_to(a, wal_end);
    return 0;
}

/* The engine's hold callback: leave the rest buffered on a stop, while a table is in
 * CATCHUP (nothing past the catch-up LSN may be processed until it is over), while an
 * Init waits for its acknowledgement (apw_send_acks, at the top of the loop), and while
 * the destination waits (apw_readahead: read the socket, process nothing). */
static bool
apw_hold(void *arg)
{
    const apw_t *a = arg;

    return apw_stopping(a) || a->n_catchup > 0 || a->ack_due || a->reading_ahead;
}

static const stm_handler_t apw_stream_handler = {
    .relation = apw_on_relation,
    .change = apw_on_change,
    .commit = apw_on_commit,
    .keepalive = apw_on_keepalive,
    .hold = apw_hold,
    .stream_start = apw_on_stream_start,
    .stream_stop = apw_on_stream_stop,
    .stream_msg = apw_on_stream_msg,
    .stream_commit = apw_on_stream_commit,
    .stream_abort = apw_on_stream_abort,
};

/* Processes the messages libpq has buffered, after reading the socket when consume is
 * set (the engine's receive step). *got is set when a message was processed. Stops
 * early on a stop request or when a table went to CATCHUP (apw_hold: the rest stays
 * buffered in libpq for later). A large transaction can keep this busy for long: the
 * engine returns after APW_CHAN_CHECK_MS and the channel is read, so that a stop is
 * noticed inside it too (the open chunk is then rolled back; the committed ones are
 * skipped on the replay). */
/* True if the replication socket holds APW_GATHER_BYTES or more already: the next read
 * fills libpq's buffer, and a pause would only cap the rate. */
static bool
apw_socket_full(apw_t *a)
{
    int sock = stm_socket(&a->stm);
    int avail = 0;

    return sock >= 0 && ioctl(sock, FIONREAD, &avail) == 0 && avail >= APW_GATHER_BYTES;
}

/* A monotonic clock in microseconds (the gather after a read). */
static int64_t
apw_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* True while the stream brings a backlog (the rate of the last full window of
 * APW_RATE_WIN_US is APW_GATHER_MIN_RATE messages a millisecond or more). */
static bool
apw_backlog(apw_t *a)
{
    int64_t now = apw_now_us(), span = now - a->rate_win_us;

    if (span < 0 || span >= APW_RATE_WIN_US) {
        a->backlog = span > 0 && (int64_t)a->rate_win_n * 1000 >= APW_GATHER_MIN_RATE * span;
        a->rate_win_us = now;
        a->rate_win_n = 0;
    }
    return a->backlog;
}

static int
apw_read_stream(apw_t *a, bool consume, bool *got, wr_err_t *err)
{
    if (consume) {
        a->last_read_n = 0;
        a->last_read_us = apw_now_us();
    }
    for (;;) {
        size_t n = 0;
        int rc;

        a->readahead_n = 0;
        a->readahead_bytes = 0;
        rc = stm_recv(&a->stm, consume, APW_CHAN_CHECK_MS, &n, err);
        if (consume)
            a->last_read_n += n;
        a->rate_win_n += n;
        consume = false;
        if (n > 0)
            *got = true;
        if (rc < 0)
            return rc;
        if (rc != STM_MORE || apw_stopping(a) || a->n_catchup > 0 || a->ack_due ||
            a->sx.restream_due)
            return 0;
        rc = wk_chan_poll(&a->chan, 0, err);
        if (rc != 0)
            return rc;
    }
}

/* ---- slots ---------------------------------------------------------------------------- */

/* Reconnects the SQL connection if it broke. */
static int
apw_sql_conn(apw_t *a, wr_err_t *err)
{
    char app[96];

    if (a->sql != NULL && PQstatus(a->sql) == CONNECTION_OK)
        return 0;
    if (a->sql != NULL)
        PQfinish(a->sql);
    a->sql = NULL;
    snprintf(app, sizeof(app), "walrelay_%s_apply_sql", a->cfg.pipeline_name);
    return repl_connect(a->cfg.source_conninfo, false, app, &a->sql, err);
}

/* Drops inactive sync slots whose table is READY, SYNCDONE or ERRORED. Best effort. */
static void
apw_cleanup_sync_slots(apw_t *a)
{
    char prefix[80];
    char *lit;
    char sql[512];
    PGresult *res;
    wr_err_t err;
    size_t plen;

    a->cleanup_due = false;
    if (apw_sql_conn(a, &err) != 0) {
        log_err(LOG_LVL_WARN, "cannot check sync slots", &err);
        return;
    }
    cfg_sync_slot_name(&a->cfg, 0, prefix, sizeof(prefix));
    plen = strlen(prefix);
    if (plen > 0 && prefix[plen - 1] == '0')
        prefix[--plen] = '\0';
    lit = PQescapeLiteral(a->sql, prefix, plen);
    if (lit == NULL)
        return;
    snprintf(sql, sizeof(sql),
             "SELECT slot_name, active FROM pg_catalog.pg_replication_slots "
             "WHERE starts_with(slot_name::text, %s) AND database = current_database()",
             lit);
    PQfreemem(lit);
    res = PQexec(a->sql, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("cannot list sync slots error=\"%s\"",
                 res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "no result");
        PQclear(res);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        const char *name = PQgetvalue(res, i, 0);
        bool active = strcmp(PQgetvalue(res, i, 1), "t") == 0;
        char expect[80];
        char *end;
        unsigned long relid;
        apw_table_t *t;

        errno = 0;
        relid = strtoul(name + plen, &end, 10);
        if (errno != 0 || *end != '\0' || end == name + plen || relid > UINT32_MAX)
            continue;
        cfg_sync_slot_name(&a->cfg, (uint32_t)relid, expect, sizeof(expect));
        if (strcmp(expect, name) != 0)
            continue;
        t = apw_table_find(a, (uint32_t)relid);
        if (t == NULL || !t->known ||
            (t->phase != PH_READY && t->phase != PH_SYNCDONE && t->phase != PH_ERRORED))
            continue;
        if (active) {
            /* its worker is still exiting; we look again at the table's next phase */
            log_debug("sync slot still in use slot=%s", name);
            continue;
        }
        if (repl_drop_slot(a->sql, name, &err) != 0) {
            log_err(LOG_LVL_WARN, "cannot drop a leftover sync slot", &err);
            continue;
        }
        log_info("dropped leftover sync slot slot=%s relid=%lu phase=%s", name, relid,
                 phase_name(t->phase));
    }
    PQclear(res);
}

/* Counts the tables past SyncWait (Catchup, SyncDone, Ready): their changes are (or are
 * about to be) streamed from our slot alone, so a slot that is gone or lost took some of
 * them with it. Their names go to list (comma-separated, cut to len). */
static int
apw_synced_tables(const apw_t *a, char *list, size_t len)
{
    size_t used = 0;
    int n = 0;

    list[0] = '\0';
    for (size_t k = 0; k < a->ntabs; k++) {
        const apw_table_t *t = a->tabs[k];
        char label[256];
        int w;

        if (!t->known ||
            (t->phase != PH_CATCHUP && t->phase != PH_SYNCDONE && t->phase != PH_READY))
            continue;
        n++;
        if (used + 8 >= len)
            continue;
        w = snprintf(list + used, len - used, "%s%s", used ? ", " : "",
                     apw_table_label(t, label, sizeof(label)));
        if (w < 0 || (size_t)w >= len - used) {
            snprintf(list + used, len - used, "%s...", used ? ", " : "");
            used = len;
            continue;
        }
        used += (size_t)w;
    }
    return n;
}

/*
 * Makes sure our slot exists and can be streamed; sets the starting flush.
 *
 * A slot that is missing or has lost required WAL is replaced only while no table is past
 * SyncWait: nothing was streamed from it yet, so nothing is lost with it (a first start,
 * or every table set to Init again by the supervisor for on_slot_lost = recopy). With a
 * table past SyncWait the changes since are gone from the source: we exit
 * WR_EXIT_SLOT_LOST (a->slot_lost; a->slot_kind says "slot_lost" or "slot_missing") and the
 * supervisor stops the pipeline, or copies every table again once (on_slot_lost). Never a
 * new stream under tables that look synchronised.
 */
static int
apw_prepare_slot(apw_t *a, wr_err_t *err)
{
    bool found, active;
    wr_lsn_t confirmed = 0;
    char wal_status[32];
    char synced[512];
    int nsynced, rc;

    rc = repl_slot_info(a->sql, a->slot, &found, &active, &confirmed, wal_status,
                        sizeof(wal_status), err);
    if (rc != 0)
        return rc;
    nsynced = apw_synced_tables(a, synced, sizeof(synced));
    if (found && strcmp(wal_status, "lost") == 0) {
        if (nsynced > 0) {
            a->slot_lost = true;
            a->slot_kind = "slot_lost";
            wr_err_set(err, WR_ESOURCE,
                       "replication slot \"%s\" has lost required WAL; %d table%s already "
                       "synchronised (%s) miss%s the changes in it",
                       a->slot, nsynced, nsynced == 1 ? " is" : "s are", synced,
                       nsynced == 1 ? "es" : "");
            wr_err_hint(err, "the source removed WAL the pipeline still needed (see "
                             "max_slot_wal_keep_size); the supervisor decides what happens "
                             "([pipeline] on_slot_lost)");
            return WR_ESOURCE;
        }
        /* nothing was streamed from it: replace it */
        rc = repl_drop_slot(a->sql, a->slot, err);
        if (rc != 0)
            return rc;
        log_warn("dropped the lost replication slot: no table is synchronised yet, a new slot "
                 "replaces it slot=%s",
                 a->slot);
        found = false;
    }
    if (found) {
        if (strcmp(wal_status, "unreserved") == 0)
            log_warn("replication slot is about to lose required WAL slot=%s wal_status=%s",
                     a->slot, wal_status);
        /* we hold the apply lock: an active slot is a walsender whose client is gone (a
         * killed worker, a cut connection the server has not noticed): free it */
        if (active && (rc = src_take_slot(a->sql, a->slot, err)) != 0)
            return rc;
        a->flush = confirmed;
        return 0;
    }
    if (nsynced > 0) {
        a->slot_lost = true;
        a->slot_kind = "slot_missing";
        wr_err_set(err, WR_ESOURCE,
                   "replication slot \"%s\" is missing while %d table%s already synchronised "
                   "(%s): the changes made since it disappeared cannot be read from the source",
                   a->slot, nsynced, nsynced == 1 ? " is" : "s are", synced);
        wr_err_hint(err, "set [pipeline] on_slot_lost = recopy to copy every table again, or "
                         "walrelay drop DIR and start over (the destination data stays); do "
                         "not drop the slot walrelay_<pipeline> of a pipeline that is still used");
        return WR_ESOURCE;
    }

    /* a new slot: a key stored for an older one means nothing for it */
    rc = a->dest->ops->clear_key(a->dest, APW_STREAM, err);
    if (rc != 0)
        return rc;
    a->skip_found = false;
    memset(&a->skip_key, 0, sizeof(a->skip_key));
    memset(&a->durable_key, 0, sizeof(a->durable_key));
    rc = repl_create_slot(stm_conn(&a->stm), a->slot, false, &confirmed, err);
    if (rc != 0)
        return rc;
    a->flush = confirmed;
    log_info("replication slot created slot=%s consistent_point=" WR_LSN_FMT, a->slot,
             WR_LSN_ARGS(confirmed));
    return 0;
}

/* ---- main ----------------------------------------------------------------------------- */

/* Stops cleanly: commit at a boundary, else roll back; last status update; exit 0. */
static int
apw_stop(apw_t *a, wr_err_t *err)
{
    int rc;

    if (a->batch_open) {
        if (!a->stm.tx.in_tx && !a->sx.direct) {
            rc = apw_batch_commit(a, err);
            if (rc != 0)
                return rc;
        } else {
            /* inside a source transaction: the server replays it from the confirmed
             * flush and the stored key skips what earlier batches committed */
            apw_batch_rollback(a);
        }
    }
    rc = apw_send_status(a, true, err);
    if (rc != 0)
        return rc;
    (void)apw_send_progress(a, true, err);
    log_info("apply worker stopped flush=" WR_LSN_FMT " received=" WR_LSN_FMT " events=%llu",
             WR_LSN_ARGS(a->flush), WR_LSN_ARGS(a->stm.received), (unsigned long long)a->events);
    return 0;
}

#define APW_LIVE_LAG_MS 250

/* True if the worker has caught up with the source: the last transaction committed less
 * than APW_LIVE_LAG_MS ago on the source's clock, and nothing more of the stream can be
 * read right now (the engine holds nothing, the socket is not readable). Then a batch at
 * a transaction boundary is committed at once (group commit: low latency at low rates);
 * while a backlog drains (older transactions) batches fill up to max_fill_ms / max_bytes
 * instead. */
static bool
apw_caught_up(apw_t *a)
{
    int64_t now_us = wr_wall_ms() * 1000;
    bool readable = false;
    wr_err_t err;

    if (a->stm.tx.commit_ts != 0 && now_us - a->stm.tx.commit_ts > APW_LIVE_LAG_MS * 1000)
        return false;
    /* an error shows again at the loop's next stm_wait */
    if (stm_wait(&a->stm, -1, 0, &readable, &err) != 0)
        return false;
    return !readable;
}

#define APW_READAHEAD_MAX   64         /* socket reads ahead per turn of the loop, at most */
#define APW_READAHEAD_BYTES (8u << 20) /* ... and bytes (what the socket held), at most */

/* (issue 7) While the destination waits for its server (destination.h
 * dest_set_readahead): what the walsender sent is read into libpq's buffer through the
 * engine (stm_recv with apw_hold true: under the engine's lock, nothing processed), so
 * that the walsender keeps decoding meanwhile; the loop processes it after the write.
 * At most APW_READAHEAD_MAX reads and APW_READAHEAD_BYTES (what the socket held before
 * each read: libpq takes at most that) per turn of the loop, which bounds the buffer;
 * false then (the destination stops watching the socket until its next wait). */
static bool
apw_readahead(void *arg)
{
    apw_t *a = arg;
    wr_err_t err;
    int sock = stm_socket(&a->stm);
    int avail = 0;
    int rc;

    if (a->readahead_n >= APW_READAHEAD_MAX || a->readahead_bytes >= APW_READAHEAD_BYTES)
        return false;
    if (sock >= 0 && ioctl(sock, FIONREAD, &avail) == 0 && avail > 0)
        a->readahead_bytes += (size_t)avail;
    a->readahead_n++;
    a->reading_ahead = true;
    rc = stm_recv(&a->stm, true, -1, NULL, &err);
    a->reading_ahead = false;
    /* a failure shows again at the loop's next read of the stream, which reports it */
    return rc >= 0;
}

static int
apw_run(apw_t *a, wr_err_t *err)
{
    int rc;

    for (;;) {
        int64_t now, timeout;
        bool got = false;
        bool buffered = false;
        bool readable = false;
        bool idle_look;

        if (a->oom)
            return wr_err_set(err, WR_ENOMEM, "out of memory recording table states");
        if (a->remove_due)
            apw_purge_removed(a);
        if (apw_stopping(a))
            return apw_stop(a, err);
        if (a->ack_due) {
            rc = apw_send_acks(a, err);
            if (rc != 0)
                return rc;
        }
        if (a->n_catchup > 0) {
            rc = apw_wait_catchup(a, err);
            if (rc != 0)
                return rc;
            continue;
        }
        if (a->cleanup_due && !a->sx.direct) {
            rc = apw_batch_commit(a, err); /* no destination lock across the queries */
            if (rc != 0)
                return rc;
            apw_cleanup_sync_slots(a);
        }

        /* libpq may hold messages already (read with an earlier reply, or left there by a
         * pause): the socket will not become readable for them */
        rc = apw_read_stream(a, false, &buffered, err);
        if (rc == 0 && a->sx.restream_due)
            rc = apw_restream(a, err);
        if (rc != 0)
            return rc;
        if (apw_stopping(a) || a->n_catchup > 0 || a->ack_due)
            continue;

        /* wait for the socket or the channel, at most until the open batch's fill deadline
         * (the engine also stops at the next status update due). With a batch open at a
         * transaction boundary the wait is only a look: nothing buffered and nothing
         * readable means the source is quiet, and the batch commits now (COMMIT ON IDLE) */
        idle_look = a->batch_open && apw_at_boundary(a);
        now = wr_now_ms();
        timeout = APW_POLL_MAX_MS;
        if (a->batch_open && a->batch_start_ms + a->cfg.batch_max_fill_ms - now < timeout)
            timeout = a->batch_start_ms + a->cfg.batch_max_fill_ms - now;
        if (timeout < 0 || buffered || idle_look)
            timeout = 0;
        if (!buffered && a->last_read_n > 0 && apw_backlog(a)) {
            /* a read of a backlog: the next read comes APW_GATHER_US after this one at
             * the earliest (a worker that took that long on what it read has gathered
             * enough already) */
            int64_t since = apw_now_us() - a->last_read_us;

            a->last_read_n = 0;
            if (since >= 0 && since < APW_GATHER_US && !apw_socket_full(a)) {
                struct timespec gather = {0, (long)(APW_GATHER_US - since) * 1000L};

                nanosleep(&gather, NULL);
            }
        }
        rc = stm_wait(&a->stm, a->chan.fd, (int)timeout, &readable, err);
        if (rc != 0)
            return rc;
        /* the channel first: a stop or a phase change applies before more data. Read only
         * when stm_wait's poll() saw it readable (or did not look), and at the latest every
         * APW_CHAN_CHECK_MS: a second poll() per wakeup was ~1/6 of the worker's CPU while
         * it kept up with a fast stream */
        now = wr_now_ms();
        if (a->stm.extra_ready || !readable || now - a->chan_checked_ms >= APW_CHAN_CHECK_MS) {
            a->chan_checked_ms = now;
            rc = wk_chan_poll(&a->chan, 0, err);
            if (rc != 0)
                return rc;
        }
        if (readable) {
            rc = apw_read_stream(a, true, &got, err);
            if (rc == 0 && a->sx.restream_due) {
                rc = apw_restream(a, err);
                if (rc == 0)
                    continue;
            }
            if (rc != 0)
                return rc;
        }
        got = got || buffered;
        if (apw_stopping(a) || a->n_catchup > 0 || a->ack_due)
            continue;

        now = wr_now_ms();
        if (a->batch_open && apw_at_boundary(a) && idle_look && !readable) {
            /* nothing more buffered, nothing readable: commit on idle */
            a->idle_commits++;
            rc = apw_batch_commit(a, err);
            if (rc != 0)
                return rc;
        } else if (a->batch_open && (now >= a->batch_start_ms + a->cfg.batch_max_fill_ms ||
                                     (got && apw_at_boundary(a) && apw_caught_up(a)))) {
            /* on the timer also inside a source transaction (its key resumes there): a
             * batch never stays open longer than max_fill_ms, whatever runs of other
             * tables' changes or waits on the network come (issue 12, defect 2: it held
             * the destination's write lock) - except while a streamed transaction is
             * written into it (apw_batch_commit waits for its end); and at once between
             * transactions when the source is caught up */
            rc = apw_batch_commit(a, err);
            if (rc != 0)
                return rc;
        }
        if (!a->stm.tx.in_tx && a->n_handoff > 0) {
            rc = apw_boundary(a, a->stm.received, err);
            if (rc != 0)
                return rc;
        }
        rc = apw_send_status(a, false, err);
        if (rc == 0)
            rc = apw_send_progress(a, false, err);
        if (rc != 0)
            return rc;
    }
}

static void
apw_close(apw_t *a)
{
    stm_close(&a->stm); /* stops the status keeper, closes the replication connection */
    if (a->sql)
        PQfinish(a->sql);
    if (a->dest)
        a->dest->ops->close(a->dest);
    wk_chan_close(&a->chan);
    wkm_free(&a->metrics);
    apw_spool_drop_all(a);
    free(a->sx.sps);
    free(a->sx.forced);
    free(a->sx.rbuf);
    free(a->sx.dir);
    for (size_t k = 0; k < a->ntabs; k++) {
        free(a->tabs[k]->nsp);
        free(a->tabs[k]->name);
        free(a->tabs[k]->dest_name);
        wr_schema_free(a->tabs[k]->schema);
        free(a->tabs[k]);
    }
    free(a->tabs);
    free(a->idx);
    free(a->dpend);
    cfg_free(&a->cfg);
}

/* Exit code of a failure, and its last words: the log line and ["worker_error"] for the
 * supervisor. A connection error is looked at once more (common/srcprobe.h): a source
 * that is away is waited for (exit 4, restarted for as long as it lasts), one that
 * refuses us needs a person (exit 2), one that answers means a transient error (exit 1). */
static int
apw_fail(apw_t *a, const char *what, const wr_err_t *err)
{
    int code = wr_err_exit_code(err->code);
    const char *kind = NULL;
    wr_err_t perr;

    if (err->code == WR_ECONN && apw_stopping(a)) {
        /* a destination that was waiting gave up because we were asked to stop: the
         * batch is delivered again by the next run */
        log_info("apply worker stopped while the destination was waiting error=\"%s\"", err->msg);
        apw_close(a);
        return WR_EXIT_OK;
    }
    log_err(LOG_LVL_ERROR, what, err);
    if (err->code == WR_EEOF) /* the supervisor is gone: exit at once */
        return code;
    wr_err_clear(&perr);
    if (err->code == WR_ECONN) {
        switch (src_probe(&a->cfg, &perr)) {
        case SRC_DOWN:
            code = WR_EXIT_SOURCE_DOWN;
            kind = "source_unavailable";
            break;
        case SRC_REFUSED:
            log_err(LOG_LVL_ERROR, "the source refuses the connection", &perr);
            wk_chan_report_error(&a->chan, "source_refused", &perr);
            apw_close(a);
            return WR_EXIT_CONFIG;
        case SRC_UP:
            /* back already, but it was starting up or shutting down a moment ago */
            if (src_was_away(err->msg)) {
                code = WR_EXIT_SOURCE_DOWN;
                kind = "source_unavailable";
            }
            break;
        }
    }
    wk_chan_report_error(&a->chan, kind, err);
    apw_close(a);
    return code;
}

int
main(int argc, char **argv)
{
    static apw_t a;
    struct sigaction sa;
    ipc_msg_t tables;
    wr_err_t err;
    char app[96];
    int rc;

    wr_err_clear(&err);
    if (argc != 2) {
        fprintf(stderr, "usage: walrelay-apply DIR (started by walrelay run)\n");
        return WR_EXIT_CONFIG;
    }
    a.chan.fd = -1;
    a.lock_fd = -1;
    stm_init(&a.stm, &apw_stream_handler, &a);
    wkm_init(&a.metrics);
    cfg_defaults(&a.cfg);
    rc = cfg_load_active(argv[1], &a.cfg, &err);
    if (rc != 0) {
        log_init("?", "apply");
        log_err(LOG_LVL_ERROR, "cannot load the configuration", &err);
        return WR_EXIT_CONFIG;
    }
    log_init(a.cfg.pipeline_name, "apply");
    log_set_level(a.cfg.log_level);
    log_set_format(a.cfg.log_format);
    a.stm.streaming = a.cfg.streaming != 0;
    {
        size_t n = strlen(a.cfg.dir ? a.cfg.dir : ".") + sizeof("/spool");

        a.sx.dir = malloc(n);
        if (a.sx.dir == NULL)
            return WR_EXIT_ERROR;
        snprintf(a.sx.dir, n, "%s/spool", a.cfg.dir ? a.cfg.dir : ".");
        apw_spool_cleanup(&a);
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = apw_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* one apply worker per pipeline at a time, also across a killed supervisor: the
     * resume key is read, and the slot streamed, only by the one holding the lock */
    rc = wk_lock_role(argv[1], 0, WK_CHAN_FD, WK_LOCK_WAIT_MS, &a.lock_fd, &err);
    if (rc != 0) {
        log_err(LOG_LVL_ERROR, "cannot take the apply worker's lock", &err);
        return rc == WR_EEOF ? WR_EXIT_ERROR : wr_err_exit_code(rc);
    }
    rc = wk_chan_init(&a.chan, WK_CHAN_FD, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot open the supervisor channel", &err);
    wk_chan_set_callback(&a.chan, apw_on_msg, &a);
    rc = wk_chan_handshake(&a.chan, "apply", 0, &tables, &err);
    if (rc == WR_ESTOP) {
        log_info("apply worker stopped before starting");
        apw_close(&a);
        return WR_EXIT_OK;
    }
    if (rc != 0)
        return apw_fail(&a, "handshake with the supervisor failed", &err);
    if (apw_stopping(&a)) {
        log_info("apply worker stopped before starting");
        ipc_msg_clear(&tables);
        apw_close(&a);
        return WR_EXIT_OK;
    }
    apw_tables_merge(&a, &tables);
    ipc_msg_clear(&tables);
    if (a.oom) {
        wr_err_set(&err, WR_ENOMEM, "out of memory recording table states");
        return apw_fail(&a, "cannot start", &err);
    }

    {
        dest_host_hooks_t hooks = {apw_dest_waiting, apw_dest_interrupted, &a};
        dest_set_host_hooks(&hooks);
    }
    rc = dest_open(&a.cfg, "apply", &a.dest, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot open the destination", &err);
    rc = a.dest->ops->last_key(a.dest, APW_STREAM, &a.skip_key, &a.skip_found, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot read the destination's resume key", &err);
    if (a.skip_found)
        a.durable_key = a.skip_key;
    FAILPOINT("apply.after_last_key");

    cfg_apply_slot_name(&a.cfg, a.slot, sizeof(a.slot));
    rc = apw_sql_conn(&a, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot connect to the source", &err);
    snprintf(app, sizeof(app), "walrelay_%s_apply", a.cfg.pipeline_name);
    rc = stm_connect(&a.stm, a.cfg.source_conninfo, app, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot connect to the source for replication", &err);
    rc = apw_prepare_slot(&a, &err);
    if (rc != 0 && a.slot_lost) {
        log_err(LOG_LVL_ERROR, "cannot stream", &err);
        wk_chan_report_error(&a.chan, a.slot_kind, &err);
        apw_close(&a);
        return WR_EXIT_SLOT_LOST;
    }
    if (rc != 0)
        return apw_fail(&a, "cannot prepare the replication slot", &err);
    apw_cleanup_sync_slots(&a);
    FAILPOINT("apply.before_streaming");
    /* from 0/0: the server resumes at the slot's confirmed flush (a.flush) */
    rc = stm_start(&a.stm, a.slot, 0, a.cfg.publication, a.flush, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot start replication", &err);
    dest_set_readahead(stm_socket(&a.stm), apw_readahead, &a);
    {
        /* the supervisor's readiness (sd_notify READY=1, /readyz) waits for this */
        ipc_msg_t sm;

        memset(&sm, 0, sizeof(sm));
        sm.type = IPC_STREAMING;
        sm.u.streaming.start_lsn = a.flush;
        rc = wk_chan_send(&a.chan, &sm, &err);
        if (rc != 0)
            return apw_fail(&a, "cannot tell the supervisor that replication started", &err);
    }
    /* streaming: the supervisor takes this as "the source is reachable" (an outage ends) */
    rc = apw_send_progress(&a, true, &err);
    if (rc != 0)
        return apw_fail(&a, "cannot report progress", &err);
    log_info("apply worker started slot=%s start=" WR_LSN_FMT " publication=%s tables=%zu", a.slot,
             WR_LSN_ARGS(a.flush), a.cfg.publication, a.ntabs);
    if (a.skip_found)
        log_info("resuming after key=" WR_LSN_FMT "/%u", WR_LSN_ARGS(a.skip_key.commit_lsn),
                 (unsigned)a.skip_key.ordinal);

    rc = apw_run(&a, &err);
    if (rc != 0)
        return apw_fail(&a, "apply worker failed", &err);
    apw_close(&a);
    return WR_EXIT_OK;
}
