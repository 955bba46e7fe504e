/*
 * events_cmd.c - `walrelay events DIR load | version | tail | append`: reads and appends
 * to the event store of a pipeline whose destination is eventstore (docs/eventstore.md).
 *
 * NOTES: runs in the user's shell; never talks to the supervisor: it opens the store that
 * DIR/walrelay.conf names (never creating it) with the engine of
 * destinations/eventstore/store.h, so it works whether the pipeline runs or not.
 * Output: one JSON object per line on stdout (written with common/json.c); errors on
 * stderr as "walrelay: MESSAGE" plus "hint: HINT". Exit codes: 0 done, 1 the store is
 * not there or failed, 2 usage or configuration (bad filter, bad JSON, unknown
 * directory, a destination that is not an event store), 3 an append conflict. `tail
 * --follow` polls the store (positions become visible in order, so polling after the
 * last position printed never skips or repeats an event) until SIGINT or SIGTERM, then
 * exits 0. Persists nothing except what `append` appends.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/json.h"
#include "../destinations/eventstore/eventstore.h"
#include "../destinations/registry.h"
#include "sup.h"

#define EV_EXIT_CONFLICT 3
#define EV_MAX_FILTERS   64
#define EV_POLL_MS       200

static volatile sig_atomic_t ev_stop;

static void
ev_on_signal(int sig)
{
    WR_UNUSED(sig);
    ev_stop = 1;
}

static void
ev_print_err(const char *msg, const char *hint)
{
    fprintf(stderr, "walrelay: %s\n", msg);
    if (hint && hint[0])
        fprintf(stderr, "hint: %s\n", hint);
}

static int
ev_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "walrelay events: ");
    fprintf(stderr, fmt, arg ? arg : "");
    fprintf(stderr, "\n");
    cli_print_usage("events", stderr);
    return WR_EXIT_CONFIG;
}

/* ---- filters ------------------------------------------------------------------------ */

typedef struct ev_filters_s {
    wr_es_filter_t f[EV_MAX_FILTERS];
    char *text[EV_MAX_FILTERS]; /* owned copies the filter's strings point into */
    size_t n;
} ev_filters_t;

/* Parses a whole number; false if s is not one. */
static bool
ev_int(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v;

    if (s == NULL || s[0] == '\0')
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

/* One --filter (store.h es_filter_parse); errors are printed, returns false. */
static bool
ev_parse_filter(const char *arg, ev_filters_t *fs)
{
    wr_es_error_t e;
    char *s;

    if (fs->n == EV_MAX_FILTERS) {
        ev_print_err("too many --filter options (at most 64)", NULL);
        return false;
    }
    if ((s = wr_strdup(arg)) == NULL) {
        ev_print_err("out of memory", NULL);
        return false;
    }
    if (es_filter_parse(s, &fs->f[fs->n], &e) != 0) {
        fprintf(stderr, "walrelay: invalid filter \"%s\": %s\n", arg, e.message);
        fprintf(stderr, "hint: --filter 'event_kind=K[,aggregate_kind=T][,aggregate_id=ID]"
                        "[,after=P]', e.g. --filter 'event_kind=insert,aggregate_kind=public."
                        "orders'\n");
        free(s);
        return false;
    }
    fs->text[fs->n++] = s;
    return true;
}

static void
ev_filters_free(ev_filters_t *fs)
{
    for (size_t i = 0; i < EV_MAX_FILTERS; i++)
        free(fs->text[i]);
}

/* ---- the store of DIR ------------------------------------------------------------------ */

/* Opens DIR's event store. Returns an exit code (0 = opened). */
static int
ev_open(const char *dir, wr_es_store_t **st)
{
    wr_config_t cfg;
    wr_err_t err;
    int code = 0, rc;

    *st = NULL;
    wr_err_clear(&err);
    cfg_defaults(&cfg);
    if (cfg_load(dir, &cfg, &err) != 0) {
        ev_print_err(err.msg, err.hint[0] ? err.hint
                                          : "DIR is a pipeline's directory (walrelay init DIR "
                                            "... --destination eventstore:...)");
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    if (dest_config_check(&cfg, &err) != 0) {
        ev_print_err(err.msg, err.hint);
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    if (strcmp(cfg.dest_type, "eventstore") != 0) {
        char msg[1200];

        snprintf(msg, sizeof(msg),
                 "the destination of \"%s\" is \"%s\", not an event store (type = eventstore)", dir,
                 cfg.dest_type);
        ev_print_err(msg, "walrelay events reads pipelines initialised with --destination "
                          "eventstore:sqlite:PATH or eventstore:postgres:CONNINFO");
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    rc = dest_es_store_open(&cfg, 0, st, &code, &err);
    cfg_free(&cfg);
    if (rc < 0) {
        ev_print_err(err.msg, err.hint);
        return rc == WR_ECONFIG ? WR_EXIT_CONFIG : WR_EXIT_ERROR;
    }
    return 0;
}

/* ---- output ------------------------------------------------------------------------ */

typedef struct ev_out_s {
    jw_buf_t b;
    int64_t last;
    uint64_t n;
    bool failed; /* stdout is gone */
} ev_out_t;

static int
ev_print_event(void *arg, const wr_es_event_t *ev)
{
    ev_out_t *o = arg;

    jw_reset(&o->b);
    jw_lit(&o->b, "{\"position\":");
    jw_i64(&o->b, ev->position);
    jw_lit(&o->b, ",\"aggregate_kind\":");
    jw_cstr(&o->b, ev->aggregate_kind);
    jw_lit(&o->b, ",\"aggregate_id\":");
    jw_cstr(&o->b, ev->aggregate_id);
    jw_lit(&o->b, ",\"event_kind\":");
    jw_cstr(&o->b, ev->event_kind);
    jw_lit(&o->b, ",\"stream_version\":");
    jw_i64(&o->b, ev->stream_version);
    jw_lit(&o->b, ",\"data\":");
    jw_raw(&o->b, ev->data, ev->data_len); /* JSON, written by the destination or checked */
    jw_lit(&o->b, ",\"metadata\":");
    jw_lit(&o->b, ev->metadata);
    jw_lit(&o->b, ",\"created_at\":");
    jw_cstr(&o->b, ev->created_at);
    jw_lit(&o->b, "}\n");
    if (jw_failed(&o->b))
        return WR_ES_ENOMEM;
    if (fwrite(o->b.data, 1, o->b.len, stdout) != o->b.len) {
        o->failed = true;
        return 1;
    }
    o->last = ev->position;
    o->n++;
    return 0;
}

static int
ev_store_fail(const wr_es_error_t *e)
{
    ev_print_err(e->message, e->hint);
    return e->code == WR_ES_EINVAL ? WR_EXIT_CONFIG : WR_EXIT_ERROR;
}

/* ---- load ------------------------------------------------------------------------- */

static int
ev_load(wr_es_store_t *st, const ev_filters_t *fs, int64_t limit)
{
    ev_out_t o;
    wr_es_error_t e;
    int rc;

    memset(&o, 0, sizeof(o));
    jw_init(&o.b);
    rc = wr_es_load_each(st, fs->f, fs->n, limit, ev_print_event, &o, &e);
    jw_free(&o.b);
    if (fflush(stdout) != 0 || o.failed) {
        fprintf(stderr, "walrelay: writing to stdout failed: %s\n", strerror(errno));
        return WR_EXIT_ERROR;
    }
    if (rc == WR_ES_ENOMEM && o.b.failed) {
        ev_print_err("out of memory", NULL);
        return WR_EXIT_ERROR;
    }
    return rc < 0 ? ev_store_fail(&e) : WR_EXIT_OK;
}

/* ---- tail ------------------------------------------------------------------------- */

static int
ev_tail(wr_es_store_t *st, ev_filters_t *fs, int64_t after, bool follow)
{
    struct sigaction sa;
    wr_es_filter_t cur[EV_MAX_FILTERS];
    ev_out_t o;
    wr_es_error_t e;
    int rc = 0;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ev_on_signal;
    sa.sa_flags = SA_RESTART; /* writes to stdout go on; the sleep is cut short */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    memset(&o, 0, sizeof(o));
    jw_init(&o.b);
    o.last = after;
    while (!ev_stop) {
        uint64_t before = o.n;

        /* each filter from max(its own after, the last position printed) */
        for (size_t i = 0; i < fs->n; i++) {
            cur[i] = fs->f[i];
            if (!cur[i].has_after || cur[i].after < o.last) {
                cur[i].has_after = true;
                cur[i].after = o.last;
            }
        }
        rc = wr_es_load_each(st, cur, fs->n, 0, ev_print_event, &o, &e);
        if (fflush(stdout) != 0 || o.failed) {
            rc = 0;
            break; /* the reader went away */
        }
        if (rc < 0) {
            jw_free(&o.b);
            return ev_store_fail(&e);
        }
        if (!follow)
            break;
        if (o.n == before) {
            struct timespec ts = {0, EV_POLL_MS * 1000000L};
            nanosleep(&ts, NULL); /* a signal ends it early; the loop checks ev_stop */
        }
    }
    jw_free(&o.b);
    return WR_EXIT_OK;
}

/* ---- version ---------------------------------------------------------------------- */

static int
ev_version(wr_es_store_t *st, const char *kind, const char *id)
{
    wr_es_version_t v;
    wr_es_error_t e;
    int64_t count = 0;

    if (wr_es_stream_version(st, kind, id, &v, &count, &e) < 0)
        return ev_store_fail(&e);
    if (v.set)
        printf("{\"position\":%" PRId64 ",\"version\":%" PRId64 "}\n", v.position, count);
    else
        printf("{\"position\":null}\n");
    return fflush(stdout) == 0 ? WR_EXIT_OK : WR_EXIT_ERROR;
}

/* ---- append ----------------------------------------------------------------------- */

/* JSON text without the whitespace between tokens (strings and numbers kept as written),
 * so it stays on one output line; malloc'd. */
static char *
ev_minify(const char *s)
{
    char *out = malloc(strlen(s) + 1);

    if (out != NULL)
        es_json_minify(s, out);
    return out;
}

/* Checks that text is JSON (an object if want_object); prints the error. */
static bool
ev_check_json(const char *opt, const char *text, bool want_object)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    bool ok;

    if (j == NULL) {
        fprintf(stderr, "walrelay: %s is not JSON: %s (line %d, column %d)\n", opt, je.text,
                je.line, je.column);
        fprintf(stderr, "hint: quote it for the shell, e.g. %s '{\"amount\": 10}'\n", opt);
        return false;
    }
    ok = !want_object || json_is_object(j);
    json_decref(j);
    if (!ok)
        fprintf(stderr, "walrelay: %s must be a JSON object ({...})\n", opt);
    return ok;
}

static void
ev_version_json(FILE *f, const wr_es_version_t *v)
{
    if (v->set)
        fprintf(f, "%" PRId64, v->position);
    else
        fprintf(f, "null");
}

static int
ev_append(wr_es_store_t *st, const char *kind, const char *id, const wr_es_expect_t *expect,
          const char *event, const char *data, const char *meta)
{
    wr_es_new_event_t ne;
    wr_es_append_result_t res;
    wr_es_error_t e;
    int rc;

    memset(&ne, 0, sizeof(ne));
    ne.event_kind = event;
    ne.data = data;
    ne.data_len = strlen(data);
    ne.metadata = meta;
    rc = wr_es_append(st, kind, id, *expect, &ne, 1, &res, &e);
    if (rc == WR_ES_CONFLICT) {
        printf("{\"conflict\":{\"expected\":");
        if (expect->kind == WR_ES_EXPECT_ANY)
            printf("\"any\"");
        else
            ev_version_json(stdout, &res.expected);
        printf(",\"actual\":");
        ev_version_json(stdout, &res.actual);
        printf("}}\n");
        fflush(stdout);
        fprintf(stderr, "walrelay: conflict: %s\n", e.message);
        if (res.conflict_reason == WR_ES_CONFLICT_VERSION)
            fprintf(stderr,
                    "hint: read the stream (walrelay events DIR version %s %s) and "
                    "retry with --expect at its position\n",
                    kind, id);
        else
            fprintf(stderr, "hint: streams of replicated tables are written only by their "
                            "pipeline; append to an aggregate kind of your own\n");
        return EV_EXIT_CONFLICT;
    }
    if (rc < 0)
        return ev_store_fail(&e);
    printf("{\"positions\":[%" PRId64 "],\"position\":%" PRId64 "}\n", res.last_position,
           res.last_position);
    return fflush(stdout) == 0 ? WR_EXIT_OK : WR_EXIT_ERROR;
}

/* ---- the command ------------------------------------------------------------------- */

/* Splits "--opt=value" / "--opt value"; returns the value or NULL (usage printed). */
static const char *
ev_optval(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);

    if (a[n] == '=')
        return a + n + 1;
    if (*i + 1 >= argc) {
        ev_usage("option \"%s\" needs a value", name);
        return NULL;
    }
    return argv[++*i];
}

static bool
ev_is_opt(const char *a, const char *name)
{
    size_t n = strlen(name);

    return strncmp(a, name, n) == 0 && (a[n] == '\0' || a[n] == '=');
}

int
cli_events(int argc, char **argv)
{
    const char *dir, *verb, *pos[2] = {NULL, NULL};
    const char *limit_s = NULL, *after_s = NULL, *expect_s = NULL, *event = NULL, *data = NULL,
               *meta = NULL;
    ev_filters_t fs;
    bool follow = false;
    size_t npos = 0;
    int64_t limit = 0, after = 0;
    wr_es_expect_t expect = {WR_ES_EXPECT_ANY, 0};
    wr_es_store_t *st = NULL;
    char *data_min = NULL, *meta_min = NULL;
    int code;

    memset(&fs, 0, sizeof(fs));
    if (argc < 2)
        return ev_usage("missing argument %sDIR", "");
    if (argc < 3)
        return ev_usage("missing the subcommand (load, version, tail or append)%s", "");
    dir = argv[1];
    verb = argv[2];
    if (strcmp(verb, "load") != 0 && strcmp(verb, "version") != 0 && strcmp(verb, "tail") != 0 &&
        strcmp(verb, "append") != 0)
        return ev_usage("unknown subcommand \"%s\" (load, version, tail or append)", verb);

    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v;

        if (ev_is_opt(a, "--filter") && strcmp(verb, "append") != 0 &&
            strcmp(verb, "version") != 0) {
            if ((v = ev_optval(argc, argv, &i, "--filter")) == NULL)
                goto usage;
            if (!ev_parse_filter(v, &fs)) {
                code = WR_EXIT_CONFIG;
                goto out;
            }
        } else if (ev_is_opt(a, "--limit") && strcmp(verb, "load") == 0) {
            if ((limit_s = ev_optval(argc, argv, &i, "--limit")) == NULL)
                goto usage;
        } else if (ev_is_opt(a, "--after") && strcmp(verb, "tail") == 0) {
            if ((after_s = ev_optval(argc, argv, &i, "--after")) == NULL)
                goto usage;
        } else if (strcmp(a, "--follow") == 0 && strcmp(verb, "tail") == 0) {
            follow = true;
        } else if (ev_is_opt(a, "--expect") && strcmp(verb, "append") == 0) {
            if ((expect_s = ev_optval(argc, argv, &i, "--expect")) == NULL)
                goto usage;
        } else if (ev_is_opt(a, "--event") && strcmp(verb, "append") == 0) {
            if ((event = ev_optval(argc, argv, &i, "--event")) == NULL)
                goto usage;
        } else if (ev_is_opt(a, "--data") && strcmp(verb, "append") == 0) {
            if ((data = ev_optval(argc, argv, &i, "--data")) == NULL)
                goto usage;
        } else if (ev_is_opt(a, "--metadata") && strcmp(verb, "append") == 0) {
            if ((meta = ev_optval(argc, argv, &i, "--metadata")) == NULL)
                goto usage;
        } else if (strncmp(a, "--", 2) == 0) {
            ev_usage("unknown option \"%s\" for this subcommand", a);
            code = WR_EXIT_CONFIG;
            goto out;
        } else {
            if (npos >= 2 || strcmp(verb, "load") == 0 || strcmp(verb, "tail") == 0) {
                ev_usage("unexpected argument \"%s\"", a);
                code = WR_EXIT_CONFIG;
                goto out;
            }
            pos[npos++] = a;
        }
    }
    if ((strcmp(verb, "version") == 0 || strcmp(verb, "append") == 0) && npos != 2) {
        ev_usage("%s needs AGGREGATE_KIND and AGGREGATE_ID", verb);
        code = WR_EXIT_CONFIG;
        goto out;
    }
    if (limit_s != NULL && (!ev_int(limit_s, &limit) || limit < 1)) {
        ev_usage("--limit %s is not a positive number", limit_s);
        code = WR_EXIT_CONFIG;
        goto out;
    }
    if (after_s != NULL && (!ev_int(after_s, &after) || after < 0)) {
        ev_usage("--after %s is not a position (a number >= 0)", after_s);
        code = WR_EXIT_CONFIG;
        goto out;
    }
    if (strcmp(verb, "tail") == 0 && fs.n == 0) {
        ev_usage("tail needs at least one --filter%s", "");
        code = WR_EXIT_CONFIG;
        goto out;
    }
    if (strcmp(verb, "append") == 0) {
        if (expect_s == NULL || event == NULL || data == NULL) {
            ev_usage("append needs --expect, --event and --data%s", "");
            code = WR_EXIT_CONFIG;
            goto out;
        }
        if (strcmp(expect_s, "none") == 0)
            expect.kind = WR_ES_EXPECT_NONE;
        else if (strcmp(expect_s, "any") == 0)
            expect.kind = WR_ES_EXPECT_ANY;
        else if (ev_int(expect_s, &expect.position) && expect.position >= 1)
            expect.kind = WR_ES_EXPECT_AT;
        else {
            ev_usage("--expect %s: expected none, any or a position (>= 1)", expect_s);
            code = WR_EXIT_CONFIG;
            goto out;
        }
        if (event[0] == '\0') {
            ev_usage("--event needs an event kind%s", "");
            code = WR_EXIT_CONFIG;
            goto out;
        }
        if (!ev_check_json("--data", data, false) ||
            (meta != NULL && !ev_check_json("--metadata", meta, true))) {
            code = WR_EXIT_CONFIG;
            goto out;
        }
        data_min = ev_minify(data);
        meta_min = meta ? ev_minify(meta) : NULL;
        if (data_min == NULL || (meta != NULL && meta_min == NULL)) {
            ev_print_err("out of memory", NULL);
            code = WR_EXIT_ERROR;
            goto out;
        }
    }

    if ((code = ev_open(dir, &st)) != 0)
        goto out;
    if (strcmp(verb, "load") == 0)
        code = ev_load(st, &fs, limit);
    else if (strcmp(verb, "tail") == 0)
        code = ev_tail(st, &fs, after, follow);
    else if (strcmp(verb, "version") == 0)
        code = ev_version(st, pos[0], pos[1]);
    else
        code = ev_append(st, pos[0], pos[1], &expect, event, data_min, meta_min);
    goto out;
usage:
    code = WR_EXIT_CONFIG;
out:
    wr_es_close(st);
    ev_filters_free(&fs);
    free(data_min);
    free(meta_min);
    return code;
}
