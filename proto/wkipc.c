/*
 * wkipc.c - a worker's end of its supervisor channel (fd 3): blocking writes, poll() reads.
 *
 * NOTES: linked into walrelay-apply and walrelay-sync; each process has one channel. It
 * owns the fd and the stream reader. Requests (set_phase, schema) carry c->next_req++
 * and block until the ack with that number arrives; every other message that arrives
 * meanwhile goes to the callback in arrival order. Once the awaited message (ack,
 * welcome, tables) is taken, later messages stay buffered for the next wk_chan_poll, so
 * that a caller can record the acked state before it sees what the supervisor sent
 * after the ack (e.g. apply: ack of CATCHUP, then table_state SYNCDONE).
 * EOF is WR_EEOF; the callers exit at once.
 */
#include "wkipc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/log.h"

#define WK_HANDSHAKE_MS 30000
/* The supervisor acks after one SQLite commit; a minute means it is stuck. */
#define WK_ACK_TIMEOUT_MS 60000
#define WK_READ_CHUNK     65536

/* What a blocking wait is looking for; the matching message is moved into `got`. */
typedef struct wk_want_s {
    ipc_type_t type; /* 0 = nothing: everything goes to the callback */
    uint32_t req;    /* for IPC_ACK */
    bool done;
    ipc_msg_t got;
    bool rejected; /* an ["error", ...] arrived while waiting: our request was refused */
    char reject_msg[512];
} wk_want_t;

int
wk_chan_init(wk_chan_t *c, int fd, wr_err_t *err)
{
    int flags;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    if (fd < 0 || fcntl(fd, F_GETFD) < 0)
        return wr_err_set(err, WR_EINVAL, "supervisor channel fd %d is not open", fd);
    /* not inherited by anything we might exec */
    flags = fcntl(fd, F_GETFD);
    if (flags >= 0)
        (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    if (ipc_reader_init(&c->rd) != 0)
        return wr_err_set(err, WR_ENOMEM, "out of memory for the supervisor channel");
    c->fd = fd;
    c->next_req = 1;
    return 0;
}

void
wk_chan_close(wk_chan_t *c)
{
    if (c->fd >= 0) {
        ipc_reader_close(&c->rd);
        close(c->fd);
    }
    c->fd = -1;
}

void
wk_chan_set_callback(wk_chan_t *c, wk_msg_cb cb, void *arg)
{
    c->cb = cb;
    c->cb_arg = arg;
}

/* Writes all of buf; the fd may be blocking or not. */
static int
wk_write_all(wk_chan_t *c, const char *buf, size_t len, wr_err_t *err)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);

        if (n < 0 && errno == ENOTSOCK)
            n = write(c->fd, buf + off, len - off); /* a pipe in tests */
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {c->fd, POLLOUT, 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR)
                return wr_err_set(err, WR_EIO, "waiting to write to the supervisor: %s",
                                  strerror(errno));
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            return wr_err_set(err, WR_EEOF, "the supervisor closed the channel");
        return wr_err_set(err, WR_EIO, "writing to the supervisor: %s",
                          n < 0 ? strerror(errno) : "nothing written");
    }
    return 0;
}

int
wk_chan_send(wk_chan_t *c, const ipc_msg_t *m, wr_err_t *err)
{
    msgpack_sbuffer sb;
    int rc;

    msgpack_sbuffer_init(&sb);
    rc = ipc_encode(m, &sb);
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sb);
        return wr_err_set(err, rc, "encoding \"%s\" for the supervisor failed",
                          ipc_type_name(m->type));
    }
    rc = wk_write_all(c, sb.data, sb.size, err);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int
wk_lock_role(const char *dir, uint32_t relid, int chan_fd, int timeout_ms, int *lock_fd,
             wr_err_t *err)
{
    char path[4096];
    int64_t deadline = wr_now_ms() + timeout_ms;
    bool logged = false;
    struct flock fl;
    int fd, n;

    *lock_fd = -1;
    n = snprintf(path, sizeof(path), "%s/%s", dir, WK_LOCK_FILE);
    if (n < 0 || (size_t)n >= sizeof(path))
        return wr_err_set(err, WR_EIO, "path \"%s/%s\" is too long", dir, WK_LOCK_FILE);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return wr_err_set(err, WR_EIO, "cannot open \"%s\": %s", path, strerror(errno));
    for (;;) {
        struct pollfd pf;

        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = (off_t)relid;
        fl.l_len = 1;
        if (fcntl(fd, F_SETLK, &fl) == 0) {
            *lock_fd = fd;
            if (logged)
                log_info("the earlier worker of this role is gone, going on");
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES && errno != EINTR) {
            int e = errno;
            close(fd);
            return wr_err_set(err, WR_EIO, "cannot lock \"%s\": %s", path, strerror(e));
        }
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = (off_t)relid;
        fl.l_len = 1;
        if (fcntl(fd, F_GETLK, &fl) != 0)
            fl.l_pid = 0;
        if (!logged) {
            log_warn("another worker of this pipeline and role still runs (a supervisor was "
                     "killed?), waiting for it to exit pid=%ld lock=%s",
                     (long)fl.l_pid, path);
            logged = true;
        }
        if (wr_now_ms() >= deadline) {
            close(fd);
            wr_err_set(err, WR_ECONN,
                       "another worker of this pipeline and role still runs (pid %ld, holding "
                       "\"%s\") after %d s",
                       (long)fl.l_pid, path, timeout_ms / 1000);
            wr_err_hint(err, "it is retried; if that process hangs, kill it");
            return WR_ECONN;
        }
        pf.fd = chan_fd;
        pf.events = POLLIN;
        pf.revents = 0;
        if (chan_fd >= 0 && poll(&pf, 1, 100) > 0 && (pf.revents & (POLLIN | POLLHUP))) {
            char b;
            ssize_t r = recv(chan_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(fd);
                return wr_err_set(err, WR_EEOF, "the supervisor closed the channel");
            }
            usleep(100 * 1000);
        } else if (chan_fd < 0) {
            usleep(100 * 1000);
        }
    }
}

void
wk_chan_report_error(wk_chan_t *c, const char *kind, const wr_err_t *err)
{
    ipc_msg_t m;
    wr_err_t werr;

    if (c == NULL || c->fd < 0 || err == NULL)
        return;
    memset(&m, 0, sizeof(m));
    m.type = IPC_WORKER_ERROR;
    m.u.worker_error.kind = (char *)(kind ? kind : wr_err_code_name(err->code));
    m.u.worker_error.message = (char *)err->msg;
    m.u.worker_error.hint = (char *)err->hint;
    if (wk_chan_send(c, &m, &werr) != 0)
        log_debug("cannot report the error to the supervisor: %s", werr.msg);
}

/* Answers a rejected message with ["error", msg]; a failure to do so is only logged. */
static void
wk_send_error(wk_chan_t *c, const char *msg)
{
    ipc_msg_t e;
    wr_err_t err;

    memset(&e, 0, sizeof(e));
    e.type = IPC_ERROR;
    e.u.error.message = (char *)msg;
    if (wk_chan_send(c, &e, &err) != 0)
        log_err(LOG_LVL_WARN, "cannot answer the supervisor with an error", &err);
}

/* Takes whole messages from the reader. Stops after the wanted one (left in want->got)
 * so that later messages stay buffered. Returns 0 or WR_EPROTO (broken stream). */
static int
wk_dispatch(wk_chan_t *c, wk_want_t *want, wr_err_t *err)
{
    for (;;) {
        ipc_msg_t m;
        wr_err_t derr;
        int rc;

        if (want != NULL && want->done)
            return 0;
        wr_err_clear(&derr);
        rc = ipc_reader_next(&c->rd, &m, &derr);
        if (rc == 0)
            return 0;
        if (rc == WR_EPROTO) {
            log_warn("invalid message from the supervisor: %s", derr.msg);
            wk_send_error(c, derr.msg);
            continue;
        }
        if (rc < 0) {
            wr_err_set(err, WR_EPROTO, "broken stream from the supervisor: %s", derr.msg);
            return WR_EPROTO;
        }

        if (m.type == IPC_STOP)
            c->stop_requested = true;
        if (want != NULL && want->type != 0) {
            bool match = m.type == want->type &&
                         (want->type != IPC_ACK || m.u.ack.req == want->req) &&
                         (want->type != IPC_COPY_PLAN || m.u.copy_plan.req == want->req);
            if (match) {
                want->got = m; /* moved: the waiter clears it */
                want->done = true;
                return 0;
            }
            if (m.type == IPC_ACK) {
                log_warn("unexpected ack from the supervisor req=%u expected=%u", m.u.ack.req,
                         want->req);
                ipc_msg_clear(&m);
                continue;
            }
            if (m.type == IPC_ERROR) {
                /* the supervisor refused what we sent; it will not answer it */
                want->rejected = true;
                snprintf(want->reject_msg, sizeof(want->reject_msg), "%s",
                         m.u.error.message ? m.u.error.message : "");
                want->done = true;
                ipc_msg_clear(&m);
                return 0;
            }
        } else if (m.type == IPC_ERROR) {
            log_warn("the supervisor rejected a message: %s",
                     m.u.error.message ? m.u.error.message : "");
        }
        if (c->cb != NULL)
            c->cb(&m, c->cb_arg);
        ipc_msg_clear(&m);
    }
}

/* Reads what the fd has (waiting at most timeout_ms for the first byte) and dispatches.
 * Bytes already buffered are dispatched first, without waiting. */
static int
wk_read_dispatch(wk_chan_t *c, int timeout_ms, wk_want_t *want, wr_err_t *err)
{
    char buf[WK_READ_CHUNK];
    int rc;
    bool first = true;

    rc = wk_dispatch(c, want, err);
    if (rc != 0 || (want != NULL && want->done))
        return rc;

    for (;;) {
        struct pollfd p = {c->fd, POLLIN, 0};
        ssize_t n;
        int pr;

        pr = poll(&p, 1, first ? timeout_ms : 0);
        if (pr < 0) {
            if (errno == EINTR)
                return 0; /* let the caller look at its signal flags */
            return wr_err_set(err, WR_EIO, "polling the supervisor channel: %s", strerror(errno));
        }
        if (pr == 0)
            return 0;
        first = false;
        n = read(c->fd, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == ECONNRESET)
                return wr_err_set(err, WR_EEOF, "the supervisor closed the channel");
            return wr_err_set(err, WR_EIO, "reading the supervisor channel: %s", strerror(errno));
        }
        if (n == 0) {
            /* hand over what came before the EOF (a stop, say), then report it */
            rc = wk_dispatch(c, want, err);
            if (rc != 0)
                return rc;
            return wr_err_set(err, WR_EEOF, "the supervisor closed the channel");
        }
        rc = ipc_reader_feed(&c->rd, buf, (size_t)n, err);
        if (rc != 0)
            return WR_EPROTO;
        rc = wk_dispatch(c, want, err);
        if (rc != 0 || (want != NULL && want->done))
            return rc;
        if ((size_t)n < sizeof(buf))
            return 0;
    }
}

int
wk_chan_poll(wk_chan_t *c, int timeout_ms, wr_err_t *err)
{
    return wk_read_dispatch(c, timeout_ms, NULL, err);
}

/* Waits until want is done or deadline_ms (wr_now_ms clock) passes; on timeout returns
 * timeout_code with "no <what> from the supervisor within <timeout_s> s". During the
 * handshake (timeout_code WR_EPROTO) a ["stop"] ends the wait with WR_ESTOP. */
static int
wk_wait(wk_chan_t *c, wk_want_t *want, int64_t deadline_ms, int timeout_s, int timeout_code,
        const char *what, wr_err_t *err)
{
    while (!want->done) {
        int64_t left = deadline_ms - wr_now_ms();
        int rc;

        if (timeout_code == WR_EPROTO && c->stop_requested)
            return wr_err_set(err, WR_ESTOP, "asked to stop while waiting for %s", what);
        if (left <= 0)
            return wr_err_set(err, timeout_code, "no %s from the supervisor within %d s", what,
                              timeout_s);
        rc = wk_read_dispatch(c, left > 1000 ? 1000 : (int)left, want, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int
wk_chan_handshake(wk_chan_t *c, const char *role, uint32_t relid, ipc_msg_t *tables, wr_err_t *err)
{
    ipc_msg_t hello;
    wk_want_t want;
    int64_t deadline = wr_now_ms() + WK_HANDSHAKE_MS;
    int rc;

    memset(tables, 0, sizeof(*tables));
    memset(&hello, 0, sizeof(hello));
    hello.type = IPC_HELLO;
    hello.u.hello.version = IPC_PROTO_VERSION;
    hello.u.hello.role = (char *)role;
    hello.u.hello.pid = (int64_t)getpid();
    hello.u.hello.relid = relid;
    rc = wk_chan_send(c, &hello, err);
    if (rc != 0)
        return rc;

    memset(&want, 0, sizeof(want));
    want.type = IPC_WELCOME;
    rc = wk_wait(c, &want, deadline, WK_HANDSHAKE_MS / 1000, WR_EPROTO, "welcome", err);
    if (rc != 0)
        return rc;
    if (want.rejected)
        return wr_err_set(err, WR_EPROTO, "the supervisor rejected hello: %s", want.reject_msg);
    if (want.got.u.welcome.version != IPC_PROTO_VERSION) {
        uint32_t v = want.got.u.welcome.version;
        ipc_msg_clear(&want.got);
        wr_err_set(err, WR_ECONFIG,
                   "supervisor speaks channel protocol version %u, this worker version %u", v,
                   (unsigned)IPC_PROTO_VERSION);
        wr_err_hint(err, "walrelay and its worker binaries come from different builds; "
                         "install them together");
        return WR_ECONFIG;
    }
    ipc_msg_clear(&want.got);

    memset(&want, 0, sizeof(want));
    want.type = IPC_TABLES;
    rc = wk_wait(c, &want, deadline, WK_HANDSHAKE_MS / 1000, WR_EPROTO, "tables", err);
    if (rc != 0)
        return rc;
    if (want.rejected)
        return wr_err_set(err, WR_EPROTO, "the supervisor rejected hello: %s", want.reject_msg);
    *tables = want.got;
    /* a large list comes in several messages (IPC_TABLES_CHUNK tables each) */
    while (tables->u.tables.more) {
        ipc_table_info_t *all;
        uint32_t n1 = tables->u.tables.n, n2;

        memset(&want, 0, sizeof(want));
        want.type = IPC_TABLES;
        rc = wk_wait(c, &want, deadline, WK_HANDSHAKE_MS / 1000, WR_EPROTO, "tables", err);
        if (rc == 0 && want.rejected)
            rc = wr_err_set(err, WR_EPROTO, "the supervisor rejected hello: %s", want.reject_msg);
        if (rc == 0 && (uint64_t)n1 + want.got.u.tables.n > IPC_MAX_ITEMS * 100ull)
            rc = wr_err_set(err, WR_EPROTO, "the supervisor sent more than %llu tables",
                            IPC_MAX_ITEMS * 100ull);
        n2 = want.got.u.tables.n;
        all =
            rc == 0 ? realloc(tables->u.tables.tables, ((size_t)n1 + n2 + 1) * sizeof(*all)) : NULL;
        if (rc == 0 && all == NULL)
            rc = wr_err_set(err, WR_ENOMEM, "out of memory receiving %u tables", n1 + n2);
        if (rc != 0) {
            ipc_msg_clear(&want.got);
            ipc_msg_clear(tables);
            return rc;
        }
        /* the entries (and the strings they own) move over; the second shell is freed */
        if (n2 > 0)
            memcpy(&all[n1], want.got.u.tables.tables, (size_t)n2 * sizeof(*all));
        tables->u.tables.tables = all;
        tables->u.tables.n = n1 + n2;
        tables->u.tables.more = want.got.u.tables.more;
        free(want.got.u.tables.tables);
    }
    return 0;
}

/* Sends a request built by the caller (req already set) and waits for its ack; the ack's
 * message goes to msg (if not NULL). */
static int wk_request_msg(wk_chan_t *c, const ipc_msg_t *m, uint32_t req, const char *what,
                          char *msg, size_t msg_len, wr_err_t *err);

static int
wk_request(wk_chan_t *c, const ipc_msg_t *m, uint32_t req, const char *what, wr_err_t *err)
{
    return wk_request_msg(c, m, req, what, NULL, 0, err);
}

static int
wk_request_msg(wk_chan_t *c, const ipc_msg_t *m, uint32_t req, const char *what, char *msg,
               size_t msg_len, wr_err_t *err)
{
    wk_want_t want;
    int rc;

    rc = wk_chan_send(c, m, err);
    if (rc != 0)
        return rc;
    memset(&want, 0, sizeof(want));
    want.type = IPC_ACK;
    want.req = req;
    rc = wk_wait(c, &want, wr_now_ms() + WK_ACK_TIMEOUT_MS, WK_ACK_TIMEOUT_MS / 1000, WR_ESTATE,
                 "ack", err);
    if (rc != 0) {
        wr_err_prefix(err, "%s: ", what);
        return rc;
    }
    if (want.rejected)
        return wr_err_set(err, WR_ESTATE, "%s: the supervisor rejected the request: %s", what,
                          want.reject_msg);
    if (!want.got.u.ack.ok) {
        wr_err_set(err, WR_ESTATE, "%s: %s", what,
                   want.got.u.ack.message && want.got.u.ack.message[0]
                       ? want.got.u.ack.message
                       : "refused by the supervisor");
        ipc_msg_clear(&want.got);
        return WR_ESTATE;
    }
    if (msg != NULL)
        snprintf(msg, msg_len, "%s", want.got.u.ack.message ? want.got.u.ack.message : "");
    ipc_msg_clear(&want.got);
    return 0;
}

int
wk_chan_set_phase(wk_chan_t *c, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
                  const char *err_kind, const char *err_msg, const char *err_hint, wr_err_t *err)
{
    ipc_msg_t m;
    char what[96];

    memset(&m, 0, sizeof(m));
    m.type = IPC_SET_PHASE;
    m.u.set_phase.req = c->next_req++;
    m.u.set_phase.relid = relid;
    m.u.set_phase.phase = phase;
    m.u.set_phase.lsn = lsn;
    m.u.set_phase.err_kind = (char *)(err_kind ? err_kind : "");
    m.u.set_phase.err_msg = (char *)(err_msg ? err_msg : "");
    m.u.set_phase.err_hint = (char *)(err_hint ? err_hint : "");
    snprintf(what, sizeof(what), "set_phase relid=%u phase=%s", relid, phase_name(phase));
    return wk_request(c, &m, m.u.set_phase.req, what, err);
}

int
wk_chan_put_schema(wk_chan_t *c, const wr_schema_t *s, wr_lsn_t lsn, wr_err_t *err)
{
    ipc_msg_t m;
    char what[96];

    memset(&m, 0, sizeof(m));
    m.type = IPC_SCHEMA;
    m.u.schema.req = c->next_req++;
    m.u.schema.relid = s->relid;
    m.u.schema.lsn = lsn;
    m.u.schema.schema = (wr_schema_t *)s;
    snprintf(what, sizeof(what), "schema relid=%u", s->relid);
    return wk_request(c, &m, m.u.schema.req, what, err);
}

int
wk_chan_copy_plan(wk_chan_t *c, uint32_t relid, wr_lsn_t lsn, const char *snapshot,
                  const ipc_copy_range_t *ranges, uint32_t n, char *held, size_t held_len,
                  wr_err_t *err)
{
    ipc_msg_t m;
    char what[96];

    memset(&m, 0, sizeof(m));
    m.type = IPC_COPY_PLAN;
    m.u.copy_plan.req = c->next_req++;
    m.u.copy_plan.relid = relid;
    m.u.copy_plan.lsn = lsn;
    m.u.copy_plan.snapshot = (char *)(snapshot ? snapshot : "");
    m.u.copy_plan.n = n;
    m.u.copy_plan.ranges = (ipc_copy_range_t *)ranges;
    snprintf(what, sizeof(what), "copy_plan relid=%u ranges=%u", relid, n);
    return wk_request_msg(c, &m, m.u.copy_plan.req, what, held, held_len, err);
}

int
wk_chan_copy_plan_get(wk_chan_t *c, uint32_t relid, ipc_msg_t *plan, wr_err_t *err)
{
    ipc_msg_t m;
    wk_want_t want;
    int rc;

    memset(plan, 0, sizeof(*plan));
    memset(&m, 0, sizeof(m));
    m.type = IPC_COPY_PLAN_GET;
    m.u.copy_plan_get.req = c->next_req++;
    m.u.copy_plan_get.relid = relid;
    if ((rc = wk_chan_send(c, &m, err)) != 0)
        return rc;
    memset(&want, 0, sizeof(want));
    want.type = IPC_COPY_PLAN;
    want.req = m.u.copy_plan_get.req;
    rc = wk_wait(c, &want, wr_now_ms() + WK_ACK_TIMEOUT_MS, WK_ACK_TIMEOUT_MS / 1000, WR_ESTATE,
                 "copy_plan", err);
    if (rc != 0)
        return rc;
    if (want.rejected)
        return wr_err_set(err, WR_ESTATE, "copy_plan_get: the supervisor rejected the request: %s",
                          want.reject_msg);
    *plan = want.got;
    return 0;
}

int
wk_chan_copy_range_done(wk_chan_t *c, uint32_t relid, uint32_t part, uint64_t rows, wr_err_t *err)
{
    ipc_msg_t m;
    char what[96];

    memset(&m, 0, sizeof(m));
    m.type = IPC_COPY_RANGE_DONE;
    m.u.copy_range_done.req = c->next_req++;
    m.u.copy_range_done.relid = relid;
    m.u.copy_range_done.part = part;
    m.u.copy_range_done.rows = rows;
    snprintf(what, sizeof(what), "copy_range_done relid=%u part=%u", relid, part);
    return wk_request(c, &m, m.u.copy_range_done.req, what, err);
}
