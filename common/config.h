/*
 * config.h - DIR/walrelay.conf, an INI file (parsed with Debian's libinih).
 *
 * NOTES: read by every process (the supervisor passes workers the directory). Unknown
 * sections and keys are errors, and every error names the file, the line and the key.
 *
 *   [pipeline]    name = demo                      (slot walrelay_<name>; [a-z0-9_], <= 40 bytes)
 *                 publication_refresh_ms = 30000 ; on_slot_lost = stop | recopy
 *   [source]      conninfo = host=... dbname=...   (libpq; .pgpass / PGPASSFILE / service work)
 *                 publication = walrelay_pub
 *   [destination] type = NAME, then the keys of that destination type: config.c keeps them
 *                 as (key, value, line) items; the destination registry
 *                 (destinations/registry.h) knows the types, their keys and defaults, and
 *                 validates them (dest_config_check), wherever a loaded config is used.
 *   [state]       backend = sqlite | postgres | plugin; postgres: conninfo, schema;
 *                 plugin: library, and any other key for the store, kept as items that the
 *                 store validates (state_abi.c: state_config_check).
 *   [batch]       max_fill_ms = 200 ; max_bytes = 8388608
 *   [sync]        max_table_sync_workers = 4 ; copy_batch_rows = 10000 ;
 *                 max_copy_connections_per_table = 1
 *   [retry]       worker_max_failures = 5 ; backoff_initial_ms = 1000 ; backoff_max_ms = 60000
 *                 healthy_reset_ms = 300000
 *                 table_error_retry_delay_ms = 10000 ; table_error_retry_max_attempts = 5
 *   [metrics]     listen = HOST:PORT (off when unset) ; lag_interval_ms = 5000
 *   [log]         level = info ; format = text | json
 */
#ifndef WR_CONFIG_H
#define WR_CONFIG_H

#include "wr.h"

#define WR_PIPELINE_NAME_MAX 40

/* One "key = value" line of a section whose keys config.c does not interpret. */
typedef struct wr_cfg_item_s {
    char *key;
    char *value;
    int line;
} wr_cfg_item_t;

typedef struct wr_config_s {
    char *dir;  /* absolute path of the config directory */
    char *path; /* DIR/walrelay.conf */
    char *pipeline_name;
    char *source_conninfo;
    char *publication;
    /* [destination]: type, and every other key as an item (file order). dest_type is NULL
     * if the file does not set it: dest_config_check fills in the registry's default. */
    char *dest_type;
    int dest_type_line; /* line of "type = ...", 0 = not set */
    int dest_line;      /* line of the [destination] header, 0 = no such section */
    size_t dest_nitems;
    wr_cfg_item_t *dest_items;
    int batch_max_fill_ms;
    int64_t batch_max_bytes;
    int streaming; /* [source] streaming: 1 = pgoutput protocol version 2 with streaming on */
    int max_table_sync_workers;
    int copy_batch_rows;
    int max_copy_connections_per_table; /* (issue 11) the parallel copy's source connections */
    int worker_max_failures;
    int backoff_initial_ms;
    int backoff_max_ms;
    int healthy_reset_ms;
    int log_level;
    /* added for issue 3 (lifecycle): */
    int publication_refresh_ms;         /* re-read the publication; 0 = at start and reload only */
    int on_slot_lost;                   /* CFG_SLOT_LOST_STOP | CFG_SLOT_LOST_RECOPY */
    int table_error_retry_delay_ms;     /* transient Errored: wait this long, then retry */
    int table_error_retry_max_attempts; /* transient Errored: retries before giving up */
    /* [state]: where the replication state lives */
    int state_backend;    /* CFG_STATE_SQLITE (DIR/state.db) | _POSTGRES | _PLUGIN */
    char *state_conninfo; /* postgres: libpq connection string (a secret: never shown) */
    char *state_schema;   /* postgres: schema of the store (default walrelay_state) */
    char *state_library;  /* plugin: the shared object, as written (relative to dir) */
    int state_line;       /* line of the [state] header, 0 = no such section */
    /* every [state] key but backend, in file order (values may be secrets: never shown);
     * a plugin store gets all of them but library */
    size_t state_nitems;
    wr_cfg_item_t *state_items;
    /* added for issue 10 (operations): */
    char *metrics_listen;        /* [metrics] listen "HOST:PORT"; NULL = no HTTP listener */
    int metrics_lag_interval_ms; /* [metrics] lag_interval_ms: how often the lag is read */
    int log_format;              /* [log] format: LOG_FMT_TEXT | LOG_FMT_JSON (log.h) */
} wr_config_t;

/* [state] backend */
enum { CFG_STATE_SQLITE = 0, CFG_STATE_POSTGRES = 1, CFG_STATE_PLUGIN = 2 };
#define CFG_STATE_DEFAULT_SCHEMA "walrelay_state"

/* [pipeline] on_slot_lost: what the supervisor does when the apply slot lost required WAL */
enum { CFG_SLOT_LOST_STOP = 0, CFG_SLOT_LOST_RECOPY = 1 };

/* Fills defaults (no allocation for strings; they stay NULL). */
void cfg_defaults(wr_config_t *cfg);
/* Loads DIR/walrelay.conf. On error sets err (WR_ECONFIG) with "FILE:LINE: ..." and a hint. */
int cfg_load(const char *dir, wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* The supervisor's load: like cfg_load, and hands back the exact text it parsed (caller
 * frees), to be published with cfg_publish_active. */
int cfg_load_text(const char *dir, wr_config_t *cfg, char **text, size_t *len,
                  wr_err_t *err) WR_MUST_CHECK;
/* Writes text to DIR/walrelay.conf.active (0600, fsync, atomic rename). The supervisor
 * publishes the text of the configuration it runs with; workers read that copy
 * (cfg_load_active), so a file broken or changed after the supervisor loaded it never
 * reaches a restarted worker. */
int cfg_publish_active(const char *absdir, const char *text, size_t len,
                       wr_err_t *err) WR_MUST_CHECK;
/* The workers' load: DIR/walrelay.conf.active, or DIR/walrelay.conf if there is none. */
int cfg_load_active(const char *dir, wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* Parses an INI text as if it were `path` (for tests and fuzzing). */
int cfg_parse_string(const char *text, const char *path, const char *dir, wr_config_t *cfg,
                     wr_err_t *err) WR_MUST_CHECK;
void cfg_free(wr_config_t *cfg);
/* Slot of the apply worker: walrelay_<pipeline> (<= 63 bytes). */
void cfg_apply_slot_name(const wr_config_t *cfg, char *buf, size_t len);
/* Slot of a sync worker: walrelay_<pipeline>_s<relid> (<= 63 bytes). */
void cfg_sync_slot_name(const wr_config_t *cfg, uint32_t relid, char *buf, size_t len);
/* Splits "HOST:PORT" (IPv6 as "[::1]:9187") into host (brackets removed) and port
 * (0..65535; 0 = any free port). Returns 0, or WR_ECONFIG with err saying what is wrong
 * (err may be NULL). Names are not resolved here. */
int cfg_listen_parse(const char *s, char *host, size_t hostlen, uint16_t *port,
                     wr_err_t *err) WR_MUST_CHECK;
/* Checks a pipeline name ([a-z0-9_], 1..40 bytes). */
bool cfg_pipeline_name_ok(const char *name);
/* True if name ends in "_s" and digits: the form of another pipeline's sync slot names
 * (shop_s16390 beside shop), refused so that no pipeline's cleanup or drop can take the
 * other's apply slot for a sync slot of its own. */
bool cfg_pipeline_name_clashes(const char *name);
/* Fills err (WR_ECONFIG) for such a name, with a hint. */
void cfg_pipeline_name_clash_err(const char *name, wr_err_t *err);
/* The [destination] item named key, or NULL (duplicates are refused at load). */
const wr_cfg_item_t *cfg_dest_item(const wr_config_t *cfg, const char *key);
/* Copies dst's [destination] type, lines and items from src (dst's are freed first). */
int cfg_dest_copy(wr_config_t *dst, const wr_config_t *src) WR_MUST_CHECK;
/* True if both set the same [destination] type and keys with the same values. */
bool cfg_dest_equal(const wr_config_t *a, const wr_config_t *b);
/* Swaps the [destination] parts of a and b (reload keeps the running ones). */
void cfg_dest_swap(wr_config_t *a, wr_config_t *b);
/* The [state] item named key, or NULL. */
const wr_cfg_item_t *cfg_state_item(const wr_config_t *cfg, const char *key);
/* True if both set the same [state] library and other keys (a plugin store's: conninfo
 * and schema are compared as fields) with the same values. */
bool cfg_state_items_equal(const wr_config_t *a, const wr_config_t *b);
/* Swaps the [state] items and library of a and b (reload keeps the running ones). */
void cfg_state_items_swap(wr_config_t *a, wr_config_t *b);
/* Checks a configuration beyond what config.c knows (the destination registry's
 * dest_config_check); may fill defaults. */
typedef int (*cfg_check_fn)(wr_config_t *cfg, wr_err_t *err);
/* Writes a new DIR/walrelay.conf (mode 0600, refuses to overwrite). dest_section: the
 * body of the [destination] section (comments and "key = value" lines, from the
 * registry's dest_init_section); state: `walrelay init --state` ("sqlite",
 * "postgres:CONNINFO", "plugin:PATH", NULL = sqlite); metrics: `walrelay init --metrics`
 * ("HOST:PORT" for [metrics] listen, NULL = off); check, if not NULL, validates the file's
 * text as loaded before anything is written. */
int cfg_write_new(const char *dir, const char *pipeline, const char *conninfo,
                  const char *publication, const char *dest_section, const char *state,
                  const char *metrics, cfg_check_fn check, wr_err_t *err) WR_MUST_CHECK;

#endif
