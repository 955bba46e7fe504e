/*
 * wkmetrics.c - a worker's counters and timings, sent to the supervisor as deltas.
 *
 * NOTES: linked into walrelay-apply and walrelay-sync (one wkm_t per process). Persists
 * nothing; the rules (what counts when, what a crash loses) are in wkmetrics.h. The
 * per-table counts live in an open-addressing table keyed by relid, grown at half load,
 * so counting a change costs one probe and no allocation once the table is known.
 */
#include "wkmetrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "../destinations/destination.h"

void
wkm_init(wkm_t *m)
{
    memset(m, 0, sizeof(*m));
}

void
wkm_free(wkm_t *m)
{
    free(m->tabs);
    memset(m, 0, sizeof(*m));
}

int64_t
wkm_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t
wkm_hash(uint32_t relid, size_t cap)
{
    return (size_t)((relid * 2654435761u) & (uint32_t)(cap - 1));
}

static int
wkm_grow(wkm_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : 32;
    wkm_table_t *tabs = calloc(cap, sizeof(*tabs));

    if (!tabs)
        return WR_ENOMEM;
    for (size_t k = 0; k < m->cap; k++) {
        size_t i;
        if (!m->tabs[k].used)
            continue;
        for (i = wkm_hash(m->tabs[k].relid, cap); tabs[i].used; i = (i + 1) & (cap - 1))
            ;
        tabs[i] = m->tabs[k];
    }
    free(m->tabs);
    m->tabs = tabs;
    m->cap = cap;
    return 0;
}

/* The entry of relid, created when absent; NULL when out of memory. */
static wkm_table_t *
wkm_table(wkm_t *m, uint32_t relid)
{
    size_t i;

    if (m->cap > 0) {
        for (i = wkm_hash(relid, m->cap); m->tabs[i].used; i = (i + 1) & (m->cap - 1))
            if (m->tabs[i].relid == relid)
                return &m->tabs[i];
    }
    if ((m->used + 1) * 2 > m->cap && wkm_grow(m) != 0)
        return NULL;
    for (i = wkm_hash(relid, m->cap); m->tabs[i].used; i = (i + 1) & (m->cap - 1))
        ;
    m->tabs[i].used = true;
    m->tabs[i].relid = relid;
    m->used++;
    return &m->tabs[i];
}

static void
wkm_drop_pending(wkm_t *m)
{
    for (size_t k = 0; k < m->cap; k++)
        if (m->tabs[k].used)
            memset(m->tabs[k].pending, 0, sizeof(m->tabs[k].pending));
    m->pending_tx = 0;
}

void
wkm_batch_begin(wkm_t *m)
{
    wkm_drop_pending(m);
    m->batch_open = true;
    m->batch_start_us = wkm_clock_us();
}

void
wkm_event(wkm_t *m, uint32_t relid, int kind)
{
    wkm_table_t *t;

    if (kind < DEST_EV_INSERT || kind > DEST_EV_TRUNCATE)
        return;
    t = wkm_table(m, relid);
    if (!t) {
        m->oom = true;
        return;
    }
    t->pending[kind - DEST_EV_INSERT]++;
}

void
wkm_transaction(wkm_t *m)
{
    m->pending_tx++;
}

/* Adds one observation of us microseconds to a histogram. */
static void
wkm_observe(ipc_hist_t *h, int64_t us)
{
    int i;

    if (us < 0)
        us = 0;
    for (i = 0; i < IPC_HIST_NBOUNDS; i++)
        if ((uint64_t)us <= ipc_hist_bounds_us[i])
            break;
    h->counts[i]++;
    h->sum_us += (uint64_t)us;
}

void
wkm_batch_commit(wkm_t *m, int64_t commit_start_us)
{
    int64_t now = wkm_clock_us();

    for (size_t k = 0; k < m->cap; k++) {
        wkm_table_t *t = &m->tabs[k];
        if (!t->used)
            continue;
        for (int op = 0; op < IPC_NOPS; op++) {
            t->unsent[op] += t->pending[op];
            t->pending[op] = 0;
        }
    }
    m->transactions += m->pending_tx;
    m->pending_tx = 0;
    m->batches++;
    wkm_observe(&m->batch, now - (m->batch_open ? m->batch_start_us : commit_start_us));
    wkm_observe(&m->commit, now - commit_start_us);
    m->batch_open = false;
    m->dirty = true;
}

void
wkm_batch_rollback(wkm_t *m)
{
    wkm_drop_pending(m);
    m->batch_open = false;
}

void
wkm_bytes(wkm_t *m, size_t n)
{
    m->bytes_received += n;
    m->dirty = true;
}

void
wkm_status_update(wkm_t *m)
{
    m->status_updates++;
    m->dirty = true;
}

void
wkm_stream_totals(wkm_t *m, uint64_t bytes, uint64_t status)
{
    if (bytes > m->stm_bytes_seen) {
        m->bytes_received += bytes - m->stm_bytes_seen;
        m->dirty = true;
    }
    if (status > m->stm_status_seen) {
        m->status_updates += status - m->stm_status_seen;
        m->dirty = true;
    }
    m->stm_bytes_seen = bytes;
    m->stm_status_seen = status;
}

void
wkm_position(wkm_t *m, int64_t last_commit_ts, bool caught_up)
{
    if (last_commit_ts < 0)
        last_commit_ts = 0;
    m->last_commit_ts = last_commit_ts;
    m->caught_up = caught_up;
    if (last_commit_ts != m->sent_commit_ts || caught_up != m->sent_caught_up)
        m->dirty = true;
}

int
wkm_build(const wkm_t *m, ipc_msg_t *out)
{
    uint32_t n = 0;

    memset(out, 0, sizeof(*out));
    out->type = IPC_WORKER_METRICS;
    for (size_t k = 0; k < m->cap; k++) {
        const wkm_table_t *t = &m->tabs[k];
        if (t->used && (t->unsent[0] | t->unsent[1] | t->unsent[2] | t->unsent[3]) != 0)
            n++;
    }
    if (n > IPC_MAX_ITEMS)
        n = IPC_MAX_ITEMS; /* the rest go in the next report */
    if (n > 0) {
        out->u.worker_metrics.events = calloc(n, sizeof(*out->u.worker_metrics.events));
        if (!out->u.worker_metrics.events)
            return WR_ENOMEM;
        for (size_t k = 0; k < m->cap && out->u.worker_metrics.nevents < n; k++) {
            const wkm_table_t *t = &m->tabs[k];
            ipc_event_count_t *e;
            if (!t->used || (t->unsent[0] | t->unsent[1] | t->unsent[2] | t->unsent[3]) == 0)
                continue;
            e = &out->u.worker_metrics.events[out->u.worker_metrics.nevents++];
            e->relid = t->relid;
            memcpy(e->n, t->unsent, sizeof(e->n));
        }
    }
    out->u.worker_metrics.transactions = m->transactions;
    out->u.worker_metrics.batches = m->batches;
    out->u.worker_metrics.bytes_received = m->bytes_received;
    out->u.worker_metrics.status_updates = m->status_updates;
    out->u.worker_metrics.batch = m->batch;
    out->u.worker_metrics.commit = m->commit;
    out->u.worker_metrics.last_commit_ts = m->last_commit_ts;
    out->u.worker_metrics.caught_up = m->caught_up;
    return 0;
}

void
wkm_sent(wkm_t *m)
{
    /* only what wkm_build reported: the tables it put in the message (the first
     * IPC_MAX_ITEMS with counts, in slot order) */
    uint32_t n = 0;
    bool more = false;

    for (size_t k = 0; k < m->cap; k++) {
        wkm_table_t *t = &m->tabs[k];
        if (!t->used || (t->unsent[0] | t->unsent[1] | t->unsent[2] | t->unsent[3]) == 0)
            continue;
        if (n == IPC_MAX_ITEMS) {
            more = true;
            break;
        }
        memset(t->unsent, 0, sizeof(t->unsent));
        n++;
    }
    m->transactions = m->batches = m->bytes_received = m->status_updates = 0;
    memset(&m->batch, 0, sizeof(m->batch));
    memset(&m->commit, 0, sizeof(m->commit));
    m->sent_commit_ts = m->last_commit_ts;
    m->sent_caught_up = m->caught_up;
    m->dirty = more;
}

int
wkm_send(wkm_t *m, wk_chan_t *c, bool force, wr_err_t *err)
{
    int64_t now = wr_now_ms();
    ipc_msg_t msg;
    int rc;

    if (m->oom && !m->oom_logged) {
        m->oom_logged = true;
        log_warn("out of memory counting changes for metrics: some counts are missing");
    }
    if (!m->dirty && !force)
        return 0;
    if (!force && now - m->sent_ms < WKM_SEND_MS)
        return 0;
    if (wkm_build(m, &msg) != 0) {
        m->oom = true;
        return 0; /* try again at the next report */
    }
    rc = wk_chan_send(c, &msg, err);
    free(msg.u.worker_metrics.events);
    if (rc != 0)
        return rc;
    wkm_sent(m);
    m->sent_ms = now;
    return 0;
}
