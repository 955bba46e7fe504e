/*
 * ipc.h - the messages between the supervisor, the workers and the CLI.
 *
 * NOTES: every message is one msgpack array whose first element is the type name
 * (a string); the stream needs no other framing. Each type has a writer (ipc_encode) and a
 * reader (ipc_decode) that checks the type, the arity, every element's type and sizes,
 * and rejects anything else with an error naming the message and the element. Decoded
 * strings and arrays are malloc'd copies owned by the message: ipc_msg_clear frees them.
 *
 *   worker -> supervisor
 *     ["hello", version, role, pid, relid]             first message; role "apply"|"sync"
 *     ["set_phase", req, relid, phase, lsn, err_kind, err_msg, err_hint]   -> ack
 *     ["schema", req, relid, lsn, [nsp, name, replident, [[name, oid, typmod, flags]...]]] -> ack
 *     ["progress", flush_lsn, received_lsn, events]     apply: durable position, for status
 *     ["copy_progress", relid, rows]                    sync: rows copied so far
 *     (issue 11, the parallel copy; sync only)
 *     ["copy_plan", req, relid, lsn, snapshot, [[leaf, first_page, end_page, rows, done]...]]
 *                        -> ack: persist the table's copy plan (replacing any; an empty
 *                        list removes it), then hold `snapshot` (if not "") open in a
 *                        transaction of the supervisor's, so that a worker started after
 *                        a crash can import it; the ack's message is the name of the
 *                        snapshot held ("" if none could be)
 *     ["copy_plan_get", req, relid] -> ["copy_plan", req, relid, lsn, snapshot, [...]]
 *                        the table's plan (an empty list if none) and the snapshot held
 *     ["copy_range_done", req, relid, part, rows] -> ack: range `part` committed
 *     ["worker_metrics", transactions, batches, bytes_received, status_updates,
 *        [[relid, inserts, updates, deletes, truncates]...], batch_hist, batch_sum_us,
 *        commit_hist, commit_sum_us, last_commit_ts, caught_up]
 *                        counts since the worker's previous worker_metrics (deltas, so
 *                        the supervisor's totals survive a worker's restart); a hist is
 *                        IPC_HIST_NCOUNTS per-bucket counts (not cumulative) over
 *                        ipc_hist_bounds_us, the last one +Inf; last_commit_ts: commit
 *                        time (us since the Unix epoch, 0 = none yet) of the last source
 *                        transaction processed; caught_up: everything received is durable
 *     ["streaming", start_lsn]                          apply: START_REPLICATION succeeded
 *     ["dest_wait", message]                            the destination is waiting on the
 *                                                       outside world (retrying): what and
 *                                                       the last error; "" = no longer
 *     ["table_ack", relid, phase, lsn]                  apply: it has taken the table's state
 *                                                      into account (after Init: its writes of
 *                                                      the table are durable, it writes none
 *                                                      any more); the supervisor starts the copy
 *     ["worker_error", kind, message, hint]             the error the worker is about to exit
 *                                                      on (for status and the supervisor's
 *                                                      decision; best effort, never acked)
 *   supervisor -> worker
 *     ["welcome", version, pipeline]
 *     ["tables", [[relid, nsp, name, phase, lsn, dest_name], ...], more]
 *                                                      all tables (apply) or its one (sync);
 *                                                      more = true: the list continues in the
 *                                                      next "tables" message (at most
 *                                                      IPC_TABLES_CHUNK tables in each, so a
 *                                                      publication of any size fits); more
 *                                                      may be missing (= false);
 *                                                      dest_name (issue 12: the pipeline's
 *                                                      unique destination table name) may be
 *                                                      missing (5 elements) or ""
 *     ["table_state", relid, phase, lsn, dest_name]     a persisted change (dest_name optional)
 *     ["ack", req, ok, message]
 *     ["stop"]                                          finish the write in flight, exit 0
 *     ["table_removed", relid]                          apply: the table left the publication
 *   CLI -> supervisor (control socket) and replies
 *     ["status" (, after_relid)] -> ["status_reply", ... (, more)]   ["stop"] -> ["ok", message]
 *                    a reply holds the tables with relid > after_relid (0: from the first)
 *                    up to about IPC_STATUS_PAGE_BYTES or IPC_STATUS_PAGE_TABLES of them;
 *                    more = true (an 11th element only then): ask again with the last
 *                    relid it held. Pipeline, state and workers come with every reply; the
 *                    CLI reads them from the first.
 *     ["retry", table] ["resync", table] ["pause"] ["resume"] ["reload"]
 *                    -> ["ok", message] or ["error", message]   (table: "nsp.name" or "name")
 *     ["metrics"] -> ["metrics_text", text]   the Prometheus text exposition (at most
 *                    IPC_MAX_TEXT bytes, the one string allowed past IPC_MAX_STR)
 *   either direction
 *     ["error", message]                                your last message was rejected
 */
#ifndef WR_IPC_H
#define WR_IPC_H

#include <msgpack.h>
#include "../common/phase.h"
#include "../common/schema.h"

#define IPC_PROTO_VERSION 1
#define IPC_MAX_MSG       (4u * 1024 * 1024) /* bigger messages are rejected */
#define IPC_MAX_STR       (64u * 1024)
#define IPC_MAX_ITEMS     100000
#define IPC_TABLES_CHUNK  1000 /* tables per "tables" message: < 1 MB whatever the names */
/* metrics_text: the whole exposition in one string, with room for the message around it */
#define IPC_MAX_TEXT (IPC_MAX_MSG - 64)

/* Histograms of worker_metrics: upper bounds (microseconds) of the finite buckets; a
 * histogram on the wire holds IPC_HIST_NCOUNTS per-bucket counts, the last for +Inf. */
#define IPC_HIST_NBOUNDS 12
#define IPC_HIST_NCOUNTS (IPC_HIST_NBOUNDS + 1)
extern const uint64_t ipc_hist_bounds_us[IPC_HIST_NBOUNDS];

/* Operations counted per table in worker_metrics, in wire order. */
enum { IPC_OP_INSERT = 0, IPC_OP_UPDATE, IPC_OP_DELETE, IPC_OP_TRUNCATE, IPC_NOPS };
/* (issue 11) a status reply stops near this many bytes or tables, whatever their number */
#define IPC_STATUS_PAGE_BYTES  (256u * 1024)
#define IPC_STATUS_PAGE_TABLES 2000

typedef enum {
    IPC_HELLO = 1,
    IPC_WELCOME,
    IPC_TABLES,
    IPC_TABLE_STATE,
    IPC_SET_PHASE,
    IPC_ACK,
    IPC_SCHEMA,
    IPC_PROGRESS,
    IPC_COPY_PROGRESS,
    IPC_STOP,
    IPC_ERROR,
    IPC_STATUS,
    IPC_STATUS_REPLY,
    IPC_OK,
    /* added for issue 3 (lifecycle commands, publication changes): */
    /* CLI -> supervisor; answered ["ok", message] or ["error", message]: */
    IPC_RETRY,  /* ["retry", table] */
    IPC_RESYNC, /* ["resync", table] */
    IPC_PAUSE,  /* ["pause"] */
    IPC_RESUME, /* ["resume"] */
    IPC_RELOAD, /* ["reload"] */
    /* supervisor -> apply worker: */
    IPC_TABLE_REMOVED, /* ["table_removed", relid]: the table left the publication */
    /* added for issue 10 (metrics): */
    IPC_WORKER_METRICS, /* worker -> supervisor: counter deltas, see above */
    IPC_STREAMING,      /* apply -> supervisor: ["streaming", start_lsn] */
    IPC_METRICS,        /* CLI -> supervisor: ["metrics"] */
    IPC_METRICS_TEXT,   /* supervisor -> CLI: ["metrics_text", text] */
    /* added for issue 9 (streaming sinks); worker -> supervisor: */
    IPC_DEST_WAIT, /* ["dest_wait", message]: the destination waits ("" = no longer) */
    /* added for issue 12 (reliability): */
    /* worker -> supervisor, just before an exit on an error: */
    IPC_WORKER_ERROR, /* ["worker_error", kind, message, hint] */
    /* apply worker -> supervisor: */
    IPC_TABLE_ACK, /* ["table_ack", relid, phase, lsn] */
    /* added for issue 11 (the parallel copy), see above: */
    IPC_COPY_PLAN,
    IPC_COPY_PLAN_GET,
    IPC_COPY_RANGE_DONE,
} ipc_type_t;

/* Most ranges in a copy_plan (state.h STATE_MAX_COPY_RANGES). */
#define IPC_MAX_COPY_RANGES 4096

/* One range of copy_plan: pages [first_page, end_page) of relation leaf (end_page 0: to its
 * end); rows and done once committed. */
typedef struct ipc_copy_range_s {
    uint32_t leaf;
    uint32_t first_page;
    uint32_t end_page;
    uint64_t rows;
    bool done;
} ipc_copy_range_t;

/* One table's changes in worker_metrics, indexed by IPC_OP_*. */
typedef struct ipc_event_count_s {
    uint32_t relid;
    uint64_t n[IPC_NOPS];
} ipc_event_count_t;

/* A histogram delta: per-bucket counts (bucket i: at most ipc_hist_bounds_us[i], the last
 * +Inf) and the sum of the observations in microseconds. */
typedef struct ipc_hist_s {
    uint64_t counts[IPC_HIST_NCOUNTS];
    uint64_t sum_us;
} ipc_hist_t;

typedef struct ipc_table_info_s {
    uint32_t relid;
    char *nsp;
    char *name;
    wr_phase_t phase;
    wr_lsn_t lsn;
    char *dest_name; /* tables only (not status_reply): "" or NULL = not given */
    /* status_reply only (encoded only there): */
    uint64_t rows_copied;
    uint32_t attempts;
    char *err_kind;
    char *err_msg;
    char *err_hint;
} ipc_table_info_t;

typedef struct ipc_worker_info_s {
    char *role;     /* "apply" | "sync" */
    uint32_t relid; /* 0 for apply */
    int64_t pid;    /* 0 when not running */
    uint32_t restarts;
    char *state; /* "starting" | "running" | "backoff" | "stopping" | "failed" */
} ipc_worker_info_t;

typedef struct ipc_msg_s {
    ipc_type_t type;
    union {
        struct {
            uint32_t version;
            char *role;
            int64_t pid;
            uint32_t relid;
        } hello;
        struct {
            uint32_t version;
            char *pipeline;
        } welcome;
        struct {
            uint32_t n;
            ipc_table_info_t *tables;
            bool more; /* (issue 12) another "tables" message continues the list */
        } tables;
        struct {
            uint32_t relid;
            wr_phase_t phase;
            wr_lsn_t lsn;
            char *dest_name; /* table_state only: "" or NULL = not given */
        } table_state;       /* also table_ack */
        struct {
            uint32_t req;
            uint32_t relid;
            wr_phase_t phase;
            wr_lsn_t lsn;
            char *err_kind; /* "" when not errored */
            char *err_msg;
            char *err_hint;
        } set_phase;
        struct {
            uint32_t req;
            bool ok;
            char *message;
        } ack;
        struct {
            uint32_t req;
            uint32_t relid;
            wr_lsn_t lsn;
            wr_schema_t *schema;
        } schema;
        struct {
            wr_lsn_t flush_lsn;
            wr_lsn_t received_lsn;
            uint64_t events;
        } progress;
        struct {
            uint32_t relid;
            uint64_t rows;
        } copy_progress;
        struct {
            char *message;
        } error;
        struct {
            char *message;
        } ok;
        struct {
            char *pipeline;
            char *state; /* "running" | "stopping" | "degraded" | "paused" */
            int64_t pid;
            wr_lsn_t flush_lsn;
            wr_lsn_t received_lsn;
            uint64_t events;
            uint32_t nworkers;
            ipc_worker_info_t *workers;
            uint32_t ntables;
            ipc_table_info_t *tables;
            /* (added for issue 3) why the pipeline is paused, degraded or stopping, "" if
             * nothing to say; the 10th element on the wire, optional when decoding */
            char *message;
            /* (issue 11) more tables follow: ask with the last one's relid (11th element,
             * present only when true) */
            bool more;
        } status_reply;
        struct {
            uint32_t after; /* (issue 11) tables with a greater relid; 0: all */
        } status;
        struct {
            uint32_t req;
            uint32_t relid;
            wr_lsn_t lsn;
            char *snapshot;
            uint32_t n;
            ipc_copy_range_t *ranges;
        } copy_plan;
        struct {
            uint32_t req;
            uint32_t relid;
        } copy_plan_get;
        struct {
            uint32_t req;
            uint32_t relid;
            uint32_t part;
            uint64_t rows;
        } copy_range_done;
        struct {
            char *table;
        } command; /* retry, resync: "nsp.name" or "name" */
        struct {
            uint32_t relid;
        } table_removed;
        struct {
            uint64_t transactions;
            uint64_t batches;
            uint64_t bytes_received;
            uint64_t status_updates;
            uint32_t nevents;
            ipc_event_count_t *events; /* tables with changes since the last report */
            ipc_hist_t batch;          /* a batch: its first write to its commit */
            ipc_hist_t commit;         /* the destination's commit call */
            int64_t last_commit_ts;    /* us since the Unix epoch; 0 = none */
            bool caught_up;
        } worker_metrics;
        struct {
            wr_lsn_t start_lsn;
        } streaming;
        struct {
            char *text;
        } metrics_text;
        struct {
            char *message; /* "" = the wait is over */
        } dest_wait;
        struct {
            char *kind; /* wr_err_code_name() of the error, or a reason ("slot_missing") */
            char *message;
            char *hint;
        } worker_error;
    } u;
} ipc_msg_t;

const char *ipc_type_name(ipc_type_t t);

/* Appends the encoded message to sb. Returns 0 or WR_EINVAL (unknown type) / WR_ENOMEM. */
int ipc_encode(const ipc_msg_t *m, msgpack_sbuffer *sb) WR_MUST_CHECK;
/* Appends the "tables" list of n tables as one or more "tables" messages of at most
 * IPC_TABLES_CHUNK tables each, all but the last with more = true (issue 12: one message
 * had no bound, and a large publication broke IPC_MAX_MSG). Returns 0, WR_EINVAL or
 * WR_ENOMEM (nothing appended then). */
int ipc_encode_tables(const ipc_table_info_t *tables, uint32_t n,
                      msgpack_sbuffer *sb) WR_MUST_CHECK;
/* Validates and decodes one unpacked object into m (zeroed first). On error m holds
 * nothing to free and err names the message type and the offending element. */
int ipc_decode(const msgpack_object *o, ipc_msg_t *m, wr_err_t *err) WR_MUST_CHECK;
/* Frees what a decode allocated, and zeroes m. Safe on a zeroed message. Never frees
 * memory of a message the caller filled by hand: only call it on decoded messages. */
void ipc_msg_clear(ipc_msg_t *m);

/* Stream reader: feed bytes, take whole messages. */
typedef struct ipc_reader_s {
    msgpack_unpacker up;
    msgpack_unpacked result;
    bool broken; /* after a framing error the stream cannot be resynchronised */
    /* (added by the ipc implementation; private to ipc.c) msgpack headers are pre-scanned
     * as bytes are fed, so that a declared array/map of more than IPC_MAX_ITEMS entries or
     * a string longer than IPC_MAX_MSG never reaches the unpacker, which would allocate
     * for the declared size at once. */
    struct {
        uint64_t skip;    /* body bytes still to pass over */
        uint64_t bad_len; /* the declared size that broke a limit */
        uint8_t hdr[9];   /* the header being collected */
        uint8_t have, need;
        bool stopped;  /* an invalid byte: the unpacker will report it */
        bool bad;      /* a header over the limits: nothing from it on was buffered */
        char bad_kind; /* 'a' array, 'm' map, 's' string, binary or extension */
    } scan;
} ipc_reader_t;

int ipc_reader_init(ipc_reader_t *r) WR_MUST_CHECK;
void ipc_reader_close(ipc_reader_t *r);
/* Copies len bytes in. Returns 0, or WR_EPROTO if buffered bytes exceed IPC_MAX_MSG. */
int ipc_reader_feed(ipc_reader_t *r, const char *data, size_t len, wr_err_t *err) WR_MUST_CHECK;
/* Takes the next message: 1 = *m filled (call ipc_msg_clear after), 0 = need more bytes,
 * WR_EPROTO = a well-framed but invalid message (skipped; the stream continues; answer
 * with ["error", ...]), WR_EINVAL = bytes that are not msgpack (r->broken; close). */
int ipc_reader_next(ipc_reader_t *r, ipc_msg_t *m, wr_err_t *err) WR_MUST_CHECK;

/* Schema <-> msgpack ([nsp, name, replident, [[name, oid, typmod, flags]...]]), for the
 * "schema" message; exposed for the state store and tests. */
int ipc_pack_schema(msgpack_packer *pk, const wr_schema_t *s) WR_MUST_CHECK;
int ipc_unpack_schema(const msgpack_object *o, uint32_t relid, wr_schema_t **out,
                      wr_err_t *err) WR_MUST_CHECK;

#endif
