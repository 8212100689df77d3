/* service.c - mica-push as a libmica daemon (lib/daemon.h): its
 * configuration table, readiness rows and start (the Key Center client,
 * with its two keys probed before anyone is served). The skeleton opens
 * PostgreSQL, runs the listener and shuts down. Devices and developers
 * authenticate inside the requests (registration needs only the app id and
 * package; developers send their app secret), so the listener does not
 * ask for client certificates (docs/decisions.md). */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "mipush/push.h"

#define F(m) offsetof(struct push_config, m)
const mica_config_entry push_config_table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", F(log_level),
	 "least severe level written (debug, info, warn, error, off)"},
	MICA_CONFIG_HTTP_ENTRIES("push.http", struct push_config, http, "16"),
	MICA_CONFIG_DB_ENTRIES("push.db", struct push_config, db, "mica_push"),
	MICA_CONFIG_REDIS_ENTRIES("push.redis", struct push_config, redis, "push",
				  "push:*; channel push:wake"),
	MICA_CONFIG_KC_CLIENT_ENTRIES("push.keycenter", struct push_config, kc, "push"),
	{"push.keycenter", "index_key", MICA_CFG_STRING, 1, 64, "push-index", F(index_key),
	 "Key Center key of the HMACs of app secrets, device hashes and device tokens (never"
	 " rotate without re-indexing)"},
	{"push.keycenter", "content_key", MICA_CFG_STRING, 1, 64, "push-content", F(content_key),
	 "Key Center key encrypting the devices' message-content keys"},
	{"push.register", "ip_max", MICA_CFG_INT, 1, 1000000, "120", F(register_ip_max),
	 "registrations per client address in ip_window_s (NAT gateways share one)"},
	{"push.register", "ip_window_s", MICA_CFG_INT, 1, 86400, "60", F(register_ip_window_s),
	 "window of ip_max, seconds"},
	{"push.register", "device_max", MICA_CFG_INT, 1, 1000000, "20", F(register_device_max),
	 "registrations of one device for one app in device_window_s"},
	{"push.register", "device_window_s", MICA_CFG_INT, 1, 86400, "3600",
	 F(register_device_window_s), "window of device_max, seconds"},
	/* send.c */
	{"push.keycenter", "cache_entries", MICA_CFG_INT, 1, 10000000, "100000",
	 F(kc.cache_max_entries),
	 "decrypted content keys (and HMACs) kept in memory, wiped on eviction; a send opens"
	 " the others in batches of 1000"},
	{"push.keycenter", "cache_ttl", MICA_CFG_INT, 1, 86400, "3600", F(key_cache_ttl_s),
	 "seconds a decrypted content key stays in memory"},
	{"push.queue", "max_pending", MICA_CFG_INT, 1, 10000, "100", F(max_pending),
	 "queued messages per device; beyond it the oldest are dropped and the device gets one"
	 " deleted_messages marker with the count"},
	{"push.send", "wake_batch", MICA_CFG_INT, 1, 10000, "100", F(wake_batch),
	 "W lines per PUBLISH on push:wake (at most 512 KiB each)"},
	/* the scheduled jobs: purge.c, receipts.c */
	{"push.retention", "interval", MICA_CFG_INT, 1, 86400, "60", F(jobs_interval_s),
	 "seconds between two runs of the scheduled jobs (expiry, silent devices, job keys,"
	 " traces, receipts)"},
	{"push.retention", "silent_days", MICA_CFG_INT, 1, 3650, "90", F(silent_days),
	 "a registration silent this many days is deleted with its queue"},
	{"push.retention", "trace_days", MICA_CFG_INT, 0, 3650, "30", F(trace_days),
	 "days a message's trace is kept after it expired (then the message row goes)"},
	{"push.retention", "batch", MICA_CFG_INT, 1, 100000, "1000", F(purge_batch),
	 "rows one purge transaction deletes at most"},
	{"push.receipts", "ca_file", MICA_CFG_STRING, 1, 4096, "/etc/ssl/certs/ca-certificates.crt",
	 F(receipts_ca_file), "CAs the developers' callback URLs must chain to"},
	{"push.receipts", "max_attempts", MICA_CFG_INT, 1, 100, "8", F(receipts_max_attempts),
	 "failed POSTs after which a message's receipts are given up"},
	{"push.receipts", "backoff_ms", MICA_CFG_INT, 10, 3600000, "30000", F(receipts_backoff_ms),
	 "delay before the first retry of a failed receipt, doubled each failure (at most an"
	 " hour)"},
	{"push.receipts", "timeout_ms", MICA_CFG_INT, 100, 60000, "10000", F(receipts_timeout_ms),
	 "one receipt POST, whole"},
	{"push.receipts", "private_addresses", MICA_CFG_BOOL, 0, 1, "false", F(receipts_private),
	 "POST receipts to callback hosts at loopback, private, link-local or other non-public"
	 " addresses too (a test rig; otherwise a developer's URL could reach inside)"},
	/* [push.broker]: the long connection (mipush/broker.h) */
	{"push.broker", "bind", MICA_CFG_STRING, 1, 255, "127.0.0.1", F(broker.bind),
	 "address the MQTT-over-TLS broker listens on (IPv4 or IPv6 literal)"},
	{"push.broker", "port", MICA_CFG_INT, 1, 65535, "5228", F(broker.port),
	 "TCP port of the broker (shared by its worker processes: SO_REUSEPORT)"},
	{"push.broker", "cert_file", MICA_CFG_STRING, 1, 4096, NULL, F(broker.cert_file),
	 "PEM server certificate chain of the broker"},
	{"push.broker", "key_file", MICA_CFG_STRING, 1, 4096, NULL, F(broker.key_file),
	 "PEM private key of the broker certificate"},
	{"push.broker", "ticket_secret_file", MICA_CFG_STRING, 0, 4096, "",
	 F(broker.ticket_secret_file),
	 "file of 32 random bytes keying TLS session tickets, the same for every process on the"
	 " port so a session resumes on any of them (empty: random per process; workers > 1"
	 " needs one)"},
	{"push.broker", "workers", MICA_CFG_INT, 1, 64, "1", F(broker.workers),
	 "broker processes on the port (the first runs in mica-push itself, the others are"
	 " forked at start)"},
	{"push.broker", "max_keepalive", MICA_CFG_INT, 10, 65535, "1200", F(broker.max_keepalive),
	 "largest MQTT keepalive honoured, seconds (also the keepalive of a CONNECT with 0);"
	 " a device silent for 1.5 x its keepalive is disconnected"},
	{"push.broker", "inflight", MICA_CFG_INT, 1, 1000, "20", F(broker.inflight),
	 "QoS 1 messages sent to one device and not yet acknowledged (PUBACK)"},
	{"push.broker", "max_connections", MICA_CFG_INT, 1, 1000000, "19000",
	 F(broker.max_connections),
	 "connections per broker process (below the process's descriptor limit, 20000 here)"},
	{"push.broker", "handshake_timeout_ms", MICA_CFG_INT, 100, 600000, "10000",
	 F(broker.handshake_timeout_ms),
	 "milliseconds for the TLS handshake, then again for the CONNECT, and for any one"
	 " packet trickled in pieces (slowloris)"},
	{"push.broker", "detach_idle_ms", MICA_CFG_INT, 0, 3600000, "2000",
	 F(broker.detach_idle_ms),
	 "milliseconds a TLS 1.3 connection stays quiet before its SSL object is freed and its"
	 " records are carried by lib/tlsrec (an idle device then costs under 1 KB of TLS"
	 " state); 0 keeps every connection on OpenSSL"},
	{"push.broker", "max_packet", MICA_CFG_SIZE, 64, 65536, "4K", F(broker.max_packet),
	 "largest MQTT packet a device may send (it sends CONNECT, SUBSCRIBE, PUBACK, PINGREQ)"},
};
#undef F
const size_t push_config_table_len = sizeof(push_config_table) / sizeof(push_config_table[0]);

/* Both keys answer the operations the service needs from them: an HMAC
 * under the index key (cached by lib/kc after the first), and an
 * encryption under the content key, never cached, so each probe proves the
 * Key Center reachable, auditing and its policy in force. */
static int probe_keys(push_service *s)
{
	const char *key = s->cfg->index_key;
	char *mac = NULL, *ct = NULL;
	json_t *ctx = json_pack("{s:s}", "probe", "readiness");
	int err = mica_kc_hmac(s->kc, key, "probe", 5, &mac);
	if (err == 0) {
		key = s->cfg->content_key;
		err = ctx ? mica_kc_encrypt(s->kc, key, "x", 1, ctx, &ct) : MICA_ENOMEM;
	}
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "push: Key Center key %s is not usable: %s", key,
			 mica_strerror(err));
	json_decref(ctx);
	free(mac);
	free(ct);
	return err;
}

static int ready_keycenter(void *state)
{
	return probe_keys(state);
}

static const mica_ready_check push_ready[] = {
	{"database", mica_ready_database, 0},
	{"redis", mica_ready_redis, 0},
	{"keycenter", ready_keycenter, 0},
};

static int push_validate(void *config, char *err, size_t errlen)
{
	struct push_config *cfg = config;
	const struct push_broker_config *b = &cfg->broker;
	int rc = mica_config_check_cert_key("push.broker", "cert_file", b->cert_file, "key_file",
					    b->key_file, err, errlen);
	if (rc)
		return rc;
	if (b->workers > 1 && !*b->ticket_secret_file) {
		snprintf(err, errlen,
			 "push.broker.ticket_secret_file: required with workers > 1 (every"
			 " worker must key session tickets alike)");
		return MICA_ECONFIG;
	}
	return 0;
}

/* The descriptors a process may open bound its connections: keep room for
 * what else the process holds: the HTTPS listener's connections
 * (push.http.max_connections), a database and a Key Center connection per
 * blocking thread, and a fixed few (listeners, the broker's database and
 * Redis connections, the jobs thread, logs, the loop's own descriptors). */
#define FD_RESERVE_FIXED 48
static void clamp_connections(struct push_config *cfg)
{
	struct push_broker_config *b = &cfg->broker;
	rlim_t reserve = FD_RESERVE_FIXED + (rlim_t)cfg->http.max_conns +
			 2 * (rlim_t)cfg->http.blocking_threads;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur <= reserve || (rlim_t)b->max_connections + reserve <= rl.rlim_cur)
		return;
	int max = (int)(rl.rlim_cur - reserve);
	MICA_LOG(MICA_LOG_WARN,
		 "push broker: max_connections %d does not fit the descriptor limit %llu with"
		 " %llu kept for the HTTPS listener and the rest; using %d",
		 b->max_connections, (unsigned long long)rl.rlim_cur, (unsigned long long)reserve,
		 max);
	b->max_connections = max;
}

/* Threads of this process: forking without exec is safe only while the
 * process has one. */
static int thread_count(void)
{
	DIR *d = opendir("/proc/self/task");
	int n = 0;
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* A worker process: a broker of its own (Key Center client, database and
 * Redis threads) on the shared port, until SIGTERM (also sent when the
 * parent dies). Never returns. */
static void worker_main(struct push_config *cfg, const mica_daemon_env *env,
			struct push_broker_metrics *m, pid_t parent)
{
	push_service w = {.cfg = cfg};
	int err;
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
		_exit(1);
	if ((err = mica_kc_new(&w.kc, &cfg->kc)) != 0 ||
	    (err = push_broker_start(&w, &cfg->broker, env->kv, m, &w.broker)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "push broker worker %d: cannot start: %s", (int)getpid(),
			 mica_strerror(err));
		mica_kc_free(w.kc);
		_exit(1);
	}
	mica_daemon_wait_signal();
	push_broker_stop(w.broker);
	mica_kc_free(w.kc);
	_exit(0);
}

/* The counters of every broker process (shared memory), and the workers
 * beyond the first, forked now: before this process starts any thread
 * (docs/decisions.md, "The push broker"). */
static int start_workers(push_service *s, struct push_config *cfg, const mica_daemon_env *env)
{
	size_t n = (size_t)cfg->broker.workers;
	void *m = mmap(NULL, n * sizeof(*s->metrics), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return MICA_ENOMEM;
	s->metrics = m;
	s->nworkers = n;
	if (n == 1)
		return 0;
	if (thread_count() != 1) {
		MICA_LOG(MICA_LOG_ERROR, "push: broker workers must be forked before any thread"
					 " starts, and this process has several");
		return MICA_ESTATE;
	}
	if (!(s->worker_pids = calloc(n, sizeof(*s->worker_pids))))
		return MICA_ENOMEM;
	pid_t parent = getpid();
	for (size_t i = 1; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			MICA_LOG(MICA_LOG_ERROR, "push: fork of broker worker %zu failed", i);
			return MICA_EIO;
		}
		if (pid == 0)
			worker_main(cfg, env, &s->metrics[i], parent);
		s->worker_pids[i] = pid;
	}
	return 0;
}

static int push_start(void *config, const mica_daemon_env *env, void **state)
{
	struct push_config *cfg = config;
	push_service *s = calloc(1, sizeof(*s));
	int err;
	*state = s;
	if (!s)
		return MICA_ENOMEM;
	s->cfg = cfg;
	cfg->kc.cache_ttl_ms = (long)cfg->key_cache_ttl_s * 1000;
	clamp_connections(cfg);
	if ((err = start_workers(s, cfg, env)) != 0)
		return err;
	if ((err = mica_kc_new(&s->kc, &cfg->kc)) != 0 || (err = probe_keys(s)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "push: the Key Center at %s is not usable: %s",
			 cfg->kc.base_url, mica_strerror(err));
		return err;
	}
	if ((err = push_broker_start(s, &cfg->broker, env->kv, &s->metrics[0], &s->broker)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "push: the broker cannot listen on %s port %d: %s",
			 cfg->broker.bind, cfg->broker.port, mica_strerror(err));
		return err;
	}
	return 0;
}

/* The scheduled jobs start once the service serves (purge.c). */
static int push_serving(void *state)
{
	return push_jobs_start(state);
}

static void push_stop(void *state)
{
	push_service *s = state;
	if (!s)
		return;
	push_jobs_stop(s);
	push_broker_stop(s->broker);
	for (size_t i = 1; s->worker_pids && i < s->nworkers; i++)
		if (s->worker_pids[i] > 0)
			kill(s->worker_pids[i], SIGTERM);
	for (size_t i = 1; s->worker_pids && i < s->nworkers; i++)
		if (s->worker_pids[i] > 0)
			(void)waitpid(s->worker_pids[i], NULL, 0);
	free(s->worker_pids);
	if (s->metrics)
		munmap(s->metrics, s->nworkers * sizeof(*s->metrics));
	mica_kc_free(s->kc);
	free(s);
}

static void push_metrics(void *state, FILE *out)
{
	push_service *s = state;
	if (s && s->metrics)
		push_broker_metrics_write(out, s->metrics, s->nworkers);
}

const mica_service push_daemon = {
	.name = "push",
	.summary = "The push service: device registration, developer apps, aliases and topics.",
	MICA_SERVICE_CONFIG(push_config_table, struct push_config),
	.uses = MICA_USES_DB | MICA_USES_REDIS | MICA_USES_KC,
	.db_at = offsetof(struct push_config, db),
	.redis_at = offsetof(struct push_config, redis),
	.kc_at = offsetof(struct push_config, kc),
	.validate = push_validate,
	.start = push_start,
	.serving = push_serving,
	.stop = push_stop,
	.metrics = push_metrics,
	.routes = push_routes,
	.nroutes = &push_routes_len,
	MICA_SERVICE_READY(push_ready),
};
