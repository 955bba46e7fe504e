/*
 * main.c - the `walrelay` command: dispatches the first argument through a table of
 * {word, handler, usage}; adding a command is one row.
 *
 * NOTES: runs in the user's shell (and, for `walrelay run`, becomes the supervisor).
 * Exit codes: 0 success, 1 runtime failure (e.g. not running), 2 usage/config/preflight.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "sup.h"

typedef struct cli_cmd_s {
    const char *word;
    cli_handler_fn handler;
    const char *usage;
} cli_cmd_t;

static const cli_cmd_t cli_cmds[] = {
    {"init", cli_init,
     "walrelay init DIR --source CONNINFO --publication NAME\n"
     "              [--destination TYPE[:ARG]] [--name PIPELINE] [--state STORE]\n"
     "              [--metrics HOST:PORT]\n"
     "    Writes DIR/walrelay.conf (creating DIR). The pipeline name defaults to the\n"
     "    directory's name, lowercased, other characters mapped to '_'. Destinations:\n"
     "    sqlite (default, DIR/dest.db), sqlite:PATH, postgres:CONNINFO (tables in a\n"
     "    PostgreSQL database, exactly once; CONNINFO is a libpq connection string, its\n"
     "    password never printed), null (discards rows),\n"
     "    eventstore:sqlite:PATH or eventstore:postgres:CONNINFO (every change an event;\n"
     "    read it with walrelay events), http:URL (a webhook: JSON batches POSTed to\n"
     "    URL, at least once), jsonl:PATH (JSON lines into a file, exactly once; jsonl:-\n"
     "    for stdout), nats:nats://HOST:PORT (a NATS JetStream stream, exactly once),\n"
     "    and plugin:/path/to/lib.so (a library built\n"
     "    against walrelay/destination.h; add its own keys below [destination]\n"
     "    afterwards). State stores: sqlite (default,\n"
     "    DIR/state.db), postgres:CONNINFO (a schema walrelay_state in that database,\n"
     "    for hosts without a lasting disk; one supervisor per pipeline holds its lease)\n"
     "    and plugin:/path/to/lib.so (a library built against walrelay/store.h; add its\n"
     "    own keys below [state] afterwards). --metrics HOST:PORT serves /metrics,\n"
     "    /healthz and /readyz there ([metrics] listen; off by default).\n"},
    {"check", cli_check,
     "walrelay check DIR\n"
     "    Checks the source (reachable, wal_level, publication, REPLICATION privilege,\n"
     "    free slots and walsenders, replica identity), the destination (its keys;\n"
     "    a plugin is loaded, validated, opened and its own check run) and a state store\n"
     "    other than state.db (postgres: reachable, privileges; a plugin: as above).\n"
     "    Exit 0 when nothing failed (warnings allowed), 2 otherwise.\n"},
    {"run", cli_run,
     "walrelay run DIR\n"
     "    Runs the supervisor in the foreground (SIGTERM/SIGINT: graceful stop; SIGHUP:\n"
     "    reload).\n"},
    {"status", cli_status,
     "walrelay status DIR [--json]\n"
     "    Shows the pipeline, its workers and its tables (asks the running supervisor).\n"
     "    Exit 1 when walrelay is not running for DIR.\n"},
    {"stop", cli_stop,
     "walrelay stop DIR [--timeout S]\n"
     "    Asks the supervisor to stop and waits (default 60 s) until it has exited.\n"},
    {"retry", cli_retry,
     "walrelay retry DIR TABLE\n"
     "    Tries an errored table again (TABLE is schema.name, or name in public): rolled\n"
     "    back one phase, or copied again from scratch when rolling back would lose\n"
     "    changes; its attempts start again from 0.\n"},
    {"resync", cli_resync,
     "walrelay resync DIR TABLE\n"
     "    Copies a table again from scratch, whatever its phase: its sync worker is\n"
     "    stopped, the destination table emptied, and the copy and handoff run again.\n"},
    {"pause", cli_pause,
     "walrelay pause DIR\n"
     "    Stops every worker gracefully and starts none until walrelay resume (also\n"
     "    across a restart of walrelay run). Changes wait in the replication slot.\n"},
    {"resume", cli_resume,
     "walrelay resume DIR\n"
     "    Starts the workers of a paused pipeline again.\n"},
    {"reload", cli_reload,
     "walrelay reload DIR\n"
     "    Reads walrelay.conf again (as SIGHUP does): applies what can change while\n"
     "    running, reports what needs a restart, reads the publication again. A file with\n"
     "    an error changes nothing.\n"},
    {"metrics", cli_metrics,
     "walrelay metrics DIR\n"
     "    Prints the pipeline's metrics in the Prometheus text format, as GET /metrics\n"
     "    on [metrics] listen serves them (asks the running supervisor). Exit 1 when\n"
     "    walrelay is not running for DIR.\n"},
    {"events", cli_events,
     "walrelay events DIR load --filter FILTER [--filter FILTER ...] [--limit N]\n"
     "walrelay events DIR version AGGREGATE_KIND AGGREGATE_ID\n"
     "walrelay events DIR tail --filter FILTER [--filter ...] [--after P] --follow\n"
     "walrelay events DIR append AGGREGATE_KIND AGGREGATE_ID --expect none|any|P\n"
     "              --event KIND --data JSON [--metadata JSON]\n"
     "    Reads or appends to the event store of a pipeline with --destination\n"
     "    eventstore:... (docs/eventstore.md), one JSON object per line. FILTER is\n"
     "    'event_kind=K[,aggregate_kind=T][,aggregate_id=ID][,after=P]'; events of any\n"
     "    filter are printed once, by ascending position; after=P (or --after) keeps\n"
     "    positions > P. version prints {\"position\": P, \"version\": V} or\n"
     "    {\"position\": null}. tail --follow keeps printing new events until SIGINT or\n"
     "    SIGTERM. append checks --expect (none: a new stream, P: the stream's last\n"
     "    position, any: unchecked) and prints the new position; a conflict prints\n"
     "    {\"conflict\": {\"expected\": ..., \"actual\": ...}} and exits 3. Streams of\n"
     "    replicated tables take no appends. Exit 1: the store is not there or failed.\n"},
    {"drop", cli_drop,
     "walrelay drop DIR\n"
     "    Removes the pipeline's replication slots on the source and its state\n"
     "    (DIR/state.db, or its rows in the postgres state store); keeps\n"
     "    walrelay.conf and the destination data. Refused while walrelay run is running;\n"
     "    removes nothing if the source cannot be reached. Exit 2 in both cases.\n"},
};

#define CLI_NCMDS (sizeof(cli_cmds) / sizeof(cli_cmds[0]))

void
cli_print_usage(const char *word, FILE *f)
{
    for (size_t i = 0; i < CLI_NCMDS; i++) {
        if (strcmp(cli_cmds[i].word, word) == 0) {
            fprintf(f, "usage: %s", cli_cmds[i].usage);
            return;
        }
    }
}

static void
print_main_usage(FILE *f)
{
    fprintf(f, "walrelay %s - PostgreSQL change data capture\n\n", WR_VERSION);
    fprintf(f, "usage: walrelay COMMAND [ARGS]   (walrelay COMMAND --help for details)\n\n");
    for (size_t i = 0; i < CLI_NCMDS; i++)
        fprintf(f, "%s", cli_cmds[i].usage);
}

int
main(int argc, char **argv)
{
    /* A write to a closed socket must be an error, not a death. */
    signal(SIGPIPE, SIG_IGN);

    if (argc < 2) {
        print_main_usage(stderr);
        return WR_EXIT_CONFIG;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_main_usage(stdout);
        return WR_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("walrelay %s\n", WR_VERSION);
        return WR_EXIT_OK;
    }
    for (size_t i = 0; i < CLI_NCMDS; i++) {
        if (strcmp(cli_cmds[i].word, argv[1]) != 0)
            continue;
        for (int a = 2; a < argc; a++) {
            if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
                printf("usage: %s", cli_cmds[i].usage);
                return WR_EXIT_OK;
            }
        }
        return cli_cmds[i].handler(argc - 1, argv + 1);
    }
    fprintf(stderr, "walrelay: unknown command \"%s\"\n\n", argv[1]);
    print_main_usage(stderr);
    return WR_EXIT_CONFIG;
}
