/*
 * test_stream.c - unit tests of the replication stream engine (common/stream.c) on
 * pgoutput messages captured from PostgreSQL 15, wrapped in XLogData frames.
 *
 * NOTES: needs no server (data/pgoutput_captured.h). Covers ordinals (multi-row
 * transactions, TRUNCATE of two tables, skipped tables), the commit-LSN check, the
 * translation into destination events including BEGIN/COMMIT, keepalives and the
 * status feedback timing; and, through a fake transport (ft_*: captured frames in, status
 * updates recorded), the engine's I/O half: the receive step (drain, STM_IDLE, hold,
 * time budget, STM_STOP leaving the rest buffered, a handler that disconnects, errors),
 * the reply to a keepalive at once with the flush its handler moved, the interval
 * derived from wal_sender_timeout and its parser, and the status keeper thread (sends
 * while the main thread is busy, never a flush ahead of stm_set_flush, a failed send
 * reported to the main thread, signals left to the main thread). Every frame is an
 * exactly-sized heap copy (ASan).
 */
#include "unit.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "common/repl.h"
#include "common/stream.h"
#include "data/pgoutput_captured.h"

#define MAXEV 64

typedef struct rec_s {
    dest_event_t ev[MAXEV]; /* changes and the BEGIN/COMMIT the recorder "wrote" */
    size_t msglen[MAXEV];
    int n;
    int commits;
    wr_lsn_t last_end;
    uint32_t last_commit_ord;
    int relations;
    int keepalives;
    wr_lsn_t ka_end;
    bool ka_reply;
    uint32_t only_relid; /* 0: write every change; else skip other relids */
    bool stop_on_commit;
    stm_t *flush_on_keepalive;   /* moves this engine's flush to the keepalive's end */
    int hold_after;              /* hold() true once this many changes were recorded (0: never) */
    stm_t *disconnect_on_commit; /* disconnects this engine in the commit callback */
} rec_t;

static void
rec_push(rec_t *r, const dest_event_t *ev, size_t msglen)
{
    if (r->n < MAXEV) {
        r->ev[r->n] = *ev;
        r->msglen[r->n] = msglen;
        r->n++;
    }
}

static int
rec_relation(void *arg, stm_tx_t *tx, const pgo_msg_t *m, wr_err_t *err)
{
    (void)tx;
    (void)m;
    (void)err;
    ((rec_t *)arg)->relations++;
    return 0;
}

/* Writes like a worker does: BEGIN before the first written change. */
static int
rec_change(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    rec_t *r = arg;

    (void)err;
    if (r->only_relid != 0 && ev->relid != r->only_relid)
        return 0;
    if (!tx->begun) {
        dest_event_t b;

        stm_boundary(tx, DEST_EV_BEGIN, 0, &b);
        rec_push(r, &b, 0);
        tx->begun = true;
    }
    rec_push(r, ev, msglen);
    return STM_WRITTEN;
}

static int
rec_commit(void *arg, stm_tx_t *tx, wr_lsn_t end, wr_err_t *err)
{
    rec_t *r = arg;

    (void)err;
    CHECK(!tx->in_tx);
    if (tx->begun) {
        dest_event_t c;

        stm_boundary(tx, DEST_EV_COMMIT, end, &c);
        rec_push(r, &c, 0);
    }
    r->commits++;
    r->last_end = end;
    r->last_commit_ord = tx->ordinal;
    if (r->disconnect_on_commit != NULL) {
        stm_disconnect(r->disconnect_on_commit);
        return STM_STOP;
    }
    return r->stop_on_commit ? STM_STOP : 0;
}

static int
rec_keepalive(void *arg, wr_lsn_t wal_end, bool reply, wr_err_t *err)
{
    rec_t *r = arg;

    (void)err;
    r->keepalives++;
    r->ka_end = wal_end;
    r->ka_reply = reply;
    if (r->flush_on_keepalive != NULL)
        stm_set_flush(r->flush_on_keepalive, wal_end);
    return 0;
}

static bool
rec_hold(void *arg)
{
    rec_t *r = arg;

    return r->hold_after > 0 && r->n >= r->hold_after;
}

static const stm_handler_t rec_handler = {rec_relation, rec_change, rec_commit, rec_keepalive,
                                          rec_hold};

static void
put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static wr_lsn_t
lsn_of(const char *text)
{
    wr_lsn_t l = 0;

    if (wr_lsn_parse(text, &l) != 0)
        return 0;
    return l;
}

/* Feeds a hex pgoutput message as an XLogData frame at lsn; returns stm_on_copydata's rc. */
static int
feed_hex(stm_t *s, const char *hex, wr_lsn_t lsn, wr_err_t *err)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(25 + n);
    int rc;

    b[0] = 'w';
    put_u64(b + 1, lsn);
    put_u64(b + 9, lsn);
    put_u64(b + 17, 0);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        b[25 + i] = (uint8_t)v;
    }
    rc = stm_on_copydata(s, b, 25 + n, err);
    free(b);
    return rc;
}

/* Feeds every captured message of a step; returns the first non-zero rc. */
static int
feed_step(stm_t *s, const char *step, wr_err_t *err)
{
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        int rc;

        if (strcmp(pgo_captured[i].step, step) != 0)
            continue;
        rc = feed_hex(s, pgo_captured[i].hex, lsn_of(pgo_captured[i].lsn), err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The final LSN of a step's Begin (bytes 1..8 of the 'B' message). */
static wr_lsn_t
step_final(const char *step)
{
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        if (strcmp(pgo_captured[i].step, step) == 0 && strncmp(pgo_captured[i].hex, "42", 2) == 0) {
            char h[17];
            memcpy(h, pgo_captured[i].hex + 2, 16);
            h[16] = '\0';
            return (wr_lsn_t)strtoull(h, NULL, 16);
        }
    }
    return 0;
}

static uint32_t
step_xid(const char *step)
{
    for (size_t i = 0; i < PGO_CAP_COUNT; i++)
        if (strcmp(pgo_captured[i].step, step) == 0)
            return pgo_captured[i].xid;
    return 0;
}

/* ---- tests ---- */

static void
test_multi_insert_ordinals(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    wr_lsn_t f = step_final("insert");

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "insert", &err), 0);
    CHECK(f != 0);
    /* BEGIN, 2 inserts, COMMIT */
    CHECK_INT_EQ(r.n, 4);
    CHECK_INT_EQ(r.ev[0].kind, DEST_EV_BEGIN);
    CHECK_U64_EQ(r.ev[0].key.commit_lsn, f);
    CHECK_INT_EQ(r.ev[0].key.ordinal, 0);
    CHECK_U64_EQ(r.ev[0].xid, step_xid("insert"));
    CHECK(r.ev[0].commit_ts > DEST_PG_EPOCH_OFFSET_US); /* moved to the Unix epoch */
    for (int i = 1; i <= 2; i++) {
        CHECK_INT_EQ(r.ev[i].kind, DEST_EV_INSERT);
        CHECK_U64_EQ(r.ev[i].key.commit_lsn, f);
        CHECK_INT_EQ(r.ev[i].key.ordinal, i);
        CHECK_U64_EQ(r.ev[i].relid, PGO_CAP_RELID_T1);
        CHECK(r.ev[i].new_row != NULL);
        CHECK(r.ev[i].old_row == NULL);
        CHECK_U64_EQ(r.ev[i].xid, step_xid("insert"));
        CHECK_U64_EQ(r.ev[i].commit_ts, r.ev[0].commit_ts);
        CHECK(r.msglen[i] > 0);
    }
    CHECK_INT_EQ(r.ev[3].kind, DEST_EV_COMMIT);
    CHECK_INT_EQ(r.ev[3].key.ordinal, 2);
    CHECK_U64_EQ(r.ev[3].end_lsn, lsn_of("0/1557028"));
    CHECK_U64_EQ(r.last_end, lsn_of("0/1557028"));
    CHECK_INT_EQ(r.relations, 1);
    CHECK(!s.tx.in_tx);
    CHECK(!s.tx.begun);
    CHECK(s.received >= lsn_of("0/1557028"));
    stm_close(&s);
}

static void
test_update_delete_translation(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "full", &err), 0);
    CHECK_INT_EQ(r.n, 5);
    CHECK_INT_EQ(r.ev[1].kind, DEST_EV_INSERT);
    CHECK_INT_EQ(r.ev[2].kind, DEST_EV_UPDATE);
    CHECK_INT_EQ(r.ev[2].old_kind, 'O'); /* REPLICA IDENTITY FULL */
    CHECK(r.ev[2].old_row != NULL && r.ev[2].new_row != NULL);
    CHECK_INT_EQ(r.ev[3].kind, DEST_EV_DELETE);
    CHECK(r.ev[3].old_row != NULL && r.ev[3].new_row == NULL);
    CHECK_INT_EQ(r.ev[3].key.ordinal, 3);
    CHECK_U64_EQ(r.ev[3].relid, PGO_CAP_RELID_T2);
    CHECK_INT_EQ(r.ev[4].kind, DEST_EV_COMMIT);
    CHECK_INT_EQ(r.ev[4].key.ordinal, 3);
    stm_close(&s);
}

static void
test_truncate_ordinals(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    wr_lsn_t f = step_final("truncate");

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "truncate", &err), 0);
    /* BEGIN, insert t3, insert t4, truncate t3, truncate t4, COMMIT */
    CHECK_INT_EQ(r.n, 6);
    CHECK_INT_EQ(r.ev[3].kind, DEST_EV_TRUNCATE);
    CHECK_INT_EQ(r.ev[3].key.ordinal, 3);
    CHECK_INT_EQ(r.ev[4].kind, DEST_EV_TRUNCATE);
    CHECK_INT_EQ(r.ev[4].key.ordinal, 4);
    CHECK_U64_EQ(r.ev[3].key.commit_lsn, f);
    CHECK_U64_EQ(r.ev[3].relid, PGO_CAP_RELID_T3);
    CHECK_U64_EQ(r.ev[4].relid, PGO_CAP_RELID_T4);
    CHECK_INT_EQ(r.ev[3].truncate_flags, 3); /* CASCADE | RESTART IDENTITY */
    CHECK(r.msglen[3] > 0);
    CHECK_INT_EQ(r.msglen[4], 0); /* the message's size counted once */
    CHECK_INT_EQ(r.ev[5].kind, DEST_EV_COMMIT);
    CHECK_INT_EQ(r.ev[5].key.ordinal, 4);
    CHECK_INT_EQ(r.last_commit_ord, 4);
    stm_close(&s);
}

/* Skipped tables still count: the one-table filter sees the same keys. */
static void
test_skipped_tables_count(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    r.only_relid = PGO_CAP_RELID_T4;
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "insert", &err), 0);
    CHECK_INT_EQ(r.n, 0); /* nothing written: no BEGIN, no COMMIT */
    CHECK_INT_EQ(r.commits, 1);
    CHECK_INT_EQ(feed_step(&s, "truncate", &err), 0);
    CHECK_INT_EQ(r.n, 4); /* BEGIN, insert t4 (2), truncate t4 (4), COMMIT */
    CHECK_INT_EQ(r.ev[0].kind, DEST_EV_BEGIN);
    CHECK_INT_EQ(r.ev[1].key.ordinal, 2);
    CHECK_U64_EQ(r.ev[1].relid, PGO_CAP_RELID_T4);
    CHECK_INT_EQ(r.ev[2].kind, DEST_EV_TRUNCATE);
    CHECK_INT_EQ(r.ev[2].key.ordinal, 4);
    CHECK(r.msglen[2] > 0); /* the first written relid of the TRUNCATE carries the size */
    CHECK_INT_EQ(r.ev[3].kind, DEST_EV_COMMIT);
    CHECK_INT_EQ(r.ev[3].key.ordinal, 4);
    stm_close(&s);
}

/* Type, Origin and logical Message are not counted. */
static void
test_other_messages_not_counted(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "message", &err), 0);
    CHECK_INT_EQ(feed_step(&s, "origin", &err), 0);
    CHECK_INT_EQ(r.n, 6);
    CHECK_INT_EQ(r.ev[1].key.ordinal, 1);
    CHECK_INT_EQ(r.ev[4].key.ordinal, 1);
    CHECK_INT_EQ(r.commits, 2);
    stm_close(&s);
}

/* BEGIN again after the worker rolled back (cleared begun) inside the transaction. */
static void
test_begin_after_rollback(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    int idx = 0;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        if (strcmp(pgo_captured[i].step, "insert") != 0)
            continue;
        CHECK_INT_EQ(feed_hex(&s, pgo_captured[i].hex, lsn_of(pgo_captured[i].lsn), &err), 0);
        if (strncmp(pgo_captured[i].hex, "49", 2) == 0 && idx++ == 0)
            s.tx.begun = false; /* the worker's batch was rolled back */
    }
    /* BEGIN, I1, BEGIN, I2, COMMIT */
    CHECK_INT_EQ(r.n, 5);
    CHECK_INT_EQ(r.ev[2].kind, DEST_EV_BEGIN);
    CHECK_INT_EQ(r.ev[2].key.ordinal, 0);
    CHECK_INT_EQ(r.ev[3].key.ordinal, 2);
    stm_close(&s);
}

static void
test_commit_lsn_mismatch(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    char bad[64];

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        const char *hex = pgo_captured[i].hex;

        if (strcmp(pgo_captured[i].step, "delete") != 0)
            continue;
        if (strncmp(hex, "43", 2) == 0) {
            /* 'C', flags, then the commit LSN: change its last byte */
            snprintf(bad, sizeof(bad), "%s", hex);
            bad[19] = bad[19] == '0' ? '1' : '0';
            CHECK_INT_EQ(feed_hex(&s, bad, 0, &err), WR_EPROTO);
            CHECK(strstr(err.msg, "incorrect commit LSN") != NULL);
            CHECK(strstr(err.msg, "expected 0/1557338") != NULL);
        } else {
            CHECK_INT_EQ(feed_hex(&s, hex, 0, &err), 0);
        }
    }
    CHECK_INT_EQ(r.commits, 0);
    stm_close(&s);
}

static void
test_protocol_errors(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    const char *ins = NULL, *beg = NULL, *com = NULL, *tru = NULL;

    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        const char *h = pgo_captured[i].hex;
        if (strcmp(pgo_captured[i].step, "truncate") != 0)
            continue;
        if (!strncmp(h, "49", 2) && ins == NULL)
            ins = h;
        if (!strncmp(h, "42", 2))
            beg = h;
        if (!strncmp(h, "43", 2))
            com = h;
        if (!strncmp(h, "54", 2))
            tru = h;
    }
    memset(&r, 0, sizeof(r));
    stm_init(&s, &rec_handler, &r);
    wr_err_clear(&err);
    CHECK_INT_EQ(feed_hex(&s, ins, 0, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "outside a transaction") != NULL);
    CHECK_INT_EQ(feed_hex(&s, tru, 0, &err), WR_EPROTO);
    CHECK_INT_EQ(feed_hex(&s, com, 0, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "commit message outside a transaction") != NULL);
    CHECK_INT_EQ(feed_hex(&s, beg, 0, &err), 0);
    CHECK_INT_EQ(feed_hex(&s, beg, 0, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "inside transaction") != NULL);
    CHECK_INT_EQ(r.n, 0);
    stm_close(&s);

    /* a commit time that does not fit the Unix epoch (found by fuzz_stream): an error,
     * not an overflow. 'B', final LSN (8), commit time (8), xid (4) */
    {
        char bad[64];

        snprintf(bad, sizeof(bad), "%.18s%s%s", beg, "7ffffffffffffff0", beg + 34);
        memset(&r, 0, sizeof(r));
        stm_init(&s, &rec_handler, &r);
        wr_err_clear(&err);
        CHECK_INT_EQ(feed_hex(&s, bad, 0, &err), WR_EPROTO);
        CHECK_CONTAINS(err.msg, "commit time");
        CHECK(!s.tx.in_tx);
        stm_close(&s);
    }
}

static void
test_ordinal_overflow(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    const char *ins = NULL, *beg = NULL;

    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        const char *h = pgo_captured[i].hex;
        if (strcmp(pgo_captured[i].step, "truncate") != 0)
            continue;
        if (!strncmp(h, "49", 2) && ins == NULL)
            ins = h;
        if (!strncmp(h, "42", 2))
            beg = h;
    }
    memset(&r, 0, sizeof(r));
    stm_init(&s, &rec_handler, &r);
    wr_err_clear(&err);
    CHECK_INT_EQ(feed_hex(&s, beg, 0, &err), 0);
    s.tx.ordinal = UINT32_MAX - 1;
    CHECK_INT_EQ(feed_hex(&s, ins, 0, &err), 0);
    CHECK_U64_EQ(r.ev[1].key.ordinal, UINT32_MAX);
    CHECK_INT_EQ(feed_hex(&s, ins, 0, &err), WR_EUNSUPPORTED);
    CHECK(strstr(err.msg, "too many changes") != NULL);
    CHECK_INT_EQ(r.n, 2);
    stm_close(&s);
}

static void
test_handler_stop(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    r.stop_on_commit = true;
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(feed_step(&s, "delete", &err), STM_STOP);
    CHECK(!s.tx.in_tx);
    stm_close(&s);
}

static int
feed_bytes(stm_t *s, const uint8_t *src, size_t n, wr_err_t *err)
{
    uint8_t *b = malloc(n ? n : 1);
    int rc;

    memcpy(b, src, n);
    rc = stm_on_copydata(s, b, n, err);
    free(b);
    return rc;
}

static void
test_keepalive(void)
{
    rec_t r;
    stm_t s;
    wr_err_t err;
    uint8_t k[18];

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    stm_init(&s, &rec_handler, &r);
    k[0] = 'k';
    put_u64(k + 1, 0x1559000);
    put_u64(k + 9, 0);
    k[17] = 1;
    CHECK_INT_EQ(feed_bytes(&s, k, sizeof(k), &err), 0);
    CHECK_INT_EQ(r.keepalives, 1);
    CHECK(r.ka_reply);
    CHECK_U64_EQ(r.ka_end, 0x1559000);
    CHECK_U64_EQ(s.received, 0x1559000);
    k[17] = 0;
    put_u64(k + 1, 0x1000); /* older: received never goes back */
    CHECK_INT_EQ(feed_bytes(&s, k, sizeof(k), &err), 0);
    CHECK(!r.ka_reply);
    CHECK_U64_EQ(s.received, 0x1559000);
    CHECK_INT_EQ(feed_bytes(&s, k, 17, &err), WR_EPROTO);
    CHECK_INT_EQ(feed_bytes(&s, (const uint8_t *)"x", 1, &err), WR_EPROTO);
    CHECK(strstr(err.msg, "0x78") != NULL);
    CHECK_INT_EQ(feed_bytes(&s, (const uint8_t *)"", 0, &err), WR_EPROTO);
    CHECK_INT_EQ(feed_bytes(&s, (const uint8_t *)"w12345", 6, &err), WR_EPROTO);
    CHECK_INT_EQ(r.keepalives, 2);
    stm_close(&s);
}

static void
test_feedback_timing(void)
{
    stm_fb_t fb;

    memset(&fb, 0, sizeof(fb));
    stm_fb_sent(&fb, 1000, 10, 10);
    CHECK(!stm_fb_due(&fb, 1500, 10, 10));
    CHECK(!stm_fb_due(&fb, 1099, 20, 10)); /* moved, but less than STM_STATUS_MIN_MS ago */
    CHECK(stm_fb_due(&fb, 1100, 20, 10));
    CHECK(stm_fb_due(&fb, 1100, 10, 20));
    CHECK(stm_fb_due(&fb, 2000, 10, 20));
    CHECK(!stm_fb_due(&fb, 10999, 10, 10));
    CHECK(stm_fb_due(&fb, 11000, 10, 10)); /* at least every 10 s */
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 4000, 10, 10), 7000);
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 12000, 10, 10), 0);
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 1040, 20, 10), 60); /* moved: STM_STATUS_MIN_MS */
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 1040, 10, 20), 60);
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 4000, 20, 10), 0);
    stm_fb_sent(&fb, 2000, 20, 20);
    CHECK(!stm_fb_due(&fb, 2500, 20, 20));
    CHECK(!stm_fb_due(&fb, 2050, 30, 20));
    CHECK(stm_fb_due(&fb, 2100, 30, 20));
}

/* ---- the engine's I/O half, through a fake transport -------------------------------- */

#define FT_FRAMES 64
#define FT_SENDS  512

/* A transport that hands out queued frames and records status updates. The engine calls
 * it under its own lock; mu guards what the test thread reads while a keeper runs. */
typedef struct ft_s {
    pthread_mutex_t mu;
    uint8_t *frames[FT_FRAMES];
    size_t lens[FT_FRAMES];
    int nframes, next;
    int consumed;
    int consume_rc; /* returned by consume (0: works) */
    int eof_at;     /* recv returns WR_EEOF when next reaches it (-1: never) */
    int released;
    int nsent;
    wr_lsn_t sent_write[FT_SENDS], sent_flush[FT_SENDS];
    int64_t sent_ms[FT_SENDS];
    int fail_after;   /* sends that succeed before every later one fails (-1: never) */
    wr_lsn_t durable; /* the highest flush the test made durable (set before stm_set_flush) */
    int ahead;        /* sends whose flush was ahead of durable: must stay 0 */
    int regressed;    /* sends whose flush or write went back */
} ft_t;

static void
ft_init(ft_t *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    f->eof_at = -1;
    f->fail_after = -1;
}

static void
ft_close(ft_t *f)
{
    for (int i = f->next; i < f->nframes; i++)
        free(f->frames[i]);
    pthread_mutex_destroy(&f->mu);
}

static void
ft_push(ft_t *f, const uint8_t *b, size_t n)
{
    uint8_t *c = malloc(n);

    memcpy(c, b, n);
    f->frames[f->nframes] = c;
    f->lens[f->nframes] = n;
    f->nframes++;
}

/* An XLogData frame of a hex pgoutput message at lsn. */
static void
ft_push_hex(ft_t *f, const char *hex, wr_lsn_t lsn)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(25 + n);

    b[0] = 'w';
    put_u64(b + 1, lsn);
    put_u64(b + 9, lsn);
    put_u64(b + 17, 0);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        b[25 + i] = (uint8_t)v;
    }
    ft_push(f, b, 25 + n);
    free(b);
}

static void
ft_push_step(ft_t *f, const char *step)
{
    for (size_t i = 0; i < PGO_CAP_COUNT; i++)
        if (strcmp(pgo_captured[i].step, step) == 0)
            ft_push_hex(f, pgo_captured[i].hex, lsn_of(pgo_captured[i].lsn));
}

static void
ft_push_keepalive(ft_t *f, wr_lsn_t wal_end, bool reply)
{
    uint8_t k[18];

    k[0] = 'k';
    put_u64(k + 1, wal_end);
    put_u64(k + 9, 0);
    k[17] = reply ? 1 : 0;
    ft_push(f, k, sizeof(k));
}

static void
ft_set_durable(ft_t *f, wr_lsn_t lsn)
{
    pthread_mutex_lock(&f->mu);
    f->durable = lsn;
    pthread_mutex_unlock(&f->mu);
}

static int
ft_sends(ft_t *f)
{
    int n;

    pthread_mutex_lock(&f->mu);
    n = f->nsent;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static int
ft_consume(void *ctx, wr_err_t *err)
{
    ft_t *f = ctx;

    f->consumed++;
    if (f->consume_rc != 0)
        return wr_err_set(err, f->consume_rc, "replication connection lost: test");
    return 0;
}

static int
ft_recv(void *ctx, char **buf, wr_err_t *err)
{
    ft_t *f = ctx;
    int n;

    *buf = NULL;
    if (f->eof_at >= 0 && f->next >= f->eof_at)
        return wr_err_set(err, WR_EEOF, "the server ended the replication stream");
    if (f->next >= f->nframes)
        return 0;
    *buf = (char *)f->frames[f->next];
    n = (int)f->lens[f->next];
    f->frames[f->next++] = NULL;
    return n;
}

static void
ft_release(void *ctx, char *buf)
{
    ft_t *f = ctx;

    f->released++;
    free(buf);
}

static int
ft_send(void *ctx, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply, wr_err_t *err)
{
    ft_t *f = ctx;
    int rc = 0;

    pthread_mutex_lock(&f->mu);
    if (f->fail_after >= 0 && f->nsent >= f->fail_after) {
        rc = wr_err_set(err, WR_ECONN, "sending standby status update: broken pipe");
    } else if (f->nsent < FT_SENDS) {
        if (flush > f->durable || apply != flush || write < flush)
            f->ahead++;
        if (f->nsent > 0 &&
            (flush < f->sent_flush[f->nsent - 1] || write < f->sent_write[f->nsent - 1]))
            f->regressed++;
        f->sent_write[f->nsent] = write;
        f->sent_flush[f->nsent] = flush;
        f->sent_ms[f->nsent] = wr_now_ms();
        f->nsent++;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int
ft_socket(void *ctx)
{
    (void)ctx;
    return -1;
}

static const stm_io_t ft_io = {ft_consume, ft_recv, ft_release, ft_send, ft_socket};

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void
test_status_interval(void)
{
    CHECK_INT_EQ(stm_status_interval(0), STM_STATUS_INTERVAL_MS);  /* off */
    CHECK_INT_EQ(stm_status_interval(-1), STM_STATUS_INTERVAL_MS); /* not read */
    CHECK_INT_EQ(stm_status_interval(60000), 10000);               /* the default: as before */
    CHECK_INT_EQ(stm_status_interval(30000), 10000);
    CHECK_INT_EQ(stm_status_interval(29999), 9999);
    CHECK_INT_EQ(stm_status_interval(2000), 666);
    CHECK_INT_EQ(stm_status_interval(1), STM_STATUS_FLOOR_MS);
}

static void
test_parse_guc_ms(void)
{
    int64_t ms = -5;

    CHECK_INT_EQ(repl_parse_guc_ms("60s", &ms), 0);
    CHECK_INT_EQ(ms, 60000);
    CHECK_INT_EQ(repl_parse_guc_ms("1min", &ms), 0);
    CHECK_INT_EQ(ms, 60000);
    CHECK_INT_EQ(repl_parse_guc_ms("500ms", &ms), 0);
    CHECK_INT_EQ(ms, 500);
    CHECK_INT_EQ(repl_parse_guc_ms("2500", &ms), 0); /* no unit: milliseconds */
    CHECK_INT_EQ(ms, 2500);
    CHECK_INT_EQ(repl_parse_guc_ms("0", &ms), 0);
    CHECK_INT_EQ(ms, 0);
    CHECK_INT_EQ(repl_parse_guc_ms("2h", &ms), 0);
    CHECK_INT_EQ(ms, 7200000);
    CHECK_INT_EQ(repl_parse_guc_ms("1d", &ms), 0);
    CHECK_INT_EQ(ms, 86400000);
    CHECK_INT_EQ(repl_parse_guc_ms("2500us", &ms), 0);
    CHECK_INT_EQ(ms, 2);
    CHECK_INT_EQ(repl_parse_guc_ms("10us", &ms), 0); /* positive stays positive */
    CHECK_INT_EQ(ms, 1);
    ms = 77;
    CHECK_INT_EQ(repl_parse_guc_ms("", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("s", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("-1", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("10 s", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("10sec", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("99999999999999999999", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms("999999999999999999d", &ms), WR_EINVAL);
    CHECK_INT_EQ(repl_parse_guc_ms(NULL, &ms), WR_EINVAL);
    CHECK_INT_EQ(ms, 77); /* untouched on error */
}

/* Everything buffered is handed over in one step; STM_IDLE says nothing is left. */
static void
test_recv_drains(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    size_t n = 0;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    CHECK(stm_recv(&s, true, -1, &n, &err) == WR_ECONN); /* not started */
    ft_push_step(&f, "insert");
    ft_push_step(&f, "truncate");
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0x1000, false, &err), 0);
    CHECK(stm_streaming(&s));
    CHECK(stm_conn(&s) == NULL);
    CHECK_U64_EQ(s.received, 0x1000);
    CHECK_INT_EQ(stm_recv(&s, true, -1, &n, &err), STM_IDLE);
    CHECK_INT_EQ(f.consumed, 1);
    CHECK_INT_EQ((int)n, f.nframes);
    CHECK_INT_EQ(f.released, f.nframes);
    CHECK_INT_EQ(r.commits, 2);
    CHECK_INT_EQ(r.n, 4 + 6);
    CHECK(!s.buffered);
    CHECK_INT_EQ(stm_recv(&s, false, -1, &n, &err), STM_IDLE); /* nothing more */
    CHECK_INT_EQ((int)n, 0);
    CHECK_INT_EQ(f.consumed, 1);
    CHECK_INT_EQ(f.nsent, 0); /* nothing due yet: the interval is 10 s */
    stm_close(&s);
    CHECK(!stm_streaming(&s));
    ft_close(&f);
}

/* hold() and the time budget leave the rest buffered (STM_MORE); stm_wait then does not
 * wait; STM_STOP leaves the rest too. */
static void
test_recv_hold_budget_stop(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    size_t n = 0;
    bool readable = false;
    int64_t t0;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    ft_push_step(&f, "insert"); /* Relation, Begin, 2 inserts, Commit */
    ft_push_step(&f, "truncate");
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0, false, &err), 0);
    r.hold_after = 2; /* BEGIN + first insert recorded */
    CHECK_INT_EQ(stm_recv(&s, true, -1, &n, &err), STM_MORE);
    CHECK_INT_EQ(r.n, 2);
    CHECK(s.buffered);
    CHECK(f.next < f.nframes);
    t0 = wr_now_ms();
    CHECK_INT_EQ(stm_wait(&s, -1, 5000, &readable, &err), 0);
    CHECK(readable);
    CHECK(s.extra_ready);           /* buffered: the other fd was not looked at, so "maybe" */
    CHECK(wr_now_ms() - t0 < 1000); /* buffered: no wait */
    r.hold_after = 0;
    /* a budget of 0 ms: one message per step */
    CHECK_INT_EQ(stm_recv(&s, false, 0, &n, &err), STM_MORE);
    CHECK_INT_EQ((int)n, 1);
    r.stop_on_commit = true;
    CHECK_INT_EQ(stm_recv(&s, false, -1, &n, &err), STM_STOP);
    CHECK_INT_EQ(r.commits, 1);
    CHECK(s.buffered);
    CHECK(f.next < f.nframes); /* the truncate transaction stays buffered */
    r.stop_on_commit = false;
    CHECK_INT_EQ(stm_recv(&s, false, -1, &n, &err), STM_IDLE);
    CHECK_INT_EQ(r.commits, 2);
    CHECK_INT_EQ(f.next, f.nframes);
    stm_close(&s);
    ft_close(&f);
}

/* A keepalive asking for a reply is answered at once, with the flush its handler moved;
 * one that does not ask is not. */
static void
test_recv_keepalive_reply(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    r.flush_on_keepalive = &s;
    f.durable = 0x3000;
    ft_push_keepalive(&f, 0x2000, false);
    ft_push_keepalive(&f, 0x3000, true);
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0x1000, false, &err), 0);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), STM_IDLE);
    CHECK_INT_EQ(r.keepalives, 2);
    CHECK_INT_EQ(f.nsent, 1);
    CHECK_U64_EQ(f.sent_flush[0], 0x3000);
    CHECK_U64_EQ(f.sent_write[0], 0x3000);
    CHECK(!s.reply_pending);
    CHECK_INT_EQ(f.ahead, 0);
    /* the reply counts as the status update: none due right after it */
    CHECK_INT_EQ(stm_feedback(&s, false, &err), 0);
    CHECK_INT_EQ(f.nsent, 1);
    CHECK_INT_EQ(stm_feedback(&s, true, &err), 0);
    CHECK_INT_EQ(f.nsent, 2);
    stm_close(&s);
    ft_close(&f);
}

/* Status timing on the attached stream: the interval follows wal_sender_timeout; write
 * never below flush; stm_wait stops at the next status due. */
static void
test_feedback_interval(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    bool readable = true;
    int64_t t0, waited;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 300, 0x500, false, &err), 0);
    CHECK_INT_EQ(s.fb.interval_ms, 100);
    CHECK_INT_EQ(stm_feedback(&s, false, &err), 0);
    CHECK_INT_EQ(f.nsent, 0);
    t0 = wr_now_ms();
    CHECK_INT_EQ(stm_wait(&s, -1, 5000, &readable, &err), 0); /* until the status is due */
    waited = wr_now_ms() - t0;
    CHECK(!readable);
    CHECK(!s.extra_ready); /* no extra fd: nothing to read there */
    CHECK(waited >= 50 && waited < 3000);
    {
        /* the extra fd (the worker's channel): ready only when poll() saw it readable */
        int pfd[2];

        CHECK_INT_EQ(pipe(pfd), 0);
        CHECK_INT_EQ(stm_wait(&s, pfd[0], 0, &readable, &err), 0);
        CHECK(!s.extra_ready);
        CHECK_INT_EQ((int)write(pfd[1], "x", 1), 1);
        CHECK_INT_EQ(stm_wait(&s, pfd[0], 0, &readable, &err), 0);
        CHECK(s.extra_ready);
        CHECK(!readable);
        close(pfd[0]);
        close(pfd[1]);
    }
    sleep_ms(120);
    f.durable = 0x900;
    stm_set_flush(&s, 0x900);
    stm_set_flush(&s, 0x800); /* never back */
    CHECK_U64_EQ(s.flush, 0x900);
    CHECK_INT_EQ(stm_feedback(&s, false, &err), 0);
    CHECK_INT_EQ(f.nsent, 1);
    CHECK_U64_EQ(f.sent_flush[0], 0x900);
    CHECK_U64_EQ(f.sent_write[0], 0x900); /* received was 0x500: write is never below flush */
    CHECK_INT_EQ(f.ahead, 0);
    stm_close(&s);
    ft_close(&f);
}

static void
test_recv_errors(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    ft_push_step(&f, "insert");
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0, false, &err), 0);
    f.consume_rc = WR_ECONN;
    wr_err_clear(&err);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), WR_ECONN);
    CHECK_CONTAINS(err.msg, "connection lost");
    CHECK_INT_EQ(r.n, 0);
    f.consume_rc = 0;
    f.eof_at = 2; /* the server ends the stream: a restart (WR_ECONN), not fd 3's EOF */
    wr_err_clear(&err);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), WR_ECONN);
    CHECK_INT_EQ(err.code, WR_ECONN);
    CHECK_CONTAINS(err.msg, "ended the replication stream");
    stm_close(&s);
    ft_close(&f);

    /* a malformed frame: the decoder's error, the buffer released */
    memset(&r, 0, sizeof(r));
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    ft_push(&f, (const uint8_t *)"x", 1);
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0, false, &err), 0);
    wr_err_clear(&err);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), WR_EPROTO);
    CHECK_INT_EQ(f.released, 1);
    stm_close(&s);
    ft_close(&f);
}

/* A handler that closes the stream (the sync worker at SyncDone) ends the step at once;
 * the buffer is still released. */
static void
test_recv_disconnect_in_handler(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    r.disconnect_on_commit = &s;
    ft_push_step(&f, "insert");
    ft_push_step(&f, "truncate");
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 300, 0, true, &err), 0);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), STM_STOP);
    CHECK(!stm_streaming(&s));
    CHECK(s.keeper == NULL);
    CHECK_INT_EQ(r.commits, 1);
    CHECK_INT_EQ(f.released, f.next);
    CHECK_INT_EQ(stm_feedback(&s, true, &err), 0); /* nothing to send any more */
    stm_close(&s);
    ft_close(&f);
}

/* The keeper sends while the main thread is busy elsewhere (a destination call): at the
 * interval, with the last flush made durable, never ahead of it. */
static void
test_keeper_sends_while_busy(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    int n0, n1, gaps_ok = 1;
    int64_t deadline;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    ft_push_step(&f, "insert");
    f.durable = 0x100;
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 300, 0x100, true, &err), 0); /* every 100 ms */
    CHECK(s.keeper != NULL);
    CHECK_INT_EQ(stm_recv(&s, true, -1, NULL, &err), STM_IDLE); /* received moves */
    /* "inside a destination commit": the main thread does not touch the engine */
    sleep_ms(1000);
    n0 = ft_sends(&f);
    CHECK(n0 >= 3);
    CHECK(stm_keeper_sent(&s) >= 3);
    pthread_mutex_lock(&f.mu);
    for (int i = 1; i < f.nsent; i++)
        if (f.sent_ms[i] - f.sent_ms[i - 1] > 1000) /* 100 ms, with room for a loaded box */
            gaps_ok = 0;
    CHECK_U64_EQ(f.sent_flush[0], 0x100);
    CHECK(f.sent_write[f.nsent - 1] >= lsn_of("0/1557028")); /* the published received */
    pthread_mutex_unlock(&f.mu);
    CHECK(gaps_ok);
    /* the destination made more durable while the main thread keeps being away */
    for (wr_lsn_t l = 0x200; l <= 0x2000; l += 0x200) {
        ft_set_durable(&f, l);
        stm_set_flush(&s, l);
        sleep_ms(15);
    }
    deadline = wr_now_ms() + 3000;
    for (;;) {
        wr_lsn_t last;

        pthread_mutex_lock(&f.mu);
        last = f.sent_flush[f.nsent - 1];
        pthread_mutex_unlock(&f.mu);
        if (last == 0x2000 || wr_now_ms() > deadline) {
            CHECK_U64_EQ(last, 0x2000);
            break;
        }
        sleep_ms(20);
    }
    n1 = ft_sends(&f);
    CHECK(n1 > n0);
    CHECK_INT_EQ(f.ahead, 0);
    CHECK_INT_EQ(f.regressed, 0);
    stm_close(&s);
    CHECK(s.keeper == NULL);
    n1 = ft_sends(&f);
    sleep_ms(250);
    CHECK_INT_EQ(ft_sends(&f), n1); /* stopped with the stream */
    ft_close(&f);
}

/* A send the keeper could not make is the main thread's error at its next step. */
static void
test_keeper_failure_reported(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    int64_t deadline;
    int rc;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    f.fail_after = 1; /* the keeper's second send fails */
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 150, 0, true, &err), 0); /* every 50 ms */
    deadline = wr_now_ms() + 5000;
    do {
        sleep_ms(20);
        wr_err_clear(&err);
        rc = stm_recv(&s, false, -1, NULL, &err);
    } while (rc == STM_IDLE && wr_now_ms() < deadline);
    CHECK_INT_EQ(rc, WR_ECONN);
    CHECK_CONTAINS(err.msg, "broken pipe");
    CHECK_INT_EQ(ft_sends(&f), 1);
    CHECK(stm_keeper_sent(&s) == 1);
    wr_err_clear(&err);
    CHECK_INT_EQ(stm_feedback(&s, false, &err), WR_ECONN); /* and stays an error */
    CHECK_CONTAINS(err.msg, "broken pipe");
    stm_close(&s);
    ft_close(&f);
}

static volatile sig_atomic_t sig_count;
static pthread_t sig_main;
static volatile sig_atomic_t sig_elsewhere;

static void
on_usr1(int sig)
{
    (void)sig;
    sig_count++;
    if (!pthread_equal(pthread_self(), sig_main))
        sig_elsewhere = 1;
}

/* The keeper blocks every signal: a signal to the process reaches the main thread (whose
 * poll() must see EINTR; handlers only set flags). While the main thread blocks SIGUSR1
 * the signal stays pending unless another thread accepts it; the keeper must not. */
static void
test_keeper_leaves_signals(void)
{
    rec_t r;
    stm_t s;
    ft_t f;
    wr_err_t err;
    struct sigaction sa, old;
    sigset_t usr1;

    memset(&r, 0, sizeof(r));
    wr_err_clear(&err);
    ft_init(&f);
    stm_init(&s, &rec_handler, &r);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sig_main = pthread_self();
    sig_count = 0;
    sig_elsewhere = 0;
    CHECK_INT_EQ(stm_attach(&s, &ft_io, &f, 60000, 0, true, &err), 0);
    for (int i = 0; i < 5; i++) {
        pthread_sigmask(SIG_BLOCK, &usr1, NULL);
        kill(getpid(), SIGUSR1);
        sleep_ms(30); /* a thread that accepts SIGUSR1 would take it now */
        pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    }
    CHECK_INT_EQ(sig_count, 5);
    CHECK_INT_EQ(sig_elsewhere, 0);
    stm_close(&s);
    sigaction(SIGUSR1, &old, NULL);
    ft_close(&f);
}

int
main(void)
{
    RUN(test_multi_insert_ordinals);
    RUN(test_update_delete_translation);
    RUN(test_truncate_ordinals);
    RUN(test_skipped_tables_count);
    RUN(test_other_messages_not_counted);
    RUN(test_begin_after_rollback);
    RUN(test_commit_lsn_mismatch);
    RUN(test_protocol_errors);
    RUN(test_ordinal_overflow);
    RUN(test_handler_stop);
    RUN(test_keepalive);
    RUN(test_feedback_timing);
    RUN(test_status_interval);
    RUN(test_parse_guc_ms);
    RUN(test_recv_drains);
    RUN(test_recv_hold_budget_stop);
    RUN(test_recv_keepalive_reply);
    RUN(test_feedback_interval);
    RUN(test_recv_errors);
    RUN(test_recv_disconnect_in_handler);
    RUN(test_keeper_sends_while_busy);
    RUN(test_keeper_failure_reported);
    RUN(test_keeper_leaves_signals);
    return unit_done();
}
