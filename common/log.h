/*
 * log.h - one line per event on stderr: "TS LEVEL message key=value ... pipeline=P worker=W",
 * or with [log] format = json one JSON object per line:
 *   {"ts":"2026-11-21T13:40:00.123Z","level":"info","msg":"message","pipeline":"P",
 *    "worker":"W","key":"value","n":42,...}
 *
 * NOTES: every process calls log_init once. Secrets never go through here: callers
 * log conninfo only through log_redact_conninfo(); as a safety net every line, in both
 * formats, has password=VALUE and the password of a postgresql://user:PASSWORD@ URI
 * replaced by *** before it is written. In JSON, the message's trailing key=value fields
 * (value bare, or "quoted" up to a quote followed by the end or by " key=") become members:
 * a bare value that is a JSON number is written as a number, everything else as a string;
 * a field named like a member walrelay writes itself (ts, level, msg, pipeline, worker)
 * is written as field_<name>. Text that does not end in such fields stays in msg.
 */
#ifndef WR_LOG_H
#define WR_LOG_H

#include "wr.h"

enum { LOG_LVL_DEBUG = 0, LOG_LVL_INFO = 1, LOG_LVL_WARN = 2, LOG_LVL_ERROR = 3 };
enum { LOG_FMT_TEXT = 0, LOG_FMT_JSON = 1 };

void log_init(const char *pipeline, const char *worker);
void log_set_level(int level);
/* LOG_FMT_TEXT (the default) or LOG_FMT_JSON. */
void log_set_format(int format);
int log_get_format(void);
/* "text" | "json" -> LOG_FMT_*, or -1. */
int log_format_parse(const char *s);
/* "debug" | "info" | "warn" | "error" -> level, or -1. */
int log_level_parse(const char *s);
void log_msg(int level, const char *fmt, ...) WR_PRINTF(2, 3);

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

/* Logs an error value: message, code, and hint when there is one. */
void log_err(int level, const char *what, const wr_err_t *err);

/* Copies conninfo into buf with every password=... value replaced by "***"
 * (key/value form and URI form). */
void log_redact_conninfo(const char *conninfo, char *buf, size_t len);

/* Copies any text into buf (NUL-terminated, cut to len) with the value after every
 * "password" followed by "=" (any case, also as the end of a longer key such as
 * PGPASSWORD or sslpassword; optional spaces; a value quoted with ' or " is replaced
 * whole) and the password part of "://user:PASSWORD@" replaced by "***".
 * What every log line goes through. */
void log_redact_text(const char *text, char *buf, size_t len);

/* Writes the JSON form of one line into out (malloc'd by the caller's jw_buf_t, see
 * common/json.h): exposed for the unit tests. ts is the formatted time, text the message
 * with its fields. */
struct jw_buf_s;
void log_json_line(struct jw_buf_s *out, const char *ts, int level, const char *text,
                   const char *pipeline, const char *worker);

#endif
