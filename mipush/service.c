/* service.c - mica-push as a libmica daemon (lib/daemon.h): its
 * configuration table, readiness rows and start (the Key Center client,
 * with its two keys probed before anyone is served). The skeleton opens
 * PostgreSQL, runs the listener and shuts down. Devices and developers
 * authenticate inside the requests (registration needs only the app id and
 * package; developers send their app secret), so the listener does not
 * ask for client certificates (docs/decisions.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int push_start(void *config, const mica_daemon_env *env, void **state)
{
	struct push_config *cfg = config;
	push_service *s = calloc(1, sizeof(*s));
	int err;
	(void)env;
	*state = s;
	if (!s)
		return MICA_ENOMEM;
	s->cfg = cfg;
	cfg->kc.cache_ttl_ms = (long)cfg->key_cache_ttl_s * 1000;
	if ((err = mica_kc_new(&s->kc, &cfg->kc)) != 0 || (err = probe_keys(s)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "push: the Key Center at %s is not usable: %s",
			 cfg->kc.base_url, mica_strerror(err));
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
	mica_kc_free(s->kc);
	free(s);
}

const mica_service push_daemon = {
	.name = "push",
	.summary = "The push service: device registration, developer apps, aliases and topics.",
	MICA_SERVICE_CONFIG(push_config_table, struct push_config),
	.uses = MICA_USES_DB | MICA_USES_REDIS | MICA_USES_KC,
	.db_at = offsetof(struct push_config, db),
	.redis_at = offsetof(struct push_config, redis),
	.kc_at = offsetof(struct push_config, kc),
	.start = push_start,
	.serving = push_serving,
	.stop = push_stop,
	.routes = push_routes,
	.nroutes = &push_routes_len,
	MICA_SERVICE_READY(push_ready),
};
