/*
 * test_event_json.c - unit tests of destinations/event_json.c (the one JSON encoding of a
 * change, docs/events.md) and of the streaming sinks' parsers of their own stored text
 * (the jsonl state file, the NATS checkpoint).
 */
#include "unit.h"

#include "destinations/abi.h"
#include "destinations/event_json.h"

static const wr_dest_column_t cols[] = {
    {"id", WR_PG_INT8, "bigint", -1, true, true},
    {"n", WR_PG_INT4, "integer", -1, false, false},
    {"ok", WR_PG_BOOL, "boolean", -1, false, false},
    {"doc", WR_PG_JSONB, "jsonb", -1, false, false},
    {"note", WR_PG_TEXT, "text", -1, false, false},
};
static const wr_dest_relation_t rel = {16384, "public", "orders", "orders", 'd', 5, cols};

#define TXT(s)                                                                                     \
    {                                                                                              \
        WR_DEST_VAL_TEXT, sizeof(s) - 1, s                                                         \
    }
#define NUL                                                                                        \
    {                                                                                              \
        WR_DEST_VAL_NULL, 0, NULL                                                                  \
    }
#define UNCH                                                                                       \
    {                                                                                              \
        WR_DEST_VAL_UNCHANGED, 0, NULL                                                             \
    }

static const char *
encode(jw_buf_t *b, const wr_dest_event_t *ev)
{
    jw_reset(b);
    evj_event(b, ev);
    CHECK(!jw_failed(b));
    return b->data;
}

static void
test_keys(void)
{
    char buf[EVJ_KEY_LEN];
    wr_dest_key_t k = {0x16B3748ull, 3}, back;

    CHECK_STR_EQ(evj_key(&k, buf), "00000000016B3748:0000000003");
    CHECK_INT_EQ(evj_key_parse(buf, strlen(buf), &back), 0);
    CHECK_U64_EQ(back.commit_lsn, k.commit_lsn);
    CHECK_INT_EQ(back.ordinal, 3);
    k.commit_lsn = UINT64_MAX;
    k.ordinal = UINT32_MAX;
    CHECK_STR_EQ(evj_key(&k, buf), "FFFFFFFFFFFFFFFF:4294967295");
    CHECK_INT_EQ(evj_key_parse(buf, strlen(buf), &back), 0);
    CHECK_U64_EQ(back.commit_lsn, UINT64_MAX);
    CHECK_U64_EQ(back.ordinal, UINT32_MAX);
    /* keys sort as strings in key order */
    {
        char a[EVJ_KEY_LEN], b2[EVJ_KEY_LEN];
        wr_dest_key_t x = {0x100, 9}, y = {0x100, 10}, z = {0xFF, 99};
        CHECK(strcmp(evj_key(&x, a), evj_key(&y, b2)) < 0);
        CHECK(strcmp(evj_key(&z, a), evj_key(&x, b2)) < 0);
    }
    CHECK_INT_EQ(evj_key_parse("00000000016B3748:4294967296", 27, &back), -1); /* > u32 */
    CHECK_INT_EQ(evj_key_parse("00000000016b3748:0000000003", 27, &back), -1); /* lowercase */
    CHECK_INT_EQ(evj_key_parse("00000000016B3748-0000000003", 27, &back), -1);
    CHECK_INT_EQ(evj_key_parse("00000000016B3748:000000003", 26, &back), -1);
    CHECK_STR_EQ(evj_copy_key(16384, 1796230762025030, 7, buf),
                 "copy:16384:1796230762025030:0000000007");
    CHECK_INT_EQ(evj_key_parse(buf, strlen(buf), &back), -1);
}

static void
test_each_op(void)
{
    jw_buf_t b;
    wr_dest_value_t nv[] = {TXT("9007199254740993"), TXT("-17"), TXT("t"), TXT("{\"a\": [1, 2]}"),
                            TXT("tab\there \"q\"")};
    wr_dest_value_t ov[] = {TXT("41"), NUL, NUL, NUL, NUL};
    wr_dest_value_t tv[] = {TXT("41"), TXT("5"), TXT("f"), UNCH, UNCH};
    wr_dest_row_t nrow = {5, nv}, orow = {5, ov}, trow = {5, tv};
    wr_dest_event_t ev;

    jw_init(&b);
    memset(&ev, 0, sizeof(ev));
    ev.kind = WR_DEST_EV_INSERT;
    ev.key.commit_lsn = 0x16B3748;
    ev.key.ordinal = 1;
    ev.xid = 745;
    ev.commit_time_us = INT64_C(1733156485123456);
    ev.relation = &rel;
    ev.new_row = &nrow;
    CHECK(evj_is_change(&ev));
    CHECK_STR_EQ(encode(&b, &ev),
                 "{\"key\":\"00000000016B3748:0000000001\",\"op\":\"insert\",\"phase\":\"stream\","
                 "\"table\":\"public.orders\",\"commit_lsn\":\"0/16B3748\",\"xid\":745,"
                 "\"commit_time\":\"2024-12-02T16:21:25.123456Z\",\"new\":{\"id\":"
                 "\"9007199254740993\",\"n\":-17,\"ok\":true,\"doc\":{\"a\": [1, 2]},\"note\":"
                 "\"tab\\there \\\"q\\\"\"},\"old\":null,\"unchanged_toast\":[]}");

    /* an update that changed the key ('K'): old holds the key columns only */
    ev.kind = WR_DEST_EV_UPDATE;
    ev.key.ordinal = 2;
    ev.old_kind = 'K';
    ev.old_row = &orow;
    CHECK_CONTAINS(encode(&b, &ev), "\"op\":\"update\"");
    CHECK_CONTAINS(b.data, "\"old\":{\"id\":\"41\"},\"unchanged_toast\":[]}");

    /* unchanged TOAST: left out of new, listed, never null */
    ev.old_kind = 0;
    ev.old_row = NULL;
    ev.new_row = &trow;
    CHECK_CONTAINS(encode(&b, &ev), "\"new\":{\"id\":\"41\",\"n\":5,\"ok\":false},\"old\":null,"
                                    "\"unchanged_toast\":[\"doc\",\"note\"]}");

    /* a delete under REPLICA IDENTITY FULL: the whole old row */
    ev.kind = WR_DEST_EV_DELETE;
    ev.old_kind = 'O';
    ev.old_row = &nrow;
    ev.new_row = NULL;
    CHECK_CONTAINS(encode(&b, &ev), "\"op\":\"delete\"");
    CHECK_CONTAINS(b.data, "\"new\":null,\"old\":{\"id\":\"9007199254740993\",\"n\":-17,");

    ev.kind = WR_DEST_EV_TRUNCATE;
    ev.old_row = NULL;
    ev.old_kind = 0;
    ev.truncate_flags = WR_DEST_TRUNCATE_RESTART_IDENTITY;
    CHECK_CONTAINS(encode(&b, &ev), "\"new\":null,\"old\":null,\"unchanged_toast\":[],"
                                    "\"cascade\":false,\"restart_identity\":true}");

    /* no JSON form */
    ev.kind = WR_DEST_EV_BEGIN;
    CHECK(!evj_is_change(&ev));
    ev.kind = WR_DEST_EV_COMMIT;
    CHECK(!evj_is_change(&ev));
    ev.kind = WR_DEST_EV_RELATION;
    CHECK(!evj_is_change(&ev));
    CHECK(evj_op(&ev) == NULL);

    /* the copy */
    jw_reset(&b);
    evj_copy_row(&b, &rel, &nrow, "copy:16384:1:0000000001");
    CHECK_STR_EQ(b.data,
                 "{\"key\":\"copy:16384:1:0000000001\",\"op\":\"insert\",\"phase\":\"copy\","
                 "\"table\":\"public.orders\",\"commit_lsn\":null,\"xid\":null,"
                 "\"commit_time\":null,\"new\":{\"id\":\"9007199254740993\",\"n\":-17,"
                 "\"ok\":true,\"doc\":{\"a\": [1, 2]},\"note\":\"tab\\there \\\"q\\\"\"},"
                 "\"old\":null,\"unchanged_toast\":[]}");
    jw_reset(&b);
    evj_copy_truncate(&b, &rel, "copy:16384:1:0000000000");
    CHECK_CONTAINS(b.data, "\"op\":\"truncate\",\"phase\":\"copy\"");
    jw_free(&b);
}

static void
test_jsonl_state(void)
{
    char why[256];
    static const char good[] = "walrelay jsonl state 1\npipeline p1\ngeneration 2\noffset 123\n"
                               "stream apply 00000000016B3748:0000000003\n"
                               "stream sync_16384 0000000000000010:0000000000\n"
                               "copy 16384 1796230762025030\n";

    CHECK_INT_EQ(dest_jsonl_state_parse(good, sizeof(good) - 1, why, sizeof(why)), 0);
    CHECK_STR_EQ(why, "pipeline p1 offset 123 streams 2");
    CHECK_INT_EQ(dest_jsonl_state_parse(good, sizeof(good) - 2, why, sizeof(why)), -1);
    CHECK_STR_EQ(why, "line 7: line too long or not terminated");
    {
        static const char bad[] = "walrelay jsonl state 1\noffset 1\ncopy 0 5\n";
        CHECK_INT_EQ(dest_jsonl_state_parse(bad, sizeof(bad) - 1, why, sizeof(why)), -1);
        CHECK_STR_EQ(why, "line 3: bad copy line");
    }
    CHECK_INT_EQ(dest_jsonl_state_parse("walrelay jsonl state 2\noffset 1\n", 31, why, sizeof(why)),
                 -1);
    CHECK_STR_EQ(why, "line 1: not a walrelay jsonl state file");
    CHECK_INT_EQ(
        dest_jsonl_state_parse("walrelay jsonl state 1\npipeline x\n", 34, why, sizeof(why)), -1);
    CHECK_STR_EQ(why, "line 2: no offset line");
    {
        static const char bad[] = "walrelay jsonl state 1\noffset 1\nstream apply 1:2\n";
        CHECK_INT_EQ(dest_jsonl_state_parse(bad, sizeof(bad) - 1, why, sizeof(why)), -1);
        CHECK_STR_EQ(why, "line 3: bad key");
    }
    {
        static const char bad[] = "walrelay jsonl state 1\noffset -1\n";
        CHECK_INT_EQ(dest_jsonl_state_parse(bad, sizeof(bad) - 1, why, sizeof(why)), -1);
        CHECK_STR_EQ(why, "line 2: unexpected line");
    }
    {
        static const char bad[] = "walrelay jsonl state 1\noffset 1\0\n";
        CHECK_INT_EQ(dest_jsonl_state_parse(bad, sizeof(bad) - 1, why, sizeof(why)), -1);
        CHECK_STR_EQ(why, "line 2: a NUL byte in a line");
    }
}

static void
test_nats_checkpoint(void)
{
    uint64_t seq;
    bool has;
    wr_dest_key_t k;

    CHECK_INT_EQ(dest_nats_checkpoint_parse("42 -", 4, &seq, &has, &k), 0);
    CHECK_U64_EQ(seq, 42);
    CHECK(!has);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("7 00000000016B3748:0000000003", 29, &seq, &has, &k),
                 0);
    CHECK_U64_EQ(seq, 7);
    CHECK(has);
    CHECK_U64_EQ(k.commit_lsn, 0x16B3748);
    CHECK_INT_EQ(k.ordinal, 3);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("18446744073709551615 -", 22, &seq, &has, &k), 0);
    CHECK_U64_EQ(seq, UINT64_MAX);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("184467440737095516150 -", 23, &seq, &has, &k), -1);
    CHECK_INT_EQ(dest_nats_checkpoint_parse(" -", 2, &seq, &has, &k), -1);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("12", 2, &seq, &has, &k), -1);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("1 x", 3, &seq, &has, &k), -1);
    CHECK_INT_EQ(dest_nats_checkpoint_parse("1 --", 4, &seq, &has, &k), -1);
}

int
main(void)
{
    RUN(test_keys);
    RUN(test_each_op);
    RUN(test_jsonl_state);
    RUN(test_nats_checkpoint);
    return unit_done();
}
