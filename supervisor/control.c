/*
 * control.c - the control server on DIR/control.sock: `walrelay status`, `stop`, `retry`,
 * `resync`, `pause`, `resume`, `reload` and `metrics`.
 *
 * NOTES: runs in the supervisor, on its libuv loop. The socket is mode 0600 and a peer
 * whose uid (SO_PEERCRED) is not ours is refused. Requests are msgpack messages
 * (proto/ipc.h) dispatched from a table of {type, handler}; a bad message gets
 * ["error", ...] and never crashes the supervisor. At most SUP_CONTROL_MAX_CLIENTS
 * clients at a time (more are answered with an error and closed) and none idle for more
 * than SUP_CONTROL_IDLE_MS (sup_control_sweep, from the tick): a flood of clients cannot
 * take the file descriptors the supervisor needs for its workers (issue 12). Owns nothing
 * persistent.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/log.h"
#include "sup.h"

typedef struct sup_client_s {
    uv_pipe_t pipe;
    sup_control_t *ctl;
    ipc_reader_t rd;
    bool rd_ok;
    bool closing;
    int64_t last_ms; /* accepted, or its last bytes read: for the idle sweep */
    struct sup_client_s *next;
} sup_client_t;

typedef void (*ctl_handler_fn)(sup_client_t *cl, const ipc_msg_t *m);

static char ctl_readbuf[65536];

static void
client_closed_cb(uv_handle_t *h)
{
    sup_client_t *cl = h->data;
    if (cl->rd_ok)
        ipc_reader_close(&cl->rd);
    free(cl);
}

static void
client_close(sup_client_t *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    sup_control_t *c = cl->ctl;
    for (sup_client_t **pp = &c->clients; *pp; pp = &(*pp)->next) {
        if (*pp == cl) {
            *pp = cl->next;
            c->nclients--;
            break;
        }
    }
    uv_read_stop((uv_stream_t *)&cl->pipe);
    uv_close((uv_handle_t *)&cl->pipe, client_closed_cb);
}

static void
client_shutdown_cb(uv_shutdown_t *req, int status)
{
    WR_UNUSED(status);
    sup_client_t *cl = req->data;
    free(req);
    client_close(cl);
}

/* Closes after the queued writes are flushed. */
static void
client_close_after_write(sup_client_t *cl)
{
    if (cl->closing)
        return;
    uv_read_stop((uv_stream_t *)&cl->pipe);
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req) {
        req->data = cl;
        if (uv_shutdown(req, (uv_stream_t *)&cl->pipe, client_shutdown_cb) == 0)
            return;
        free(req);
    }
    client_close(cl);
}

static void
client_send(sup_client_t *cl, const ipc_msg_t *m)
{
    if (cl->closing)
        return;
    if (sup_stream_send((uv_stream_t *)&cl->pipe, m) != 0) {
        log_warn("cannot answer a control client type=%s", ipc_type_name(m->type));
        client_close(cl);
    }
}

static void
client_send_error(sup_client_t *cl, const char *msg)
{
    ipc_msg_t e;
    memset(&e, 0, sizeof(e));
    e.type = IPC_ERROR;
    e.u.error.message = (char *)msg;
    client_send(cl, &e);
}

static void
handle_status(sup_client_t *cl, const ipc_msg_t *m)
{
    ipc_msg_t r;
    wr_err_t err;
    wr_err_clear(&err);
    if (sup_status_page(cl->ctl->sup, m->u.status.after, &r, &err) != 0) {
        log_err(LOG_LVL_WARN, "building the status reply", &err);
        client_send_error(cl, err.msg[0] ? err.msg : "cannot build the status");
        return;
    }
    client_send(cl, &r);
    sup_status_free(&r);
}

static void
handle_stop(sup_client_t *cl, const ipc_msg_t *m)
{
    WR_UNUSED(m);
    ipc_msg_t r;
    memset(&r, 0, sizeof(r));
    r.type = IPC_OK;
    r.u.ok.message = "stopping";
    client_send(cl, &r);
    sup_cmd_stop(cl->ctl->sup, "stop requested over the control socket");
}

/* Answers a command's outcome: ["ok", msg], or ["error", "message\nhint: hint"]. */
static void
reply_outcome(sup_client_t *cl, int rc, const char *msg, const wr_err_t *err)
{
    ipc_msg_t r;
    char buf[2048];
    memset(&r, 0, sizeof(r));
    if (rc == 0) {
        r.type = IPC_OK;
        r.u.ok.message = (char *)msg;
        client_send(cl, &r);
        return;
    }
    snprintf(buf, sizeof(buf), "%s%s%s", err->msg[0] ? err->msg : wr_err_code_name(rc),
             err->hint[0] ? "\nhint: " : "", err->hint);
    client_send_error(cl, buf);
}

static void
handle_retry(sup_client_t *cl, const ipc_msg_t *m)
{
    char msg[2048] = "";
    wr_err_t err;
    wr_err_clear(&err);
    int rc = sup_cmd_retry(cl->ctl->sup, m->u.command.table, msg, sizeof(msg), &err);
    reply_outcome(cl, rc, msg, &err);
}

static void
handle_resync(sup_client_t *cl, const ipc_msg_t *m)
{
    char msg[2048] = "";
    wr_err_t err;
    wr_err_clear(&err);
    int rc = sup_cmd_resync(cl->ctl->sup, m->u.command.table, msg, sizeof(msg), &err);
    reply_outcome(cl, rc, msg, &err);
}

static void
handle_pause(sup_client_t *cl, const ipc_msg_t *m)
{
    char msg[2048] = "";
    wr_err_t err;
    WR_UNUSED(m);
    wr_err_clear(&err);
    int rc = sup_cmd_pause(cl->ctl->sup, msg, sizeof(msg), &err);
    reply_outcome(cl, rc, msg, &err);
}

static void
handle_resume(sup_client_t *cl, const ipc_msg_t *m)
{
    char msg[2048] = "";
    wr_err_t err;
    WR_UNUSED(m);
    wr_err_clear(&err);
    int rc = sup_cmd_resume(cl->ctl->sup, msg, sizeof(msg), &err);
    reply_outcome(cl, rc, msg, &err);
}

static void
handle_reload(sup_client_t *cl, const ipc_msg_t *m)
{
    char msg[4096] = "";
    wr_err_t err;
    WR_UNUSED(m);
    wr_err_clear(&err);
    int rc = sup_cmd_reload(cl->ctl->sup, msg, sizeof(msg), &err);
    reply_outcome(cl, rc, msg, &err);
}

static void
handle_metrics(sup_client_t *cl, const ipc_msg_t *m)
{
    ipc_msg_t r;
    char *text = NULL;
    size_t len = 0;
    wr_err_t err;

    WR_UNUSED(m);
    wr_err_clear(&err);
    if (sup_metrics_text(cl->ctl->sup, &text, &len, &err) != 0) {
        client_send_error(cl, err.msg);
        return;
    }
    if (len > IPC_MAX_TEXT) {
        free(text);
        client_send_error(cl, "the metrics are too long for the control socket; read them over "
                              "HTTP ([metrics] listen)");
        return;
    }
    memset(&r, 0, sizeof(r));
    r.type = IPC_METRICS_TEXT;
    r.u.metrics_text.text = text;
    client_send(cl, &r);
    free(text);
}

static const struct {
    ipc_type_t type;
    ctl_handler_fn handler;
} ctl_handlers[] = {
    {IPC_STATUS, handle_status}, {IPC_STOP, handle_stop},       {IPC_RETRY, handle_retry},
    {IPC_RESYNC, handle_resync}, {IPC_PAUSE, handle_pause},     {IPC_RESUME, handle_resume},
    {IPC_RELOAD, handle_reload}, {IPC_METRICS, handle_metrics},
};

static void
dispatch(sup_client_t *cl, const ipc_msg_t *m)
{
    log_debug("control request type=%s", ipc_type_name(m->type));
    for (size_t i = 0; i < sizeof(ctl_handlers) / sizeof(ctl_handlers[0]); i++) {
        if (ctl_handlers[i].type == m->type) {
            ctl_handlers[i].handler(cl, m);
            return;
        }
    }
    char msg[128];
    snprintf(msg, sizeof(msg), "unknown command \"%s\"", ipc_type_name(m->type));
    client_send_error(cl, msg);
}

static void
alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    WR_UNUSED(h);
    WR_UNUSED(suggested);
    buf->base = ctl_readbuf;
    buf->len = sizeof(ctl_readbuf);
}

static void
read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sup_client_t *cl = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("control client read failed error=%s", uv_strerror((int)nread));
        client_close(cl);
        return;
    }
    wr_err_t err;
    wr_err_clear(&err);
    cl->last_ms = wr_now_ms();
    if (ipc_reader_feed(&cl->rd, buf->base, (size_t)nread, &err) != 0) {
        log_warn("control client sent too much error=\"%s\"", err.msg);
        client_send_error(cl, err.msg);
        client_close_after_write(cl);
        return;
    }
    while (!cl->closing) {
        ipc_msg_t m;
        int rc = ipc_reader_next(&cl->rd, &m, &err);
        if (rc == 0)
            break;
        if (rc == 1) {
            dispatch(cl, &m);
            ipc_msg_clear(&m);
            continue;
        }
        log_warn("bad message on the control socket error=\"%s\"", err.msg);
        client_send_error(cl, err.msg[0] ? err.msg : "malformed message");
        if (rc != WR_EPROTO || cl->rd.broken) {
            client_close_after_write(cl);
            break;
        }
    }
}

static void
connection_cb(uv_stream_t *server, int status)
{
    sup_control_t *c = server->data;
    if (status < 0) {
        log_warn("control socket accept failed error=%s", uv_strerror(status));
        return;
    }
    sup_client_t *cl = calloc(1, sizeof(*cl));
    if (!cl) {
        log_error("out of memory accepting a control client");
        return;
    }
    cl->ctl = c;
    uv_pipe_init(sup_loop(c->sup), &cl->pipe, 0);
    cl->pipe.data = cl;
    if (uv_accept(server, (uv_stream_t *)&cl->pipe) != 0) {
        uv_close((uv_handle_t *)&cl->pipe, client_closed_cb);
        return;
    }
    cl->next = c->clients;
    c->clients = cl;
    c->nclients++;
    cl->last_ms = wr_now_ms();
    if (c->nclients > SUP_CONTROL_MAX_CLIENTS) {
        /* a flood: answered and closed at once, so that it cannot take every fd */
        static int64_t warned_ms;
        if (cl->last_ms - warned_ms > 10000) {
            log_warn("too many control clients, refusing more max=%d", SUP_CONTROL_MAX_CLIENTS);
            warned_ms = cl->last_ms;
        }
        client_send_error(cl, "too many control clients; try again in a moment");
        client_close_after_write(cl);
        return;
    }
    if (ipc_reader_init(&cl->rd) != 0) {
        log_error("out of memory accepting a control client");
        client_close(cl);
        return;
    }
    cl->rd_ok = true;

    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        log_warn("cannot read the control client's credentials error=\"%s\"", strerror(errno));
        client_send_error(cl, "permission denied");
        client_close_after_write(cl);
        return;
    }
    if (cred.uid != geteuid()) {
        log_warn("control client refused uid=%u pid=%d expected_uid=%u", (unsigned)cred.uid,
                 (int)cred.pid, (unsigned)geteuid());
        client_send_error(cl, "permission denied");
        client_close_after_write(cl);
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&cl->pipe, alloc_cb, read_cb);
    if (rc != 0) {
        log_warn("control client read failed error=%s", uv_strerror(rc));
        client_close(cl);
    }
}

/* 1 if something accepts connections on path, 0 if not (stale or absent). */
static int
sock_alive(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int alive = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return alive;
}

int
sup_control_start(sup_control_t *c, sup_t *s, const char *path, wr_err_t *err)
{
    memset(c, 0, sizeof(*c));
    c->sup = s;
    c->closed = true;
    if (strlen(path) >= sizeof(c->path))
        return wr_err_set(err, WR_EINVAL, "control socket path \"%s\" is too long", path);
    memcpy(c->path, path, strlen(path) + 1);

    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            wr_err_set(err, WR_ECONFIG, "\"%s\" exists and is not a socket", path);
            wr_err_hint(err, "remove it; walrelay creates its control socket there");
            return WR_ECONFIG;
        }
        if (sock_alive(path)) {
            wr_err_set(err, WR_ECONFIG, "another process is serving \"%s\"", path);
            wr_err_hint(err, "stop the other walrelay that uses this directory");
            return WR_ECONFIG;
        }
        log_info("removing stale control socket path=%s", path);
        if (unlink(path) != 0 && errno != ENOENT)
            return wr_err_set(err, WR_EIO, "cannot remove stale \"%s\": %s", path, strerror(errno));
    }

    int rc = uv_pipe_init(sup_loop(s), &c->server, 0);
    if (rc != 0)
        return wr_err_set(err, WR_EIO, "uv_pipe_init: %s", uv_strerror(rc));
    c->server.data = c;
    c->closed = false;
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&c->server, path);
    umask(old);
    if (rc != 0) {
        wr_err_set(err, WR_EIO, "cannot bind control socket \"%s\": %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&c->server, NULL);
        c->closed = true;
        return WR_EIO;
    }
    if (chmod(path, 0600) != 0)
        log_warn("cannot chmod the control socket path=%s error=\"%s\"", path, strerror(errno));
    rc = uv_listen((uv_stream_t *)&c->server, 16, connection_cb);
    if (rc != 0) {
        wr_err_set(err, WR_EIO, "cannot listen on \"%s\": %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&c->server, NULL);
        c->closed = true;
        unlink(path);
        return WR_EIO;
    }
    c->listening = true;
    return 0;
}

void
sup_control_sweep(sup_control_t *c, int64_t now_ms)
{
    sup_client_t *cl = c->clients, *next;

    for (; cl; cl = next) {
        next = cl->next;
        if (!cl->closing && now_ms - cl->last_ms >= SUP_CONTROL_IDLE_MS) {
            log_debug("closing an idle control client");
            client_close(cl);
        }
    }
}

void
sup_control_close(sup_control_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    while (c->clients)
        client_close(c->clients); /* unlinks itself from the list */
    uv_close((uv_handle_t *)&c->server, NULL);
    if (c->listening && unlink(c->path) != 0 && errno != ENOENT)
        log_warn("cannot remove the control socket path=%s error=\"%s\"", c->path, strerror(errno));
    c->listening = false;
}
