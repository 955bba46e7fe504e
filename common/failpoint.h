/*
 * failpoint.h - named points where a test can make a worker sleep, exit or die (kill -9)
 * at an exact instruction. TEST-ONLY: they stay in production builds because an unarmed
 * failpoint costs one predictable branch on a global, but nothing but the tests sets them.
 *
 * NOTES: read by every process that reaches a FAILPOINT() (the apply and sync workers
 * today). Configuration comes from the environment, read once per process at the first
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
 * THE POINTS (each at a phase boundary of the table handoff; see the headers of
 * worker_sync/sync.c and worker_apply/apply.c for what a restart does in each phase)
 *
 *   sync worker (walrelay-sync)
 *   sync.after_datasync         DATASYNC acked (persisted), before the slot is created
 *   sync.mid_copy               after each copy batch is committed to the destination
 *                               (with the dir set: after the first batch only); in the
 *                               parallel copy (issue 11) after each batch written into a
 *                               range's open transaction that is not the range's last
 *   sync.after_range            parallel copy: a range committed in the destination and
 *                               acked by the supervisor (copy_range_done)
 *   sync.before_finishedcopy    the source copy transaction is COMMITted, FINISHEDCOPY
 *                               is not requested yet (the slot exists, the phase is DataSync)
 *   sync.after_finishedcopy     FINISHEDCOPY(X) acked, SYNCWAIT not requested yet
 *   sync.after_syncwait         SYNCWAIT(X) acked, before waiting for Catchup
 *   sync.catchup_after_commit   in Catchup, a source transaction committed to the
 *                               destination (with its resume key), before any status
 *                               update reports it to the server
 *   sync.before_slot_drop       SYNCDONE(S) acked, before the sync slot is dropped (the
 *                               apply worker must drop it)
 *
 *   apply worker (walrelay-apply)
 *   apply.catchup_granted       CATCHUP(L) acked for a table, while waiting for SyncDone
 *                               (the replication stream is paused)
 *   apply.after_commit          a destination batch committed at a transaction boundary,
 *                               before the status update that confirms it to the server
 *   apply.mid_txn_chunk         a destination batch committed in the middle of a source
 *                               transaction (batch max_bytes reached), key = the last change
 *   apply.after_schema_change   a destination batch that changed a table's schema (a
 *                               replicated DDL) committed, before apply.after_commit
 *   apply.before_ready          a table's SyncDone LSN is flushed, its destination key is
 *                               caught up, READY is not requested yet
 *   apply.after_ready           READY acked (persisted) for a table
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
