/*
 * audit.c - an example walrelay destination plugin: every copied row and every change
 * becomes one row of an audit log in a SQLite file, exactly once.
 *
 * NOTES: built out of tree from the installed walrelay/destination.h alone (see
 * README.md). walrelay loads it in every process of a pipeline (the apply process and
 * each table-copy process), so several processes open the same file at once: WAL mode,
 * a busy timeout, and one short write transaction per flush. Nothing is written to the
 * file between flushes: rows and events are kept in memory (walrelay bounds how much
 * arrives between two flushes: [batch] max_bytes, [sync] copy_batch_rows) and written at
 * flush() together with the stream's resume key, in ONE SQLite transaction. So the
 * write lock is never held while walrelay waits on the network, and after a crash the
 * file holds either the whole batch and its key or neither: exactly once.
 *
 *   audit_log   one row per copied row (op "copy") or change (insert, update, delete,
 *               truncate); a partial UNIQUE index on (commit_lsn, ordinal) of changes
 *               refuses a change stored twice (it would be a bug in walrelay)
 *   audit_keys  stream -> last key stored (the resume key walrelay reads back)
 *
 * A re-copy of a table (walrelay resync, or a schema change that needs one) replaces that
 * table's "copy" rows: truncate_table() deletes them in the transaction of the first
 * flush after it. The history of changes is never deleted.
 */
#include <walrelay/destination.h>

#include <sqlite3.h>

#include <inttypes.h>
#include <limits.h>
#include <time.h>

#define AUDIT_DEFAULT_PATH       "audit.db"
#define AUDIT_DEFAULT_BUSY_MS    30000
#define AUDIT_MAX_BUFFERED_BYTES (256u * 1024u * 1024u)

/* One row to write at the next flush. */
typedef struct audit_rec_s {
    uint64_t commit_lsn;
    uint32_t ordinal;
    uint32_t xid;
    int64_t commit_time_us;
    const char *op;  /* static string */
    char *table;     /* "schema.name" */
    char *row;       /* JSON object or NULL */
    char *old_row;   /* JSON object or NULL */
    char *unchanged; /* JSON array or NULL */
} audit_rec_t;

typedef struct audit_s {
    sqlite3 *db;
    const wr_dest_host_t *host;
    char path[PATH_MAX];
    audit_rec_t *recs;
    size_t nrecs, cap;
    size_t bytes;
    char **truncated; /* tables whose copy rows go at the next flush */
    size_t ntrunc;
} audit_t;

/* ---- a small growing string for JSON ------------------------------------------------- */

typedef struct sbuf_s {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf_t;

static void
sb_putn(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
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

static void
sb_puts(sbuf_t *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

/* A JSON string: quotes, backslash and control characters escaped; UTF-8 passes. */
static void
sb_json_str(sbuf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    sb_putn(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_putn(b, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sb_putn(b, e, 6);
        } else {
            sb_putn(b, (const char *)&c, 1);
        }
    }
    sb_putn(b, "\"", 1);
}

/* Row -> {"col": "text" | null, ...}; unchanged TOAST columns are left out and listed in
 * *unchanged as a JSON array (NULL if none). Returns the object, or NULL on OOM. */
static char *
audit_row_json(const wr_dest_relation_t *rel, const wr_dest_row_t *row, char **unchanged)
{
    sbuf_t b = {0}, u = {0};
    bool first = true, ufirst = true;

    sb_puts(&b, "{");
    for (uint16_t i = 0; i < row->ncols && i < rel->ncolumns; i++) {
        const wr_dest_value_t *v = &row->values[i];

        if (v->kind == WR_DEST_VAL_UNCHANGED) {
            sb_puts(&u, ufirst ? "[" : ",");
            sb_json_str(&u, rel->columns[i].name, strlen(rel->columns[i].name));
            ufirst = false;
            continue;
        }
        sb_puts(&b, first ? "" : ",");
        first = false;
        sb_json_str(&b, rel->columns[i].name, strlen(rel->columns[i].name));
        sb_puts(&b, ":");
        if (v->kind == WR_DEST_VAL_TEXT)
            sb_json_str(&b, v->data, v->len);
        else
            sb_puts(&b, "null");
    }
    sb_puts(&b, "}");
    if (!ufirst)
        sb_puts(&u, "]");
    if (b.oom || u.oom) {
        free(b.p);
        free(u.p);
        return NULL;
    }
    if (unchanged)
        *unchanged = u.p;
    else
        free(u.p);
    return b.p;
}

static char *
audit_table_name(const wr_dest_relation_t *rel)
{
    size_t n = strlen(rel->schema) + strlen(rel->name) + 2;
    char *s = malloc(n);

    if (s)
        snprintf(s, n, "%s.%s", rel->schema, rel->name);
    return s;
}

/* ---- SQLite helpers -------------------------------------------------------------------- */

static int
audit_sqlite_error(audit_t *a, wr_dest_error_t *err, const char *what)
{
    int rc = sqlite3_errcode(a->db);
    int code = (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? WR_DEST_ETRANSIENT : WR_DEST_EIO;

    return wr_dest_error_set(err, code, NULL, "audit log \"%s\": %s: %s", a->path, what,
                             sqlite3_errmsg(a->db));
}

static int
audit_exec(audit_t *a, const char *sql, wr_dest_error_t *err)
{
    if (sqlite3_exec(a->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return audit_sqlite_error(a, err, sql);
    return WR_DEST_OK;
}

static void
audit_rec_free(audit_rec_t *r)
{
    free(r->table);
    free(r->row);
    free(r->old_row);
    free(r->unchanged);
}

static void
audit_drop_pending(audit_t *a)
{
    for (size_t i = 0; i < a->nrecs; i++)
        audit_rec_free(&a->recs[i]);
    a->nrecs = 0;
    a->bytes = 0;
    for (size_t i = 0; i < a->ntrunc; i++)
        free(a->truncated[i]);
    a->ntrunc = 0;
}

/* Appends a record (takes ownership of its strings, also on failure). */
static int
audit_push(audit_t *a, audit_rec_t *r, wr_dest_error_t *err)
{
    size_t sz = (r->table ? strlen(r->table) : 0) + (r->row ? strlen(r->row) : 0) +
                (r->old_row ? strlen(r->old_row) : 0) + sizeof(*r);

    if (a->bytes + sz > AUDIT_MAX_BUFFERED_BYTES) {
        audit_rec_free(r);
        return wr_dest_error_set(err, WR_DEST_EIO, NULL,
                                 "audit log \"%s\": more than %u MiB arrived without a flush",
                                 a->path, AUDIT_MAX_BUFFERED_BYTES >> 20);
    }
    if (a->nrecs == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        audit_rec_t *p = realloc(a->recs, cap * sizeof(*p));

        if (!p) {
            audit_rec_free(r);
            return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
        }
        a->recs = p;
        a->cap = cap;
    }
    a->recs[a->nrecs++] = *r;
    a->bytes += sz;
    return WR_DEST_OK;
}

/* ---- the operations ---------------------------------------------------------------------- */

static int
audit_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    for (size_t i = 0; i < cfg->nitems; i++) {
        const wr_dest_kv_t *kv = &cfg->items[i];

        if (strcmp(kv->key, "path") == 0) {
            if (kv->value[0] == '\0')
                return wr_dest_error_set(err, WR_DEST_ECONFIG, "path",
                                         "path must name a file (absolute or relative to the "
                                         "pipeline directory)");
        } else if (strcmp(kv->key, "busy_timeout_ms") == 0) {
            char *end;
            long v = strtol(kv->value, &end, 10);

            if (*kv->value == '\0' || *end != '\0' || v < 0 || v > 3600000)
                return wr_dest_error_set(err, WR_DEST_ECONFIG, "busy_timeout_ms",
                                         "invalid value \"%s\": expected milliseconds from 0 to "
                                         "3600000",
                                         kv->value);
        } else {
            wr_dest_error_set(err, WR_DEST_ECONFIG, kv->key, "unknown key \"%s\"", kv->key);
            wr_dest_error_hint(err, "the audit destination knows: path, busy_timeout_ms");
            return WR_DEST_ECONFIG;
        }
    }
    return WR_DEST_OK;
}

static int
audit_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state,
           wr_dest_error_t *err)
{
    const char *path = wr_dest_config_get(cfg, "path");
    const char *busy = wr_dest_config_get(cfg, "busy_timeout_ms");
    audit_t *a;
    int n, rc;

    if ((rc = audit_validate(cfg, err)) != WR_DEST_OK)
        return rc;
    if (!path)
        path = AUDIT_DEFAULT_PATH;
    if (!(a = calloc(1, sizeof(*a))))
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    a->host = host;
    n = path[0] == '/' ? snprintf(a->path, sizeof(a->path), "%s", path)
                       : snprintf(a->path, sizeof(a->path), "%s/%s", cfg->dir, path);
    if (n < 0 || (size_t)n >= sizeof(a->path)) {
        free(a);
        return wr_dest_error_set(err, WR_DEST_ECONFIG, "path", "path is too long");
    }
    if (sqlite3_open_v2(a->path, &a->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        rc = wr_dest_error_set(err, WR_DEST_EIO, "path", "cannot open the audit log \"%s\": %s",
                               a->path, a->db ? sqlite3_errmsg(a->db) : "out of memory");
        wr_dest_error_hint(err, "check that the directory exists and is writable");
        sqlite3_close(a->db);
        free(a);
        return rc;
    }
    sqlite3_busy_timeout(a->db, busy ? atoi(busy) : AUDIT_DEFAULT_BUSY_MS);
    /* several processes create the tables at once: IF NOT EXISTS, under the busy timeout */
    if ((rc = audit_exec(a, "PRAGMA journal_mode = WAL", err)) != WR_DEST_OK ||
        (rc = audit_exec(a,
                         "CREATE TABLE IF NOT EXISTS audit_log ("
                         " id INTEGER PRIMARY KEY,"
                         " stream TEXT NOT NULL,"
                         " commit_lsn INTEGER NOT NULL,"
                         " ordinal INTEGER NOT NULL,"
                         " xid INTEGER,"
                         " commit_time TEXT,"
                         " op TEXT NOT NULL,"
                         " table_name TEXT NOT NULL,"
                         " row TEXT,"
                         " old_row TEXT,"
                         " unchanged_toast TEXT);"
                         "CREATE UNIQUE INDEX IF NOT EXISTS audit_log_change_key"
                         " ON audit_log (commit_lsn, ordinal) WHERE op <> 'copy';"
                         "CREATE INDEX IF NOT EXISTS audit_log_table ON audit_log (table_name);"
                         "CREATE TABLE IF NOT EXISTS audit_keys ("
                         " stream TEXT PRIMARY KEY,"
                         " commit_lsn INTEGER NOT NULL,"
                         " ordinal INTEGER NOT NULL)",
                         err)) != WR_DEST_OK) {
        sqlite3_close(a->db);
        free(a);
        return rc;
    }
    wr_dest_log(host, WR_DEST_LOG_DEBUG, "audit log opened path=%s role=%s", a->path,
                host ? host->role : "?");
    *state = a;
    return WR_DEST_OK;
}

static int
audit_check(void *state, wr_dest_error_t *err)
{
    audit_t *a = state;
    int rc;

    /* can we take the write lock? */
    if ((rc = audit_exec(a, "BEGIN IMMEDIATE", err)) != WR_DEST_OK)
        return rc;
    return audit_exec(a, "ROLLBACK", err);
}

static int
audit_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    audit_t *a = state;
    char *name = audit_table_name(rel);
    char **p;

    if (!name || !(p = realloc(a->truncated, (a->ntrunc + 1) * sizeof(*p)))) {
        free(name);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    }
    a->truncated = p;
    a->truncated[a->ntrunc++] = name;
    return WR_DEST_OK;
}

static int
audit_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                       size_t nrows, wr_dest_error_t *err)
{
    audit_t *a = state;

    for (size_t i = 0; i < nrows; i++) {
        audit_rec_t r = {0};
        int rc;

        r.op = "copy";
        r.table = audit_table_name(rel);
        r.row = audit_row_json(rel, &rows[i], NULL);
        if (!r.table || !r.row) {
            audit_rec_free(&r);
            return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
        }
        if ((rc = audit_push(a, &r, err)) != WR_DEST_OK)
            return rc;
    }
    return WR_DEST_OK;
}

static int
audit_write_events(void *state, const wr_dest_event_t *evs, size_t n, wr_dest_error_t *err)
{
    audit_t *a = state;

    for (size_t i = 0; i < n; i++) {
        const wr_dest_event_t *ev = &evs[i];
        audit_rec_t r = {0};
        bool oom = false;
        int rc;

        switch (ev->kind) {
        case WR_DEST_EV_BEGIN:
        case WR_DEST_EV_COMMIT:
            continue; /* the key of each change says where it belongs */
        case WR_DEST_EV_RELATION:
            wr_dest_log(a->host, WR_DEST_LOG_DEBUG, "relation table=%s.%s columns=%u",
                        ev->relation->schema, ev->relation->name, (unsigned)ev->relation->ncolumns);
            continue;
        case WR_DEST_EV_INSERT:
            r.op = "insert";
            oom = !(r.row = audit_row_json(ev->relation, ev->new_row, &r.unchanged));
            break;
        case WR_DEST_EV_UPDATE:
            r.op = "update";
            oom = !(r.row = audit_row_json(ev->relation, ev->new_row, &r.unchanged));
            if (ev->old_row && !(r.old_row = audit_row_json(ev->relation, ev->old_row, NULL)))
                oom = true;
            break;
        case WR_DEST_EV_DELETE:
            r.op = "delete";
            oom = !(r.old_row = audit_row_json(ev->relation, ev->old_row, NULL));
            break;
        case WR_DEST_EV_TRUNCATE:
            r.op = ev->truncate_flags & WR_DEST_TRUNCATE_CASCADE ? "truncate cascade" : "truncate";
            break;
        default:
            return wr_dest_error_set(err, WR_DEST_EIO, NULL, "event of unknown kind %d", ev->kind);
        }
        r.commit_lsn = ev->key.commit_lsn;
        r.ordinal = ev->key.ordinal;
        r.xid = ev->xid;
        r.commit_time_us = ev->commit_time_us;
        r.table = audit_table_name(ev->relation);
        if (!r.table || oom) {
            audit_rec_free(&r);
            return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
        }
        if ((rc = audit_push(a, &r, err)) != WR_DEST_OK)
            return rc;
    }
    return WR_DEST_OK;
}

/* RFC 3339 UTC with microseconds. */
static void
audit_time_text(int64_t us, char *buf, size_t len)
{
    time_t s = (time_t)(us / 1000000);
    long frac = (long)(us % 1000000);
    struct tm tm;
    char date[32];

    if (frac < 0) {
        frac += 1000000;
        s -= 1;
    }
    gmtime_r(&s, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%06ldZ", date, frac);
}

static int
audit_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Writes the pending truncates and records and, with key, the stream's key: one
 * transaction. */
static int
audit_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    audit_t *a = state;
    sqlite3_stmt *ins = NULL, *del = NULL, *k = NULL;
    int rc;

    if (a->nrecs == 0 && a->ntrunc == 0 && !key)
        return WR_DEST_OK;
    if ((rc = audit_exec(a, "BEGIN IMMEDIATE", err)) != WR_DEST_OK)
        return rc;
    if (sqlite3_prepare_v2(a->db,
                           "INSERT INTO audit_log (stream, commit_lsn, ordinal, xid, commit_time, "
                           "op, table_name, row, old_row, unchanged_toast) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "DELETE FROM audit_log WHERE op = 'copy' AND table_name = ?", -1,
                           &del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db,
                           "INSERT INTO audit_keys (stream, commit_lsn, ordinal) VALUES (?, ?, ?) "
                           "ON CONFLICT (stream) DO UPDATE SET commit_lsn = excluded.commit_lsn, "
                           "ordinal = excluded.ordinal",
                           -1, &k, NULL) != SQLITE_OK) {
        rc = audit_sqlite_error(a, err, "preparing the flush");
        goto fail;
    }
    for (size_t i = 0; i < a->ntrunc; i++) {
        sqlite3_bind_text(del, 1, a->truncated[i], -1, SQLITE_STATIC);
        if (sqlite3_step(del) != SQLITE_DONE) {
            rc = audit_sqlite_error(a, err, "deleting the rows of an earlier copy");
            goto fail;
        }
        sqlite3_reset(del);
    }
    for (size_t i = 0; i < a->nrecs; i++) {
        const audit_rec_t *r = &a->recs[i];
        char when[64];
        bool is_copy = strcmp(r->op, "copy") == 0;

        sqlite3_bind_text(ins, 1, stream, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 2, (sqlite3_int64)r->commit_lsn);
        sqlite3_bind_int64(ins, 3, (sqlite3_int64)r->ordinal);
        if (is_copy) {
            sqlite3_bind_null(ins, 4);
            sqlite3_bind_null(ins, 5);
        } else {
            audit_time_text(r->commit_time_us, when, sizeof(when));
            sqlite3_bind_int64(ins, 4, (sqlite3_int64)r->xid);
            sqlite3_bind_text(ins, 5, when, -1, SQLITE_TRANSIENT);
        }
        sqlite3_bind_text(ins, 6, r->op, -1, SQLITE_STATIC);
        /* 7..10: table, row (new values; NULL for delete and truncate), old row, the
         * unchanged TOAST columns (a JSON array, NULL if none) */
        sqlite3_bind_text(ins, 7, r->table, -1, SQLITE_STATIC);
        audit_bind_text(ins, 8, r->row);
        audit_bind_text(ins, 9, r->old_row);
        audit_bind_text(ins, 10, r->unchanged);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            char lsn[32];

            rc = audit_sqlite_error(a, err, "writing a change");
            if (sqlite3_extended_errcode(a->db) == SQLITE_CONSTRAINT_UNIQUE)
                wr_dest_error_set(err, rc, NULL,
                                  "audit log \"%s\": change (%s, %u) of \"%s\" is stored already",
                                  a->path, wr_dest_lsn_format(r->commit_lsn, lsn, sizeof(lsn)),
                                  (unsigned)r->ordinal, r->table);
            goto fail;
        }
        sqlite3_reset(ins);
        sqlite3_clear_bindings(ins);
    }
    if (key) {
        sqlite3_bind_text(k, 1, stream, -1, SQLITE_STATIC);
        sqlite3_bind_int64(k, 2, (sqlite3_int64)key->commit_lsn);
        sqlite3_bind_int64(k, 3, (sqlite3_int64)key->ordinal);
        if (sqlite3_step(k) != SQLITE_DONE) {
            rc = audit_sqlite_error(a, err, "storing the resume key");
            goto fail;
        }
    }
    sqlite3_finalize(ins);
    sqlite3_finalize(del);
    sqlite3_finalize(k);
    if ((rc = audit_exec(a, "COMMIT", err)) != WR_DEST_OK) {
        (void)sqlite3_exec(a->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    audit_drop_pending(a);
    return WR_DEST_OK;

fail:
    sqlite3_finalize(ins);
    sqlite3_finalize(del);
    sqlite3_finalize(k);
    (void)sqlite3_exec(a->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int
audit_last_key(void *state, const char *stream, wr_dest_key_t *key, bool *found,
               wr_dest_error_t *err)
{
    audit_t *a = state;
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(a->db, "SELECT commit_lsn, ordinal FROM audit_keys WHERE stream = ?", -1,
                           &st, NULL) != SQLITE_OK)
        return audit_sqlite_error(a, err, "reading the resume key");
    sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    *found = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW) {
        key->commit_lsn = (uint64_t)sqlite3_column_int64(st, 0);
        key->ordinal = (uint32_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return audit_sqlite_error(a, err, "reading the resume key");
    return WR_DEST_OK;
}

static int
audit_forget_stream(void *state, const char *stream, wr_dest_error_t *err)
{
    audit_t *a = state;
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(a->db, "DELETE FROM audit_keys WHERE stream = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return audit_sqlite_error(a, err, "forgetting a resume key");
    sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return audit_sqlite_error(a, err, "forgetting a resume key");
    return WR_DEST_OK;
}

static int
audit_discard(void *state, wr_dest_error_t *err)
{
    (void)err;
    audit_drop_pending(state); /* nothing reached the file since the last flush */
    return WR_DEST_OK;
}

static void
audit_close(void *state)
{
    audit_t *a = state;

    if (!a)
        return;
    audit_drop_pending(a);
    free(a->recs);
    free(a->truncated);
    sqlite3_close(a->db);
    free(a);
}

static const wr_dest_ops_t audit_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "audit",
    .capabilities = WR_DEST_CAP_TRANSACTIONAL | WR_DEST_CAP_DISCARD | WR_DEST_CAP_SCHEMA_CHANGES,
    .validate = audit_validate,
    .open = audit_open,
    .check = audit_check,
    .truncate_table = audit_truncate_table,
    .write_table_rows = audit_write_table_rows,
    .write_events = audit_write_events,
    .flush = audit_flush,
    .last_key = audit_last_key,
    .forget_stream = audit_forget_stream,
    .discard = audit_discard,
    .close = audit_close,
};

/* The one exported symbol (the library is built with hidden visibility). */
__attribute__((visibility("default"))) const wr_dest_ops_t *
walrelay_destination_v1(void)
{
    return &audit_ops;
}
