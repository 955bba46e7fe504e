/*
 * test_stream.c - unit tests of the replication stream engine (common/stream.c) on
 * pgoutput messages captured from PostgreSQL 15, wrapped in XLogData frames.
 *
 * NOTES: needs no server (data/pgoutput_captured.h). Covers ordinals (multi-row
 * transactions, TRUNCATE of two tables, skipped tables), the commit-LSN check, the
 * translation into destination events including BEGIN/COMMIT, keepalives and the
 * status feedback timing. Every frame is an exactly-sized heap copy (ASan).
 */
#include "unit.h"

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
    return 0;
}

static const stm_handler_t rec_handler = {rec_relation, rec_change, rec_commit, rec_keepalive};

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
    CHECK(!stm_fb_due(&fb, 1500, 20, 10)); /* moved, but less than a second ago */
    CHECK(stm_fb_due(&fb, 2000, 20, 10));
    CHECK(stm_fb_due(&fb, 2000, 10, 20));
    CHECK(!stm_fb_due(&fb, 10999, 10, 10));
    CHECK(stm_fb_due(&fb, 11000, 10, 10)); /* at least every 10 s */
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 4000), 7000);
    CHECK_INT_EQ(stm_fb_wait_ms(&fb, 12000), 0);
    stm_fb_sent(&fb, 2000, 20, 20);
    CHECK(!stm_fb_due(&fb, 2500, 20, 20));
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
    return unit_done();
}
