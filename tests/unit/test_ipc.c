/*
 * test_ipc.c - unit tests of proto/ipc.c: every message round-trips through the encoder,
 * the stream reader (whole, byte by byte, concatenated) and the decoder; malformed input
 * is rejected with an error naming the message and the element.
 *
 * NOTES: pure in-memory; no sockets.
 */
#include "proto/ipc.h"
#include "unit.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static wr_schema_t *
make_schema(uint32_t relid)
{
    wr_schema_t *s = wr_schema_new(relid, "public", "orders", 3);
    if (!s)
        abort();
    s->replident = 'i';
    s->cols[0].name = wr_strdup("id");
    s->cols[0].type_oid = 20;
    s->cols[0].typmod = -1;
    s->cols[0].is_key = true;
    s->cols[0].not_null = true;
    s->cols[1].name = wr_strdup("amount");
    s->cols[1].type_oid = 1700;
    s->cols[1].typmod = 655366; /* numeric(10,2) */
    s->cols[2].name = wr_strdup("note \xc3\xa9");
    s->cols[2].type_oid = 25;
    s->cols[2].typmod = -1;
    s->cols[2].not_null = true;
    return s;
}

static void
check_schema_eq(const wr_schema_t *a, const wr_schema_t *b)
{
    uint16_t i;
    CHECK(a != NULL && b != NULL);
    if (!a || !b)
        return;
    CHECK_INT_EQ(a->relid, b->relid);
    CHECK_STR_EQ(a->nsp, b->nsp);
    CHECK_STR_EQ(a->name, b->name);
    CHECK_INT_EQ(a->replident, b->replident);
    CHECK_INT_EQ(a->ncols, b->ncols);
    for (i = 0; i < a->ncols && i < b->ncols; i++) {
        CHECK_STR_EQ(a->cols[i].name, b->cols[i].name);
        CHECK_INT_EQ(a->cols[i].type_oid, b->cols[i].type_oid);
        CHECK_INT_EQ(a->cols[i].typmod, b->cols[i].typmod);
        CHECK_INT_EQ(a->cols[i].is_key, b->cols[i].is_key);
        CHECK_INT_EQ(a->cols[i].not_null, b->cols[i].not_null);
    }
}

static void
check_table_eq(const ipc_table_info_t *a, const ipc_table_info_t *b, bool full)
{
    CHECK_INT_EQ(a->relid, b->relid);
    CHECK_STR_EQ(a->nsp, b->nsp);
    CHECK_STR_EQ(a->name, b->name);
    CHECK_INT_EQ(a->phase, b->phase);
    CHECK_U64_EQ(a->lsn, b->lsn);
    if (!full) {
        CHECK_STR_EQ(a->dest_name ? a->dest_name : "", b->dest_name);
        CHECK(b->err_kind == NULL && b->err_msg == NULL && b->err_hint == NULL);
        CHECK_U64_EQ(b->rows_copied, 0);
        return;
    }
    CHECK_U64_EQ(a->rows_copied, b->rows_copied);
    CHECK_INT_EQ(a->attempts, b->attempts);
    CHECK_STR_EQ(a->err_kind, b->err_kind);
    CHECK_STR_EQ(a->err_msg, b->err_msg);
    CHECK_STR_EQ(a->err_hint, b->err_hint);
}

/* a = the hand-made original, b = decoded */
static void
check_msg_eq(const ipc_msg_t *a, const ipc_msg_t *b)
{
    uint32_t i;
    CHECK_INT_EQ(a->type, b->type);
    if (a->type != b->type)
        return;
    switch (a->type) {
    case IPC_HELLO:
        CHECK_INT_EQ(a->u.hello.version, b->u.hello.version);
        CHECK_STR_EQ(a->u.hello.role, b->u.hello.role);
        CHECK_INT_EQ(a->u.hello.pid, b->u.hello.pid);
        CHECK_INT_EQ(a->u.hello.relid, b->u.hello.relid);
        break;
    case IPC_WELCOME:
        CHECK_INT_EQ(a->u.welcome.version, b->u.welcome.version);
        CHECK_STR_EQ(a->u.welcome.pipeline, b->u.welcome.pipeline);
        break;
    case IPC_TABLES:
        CHECK_INT_EQ(a->u.tables.more, b->u.tables.more);
        CHECK_INT_EQ(a->u.tables.n, b->u.tables.n);
        for (i = 0; i < a->u.tables.n && i < b->u.tables.n; i++)
            check_table_eq(&a->u.tables.tables[i], &b->u.tables.tables[i], false);
        break;
    case IPC_TABLE_STATE:
    case IPC_TABLE_ACK:
        CHECK_INT_EQ(a->u.table_state.relid, b->u.table_state.relid);
        CHECK_INT_EQ(a->u.table_state.phase, b->u.table_state.phase);
        CHECK_U64_EQ(a->u.table_state.lsn, b->u.table_state.lsn);
        if (a->type == IPC_TABLE_STATE)
            CHECK_STR_EQ(a->u.table_state.dest_name ? a->u.table_state.dest_name : "",
                         b->u.table_state.dest_name);
        break;
    case IPC_SET_PHASE:
        CHECK_INT_EQ(a->u.set_phase.req, b->u.set_phase.req);
        CHECK_INT_EQ(a->u.set_phase.relid, b->u.set_phase.relid);
        CHECK_INT_EQ(a->u.set_phase.phase, b->u.set_phase.phase);
        CHECK_U64_EQ(a->u.set_phase.lsn, b->u.set_phase.lsn);
        CHECK_STR_EQ(a->u.set_phase.err_kind, b->u.set_phase.err_kind);
        CHECK_STR_EQ(a->u.set_phase.err_msg, b->u.set_phase.err_msg);
        CHECK_STR_EQ(a->u.set_phase.err_hint, b->u.set_phase.err_hint);
        break;
    case IPC_ACK:
        CHECK_INT_EQ(a->u.ack.req, b->u.ack.req);
        CHECK_INT_EQ(a->u.ack.ok, b->u.ack.ok);
        CHECK_STR_EQ(a->u.ack.message, b->u.ack.message);
        break;
    case IPC_SCHEMA:
        CHECK_INT_EQ(a->u.schema.req, b->u.schema.req);
        CHECK_INT_EQ(a->u.schema.relid, b->u.schema.relid);
        CHECK_U64_EQ(a->u.schema.lsn, b->u.schema.lsn);
        check_schema_eq(a->u.schema.schema, b->u.schema.schema);
        break;
    case IPC_PROGRESS:
        CHECK_U64_EQ(a->u.progress.flush_lsn, b->u.progress.flush_lsn);
        CHECK_U64_EQ(a->u.progress.received_lsn, b->u.progress.received_lsn);
        CHECK_U64_EQ(a->u.progress.events, b->u.progress.events);
        break;
    case IPC_COPY_PROGRESS:
        CHECK_INT_EQ(a->u.copy_progress.relid, b->u.copy_progress.relid);
        CHECK_U64_EQ(a->u.copy_progress.rows, b->u.copy_progress.rows);
        break;
    case IPC_STATUS:
        CHECK_INT_EQ(a->u.status.after, b->u.status.after);
        break;
    case IPC_COPY_PLAN:
        CHECK_INT_EQ(a->u.copy_plan.req, b->u.copy_plan.req);
        CHECK_INT_EQ(a->u.copy_plan.relid, b->u.copy_plan.relid);
        CHECK_U64_EQ(a->u.copy_plan.lsn, b->u.copy_plan.lsn);
        CHECK_STR_EQ(a->u.copy_plan.snapshot, b->u.copy_plan.snapshot);
        CHECK_INT_EQ(a->u.copy_plan.n, b->u.copy_plan.n);
        for (i = 0; i < a->u.copy_plan.n && i < b->u.copy_plan.n; i++) {
            const ipc_copy_range_t *x = &a->u.copy_plan.ranges[i], *y = &b->u.copy_plan.ranges[i];
            CHECK_INT_EQ(x->leaf, y->leaf);
            CHECK_INT_EQ(x->first_page, y->first_page);
            CHECK_INT_EQ(x->end_page, y->end_page);
            CHECK_U64_EQ(x->rows, y->rows);
            CHECK_INT_EQ(x->done, y->done);
        }
        break;
    case IPC_COPY_PLAN_GET:
        CHECK_INT_EQ(a->u.copy_plan_get.req, b->u.copy_plan_get.req);
        CHECK_INT_EQ(a->u.copy_plan_get.relid, b->u.copy_plan_get.relid);
        break;
    case IPC_COPY_RANGE_DONE:
        CHECK_INT_EQ(a->u.copy_range_done.req, b->u.copy_range_done.req);
        CHECK_INT_EQ(a->u.copy_range_done.relid, b->u.copy_range_done.relid);
        CHECK_INT_EQ(a->u.copy_range_done.part, b->u.copy_range_done.part);
        CHECK_U64_EQ(a->u.copy_range_done.rows, b->u.copy_range_done.rows);
        break;
    case IPC_STOP:
    case IPC_PAUSE:
    case IPC_RESUME:
    case IPC_RELOAD:
        break;
    case IPC_RETRY:
    case IPC_RESYNC:
        CHECK_STR_EQ(a->u.command.table, b->u.command.table);
        break;
    case IPC_TABLE_REMOVED:
        CHECK_INT_EQ(a->u.table_removed.relid, b->u.table_removed.relid);
        break;
    case IPC_WORKER_ERROR:
        CHECK_STR_EQ(a->u.worker_error.kind, b->u.worker_error.kind);
        CHECK_STR_EQ(a->u.worker_error.message, b->u.worker_error.message);
        CHECK_STR_EQ(a->u.worker_error.hint, b->u.worker_error.hint);
        break;
    case IPC_DEST_WAIT:
        CHECK_STR_EQ(a->u.dest_wait.message, b->u.dest_wait.message);
        break;
    case IPC_ERROR:
        CHECK_STR_EQ(a->u.error.message, b->u.error.message);
        break;
    case IPC_OK:
        CHECK_STR_EQ(a->u.ok.message, b->u.ok.message);
        break;
    case IPC_STATUS_REPLY:
        CHECK_STR_EQ(a->u.status_reply.pipeline, b->u.status_reply.pipeline);
        CHECK_STR_EQ(a->u.status_reply.state, b->u.status_reply.state);
        CHECK_INT_EQ(a->u.status_reply.pid, b->u.status_reply.pid);
        CHECK_U64_EQ(a->u.status_reply.flush_lsn, b->u.status_reply.flush_lsn);
        CHECK_U64_EQ(a->u.status_reply.received_lsn, b->u.status_reply.received_lsn);
        CHECK_U64_EQ(a->u.status_reply.events, b->u.status_reply.events);
        CHECK_INT_EQ(a->u.status_reply.nworkers, b->u.status_reply.nworkers);
        for (i = 0; i < a->u.status_reply.nworkers && i < b->u.status_reply.nworkers; i++) {
            const ipc_worker_info_t *x = &a->u.status_reply.workers[i];
            const ipc_worker_info_t *y = &b->u.status_reply.workers[i];
            CHECK_STR_EQ(x->role, y->role);
            CHECK_INT_EQ(x->relid, y->relid);
            CHECK_INT_EQ(x->pid, y->pid);
            CHECK_INT_EQ(x->restarts, y->restarts);
            CHECK_STR_EQ(x->state, y->state);
        }
        CHECK_INT_EQ(a->u.status_reply.ntables, b->u.status_reply.ntables);
        for (i = 0; i < a->u.status_reply.ntables && i < b->u.status_reply.ntables; i++)
            check_table_eq(&a->u.status_reply.tables[i], &b->u.status_reply.tables[i], true);
        CHECK_STR_EQ(a->u.status_reply.message ? a->u.status_reply.message : "",
                     b->u.status_reply.message);
        CHECK_INT_EQ(a->u.status_reply.more, b->u.status_reply.more);
        break;
    case IPC_WORKER_METRICS: {
        const __typeof__(a->u.worker_metrics) *x = &a->u.worker_metrics, *y = &b->u.worker_metrics;
        CHECK_U64_EQ(x->transactions, y->transactions);
        CHECK_U64_EQ(x->batches, y->batches);
        CHECK_U64_EQ(x->bytes_received, y->bytes_received);
        CHECK_U64_EQ(x->status_updates, y->status_updates);
        CHECK_INT_EQ(x->nevents, y->nevents);
        for (i = 0; i < x->nevents && i < y->nevents; i++) {
            CHECK_INT_EQ(x->events[i].relid, y->events[i].relid);
            for (int k = 0; k < IPC_NOPS; k++)
                CHECK_U64_EQ(x->events[i].n[k], y->events[i].n[k]);
        }
        for (int k = 0; k < IPC_HIST_NCOUNTS; k++) {
            CHECK_U64_EQ(x->batch.counts[k], y->batch.counts[k]);
            CHECK_U64_EQ(x->commit.counts[k], y->commit.counts[k]);
        }
        CHECK_U64_EQ(x->batch.sum_us, y->batch.sum_us);
        CHECK_U64_EQ(x->commit.sum_us, y->commit.sum_us);
        CHECK_INT_EQ(x->last_commit_ts, y->last_commit_ts);
        CHECK_INT_EQ(x->caught_up, y->caught_up);
        break;
    }
    case IPC_STREAMING:
        CHECK_U64_EQ(a->u.streaming.start_lsn, b->u.streaming.start_lsn);
        break;
    case IPC_METRICS:
        break;
    case IPC_METRICS_TEXT:
        CHECK_STR_EQ(a->u.metrics_text.text, b->u.metrics_text.text);
        break;
    }
}

/* Hand-made samples of every message type. The static data outlives the tests. */
static ipc_copy_range_t sample_ranges[] = {
    {16390, 0, 4096, 123456789012ull, true},
    {16391, 4096, 0, 0, false},
};

static ipc_table_info_t sample_tables[] = {
    {.relid = 16384, .nsp = "public", .name = "orders", .phase = PH_READY, .lsn = 0x16B374D848ull},
    {.relid = 4294967295u,
     .nsp = "s",
     .name = "t",
     .phase = PH_SYNCWAIT,
     .lsn = UINT64_MAX,
     .dest_name = "s__t_4294967295"},
};
static ipc_table_info_t sample_status_tables[] = {
    {.relid = 16384,
     .nsp = "public",
     .name = "orders",
     .phase = PH_ERRORED,
     .lsn = 0x10000000ull,
     .rows_copied = 123456789012ull,
     .attempts = 3,
     .err_kind = "unsupported",
     .err_msg = "table \"orders\" has no replica identity",
     .err_hint = "ALTER TABLE orders REPLICA IDENTITY FULL"},
    {.relid = 16390,
     .nsp = "x",
     .name = "y",
     .phase = PH_DATASYNC,
     .lsn = 0,
     .err_kind = "",
     .err_msg = "",
     .err_hint = ""},
};
static ipc_worker_info_t sample_workers[] = {
    {.role = "apply", .relid = 0, .pid = 4242, .restarts = 0, .state = "running"},
    {.role = "sync", .relid = 16390, .pid = 0, .restarts = 7, .state = "backoff"},
};

static ipc_event_count_t sample_events[] = {
    {.relid = 16384, .n = {3, 0, 1, 0}},
    {.relid = 4294967295u, .n = {0, UINT64_MAX, 0, 2}},
};

#define NSAMPLES 37

/* Fills samples[]; returns the count. samples[i] may reference the schema (freed by caller). */
static int
make_samples(ipc_msg_t *s, wr_schema_t *schema)
{
    int n = 0;
    memset(s, 0, sizeof(ipc_msg_t) * NSAMPLES);
    s[n].type = IPC_HELLO;
    s[n].u.hello.version = IPC_PROTO_VERSION;
    s[n].u.hello.role = "sync";
    s[n].u.hello.pid = 123456;
    s[n].u.hello.relid = 16384;
    n++;
    s[n].type = IPC_WELCOME;
    s[n].u.welcome.version = IPC_PROTO_VERSION;
    s[n].u.welcome.pipeline = "main";
    n++;
    s[n].type = IPC_TABLES;
    s[n].u.tables.n = 2;
    s[n].u.tables.tables = sample_tables;
    n++;
    s[n].type = IPC_TABLES; /* empty list */
    n++;
    s[n].type = IPC_TABLES; /* (issue 11) a piece of a long list */
    s[n].u.tables.n = 2;
    s[n].u.tables.tables = sample_tables;
    s[n].u.tables.more = true;
    n++;
    s[n].type = IPC_TABLE_STATE;
    s[n].u.table_state.relid = 16384;
    s[n].u.table_state.phase = PH_CATCHUP;
    s[n].u.table_state.lsn = 0x8000000000000001ull;
    s[n].u.table_state.dest_name = "Users_16384";
    n++;
    s[n].type = IPC_SET_PHASE;
    s[n].u.set_phase.req = 77;
    s[n].u.set_phase.relid = 16384;
    s[n].u.set_phase.phase = PH_ERRORED;
    s[n].u.set_phase.lsn = 0x16B374D848ull;
    s[n].u.set_phase.err_kind = "unsupported";
    s[n].u.set_phase.err_msg = "column \"x\" has type \"foo\"";
    s[n].u.set_phase.err_hint = "drop the column from the publication";
    n++;
    s[n].type = IPC_ACK;
    s[n].u.ack.req = 77;
    s[n].u.ack.ok = false;
    s[n].u.ack.message = "invalid transition";
    n++;
    s[n].type = IPC_SCHEMA;
    s[n].u.schema.req = 78;
    s[n].u.schema.relid = schema->relid;
    s[n].u.schema.lsn = 0xFFFFFFFF00000000ull;
    s[n].u.schema.schema = schema;
    n++;
    s[n].type = IPC_PROGRESS;
    s[n].u.progress.flush_lsn = 0x1000;
    s[n].u.progress.received_lsn = UINT64_MAX;
    s[n].u.progress.events = 99;
    n++;
    s[n].type = IPC_COPY_PROGRESS;
    s[n].u.copy_progress.relid = 16384;
    s[n].u.copy_progress.rows = 5000000000ull;
    n++;
    s[n].type = IPC_STOP;
    n++;
    s[n].type = IPC_ERROR;
    s[n].u.error.message = "your last message was rejected";
    n++;
    s[n].type = IPC_STATUS;
    n++;
    s[n].type = IPC_STATUS; /* (issue 11) the next page */
    s[n].u.status.after = 4294967295u;
    n++;
    s[n].type = IPC_OK;
    s[n].u.ok.message = "";
    n++;
    s[n].type = IPC_STATUS_REPLY;
    s[n].u.status_reply.pipeline = "main";
    s[n].u.status_reply.state = "degraded";
    s[n].u.status_reply.pid = -5; /* signed on the wire */
    s[n].u.status_reply.flush_lsn = 0x20;
    s[n].u.status_reply.received_lsn = 0x30;
    s[n].u.status_reply.events = 1;
    s[n].u.status_reply.nworkers = 2;
    s[n].u.status_reply.workers = sample_workers;
    s[n].u.status_reply.ntables = 2;
    s[n].u.status_reply.tables = sample_status_tables;
    s[n].u.status_reply.message = "paused by walrelay pause \xc3\xa9";
    n++;
    s[n] = s[n - 1]; /* (issue 11) a page with more after it */
    s[n].u.status_reply.more = true;
    n++;
    s[n].type = IPC_RETRY;
    s[n].u.command.table = "public.orders";
    n++;
    s[n].type = IPC_RESYNC;
    s[n].u.command.table = "weird \"name\".t";
    n++;
    s[n].type = IPC_PAUSE;
    n++;
    s[n].type = IPC_RESUME;
    n++;
    s[n].type = IPC_RELOAD;
    n++;
    s[n].type = IPC_TABLE_REMOVED;
    s[n].u.table_removed.relid = 4294967295u;
    n++;
    s[n].type = IPC_COPY_PLAN;
    s[n].u.copy_plan.req = 9;
    s[n].u.copy_plan.relid = 16384;
    s[n].u.copy_plan.lsn = 0xFFFFFFFF00000001ull;
    s[n].u.copy_plan.snapshot = "00000003-00000002-1";
    s[n].u.copy_plan.n = 2;
    s[n].u.copy_plan.ranges = sample_ranges;
    n++;
    s[n].type = IPC_COPY_PLAN; /* no plan, no snapshot */
    s[n].u.copy_plan.req = 10;
    s[n].u.copy_plan.relid = 16384;
    s[n].u.copy_plan.snapshot = "";
    n++;
    s[n].type = IPC_COPY_PLAN_GET;
    s[n].u.copy_plan_get.req = 11;
    s[n].u.copy_plan_get.relid = 16384;
    n++;
    s[n].type = IPC_COPY_RANGE_DONE;
    s[n].u.copy_range_done.req = 12;
    s[n].u.copy_range_done.relid = 16384;
    s[n].u.copy_range_done.part = 4095;
    s[n].u.copy_range_done.rows = 5000000000ull;
    n++;
    s[n].type = IPC_WORKER_ERROR;
    s[n].u.worker_error.kind = "slot_missing";
    s[n].u.worker_error.message = "replication slot \"walrelay_x\" is missing \xc3\xa9";
    s[n].u.worker_error.hint = "";
    n++;
    s[n].type = IPC_TABLE_ACK;
    s[n].u.table_state.relid = 16384;
    s[n].u.table_state.phase = PH_INIT;
    s[n].u.table_state.lsn = 0;
    n++;
    s[n].type = IPC_WORKER_METRICS;
    s[n].u.worker_metrics.transactions = 7;
    s[n].u.worker_metrics.batches = 2;
    s[n].u.worker_metrics.bytes_received = 1ull << 40;
    s[n].u.worker_metrics.status_updates = 3;
    s[n].u.worker_metrics.nevents = 2;
    s[n].u.worker_metrics.events = sample_events;
    s[n].u.worker_metrics.batch.counts[0] = 1;
    s[n].u.worker_metrics.batch.counts[IPC_HIST_NCOUNTS - 1] = 1;
    s[n].u.worker_metrics.batch.sum_us = 12000500;
    s[n].u.worker_metrics.commit.counts[3] = 2;
    s[n].u.worker_metrics.commit.sum_us = 40000;
    s[n].u.worker_metrics.last_commit_ts = 1764690000123456;
    s[n].u.worker_metrics.caught_up = true;
    n++;
    s[n].type = IPC_WORKER_METRICS; /* nothing happened: all zero, no events */
    n++;
    s[n].type = IPC_STREAMING;
    s[n].u.streaming.start_lsn = 0x16B374D848ull;
    n++;
    s[n].type = IPC_METRICS;
    n++;
    s[n].type = IPC_METRICS_TEXT;
    s[n].u.metrics_text.text = "# HELP walrelay_up 1 while the apply worker streams\n"
                               "# TYPE walrelay_up gauge\nwalrelay_up{pipeline=\"p\"} 1\n";
    n++;
    s[n].type = IPC_DEST_WAIT;
    s[n].u.dest_wait.message = "http: HTTP 503 from http://127.0.0.1:9/ (attempt 3)";
    n++;
    s[n].type = IPC_DEST_WAIT;
    s[n].u.dest_wait.message = "";
    n++;
    return n;
}

/* Feeds buf in chunks of `chunk` bytes (0 = all at once), collecting decoded messages. */
static int
read_all(const char *buf, size_t len, size_t chunk, ipc_msg_t *out, int max)
{
    ipc_reader_t r;
    ipc_msg_t m;
    wr_err_t err;
    size_t off = 0;
    int n = 0, rc;
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    while (off < len) {
        size_t c = chunk == 0 || len - off < chunk ? len - off : chunk;
        CHECK_INT_EQ(ipc_reader_feed(&r, buf + off, c, &err), 0);
        off += c;
        while ((rc = ipc_reader_next(&r, &m, &err)) == 1) {
            if (n >= max) {
                ipc_msg_clear(&m);
                CHECK(!"too many messages");
                continue;
            }
            out[n++] = m;
        }
        if (rc != 0)
            fprintf(stderr, "  reader error: %s\n", err.msg);
        CHECK_INT_EQ(rc, 0);
    }
    CHECK(!r.broken);
    ipc_reader_close(&r);
    return n;
}

/* ------------------------------------------------------------------------------------ */
/* round trips                                                                          */
/* ------------------------------------------------------------------------------------ */

static void
test_type_names(void)
{
    CHECK_STR_EQ(ipc_type_name(IPC_HELLO), "hello");
    CHECK_STR_EQ(ipc_type_name(IPC_SET_PHASE), "set_phase");
    CHECK_STR_EQ(ipc_type_name(IPC_STATUS_REPLY), "status_reply");
    CHECK_STR_EQ(ipc_type_name(IPC_OK), "ok");
    CHECK_STR_EQ(ipc_type_name(IPC_RETRY), "retry");
    CHECK_STR_EQ(ipc_type_name(IPC_RESYNC), "resync");
    CHECK_STR_EQ(ipc_type_name(IPC_PAUSE), "pause");
    CHECK_STR_EQ(ipc_type_name(IPC_RESUME), "resume");
    CHECK_STR_EQ(ipc_type_name(IPC_RELOAD), "reload");
    CHECK_STR_EQ(ipc_type_name(IPC_TABLE_REMOVED), "table_removed");
    CHECK_STR_EQ(ipc_type_name(IPC_COPY_PLAN), "copy_plan");
    CHECK_STR_EQ(ipc_type_name(IPC_COPY_PLAN_GET), "copy_plan_get");
    CHECK_STR_EQ(ipc_type_name(IPC_COPY_RANGE_DONE), "copy_range_done");
    CHECK_STR_EQ(ipc_type_name(IPC_WORKER_METRICS), "worker_metrics");
    CHECK_STR_EQ(ipc_type_name(IPC_STREAMING), "streaming");
    CHECK_STR_EQ(ipc_type_name(IPC_METRICS), "metrics");
    CHECK_STR_EQ(ipc_type_name(IPC_METRICS_TEXT), "metrics_text");
    CHECK_STR_EQ(ipc_type_name(IPC_DEST_WAIT), "dest_wait");
    CHECK_STR_EQ(ipc_type_name((ipc_type_t)0), "unknown");
    CHECK_STR_EQ(ipc_type_name((ipc_type_t)99), "unknown");
}

static void
roundtrip_each(size_t chunk)
{
    ipc_msg_t samples[NSAMPLES], got[1];
    wr_schema_t *schema = make_schema(16384);
    int n = make_samples(samples, schema), i;
    for (i = 0; i < n; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        CHECK_INT_EQ(ipc_encode(&samples[i], &sb), 0);
        CHECK_INT_EQ(read_all(sb.data, sb.size, chunk, got, 1), 1);
        check_msg_eq(&samples[i], &got[0]);
        ipc_msg_clear(&got[0]);
        CHECK_INT_EQ(got[0].type, 0); /* cleared */
        msgpack_sbuffer_destroy(&sb);
    }
    wr_schema_free(schema);
}

static void
test_roundtrip_whole(void)
{
    roundtrip_each(0);
}

static void
test_roundtrip_byte_by_byte(void)
{
    roundtrip_each(1);
}

static void
test_roundtrip_concatenated(void)
{
    ipc_msg_t samples[NSAMPLES], got[NSAMPLES];
    wr_schema_t *schema = make_schema(16385);
    msgpack_sbuffer sb;
    int n = make_samples(samples, schema), i, k;
    size_t chunks[] = {0, 1, 7};
    msgpack_sbuffer_init(&sb);
    for (i = 0; i < n; i++)
        CHECK_INT_EQ(ipc_encode(&samples[i], &sb), 0);
    for (k = 0; k < 3; k++) {
        CHECK_INT_EQ(read_all(sb.data, sb.size, chunks[k], got, NSAMPLES), n);
        for (i = 0; i < n; i++) {
            check_msg_eq(&samples[i], &got[i]);
            ipc_msg_clear(&got[i]);
        }
    }
    msgpack_sbuffer_destroy(&sb);
    wr_schema_free(schema);
}

static void
test_encode_rejects(void)
{
    msgpack_sbuffer sb;
    ipc_msg_t m;
    char *big = malloc(IPC_MAX_STR + 2);
    msgpack_sbuffer_init(&sb);

    memset(&m, 0, sizeof(m));
    m.type = (ipc_type_t)0;
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    m.type = (ipc_type_t)42;
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);

    /* an invalid phase is not written */
    m.type = IPC_TABLE_STATE;
    m.u.table_state.phase = (wr_phase_t)PH_COUNT;
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    CHECK_INT_EQ(sb.size, 0); /* nothing partial left behind */

    /* a string the decoder would refuse is not written either */
    memset(big, 'a', IPC_MAX_STR + 1);
    big[IPC_MAX_STR + 1] = '\0';
    m.type = IPC_ERROR;
    m.u.error.message = big;
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    CHECK_INT_EQ(sb.size, 0);
    big[IPC_MAX_STR] = '\0'; /* exactly the limit is fine */
    CHECK_INT_EQ(ipc_encode(&m, &sb), 0);
    CHECK(sb.size > IPC_MAX_STR);

    /* NULL strings are written as "" */
    sb.size = 0;
    memset(&m, 0, sizeof(m));
    m.type = IPC_SET_PHASE;
    m.u.set_phase.phase = PH_INIT;
    CHECK_INT_EQ(ipc_encode(&m, &sb), 0);
    {
        ipc_msg_t got;
        CHECK_INT_EQ(read_all(sb.data, sb.size, 0, &got, 1), 1);
        CHECK_STR_EQ(got.u.set_phase.err_kind, "");
        CHECK_STR_EQ(got.u.set_phase.err_hint, "");
        ipc_msg_clear(&got);
    }
    free(big);
    msgpack_sbuffer_destroy(&sb);
}

static void
test_schema_pack_unpack(void)
{
    wr_schema_t *s = make_schema(99), *back = NULL, *empty;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
    wr_err_t err;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    CHECK_INT_EQ(ipc_pack_schema(&pk, s), 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_unpack_schema(&up.data, 99, &back, &err), 0);
    check_schema_eq(s, back);
    CHECK(wr_schema_equal(s, back));
    wr_schema_free(back);
    back = NULL;

    /* the relid comes from the caller */
    CHECK_INT_EQ(ipc_unpack_schema(&up.data, 7, &back, &err), 0);
    CHECK_INT_EQ(back ? back->relid : 0, 7);
    wr_schema_free(back);
    back = NULL;
    msgpack_unpacked_destroy(&up);

    /* zero columns */
    empty = wr_schema_new(5, "a", "b", 0);
    empty->replident = 'n';
    sb.size = 0;
    CHECK_INT_EQ(ipc_pack_schema(&pk, empty), 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_unpack_schema(&up.data, 5, &back, &err), 0);
    check_schema_eq(empty, back);
    wr_schema_free(back);
    back = NULL;
    msgpack_unpacked_destroy(&up);

    /* a bad replident and unknown flag bits are refused */
    sb.size = 0;
    empty->replident = 'x';
    CHECK_INT_EQ(ipc_pack_schema(&pk, empty), 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_unpack_schema(&up.data, 5, &back, &err), WR_EPROTO);
    CHECK(back == NULL);
    CHECK_CONTAINS(err.msg, "invalid schema: element 2 (replident)");
    msgpack_unpacked_destroy(&up);

    sb.size = 0;
    msgpack_pack_array(&pk, 4);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_str_with_body(&pk, "d", 1);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_str_with_body(&pk, "c", 1);
    msgpack_pack_uint32(&pk, 23);
    msgpack_pack_int32(&pk, -1);
    msgpack_pack_uint32(&pk, 4);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_unpack_schema(&up.data, 5, &back, &err), WR_EPROTO);
    CHECK(back == NULL);
    CHECK_CONTAINS(err.msg, "element 3 (columns) item 0 element 3 (flags)");
    msgpack_unpacked_destroy(&up);

    wr_schema_free(empty);
    wr_schema_free(s);
    msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------------------------------ */
/* malformed input                                                                      */
/* ------------------------------------------------------------------------------------ */

/* Unpacks sb and decodes; expects failure with a message containing `want`. */
static void
expect_decode_error(msgpack_sbuffer *sb, const char *want)
{
    msgpack_unpacked up;
    ipc_msg_t m;
    wr_err_t err;
    int rc;
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb->data, sb->size, NULL), MSGPACK_UNPACK_SUCCESS);
    memset(&m, 0xab, sizeof(m)); /* decode must zero it */
    wr_err_clear(&err);
    rc = ipc_decode(&up.data, &m, &err);
    CHECK_INT_EQ(rc, WR_EPROTO);
    CHECK_CONTAINS(err.msg, want);
    CHECK_INT_EQ(m.type, 0);
    CHECK(m.u.status_reply.pipeline == NULL && m.u.status_reply.tables == NULL);
    msgpack_unpacked_destroy(&up);
    sb->size = 0;
}

static void
pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void
test_decode_bad_envelope(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    msgpack_pack_int(&pk, 5);
    expect_decode_error(&sb, "invalid message: must be an array, got integer");

    msgpack_pack_map(&pk, 0);
    expect_decode_error(&sb, "must be an array, got map");

    msgpack_pack_array(&pk, 0);
    expect_decode_error(&sb, "invalid message: empty array");

    msgpack_pack_array(&pk, 1);
    msgpack_pack_int(&pk, 1);
    expect_decode_error(&sb, "invalid message: element 0 (type) must be a string, got integer");

    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, "stop", 4);
    expect_decode_error(&sb, "element 0 (type) must be a string, got binary");

    msgpack_pack_array(&pk, 1);
    pack_str(&pk, "launch_missiles");
    expect_decode_error(&sb, "invalid message: unknown type \"launch_missiles\"");

    msgpack_pack_array(&pk, 1);
    pack_str(&pk, "sto");
    expect_decode_error(&sb, "unknown type \"sto\"");

    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "stop\0", 5);
    expect_decode_error(&sb, "unknown type \"stop?\"");

    msgpack_sbuffer_destroy(&sb);
}

static void
test_decode_wrong_arity(void)
{
    static const struct {
        const char *type;
        uint32_t arity;
    } types[] = {
        {"hello", 5},         {"welcome", 3},
        {"tables", 2},        {"table_state", 5},
        {"set_phase", 8},     {"ack", 4},
        {"schema", 5},        {"progress", 4},
        {"copy_progress", 3}, {"stop", 1},
        {"error", 2},         {"status", 1},
        {"status_reply", 10}, {"ok", 2},
        {"retry", 2},         {"resync", 2},
        {"pause", 1},         {"resume", 1},
        {"reload", 1},        {"table_removed", 2},
        {"dest_wait", 2},     {"worker_error", 4},
        {"table_ack", 4},     {"copy_plan", 6},
        {"copy_plan_get", 3}, {"copy_range_done", 5},
    };
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t i;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char want[96];
        uint32_t j, bad[2] = {types[i].arity - 1, types[i].arity + 1};
        int k;
        for (k = 0; k < 2; k++) {
            if (bad[k] == 0)
                continue;
            if (strcmp(types[i].type, "status_reply") == 0 && bad[k] == 9)
                continue; /* the layout without "message": accepted, see below */
            if ((strcmp(types[i].type, "tables") == 0 || strcmp(types[i].type, "status") == 0 ||
                 strcmp(types[i].type, "status_reply") == 0) &&
                bad[k] == types[i].arity + 1)
                continue; /* (issue 11) an optional last element: test_optional_elements */
            if (strcmp(types[i].type, "table_state") == 0 && bad[k] == 4)
                continue; /* without dest_name: accepted (test_tables_without_dest_name) */
            msgpack_pack_array(&pk, bad[k]);
            pack_str(&pk, types[i].type);
            for (j = 1; j < bad[k]; j++)
                msgpack_pack_uint32(&pk, 1);
            snprintf(want, sizeof(want), "invalid \"%s\" message: expected %u elements, got %u",
                     types[i].type, types[i].arity, bad[k]);
            expect_decode_error(&sb, want);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

static void
test_decode_wrong_element(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char *big;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* the example from the brief */
    msgpack_pack_array(&pk, 8);
    pack_str(&pk, "set_phase");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 16384);
    msgpack_pack_uint32(&pk, 3);
    msgpack_pack_uint64(&pk, 0);
    pack_str(&pk, "");
    pack_str(&pk, "");
    pack_str(&pk, "");
    expect_decode_error(
        &sb, "invalid \"set_phase\" message: element 3 (phase) must be a string, got integer");

    /* unknown phase name */
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "table_state");
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "sleeping");
    msgpack_pack_uint64(&pk, 0);
    expect_decode_error(&sb, "element 2 (phase) must be a phase name, got \"sleeping\"");

    /* relid does not fit in 32 bits */
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "table_state");
    msgpack_pack_uint64(&pk, 4294967296ull);
    pack_str(&pk, "ready");
    msgpack_pack_uint64(&pk, 0);
    expect_decode_error(&sb, "element 1 (relid) must fit in 32 bits, got 4294967296");

    /* version does not fit in 32 bits */
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "welcome");
    msgpack_pack_uint64(&pk, 1ull << 40);
    pack_str(&pk, "p");
    expect_decode_error(&sb,
                        "invalid \"welcome\" message: element 1 (version) must fit in 32 bits");

    /* a negative LSN */
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "progress");
    msgpack_pack_int64(&pk, -1);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    expect_decode_error(&sb,
                        "element 1 (flush_lsn) must be an unsigned integer, got negative integer");

    /* ok must be a boolean, not 1 */
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "ack");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "");
    expect_decode_error(&sb,
                        "invalid \"ack\" message: element 2 (ok) must be a boolean, got integer");

    /* a pid accepts both integer kinds, not a float */
    msgpack_pack_array(&pk, 5);
    pack_str(&pk, "hello");
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "apply");
    msgpack_pack_double(&pk, 1.5);
    msgpack_pack_uint32(&pk, 0);
    expect_decode_error(&sb, "element 3 (pid) must be an integer, got float");

    msgpack_pack_array(&pk, 5);
    pack_str(&pk, "hello");
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "janitor");
    msgpack_pack_int(&pk, 1);
    msgpack_pack_uint32(&pk, 0);
    expect_decode_error(&sb, "element 2 (role) must be \"apply\" or \"sync\", got \"janitor\"");

    /* a nil where a string is expected */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "error");
    msgpack_pack_nil(&pk);
    expect_decode_error(&sb,
                        "invalid \"error\" message: element 1 (message) must be a string, got nil");

    /* an embedded NUL */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "ok");
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
    expect_decode_error(&sb, "element 1 (message) must not contain a NUL byte");

    /* oversized string */
    big = calloc(1, IPC_MAX_STR + 1);
    memset(big, 'x', IPC_MAX_STR + 1);
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "error");
    msgpack_pack_str_with_body(&pk, big, IPC_MAX_STR + 1);
    expect_decode_error(&sb, "element 1 (message) must be at most 65536 bytes, got 65537");
    free(big);

    /* a bad item inside the tables list, after a good one: the good one is freed */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "public");
    pack_str(&pk, "a");
    pack_str(&pk, "ready");
    msgpack_pack_uint64(&pk, 5);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint32(&pk, 2);
    pack_str(&pk, "public");
    msgpack_pack_int(&pk, 9);
    pack_str(&pk, "ready");
    msgpack_pack_uint64(&pk, 5);
    expect_decode_error(&sb, "invalid \"tables\" message: element 1 (tables) item 1 element 2 "
                             "(name) must be a string, got integer");

    /* an item of the wrong size */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 10); /* a status row in a tables message */
    {
        int i;
        for (i = 0; i < 10; i++)
            msgpack_pack_uint32(&pk, 1);
    }
    expect_decode_error(&sb, "element 1 (tables) item 0 must have 6 elements, got 10");

    /* too many items */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, IPC_MAX_ITEMS + 1);
    {
        uint32_t i;
        for (i = 0; i < IPC_MAX_ITEMS + 1; i++)
            msgpack_pack_nil(&pk);
    }
    expect_decode_error(&sb, "element 1 (tables) must have at most 100000 items, got 100001");

    /* schema nested errors name the path */
    msgpack_pack_array(&pk, 5);
    pack_str(&pk, "schema");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 2);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "public");
    pack_str(&pk, "t");
    pack_str(&pk, "d");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "c");
    msgpack_pack_int64(&pk, -23);
    msgpack_pack_int32(&pk, -1);
    msgpack_pack_uint32(&pk, 0);
    expect_decode_error(&sb, "invalid \"schema\" message: element 4 (schema) element 3 (columns) "
                             "item 0 element 1 (oid) must be an unsigned integer");

    msgpack_pack_array(&pk, 5);
    pack_str(&pk, "schema");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 2);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "public");
    pack_str(&pk, "t");
    pack_str(&pk, "d");
    expect_decode_error(&sb, "element 4 (schema) must have 4 elements, got 3");

    /* status_reply worker row */
    msgpack_pack_array(&pk, 9);
    pack_str(&pk, "status_reply");
    pack_str(&pk, "p");
    pack_str(&pk, "running");
    msgpack_pack_int(&pk, 1);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5);
    pack_str(&pk, "apply");
    msgpack_pack_uint32(&pk, 0);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_uint64(&pk, 1ull << 33);
    pack_str(&pk, "running");
    msgpack_pack_array(&pk, 0);
    expect_decode_error(&sb, "element 7 (workers) item 0 element 3 (restarts) must fit in 32 bits");

    msgpack_sbuffer_destroy(&sb);
}

static void
test_reader_truncated(void)
{
    ipc_msg_t m, want;
    ipc_reader_t r;
    msgpack_sbuffer sb;
    wr_err_t err;
    size_t cut;

    memset(&want, 0, sizeof(want));
    want.type = IPC_WELCOME;
    want.u.welcome.version = 1;
    want.u.welcome.pipeline = "pipeline-with-a-name";
    msgpack_sbuffer_init(&sb);
    CHECK_INT_EQ(ipc_encode(&want, &sb), 0);
    for (cut = 1; cut < sb.size; cut += 5) {
        CHECK_INT_EQ(ipc_reader_init(&r), 0);
        CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, cut, &err), 0);
        CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 0); /* needs more */
        CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 0); /* still */
        CHECK_INT_EQ(ipc_reader_feed(&r, sb.data + cut, sb.size - cut, &err), 0);
        CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 1);
        check_msg_eq(&want, &m);
        ipc_msg_clear(&m);
        CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 0);
        CHECK(!r.broken);
        ipc_reader_close(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}

static void
test_reader_invalid_message_continues(void)
{
    /* a well-framed but invalid message is skipped; the next one is read */
    ipc_msg_t m, stop;
    ipc_reader_t r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    wr_err_t err;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "nonsense");
    msgpack_pack_nil(&pk);
    memset(&stop, 0, sizeof(stop));
    stop.type = IPC_STOP;
    CHECK_INT_EQ(ipc_encode(&stop, &sb), 0);

    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, sb.size, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "unknown type \"nonsense\"");
    CHECK_INT_EQ(m.type, 0);
    CHECK(!r.broken);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 1);
    CHECK_INT_EQ(m.type, IPC_STOP);
    ipc_msg_clear(&m);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 0);
    ipc_reader_close(&r);
    ipc_reader_close(&r); /* a second close is harmless */
    msgpack_sbuffer_destroy(&sb);
}

static void
test_reader_garbage(void)
{
    static const char garbage[] = {(char)0xc1, 'x', 'y'};
    ipc_msg_t m, stop;
    ipc_reader_t r;
    msgpack_sbuffer sb;
    wr_err_t err;

    /* garbage alone */
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, garbage, sizeof(garbage), &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EINVAL);
    CHECK(r.broken);
    CHECK_CONTAINS(err.msg, "malformed msgpack");
    /* and it stays broken */
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EINVAL);
    CHECK(ipc_reader_feed(&r, "\x91", 1, &err) < 0);
    ipc_reader_close(&r);

    /* garbage after a good message: the good one is delivered first */
    memset(&stop, 0, sizeof(stop));
    stop.type = IPC_STOP;
    msgpack_sbuffer_init(&sb);
    CHECK_INT_EQ(ipc_encode(&stop, &sb), 0);
    msgpack_sbuffer_write(&sb, garbage, sizeof(garbage));
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, sb.size, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 1);
    CHECK_INT_EQ(m.type, IPC_STOP);
    ipc_msg_clear(&m);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EINVAL);
    CHECK(r.broken);
    ipc_reader_close(&r);

    /* garbage inside an array (0xc1 as the second element) */
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, "\x92\xa4stop\xc1", 7, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EINVAL);
    CHECK(r.broken);
    ipc_reader_close(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* Feeds buf in chunks, taking messages after each; returns the first error (or 0) and the
 * number of bytes fed when it came. */
static int
feed_chunked(ipc_reader_t *r, const char *buf, size_t len, size_t chunk, size_t *fed, wr_err_t *err)
{
    size_t off = 0;
    ipc_msg_t m;
    int rc;
    while (off < len) {
        size_t c = len - off < chunk ? len - off : chunk;
        if ((rc = ipc_reader_feed(r, buf + off, c, err)) != 0)
            break;
        off += c;
        while ((rc = ipc_reader_next(r, &m, err)) == 1)
            ipc_msg_clear(&m);
        if (rc != 0)
            break;
    }
    *fed = off;
    return rc;
}

static void
test_reader_oversized(void)
{
    size_t chunk = 64 * 1024, fed = 0;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    ipc_reader_t r;
    ipc_msg_t m, stop;
    wr_err_t err;
    uint32_t i;
    char *body = calloc(1, IPC_MAX_MSG + 256 * 1024);
    char name[64];

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* ["error", <str of IPC_MAX_MSG + 256 KiB>]: its header alone is refused */
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "error");
    msgpack_pack_str_with_body(&pk, body, IPC_MAX_MSG + 256 * 1024);
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(feed_chunked(&r, sb.data, sb.size, chunk, &fed, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "more than the message limit");
    CHECK(r.broken);
    CHECK_U64_EQ(fed, chunk); /* at the first chunk */
    ipc_reader_close(&r);

    /* a tables message of 100000 rows (~10 MB) made of small parts, fed as a socket would:
     * refused once the incomplete message passes the limit */
    sb.size = 0;
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, IPC_MAX_ITEMS);
    for (i = 0; i < IPC_MAX_ITEMS; i++) {
        msgpack_pack_array(&pk, 5);
        msgpack_pack_uint32(&pk, i);
        pack_str(&pk, name);
        pack_str(&pk, name);
        pack_str(&pk, "ready");
        msgpack_pack_uint64(&pk, 0);
    }
    CHECK(sb.size > IPC_MAX_MSG + 2 * chunk);
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(feed_chunked(&r, sb.data, sb.size, chunk, &fed, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "exceeds the limit");
    CHECK(r.broken);
    CHECK(fed > IPC_MAX_MSG);
    CHECK(fed <= IPC_MAX_MSG + chunk); /* refused before the whole message was buffered */
    ipc_reader_close(&r);

    /* the same message fed at once is well framed: refused, and the stream goes on */
    memset(&stop, 0, sizeof(stop));
    stop.type = IPC_STOP;
    CHECK_INT_EQ(ipc_encode(&stop, &sb), 0);
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, sb.size, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "exceeds the limit");
    CHECK_INT_EQ(m.type, 0);
    CHECK(!r.broken);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 1);
    CHECK_INT_EQ(m.type, IPC_STOP);
    ipc_msg_clear(&m);
    ipc_reader_close(&r);

    /* the encoder will not produce an oversized message */
    sb.size = 0;
    memset(&m, 0, sizeof(m));
    m.type = IPC_STATUS_REPLY;
    {
        ipc_table_info_t *t = calloc(IPC_MAX_ITEMS, sizeof(*t));
        for (i = 0; i < IPC_MAX_ITEMS; i++) {
            t[i].nsp = name;
            t[i].name = name;
        }
        m.u.status_reply.ntables = IPC_MAX_ITEMS;
        m.u.status_reply.tables = t;
        CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL); /* ~13 MB > IPC_MAX_MSG */
        CHECK_INT_EQ(sb.size, 0);
        m.u.status_reply.ntables = IPC_MAX_ITEMS + 1;
        CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
        free(t);
    }
    free(body);
    msgpack_sbuffer_destroy(&sb);
}

static void
test_reader_huge_declared_sizes(void)
{
    /* headers that declare more than any valid message can hold are refused before the
     * unpacker sees them (it would allocate for the declared size at once) */
    static const struct {
        const char *bytes;
        size_t len;
        const char *want;
    } cases[] = {
#define B(lit) lit, sizeof(lit) - 1
        {B("\xdd\xff\xff\xff\xff"), "an array of 4294967295 items"},
        {B("\x92\xa6tables\xdd\x00\x01\x86\xa1"), "an array of 100001 items"},
        {B("\xdf\x10\x00\x00\x00"), "a map of 268435456 items"},
        {B("\x92\xa5"
           "error"
           "\xc6\x7f\xff\xff\xff"),
         "a string of 2147483647 bytes"},
        {B("\x92\xa5"
           "error"
           "\xc9\x01\x00\x00\x00\x01"),
         "a string of 16777216 bytes"},
#undef B
    };
    ipc_msg_t m, stop;
    ipc_reader_t r;
    msgpack_sbuffer sb;
    wr_err_t err;
    size_t i, j;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* at once */
        CHECK_INT_EQ(ipc_reader_init(&r), 0);
        CHECK_INT_EQ(ipc_reader_feed(&r, cases[i].bytes, cases[i].len, &err), 0);
        CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EPROTO);
        CHECK_CONTAINS(err.msg, cases[i].want);
        CHECK(r.broken);
        CHECK(ipc_reader_feed(&r, "\xc0", 1, &err) < 0);
        ipc_reader_close(&r);
        /* byte by byte: the header is split across feeds */
        CHECK_INT_EQ(ipc_reader_init(&r), 0);
        for (j = 0; j < cases[i].len; j++) {
            int rc;
            CHECK_INT_EQ(ipc_reader_feed(&r, cases[i].bytes + j, 1, &err), 0);
            rc = ipc_reader_next(&r, &m, &err);
            CHECK_INT_EQ(rc, j + 1 < cases[i].len ? 0 : WR_EPROTO);
        }
        CHECK(r.broken);
        CHECK_CONTAINS(err.msg, cases[i].want);
        ipc_reader_close(&r);
    }

    /* a good message before the bad header in the same feed is still delivered */
    memset(&stop, 0, sizeof(stop));
    stop.type = IPC_STOP;
    msgpack_sbuffer_init(&sb);
    CHECK_INT_EQ(ipc_encode(&stop, &sb), 0);
    msgpack_sbuffer_write(&sb, cases[0].bytes, cases[0].len);
    CHECK_INT_EQ(ipc_encode(&stop, &sb), 0);
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, sb.size, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), 1);
    CHECK_INT_EQ(m.type, IPC_STOP);
    ipc_msg_clear(&m);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EPROTO);
    CHECK(r.broken);
    ipc_reader_close(&r);

    /* sizes at the limits are fine: an array of IPC_MAX_ITEMS is read (and its items are
     * checked by the decoder) */
    sb.size = 0;
    {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 2);
        pack_str(&pk, "tables");
        msgpack_pack_array(&pk, IPC_MAX_ITEMS);
        for (i = 0; i < IPC_MAX_ITEMS; i++)
            msgpack_pack_nil(&pk);
    }
    CHECK_INT_EQ(ipc_reader_init(&r), 0);
    CHECK_INT_EQ(ipc_reader_feed(&r, sb.data, sb.size, &err), 0);
    CHECK_INT_EQ(ipc_reader_next(&r, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "element 1 (tables) item 0 must be an array, got nil");
    CHECK(!r.broken);
    ipc_reader_close(&r);
    msgpack_sbuffer_destroy(&sb);
}

/* A status_reply of the first layout (9 elements, no message) still decodes. */
static void
test_status_reply_without_message(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
    ipc_msg_t m;
    wr_err_t err;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 9);
    pack_str(&pk, "status_reply");
    pack_str(&pk, "main");
    pack_str(&pk, "running");
    msgpack_pack_int64(&pk, 42);
    msgpack_pack_uint64(&pk, 16);
    msgpack_pack_uint64(&pk, 32);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_decode(&up.data, &m, &err), 0);
    CHECK_INT_EQ(m.type, IPC_STATUS_REPLY);
    CHECK_STR_EQ(m.u.status_reply.state, "running");
    CHECK_INT_EQ(m.u.status_reply.pid, 42);
    CHECK_STR_EQ(m.u.status_reply.message, "");
    ipc_msg_clear(&m);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

/* (issue 11) The optional last elements: sent only when they say something (a short list,
 * the first page, the last page have the layout they always had), and checked. */
static void
test_optional_elements(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
    ipc_msg_t m;

    msgpack_sbuffer_init(&sb);
    memset(&m, 0, sizeof(m));
    m.type = IPC_TABLES;
    CHECK_INT_EQ(ipc_encode(&m, &sb), 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(up.data.via.array.size, 2);
    msgpack_sbuffer_clear(&sb);
    m.type = IPC_STATUS;
    CHECK_INT_EQ(ipc_encode(&m, &sb), 0);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(up.data.via.array.size, 1);
    msgpack_sbuffer_clear(&sb);

    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, 0);
    msgpack_pack_uint32(&pk, 1);
    expect_decode_error(&sb, "invalid \"tables\" message: element 2 (more) must be a boolean, "
                             "got integer");
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "status");
    pack_str(&pk, "16384");
    expect_decode_error(&sb, "invalid \"status\" message: element 1 (after_relid) must be an "
                             "unsigned integer, got string");
    msgpack_pack_array(&pk, 12);
    pack_str(&pk, "status_reply");
    for (int i = 1; i < 12; i++)
        msgpack_pack_uint32(&pk, 1);
    expect_decode_error(&sb, "invalid \"status_reply\" message: expected 10 elements, got 12");
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

/* (issue 11) copy_plan: a range of the wrong size, a done that is not a boolean, too many
 * ranges; and the encoder refuses what the decoder would. */
static void
test_copy_plan_bad(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    ipc_msg_t m;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 6);
    pack_str(&pk, "copy_plan");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 16384);
    msgpack_pack_uint64(&pk, 5);
    pack_str(&pk, "snap");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 4);
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint32(&pk, 1);
    expect_decode_error(&sb, "invalid \"copy_plan\" message: element 5 (ranges) item 0 must "
                             "have 5 elements, got 4");
    msgpack_pack_array(&pk, 6);
    pack_str(&pk, "copy_plan");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 16384);
    msgpack_pack_uint64(&pk, 5);
    pack_str(&pk, "snap");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5);
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 1);
    expect_decode_error(&sb, "element 5 (ranges) item 0 element 4 (done) must be a boolean");
    msgpack_pack_array(&pk, 6);
    pack_str(&pk, "copy_plan");
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_uint32(&pk, 16384);
    msgpack_pack_uint64(&pk, 5);
    pack_str(&pk, "snap");
    msgpack_pack_array(&pk, IPC_MAX_COPY_RANGES + 1);
    for (int i = 0; i < IPC_MAX_COPY_RANGES + 1; i++)
        msgpack_pack_nil(&pk);
    expect_decode_error(&sb, "element 5 (ranges) must have at most 4096 items, got 4097");
    memset(&m, 0, sizeof(m));
    m.type = IPC_COPY_PLAN;
    m.u.copy_plan.snapshot = "";
    m.u.copy_plan.n = IPC_MAX_COPY_RANGES + 1;
    m.u.copy_plan.ranges = sample_ranges;
    msgpack_sbuffer_clear(&sb);
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    CHECK_INT_EQ(sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
}

/* issue 12, defect 10: a publication so large that one "tables" message would break
 * IPC_MAX_MSG (30,000 tables with long names: about 12 MB) is sent in chunks and read
 * back whole, in order. */
static void
test_tables_in_chunks(void)
{
    enum { N = 30000 };
    ipc_table_info_t *t = calloc(N, sizeof(*t));
    char *names = malloc((size_t)N * 200);
    msgpack_sbuffer sb;
    ipc_msg_t one, got[40];
    int n, i;
    uint32_t seen = 0;
    bool order = true;

    CHECK(t != NULL && names != NULL);
    if (!t || !names) {
        free(t);
        free(names);
        return;
    }
    for (i = 0; i < N; i++) {
        char *nm = names + (size_t)i * 200;
        snprintf(nm, 200, "a_rather_long_table_name_of_a_large_publication_number_%06d_%s", i,
                 "padding_padding_padding_padding_padding_padding_padding_padding");
        t[i].relid = 16384 + (uint32_t)i;
        t[i].nsp = "a_schema_with_a_long_name_as_some_applications_have";
        t[i].name = nm;
        t[i].phase = PH_READY;
        t[i].lsn = 0x1000 + (uint64_t)i;
        t[i].dest_name = nm;
    }
    /* one message cannot carry it */
    msgpack_sbuffer_init(&sb);
    memset(&one, 0, sizeof(one));
    one.type = IPC_TABLES;
    one.u.tables.n = N;
    one.u.tables.tables = t;
    CHECK_INT_EQ(ipc_encode(&one, &sb), WR_EINVAL);
    CHECK_U64_EQ(sb.size, 0);
    /* in chunks it goes, each under the limit */
    CHECK_INT_EQ(ipc_encode_tables(t, N, &sb), 0);
    n = read_all(sb.data, sb.size, 0, got, 40);
    CHECK_INT_EQ(n, (N + IPC_TABLES_CHUNK - 1) / IPC_TABLES_CHUNK);
    for (i = 0; i < n; i++) {
        CHECK_INT_EQ(got[i].type, IPC_TABLES);
        CHECK_INT_EQ(got[i].u.tables.more, i < n - 1);
        for (uint32_t j = 0; j < got[i].u.tables.n; j++, seen++)
            order = order && got[i].u.tables.tables[j].relid == 16384 + seen &&
                    strcmp(got[i].u.tables.tables[j].dest_name, t[seen].name) == 0;
        ipc_msg_clear(&got[i]);
    }
    CHECK_INT_EQ(seen, N);
    CHECK(order);
    /* an empty list is one message, without "more" */
    sb.size = 0;
    CHECK_INT_EQ(ipc_encode_tables(t, 0, &sb), 0);
    n = read_all(sb.data, sb.size, 0, got, 40);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        CHECK_INT_EQ(got[0].u.tables.n, 0);
        CHECK(!got[0].u.tables.more);
        ipc_msg_clear(&got[0]);
    }
    msgpack_sbuffer_destroy(&sb);
    free(names);
    free(t);
}

/* issue 12: a "tables" item of 5 elements and a "table_state" of 4 (without dest_name, as
 * sent before it was added) still decode, with no destination name. */
static void
test_tables_without_dest_name(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
    ipc_msg_t m;
    wr_err_t err;
    size_t off = 0;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "tables");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, 16384);
    pack_str(&pk, "public");
    pack_str(&pk, "t");
    pack_str(&pk, "ready");
    msgpack_pack_uint64(&pk, 7);
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "table_state");
    msgpack_pack_uint64(&pk, 16384);
    pack_str(&pk, "init");
    msgpack_pack_uint64(&pk, 0);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_decode(&up.data, &m, &err), 0);
    CHECK_INT_EQ(m.type, IPC_TABLES);
    CHECK_INT_EQ(m.u.tables.n, 1);
    if (m.u.tables.n == 1) {
        CHECK_STR_EQ(m.u.tables.tables[0].name, "t");
        CHECK(m.u.tables.tables[0].dest_name == NULL);
    }
    ipc_msg_clear(&m);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_decode(&up.data, &m, &err), 0);
    CHECK_INT_EQ(m.type, IPC_TABLE_STATE);
    CHECK_INT_EQ(m.u.table_state.phase, PH_INIT);
    CHECK(m.u.table_state.dest_name == NULL);
    ipc_msg_clear(&m);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

/* The control commands and table_removed refuse wrong element types. */
static void
test_decode_commands_bad(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "retry");
    msgpack_pack_uint32(&pk, 16384);
    expect_decode_error(&sb, "invalid \"retry\" message: element 1 (table) must be a string, "
                             "got integer");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "resync");
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
    expect_decode_error(&sb, "invalid \"resync\" message: element 1 (table) must not contain a "
                             "NUL byte");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "table_removed");
    pack_str(&pk, "16384");
    expect_decode_error(&sb, "invalid \"table_removed\" message: element 1 (relid) must be an "
                             "unsigned integer, got string");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "table_removed");
    msgpack_pack_uint64(&pk, 1ull << 32);
    expect_decode_error(&sb, "element 1 (relid) must fit in 32 bits, got 4294967296");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "pause");
    pack_str(&pk, "now");
    expect_decode_error(&sb, "invalid \"pause\" message: expected 1 elements, got 2");

    msgpack_pack_array(&pk, 10);
    pack_str(&pk, "status_reply");
    pack_str(&pk, "main");
    pack_str(&pk, "running");
    msgpack_pack_int64(&pk, 42);
    msgpack_pack_uint64(&pk, 16);
    msgpack_pack_uint64(&pk, 32);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_nil(&pk);
    expect_decode_error(&sb, "invalid \"status_reply\" message: element 9 (message) must be a "
                             "string, got nil");
    msgpack_sbuffer_destroy(&sb);
}

/* Packs a worker_metrics message with n_elems elements (12 is right); hist_len counts in
 * the batch histogram, ts as last_commit_ts; ev is packed as the events element. */
static void
pack_worker_metrics(msgpack_packer *pk, uint32_t n_elems, uint32_t hist_len, int64_t ts,
                    void (*events)(msgpack_packer *))
{
    msgpack_pack_array(pk, n_elems);
    pack_str(pk, "worker_metrics");
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint64(pk, 1);
    if (events)
        events(pk);
    else
        msgpack_pack_array(pk, 0);
    msgpack_pack_array(pk, hist_len);
    for (uint32_t i = 0; i < hist_len; i++)
        msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_array(pk, IPC_HIST_NCOUNTS);
    for (uint32_t i = 0; i < IPC_HIST_NCOUNTS; i++)
        msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_int64(pk, ts);
    if (n_elems > 11)
        msgpack_pack_true(pk);
}

static void
events_short_item(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 4); /* [relid, inserts, updates, deletes]: truncates missing */
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint64(pk, 1);
}

static void
events_negative(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, 5);
    for (int i = 0; i < 5; i++)
        msgpack_pack_uint64(pk, 1);
    msgpack_pack_array(pk, 5);
    msgpack_pack_uint64(pk, 16384);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_int64(pk, -1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, 1);
}

static void
events_big_relid(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 5);
    msgpack_pack_uint64(pk, 1ull << 32);
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint64(pk, 1);
}

static void
test_metrics_messages_bad(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked up;
    ipc_msg_t m;
    wr_err_t err;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* the helper's well-formed message decodes */
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS, 5, NULL);
    msgpack_unpacked_init(&up);
    CHECK_INT_EQ(msgpack_unpack_next(&up, sb.data, sb.size, NULL), MSGPACK_UNPACK_SUCCESS);
    CHECK_INT_EQ(ipc_decode(&up.data, &m, &err), 0);
    CHECK_INT_EQ(m.type, IPC_WORKER_METRICS);
    CHECK_U64_EQ(m.u.worker_metrics.transactions, 1);
    CHECK_INT_EQ(m.u.worker_metrics.last_commit_ts, 5);
    CHECK(m.u.worker_metrics.caught_up);
    ipc_msg_clear(&m);
    msgpack_unpacked_destroy(&up);
    sb.size = 0;

    pack_worker_metrics(&pk, 11, IPC_HIST_NCOUNTS, 0, NULL);
    expect_decode_error(&sb, "invalid \"worker_metrics\" message: expected 12 elements, got 11");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS - 1, 0, NULL);
    expect_decode_error(&sb, "invalid \"worker_metrics\" message: element 6 (batch_hist) must "
                             "have 13 counts, got 12");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS + 1, 0, NULL);
    expect_decode_error(&sb, "element 6 (batch_hist) must have at most 13 items, got 14");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS, -7, NULL);
    expect_decode_error(&sb, "element 10 (last_commit_ts) must not be negative, got -7");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS, 0, events_short_item);
    expect_decode_error(&sb, "element 5 (events) item 0 must have 5 elements, got 4");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS, 0, events_negative);
    expect_decode_error(&sb, "element 5 (events) item 1 element 2 (updates) must be an "
                             "unsigned integer, got negative integer");
    pack_worker_metrics(&pk, 12, IPC_HIST_NCOUNTS, 0, events_big_relid);
    expect_decode_error(&sb, "item 0 element 0 (relid) must fit in 32 bits");

    /* a histogram count that is not a number */
    msgpack_pack_array(&pk, 12);
    pack_str(&pk, "worker_metrics");
    for (int i = 0; i < 4; i++)
        msgpack_pack_uint64(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, IPC_HIST_NCOUNTS);
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++)
        if (i == 4)
            pack_str(&pk, "x");
        else
            msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_array(&pk, IPC_HIST_NCOUNTS);
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++)
        msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_false(&pk);
    expect_decode_error(&sb, "element 6 (batch_hist) element 4 (count) must be an unsigned "
                             "integer, got string");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "streaming");
    msgpack_pack_int64(&pk, -1);
    expect_decode_error(&sb, "invalid \"streaming\" message: element 1 (start_lsn) must be an "
                             "unsigned integer, got negative integer");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "metrics");
    pack_str(&pk, "all");
    expect_decode_error(&sb, "invalid \"metrics\" message: expected 1 elements, got 2");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "metrics_text");
    msgpack_pack_bin_with_body(&pk, "x", 1);
    expect_decode_error(&sb, "invalid \"metrics_text\" message: element 1 (text) must be a "
                             "string, got binary");

    msgpack_pack_array(&pk, 2);
    pack_str(&pk, "metrics_text");
    msgpack_pack_str_with_body(&pk, "a\0b", 3);
    expect_decode_error(&sb, "element 1 (text) must not contain a NUL byte");
    msgpack_sbuffer_destroy(&sb);
}

/* metrics_text may pass IPC_MAX_STR (other strings may not), up to IPC_MAX_TEXT. */
static void
test_metrics_text_long(void)
{
    msgpack_sbuffer sb;
    ipc_msg_t m, got;
    size_t big = IPC_MAX_STR * 4;
    char *text = malloc(IPC_MAX_TEXT + 2);

    CHECK(text != NULL);
    if (!text)
        return;
    msgpack_sbuffer_init(&sb);
    memset(text, 'm', big);
    text[big] = '\0';
    memset(&m, 0, sizeof(m));
    m.type = IPC_METRICS_TEXT;
    m.u.metrics_text.text = text;
    CHECK_INT_EQ(ipc_encode(&m, &sb), 0);
    CHECK_INT_EQ(read_all(sb.data, sb.size, 1000, &got, 1), 1);
    CHECK_INT_EQ(got.type, IPC_METRICS_TEXT);
    CHECK_INT_EQ(strlen(got.u.metrics_text.text), big);
    ipc_msg_clear(&got);

    /* over the limit: not written */
    sb.size = 0;
    memset(text, 'm', IPC_MAX_TEXT + 1);
    text[IPC_MAX_TEXT + 1] = '\0';
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    CHECK_INT_EQ(sb.size, 0);
    /* the same string in an error message is refused too (64 KiB limit) */
    text[IPC_MAX_STR + 1] = '\0';
    m.type = IPC_ERROR;
    m.u.error.message = text;
    CHECK_INT_EQ(ipc_encode(&m, &sb), WR_EINVAL);
    free(text);
    msgpack_sbuffer_destroy(&sb);
}

int
main(void)
{
    RUN(test_type_names);
    RUN(test_roundtrip_whole);
    RUN(test_roundtrip_byte_by_byte);
    RUN(test_roundtrip_concatenated);
    RUN(test_encode_rejects);
    RUN(test_schema_pack_unpack);
    RUN(test_decode_bad_envelope);
    RUN(test_decode_wrong_arity);
    RUN(test_decode_wrong_element);
    RUN(test_reader_truncated);
    RUN(test_reader_invalid_message_continues);
    RUN(test_reader_garbage);
    RUN(test_reader_oversized);
    RUN(test_reader_huge_declared_sizes);
    RUN(test_status_reply_without_message);
    RUN(test_tables_without_dest_name);
    RUN(test_tables_in_chunks);
    RUN(test_decode_commands_bad);
    RUN(test_optional_elements);
    RUN(test_copy_plan_bad);
    RUN(test_metrics_messages_bad);
    RUN(test_metrics_text_long);
    return unit_done();
}
