/*
 * stream.c - the replication stream engine shared by both workers (see stream.h).
 *
 * NOTES: no I/O and no allocation besides the pgoutput decoder's scratch buffers.
 */
#include <string.h>

#include "common/log.h"
#include "common/repl.h"
#include "common/stream.h"

void
stm_init(stm_t *s, const stm_handler_t *h, void *arg)
{
    memset(s, 0, sizeof(*s));
    pgo_decoder_init(&s->dec);
    s->h = h;
    s->arg = arg;
}

void
stm_close(stm_t *s)
{
    pgo_decoder_close(&s->dec);
}

void
stm_boundary(const stm_tx_t *tx, dest_ev_kind_t kind, wr_lsn_t end_lsn, dest_event_t *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->key.commit_lsn = tx->final_lsn;
    ev->key.ordinal = kind == DEST_EV_BEGIN ? 0 : tx->ordinal;
    ev->xid = tx->xid;
    ev->commit_ts = tx->commit_ts;
    ev->end_lsn = kind == DEST_EV_COMMIT ? end_lsn : 0;
}

/* Counts one change in the transaction's ordinals. */
static int
stm_count(stm_t *s, char type, wr_err_t *err)
{
    if (!s->tx.in_tx)
        return wr_err_set(err, WR_EPROTO, "change message '%c' outside a transaction", type);
    if (s->tx.ordinal == UINT32_MAX)
        return wr_err_set(err, WR_EUNSUPPORTED, "transaction " WR_LSN_FMT " has too many changes",
                          WR_LSN_ARGS(s->tx.final_lsn));
    s->tx.ordinal++;
    return 0;
}

static int
stm_emit(stm_t *s, dest_event_t *ev, uint32_t relid, size_t msglen, wr_err_t *err)
{
    ev->key.commit_lsn = s->tx.final_lsn;
    ev->key.ordinal = s->tx.ordinal;
    ev->xid = s->tx.xid;
    ev->commit_ts = s->tx.commit_ts;
    ev->relid = relid;
    if (s->h == NULL || s->h->change == NULL)
        return 0;
    return s->h->change(s->arg, &s->tx, ev, msglen, err);
}

static int
stm_on_change(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    dest_event_t ev;
    uint32_t relid;
    int rc;

    rc = stm_count(s, (char)m->type, err);
    if (rc != 0)
        return rc;
    memset(&ev, 0, sizeof(ev));
    switch (m->type) {
    case PGO_INSERT:
        relid = m->u.insert.relid;
        ev.kind = DEST_EV_INSERT;
        ev.new_row = &m->u.insert.newtup;
        break;
    case PGO_UPDATE:
        relid = m->u.update.relid;
        ev.kind = DEST_EV_UPDATE;
        ev.old_kind = m->u.update.oldkind;
        ev.old_row = m->u.update.oldkind ? &m->u.update.oldtup : NULL;
        ev.new_row = &m->u.update.newtup;
        break;
    default: /* PGO_DELETE */
        relid = m->u.delete_.relid;
        ev.kind = DEST_EV_DELETE;
        ev.old_kind = m->u.delete_.oldkind;
        ev.old_row = &m->u.delete_.oldtup;
        break;
    }
    rc = stm_emit(s, &ev, relid, msglen, err);
    return rc == STM_WRITTEN ? 0 : rc;
}

static int
stm_on_truncate(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    if (!s->tx.in_tx)
        return wr_err_set(err, WR_EPROTO, "truncate message outside a transaction");
    for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
        dest_event_t ev;
        int rc = stm_count(s, 'T', err);

        if (rc != 0)
            return rc;
        memset(&ev, 0, sizeof(ev));
        ev.kind = DEST_EV_TRUNCATE;
        ev.truncate_flags = m->u.truncate.flags;
        rc = stm_emit(s, &ev, pgo_truncate_relid(m, i), msglen, err);
        if (rc == STM_WRITTEN)
            msglen = 0; /* count the message's size once */
        else if (rc != 0)
            return rc;
    }
    return 0;
}

int
stm_on_message(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    int rc;

    switch (m->type) {
    case PGO_BEGIN:
        if (s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO,
                              "begin of transaction " WR_LSN_FMT " inside transaction " WR_LSN_FMT,
                              WR_LSN_ARGS(m->u.begin.final_lsn), WR_LSN_ARGS(s->tx.final_lsn));
        s->tx.in_tx = true;
        s->tx.final_lsn = m->u.begin.final_lsn;
        s->tx.ordinal = 0;
        s->tx.xid = m->u.begin.xid;
        s->tx.commit_ts = m->u.begin.commit_ts + DEST_PG_EPOCH_OFFSET_US;
        s->tx.begun = false;
        return 0;
    case PGO_COMMIT:
        if (!s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO, "commit message outside a transaction");
        if (m->u.commit.commit_lsn != s->tx.final_lsn)
            return wr_err_set(err, WR_EPROTO,
                              "incorrect commit LSN " WR_LSN_FMT
                              " in commit message (expected " WR_LSN_FMT ")",
                              WR_LSN_ARGS(m->u.commit.commit_lsn), WR_LSN_ARGS(s->tx.final_lsn));
        if (s->received < m->u.commit.end_lsn)
            s->received = m->u.commit.end_lsn;
        s->tx.in_tx = false;
        rc = 0;
        if (s->h != NULL && s->h->commit != NULL)
            rc = s->h->commit(s->arg, &s->tx, m->u.commit.end_lsn, err);
        s->tx.begun = false;
        return rc;
    case PGO_RELATION:
        if (s->h == NULL || s->h->relation == NULL)
            return 0;
        return s->h->relation(s->arg, &s->tx, m, err);
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        return stm_on_change(s, m, msglen, err);
    case PGO_TRUNCATE:
        return stm_on_truncate(s, m, msglen, err);
    case PGO_TYPE:
        log_debug("type message oid=%u name=%s.%s", (unsigned)m->u.type.oid, m->u.type.nsp,
                  m->u.type.name);
        return 0;
    case PGO_ORIGIN:
        log_debug("origin message name=%s lsn=" WR_LSN_FMT, m->u.origin.name,
                  WR_LSN_ARGS(m->u.origin.lsn));
        return 0;
    case PGO_MESSAGE:
        log_debug("logical message prefix=%s len=%u", m->u.message.prefix,
                  (unsigned)m->u.message.len);
        return 0;
    default:
        return wr_err_set(err, WR_EPROTO, "unexpected pgoutput message '%c'", m->type);
    }
}

int
stm_on_copydata(stm_t *s, const uint8_t *buf, size_t len, wr_err_t *err)
{
    int rc;

    if (len < 1)
        return wr_err_set(err, WR_EPROTO, "empty message on the replication stream");
    if (buf[0] == 'k') {
        wr_lsn_t wal_end;
        bool reply;

        rc = repl_parse_keepalive(buf, len, &wal_end, &reply, err);
        if (rc != 0)
            return rc;
        if (s->received < wal_end)
            s->received = wal_end;
        if (s->h == NULL || s->h->keepalive == NULL)
            return 0;
        return s->h->keepalive(s->arg, wal_end, reply, err);
    }
    if (buf[0] == 'w') {
        wr_lsn_t start, wal_end;
        const uint8_t *payload;
        size_t plen;
        pgo_msg_t m;

        rc = repl_parse_xlogdata(buf, len, &start, &wal_end, &payload, &plen, err);
        if (rc != 0)
            return rc;
        if (s->received < start)
            s->received = start;
        if (s->received < wal_end)
            s->received = wal_end;
        rc = pgo_decode(&s->dec, payload, plen, &m, err);
        if (rc != 0)
            return rc;
        return stm_on_message(s, &m, plen, err);
    }
    return wr_err_set(err, WR_EPROTO, "unexpected replication message type 0x%02x",
                      (unsigned)buf[0]);
}

bool
stm_fb_due(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush)
{
    bool changed = flush != fb->sent_flush || write != fb->sent_write;

    if (now - fb->last_ms >= STM_STATUS_INTERVAL_MS)
        return true;
    return changed && now - fb->last_ms >= STM_STATUS_MIN_MS;
}

void
stm_fb_sent(stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush)
{
    fb->last_ms = now;
    fb->sent_write = write;
    fb->sent_flush = flush;
}

int64_t
stm_fb_wait_ms(const stm_fb_t *fb, int64_t now)
{
    int64_t left = fb->last_ms + STM_STATUS_INTERVAL_MS - now;

    return left < 0 ? 0 : left;
}
