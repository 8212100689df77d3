/* daemon.c - the skeleton every mica daemon runs on (see daemon.h): command
 * line, configuration and its validation before any dependency, the shared
 * dependencies, the listener with its readiness table, signals, and shutdown
 * in reverse order. */
#include "daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "db.h"
#include "kc.h"
#include "kv.h"
#include "log.h"

enum { EXIT_RUNNING_FAILED = 1, EXIT_CONFIG = 2 };

static void stop_set(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
}

void mica_daemon_block_signals(void)
{
	sigset_t set;
	stop_set(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int mica_daemon_wait_signal(void)
{
	sigset_t set;
	int sig = 0;
	stop_set(&set);
	while (sigwait(&set, &sig) != 0)
		;
	return sig;
}

int mica_ready_database(void *state)
{
	(void)state;
	mica_db *db = mica_db_thread();
	return db && mica_db_exec(db, "SELECT 1", 0, NULL, NULL) == 0 ? 0 : MICA_EDBCONN;
}

int mica_ready_redis(void *state)
{
	static const char *const ping[] = {"PING"};
	mica_kv *kv = mica_kv_thread();
	(void)state;
	return kv && mica_kv_command(kv, NULL, 1, ping, NULL) == 0 ? 0 : MICA_EKVCONN;
}

/* The service being run: one per process, set before the listener starts. */
static const mica_service *running;

/* GET /readyz: the service's table, in order, gates honoured. */
static void ready(void *state, mica_http_readiness *r)
{
	int gate_failed = 0;
	for (size_t i = 0; i < running->nready; i++) {
		const mica_ready_check *c = &running->ready[i];
		if (gate_failed && !(c->flags & MICA_READY_ALWAYS))
			continue;
		int err = c->check(state);
		if (err) {
			mica_http_not_ready(r, c->dependency, err);
			gate_failed |= (c->flags & MICA_READY_GATE) != 0;
		}
	}
}

static void *at(void *cfg, size_t offset)
{
	return (char *)cfg + offset;
}

/* Step 4 of daemon.h: the files every listener and Key Center client
 * needs, then the service's own checks. Nothing is opened. */
static int validate(const mica_service *svc, void *cfg, char *err, size_t errlen)
{
	const mica_http_options *h = at(cfg, svc->http_at);
	char sec[96];
	int rc;

	snprintf(sec, sizeof(sec), "%s.http", svc->name);
	if ((rc = mica_config_check_cert_key(sec, "cert_file", h->cert_file, "key_file",
					     h->key_file, err, errlen)) != 0)
		return rc;
	if (h->client_ca_file && *h->client_ca_file &&
	    (rc = mica_config_check_ca(sec, "client_ca_file", h->client_ca_file, err, errlen)) != 0)
		return rc;
	if (h->metrics_client_ca_file && *h->metrics_client_ca_file &&
	    (rc = mica_config_check_ca(sec, "metrics_client_ca_file", h->metrics_client_ca_file,
				       err, errlen)) != 0)
		return rc;
	if (svc->uses & MICA_USES_KC) {
		const mica_kc_options *k = at(cfg, svc->kc_at);
		snprintf(sec, sizeof(sec), "%s.keycenter", svc->name);
		if ((rc = mica_config_check_ca(sec, "ca_file", k->ca_file, err, errlen)) != 0 ||
		    (rc = mica_config_check_cert_key(sec, "cert_file", k->cert_file, "key_file",
						     k->key_file, err, errlen)) != 0)
			return rc;
	}
	return svc->validate ? svc->validate(cfg, err, errlen) : 0;
}

static void usage(FILE *f, const mica_service *svc)
{
	fprintf(f,
		"usage: mica-%s --config FILE     run\n"
		"       mica-%s --print-config    show every configuration key\n"
		"%s\n"
		"Exit codes: 0 stopped by a signal, 1 a dependency failed at start, 2 usage or\n"
		"configuration error (reported before anything is opened).\n",
		svc->name, svc->name, svc->summary);
}

/* Steps 5 to 9: returns the exit code. */
static int run(const mica_service *svc, void *cfg)
{
	mica_http_options *h = at(cfg, svc->http_at);
	mica_daemon_env env = {0};
	struct mica_kv_config *kv = NULL;
	mica_http_server *srv = NULL;
	void *state = NULL;
	char *conninfo = NULL;
	int rc = EXIT_RUNNING_FAILED, err;

	if (svc->uses & MICA_USES_DB) {
		const mica_config_db *d = at(cfg, svc->db_at);
		if (!(conninfo = mica_db_conninfo_with_password(d->conninfo, d->password)) ||
		    (err = mica_db_global_init(conninfo)) != 0) {
			MICA_LOG(MICA_LOG_ERROR, "%s: the database cannot be set up", svc->name);
			goto out;
		}
		env.conninfo = conninfo;
	}
	if (svc->uses & MICA_USES_REDIS) {
		kv = at(cfg, svc->redis_at);
		if ((err = mica_kv_global_init(kv)) != 0) {
			MICA_LOG(MICA_LOG_ERROR, "%s: Redis cannot be set up: %s", svc->name,
				 mica_strerror(err));
			goto out;
		}
		env.kv = kv;
	}
	if (svc->start(cfg, &env, &state) != 0)
		goto out;
	h->service = svc->name;
	h->ready = svc->ready ? ready : NULL;
	h->metrics = svc->metrics;
	running = svc;
	if (mica_http_start(&srv, h, svc->routes, *svc->nroutes, state) != 0 ||
	    (svc->serving && svc->serving(state) != 0))
		goto out;
	mica_daemon_wait_signal();
	MICA_LOG(MICA_LOG_INFO, "%s: stopping", svc->name);
	rc = 0;
out:
	mica_http_stop(srv);
	svc->stop(state);
	if (kv)
		mica_kv_global_cleanup();
	if (conninfo) {
		mica_db_global_cleanup();
		mica_wipe(conninfo, strlen(conninfo));
		free(conninfo);
	}
	return rc;
}

int mica_daemon_main(int argc, char **argv, const mica_service *svc)
{
	char err[512];
	void *cfg;
	int rc;

	mica_daemon_block_signals();
	if (argc == 2 && strcmp(argv[1], "--print-config") == 0) {
		mica_config_write_example(stdout, svc->config, svc->config_len);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout, svc);
		return 0;
	}
	if (argc != 3 || strcmp(argv[1], "--config") != 0) {
		usage(stderr, svc);
		return EXIT_CONFIG;
	}
	if (!(cfg = calloc(1, svc->config_size))) {
		fprintf(stderr, "mica-%s: out of memory\n", svc->name);
		return EXIT_RUNNING_FAILED;
	}
	rc = mica_config_load(svc->config, svc->config_len, cfg, argv[2], err, sizeof(err));
	if (rc == 0) {
		mica_log_min_level = *(int *)at(cfg, svc->log_level_at);
		rc = validate(svc, cfg, err, sizeof(err));
	}
	if (rc != 0) {
		/* Before the log is set up as configured: stderr, like usage. */
		fprintf(stderr, "mica-%s: %s\n", svc->name, err);
		rc = EXIT_CONFIG;
	} else {
		rc = run(svc, cfg);
	}
	mica_config_free(svc->config, svc->config_len, cfg);
	free(cfg);
	return rc;
}
