/*
 * test_state.c - unit tests of the state stores: the conformance suite (store_conformance.h)
 * against the in-memory store, the SQLite store (a fresh file per test) and a plugin
 * through the ABI adapter (examples/store-onefile, built in the tree); the adapter's own
 * duties against a table of functions written here (what a broken plugin returns, error
 * mapping, the lease fence, the loader's checks of a table); then SQLite-only checks of
 * pragmas, the schema version and refusal of newer files.
 *
 * NOTES: files go to a mkdtemp() directory under $TMPDIR (or /tmp), removed at the end.
 * WALRELAY_ONEFILE_PLUGIN (meson) is the path of the in-tree build of the example plugin.
 */
#include "common/state_abi.h"
#include "store_conformance.h"

#include <errno.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static int dbseq;

static void
db_path(char *buf, size_t len, int seq)
{
    snprintf(buf, len, "%s/state%d.db", tmpdir, seq);
}

static void
remove_db(const char *path)
{
    char p[600];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

/* ---- targets -------------------------------------------------------------------------- */

static int
mem_open(conf_target_t *t, int seq, const char *role, state_store_t **out, wr_err_t *err)
{
    WR_UNUSED(t);
    WR_UNUSED(seq);
    WR_UNUSED(role);
    return state_open_memory(out, err);
}

static int
sqlite_open(conf_target_t *t, int seq, const char *role, state_store_t **out, wr_err_t *err)
{
    char path[512];

    WR_UNUSED(t);
    WR_UNUSED(role);
    db_path(path, sizeof(path), 1000 + seq);
    return state_open_sqlite(path, out, err);
}

static void
sqlite_cleanup(conf_target_t *t, int seq)
{
    char path[512];

    WR_UNUSED(t);
    db_path(path, sizeof(path), 1000 + seq);
    remove_db(path);
}

/* The plugin: each test in its own pipeline directory, state file "state.txt" there. */
static void
plugin_dir(int seq, char *buf, size_t len)
{
    snprintf(buf, len, "%s/plugin%d", tmpdir, seq);
}

static int
plugin_open(conf_target_t *t, int seq, const char *role, state_store_t **out, wr_err_t *err)
{
    static char *const kv[] = {(char *)"path=state.txt"};
    char dir[512], pipeline[32];

    plugin_dir(seq, dir, sizeof(dir));
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return wr_err_set(err, WR_EIO, "mkdir %s: %s", dir, strerror(errno));
    snprintf(pipeline, sizeof(pipeline), "conf%d", seq);
    return conf_plugin_open(t->arg, kv, 1, dir, pipeline, role, out, err);
}

static void
plugin_cleanup(conf_target_t *t, int seq)
{
    static const char *const files[] = {"state.txt", "state.txt.tmp", "state.txt.lock"};
    char dir[512], p[600];

    WR_UNUSED(t);
    plugin_dir(seq, dir, sizeof(dir));
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* ---- the adapter, against a table written here ------------------------------------------ */

/* What the fake store does; each test sets what it needs. */
static struct {
    int calls;           /* calls that reached the store */
    int rc;              /* returned by every data call */
    wr_store_error_t se; /* copied into err when rc != OK */
    wr_store_table_t table;
    bool found;
    const wr_store_table_t *list;
    size_t nlist;
    wr_store_schema_t schema;
    uint64_t schema_lsn;
    int lease_rc;
    int open_rc;
} fk;

static int
fk_result(wr_store_error_t *err)
{
    fk.calls++;
    if (fk.rc != WR_STORE_OK)
        *err = fk.se;
    return fk.rc;
}

static int
fk_validate(const wr_store_config_t *cfg, wr_store_error_t *err)
{
    const char *v = wr_store_config_get(cfg, "colour");

    if (v && strcmp(v, "red") != 0) {
        wr_store_error_set(err, WR_STORE_ECONFIG, "colour", "invalid colour \"%s\"", v);
        wr_store_error_hint(err, "only red");
        return WR_STORE_ECONFIG;
    }
    return WR_STORE_OK;
}

static int
fk_open(const wr_store_config_t *cfg, const wr_store_host_t *host, void **state,
        wr_store_error_t *err)
{
    WR_UNUSED(cfg);
    WR_UNUSED(host);
    *state = &fk;
    if (fk.open_rc != WR_STORE_OK)
        return wr_store_error_set(err, fk.open_rc, NULL, "the lock is held by pid 42");
    return WR_STORE_OK;
}

static int
fk_check_lease(void *state, wr_store_error_t *err)
{
    WR_UNUSED(state);
    fk.calls++;
    if (fk.lease_rc != WR_STORE_OK)
        return wr_store_error_set(err, fk.lease_rc, NULL, "lease: %d", fk.lease_rc);
    return WR_STORE_OK;
}

static void
fk_close(void *state)
{
    WR_UNUSED(state);
}

static int
fk_get_progress(void *st, wr_store_progress_t *out, bool *found, wr_store_error_t *err)
{
    WR_UNUSED(st);
    out->slot_name = NULL; /* found with no name: a broken store */
    out->confirmed_flush = 1;
    *found = fk.found;
    return fk_result(err);
}

static int
fk_set_progress(void *st, const wr_store_progress_t *p, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(p);
    return fk_result(err);
}

static int
fk_add_table(void *st, const wr_store_table_t *t, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(t);
    return fk_result(err);
}

static int
fk_get_table(void *st, uint32_t relid, wr_store_table_t *out, bool *found, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    *out = fk.table;
    *found = fk.found;
    return fk_result(err);
}

static int
fk_list_tables(void *st, const wr_store_table_t **t, size_t *n, wr_store_error_t *err)
{
    WR_UNUSED(st);
    *t = fk.list;
    *n = fk.nlist;
    return fk_result(err);
}

static int
fk_set_phase(void *st, const wr_store_phase_change_t *c, wr_store_error_t *err)
{
    WR_UNUSED(st);
    /* what walrelay hands over: cut text, "" unless Errored */
    CHECK(c->err_kind && c->err_msg && c->err_hint);
    CHECK(strlen(c->err_msg) <= 511);
    if (c->phase != WR_STORE_PHASE_ERRORED)
        CHECK(c->err_msg[0] == '\0');
    CHECK(c->at_ms > 1600000000000LL);
    return fk_result(err);
}

static int
fk_rollback_phase(void *st, uint32_t relid, int64_t at, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    WR_UNUSED(at);
    return fk_result(err);
}

static int
fk_history_len(void *st, uint32_t relid, size_t *n, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    *n = 3;
    return fk_result(err);
}

static int
fk_set_attempts(void *st, uint32_t relid, uint32_t a, int64_t at, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    WR_UNUSED(a);
    WR_UNUSED(at);
    return fk_result(err);
}

static int
fk_put_schema(void *st, const wr_store_schema_t *s, uint64_t lsn, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(s);
    WR_UNUSED(lsn);
    return fk_result(err);
}

static int
fk_get_schema(void *st, uint32_t relid, uint64_t at, const wr_store_schema_t **out, uint64_t *ver,
              wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    WR_UNUSED(at);
    *out = &fk.schema;
    *ver = fk.schema_lsn;
    return fk_result(err);
}

static int
fk_put_mapping(void *st, uint32_t relid, const char *name, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    WR_UNUSED(name);
    return fk_result(err);
}

static int
fk_get_mapping(void *st, uint32_t relid, const char **name, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    *name = "a_rather_long_destination_name";
    return fk_result(err);
}

static int
fk_get_flag(void *st, const char *name, int64_t *v, bool *found, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(name);
    *v = 7;
    *found = true;
    return fk_result(err);
}

static int
fk_set_flag(void *st, const char *name, int64_t v, int64_t at, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(name);
    WR_UNUSED(v);
    WR_UNUSED(at);
    return fk_result(err);
}

static int
fk_remove_table(void *st, uint32_t relid, wr_store_error_t *err)
{
    WR_UNUSED(st);
    WR_UNUSED(relid);
    return fk_result(err);
}

static int
fk_drop(void *st, bool *dropped, wr_store_error_t *err)
{
    WR_UNUSED(st);
    *dropped = true;
    return fk_result(err);
}

static wr_store_ops_t fk_ops = {
    .abi_version = WR_STORE_ABI_VERSION,
    .struct_size = sizeof(wr_store_ops_t),
    .name = "fake",
    .capabilities = WR_STORE_CAP_LEASE,
    .validate = fk_validate,
    .open = fk_open,
    .check_lease = fk_check_lease,
    .close = fk_close,
    .get_progress = fk_get_progress,
    .set_progress = fk_set_progress,
    .add_table = fk_add_table,
    .get_table = fk_get_table,
    .list_tables = fk_list_tables,
    .set_phase = fk_set_phase,
    .rollback_phase = fk_rollback_phase,
    .history_len = fk_history_len,
    .set_attempts = fk_set_attempts,
    .put_schema = fk_put_schema,
    .get_schema = fk_get_schema,
    .put_mapping = fk_put_mapping,
    .get_mapping = fk_get_mapping,
    .get_flag = fk_get_flag,
    .set_flag = fk_set_flag,
    .remove_table = fk_remove_table,
    .drop = fk_drop,
};

/* A configuration as config.c makes it for [state] backend = plugin. */
static void
fk_config(wr_config_t *cfg, wr_cfg_item_t *items, const char *colour)
{
    cfg_defaults(cfg);
    cfg->path = (char *)"/x/walrelay.conf";
    cfg->dir = (char *)"/x";
    cfg->pipeline_name = (char *)"demo";
    cfg->state_backend = CFG_STATE_PLUGIN;
    cfg->state_line = 20;
    cfg->state_library = (char *)"/nowhere/lib.so";
    items[0].key = (char *)"library";
    items[0].value = (char *)"/nowhere/lib.so";
    items[0].line = 22;
    items[1].key = (char *)"colour";
    items[1].value = (char *)colour;
    items[1].line = 23;
    cfg->state_items = items;
    cfg->state_nitems = 2;
}

static state_store_t *
fk_open_store(void)
{
    wr_config_t cfg;
    wr_cfg_item_t items[2];
    state_store_t *s = NULL;
    wr_err_t err;

    fk_config(&cfg, items, "red");
    CHECK_INT_EQ(state_abi_open(&fk_ops, NULL, &cfg, "supervisor", &s, &err), 0);
    return s;
}

/* What a broken store returns is an error, never a crash or garbage. */
static void
test_abi_contract_violations(void)
{
    wr_store_table_t tabs[2];
    state_table_t t, *list = NULL;
    state_progress_t p;
    wr_schema_t *sc = NULL;
    size_t n = 0;
    bool found = true;
    char buf[8];
    wr_err_t err;
    state_store_t *s;

    memset(&fk, 0, sizeof(fk));
    if (!(s = fk_open_store()))
        return;
    /* get_table: no name; a phase out of range; another relid */
    fk.found = true;
    fk.table.relid = 5;
    fk.table.schema = "public";
    fk.table.name = NULL;
    CHECK_INT_EQ(s->ops->get_table(s, 5, &t, &found, &err), WR_ESTATE);
    CHECK(!found);
    CHECK_CONTAINS(err.msg, "state store fake: reading table 5: no schema or table name");
    CHECK_CONTAINS(err.hint, "a bug in the store plugin");
    fk.table.name = "t";
    fk.table.phase = 99;
    CHECK_INT_EQ(s->ops->get_table(s, 5, &t, &found, &err), WR_ESTATE);
    CHECK_CONTAINS(err.msg, "an unknown phase");
    fk.table.phase = WR_STORE_PHASE_READY;
    CHECK_INT_EQ(s->ops->get_table(s, 6, &t, &found, &err), WR_ESTATE);
    CHECK_CONTAINS(err.msg, "another table");
    /* a good one; error text of a non-Errored phase is dropped, NULL error fields are "" */
    fk.table.err_msg = "left over";
    CHECK_INT_EQ(s->ops->get_table(s, 5, &t, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(t.phase, PH_READY);
    CHECK_STR_EQ(t.err_msg, "");
    /* list_tables: a count without records; the same relid twice; sorted otherwise */
    fk.nlist = 2;
    fk.list = NULL;
    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), WR_ESTATE);
    CHECK(list == NULL && n == 0);
    memset(tabs, 0, sizeof(tabs));
    tabs[0] = fk.table;
    tabs[1] = fk.table;
    fk.list = tabs;
    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), WR_ESTATE);
    CHECK_CONTAINS(err.msg, "the same table twice");
    tabs[0].relid = 9;
    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), 0);
    CHECK_INT_EQ(n, 2);
    if (n == 2)
        CHECK(list[0].relid == 5 && list[1].relid == 9);
    free(list);
    /* progress found without a slot name */
    CHECK_INT_EQ(s->ops->get_progress(s, &p, &found, &err), WR_ESTATE);
    CHECK(!found);
    /* a schema newer than asked for, or of another table */
    fk.schema.relid = 5;
    fk.schema.schema = "public";
    fk.schema.name = "t";
    fk.schema_lsn = 100;
    CHECK_INT_EQ(s->ops->get_schema(s, 5, 50, &sc, NULL, &err), WR_ESTATE);
    CHECK(sc == NULL);
    CHECK_CONTAINS(err.msg, "newer than asked for");
    CHECK_INT_EQ(s->ops->get_schema(s, 6, UINT64_MAX, &sc, NULL, &err), WR_ESTATE);
    fk.schema.ncolumns = 2; /* and no columns */
    CHECK_INT_EQ(s->ops->get_schema(s, 5, UINT64_MAX, &sc, NULL, &err), WR_ESTATE);
    CHECK(sc == NULL);
    /* a mapping longer than the buffer: an error, never a cut */
    CHECK_INT_EQ(s->ops->get_mapping(s, 5, buf, sizeof(buf), &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "needs 31 bytes");
    state_close(s);
}

/* Arguments are checked before the store is called; answers and failures map to walrelay's
 * codes and messages. */
static void
test_abi_errors(void)
{
    state_store_t *s;
    wr_err_t err;
    char big[2000];

    memset(&fk, 0, sizeof(fk));
    if (!(s = fk_open_store()))
        return;
    CHECK_INT_EQ(s->ops->add_table(s, 1, NULL, "t", &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->set_flag(s, "", 1, &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->set_phase(s, 1, (wr_phase_t)PH_COUNT, 0, NULL, NULL, NULL, &err),
                 WR_EINVAL);
    CHECK_INT_EQ(s->ops->put_schema(s, NULL, 1, &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->put_mapping(s, 1, NULL, &err), WR_EINVAL);
    CHECK_INT_EQ(fk.calls, 0);
    /* error text is cut and dropped unless Errored (fk_set_phase checks what it gets) */
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK_INT_EQ(s->ops->set_phase(s, 1, PH_ERRORED, 0, "k", big, big, &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 1, PH_READY, 0, "k", big, big, &err), 0);
    /* ENOTFOUND: the answers state.h defines */
    fk.rc = WR_STORE_ENOTFOUND;
    CHECK_INT_EQ(s->ops->set_phase(s, 4, PH_DATASYNC, 0, NULL, NULL, NULL, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "setting phase of table 4: table is not in the state store");
    CHECK_INT_EQ(s->ops->set_attempts(s, 4, 1, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "setting attempts of table 4: table is not in the state store");
    CHECK_INT_EQ(s->ops->rollback_phase(s, 4, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "rolling back the phase of table 4: no earlier phase recorded");
    CHECK_INT_EQ(s->ops->remove_table(s, 4, &err), 0);
    /* a failure: WR_ESTATE naming the store and what it did, on one line, with its hint */
    fk.rc = WR_STORE_EUNAVAILABLE;
    wr_store_error_set(&fk.se, WR_STORE_EUNAVAILABLE, NULL, "server gone\naway");
    wr_store_error_hint(&fk.se, "start the server");
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 1, &err), WR_ESTATE);
    CHECK_STR_EQ(err.msg,
                 "state store fake: saving the pipeline flag \"paused\": server gone away");
    CHECK_STR_EQ(err.hint, "start the server");
    fk.rc = WR_STORE_ENOMEM;
    CHECK_INT_EQ(s->ops->set_attempts(s, 4, 1, &err), WR_ENOMEM);
    state_close(s);
}

/* A store that finds its lease taken is fenced: every later call fails without reaching
 * it, and check_lease says so (also without a probe). A probe that cannot tell is not a
 * loss. */
static void
test_abi_lease_fence(void)
{
    state_store_t *s;
    state_table_t t;
    bool found;
    int calls;
    wr_err_t err;

    memset(&fk, 0, sizeof(fk));
    if (!(s = fk_open_store()))
        return;
    CHECK_INT_EQ(s->ops->check_lease(s, false, &err), 0);
    CHECK_INT_EQ(fk.calls, 0); /* no probe: nothing asked */
    fk.lease_rc = WR_STORE_EUNAVAILABLE;
    CHECK_INT_EQ(s->ops->check_lease(s, true, &err), WR_ESTATE);
    CHECK_INT_EQ(s->ops->get_table(s, 1, &t, &found, &err), 0); /* not fenced */
    fk.lease_rc = WR_STORE_OK;
    fk.rc = WR_STORE_ELEASE;
    wr_store_error_set(&fk.se, WR_STORE_ELEASE, NULL, "lock taken by pid 7");
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 1, &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "lock taken by pid 7");
    CHECK_CONTAINS(err.hint, "another walrelay holds the lease of pipeline \"demo\"");
    calls = fk.calls;
    fk.rc = WR_STORE_OK;
    CHECK_INT_EQ(s->ops->get_table(s, 1, &t, &found, &err), WR_ECONFIG);
    CHECK_INT_EQ(s->ops->set_phase(s, 1, PH_INIT, 0, NULL, NULL, NULL, &err), WR_ECONFIG);
    CHECK_INT_EQ(s->ops->check_lease(s, false, &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "lock taken by pid 7");
    CHECK_INT_EQ(fk.calls, calls);
    state_close(s);

    /* found by the probe */
    memset(&fk, 0, sizeof(fk));
    if (!(s = fk_open_store()))
        return;
    fk.lease_rc = WR_STORE_ELEASE;
    CHECK_INT_EQ(s->ops->check_lease(s, true, &err), WR_ECONFIG);
    CHECK_INT_EQ(s->ops->check_lease(s, false, &err), WR_ECONFIG);
    state_close(s);
}

/* Opening: the lease held elsewhere, and the store's own key errors with file and line. */
static void
test_abi_open_and_validate(void)
{
    wr_config_t cfg;
    wr_cfg_item_t items[2];
    state_store_t *s = (state_store_t *)1;
    wr_err_t err;

    memset(&fk, 0, sizeof(fk));
    fk.open_rc = WR_STORE_ELEASE;
    fk_config(&cfg, items, "red");
    CHECK_INT_EQ(state_abi_open(&fk_ops, NULL, &cfg, "supervisor", &s, &err), WR_ECONFIG);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.msg, "the lock is held by pid 42");
    CHECK_CONTAINS(err.hint, "stop the other walrelay of pipeline \"demo\"");
    fk.open_rc = WR_STORE_EIO;
    CHECK_INT_EQ(state_abi_open(&fk_ops, NULL, &cfg, "supervisor", &s, &err), WR_ESTATE);
    CHECK_CONTAINS(err.msg, "state store fake: opening it: the lock is held by pid 42");

    fk_config(&cfg, items, "blue");
    CHECK_INT_EQ(state_abi_validate(&fk_ops, &cfg, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "/x/walrelay.conf:23: [state] colour: invalid colour \"blue\"");
    CHECK_STR_EQ(err.hint, "only red");
    fk_config(&cfg, items, "red");
    CHECK_INT_EQ(state_abi_validate(&fk_ops, &cfg, &err), 0);
    /* a library that is not there: the file, the line of library, what to fix */
    CHECK_INT_EQ(state_config_check(&cfg, &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg,
                   "/x/walrelay.conf:22: [state] library: cannot load \"/nowhere/lib.so\"");
    CHECK_CONTAINS(err.hint, "set library to the path of the plugin's shared object");
}

/* The loader's checks of an operations table. */
static void
test_abi_check_ops(void)
{
    wr_store_ops_t ops = fk_ops;
    wr_err_t err;

    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), 0);
    ops.abi_version = 2;
    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "\"lib.so\" was built for state store ABI version 2, this walrelay "
                          "implements version 1");
    CHECK_STR_EQ(err.hint, "rebuild the plugin against walrelay's installed walrelay/store.h "
                           "(ABI version 1)");
    ops = fk_ops;
    ops.struct_size -= 8;
    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "has an operations table (wr_store_ops_t) of");
    ops = fk_ops;
    ops.drop = NULL;
    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "\"lib.so\": its operations table has no drop function");
    ops = fk_ops;
    ops.check_lease = NULL; /* optional */
    ops.check = NULL;
    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), 0);
    ops.name = "";
    CHECK_INT_EQ(state_abi_check_ops(&ops, "\"lib.so\"", &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "has no name");
}

/* ------------------------------------------------------------------------------------ */
/* SQLite only                                                                          */
/* ------------------------------------------------------------------------------------ */

static int64_t
raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -12345;
    CHECK_INT_EQ(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "  raw \"%s\": %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void
raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    CHECK_INT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void
test_sqlite_pragmas(void)
{
    state_store_t *s = NULL;
    char path[512];
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->add_table(s, 90, "public", "t", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 90, PH_ERRORED, 0, "kind", "full message", "", &err), 0);
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = "
                               "'wal'"),
                 1);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name "
                               "IN ('pipeline', 'tables', 'table_phase_history', "
                               "'table_schemas', 'table_schema_columns', 'table_mappings', "
                               "'copy_ranges', 'errors')"),
                 8);
    /* Errored phases are logged */
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM errors WHERE relid = 90 AND kind = 'kind' "
                               "AND message = 'full message'"),
                 1);
    /* phases are stored by name */
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM tables WHERE phase = 'errored'"), 1);
    CHECK_INT_EQ(s->ops->remove_table(s, 90, &err), 0);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM errors"), 0);
    state_close(s);

    /* reopening a current file does not migrate again */
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    state_close(s);
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    remove_db(path);
}

/* A version 1 file (before pipeline_flags and copy_ranges) is migrated, keeping its rows;
 * flags persist. */
static void
test_sqlite_migrate_v1(void)
{
    state_store_t *s = NULL;
    char path[512];
    int64_t v = 0;
    bool found = false;
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->add_table(s, 70, "public", "old", &err), 0);
    state_close(s);
    s = NULL;
    /* make it look like a file written by schema version 1 (version 3 replaced its
     * copy_partitions with copy_ranges) */
    raw_exec(path,
             "DROP TABLE pipeline_flags; DROP TABLE copy_ranges; "
             "CREATE TABLE copy_partitions (relid INTEGER NOT NULL); PRAGMA user_version = 1");
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), 1);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    CHECK_INT_EQ(get_table(s, 70, true).phase, PH_INIT);
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 1, &err), 0);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE name = 'copy_ranges'"), 1);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE name = "
                               "'copy_partitions'"),
                 0);
    state_close(s);
    s = NULL;
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(v, 1);
    state_close(s);
    remove_db(path);
}

static void
test_sqlite_newer_refused(void)
{
    state_store_t *s = (state_store_t *)1;
    char path[512], sql[64], want[128];
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    state_close(s);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", STATE_SCHEMA_VERSION + 1);
    raw_exec(path, sql);
    wr_err_clear(&err);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), WR_ESTATE);
    CHECK(s == NULL);
    snprintf(want, sizeof(want),
             "state.db was written by a newer walrelay (schema %d, this build knows %d)",
             STATE_SCHEMA_VERSION + 1, STATE_SCHEMA_VERSION);
    CHECK_CONTAINS(err.msg, want);
    CHECK(err.hint[0] != '\0');
    /* the file was not touched */
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION + 1);
    remove_db(path);
}

static void
test_sqlite_bad_files(void)
{
    state_store_t *s = (state_store_t *)1;
    char path[512];
    wr_err_t err;
    FILE *f;

    /* not a database */
    db_path(path, sizeof(path), ++dbseq);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("this is not an sqlite file, just some text long enough to have a header..."
              "................................................................",
              f);
        fclose(f);
    }
    /* a configuration error (exit 2): a service manager must not retry it (issue 12) */
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), WR_ECONFIG);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "not a database");
    CHECK_CONTAINS(err.hint, "walrelay drop");
    remove_db(path);

    /* a directory that does not exist */
    CHECK_INT_EQ(state_open_sqlite("/nonexistent-walrelay-dir/state.db", &s, &err), WR_ESTATE);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.msg, "/nonexistent-walrelay-dir/state.db");
}

int
main(void)
{
    conf_target_t mem = {.label = "memory", .open = mem_open};
    conf_target_t sq = {
        .label = "sqlite", .open = sqlite_open, .cleanup = sqlite_cleanup, .persistent = true};
    conf_target_t pl = {.label = "plugin onefile",
                        .open = plugin_open,
                        .cleanup = plugin_cleanup,
                        .persistent = true,
                        .lease = true,
                        .arg = (void *)WALRELAY_ONEFILE_PLUGIN};
    const char *base = getenv("TMPDIR");

    snprintf(tmpdir, sizeof(tmpdir), "%s/wr_test_state_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    conf_run(&mem);
    conf_run(&sq);
    conf_run(&pl);
    RUN(test_abi_contract_violations);
    RUN(test_abi_errors);
    RUN(test_abi_lease_fence);
    RUN(test_abi_open_and_validate);
    RUN(test_abi_check_ops);
    RUN(test_sqlite_migrate_v1);
    RUN(test_sqlite_pragmas);
    RUN(test_sqlite_newer_refused);
    RUN(test_sqlite_bad_files);
    rmdir(tmpdir);
    return unit_done();
}
