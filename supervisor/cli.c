/*
 * cli.c - the commands of `walrelay`: init, check, run, status, stop, retry, resync,
 * pause, resume, reload, metrics, drop.
 *
 * NOTES: runs in the user's shell. Only `run` becomes the supervisor (sup.c); `status`,
 * `stop`, `retry`, `resync`, `pause`, `resume`, `reload` and `metrics` talk to a running supervisor
 * over DIR/control.sock with blocking I/O (one request, one reply) and never open
 * DIR/state.db. `drop` is the one command that works on a stopped pipeline: holding the
 * pid lock, it drops the pipeline's replication slots on the source and deletes
 * DIR/state.db. Output for people goes to stdout, errors to stderr as "walrelay: MESSAGE"
 * plus "hint: HINT".
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/repl.h"
#include "../destinations/registry.h"
#include "sup.h"

#define CLI_REQUEST_TIMEOUT_MS 10000

/* ---- small helpers ---- */

static void
print_err(const wr_err_t *err)
{
    fprintf(stderr, "walrelay: %s\n", err->msg[0] ? err->msg : wr_err_code_name(err->code));
    if (err->hint[0])
        fprintf(stderr, "hint: %s\n", err->hint);
}

typedef struct cli_opt_s {
    const char *name;   /* "--source" */
    const char **value; /* set for options with an argument */
    bool *flag;         /* set for flags */
} cli_opt_t;

/*
 * Parses argv[1..] (argv[0] is the command word) into options and positional arguments.
 * Accepts "--opt value" and "--opt=value". On a usage error prints it with the command's
 * usage on stderr and returns -1.
 */
static int
cli_parse(int argc, char **argv, const cli_opt_t *opts, size_t nopts, const char **pos,
          size_t npos_want)
{
    size_t npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0 && a[2] != '\0') {
            const char *eq = strchr(a, '=');
            size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
            const cli_opt_t *o = NULL;
            for (size_t k = 0; k < nopts; k++) {
                if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, a, nlen) == 0) {
                    o = &opts[k];
                    break;
                }
            }
            if (!o) {
                fprintf(stderr, "walrelay %s: unknown option \"%.*s\"\n", argv[0], (int)nlen, a);
                goto usage;
            }
            if (o->flag) {
                if (eq) {
                    fprintf(stderr, "walrelay %s: option \"%s\" takes no value\n", argv[0],
                            o->name);
                    goto usage;
                }
                *o->flag = true;
            } else if (eq) {
                *o->value = eq + 1;
            } else if (i + 1 < argc) {
                *o->value = argv[++i];
            } else {
                fprintf(stderr, "walrelay %s: option \"%s\" needs a value\n", argv[0], o->name);
                goto usage;
            }
        } else {
            if (npos >= npos_want) {
                fprintf(stderr, "walrelay %s: unexpected argument \"%s\"\n", argv[0], a);
                goto usage;
            }
            pos[npos++] = a;
        }
    }
    if (npos < npos_want) {
        fprintf(stderr, "walrelay %s: missing argument %s\n", argv[0], npos == 0 ? "DIR" : "TABLE");
        goto usage;
    }
    return 0;
usage:
    cli_print_usage(argv[0], stderr);
    return -1;
}

/* mkdir -p with mode 0700 for the directories it creates. */
static int
mkdir_p(const char *path, wr_err_t *err)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf))
        return wr_err_set(err, WR_EINVAL, "directory path is empty or too long");
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return wr_err_set(err, WR_EIO, "cannot create directory \"%s\": %s", buf,
                              strerror(errno));
        buf[i] = saved;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return wr_err_set(err, WR_EIO, "\"%s\" is not a directory", path);
    return 0;
}

/* basename, lowercased, other characters mapped to '_', cut to the maximum length. */
static void
default_pipeline_name(const char *absdir, char *buf, size_t len)
{
    const char *base = strrchr(absdir, '/');
    base = base ? base + 1 : absdir;
    size_t n = 0;
    for (const char *p = base; *p && n + 1 < len && n < WR_PIPELINE_NAME_MAX; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            c = '_';
        buf[n++] = c;
    }
    buf[n] = '\0';
}

/* ---- walrelay init ---- */

/* What init checks in the file it writes: the destination's section (the registry) and a
 * plugin state store's library (it loads; its own keys are added afterwards). */
static int
init_check(wr_config_t *cfg, wr_err_t *err)
{
    int rc = dest_init_check(cfg, err);

    return rc != 0 ? rc : state_init_check(cfg, err);
}

int
cli_init(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    const char *source = NULL, *publication = NULL, *dest = NULL, *name = NULL, *state = NULL,
               *metrics = NULL;
    const cli_opt_t opts[] = {
        {"--source", &source, NULL},    {"--publication", &publication, NULL},
        {"--destination", &dest, NULL}, {"--name", &name, NULL},
        {"--state", &state, NULL},      {"--metrics", &metrics, NULL},
    };
    if (cli_parse(argc, argv, opts, 6, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    if (!source || !publication) {
        fprintf(stderr, "walrelay init: %s is required\n", !source ? "--source" : "--publication");
        cli_print_usage("init", stderr);
        return WR_EXIT_CONFIG;
    }
    wr_err_t err;
    wr_err_clear(&err);
    /* the [destination] section comes from the destination registry */
    char *dest_section = NULL;
    if (dest_init_section(dest, &dest_section, &err) != 0) {
        print_err(&err);
        return WR_EXIT_CONFIG;
    }
    struct stat st;
    bool existed = stat(pos[0], &st) == 0;
    if (mkdir_p(pos[0], &err) != 0) {
        print_err(&err);
        free(dest_section);
        return WR_EXIT_CONFIG;
    }
    char absdir[PATH_MAX];
    if (!realpath(pos[0], absdir)) {
        fprintf(stderr, "walrelay: cannot resolve \"%s\": %s\n", pos[0], strerror(errno));
        free(dest_section);
        return WR_EXIT_CONFIG;
    }
    char pname[WR_PIPELINE_NAME_MAX + 1];
    if (name) {
        snprintf(pname, sizeof(pname), "%s", name);
        if (strlen(name) > WR_PIPELINE_NAME_MAX || !cfg_pipeline_name_ok(name)) {
            fprintf(stderr, "walrelay: pipeline name \"%s\" is not valid\n", name);
            fprintf(stderr, "hint: use 1 to %d characters from a-z, 0-9 and '_'\n",
                    WR_PIPELINE_NAME_MAX);
            goto fail;
        }
    } else {
        default_pipeline_name(absdir, pname, sizeof(pname));
        if (!cfg_pipeline_name_ok(pname)) {
            fprintf(stderr, "walrelay: cannot make a pipeline name from directory \"%s\"\n",
                    absdir);
            fprintf(stderr, "hint: pass --name NAME (a-z, 0-9, '_', at most %d characters)\n",
                    WR_PIPELINE_NAME_MAX);
            goto fail;
        }
    }
    if (cfg_write_new(absdir, pname, source, publication, dest_section, state, metrics, init_check,
                      &err) != 0) {
        print_err(&err);
        goto fail;
    }
    free(dest_section);
    printf("wrote %s/walrelay.conf\n", absdir);
    printf("  pipeline     %s (replication slot walrelay_%s)\n", pname, pname);
    printf("  publication  %s\n", publication);
    {
        /* a destination argument may hold a conninfo: never show its password */
        char shown[1024];
        log_redact_conninfo(dest ? dest : DEST_DEFAULT_TYPE, shown, sizeof(shown));
        printf("  destination  %s\n", shown);
    }
    if (state && strncmp(state, "plugin:", 7) == 0)
        printf("  state        plugin %s (its keys go below [state]: walrelay check says which)\n",
               state + 7);
    else
        printf("  state        %s\n", state && strncmp(state, "postgres:", 9) == 0
                                          ? "postgres (schema " CFG_STATE_DEFAULT_SCHEMA ")"
                                          : "sqlite (state.db)");
    if (metrics)
        printf("  metrics      http://%s/metrics (also /healthz, /readyz)\n", metrics);
    printf("next: walrelay check %s\n", pos[0]);
    printf("then: walrelay run %s\n", pos[0]);
    return WR_EXIT_OK;
fail:
    free(dest_section);
    if (!existed)
        rmdir(absdir); /* do not leave behind the empty directory we made */
    return WR_EXIT_CONFIG;
}

/* ---- walrelay check ---- */

static void
check_report(void *arg, int level, const char *check, const char *msg, const char *hint)
{
    int *nfail = arg;
    const char *tag = level == SUP_CHECK_OK ? "ok" : level == SUP_CHECK_WARN ? "warn" : "FAILED";
    if (level == SUP_CHECK_FAIL)
        (*nfail)++;
    printf("%-7s%s: %s\n", tag, check, msg);
    if (hint && hint[0])
        printf("       hint: %s\n", hint);
    fflush(stdout);
}

int
cli_check(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    if (cli_parse(argc, argv, NULL, 0, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    wr_config_t cfg;
    wr_err_t err;
    wr_err_clear(&err);
    cfg_defaults(&cfg);
    if (cfg_load(pos[0], &cfg, &err) != 0) {
        print_err(&err);
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    log_init(cfg.pipeline_name, "check");
    log_set_level(LOG_LVL_WARN);
    int nfail = 0;
    int rc = sup_preflight(&cfg, check_report, &nfail, NULL, NULL, NULL, &err);
    cfg_free(&cfg);
    if (rc != 0 || nfail > 0) {
        printf("check failed: %d problem%s to fix before `walrelay run`\n", nfail > 0 ? nfail : 1,
               nfail == 1 ? "" : "s");
        return WR_EXIT_CONFIG;
    }
    printf("all checks passed\n");
    return WR_EXIT_OK;
}

/* ---- walrelay run ---- */

int
cli_run(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    if (cli_parse(argc, argv, NULL, 0, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    return sup_run(pos[0]);
}

/* ---- control socket client ---- */

/*
 * Sends one request to the supervisor of dir and reads one reply into *reply (decoded;
 * caller clears). Returns 0, 1 = not running (message printed), or -1 (error printed).
 */
static int
cli_request(const char *dir, const ipc_msg_t *req, ipc_msg_t *reply)
{
    wr_err_t err;
    wr_err_clear(&err);
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (sup_sock_path(dir, path, sizeof(path), &err) != 0) {
        print_err(&err);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "walrelay is not running for %s (no %s)\n", dir, path);
        return 1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "walrelay: socket: %s\n", strerror(errno));
        return -1;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        close(fd);
        if (e == ECONNREFUSED || e == ENOENT) {
            fprintf(stderr, "walrelay is not running for %s (stale %s: %s)\n", dir, path,
                    strerror(e));
            return 1;
        }
        fprintf(stderr, "walrelay: cannot connect to %s: %s\n", path, strerror(e));
        if (e == EACCES)
            fprintf(stderr, "hint: run walrelay as the user that runs the supervisor\n");
        return -1;
    }

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (ipc_encode(req, &sb) != 0) {
        msgpack_sbuffer_destroy(&sb);
        close(fd);
        fprintf(stderr, "walrelay: cannot encode the request\n");
        return -1;
    }
    size_t off = 0;
    while (off < sb.size) {
        ssize_t w = write(fd, sb.data + off, sb.size - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "walrelay: writing to %s: %s\n", path, strerror(errno));
            msgpack_sbuffer_destroy(&sb);
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    msgpack_sbuffer_destroy(&sb);

    ipc_reader_t rd;
    if (ipc_reader_init(&rd) != 0) {
        close(fd);
        fprintf(stderr, "walrelay: out of memory\n");
        return -1;
    }
    int result = -1;
    int64_t deadline = wr_now_ms() + CLI_REQUEST_TIMEOUT_MS;
    for (;;) {
        int rc = ipc_reader_next(&rd, reply, &err);
        if (rc == 1) {
            result = 0;
            break;
        }
        if (rc < 0) {
            fprintf(stderr, "walrelay: bad reply from the supervisor: %s\n", err.msg);
            break;
        }
        int64_t left = deadline - wr_now_ms();
        if (left <= 0) {
            fprintf(stderr, "walrelay: no reply from the supervisor within %d s\n",
                    CLI_REQUEST_TIMEOUT_MS / 1000);
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        char buf[65536];
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "walrelay: the supervisor closed the connection without a reply\n");
            break;
        }
        if (ipc_reader_feed(&rd, buf, (size_t)r, &err) != 0) {
            fprintf(stderr, "walrelay: bad reply from the supervisor: %s\n", err.msg);
            break;
        }
    }
    ipc_reader_close(&rd);
    close(fd);
    return result;
}

/* ---- walrelay status ---- */

static void
fmt_lsn(wr_lsn_t l, char *buf, size_t len)
{
    snprintf(buf, len, WR_LSN_FMT, WR_LSN_ARGS(l));
}

/*
 * Writes s as a JSON string (with quotes). Valid UTF-8 passes through, control characters
 * are escaped, and bytes that are not valid UTF-8 become U+FFFD so the output is always
 * valid JSON.
 */
static void
json_str(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', f);
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            p++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n':
                fputs("\\n", f);
                break;
            case '\r':
                fputs("\\r", f);
                break;
            case '\t':
                fputs("\\t", f);
                break;
            case '\b':
                fputs("\\b", f);
                break;
            case '\f':
                fputs("\\f", f);
                break;
            default:
                fprintf(f, "\\u%04x", c);
                break;
            }
            p++;
        } else if (c < 0x80) {
            fputc(c, f);
            p++;
        } else {
            /* length and minimum code point of the sequence */
            int n;
            uint32_t cp, min;
            if ((c & 0xe0) == 0xc0) {
                n = 2, cp = c & 0x1f, min = 0x80;
            } else if ((c & 0xf0) == 0xe0) {
                n = 3, cp = c & 0x0f, min = 0x800;
            } else if ((c & 0xf8) == 0xf0) {
                n = 4, cp = c & 0x07, min = 0x10000;
            } else {
                fputs("\\ufffd", f);
                p++;
                continue;
            }
            int k;
            for (k = 1; k < n; k++) {
                if ((p[k] & 0xc0) != 0x80)
                    break;
                cp = (cp << 6) | (p[k] & 0x3f);
            }
            if (k < n || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
                fputs("\\ufffd", f);
                p++; /* resynchronise on the next byte */
                continue;
            }
            fwrite(p, 1, (size_t)n, f);
            p += n;
        }
    }
    fputc('"', f);
}

static void
status_json(const ipc_msg_t *m)
{
    char a[32], b[32];
    const __typeof__(m->u.status_reply) *r = &m->u.status_reply;
    FILE *f = stdout;
    fmt_lsn(r->flush_lsn, a, sizeof(a));
    fmt_lsn(r->received_lsn, b, sizeof(b));
    fputs("{\"pipeline\":", f);
    json_str(f, r->pipeline);
    fputs(",\"state\":", f);
    json_str(f, r->state);
    fprintf(f, ",\"pid\":%lld,\"flush_lsn\":\"%s\",\"received_lsn\":\"%s\",\"events\":%llu",
            (long long)r->pid, a, b, (unsigned long long)r->events);
    fputs(",\"message\":", f);
    if (r->message && r->message[0])
        json_str(f, r->message);
    else
        fputs("null", f);
    fputs(",\"workers\":[", f);
    for (uint32_t i = 0; i < r->nworkers; i++) {
        const ipc_worker_info_t *w = &r->workers[i];
        fputs(i ? ",{\"role\":" : "{\"role\":", f);
        json_str(f, w->role);
        fprintf(f, ",\"relid\":%u,\"pid\":%lld,\"restarts\":%u,\"state\":", w->relid,
                (long long)w->pid, w->restarts);
        json_str(f, w->state);
        fputc('}', f);
    }
    fputs("],\"tables\":[", f);
    for (uint32_t i = 0; i < r->ntables; i++) {
        const ipc_table_info_t *t = &r->tables[i];
        fmt_lsn(t->lsn, a, sizeof(a));
        fprintf(f, "%s{\"relid\":%u,\"schema\":", i ? "," : "", t->relid);
        json_str(f, t->nsp);
        fputs(",\"name\":", f);
        json_str(f, t->name);
        fputs(",\"phase\":", f);
        json_str(f, phase_name(t->phase));
        fprintf(f, ",\"lsn\":\"%s\",\"rows_copied\":%llu,\"attempts\":%u,\"error\":", a,
                (unsigned long long)t->rows_copied, t->attempts);
        if (t->phase == PH_ERRORED || (t->err_kind && t->err_kind[0])) {
            fputs("{\"kind\":", f);
            json_str(f, t->err_kind);
            fputs(",\"message\":", f);
            json_str(f, t->err_msg);
            fputs(",\"hint\":", f);
            json_str(f, t->err_hint);
            fputc('}', f);
        } else {
            fputs("null", f);
        }
        fputc('}', f);
    }
    fputs("]}\n", f);
}

static const char *
table_of_worker(const ipc_msg_t *m, uint32_t relid, char *buf, size_t len)
{
    const __typeof__(m->u.status_reply) *r = &m->u.status_reply;
    if (relid == 0)
        return "-";
    for (uint32_t i = 0; i < r->ntables; i++) {
        if (r->tables[i].relid == relid) {
            snprintf(buf, len, "%s.%s", r->tables[i].nsp ? r->tables[i].nsp : "",
                     r->tables[i].name ? r->tables[i].name : "");
            return buf;
        }
    }
    snprintf(buf, len, "relid %u", relid);
    return buf;
}

static int
imax(int a, int b)
{
    return a > b ? a : b;
}

static void
status_human(const ipc_msg_t *m)
{
    const __typeof__(m->u.status_reply) *r = &m->u.status_reply;
    char a[32], b[32], tbuf[300];
    fmt_lsn(r->flush_lsn, a, sizeof(a));
    fmt_lsn(r->received_lsn, b, sizeof(b));
    printf("pipeline        %s\n", r->pipeline ? r->pipeline : "");
    printf("state           %s\n", r->state ? r->state : "");
    if (r->message && r->message[0])
        printf("message         %s\n", r->message);
    printf("supervisor pid  %lld\n", (long long)r->pid);
    printf("flush LSN       %s   (confirmed to the source)\n", a);
    printf("received LSN    %s\n", b);
    printf("events          %llu\n", (unsigned long long)r->events);

    /* workers */
    int wt = 5;
    for (uint32_t i = 0; i < r->nworkers; i++)
        wt = imax(wt, (int)strlen(table_of_worker(m, r->workers[i].relid, tbuf, sizeof(tbuf))));
    printf("\nworkers\n  %-6s %-10s %-*s %-8s %-8s %s\n", "ROLE", "RELID", wt, "TABLE", "PID",
           "RESTARTS", "STATE");
    if (r->nworkers == 0)
        printf("  (none)\n");
    for (uint32_t i = 0; i < r->nworkers; i++) {
        const ipc_worker_info_t *w = &r->workers[i];
        char rel[16], pid[24];
        if (w->relid)
            snprintf(rel, sizeof(rel), "%u", w->relid);
        else
            snprintf(rel, sizeof(rel), "-");
        if (w->pid > 0)
            snprintf(pid, sizeof(pid), "%lld", (long long)w->pid);
        else
            snprintf(pid, sizeof(pid), "-");
        printf("  %-6s %-10s %-*s %-8s %-8u %s\n", w->role ? w->role : "", rel, wt,
               table_of_worker(m, w->relid, tbuf, sizeof(tbuf)), pid, w->restarts,
               w->state ? w->state : "");
    }

    /* tables */
    int nt = 5;
    for (uint32_t i = 0; i < r->ntables; i++)
        nt = imax(nt, (int)strlen(table_of_worker(m, r->tables[i].relid, tbuf, sizeof(tbuf))));
    printf("\ntables\n  %-*s %-12s %-18s %s\n", nt, "TABLE", "PHASE", "LSN", "ROWS COPIED");
    if (r->ntables == 0)
        printf("  (none: the publication has no tables)\n");
    for (uint32_t i = 0; i < r->ntables; i++) {
        const ipc_table_info_t *t = &r->tables[i];
        fmt_lsn(t->lsn, a, sizeof(a));
        printf("  %-*s %-12s %-18s %llu\n", nt, table_of_worker(m, t->relid, tbuf, sizeof(tbuf)),
               phase_name(t->phase), a, (unsigned long long)t->rows_copied);
        if (t->phase == PH_ERRORED || (t->err_msg && t->err_msg[0])) {
            printf("  %-*s error (%s): %s\n", nt, "",
                   t->err_kind && t->err_kind[0] ? t->err_kind : "?", t->err_msg ? t->err_msg : "");
            if (t->err_hint && t->err_hint[0])
                printf("  %-*s hint: %s\n", nt, "", t->err_hint);
        }
        if (t->attempts > 0 && t->phase != PH_ERRORED)
            printf("  %-*s failures in a row: %u\n", nt, "", t->attempts);
        else if (t->attempts > 0)
            printf("  %-*s attempts: %u\n", nt, "", t->attempts);
    }
}

/* (issue 11) Asks for the status pages after the first (reply->more) and appends their
 * tables to reply, so that the whole list prints as one. Returns 0, or the exit code of a
 * failure (printed). */
static int
status_rest(const char *dir, ipc_msg_t *reply)
{
    while (reply->u.status_reply.more && reply->u.status_reply.ntables > 0) {
        __typeof__(reply->u.status_reply) *r = &reply->u.status_reply;
        ipc_msg_t req, next;
        ipc_table_info_t *all;

        memset(&req, 0, sizeof(req));
        req.type = IPC_STATUS;
        req.u.status.after = r->tables[r->ntables - 1].relid;
        if (cli_request(dir, &req, &next) != 0)
            return WR_EXIT_ERROR;
        if (next.type != IPC_STATUS_REPLY) {
            fprintf(stderr, "walrelay: the supervisor answered \"%s\"%s%s while listing tables\n",
                    ipc_type_name(next.type), next.type == IPC_ERROR ? ": " : "",
                    next.type == IPC_ERROR ? next.u.error.message : "");
            ipc_msg_clear(&next);
            return WR_EXIT_ERROR;
        }
        all = realloc(r->tables, (r->ntables + next.u.status_reply.ntables) * sizeof(*all));
        if (!all) {
            ipc_msg_clear(&next);
            fprintf(stderr, "walrelay: out of memory\n");
            return WR_EXIT_ERROR;
        }
        /* the entries move with their strings: next keeps only its emptied array */
        memcpy(all + r->ntables, next.u.status_reply.tables,
               next.u.status_reply.ntables * sizeof(*all));
        r->tables = all;
        r->ntables += next.u.status_reply.ntables;
        r->more = next.u.status_reply.more && next.u.status_reply.ntables > 0;
        next.u.status_reply.ntables = 0;
        ipc_msg_clear(&next);
    }
    return 0;
}

int
cli_status(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    bool json = false;
    const cli_opt_t opts[] = {{"--json", NULL, &json}};
    if (cli_parse(argc, argv, opts, 1, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    ipc_msg_t req, reply;
    memset(&req, 0, sizeof(req));
    req.type = IPC_STATUS;
    int rc = cli_request(pos[0], &req, &reply);
    if (rc != 0)
        return WR_EXIT_ERROR;
    int code = WR_EXIT_OK;
    if (reply.type == IPC_STATUS_REPLY && (code = status_rest(pos[0], &reply)) != 0) {
        ipc_msg_clear(&reply);
        return code;
    }
    if (reply.type == IPC_STATUS_REPLY) {
        if (json)
            status_json(&reply);
        else
            status_human(&reply);
    } else if (reply.type == IPC_ERROR) {
        fprintf(stderr, "walrelay: the supervisor answered: %s\n", reply.u.error.message);
        code = WR_EXIT_ERROR;
    } else {
        fprintf(stderr, "walrelay: unexpected reply \"%s\" from the supervisor\n",
                ipc_type_name(reply.type));
        code = WR_EXIT_ERROR;
    }
    ipc_msg_clear(&reply);
    return code;
}

/* ---- walrelay stop ---- */

/*
 * Is the pid file of dir locked by a running supervisor? 1 = yes (*pid read from it),
 * 0 = no (file absent or lock free), -1 = cannot tell (errno).
 */
static int
pidfile_held(const char *dir, long *pid)
{
    char path[PATH_MAX];
    wr_err_t err;
    if (sup_path(dir, SUP_PID_FILE, path, sizeof(path), &err) != 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n > 0) {
        buf[n] = '\0';
        *pid = strtol(buf, NULL, 10);
    }
    int held;
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        flock(fd, LOCK_UN);
        held = 0;
    } else {
        held = errno == EWOULDBLOCK ? 1 : -1;
    }
    close(fd);
    return held;
}

int
cli_stop(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    const char *timeout_s = NULL;
    const cli_opt_t opts[] = {{"--timeout", &timeout_s, NULL}};
    if (cli_parse(argc, argv, opts, 1, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    long timeout = 60;
    if (timeout_s) {
        char *end;
        errno = 0;
        timeout = strtol(timeout_s, &end, 10);
        if (errno || end == timeout_s || *end || timeout < 0 || timeout > 86400) {
            fprintf(stderr, "walrelay stop: --timeout must be 0..86400 seconds, not \"%s\"\n",
                    timeout_s);
            return WR_EXIT_CONFIG;
        }
    }
    long pid = 0;
    ipc_msg_t req, reply;
    memset(&req, 0, sizeof(req));
    req.type = IPC_STOP;
    int rc = cli_request(pos[0], &req, &reply);
    if (rc != 0)
        return WR_EXIT_ERROR;
    if (reply.type == IPC_ERROR) {
        fprintf(stderr, "walrelay: the supervisor answered: %s\n", reply.u.error.message);
        ipc_msg_clear(&reply);
        return WR_EXIT_ERROR;
    }
    if (reply.type != IPC_OK) {
        fprintf(stderr, "walrelay: unexpected reply \"%s\" from the supervisor\n",
                ipc_type_name(reply.type));
        ipc_msg_clear(&reply);
        return WR_EXIT_ERROR;
    }
    ipc_msg_clear(&reply);

    int64_t deadline = wr_now_ms() + (int64_t)timeout * 1000;
    for (;;) {
        int held = pidfile_held(pos[0], &pid);
        if (held == 0)
            break;
        if (held < 0) {
            fprintf(stderr, "walrelay: cannot check %s/%s: %s\n", pos[0], SUP_PID_FILE,
                    strerror(errno));
            return WR_EXIT_ERROR;
        }
        if (wr_now_ms() >= deadline) {
            fprintf(stderr, "walrelay: the supervisor (pid %ld) has not exited after %ld s\n", pid,
                    timeout);
            fprintf(stderr, "hint: it is still stopping its workers; wait, or send it SIGKILL\n");
            return WR_EXIT_ERROR;
        }
        usleep(100 * 1000);
    }
    printf("stopped\n");
    return WR_EXIT_OK;
}

/* ---- walrelay retry | resync | pause | resume | reload ---- */

/* Sends a command to the supervisor of dir and prints its answer: the message on stdout
 * (exit 0), or the refusal on stderr (exit 1). */
static int
cli_command(const char *dir, const ipc_msg_t *req)
{
    ipc_msg_t reply;
    int code = WR_EXIT_OK;
    if (cli_request(dir, req, &reply) != 0)
        return WR_EXIT_ERROR;
    if (reply.type == IPC_OK) {
        printf("%s\n", reply.u.ok.message ? reply.u.ok.message : "ok");
    } else if (reply.type == IPC_ERROR) {
        fprintf(stderr, "walrelay: %s\n", reply.u.error.message ? reply.u.error.message : "");
        code = WR_EXIT_ERROR;
    } else {
        fprintf(stderr, "walrelay: unexpected reply \"%s\" from the supervisor\n",
                ipc_type_name(reply.type));
        code = WR_EXIT_ERROR;
    }
    ipc_msg_clear(&reply);
    return code;
}

static int
cli_table_command(int argc, char **argv, ipc_type_t type)
{
    const char *pos[2] = {NULL, NULL};
    ipc_msg_t req;
    if (cli_parse(argc, argv, NULL, 0, pos, 2) != 0)
        return WR_EXIT_CONFIG;
    memset(&req, 0, sizeof(req));
    req.type = type;
    req.u.command.table = (char *)pos[1];
    return cli_command(pos[0], &req);
}

static int
cli_plain_command(int argc, char **argv, ipc_type_t type)
{
    const char *pos[1] = {NULL};
    ipc_msg_t req;
    if (cli_parse(argc, argv, NULL, 0, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    memset(&req, 0, sizeof(req));
    req.type = type;
    return cli_command(pos[0], &req);
}

int
cli_retry(int argc, char **argv)
{
    return cli_table_command(argc, argv, IPC_RETRY);
}

int
cli_resync(int argc, char **argv)
{
    return cli_table_command(argc, argv, IPC_RESYNC);
}

int
cli_pause(int argc, char **argv)
{
    return cli_plain_command(argc, argv, IPC_PAUSE);
}

int
cli_resume(int argc, char **argv)
{
    return cli_plain_command(argc, argv, IPC_RESUME);
}

int
cli_reload(int argc, char **argv)
{
    return cli_plain_command(argc, argv, IPC_RELOAD);
}

/* ---- walrelay metrics ---- */

int
cli_metrics(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    ipc_msg_t req, reply;
    int code = WR_EXIT_OK;

    if (cli_parse(argc, argv, NULL, 0, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    memset(&req, 0, sizeof(req));
    req.type = IPC_METRICS;
    if (cli_request(pos[0], &req, &reply) != 0)
        return WR_EXIT_ERROR;
    if (reply.type == IPC_METRICS_TEXT) {
        fputs(reply.u.metrics_text.text ? reply.u.metrics_text.text : "", stdout);
    } else if (reply.type == IPC_ERROR) {
        fprintf(stderr, "walrelay: the supervisor answered: %s\n", reply.u.error.message);
        code = WR_EXIT_ERROR;
    } else {
        fprintf(stderr, "walrelay: unexpected reply \"%s\" from the supervisor\n",
                ipc_type_name(reply.type));
        code = WR_EXIT_ERROR;
    }
    ipc_msg_clear(&reply);
    return code;
}

/* ---- walrelay drop ---- */

/* Is name one of the pipeline's slots: walrelay_<p>, or walrelay_<p>_s<digits>? */
static bool
drop_is_ours(const wr_config_t *cfg, const char *name)
{
    char apply[64], prefix[80];
    size_t plen;
    cfg_apply_slot_name(cfg, apply, sizeof(apply));
    if (strcmp(name, apply) == 0)
        return true;
    snprintf(prefix, sizeof(prefix), "%s_s", apply);
    plen = strlen(prefix);
    if (strncmp(name, prefix, plen) != 0 || name[plen] == '\0' || strlen(name + plen) > 10)
        return false;
    for (const char *p = name + plen; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

/* Drops the pipeline's slots in the source database. Returns the number that could not
 * be dropped, or -1 if they could not be listed. */
static int
drop_slots(PGconn *c, const wr_config_t *cfg)
{
    char apply[64], prefix[80];
    const char *params[2];
    PGresult *res;
    int failed = 0, ndropped = 0;

    cfg_apply_slot_name(cfg, apply, sizeof(apply));
    snprintf(prefix, sizeof(prefix), "%s_s", apply);
    params[0] = apply;
    params[1] = prefix;
    res = PQexecParams(c,
                       "SELECT slot_name::text FROM pg_catalog.pg_replication_slots "
                       "WHERE database = current_database() "
                       "AND (slot_name::text = $1 OR starts_with(slot_name::text, $2)) ORDER BY 1",
                       2, NULL, params, NULL, NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "walrelay: cannot list the replication slots: %s",
                res ? PQresultErrorMessage(res) : PQerrorMessage(c));
        fprintf(stderr, "hint: nothing was removed\n");
        PQclear(res);
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        const char *name = PQgetvalue(res, i, 0);
        wr_err_t err;
        if (!drop_is_ours(cfg, name))
            continue;
        wr_err_clear(&err);
        if (repl_drop_slot(c, name, &err) != 0) {
            fprintf(stderr, "walrelay: cannot drop replication slot \"%s\": %s\n", name, err.msg);
            if (err.hint[0])
                fprintf(stderr, "hint: %s\n", err.hint);
            failed++;
            continue;
        }
        printf("dropped replication slot %s\n", name);
        ndropped++;
    }
    PQclear(res);
    if (ndropped == 0 && failed == 0)
        printf("no replication slot of pipeline %s on the source\n", cfg->pipeline_name);
    return failed;
}

/* Removes DIR/state.db and its -wal and -shm files. Returns 0 or -1 (printed). */
static int
drop_state(const char *dir)
{
    static const char *const files[] = {SUP_STATE_FILE, SUP_STATE_FILE "-wal",
                                        SUP_STATE_FILE "-shm"};
    int rc = 0;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[PATH_MAX];
        wr_err_t err;
        if (sup_path(dir, files[i], path, sizeof(path), &err) != 0) {
            print_err(&err);
            rc = -1;
            continue;
        }
        if (unlink(path) == 0) {
            if (i == 0)
                printf("removed %s\n", path);
        } else if (errno != ENOENT) {
            fprintf(stderr, "walrelay: cannot remove %s: %s\n", path, strerror(errno));
            rc = -1;
        }
    }
    return rc;
}

int
cli_drop(int argc, char **argv)
{
    const char *pos[1] = {NULL};
    char pidpath[PATH_MAX], app[96];
    wr_config_t cfg;
    wr_err_t err;
    PGconn *conn = NULL;
    state_store_t *store = NULL; /* postgres or plugin: the pipeline's state is there */
    int fd, code = WR_EXIT_OK, failed;

    if (cli_parse(argc, argv, NULL, 0, pos, 1) != 0)
        return WR_EXIT_CONFIG;
    wr_err_clear(&err);
    cfg_defaults(&cfg);
    if (cfg_load(pos[0], &cfg, &err) != 0 || state_config_check(&cfg, &err) != 0) {
        print_err(&err);
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    log_init(cfg.pipeline_name, "drop");
    log_set_level(LOG_LVL_WARN);

    /* Hold the pid lock for the whole drop: no supervisor runs, none can start. */
    if (sup_path(cfg.dir, SUP_PID_FILE, pidpath, sizeof(pidpath), &err) != 0) {
        print_err(&err);
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    fd = open(pidpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "walrelay: cannot open %s: %s\n", pidpath, strerror(errno));
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        close(fd);
        if (errno == EWOULDBLOCK || errno == EAGAIN) {
            fprintf(stderr,
                    "walrelay: pipeline in %s is running (pid %ld); walrelay stop %s first\n",
                    pos[0], strtol(buf, NULL, 10), pos[0]);
            fprintf(stderr, "hint: nothing was removed\n");
        } else {
            fprintf(stderr, "walrelay: cannot lock %s: %s\n", pidpath, strerror(errno));
        }
        cfg_free(&cfg);
        return WR_EXIT_CONFIG;
    }

    /* A store other than state.db (postgres, a plugin): its lease first, so a supervisor of
     * this pipeline running on another host (with another directory) keeps everything */
    if ((cfg.state_backend == CFG_STATE_POSTGRES &&
         state_open_postgres(cfg.state_conninfo, cfg.state_schema, cfg.pipeline_name, &store,
                             &err) != 0) ||
        (cfg.state_backend == CFG_STATE_PLUGIN &&
         state_open_plugin(&cfg, "drop", &store, &err) != 0)) {
        print_err(&err);
        fprintf(stderr, "walrelay: nothing was removed\n");
        code = WR_EXIT_CONFIG;
        goto out;
    }
    snprintf(app, sizeof(app), "walrelay_%s_drop", cfg.pipeline_name);
    if (repl_connect(cfg.source_conninfo, false, app, &conn, &err) != 0) {
        print_err(&err);
        fprintf(stderr, "walrelay: nothing was removed: the replication slots are on the "
                        "source, so it must be reachable\n");
        code = WR_EXIT_CONFIG;
        goto out;
    }
    failed = drop_slots(conn, &cfg);
    PQfinish(conn);
    if (failed != 0) {
        fprintf(stderr,
                "walrelay: %s was kept because not every slot could be dropped; run "
                "walrelay drop %s again\n",
                store ? "the pipeline's state" : SUP_STATE_FILE, pos[0]);
        code = WR_EXIT_ERROR;
        goto out;
    }
    if (store) {
        char where[600];
        bool dropped;

        if (store->ops->drop_pipeline(store, &dropped, &err) != 0) {
            print_err(&err);
            code = WR_EXIT_ERROR;
            goto out;
        }
        if (cfg.state_backend == CFG_STATE_POSTGRES)
            snprintf(where, sizeof(where), "schema %s", cfg.state_schema);
        else
            snprintf(where, sizeof(where), "plugin %s", cfg.state_library);
        printf(dropped ? "removed the state of pipeline %s from the state store (%s)\n"
                       : "no state of pipeline %s in the state store (%s)\n",
               cfg.pipeline_name, where);
    } else if (drop_state(cfg.dir) != 0) {
        code = WR_EXIT_ERROR;
        goto out;
    }
    {
        char where[600];
        dest_describe(&cfg, where, sizeof(where));
        printf("kept %s/walrelay.conf and the destination data (%s)\n", cfg.dir, where);
    }
    printf("walrelay run %s starts the pipeline over: every table is copied again\n", pos[0]);
out:
    state_close(store);
    unlink(pidpath); /* while still holding the lock, as the supervisor does */
    close(fd);
    cfg_free(&cfg);
    return code;
}
