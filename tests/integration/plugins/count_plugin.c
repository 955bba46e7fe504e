/*
 * count_plugin.c - a minimal destination plugin for the loader tests
 * (tests/integration/test_plugin_loader.py): stores nothing, and appends one line per
 * call it receives to the file named by [destination] out, so the test can count.
 *
 * NOTES: built by the test with cc -shared -fPIC -I<repo>/include, from the public
 * header alone. Lines (one write(2) each, O_APPEND: the apply and the copy processes
 * share the file):
 *   open ROLE | relation ROLE DEST col:type_name,... | row DEST FIRSTVALUE |
 *   insert|update|delete ROLE DEST FIRSTVALUE | truncate ROLE DEST | begin|commit ROLE |
 *   flush ROLE STREAM | check
 * Keys: out (required), fail_check = yes (check() fails). Any other key is refused.
 * Not transactional: walrelay delivers at least once.
 */
#include <walrelay/destination.h>

#include <fcntl.h>
#include <unistd.h>

typedef struct st_s {
    int fd;
    char role[16];
    bool fail_check;
} st_t;

static void put(st_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put(st_t *s, const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    if (write(s->fd, line, (size_t)n) != n)
        return;
}

static void
first_value(const wr_dest_row_t *r, char *buf, size_t len)
{
    if (r == NULL || r->ncols == 0 || r->values[0].kind != WR_DEST_VAL_TEXT ||
        wr_dest_value_cstr(&r->values[0], buf, len) < 0)
        snprintf(buf, len, "-");
}

static int
cp_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    for (size_t i = 0; i < cfg->nitems; i++) {
        const char *k = cfg->items[i].key;
        if (strcmp(k, "out") != 0 && strcmp(k, "fail_check") != 0) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, k, "unknown key \"%s\"", k);
            wr_dest_error_hint(err, "the count plugin knows the keys out and fail_check");
            return WR_DEST_ECONFIG;
        }
    }
    if (wr_dest_config_get(cfg, "out") == NULL) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "out", "missing key \"out\"");
        wr_dest_error_hint(err, "add out = FILE below [destination]");
        return WR_DEST_ECONFIG;
    }
    return WR_DEST_OK;
}

static int
cp_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state, wr_dest_error_t *err)
{
    const char *out = wr_dest_config_get(cfg, "out");
    const char *fc = wr_dest_config_get(cfg, "fail_check");
    st_t *s = calloc(1, sizeof(*s));
    char path[4096];

    if (s == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    if (out[0] == '/')
        snprintf(path, sizeof(path), "%s", out);
    else
        snprintf(path, sizeof(path), "%s/%s", cfg->dir, out);
    s->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        free(s);
        return wr_dest_error_set(err, WR_DEST_EIO, NULL, "cannot open \"%s\": %s", path,
                                 strerror(errno));
    }
    snprintf(s->role, sizeof(s->role), "%s", host->role);
    s->fail_check = fc != NULL && strcmp(fc, "yes") == 0;
    put(s, "open %s", s->role);
    wr_dest_log(host, WR_DEST_LOG_INFO, "count plugin opened role=%s", host->role);
    *state = s;
    return WR_DEST_OK;
}

static int
cp_check(void *state, wr_dest_error_t *err)
{
    st_t *s = state;

    put(s, "check");
    if (s->fail_check) {
        wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "the endpoint does not answer");
        wr_dest_error_hint(err, "remove fail_check");
        return WR_DEST_ETRANSIENT;
    }
    return WR_DEST_OK;
}

static int
cp_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    (void)err;
    put(state, "truncate_table %s", rel->dest_name);
    return WR_DEST_OK;
}

static int
cp_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                    size_t nrows, wr_dest_error_t *err)
{
    char v[256];

    (void)err;
    for (size_t i = 0; i < nrows; i++) {
        first_value(&rows[i], v, sizeof(v));
        put(state, "row %s %s", rel->dest_name, v);
    }
    return WR_DEST_OK;
}

static int
cp_write_events(void *state, const wr_dest_event_t *evs, size_t n, wr_dest_error_t *err)
{
    st_t *s = state;
    char v[256], cols[3000];

    (void)err;
    for (size_t i = 0; i < n; i++) {
        const wr_dest_event_t *e = &evs[i];

        switch (e->kind) {
        case WR_DEST_EV_BEGIN:
            put(s, "begin %s", s->role);
            break;
        case WR_DEST_EV_COMMIT:
            put(s, "commit %s", s->role);
            break;
        case WR_DEST_EV_RELATION: {
            size_t off = 0;
            cols[0] = '\0';
            for (uint16_t c = 0; c < e->relation->ncolumns && off < sizeof(cols); c++)
                off += (size_t)snprintf(cols + off, sizeof(cols) - off, "%s%s:%s", c ? "|" : "",
                                        e->relation->columns[c].name,
                                        e->relation->columns[c].type_name);
            put(s, "relation %s %s %s", s->role, e->relation->dest_name, cols);
            break;
        }
        case WR_DEST_EV_INSERT:
            first_value(e->new_row, v, sizeof(v));
            put(s, "insert %s %s %s", s->role, e->relation->dest_name, v);
            break;
        case WR_DEST_EV_UPDATE:
            first_value(e->new_row, v, sizeof(v));
            put(s, "update %s %s %s", s->role, e->relation->dest_name, v);
            break;
        case WR_DEST_EV_DELETE:
            first_value(e->old_row, v, sizeof(v));
            put(s, "delete %s %s %s", s->role, e->relation->dest_name, v);
            break;
        case WR_DEST_EV_TRUNCATE:
            put(s, "truncate %s %s", s->role, e->relation->dest_name);
            break;
        }
    }
    return WR_DEST_OK;
}

static int
cp_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    (void)key;
    (void)err;
    put(state, "flush %s %s", ((st_t *)state)->role, stream);
    return WR_DEST_OK;
}

static void
cp_close(void *state)
{
    st_t *s = state;

    close(s->fd);
    free(s);
}

static const wr_dest_ops_t cp_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "count",
    .capabilities = 0,
    .validate = cp_validate,
    .open = cp_open,
    .check = cp_check,
    .truncate_table = cp_truncate_table,
    .write_table_rows = cp_write_table_rows,
    .write_events = cp_write_events,
    .flush = cp_flush,
    .close = cp_close,
};

const wr_dest_ops_t *
walrelay_destination_v1(void)
{
    return &cp_ops;
}
