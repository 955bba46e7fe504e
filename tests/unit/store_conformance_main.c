/*
 * store_conformance_main.c - walrelay-store-conformance LIBRARY [KEY=VALUE ...]: the state
 * store conformance suite (store_conformance.h) against a plugin library, through the same
 * loader and adapter walrelay runs it with. For store authors (docs/custom-store.md).
 *
 * NOTES: installed next to the workers (pkg-config --variable=conformance walrelay-store).
 * Each test gets a pipeline directory of its own under $TMPDIR (the KEY=VALUE pairs are the
 * [state] keys; a relative path in them resolves against that directory) and a pipeline
 * name of its own (conformance_<pid>_<n>), so a store shared by pipelines (a database)
 * starts each test empty too; afterwards the pipeline is dropped (role "drop") and the
 * directory removed. Prints "ok - ..." / "not ok - ..." per test and "N passed, N failed";
 * exit code 0 when all passed, 1 when one failed, 2 when the library cannot be used.
 */
#define _XOPEN_SOURCE 700
#include "common/state_abi.h"
#include "store_conformance.h"

#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct conf_plugin_s {
    const char *library;
    char *const *kv;
    size_t nkv;
    char base[512];
} conf_plugin_t;

static void
conf_dir(const conf_plugin_t *p, int seq, char *buf, size_t len)
{
    snprintf(buf, len, "%s/t%d", p->base, seq);
}

static void
conf_pipeline(int seq, char *buf, size_t len)
{
    snprintf(buf, len, "conformance_%ld_%d", (long)getpid(), seq);
}

static int
conf_open(conf_target_t *t, int seq, const char *role, state_store_t **out, wr_err_t *err)
{
    conf_plugin_t *p = t->arg;
    char dir[600], name[64];

    conf_dir(p, seq, dir, sizeof(dir));
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return wr_err_set(err, WR_EIO, "cannot create %s: %s", dir, strerror(errno));
    conf_pipeline(seq, name, sizeof(name));
    return conf_plugin_open(p->library, p->kv, p->nkv, dir, name, role, out, err);
}

static int
conf_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    WR_UNUSED(st);
    WR_UNUSED(flag);
    WR_UNUSED(ftw);
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* Drops the test's pipeline from the store (a database keeps rows otherwise) and removes its
 * directory. */
static void
conf_cleanup(conf_target_t *t, int seq)
{
    conf_plugin_t *p = t->arg;
    state_store_t *s = NULL;
    char dir[600];
    bool dropped;
    wr_err_t err;

    if (conf_open(t, seq, "drop", &s, &err) == 0) {
        if (s->ops->drop_pipeline && s->ops->drop_pipeline(s, &dropped, &err) != 0)
            fprintf(stderr, "  cleanup of test %d: %s\n", seq, err.msg);
        state_close(s);
    } else {
        fprintf(stderr, "  cleanup of test %d: %s\n", seq, err.msg);
    }
    conf_dir(p, seq, dir, sizeof(dir));
    if (nftw(dir, conf_rm, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        fprintf(stderr, "  cannot remove %s: %s\n", dir, strerror(errno));
}

static void
usage(FILE *f)
{
    fputs("usage: walrelay-store-conformance LIBRARY [KEY=VALUE ...]\n"
          "Runs walrelay's state store conformance suite against a store plugin built\n"
          "against walrelay/store.h. KEY=VALUE are the store's [state] keys (a relative\n"
          "path resolves against a fresh directory per test). Exit code 0: every test\n"
          "passed; 1: a test failed; 2: the library cannot be used.\n",
          f);
}

int
main(int argc, char **argv)
{
    conf_plugin_t p;
    conf_target_t t;
    state_plugin_t pl;
    wr_config_t cfg;
    wr_err_t err;
    const char *tmp = getenv("TMPDIR");
    char cwd[512], lib[1024], name[64];
    int rc;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 2; i < argc; i++) {
        if (!strchr(argv[i], '=') || argv[i][0] == '=') {
            fprintf(stderr, "walrelay-store-conformance: \"%s\" is not KEY=VALUE\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    /* the library as walrelay would load it: an absolute path */
    if (argv[1][0] == '/' || !getcwd(cwd, sizeof(cwd)))
        snprintf(lib, sizeof(lib), "%s", argv[1]);
    else
        snprintf(lib, sizeof(lib), "%s/%s", cwd, argv[1]);
    memset(&p, 0, sizeof(p));
    p.library = lib;
    p.kv = argv + 2;
    p.nkv = (size_t)(argc - 2);
    snprintf(p.base, sizeof(p.base), "%s/walrelay-store-conformance-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(p.base)) {
        fprintf(stderr, "walrelay-store-conformance: mkdtemp %s: %s\n", p.base, strerror(errno));
        return 2;
    }

    /* load and validate once, to refuse a library that cannot be used with a clear message */
    cfg_defaults(&cfg);
    cfg.path = (char *)"(conformance)";
    cfg.dir = p.base;
    cfg.pipeline_name = (char *)"conformance";
    cfg.state_backend = CFG_STATE_PLUGIN;
    cfg.state_library = lib;
    wr_err_clear(&err);
    if ((rc = state_plugin_load(&cfg, &pl, &err)) != 0) {
        fprintf(stderr, "walrelay-store-conformance: %s\nhint: %s\n", err.msg, err.hint);
        rmdir(p.base);
        return 2;
    }
    printf("# %s: %s (ABI version %d, %s%s%s)\n", pl.path, pl.ops->name, WR_STORE_ABI_VERSION,
           pl.ops->capabilities & WR_STORE_CAP_LEASE ? "lease" : "no lease",
           pl.ops->check ? ", check" : "", pl.ops->check_lease ? ", check_lease" : "");
    memset(&t, 0, sizeof(t));
    snprintf(name, sizeof(name), "%s", pl.ops->name); /* the library is unloaded below */
    t.label = name;
    t.open = conf_open;
    t.cleanup = conf_cleanup;
    t.persistent = true;
    t.lease = (pl.ops->capabilities & WR_STORE_CAP_LEASE) != 0;
    t.arg = &p;
    state_plugin_unload(&pl);

    conf_run(&t);
    rmdir(p.base);
    return unit_done();
}
