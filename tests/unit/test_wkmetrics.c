/*
 * test_wkmetrics.c - unit tests of proto/wkmetrics.c: what a worker reports to the
 * supervisor for its metrics, and when.
 *
 * NOTES: no server. A socketpair stands in for the worker's channel (fd 3); what
 * wkm_send writes is read back with the real message reader.
 */
#include <sys/socket.h>
#include <unistd.h>

#include "destinations/destination.h"
#include "proto/wkmetrics.h"
#include "unit.h"

/* Reads one message from fd (blocking) into *m; returns 1 when one was read. */
static int
read_msg(int fd, ipc_msg_t *m)
{
    ipc_reader_t r;
    wr_err_t err;
    char buf[65536];
    int rc = 0;

    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    for (int tries = 0; tries < 100 && rc == 0; tries++) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        CHECK_INT_EQ(ipc_reader_feed(&r, buf, (size_t)n, &err), 0);
        rc = ipc_reader_next(&r, m, &err);
    }
    ipc_reader_close(&r);
    return rc;
}

static uint64_t
events_of(const ipc_msg_t *m, uint32_t relid, int op)
{
    for (uint32_t i = 0; i < m->u.worker_metrics.nevents; i++)
        if (m->u.worker_metrics.events[i].relid == relid)
            return m->u.worker_metrics.events[i].n[op];
    return 0;
}

static uint64_t
hist_count(const ipc_hist_t *h)
{
    uint64_t n = 0;
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++)
        n += h->counts[i];
    return n;
}

/* Changes count only once their batch committed; a rolled-back or abandoned batch
 * counts nothing. */
static void
test_pending_until_commit(void)
{
    wkm_t m;
    ipc_msg_t msg;

    wkm_init(&m);
    wkm_batch_begin(&m);
    wkm_event(&m, 16384, DEST_EV_INSERT);
    wkm_event(&m, 16384, DEST_EV_INSERT);
    wkm_event(&m, 16390, DEST_EV_DELETE);
    wkm_event(&m, 16390, DEST_EV_BEGIN); /* boundaries are not changes */
    wkm_transaction(&m);
    CHECK_INT_EQ(wkm_build(&m, &msg), 0);
    CHECK_INT_EQ(msg.u.worker_metrics.nevents, 0);
    CHECK_U64_EQ(msg.u.worker_metrics.transactions, 0);
    free(msg.u.worker_metrics.events);

    wkm_batch_commit(&m, wkm_clock_us());
    CHECK_INT_EQ(wkm_build(&m, &msg), 0);
    CHECK_INT_EQ(msg.u.worker_metrics.nevents, 2);
    CHECK_U64_EQ(events_of(&msg, 16384, IPC_OP_INSERT), 2);
    CHECK_U64_EQ(events_of(&msg, 16390, IPC_OP_DELETE), 1);
    CHECK_U64_EQ(events_of(&msg, 16390, IPC_OP_INSERT), 0);
    CHECK_U64_EQ(msg.u.worker_metrics.transactions, 1);
    CHECK_U64_EQ(msg.u.worker_metrics.batches, 1);
    CHECK_U64_EQ(hist_count(&msg.u.worker_metrics.batch), 1);
    CHECK_U64_EQ(hist_count(&msg.u.worker_metrics.commit), 1);
    free(msg.u.worker_metrics.events);
    wkm_sent(&m);

    /* a rolled-back batch */
    wkm_batch_begin(&m);
    wkm_event(&m, 16384, DEST_EV_UPDATE);
    wkm_transaction(&m);
    wkm_batch_rollback(&m);
    /* an abandoned one (no rollback call), then a new batch that commits */
    wkm_batch_begin(&m);
    wkm_event(&m, 16384, DEST_EV_UPDATE);
    wkm_batch_begin(&m);
    wkm_event(&m, 16384, DEST_EV_TRUNCATE);
    wkm_batch_commit(&m, wkm_clock_us());
    CHECK_INT_EQ(wkm_build(&m, &msg), 0);
    CHECK_INT_EQ(msg.u.worker_metrics.nevents, 1);
    CHECK_U64_EQ(events_of(&msg, 16384, IPC_OP_UPDATE), 0);
    CHECK_U64_EQ(events_of(&msg, 16384, IPC_OP_TRUNCATE), 1);
    CHECK_U64_EQ(msg.u.worker_metrics.transactions, 0);
    free(msg.u.worker_metrics.events);
    wkm_free(&m);
}

/* Many tables: the table grows and keeps every count. */
static void
test_many_tables(void)
{
    wkm_t m;
    ipc_msg_t msg;
    uint64_t total = 0;

    wkm_init(&m);
    wkm_batch_begin(&m);
    for (uint32_t r = 1; r <= 1000; r++)
        for (uint32_t k = 0; k < r % 3 + 1; k++)
            wkm_event(&m, r * 7919u, DEST_EV_INSERT);
    wkm_batch_commit(&m, wkm_clock_us());
    CHECK(!m.oom);
    CHECK_INT_EQ(wkm_build(&m, &msg), 0);
    CHECK_INT_EQ(msg.u.worker_metrics.nevents, 1000);
    for (uint32_t i = 0; i < msg.u.worker_metrics.nevents; i++)
        total += msg.u.worker_metrics.events[i].n[IPC_OP_INSERT];
    CHECK_U64_EQ(total, 334 * 2 + 333 * 3 + 333 * 1);
    CHECK_U64_EQ(events_of(&msg, 3 * 7919u, IPC_OP_INSERT), 1);
    CHECK_U64_EQ(events_of(&msg, 5 * 7919u, IPC_OP_INSERT), 3);
    free(msg.u.worker_metrics.events);
    wkm_free(&m);
}

/* Histogram buckets: an observation lands in the first bucket whose bound holds it. */
static void
test_histogram_buckets(void)
{
    wkm_t m;

    wkm_init(&m);
    /* commit_start in the past: 20 ms, 3 s and 30 s ago */
    wkm_batch_commit(&m, wkm_clock_us() - 20000);
    wkm_batch_commit(&m, wkm_clock_us() - 3000000);
    wkm_batch_commit(&m, wkm_clock_us() - 30000000);
    CHECK_U64_EQ(m.commit.counts[3], 1);                    /* <= 25 ms */
    CHECK_U64_EQ(m.commit.counts[10], 1);                   /* <= 5 s */
    CHECK_U64_EQ(m.commit.counts[IPC_HIST_NCOUNTS - 1], 1); /* +Inf */
    CHECK(m.commit.sum_us >= 33020000 && m.commit.sum_us < 34000000);
    CHECK_U64_EQ(m.batches, 3);
    CHECK_U64_EQ(hist_count(&m.batch), 3);
    wkm_free(&m);
}

/* wkm_send: nothing when nothing changed, at most once per WKM_SEND_MS unless forced,
 * deltas (each report starts from zero). */
static void
test_send(void)
{
    int sv[2];
    wk_chan_t c;
    wkm_t m;
    ipc_msg_t msg;
    wr_err_t err;

    CHECK_INT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_INT_EQ(wk_chan_init(&c, sv[0], &err), 0);
    wkm_init(&m);

    CHECK_INT_EQ(wkm_send(&m, &c, false, &err), 0); /* nothing to say */
    wkm_bytes(&m, 100);
    wkm_status_update(&m);
    wkm_position(&m, 1764690000123456, true);
    wkm_batch_begin(&m);
    wkm_event(&m, 5, DEST_EV_INSERT);
    wkm_transaction(&m);
    wkm_batch_commit(&m, wkm_clock_us());
    CHECK_INT_EQ(wkm_send(&m, &c, false, &err), 0); /* first report: not throttled */
    CHECK_INT_EQ(read_msg(sv[1], &msg), 1);
    CHECK_INT_EQ(msg.type, IPC_WORKER_METRICS);
    CHECK_U64_EQ(msg.u.worker_metrics.bytes_received, 100);
    CHECK_U64_EQ(msg.u.worker_metrics.status_updates, 1);
    CHECK_U64_EQ(events_of(&msg, 5, IPC_OP_INSERT), 1);
    CHECK_U64_EQ(msg.u.worker_metrics.transactions, 1);
    CHECK_INT_EQ(msg.u.worker_metrics.last_commit_ts, 1764690000123456);
    CHECK(msg.u.worker_metrics.caught_up);
    ipc_msg_clear(&msg);

    /* within WKM_SEND_MS: held back, then forced */
    wkm_bytes(&m, 7);
    CHECK_INT_EQ(wkm_send(&m, &c, false, &err), 0);
    CHECK(m.dirty);
    CHECK_INT_EQ(wkm_send(&m, &c, true, &err), 0);
    CHECK_INT_EQ(read_msg(sv[1], &msg), 1);
    CHECK_U64_EQ(msg.u.worker_metrics.bytes_received, 7); /* a delta */
    CHECK_U64_EQ(msg.u.worker_metrics.status_updates, 0);
    CHECK_INT_EQ(msg.u.worker_metrics.nevents, 0);
    ipc_msg_clear(&msg);
    CHECK(!m.dirty);

    /* the position alone is news */
    wkm_position(&m, 1764690000123456, true);
    CHECK(!m.dirty);
    wkm_position(&m, 1764690000123456, false);
    CHECK(m.dirty);

    /* the supervisor is gone */
    close(sv[1]);
    CHECK(wkm_send(&m, &c, true, &err) < 0);
    wk_chan_close(&c);
    wkm_free(&m);
}

int
main(void)
{
    RUN(test_pending_until_commit);
    RUN(test_many_tables);
    RUN(test_histogram_buckets);
    RUN(test_send);
    return unit_done();
}
