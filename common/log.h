/*
 * log.h - one line per event on stderr: "TS LEVEL message key=value ... pipeline=P worker=W".
 *
 * NOTES: every process calls log_init once. Secrets never go through here: callers
 * log conninfo only through log_redact_conninfo().
 */
#ifndef WR_LOG_H
#define WR_LOG_H

#include "wr.h"

enum { LOG_LVL_DEBUG = 0, LOG_LVL_INFO = 1, LOG_LVL_WARN = 2, LOG_LVL_ERROR = 3 };

void log_init(const char *pipeline, const char *worker);
void log_set_level(int level);
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

#endif
