/* service.c - mica-account as a libmica daemon (lib/daemon.h): its
 * configuration table, the checks run before anything is opened, and its
 * start: the Key Center (checking that its three keys are usable), the
 * in-process session cache, rows written before sealing sealed (atrest.c),
 * the password blocklist; once serving, the notice worker (notice.c). The
 * skeleton opens PostgreSQL and Redis, runs the listener and shuts down. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "account/account.h"
#include "auth.h"
#include "crypto.h"
#include "daemon.h"
#include "db.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"

/* Longest an in-process session copy is used without reading Redis again:
 * a bound for the unforeseen, since invalidations keep it exact. */
#define SESSION_CACHE_MAX_AGE_MS (5 * 60 * 1000)

#define F(m) offsetof(struct acct_config, m)
const mica_config_entry acct_config_table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", F(log_level),
	 "least severe level written (debug, info, warn, error, off)"},
	MICA_CONFIG_HTTP_ENTRIES("account.http", struct acct_config, http, "32"),
	MICA_CONFIG_DB_ENTRIES("account.db", struct acct_config, db, "mica_account"),
	MICA_CONFIG_REDIS_ENTRIES("account.redis", struct acct_config, redis, "account",
				  "account:* and session:*"),
	MICA_CONFIG_KC_CLIENT_ENTRIES("account.keycenter", struct acct_config, kc, "account"),
	{"account.keycenter", "pii_key", MICA_CFG_STRING, 1, 64, "account-pii", F(pii_key),
	 "Key Center key encrypting phone, email and account id, and wrapping the data keys that"
	 " seal device names and security questions"},
	{"account.keycenter", "index_key", MICA_CFG_STRING, 1, 64, "account-index", F(index_key),
	 "Key Center key of the HMAC blind indexes, code and network hashes (never rotate without"
	 " re-indexing)"},
	{"account.keycenter", "pepper_key", MICA_CFG_STRING, 1, 64, "account-pepper", F(pepper_key),
	 "Key Center key wrapping the data keys that seal password and security-answer hashes"
	 " (the pepper)"},
	{"account.password", "policy", MICA_CFG_STRING, 4, 4, "miui", F(password_policy),
	 "default password policy for new accounts: miui or nist"},
	{"account.password", "blocklist_dir", MICA_CFG_STRING, 0, 4096, "", F(blocklist_dir),
	 "breached-password range files (SHA-1 prefix files of SUFFIX:COUNT lines); needed by nist"},
	{"account.password", "argon2_memory_kib", MICA_CFG_INT, 8192, 4194304, "19456",
	 F(argon2_m_kib), "Argon2id memory in KiB (stored hashes below it are rehashed at login)"},
	{"account.password", "argon2_iterations", MICA_CFG_INT, 1, 100, "2", F(argon2_t),
	 "Argon2id iterations"},
	{"account.password", "argon2_parallelism", MICA_CFG_INT, 1, 16, "1", F(argon2_p),
	 "Argon2id lanes"},
	{"account.password", "pepper_key_max_age_s", MICA_CFG_INT, 1, 31536000, "86400",
	 F(pepper_key_max_age_s),
	 "seconds one pepper data key seals new hashes before a fresh one is taken"},
	{"account.password", "pepper_key_max_seals", MICA_CFG_INT, 1, 1073741824, "1073741824",
	 F(pepper_key_max_seals),
	 "hashes one pepper data key seals before a fresh one is taken (at most 2^30, far below"
	 " AES-GCM's 2^32 random-nonce bound)"},
	{"account.risk", "captcha_account_failures", MICA_CFG_INT, 1, 1000, "3",
	 F(captcha_account_failures),
	 "failed logins per account (or identifier without one) before a captcha"},
	{"account.risk", "captcha_network_failures", MICA_CFG_INT, 1, 100000, "20",
	 F(captcha_network_failures), "failed logins per client network before a captcha"},
	{"account.risk", "failure_window_s", MICA_CFG_INT, 60, 86400, "900", F(failure_window_s),
	 "how long failures are counted"},
	{"account.risk", "captcha_base_cost", MICA_CFG_INT, 1000, 100000000, "50000",
	 F(captcha_base_cost),
	 "ALTCHA maxnumber of the first challenge; doubles per further failure"},
	{"account.risk", "captcha_max_cost", MICA_CFG_INT, 1000, 1000000000, "5000000",
	 F(captcha_max_cost), "largest ALTCHA maxnumber"},
	{"account.risk", "captcha_ttl_s", MICA_CFG_INT, 30, 3600, "300", F(captcha_ttl_s),
	 "how long a challenge can be solved"},
	{"account.risk", "altcha_key_file", MICA_CFG_SECRET, 0, 4096, NULL, F(altcha_key),
	 "file holding the HMAC key that signs challenges (at least 16 bytes)"},
	{"account.risk", "stepup_new_device", MICA_CFG_BOOL, 0, 1, "true", F(stepup_new_device),
	 "ask for step-up on a login from a device not seen before"},
	{"account.risk", "stepup_new_network", MICA_CFG_BOOL, 0, 1, "true", F(stepup_new_network),
	 "ask for step-up on a login from a network (/24, /48) not seen before"},
	{"account.risk", "login_rate_max", MICA_CFG_INT, 1, 100000, "30", F(login_rate_max),
	 "successful logins per account in the window before step-up (unusual rate)"},
	{"account.risk", "login_rate_window_s", MICA_CFG_INT, 60, 86400, "3600",
	 F(login_rate_window_s), "window of login_rate_max"},
	{"account.risk", "freeze_after_stepup_failures", MICA_CFG_INT, 1, 100, "3",
	 F(freeze_after_stepup_failures),
	 "wrong step-up codes after a right password that freeze, counted per account over"
	 " stepup_failure_window_s"},
	{"account.risk", "stepup_failure_window_s", MICA_CFG_INT, 60, 2592000, "86400",
	 F(stepup_failure_window_s),
	 "how long wrong step-up codes count towards the freeze, whichever step-up they were in"},
	{"account.risk", "stepup_ttl_s", MICA_CFG_INT, 60, 3600, "600", F(stepup_ttl_s),
	 "how long a step-up can be completed"},
	{"account.session", "app_days", MICA_CFG_INT, 1, 365, "30", F(app_session_days),
	 "lifetime of app sessions in days"},
	{"account.session", "web_idle_s", MICA_CFG_INT, 60, 86400, "900", F(web_idle_s),
	 "idle timeout of web sessions (15 minutes)"},
	{"account.session", "recent_auth_s", MICA_CFG_INT, 30, 86400, "300", F(recent_auth_s),
	 "how recent an authentication sensitive operations need"},
	{"account.session", "cache_entries", MICA_CFG_INT, 0, 10000000, "100000",
	 F(session_cache_entries),
	 "app sessions kept in process, invalidated by Redis client tracking (0: off)"},
	{"account.codes", "ttl_s", MICA_CFG_INT, 60, 3600, "600", F(code_ttl_s),
	 "lifetime of a verification code"},
	{"account.codes", "max_attempts", MICA_CFG_INT, 1, 20, "5", F(code_max_attempts),
	 "wrong tries before a code is dead"},
	{"account.codes", "per_hour", MICA_CFG_INT, 1, 1000, "5", F(codes_per_hour),
	 "code requests per hour for one phone or email address from one requester (client"
	 " network; for step-up and binding, the account)"},
	{"account.codes", "per_address_hour", MICA_CFG_INT, 1, 10000, "20",
	 F(codes_per_address_hour),
	 "code requests per hour for one address from all requesters together, counted apart for"
	 " anyone (register, reset) and for its owner (step-up, binding)"},
	{"account.notify", "email", MICA_CFG_STRING, 4, 6, "outbox", F(email_mode),
	 "email sender: outbox (development table, `mica outbox list`) or smtp"},
	{"account.notify", "sms", MICA_CFG_STRING, 6, 7, "outbox", F(sms_mode),
	 "SMS sender: outbox or webhook"},
	{"account.notify", "smtp_url", MICA_CFG_STRING, 0, 4096, "", F(smtp_url),
	 "smtps://host:port or smtp://host:port (STARTTLS required)"},
	{"account.notify", "smtp_from", MICA_CFG_STRING, 0, 254, "", F(smtp_from),
	 "sender address of emails"},
	{"account.notify", "smtp_user", MICA_CFG_STRING, 0, 254, "", F(smtp_user),
	 "SMTP AUTH user name (empty: no login)"},
	{"account.notify", "smtp_password_file", MICA_CFG_SECRET, 0, 4096, "", F(smtp_password),
	 "file holding the SMTP password"},
	{"account.notify", "sms_webhook_url", MICA_CFG_STRING, 0, 4096, "", F(sms_webhook_url),
	 "https URL SMS are POSTed to as {to, text}"},
	{"account.recycling", "mode", MICA_CFG_STRING, 4, 5, "local", F(recycling_mode),
	 "number-recycling check: local (the account.recycled_number table) or http (a carrier)"},
	{"account.recycling", "url", MICA_CFG_STRING, 0, 4096, "", F(recycling_url),
	 "https URL of the carrier's check (mode http): POST {phone, since}, answer {recycled}"},
	{"account.introspect", "principals", MICA_CFG_STRING, 0, 4096,
	 "keycenter,cloudsync,push,pay", F(introspect_principals),
	 "mTLS principals allowed to call POST /v1/introspect (comma list)"},
};
#undef F
const size_t acct_config_table_len = sizeof(acct_config_table) / sizeof(acct_config_table[0]);

/* ---- readiness (GET /readyz) ----------------------------------------------
 * The database and Redis probes are libmica's; these two are the account
 * service's own. acct_ready lists them with the name /readyz reports; they
 * run on the blocking pool, at most once per MICA_HTTP_READY_CACHE_MS. */

/* The Key Center answers this principal: an encryption under the PII key,
 * which is never cached (each one is a fresh ciphertext), so it proves the
 * Key Center reachable, its audit trail writable and the policy in force. */
static int ready_keycenter(void *state)
{
	acct_service *s = state;
	json_t *ctx = json_pack("{s:s}", "probe", "readiness");
	char *ct = NULL;
	int err = ctx ? mica_kc_encrypt(s->kc, s->cfg->pii_key, "x", 1, ctx, &ct) : MICA_ENOMEM;
	json_decref(ctx);
	free(ct);
	return err;
}

/* Data keys to seal password hashes and records with are at hand (pepper.c). */
static int ready_sealers(void *state)
{
	acct_service *s = state;
	int err = acct_sealer_ready(s, s->pepper);
	return err ? err : acct_sealer_ready(s, s->records);
}

static const mica_ready_check acct_ready[] = {
	{"database", mica_ready_database, 0},
	{"redis", mica_ready_redis, 0},
	{"keycenter", ready_keycenter, 0},
	{"sealers", ready_sealers, 0},
};

/* The three Key Center keys must be usable before we accept anyone: each is
 * probed with the operations the service needs from it (index: hmac; pii:
 * encrypt and datakey; pepper: datakey). */
static int check_keys(acct_service *s)
{
	const char *key = s->cfg->index_key;
	char *mac = NULL, *ct = NULL;
	json_t *ctx = json_pack("{s:s}", "probe", "startup");
	int err = mica_kc_hmac(s->kc, key, "probe", 5, &mac);
	if (err == 0) {
		key = s->cfg->pii_key;
		err = ctx ? mica_kc_encrypt(s->kc, key, "x", 1, ctx, &ct) : MICA_ENOMEM;
	}
	if (err == 0)
		err = acct_sealer_ready(s, s->records);
	if (err == 0) {
		key = s->cfg->pepper_key;
		err = acct_sealer_ready(s, s->pepper);
	}
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "account: Key Center key %s is not usable: %s", key,
			 mica_strerror(err));
	json_decref(ctx);
	free(mac);
	free(ct);
	return err;
}

/* The copy of live app sessions in front of Redis (session.c). Redis being
 * down is no reason not to start (the cache stays off until it is back); an
 * ACL without CLIENT TRACKING or the invalidation channel is. */
static int start_session_cache(acct_service *s, const struct mica_kv_config *kvc)
{
	mica_kvcache_options o = {.prefix = MICA_AUTH_CACHE_PREFIX,
				  .max_entries = (size_t)s->cfg->session_cache_entries,
				  .max_age_ms = SESSION_CACHE_MAX_AGE_MS,
				  .on_sync = acct_session_resync,
				  .on_sync_arg = s};
	if (s->cfg->session_cache_entries == 0)
		return 0;
	int err = mica_kvcache_start(&s->session_cache, kvc, &o);
	if (err)
		MICA_LOG(MICA_LOG_ERROR,
			 "account.session.cache_entries: the session cache cannot "
			 "start (%s); the Redis user needs the channel "
			 "__redis__:invalidate and CLIENT TRACKING, or set 0",
			 mica_strerror(err));
	return err;
}

/* Cross-checks of values, before anything is opened (lib/daemon.h). */
static int acct_validate(void *config, char *err, size_t errlen)
{
	struct acct_config *cfg = config;
	const char *why = NULL;
	if (strcmp(cfg->password_policy, "miui") != 0 && strcmp(cfg->password_policy, "nist") != 0)
		why = "account.password.policy: must be miui or nist";
	else if (strcmp(cfg->password_policy, "nist") == 0 && !*cfg->blocklist_dir)
		why = "account.password.policy: nist needs account.password.blocklist_dir"
		      " (breached-password range files)";
	else if (strlen(cfg->altcha_key) < 16)
		why = "account.risk.altcha_key_file: the key needs 16+ bytes";
	if (!why)
		return 0;
	snprintf(err, errlen, "%s", why);
	return MICA_ECONFIG;
}

/* The daemon's state: the service the routes see, and the notice worker. */
struct acct_state {
	acct_service s; /* first: the routes' context is &state->s */
	acct_notice_worker *notices;
};

static int acct_start(void *config, const mica_daemon_env *env, void **state)
{
	struct acct_config *cfg = config;
	struct acct_state *st = calloc(1, sizeof(*st));
	acct_service *s = st ? &st->s : NULL;
	int err;

	*state = st;
	if (!st)
		return MICA_ENOMEM;
	s->cfg = cfg;
	s->argon2 = (acct_argon2_params){(uint32_t)cfg->argon2_m_kib, (uint32_t)cfg->argon2_t,
					 (uint32_t)cfg->argon2_p};
	/* The pepper's data keys keep the context they were first minted with. */
	if ((err = start_session_cache(s, env->kv)) != 0 ||
	    (err = acct_sealer_new(cfg->pepper_key, "user", "password", "pepper", &s->pepper)) !=
		    0 ||
	    (err = acct_sealer_new(cfg->pii_key, NULL, NULL, "records", &s->records)) != 0)
		return err;
	if ((err = mica_kc_new(&s->kc, &cfg->kc)) != 0 || (err = check_keys(s)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "account: the Key Center at %s is not usable: %s",
			 cfg->kc.base_url, mica_strerror(err));
		return err;
	}
	if ((err = acct_at_rest_upgrade(s)) != 0)
		return err;
	acct_notify_config nc = {.email_mode = cfg->email_mode,
				 .sms_mode = cfg->sms_mode,
				 .smtp_url = cfg->smtp_url,
				 .smtp_from = cfg->smtp_from,
				 .smtp_user = *cfg->smtp_user ? cfg->smtp_user : NULL,
				 .smtp_password = *cfg->smtp_password ? cfg->smtp_password : NULL,
				 .sms_webhook_url = cfg->sms_webhook_url,
				 .ca_file = cfg->kc.ca_file,
				 /* The webhook sees the account service's client identity. */
				 .cert_file = cfg->kc.cert_file,
				 .key_file = cfg->kc.key_file};
	if ((err = acct_notify_new(&s->notify, &nc)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "account.notify: %s", mica_strerror(err));
		return err;
	}
	if (*cfg->blocklist_dir && (err = acct_blocklist_open(cfg->blocklist_dir, &s->blocklist))) {
		MICA_LOG(MICA_LOG_ERROR, "account.password.blocklist_dir: %s", mica_strerror(err));
		return err;
	}
	if ((err = acct_recycling_new(cfg, &s->recycling)) != 0 || (err = acct_login_init(s)) != 0)
		return err;
	return 0;
}

static int acct_serving(void *state)
{
	struct acct_state *st = state;
	return acct_notice_start(&st->s, &st->notices);
}

static void acct_stop(void *state)
{
	struct acct_state *st = state;
	if (!st)
		return;
	acct_notice_stop(&st->notices);
	acct_blocklist_close(st->s.blocklist);
	acct_recycling_free(st->s.recycling);
	acct_notify_free(st->s.notify);
	mica_kc_free(st->s.kc);
	acct_sealer_free(st->s.pepper);
	acct_sealer_free(st->s.records);
	mica_kvcache_stop(&st->s.session_cache);
	free(st);
}

const mica_service acct_daemon = {
	.name = "account",
	.summary = "The account service: registration, risk-based login, sessions, security"
		   " settings.",
	MICA_SERVICE_CONFIG(acct_config_table, struct acct_config),
	.uses = MICA_USES_DB | MICA_USES_REDIS | MICA_USES_KC,
	.db_at = offsetof(struct acct_config, db),
	.redis_at = offsetof(struct acct_config, redis),
	.kc_at = offsetof(struct acct_config, kc),
	.validate = acct_validate,
	.start = acct_start,
	.serving = acct_serving,
	.stop = acct_stop,
	.routes = acct_routes,
	.nroutes = &acct_routes_len,
	MICA_SERVICE_READY(acct_ready),
};
