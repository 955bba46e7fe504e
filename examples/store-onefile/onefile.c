/*
 * onefile.c - an example walrelay state store plugin: a pipeline's whole replication state
 * in one text file, rewritten atomically on every change, with a lock file as its lease.
 *
 * NOTES: built out of tree from the installed walrelay/store.h alone (see README.md).
 * walrelay opens it in the supervisor of `walrelay run` (role "supervisor": the only
 * writer, for the life of the process), in `walrelay drop` (role "drop") and in `walrelay
 * check` (role "check": reads nothing it does not need, takes no lock, writes nothing).
 *
 * The file. The state lives in memory; every call that changes it writes the WHOLE state
 * to PATH.tmp, fsync()s it, rename()s it over PATH and fsync()s the directory, and only
 * then returns WR_STORE_OK: the rename is atomic, so after a crash at any instruction PATH
 * holds either the state before the call or after it, never a mix, and every multi-part
 * change (a phase and its history entry, a schema and its columns, a table and everything
 * of it) is all or nothing for free. If the write fails, the state is read back from PATH
 * (which the failed write did not touch), so a failed call changes nothing. One file per
 * pipeline: its first lines name the format and the pipeline, and a file of another
 * pipeline is refused. Writing everything each time is fine for the few kilobytes a
 * pipeline's state takes (a handful of writes per table phase, and the progress at most
 * once a second); a store for thousands of tables would want an append-only log.
 *
 *   walrelay-onefile 1                    format and version
 *   pipeline NAME
 *   progress SLOT FLUSH_LSN
 *   table RELID PHASE LSN ATTEMPTS UPDATED_AT SCHEMA NAME ERR_KIND ERR_MSG ERR_HINT
 *   hist RELID PHASE LSN ERR_KIND ERR_MSG ERR_HINT        (oldest first)
 *   schema RELID LSN REPLIDENT SCHEMA NAME NCOLUMNS
 *   col NAME TYPE_OID TYPMOD KEY NOT_NULL                 (NCOLUMNS of them, in order)
 *   map RELID DEST_NAME
 *   flag NAME VALUE UPDATED_AT
 *   end
 *
 * Fields are separated by one space; text fields are percent-encoded (space, '%', and
 * control bytes become %XX; the empty string is a lone "%"), so any UTF-8 text round-trips.
 *
 * The lease. PATH.lock, locked with flock(LOCK_EX | LOCK_NB) for as long as a "supervisor"
 * or "drop" instance is open; the kernel drops the lock when the process dies, so a killed
 * supervisor never blocks the next one. A second supervisor of the same file gets
 * WR_STORE_ELEASE (walrelay refuses to start, exit code 2). The lock is on the file we
 * opened: if PATH.lock is deleted or replaced (someone "cleaning up"), another process can
 * lock a new file at that path, so the lease is LOST. check_lease() (called by walrelay
 * every few seconds) and every write compare the path's inode with the locked one, and
 * once it differs every call fails with WR_STORE_ELEASE without writing. flock works on
 * local file systems (and NFSv4 on Linux); keep the file on one of those.
 */
#include <walrelay/store.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define OF_MAGIC "walrelay-onefile 1"

typedef struct of_hist_s {
    int phase;
    uint64_t lsn;
    char *kind, *msg, *hint;
} of_hist_t;

typedef struct of_table_s {
    uint32_t relid;
    char *schema, *name;
    int phase;
    uint64_t lsn;
    uint32_t attempts;
    int64_t updated_at;
    char *kind, *msg, *hint;
    of_hist_t *hist; /* oldest first */
    size_t nhist;
} of_table_t;

typedef struct of_schema_s {
    uint32_t relid;
    uint64_t lsn;
    char replident;
    char *schema, *name;
    uint16_t ncols;
    wr_store_column_t *cols; /* names owned */
} of_schema_t;

typedef struct of_map_s {
    uint32_t relid;
    char *dest;
} of_map_t;

typedef struct of_flag_s {
    char *name;
    int64_t value;
    int64_t updated_at;
} of_flag_t;

/* The whole state of one pipeline. */
typedef struct of_data_s {
    bool has_progress;
    char *slot;
    uint64_t flush;
    of_table_t *tables;
    size_t ntables;
    of_schema_t *schemas;
    size_t nschemas;
    of_map_t *maps;
    size_t nmaps;
    of_flag_t *flags;
    size_t nflags;
} of_data_t;

typedef struct of_store_s {
    const wr_store_host_t *host;
    char path[PATH_MAX];
    char tmp[PATH_MAX + 8];
    char lock[PATH_MAX + 8];
    char dir[PATH_MAX];
    char pipeline[64];
    int lock_fd; /* -1 without the lease */
    dev_t lock_dev;
    ino_t lock_ino;
    bool lost; /* the lease is gone: every call fails */
    of_data_t d;
    /* what a call returns stays valid until the next call */
    wr_store_table_t *out_tables;
    wr_store_schema_t out_schema;
} of_store_t;

/* ---- configuration -------------------------------------------------------------------- */

/* Resolves [state] path against the pipeline directory into out. */
static int
of_path(const wr_store_config_t *cfg, char *out, size_t len, wr_store_error_t *err)
{
    const char *p = wr_store_config_get(cfg, "path");
    int n;

    if (!p || !*p)
        return wr_store_error_set(err, WR_STORE_ECONFIG, "path", "missing key \"path\"");
    n = p[0] == '/' ? snprintf(out, len, "%s", p) : snprintf(out, len, "%s/%s", cfg->dir, p);
    if (n < 0 || (size_t)n >= len - 8)
        return wr_store_error_set(err, WR_STORE_ECONFIG, "path", "the path is too long");
    return WR_STORE_OK;
}

static int
of_validate(const wr_store_config_t *cfg, wr_store_error_t *err)
{
    char path[PATH_MAX];
    int rc;

    for (size_t i = 0; i < cfg->nitems; i++) {
        if (strcmp(cfg->items[i].key, "path") != 0) {
            rc = wr_store_error_set(err, WR_STORE_ECONFIG, cfg->items[i].key, "unknown key \"%s\"",
                                    cfg->items[i].key);
            wr_store_error_hint(err, "the onefile store knows the key path");
            return rc;
        }
    }
    if ((rc = of_path(cfg, path, sizeof(path), err)) != WR_STORE_OK) {
        if (!wr_store_config_get(cfg, "path"))
            wr_store_error_hint(err, "add \"path = state.txt\" below [state] (relative to the "
                                     "pipeline directory, or absolute)");
        return rc;
    }
    return WR_STORE_OK;
}

/* ---- text fields ---------------------------------------------------------------------- */

typedef struct of_buf_s {
    char *p;
    size_t len, cap;
    bool oom;
} of_buf_t;

static void
of_put(of_buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        if (!(p = realloc(b->p, cap))) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void of_printf(of_buf_t *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void
of_printf(of_buf_t *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        of_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* " " + the percent-encoded text ("%" alone for the empty string). */
static void
of_text(of_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    of_put(b, " ", 1);
    if (!s || !*s) {
        of_put(b, "%", 1);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= 0x20 || *p == '%' || *p == 0x7f) {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            of_put(b, e, 3);
        } else {
            of_put(b, (const char *)p, 1);
        }
    }
}

static int
of_hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes a text field into a new string; NULL if malformed (or out of memory). */
static char *
of_untext(const char *f)
{
    size_t n = strlen(f), o = 0;
    char *s;

    if (strcmp(f, "%") == 0)
        return calloc(1, 1);
    if (!(s = malloc(n + 1)))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (f[i] != '%') {
            s[o++] = f[i];
            continue;
        }
        if (i + 2 >= n || of_hexval(f[i + 1]) < 0 || of_hexval(f[i + 2]) < 0 ||
            (of_hexval(f[i + 1]) == 0 && of_hexval(f[i + 2]) == 0)) {
            free(s);
            return NULL;
        }
        s[o++] = (char)(of_hexval(f[i + 1]) * 16 + of_hexval(f[i + 2]));
        i += 2;
    }
    s[o] = '\0';
    return s;
}

static bool
of_u64(const char *f, uint64_t *out)
{
    char *end;

    if (!*f || *f == '-')
        return false;
    errno = 0;
    *out = strtoull(f, &end, 10);
    return errno == 0 && *end == '\0';
}

static bool
of_i64(const char *f, int64_t *out)
{
    char *end;

    if (!*f)
        return false;
    errno = 0;
    *out = strtoll(f, &end, 10);
    return errno == 0 && *end == '\0';
}

static bool
of_u32(const char *f, uint32_t *out)
{
    uint64_t v;

    if (!of_u64(f, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* ---- the state in memory --------------------------------------------------------------- */

static void
of_hist_free(of_hist_t *h)
{
    free(h->kind);
    free(h->msg);
    free(h->hint);
}

static void
of_table_free(of_table_t *t)
{
    free(t->schema);
    free(t->name);
    free(t->kind);
    free(t->msg);
    free(t->hint);
    for (size_t i = 0; i < t->nhist; i++)
        of_hist_free(&t->hist[i]);
    free(t->hist);
}

static void
of_schema_free(of_schema_t *s)
{
    free(s->schema);
    free(s->name);
    for (uint16_t i = 0; i < s->ncols; i++)
        free((char *)s->cols[i].name);
    free(s->cols);
}

static void
of_data_free(of_data_t *d)
{
    free(d->slot);
    for (size_t i = 0; i < d->ntables; i++)
        of_table_free(&d->tables[i]);
    free(d->tables);
    for (size_t i = 0; i < d->nschemas; i++)
        of_schema_free(&d->schemas[i]);
    free(d->schemas);
    for (size_t i = 0; i < d->nmaps; i++)
        free(d->maps[i].dest);
    free(d->maps);
    for (size_t i = 0; i < d->nflags; i++)
        free(d->flags[i].name);
    free(d->flags);
    memset(d, 0, sizeof(*d));
}

/* Makes room for one more element (grows by one: a pipeline has few of each). */
static bool
of_grow(void **arr, size_t n, size_t elem)
{
    void *p = realloc(*arr, (n + 1) * elem);

    if (!p)
        return false;
    *arr = p;
    return true;
}

static of_table_t *
of_find_table(of_data_t *d, uint32_t relid)
{
    for (size_t i = 0; i < d->ntables; i++)
        if (d->tables[i].relid == relid)
            return &d->tables[i];
    return NULL;
}

static char *
of_strdup(const char *s)
{
    size_t n = strlen(s ? s : "");
    char *p = malloc(n + 1);

    if (p)
        memcpy(p, s ? s : "", n + 1);
    return p;
}

/* ---- the file ------------------------------------------------------------------------- */

static void
of_serialize(const of_store_t *s, of_buf_t *b)
{
    const of_data_t *d = &s->d;

    of_put(b, OF_MAGIC "\npipeline", strlen(OF_MAGIC "\npipeline"));
    of_text(b, s->pipeline);
    of_put(b, "\n", 1);
    if (d->has_progress) {
        of_put(b, "progress", 8);
        of_text(b, d->slot);
        of_printf(b, " %" PRIu64 "\n", d->flush);
    }
    for (size_t i = 0; i < d->ntables; i++) {
        const of_table_t *t = &d->tables[i];

        of_printf(b, "table %" PRIu32 " %s %" PRIu64 " %" PRIu32 " %" PRId64, t->relid,
                  wr_store_phase_name(t->phase), t->lsn, t->attempts, t->updated_at);
        of_text(b, t->schema);
        of_text(b, t->name);
        of_text(b, t->kind);
        of_text(b, t->msg);
        of_text(b, t->hint);
        of_put(b, "\n", 1);
        for (size_t j = 0; j < t->nhist; j++) {
            const of_hist_t *h = &t->hist[j];

            of_printf(b, "hist %" PRIu32 " %s %" PRIu64, t->relid, wr_store_phase_name(h->phase),
                      h->lsn);
            of_text(b, h->kind);
            of_text(b, h->msg);
            of_text(b, h->hint);
            of_put(b, "\n", 1);
        }
    }
    for (size_t i = 0; i < d->nschemas; i++) {
        const of_schema_t *sc = &d->schemas[i];

        of_printf(b, "schema %" PRIu32 " %" PRIu64 " %c", sc->relid, sc->lsn, sc->replident);
        of_text(b, sc->schema);
        of_text(b, sc->name);
        of_printf(b, " %u\n", (unsigned)sc->ncols);
        for (uint16_t j = 0; j < sc->ncols; j++) {
            const wr_store_column_t *c = &sc->cols[j];

            of_put(b, "col", 3);
            of_text(b, c->name);
            of_printf(b, " %" PRIu32 " %" PRId32 " %d %d\n", c->type_oid, c->typmod, c->key ? 1 : 0,
                      c->not_null ? 1 : 0);
        }
    }
    for (size_t i = 0; i < d->nmaps; i++) {
        of_printf(b, "map %" PRIu32, d->maps[i].relid);
        of_text(b, d->maps[i].dest);
        of_put(b, "\n", 1);
    }
    for (size_t i = 0; i < d->nflags; i++) {
        of_put(b, "flag", 4);
        of_text(b, d->flags[i].name);
        of_printf(b, " %" PRId64 " %" PRId64 "\n", d->flags[i].value, d->flags[i].updated_at);
    }
    of_put(b, "end\n", 4);
}

/* Splits line (modified in place) into at most max fields; returns their count. */
static size_t
of_fields(char *line, char **f, size_t max)
{
    size_t n = 0;

    while (*line && n < max) {
        f[n++] = line;
        while (*line && *line != ' ')
            line++;
        if (*line)
            *line++ = '\0';
    }
    return *line ? max + 1 : n; /* more than max: malformed */
}

/* Parses the file's text into d (empty on error, with err set). */
static int
of_parse(of_store_t *s, char *text, of_data_t *d, wr_store_error_t *err)
{
    char *line = text, *next, *f[16];
    of_table_t *cur = NULL;
    of_schema_t *sch = NULL;
    uint16_t ncol = 0;
    size_t lineno = 0, n;
    bool ended = false;
    const char *why = NULL;

    memset(d, 0, sizeof(*d));
    for (; *line; line = next) {
        next = strchr(line, '\n');
        if (!next) {
            why = "the last line is cut off";
            break;
        }
        *next++ = '\0';
        lineno++;
        if (ended) {
            why = "text after \"end\"";
            break;
        }
        if (lineno == 1) {
            if (strcmp(line, OF_MAGIC) != 0) {
                why = "not a walrelay-onefile version 1 file";
                break;
            }
            continue;
        }
        n = of_fields(line, f, 16);
        if (sch && ncol < sch->ncols) {
            wr_store_column_t *c = &sch->cols[ncol];
            uint64_t oid;
            int64_t typmod;

            if (n != 6 || strcmp(f[0], "col") != 0 || !of_u64(f[2], &oid) || oid > UINT32_MAX ||
                !of_i64(f[3], &typmod) || typmod < INT32_MIN || typmod > INT32_MAX ||
                !(c->name = of_untext(f[1]))) {
                why = "a malformed col line";
                break;
            }
            c->type_oid = (uint32_t)oid;
            c->typmod = (int32_t)typmod;
            c->key = strcmp(f[4], "1") == 0;
            c->not_null = strcmp(f[5], "1") == 0;
            ncol++;
            continue;
        }
        if (n == 2 && strcmp(f[0], "pipeline") == 0) {
            char *p = of_untext(f[1]);
            bool same = p && strcmp(p, s->pipeline) == 0;

            free(p);
            if (!same) {
                of_data_free(d);
                wr_store_error_set(err, WR_STORE_ECONFIG, "path",
                                   "the state file \"%s\" belongs to another pipeline (this one is "
                                   "\"%s\")",
                                   s->path, s->pipeline);
                wr_store_error_hint(err, "give each pipeline a state file of its own");
                return WR_STORE_ECONFIG;
            }
        } else if (n == 3 && strcmp(f[0], "progress") == 0) {
            if (!(d->slot = of_untext(f[1])) || !of_u64(f[2], &d->flush)) {
                why = "a malformed progress line";
                break;
            }
            d->has_progress = true;
        } else if (n == 11 && strcmp(f[0], "table") == 0) {
            of_table_t *t;

            if (!of_grow((void **)&d->tables, d->ntables, sizeof(*d->tables))) {
                why = "out of memory";
                break;
            }
            t = cur = &d->tables[d->ntables++];
            memset(t, 0, sizeof(*t));
            t->phase = wr_store_phase_parse(f[2]);
            if (!of_u32(f[1], &t->relid) || t->phase < 0 || !of_u64(f[3], &t->lsn) ||
                !of_u32(f[4], &t->attempts) || !of_i64(f[5], &t->updated_at) ||
                !(t->schema = of_untext(f[6])) || !(t->name = of_untext(f[7])) ||
                !(t->kind = of_untext(f[8])) || !(t->msg = of_untext(f[9])) ||
                !(t->hint = of_untext(f[10]))) {
                why = "a malformed table line";
                break;
            }
        } else if (n == 7 && strcmp(f[0], "hist") == 0) {
            of_hist_t *h;
            uint32_t relid;

            if (!cur || !of_u32(f[1], &relid) || relid != cur->relid) {
                why = "a hist line that does not follow its table";
                break;
            }
            if (!of_grow((void **)&cur->hist, cur->nhist, sizeof(*cur->hist))) {
                why = "out of memory";
                break;
            }
            h = &cur->hist[cur->nhist++];
            memset(h, 0, sizeof(*h));
            h->phase = wr_store_phase_parse(f[2]);
            if (h->phase < 0 || !of_u64(f[3], &h->lsn) || !(h->kind = of_untext(f[4])) ||
                !(h->msg = of_untext(f[5])) || !(h->hint = of_untext(f[6]))) {
                why = "a malformed hist line";
                break;
            }
        } else if (n == 7 && strcmp(f[0], "schema") == 0) {
            uint64_t nc;

            if (!of_grow((void **)&d->schemas, d->nschemas, sizeof(*d->schemas))) {
                why = "out of memory";
                break;
            }
            sch = &d->schemas[d->nschemas++];
            memset(sch, 0, sizeof(*sch));
            ncol = 0;
            if (!of_u32(f[1], &sch->relid) || !of_u64(f[2], &sch->lsn) || strlen(f[3]) != 1 ||
                !(sch->schema = of_untext(f[4])) || !(sch->name = of_untext(f[5])) ||
                !of_u64(f[6], &nc) || nc > UINT16_MAX ||
                (nc > 0 && !(sch->cols = calloc(nc, sizeof(*sch->cols))))) {
                why = "a malformed schema line";
                break;
            }
            sch->replident = f[3][0];
            sch->ncols = (uint16_t)nc;
        } else if (n == 3 && strcmp(f[0], "map") == 0) {
            of_map_t *m;

            if (!of_grow((void **)&d->maps, d->nmaps, sizeof(*d->maps))) {
                why = "out of memory";
                break;
            }
            m = &d->maps[d->nmaps++];
            memset(m, 0, sizeof(*m));
            if (!of_u32(f[1], &m->relid) || !(m->dest = of_untext(f[2]))) {
                why = "a malformed map line";
                break;
            }
        } else if (n == 4 && strcmp(f[0], "flag") == 0) {
            of_flag_t *fl;

            if (!of_grow((void **)&d->flags, d->nflags, sizeof(*d->flags))) {
                why = "out of memory";
                break;
            }
            fl = &d->flags[d->nflags++];
            memset(fl, 0, sizeof(*fl));
            if (!(fl->name = of_untext(f[1])) || !of_i64(f[2], &fl->value) ||
                !of_i64(f[3], &fl->updated_at)) {
                why = "a malformed flag line";
                break;
            }
        } else if (n == 1 && strcmp(f[0], "end") == 0) {
            ended = true;
        } else {
            why = "an unknown line";
            break;
        }
    }
    if (!why && sch && ncol < sch->ncols)
        why = "a schema with fewer col lines than it says";
    if (!why && !ended)
        why = "no \"end\" line (the file is cut off)";
    if (why) {
        of_data_free(d);
        wr_store_error_set(err, WR_STORE_EIO, NULL, "state file \"%s\", line %zu: %s", s->path,
                           lineno, why);
        wr_store_error_hint(err, "the file is damaged: restore it from a backup, or move it away "
                                 "and copy the pipeline again (walrelay drop, then run)");
        return WR_STORE_EIO;
    }
    return WR_STORE_OK;
}

/* Reads PATH into s->d (an empty state if there is no file yet). */
static int
of_load(of_store_t *s, wr_store_error_t *err)
{
    of_buf_t b = {0};
    char chunk[65536];
    ssize_t r;
    int fd, rc;

    of_data_free(&s->d);
    fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return WR_STORE_OK;
        return wr_store_error_set(err, WR_STORE_EIO, NULL, "cannot read the state file \"%s\": %s",
                                  s->path, strerror(errno));
    }
    while ((r = read(fd, chunk, sizeof(chunk))) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc =
                wr_store_error_set(err, WR_STORE_EIO, NULL, "cannot read the state file \"%s\": %s",
                                   s->path, strerror(errno));
            close(fd);
            free(b.p);
            return rc;
        }
        of_put(&b, chunk, (size_t)r);
    }
    close(fd);
    if (b.oom) {
        free(b.p);
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory reading \"%s\"",
                                  s->path);
    }
    if (b.p && memchr(b.p, '\0', b.len)) {
        free(b.p);
        return wr_store_error_set(err, WR_STORE_EIO, NULL,
                                  "state file \"%s\" holds a NUL byte: it is damaged", s->path);
    }
    rc = of_parse(s, b.p ? b.p : (char *)"", &s->d, err);
    free(b.p);
    return rc;
}

/* Is the lock we hold still the file at PATH.lock? Not: the lease is lost for good. */
static int
of_lease_ok(of_store_t *s, wr_store_error_t *err)
{
    struct stat st;

    if (s->lock_fd >= 0 && !s->lost &&
        (stat(s->lock, &st) != 0 || st.st_dev != s->lock_dev || st.st_ino != s->lock_ino)) {
        s->lost = true;
        wr_store_log(s->host, WR_STORE_LOG_ERROR,
                     "the lock file \"%s\" was removed or replaced: the lease is lost", s->lock);
    }
    if (s->lost) {
        wr_store_error_set(err, WR_STORE_ELEASE, NULL,
                           "lost the lease of pipeline \"%s\": the lock file \"%s\" was removed "
                           "or replaced, so another walrelay may hold it",
                           s->pipeline, s->lock);
        wr_store_error_hint(err, "this walrelay stops; never delete a lock file of a running "
                                 "pipeline");
        return WR_STORE_ELEASE;
    }
    return WR_STORE_OK;
}

static int
of_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* After a failed write: the state in memory goes back to what PATH holds (the failed
 * write left it as it was), so a failed call changes nothing. Returns rc. */
static int
of_restore(of_store_t *s, int rc)
{
    wr_store_error_t e2;

    memset(&e2, 0, sizeof(e2));
    if (of_load(s, &e2) != WR_STORE_OK)
        wr_store_log(s->host, WR_STORE_LOG_ERROR,
                     "cannot read the state back after a failed write: %s", e2.message);
    return rc;
}

/* Writes the state: PATH.tmp, fsync, rename over PATH, fsync the directory. On failure the
 * state in memory is read back from PATH (of_restore). */
static int
of_save(of_store_t *s, wr_store_error_t *err)
{
    of_buf_t b = {0};
    const char *step = NULL;
    int fd = -1, dfd, e = 0, rc;

    if ((rc = of_lease_ok(s, err)) != WR_STORE_OK)
        return of_restore(s, rc);
    of_serialize(s, &b);
    if (b.oom) {
        free(b.p);
        return of_restore(
            s, wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory writing the state"));
    }
    fd = open(s->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        step = "create";
    else if (of_write_all(fd, b.p, b.len) != 0)
        step = "write";
    else if (fsync(fd) != 0)
        step = "fsync";
    if (step)
        e = errno;
    if (fd >= 0 && close(fd) != 0 && !step) {
        step = "close";
        e = errno;
    }
    free(b.p);
    if (!step && rename(s->tmp, s->path) != 0) {
        step = "rename";
        e = errno;
    }
    if (step) {
        unlink(s->tmp);
        rc = wr_store_error_set(err, e == ENOSPC ? WR_STORE_EIO : WR_STORE_EUNAVAILABLE, NULL,
                                "cannot %s \"%s\": %s", step, s->tmp, strerror(e));
        wr_store_error_hint(err, "check that the directory of the state file is writable and "
                                 "the file system has room");
        return of_restore(s, rc);
    }
    /* the rename is durable once the directory is */
    dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        e = errno;
        if (dfd >= 0)
            close(dfd);
        /* the new state may or may not survive a crash: say so, keep it in memory (it is
         * what the file holds now) */
        return wr_store_error_set(err, WR_STORE_EIO, NULL, "cannot fsync the directory \"%s\": %s",
                                  s->dir, strerror(e));
    }
    close(dfd);
    return WR_STORE_OK;
}

/* ---- life ---------------------------------------------------------------------------- */

static void of_close(void *state);

static int
of_open(const wr_store_config_t *cfg, const wr_store_host_t *host, void **state,
        wr_store_error_t *err)
{
    of_store_t *s;
    struct stat st;
    char *slash;
    int rc;

    *state = NULL;
    if (!(s = calloc(1, sizeof(*s))))
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    s->host = host;
    s->lock_fd = -1;
    snprintf(s->pipeline, sizeof(s->pipeline), "%s", cfg->pipeline);
    if ((rc = of_path(cfg, s->path, sizeof(s->path), err)) != WR_STORE_OK) {
        free(s);
        return rc;
    }
    snprintf(s->tmp, sizeof(s->tmp), "%s.tmp", s->path);
    snprintf(s->lock, sizeof(s->lock), "%s.lock", s->path);
    snprintf(s->dir, sizeof(s->dir), "%s", s->path);
    slash = strrchr(s->dir, '/');
    if (slash == s->dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    if (stat(s->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = wr_store_error_set(err, WR_STORE_ECONFIG, "path",
                                "the directory of the state file, \"%s\", does not exist", s->dir);
        wr_store_error_hint(err, "create it, or set path to a file in an existing directory");
        free(s);
        return rc;
    }
    /* the lease: supervisor and drop; check takes none */
    if (strcmp(host->role, "check") != 0) {
        s->lock_fd = open(s->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (s->lock_fd < 0) {
            rc = wr_store_error_set(err, WR_STORE_EUNAVAILABLE, NULL, "cannot open \"%s\": %s",
                                    s->lock, strerror(errno));
            free(s);
            return rc;
        }
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;

            close(s->lock_fd);
            if (e == EWOULDBLOCK)
                rc = wr_store_error_set(err, WR_STORE_ELEASE, NULL,
                                        "pipeline \"%s\" is already running on this state store "
                                        "(another process holds the lock file \"%s\")",
                                        cfg->pipeline, s->lock);
            else
                rc = wr_store_error_set(err, WR_STORE_EUNAVAILABLE, NULL, "cannot lock \"%s\": %s",
                                        s->lock, strerror(e));
            free(s);
            return rc;
        }
        if (fstat(s->lock_fd, &st) != 0) {
            rc = wr_store_error_set(err, WR_STORE_EIO, NULL, "cannot stat \"%s\": %s", s->lock,
                                    strerror(errno));
            of_close(s);
            return rc;
        }
        s->lock_dev = st.st_dev;
        s->lock_ino = st.st_ino;
        unlink(s->tmp); /* left by a crash in the middle of a write */
    }
    if ((rc = of_load(s, err)) != WR_STORE_OK) {
        of_close(s);
        return rc;
    }
    wr_store_log(host, WR_STORE_LOG_INFO, "state file opened path=%s role=%s tables=%zu", s->path,
                 host->role, s->d.ntables);
    *state = s;
    return WR_STORE_OK;
}

static int
of_check(void *state, char *summary, size_t len, wr_store_error_t *err)
{
    of_store_t *s = state;

    if (access(s->dir, W_OK) != 0)
        return wr_store_error_set(err, WR_STORE_ECONFIG, "path",
                                  "the directory \"%s\" is not writable: %s", s->dir,
                                  strerror(errno));
    snprintf(summary, len, "file %s (%zu tables)", s->path, s->d.ntables);
    return WR_STORE_OK;
}

static int
of_check_lease(void *state, wr_store_error_t *err)
{
    return of_lease_ok(state, err);
}

static void
of_close(void *state)
{
    of_store_t *s = state;

    if (!s)
        return;
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the lock; the file stays (see of_lease_ok) */
    of_data_free(&s->d);
    free(s->out_tables);
    free(s);
}

/* Every call: a lost lease fails it before anything else. */
#define OF_BEGIN(s, err)                                                                           \
    do {                                                                                           \
        int rc_ = of_lease_ok((s), (err));                                                         \
        if (rc_ != WR_STORE_OK)                                                                    \
            return rc_;                                                                            \
    } while (0)

/* ---- progress ------------------------------------------------------------------------- */

static int
of_get_progress(void *state, wr_store_progress_t *out, bool *found, wr_store_error_t *err)
{
    of_store_t *s = state;

    OF_BEGIN(s, err);
    *found = s->d.has_progress;
    if (*found) {
        out->slot_name = s->d.slot;
        out->confirmed_flush = s->d.flush;
    }
    return WR_STORE_OK;
}

static int
of_set_progress(void *state, const wr_store_progress_t *p, wr_store_error_t *err)
{
    of_store_t *s = state;
    char *slot;

    OF_BEGIN(s, err);
    if (!(slot = of_strdup(p->slot_name)))
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    free(s->d.slot);
    s->d.slot = slot;
    s->d.flush = p->confirmed_flush;
    s->d.has_progress = true;
    return of_save(s, err);
}

/* ---- tables and phases ----------------------------------------------------------------- */

static int
of_add_table(void *state, const wr_store_table_t *in, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;

    OF_BEGIN(s, err);
    if (of_find_table(&s->d, in->relid))
        return WR_STORE_OK;
    if (!of_grow((void **)&s->d.tables, s->d.ntables, sizeof(*s->d.tables)))
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    t = &s->d.tables[s->d.ntables++];
    memset(t, 0, sizeof(*t));
    t->relid = in->relid;
    t->phase = in->phase;
    t->lsn = in->lsn;
    t->attempts = in->attempts;
    t->updated_at = in->updated_at_ms;
    t->schema = of_strdup(in->schema);
    t->name = of_strdup(in->name);
    t->kind = of_strdup(in->err_kind);
    t->msg = of_strdup(in->err_msg);
    t->hint = of_strdup(in->err_hint);
    if (!t->schema || !t->name || !t->kind || !t->msg || !t->hint) {
        of_table_free(t);
        s->d.ntables--;
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    }
    return of_save(s, err);
}

static void
of_table_out(const of_table_t *t, wr_store_table_t *out)
{
    out->relid = t->relid;
    out->schema = t->schema;
    out->name = t->name;
    out->phase = t->phase;
    out->lsn = t->lsn;
    out->attempts = t->attempts;
    out->err_kind = t->kind;
    out->err_msg = t->msg;
    out->err_hint = t->hint;
    out->updated_at_ms = t->updated_at;
}

static int
of_get_table(void *state, uint32_t relid, wr_store_table_t *out, bool *found, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;

    OF_BEGIN(s, err);
    t = of_find_table(&s->d, relid);
    *found = t != NULL;
    if (t)
        of_table_out(t, out);
    return WR_STORE_OK;
}

static int
of_list_tables(void *state, const wr_store_table_t **tables, size_t *n, wr_store_error_t *err)
{
    of_store_t *s = state;
    wr_store_table_t *out;

    OF_BEGIN(s, err);
    if (!(out = calloc(s->d.ntables ? s->d.ntables : 1, sizeof(*out))))
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < s->d.ntables; i++)
        of_table_out(&s->d.tables[i], &out[i]);
    free(s->out_tables);
    s->out_tables = out;
    *tables = out;
    *n = s->d.ntables;
    return WR_STORE_OK;
}

static int
of_set_phase(void *state, const wr_store_phase_change_t *c, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;
    of_hist_t *h;
    char *kind, *msg, *hint;

    OF_BEGIN(s, err);
    if (!(t = of_find_table(&s->d, c->relid)))
        return wr_store_error_set(err, WR_STORE_ENOTFOUND, NULL, "no table %" PRIu32, c->relid);
    kind = of_strdup(c->err_kind);
    msg = of_strdup(c->err_msg);
    hint = of_strdup(c->err_hint);
    if (!kind || !msg || !hint || !of_grow((void **)&t->hist, t->nhist, sizeof(*t->hist))) {
        free(kind);
        free(msg);
        free(hint);
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    }
    /* the current phase goes on the history (its strings move there) */
    h = &t->hist[t->nhist++];
    h->phase = t->phase;
    h->lsn = t->lsn;
    h->kind = t->kind;
    h->msg = t->msg;
    h->hint = t->hint;
    t->phase = c->phase;
    t->lsn = c->lsn;
    t->kind = kind;
    t->msg = msg;
    t->hint = hint;
    t->updated_at = c->at_ms;
    return of_save(s, err);
}

static int
of_rollback_phase(void *state, uint32_t relid, int64_t at_ms, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;
    of_hist_t *h;

    OF_BEGIN(s, err);
    t = of_find_table(&s->d, relid);
    if (!t || t->nhist == 0)
        return wr_store_error_set(err, WR_STORE_ENOTFOUND, NULL,
                                  "no earlier phase of table %" PRIu32, relid);
    h = &t->hist[--t->nhist];
    free(t->kind);
    free(t->msg);
    free(t->hint);
    t->phase = h->phase;
    t->lsn = h->lsn;
    t->kind = h->kind;
    t->msg = h->msg;
    t->hint = h->hint;
    t->updated_at = at_ms;
    return of_save(s, err);
}

static int
of_history_len(void *state, uint32_t relid, size_t *n, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;

    OF_BEGIN(s, err);
    t = of_find_table(&s->d, relid);
    *n = t ? t->nhist : 0;
    return WR_STORE_OK;
}

static int
of_set_attempts(void *state, uint32_t relid, uint32_t attempts, int64_t at_ms,
                wr_store_error_t *err)
{
    of_store_t *s = state;
    of_table_t *t;

    OF_BEGIN(s, err);
    if (!(t = of_find_table(&s->d, relid)))
        return wr_store_error_set(err, WR_STORE_ENOTFOUND, NULL, "no table %" PRIu32, relid);
    t->attempts = attempts;
    t->updated_at = at_ms;
    return of_save(s, err);
}

/* ---- schemas --------------------------------------------------------------------------- */

static int
of_put_schema(void *state, const wr_store_schema_t *in, uint64_t lsn, wr_store_error_t *err)
{
    of_store_t *s = state;
    of_schema_t sc;
    size_t i;

    OF_BEGIN(s, err);
    memset(&sc, 0, sizeof(sc));
    sc.relid = in->relid;
    sc.lsn = lsn;
    sc.replident = in->replica_identity ? in->replica_identity : 'd';
    sc.schema = of_strdup(in->schema);
    sc.name = of_strdup(in->name);
    if (in->ncolumns > 0 && !(sc.cols = calloc(in->ncolumns, sizeof(*sc.cols)))) {
        of_schema_free(&sc);
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    }
    for (uint16_t j = 0; j < in->ncolumns; j++) {
        sc.cols[j] = in->columns[j];
        sc.cols[j].name = of_strdup(in->columns[j].name);
        sc.ncols = (uint16_t)(j + 1);
        if (!sc.cols[j].name)
            break;
    }
    if (!sc.schema || !sc.name || sc.ncols != in->ncolumns ||
        (sc.ncols > 0 && !sc.cols[sc.ncols - 1].name)) {
        of_schema_free(&sc);
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    }
    /* the same (relid, lsn) is replaced */
    for (i = 0; i < s->d.nschemas; i++)
        if (s->d.schemas[i].relid == sc.relid && s->d.schemas[i].lsn == lsn)
            break;
    if (i < s->d.nschemas) {
        of_schema_free(&s->d.schemas[i]);
    } else {
        if (!of_grow((void **)&s->d.schemas, s->d.nschemas, sizeof(*s->d.schemas))) {
            of_schema_free(&sc);
            return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
        }
        s->d.nschemas++;
    }
    s->d.schemas[i] = sc;
    return of_save(s, err);
}

static int
of_get_schema(void *state, uint32_t relid, uint64_t at, const wr_store_schema_t **out,
              uint64_t *version_lsn, wr_store_error_t *err)
{
    of_store_t *s = state;
    const of_schema_t *best = NULL;

    OF_BEGIN(s, err);
    *out = NULL;
    for (size_t i = 0; i < s->d.nschemas; i++) {
        const of_schema_t *v = &s->d.schemas[i];

        /* LSNs are unsigned 64-bit: compare them as such */
        if (v->relid == relid && v->lsn <= at && (!best || v->lsn > best->lsn))
            best = v;
    }
    if (!best)
        return WR_STORE_OK;
    s->out_schema.relid = best->relid;
    s->out_schema.schema = best->schema;
    s->out_schema.name = best->name;
    s->out_schema.replica_identity = best->replident;
    s->out_schema.ncolumns = best->ncols;
    s->out_schema.columns = best->cols;
    *out = &s->out_schema;
    *version_lsn = best->lsn;
    return WR_STORE_OK;
}

/* ---- mappings ------------------------------------------------------------------------ */

static int
of_put_mapping(void *state, uint32_t relid, const char *dest_name, wr_store_error_t *err)
{
    of_store_t *s = state;
    char *copy;
    size_t i;

    OF_BEGIN(s, err);
    if (!(copy = of_strdup(dest_name)))
        return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
    for (i = 0; i < s->d.nmaps; i++)
        if (s->d.maps[i].relid == relid)
            break;
    if (i == s->d.nmaps) {
        if (!of_grow((void **)&s->d.maps, s->d.nmaps, sizeof(*s->d.maps))) {
            free(copy);
            return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
        }
        s->d.maps[s->d.nmaps++].dest = NULL;
    }
    free(s->d.maps[i].dest);
    s->d.maps[i].relid = relid;
    s->d.maps[i].dest = copy;
    return of_save(s, err);
}

static int
of_get_mapping(void *state, uint32_t relid, const char **dest_name, wr_store_error_t *err)
{
    of_store_t *s = state;

    OF_BEGIN(s, err);
    *dest_name = NULL;
    for (size_t i = 0; i < s->d.nmaps; i++)
        if (s->d.maps[i].relid == relid)
            *dest_name = s->d.maps[i].dest;
    return WR_STORE_OK;
}

/* ---- flags ----------------------------------------------------------------------------- */

static int
of_get_flag(void *state, const char *name, int64_t *value, bool *found, wr_store_error_t *err)
{
    of_store_t *s = state;

    OF_BEGIN(s, err);
    *value = 0;
    *found = false;
    for (size_t i = 0; i < s->d.nflags; i++) {
        if (strcmp(s->d.flags[i].name, name) == 0) {
            *value = s->d.flags[i].value;
            *found = true;
        }
    }
    return WR_STORE_OK;
}

static int
of_set_flag(void *state, const char *name, int64_t value, int64_t at_ms, wr_store_error_t *err)
{
    of_store_t *s = state;
    size_t i;

    OF_BEGIN(s, err);
    for (i = 0; i < s->d.nflags; i++)
        if (strcmp(s->d.flags[i].name, name) == 0)
            break;
    if (i == s->d.nflags) {
        char *copy = of_strdup(name);

        if (!copy || !of_grow((void **)&s->d.flags, s->d.nflags, sizeof(*s->d.flags))) {
            free(copy);
            return wr_store_error_set(err, WR_STORE_ENOMEM, NULL, "out of memory");
        }
        s->d.flags[s->d.nflags++].name = copy;
    }
    s->d.flags[i].value = value;
    s->d.flags[i].updated_at = at_ms;
    return of_save(s, err);
}

/* ---- cleanup --------------------------------------------------------------------------- */

static int
of_remove_table(void *state, uint32_t relid, wr_store_error_t *err)
{
    of_store_t *s = state;
    size_t i, k;
    bool any = false;

    OF_BEGIN(s, err);
    for (i = 0, k = 0; i < s->d.ntables; i++) {
        if (s->d.tables[i].relid == relid) {
            of_table_free(&s->d.tables[i]);
            any = true;
        } else {
            s->d.tables[k++] = s->d.tables[i];
        }
    }
    s->d.ntables = k;
    for (i = 0, k = 0; i < s->d.nschemas; i++) {
        if (s->d.schemas[i].relid == relid) {
            of_schema_free(&s->d.schemas[i]);
            any = true;
        } else {
            s->d.schemas[k++] = s->d.schemas[i];
        }
    }
    s->d.nschemas = k;
    for (i = 0, k = 0; i < s->d.nmaps; i++) {
        if (s->d.maps[i].relid == relid) {
            free(s->d.maps[i].dest);
            any = true;
        } else {
            s->d.maps[k++] = s->d.maps[i];
        }
    }
    s->d.nmaps = k;
    return any ? of_save(s, err) : WR_STORE_OK;
}

static int
of_drop(void *state, bool *dropped, wr_store_error_t *err)
{
    of_store_t *s = state;
    int dfd;

    OF_BEGIN(s, err);
    *dropped = false;
    if (unlink(s->path) == 0)
        *dropped = true;
    else if (errno != ENOENT)
        return wr_store_error_set(err, WR_STORE_EIO, NULL, "cannot remove \"%s\": %s", s->path,
                                  strerror(errno));
    unlink(s->tmp);
    dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    of_data_free(&s->d);
    return WR_STORE_OK;
}

/* ---- the table walrelay loads ---------------------------------------------------------- */

static const wr_store_ops_t of_ops = {
    .abi_version = WR_STORE_ABI_VERSION,
    .struct_size = sizeof(wr_store_ops_t),
    .name = "onefile",
    .capabilities = WR_STORE_CAP_LEASE,
    .validate = of_validate,
    .open = of_open,
    .check = of_check,
    .check_lease = of_check_lease,
    .close = of_close,
    .get_progress = of_get_progress,
    .set_progress = of_set_progress,
    .add_table = of_add_table,
    .get_table = of_get_table,
    .list_tables = of_list_tables,
    .set_phase = of_set_phase,
    .rollback_phase = of_rollback_phase,
    .history_len = of_history_len,
    .set_attempts = of_set_attempts,
    .put_schema = of_put_schema,
    .get_schema = of_get_schema,
    .put_mapping = of_put_mapping,
    .get_mapping = of_get_mapping,
    .get_flag = of_get_flag,
    .set_flag = of_set_flag,
    .remove_table = of_remove_table,
    .drop = of_drop,
};

__attribute__((visibility("default"))) const wr_store_ops_t *
walrelay_store_v1(void)
{
    return &of_ops;
}
