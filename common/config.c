/*
 * config.c - loads and writes DIR/walrelay.conf, an INI file parsed with Debian's libinih.
 *
 * NOTES: run by every process (the supervisor and the CLI, walrelay-apply, walrelay-sync);
 * persists nothing except the file cfg_write_new creates for "walrelay init". All keys are
 * described once, in cfg_keys[], which drives parsing, the hints that list valid keys and
 * the commented file that cfg_write_new writes (docs/configuration.md mirrors it). The
 * exception is [destination]: its keys belong to the destination type, so config.c keeps
 * `type` and every other key as a (key, value, line) item, refuses only duplicates, and
 * leaves validation, defaults and the section init writes to the destination registry
 * (destinations/registry.h), which it does not link against. [state] is half of each:
 * `backend` is an ordinary key; every other key is kept as an item too, because a plugin
 * store (backend = plugin) owns its keys, and once the file is read cfg_state_finish
 * interprets the items of the sqlite and postgres backends itself (conninfo, schema) and
 * leaves a plugin's to the store (common/state_abi.c validates them).
 *
 * How libinih (Debian bookworm, libinih 55) reads a line, and what we do about it:
 * - a line is at most INI_MAX_LINE (200) bytes including "\n" and NUL; a longer one is
 *   split and the rest parsed as a line of its own. Our line reader refuses such a line
 *   with an error instead, so a long conninfo is never cut (and never echoed);
 * - ";" and "#" start a comment at the start of a line; ";" after whitespace starts an
 *   inline comment (INI_ALLOW_INLINE_COMMENTS=1, INI_INLINE_COMMENT_PREFIXES=";"); "#"
 *   inside a value is kept. Leading and trailing whitespace of a value is dropped, quotes
 *   are not removed. cfg_write_new refuses values with ";" or "#" (and trims the
 *   conninfo) so that what it writes reads back unchanged;
 * - an indented line after a key would continue that key's value (INI_ALLOW_MULTILINE=1):
 *   our reader drops leading whitespace, so indented keys are ordinary keys and values
 *   never span lines;
 * - the handler gets no line number (INI_HANDLER_LINENO=0): we parse with
 *   ini_parse_stream and our own reader, which counts lines, so every error names its line.
 * Never put the conninfo value into a message: it may hold a password.
 */
#include "config.h"
#include "log.h"

#include <ini.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CFG_FILE_NAME     "walrelay.conf"
#define CFG_ACTIVE_NAME   "walrelay.conf.active"
#define CFG_MAX_FILE_SIZE (1024 * 1024)
/* Longest line (without its "\n") that libinih reads whole: INI_MAX_LINE counts "\n" and NUL. */
#define CFG_MAX_LINE (INI_MAX_LINE - 2)

typedef enum {
    CFG_K_NAME,     /* pipeline name */
    CFG_K_CONNINFO, /* secret: never echoed */
    CFG_K_PUBNAME,  /* publication name */
    CFG_K_INT,      /* int field */
    CFG_K_INT64,    /* int64_t field */
    CFG_K_LEVEL,    /* log level */
    CFG_K_SLOTLOST, /* stop | recopy */
    CFG_K_BACKEND,  /* [state] backend: sqlite | postgres | plugin */
    CFG_K_ITEM,     /* [state] keys other than backend: kept as items (cfg_state_finish) */
    CFG_K_LISTEN,   /* [metrics] listen: HOST:PORT, empty = off */
    CFG_K_LOGFMT,   /* [log] format: text | json */
} cfg_kind_t;

typedef struct cfg_key_s {
    const char *section;
    const char *key;
    cfg_kind_t kind;
    size_t off; /* offset of the field in wr_config_t */
    int64_t min, max;
    const char *defval;  /* value cfg_write_new writes; NULL: required, no default */
    const char *example; /* for the hint of a missing required key */
    const char *help;    /* comment cfg_write_new writes above the key */
} cfg_key_t;

static const char *const cfg_sections[] = {"pipeline", "source", "destination", "state", "batch",
                                           "sync",     "retry",  "metrics",     "log"};
#define CFG_NSECTIONS (sizeof(cfg_sections) / sizeof(cfg_sections[0]))

#define F(field) offsetof(wr_config_t, field)

static const cfg_key_t cfg_keys[] = {
    {"pipeline", "name", CFG_K_NAME, F(pipeline_name), 1, WR_PIPELINE_NAME_MAX, NULL, "name = NAME",
     "Name of this pipeline: 1 to 40 characters from a-z, 0-9 and _. The replication\n"
     "slots are walrelay_<name> (apply) and walrelay_<name>_s<relid> (table copy)."},
    {"pipeline", "publication_refresh_ms", CFG_K_INT, F(publication_refresh_ms), 0, 86400000,
     "30000", NULL,
     "How often (milliseconds) the publication's table list is read again while running:\n"
     "a new table is copied, a table no longer published has its state and sync slot\n"
     "removed (its destination data stays). 0 = only at start and on walrelay reload."},
    {"pipeline", "on_slot_lost", CFG_K_SLOTLOST, F(on_slot_lost), 0, 0, "stop", NULL,
     "When the source removed WAL the pipeline had not consumed yet (its replication\n"
     "slot's wal_status is lost): stop = stop the pipeline with an error; recopy = drop the\n"
     "slot and copy every table again, once (a second loss stops)."},
    {"source", "conninfo", CFG_K_CONNINFO, F(source_conninfo), 0, 0, NULL,
     "conninfo = host=HOST dbname=DB user=USER",
     "libpq connection string of the source database (key=value pairs or a URI). Keep\n"
     "passwords in ~/.pgpass or PGPASSFILE, or use service=NAME with a service file. The\n"
     "user needs the REPLICATION attribute. A ';' after a space starts a comment."},
    {"source", "publication", CFG_K_PUBNAME, F(publication), 0, 0, NULL, "publication = NAME",
     "Publication whose tables are replicated (CREATE PUBLICATION ... FOR TABLE ...)."},
    {"source", "streaming", CFG_K_INT, F(streaming), 0, 1, "1", NULL,
     "1 = large transactions are streamed while they run (pgoutput protocol version 2,\n"
     "streaming on): the server stops spilling them to disk and walrelay writes them into\n"
     "the open destination transaction as they arrive (sqlite), or spools them on disk in\n"
     "DIR/spool until their commit (other destinations). 0 = protocol version 1: a\n"
     "transaction is sent only once it committed."},
    {"state", "backend", CFG_K_BACKEND, F(state_backend), 0, 0, "sqlite", NULL,
     "Where the replication state lives: sqlite = DIR/state.db; postgres = a schema of a\n"
     "PostgreSQL database (conninfo below), for hosts whose disk does not survive a restart\n"
     "(containers). Several pipelines may share one; each holds a lease on its own rows.\n"
     "plugin = a store of your own (library below, docs/custom-store.md)."},
    {"state", "conninfo", CFG_K_ITEM, F(state_conninfo), 0, 0, "",
     "conninfo = host=HOST dbname=DB user=USER",
     "backend = postgres: libpq connection string of the state database (the source or\n"
     "another). Keep passwords in ~/.pgpass or PGPASSFILE, as for [source] conninfo."},
    {"state", "schema", CFG_K_ITEM, F(state_schema), 1, 63, CFG_STATE_DEFAULT_SCHEMA, NULL,
     "backend = postgres: schema walrelay creates for its tables (rows keyed by pipeline)."},
    {"state", "library", CFG_K_ITEM, F(state_library), 0, 0, "", "library = /path/to/libstore.so",
     "backend = plugin: the shared object of a state store built against walrelay/store.h,\n"
     "absolute or relative to this directory. Every other key of [state] is handed to it."},
    {"batch", "max_fill_ms", CFG_K_INT, F(batch_max_fill_ms), 1, 60000, "200", NULL,
     "Longest time (milliseconds) a change waits in a destination batch before the\n"
     "batch is committed."},
    {"batch", "max_bytes", CFG_K_INT64, F(batch_max_bytes), 1024, 1073741824, "8388608", NULL,
     "Size (bytes) at which a destination batch is committed early."},
    {"sync", "max_table_sync_workers", CFG_K_INT, F(max_table_sync_workers), 1, 64, "4", NULL,
     "Most tables copied at the same time (one walrelay-sync process and one replication\n"
     "slot each)."},
    {"sync", "copy_batch_rows", CFG_K_INT, F(copy_batch_rows), 1, 1000000, "10000", NULL,
     "Rows of the initial copy written per destination transaction."},
    {"sync", "max_copy_connections_per_table", CFG_K_INT, F(max_copy_connections_per_table), 1, 16,
     "1", NULL,
     "Source connections that copy one table at the same time, each a range of its pages\n"
     "under the same snapshot (destinations that copy by range: sqlite). More than one\n"
     "helps when reading the source is slower than writing the destination (a remote\n"
     "source); with sqlite's one writer on a small machine, 1 is fastest."},
    {"retry", "worker_max_failures", CFG_K_INT, F(worker_max_failures), 1, 1000, "5", NULL,
     "Failures in a row after which a worker is not restarted: the table goes to\n"
     "errored (sync) or the pipeline is degraded (apply) until walrelay retry."},
    {"retry", "backoff_initial_ms", CFG_K_INT, F(backoff_initial_ms), 100, 3600000, "1000", NULL,
     "Delay (milliseconds) before the first restart of a failed worker; doubles per failure."},
    {"retry", "backoff_max_ms", CFG_K_INT, F(backoff_max_ms), 100, 3600000, "60000", NULL,
     "Longest delay (milliseconds) between restarts; at least backoff_initial_ms."},
    {"retry", "healthy_reset_ms", CFG_K_INT, F(healthy_reset_ms), 1000, 86400000, "300000", NULL,
     "A worker running this long (milliseconds) has its failure count and backoff reset."},
    {"retry", "table_error_retry_delay_ms", CFG_K_INT, F(table_error_retry_delay_ms), 100, 86400000,
     "10000", NULL,
     "A table errored by a transient problem (connection lost, server shutting down or\n"
     "in recovery, too many connections) is retried after this delay (milliseconds)."},
    {"retry", "table_error_retry_max_attempts", CFG_K_INT, F(table_error_retry_max_attempts), 0,
     1000, "5", NULL,
     "Automatic retries of a transiently errored table before it waits for walrelay\n"
     "retry; 0 = never retry automatically. Other errors always wait for an operator."},
    {"metrics", "listen", CFG_K_LISTEN, F(metrics_listen), 0, 0, "", "listen = 127.0.0.1:9187",
     "HOST:PORT of the HTTP listener for Prometheus (/metrics) and the health checks\n"
     "(/healthz, /readyz); [::1]:9187 for IPv6, 0.0.0.0:9187 for every address. Off when\n"
     "unset. walrelay metrics DIR prints the same metrics without it."},
    {"metrics", "lag_interval_ms", CFG_K_INT, F(metrics_lag_interval_ms), 1000, 3600000, "5000",
     NULL,
     "How often (milliseconds) the supervisor reads the source's WAL position and the\n"
     "pipeline's slots for walrelay_lag_bytes and walrelay_slot_retained_bytes (a query on\n"
     "its own connection, off the supervisor's event loop; at most once a second)."},
    {"log", "level", CFG_K_LEVEL, F(log_level), 0, 0, "info", NULL,
     "Least severe messages logged: debug, info, warn or error."},
    {"log", "format", CFG_K_LOGFMT, F(log_format), 0, 0, "text", NULL,
     "text = one line per event: \"TS LEVEL message key=value ... pipeline=P worker=W\";\n"
     "json = one JSON object per line with ts, level, msg, pipeline, worker and every\n"
     "key=value field. Passwords are redacted in both."},
};
#define CFG_NKEYS (sizeof(cfg_keys) / sizeof(cfg_keys[0]))

#undef F

/* Parsing context: our line reader and the inih handler share it. */
typedef struct cfg_parse_s {
    const char *text;
    size_t len;
    size_t pos;
    int lineno;                      /* line last handed to inih */
    int section_line[CFG_NSECTIONS]; /* first header line of each section, 0 = absent */
    int key_line[CFG_NKEYS];         /* line that set each key, 0 = not set */
    wr_config_t *cfg;
    int err_line; /* line of the first error found by the reader or the handler */
    int err_code;
    char err_msg[768];
    char err_hint[512];
} cfg_parse_t;

void
cfg_defaults(wr_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->batch_max_fill_ms = 200;
    cfg->streaming = 1;
    cfg->batch_max_bytes = 8388608;
    cfg->max_table_sync_workers = 4;
    cfg->copy_batch_rows = 10000;
    cfg->max_copy_connections_per_table = 1;
    cfg->worker_max_failures = 5;
    cfg->backoff_initial_ms = 1000;
    cfg->backoff_max_ms = 60000;
    cfg->healthy_reset_ms = 300000;
    cfg->log_level = LOG_LVL_INFO;
    cfg->publication_refresh_ms = 30000;
    cfg->on_slot_lost = CFG_SLOT_LOST_STOP;
    cfg->table_error_retry_delay_ms = 10000;
    cfg->table_error_retry_max_attempts = 5;
    cfg->metrics_lag_interval_ms = 5000;
    cfg->log_format = LOG_FMT_TEXT;
}

void
cfg_free(wr_config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->dir);
    free(cfg->path);
    free(cfg->pipeline_name);
    free(cfg->source_conninfo);
    free(cfg->state_conninfo);
    free(cfg->state_schema);
    free(cfg->state_library);
    for (size_t i = 0; i < cfg->state_nitems; i++) {
        free(cfg->state_items[i].key);
        free(cfg->state_items[i].value);
    }
    free(cfg->state_items);
    free(cfg->metrics_listen);
    free(cfg->publication);
    free(cfg->dest_type);
    for (size_t i = 0; i < cfg->dest_nitems; i++) {
        free(cfg->dest_items[i].key);
        free(cfg->dest_items[i].value);
    }
    free(cfg->dest_items);
    cfg_defaults(cfg);
}

int
cfg_listen_parse(const char *s, char *host, size_t hostlen, uint16_t *port, wr_err_t *err)
{
    const char *h, *colon, *p;
    size_t hl;
    unsigned long v = 0;

    if (!s || !*s)
        return wr_err_set(err, WR_ECONFIG, "an empty address");
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            wr_err_set(err, WR_ECONFIG, "\"%s\" is not [IPV6]:PORT", s);
            wr_err_hint(err, "write an IPv6 address in brackets: [::1]:9187");
            return WR_ECONFIG;
        }
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            wr_err_set(err, WR_ECONFIG, "\"%s\" has no port", s);
            wr_err_hint(err, "write HOST:PORT, e.g. 127.0.0.1:9187");
            return WR_ECONFIG;
        }
        h = s;
        hl = (size_t)(colon - s);
        if (memchr(h, ':', hl)) {
            wr_err_set(err, WR_ECONFIG, "\"%s\": an IPv6 address needs brackets", s);
            wr_err_hint(err, "write [::1]:9187");
            return WR_ECONFIG;
        }
    }
    if (hl == 0) {
        wr_err_set(err, WR_ECONFIG, "\"%s\" has no host", s);
        wr_err_hint(err, "write 0.0.0.0:PORT for every IPv4 address, 127.0.0.1:PORT for this "
                         "host only");
        return WR_ECONFIG;
    }
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
            return wr_err_set(err, WR_ECONFIG, "\"%s\": the host has an invalid character", s);
    }
    p = colon + 1;
    if (!*p)
        return wr_err_set(err, WR_ECONFIG, "\"%s\" has no port", s);
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > 65535)
            break;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (*p || v > 65535)
        return wr_err_set(err, WR_ECONFIG, "\"%s\": the port must be a number from 0 to 65535", s);
    if (hl + 1 > hostlen)
        return wr_err_set(err, WR_ECONFIG, "\"%s\": the host is too long", s);
    if (host) {
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (port)
        *port = (uint16_t)v;
    return 0;
}

bool
cfg_pipeline_name_ok(const char *name)
{
    size_t n;
    if (!name)
        return false;
    for (n = 0; name[n]; n++) {
        char c = name[n];
        if (n >= WR_PIPELINE_NAME_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return n >= 1;
}

bool
cfg_pipeline_name_clashes(const char *name)
{
    size_t n = name ? strlen(name) : 0, d = 0;

    while (d < n && name[n - 1 - d] >= '0' && name[n - 1 - d] <= '9')
        d++;
    return d > 0 && n >= d + 3 && name[n - d - 1] == 's' && name[n - d - 2] == '_';
}

void
cfg_pipeline_name_clash_err(const char *name, wr_err_t *err)
{
    size_t n = strlen(name), d = 0;

    while (d < n && name[n - 1 - d] >= '0' && name[n - 1 - d] <= '9')
        d++;
    wr_err_set(err, WR_ECONFIG,
               "pipeline name \"%s\" ends in \"_s\" and digits, the form of the sync slot names "
               "of pipeline \"%.*s\" (walrelay_<pipeline>_s<relid>): that pipeline would take "
               "this one's replication slot for one of its own and drop it",
               name, (int)(n - d - 2), name);
    wr_err_hint(err,
                "choose another name ([pipeline] name, or walrelay init --name NAME), e.g. "
                "\"%.*s_p\"",
                (int)(n > 60 ? 60 : n), name);
}

void
cfg_apply_slot_name(const wr_config_t *cfg, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    snprintf(buf, len, "walrelay_%s", cfg->pipeline_name ? cfg->pipeline_name : "");
}

void
cfg_sync_slot_name(const wr_config_t *cfg, uint32_t relid, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    snprintf(buf, len, "walrelay_%s_s%u", cfg->pipeline_name ? cfg->pipeline_name : "",
             (unsigned)relid);
}

/* --- [destination] items --------------------------------------------------------------- */

const wr_cfg_item_t *
cfg_dest_item(const wr_config_t *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->dest_nitems; i++)
        if (strcmp(cfg->dest_items[i].key, key) == 0)
            return &cfg->dest_items[i];
    return NULL;
}

int
cfg_dest_copy(wr_config_t *dst, const wr_config_t *src)
{
    wr_cfg_item_t *items = NULL;
    char *type = NULL;

    if (src->dest_type && !(type = wr_strdup(src->dest_type)))
        return WR_ENOMEM;
    if (src->dest_nitems > 0) {
        items = calloc(src->dest_nitems, sizeof(*items));
        if (!items) {
            free(type);
            return WR_ENOMEM;
        }
        for (size_t i = 0; i < src->dest_nitems; i++) {
            items[i].key = wr_strdup(src->dest_items[i].key);
            items[i].value = wr_strdup(src->dest_items[i].value);
            items[i].line = src->dest_items[i].line;
            if (!items[i].key || !items[i].value) {
                for (size_t j = 0; j <= i; j++) {
                    free(items[j].key);
                    free(items[j].value);
                }
                free(items);
                free(type);
                return WR_ENOMEM;
            }
        }
    }
    free(dst->dest_type);
    for (size_t i = 0; i < dst->dest_nitems; i++) {
        free(dst->dest_items[i].key);
        free(dst->dest_items[i].value);
    }
    free(dst->dest_items);
    dst->dest_type = type;
    dst->dest_type_line = src->dest_type_line;
    dst->dest_line = src->dest_line;
    dst->dest_items = items;
    dst->dest_nitems = src->dest_nitems;
    return 0;
}

bool
cfg_dest_equal(const wr_config_t *a, const wr_config_t *b)
{
    if ((a->dest_type == NULL) != (b->dest_type == NULL) ||
        (a->dest_type && strcmp(a->dest_type, b->dest_type) != 0) ||
        a->dest_nitems != b->dest_nitems)
        return false;
    for (size_t i = 0; i < a->dest_nitems; i++) {
        const wr_cfg_item_t *o = cfg_dest_item(b, a->dest_items[i].key);
        if (!o || strcmp(o->value, a->dest_items[i].value) != 0)
            return false;
    }
    return true;
}

void
cfg_dest_swap(wr_config_t *a, wr_config_t *b)
{
    wr_config_t t;

    t.dest_type = a->dest_type;
    t.dest_type_line = a->dest_type_line;
    t.dest_line = a->dest_line;
    t.dest_nitems = a->dest_nitems;
    t.dest_items = a->dest_items;
    a->dest_type = b->dest_type;
    a->dest_type_line = b->dest_type_line;
    a->dest_line = b->dest_line;
    a->dest_nitems = b->dest_nitems;
    a->dest_items = b->dest_items;
    b->dest_type = t.dest_type;
    b->dest_type_line = t.dest_type_line;
    b->dest_line = t.dest_line;
    b->dest_nitems = t.dest_nitems;
    b->dest_items = t.dest_items;
}

/* --- [state] items --------------------------------------------------------------------- */

const wr_cfg_item_t *
cfg_state_item(const wr_config_t *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->state_nitems; i++)
        if (strcmp(cfg->state_items[i].key, key) == 0)
            return &cfg->state_items[i];
    return NULL;
}

/* Does every item of a other than conninfo and schema appear in b with its value? */
static bool
cfg_state_items_in(const wr_config_t *a, const wr_config_t *b)
{
    for (size_t i = 0; i < a->state_nitems; i++) {
        const wr_cfg_item_t *it = &a->state_items[i], *o;

        if (strcmp(it->key, "conninfo") == 0 || strcmp(it->key, "schema") == 0)
            continue;
        o = cfg_state_item(b, it->key);
        if (!o || strcmp(o->value, it->value) != 0)
            return false;
    }
    return true;
}

bool
cfg_state_items_equal(const wr_config_t *a, const wr_config_t *b)
{
    return cfg_state_items_in(a, b) && cfg_state_items_in(b, a);
}

void
cfg_state_items_swap(wr_config_t *a, wr_config_t *b)
{
    wr_cfg_item_t *items = a->state_items;
    size_t n = a->state_nitems;
    char *lib = a->state_library;

    a->state_items = b->state_items;
    a->state_nitems = b->state_nitems;
    a->state_library = b->state_library;
    b->state_items = items;
    b->state_nitems = n;
    b->state_library = lib;
}

/* --- parsing --------------------------------------------------------------------------- */

static void cfg_fail(cfg_parse_t *pc, int code, const char *fmt, ...) WR_PRINTF(3, 4);

/* Records the first error (at the current line); later ones are dropped. */
static void
cfg_fail(cfg_parse_t *pc, int code, const char *fmt, ...)
{
    va_list ap;
    if (pc->err_line)
        return;
    pc->err_line = pc->lineno > 0 ? pc->lineno : 1;
    pc->err_code = code;
    pc->err_hint[0] = '\0';
    va_start(ap, fmt);
    vsnprintf(pc->err_msg, sizeof(pc->err_msg), fmt, ap);
    va_end(ap);
}

static void cfg_fail_hint(cfg_parse_t *pc, int line, const char *fmt, ...) WR_PRINTF(3, 4);

/* Sets the hint of the error just recorded at `line` (no-op if an earlier error won). */
static void
cfg_fail_hint(cfg_parse_t *pc, int line, const char *fmt, ...)
{
    va_list ap;
    if (pc->err_line != line)
        return;
    va_start(ap, fmt);
    vsnprintf(pc->err_hint, sizeof(pc->err_hint), fmt, ap);
    va_end(ap);
}

static int
cfg_section_index(const char *name, size_t len)
{
    for (size_t i = 0; i < CFG_NSECTIONS; i++)
        if (strlen(cfg_sections[i]) == len && memcmp(cfg_sections[i], name, len) == 0)
            return (int)i;
    return -1;
}

static void
cfg_section_list(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < CFG_NSECTIONS && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s[%s]", i ? ", " : "", cfg_sections[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static void
cfg_key_list(const char *section, char *buf, size_t len)
{
    size_t used = 0;
    bool first = true;
    buf[0] = '\0';
    for (size_t i = 0; i < CFG_NKEYS && used < len; i++) {
        if (strcmp(cfg_keys[i].section, section) != 0)
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", first ? "" : ", ", cfg_keys[i].key);
        if (n < 0)
            break;
        used += (size_t)n;
        first = false;
    }
}

static bool
cfg_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Checks a "[section]" line (already stripped of leading whitespace). A header without
 * "]" is left to inih, which reports the line as malformed. */
static void
cfg_check_header(cfg_parse_t *pc, const char *s, size_t n)
{
    const char *close = memchr(s, ']', n);
    size_t rest;
    int idx;
    char list[256];

    if (!close)
        return;
    rest = n - (size_t)(close + 1 - s);
    for (const char *r = close + 1; rest > 0; r++, rest--) {
        if (*r == ';' || *r == '#')
            break;
        if (!cfg_is_space(*r)) {
            cfg_fail(pc, WR_ECONFIG, "unexpected text after section header [%.*s]",
                     (int)(close - s - 1), s + 1);
            cfg_fail_hint(pc, pc->lineno, "put each key on its own line below the header");
            return;
        }
    }
    idx = cfg_section_index(s + 1, (size_t)(close - s - 1));
    if (idx < 0) {
        cfg_fail(pc, WR_ECONFIG, "unknown section [%.*s]", (int)(close - s - 1), s + 1);
        cfg_section_list(list, sizeof(list));
        cfg_fail_hint(pc, pc->lineno, "valid sections: %s", list);
        return;
    }
    if (pc->section_line[idx] == 0)
        pc->section_line[idx] = pc->lineno;
}

/*
 * The ini_reader: hands inih one line at a time (fgets-style: str holds num bytes).
 * Counts lines, drops leading whitespace (no continuation lines), a UTF-8 BOM and "\r";
 * refuses lines inih would split, NUL bytes, and bad section headers. A refused line is
 * handed over as an empty line.
 */
static char *
cfg_reader(char *str, int num, void *stream)
{
    cfg_parse_t *pc = stream;
    const char *line, *nl;
    size_t n;

    if (pc->pos >= pc->len || num < 2)
        return NULL;
    line = pc->text + pc->pos;
    nl = memchr(line, '\n', pc->len - pc->pos);
    n = nl ? (size_t)(nl - line) : pc->len - pc->pos;
    pc->pos += n + (nl ? 1 : 0);
    pc->lineno++;

    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (pc->lineno == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
        line += 3;
        n -= 3;
    }
    str[0] = '\n';
    str[1] = '\0';
    if (memchr(line, '\0', n)) {
        cfg_fail(pc, WR_ECONFIG, "line contains a NUL byte");
        return str;
    }
    if (n > (size_t)num - 2) {
        cfg_fail(pc, WR_ECONFIG, "line is too long (%zu bytes, at most %d)", n, num - 2);
        cfg_fail_hint(pc, pc->lineno,
                      "shorten it; a long conninfo can move into a service file "
                      "(PGSERVICEFILE, then conninfo = service=NAME)");
        return str;
    }
    while (n > 0 && cfg_is_space(*line)) {
        line++;
        n--;
    }
    if (n > 0 && *line == '[')
        cfg_check_header(pc, line, n);
    memcpy(str, line, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

/* Strict decimal integer in [min, max]. */
static bool
cfg_parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    bool neg = false;
    uint64_t v = 0;
    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > (uint64_t)INT64_MAX)
            return false;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return *out >= min && *out <= max;
}

static bool
cfg_set_string(cfg_parse_t *pc, const cfg_key_t *k, const char *value)
{
    char **field = (char **)((char *)pc->cfg + k->off);
    char *copy = wr_strdup(value);
    if (!copy) {
        cfg_fail(pc, WR_ENOMEM, "out of memory");
        return false;
    }
    free(*field);
    *field = copy;
    return true;
}

static bool
cfg_set_value(cfg_parse_t *pc, const cfg_key_t *k, const char *value)
{
    int64_t v;
    int line = pc->lineno;

    switch (k->kind) {
    case CFG_K_NAME:
        if (!cfg_pipeline_name_ok(value)) {
            cfg_fail(pc, WR_ECONFIG,
                     "invalid value \"%s\" for [%s] %s: expected 1 to %d characters from a-z, "
                     "0-9 and _",
                     value, k->section, k->key, WR_PIPELINE_NAME_MAX);
            cfg_fail_hint(pc, line, "the name becomes part of the replication slot names");
            return false;
        }
        if (cfg_pipeline_name_clashes(value)) {
            wr_err_t cerr;

            cfg_pipeline_name_clash_err(value, &cerr);
            cfg_fail(pc, WR_ECONFIG, "%s", cerr.msg);
            cfg_fail_hint(pc, line, "%s", cerr.hint);
            return false;
        }
        return cfg_set_string(pc, k, value);
    case CFG_K_CONNINFO:
        /* never echo this value */
        if (!*value) {
            cfg_fail(pc, WR_ECONFIG, "empty value for [%s] %s", k->section, k->key);
            cfg_fail_hint(pc, line, "set %s", k->example);
            return false;
        }
        return cfg_set_string(pc, k, value);
    case CFG_K_PUBNAME:
        if (!*value || strlen(value) > 63) {
            cfg_fail(pc, WR_ECONFIG,
                     "invalid value \"%s\" for [%s] %s: expected a publication name of 1 to 63 "
                     "bytes",
                     value, k->section, k->key);
            return false;
        }
        return cfg_set_string(pc, k, value);
    case CFG_K_INT:
    case CFG_K_INT64:
        if (!cfg_parse_int(value, k->min, k->max, &v)) {
            cfg_fail(pc, WR_ECONFIG,
                     "invalid value \"%s\" for [%s] %s: expected an integer from %lld to %lld",
                     value, k->section, k->key, (long long)k->min, (long long)k->max);
            return false;
        }
        if (k->kind == CFG_K_INT)
            *(int *)((char *)pc->cfg + k->off) = (int)v;
        else
            *(int64_t *)((char *)pc->cfg + k->off) = v;
        return true;
    case CFG_K_LEVEL: {
        int lvl = log_level_parse(value);
        if (lvl < 0) {
            cfg_fail(pc, WR_ECONFIG,
                     "invalid value \"%s\" for [%s] %s: expected \"debug\", \"info\", \"warn\" "
                     "or \"error\"",
                     value, k->section, k->key);
            return false;
        }
        *(int *)((char *)pc->cfg + k->off) = lvl;
        return true;
    }
    case CFG_K_BACKEND:
        v = strcmp(value, "sqlite") == 0     ? CFG_STATE_SQLITE
            : strcmp(value, "postgres") == 0 ? CFG_STATE_POSTGRES
            : strcmp(value, "plugin") == 0   ? CFG_STATE_PLUGIN
                                             : -1;
        if (v >= 0) {
            *(int *)((char *)pc->cfg + k->off) = (int)v;
            return true;
        }
        cfg_fail(pc, WR_ECONFIG,
                 "invalid value \"%s\" for [%s] %s: expected \"sqlite\", \"postgres\" or "
                 "\"plugin\"",
                 value, k->section, k->key);
        return false;
    case CFG_K_ITEM:
        break; /* kept as items: cfg_state_line */
    case CFG_K_LISTEN: {
        char host[256];
        uint16_t port;
        wr_err_t lerr;

        if (!*value)
            return true; /* off */
        if (cfg_listen_parse(value, host, sizeof(host), &port, &lerr) != 0) {
            cfg_fail(pc, WR_ECONFIG, "invalid value for [%s] %s: %s", k->section, k->key, lerr.msg);
            cfg_fail_hint(pc, line, "%s",
                          lerr.hint[0] ? lerr.hint : "write HOST:PORT, e.g. 127.0.0.1:9187");
            return false;
        }
        return cfg_set_string(pc, k, value);
    }
    case CFG_K_LOGFMT: {
        int f = log_format_parse(value);
        if (f < 0) {
            cfg_fail(pc, WR_ECONFIG,
                     "invalid value \"%s\" for [%s] %s: expected \"text\" or \"json\"", value,
                     k->section, k->key);
            return false;
        }
        *(int *)((char *)pc->cfg + k->off) = f;
        return true;
    }
    case CFG_K_SLOTLOST:
        if (strcmp(value, "stop") == 0) {
            *(int *)((char *)pc->cfg + k->off) = CFG_SLOT_LOST_STOP;
            return true;
        }
        if (strcmp(value, "recopy") == 0) {
            *(int *)((char *)pc->cfg + k->off) = CFG_SLOT_LOST_RECOPY;
            return true;
        }
        cfg_fail(pc, WR_ECONFIG,
                 "invalid value \"%s\" for [%s] %s: expected \"stop\" or \"recopy\"", value,
                 k->section, k->key);
        return false;
    }
    return false;
}

/* Appends (name, value, line) to a section's items; a name already there is an error. */
static int
cfg_add_item(cfg_parse_t *pc, const char *section, wr_cfg_item_t **items, size_t *n,
             const char *name, const char *value)
{
    int line = pc->lineno;
    wr_cfg_item_t *grown;

    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*items)[i].key, name) == 0) {
            cfg_fail(pc, WR_ECONFIG, "duplicate key \"%s\" in section [%s] (first set on line %d)",
                     name, section, (*items)[i].line);
            cfg_fail_hint(pc, line, "keep one of the two lines");
            return 0;
        }
    }
    grown = realloc(*items, (*n + 1) * sizeof(*grown));
    if (!grown) {
        cfg_fail(pc, WR_ENOMEM, "out of memory");
        return 0;
    }
    *items = grown;
    grown[*n].key = wr_strdup(name);
    grown[*n].value = wr_strdup(value);
    grown[*n].line = line;
    (*n)++;
    if (!grown[*n - 1].key || !grown[*n - 1].value) {
        cfg_fail(pc, WR_ENOMEM, "out of memory");
        return 0;
    }
    return 1;
}

/* A [destination] line: type, or an item for the destination registry to validate. */
static int
cfg_dest_line(cfg_parse_t *pc, const char *name, const char *value)
{
    wr_config_t *cfg = pc->cfg;
    int line = pc->lineno;

    if (strcmp(name, "type") == 0) {
        if (cfg->dest_type_line) {
            cfg_fail(pc, WR_ECONFIG,
                     "duplicate key \"type\" in section [destination] (first set on line %d)",
                     cfg->dest_type_line);
            cfg_fail_hint(pc, line, "keep one of the two lines");
            return 0;
        }
        if (!*value) {
            cfg_fail(pc, WR_ECONFIG, "empty value for [destination] type");
            cfg_fail_hint(pc, line, "name a destination type, or remove the line for the default");
            return 0;
        }
        free(cfg->dest_type);
        if (!(cfg->dest_type = wr_strdup(value))) {
            cfg_fail(pc, WR_ENOMEM, "out of memory");
            return 0;
        }
        cfg->dest_type_line = line;
        return 1;
    }
    return cfg_add_item(pc, "destination", &cfg->dest_items, &cfg->dest_nitems, name, value);
}

/* inih handler: one call per "key = value" line. Returns 0 on error, as inih expects. */
static int
cfg_handler(void *user, const char *section, const char *name, const char *value)
{
    cfg_parse_t *pc = user;
    int line = pc->lineno;
    char list[256];
    size_t i;

    if (pc->err_line)
        return 0; /* only the first error is reported */
    if (!name || !value)
        return 0;
    if (section[0] == '\0') {
        cfg_fail(pc, WR_ECONFIG, "key \"%s\" is outside of any section", name);
        cfg_section_list(list, sizeof(list));
        cfg_fail_hint(pc, line, "put it below one of %s", list);
        return 0;
    }
    if (cfg_section_index(section, strlen(section)) < 0) {
        cfg_fail(pc, WR_ECONFIG, "unknown section [%s]", section);
        cfg_section_list(list, sizeof(list));
        cfg_fail_hint(pc, line, "valid sections: %s", list);
        return 0;
    }
    if (strcmp(section, "destination") == 0)
        return cfg_dest_line(pc, name, value);
    if (strcmp(section, "state") == 0 && strcmp(name, "backend") != 0)
        return cfg_add_item(pc, "state", &pc->cfg->state_items, &pc->cfg->state_nitems, name,
                            value);
    for (i = 0; i < CFG_NKEYS; i++)
        if (strcmp(cfg_keys[i].section, section) == 0 && strcmp(cfg_keys[i].key, name) == 0)
            break;
    if (i == CFG_NKEYS) {
        cfg_fail(pc, WR_ECONFIG, "unknown key \"%s\" in section [%s]", name, section);
        cfg_key_list(section, list, sizeof(list));
        cfg_fail_hint(pc, line, "valid keys in [%s]: %s", section, list);
        return 0;
    }
    if (pc->key_line[i]) {
        cfg_fail(pc, WR_ECONFIG, "duplicate key \"%s\" in section [%s] (first set on line %d)",
                 name, section, pc->key_line[i]);
        cfg_fail_hint(pc, line, "keep one of the two lines");
        return 0;
    }
    pc->key_line[i] = line;
    return cfg_set_value(pc, &cfg_keys[i], value) ? 1 : 0;
}

/* Text of line `lineno` (1-based) of the buffer, without "\n", leading whitespace or BOM. */
static void
cfg_line_text(const char *text, size_t len, int lineno, const char **s, size_t *n)
{
    size_t pos = 0;
    for (int l = 1; l < lineno && pos < len; l++) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        pos = nl ? (size_t)(nl - text) + 1 : len;
    }
    *s = text + pos;
    *n = 0;
    while (pos + *n < len && (*s)[*n] != '\n')
        (*n)++;
    if (lineno == 1 && *n >= 3 && memcmp(*s, "\xEF\xBB\xBF", 3) == 0) {
        *s += 3;
        *n -= 3;
    }
    while (*n > 0 && cfg_is_space(**s)) {
        (*s)++;
        (*n)--;
    }
}

static char *
cfg_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    char *p = malloc(dl + nl + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, dl);
    if (!slash)
        p[dl++] = '/';
    memcpy(p + dl, name, nl + 1);
    return p;
}

static int
cfg_key_index(const char *section, const char *key)
{
    for (size_t i = 0; i < CFG_NKEYS; i++)
        if (strcmp(cfg_keys[i].section, section) == 0 && strcmp(cfg_keys[i].key, key) == 0)
            return (int)i;
    return -1;
}

/*
 * [state], once the file is read (backend may come after the other keys): conninfo and
 * schema belong to backend = postgres (schema, which init writes for every backend, is
 * accepted with sqlite too), library to backend = plugin; every key of a plugin store but
 * library is its own, validated by the store (state_abi.c). Errors name the key's line.
 */
static int
cfg_state_finish(cfg_parse_t *pc, const char *path, wr_err_t *err)
{
    wr_config_t *cfg = pc->cfg;
    int kb = cfg_key_index("state", "backend");
    int sline = pc->section_line[cfg_section_index("state", strlen("state"))];
    int bline = pc->key_line[kb] ? pc->key_line[kb] : sline;
    bool plugin = cfg->state_backend == CFG_STATE_PLUGIN;
    char list[256];

    cfg->state_line = sline;
    for (size_t i = 0; i < cfg->state_nitems; i++) {
        const wr_cfg_item_t *it = &cfg->state_items[i];
        char **field = NULL;

        if (strcmp(it->key, "library") == 0) {
            if (!plugin) {
                wr_err_set(err, WR_ECONFIG,
                           "%s:%d: [state] library is set but backend is not plugin", path,
                           it->line);
                wr_err_hint(err, "set \"backend = plugin\", or remove the library line");
                return WR_ECONFIG;
            }
            if (!*it->value) {
                wr_err_set(err, WR_ECONFIG, "%s:%d: empty value for [state] library", path,
                           it->line);
                wr_err_hint(err, "set library = /path/to/libstore.so");
                return WR_ECONFIG;
            }
            field = &cfg->state_library;
        } else if (plugin) {
            continue; /* the store's own key */
        } else if (strcmp(it->key, "conninfo") == 0) {
            /* never echo this value */
            if (cfg->state_backend != CFG_STATE_POSTGRES) {
                wr_err_set(err, WR_ECONFIG,
                           "%s:%d: [state] conninfo is set but backend is not postgres", path,
                           it->line);
                wr_err_hint(err, "set \"backend = postgres\", or remove the conninfo line");
                return WR_ECONFIG;
            }
            if (!*it->value) {
                wr_err_set(err, WR_ECONFIG, "%s:%d: empty value for [state] conninfo", path,
                           it->line);
                wr_err_hint(err, "set conninfo = host=HOST dbname=DB user=USER");
                return WR_ECONFIG;
            }
            field = &cfg->state_conninfo;
        } else if (strcmp(it->key, "schema") == 0) {
            if (!*it->value || strlen(it->value) > 63) {
                wr_err_set(err, WR_ECONFIG,
                           "%s:%d: invalid value \"%s\" for [state] schema: expected a name of 1 "
                           "to 63 bytes",
                           path, it->line, it->value);
                return WR_ECONFIG;
            }
            field = &cfg->state_schema;
        } else {
            wr_err_set(err, WR_ECONFIG, "%s:%d: unknown key \"%s\" in section [state]", path,
                       it->line, it->key);
            cfg_key_list("state", list, sizeof(list));
            wr_err_hint(err,
                        "valid keys in [state]: %s (any key only with backend = plugin, for "
                        "the store)",
                        list);
            return WR_ECONFIG;
        }
        free(*field);
        if (!(*field = wr_strdup(it->value)))
            return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    if (cfg->state_backend == CFG_STATE_POSTGRES && !cfg->state_conninfo) {
        wr_err_set(err, WR_ECONFIG, "%s:%d: [state] backend = postgres needs a conninfo", path,
                   bline);
        wr_err_hint(err, "add \"conninfo = host=HOST dbname=DB user=USER\" below [state]");
        return WR_ECONFIG;
    }
    if (plugin && !cfg->state_library) {
        wr_err_set(err, WR_ECONFIG, "%s:%d: [state] backend = plugin needs a library", path, bline);
        wr_err_hint(err, "add \"library = /path/to/libstore.so\" below [state] (a store built "
                         "against walrelay/store.h: docs/custom-store.md)");
        return WR_ECONFIG;
    }
    if (!cfg->state_schema && !(cfg->state_schema = wr_strdup(CFG_STATE_DEFAULT_SCHEMA)))
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    return 0;
}

/* Checks made once the whole file is read: required keys, cross-key rules, defaults. */
static int
cfg_finish(cfg_parse_t *pc, const char *path, wr_err_t *err)
{
    wr_config_t *cfg = pc->cfg;
    int rc;

    for (size_t i = 0; i < CFG_NKEYS; i++) {
        const cfg_key_t *k = &cfg_keys[i];
        int sec;
        if (k->defval || pc->key_line[i])
            continue;
        sec = cfg_section_index(k->section, strlen(k->section));
        if (pc->section_line[sec])
            wr_err_set(err, WR_ECONFIG, "%s:%d: missing required key \"%s\" in section [%s]", path,
                       pc->section_line[sec], k->key, k->section);
        else
            wr_err_set(err, WR_ECONFIG,
                       "%s: missing required key \"%s\" in section [%s] (there is no [%s] "
                       "section)",
                       path, k->key, k->section, k->section);
        wr_err_hint(err, "add \"%s\" below [%s]", k->example, k->section);
        return WR_ECONFIG;
    }

    if (cfg->backoff_max_ms < cfg->backoff_initial_ms) {
        int ki = cfg_key_index("retry", "backoff_max_ms");
        int kj = cfg_key_index("retry", "backoff_initial_ms");
        int line = pc->key_line[ki] ? pc->key_line[ki] : pc->key_line[kj];
        wr_err_set(err, WR_ECONFIG,
                   "%s:%d: [retry] backoff_max_ms (%d) is less than backoff_initial_ms (%d)", path,
                   line, cfg->backoff_max_ms, cfg->backoff_initial_ms);
        wr_err_hint(err, "raise backoff_max_ms or lower backoff_initial_ms");
        return WR_ECONFIG;
    }

    if ((rc = cfg_state_finish(pc, path, err)) != 0)
        return rc;

    /* [destination]: its keys belong to the destination type (dest_config_check) */
    cfg->dest_line = pc->section_line[cfg_section_index("destination", strlen("destination"))];
    return 0;
}

/* Parses `len` bytes of INI text as if it were the file `path`; dir is the directory
 * relative paths are resolved against. On error *cfg holds defaults only. */
static int
cfg_parse_buf(const char *text, size_t len, const char *path, const char *dir, wr_config_t *cfg,
              wr_err_t *err)
{
    cfg_parse_t pc;
    int rc, line;

    cfg_defaults(cfg);
    memset(&pc, 0, sizeof(pc));
    pc.text = text;
    pc.len = len;
    pc.cfg = cfg;

    cfg->path = wr_strdup(path);
    cfg->dir = wr_strdup(dir);
    if (!cfg->path || !cfg->dir) {
        cfg_free(cfg);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }

    rc = ini_parse_stream(cfg_reader, &pc, cfg_handler, &pc);
    if (rc == -2 || (rc < 0 && rc != -1)) {
        cfg_free(cfg);
        return wr_err_set(err, WR_ENOMEM, "%s: out of memory while parsing", path);
    }
    line = pc.err_line;
    if (rc > 0 && (line == 0 || rc < line)) {
        /* inih found a line that is neither a comment, a header nor "key = value" */
        const char *s;
        size_t n;
        cfg_line_text(text, len, rc, &s, &n);
        if (n > 0 && s[0] == '[') {
            wr_err_set(err, WR_ECONFIG, "%s:%d: missing \"]\" in section header", path, rc);
            wr_err_hint(err, "a section header looks like [batch]");
        } else {
            wr_err_set(err, WR_ECONFIG,
                       "%s:%d: syntax error: expected \"[section]\" or \"key = value\"", path, rc);
            wr_err_hint(err, "comments start with # or ; at the start of a line");
        }
        cfg_free(cfg);
        return WR_ECONFIG;
    }
    if (line) {
        wr_err_set(err, pc.err_code, "%s:%d: %s", path, line, pc.err_msg);
        if (pc.err_hint[0])
            wr_err_hint(err, "%s", pc.err_hint);
        cfg_free(cfg);
        return pc.err_code;
    }
    rc = cfg_finish(&pc, path, err);
    if (rc < 0) {
        cfg_free(cfg);
        return rc;
    }
    return 0;
}

int
cfg_parse_string(const char *text, const char *path, const char *dir, wr_config_t *cfg,
                 wr_err_t *err)
{
    char *owned_dir = NULL;
    int rc;

    if (!cfg)
        return wr_err_set(err, WR_EINVAL, "no configuration to fill");
    cfg_defaults(cfg);
    if (!text)
        return wr_err_set(err, WR_EINVAL, "no configuration text");
    if (!path)
        path = CFG_FILE_NAME;
    if (!dir) {
        const char *slash = strrchr(path, '/');
        owned_dir =
            slash ? wr_strndup(path, slash == path ? 1 : (size_t)(slash - path)) : wr_strdup(".");
        if (!owned_dir)
            return wr_err_set(err, WR_ENOMEM, "out of memory");
        dir = owned_dir;
    }
    rc = cfg_parse_buf(text, strlen(text), path, dir, cfg, err);
    free(owned_dir);
    return rc;
}

static int
cfg_fail_read(const char *path, const char *dir, int errnum, wr_err_t *err)
{
    wr_err_set(err, WR_ECONFIG, "cannot read %s: %s", path, strerror(errnum));
    if (errnum == ENOENT || errnum == ENOTDIR)
        wr_err_hint(err, "run walrelay init %s ... to create it, or check the directory name", dir);
    else if (errnum == EACCES)
        wr_err_hint(err, "run walrelay as the user that owns %s (the file is mode 0600)", path);
    return WR_ECONFIG;
}

/* Loads DIR/fname. With text_out, a successful load also hands back the exact bytes it
 * parsed (NUL-terminated, caller frees) and their length. */
static int
cfg_load_named(const char *dir, const char *fname, wr_config_t *cfg, char **text_out,
               size_t *len_out, wr_err_t *err)
{
    char *absdir = NULL, *path = NULL, *text = NULL;
    struct stat st;
    size_t used = 0;
    int fd = -1, rc;

    if (!cfg)
        return wr_err_set(err, WR_EINVAL, "no configuration to fill");
    cfg_defaults(cfg);
    if (!dir || !*dir)
        return wr_err_set(err, WR_ECONFIG, "no configuration directory given");

    absdir = realpath(dir, NULL);
    if (!absdir) {
        int e = errno;
        char *p = cfg_join(dir, fname);
        if (!p)
            return wr_err_set(err, WR_ENOMEM, "out of memory");
        rc = cfg_fail_read(p, dir, e, err);
        free(p);
        return rc;
    }
    path = cfg_join(absdir, fname);
    if (!path) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = cfg_fail_read(path, absdir, errno, err);
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = cfg_fail_read(path, absdir, errno, err);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = wr_err_set(err, WR_ECONFIG, "cannot read %s: not a regular file", path);
        goto out;
    }
    if (st.st_size > CFG_MAX_FILE_SIZE) {
        rc = wr_err_set(err, WR_ECONFIG,
                        "cannot read %s: file is too large (%lld bytes, at most %d)", path,
                        (long long)st.st_size, CFG_MAX_FILE_SIZE);
        goto out;
    }
    text = malloc(CFG_MAX_FILE_SIZE + 1);
    if (!text) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, text + used, CFG_MAX_FILE_SIZE + 1 - used);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = cfg_fail_read(path, absdir, errno, err);
            goto out;
        }
        if (r == 0)
            break;
        used += (size_t)r;
        if (used > CFG_MAX_FILE_SIZE) {
            rc = wr_err_set(err, WR_ECONFIG, "cannot read %s: file is too large (at most %d bytes)",
                            path, CFG_MAX_FILE_SIZE);
            goto out;
        }
    }
    rc = cfg_parse_buf(text, used, path, absdir, cfg, err);
    if (rc == 0 && text_out) {
        text[used] = '\0';
        *text_out = text;
        *len_out = used;
        text = NULL;
    }
out:
    if (fd >= 0)
        close(fd);
    free(text);
    free(path);
    free(absdir);
    return rc;
}

int
cfg_load(const char *dir, wr_config_t *cfg, wr_err_t *err)
{
    return cfg_load_named(dir, CFG_FILE_NAME, cfg, NULL, NULL, err);
}

int
cfg_load_text(const char *dir, wr_config_t *cfg, char **text, size_t *len, wr_err_t *err)
{
    return cfg_load_named(dir, CFG_FILE_NAME, cfg, text, len, err);
}

int
cfg_publish_active(const char *absdir, const char *text, size_t len, wr_err_t *err)
{
    char *tmp = NULL, *dst = NULL;
    size_t off = 0;
    int fd = -1, rc = 0;

    dst = cfg_join(absdir, CFG_ACTIVE_NAME);
    tmp = cfg_join(absdir, CFG_ACTIVE_NAME ".tmp");
    if (!dst || !tmp) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = wr_err_set(err, WR_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = wr_err_set(err, WR_EIO, "cannot write %s: %s", tmp, strerror(errno));
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = wr_err_set(err, WR_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, dst) != 0) {
        rc = wr_err_set(err, WR_EIO, "cannot rename %s to %s: %s", tmp, dst, strerror(errno));
        goto out;
    }
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0 && tmp)
        unlink(tmp);
    free(tmp);
    free(dst);
    return rc;
}

int
cfg_load_active(const char *dir, wr_config_t *cfg, wr_err_t *err)
{
    char *p = cfg_join(dir, CFG_ACTIVE_NAME);
    bool have;

    if (!p)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    have = access(p, F_OK) == 0;
    free(p);
    return cfg_load_named(dir, have ? CFG_ACTIVE_NAME : CFG_FILE_NAME, cfg, NULL, NULL, err);
}

/* --- writing --------------------------------------------------------------------------- */

/* Can `value` be written as "key = value" and read back unchanged? what names the value in
 * messages; the value itself is only echoed when it is not secret. */
static int
cfg_check_writable(const char *what, const char *key, const char *value, bool secret, wr_err_t *err)
{
    size_t n = strlen(value);
    const char *bad = NULL;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c == ';')
            bad = "\";\" (after a space it starts a comment)";
        else if (c == '#')
            bad = "\"#\" (a comment character)";
        else if (c < 0x20 || c == 0x7f)
            bad = "a control character (newline, tab...)";
        if (bad)
            break;
    }
    if (bad) {
        if (secret)
            wr_err_set(err, WR_ECONFIG, "%s contains %s, which walrelay.conf cannot hold", what,
                       bad);
        else
            wr_err_set(err, WR_ECONFIG, "%s \"%s\" contains %s, which walrelay.conf cannot hold",
                       what, value, bad);
        return WR_ECONFIG;
    }
    if (n > 0 && (cfg_is_space(value[0]) || cfg_is_space(value[n - 1]))) {
        wr_err_set(err, WR_ECONFIG,
                   "%s has leading or trailing whitespace, which walrelay.conf cannot hold", what);
        return WR_ECONFIG;
    }
    if (strlen(key) + 3 + n > (size_t)CFG_MAX_LINE) {
        wr_err_set(err, WR_ECONFIG,
                   "%s is too long for one line of walrelay.conf (%zu bytes, at most %zu)", what, n,
                   (size_t)CFG_MAX_LINE - strlen(key) - 3);
        return WR_ECONFIG;
    }
    return 0;
}

static void
cfg_conninfo_hint(wr_err_t *err)
{
    wr_err_hint(err, "keep the password out of the connection string (~/.pgpass or PGPASSFILE), "
                     "or put the settings in a service file (PGSERVICEFILE) and use "
                     "service=NAME");
}

/* Writes the whole file text to `f`. values[i] overrides cfg_keys[i].defval; the body of
 * [destination] comes from the destination registry. With a plugin state store, the
 * postgres keys are written as comments: every [state] key but library is the store's. */
static void
cfg_emit(FILE *f, const char *const *values, const char *dest_section, bool plugin_state)
{

    fputs("# walrelay.conf - written by \"walrelay init\"; every key is described in\n"
          "# docs/configuration.md. Lines are \"key = value\" below a [section]; lines\n"
          "# starting with # or ; are comments, and \" ;\" starts a comment after a value.\n"
          "# Keep this file readable by its owner only (mode 0600).\n",
          f);
    for (size_t si = 0; si < CFG_NSECTIONS; si++) {
        const char *section = cfg_sections[si];
        bool first = true;

        if (strcmp(section, "destination") == 0) {
            fprintf(f, "\n[%s]\n%s", section, dest_section ? dest_section : "");
            continue;
        }
        for (size_t i = 0; i < CFG_NKEYS; i++) {
            const cfg_key_t *k = &cfg_keys[i];
            const char *h = k->help;
            if (strcmp(section, k->section) != 0)
                continue;
            if (first)
                fprintf(f, "\n[%s]\n", k->section);
            else
                fputc('\n', f);
            first = false;
            while (*h) {
                const char *nl = strchr(h, '\n');
                size_t n = nl ? (size_t)(nl - h) : strlen(h);
                fprintf(f, "# %.*s\n", (int)n, h);
                h += n + (nl ? 1 : 0);
            }
            if (k->defval && !*k->defval && !values[i]) {
                /* optional, no default: shown as an example */
                fprintf(f, "# %s\n", k->example);
                continue;
            }
            if (plugin_state && strcmp(k->section, "state") == 0 && k->kind == CFG_K_ITEM &&
                strcmp(k->key, "library") != 0) {
                fprintf(f, "# %s = %s\n", k->key, k->defval);
                continue;
            }
            if (k->defval && !values[i])
                fprintf(f, "# default: %s\n", k->defval);
            fprintf(f, "%s = %s\n", k->key, values[i] ? values[i] : k->defval);
        }
    }
}

static int
cfg_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int
cfg_write_new(const char *dir, const char *pipeline, const char *conninfo, const char *publication,
              const char *dest_section, const char *state, const char *metrics,
              cfg_check_fn check_fn, wr_err_t *err)
{
    const char *values[CFG_NKEYS] = {0};
    char *conn = NULL, *sconn = NULL, *path = NULL, *text = NULL;
    size_t textlen = 0;
    FILE *mf = NULL;
    struct stat st;
    wr_config_t check;
    int fd = -1, rc;

    if (!dir || !*dir)
        return wr_err_set(err, WR_ECONFIG, "no configuration directory given");
    if (!cfg_pipeline_name_ok(pipeline)) {
        wr_err_set(err, WR_ECONFIG,
                   "invalid pipeline name \"%s\": expected 1 to %d characters from a-z, 0-9 "
                   "and _",
                   pipeline ? pipeline : "", WR_PIPELINE_NAME_MAX);
        wr_err_hint(err, "the name becomes part of the replication slot names");
        return WR_ECONFIG;
    }
    if (cfg_pipeline_name_clashes(pipeline)) {
        cfg_pipeline_name_clash_err(pipeline, err);
        return WR_ECONFIG;
    }
    if (!publication || !*publication)
        return wr_err_set(err, WR_ECONFIG, "publication name is empty");
    if (strlen(publication) > 63)
        return wr_err_set(err, WR_ECONFIG,
                          "publication name \"%s\" is too long (%zu bytes, at most 63)",
                          publication, strlen(publication));
    if ((rc = cfg_check_writable("publication name", "publication", publication, false, err)))
        return rc;

    /* libpq ignores whitespace around the whole conninfo; inih would drop it anyway */
    if (!conninfo)
        conninfo = "";
    while (cfg_is_space(*conninfo))
        conninfo++;
    conn = wr_strdup(conninfo);
    if (!conn)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    for (size_t n = strlen(conn); n > 0 && cfg_is_space(conn[n - 1]); n--)
        conn[n - 1] = '\0';
    if (!*conn) {
        rc = wr_err_set(err, WR_ECONFIG, "conninfo is empty");
        wr_err_hint(err,
                    "give a libpq connection string such as \"host=HOST dbname=DB user=USER\"");
        goto out;
    }
    if ((rc = cfg_check_writable("conninfo", "conninfo", conn, true, err))) {
        cfg_conninfo_hint(err);
        goto out;
    }

    /* --state: sqlite (the default), postgres:CONNINFO or plugin:PATH; the conninfo is
     * never echoed */
    if (state && strncmp(state, "plugin:", 7) == 0) {
        const char *lib = state + 7;

        if (!*lib) {
            rc = wr_err_set(err, WR_ECONFIG, "--state plugin needs the library: plugin:PATH");
            wr_err_hint(err, "--state plugin:/path/to/libstore.so");
            goto out;
        }
        if ((rc = cfg_check_writable("state store library", "library", lib, false, err)))
            goto out;
        values[cfg_key_index("state", "backend")] = "plugin";
        values[cfg_key_index("state", "library")] = lib;
    } else if (state && strcmp(state, "sqlite") != 0) {
        const char *sc;

        if (strncmp(state, "postgres:", 9) != 0) {
            const char *colon = strchr(state, ':');
            int n = colon ? (int)(colon - state) : (int)strlen(state);

            /* only the part before a ':' is shown: the rest may hold a password */
            rc = wr_err_set(err, WR_ECONFIG,
                            "invalid state store \"%.*s\": expected \"sqlite\", "
                            "\"postgres:CONNINFO\" or \"plugin:PATH\"",
                            n > 32 ? 32 : n, state);
            wr_err_hint(err, "e.g. --state 'postgres:host=HOST dbname=DB user=USER', or --state "
                             "plugin:/path/to/libstore.so");
            goto out;
        }
        sc = state + 9;
        while (cfg_is_space(*sc))
            sc++;
        if (!(sconn = wr_strdup(sc))) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t n = strlen(sconn); n > 0 && cfg_is_space(sconn[n - 1]); n--)
            sconn[n - 1] = '\0';
        if (!*sconn) {
            rc = wr_err_set(err, WR_ECONFIG, "the state store's conninfo is empty");
            wr_err_hint(err, "give --state 'postgres:host=HOST dbname=DB user=USER'");
            goto out;
        }
        if ((rc = cfg_check_writable("state conninfo", "conninfo", sconn, true, err))) {
            cfg_conninfo_hint(err);
            goto out;
        }
        values[cfg_key_index("state", "backend")] = "postgres";
        values[cfg_key_index("state", "conninfo")] = sconn;
    }
    if (metrics) {
        if ((rc = cfg_listen_parse(metrics, NULL, 256, NULL, err)) != 0) {
            wr_err_prefix(err, "--metrics: ");
            if (!err->hint[0])
                wr_err_hint(err, "write HOST:PORT, e.g. 127.0.0.1:9187");
            goto out;
        }
        if ((rc = cfg_check_writable("--metrics", "listen", metrics, false, err)))
            goto out;
        values[cfg_key_index("metrics", "listen")] = metrics;
    }
    values[cfg_key_index("pipeline", "name")] = pipeline;
    values[cfg_key_index("source", "conninfo")] = conn;
    values[cfg_key_index("source", "publication")] = publication;

    mf = open_memstream(&text, &textlen);
    if (!mf) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    cfg_emit(mf, values, dest_section, state != NULL && strncmp(state, "plugin:", 7) == 0);
    if (fclose(mf) != 0) {
        mf = NULL;
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    mf = NULL;

    path = cfg_join(dir, CFG_FILE_NAME);
    if (!path) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory");
        goto out;
    }
    /* what we write must read back: a safety net behind the checks above */
    rc = cfg_parse_buf(text, textlen, path, dir, &check, err);
    if (rc < 0) {
        wr_err_prefix(err, "refusing to write a file that would not load: ");
        goto out;
    }
    if (check_fn && (rc = check_fn(&check, err)) < 0) {
        cfg_free(&check);
        goto out;
    }
    cfg_free(&check);

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = wr_err_set(err, WR_ECONFIG, "cannot create directory %s: %s", dir, strerror(errno));
        goto out;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = wr_err_set(err, WR_ECONFIG, "%s is not a directory", dir);
        goto out;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        if (errno == EEXIST) {
            rc = wr_err_set(err, WR_ECONFIG, "%s already exists", path);
            wr_err_hint(err, "edit it, or choose another directory");
        } else {
            rc = wr_err_set(err, WR_ECONFIG, "cannot create %s: %s", path, strerror(errno));
        }
        goto out;
    }
    if (fchmod(fd, 0600) != 0 || cfg_write_all(fd, text, textlen) != 0 || fsync(fd) != 0) {
        rc = wr_err_set(err, WR_EIO, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        fd = -1;
        unlink(path);
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = wr_err_set(err, WR_EIO, "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        goto out;
    }
    fd = -1;
    rc = 0;
out:
    if (mf)
        fclose(mf);
    if (fd >= 0)
        close(fd);
    free(text);
    free(path);
    free(conn);
    free(sconn);
    return rc;
}
