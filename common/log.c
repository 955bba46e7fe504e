/*
 * log.c - one line per event on stderr, as text or JSON (log.h).
 *
 * NOTES: every process. Text: "2026-11-21T13:40:00.123Z INFO message key=value ...
 * pipeline=P worker=W"; JSON: one object per line (log.h), built in a per-thread
 * jw_buf_t (common/json.h) whose memory is kept for the next line. A line is written with
 * one write(2) so that lines from the supervisor and its workers (which share stderr) do
 * not interleave. Every line goes through log_redact_text first. Thread-safe: the state
 * is set once at start (and by reload on the supervisor's loop); lines are built in
 * per-call or per-thread buffers.
 */
#include "log.h"
#include "json.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_pipeline[64] = "-";
static char log_worker[64] = "-";
static int log_level = LOG_LVL_INFO;
static int log_format = LOG_FMT_TEXT;

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

void
log_set_format(int format)
{
    log_format = format == LOG_FMT_JSON ? LOG_FMT_JSON : LOG_FMT_TEXT;
}

int
log_get_format(void)
{
    return log_format;
}

int
log_format_parse(const char *s)
{
    if (!s)
        return -1;
    if (strcasecmp(s, "text") == 0)
        return LOG_FMT_TEXT;
    if (strcasecmp(s, "json") == 0)
        return LOG_FMT_JSON;
    return -1;
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

static void
log_write(const char *buf, size_t n)
{
    /* one write: lines of several processes sharing stderr stay whole */
    if (write(STDERR_FILENO, buf, n) < 0) {
        /* nowhere left to report it */
    }
}

/* ---- JSON lines ---- */

static bool
log_key_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && ((c >= '0' && c <= '9') || c == '.' || c == '-'));
}

/* Length of "key" if p starts with "key=", else 0. */
static size_t
log_key_len(const char *p)
{
    size_t n = 0;
    if (!log_key_char(p[0], true))
        return 0;
    while (log_key_char(p[n], n == 0))
        n++;
    return p[n] == '=' ? n : 0;
}

typedef struct log_field_s {
    const char *key, *val;
    size_t klen, vlen;
    bool quoted;
} log_field_t;

/* One key=value at p: the position after it (a space or the end), or NULL. */
static const char *
log_field_at(const char *p, log_field_t *f)
{
    const char *q;

    f->klen = log_key_len(p);
    if (f->klen == 0)
        return NULL;
    f->key = p;
    q = p + f->klen + 1;
    if (*q == '"') {
        const char *r = q + 1;
        /* the closing quote is followed by the end or by " key=": quotes inside a
         * value (messages are not escaped) stay part of it */
        for (;;) {
            r = strchr(r, '"');
            if (!r)
                return NULL;
            if (r[1] == '\0' || (r[1] == ' ' && log_key_len(r + 2) > 0))
                break;
            r++;
        }
        f->val = q + 1;
        f->vlen = (size_t)(r - q - 1);
        f->quoted = true;
        return r + 1;
    }
    f->val = q;
    while (*q && *q != ' ')
        q++;
    f->vlen = (size_t)(q - f->val);
    f->quoted = false;
    return q;
}

/* True if p to the end is nothing but key=value fields separated by spaces. */
static bool
log_fields_only(const char *p)
{
    log_field_t f;
    while (*p) {
        p = log_field_at(p, &f);
        if (!p)
            return false;
        while (*p == ' ')
            p++;
    }
    return true;
}

/* Where the trailing fields of text begin (its end if none). */
static const char *
log_fields_start(const char *text)
{
    for (const char *p = text; *p; p++) {
        if ((p == text || p[-1] == ' ') && log_key_len(p) > 0 && log_fields_only(p))
            return p;
    }
    return text + strlen(text);
}

/* A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, at most 24 bytes. */
static bool
log_is_number(const char *s, size_t n)
{
    size_t i = 0;

    if (n == 0 || n > 24)
        return false;
    if (s[i] == '-')
        i++;
    if (i == n || s[i] < '0' || s[i] > '9')
        return false;
    if (s[i] == '0' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9')
        return false;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i < n && s[i] == '.') {
        i++;
        if (i == n || s[i] < '0' || s[i] > '9')
            return false;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i == n || s[i] < '0' || s[i] > '9')
            return false;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    return i == n;
}

/* Replaces every byte that is not part of valid UTF-8 with '?', in place. */
static void
log_fix_utf8(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n;
        uint32_t cp, min;
        if (*p < 0x80) {
            p++;
            continue;
        }
        if ((*p & 0xe0) == 0xc0)
            n = 2, cp = *p & 0x1f, min = 0x80;
        else if ((*p & 0xf0) == 0xe0)
            n = 3, cp = *p & 0x0f, min = 0x800;
        else if ((*p & 0xf8) == 0xf0)
            n = 4, cp = *p & 0x07, min = 0x10000;
        else {
            *p++ = '?';
            continue;
        }
        int k;
        for (k = 1; k < n; k++) {
            if ((p[k] & 0xc0) != 0x80)
                break;
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if (k < n || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

static bool
log_reserved(const char *k, size_t n)
{
    static const char *const names[] = {"ts", "level", "msg", "pipeline", "worker"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == n && memcmp(names[i], k, n) == 0)
            return true;
    return false;
}

void
log_json_line(jw_buf_t *out, const char *ts, int level, const char *text, const char *pipeline,
              const char *worker)
{
    static const char *const lnames[] = {"debug", "info", "warn", "error"};
    char buf[4096];
    const char *fs, *p;
    size_t mlen;

    snprintf(buf, sizeof(buf), "%s", text ? text : "");
    log_fix_utf8(buf);
    fs = log_fields_start(buf);
    mlen = (size_t)(fs - buf);
    while (mlen > 0 && buf[mlen - 1] == ' ')
        mlen--;
    jw_lit(out, "{\"ts\":");
    jw_cstr(out, ts);
    jw_lit(out, ",\"level\":");
    jw_cstr(out, lnames[level >= 0 && level <= 3 ? level : 3]);
    jw_lit(out, ",\"msg\":");
    jw_str(out, buf, mlen);
    jw_lit(out, ",\"pipeline\":");
    jw_cstr(out, pipeline);
    jw_lit(out, ",\"worker\":");
    jw_cstr(out, worker);
    for (p = fs; *p;) {
        log_field_t f;
        p = log_field_at(p, &f);
        if (!p)
            break; /* cannot happen: log_fields_start checked the whole tail */
        jw_lit(out, ",");
        if (log_reserved(f.key, f.klen)) {
            char k[96];
            snprintf(k, sizeof(k), "field_%.*s", (int)(f.klen > 80 ? 80 : f.klen), f.key);
            jw_cstr(out, k);
        } else {
            jw_str(out, f.key, f.klen);
        }
        jw_lit(out, ":");
        if (!f.quoted && log_is_number(f.val, f.vlen))
            jw_raw(out, f.val, f.vlen);
        else
            jw_str(out, f.val, f.vlen);
        while (*p == ' ')
            p++;
    }
    jw_lit(out, "}\n");
}

void
log_msg(int level, const char *fmt, ...)
{
    char line[4096], text[4096], clean[4096], ts[48];
    struct timeval tv;
    struct tm tm;
    size_t n;
    int k;
    va_list ap;

    if (level < log_level)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    log_redact_text(text, clean, sizeof(clean));

    if (log_format == LOG_FMT_JSON) {
        /* kept per thread for the next line (the supervisor's thread pool logs too) */
        static _Thread_local jw_buf_t jb;
        jw_reset(&jb);
        log_json_line(&jb, ts, level, clean, log_pipeline, log_worker);
        if (!jw_failed(&jb)) {
            log_write(jb.data, jb.len);
            return;
        }
        /* out of memory: the text line below still says what happened */
    }

    k = snprintf(line, sizeof(line), "%s %s %s", ts, level_name(level), clean);
    n = k > 0 ? ((size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1) : 0;
    k = snprintf(line + n, sizeof(line) - n, " pipeline=%s worker=%s\n", log_pipeline, log_worker);
    if (k < 0 || n + (size_t)k >= sizeof(line)) {
        /* truncated: make sure the line still ends with a newline */
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    } else {
        n += (size_t)k;
    }
    log_write(line, n);
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

void
log_redact_text(const char *text, char *buf, size_t len)
{
    size_t o = 0;
    const char *p = text ? text : "";

    if (len == 0)
        return;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < len)                                                                           \
            buf[o++] = (c);                                                                        \
    } while (0)
    while (*p) {
        /* password = VALUE */
        /* also PGPASSWORD=, sslpassword=, db_password=: any key ending in it */
        if (strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (*q == ' ')
                q++;
            if (*q == '=') {
                q++;
                while (*q == ' ')
                    q++;
                for (const char *r = p; r < q; r++)
                    PUT(*r);
                PUT('*');
                PUT('*');
                PUT('*');
                if (*q == '\'' || *q == '"') {
                    char quote = *q++;
                    while (*q && *q != quote) {
                        if (*q == '\\' && q[1])
                            q++;
                        q++;
                    }
                    if (*q)
                        q++;
                } else {
                    while (*q && *q != ' ' && *q != '\t' && *q != '&' && *q != '"' && *q != '\'' &&
                           *q != '\n')
                        q++;
                }
                p = q;
                continue;
            }
        }
        /* scheme://user:PASSWORD@host */
        if (p[0] == ':' && p[1] == '/' && p[2] == '/') {
            const char *start = p + 3, *at = start, *colon = NULL;
            while (*at && *at != '@' && *at != '/' && *at != ' ' && *at != '"' && *at != '\'') {
                if (*at == ':' && !colon)
                    colon = at;
                at++;
            }
            if (*at == '@' && colon) {
                for (const char *r = p; r <= colon; r++)
                    PUT(*r);
                PUT('*');
                PUT('*');
                PUT('*');
                p = at;
                continue;
            }
        }
        PUT(*p);
        p++;
    }
#undef PUT
    buf[o] = '\0';
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
