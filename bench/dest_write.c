/*
 * dest_write.c - micro-benchmark of a destination's write path without a server: the
 * copy path (write_rows in batches) and the apply path (write_event: inserts, updates,
 * deletes in transactions), timed in CPU seconds (getrusage) so that it means something
 * on a shared machine.
 *
 * NOTES: not installed, not part of the suite; built by meson as bench/dest_write.
 *   bench/dest_write copy  ROWS [DIR] [--key int|text|composite]
 *   bench/dest_write apply CHANGES [DIR]
 * The rows have the shape of bench/run.py's copy table (bigint, int, numeric, text,
 * timestamptz, bool), in the COPY text form the sync worker hands to write_rows. Persists
 * only the SQLite file it writes (DIR/bench.db, removed first).
 */
#include "destinations/destination.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define NCOLS 6
#define BATCH 10000

static double
cpu_now(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double
wall_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *what, const wr_err_t *err)
{
    fprintf(stderr, "dest_write: %s: %s\n", what, err->msg);
    exit(1);
}

static wr_schema_t *
bench_schema(const char *key)
{
    static const char *names[NCOLS] = {"id", "qty", "price", "name", "created", "active"};
    static const uint32_t oids[NCOLS] = {20, 23, 1700, 25, 1184, 16};
    wr_schema_t *s = wr_schema_new(16384, "public", "bench_copy", NCOLS);

    if (s == NULL)
        exit(1);
    s->replident = 'd';
    for (int i = 0; i < NCOLS; i++) {
        s->cols[i].name = wr_strdup(names[i]);
        s->cols[i].type_oid = oids[i];
        s->cols[i].typmod = -1;
    }
    if (strcmp(key, "text") == 0) {
        s->cols[3].is_key = true; /* name: a text key, inserted in random order */
    } else if (strcmp(key, "composite") == 0) {
        s->cols[1].is_key = true;
        s->cols[0].is_key = true;
    } else {
        s->cols[0].is_key = true;
    }
    return s;
}

/* Row i in text form into buf (6 values pointing into buf). */
static void
bench_row(uint64_t i, bool random_name, char *buf, wr_val_t *vals)
{
    char *p = buf;
    int n;

#define PUT(k, ...)                                                                                \
    do {                                                                                           \
        n = sprintf(p, __VA_ARGS__);                                                               \
        vals[k] = (wr_val_t){WR_VAL_TEXT, (uint32_t)n, p};                                         \
        p += n + 1;                                                                                \
    } while (0)
    PUT(0, "%llu", (unsigned long long)i);
    PUT(1, "%llu", (unsigned long long)(i % 1000));
    PUT(2, "%llu.%02llu", (unsigned long long)((i % 100000) / 100), (unsigned long long)(i % 100));
    if (random_name)
        PUT(3, "name-%016llx", (unsigned long long)((i * 0x9E3779B97F4A7C15ull) ^ (i >> 7)));
    else
        PUT(3, "name-%llu", (unsigned long long)i);
    PUT(4, "2026-01-%02llu %02llu:%02llu:%02llu+00", (unsigned long long)(1 + (i / 86400) % 28),
        (unsigned long long)((i / 3600) % 24), (unsigned long long)((i / 60) % 60),
        (unsigned long long)(i % 60));
    PUT(5, "%s", (i % 2) ? "f" : "t");
#undef PUT
}

static dest_t *
bench_open(const char *dir, wr_config_t *cfg, wr_cfg_item_t *item, char *path, size_t len)
{
    dest_t *d = NULL;
    wr_err_t err = {0};

    snprintf(path, len, "%s/bench.db", dir);
    unlink(path);
    {
        char side[600];
        snprintf(side, sizeof(side), "%s-wal", path);
        unlink(side);
        snprintf(side, sizeof(side), "%s-shm", path);
        unlink(side);
    }
    memset(cfg, 0, sizeof(*cfg));
    cfg->dest_type = "sqlite";
    item->key = "path";
    item->value = path;
    item->line = 1;
    cfg->dest_items = item;
    cfg->dest_nitems = 1;
    if (dest_open(cfg, "sync", &d, &err) < 0)
        die("open", &err);
    return d;
}

static int
bench_copy(uint64_t rows, const char *dir, const char *key)
{
    wr_config_t cfg;
    wr_cfg_item_t item;
    char path[512];
    dest_t *d = bench_open(dir, &cfg, &item, path, sizeof(path));
    wr_schema_t *s = bench_schema(key);
    wr_err_t err = {0};
    char *bufs = malloc((size_t)BATCH * 160);
    wr_val_t *vals = malloc((size_t)BATCH * NCOLS * sizeof(*vals));
    wr_row_t *rr = malloc((size_t)BATCH * sizeof(*rr));
    double c0, w0, gen = 0;
    uint64_t done = 0;

    if (bufs == NULL || vals == NULL || rr == NULL)
        return 1;
    c0 = cpu_now();
    w0 = wall_now();
    if (d->ops->begin(d, &err) < 0)
        die("begin", &err);
    if (d->ops->reset_table != NULL) {
        dest_tmeta_t meta;

        memset(&meta, 0, sizeof(meta));
        if (d->ops->reset_table(d, s, &meta, &err) < 0)
            die("reset_table", &err);
    } else if (d->ops->ensure_table(d, s, &err) < 0) {
        die("ensure_table", &err);
    }
    while (done < rows) {
        size_t n = rows - done < BATCH ? (size_t)(rows - done) : BATCH;
        double g0 = cpu_now();

        for (size_t k = 0; k < n; k++) {
            rr[k].ncols = NCOLS;
            rr[k].vals = &vals[k * NCOLS];
            bench_row(done + k + 1, strcmp(key, "text") == 0, &bufs[k * 160], rr[k].vals);
        }
        gen += cpu_now() - g0;
        if (done > 0 && d->ops->begin(d, &err) < 0)
            die("begin", &err);
        if (d->ops->write_rows(d, s->relid, rr, n, &err) < 0)
            die("write_rows", &err);
        if (done + n == rows && d->ops->copy_done != NULL &&
            d->ops->copy_done(d, s->relid, &err) < 0)
            die("copy_done", &err);
        if (d->ops->commit(d, "sync_16384", NULL, &err) < 0)
            die("commit", &err);
        done += n;
    }
    {
        double cpu = cpu_now() - c0 - gen, wall = wall_now() - w0;

        printf("copy rows=%llu key=%s cpu_seconds=%.3f (row generation %.3f excluded) "
               "wall_seconds=%.3f rows_per_cpu_second=%.0f\n",
               (unsigned long long)rows, key, cpu, gen, wall, (double)rows / cpu);
    }
    d->ops->close(d);
    wr_schema_free(s);
    free(bufs);
    free(vals);
    free(rr);
    return 0;
}

/* The bench/run.py drain shape: inserts of 1000-row transactions, then updates, then
 * deletes (half, a quarter, a quarter). */
static int
bench_apply(uint64_t changes, const char *dir)
{
    wr_config_t cfg;
    wr_cfg_item_t item;
    char path[512];
    dest_t *d = bench_open(dir, &cfg, &item, path, sizeof(path));
    wr_schema_t *s = bench_schema("int");
    wr_err_t err = {0};
    char buf[160];
    wr_val_t nv[NCOLS], ov[NCOLS];
    wr_row_t nrow = {NCOLS, nv}, orow = {NCOLS, ov};
    uint64_t ins = changes / 2, upd = changes / 4, del = changes - ins - upd, n = 0;
    double c0, w0;
    dest_key_t key = {0x1000000, 0};

    if (d->ops->ensure_table(d, s, &err) < 0)
        die("ensure_table", &err);
    c0 = cpu_now();
    w0 = wall_now();
    for (int phase = 0; phase < 3; phase++) {
        uint64_t count = phase == 0 ? ins : phase == 1 ? upd : del;

        for (uint64_t i = 1; i <= count; i++) {
            dest_event_t ev;

            if ((i - 1) % 1000 == 0) {
                if (d->ops->begin(d, &err) < 0)
                    die("begin", &err);
                key.commit_lsn += 0x100;
                key.ordinal = 0;
            }
            memset(&ev, 0, sizeof(ev));
            bench_row(i, false, buf, nv);
            ev.relid = s->relid;
            ev.key = key;
            ev.key.ordinal = ++key.ordinal;
            if (phase == 0) {
                ev.kind = DEST_EV_INSERT;
                ev.new_row = &nrow;
            } else if (phase == 1) {
                ev.kind = DEST_EV_UPDATE;
                nv[1] = (wr_val_t){WR_VAL_TEXT, 1, "7"};
                ev.new_row = &nrow;
            } else {
                ev.kind = DEST_EV_DELETE;
                memcpy(ov, nv, sizeof(ov));
                for (int c = 1; c < NCOLS; c++)
                    ov[c] = (wr_val_t){WR_VAL_NULL, 0, NULL};
                ev.old_kind = 'K';
                ev.old_row = &orow;
            }
            if (d->ops->write_event(d, &ev, &err) < 0)
                die("write_event", &err);
            n++;
            if (i % 1000 == 0 || i == count) {
                if (d->ops->commit(d, "apply", &ev.key, &err) < 0)
                    die("commit", &err);
            }
        }
    }
    {
        double cpu = cpu_now() - c0, wall = wall_now() - w0;

        printf("apply changes=%llu cpu_seconds=%.3f wall_seconds=%.3f "
               "changes_per_cpu_second=%.0f\n",
               (unsigned long long)n, cpu, wall, (double)n / cpu);
    }
    d->ops->close(d);
    wr_schema_free(s);
    return 0;
}

int
main(int argc, char **argv)
{
    const char *dir = "/tmp";
    const char *key = "int";
    uint64_t n;

    if (argc < 3) {
        fprintf(stderr, "usage: dest_write copy|apply N [DIR] [--key int|text|composite]\n");
        return 2;
    }
    n = strtoull(argv[2], NULL, 10);
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            key = argv[++i];
        else
            dir = argv[i];
    }
    if (strcmp(argv[1], "copy") == 0)
        return bench_copy(n, dir, key);
    if (strcmp(argv[1], "apply") == 0)
        return bench_apply(n, dir);
    fprintf(stderr, "dest_write: unknown mode \"%s\" (copy or apply)\n", argv[1]);
    return 2;
}
