/*
 * wr.c - error values, LSN text form, clocks and string helpers.
 *
 * NOTES: linked into every process. No state.
 */
#include "wr.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int
wr_err_set(wr_err_t *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        err->hint[0] = '\0';
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void
wr_err_hint(wr_err_t *err, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(err->hint, sizeof(err->hint), fmt, ap);
    va_end(ap);
}

void
wr_err_prefix(wr_err_t *err, const char *fmt, ...)
{
    char prefix[512], old[sizeof(err->msg)];
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    {
        size_t pl = strlen(prefix), ol = strlen(old);
        if (pl >= sizeof(err->msg))
            pl = sizeof(err->msg) - 1;
        if (pl + ol >= sizeof(err->msg))
            ol = sizeof(err->msg) - 1 - pl;
        memcpy(err->msg, prefix, pl);
        memcpy(err->msg + pl, old, ol);
        err->msg[pl + ol] = '\0';
    }
}

void
wr_err_clear(wr_err_t *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
        err->hint[0] = '\0';
    }
}

const char *
wr_err_code_name(int code)
{
    switch (code) {
    case WR_OK:
        return "ok";
    case WR_EINVAL:
        return "invalid";
    case WR_ENOMEM:
        return "out_of_memory";
    case WR_EIO:
        return "io";
    case WR_ECONFIG:
        return "config";
    case WR_ESOURCE:
        return "source";
    case WR_ECONN:
        return "connection";
    case WR_EPROTO:
        return "protocol";
    case WR_EDEST:
        return "destination";
    case WR_ESTATE:
        return "state";
    case WR_EEOF:
        return "eof";
    case WR_ETRUNC:
        return "truncated";
    case WR_EUNSUPPORTED:
        return "unsupported";
    case WR_ESTOP:
        return "stop";
    case WR_EDATA:
        return "data";
    default:
        return "unknown";
    }
}

int
wr_err_exit_code(int code)
{
    switch (code) {
    case WR_OK:
    case WR_ESTOP:
        return WR_EXIT_OK;
    case WR_ECONFIG:
    case WR_ESOURCE:
    case WR_EUNSUPPORTED:
    case WR_EDATA:
        return WR_EXIT_CONFIG;
    default:
        return WR_EXIT_ERROR;
    }
}

int
wr_lsn_parse(const char *s, wr_lsn_t *out)
{
    char *end;
    unsigned long long hi, lo;
    if (!s || !*s)
        return WR_EINVAL;
    errno = 0;
    hi = strtoull(s, &end, 16);
    if (errno || end == s || *end != '/' || hi > 0xffffffffULL)
        return WR_EINVAL;
    s = end + 1;
    if (!*s)
        return WR_EINVAL;
    lo = strtoull(s, &end, 16);
    if (errno || end == s || *end != '\0' || lo > 0xffffffffULL)
        return WR_EINVAL;
    *out = ((wr_lsn_t)hi << 32) | (wr_lsn_t)lo;
    return 0;
}

char *
wr_lsn_format(wr_lsn_t lsn, char *buf, size_t len)
{
    snprintf(buf, len, WR_LSN_FMT, WR_LSN_ARGS(lsn));
    return buf;
}

int64_t
wr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
wr_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
wr_copy_text(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

char *
wr_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *
wr_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}
