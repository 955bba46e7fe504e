/*
 * failpoint.h - named points where a test can make a worker sleep, exit or die (kill -9)
 * at an exact instruction. TEST-ONLY: they stay in production builds because an unarmed
 * failpoint costs one predictable branch on a global, but nothing but the tests sets them.
 *
 * NOTES: read by every process that reaches a FAILPOINT() (the apply and sync workers,
 * and the supervisor). Configuration comes from the environment, read once per process at the first
 * FAILPOINT() it reaches; the workers inherit the supervisor's environment, so
 *
 *   WALRELAY_FAILPOINTS='sync.after_finishedcopy=abort' walrelay run DIR
 *
 * arms the point in every worker the supervisor starts. Nothing is persisted, except the
 * marker files described below.
 *
 * WALRELAY_FAILPOINTS   "name=action;name=action..." (spaces around parts are ignored).
 *                       Actions:
 *                         sleep(MS)   sleep MS milliseconds (0..600000), every time the
 *                                     point is reached
 *                         exit(CODE)  _exit(CODE) (0..255) at once: no cleanup, no flush
 *                         abort       SIGKILL to itself: what `kill -9` at exactly that
 *                                     instruction would do
 *                       A malformed entry is reported once on stderr and ignored.
 * WALRELAY_FAILPOINT_DIR
 *                       When set, exit and abort fire ONCE per pipeline run: before firing,
 *                       the process creates DIR/<name> (O_EXCL) holding its pid; if the file
 *                       exists, an earlier incarnation fired it already and the point does
 *                       nothing. So a worker restarted by the supervisor runs through the
 *                       point. sleep fires every time but also leaves DIR/<name> (with the
 *                       pid of the first process that reached it), so a test can wait for
 *                       "the point was reached". Without the variable every action fires
 *                       every time.
 *
 * Each firing logs "failpoint fired name=N action=A pid=P" (warn) first.
 *
 * THE POINTS (at the phase boundaries of the table handoff, see the headers of
 * worker_sync/sync.c and worker_apply/apply.c for what a restart does in each phase; and
 * two where a sleep() keeps a worker away from its stream: apply.dest_commit,
 * sync.catchup_streaming)
 *
 *   sync worker (walrelay-sync)
 *   sync.after_datasync         DATASYNC acked (persisted), before the slot is created
 *   sync.before_copy            the slot, its snapshot and the schema are there, the COPY is
 *                               not sent yet (no destination transaction is open)
 *   sync.mid_copy               after each copy batch is committed to the destination
 *                               (with the dir set: after the first batch only); in the
 *                               copy by range (issue 11) after each batch's worth of COPY
 *                               lines read into the reader's spool (no destination
 *                               transaction waits on it)
 *   sync.mid_range              copy by range: after each batch written into a range's
 *                               open transaction that is not the range's last
 *   sync.after_range            parallel copy: a range committed in the destination and
 *                               acked by the supervisor (copy_range_done)
 *   sync.before_finishedcopy    the source copy transaction is COMMITted, FINISHEDCOPY
 *                               is not requested yet (the slot exists, the phase is DataSync)
 *   sync.after_finishedcopy     FINISHEDCOPY(X) acked, SYNCWAIT not requested yet
 *   sync.after_syncwait         SYNCWAIT(X) acked, before waiting for Catchup
 *   sync.catchup_streaming      in Catchup, START_REPLICATION done on the sync slot (the
 *                               status keeper runs), before the first message is read;
 *                               sleep() here holds the catch-up (and the waiting apply
 *                               worker) with both streams open
 *   sync.catchup_after_commit   in Catchup, a source transaction committed to the
 *                               destination (with its resume key), before any status
 *                               update reports it to the server
 *   sync.before_slot_drop       SYNCDONE(S) acked, before the sync slot is dropped (the
 *                               apply worker must drop it)
 *
 *   apply worker (walrelay-apply)
 *   apply.before_batch_begin    a change of an applied table is about to be written and no
 *                               destination batch is open: before it is begun (the channel
 *                               is not read meanwhile, as in a wait on a busy destination)
 *   apply.before_streaming      the slot is ready, START_REPLICATION not sent yet (the
 *                               supervisor has not heard "streaming": no READY=1)
 *   apply.catchup_granted       CATCHUP(L) acked for a table, while waiting for SyncDone
 *                               (the replication stream is paused)
 *   apply.before_commit         a destination batch is about to be committed (its writes done)
 *   apply.dest_commit           just before the destination's commit of a batch; sleep()
 *                               here is a destination whose commit blocks (the status
 *                               keeper must keep the walsender from timing out)
 *   apply.after_last_key        the destination's resume key was read at start, the slot is
 *                               not streamed yet (and the worker's lock is held)
 *   apply.after_commit          a destination batch committed at a transaction boundary,
 *                               before the status update that confirms it to the server
 *   apply.mid_txn_chunk         a destination batch committed in the middle of a source
 *                               transaction (batch max_bytes reached), key = the last change
 *   apply.after_schema_change   a destination batch that changed a table's schema (a
 *                               replicated DDL) committed, before apply.after_commit
 *   apply.before_ready          a table's SyncDone LSN is flushed, its destination key is
 *                               caught up, READY is not requested yet
 *   apply.after_ready           READY acked (persisted) for a table
 *   apply.stream_commit         Stream Commit of a transaction written as it streamed:
 *                               its destination transaction is not committed yet
 *   apply.stream_committed      ... committed with its key, the flush not confirmed to the
 *                               server yet (a replay streams it again: skipped by the key)
 *   apply.restream              the stream is being restarted to spool a streamed
 *                               transaction (the batch rolled back, not reconnected yet)
 *
 *   supervisor (walrelay run; issue 12: kills of the supervisor between persist and act)
 *   sup.phase_persisted.PHASE   a worker's set_phase to PHASE (datasync, finishedcopy,
 *                               syncwait, catchup, syncdone, ready, errored, init) is
 *                               persisted; not acked, not relayed, not in memory yet
 *   sup.handoff_paused          a table without its sync worker set back to FinishedCopy
 *                               (persisted), not told to the apply worker yet
 *   sup.slot_lost_recopy        on_slot_lost = recopy: flag slot_lost_recopied = 1 persisted,
 *                               no table set to Init yet
 *   sup.retry_persisted         walrelay retry (or an automatic retry): the table's new phase
 *                               is persisted, nothing else done yet (its workers not told)
 *
 *   eventstore destination (in whichever worker writes; destinations/eventstore/)
 *   eventstore.mid_batch        a batch's events are written into the store's open
 *                               transaction; its progress row and COMMIT are not
 *   destinations (in whichever worker writes; destinations/jsonl.c)
 *   jsonl.after_append          a batch appended to the file and fsynced, the state that
 *                               confirms it not written yet (the next writer cuts it)
 *   jsonl.after_state           the state confirming the batch renamed into place, the
 *                               lock not released yet
 *   jsonl.mid_rotate            the full file renamed away, the state not told yet
 *   jsonl.copy_appended         a finished copy appended from its side file and fsynced,
 *                               the state not written yet
 *   jsonl.copy_moved            a finished copy appended from its side file and confirmed
 *                               by the state, the side file not removed yet
 *   http.after_post             a batch acknowledged (2xx) by the receiver, the flush not
 *                               returned yet (destinations/http.c)
 *   nats.after_publish          a flush handed every message to the NATS client, before
 *                               waiting for JetStream's acknowledgements (destinations/nats.c)
 *   nats.after_ack              every message acknowledged, the checkpoint not written yet
 *
 * Names are plain string literals; a point not listed in WALRELAY_FAILPOINTS does nothing.
 */
#ifndef WR_FAILPOINT_H
#define WR_FAILPOINT_H

#include "wr.h"

/* Non-zero until the first fp_hit() finds the environment empty; then 0 for good, so an
 * unarmed FAILPOINT() is a load and a branch. */
extern int fp_armed;

/* Looks name up in WALRELAY_FAILPOINTS (parsed at the first call) and performs its action.
 * Returns (after a sleep, or when the point is not armed or already fired); exit and abort
 * do not return. */
void fp_hit(const char *name);

#define FAILPOINT(name)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(fp_armed != 0, 0))                                                    \
            fp_hit(name);                                                                          \
    } while (0)

#endif
