/*
 * state_abi.c - state stores built against the public ABI (walrelay/store.h,
 * wr_store_ops_t) as the in-tree interface (state.h, state_ops_t), and the loading of
 * [state] backend = plugin.
 *
 * NOTES: runs in the supervisor (the only writer: role "supervisor", for its whole life),
 * in `walrelay drop` (role "drop"), `walrelay check` (role "check") and `walrelay init`
 * (load only), and in the unit tests (the conformance suite of tests/unit/test_state.c).
 * Persists nothing itself. What it adds to the plugin's calls:
 *   - the argument checks and messages every store shares (state.c) come first, so a
 *     plugin never sees a NULL name, an invalid phase or a flag name out of range;
 *     error text is cut to the stored sizes, and walrelay gives the times (wall clock);
 *   - what the plugin returns is valid only until its next call: it is checked (a NULL
 *     name, a phase out of range, a count without records are errors, never a crash)
 *     and copied at once; tables are sorted by relid, schemas rebuilt as wr_schema_t;
 *   - WR_STORE_E* -> WR_E*: ENOTFOUND is the answer state.h defines (the shared "not in
 *     the state store" / "no earlier phase" messages, WR_EINVAL), ECONFIG and ELEASE are
 *     WR_ECONFIG (exit code 2), ENOMEM WR_ENOMEM, EINVAL WR_EINVAL, the rest WR_ESTATE
 *     "state store NAME: WHAT: MESSAGE";
 *   - the lease: a WR_STORE_ELEASE from any call after open fences the instance (every
 *     later call fails at once, without calling the plugin) and check_lease reports it;
 *     check_lease(probe) calls the plugin's check_lease, when it has one.
 * The host's log callback goes to walrelay's logger ("MESSAGE store=NAME"), one line,
 * conninfo-style passwords redacted.
 */
#include "state_abi.h"

#include "log.h"
#include "plugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)WR_STORE_PHASE_INIT == (int)PH_INIT &&
                   (int)WR_STORE_PHASE_DATASYNC == (int)PH_DATASYNC &&
                   (int)WR_STORE_PHASE_FINISHEDCOPY == (int)PH_FINISHEDCOPY &&
                   (int)WR_STORE_PHASE_SYNCWAIT == (int)PH_SYNCWAIT &&
                   (int)WR_STORE_PHASE_CATCHUP == (int)PH_CATCHUP &&
                   (int)WR_STORE_PHASE_SYNCDONE == (int)PH_SYNCDONE &&
                   (int)WR_STORE_PHASE_READY == (int)PH_READY &&
                   (int)WR_STORE_PHASE_ERRORED == (int)PH_ERRORED &&
                   WR_STORE_PHASE_COUNT == PH_COUNT,
               "the ABI's phase numbers are walrelay's");

/* ---- configuration errors --------------------------------------------------------------- */

static int abi_config_error(const wr_config_t *cfg, const char *key, int code, wr_err_t *err,
                            const char *fmt, ...) WR_PRINTF(5, 6);

/* "FILE:LINE: [state] KEY: message", LINE the key's (or the backend's, or the section's). */
static int
abi_config_error(const wr_config_t *cfg, const char *key, int code, wr_err_t *err, const char *fmt,
                 ...)
{
    const wr_cfg_item_t *it = key ? cfg_state_item(cfg, key) : NULL;
    const char *path = cfg->path ? cfg->path : "walrelay.conf";
    int line = it ? it->line : cfg->state_line;
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        wr_err_set(err, code, "%s:%d: [state] %s%s%s", path, line, key ? key : "", key ? ": " : "",
                   msg);
    else
        wr_err_set(err, code, "%s: [state] %s%s%s", path, key ? key : "", key ? ": " : "", msg);
    return code;
}

/* A store's error as walrelay's (code from the store's WR_STORE_E*). Configuration errors
 * name the file, the line and the key; others "state store NAME: WHAT: MESSAGE". */
static int
abi_error(const wr_config_t *cfg, const char *name, const char *what, const wr_store_error_t *se,
          int rc, wr_err_t *err)
{
    int code;
    char full[256];

    switch (rc) {
    case WR_STORE_ECONFIG:
    case WR_STORE_ELEASE:
        code = WR_ECONFIG;
        break;
    case WR_STORE_ENOMEM:
        code = WR_ENOMEM;
        break;
    case WR_STORE_EINVAL:
    case WR_STORE_ENOTFOUND:
        code = WR_EINVAL;
        break;
    default:
        code = WR_ESTATE;
        break;
    }
    if (cfg && rc == WR_STORE_ECONFIG && (se->key[0] || !what)) {
        char msg[1024];

        wr_copy_text(msg, sizeof(msg), se->message[0] ? se->message : "invalid (no message)");
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        if (se->key[0])
            abi_config_error(cfg, se->key, code, err, "%s", msg);
        else
            abi_config_error(cfg, NULL, code, err, "state store %s: %s", name, msg);
    } else {
        snprintf(full, sizeof(full), "state store %s: %s", name, what ? what : "configuration");
        state_err_detail(err, code, full, se->message[0] ? se->message : "failed (no message)");
    }
    if (se->hint[0])
        wr_err_hint(err, "%s", se->hint);
    return code;
}

/* ---- loading ------------------------------------------------------------------------------ */

static const void *
abi_call_entry(void *sym)
{
    wr_store_entry_fn entry;

    memcpy(&entry, &sym, sizeof(entry));
    return entry();
}

static const wr_plugin_kind_t abi_kind = {
    .what = "state store",
    .header = "walrelay/store.h",
    .symbol = WR_STORE_ENTRY_SYMBOL,
    .ops_type = "wr_store_ops_t",
    .abi_version = WR_STORE_ABI_VERSION,
    .ops_size = sizeof(wr_store_ops_t),
    .call_entry = abi_call_entry,
};

int
state_abi_check_ops(const wr_store_ops_t *ops, const char *what, wr_err_t *err)
{
    static const struct {
        const char *name;
        size_t off;
    } required[] = {
#define REQ(f) {#f, offsetof(wr_store_ops_t, f)}
        REQ(validate),     REQ(open),           REQ(close),        REQ(get_progress),
        REQ(set_progress), REQ(add_table),      REQ(get_table),    REQ(list_tables),
        REQ(set_phase),    REQ(rollback_phase), REQ(history_len),  REQ(set_attempts),
        REQ(put_schema),   REQ(get_schema),     REQ(put_mapping),  REQ(get_mapping),
        REQ(get_flag),     REQ(set_flag),       REQ(remove_table), REQ(drop),
#undef REQ
    };

    if (wr_plugin_check_version(&abi_kind, what, ops->abi_version, ops->struct_size, err) != 0)
        return WR_ECONFIG;
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        void (*fn)(void);

        memcpy(&fn, (const char *)ops + required[i].off, sizeof(fn));
        if (fn == NULL) {
            wr_err_set(err, WR_ECONFIG, "%s: its operations table has no %s function", what,
                       required[i].name);
            wr_err_hint(err, "set it in the wr_store_ops_t that walrelay_store_v1() returns "
                             "(only check and check_lease are optional)");
            return WR_ECONFIG;
        }
    }
    if (ops->name == NULL || ops->name[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "%s: its operations table has no name", what);
        wr_err_hint(err, "set .name in the wr_store_ops_t (a short name for logs)");
        return WR_ECONFIG;
    }
    return 0;
}

int
state_plugin_load(const wr_config_t *cfg, state_plugin_t *pl, wr_err_t *err)
{
    const char *lib = cfg->state_library;
    const char *dir = cfg->dir ? cfg->dir : ".";
    const void *ops;
    char what[600];
    wr_err_t e2;
    size_t n;

    memset(pl, 0, sizeof(*pl));
    if (!lib || !*lib) {
        abi_config_error(cfg, "library", WR_ECONFIG, err, "no library given");
        wr_err_hint(err, "set library = /path/to/libstore.so in the [state] section");
        return WR_ECONFIG;
    }
    n = strlen(dir) + strlen(lib) + 2;
    if (!(pl->path = malloc(n)))
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    if (lib[0] == '/')
        snprintf(pl->path, n, "%s", lib);
    else
        snprintf(pl->path, n, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", lib);
    wr_err_clear(&e2);
    /* loaded, entry found, version and size right: then the functions it must have */
    if (wr_plugin_load(pl->path, &abi_kind, &pl->handle, &ops, &e2) == 0) {
        pl->ops = ops;
        snprintf(what, sizeof(what), "\"%s\"", pl->path);
        if (state_abi_check_ops(pl->ops, what, &e2) == 0)
            return 0;
    }
    abi_config_error(cfg, "library", WR_ECONFIG, err, "%s", e2.msg);
    wr_err_hint(err, "%s", e2.hint);
    state_plugin_unload(pl);
    return WR_ECONFIG;
}

void
state_plugin_unload(state_plugin_t *pl)
{
    wr_plugin_unload(pl->handle);
    free(pl->path);
    memset(pl, 0, sizeof(*pl));
}

/* ---- configuration -------------------------------------------------------------------------- */

/* The ABI's view of cfg: every [state] item but library. *kv is malloc'd. */
static int
abi_config(const wr_config_t *cfg, wr_store_config_t *out, wr_store_kv_t **kv, wr_err_t *err)
{
    size_t n = 0;

    *kv = calloc(cfg->state_nitems ? cfg->state_nitems : 1, sizeof(**kv));
    if (*kv == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    for (size_t i = 0; i < cfg->state_nitems; i++) {
        if (strcmp(cfg->state_items[i].key, "library") == 0)
            continue;
        (*kv)[n].key = cfg->state_items[i].key;
        (*kv)[n].value = cfg->state_items[i].value;
        (*kv)[n].line = cfg->state_items[i].line;
        n++;
    }
    out->path = cfg->path ? cfg->path : "walrelay.conf";
    out->dir = cfg->dir ? cfg->dir : ".";
    out->pipeline = cfg->pipeline_name ? cfg->pipeline_name : "";
    out->nitems = n;
    out->items = *kv;
    return 0;
}

int
state_abi_validate(const wr_store_ops_t *ops, const wr_config_t *cfg, wr_err_t *err)
{
    wr_store_config_t sc;
    wr_store_kv_t *kv;
    wr_store_error_t se;
    int rc;

    if ((rc = abi_config(cfg, &sc, &kv, err)) < 0)
        return rc;
    memset(&se, 0, sizeof(se));
    rc = ops->validate(&sc, &se);
    free(kv);
    if (rc == WR_STORE_OK)
        return 0;
    /* whatever it returns, a refused configuration stops: exit code 2 */
    abi_error(cfg, ops->name, NULL, &se, WR_STORE_ECONFIG, err);
    return WR_ECONFIG;
}

/* ---- the host ------------------------------------------------------------------------------ */

static void
abi_host_log(void *ctx, int level, const char *message)
{
    const char *name = ctx;
    char line[1024], red[1024];
    int lvl = level <= WR_STORE_LOG_DEBUG  ? LOG_LVL_DEBUG
              : level == WR_STORE_LOG_INFO ? LOG_LVL_INFO
              : level == WR_STORE_LOG_WARN ? LOG_LVL_WARN
                                           : LOG_LVL_ERROR;

    wr_copy_text(line, sizeof(line), message);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    log_redact_conninfo(line, red, sizeof(red));
    log_msg(lvl, "%s store=%s", red, name ? name : "?");
}

/* ---- the adapter ---------------------------------------------------------------------------- */

typedef struct abi_store_s {
    state_store_t base; /* first: the public handle */
    const wr_store_ops_t *w;
    void *state;
    state_plugin_t plugin; /* unloaded at close (handle NULL for a built-in table) */
    wr_store_host_t host;
    char name[64];
    char role[16];
    char pipeline[WR_PIPELINE_NAME_MAX + 1];
    bool opened; /* open() succeeded: close() is due */
    bool fenced; /* lost the lease: every call fails with fence_err */
    wr_err_t fence_err;
} abi_store_t;

static int
abi_fenced(abi_store_t *a, wr_err_t *err)
{
    *err = a->fence_err;
    return WR_ECONFIG;
}

/* Maps a failed call (rc < 0, se filled) to walrelay's error; WR_STORE_ELEASE fences. */
static int
abi_fail(abi_store_t *a, const char *what, const wr_store_error_t *se, int rc, wr_err_t *err)
{
    int code = abi_error(NULL, a->name, what, se, rc, err);

    if (rc == WR_STORE_ELEASE) {
        if (!se->hint[0])
            wr_err_hint(err,
                        "another walrelay holds the lease of pipeline \"%s\" on this store: "
                        "this walrelay stops and writes nothing more",
                        a->pipeline);
        a->fence_err = *err;
        a->fenced = true;
    }
    return code;
}

/* A result the store returned that breaks the contract (WR_ESTATE). */
static int
abi_bad(abi_store_t *a, wr_err_t *err, const char *what, const char *why)
{
    wr_err_set(err, WR_ESTATE, "state store %s: %s: %s", a->name, what, why);
    wr_err_hint(err, "a bug in the store plugin: see the contract in walrelay/store.h");
    return WR_ESTATE;
}

#define ABI_BEGIN(a, err)                                                                          \
    do {                                                                                           \
        if ((a)->fenced)                                                                           \
            return abi_fenced((a), (err));                                                         \
    } while (0)

static int
abi_get_progress(state_store_t *base, state_progress_t *out, bool *found, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_progress_t p = {NULL, 0};
    wr_store_error_t se;
    bool f = false;
    int rc;

    memset(out, 0, sizeof(*out));
    *found = false;
    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->get_progress(a->state, &p, &f, &se)) != WR_STORE_OK)
        return abi_fail(a, "reading the pipeline progress", &se, rc, err);
    if (!f)
        return 0;
    if (!p.slot_name || strlen(p.slot_name) >= sizeof(out->slot_name))
        return abi_bad(a, err, "reading the pipeline progress", "no or too long a slot name");
    memcpy(out->slot_name, p.slot_name, strlen(p.slot_name) + 1);
    out->confirmed_flush = p.confirmed_flush;
    *found = true;
    return 0;
}

static int
abi_set_progress(state_store_t *base, const state_progress_t *p, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_progress_t wp;
    wr_store_error_t se;
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_progress(p, err)))
        return rc;
    wp.slot_name = p->slot_name;
    wp.confirmed_flush = p->confirmed_flush;
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->set_progress(a->state, &wp, &se)) != WR_STORE_OK)
        return abi_fail(a, "saving the pipeline progress", &se, rc, err);
    return 0;
}

static int
abi_add_table(state_store_t *base, uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_table_t t;
    wr_store_error_t se;
    char what[64];
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_table_names(relid, nsp, name, err)))
        return rc;
    memset(&t, 0, sizeof(t));
    t.relid = relid;
    t.schema = nsp;
    t.name = name;
    t.phase = WR_STORE_PHASE_INIT;
    t.err_kind = t.err_msg = t.err_hint = "";
    t.updated_at_ms = wr_wall_ms();
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->add_table(a->state, &t, &se)) != WR_STORE_OK) {
        snprintf(what, sizeof(what), "adding table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_remove_table(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[64];
    int rc;

    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->remove_table(a->state, relid, &se)) != WR_STORE_OK &&
        rc != WR_STORE_ENOTFOUND) {
        snprintf(what, sizeof(what), "removing table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

/* Copies a table record the store returned; relid: the one asked for (0: any). */
static int
abi_table_in(abi_store_t *a, const wr_store_table_t *in, uint32_t relid, state_table_t *t,
             wr_err_t *err)
{
    char what[64];

    snprintf(what, sizeof(what), "reading table %u", relid ? relid : in->relid);
    memset(t, 0, sizeof(*t));
    if (relid && in->relid != relid)
        return abi_bad(a, err, what, "it returned another table");
    if (!in->schema || !in->name)
        return abi_bad(a, err, what, "no schema or table name");
    if (in->phase < 0 || in->phase >= WR_STORE_PHASE_COUNT)
        return abi_bad(a, err, what, "an unknown phase");
    t->relid = in->relid;
    wr_copy_text(t->nsp, sizeof(t->nsp), in->schema);
    wr_copy_text(t->name, sizeof(t->name), in->name);
    t->phase = (wr_phase_t)in->phase;
    t->lsn = in->lsn;
    t->attempts = in->attempts;
    state_cut_errors(t, t->phase, in->err_kind, in->err_msg, in->err_hint);
    t->updated_at_ms = in->updated_at_ms;
    return 0;
}

static int
abi_get_table(state_store_t *base, uint32_t relid, state_table_t *out, bool *found, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_table_t t;
    wr_store_error_t se;
    bool f = false;
    char what[64];
    int rc;

    memset(out, 0, sizeof(*out));
    *found = false;
    ABI_BEGIN(a, err);
    memset(&t, 0, sizeof(t));
    memset(&se, 0, sizeof(se));
    rc = a->w->get_table(a->state, relid, &t, &f, &se);
    if (rc == WR_STORE_ENOTFOUND)
        return 0;
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "reading table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    if (!f)
        return 0;
    if ((rc = abi_table_in(a, &t, relid, out, err)))
        return rc;
    *found = true;
    return 0;
}

static int
abi_cmp_relid(const void *x, const void *y)
{
    uint32_t a = ((const state_table_t *)x)->relid, b = ((const state_table_t *)y)->relid;

    return a < b ? -1 : a > b;
}

static int
abi_list_tables(state_store_t *base, state_table_t **out, size_t *n, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    const wr_store_table_t *tabs = NULL;
    state_table_t *t;
    wr_store_error_t se;
    size_t cnt = 0;
    int rc;

    *out = NULL;
    *n = 0;
    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->list_tables(a->state, &tabs, &cnt, &se)) != WR_STORE_OK)
        return abi_fail(a, "listing tables", &se, rc, err);
    if (cnt > 0 && !tabs)
        return abi_bad(a, err, "listing tables", "a count of tables but no records");
    if (cnt > (size_t)UINT32_MAX + 1)
        return abi_bad(a, err, "listing tables", "more tables than there can be");
    if (!(t = calloc(cnt ? cnt : 1, sizeof(*t))))
        return wr_err_set(err, WR_ENOMEM, "out of memory listing tables");
    for (size_t i = 0; i < cnt; i++) {
        if ((rc = abi_table_in(a, &tabs[i], 0, &t[i], err))) {
            free(t);
            return rc;
        }
    }
    qsort(t, cnt, sizeof(*t), abi_cmp_relid);
    for (size_t i = 1; i < cnt; i++) {
        if (t[i].relid == t[i - 1].relid) {
            free(t);
            return abi_bad(a, err, "listing tables", "the same table twice");
        }
    }
    *out = t;
    *n = cnt;
    return 0;
}

static int
abi_set_phase(state_store_t *base, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
              const char *err_kind, const char *err_msg, const char *err_hint, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    state_table_t cut; /* the error fields as stored: cut, "" unless Errored */
    wr_store_phase_change_t c;
    wr_store_error_t se;
    char what[96];
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_phase(relid, phase, err)))
        return rc;
    state_cut_errors(&cut, phase, err_kind, err_msg, err_hint);
    c.relid = relid;
    c.phase = (int)phase;
    c.lsn = lsn;
    c.err_kind = cut.err_kind;
    c.err_msg = cut.err_msg;
    c.err_hint = cut.err_hint;
    c.at_ms = wr_wall_ms();
    memset(&se, 0, sizeof(se));
    rc = a->w->set_phase(a->state, &c, &se);
    if (rc == WR_STORE_ENOTFOUND)
        return state_err_no_table(err, "setting phase", relid);
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "setting phase of table %u to \"%s\"", relid,
                 phase_name(phase));
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_set_attempts(state_store_t *base, uint32_t relid, uint32_t attempts, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[64];
    int rc;

    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    rc = a->w->set_attempts(a->state, relid, attempts, wr_wall_ms(), &se);
    if (rc == WR_STORE_ENOTFOUND)
        return state_err_no_table(err, "setting attempts", relid);
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "setting attempts of table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_rollback_phase(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[64];
    int rc;

    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    rc = a->w->rollback_phase(a->state, relid, wr_wall_ms(), &se);
    if (rc == WR_STORE_ENOTFOUND)
        return state_err_no_history(err, relid);
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "rolling back the phase of table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_history_len(state_store_t *base, uint32_t relid, size_t *n, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[64];
    size_t v = 0;
    int rc;

    *n = 0;
    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    rc = a->w->history_len(a->state, relid, &v, &se);
    if (rc == WR_STORE_ENOTFOUND)
        return 0;
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "counting the phase history of table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    *n = v;
    return 0;
}

static int
abi_put_schema(state_store_t *base, const wr_schema_t *schema, wr_lsn_t lsn, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_column_t *cols = NULL;
    wr_store_schema_t s;
    wr_store_error_t se;
    char what[96];
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_schema(schema, err)))
        return rc;
    if (schema->ncols > 0 && !(cols = calloc(schema->ncols, sizeof(*cols))))
        return wr_err_set(err, WR_ENOMEM, "out of memory saving the schema of table %u",
                          schema->relid);
    for (uint16_t i = 0; i < schema->ncols; i++) {
        cols[i].name = schema->cols[i].name ? schema->cols[i].name : "";
        cols[i].type_oid = schema->cols[i].type_oid;
        cols[i].typmod = schema->cols[i].typmod;
        cols[i].key = schema->cols[i].is_key;
        cols[i].not_null = schema->cols[i].not_null;
    }
    s.relid = schema->relid;
    s.schema = schema->nsp ? schema->nsp : "";
    s.name = schema->name ? schema->name : "";
    s.replica_identity = schema->replident ? schema->replident : 'd';
    s.ncolumns = schema->ncols;
    s.columns = cols;
    memset(&se, 0, sizeof(se));
    rc = a->w->put_schema(a->state, &s, lsn, &se);
    free(cols);
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "saving the schema of table %u at " WR_LSN_FMT, schema->relid,
                 WR_LSN_ARGS(lsn));
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_get_schema(state_store_t *base, uint32_t relid, wr_lsn_t at, wr_schema_t **out,
               wr_lsn_t *version_lsn, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    const wr_store_schema_t *s = NULL;
    wr_store_error_t se;
    uint64_t ver = 0;
    wr_schema_t *sc;
    char what[64];
    int rc;

    *out = NULL;
    if (version_lsn)
        *version_lsn = 0;
    ABI_BEGIN(a, err);
    snprintf(what, sizeof(what), "reading the schema of table %u", relid);
    memset(&se, 0, sizeof(se));
    rc = a->w->get_schema(a->state, relid, at, &s, &ver, &se);
    if (rc == WR_STORE_ENOTFOUND || (rc == WR_STORE_OK && s == NULL))
        return 0;
    if (rc != WR_STORE_OK)
        return abi_fail(a, what, &se, rc, err);
    if (s->relid != relid)
        return abi_bad(a, err, what, "it returned another table's schema");
    if (ver > at)
        return abi_bad(a, err, what, "it returned a version newer than asked for");
    if (!s->schema || !s->name || (s->ncolumns > 0 && !s->columns))
        return abi_bad(a, err, what, "no schema or table name, or no columns");
    for (uint16_t i = 0; i < s->ncolumns; i++)
        if (!s->columns[i].name)
            return abi_bad(a, err, what, "a column without a name");
    if (!(sc = wr_schema_new(relid, s->schema, s->name, s->ncolumns)))
        return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of table %u", relid);
    sc->replident = s->replica_identity ? s->replica_identity : 'd';
    for (uint16_t i = 0; i < s->ncolumns; i++) {
        wr_column_t *c = &sc->cols[i];

        if (!(c->name = wr_strdup(s->columns[i].name))) {
            wr_schema_free(sc);
            return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of table %u",
                              relid);
        }
        c->type_oid = s->columns[i].type_oid;
        c->typmod = s->columns[i].typmod;
        c->is_key = s->columns[i].key;
        c->not_null = s->columns[i].not_null;
    }
    *out = sc;
    if (version_lsn)
        *version_lsn = ver;
    return 0;
}

static int
abi_put_mapping(state_store_t *base, uint32_t relid, const char *dest_name, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[64];
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_mapping(relid, dest_name, err)))
        return rc;
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->put_mapping(a->state, relid, dest_name, &se)) != WR_STORE_OK) {
        snprintf(what, sizeof(what), "saving the mapping of table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_get_mapping(state_store_t *base, uint32_t relid, char *buf, size_t len, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    const char *name = NULL;
    wr_store_error_t se;
    char what[64];
    int rc;

    if ((rc = state_check_mapping_buffer(relid, buf, len, err)))
        return rc;
    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    rc = a->w->get_mapping(a->state, relid, &name, &se);
    if (rc == WR_STORE_ENOTFOUND)
        return 0;
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "reading the mapping of table %u", relid);
        return abi_fail(a, what, &se, rc, err);
    }
    return name ? state_copy_mapping(relid, name, buf, len, err) : 0;
}

static int
abi_get_flag(state_store_t *base, const char *name, int64_t *value, bool *found, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[96];
    int64_t v = 0;
    bool f = false;
    int rc;

    *value = 0;
    *found = false;
    ABI_BEGIN(a, err);
    if ((rc = state_check_flag_name(name, err)))
        return rc;
    memset(&se, 0, sizeof(se));
    rc = a->w->get_flag(a->state, name, &v, &f, &se);
    if (rc == WR_STORE_ENOTFOUND)
        return 0;
    if (rc != WR_STORE_OK) {
        snprintf(what, sizeof(what), "reading the pipeline flag \"%s\"", name);
        return abi_fail(a, what, &se, rc, err);
    }
    if (f) {
        *value = v;
        *found = true;
    }
    return 0;
}

static int
abi_set_flag(state_store_t *base, const char *name, int64_t value, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    char what[96];
    int rc;

    ABI_BEGIN(a, err);
    if ((rc = state_check_flag_name(name, err)))
        return rc;
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->set_flag(a->state, name, value, wr_wall_ms(), &se)) != WR_STORE_OK) {
        snprintf(what, sizeof(what), "saving the pipeline flag \"%s\"", name);
        return abi_fail(a, what, &se, rc, err);
    }
    return 0;
}

static int
abi_check_lease(state_store_t *base, bool probe, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    int rc;

    ABI_BEGIN(a, err);
    if (!probe || !a->w->check_lease)
        return 0;
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->check_lease(a->state, &se)) == WR_STORE_OK)
        return 0;
    if (rc == WR_STORE_ELEASE)
        return abi_fail(a, "verifying the pipeline's lease", &se, rc, err);
    /* anything else: could not tell now */
    abi_fail(a, "verifying the pipeline's lease", &se, rc, err);
    return WR_ESTATE;
}

static int
abi_drop_pipeline(state_store_t *base, bool *dropped, wr_err_t *err)
{
    abi_store_t *a = (abi_store_t *)base;
    wr_store_error_t se;
    bool d = false;
    int rc;

    *dropped = false;
    ABI_BEGIN(a, err);
    memset(&se, 0, sizeof(se));
    if ((rc = a->w->drop(a->state, &d, &se)) != WR_STORE_OK)
        return abi_fail(a, "deleting the pipeline's state", &se, rc, err);
    *dropped = d;
    return 0;
}

static void
abi_close(state_store_t *base)
{
    abi_store_t *a = (abi_store_t *)base;

    if (!a)
        return;
    if (a->opened)
        a->w->close(a->state);
    state_plugin_unload(&a->plugin);
    free(a);
}

static const state_ops_t abi_ops = {
    .get_progress = abi_get_progress,
    .set_progress = abi_set_progress,
    .add_table = abi_add_table,
    .remove_table = abi_remove_table,
    .get_table = abi_get_table,
    .list_tables = abi_list_tables,
    .set_phase = abi_set_phase,
    .set_attempts = abi_set_attempts,
    .rollback_phase = abi_rollback_phase,
    .history_len = abi_history_len,
    .put_schema = abi_put_schema,
    .get_schema = abi_get_schema,
    .put_mapping = abi_put_mapping,
    .get_mapping = abi_get_mapping,
    .close = abi_close,
    .get_flag = abi_get_flag,
    .set_flag = abi_set_flag,
    .check_lease = abi_check_lease,
    .drop_pipeline = abi_drop_pipeline,
};

int
state_abi_open(const wr_store_ops_t *ops, state_plugin_t *plugin, const wr_config_t *cfg,
               const char *role, state_store_t **out, wr_err_t *err)
{
    wr_store_config_t sc;
    wr_store_kv_t *kv;
    wr_store_error_t se;
    abi_store_t *a;
    int rc;

    *out = NULL;
    if (!(a = calloc(1, sizeof(*a)))) {
        if (plugin)
            state_plugin_unload(plugin);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the state store");
    }
    if (plugin) {
        a->plugin = *plugin;
        memset(plugin, 0, sizeof(*plugin));
    }
    a->base.ops = &abi_ops;
    a->w = ops;
    wr_copy_text(a->name, sizeof(a->name), ops->name);
    wr_copy_text(a->role, sizeof(a->role), role);
    wr_copy_text(a->pipeline, sizeof(a->pipeline), cfg->pipeline_name);
    a->host.abi_version = WR_STORE_ABI_VERSION;
    a->host.struct_size = sizeof(wr_store_host_t);
    a->host.role = a->role;
    a->host.log = abi_host_log;
    a->host.ctx = a->name;
    if ((rc = abi_config(cfg, &sc, &kv, err)) < 0) {
        abi_close(&a->base);
        return rc;
    }
    memset(&se, 0, sizeof(se));
    rc = ops->open(&sc, &a->host, &a->state, &se);
    free(kv);
    if (rc != WR_STORE_OK) {
        int code = abi_error(cfg, a->name, "opening it", &se, rc, err);

        if (rc == WR_STORE_ELEASE && !se.hint[0])
            wr_err_hint(err,
                        "stop the other walrelay of pipeline \"%s\" (another directory or host), "
                        "or give this one another [pipeline] name",
                        a->pipeline);
        abi_close(&a->base); /* a failed open releases what it took itself */
        return code;
    }
    a->opened = true;
    *out = &a->base;
    return 0;
}

/* ---- [state] backend = plugin ------------------------------------------------------------- */

int
state_config_check(const wr_config_t *cfg, wr_err_t *err)
{
    state_plugin_t pl;
    int rc;

    if (cfg->state_backend != CFG_STATE_PLUGIN)
        return 0;
    if ((rc = state_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    rc = state_abi_validate(pl.ops, cfg, err);
    state_plugin_unload(&pl);
    return rc;
}

int
state_init_check(const wr_config_t *cfg, wr_err_t *err)
{
    state_plugin_t pl;
    int rc;

    if (cfg->state_backend != CFG_STATE_PLUGIN)
        return 0;
    if ((rc = state_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    state_plugin_unload(&pl);
    return 0;
}

int
state_check_plugin(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    state_plugin_t pl;
    state_store_t *st = NULL;
    abi_store_t *a;
    wr_store_error_t se;
    char inner[256] = "", path[512];
    const wr_store_ops_t *ops;
    int rc;

    if ((rc = state_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    if ((rc = state_abi_validate(pl.ops, cfg, err)) < 0) {
        state_plugin_unload(&pl);
        return rc;
    }
    ops = pl.ops;
    wr_copy_text(path, sizeof(path), pl.path);
    if ((rc = state_abi_open(ops, &pl, cfg, "check", &st, err)) < 0)
        return rc;
    a = (abi_store_t *)st;
    if (ops->check) {
        memset(&se, 0, sizeof(se));
        if ((rc = ops->check(a->state, inner, sizeof(inner), &se)) != WR_STORE_OK) {
            rc = abi_error(cfg, a->name, "checking it", &se, rc, err);
            state_close(st);
            return rc;
        }
        inner[sizeof(inner) - 1] = '\0';
        for (char *p = inner; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    snprintf(summary, len, "plugin %s: %s (ABI version %d, %s%s)%s%s", path, ops->name,
             WR_STORE_ABI_VERSION, ops->capabilities & WR_STORE_CAP_LEASE ? "lease" : "no lease",
             ops->check ? ", checked" : "", inner[0] ? ": " : "", inner);
    state_close(st);
    return 0;
}

int
state_open_plugin(const wr_config_t *cfg, const char *role, state_store_t **out, wr_err_t *err)
{
    state_plugin_t pl;
    int rc;

    *out = NULL;
    if ((rc = state_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    if ((rc = state_abi_validate(pl.ops, cfg, err)) < 0) {
        state_plugin_unload(&pl);
        return rc;
    }
    return state_abi_open(pl.ops, &pl, cfg, role, out, err);
}
