/*
 * repl.h - libpq helpers for the source: connections with the session settings that fix
 * text formats, replication slots, the START_REPLICATION stream and standby status updates.
 *
 * NOTES: used by walrelay-apply, walrelay-sync and the supervisor's preflight. Never logs
 * a conninfo. Every PGresult is cleared on every path.
 */
#ifndef WR_REPL_H
#define WR_REPL_H

#include <libpq-fe.h>
#include "wr.h"

/* Connects. replication=true adds replication=database. Sets DateStyle=ISO,
 * IntervalStyle=postgres, extra_float_digits=3, client_encoding=UTF8, TimeZone=UTC,
 * statement_timeout=0, idle_in_transaction_session_timeout=0 and application_name.
 * Errors: WR_ECONN (unreachable, auth) with the server's message and a hint. */
int repl_connect(const char *conninfo, bool replication, const char *appname, PGconn **out,
                 wr_err_t *err) WR_MUST_CHECK;

/* Puts the connection defaults (connect_timeout unless PGCONNECT_TIMEOUT is set, TCP
 * keepalives, tcp_user_timeout: docs/configuration.md "Connection defaults") into keys and
 * vals, which have room for 6; returns how many. For PQconnectdbParams before "dbname",
 * so that the same keys in a conninfo win. */
size_t repl_conn_defaults_put(const char **keys, const char **vals);

/* Runs a command that returns no rows or any rows; result discarded. */
int repl_exec(PGconn *c, const char *sql, wr_err_t *err) WR_MUST_CHECK;

/* Looks a slot up via SQL. found=false if absent. wal_status may be NULL. */
int repl_slot_info(PGconn *c, const char *slot, bool *found, bool *active,
                   wr_lsn_t *confirmed_flush, char *wal_status, size_t wal_status_len,
                   wr_err_t *err) WR_MUST_CHECK;

/* CREATE_REPLICATION_SLOT slot LOGICAL pgoutput on a replication connection.
 * use_snapshot: (SNAPSHOT 'use') - must run inside BEGIN READ ONLY ISOLATION LEVEL
 * REPEATABLE READ; otherwise (SNAPSHOT 'nothing'). Returns the consistent point. */
int repl_create_slot(PGconn *repl, const char *slot, bool use_snapshot, wr_lsn_t *consistent_point,
                     wr_err_t *err) WR_MUST_CHECK;

/* Drops a slot if it exists (SQL: pg_drop_replication_slot), waiting briefly while it is
 * active. Not an error if it does not exist. */
int repl_drop_slot(PGconn *sql, const char *slot, wr_err_t *err) WR_MUST_CHECK;
/* (issue 11) CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export') outside a transaction: the
 * snapshot of the consistent point stays importable (SET TRANSACTION SNAPSHOT) until the next
 * command on repl or its end; its name goes to snapshot. */
int repl_create_slot_export(PGconn *repl, const char *slot, wr_lsn_t *consistent_point,
                            char *snapshot, size_t snapshot_len, wr_err_t *err) WR_MUST_CHECK;

/* START_REPLICATION SLOT slot LOGICAL start (proto_version '1', publication_names 'pub').
 * The publication name is quoted. After success the connection is in COPY BOTH mode. */
int repl_start(PGconn *repl, const char *slot, wr_lsn_t start, const char *publication,
               wr_err_t *err) WR_MUST_CHECK;
/* repl_start with streaming: proto_version '2' and streaming 'on' (large in-progress
 * transactions arrive in Stream Start/Stop blocks, see pgoutput.h) */
int repl_start_streaming(PGconn *repl, const char *slot, wr_lsn_t start, const char *publication,
                         bool streaming, wr_err_t *err) WR_MUST_CHECK;

/* One CopyData message from the stream, non-blocking (call PQconsumeInput first when the
 * socket is readable). Returns >0 length with *buf set (free with PQfreemem), 0 if none
 * is ready, WR_EEOF when the server ended the stream, <0 error. */
int repl_recv(PGconn *repl, char **buf, wr_err_t *err) WR_MUST_CHECK;

/* Reads what the socket has into libpq's buffer, without blocking (PQconsumeInput).
 * 0, or WR_ECONN "replication connection lost: ..." with libpq's message. */
int repl_consume(PGconn *repl, wr_err_t *err) WR_MUST_CHECK;

/* SHOW wal_sender_timeout on this connection (it may be set per connection, e.g. with
 * options=-c wal_sender_timeout=...): *ms, 0 when the timeout is off. Errors: WR_ECONN,
 * WR_EPROTO (a value that does not parse). Before START_REPLICATION only. */
int repl_wal_sender_timeout(PGconn *c, int64_t *ms, wr_err_t *err) WR_MUST_CHECK;

/* Parses a time GUC as SHOW prints it ("60s", "1min", "500ms", "0"; units us, ms, s,
 * min, h, d; none means ms) into milliseconds (a positive value below 1 ms gives 1).
 * 0 or WR_EINVAL. */
int repl_parse_guc_ms(const char *text, int64_t *ms) WR_MUST_CHECK;

/* Standby status update 'r': write, flush, apply positions. */
int repl_send_status(PGconn *repl, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply,
                     bool reply_requested, wr_err_t *err) WR_MUST_CHECK;

/* Parses a 'k' keepalive; returns 0 or WR_EPROTO. */
int repl_parse_keepalive(const uint8_t *buf, size_t len, wr_lsn_t *wal_end, bool *reply_requested,
                         wr_err_t *err) WR_MUST_CHECK;
/* Parses the 'w' header; returns 0 or WR_EPROTO; *payload and *plen point to the pgoutput message.
 */
int repl_parse_xlogdata(const uint8_t *buf, size_t len, wr_lsn_t *start, wr_lsn_t *wal_end,
                        const uint8_t **payload, size_t *plen, wr_err_t *err) WR_MUST_CHECK;

/* Quotes an identifier / literal for SQL (PQescapeIdentifier/Literal); caller frees with PQfreemem.
 */
char *repl_quote_ident(PGconn *c, const char *s);

#endif
