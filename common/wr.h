/*
 * wr.h - small definitions shared by every walrelay module.
 *
 * NOTES: included by all processes. Holds the error value (code, message, hint),
 * LSN helpers and the attribute macros. Nothing here allocates.
 */
#ifndef WR_H
#define WR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WR_MUST_CHECK   __attribute__((warn_unused_result))
#define WR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define WR_UNUSED(x)    ((void)(x))

/* Error codes: 0 is success, errors are negative. */
enum {
    WR_OK = 0,
    WR_EINVAL = -1,        /* bad argument or malformed input */
    WR_ENOMEM = -2,        /* allocation failed */
    WR_EIO = -3,           /* local I/O error */
    WR_ECONFIG = -4,       /* configuration error: do not restart */
    WR_ESOURCE = -5,       /* source misconfigured (wal_level, publication...): do not restart */
    WR_ECONN = -6,         /* connection lost / unreachable: transient, retry */
    WR_EPROTO = -7,        /* peer sent something that breaks the protocol */
    WR_EDEST = -8,         /* destination error */
    WR_ESTATE = -9,        /* state store error */
    WR_EEOF = -10,         /* peer closed the connection */
    WR_ETRUNC = -11,       /* input ended too early */
    WR_EUNSUPPORTED = -12, /* something we cannot replicate */
    WR_ESTOP = -13,        /* asked to stop */
    WR_EDATA =
        -14, /* a table's data cannot be applied (bad value, divergence): retrying cannot help */
};

/* Exit codes, see STYLE.md: 0 asked to stop, 1 error (restart), 2 config (no restart).
 * (added for issue 3) 3: walrelay-apply only, its slot lost required WAL (wal_status
 * 'lost'); the supervisor stops the pipeline or, with on_slot_lost = recopy, copies again.
 * (issue 12) 4: a worker's source is unavailable (common/srcprobe.h): restarted for as
 * long as the outage lasts, with a capped backoff, not counted as a failure. */
enum {
    WR_EXIT_OK = 0,
    WR_EXIT_ERROR = 1,
    WR_EXIT_CONFIG = 2,
    WR_EXIT_SLOT_LOST = 3,
    WR_EXIT_SOURCE_DOWN = 4
};

typedef struct wr_err_s {
    int code;
    char msg[1024];
    char hint[512];
} wr_err_t;

/* Sets code and message (printf-style); returns code so callers can `return wr_err_set(...)`. */
int wr_err_set(wr_err_t *err, int code, const char *fmt, ...) WR_PRINTF(3, 4);
/* Adds a hint: what a person can do about it. */
void wr_err_hint(wr_err_t *err, const char *fmt, ...) WR_PRINTF(2, 3);
/* Prefixes the message with context ("copying \"public.t\": "). */
void wr_err_prefix(wr_err_t *err, const char *fmt, ...) WR_PRINTF(2, 3);
void wr_err_clear(wr_err_t *err);
const char *wr_err_code_name(int code);
/* Exit code for a process that stops on this error. */
int wr_err_exit_code(int code);

/* LSNs */
typedef uint64_t wr_lsn_t;
#define WR_LSN_FMT     "%X/%X"
#define WR_LSN_ARGS(l) (unsigned)((uint64_t)(l) >> 32), (unsigned)((uint64_t)(l)&0xffffffffu)
/* "16/B374D848" -> lsn; returns 0 on success, WR_EINVAL on malformed text. */
int wr_lsn_parse(const char *s, wr_lsn_t *out) WR_MUST_CHECK;
/* Writes "X/X" into buf (at least 24 bytes) and returns buf. */
char *wr_lsn_format(wr_lsn_t lsn, char *buf, size_t len);

/* Monotonic milliseconds. */
int64_t wr_now_ms(void);
/* Wall-clock milliseconds since the Unix epoch (for records people read). */
int64_t wr_wall_ms(void);
/* Copies src (NULL = "") into dst of size bytes, cut at a UTF-8 character boundary when
 * too long; always NUL-terminated (size must be > 0). */
void wr_copy_text(char *dst, size_t size, const char *src);

/* Small string helpers (abort on OOM is not acceptable: return NULL). */
char *wr_strdup(const char *s);
char *wr_strndup(const char *s, size_t n);

#endif
