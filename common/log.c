/*
 * log.c - one line per event on stderr.
 *
 * NOTES: every process. Format: "2026-11-21T13:40:00.123Z INFO message key=value ...
 * pipeline=P worker=W". A line is written with one write(2) so that lines from the
 * supervisor and its workers (which share stderr) do not interleave.
 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_pipeline[64] = "-";
static char log_worker[64] = "-";
static int log_level = LOG_LVL_INFO;

void
log_init(const char *pipeline, const char *worker)
{
    snprintf(log_pipeline, sizeof(log_pipeline), "%s", pipeline && *pipeline ? pipeline : "-");
    snprintf(log_worker, sizeof(log_worker), "%s", worker && *worker ? worker : "-");
}

void
log_set_level(int level)
{
    log_level = level;
}

int
log_level_parse(const char *s)
{
    if (!s)
        return -1;
    if (strcasecmp(s, "debug") == 0)
        return LOG_LVL_DEBUG;
    if (strcasecmp(s, "info") == 0)
        return LOG_LVL_INFO;
    if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        return LOG_LVL_WARN;
    if (strcasecmp(s, "error") == 0)
        return LOG_LVL_ERROR;
    return -1;
}

static const char *
level_name(int level)
{
    switch (level) {
    case LOG_LVL_DEBUG:
        return "DEBUG";
    case LOG_LVL_INFO:
        return "INFO";
    case LOG_LVL_WARN:
        return "WARN";
    default:
        return "ERROR";
    }
}

void
log_msg(int level, const char *fmt, ...)
{
    char line[4096];
    struct timeval tv;
    struct tm tm;
    size_t n;
    int k;
    va_list ap;

    if (level < log_level)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    k = snprintf(line + n, sizeof(line) - n, ".%03dZ %s ", (int)(tv.tv_usec / 1000),
                 level_name(level));
    if (k > 0)
        n += (size_t)k;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (k > 0)
        n = n + (size_t)k < sizeof(line) ? n + (size_t)k : sizeof(line) - 1;
    k = snprintf(line + n, sizeof(line) - n, " pipeline=%s worker=%s\n", log_pipeline, log_worker);
    if (k < 0 || n + (size_t)k >= sizeof(line)) {
        /* truncated: make sure the line still ends with a newline */
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    } else {
        n += (size_t)k;
    }
    /* one write: lines of several processes sharing stderr stay whole */
    if (write(STDERR_FILENO, line, n) < 0) {
        /* nowhere left to report it */
    }
}

void
log_err(int level, const char *what, const wr_err_t *err)
{
    if (err->hint[0])
        log_msg(level, "%s: %s code=%s hint=\"%s\"", what, err->msg, wr_err_code_name(err->code),
                err->hint);
    else
        log_msg(level, "%s: %s code=%s", what, err->msg, wr_err_code_name(err->code));
}

/* Replaces the value after "password=" (key/value form) or the password part of a
 * postgresql:// URI's userinfo with "***". */
void
log_redact_conninfo(const char *conninfo, char *buf, size_t len)
{
    size_t o = 0;
    const char *p = conninfo;
    if (len == 0)
        return;
    if (!conninfo) {
        snprintf(buf, len, "(none)");
        return;
    }
#define PUT_STARS()                                                                                \
    do {                                                                                           \
        PUT('*');                                                                                  \
        PUT('*');                                                                                  \
        PUT('*');                                                                                  \
    } while (0)
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < len)                                                                           \
            buf[o++] = (c);                                                                        \
    } while (0)
    if (strncmp(p, "postgres://", 11) == 0 || strncmp(p, "postgresql://", 13) == 0) {
        const char *start = strstr(p, "://") + 3;
        const char *at = strchr(start, '@');
        const char *slash = strchr(start, '/');
        const char *colon = strchr(start, ':');
        const char *q;
        for (q = p; q < start; q++)
            PUT(*q);
        if (at && (!slash || at < slash) && colon && colon < at) {
            for (q = start; q <= colon; q++)
                PUT(*q);
            PUT_STARS();
            p = at;
        } else {
            p = start;
        }
        /* also redact password=... in the query string */
        while (*p) {
            if ((p[0] == '?' || p[0] == '&') && strncmp(p + 1, "password=", 9) == 0) {
                int i;
                for (i = 0; i < 10; i++)
                    PUT(p[i]);
                PUT_STARS();
                p += 10;
                while (*p && *p != '&')
                    p++;
                continue;
            }
            PUT(*p);
            p++;
        }
    } else {
        while (*p) {
            bool at_word = (p == conninfo || p[-1] == ' ' || p[-1] == '\t');
            if (at_word && strncmp(p, "password", 8) == 0) {
                const char *q = p + 8;
                while (*q == ' ')
                    q++;
                if (*q == '=') {
                    const char *r;
                    q++;
                    while (*q == ' ')
                        q++;
                    for (r = p; r < q; r++)
                        PUT(*r);
                    PUT_STARS();
                    if (*q == '\'') {
                        q++;
                        while (*q && *q != '\'') {
                            if (*q == '\\' && q[1])
                                q++;
                            q++;
                        }
                        if (*q)
                            q++;
                    } else {
                        while (*q && *q != ' ' && *q != '\t')
                            q++;
                    }
                    p = q;
                    continue;
                }
            }
            PUT(*p);
            p++;
        }
    }
#undef PUT
#undef PUT_STARS
    buf[o] = '\0';
}
