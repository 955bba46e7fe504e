/*
 * test_pgoutput.c - unit tests of the pgoutput decoder on bytes captured from PostgreSQL 15.
 *
 * NOTES: needs no server: the messages are in data/pgoutput_captured.h, generated once by
 * data/capture_pgoutput.py (see its header for the workload). Every decode runs on an
 * exactly-sized heap copy so that AddressSanitizer catches any read past the end.
 */
#include "unit.h"

#include "common/pgoutput.h"
#include "data/pgoutput_captured.h"

/* ---- helpers ---- */

static uint8_t *
hex_bytes(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(n ? n : 1);

    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        b[i] = (uint8_t)v;
    }
    *len = n;
    return b;
}

static uint8_t *
cap_bytes(size_t i, size_t *len)
{
    return hex_bytes(pgo_captured[i].hex, len);
}

/* Index of the nth (0-based) captured message of a step with a given type byte, or -1. */
static int
cap_find(const char *step, char type, int nth)
{
    char want[3];

    snprintf(want, sizeof(want), "%02x", (unsigned)(unsigned char)type);
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        if (strcmp(pgo_captured[i].step, step) != 0)
            continue;
        if (strncmp(pgo_captured[i].hex, want, 2) != 0)
            continue;
        if (nth-- == 0)
            return (int)i;
    }
    return -1;
}

static wr_lsn_t
lsn_of(const char *text)
{
    wr_lsn_t l = 0;

    if (wr_lsn_parse(text, &l) != 0)
        return 0;
    return l;
}

/* Value i of a row equals text s (kind 't'). */
static int
val_is(const wr_row_t *row, int i, const char *s)
{
    const wr_val_t *v = &row->vals[i];

    return v->kind == 't' && v->len == strlen(s) && memcmp(v->data, s, v->len) == 0;
}

/* A decoded captured message; the buffer stays alive until fixture_done. */
typedef struct fixture_s {
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;
    uint8_t *buf;
    size_t len;
    int rc;
    int idx;
} fixture_t;

static void
fixture_decode(fixture_t *f, const char *step, char type, int nth)
{
    memset(f, 0, sizeof(*f));
    pgo_decoder_init(&f->d);
    f->idx = cap_find(step, type, nth);
    if (f->idx < 0) {
        fprintf(stderr, "  no captured message step=%s type=%c nth=%d\n", step, type, nth);
        f->rc = -100;
        return;
    }
    f->buf = cap_bytes((size_t)f->idx, &f->len);
    f->rc = pgo_decode(&f->d, f->buf, f->len, &f->m, &f->err);
    if (f->rc != 0)
        fprintf(stderr, "  decode failed: %s\n", f->err.msg);
}

static void
fixture_done(fixture_t *f)
{
    pgo_decoder_close(&f->d);
    free(f->buf);
}

/* Decodes hand-made bytes on an exactly-sized heap copy. */
static int
decode_bytes(const uint8_t *bytes, size_t len, pgo_msg_t *m, wr_err_t *err)
{
    pgo_decoder_t d;
    uint8_t *copy = malloc(len ? len : 1);
    int rc;

    if (len > 0)
        memcpy(copy, bytes, len);
    pgo_decoder_init(&d);
    memset(err, 0, sizeof(*err));
    rc = pgo_decode(&d, bytes ? copy : NULL, len, m, err);
    pgo_decoder_close(&d);
    free(copy);
    return rc;
}

static void
put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void
put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- every message type, with real bytes ---- */

static void
test_begin_commit_pairs(void)
{
    pgo_decoder_t d;
    int pairs = 0;
    wr_lsn_t prev_end = 0;
    pgo_msg_t begin = {0};

    pgo_decoder_init(&d);
    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        size_t len;
        uint8_t *b = cap_bytes(i, &len);
        pgo_msg_t m;
        wr_err_t err;

        CHECK_INT_EQ(pgo_decode(&d, b, len, &m, &err), 0);
        if (m.type == PGO_BEGIN) {
            begin = m;
            CHECK_INT_EQ(len, 21);
            CHECK_U64_EQ(m.u.begin.xid, pgo_captured[i].xid);
            CHECK(m.u.begin.final_lsn > prev_end);
        } else if (m.type == PGO_COMMIT) {
            CHECK_INT_EQ(begin.type, PGO_BEGIN);
            CHECK_INT_EQ(m.u.commit.flags, 0);
            /* Begin's final_lsn is the commit record's LSN; Commit's end_lsn is where the
             * record ends, which is also the lsn column of the commit row */
            CHECK_U64_EQ(m.u.commit.commit_lsn, begin.u.begin.final_lsn);
            CHECK(m.u.commit.end_lsn > m.u.commit.commit_lsn);
            CHECK_U64_EQ(m.u.commit.end_lsn, lsn_of(pgo_captured[i].lsn));
            CHECK_INT_EQ(m.u.commit.ts, begin.u.begin.commit_ts);
            CHECK(m.u.commit.ts > 0);
            CHECK_U64_EQ(pgo_captured[i].xid, begin.u.begin.xid);
            prev_end = m.u.commit.end_lsn;
            begin.type = 0;
            pairs++;
        }
        free(b);
    }
    /* insert, update_toast, update_key, full, delete, truncate, message, message_nontx
     * (its carrier transaction touches no published table: not sent), origin */
    CHECK_INT_EQ(pairs, 8);
    pgo_decoder_close(&d);
}

static void
test_type_message(void)
{
    fixture_t f;

    fixture_decode(&f, "insert", 'Y', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_TYPE);
    CHECK_U64_EQ(f.m.u.type.oid, PGO_CAP_OID_MOOD);
    CHECK_STR_EQ(f.m.u.type.nsp, "public");
    CHECK_STR_EQ(f.m.u.type.name, "mood");
    /* the Type message precedes the Relation that uses the type */
    CHECK_INT_EQ(cap_find("insert", 'R', 0), f.idx + 1);
    fixture_done(&f);
}

static void
test_relation_t1(void)
{
    fixture_t f;
    const pgo_relcol_t *c;
    wr_schema_t *s;

    fixture_decode(&f, "insert", 'R', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_RELATION);
    CHECK_U64_EQ(f.m.u.relation.relid, PGO_CAP_RELID_T1);
    CHECK_STR_EQ(f.m.u.relation.nsp, "public");
    CHECK_STR_EQ(f.m.u.relation.name, "t1");
    CHECK_INT_EQ(f.m.u.relation.replident, 'd');
    CHECK_INT_EQ(f.m.u.relation.natts, 5);
    if (f.rc != 0 || f.m.u.relation.natts != 5) {
        fixture_done(&f);
        return;
    }
    c = f.m.u.relation.cols;
    CHECK_STR_EQ(c[0].name, "id");
    CHECK_U64_EQ(c[0].type_oid, 23);
    CHECK_INT_EQ(c[0].typmod, -1);
    CHECK_INT_EQ(c[0].flags, 1);
    CHECK_STR_EQ(c[1].name, "name");
    CHECK_U64_EQ(c[1].type_oid, 1043);
    CHECK_INT_EQ(c[1].typmod, 20 + 4); /* varchar(20) */
    CHECK_INT_EQ(c[1].flags, 0);
    CHECK_STR_EQ(c[2].name, "amount");
    CHECK_U64_EQ(c[2].type_oid, 1700);
    CHECK_INT_EQ(c[2].typmod, ((10 << 16) | 2) + 4); /* numeric(10,2) */
    CHECK_INT_EQ(c[2].flags, 0);
    CHECK_STR_EQ(c[3].name, "m");
    CHECK_U64_EQ(c[3].type_oid, PGO_CAP_OID_MOOD);
    CHECK_INT_EQ(c[3].typmod, -1);
    CHECK_STR_EQ(c[4].name, "big");
    CHECK_U64_EQ(c[4].type_oid, 25);
    CHECK_INT_EQ(c[4].flags, 0);
    /* zero-copy: names point into the message */
    CHECK((const uint8_t *)c[4].name > f.buf && (const uint8_t *)c[4].name < f.buf + f.len);

    s = pgo_relation_schema(&f.m);
    CHECK(s != NULL);
    if (s) {
        CHECK_U64_EQ(s->relid, PGO_CAP_RELID_T1);
        CHECK_STR_EQ(s->nsp, "public");
        CHECK_STR_EQ(s->name, "t1");
        CHECK_INT_EQ(s->replident, 'd');
        CHECK_INT_EQ(s->ncols, 5);
        CHECK_STR_EQ(s->cols[0].name, "id");
        CHECK(s->cols[0].is_key);
        CHECK(!s->cols[1].is_key);
        CHECK_INT_EQ(s->cols[1].typmod, 24);
        CHECK_U64_EQ(s->cols[3].type_oid, PGO_CAP_OID_MOOD);
        CHECK_INT_EQ(wr_schema_nkeys(s), 1);
        /* owned: survives the buffer */
        CHECK((const void *)s->cols[0].name != (const void *)c[0].name);
        memset(f.buf, 0, f.len);
        CHECK_STR_EQ(s->cols[2].name, "amount");
        CHECK_STR_EQ(s->name, "t1");
        wr_schema_free(s);
    }
    fixture_done(&f);
}

static void
test_relation_full_and_schema(void)
{
    fixture_t f;

    fixture_decode(&f, "full", 'R', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_U64_EQ(f.m.u.relation.relid, PGO_CAP_RELID_T2);
    CHECK_INT_EQ(f.m.u.relation.replident, 'f');
    CHECK_INT_EQ(f.m.u.relation.natts, 2);
    if (f.m.u.relation.natts == 2) {
        /* REPLICA IDENTITY FULL: every column is part of the identity */
        CHECK_INT_EQ(f.m.u.relation.cols[0].flags, 1);
        CHECK_INT_EQ(f.m.u.relation.cols[1].flags, 1);
        CHECK_STR_EQ(f.m.u.relation.cols[1].name, "b");
    }
    fixture_done(&f);

    fixture_decode(&f, "truncate", 'R', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_U64_EQ(f.m.u.relation.relid, PGO_CAP_RELID_T3);
    CHECK_STR_EQ(f.m.u.relation.nsp, "app");
    CHECK_STR_EQ(f.m.u.relation.name, "t3");
    fixture_done(&f);

    /* a schema of a non-relation message is refused */
    {
        pgo_msg_t m = {.type = PGO_INSERT};
        CHECK(pgo_relation_schema(&m) == NULL);
    }
}

static void
test_insert(void)
{
    fixture_t f;
    const wr_row_t *row;

    fixture_decode(&f, "insert", 'I', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_INSERT);
    CHECK_U64_EQ(f.m.u.insert.relid, PGO_CAP_RELID_T1);
    row = &f.m.u.insert.newtup;
    CHECK_INT_EQ(row->ncols, 5);
    if (row->ncols == 5) {
        CHECK(val_is(row, 0, "1"));
        CHECK(val_is(row, 1, "alice"));
        CHECK(val_is(row, 2, "12.50"));
        CHECK(val_is(row, 3, "happy"));
        CHECK_INT_EQ(row->vals[4].kind, 't');
        CHECK_INT_EQ(row->vals[4].len, PGO_CAP_BIG_LEN);
        CHECK(memcmp(row->vals[4].data, PGO_CAP_BIG_PREFIX, strlen(PGO_CAP_BIG_PREFIX)) == 0);
        /* zero-copy, and the value ends exactly at the end of the message */
        CHECK((const uint8_t *)row->vals[4].data + row->vals[4].len == f.buf + f.len);
        /* the new tuple lives in the decoder's second scratch array */
        CHECK(row->vals == f.d.vals[1]);
    }
    fixture_done(&f);

    fixture_decode(&f, "insert", 'I', 1);
    CHECK_INT_EQ(f.rc, 0);
    row = &f.m.u.insert.newtup;
    CHECK_INT_EQ(row->ncols, 5);
    if (row->ncols == 5) {
        CHECK(val_is(row, 0, "2"));
        CHECK(val_is(row, 1, "bob"));
        CHECK_INT_EQ(row->vals[2].kind, 'n');
        CHECK(row->vals[2].data == NULL);
        CHECK(val_is(row, 3, "ok"));
        CHECK(val_is(row, 4, "small"));
    }
    fixture_done(&f);
}

static void
test_insert_binary(void)
{
    size_t len;
    uint8_t *b = hex_bytes(pgo_captured_binary_insert.hex, &len);
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;
    const wr_row_t *row = &m.u.insert.newtup;

    pgo_decoder_init(&d);
    CHECK_INT_EQ(pgo_decode(&d, b, len, &m, &err), 0);
    CHECK_INT_EQ(row->ncols, 5);
    if (row->ncols == 5) {
        /* binary=true: int4 1 in network order */
        CHECK_INT_EQ(row->vals[0].kind, 'b');
        CHECK_INT_EQ(row->vals[0].len, 4);
        CHECK(memcmp(row->vals[0].data, "\0\0\0\1", 4) == 0);
        CHECK_INT_EQ(row->vals[4].kind, 'b');
        CHECK_INT_EQ(row->vals[4].len, PGO_CAP_BIG_LEN);
    }
    pgo_decoder_close(&d);
    free(b);
}

static void
test_update_unchanged_toast(void)
{
    fixture_t f;
    const wr_row_t *row;

    fixture_decode(&f, "update_toast", 'U', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_UPDATE);
    CHECK_U64_EQ(f.m.u.update.relid, PGO_CAP_RELID_T1);
    CHECK_INT_EQ(f.m.u.update.oldkind, 0);
    CHECK_INT_EQ(f.m.u.update.oldtup.ncols, 0);
    row = &f.m.u.update.newtup;
    CHECK_INT_EQ(row->ncols, 5);
    if (row->ncols == 5) {
        CHECK(val_is(row, 0, "1"));
        CHECK(val_is(row, 1, "alicia"));
        CHECK(val_is(row, 3, "happy"));
        /* the toasted text was not updated: sent as unchanged */
        CHECK_INT_EQ(row->vals[4].kind, WR_VAL_UNCHANGED);
        CHECK_INT_EQ(row->vals[4].len, 0);
        CHECK(row->vals[4].data == NULL);
    }
    fixture_done(&f);
}

static void
test_update_key_change(void)
{
    fixture_t f;
    const wr_row_t *o, *n;

    fixture_decode(&f, "update_key", 'U', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.u.update.oldkind, 'K');
    o = &f.m.u.update.oldtup;
    n = &f.m.u.update.newtup;
    CHECK_INT_EQ(o->ncols, 5);
    CHECK_INT_EQ(n->ncols, 5);
    if (o->ncols == 5 && n->ncols == 5) {
        /* the old key only: other columns are null */
        CHECK(val_is(o, 0, "2"));
        for (int i = 1; i < 5; i++)
            CHECK_INT_EQ(o->vals[i].kind, 'n');
        CHECK(val_is(n, 0, "20"));
        CHECK(val_is(n, 1, "robert"));
        CHECK_INT_EQ(n->vals[2].kind, 'n');
        CHECK(val_is(n, 3, "ok"));
        CHECK(val_is(n, 4, "small"));
        /* old and new tuples in separate scratch arrays */
        CHECK(o->vals == f.d.vals[0]);
        CHECK(n->vals == f.d.vals[1]);
    }
    fixture_done(&f);
}

static void
test_replica_identity_full(void)
{
    fixture_t f;
    const wr_row_t *o, *n;

    fixture_decode(&f, "full", 'U', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_U64_EQ(f.m.u.update.relid, PGO_CAP_RELID_T2);
    CHECK_INT_EQ(f.m.u.update.oldkind, 'O');
    o = &f.m.u.update.oldtup;
    n = &f.m.u.update.newtup;
    CHECK_INT_EQ(o->ncols, 2);
    CHECK_INT_EQ(n->ncols, 2);
    if (o->ncols == 2 && n->ncols == 2) {
        CHECK(val_is(o, 0, "7"));
        CHECK(val_is(o, 1, "seven"));
        CHECK(val_is(n, 0, "7"));
        CHECK(val_is(n, 1, "SEVEN"));
    }
    fixture_done(&f);

    fixture_decode(&f, "full", 'D', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_DELETE);
    CHECK_U64_EQ(f.m.u.delete_.relid, PGO_CAP_RELID_T2);
    CHECK_INT_EQ(f.m.u.delete_.oldkind, 'O');
    o = &f.m.u.delete_.oldtup;
    CHECK_INT_EQ(o->ncols, 2);
    if (o->ncols == 2) {
        CHECK(val_is(o, 0, "7"));
        CHECK(val_is(o, 1, "SEVEN"));
    }
    fixture_done(&f);
}

static void
test_delete_key(void)
{
    fixture_t f;
    const wr_row_t *o;

    fixture_decode(&f, "delete", 'D', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_U64_EQ(f.m.u.delete_.relid, PGO_CAP_RELID_T1);
    CHECK_INT_EQ(f.m.u.delete_.oldkind, 'K');
    o = &f.m.u.delete_.oldtup;
    CHECK_INT_EQ(o->ncols, 5);
    if (o->ncols == 5) {
        CHECK(val_is(o, 0, "20"));
        CHECK_INT_EQ(o->vals[1].kind, 'n');
        CHECK(o->vals == f.d.vals[0]);
    }
    fixture_done(&f);
}

static void
test_truncate(void)
{
    fixture_t f;
    uint32_t a, b;

    fixture_decode(&f, "truncate", 'T', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_TRUNCATE);
    CHECK_INT_EQ(f.m.u.truncate.nrels, 2);
    CHECK_INT_EQ(f.m.u.truncate.flags, 1 | 2); /* CASCADE, RESTART IDENTITY */
    a = pgo_truncate_relid(&f.m, 0);
    b = pgo_truncate_relid(&f.m, 1);
    CHECK((a == PGO_CAP_RELID_T3 && b == PGO_CAP_RELID_T4) ||
          (a == PGO_CAP_RELID_T4 && b == PGO_CAP_RELID_T3));
    CHECK_U64_EQ(pgo_truncate_relid(&f.m, 2), 0); /* out of range */
    fixture_done(&f);
}

static void
test_logical_messages(void)
{
    fixture_t f;

    fixture_decode(&f, "message", 'M', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_MESSAGE);
    CHECK_INT_EQ(f.m.u.message.flags, 1); /* transactional */
    CHECK_STR_EQ(f.m.u.message.prefix, "walrelay");
    CHECK_INT_EQ(f.m.u.message.len, 11);
    CHECK(f.m.u.message.len == 11 && memcmp(f.m.u.message.content, "hello world", 11) == 0);
    CHECK_U64_EQ(f.m.u.message.lsn, lsn_of(pgo_captured[f.idx].lsn));
    /* inside its transaction: after the Begin */
    CHECK_INT_EQ(cap_find("message", 'B', 0), f.idx - 1);
    fixture_done(&f);

    fixture_decode(&f, "message_nontx", 'M', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.u.message.flags, 0);
    CHECK_STR_EQ(f.m.u.message.prefix, "walrelay.nt");
    CHECK_INT_EQ(f.m.u.message.len, 2);
    CHECK(f.m.u.message.len == 2 && memcmp(f.m.u.message.content, "\x00\xff", 2) == 0);
    CHECK_U64_EQ(pgo_captured[f.idx].xid, 0);
    fixture_done(&f);
}

static void
test_origin(void)
{
    fixture_t f;

    fixture_decode(&f, "origin", 'O', 0);
    CHECK_INT_EQ(f.rc, 0);
    CHECK_INT_EQ(f.m.type, PGO_ORIGIN);
    CHECK_U64_EQ(f.m.u.origin.lsn, 0x1ABCDEF0ull);
    CHECK_STR_EQ(f.m.u.origin.name, "upstream");
    /* after Begin, before the DML */
    CHECK_INT_EQ(cap_find("origin", 'B', 0), f.idx - 1);
    CHECK_INT_EQ(cap_find("origin", 'I', 0), f.idx + 1);
    fixture_done(&f);
}

/* Type messages feed the decoder's type cache; schemas get format_type names. */
static void
test_type_cache(void)
{
    /* 'Y' oid=16500 nsp="other" name="Hue" ; 'Y' oid=16501 nsp="public" name="mood" */
    static const uint8_t y1[] = {'Y', 0,   0, 0x40, 0x74, 'o', 't', 'h',
                                 'e', 'r', 0, 'H',  'u',  'e', 0};
    static const uint8_t y2[] = {'Y', 0,   0, 0x40, 0x75, 'p', 'u', 'b', 'l',
                                 'i', 'c', 0, 'm',  'o',  'o', 'd', 0};
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;
    wr_schema_t *s = wr_schema_new(1, "public", "t", 4);

    pgo_decoder_init(&d);
    CHECK_INT_EQ(pgo_decode(&d, y1, sizeof(y1), &m, &err), 0);
    CHECK_INT_EQ(pgo_decode(&d, y2, sizeof(y2), &m, &err), 0);
    CHECK_STR_EQ(pgo_type_name(&d, 16500), "other.\"Hue\"");
    CHECK_STR_EQ(pgo_type_name(&d, 16501), "mood");
    CHECK(pgo_type_name(&d, 16502) == NULL);
    s->cols[0].name = wr_strdup("a");
    s->cols[0].type_oid = 16500;
    s->cols[0].typmod = -1;
    s->cols[1].name = wr_strdup("b");
    s->cols[1].type_oid = 1700;
    s->cols[1].typmod = ((10 << 16) | 2) + 4;
    s->cols[2].name = wr_strdup("c");
    s->cols[2].type_oid = 99999; /* unknown: stays NULL */
    s->cols[2].typmod = -1;
    s->cols[3].name = wr_strdup("d");
    s->cols[3].type_oid = 1009;
    s->cols[3].typmod = -1;
    CHECK_INT_EQ(pgo_schema_type_names(&d, s), 0);
    CHECK_STR_EQ(s->cols[0].type_name, "other.\"Hue\"");
    CHECK_STR_EQ(s->cols[1].type_name, "numeric(10,2)");
    CHECK(s->cols[2].type_name == NULL);
    CHECK_STR_EQ(s->cols[3].type_name, "text[]");
    wr_schema_free(s);
    pgo_decoder_close(&d);
}

static void
test_empty_namespace_is_pg_catalog(void)
{
    /* 'Y' oid=16500 nsp="" name="mytype" */
    static const uint8_t y[] = {'Y', 0, 0, 0x40, 0x74, 0, 'm', 'y', 't', 'y', 'p', 'e', 0};
    /* 'R' relid=1 nsp="" name="r" 'n' natts=1 {flags 0, "c", oid 25, typmod -1} */
    static const uint8_t r[] = {'R', 0,   0, 0, 1, 0, 'r', 0,    'n',  0,    1,
                                0,   'c', 0, 0, 0, 0, 25,  0xff, 0xff, 0xff, 0xff};
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;

    /* decoded in place: the names point into y and r */
    pgo_decoder_init(&d);
    CHECK_INT_EQ(pgo_decode(&d, y, sizeof(y), &m, &err), 0);
    CHECK_U64_EQ(m.u.type.oid, 16500);
    CHECK_STR_EQ(m.u.type.nsp, "pg_catalog");
    CHECK_STR_EQ(m.u.type.name, "mytype");
    CHECK_INT_EQ(pgo_decode(&d, r, sizeof(r), &m, &err), 0);
    CHECK_STR_EQ(m.u.relation.nsp, "pg_catalog");
    CHECK_STR_EQ(m.u.relation.name, "r");
    CHECK_INT_EQ(m.u.relation.replident, 'n');
    CHECK_INT_EQ(m.u.relation.natts, 1);
    CHECK_STR_EQ(m.u.relation.cols[0].name, "c");
    pgo_decoder_close(&d);
}

/* ---- truncation and corruption ---- */

static void
check_all_prefixes(const char *what, const uint8_t *full, size_t len, int *checked)
{
    pgo_decoder_t d;

    pgo_decoder_init(&d);
    for (size_t n = 0; n < len; n++) {
        /* exactly n bytes on the heap: ASan sees any read past them */
        uint8_t *p = malloc(n ? n : 1);
        pgo_msg_t m;
        wr_err_t err = {0};
        int rc;

        memcpy(p, full, n);
        rc = pgo_decode(&d, n ? p : NULL, n, &m, &err);
        if (rc != WR_ETRUNC) {
            fprintf(stderr, "  %s truncated to %zu of %zu bytes: rc=%d (%s)\n", what, n, len, rc,
                    err.msg);
            CHECK_INT_EQ(rc, WR_ETRUNC);
        }
        CHECK(err.msg[0] != '\0');
        CHECK_INT_EQ(m.type, 0);
        free(p);
        (*checked)++;
    }
    pgo_decoder_close(&d);
}

static void
test_every_prefix_is_an_error(void)
{
    int checked = 0;
    size_t total = 0;
    char what[64];

    for (size_t i = 0; i < PGO_CAP_COUNT; i++) {
        size_t len;
        uint8_t *b = cap_bytes(i, &len);

        snprintf(what, sizeof(what), "message %zu (%s)", i, pgo_captured[i].step);
        check_all_prefixes(what, b, len, &checked);
        total += len;
        free(b);
    }
    {
        size_t len;
        uint8_t *b = hex_bytes(pgo_captured_binary_insert.hex, &len);
        check_all_prefixes("binary insert", b, len, &checked);
        total += len;
        free(b);
    }
    /* one decode per proper prefix, and the two toasted rows alone are 3000+ bytes each */
    CHECK_INT_EQ(checked, total);
    CHECK(total > 6000);
}

static void
test_truncation_error_names_field_and_offset(void)
{
    fixture_t f;
    pgo_msg_t m;
    wr_err_t err;

    fixture_decode(&f, "insert", 'I', 1);
    /* cut inside the relid */
    CHECK_INT_EQ(decode_bytes(f.buf, 3, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "\"insert\"");
    CHECK_CONTAINS(err.msg, "\"relid\"");
    CHECK_CONTAINS(err.msg, "offset 1");
    /* cut inside the value of column 2: its length field is at 15, "bob" at 19..21 */
    CHECK_INT_EQ(decode_bytes(f.buf, 21, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "new tuple column 2");
    CHECK_CONTAINS(err.msg, "offset 15");
    CHECK_CONTAINS(err.msg, "length 3 but only 2 bytes follow");
    fixture_done(&f);

    fixture_decode(&f, "insert", 'R', 0);
    /* cut inside the relation name "t1" (offset 12) */
    CHECK_INT_EQ(decode_bytes(f.buf, 13, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "\"relation\"");
    CHECK_CONTAINS(err.msg, "\"relname\"");
    CHECK_CONTAINS(err.msg, "offset 12");
    fixture_done(&f);

    CHECK_INT_EQ(decode_bytes(NULL, 0, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "empty");
}

static void
test_unknown_message_type(void)
{
    /* Begin Prepare (protocol 3, two_phase): never asked for */
    static const uint8_t s[] = {'b', 0, 0, 2, 0xdd, 1};
    static const uint8_t bin[] = {0x01, 0, 0};
    pgo_msg_t m;
    wr_err_t err;

    CHECK_INT_EQ(decode_bytes(s, sizeof(s), &m, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "'b'");
    CHECK_CONTAINS(err.msg, "offset 0");
    CHECK_CONTAINS(err.hint, "version");
    CHECK_INT_EQ(m.type, 0);
    CHECK_INT_EQ(decode_bytes(bin, sizeof(bin), &m, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "0x01");
    /* 'K' is Commit Prepared (v3) at the top level, not the key marker */
    CHECK_INT_EQ(decode_bytes((const uint8_t *)"K", 1, &m, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "'K'");
}

/* Protocol version 2: a stream block (Start, messages with an xid, Stop), Stream Commit
 * and Stream Abort, the block structure, and a spooled message decoded out of band. */
static void
test_stream_messages(void)
{
    static const uint8_t start[] = {'S', 0, 0, 2, 0xdd, 1};
    /* insert by subtransaction 0x2de into relid 16384: (1) */
    static const uint8_t ins[] = {'I', 0, 0, 2,   0xde, 0, 0, 0x40, 0,
                                  'N', 0, 1, 't', 0,    0, 0, 1,    '1'};
    static const uint8_t stop[] = {'E'};
    static const uint8_t commit[] = {'c', 0, 0, 2, 0xdd, 0,    0,    0, 0, 0, 0, 0, 0x10, 0, 0,
                                     0,   0, 0, 0, 0,    0x10, 0x30, 0, 0, 0, 0, 0, 0,    0, 7};
    static const uint8_t abort_[] = {'A', 0, 0, 2, 0xdd, 0, 0, 2, 0xde};
    static const uint8_t begin[] = {'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
                                    0,   0, 0, 0, 0, 0, 0, 0, 0, 9};
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;

    pgo_decoder_init(&d);
    memset(&err, 0, sizeof(err));
    CHECK_INT_EQ(pgo_decode(&d, start, sizeof(start), &m, &err), 0);
    CHECK_INT_EQ(m.type, PGO_STREAM_START);
    CHECK_INT_EQ(m.u.stream_start.xid, 0x2dd);
    CHECK(m.u.stream_start.first_segment);
    CHECK(d.in_stream);
    /* a second Start and a Begin inside the block are refused */
    CHECK_INT_EQ(pgo_decode(&d, start, sizeof(start), &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "inside a stream block");
    CHECK_INT_EQ(pgo_decode(&d, begin, sizeof(begin), &m, &err), WR_EPROTO);
    CHECK_INT_EQ(pgo_decode(&d, ins, sizeof(ins), &m, &err), 0);
    CHECK_INT_EQ(m.type, PGO_INSERT);
    CHECK_INT_EQ(m.xid, 0x2de);
    CHECK_INT_EQ(m.u.insert.relid, 16384);
    CHECK_INT_EQ(m.u.insert.newtup.ncols, 1);
    CHECK_INT_EQ(m.u.insert.newtup.vals[0].data[0], '1');
    CHECK_INT_EQ(pgo_decode(&d, stop, sizeof(stop), &m, &err), 0);
    CHECK(!d.in_stream);
    /* outside a block: a second Stop is refused, the insert has no xid and is malformed */
    CHECK_INT_EQ(pgo_decode(&d, stop, sizeof(stop), &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "outside a stream block");
    CHECK(pgo_decode(&d, ins, sizeof(ins), &m, &err) < 0);
    /* ... but decoded out of band as a spooled message it is the same insert */
    CHECK_INT_EQ(pgo_decode_streamed(&d, ins, sizeof(ins), &m, &err), 0);
    CHECK_INT_EQ(m.xid, 0x2de);
    CHECK_INT_EQ(m.u.insert.relid, 16384);
    CHECK(!d.in_stream);
    CHECK_INT_EQ(pgo_decode_streamed(&d, commit, sizeof(commit), &m, &err), WR_EPROTO);
    CHECK_INT_EQ(pgo_decode(&d, commit, sizeof(commit), &m, &err), 0);
    CHECK_INT_EQ(m.type, PGO_STREAM_COMMIT);
    CHECK_INT_EQ(m.u.stream_commit.xid, 0x2dd);
    CHECK_INT_EQ(m.u.stream_commit.commit_lsn, 0x1000);
    CHECK_INT_EQ(m.u.stream_commit.end_lsn, 0x1030);
    CHECK_INT_EQ(m.u.stream_commit.ts, 7);
    CHECK_INT_EQ(pgo_decode(&d, abort_, sizeof(abort_), &m, &err), 0);
    CHECK_INT_EQ(m.type, PGO_STREAM_ABORT);
    CHECK_INT_EQ(m.u.stream_abort.xid, 0x2dd);
    CHECK_INT_EQ(m.u.stream_abort.subxid, 0x2de);
    /* every prefix of each is a clean error */
    for (size_t n = 1; n < sizeof(commit); n++)
        CHECK(pgo_decode(&d, commit, n, &m, &err) < 0);
    for (size_t n = 1; n < sizeof(abort_); n++)
        CHECK(pgo_decode(&d, abort_, n, &m, &err) < 0);
    for (size_t n = 1; n < sizeof(start); n++)
        CHECK(pgo_decode(&d, start, n, &m, &err) < 0);
    CHECK(!d.in_stream);
    pgo_decoder_close(&d);
}

static void
test_corrupt_tuples(void)
{
    fixture_t f;
    uint8_t *b;
    pgo_msg_t m;
    wr_err_t err;

    /* insert t1 (2, 'bob', NULL, 'ok', 'small'): 'I' relid 'N' ncols(2) 't' len(4) "2" ... */
    fixture_decode(&f, "insert", 'I', 1);
    CHECK_INT_EQ(f.rc, 0);
    b = malloc(f.len + 3);

    CHECK_INT_EQ(f.buf[8], 't');
    memcpy(b, f.buf, f.len);
    b[8] = 'x';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "kind byte 0x78");
    CHECK_CONTAINS(err.msg, "column 1");
    CHECK_CONTAINS(err.msg, "offset 8");

    /* huge and negative lengths */
    memcpy(b, f.buf, f.len);
    put32(b + 9, 0x7fffffff);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "invalid length 2147483647");
    put32(b + 9, 0xffffffff);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "invalid length -1");
    put32(b + 9, 1000);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "length 1000");

    /* column counts: over MaxTupleAttributeNumber, negative as int16, more than the bytes */
    memcpy(b, f.buf, f.len);
    put16(b + 6, 1665);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "1665 columns");
    put16(b + 6, 0xffff);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    put16(b + 6, 6);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    put16(b + 6, 4);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "trailing bytes after \"insert\" message");

    /* trailing bytes */
    memcpy(b, f.buf, f.len);
    memcpy(b + f.len, "xyz", 3);
    CHECK_INT_EQ(decode_bytes(b, f.len + 3, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "3 trailing bytes after \"insert\" message");
    CHECK_INT_EQ(m.type, 0);

    /* insert marker must be 'N' */
    memcpy(b, f.buf, f.len);
    b[5] = 'K';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"tuple marker\" at offset 5");
    free(b);
    fixture_done(&f);
}

static void
test_corrupt_update_delete_markers(void)
{
    fixture_t f;
    uint8_t *b;
    pgo_msg_t m;
    wr_err_t err;
    size_t newpos;

    fixture_decode(&f, "update_key", 'U', 0);
    CHECK_INT_EQ(f.rc, 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    b[5] = 'X';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"update\"");
    CHECK_CONTAINS(err.msg, "0x58");
    CHECK_CONTAINS(err.msg, "'K', 'O' or 'N'");
    /* the 'N' after the old tuple: 'U' relid 'K' ncols(2) 't' len "2" n n n n = 18 bytes */
    newpos = 1 + 4 + 1 + 2 + 1 + 4 + 1 + 4;
    CHECK_INT_EQ(f.buf[newpos], 'N');
    memcpy(b, f.buf, f.len);
    b[newpos] = 'O';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "expected 'N'");
    free(b);
    fixture_done(&f);

    fixture_decode(&f, "delete", 'D', 0);
    CHECK_INT_EQ(f.rc, 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    b[5] = 'N';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"delete\"");
    CHECK_CONTAINS(err.msg, "'K' or 'O'");
    free(b);
    fixture_done(&f);
}

static void
test_corrupt_strings_and_headers(void)
{
    fixture_t f;
    uint8_t *b;
    pgo_msg_t m;
    wr_err_t err;

    /* Type message whose last string has lost its NUL */
    fixture_decode(&f, "insert", 'Y', 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    b[f.len - 1] = 'X';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "\"typname\"");
    CHECK_CONTAINS(err.msg, "NUL");
    free(b);
    fixture_done(&f);

    /* relation: bad replident, natts over the limit */
    fixture_decode(&f, "insert", 'R', 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    /* 'R' relid "public\0" "t1\0" replident at 15 */
    CHECK_INT_EQ(b[15], 'd');
    b[15] = 'z';
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"replident\" at offset 15");
    memcpy(b, f.buf, f.len);
    put16(b + 16, 1665);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"natts\"");
    CHECK_CONTAINS(err.msg, "1665");
    put16(b + 16, 6);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    put16(b + 16, 4);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "trailing bytes after \"relation\" message");
    free(b);
    fixture_done(&f);

    /* commit flags must be 0; trailing bytes */
    fixture_decode(&f, "insert", 'C', 0);
    b = malloc(f.len + 1);
    memcpy(b, f.buf, f.len);
    b[1] = 1;
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"flags\"");
    memcpy(b, f.buf, f.len);
    b[f.len] = 0;
    CHECK_INT_EQ(decode_bytes(b, f.len + 1, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "1 trailing bytes after \"commit\" message at offset 26");
    free(b);
    fixture_done(&f);

    /* truncate: nrels beyond the bytes, absurd nrels */
    fixture_decode(&f, "truncate", 'T', 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    put32(b + 1, 3);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    CHECK_CONTAINS(err.msg, "\"nrels\"");
    put32(b + 1, 0x80000000u);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    put32(b + 1, 1);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "4 trailing bytes after \"truncate\"");
    free(b);
    fixture_done(&f);

    /* logical message: negative and oversized content length */
    fixture_decode(&f, "message", 'M', 0);
    b = malloc(f.len);
    memcpy(b, f.buf, f.len);
    /* 'M' flags lsn(8) "walrelay\0" -> length at 19 */
    put32(b + 19, 0xfffffff0u);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "\"content length\" at offset 19");
    put32(b + 19, 12);
    CHECK_INT_EQ(decode_bytes(b, f.len, &m, &err), WR_ETRUNC);
    free(b);
    fixture_done(&f);
}

static void
test_scratch_reuse_and_limits(void)
{
    pgo_decoder_t d;
    pgo_msg_t m;
    wr_err_t err;
    size_t cap = 3 + 3 * 1664 + 10;
    uint8_t *b = malloc(cap);
    size_t n;
    wr_val_t *before;

    pgo_decoder_init(&d);
    /* an insert with 1664 null columns is fine; 1665 is refused */
    b[0] = 'I';
    put32(b + 1, 42);
    b[5] = 'N';
    put16(b + 6, 1664);
    memset(b + 8, 'n', 1664);
    n = 8 + 1664;
    CHECK_INT_EQ(pgo_decode(&d, b, n, &m, &err), 0);
    CHECK_INT_EQ(m.u.insert.newtup.ncols, 1664);
    CHECK(d.cap[1] >= 1664);
    before = d.vals[1];
    /* smaller rows reuse the same array */
    put16(b + 6, 3);
    CHECK_INT_EQ(pgo_decode(&d, b, 8 + 3, &m, &err), 0);
    CHECK(m.u.insert.newtup.vals == before);
    CHECK_INT_EQ(m.u.insert.newtup.ncols, 3);
    /* zero columns */
    put16(b + 6, 0);
    CHECK_INT_EQ(pgo_decode(&d, b, 8, &m, &err), 0);
    CHECK_INT_EQ(m.u.insert.newtup.ncols, 0);

    put16(b + 6, 1665);
    memset(b + 8, 'n', 1665);
    CHECK_INT_EQ(pgo_decode(&d, b, 8 + 1665, &m, &err), WR_EPROTO);

    /* a relation "".x with 1664 key columns named "" */
    free(b);
    b = malloc(11 + 1664 * 10);
    b[0] = 'R';
    put32(b + 1, 7);
    b[5] = 0; /* nsp "" */
    b[6] = 'x';
    b[7] = 0;
    b[8] = 'f';
    put16(b + 9, 1664);
    n = 11;
    for (int i = 0; i < 1664; i++) {
        b[n++] = 1;
        b[n++] = 0;
        put32(b + n, 23);
        n += 4;
        put32(b + n, (uint32_t)i);
        n += 4;
    }
    CHECK_INT_EQ(pgo_decode(&d, b, n, &m, &err), 0);
    CHECK_INT_EQ(m.u.relation.natts, 1664);
    CHECK(m.u.relation.cols == d.cols);
    CHECK_INT_EQ(m.u.relation.cols[1663].typmod, 1663);
    {
        wr_schema_t *s = pgo_relation_schema(&m);
        CHECK(s != NULL);
        if (s) {
            CHECK_INT_EQ(s->ncols, 1664);
            CHECK_INT_EQ(wr_schema_nkeys(s), 1664);
            CHECK_STR_EQ(s->nsp, "pg_catalog");
            wr_schema_free(s);
        }
    }
    pgo_decoder_close(&d);
    CHECK(d.vals[0] == NULL && d.vals[1] == NULL && d.cols == NULL);
    free(b);
}

int
main(void)
{
    fprintf(stderr, "# captured from PostgreSQL %s, %zu messages\n", PGO_CAP_SERVER_VERSION,
            (size_t)PGO_CAP_COUNT);
    RUN(test_begin_commit_pairs);
    RUN(test_type_message);
    RUN(test_relation_t1);
    RUN(test_relation_full_and_schema);
    RUN(test_insert);
    RUN(test_insert_binary);
    RUN(test_update_unchanged_toast);
    RUN(test_update_key_change);
    RUN(test_replica_identity_full);
    RUN(test_delete_key);
    RUN(test_truncate);
    RUN(test_logical_messages);
    RUN(test_origin);
    RUN(test_empty_namespace_is_pg_catalog);
    RUN(test_type_cache);
    RUN(test_every_prefix_is_an_error);
    RUN(test_truncation_error_names_field_and_offset);
    RUN(test_unknown_message_type);
    RUN(test_stream_messages);
    RUN(test_corrupt_tuples);
    RUN(test_corrupt_update_delete_markers);
    RUN(test_corrupt_strings_and_headers);
    RUN(test_scratch_reuse_and_limits);
    return unit_done();
}
