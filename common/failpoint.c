/*
 * failpoint.c - parses WALRELAY_FAILPOINTS once and performs the actions (test-only).
 *
 * NOTES: linked into every process through wr_common; only the workers reach a
 * FAILPOINT() today. Holds a fixed table (no allocation) filled at the first fp_hit().
 * Writes nothing but the marker files in WALRELAY_FAILPOINT_DIR (see failpoint.h).
 */
#include "failpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define FP_MAX      32
#define FP_NAME_MAX 64

typedef enum { FP_SLEEP = 1, FP_EXIT, FP_ABORT } fp_action_t;

typedef struct fp_entry_s {
    char name[FP_NAME_MAX];
    fp_action_t action;
    long arg; /* milliseconds for sleep, exit code for exit */
} fp_entry_t;

int fp_armed = 1;

static bool fp_loaded;
static fp_entry_t fp_entries[FP_MAX];
static size_t fp_n;

/* Trims spaces at both ends of s[0..len) in place; returns the new start, sets *len. */
static const char *
fp_trim(const char *s, size_t *len)
{
    while (*len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        (*len)--;
    }
    while (*len > 0 && (s[*len - 1] == ' ' || s[*len - 1] == '\t'))
        (*len)--;
    return s;
}

/* Parses "NUMBER)" at s (len bytes) into *out within [lo, hi]; 0 or WR_EINVAL. */
static int
fp_parse_arg(const char *s, size_t len, long lo, long hi, long *out)
{
    char buf[24];
    char *end = NULL;
    long v;

    if (len < 2 || s[len - 1] != ')' || len - 1 >= sizeof(buf))
        return WR_EINVAL;
    memcpy(buf, s, len - 1);
    buf[len - 1] = '\0';
    if (buf[0] < '0' || buf[0] > '9')
        return WR_EINVAL;
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return WR_EINVAL;
    *out = v;
    return 0;
}

/* Parses one "name=action" entry into e; 0 or WR_EINVAL. */
static int
fp_parse_entry(const char *s, size_t len, fp_entry_t *e)
{
    const char *eq = memchr(s, '=', len);
    const char *name, *act;
    size_t nlen, alen;

    if (eq == NULL)
        return WR_EINVAL;
    nlen = (size_t)(eq - s);
    name = fp_trim(s, &nlen);
    alen = len - (size_t)(eq - s) - 1;
    act = fp_trim(eq + 1, &alen);
    if (nlen == 0 || nlen >= sizeof(e->name) || memchr(name, '/', nlen) != NULL ||
        (nlen <= 2 && name[0] == '.'))
        return WR_EINVAL;
    memcpy(e->name, name, nlen);
    e->name[nlen] = '\0';
    e->arg = 0;
    if (alen == 5 && memcmp(act, "abort", 5) == 0) {
        e->action = FP_ABORT;
        return 0;
    }
    if (alen > 6 && memcmp(act, "sleep(", 6) == 0) {
        e->action = FP_SLEEP;
        return fp_parse_arg(act + 6, alen - 6, 0, 600000, &e->arg);
    }
    if (alen > 5 && memcmp(act, "exit(", 5) == 0) {
        e->action = FP_EXIT;
        return fp_parse_arg(act + 5, alen - 5, 0, 255, &e->arg);
    }
    return WR_EINVAL;
}

static void
fp_load(void)
{
    const char *spec = getenv("WALRELAY_FAILPOINTS");
    const char *p;

    fp_loaded = true;
    fp_n = 0;
    if (spec == NULL)
        return;
    p = spec;
    while (*p != '\0') {
        const char *semi = strchr(p, ';');
        size_t len = semi ? (size_t)(semi - p) : strlen(p);
        size_t tlen = len;
        const char *t = fp_trim(p, &tlen);

        if (tlen > 0) {
            if (fp_n == FP_MAX)
                log_warn("too many failpoints, ignoring the rest max=%d entry=\"%.*s\"", FP_MAX,
                         (int)tlen, t);
            else if (fp_parse_entry(t, tlen, &fp_entries[fp_n]) < 0)
                log_warn("ignoring malformed failpoint entry=\"%.*s\" hint=\"expected "
                         "name=sleep(MS)|exit(CODE)|abort\"",
                         (int)(tlen > 200 ? 200 : tlen), t);
            else
                fp_n++;
        }
        if (semi == NULL)
            break;
        p = semi + 1;
    }
}

/* With WALRELAY_FAILPOINT_DIR set: creates DIR/name holding our pid. Returns true if we
 * created it (first time this point is reached in this pipeline run). Without the
 * variable, always true. */
static bool
fp_mark(const char *name)
{
    const char *dir = getenv("WALRELAY_FAILPOINT_DIR");
    char path[4096];
    char pid[32];
    int fd, n;

    if (dir == NULL || *dir == '\0')
        return true;
    n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        log_warn("failpoint marker path too long name=%s", name);
        return true;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (errno != EEXIST)
            log_warn("cannot create failpoint marker path=%s error=\"%s\"", path, strerror(errno));
        return errno != EEXIST;
    }
    n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (write(fd, pid, (size_t)n) != n)
        log_warn("cannot write failpoint marker path=%s error=\"%s\"", path, strerror(errno));
    close(fd);
    return true;
}

void
fp_hit(const char *name)
{
    const fp_entry_t *e = NULL;
    bool first;

    if (!fp_loaded) {
        fp_load();
        if (fp_n == 0) {
            fp_armed = 0;
            return;
        }
    }
    for (size_t i = 0; i < fp_n; i++) {
        if (strcmp(fp_entries[i].name, name) == 0) {
            e = &fp_entries[i];
            break;
        }
    }
    if (e == NULL)
        return;
    first = fp_mark(name);
    switch (e->action) {
    case FP_SLEEP: {
        struct timespec ts;

        log_warn("failpoint fired name=%s action=sleep(%ld) pid=%ld", name, e->arg, (long)getpid());
        ts.tv_sec = e->arg / 1000;
        ts.tv_nsec = (e->arg % 1000) * 1000000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return;
    }
    case FP_EXIT:
        if (!first)
            return;
        log_warn("failpoint fired name=%s action=exit(%ld) pid=%ld", name, e->arg, (long)getpid());
        _exit((int)e->arg);
    case FP_ABORT:
        if (!first)
            return;
        log_warn("failpoint fired name=%s action=abort pid=%ld", name, (long)getpid());
        kill(getpid(), SIGKILL);
        _exit(137); /* not reached */
    }
}
