/*
 * http.c - the [metrics] listen HTTP server: GET /metrics (Prometheus text format),
 * /healthz (the supervisor's event loop answers) and /readyz (the pipeline replicates:
 * 200, or 503 with what is not ready), served with libmicrohttpd.
 *
 * NOTES: runs in the `walrelay run` process. libmicrohttpd runs without threads of its own
 * (MHD_USE_EPOLL with an external loop): its epoll descriptor is watched by a uv_poll_t on
 * the supervisor's libuv loop, and MHD_run is called when it is readable and when
 * MHD_get_timeout says (a uv_timer_t). So every request is answered on the loop itself:
 * the handlers read the supervisor's state without locks, and an answer to /healthz
 * means the loop is alive (a stuck loop answers nothing, which is what a liveness probe
 * must see). The listener is bound before the preflight (sup__http_bind: a port in use
 * stops `walrelay run` with exit code 2 before anything is written) and served once the
 * loop exists (sup__http_attach); sup__http_close stops it at the end of the stop.
 * Owns nothing persistent. Bodies are small: the exposition of a pipeline is built in
 * memory per request (metrics.c).
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "../common/log.h"
#include "sup_int.h"

#define HTTP_CONNECTION_LIMIT   64
#define HTTP_CONNECTION_TIMEOUT 10 /* seconds */
#define HTTP_MAX_WAIT_MS        1000

struct sup_http_s {
    sup_t *sup;
    struct MHD_Daemon *d;
    char listen[300];
    uv_poll_t poll;
    uv_timer_t timer;
    bool attached;
    bool closing;
};

/* The last message libmicrohttpd logged, for the error when it cannot start. */
static char http_last_error[512];

static void
http_logger(void *cls, const char *fmt, va_list ap)
{
    WR_UNUSED(cls);
    vsnprintf(http_last_error, sizeof(http_last_error), fmt, ap);
    http_last_error[strcspn(http_last_error, "\n")] = '\0';
    log_warn("http server: %s", http_last_error);
}

static enum MHD_Result
http_reply(struct MHD_Connection *c, unsigned int code, const char *type, char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result rc;

    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result
http_text(struct MHD_Connection *c, unsigned int code, const char *text)
{
    char *body = wr_strdup(text);
    if (!body)
        return MHD_NO;
    return http_reply(c, code, "text/plain; charset=utf-8", body, strlen(body));
}

static enum MHD_Result
http_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
             const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    sup_t *s = cls;
    char why[4096];

    WR_UNUSED(version);
    WR_UNUSED(upload_data);
    WR_UNUSED(con_cls);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        *upload_data_size = 0; /* a body is not read */
        return http_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served\n");
    }
    if (strcmp(url, "/metrics") == 0) {
        char *text = NULL;
        size_t len = 0;
        if (sup__metrics_render(s, &text, &len) != 0)
            return http_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        return http_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
    }
    if (strcmp(url, "/healthz") == 0)
        return http_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        char body[4200];
        if (sup__ready(s, why, sizeof(why)))
            return http_text(c, MHD_HTTP_OK, "ready\n");
        snprintf(body, sizeof(body), "not ready:\n%s", why);
        return http_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, body);
    }
    return http_text(c, MHD_HTTP_NOT_FOUND,
                     "not found: walrelay serves /metrics, /healthz and /readyz\n");
}

int
sup__http_bind(sup_t *s, wr_err_t *err)
{
    sup_http_t *h;
    char host[256], port[8];
    uint16_t portnum;
    struct addrinfo hints, *ai = NULL;
    const union MHD_DaemonInfo *info;
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);
    int rc;

    if (!s->cfg.metrics_listen)
        return 0;
    if (cfg_listen_parse(s->cfg.metrics_listen, host, sizeof(host), &portnum, err) != 0) {
        wr_err_prefix(err, "%s: [metrics] listen: ", s->cfg.path);
        return WR_ECONFIG;
    }
    snprintf(port, sizeof(port), "%u", (unsigned)portnum);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        wr_err_set(err, WR_ECONFIG, "%s: [metrics] listen: cannot resolve \"%s\": %s", s->cfg.path,
                   host, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        wr_err_hint(err, "use an IP address of this host, e.g. 127.0.0.1:%s or 0.0.0.0:%s", port,
                    port);
        if (ai)
            freeaddrinfo(ai);
        return WR_ECONFIG;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return wr_err_set(err, WR_ENOMEM, "out of memory for the HTTP server");
    }
    h->sup = s;
    snprintf(h->listen, sizeof(h->listen), "%s", s->cfg.metrics_listen);
    http_last_error[0] = '\0';
    h->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0), portnum,
        NULL, NULL, http_handler, s,
        /* the logger first: no message goes to MHD's own stderr logger */
        MHD_OPTION_EXTERNAL_LOGGER, http_logger, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)HTTP_CONNECTION_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)HTTP_CONNECTION_TIMEOUT, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        wr_err_set(err, WR_ECONFIG, "%s: [metrics] listen: cannot listen on %s: %s", s->cfg.path,
                   s->cfg.metrics_listen,
                   http_last_error[0] ? http_last_error : "libmicrohttpd could not start");
        wr_err_hint(err, "another process may use that port: choose another one in [metrics] "
                         "listen (or stop the other process)");
        free(h);
        return WR_ECONFIG;
    }
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_LISTEN_FD);
    if (info && getsockname(info->listen_fd, (struct sockaddr *)&sa, &salen) == 0) {
        char nhost[128] = "?", nport[16] = "?";
        getnameinfo((struct sockaddr *)&sa, salen, nhost, sizeof(nhost), nport, sizeof(nport),
                    NI_NUMERICHOST | NI_NUMERICSERV);
        log_info("metrics listener bound listen=%s address=%s port=%s", s->cfg.metrics_listen,
                 nhost, nport);
    }
    s->http = h;
    return 0;
}

static void http_schedule(sup_http_t *h);

static void
http_run(sup_http_t *h)
{
    if (h->closing || !h->d)
        return;
    if (MHD_run(h->d) != MHD_YES)
        log_debug("http server: MHD_run reported an error");
    http_schedule(h);
}

static void
http_timer_cb(uv_timer_t *t)
{
    http_run(t->data);
}

static void
http_poll_cb(uv_poll_t *p, int status, int events)
{
    WR_UNUSED(events);
    if (status < 0)
        log_warn("http server: poll error=%s", uv_strerror(status));
    http_run(p->data);
}

/* Arms the timer for what libmicrohttpd waits for (connection timeouts), at most 1 s. */
static void
http_schedule(sup_http_t *h)
{
    MHD_UNSIGNED_LONG_LONG ms = HTTP_MAX_WAIT_MS;

    if (MHD_get_timeout(h->d, &ms) != MHD_YES || ms > HTTP_MAX_WAIT_MS)
        ms = HTTP_MAX_WAIT_MS;
    uv_timer_start(&h->timer, http_timer_cb, (uint64_t)ms, 0);
}

int
sup__http_attach(sup_t *s, wr_err_t *err)
{
    sup_http_t *h = s->http;
    const union MHD_DaemonInfo *info;
    int rc;

    if (!h)
        return 0;
    info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info)
        return wr_err_set(err, WR_EIO, "the HTTP server has no epoll descriptor");
    rc = uv_poll_init(&s->loop, &h->poll, info->epoll_fd);
    if (rc != 0)
        return wr_err_set(err, WR_EIO, "cannot watch the HTTP server: %s", uv_strerror(rc));
    h->poll.data = h;
    uv_timer_init(&s->loop, &h->timer);
    h->timer.data = h;
    h->attached = true;
    rc = uv_poll_start(&h->poll, UV_READABLE, http_poll_cb);
    if (rc != 0)
        return wr_err_set(err, WR_EIO, "cannot watch the HTTP server: %s", uv_strerror(rc));
    http_schedule(h);
    log_info("serving /metrics, /healthz and /readyz listen=%s", h->listen);
    return 0;
}

void
sup__http_close(sup_t *s)
{
    sup_http_t *h = s->http;

    if (!h)
        return;
    if (h->attached && !h->closing) {
        /* unwatched at once; the handles' memory (in h) lives until sup__http_free, after
         * the loop has run their close callbacks */
        uv_close((uv_handle_t *)&h->poll, NULL);
        uv_close((uv_handle_t *)&h->timer, NULL);
    }
    h->closing = true;
    if (h->d) {
        MHD_stop_daemon(h->d);
        h->d = NULL;
        log_info("metrics listener closed listen=%s", h->listen);
    }
}

void
sup__http_free(sup_t *s)
{
    sup_http_t *h = s->http;

    if (!h)
        return;
    if (h->d)
        MHD_stop_daemon(h->d);
    free(h);
    s->http = NULL;
}
