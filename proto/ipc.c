/*
 * ipc.c - writers and validating readers of the msgpack messages between the supervisor,
 * the workers and the CLI (layouts in ipc.h), and the stream reader that frames them.
 *
 * NOTES: linked into every process (supervisor, walrelay-apply, walrelay-sync, the CLI).
 * Persists nothing. The encoder refuses to write what the decoder would refuse (strings
 * over IPC_MAX_STR, lists over IPC_MAX_ITEMS, invalid phases, messages over IPC_MAX_MSG),
 * so a peer never receives a message we produced and it must reject.
 * Wire details that ipc.h leaves open:
 *   - LSNs, counts, relids, versions, req ids: msgpack unsigned integers; pids: signed.
 *   - phases: their phase_name() strings; ok: a msgpack boolean.
 *   - status_reply: ["status_reply", pipeline, state, pid, flush_lsn, received_lsn, events,
 *       [[role, relid, pid, restarts, state]...],
 *       [[relid, nsp, name, phase, lsn, rows_copied, attempts, err_kind, err_msg,
 *         err_hint]...], message]; a reply without the final message (9 elements, the
 *       layout before it was added) is accepted and decodes with message "".
 *   - retry, resync: ["retry", table] with table "nsp.name" or "name";
 *     table_removed: ["table_removed", relid].
 *   - copy_plan ranges: [leaf, first_page, end_page, rows, done], done a boolean.
 *   - worker_metrics: counts are unsigned; events items are [relid, inserts, updates,
 *     deletes, truncates]; a histogram is an array of exactly IPC_HIST_NCOUNTS unsigned
 *     counts; last_commit_ts is a non-negative integer; caught_up a boolean.
 *   - metrics_text: one string of at most IPC_MAX_TEXT bytes (the only string allowed
 *     past IPC_MAX_STR: the exposition of a pipeline with many tables is long).
 *   - schema: [nsp, name, replident, [[name, oid, typmod, flags]...]], replident a
 *     one-character string ("d", "n", "f", "i"), flags bit 0 (1) = is_key,
 *     bit 1 (2) = not_null.
 * A decoded message owns malloc'd copies of its strings and lists (the msgpack zone is
 * released right after decoding); ipc_msg_clear frees them.
 * Reader memory: an incomplete message may hold at most IPC_MAX_MSG bytes; callers take
 * every message with ipc_reader_next after each feed, so the buffer stays below
 * IPC_MAX_MSG plus one feed. msgpack-c allocates room for an array's or map's declared
 * size as soon as it reads the header, so fed bytes are first pre-scanned (header by
 * header, across feeds): a declared count over IPC_MAX_ITEMS or a string over IPC_MAX_MSG
 * stops the buffering there; the messages before it are still delivered, then
 * ipc_reader_next reports WR_EPROTO and the stream is broken.
 */
#include "ipc.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IPC_FLAG_KEY      1u
#define IPC_FLAG_NOT_NULL 2u

static const char *const ipc_type_names[] = {
    [IPC_HELLO] = "hello",
    [IPC_WELCOME] = "welcome",
    [IPC_TABLES] = "tables",
    [IPC_TABLE_STATE] = "table_state",
    [IPC_SET_PHASE] = "set_phase",
    [IPC_ACK] = "ack",
    [IPC_SCHEMA] = "schema",
    [IPC_PROGRESS] = "progress",
    [IPC_COPY_PROGRESS] = "copy_progress",
    [IPC_STOP] = "stop",
    [IPC_ERROR] = "error",
    [IPC_STATUS] = "status",
    [IPC_STATUS_REPLY] = "status_reply",
    [IPC_OK] = "ok",
    [IPC_RETRY] = "retry",
    [IPC_RESYNC] = "resync",
    [IPC_PAUSE] = "pause",
    [IPC_RESUME] = "resume",
    [IPC_RELOAD] = "reload",
    [IPC_TABLE_REMOVED] = "table_removed",
    [IPC_WORKER_METRICS] = "worker_metrics",
    [IPC_STREAMING] = "streaming",
    [IPC_METRICS] = "metrics",
    [IPC_METRICS_TEXT] = "metrics_text",
    [IPC_DEST_WAIT] = "dest_wait",
    [IPC_WORKER_ERROR] = "worker_error",
    [IPC_TABLE_ACK] = "table_ack",
    [IPC_COPY_PLAN] = "copy_plan",
    [IPC_COPY_PLAN_GET] = "copy_plan_get",
    [IPC_COPY_RANGE_DONE] = "copy_range_done",
};

/* Upper bounds of the histogram buckets: 1 ms .. 10 s. */
const uint64_t ipc_hist_bounds_us[IPC_HIST_NBOUNDS] = {
    1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

/* The highest type: ipc_type_valid and the decoder's name lookup stop there. */
#define IPC_LAST_TYPE IPC_COPY_RANGE_DONE

/* Number of array elements of each message, the type name included. */
static const uint32_t ipc_arity[] = {
    [IPC_HELLO] = 5,           [IPC_WELCOME] = 3,
    [IPC_TABLES] = 2,          [IPC_TABLE_STATE] = 5,
    [IPC_SET_PHASE] = 8,       [IPC_ACK] = 4,
    [IPC_SCHEMA] = 5,          [IPC_PROGRESS] = 4,
    [IPC_COPY_PROGRESS] = 3,   [IPC_STOP] = 1,
    [IPC_ERROR] = 2,           [IPC_STATUS] = 1,
    [IPC_STATUS_REPLY] = 10,   [IPC_OK] = 2,
    [IPC_RETRY] = 2,           [IPC_RESYNC] = 2,
    [IPC_PAUSE] = 1,           [IPC_RESUME] = 1,
    [IPC_RELOAD] = 1,          [IPC_TABLE_REMOVED] = 2,
    [IPC_WORKER_METRICS] = 12, [IPC_STREAMING] = 2,
    [IPC_METRICS] = 1,         [IPC_METRICS_TEXT] = 2,
    [IPC_DEST_WAIT] = 2,       [IPC_WORKER_ERROR] = 4,
    [IPC_TABLE_ACK] = 4,       [IPC_COPY_PLAN] = 6,
    [IPC_COPY_PLAN_GET] = 3,   [IPC_COPY_RANGE_DONE] = 5,
};
#define IPC_NRANGE_FIELDS 5 /* [leaf, first_page, end_page, rows, done] */
/* status_reply without its last element (message), as sent before it was added */
#define IPC_STATUS_REPLY_MIN_ARITY 9

#define IPC_NTABLE_FIELDS  6  /* [relid, nsp, name, phase, lsn, dest_name] */
#define IPC_NTABLE_MIN     5  /* ... without dest_name, as sent before it was added */
#define IPC_NSTATUS_FIELDS 10 /* ... + rows_copied, attempts, err_kind, err_msg, err_hint */
#define IPC_NWORKER_FIELDS 5
#define IPC_NSCHEMA_FIELDS 4
#define IPC_NEVENT_FIELDS  (1 + IPC_NOPS) /* [relid, inserts, updates, deletes, truncates] */
#define IPC_NCOLUMN_FIELDS 4

static bool
ipc_type_valid(int t)
{
    return t >= IPC_HELLO && t <= IPC_LAST_TYPE;
}

const char *
ipc_type_name(ipc_type_t t)
{
    if (!ipc_type_valid((int)t))
        return "unknown";
    return ipc_type_names[t];
}

/* ------------------------------------------------------------------------------------ */
/* Encoding                                                                             */
/* ------------------------------------------------------------------------------------ */

/* An encoder remembers the first failure so the writers can be chained without checks. */
typedef struct ipc_enc_s {
    msgpack_packer pk;
    int rc;
} ipc_enc_t;

static void
enc_pack_rc(ipc_enc_t *e, int pack_rc)
{
    if (pack_rc != 0 && e->rc == 0)
        e->rc = WR_ENOMEM;
}

static void
enc_array(ipc_enc_t *e, size_t n)
{
    if (e->rc)
        return;
    if (n > IPC_MAX_ITEMS) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_pack_rc(e, msgpack_pack_array(&e->pk, n));
}

static void
enc_str(ipc_enc_t *e, const char *s)
{
    size_t len;
    if (e->rc)
        return;
    if (!s)
        s = "";
    len = strlen(s);
    if (len > IPC_MAX_STR) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_pack_rc(e, msgpack_pack_str(&e->pk, len));
    if (e->rc == 0)
        enc_pack_rc(e, msgpack_pack_str_body(&e->pk, s, len));
}

/* The one long string (metrics_text): up to IPC_MAX_TEXT bytes. */
static void
enc_text(ipc_enc_t *e, const char *s)
{
    size_t len;
    if (e->rc)
        return;
    if (!s)
        s = "";
    len = strlen(s);
    if (len > IPC_MAX_TEXT) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_pack_rc(e, msgpack_pack_str(&e->pk, len));
    if (e->rc == 0)
        enc_pack_rc(e, msgpack_pack_str_body(&e->pk, s, len));
}

static void
enc_u64(ipc_enc_t *e, uint64_t v)
{
    if (e->rc == 0)
        enc_pack_rc(e, msgpack_pack_uint64(&e->pk, v));
}

static void
enc_i64(ipc_enc_t *e, int64_t v)
{
    if (e->rc == 0)
        enc_pack_rc(e, msgpack_pack_int64(&e->pk, v));
}

static void
enc_hist(ipc_enc_t *e, const ipc_hist_t *h)
{
    enc_array(e, IPC_HIST_NCOUNTS);
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++)
        enc_u64(e, h->counts[i]);
}

static void
enc_events(ipc_enc_t *e, uint32_t n, const ipc_event_count_t *ev)
{
    if (e->rc)
        return;
    if (n > 0 && !ev) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_array(e, n);
    for (uint32_t i = 0; i < n && e->rc == 0; i++) {
        enc_array(e, IPC_NEVENT_FIELDS);
        enc_u64(e, ev[i].relid);
        for (int k = 0; k < IPC_NOPS; k++)
            enc_u64(e, ev[i].n[k]);
    }
}

static void
enc_bool(ipc_enc_t *e, bool v)
{
    if (e->rc == 0)
        enc_pack_rc(e, v ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk));
}

static void
enc_phase(ipc_enc_t *e, wr_phase_t p)
{
    if (e->rc)
        return;
    if ((int)p < 0 || (int)p >= PH_COUNT) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_str(e, phase_name(p));
}

static void
enc_schema(ipc_enc_t *e, const wr_schema_t *s)
{
    char rid[2];
    uint16_t i;
    if (e->rc)
        return;
    if (!s || (s->ncols > 0 && !s->cols) || s->replident == '\0') {
        e->rc = WR_EINVAL;
        return;
    }
    rid[0] = s->replident;
    rid[1] = '\0';
    enc_array(e, IPC_NSCHEMA_FIELDS);
    enc_str(e, s->nsp);
    enc_str(e, s->name);
    enc_str(e, rid);
    enc_array(e, s->ncols);
    for (i = 0; i < s->ncols && e->rc == 0; i++) {
        const wr_column_t *c = &s->cols[i];
        uint64_t flags = (c->is_key ? IPC_FLAG_KEY : 0) | (c->not_null ? IPC_FLAG_NOT_NULL : 0);
        enc_array(e, IPC_NCOLUMN_FIELDS);
        enc_str(e, c->name);
        enc_u64(e, c->type_oid);
        enc_i64(e, c->typmod);
        enc_u64(e, flags);
    }
}

static void
enc_table(ipc_enc_t *e, const ipc_table_info_t *t, bool full)
{
    enc_array(e, full ? IPC_NSTATUS_FIELDS : IPC_NTABLE_FIELDS);
    enc_u64(e, t->relid);
    enc_str(e, t->nsp);
    enc_str(e, t->name);
    enc_phase(e, t->phase);
    enc_u64(e, t->lsn);
    if (!full) {
        enc_str(e, t->dest_name);
        return;
    }
    enc_u64(e, t->rows_copied);
    enc_u64(e, t->attempts);
    enc_str(e, t->err_kind);
    enc_str(e, t->err_msg);
    enc_str(e, t->err_hint);
}

static void
enc_tables(ipc_enc_t *e, uint32_t n, const ipc_table_info_t *tables, bool full)
{
    uint32_t i;
    if (e->rc)
        return;
    if (n > 0 && !tables) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_array(e, n);
    for (i = 0; i < n && e->rc == 0; i++)
        enc_table(e, &tables[i], full);
}

static void
enc_workers(ipc_enc_t *e, uint32_t n, const ipc_worker_info_t *w)
{
    uint32_t i;
    if (e->rc)
        return;
    if (n > 0 && !w) {
        e->rc = WR_EINVAL;
        return;
    }
    enc_array(e, n);
    for (i = 0; i < n && e->rc == 0; i++) {
        enc_array(e, IPC_NWORKER_FIELDS);
        enc_str(e, w[i].role);
        enc_u64(e, w[i].relid);
        enc_i64(e, w[i].pid);
        enc_u64(e, w[i].restarts);
        enc_str(e, w[i].state);
    }
}

int
ipc_encode(const ipc_msg_t *m, msgpack_sbuffer *sb)
{
    ipc_enc_t e;
    size_t start;

    if (!m || !sb || !ipc_type_valid((int)m->type))
        return WR_EINVAL;
    start = sb->size;
    memset(&e, 0, sizeof(e));
    msgpack_packer_init(&e.pk, sb, msgpack_sbuffer_write);

    /* (issue 11) optional last elements, sent only when they say something */
    if ((m->type == IPC_TABLES && m->u.tables.more) ||
        (m->type == IPC_STATUS_REPLY && m->u.status_reply.more) ||
        (m->type == IPC_STATUS && m->u.status.after != 0))
        enc_array(&e, ipc_arity[m->type] + 1);
    else
        enc_array(&e, ipc_arity[m->type]);
    enc_str(&e, ipc_type_names[m->type]);
    switch (m->type) {
    case IPC_HELLO:
        enc_u64(&e, m->u.hello.version);
        enc_str(&e, m->u.hello.role);
        enc_i64(&e, m->u.hello.pid);
        enc_u64(&e, m->u.hello.relid);
        break;
    case IPC_WELCOME:
        enc_u64(&e, m->u.welcome.version);
        enc_str(&e, m->u.welcome.pipeline);
        break;
    case IPC_TABLES:
        enc_tables(&e, m->u.tables.n, m->u.tables.tables, false);
        if (m->u.tables.more)
            enc_bool(&e, true);
        break;
    case IPC_TABLE_STATE:
    case IPC_TABLE_ACK:
        enc_u64(&e, m->u.table_state.relid);
        enc_phase(&e, m->u.table_state.phase);
        enc_u64(&e, m->u.table_state.lsn);
        if (m->type == IPC_TABLE_STATE)
            enc_str(&e, m->u.table_state.dest_name);
        break;
    case IPC_SET_PHASE:
        enc_u64(&e, m->u.set_phase.req);
        enc_u64(&e, m->u.set_phase.relid);
        enc_phase(&e, m->u.set_phase.phase);
        enc_u64(&e, m->u.set_phase.lsn);
        enc_str(&e, m->u.set_phase.err_kind);
        enc_str(&e, m->u.set_phase.err_msg);
        enc_str(&e, m->u.set_phase.err_hint);
        break;
    case IPC_ACK:
        enc_u64(&e, m->u.ack.req);
        enc_bool(&e, m->u.ack.ok);
        enc_str(&e, m->u.ack.message);
        break;
    case IPC_SCHEMA:
        enc_u64(&e, m->u.schema.req);
        enc_u64(&e, m->u.schema.relid);
        enc_u64(&e, m->u.schema.lsn);
        enc_schema(&e, m->u.schema.schema);
        break;
    case IPC_PROGRESS:
        enc_u64(&e, m->u.progress.flush_lsn);
        enc_u64(&e, m->u.progress.received_lsn);
        enc_u64(&e, m->u.progress.events);
        break;
    case IPC_COPY_PROGRESS:
        enc_u64(&e, m->u.copy_progress.relid);
        enc_u64(&e, m->u.copy_progress.rows);
        break;
    case IPC_STATUS:
        if (m->u.status.after != 0)
            enc_u64(&e, m->u.status.after);
        break;
    case IPC_STOP:
    case IPC_PAUSE:
    case IPC_RESUME:
    case IPC_RELOAD:
        break;
    case IPC_RETRY:
    case IPC_RESYNC:
        enc_str(&e, m->u.command.table);
        break;
    case IPC_COPY_PLAN:
        enc_u64(&e, m->u.copy_plan.req);
        enc_u64(&e, m->u.copy_plan.relid);
        enc_u64(&e, m->u.copy_plan.lsn);
        enc_str(&e, m->u.copy_plan.snapshot);
        if (e.rc == 0 && (m->u.copy_plan.n > IPC_MAX_COPY_RANGES ||
                          (m->u.copy_plan.n > 0 && !m->u.copy_plan.ranges)))
            e.rc = WR_EINVAL;
        enc_array(&e, m->u.copy_plan.n);
        for (uint32_t i = 0; i < m->u.copy_plan.n && e.rc == 0; i++) {
            const ipc_copy_range_t *r = &m->u.copy_plan.ranges[i];
            enc_array(&e, IPC_NRANGE_FIELDS);
            enc_u64(&e, r->leaf);
            enc_u64(&e, r->first_page);
            enc_u64(&e, r->end_page);
            enc_u64(&e, r->rows);
            enc_bool(&e, r->done);
        }
        break;
    case IPC_COPY_PLAN_GET:
        enc_u64(&e, m->u.copy_plan_get.req);
        enc_u64(&e, m->u.copy_plan_get.relid);
        break;
    case IPC_COPY_RANGE_DONE:
        enc_u64(&e, m->u.copy_range_done.req);
        enc_u64(&e, m->u.copy_range_done.relid);
        enc_u64(&e, m->u.copy_range_done.part);
        enc_u64(&e, m->u.copy_range_done.rows);
        break;
    case IPC_TABLE_REMOVED:
        enc_u64(&e, m->u.table_removed.relid);
        break;
    case IPC_WORKER_ERROR:
        enc_str(&e, m->u.worker_error.kind);
        enc_str(&e, m->u.worker_error.message);
        enc_str(&e, m->u.worker_error.hint);
        break;
    case IPC_WORKER_METRICS:
        enc_u64(&e, m->u.worker_metrics.transactions);
        enc_u64(&e, m->u.worker_metrics.batches);
        enc_u64(&e, m->u.worker_metrics.bytes_received);
        enc_u64(&e, m->u.worker_metrics.status_updates);
        enc_events(&e, m->u.worker_metrics.nevents, m->u.worker_metrics.events);
        enc_hist(&e, &m->u.worker_metrics.batch);
        enc_u64(&e, m->u.worker_metrics.batch.sum_us);
        enc_hist(&e, &m->u.worker_metrics.commit);
        enc_u64(&e, m->u.worker_metrics.commit.sum_us);
        if (m->u.worker_metrics.last_commit_ts < 0 && e.rc == 0)
            e.rc = WR_EINVAL;
        enc_i64(&e, m->u.worker_metrics.last_commit_ts);
        enc_bool(&e, m->u.worker_metrics.caught_up);
        break;
    case IPC_STREAMING:
        enc_u64(&e, m->u.streaming.start_lsn);
        break;
    case IPC_METRICS:
        break;
    case IPC_METRICS_TEXT:
        enc_text(&e, m->u.metrics_text.text);
        break;
    case IPC_DEST_WAIT:
        enc_str(&e, m->u.dest_wait.message);
        break;
    case IPC_ERROR:
        enc_str(&e, m->u.error.message);
        break;
    case IPC_OK:
        enc_str(&e, m->u.ok.message);
        break;
    case IPC_STATUS_REPLY:
        enc_str(&e, m->u.status_reply.pipeline);
        enc_str(&e, m->u.status_reply.state);
        enc_i64(&e, m->u.status_reply.pid);
        enc_u64(&e, m->u.status_reply.flush_lsn);
        enc_u64(&e, m->u.status_reply.received_lsn);
        enc_u64(&e, m->u.status_reply.events);
        enc_workers(&e, m->u.status_reply.nworkers, m->u.status_reply.workers);
        enc_tables(&e, m->u.status_reply.ntables, m->u.status_reply.tables, true);
        enc_str(&e, m->u.status_reply.message);
        if (m->u.status_reply.more)
            enc_bool(&e, true);
        break;
    }
    if (e.rc == 0 && sb->size - start > IPC_MAX_MSG)
        e.rc = WR_EINVAL;
    if (e.rc != 0)
        sb->size = start; /* drop the partial message */
    return e.rc;
}

int
ipc_encode_tables(const ipc_table_info_t *tables, uint32_t n, msgpack_sbuffer *sb)
{
    size_t start = sb->size;
    uint32_t off = 0;

    do {
        ipc_msg_t m;
        uint32_t k = n - off > IPC_TABLES_CHUNK ? IPC_TABLES_CHUNK : n - off;
        int rc;

        memset(&m, 0, sizeof(m));
        m.type = IPC_TABLES;
        m.u.tables.n = k;
        m.u.tables.tables = k ? (ipc_table_info_t *)&tables[off] : NULL;
        m.u.tables.more = off + k < n;
        if ((rc = ipc_encode(&m, sb)) != 0) {
            sb->size = start;
            return rc;
        }
        off += k;
    } while (off < n);
    return 0;
}

int
ipc_pack_schema(msgpack_packer *pk, const wr_schema_t *s)
{
    ipc_enc_t e;
    if (!pk)
        return WR_EINVAL;
    e.pk = *pk;
    e.rc = 0;
    enc_schema(&e, s);
    return e.rc;
}

/* ------------------------------------------------------------------------------------ */
/* Decoding                                                                             */
/* ------------------------------------------------------------------------------------ */

/* What is being decoded ("\"set_phase\" message") and where inside it, for errors. */
typedef struct ipc_dec_s {
    char what[48];
    char where[160]; /* "" at the top level, "element 1 (tables) item 3 " inside a list */
    wr_err_t *err;
} ipc_dec_t;

static const char *
obj_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return "integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "extension";
    }
    return "unknown";
}

/* Copies a received string for an error message: at most 40 bytes, non-printable as '?'. */
static void
safe_text(char *buf, size_t len, const char *s, size_t n)
{
    size_t i, max = len - 1;
    bool cut = false;
    if (max > 40)
        max = 40;
    if (n > max) {
        n = max;
        cut = true;
    }
    for (i = 0; i < n; i++)
        buf[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
    buf[n] = '\0';
    if (cut && len - n > 3)
        strcpy(buf + n, "...");
}

static int dec_fail(ipc_dec_t *d, uint32_t idx, const char *field, const char *fmt, ...)
    WR_PRINTF(4, 5);

static int
dec_fail(ipc_dec_t *d, uint32_t idx, const char *field, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return wr_err_set(d->err, WR_EPROTO, "invalid %s: %selement %u (%s) %s", d->what, d->where, idx,
                      field, detail);
}

static int
dec_oom(ipc_dec_t *d)
{
    return wr_err_set(d->err, WR_ENOMEM, "out of memory decoding %s", d->what);
}

/* Appends "element idx (field) item j " to the location; returns the old length. */
static size_t
dec_push_item(ipc_dec_t *d, uint32_t idx, const char *field, uint32_t j)
{
    size_t old = strlen(d->where);
    snprintf(d->where + old, sizeof(d->where) - old, "element %u (%s) item %u ", idx, field, j);
    return old;
}

static size_t
dec_push_elem(ipc_dec_t *d, uint32_t idx, const char *field)
{
    size_t old = strlen(d->where);
    snprintf(d->where + old, sizeof(d->where) - old, "element %u (%s) ", idx, field);
    return old;
}

static void
dec_pop(ipc_dec_t *d, size_t old)
{
    d->where[old] = '\0';
}

static int
dec_u64(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, uint64_t *out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return dec_fail(d, i, field, "must be an unsigned integer, got %s", obj_type_name(o));
    *out = o->via.u64;
    return 0;
}

static int
dec_u32(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, uint32_t *out)
{
    uint64_t v = 0;
    int rc = dec_u64(d, a, i, field, &v);
    if (rc)
        return rc;
    if (v > UINT32_MAX)
        return dec_fail(d, i, field, "must fit in 32 bits, got %" PRIu64, v);
    *out = (uint32_t)v;
    return 0;
}

static int
dec_i64(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, int64_t *out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return dec_fail(d, i, field, "must be an integer, got %s", obj_type_name(o));
    if (o->via.u64 > (uint64_t)INT64_MAX)
        return dec_fail(d, i, field, "must fit in a signed 64-bit integer, got %" PRIu64,
                        o->via.u64);
    *out = (int64_t)o->via.u64;
    return 0;
}

static int
dec_i32(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, int32_t *out)
{
    int64_t v = 0;
    int rc = dec_i64(d, a, i, field, &v);
    if (rc)
        return rc;
    if (v < INT32_MIN || v > INT32_MAX)
        return dec_fail(d, i, field, "must fit in a signed 32-bit integer, got %" PRId64, v);
    *out = (int32_t)v;
    return 0;
}

static int
dec_bool(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, bool *out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return dec_fail(d, i, field, "must be a boolean, got %s", obj_type_name(o));
    *out = o->via.boolean;
    return 0;
}

/* Checks a string element without copying it. */
static int
dec_str_check(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field,
              const msgpack_object_str **out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type != MSGPACK_OBJECT_STR)
        return dec_fail(d, i, field, "must be a string, got %s", obj_type_name(o));
    if (o->via.str.size > IPC_MAX_STR)
        return dec_fail(d, i, field, "must be at most %u bytes, got %u", IPC_MAX_STR,
                        o->via.str.size);
    if (o->via.str.size > 0 && memchr(o->via.str.ptr, '\0', o->via.str.size))
        return dec_fail(d, i, field, "must not contain a NUL byte");
    *out = &o->via.str;
    return 0;
}

/* A malloc'd NUL-terminated copy of a string element. */
static int
dec_str(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, char **out)
{
    const msgpack_object_str *s = NULL;
    int rc = dec_str_check(d, a, i, field, &s);
    if (rc)
        return rc;
    *out = wr_strndup(s->size ? s->ptr : "", s->size);
    if (!*out)
        return dec_oom(d);
    return 0;
}

static int
dec_phase(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field,
          wr_phase_t *out)
{
    const msgpack_object_str *s = NULL;
    char buf[32], shown[48];
    int rc = dec_str_check(d, a, i, field, &s);
    if (rc)
        return rc;
    if (s->size > 0 && s->size < sizeof(buf)) {
        memcpy(buf, s->ptr, s->size);
        buf[s->size] = '\0';
        if (phase_parse(buf, out) == 0)
            return 0;
    }
    safe_text(shown, sizeof(shown), s->ptr, s->size);
    return dec_fail(d, i, field, "must be a phase name, got \"%s\"", shown);
}

/* A list element: an array of at most `max` items. */
static int
dec_list(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, uint32_t max,
         const msgpack_object_array **out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return dec_fail(d, i, field, "must be an array, got %s", obj_type_name(o));
    if (o->via.array.size > max)
        return dec_fail(d, i, field, "must have at most %u items, got %u", max, o->via.array.size);
    *out = &o->via.array;
    return 0;
}

/* Item j of list element i must be an array of exactly n elements. */
static int
dec_item(ipc_dec_t *d, const msgpack_object_array *list, uint32_t i, const char *field, uint32_t j,
         uint32_t n, const msgpack_object_array **out)
{
    const msgpack_object *o = &list->ptr[j];
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return wr_err_set(d->err, WR_EPROTO,
                          "invalid %s: %selement %u (%s) item %u must be an array, got %s", d->what,
                          d->where, i, field, j, obj_type_name(o));
    if (o->via.array.size != n)
        return wr_err_set(d->err, WR_EPROTO,
                          "invalid %s: %selement %u (%s) item %u must have %u elements, got %u",
                          d->what, d->where, i, field, j, n, o->via.array.size);
    *out = &o->via.array;
    return 0;
}

static int
dec_schema(ipc_dec_t *d, const msgpack_object *o, uint32_t relid, wr_schema_t **out)
{
    const msgpack_object_array *a, *cols, *c;
    const msgpack_object_str *rid;
    char *nsp = NULL, *name = NULL;
    wr_schema_t *s = NULL;
    uint32_t j;
    size_t old;
    int rc;

    *out = NULL;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return wr_err_set(d->err, WR_EPROTO, "invalid %s: %smust be an array, got %s", d->what,
                          d->where, obj_type_name(o));
    a = &o->via.array;
    if (a->size != IPC_NSCHEMA_FIELDS)
        return wr_err_set(d->err, WR_EPROTO, "invalid %s: %smust have %u elements, got %u", d->what,
                          d->where, IPC_NSCHEMA_FIELDS, a->size);
    if ((rc = dec_str(d, a, 0, "nsp", &nsp)) || (rc = dec_str(d, a, 1, "name", &name)) ||
        (rc = dec_str_check(d, a, 2, "replident", &rid)))
        goto done;
    if (rid->size != 1 || !strchr("dnfi", rid->ptr[0])) {
        rc = dec_fail(d, 2, "replident", "must be one of \"d\", \"n\", \"f\", \"i\"");
        goto done;
    }
    if ((rc = dec_list(d, a, 3, "columns", UINT16_MAX, &cols)))
        goto done;
    s = wr_schema_new(relid, nsp, name, (uint16_t)cols->size);
    if (!s) {
        rc = dec_oom(d);
        goto done;
    }
    s->replident = rid->ptr[0];
    for (j = 0; j < cols->size; j++) {
        wr_column_t *col = &s->cols[j];
        uint32_t flags = 0;
        if ((rc = dec_item(d, cols, 3, "columns", j, IPC_NCOLUMN_FIELDS, &c)))
            goto done;
        old = dec_push_item(d, 3, "columns", j);
        if (!(rc = dec_str(d, c, 0, "name", &col->name)) &&
            !(rc = dec_u32(d, c, 1, "oid", &col->type_oid)) &&
            !(rc = dec_i32(d, c, 2, "typmod", &col->typmod)) &&
            !(rc = dec_u32(d, c, 3, "flags", &flags)) &&
            (flags & ~(IPC_FLAG_KEY | IPC_FLAG_NOT_NULL)) != 0)
            rc = dec_fail(d, 3, "flags", "must only use bits 1 and 2, got %u", flags);
        dec_pop(d, old);
        if (rc)
            goto done;
        col->is_key = (flags & IPC_FLAG_KEY) != 0;
        col->not_null = (flags & IPC_FLAG_NOT_NULL) != 0;
    }
    *out = s;
    s = NULL;
done:
    wr_schema_free(s);
    free(nsp);
    free(name);
    return rc;
}

int
ipc_unpack_schema(const msgpack_object *o, uint32_t relid, wr_schema_t **out, wr_err_t *err)
{
    ipc_dec_t d;
    if (!out)
        return wr_err_set(err, WR_EINVAL, "ipc_unpack_schema: no output");
    *out = NULL;
    if (!o)
        return wr_err_set(err, WR_EINVAL, "ipc_unpack_schema: no object");
    memset(&d, 0, sizeof(d));
    snprintf(d.what, sizeof(d.what), "schema");
    d.err = err;
    return dec_schema(&d, o, relid, out);
}

/* metrics_text: a string of at most IPC_MAX_TEXT bytes (malloc'd, NUL-terminated). */
static int
dec_text(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field, char **out)
{
    const msgpack_object *o = &a->ptr[i];
    if (o->type != MSGPACK_OBJECT_STR)
        return dec_fail(d, i, field, "must be a string, got %s", obj_type_name(o));
    if (o->via.str.size > IPC_MAX_TEXT)
        return dec_fail(d, i, field, "must be at most %u bytes, got %u", (unsigned)IPC_MAX_TEXT,
                        o->via.str.size);
    if (o->via.str.size > 0 && memchr(o->via.str.ptr, '\0', o->via.str.size))
        return dec_fail(d, i, field, "must not contain a NUL byte");
    *out = wr_strndup(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    return *out ? 0 : dec_oom(d);
}

/* A histogram: exactly IPC_HIST_NCOUNTS unsigned counts at element i, its sum at i + 1. */
static int
dec_hist(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, const char *field,
         const char *sum_field, ipc_hist_t *h)
{
    const msgpack_object_array *list = NULL;
    size_t old;
    int rc;

    if ((rc = dec_list(d, a, i, field, IPC_HIST_NCOUNTS, &list)))
        return rc;
    if (list->size != IPC_HIST_NCOUNTS)
        return dec_fail(d, i, field, "must have %u counts, got %u", (unsigned)IPC_HIST_NCOUNTS,
                        list->size);
    old = dec_push_elem(d, i, field);
    for (uint32_t j = 0; j < IPC_HIST_NCOUNTS && rc == 0; j++)
        rc = dec_u64(d, list, j, "count", &h->counts[j]);
    dec_pop(d, old);
    if (rc)
        return rc;
    return dec_u64(d, a, i + 1, sum_field, &h->sum_us);
}

/* worker_metrics element i: [[relid, inserts, updates, deletes, truncates]...]. */
static int
dec_events(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, uint32_t *n,
           ipc_event_count_t **out)
{
    const msgpack_object_array *list = NULL, *it = NULL;
    size_t old;
    int rc;

    if ((rc = dec_list(d, a, i, "events", IPC_MAX_ITEMS, &list)))
        return rc;
    if (list->size == 0)
        return 0;
    *out = calloc(list->size, sizeof(**out));
    if (!*out)
        return dec_oom(d);
    *n = list->size;
    for (uint32_t j = 0; j < list->size; j++) {
        static const char *const opnames[IPC_NOPS] = {"inserts", "updates", "deletes", "truncates"};
        ipc_event_count_t *ev = &(*out)[j];

        if ((rc = dec_item(d, list, i, "events", j, IPC_NEVENT_FIELDS, &it)))
            return rc;
        old = dec_push_item(d, i, "events", j);
        rc = dec_u32(d, it, 0, "relid", &ev->relid);
        for (int k = 0; k < IPC_NOPS && rc == 0; k++)
            rc = dec_u64(d, it, (uint32_t)k + 1, opnames[k], &ev->n[k]);
        dec_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

/* Decodes list element i into *out (n items, calloc'd), `full` for status_reply rows. */
static int
dec_tables(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, bool full, uint32_t *n,
           ipc_table_info_t **out)
{
    const msgpack_object_array *list = NULL, *it = NULL;
    uint32_t j;
    size_t old;
    int rc;

    if ((rc = dec_list(d, a, i, "tables", IPC_MAX_ITEMS, &list)))
        return rc;
    if (list->size == 0)
        return 0;
    *out = calloc(list->size, sizeof(**out));
    if (!*out)
        return dec_oom(d);
    *n = list->size; /* the caller's clear frees whatever was filled */
    for (j = 0; j < list->size; j++) {
        ipc_table_info_t *t = &(*out)[j];
        if (!full && list->ptr[j].type == MSGPACK_OBJECT_ARRAY &&
            list->ptr[j].via.array.size == IPC_NTABLE_MIN)
            rc = dec_item(d, list, i, "tables", j, IPC_NTABLE_MIN, &it);
        else
            rc = dec_item(d, list, i, "tables", j, full ? IPC_NSTATUS_FIELDS : IPC_NTABLE_FIELDS,
                          &it);
        if (rc)
            return rc;
        old = dec_push_item(d, i, "tables", j);
        if (!(rc = dec_u32(d, it, 0, "relid", &t->relid)) &&
            !(rc = dec_str(d, it, 1, "nsp", &t->nsp)) &&
            !(rc = dec_str(d, it, 2, "name", &t->name)) &&
            !(rc = dec_phase(d, it, 3, "phase", &t->phase)))
            rc = dec_u64(d, it, 4, "lsn", &t->lsn);
        if (!rc && !full && it->size > IPC_NTABLE_MIN)
            rc = dec_str(d, it, 5, "dest_name", &t->dest_name);
        if (!rc && full && !(rc = dec_u64(d, it, 5, "rows_copied", &t->rows_copied)) &&
            !(rc = dec_u32(d, it, 6, "attempts", &t->attempts)) &&
            !(rc = dec_str(d, it, 7, "err_kind", &t->err_kind)) &&
            !(rc = dec_str(d, it, 8, "err_msg", &t->err_msg)))
            rc = dec_str(d, it, 9, "err_hint", &t->err_hint);
        dec_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

/* (issue 11) The ranges of a copy_plan, list element i. */
static int
dec_ranges(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, uint32_t *n,
           ipc_copy_range_t **out)
{
    const msgpack_object_array *list = NULL, *it = NULL;
    size_t old;
    int rc;

    if ((rc = dec_list(d, a, i, "ranges", IPC_MAX_COPY_RANGES, &list)))
        return rc;
    if (list->size == 0)
        return 0;
    if (!(*out = calloc(list->size, sizeof(**out))))
        return dec_oom(d);
    *n = list->size;
    for (uint32_t j = 0; j < list->size; j++) {
        ipc_copy_range_t *r = &(*out)[j];
        if ((rc = dec_item(d, list, i, "ranges", j, IPC_NRANGE_FIELDS, &it)))
            return rc;
        old = dec_push_item(d, i, "ranges", j);
        if (!(rc = dec_u32(d, it, 0, "leaf", &r->leaf)) &&
            !(rc = dec_u32(d, it, 1, "first_page", &r->first_page)) &&
            !(rc = dec_u32(d, it, 2, "end_page", &r->end_page)) &&
            !(rc = dec_u64(d, it, 3, "rows", &r->rows)))
            rc = dec_bool(d, it, 4, "done", &r->done);
        dec_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int
dec_workers(ipc_dec_t *d, const msgpack_object_array *a, uint32_t i, uint32_t *n,
            ipc_worker_info_t **out)
{
    const msgpack_object_array *list = NULL, *it = NULL;
    uint32_t j;
    size_t old;
    int rc;

    if ((rc = dec_list(d, a, i, "workers", IPC_MAX_ITEMS, &list)))
        return rc;
    if (list->size == 0)
        return 0;
    *out = calloc(list->size, sizeof(**out));
    if (!*out)
        return dec_oom(d);
    *n = list->size;
    for (j = 0; j < list->size; j++) {
        ipc_worker_info_t *w = &(*out)[j];
        if ((rc = dec_item(d, list, i, "workers", j, IPC_NWORKER_FIELDS, &it)))
            return rc;
        old = dec_push_item(d, i, "workers", j);
        if (!(rc = dec_str(d, it, 0, "role", &w->role)) &&
            !(rc = dec_u32(d, it, 1, "relid", &w->relid)) &&
            !(rc = dec_i64(d, it, 2, "pid", &w->pid)) &&
            !(rc = dec_u32(d, it, 3, "restarts", &w->restarts)))
            rc = dec_str(d, it, 4, "state", &w->state);
        dec_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int
dec_body(ipc_dec_t *d, const msgpack_object_array *a, ipc_msg_t *m)
{
    int rc = 0;
    size_t old;

    switch (m->type) {
    case IPC_HELLO:
        if ((rc = dec_u32(d, a, 1, "version", &m->u.hello.version)) ||
            (rc = dec_str(d, a, 2, "role", &m->u.hello.role)))
            return rc;
        if (strcmp(m->u.hello.role, "apply") != 0 && strcmp(m->u.hello.role, "sync") != 0) {
            char shown[48];
            safe_text(shown, sizeof(shown), m->u.hello.role, strlen(m->u.hello.role));
            return dec_fail(d, 2, "role", "must be \"apply\" or \"sync\", got \"%s\"", shown);
        }
        if ((rc = dec_i64(d, a, 3, "pid", &m->u.hello.pid)))
            return rc;
        return dec_u32(d, a, 4, "relid", &m->u.hello.relid);
    case IPC_WELCOME:
        if ((rc = dec_u32(d, a, 1, "version", &m->u.welcome.version)))
            return rc;
        return dec_str(d, a, 2, "pipeline", &m->u.welcome.pipeline);
    case IPC_TABLES:
        if ((rc = dec_tables(d, a, 1, false, &m->u.tables.n, &m->u.tables.tables)))
            return rc;
        if (a->size > 2)
            return dec_bool(d, a, 2, "more", &m->u.tables.more);
        return 0;
    case IPC_TABLE_STATE:
    case IPC_TABLE_ACK:
        if ((rc = dec_u32(d, a, 1, "relid", &m->u.table_state.relid)) ||
            (rc = dec_phase(d, a, 2, "phase", &m->u.table_state.phase)) ||
            (rc = dec_u64(d, a, 3, "lsn", &m->u.table_state.lsn)))
            return rc;
        if (m->type == IPC_TABLE_STATE && a->size > 4)
            return dec_str(d, a, 4, "dest_name", &m->u.table_state.dest_name);
        return 0;
    case IPC_SET_PHASE:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.set_phase.req)) ||
            (rc = dec_u32(d, a, 2, "relid", &m->u.set_phase.relid)) ||
            (rc = dec_phase(d, a, 3, "phase", &m->u.set_phase.phase)) ||
            (rc = dec_u64(d, a, 4, "lsn", &m->u.set_phase.lsn)) ||
            (rc = dec_str(d, a, 5, "err_kind", &m->u.set_phase.err_kind)) ||
            (rc = dec_str(d, a, 6, "err_msg", &m->u.set_phase.err_msg)))
            return rc;
        return dec_str(d, a, 7, "err_hint", &m->u.set_phase.err_hint);
    case IPC_ACK:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.ack.req)) ||
            (rc = dec_bool(d, a, 2, "ok", &m->u.ack.ok)))
            return rc;
        return dec_str(d, a, 3, "message", &m->u.ack.message);
    case IPC_SCHEMA:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.schema.req)) ||
            (rc = dec_u32(d, a, 2, "relid", &m->u.schema.relid)) ||
            (rc = dec_u64(d, a, 3, "lsn", &m->u.schema.lsn)))
            return rc;
        old = dec_push_elem(d, 4, "schema");
        rc = dec_schema(d, &a->ptr[4], m->u.schema.relid, &m->u.schema.schema);
        dec_pop(d, old);
        return rc;
    case IPC_PROGRESS:
        if ((rc = dec_u64(d, a, 1, "flush_lsn", &m->u.progress.flush_lsn)) ||
            (rc = dec_u64(d, a, 2, "received_lsn", &m->u.progress.received_lsn)))
            return rc;
        return dec_u64(d, a, 3, "events", &m->u.progress.events);
    case IPC_COPY_PROGRESS:
        if ((rc = dec_u32(d, a, 1, "relid", &m->u.copy_progress.relid)))
            return rc;
        return dec_u64(d, a, 2, "rows", &m->u.copy_progress.rows);
    case IPC_STATUS:
        return a->size > 1 ? dec_u32(d, a, 1, "after_relid", &m->u.status.after) : 0;
    case IPC_STOP:
    case IPC_PAUSE:
    case IPC_RESUME:
    case IPC_RELOAD:
        return 0;
    case IPC_RETRY:
    case IPC_RESYNC:
        return dec_str(d, a, 1, "table", &m->u.command.table);
    case IPC_TABLE_REMOVED:
        return dec_u32(d, a, 1, "relid", &m->u.table_removed.relid);
    case IPC_COPY_PLAN:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.copy_plan.req)) ||
            (rc = dec_u32(d, a, 2, "relid", &m->u.copy_plan.relid)) ||
            (rc = dec_u64(d, a, 3, "lsn", &m->u.copy_plan.lsn)) ||
            (rc = dec_str(d, a, 4, "snapshot", &m->u.copy_plan.snapshot)))
            return rc;
        return dec_ranges(d, a, 5, &m->u.copy_plan.n, &m->u.copy_plan.ranges);
    case IPC_COPY_PLAN_GET:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.copy_plan_get.req)))
            return rc;
        return dec_u32(d, a, 2, "relid", &m->u.copy_plan_get.relid);
    case IPC_COPY_RANGE_DONE:
        if ((rc = dec_u32(d, a, 1, "req", &m->u.copy_range_done.req)) ||
            (rc = dec_u32(d, a, 2, "relid", &m->u.copy_range_done.relid)) ||
            (rc = dec_u32(d, a, 3, "part", &m->u.copy_range_done.part)))
            return rc;
        return dec_u64(d, a, 4, "rows", &m->u.copy_range_done.rows);
    case IPC_WORKER_ERROR:
        if ((rc = dec_str(d, a, 1, "kind", &m->u.worker_error.kind)) ||
            (rc = dec_str(d, a, 2, "message", &m->u.worker_error.message)))
            return rc;
        return dec_str(d, a, 3, "hint", &m->u.worker_error.hint);
    case IPC_WORKER_METRICS: {
        __typeof__(m->u.worker_metrics) *wm = &m->u.worker_metrics;

        if ((rc = dec_u64(d, a, 1, "transactions", &wm->transactions)) ||
            (rc = dec_u64(d, a, 2, "batches", &wm->batches)) ||
            (rc = dec_u64(d, a, 3, "bytes_received", &wm->bytes_received)) ||
            (rc = dec_u64(d, a, 4, "status_updates", &wm->status_updates)) ||
            (rc = dec_events(d, a, 5, &wm->nevents, &wm->events)) ||
            (rc = dec_hist(d, a, 6, "batch_hist", "batch_sum_us", &wm->batch)) ||
            (rc = dec_hist(d, a, 8, "commit_hist", "commit_sum_us", &wm->commit)) ||
            (rc = dec_i64(d, a, 10, "last_commit_ts", &wm->last_commit_ts)))
            return rc;
        if (wm->last_commit_ts < 0)
            return dec_fail(d, 10, "last_commit_ts", "must not be negative, got %" PRId64,
                            wm->last_commit_ts);
        return dec_bool(d, a, 11, "caught_up", &wm->caught_up);
    }
    case IPC_STREAMING:
        return dec_u64(d, a, 1, "start_lsn", &m->u.streaming.start_lsn);
    case IPC_METRICS:
        return 0;
    case IPC_METRICS_TEXT:
        return dec_text(d, a, 1, "text", &m->u.metrics_text.text);
    case IPC_DEST_WAIT:
        return dec_str(d, a, 1, "message", &m->u.dest_wait.message);
    case IPC_ERROR:
        return dec_str(d, a, 1, "message", &m->u.error.message);
    case IPC_OK:
        return dec_str(d, a, 1, "message", &m->u.ok.message);
    case IPC_STATUS_REPLY:
        if ((rc = dec_str(d, a, 1, "pipeline", &m->u.status_reply.pipeline)) ||
            (rc = dec_str(d, a, 2, "state", &m->u.status_reply.state)) ||
            (rc = dec_i64(d, a, 3, "pid", &m->u.status_reply.pid)) ||
            (rc = dec_u64(d, a, 4, "flush_lsn", &m->u.status_reply.flush_lsn)) ||
            (rc = dec_u64(d, a, 5, "received_lsn", &m->u.status_reply.received_lsn)) ||
            (rc = dec_u64(d, a, 6, "events", &m->u.status_reply.events)) ||
            (rc = dec_workers(d, a, 7, &m->u.status_reply.nworkers, &m->u.status_reply.workers)) ||
            (rc = dec_tables(d, a, 8, true, &m->u.status_reply.ntables, &m->u.status_reply.tables)))
            return rc;
        if (a->size > 10 && (rc = dec_bool(d, a, 10, "more", &m->u.status_reply.more)))
            return rc;
        if (a->size > 9)
            return dec_str(d, a, 9, "message", &m->u.status_reply.message);
        m->u.status_reply.message = wr_strdup("");
        return m->u.status_reply.message ? 0 : dec_oom(d);
    }
    return wr_err_set(d->err, WR_EPROTO, "invalid %s: unhandled type", d->what);
}

int
ipc_decode(const msgpack_object *o, ipc_msg_t *m, wr_err_t *err)
{
    const msgpack_object_array *a;
    const msgpack_object *t;
    ipc_dec_t d;
    char shown[48];
    int i, rc;

    if (!m)
        return wr_err_set(err, WR_EINVAL, "ipc_decode: no output message");
    memset(m, 0, sizeof(*m));
    if (!o)
        return wr_err_set(err, WR_EINVAL, "ipc_decode: no object");
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return wr_err_set(err, WR_EPROTO, "invalid message: must be an array, got %s",
                          obj_type_name(o));
    a = &o->via.array;
    if (a->size == 0)
        return wr_err_set(err, WR_EPROTO, "invalid message: empty array");
    t = &a->ptr[0];
    if (t->type != MSGPACK_OBJECT_STR)
        return wr_err_set(err, WR_EPROTO,
                          "invalid message: element 0 (type) must be a string, got %s",
                          obj_type_name(t));
    for (i = IPC_HELLO; i <= IPC_LAST_TYPE; i++) {
        const char *name = ipc_type_names[i];
        if (strlen(name) == t->via.str.size && memcmp(name, t->via.str.ptr, t->via.str.size) == 0)
            break;
    }
    if (i > IPC_LAST_TYPE) {
        safe_text(shown, sizeof(shown), t->via.str.ptr, t->via.str.size);
        return wr_err_set(err, WR_EPROTO, "invalid message: unknown type \"%s\"", shown);
    }
    memset(&d, 0, sizeof(d));
    snprintf(d.what, sizeof(d.what), "\"%s\" message", ipc_type_names[i]);
    d.err = err;
    if (a->size != ipc_arity[i] &&
        !(i == IPC_STATUS_REPLY && a->size == IPC_STATUS_REPLY_MIN_ARITY) &&
        !(i == IPC_TABLE_STATE && a->size == 4) && /* without dest_name (older) */
        !((i == IPC_TABLES || i == IPC_STATUS || i == IPC_STATUS_REPLY) &&
          a->size == ipc_arity[i] + 1)) /* with "more" / "after" */
        return wr_err_set(err, WR_EPROTO, "invalid %s: expected %u elements, got %u", d.what,
                          ipc_arity[i], a->size);
    m->type = (ipc_type_t)i;
    rc = dec_body(&d, a, m);
    if (rc)
        ipc_msg_clear(m);
    return rc;
}

static void
free_tables(uint32_t n, ipc_table_info_t *t)
{
    uint32_t i;
    if (!t)
        return;
    for (i = 0; i < n; i++) {
        free(t[i].nsp);
        free(t[i].name);
        free(t[i].dest_name);
        free(t[i].err_kind);
        free(t[i].err_msg);
        free(t[i].err_hint);
    }
    free(t);
}

void
ipc_msg_clear(ipc_msg_t *m)
{
    uint32_t i;
    if (!m)
        return;
    switch (m->type) {
    case IPC_HELLO:
        free(m->u.hello.role);
        break;
    case IPC_WELCOME:
        free(m->u.welcome.pipeline);
        break;
    case IPC_TABLES:
        free_tables(m->u.tables.n, m->u.tables.tables);
        break;
    case IPC_SET_PHASE:
        free(m->u.set_phase.err_kind);
        free(m->u.set_phase.err_msg);
        free(m->u.set_phase.err_hint);
        break;
    case IPC_ACK:
        free(m->u.ack.message);
        break;
    case IPC_SCHEMA:
        wr_schema_free(m->u.schema.schema);
        break;
    case IPC_ERROR:
        free(m->u.error.message);
        break;
    case IPC_OK:
        free(m->u.ok.message);
        break;
    case IPC_STATUS_REPLY:
        free(m->u.status_reply.pipeline);
        free(m->u.status_reply.state);
        if (m->u.status_reply.workers) {
            for (i = 0; i < m->u.status_reply.nworkers; i++) {
                free(m->u.status_reply.workers[i].role);
                free(m->u.status_reply.workers[i].state);
            }
            free(m->u.status_reply.workers);
        }
        free_tables(m->u.status_reply.ntables, m->u.status_reply.tables);
        free(m->u.status_reply.message);
        break;
    case IPC_RETRY:
    case IPC_RESYNC:
        free(m->u.command.table);
        break;
    case IPC_COPY_PLAN:
        free(m->u.copy_plan.snapshot);
        free(m->u.copy_plan.ranges);
        break;
    case IPC_WORKER_ERROR:
        free(m->u.worker_error.kind);
        free(m->u.worker_error.message);
        free(m->u.worker_error.hint);
        break;
    case IPC_WORKER_METRICS:
        free(m->u.worker_metrics.events);
        break;
    case IPC_METRICS_TEXT:
        free(m->u.metrics_text.text);
        break;
    case IPC_DEST_WAIT:
        free(m->u.dest_wait.message);
        break;
    case IPC_TABLE_STATE:
        free(m->u.table_state.dest_name);
        break;
    case IPC_STREAMING:
    case IPC_METRICS:
    case IPC_COPY_PLAN_GET:
    case IPC_COPY_RANGE_DONE:
    case IPC_PAUSE:
    case IPC_RESUME:
    case IPC_RELOAD:
    case IPC_TABLE_REMOVED:
    case IPC_TABLE_ACK:
    case IPC_PROGRESS:
    case IPC_COPY_PROGRESS:
    case IPC_STOP:
    case IPC_STATUS:
        break;
    }
    memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------------------------ */
/* Stream reader                                                                        */
/* ------------------------------------------------------------------------------------ */

int
ipc_reader_init(ipc_reader_t *r)
{
    memset(r, 0, sizeof(*r));
    if (!msgpack_unpacker_init(&r->up, MSGPACK_UNPACKER_INIT_BUFFER_SIZE)) {
        memset(r, 0, sizeof(*r));
        return WR_ENOMEM;
    }
    msgpack_unpacked_init(&r->result);
    return 0;
}

void
ipc_reader_close(ipc_reader_t *r)
{
    if (!r || !r->up.buffer) /* never initialised, or already closed */
        return;
    msgpack_unpacked_destroy(&r->result);
    msgpack_unpacker_destroy(&r->up);
    memset(r, 0, sizeof(*r));
}

/* Length of the header that starts with byte b (type byte, length/count bytes, ext type),
 * 0 for the invalid byte 0xc1. Fixed-size payloads count as body. */
static uint8_t
scan_header_len(uint8_t b)
{
    if (b <= 0xbf || b >= 0xe0)
        return 1; /* fixint, fixmap, fixarray, fixstr, negative fixint */
    switch (b) {
    case 0xc1:
        return 0;
    case 0xc4: /* bin8 */
    case 0xd9: /* str8 */
        return 2;
    case 0xc5: /* bin16 */
    case 0xda: /* str16 */
    case 0xdc: /* array16 */
    case 0xde: /* map16 */
    case 0xc7: /* ext8: len, type */
        return 3;
    case 0xc8: /* ext16 */
        return 4;
    case 0xc6: /* bin32 */
    case 0xdb: /* str32 */
    case 0xdd: /* array32 */
    case 0xdf: /* map32 */
        return 5;
    case 0xc9: /* ext32 */
        return 6;
    case 0xd4: /* fixext: type byte */
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return 2;
    default:
        return 1; /* nil, bool, numbers */
    }
}

static uint64_t
scan_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* A complete header in r->scan.hdr: sets the body to skip; false if it breaks a limit. */
static bool
scan_header_done(ipc_reader_t *r)
{
    const uint8_t *h = r->scan.hdr;
    uint64_t len = 0, count = 0;
    char kind = 0;
    uint8_t b = h[0];

    if (b >= 0xa0 && b <= 0xbf)
        len = b & 0x1f;
    else if (b >= 0xc0 && b <= 0xdf) {
        switch (b) {
        case 0xc4:
        case 0xd9:
            len = h[1];
            break;
        case 0xc5:
        case 0xda:
            len = scan_be(h + 1, 2);
            break;
        case 0xc6:
        case 0xdb:
            len = scan_be(h + 1, 4);
            break;
        case 0xc7:
            len = h[1];
            break;
        case 0xc8:
            len = scan_be(h + 1, 2);
            break;
        case 0xc9:
            len = scan_be(h + 1, 4);
            break;
        case 0xca:
            len = 4;
            break;
        case 0xcb:
            len = 8;
            break;
        case 0xcc:
        case 0xd0:
            len = 1;
            break;
        case 0xcd:
        case 0xd1:
            len = 2;
            break;
        case 0xce:
        case 0xd2:
            len = 4;
            break;
        case 0xcf:
        case 0xd3:
            len = 8;
            break;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
            len = 1u << (b - 0xd4);
            break;
        case 0xdc:
        case 0xde:
            count = scan_be(h + 1, 2);
            kind = b == 0xdc ? 'a' : 'm';
            break;
        case 0xdd:
        case 0xdf:
            count = scan_be(h + 1, 4);
            kind = b == 0xdd ? 'a' : 'm';
            break;
        default:
            break;
        }
    }
    if (kind && count > IPC_MAX_ITEMS) {
        r->scan.bad_kind = kind;
        r->scan.bad_len = count;
        return false;
    }
    if (len > IPC_MAX_MSG) {
        r->scan.bad_kind = 's';
        r->scan.bad_len = len;
        return false;
    }
    r->scan.skip = len;
    return true;
}

/* How many of the len new bytes may go to the unpacker: all of them, or those before a
 * header that breaks a limit (then r->scan.bad is set). */
static size_t
scan_bytes(ipc_reader_t *r, const uint8_t *p, size_t len)
{
    size_t i = 0, hdr_start = 0;
    while (i < len && !r->scan.stopped) {
        if (r->scan.skip > 0) {
            uint64_t take = len - i < r->scan.skip ? len - i : r->scan.skip;
            r->scan.skip -= take;
            i += (size_t)take;
            continue;
        }
        if (r->scan.need == 0) {
            hdr_start = i;
            r->scan.need = scan_header_len(p[i]);
            if (r->scan.need == 0) {
                r->scan.stopped = true; /* leave the error to the unpacker */
                break;
            }
            r->scan.have = 0;
        }
        r->scan.hdr[r->scan.have++] = p[i++];
        if (r->scan.have == r->scan.need) {
            r->scan.need = 0;
            if (!scan_header_done(r)) {
                r->scan.bad = true;
                /* hdr_start is 0 when the header began in an earlier feed: its first
                 * bytes are buffered, but the unpacker cannot complete it without the rest */
                return hdr_start;
            }
        }
    }
    return len;
}

static int
reader_broken(ipc_reader_t *r, wr_err_t *err)
{
    WR_UNUSED(r);
    return wr_err_set(err, WR_EINVAL, "message stream is unusable after an earlier framing error");
}

int
ipc_reader_feed(ipc_reader_t *r, const char *data, size_t len, wr_err_t *err)
{
    size_t pending;
    if (r->broken)
        return reader_broken(r, err);
    if (len == 0)
        return 0;
    /* Bytes of the message in progress plus any not yet taken: once they exceed the limit,
     * no valid message can be in there. */
    pending = msgpack_unpacker_message_size(&r->up);
    if (pending > IPC_MAX_MSG) {
        r->broken = true;
        return wr_err_set(err, WR_EPROTO,
                          "message stream holds %zu unread bytes, more than the limit of %u",
                          pending, IPC_MAX_MSG);
    }
    if (r->scan.bad)
        return 0; /* dropped: ipc_reader_next reports the error once the messages before it
                   * are taken */
    len = scan_bytes(r, (const uint8_t *)data, len);
    if (len == 0)
        return 0;
    if (!msgpack_unpacker_reserve_buffer(&r->up, len))
        return wr_err_set(err, WR_ENOMEM, "out of memory buffering %zu message bytes", len);
    memcpy(msgpack_unpacker_buffer(&r->up), data, len);
    msgpack_unpacker_buffer_consumed(&r->up, len);
    return 0;
}

int
ipc_reader_next(ipc_reader_t *r, ipc_msg_t *m, wr_err_t *err)
{
    msgpack_unpack_return ret;
    size_t size = 0;
    int rc;

    memset(m, 0, sizeof(*m));
    if (r->broken)
        return reader_broken(r, err);
    ret = msgpack_unpacker_next_with_size(&r->up, &r->result, &size);
    switch (ret) {
    case MSGPACK_UNPACK_SUCCESS:
        if (size > IPC_MAX_MSG) {
            msgpack_unpacked_destroy(&r->result);
            return wr_err_set(err, WR_EPROTO, "message of %zu bytes exceeds the limit of %u", size,
                              IPC_MAX_MSG);
        }
        rc = ipc_decode(&r->result.data, m, err);
        msgpack_unpacked_destroy(&r->result); /* m holds copies */
        return rc == 0 ? 1 : rc;
    case MSGPACK_UNPACK_CONTINUE:
        if (r->scan.bad) {
            r->broken = true;
            if (r->scan.bad_kind == 's')
                return wr_err_set(err, WR_EPROTO,
                                  "message declares a string of %" PRIu64
                                  " bytes, more than the message limit of %u",
                                  r->scan.bad_len, IPC_MAX_MSG);
            return wr_err_set(err, WR_EPROTO,
                              "message declares %s of %" PRIu64 " items, more than the limit of %u",
                              r->scan.bad_kind == 'a' ? "an array" : "a map", r->scan.bad_len,
                              IPC_MAX_ITEMS);
        }
        if (msgpack_unpacker_message_size(&r->up) > IPC_MAX_MSG) {
            r->broken = true;
            return wr_err_set(err, WR_EPROTO,
                              "incomplete message of %zu bytes exceeds the limit of %u",
                              msgpack_unpacker_message_size(&r->up), IPC_MAX_MSG);
        }
        return 0;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        r->broken = true;
        return wr_err_set(err, WR_ENOMEM,
                          "out of memory unpacking a message (or nesting too deep)");
    case MSGPACK_UNPACK_PARSE_ERROR:
    default:
        r->broken = true;
        return wr_err_set(err, WR_EINVAL, "malformed msgpack in message stream");
    }
}
