/*
 * test_config.c - unit tests of common/config.c: parsing, defaults, every error kind (each
 * naming file, line and key), cfg_write_new round trips, and slot names.
 *
 * NOTES: files go to a mkdtemp directory under /tmp, removed at the end.
 */
#include "unit.h"

#include "common/config.h"
#include "common/log.h"
#include "destinations/registry.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#define P "/x/walrelay.conf"

static char tmpdir[256];

static const char *const good_head = "[pipeline]\n"
                                     "name = demo\n"
                                     "[source]\n"
                                     "conninfo = host=db dbname=app password=s3cret\n"
                                     "publication = walrelay_pub\n";

/* cfg_write_new with the [destination] section the registry writes for spec, checked by
 * the registry (as walrelay init does). */
static int
write_new(const char *dir, const char *name, const char *conn, const char *pub, const char *spec,
          wr_err_t *err)
{
    char *section = NULL;
    int rc;

    wr_err_clear(err);
    if ((rc = dest_init_section(spec, &section, err)) < 0)
        return rc;
    rc = cfg_write_new(dir, name, conn, pub, section, NULL, NULL, dest_init_check, err);
    free(section);
    return rc;
}

/* The absolute path [destination] path names (dest_config_path); "" if none. */
static const char *
dpath(const wr_config_t *cfg)
{
    static char buf[PATH_MAX + 64];
    char *p = NULL;
    wr_err_t err;

    if (dest_config_path(cfg, "path", &p, &err) != 0)
        return "";
    snprintf(buf, sizeof(buf), "%s", p);
    free(p);
    return buf;
}

/* Parses text as /x/walrelay.conf (DIR /x); returns the code, fills err. */
static int
parse(const char *text, wr_config_t *cfg, wr_err_t *err)
{
    wr_err_clear(err);
    return cfg_parse_string(text, P, "/x", cfg, err);
}

/* Parses good_head + extra and expects an error containing `want`; returns nothing. */
static void
expect_error(const char *text, const char *want, const char *want_hint)
{
    wr_config_t cfg;
    wr_err_t err;
    int rc = parse(text, &cfg, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_INT_EQ(err.code, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, want);
    if (want_hint)
        CHECK_CONTAINS(err.hint, want_hint);
    /* the conninfo, which holds a password, never shows up in an error */
    CHECK(strstr(err.msg, "s3cret") == NULL);
    CHECK(strstr(err.hint, "s3cret") == NULL);
    /* on error nothing is left allocated */
    CHECK(cfg.pipeline_name == NULL);
    CHECK(cfg.source_conninfo == NULL);
    CHECK(cfg.dir == NULL);
    cfg_free(&cfg);
}

static char *
cat(const char *a, const char *b)
{
    static char buf[8192];
    snprintf(buf, sizeof(buf), "%s%s", a, b);
    return buf;
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
}

static void
test_valid_file(void)
{
    wr_config_t cfg;
    wr_err_t err;
    const char *text = "\xEF\xBB\xBF# a comment\n"
                       "; another comment\n"
                       "[pipeline]\n"
                       "name = orders_2\n"
                       "\n"
                       "[source]\r\n"
                       "  conninfo = host=db port=5432 dbname=app password=a;b#c  \r\n"
                       "\tpublication=pub1 ; inline comment\n"
                       "[destination]\n"
                       "type = sqlite\n"
                       "path = out/orders.db\n"
                       "[batch]\n"
                       "max_fill_ms = 50\n"
                       "max_bytes = 1048576\n"
                       "[sync]\n"
                       "max_table_sync_workers = 2\n"
                       "copy_batch_rows = 500\n"
                       "[retry]\n"
                       "worker_max_failures = 3\n"
                       "backoff_initial_ms = 2000\n"
                       "backoff_max_ms = 30000\n"
                       "healthy_reset_ms = 60000\n"
                       "[log]\n"
                       "level = debug\n";
    int rc = parse(text, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  error: %s (%s)\n", err.msg, err.hint);
        return;
    }
    CHECK_STR_EQ(cfg.dir, "/x");
    CHECK_STR_EQ(cfg.path, P);
    CHECK_STR_EQ(cfg.pipeline_name, "orders_2");
    /* ";" without a space before it and "#" inside a value are kept */
    CHECK_STR_EQ(cfg.source_conninfo, "host=db port=5432 dbname=app password=a;b#c");
    CHECK_STR_EQ(cfg.publication, "pub1");
    CHECK_STR_EQ(cfg.dest_type, "sqlite");
    CHECK_INT_EQ(dest_config_check(&cfg, &err), 0);
    CHECK_STR_EQ(dpath(&cfg), "/x/out/orders.db");
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 50);
    CHECK_INT_EQ(cfg.batch_max_bytes, 1048576);
    CHECK_INT_EQ(cfg.max_table_sync_workers, 2);
    CHECK_INT_EQ(cfg.copy_batch_rows, 500);
    CHECK_INT_EQ(cfg.worker_max_failures, 3);
    CHECK_INT_EQ(cfg.backoff_initial_ms, 2000);
    CHECK_INT_EQ(cfg.backoff_max_ms, 30000);
    CHECK_INT_EQ(cfg.healthy_reset_ms, 60000);
    CHECK_INT_EQ(cfg.log_level, LOG_LVL_DEBUG);
    cfg_free(&cfg);
    CHECK(cfg.pipeline_name == NULL);
    CHECK(cfg.dest_items == NULL && cfg.dest_nitems == 0);
}

static void
test_defaults(void)
{
    wr_config_t cfg;
    wr_err_t err;
    int rc;

    cfg_defaults(&cfg);
    CHECK(cfg.pipeline_name == NULL && cfg.dest_type == NULL && cfg.dir == NULL);
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 200);

    rc = parse(good_head, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0)
        return;
    /* config.c knows no destination: the registry fills the default type */
    CHECK(cfg.dest_type == NULL);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), 0);
    CHECK_STR_EQ(cfg.dest_type, "sqlite");
    CHECK_STR_EQ(dpath(&cfg), "/x/dest.db");
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 200);
    CHECK_INT_EQ(cfg.batch_max_bytes, 8388608);
    CHECK_INT_EQ(cfg.max_table_sync_workers, 4);
    CHECK_INT_EQ(cfg.copy_batch_rows, 10000);
    CHECK_INT_EQ(cfg.worker_max_failures, 5);
    CHECK_INT_EQ(cfg.backoff_initial_ms, 1000);
    CHECK_INT_EQ(cfg.backoff_max_ms, 60000);
    CHECK_INT_EQ(cfg.healthy_reset_ms, 300000);
    CHECK_INT_EQ(cfg.log_level, LOG_LVL_INFO);
    cfg_free(&cfg);

    /* null destination takes no path: the registry refuses the key with its line; absolute
     * sqlite path kept as is */
    rc = parse(cat(good_head, "[destination]\ntype = null\npath = ignored.db\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(cfg.dest_type, "null");
    CHECK_INT_EQ(cfg.dest_line, 6);
    CHECK_INT_EQ(cfg.dest_type_line, 7);
    CHECK_INT_EQ((int)cfg.dest_nitems, 1);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, P ":8: unknown key \"path\" in section [destination] (type = null)");
    CHECK_STR_EQ(err.hint, "valid keys in [destination] for type null: type");
    cfg_free(&cfg);
    rc = parse(cat(good_head, "[destination]\npath = /var/lib/w/d.db\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), 0);
    CHECK_STR_EQ(dpath(&cfg), "/var/lib/w/d.db");
    cfg_free(&cfg);
    /* an unknown type names its line and the registered types */
    rc = parse(cat(good_head, "[destination]\ntype = kafka\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg,
                 P ":7: invalid value \"kafka\" for [destination] type: no such destination type");
    CHECK_CONTAINS(
        err.hint,
        "registered destination types: sqlite, postgres, null, http, jsonl, nats, eventstore, plugin");
    cfg_free(&cfg);
    /* plugin needs library */
    rc = parse(cat(good_head, "[destination]\ntype = plugin\nurl = http://x\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, P ":6: missing required key \"library\" in section [destination] (type "
                            "= plugin)");
    cfg_free(&cfg);
    /* duplicate keys in [destination] are refused by config.c */
    expect_error(cat(good_head, "[destination]\nx = 1\nx = 2\n"),
                 P ":8: duplicate key \"x\" in section [destination] (first set on line 7)", NULL);
    expect_error(cat(good_head, "[destination]\ntype = null\ntype = sqlite\n"),
                 P ":8: duplicate key \"type\" in section [destination] (first set on line 7)",
                 NULL);
    /* the items are copied and compared (reload) */
    {
        wr_config_t a, b;
        rc = parse(cat(good_head, "[destination]\ntype = plugin\nlibrary = l.so\nk = v\n"), &a,
                   &err);
        CHECK_INT_EQ(rc, 0);
        cfg_defaults(&b);
        CHECK(!cfg_dest_equal(&a, &b));
        CHECK_INT_EQ(cfg_dest_copy(&b, &a), 0);
        CHECK(cfg_dest_equal(&a, &b));
        CHECK_STR_EQ(cfg_dest_item(&b, "k")->value, "v");
        CHECK_INT_EQ(cfg_dest_item(&b, "k")->line, 9);
        free(b.dest_items[1].value);
        b.dest_items[1].value = wr_strdup("w");
        CHECK(!cfg_dest_equal(&a, &b));
        cfg_dest_swap(&a, &b);
        CHECK_STR_EQ(cfg_dest_item(&a, "k")->value, "w");
        CHECK_STR_EQ(cfg_dest_item(&b, "k")->value, "v");
        cfg_free(&a);
        cfg_free(&b);
    }

    /* boundaries of a range are accepted */
    rc = parse(cat(good_head, "[batch]\nmax_fill_ms = 60000\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 60000);
    cfg_free(&cfg);
    rc = parse(cat(good_head, "[batch]\nmax_fill_ms = 1\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 1);
    cfg_free(&cfg);
}

static void
test_unknown_key(void)
{
    /* good_head is 5 lines: [batch] on 6, the bad key on 7 */
    expect_error(cat(good_head, "[batch]\nmax_fil_ms = 100\n"),
                 P ":7: unknown key \"max_fil_ms\" in section [batch]",
                 "valid keys in [batch]: max_fill_ms, max_bytes");
    expect_error(cat(good_head, "[source]\nconninf = x\n"),
                 P ":7: unknown key \"conninf\" in section [source]", "conninfo, publication");
    expect_error("name = demo\n[pipeline]\n", P ":1: key \"name\" is outside of any section",
                 "[pipeline]");
}

static void
test_invalid_values(void)
{
    expect_error(cat(good_head, "[batch]\nmax_fill_ms = abc\n"),
                 P ":7: invalid value \"abc\" for [batch] max_fill_ms: expected an integer from 1 "
                   "to 60000",
                 NULL);
    expect_error(cat(good_head, "[batch]\nmax_fill_ms = 0\n"),
                 P ":7: invalid value \"0\" for [batch] max_fill_ms", NULL);
    expect_error(cat(good_head, "[batch]\nmax_fill_ms = 60001\n"),
                 P ":7: invalid value \"60001\" for [batch] max_fill_ms", NULL);
    expect_error(cat(good_head, "[batch]\nmax_fill_ms = 12ms\n"),
                 P ":7: invalid value \"12ms\" for [batch] max_fill_ms", NULL);
    expect_error(cat(good_head, "[batch]\nmax_fill_ms =\n"),
                 P ":7: invalid value \"\" for [batch] max_fill_ms", NULL);
    expect_error(cat(good_head, "[batch]\nmax_bytes = 99999999999999999999999\n"),
                 P ":7: invalid value \"99999999999999999999999\" for [batch] max_bytes: expected "
                   "an integer from 1024 to 1073741824",
                 NULL);
    expect_error(cat(good_head, "[sync]\nmax_table_sync_workers = -1\n"),
                 P ":7: invalid value \"-1\" for [sync] max_table_sync_workers", NULL);
    /* [destination] values are the registry's to check (test_defaults): an empty type is
     * config.c's */
    expect_error(cat(good_head, "[destination]\ntype =\n"),
                 P ":7: empty value for [destination] type", NULL);
    {
        wr_config_t cfg;
        wr_err_t err;
        CHECK_INT_EQ(parse(cat(good_head, "[destination]\npath =\n"), &cfg, &err), 0);
        CHECK_INT_EQ(dest_config_check(&cfg, &err), WR_ECONFIG);
        CHECK_STR_EQ(err.msg, P ":7: empty value for [destination] path");
        CHECK_CONTAINS(err.hint, "remove the line to use dest.db");
        cfg_free(&cfg);
    }
    expect_error(cat(good_head, "[log]\nlevel = loud\n"),
                 P ":7: invalid value \"loud\" for [log] level", NULL);
    expect_error(cat(good_head, "[retry]\nbackoff_initial_ms = 5000\nbackoff_max_ms = 1000\n"),
                 P ":8: [retry] backoff_max_ms (1000) is less than backoff_initial_ms (5000)",
                 "backoff_max_ms");
    expect_error("[pipeline]\nname = demo\n[source]\nconninfo =\npublication = p\n",
                 P ":4: empty value for [source] conninfo", "conninfo = ");
    expect_error("[pipeline]\nname = demo\n[source]\nconninfo = x\npublication =\n",
                 P ":5: invalid value \"\" for [source] publication", NULL);
}

static void
test_sections_and_syntax(void)
{
    expect_error(cat(good_head, "[bach]\nmax_fill_ms = 1\n"), P ":6: unknown section [bach]",
                 "valid sections: [pipeline], [source], [destination]");
    /* an empty unknown section is found too (inih calls no handler for it) */
    expect_error(cat(good_head, "\n[metric]\n"), P ":7: unknown section [metric]", NULL);
    expect_error(cat(good_head, "[batch] max_fill_ms = 5\n"),
                 P ":6: unexpected text after section header [batch]", NULL);
    expect_error(cat(good_head, "[batch\nmax_fill_ms = 5\n"),
                 P ":6: missing \"]\" in section header", NULL);
    expect_error(cat(good_head, "[batch]\nmax_fill_ms 5\n"),
                 P ":7: syntax error: expected \"[section]\" or \"key = value\"", NULL);
    /* the first error wins, whichever kind it is */
    expect_error(cat(good_head, "[batch]\nbogus\nmax_fil_ms = 3\n"), P ":7: syntax error", NULL);
    expect_error(cat(good_head, "[batch]\nmax_fil_ms = 3\nbogus\n"), P ":7: unknown key", NULL);
}

static void
test_duplicates(void)
{
    expect_error(cat(good_head, "[batch]\nmax_fill_ms = 1\n\nmax_fill_ms = 2\n"),
                 P ":9: duplicate key \"max_fill_ms\" in section [batch] (first set on line 7)",
                 NULL);
    /* a duplicate conninfo is reported without its value */
    expect_error(cat(good_head, "[source]\nconninfo = password=s3cret\n"),
                 P ":7: duplicate key \"conninfo\" in section [source] (first set on line 4)",
                 NULL);
    /* the same section twice is fine: its keys merge */
    {
        wr_config_t cfg;
        wr_err_t err;
        CHECK_INT_EQ(parse(cat(good_head, "[pipeline]\n[batch]\nmax_fill_ms=9\n"), &cfg, &err), 0);
        CHECK_INT_EQ(cfg.batch_max_fill_ms, 9);
        cfg_free(&cfg);
    }
}

static void
test_missing_required(void)
{
    expect_error("[pipeline]\nname = demo\n[source]\npublication = p\n",
                 P ":3: missing required key \"conninfo\" in section [source]", "conninfo = host=");
    expect_error("[pipeline]\nname = demo\n[source]\nconninfo = password=s3cret\n",
                 P ":3: missing required key \"publication\" in section [source]",
                 "publication = ");
    expect_error("[source]\nconninfo = password=s3cret\npublication = p\n",
                 P ": missing required key \"name\" in section [pipeline] (there is no [pipeline] "
                   "section)",
                 "below [pipeline]");
    expect_error("", P ": missing required key \"name\" in section [pipeline]", NULL);
}

static void
test_bad_pipeline_name(void)
{
    expect_error("[pipeline]\nname = Demo\n",
                 P ":2: invalid value \"Demo\" for [pipeline] name: expected 1 to 40 characters",
                 NULL);
    expect_error("[pipeline]\nname = a-b\n", P ":2: invalid value \"a-b\" for [pipeline] name",
                 NULL);
    expect_error("[pipeline]\nname =\n", P ":2: invalid value \"\" for [pipeline] name", NULL);
    expect_error("[pipeline]\nname = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 P ":2: invalid value \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", NULL);

    CHECK(cfg_pipeline_name_ok("a"));
    CHECK(cfg_pipeline_name_ok("abc_123"));
    CHECK(cfg_pipeline_name_ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));   /* 40 */
    CHECK(!cfg_pipeline_name_ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 41 */
    CHECK(!cfg_pipeline_name_ok(""));
    CHECK(!cfg_pipeline_name_ok(NULL));
    CHECK(!cfg_pipeline_name_ok("a b"));
    CHECK(!cfg_pipeline_name_ok("A"));
    CHECK(!cfg_pipeline_name_ok("\xc3\xa9"));

    /* issue 12, defect 3: the form of another pipeline's sync slot names */
    CHECK(cfg_pipeline_name_clashes("shop_s16390"));
    CHECK(cfg_pipeline_name_clashes("a_s1"));
    CHECK(cfg_pipeline_name_clashes("x_s1_s2"));
    CHECK(!cfg_pipeline_name_clashes("shop"));
    CHECK(!cfg_pipeline_name_clashes("shop_s"));
    CHECK(!cfg_pipeline_name_clashes("_s1")); /* would be the sync slot of pipeline "" */
    CHECK(!cfg_pipeline_name_clashes("shops1"));
    CHECK(!cfg_pipeline_name_clashes("shop_s1x"));
    CHECK(!cfg_pipeline_name_clashes("s123"));
    CHECK(!cfg_pipeline_name_clashes(NULL));
    expect_error("[pipeline]\nname = shop_s16390\n",
                 P ":2: pipeline name \"shop_s16390\" ends in \"_s\" and digits", NULL);
}

static void
test_long_line_and_nul(void)
{
    char text[1024], secret[300];
    /* a conninfo too long for libinih's 200-byte line: refused, never cut, never echoed */
    memset(secret, 'x', 250);
    memcpy(secret, "password=s3cret", 15);
    secret[250] = '\0';
    snprintf(text, sizeof(text),
             "[pipeline]\nname = demo\n[source]\nconninfo = %s\npublication = p\n", secret);
    expect_error(text, P ":4: line is too long (261 bytes, at most 198)", "service");

    /* 199 bytes do not fit (inih needs room for "\n" and NUL in 200) */
    memset(secret, 'y', 188);
    secret[188] = '\0';
    snprintf(text, sizeof(text),
             "[pipeline]\nname = demo\n[source]\nconninfo = %s\npublication = p\n", secret);
    expect_error(text, P ":4: line is too long (199 bytes, at most 198)", NULL);

    /* 198 bytes fit */
    memset(secret, 'y', 187);
    secret[187] = '\0';
    snprintf(text, sizeof(text),
             "[pipeline]\nname = demo\n[source]\nconninfo = %s\npublication = p\n", secret);
    {
        wr_config_t cfg;
        wr_err_t err;
        int rc = parse(text, &cfg, &err);
        CHECK_INT_EQ(rc, 0);
        if (rc == 0)
            CHECK_INT_EQ(strlen(cfg.source_conninfo), 187);
        cfg_free(&cfg);
    }
}

static void
test_load_errors(void)
{
    wr_config_t cfg;
    wr_err_t err;
    char dir[512], msg[1024];
    int rc;

    snprintf(dir, sizeof(dir), "%s/nope", tmpdir);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    snprintf(msg, sizeof(msg), "cannot read %s/walrelay.conf: No such file or directory", dir);
    CHECK_STR_EQ(err.msg, msg);
    CHECK_CONTAINS(err.hint, "run walrelay init");

    /* directory exists, file does not */
    snprintf(dir, sizeof(dir), "%s/empty", tmpdir);
    CHECK_INT_EQ(mkdir(dir, 0700), 0);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    snprintf(msg, sizeof(msg), "cannot read %s/walrelay.conf: No such file or directory", dir);
    CHECK_STR_EQ(err.msg, msg);
    CHECK_CONTAINS(err.hint, "walrelay init");

    /* a directory where the file should be */
    snprintf(msg, sizeof(msg), "%s/walrelay.conf", dir);
    CHECK_INT_EQ(mkdir(msg, 0700), 0);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "not a regular file");
    rmdir(msg);

    /* errors of a loaded file name its absolute path and line; a NUL byte is refused */
    {
        FILE *f = fopen(msg, "w");
        CHECK(f != NULL);
        if (f) {
            fputs(good_head, f);
            fputs("[batch]\nmax_fill_ms = 1\n", f);
            fwrite("max_bytes = 2048\0x\n", 1, 19, f);
            fclose(f);
        }
        rc = cfg_load(dir, &cfg, &err);
        CHECK_INT_EQ(rc, WR_ECONFIG);
        {
            char want[1100];
            snprintf(want, sizeof(want), "%s:8: line contains a NUL byte", msg);
            CHECK_STR_EQ(err.msg, want);
        }
        unlink(msg);
    }
}

static void
test_load_resolves_dir(void)
{
    wr_config_t cfg;
    wr_err_t err;
    char dir[512], path[PATH_MAX + 64], cwd[512], real[PATH_MAX];
    int rc;

    snprintf(dir, sizeof(dir), "%s/rel", tmpdir);
    CHECK_INT_EQ(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/walrelay.conf", dir);
    write_file(path, cat(good_head, "[destination]\npath = sub/d.db\n"));
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    CHECK_INT_EQ(chdir(tmpdir), 0);
    rc = cfg_load("./rel/../rel", &cfg, &err);
    CHECK_INT_EQ(chdir(cwd), 0);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  error: %s\n", err.msg);
        return;
    }
    CHECK(realpath(dir, real) != NULL);
    CHECK_STR_EQ(cfg.dir, real);
    snprintf(path, sizeof(path), "%s/walrelay.conf", real);
    CHECK_STR_EQ(cfg.path, path);
    snprintf(path, sizeof(path), "%s/sub/d.db", real);
    CHECK_INT_EQ(dest_config_check(&cfg, &err), 0);
    CHECK_STR_EQ(dpath(&cfg), path);
    CHECK_STR_EQ(cfg.source_conninfo, "host=db dbname=app password=s3cret");
    cfg_free(&cfg);
}

static void
test_write_new_roundtrip(void)
{
    wr_config_t cfg;
    wr_err_t err;
    char dir[512], path[PATH_MAX + 64], real[PATH_MAX];
    struct stat st;
    const char *conn = "host=db.example port=6432 dbname=app user=rep "
                       "application_name='wal relay' sslmode=verify-full";
    int rc;

    snprintf(dir, sizeof(dir), "%s/new", tmpdir);
    rc = write_new(dir, "demo", conn, "walrelay_pub", "sqlite:data/d.db", &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  error: %s (%s)\n", err.msg, err.hint);
        return;
    }
    /* directory created 0700, file 0600 */
    CHECK_INT_EQ(stat(dir, &st), 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_INT_EQ(st.st_mode & 0777, 0700);
    snprintf(path, sizeof(path), "%s/walrelay.conf", dir);
    CHECK_INT_EQ(stat(path, &st), 0);
    CHECK_INT_EQ(st.st_mode & 0777, 0600);

    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  error: %s (%s)\n", err.msg, err.hint);
        return;
    }
    CHECK(realpath(dir, real) != NULL);
    CHECK_STR_EQ(cfg.pipeline_name, "demo");
    CHECK_STR_EQ(cfg.source_conninfo, conn);
    CHECK_STR_EQ(cfg.publication, "walrelay_pub");
    CHECK_STR_EQ(cfg.dest_type, "sqlite");
    snprintf(path, sizeof(path), "%s/data/d.db", real);
    CHECK_STR_EQ(dpath(&cfg), path);
    /* every default is written out and reads back as the default */
    CHECK_INT_EQ(cfg.batch_max_fill_ms, 200);
    CHECK_INT_EQ(cfg.batch_max_bytes, 8388608);
    CHECK_INT_EQ(cfg.max_table_sync_workers, 4);
    CHECK_INT_EQ(cfg.copy_batch_rows, 10000);
    CHECK_INT_EQ(cfg.worker_max_failures, 5);
    CHECK_INT_EQ(cfg.backoff_initial_ms, 1000);
    CHECK_INT_EQ(cfg.backoff_max_ms, 60000);
    CHECK_INT_EQ(cfg.healthy_reset_ms, 300000);
    CHECK_INT_EQ(cfg.log_level, LOG_LVL_INFO);
    CHECK_INT_EQ(cfg.publication_refresh_ms, 30000);
    CHECK_INT_EQ(cfg.on_slot_lost, CFG_SLOT_LOST_STOP);
    CHECK_INT_EQ(cfg.table_error_retry_delay_ms, 10000);
    CHECK_INT_EQ(cfg.table_error_retry_max_attempts, 5);
    cfg_free(&cfg);

    /* the file holds every key, each with a comment */
    {
        char text[16384];
        FILE *f;
        size_t n;
        snprintf(path, sizeof(path), "%s/walrelay.conf", dir);
        f = fopen(path, "r");
        CHECK(f != NULL);
        if (f) {
            n = fread(text, 1, sizeof(text) - 1, f);
            text[n] = '\0';
            fclose(f);
            CHECK_CONTAINS(text, "\n[retry]\n# ");
            CHECK_CONTAINS(text, "\nhealthy_reset_ms = 300000\n");
            CHECK_CONTAINS(text, "\nmax_bytes = 8388608\n");
            CHECK_CONTAINS(text, "\nlevel = info\n");
            CHECK_CONTAINS(text, "\npath = data/d.db\n");
            CHECK_CONTAINS(text, "\non_slot_lost = stop\n");
            CHECK_CONTAINS(text, "\npublication_refresh_ms = 30000\n");
            CHECK_CONTAINS(text, "\ntable_error_retry_delay_ms = 10000\n");
            CHECK_CONTAINS(text, "\ntable_error_retry_max_attempts = 5\n");
        }
    }

    /* refuses to overwrite, and leaves the file alone */
    rc = write_new(dir, "other", "host=x", "p", "null", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    snprintf(path, sizeof(path), "%s/walrelay.conf already exists", dir);
    CHECK_STR_EQ(err.msg, path);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(cfg.pipeline_name, "demo");
    cfg_free(&cfg);
}

static void
test_write_new_variants(void)
{
    wr_config_t cfg;
    wr_err_t err;
    char dir[512];
    int rc;

    /* default destination; conninfo whitespace trimmed (libpq ignores it) */
    snprintf(dir, sizeof(dir), "%s/v1", tmpdir);
    rc = write_new(dir, "v1", "  host=a dbname=b  ", "pub", "sqlite", &err);
    CHECK_INT_EQ(rc, 0);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(cfg.source_conninfo, "host=a dbname=b");
    CHECK_STR_EQ(cfg.dest_type, "sqlite");
    CHECK(strstr(dpath(&cfg), "/v1/dest.db") != NULL);
    cfg_free(&cfg);

    snprintf(dir, sizeof(dir), "%s/v2", tmpdir);
    rc = write_new(dir, "v2", "postgresql://rep@db:5432/app?sslmode=require", "pub", "null", &err);
    CHECK_INT_EQ(rc, 0);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(cfg.source_conninfo, "postgresql://rep@db:5432/app?sslmode=require");
    CHECK_STR_EQ(cfg.dest_type, "null");
    CHECK(cfg.dest_nitems == 0);
    cfg_free(&cfg);

    snprintf(dir, sizeof(dir), "%s/v4", tmpdir);
    rc = write_new(dir, "v4", "host=a", "pub", "plugin:lib/x.so", &err);
    /* the library does not exist: the registry refuses before anything is written */
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "[destination] library: cannot load \"");
    CHECK_CONTAINS(err.msg, "/v4/lib/x.so\": No such file or directory");
    CHECK(access(dir, F_OK) != 0);

    snprintf(dir, sizeof(dir), "%s/v3", tmpdir);
    rc = write_new(dir, "v3", "host=a", "pub", "sqlite:/abs/x.db", &err);
    CHECK_INT_EQ(rc, 0);
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(dpath(&cfg), "/abs/x.db");
    cfg_free(&cfg);

    /* every built-in type writes a file that loads (the generated comments included: a
     * comment line longer than libinih reads once broke init of the event store) */
    static const char *const specs[] = {
        "sqlite",
        "null",
        "http:http://127.0.0.1:1/hook",
        "jsonl:/tmp/x.jsonl",
        "nats:nats://127.0.0.1:4222",
        "eventstore:sqlite:/tmp/e.db",
        "eventstore:postgres:host=a dbname=b",
    };
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        snprintf(dir, sizeof(dir), "%s/t%zu", tmpdir, i);
        rc = write_new(dir, "t", "host=a", "pub", specs[i], &err);
        if (rc != 0)
            fprintf(stderr, "  %s: %s (%s)\n", specs[i], err.msg, err.hint);
        CHECK_INT_EQ(rc, 0);
        CHECK_INT_EQ(cfg_load(dir, &cfg, &err), 0);
        cfg_free(&cfg);
    }
}

static void
test_write_new_refusals(void)
{
    wr_err_t err;
    char dir[512], path[600];
    char longconn[256];
    int rc;

    snprintf(dir, sizeof(dir), "%s/refused", tmpdir);
    snprintf(path, sizeof(path), "%s/walrelay.conf", dir);

    rc = write_new(dir, "demo", "host=a password=x;y", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "conninfo contains \";\"");
    CHECK(strstr(err.msg, "x;y") == NULL);
    CHECK_CONTAINS(err.hint, "PGPASSFILE");
    CHECK_CONTAINS(err.hint, "service");

    rc = write_new(dir, "demo", "host=a password=x#y", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "conninfo contains \"#\"");
    CHECK(strstr(err.msg, "x#y") == NULL);

    rc = write_new(dir, "demo", "host=a\npassword=xy", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "conninfo contains a control character");

    memset(longconn, 'z', 200);
    longconn[200] = '\0';
    rc = write_new(dir, "demo", longconn, "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "conninfo is too long for one line of walrelay.conf (200 bytes, at "
                            "most 187)");
    CHECK(strstr(err.msg, "zzz") == NULL);

    rc = write_new(dir, "demo", "   ", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "conninfo is empty");

    rc = write_new(dir, "Bad-Name", "host=a", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "invalid pipeline name \"Bad-Name\"");

    rc = write_new(dir, "demo", "host=a", "", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "publication name is empty");

    rc = write_new(dir, "demo", "host=a", "pub", "kafka", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "unknown destination type \"kafka\" in --destination kafka");
    CHECK_CONTAINS(
        err.hint,
        "registered destination types: sqlite, postgres, null, http, jsonl, nats, eventstore, plugin");
    rc = write_new(dir, "demo", "host=a", "pub", "plugin", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "plugin:PATH");
    rc = write_new(dir, "demo", "host=a", "pub", "null:x", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    rc = write_new(dir, "demo", "host=a", "pub", "sqlite:", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    rc = write_new(dir, "demo", "host=a", "pub", "sqlite:a ;b.db", &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "the value \"a ;b.db\" of [destination] path contains a character");

    /* nothing was created by any refusal */
    CHECK(access(dir, F_OK) != 0);

    /* the parent of DIR must exist */
    snprintf(dir, sizeof(dir), "%s/no/such", tmpdir);
    rc = write_new(dir, "demo", "host=a", "pub", NULL, &err);
    CHECK_INT_EQ(rc, WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "cannot create directory");
    CHECK_CONTAINS(err.msg, "No such file or directory");
}

/* The keys added for lifecycle and operations: defaults, values, range and enum errors. */
static void
test_lifecycle_keys(void)
{
    wr_config_t cfg;
    wr_err_t err;
    int rc;

    rc = parse(good_head, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(cfg.publication_refresh_ms, 30000);
    CHECK_INT_EQ(cfg.on_slot_lost, CFG_SLOT_LOST_STOP);
    CHECK_INT_EQ(cfg.table_error_retry_delay_ms, 10000);
    CHECK_INT_EQ(cfg.table_error_retry_max_attempts, 5);
    cfg_free(&cfg);

    rc = parse(cat(good_head, "[pipeline]\npublication_refresh_ms = 0\non_slot_lost = recopy\n"
                              "[retry]\ntable_error_retry_delay_ms = 100\n"
                              "table_error_retry_max_attempts = 0\n"),
               &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(cfg.publication_refresh_ms, 0);
    CHECK_INT_EQ(cfg.on_slot_lost, CFG_SLOT_LOST_RECOPY);
    CHECK_INT_EQ(cfg.table_error_retry_delay_ms, 100);
    CHECK_INT_EQ(cfg.table_error_retry_max_attempts, 0);
    cfg_free(&cfg);
    rc = parse(cat(good_head, "[pipeline]\non_slot_lost = stop\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(cfg.on_slot_lost, CFG_SLOT_LOST_STOP);
    cfg_free(&cfg);

    expect_error(cat(good_head, "[pipeline]\non_slot_lost = drop\n"),
                 P ":7: invalid value \"drop\" for [pipeline] on_slot_lost: expected \"stop\" or "
                   "\"recopy\"",
                 NULL);
    expect_error(cat(good_head, "[pipeline]\non_slot_lost = Recopy\n"),
                 P ":7: invalid value \"Recopy\" for [pipeline] on_slot_lost", NULL);
    expect_error(cat(good_head, "[pipeline]\npublication_refresh_ms = -1\n"),
                 P ":7: invalid value \"-1\" for [pipeline] publication_refresh_ms: expected an "
                   "integer from 0 to 86400000",
                 NULL);
    expect_error(cat(good_head, "[retry]\ntable_error_retry_delay_ms = 99\n"),
                 P ":7: invalid value \"99\" for [retry] table_error_retry_delay_ms", NULL);
    expect_error(cat(good_head, "[retry]\ntable_error_retry_max_attempts = 1001\n"),
                 P ":7: invalid value \"1001\" for [retry] table_error_retry_max_attempts: "
                   "expected an integer from 0 to 1000",
                 NULL);
    expect_error(cat(good_head, "[retry]\ntable_error_retry_max_attempt = 3\n"),
                 P ":7: unknown key \"table_error_retry_max_attempt\" in section [retry]",
                 "table_error_retry_max_attempts");
}

/* [state]: the three backends, their keys, the items a plugin store gets, errors with the
 * line of the key, and init --state for each. */
static void
test_state_section(void)
{
    wr_config_t cfg, other;
    wr_err_t err;
    char dir[512], path[PATH_MAX + 64];
    FILE *f;
    char text[8192];
    size_t n;
    int rc;

    /* the default: sqlite, schema accepted (init writes it for every backend) */
    CHECK_INT_EQ(
        parse(cat(good_head, "[state]\nbackend = sqlite\nschema = walrelay_state\n"), &cfg, &err),
        0);
    CHECK_INT_EQ(cfg.state_backend, CFG_STATE_SQLITE);
    CHECK(cfg.state_library == NULL);
    CHECK_INT_EQ(cfg.state_line, 6);
    cfg_free(&cfg);

    /* postgres: conninfo and schema, also when backend comes last */
    CHECK_INT_EQ(parse(cat(good_head, "[state]\nschema = st\nconninfo = host=s password=x\n"
                                      "backend = postgres\n"),
                       &cfg, &err),
                 0);
    CHECK_INT_EQ(cfg.state_backend, CFG_STATE_POSTGRES);
    CHECK_STR_EQ(cfg.state_conninfo, "host=s password=x");
    CHECK_STR_EQ(cfg.state_schema, "st");
    cfg_free(&cfg);

    /* plugin: library, and every other key (conninfo and schema too) is the store's */
    rc = parse(cat(good_head, "[state]\nbackend = plugin\nlibrary = lib/libone.so\n"
                              "path = state.json\nconninfo = anything at all\nschema = \n"),
               &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc == 0) {
        CHECK_INT_EQ(cfg.state_backend, CFG_STATE_PLUGIN);
        CHECK_STR_EQ(cfg.state_library, "lib/libone.so");
        CHECK(cfg.state_conninfo == NULL);
        CHECK_INT_EQ(cfg.state_nitems, 4);
        CHECK(cfg_state_item(&cfg, "path") != NULL &&
              strcmp(cfg_state_item(&cfg, "path")->value, "state.json") == 0);
        CHECK_INT_EQ(cfg_state_item(&cfg, "path")->line, 9);
        CHECK(cfg_state_item(&cfg, "schema") != NULL);
        CHECK(cfg_state_item(&cfg, "nope") == NULL);
        /* restart-only comparison: library and the store's keys, not conninfo/schema */
        CHECK_INT_EQ(parse(cat(good_head, "[state]\nbackend = plugin\nlibrary = lib/libone.so\n"
                                          "path = other.json\n"),
                           &other, &err),
                     0);
        CHECK(!cfg_state_items_equal(&cfg, &other));
        cfg_state_items_swap(&cfg, &other);
        CHECK_STR_EQ(cfg_state_item(&cfg, "path")->value, "other.json");
        CHECK_INT_EQ(other.state_nitems, 4);
        cfg_free(&other);
        cfg_free(&cfg);
    }

    /* errors name the file, the line and the key */
    expect_error(cat(good_head, "[state]\nbackend = mysql\n"),
                 P ":7: invalid value \"mysql\" for [state] backend: expected \"sqlite\", "
                   "\"postgres\" or \"plugin\"",
                 NULL);
    expect_error(cat(good_head, "[state]\nbackend = plugin\n"),
                 P ":7: [state] backend = plugin needs a library",
                 "library = /path/to/libstore.so");
    expect_error(cat(good_head, "[state]\nbackend = plugin\nlibrary =\n"),
                 P ":8: empty value for [state] library", NULL);
    expect_error(cat(good_head, "[state]\nlibrary = x.so\n"),
                 P ":7: [state] library is set but backend is not plugin", "backend = plugin");
    expect_error(cat(good_head, "[state]\nbackend = postgres\nlibrary = x.so\n"),
                 P ":8: [state] library is set but backend is not plugin", NULL);
    expect_error(cat(good_head, "[state]\nbackend = postgres\n"),
                 P ":7: [state] backend = postgres needs a conninfo", NULL);
    expect_error(cat(good_head, "[state]\nconninfo = host=x password=s3cret\n"),
                 P ":7: [state] conninfo is set but backend is not postgres", NULL);
    expect_error(cat(good_head, "[state]\nbackend = postgres\nconninfo =\n"),
                 P ":8: empty value for [state] conninfo", NULL);
    expect_error(cat(good_head, "[state]\nbackend = postgres\nconninfo = a\nschema = \n"),
                 P ":9: invalid value \"\" for [state] schema: expected a name of 1 to 63 bytes",
                 NULL);
    expect_error(cat(good_head, "[state]\ncolour = red\n"),
                 P ":7: unknown key \"colour\" in section [state]",
                 "valid keys in [state]: backend, conninfo, schema, library");
    expect_error(cat(good_head, "[state]\nbackend = plugin\nlibrary = a.so\nk = 1\nk = 2\n"),
                 P ":10: duplicate key \"k\" in section [state] (first set on line 9)", NULL);

    /* init --state plugin:PATH writes backend and library, and postgres's keys as comments
     * (a plugin store would refuse them); it reads back */
    snprintf(dir, sizeof(dir), "%s/stateplugin", tmpdir);
    {
        char *section = NULL;
        CHECK_INT_EQ(dest_init_section(NULL, &section, &err), 0);
        rc = cfg_write_new(dir, "demo", "host=db", "pub", section, "plugin:/opt/s/libs.so", NULL,
                           NULL, &err);
        free(section);
    }
    CHECK_INT_EQ(rc, 0);
    snprintf(path, sizeof(path), "%s/walrelay.conf", dir);
    f = fopen(path, "r");
    CHECK(f != NULL);
    if (f) {
        n = fread(text, 1, sizeof(text) - 1, f);
        text[n] = '\0';
        fclose(f);
        CHECK_CONTAINS(text, "\nbackend = plugin\n");
        CHECK_CONTAINS(text, "\nlibrary = /opt/s/libs.so\n");
        CHECK_CONTAINS(text, "\n# schema = walrelay_state\n");
        CHECK(strstr(text, "\nschema = ") == NULL);
    }
    rc = cfg_load(dir, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc == 0) {
        CHECK_INT_EQ(cfg.state_backend, CFG_STATE_PLUGIN);
        CHECK_STR_EQ(cfg.state_library, "/opt/s/libs.so");
        CHECK_INT_EQ(cfg.state_nitems, 1);
        cfg_free(&cfg);
    }
    /* refusals: no path, a path the file cannot hold, another scheme (never echoing what
     * follows its colon) */
    CHECK_INT_EQ(cfg_write_new(dir, "demo", "host=db", "pub", "", "plugin:", NULL, NULL, &err),
                 WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "--state plugin needs the library: plugin:PATH");
    CHECK_INT_EQ(
        cfg_write_new(dir, "demo", "host=db", "pub", "", "plugin:/a;b.so", NULL, NULL, &err),
        WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "state store library \"/a;b.so\" contains");
    CHECK_INT_EQ(
        cfg_write_new(dir, "demo", "host=db", "pub", "", "mysql:password=s3cret", NULL, NULL, &err),
        WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "invalid state store \"mysql\": expected \"sqlite\", "
                            "\"postgres:CONNINFO\" or \"plugin:PATH\"");
    CHECK(strstr(err.msg, "s3cret") == NULL);
    unlink(path);
    rmdir(dir);
}

static void
test_slot_names(void)
{
    wr_config_t cfg;
    char buf[128], small[12];
    const char *name40 = "abcdefghijabcdefghijabcdefghijabcdefghij";

    cfg_defaults(&cfg);
    cfg.pipeline_name = (char *)"demo";
    cfg_apply_slot_name(&cfg, buf, sizeof(buf));
    CHECK_STR_EQ(buf, "walrelay_demo");
    cfg_sync_slot_name(&cfg, 16384, buf, sizeof(buf));
    CHECK_STR_EQ(buf, "walrelay_demo_s16384");

    /* the longest name and relid still fit PostgreSQL's 63-byte slot names */
    CHECK_INT_EQ(strlen(name40), WR_PIPELINE_NAME_MAX);
    CHECK(cfg_pipeline_name_ok(name40));
    cfg.pipeline_name = (char *)name40;
    cfg_apply_slot_name(&cfg, buf, sizeof(buf));
    CHECK_INT_EQ(strlen(buf), 49);
    cfg_sync_slot_name(&cfg, UINT32_MAX, buf, sizeof(buf));
    CHECK_INT_EQ(strlen(buf), 61);
    CHECK(strlen(buf) <= 63);
    CHECK_CONTAINS(buf, "_s4294967295");

    /* a short buffer is cut and terminated, never overrun */
    memset(small, 'Q', sizeof(small));
    cfg_sync_slot_name(&cfg, 1, small, 8);
    CHECK_STR_EQ(small, "walrela");
    CHECK_INT_EQ(small[8], 'Q');
}

static void
rm_rf(const char *path)
{
    char cmd[600];
    if (strncmp(path, "/tmp/", 5) != 0)
        return;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", path);
}

/* [metrics] listen and lag_interval_ms, [log] format (issue 10), cfg_listen_parse, and
 * walrelay init --metrics. */
static void
test_operations_keys(void)
{
    wr_config_t cfg;
    wr_err_t err;
    char host[64], dir[512];
    uint16_t port = 1;
    int rc;

    rc = parse(good_head, &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK(cfg.metrics_listen == NULL);
    CHECK_INT_EQ(cfg.metrics_lag_interval_ms, 5000);
    CHECK_INT_EQ(cfg.log_format, LOG_FMT_TEXT);
    cfg_free(&cfg);

    rc = parse(cat(good_head, "[metrics]\nlisten = 127.0.0.1:9187\nlag_interval_ms = 1000\n"
                              "[log]\nformat = json\n"),
               &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(cfg.metrics_listen, "127.0.0.1:9187");
    CHECK_INT_EQ(cfg.metrics_lag_interval_ms, 1000);
    CHECK_INT_EQ(cfg.log_format, LOG_FMT_JSON);
    cfg_free(&cfg);
    /* an empty listen is off */
    rc = parse(cat(good_head, "[metrics]\nlisten =\n"), &cfg, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK(cfg.metrics_listen == NULL);
    cfg_free(&cfg);

    expect_error(cat(good_head, "[metrics]\nlisten = 9187\n"),
                 P ":7: invalid value for [metrics] listen: \"9187\" has no port",
                 "write HOST:PORT, e.g. 127.0.0.1:9187");
    expect_error(cat(good_head, "[metrics]\nlisten = localhost:http\n"),
                 P ":7: invalid value for [metrics] listen: \"localhost:http\": the port must be a "
                   "number from 0 to 65535",
                 NULL);
    expect_error(cat(good_head, "[metrics]\nlisten = 127.0.0.1:65536\n"),
                 "the port must be a number from 0 to 65535", NULL);
    expect_error(cat(good_head, "[metrics]\nlisten = ::1:9187\n"),
                 "\"::1:9187\": an IPv6 address needs brackets", "write [::1]:9187");
    expect_error(cat(good_head, "[metrics]\nlisten = :9187\n"), "\":9187\" has no host",
                 "0.0.0.0:PORT");
    expect_error(cat(good_head, "[metrics]\nport = 9187\n"),
                 P ":7: unknown key \"port\" in section [metrics]",
                 "valid keys in [metrics]: listen, lag_interval_ms");
    expect_error(cat(good_head, "[metrics]\nlag_interval_ms = 10\n"),
                 "invalid value \"10\" for [metrics] lag_interval_ms: expected an integer from "
                 "1000 to 3600000",
                 NULL);
    expect_error(cat(good_head, "[log]\nformat = yaml\n"),
                 P ":7: invalid value \"yaml\" for [log] format: expected \"text\" or \"json\"",
                 NULL);

    CHECK_INT_EQ(cfg_listen_parse("[::1]:9187", host, sizeof(host), &port, &err), 0);
    CHECK_STR_EQ(host, "::1");
    CHECK_INT_EQ(port, 9187);
    CHECK_INT_EQ(cfg_listen_parse("0.0.0.0:0", host, sizeof(host), &port, &err), 0);
    CHECK_STR_EQ(host, "0.0.0.0");
    CHECK_INT_EQ(port, 0);
    CHECK_INT_EQ(cfg_listen_parse("metrics.example.com:9187", host, sizeof(host), &port, &err), 0);
    CHECK_STR_EQ(host, "metrics.example.com");
    CHECK_INT_EQ(cfg_listen_parse("[::1]9187", host, sizeof(host), &port, &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "is not [IPV6]:PORT");
    CHECK_INT_EQ(cfg_listen_parse("a b:1", host, sizeof(host), &port, &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "the host has an invalid character");

    /* walrelay init --metrics writes [metrics] listen; a bad one writes nothing */
    snprintf(dir, sizeof(dir), "%s/ops1", tmpdir);
    {
        char *section = NULL;
        CHECK_INT_EQ(dest_init_section("sqlite", &section, &err), 0);
        rc = cfg_write_new(dir, "ops1", "host=a", "pub", section, NULL, "[::1]:9187",
                           dest_init_check, &err);
        CHECK_INT_EQ(rc, 0);
        rc = cfg_load(dir, &cfg, &err);
        CHECK_INT_EQ(rc, 0);
        CHECK_STR_EQ(cfg.metrics_listen, "[::1]:9187");
        cfg_free(&cfg);
        snprintf(dir, sizeof(dir), "%s/ops2", tmpdir);
        rc = cfg_write_new(dir, "ops2", "host=a", "pub", section, NULL, "9187", dest_init_check,
                           &err);
        CHECK_INT_EQ(rc, WR_ECONFIG);
        CHECK_CONTAINS(err.msg, "--metrics: \"9187\" has no port");
        CHECK(access(dir, F_OK) != 0 || cfg_load(dir, &cfg, &err) != 0);
        free(section);
    }
}

int
main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/wr_test_config_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_valid_file);
    RUN(test_defaults);
    RUN(test_unknown_key);
    RUN(test_invalid_values);
    RUN(test_sections_and_syntax);
    RUN(test_duplicates);
    RUN(test_missing_required);
    RUN(test_bad_pipeline_name);
    RUN(test_long_line_and_nul);
    RUN(test_load_errors);
    RUN(test_load_resolves_dir);
    RUN(test_write_new_roundtrip);
    RUN(test_write_new_variants);
    RUN(test_write_new_refusals);
    RUN(test_slot_names);
    RUN(test_lifecycle_keys);
    RUN(test_state_section);
    RUN(test_operations_keys);
    rm_rf(tmpdir);
    return unit_done();
}
