/*
 * test_common.c - unit tests of common/wr.c, log.c (redaction, JSON lines), phase.c,
 * schema.c.
 */
#include "unit.h"

#include <unistd.h>

#include "common/json.h"
#include "common/log.h"
#include "common/phase.h"
#include "common/schema.h"

static void
test_lsn_parse_format(void)
{
    wr_lsn_t l = 0;
    char buf[32];
    CHECK_INT_EQ(wr_lsn_parse("16/B374D848", &l), 0);
    CHECK_U64_EQ(l, 0x16B374D848ULL);
    CHECK_STR_EQ(wr_lsn_format(l, buf, sizeof(buf)), "16/B374D848");
    CHECK_INT_EQ(wr_lsn_parse("0/0", &l), 0);
    CHECK_U64_EQ(l, 0);
    CHECK_INT_EQ(wr_lsn_parse("FFFFFFFF/FFFFFFFF", &l), 0);
    CHECK_U64_EQ(l, UINT64_MAX);
    CHECK_STR_EQ(wr_lsn_format(l, buf, sizeof(buf)), "FFFFFFFF/FFFFFFFF");
}

static void
test_lsn_parse_rejects(void)
{
    wr_lsn_t l = 7;
    const char *bad[] = {"", "0", "/1", "1/", "1/2/3", "G/1", "1/G", "100000000/0", "1 /2", "1/2 "};
    size_t i;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (wr_lsn_parse(bad[i], &l) != WR_EINVAL)
            fprintf(stderr, "  accepted bad lsn \"%s\"\n", bad[i]);
        CHECK_INT_EQ(wr_lsn_parse(bad[i], &l), WR_EINVAL);
    }
    CHECK_U64_EQ(l, 7); /* untouched on error */
}

static void
test_err(void)
{
    wr_err_t e;
    wr_err_clear(&e);
    CHECK_INT_EQ(wr_err_set(&e, WR_ECONFIG, "bad key \"%s\"", "x"), WR_ECONFIG);
    CHECK_STR_EQ(e.msg, "bad key \"x\"");
    CHECK_STR_EQ(e.hint, "");
    wr_err_hint(&e, "fix %d", 1);
    CHECK_STR_EQ(e.hint, "fix 1");
    wr_err_prefix(&e, "file:%d: ", 3);
    CHECK_STR_EQ(e.msg, "file:3: bad key \"x\"");
    CHECK_INT_EQ(wr_err_exit_code(WR_ECONFIG), WR_EXIT_CONFIG);
    CHECK_INT_EQ(wr_err_exit_code(WR_ESOURCE), WR_EXIT_CONFIG);
    CHECK_INT_EQ(wr_err_exit_code(WR_ECONN), WR_EXIT_ERROR);
    CHECK_INT_EQ(wr_err_exit_code(WR_OK), WR_EXIT_OK);
    CHECK_STR_EQ(wr_err_code_name(WR_ECONN), "connection");
    /* a long prefix never overflows */
    {
        char big[2000];
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        wr_err_prefix(&e, "%s", big);
        CHECK(strlen(e.msg) < sizeof(e.msg));
        CHECK_CONTAINS(e.msg, "file:3: bad key");
    }
}

static void
test_copy_text(void)
{
    char buf[6];
    wr_copy_text(buf, sizeof(buf), "abc");
    CHECK_STR_EQ(buf, "abc");
    wr_copy_text(buf, sizeof(buf), NULL);
    CHECK_STR_EQ(buf, "");
    wr_copy_text(buf, sizeof(buf), "abcdefgh");
    CHECK_STR_EQ(buf, "abcde");
    /* "ab" + U+20AC (3 bytes) + "x": 6 bytes do not fit in 5; the euro sign is not cut */
    wr_copy_text(buf, sizeof(buf),
                 "ab\xe2\x82\xac"
                 "x");
    CHECK_STR_EQ(buf, "ab\xe2\x82\xac");
    wr_copy_text(buf, sizeof(buf), "abcd\xe2\x82\xac");
    CHECK_STR_EQ(buf, "abcd");
    CHECK(wr_wall_ms() > INT64_C(1700000000000)); /* after 2023: a wall clock, not monotonic */
}

static void
test_phase_names(void)
{
    int i;
    for (i = 0; i < PH_COUNT; i++) {
        wr_phase_t p;
        CHECK_INT_EQ(phase_parse(phase_name((wr_phase_t)i), &p), 0);
        CHECK_INT_EQ(p, i);
    }
    {
        wr_phase_t p;
        CHECK_INT_EQ(phase_parse("SyncDone", &p), 0);
        CHECK_INT_EQ(p, PH_SYNCDONE);
        CHECK_INT_EQ(phase_parse("nope", &p), WR_EINVAL);
        CHECK_INT_EQ(phase_parse(NULL, &p), WR_EINVAL);
    }
    CHECK_STR_EQ(phase_name((wr_phase_t)99), "invalid");
}

static void
test_phase_transitions(void)
{
    /* the happy path */
    CHECK(phase_transition_ok(PH_INIT, PH_DATASYNC));
    CHECK(phase_transition_ok(PH_DATASYNC, PH_FINISHEDCOPY));
    CHECK(phase_transition_ok(PH_DATASYNC, PH_DATASYNC));
    CHECK(phase_transition_ok(PH_FINISHEDCOPY, PH_SYNCWAIT));
    CHECK(phase_transition_ok(PH_SYNCWAIT, PH_CATCHUP));
    CHECK(phase_transition_ok(PH_CATCHUP, PH_SYNCDONE));
    CHECK(phase_transition_ok(PH_SYNCDONE, PH_READY));
    /* errors and resets from anywhere */
    for (int i = 0; i < PH_COUNT; i++) {
        CHECK(phase_transition_ok((wr_phase_t)i, PH_ERRORED));
        CHECK(phase_transition_ok((wr_phase_t)i, PH_INIT));
    }
    /* no skipping, no going back */
    CHECK(!phase_transition_ok(PH_INIT, PH_READY));
    CHECK(!phase_transition_ok(PH_DATASYNC, PH_SYNCWAIT));
    CHECK(!phase_transition_ok(PH_CATCHUP, PH_DATASYNC));
    CHECK(!phase_transition_ok(PH_READY, PH_SYNCDONE));
    CHECK(!phase_transition_ok(PH_ERRORED, PH_READY));
    CHECK(!phase_transition_ok(PH_SYNCWAIT, PH_SYNCDONE));
    CHECK(!phase_transition_ok((wr_phase_t)42, PH_READY));
    CHECK(phase_needs_sync_worker(PH_CATCHUP));
    CHECK(!phase_needs_sync_worker(PH_SYNCDONE));
    CHECK(!phase_needs_sync_worker(PH_READY));
    CHECK(!phase_needs_sync_worker(PH_ERRORED));
}

static void
test_schema(void)
{
    wr_schema_t *a = wr_schema_new(42, "public", "t", 2), *b;
    CHECK(a != NULL);
    if (!a)
        return;
    a->cols[0].name = wr_strdup("id");
    a->cols[0].type_oid = 23;
    a->cols[0].typmod = -1;
    a->cols[0].is_key = true;
    a->cols[1].name = wr_strdup("v");
    a->cols[1].type_oid = 25;
    a->cols[1].typmod = -1;
    b = wr_schema_copy(a);
    CHECK(b != NULL);
    CHECK(wr_schema_equal(a, b));
    CHECK_INT_EQ(wr_schema_nkeys(b), 1);
    CHECK(b->cols[0].name != a->cols[0].name); /* deep copy */
    b->cols[1].type_oid = 1043;
    CHECK(!wr_schema_equal(a, b));
    b->cols[1].type_oid = 25;
    b->replident = 'f';
    CHECK(!wr_schema_equal(a, b));
    wr_schema_free(a);
    wr_schema_free(b);
    wr_schema_free(NULL);
}

static void
test_redact(void)
{
    char buf[256];
    log_redact_conninfo("host=db password=s3cret user=u", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "host=db password=*** user=u");
    log_redact_conninfo("password = 'a b\\' c' dbname=x", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "password = *** dbname=x");
    log_redact_conninfo("postgresql://u:s3cret@h:5432/db?sslmode=require", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "postgresql://u:***@h:5432/db?sslmode=require");
    log_redact_conninfo("postgres://h/db?user=u&password=zz&x=1", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "postgres://h/db?user=u&password=***&x=1");
    log_redact_conninfo("host=a mypassword=x", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "host=a mypassword=x");
    CHECK(strstr(buf, "s3cret") == NULL);
    /* tiny buffer: truncated, still terminated */
    log_redact_conninfo("host=db password=s3cret", buf, 8);
    CHECK_INT_EQ(strlen(buf), 7);
}

/* The safety net every log line goes through. */
static void
test_redact_text(void)
{
    char buf[512];
    log_redact_text("connecting conninfo=\"host=db password=s3cret user=u\" attempt=1", buf,
                    sizeof(buf));
    CHECK_STR_EQ(buf, "connecting conninfo=\"host=db password=*** user=u\" attempt=1");
    log_redact_text("x PASSWORD = 'a b c' y", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "x PASSWORD = *** y");
    log_redact_text("env PGPASSWORD=s3cret sslpassword=\"k e y\" done", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "env PGPASSWORD=*** sslpassword=*** done");
    log_redact_text("source=postgresql://rep:s3cret@db:5432/app ok", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "source=postgresql://rep:***@db:5432/app ok");
    log_redact_text("url=http://h:9187/metrics and https://u@h/", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "url=http://h:9187/metrics and https://u@h/");
    /* what PostgreSQL says about a failed login stays */
    log_redact_text("password authentication failed for user \"u\"", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "password authentication failed for user \"u\"");
    log_redact_text("password=", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "password=***");
    log_redact_text("a password=s3cret", buf, 12);
    CHECK_INT_EQ(strlen(buf), 11);
    CHECK(strstr(buf, "s3c") == NULL);
}

static void
json_of(const char *text, char *out, size_t len)
{
    jw_buf_t b;
    jw_init(&b);
    log_json_line(&b, "2026-01-02T03:04:05.678Z", LOG_LVL_INFO, text, "p", "apply");
    snprintf(out, len, "%s", b.data ? b.data : "");
    jw_free(&b);
}

static void
test_log_json(void)
{
    char buf[2048];

    json_of("worker started worker=sync-1 pid=123 restarts=0", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "{\"ts\":\"2026-01-02T03:04:05.678Z\",\"level\":\"info\",\"msg\":\"worker "
                      "started\",\"pipeline\":\"p\",\"worker\":\"apply\",\"field_worker\":"
                      "\"sync-1\",\"pid\":123,\"restarts\":0}\n");
    /* quoted values, LSNs and non-numbers stay strings; quotes inside a value stay */
    json_of("table errored table=public.t kind=dest_refused message=\"value \"x\" is bad\" "
            "lsn=0/16B3748 seconds=1.250 code=-0",
            buf, sizeof(buf));
    CHECK_CONTAINS(buf, "\"msg\":\"table errored\",");
    CHECK_CONTAINS(buf, "\"table\":\"public.t\",\"kind\":\"dest_refused\",");
    CHECK_CONTAINS(buf, "\"message\":\"value \\\"x\\\" is bad\",");
    CHECK_CONTAINS(buf, "\"lsn\":\"0/16B3748\",\"seconds\":1.250,\"code\":-0}");
    /* a message without fields, and one whose tail is not fields */
    json_of("stopped", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "\"msg\":\"stopped\",\"pipeline\":\"p\",\"worker\":\"apply\"}\n");
    json_of("preflight ok: wal_level is logical", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "\"msg\":\"preflight ok: wal_level is logical\",");
    json_of("bad a=\"unterminated x=1", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "\"msg\":\"bad a=\\\"unterminated\",\"pipeline\":\"p\",\"worker\":"
                        "\"apply\",\"x\":1}");
    /* control characters, invalid UTF-8 and leading zeros */
    json_of("odd\tmsg id=007 name=\xc3\xa9\xff", buf, sizeof(buf));
    CHECK_CONTAINS(buf, "\"msg\":\"odd\\tmsg\",\"pipeline\":\"p\",\"worker\":\"apply\","
                        "\"id\":\"007\",\"name\":\"\xc3\xa9?\"}");
}

/* log_msg in both formats, on a real stderr (a temporary file). */
static void
test_log_msg_formats(void)
{
    char path[] = "/tmp/walrelay_test_log_XXXXXX", buf[4096];
    int fd = mkstemp(path), saved = dup(2);
    ssize_t n;

    CHECK(fd >= 0 && saved >= 0);
    if (fd < 0 || saved < 0)
        return;
    dup2(fd, 2);
    log_init("pipe", "supervisor");
    log_set_format(LOG_FMT_TEXT);
    log_msg(LOG_LVL_WARN, "a text line conninfo=\"password=s3cret\" n=%d", 5);
    log_set_format(LOG_FMT_JSON);
    log_msg(LOG_LVL_ERROR, "a json line conninfo=\"password=s3cret\" n=%d", 6);
    log_msg(LOG_LVL_DEBUG, "not shown");
    log_set_format(LOG_FMT_TEXT);
    dup2(saved, 2);
    close(saved);
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(path);
    CHECK(n > 0);
    buf[n > 0 ? n : 0] = '\0';
    CHECK_CONTAINS(buf, " WARN a text line conninfo=\"password=***\" n=5 pipeline=pipe "
                        "worker=supervisor\n{\"ts\":\"");
    CHECK_CONTAINS(buf, "\",\"level\":\"error\",\"msg\":\"a json line\",\"pipeline\":\"pipe\","
                        "\"worker\":\"supervisor\",\"conninfo\":\"password=***\",\"n\":6}\n");
    CHECK(strstr(buf, "s3cret") == NULL);
    CHECK(strstr(buf, "not shown") == NULL);
    CHECK_INT_EQ(log_format_parse("JSON"), LOG_FMT_JSON);
    CHECK_INT_EQ(log_format_parse("text"), LOG_FMT_TEXT);
    CHECK_INT_EQ(log_format_parse("xml"), -1);
}

int
main(void)
{
    RUN(test_lsn_parse_format);
    RUN(test_lsn_parse_rejects);
    RUN(test_err);
    RUN(test_copy_text);
    RUN(test_phase_names);
    RUN(test_phase_transitions);
    RUN(test_schema);
    RUN(test_redact);
    RUN(test_redact_text);
    RUN(test_log_json);
    RUN(test_log_msg_formats);
    return unit_done();
}
