/* service.c - mica-cloudsync as a libmica daemon (lib/daemon.h): its
 * configuration table, readiness rows and start (the Key Center client with
 * its key probed, the session validator), and the jobs thread once it
 * serves. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "cloudsync/cloudsync.h"
#include "crypto.h"
#include "log.h"

#define F(m) offsetof(struct cs_config, m)
const mica_config_entry cs_config_table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", F(log_level),
	 "least severe level written (debug, info, warn, error, off)"},
	MICA_CONFIG_HTTP_ENTRIES("cloudsync.http", struct cs_config, http, "16"),
	MICA_CONFIG_DB_ENTRIES("cloudsync.db", struct cs_config, db, "mica_cloudsync"),
	MICA_CONFIG_REDIS_ENTRIES("cloudsync.redis", struct cs_config, redis, "cloudsync",
				  "cloudsync:*; reads session:*"),
	MICA_CONFIG_KC_CLIENT_ENTRIES("cloudsync.keycenter", struct cs_config, kc, "cloudsync"),
	{"cloudsync.keycenter", "user_key", MICA_CFG_STRING, 1, 64, "cloudsync-user", F(user_key),
	 "Key Center key wrapping each user's data key (the records' key)"},
	{"cloudsync.keycenter", "cache_entries", MICA_CFG_INT, 1, 10000000, "10000",
	 F(kc.cache_max_entries), "users' data keys kept unwrapped in memory, wiped on eviction"},
	{"cloudsync.keycenter", "cache_ttl", MICA_CFG_INT, 1, 86400, "300", F(key_cache_ttl_s),
	 "seconds an unwrapped data key stays in memory"},
	{"cloudsync.auth", "introspect_url", MICA_CFG_STRING, 1, 4096, NULL, F(introspect_url),
	 "the account service's POST /v1/introspect (https://host:port/v1/introspect)"},
	{"cloudsync.auth", "ca_file", MICA_CFG_STRING, 1, 4096, NULL, F(auth_ca_file),
	 "CA the account service's certificate chains to"},
	{"cloudsync.auth", "cert_file", MICA_CFG_STRING, 1, 4096, NULL, F(auth_cert_file),
	 "client certificate of the cloudsync principal (account.introspect.principals)"},
	{"cloudsync.auth", "key_file", MICA_CFG_STRING, 1, 4096, NULL, F(auth_key_file),
	 "its private key"},
	{"cloudsync.records", "max_size", MICA_CFG_SIZE, 64, 4 << 20, "64K", F(record_max),
	 "bytes of one record's JSON (compact) at most"},
	{"cloudsync.records", "page_max", MICA_CFG_INT, 1, 10000, "1000", F(page_max),
	 "changes one GET .../changes answers at most (limit=)"},
	{"cloudsync.records", "batch_max", MICA_CFG_INT, 1, 10000, "500", F(batch_max),
	 "writes one POST .../batch carries at most"},
	{"cloudsync.records", "mass_delete_percent", MICA_CFG_INT, 1, 100, "50", F(mass_delete_pct),
	 "a batch deleting more than this share of a collection's records needs"
	 " confirm_mass_delete ..."},
	{"cloudsync.records", "mass_delete_min", MICA_CFG_INT, 1, 1000000, "10", F(mass_delete_min),
	 "... when it deletes at least this many"},
	{"cloudsync.bin", "keep_days", MICA_CFG_INT, 1, 3650, "30", F(bin_days),
	 "days a deleted record stays in the recycle bin; purged then, by time only"},
	{"cloudsync.bin", "interval", MICA_CFG_INT, 1, 86400, "60", F(jobs_interval_s),
	 "seconds between two runs of the bin purge"},
	{"cloudsync.bin", "batch", MICA_CFG_INT, 1, 100000, "1000", F(purge_batch),
	 "records one purge transaction removes at most"},
};
#undef F
const size_t cs_config_table_len = sizeof(cs_config_table) / sizeof(cs_config_table[0]);

/* The user key answers what the service asks of it: a data key is minted
 * (never cached), so the probe proves the Key Center reachable, auditing
 * and its policy in force. */
static int probe_key(cs_service *s)
{
	uint8_t key[CS_KEY_LEN];
	char *wrapped = NULL;
	json_t *ctx = json_pack("{s:s,s:s}", "service", "cloudsync", "probe", "readiness");
	int err = ctx ? mica_kc_datakey(s->kc, s->cfg->user_key, CS_KEY_LEN * 8, ctx, key,
					sizeof(key), &wrapped)
		      : MICA_ENOMEM;
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "cloudsync: Key Center key %s is not usable: %s",
			 s->cfg->user_key, mica_strerror(err));
	mica_wipe(key, sizeof(key));
	json_decref(ctx);
	free(wrapped);
	return err;
}

static int ready_keycenter(void *state)
{
	return probe_key(state);
}

static const mica_ready_check cs_ready[] = {
	{"database", mica_ready_database, 0},
	{"redis", mica_ready_redis, 0},
	{"keycenter", ready_keycenter, 0},
};

static int cs_start(void *config, const mica_daemon_env *env, void **state)
{
	struct cs_config *cfg = config;
	cs_service *s = calloc(1, sizeof(*s));
	int err;
	(void)env;
	*state = s;
	if (!s)
		return MICA_ENOMEM;
	s->cfg = cfg;
	xmlInitParser(); /* once, before the handler threads (dav.c) */
	cfg->kc.cache_ttl_ms = (long)cfg->key_cache_ttl_s * 1000;
	mica_auth_options ao = {.introspect_url = cfg->introspect_url,
				.ca_file = cfg->auth_ca_file,
				.cert_file = cfg->auth_cert_file,
				.key_file = cfg->auth_key_file};
	if ((err = mica_auth_new(&s->auth, &ao)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "cloudsync: the session validator cannot start: %s",
			 mica_strerror(err));
		return err;
	}
	if ((err = mica_kc_new(&s->kc, &cfg->kc)) != 0 || (err = probe_key(s)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "cloudsync: the Key Center at %s is not usable: %s",
			 cfg->kc.base_url, mica_strerror(err));
		return err;
	}
	return 0;
}

static int cs_serving(void *state)
{
	return cs_jobs_start(state);
}

static void cs_stop(void *state)
{
	cs_service *s = state;
	if (!s)
		return;
	cs_jobs_stop(s);
	mica_kc_free(s->kc);
	mica_auth_free(s->auth);
	free(s);
}

const mica_service cloudsync_daemon = {
	.name = "cloudsync",
	.summary = "Cloud sync: records of every module, sync tokens, conflicts and the recycle"
		   " bin.",
	MICA_SERVICE_CONFIG(cs_config_table, struct cs_config),
	.uses = MICA_USES_DB | MICA_USES_REDIS | MICA_USES_KC,
	.db_at = offsetof(struct cs_config, db),
	.redis_at = offsetof(struct cs_config, redis),
	.kc_at = offsetof(struct cs_config, kc),
	.start = cs_start,
	.serving = cs_serving,
	.stop = cs_stop,
	.routes = cs_routes,
	.nroutes = &cs_routes_len,
	MICA_SERVICE_READY(cs_ready),
};
