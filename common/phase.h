/*
 * phase.h - the table replication phases and which transitions are legal.
 *
 * NOTES: shared by the supervisor (which validates and persists every transition) and
 * the workers (which request them). See DESIGN.md "Table lifecycle".
 */
#ifndef WR_PHASE_H
#define WR_PHASE_H

#include "wr.h"

typedef enum {
    PH_INIT = 0,
    PH_DATASYNC = 1,
    PH_FINISHEDCOPY = 2,
    PH_SYNCWAIT = 3,
    PH_CATCHUP = 4,
    PH_SYNCDONE = 5,
    PH_READY = 6,
    PH_ERRORED = 7,
} wr_phase_t;

#define PH_COUNT 8

/* "init", "datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready", "errored" */
const char *phase_name(wr_phase_t p);
/* Parses a name (case-insensitive); returns 0 or WR_EINVAL. */
int phase_parse(const char *s, wr_phase_t *out) WR_MUST_CHECK;
/* True if a worker may move a table from `from` to `to`:
 * init->datasync, datasync->datasync (redo after crash), datasync->finishedcopy,
 * finishedcopy->syncwait, syncwait->catchup, catchup->syncdone, syncdone->ready,
 * any->errored, any->init (resync / retry from scratch). */
bool phase_transition_ok(wr_phase_t from, wr_phase_t to);
/* True for phases in which a sync worker must be running for the table. */
bool phase_needs_sync_worker(wr_phase_t p);

#endif
