/*
 * phase.c - table phase names and the legal transitions.
 *
 * NOTES: the supervisor validates every requested transition with phase_transition_ok()
 * before persisting it; see DESIGN.md "Table lifecycle".
 */
#include "phase.h"

#include <strings.h>

static const char *const phase_names[PH_COUNT] = {
    "init", "datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready", "errored",
};

const char *
phase_name(wr_phase_t p)
{
    if ((int)p < 0 || (int)p >= PH_COUNT)
        return "invalid";
    return phase_names[p];
}

int
phase_parse(const char *s, wr_phase_t *out)
{
    int i;
    if (!s)
        return WR_EINVAL;
    for (i = 0; i < PH_COUNT; i++) {
        if (strcasecmp(s, phase_names[i]) == 0) {
            *out = (wr_phase_t)i;
            return 0;
        }
    }
    return WR_EINVAL;
}

bool
phase_transition_ok(wr_phase_t from, wr_phase_t to)
{
    if ((int)from < 0 || (int)from >= PH_COUNT || (int)to < 0 || (int)to >= PH_COUNT)
        return false;
    if (to == PH_ERRORED || to == PH_INIT)
        return true;
    switch (from) {
    case PH_INIT:
        return to == PH_DATASYNC;
    case PH_DATASYNC:
        return to == PH_DATASYNC || to == PH_FINISHEDCOPY;
    case PH_FINISHEDCOPY:
        return to == PH_SYNCWAIT;
    case PH_SYNCWAIT:
        return to == PH_CATCHUP;
    case PH_CATCHUP:
        return to == PH_SYNCDONE;
    case PH_SYNCDONE:
        return to == PH_READY;
    case PH_READY:
    case PH_ERRORED:
    default:
        return false;
    }
}

bool
phase_needs_sync_worker(wr_phase_t p)
{
    return p == PH_INIT || p == PH_DATASYNC || p == PH_FINISHEDCOPY || p == PH_SYNCWAIT ||
           p == PH_CATCHUP;
}
