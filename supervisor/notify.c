/*
 * notify.c - the service manager's readiness protocol (systemd Type=notify, sd_notify(3)
 * from libsystemd): READY=1, STATUS=, WATCHDOG=1, STOPPING=1, RELOADING=1.
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop. Without $NOTIFY_SOCKET
 * every call is a no-op (sd_notify returns 0). What is sent when:
 *   READY=1      once the preflight passed and the apply worker streams (its
 *                ["streaming"] message, metrics.c), never before; again after a reload;
 *                a pipeline started paused (walrelay pause) is ready at once (sup.c)
 *   STATUS=...   the phase summary (sup__metrics_summary), whenever it changes (tick)
 *   WATCHDOG=1   every WATCHDOG_USEC / 2 from a timer on the loop, when systemd set
 *                WATCHDOG_USEC (WatchdogSec=) for this process: a stuck loop stops the
 *                pings and systemd restarts the service
 *   STOPPING=1   when the graceful stop begins
 *   RELOADING=1  when a reload (SIGHUP, walrelay reload) begins, with MONOTONIC_USEC;
 *                READY=1 when it is done (only once READY=1 was sent at all)
 * The workers inherit $NOTIFY_SOCKET but never notify (systemd's NotifyAccess=main
 * would ignore them anyway). Owns nothing persistent.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "../common/log.h"
#include "sup_int.h"

struct sup_notify_s {
    bool enabled; /* $NOTIFY_SOCKET is set */
    uint64_t watchdog_usec;
    uv_timer_t watchdog;
    bool watchdog_on;
    bool ready_sent;
    bool reloading;
};

static void
notify_send(sup_t *s, const char *what, const char *msg)
{
    int rc;

    if (!s->notify || !s->notify->enabled)
        return;
    rc = sd_notify(0, msg);
    if (rc < 0)
        log_warn("cannot notify the service manager what=%s error=\"%s\"", what, strerror(-rc));
    else
        log_debug("notified the service manager what=%s", what);
}

static void
watchdog_cb(uv_timer_t *t)
{
    sup_t *s = t->data;
    notify_send(s, "watchdog", "WATCHDOG=1");
}

void
sup__notify_init(sup_t *s)
{
    sup_notify_t *n = calloc(1, sizeof(*n));
    const char *sock = getenv("NOTIFY_SOCKET");
    uint64_t usec = 0;

    if (!n) {
        log_warn("out of memory: the service manager is not notified");
        return;
    }
    s->notify = n;
    n->enabled = sock && *sock;
    if (!n->enabled)
        return;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        uint64_t ms = usec / 2000;
        n->watchdog_usec = usec;
        uv_timer_init(&s->loop, &n->watchdog);
        n->watchdog.data = s;
        uv_timer_start(&n->watchdog, watchdog_cb, 0, ms > 0 ? ms : 1);
        n->watchdog_on = true;
    }
    log_info("notifying the service manager socket=%s watchdog_ms=%" PRIu64, sock,
             n->watchdog_usec / 1000);
}

void
sup__notify_ready(sup_t *s)
{
    if (!s->notify)
        return;
    s->notify->ready_sent = true;
    notify_send(s, "ready", "READY=1");
}

void
sup__notify_status(sup_t *s, const char *status)
{
    char msg[600];

    snprintf(msg, sizeof(msg), "STATUS=%s", status);
    msg[strcspn(msg, "\n")] = '\0'; /* one line */
    notify_send(s, "status", msg);
}

void
sup__notify_stopping(sup_t *s)
{
    notify_send(s, "stopping",
                "STOPPING=1\nSTATUS=stopping: the workers finish the write in "
                "flight and confirm their position");
}

void
sup__notify_reloading(sup_t *s)
{
    struct timespec ts;
    char msg[128];

    if (!s->notify || !s->notify->ready_sent)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
             (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
    s->notify->reloading = true;
    notify_send(s, "reloading", msg);
}

void
sup__notify_reloaded(sup_t *s)
{
    if (!s->notify || !s->notify->reloading)
        return;
    s->notify->reloading = false;
    if (!s->stopping)
        notify_send(s, "ready", "READY=1");
}

void
sup__notify_close(sup_t *s)
{
    sup_notify_t *n = s->notify;

    if (n && n->watchdog_on) {
        n->watchdog_on = false;
        uv_close((uv_handle_t *)&n->watchdog, NULL);
    }
}

void
sup__notify_free(sup_t *s)
{
    free(s->notify);
    s->notify = NULL;
}
