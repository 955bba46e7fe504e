/*
 * test_wkipc.c - proto/wkipc.c, a worker's end of the supervisor channel: the handshake
 * reads a table list sent in several "tables" messages back whole (issue 12, defect 10).
 *
 * NOTES: a forked child plays the supervisor on the other end of a socketpair.
 */
#include "../../proto/wkipc.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "unit.h"

static void
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            _exit(3);
        p += w;
        n -= (size_t)w;
    }
}

/* The child: reads the hello (any bytes), answers welcome and `ntables` tables. */
static void
fake_supervisor(int fd, uint32_t ntables)
{
    static char name[64];
    ipc_table_info_t *t = calloc(ntables ? ntables : 1, sizeof(*t));
    msgpack_sbuffer sb;
    ipc_msg_t w;
    char buf[512];

    if (!t || read(fd, buf, sizeof(buf)) <= 0)
        _exit(3);
    snprintf(name, sizeof(name), "%s", "a_table_name_long_enough_to_need_several_messages_x");
    for (uint32_t i = 0; i < ntables; i++) {
        t[i].relid = 100 + i;
        t[i].nsp = "public";
        t[i].name = name;
        t[i].phase = i % 2 ? PH_READY : PH_INIT;
        t[i].lsn = i;
        t[i].dest_name = name;
    }
    msgpack_sbuffer_init(&sb);
    memset(&w, 0, sizeof(w));
    w.type = IPC_WELCOME;
    w.u.welcome.version = IPC_PROTO_VERSION;
    w.u.welcome.pipeline = "p";
    if (ipc_encode(&w, &sb) != 0 || ipc_encode_tables(t, ntables, &sb) != 0)
        _exit(3);
    write_all(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    free(t);
    (void)read(fd, buf, sizeof(buf)); /* until the parent closes */
    _exit(0);
}

static void
handshake_with(uint32_t ntables)
{
    int sv[2], status = 0;
    wk_chan_t c;
    ipc_msg_t tables;
    wr_err_t err;
    pid_t pid;

    CHECK_INT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        fake_supervisor(sv[1], ntables);
    }
    close(sv[1]);
    CHECK_INT_EQ(wk_chan_init(&c, sv[0], &err), 0);
    CHECK_INT_EQ(wk_chan_handshake(&c, "apply", 0, &tables, &err), 0);
    CHECK_INT_EQ(tables.u.tables.n, ntables);
    CHECK(!tables.u.tables.more);
    if (tables.u.tables.n == ntables && ntables > 0) {
        bool ok = true;
        for (uint32_t i = 0; i < ntables; i++)
            ok = ok && tables.u.tables.tables[i].relid == 100 + i &&
                 tables.u.tables.tables[i].lsn == i &&
                 tables.u.tables.tables[i].phase == (i % 2 ? PH_READY : PH_INIT);
        CHECK(ok);
        CHECK_STR_EQ(tables.u.tables.tables[ntables - 1].dest_name,
                     "a_table_name_long_enough_to_need_several_messages_x");
    }
    ipc_msg_clear(&tables);
    wk_chan_close(&c);
    CHECK_INT_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void
test_handshake_one_message(void)
{
    handshake_with(3);
    handshake_with(0);
}

static void
test_handshake_many_messages(void)
{
    handshake_with(IPC_TABLES_CHUNK);     /* exactly one full message */
    handshake_with(IPC_TABLES_CHUNK + 1); /* two */
    handshake_with(120000);               /* over IPC_MAX_ITEMS in total: 120 messages */
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    RUN(test_handshake_one_message);
    RUN(test_handshake_many_messages);
    return unit_done();
}
