/* daemon.h - the one skeleton every mica daemon runs on.
 *
 * A service describes itself in a mica_service (name, configuration table,
 * hooks, routes, readiness checks) and its program is three lines:
 *
 *   int main(int argc, char **argv) { return mica_daemon_main(argc, argv, &acct_daemon); }
 *
 * mica_daemon_main() then does, in this order, and nothing of it is repeated
 * in a service:
 *   1. blocks SIGINT/SIGTERM (every later thread inherits it), ignores SIGPIPE;
 *   2. parses the command line: --config FILE, --print-config, --help;
 *   3. loads the table (lib/config.h), sets the log level;
 *   4. validates before any dependency is opened: the HTTP certificate, key
 *      and client CAs, the Key Center client's CA, certificate and key (when
 *      the service uses one), then the service's own |validate| hook (value
 *      cross-checks, its other files). A failure here is exit 2 with the
 *      message naming the key, whatever state the HSM, database or Redis is in;
 *   5. opens the shared dependencies it declares: the database
 *      (mica_db_global_init with the password from its secret file) and Redis
 *      (mica_kv_global_init);
 *   6. runs |start| (the service's own dependencies and state);
 *   7. starts the HTTPS listener (and the metrics listener) with |routes| and
 *      the readiness table behind /readyz, then |serving| (workers that need
 *      the listener up);
 *   8. waits for SIGINT or SIGTERM in the main thread;
 *   9. shuts down in reverse: listener (drains blocking handlers), |stop|,
 *      Redis, database; the configuration is freed and its secrets wiped.
 *
 * Exit codes (stable for scripts and service managers):
 *   0  stopped by a signal after serving
 *   1  a dependency or the listener failed at start (logged)
 *   2  usage or configuration error (nothing was opened)
 *
 * Threads: mica_daemon_main() is called once, from main(), before any thread
 * exists. The hooks run on the main thread; readiness checks run where
 * lib/http.h says (the blocking pool when the service has one).
 */
#ifndef MICA_DAEMON_H
#define MICA_DAEMON_H

#include <stddef.h>

#include "config.h"
#include "http.h"
#include "kv.h"

/* What a service declares it uses (mica_service.uses); the skeleton checks,
 * opens and closes these for it. */
enum {
	MICA_USES_DB = 1 << 0,	  /* mica_config_db at db_at: the per-thread database */
	MICA_USES_REDIS = 1 << 1, /* struct mica_kv_config at redis_at: per-thread Redis */
	MICA_USES_KC = 1 << 2,	  /* mica_kc_options at kc_at: its files are checked */
};

/* One row of a readiness table: a dependency's stable name (reported by
 * /readyz) and its probe, which returns 0 or the MICA_E* code of the
 * failure. Rows run in order. */
enum {
	/* A failing gate row skips the later rows that are not ALWAYS (the Key
	 * Center's seal: sealed, there is no token or audit writer to probe). */
	MICA_READY_GATE = 1 << 0,
	MICA_READY_ALWAYS = 1 << 1, /* probed even behind a failing gate */
};
typedef struct mica_ready_check {
	const char *dependency;
	int (*check)(void *state);
	unsigned flags; /* MICA_READY_* */
} mica_ready_check;

/* What the skeleton opened for the service, handed to |start|. */
typedef struct mica_daemon_env {
	/* The database conninfo with its password (MICA_USES_DB; else NULL).
	 * Valid until |stop| returns: a service may keep it (the Key Center's
	 * audit writer opens its own connection with it). */
	const char *conninfo;
	/* The Redis settings (MICA_USES_REDIS; else NULL), for a service that
	 * opens more connections of its own (the account service's session
	 * cache). */
	const struct mica_kv_config *kv;
} mica_daemon_env;

typedef struct mica_service {
	const char *name;    /* "account": program mica-account, sections [account.*] */
	const char *summary; /* one line for --help */
	/* The configuration: a table over a struct of |config_size| bytes,
	 * which holds an int log level at |log_level_at| and the listener's
	 * mica_http_options at |http_at| ([<name>.http]). */
	const mica_config_entry *config;
	size_t config_len, config_size, log_level_at, http_at;
	unsigned uses;		       /* MICA_USES_* */
	size_t db_at, redis_at, kc_at; /* offsets of what |uses| names */
	/* Optional. Runs after loading, before anything is opened: value
	 * cross-checks, files readable and parsing; may complete derived
	 * settings (e.g. force mutual TLS on |http|). Returns 0 or
	 * MICA_ECONFIG with a message naming the key in |err|. */
	int (*validate)(void *cfg, char *err, size_t errlen);
	/* Opens the service's own dependencies and builds its state, which is
	 * the routes' and readiness checks' context. Sets *state even when it
	 * fails half way (or leaves it NULL); |stop| is then called on it.
	 * Returns 0 or an error (logged by the hook). */
	int (*start)(void *cfg, const mica_daemon_env *env, void **state);
	/* Optional. Called once the listener is up; starts workers that
	 * need it. Returns 0 or an error. */
	int (*serving)(void *state);
	/* Undoes |start| and |serving| for any part done, frees |state|
	 * (may be NULL); the listener is already stopped. */
	void (*stop)(void *state);
	const mica_http_route *routes;
	const size_t *nroutes;
	const mica_ready_check *ready; /* may be NULL: /readyz is always ready */
	size_t nready;
	/* Optional: the service's own lines of GET /metrics (Prometheus text
	 * written to |out|; lib/http.h mica_http_options.metrics), with its
	 * state. Must not block. */
	void (*metrics)(void *state, FILE *out);
} mica_service;

/* The configuration members of a mica_service: |table| (an array) over
 * struct |type|, whose members log_level (int) and http
 * (mica_http_options) the skeleton reads. */
#define MICA_SERVICE_CONFIG(table, type)                                                           \
	.config = (table), .config_len = sizeof(table) / sizeof((table)[0]),                       \
	.config_size = sizeof(type), .log_level_at = offsetof(type, log_level),                    \
	.http_at = offsetof(type, http)
/* The readiness members of a mica_service for |table| (an array). */
#define MICA_SERVICE_READY(table) .ready = (table), .nready = sizeof(table) / sizeof((table)[0])

/* Runs |svc| as the program's whole life (see the top of this file).
 * Returns the process exit code. */
int mica_daemon_main(int argc, char **argv, const mica_service *svc);

/* Readiness probes shared by services: the thread's database answers
 * SELECT 1 (MICA_EDBCONN otherwise); the thread's Redis answers PING
 * (MICA_EKVCONN). |state| is unused. */
int mica_ready_database(void *state);
int mica_ready_redis(void *state);

/* Blocks SIGINT and SIGTERM in the calling thread (and threads it starts
 * afterwards) and ignores SIGPIPE. mica_daemon_main() calls it first; other
 * programs that run servers (test peers) call it first thing in main(). */
void mica_daemon_block_signals(void);

/* Waits for SIGINT or SIGTERM; returns the signal number. */
int mica_daemon_wait_signal(void);

#endif
