/* service.c - mica-keycenter as a libmica daemon (lib/daemon.h): its
 * configuration table, the checks run before anything is opened (unseal mode
 * and PIN file, the client CA of its mutual TLS, the webhook CAs), and its
 * start: the alert thread, the HSM (with the PIN file in development, or
 * sealed until officers submit their shares, unseal.c), the root key's unwrap
 * template, the audit MAC key and writer. The skeleton opens the database,
 * runs the listener, waits for a signal and shuts down in reverse order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "crypto.h"
#include "daemon.h"
#include "db.h"
#include "keycenter/keycenter.h"
#include "log.h"

#define F(m) offsetof(struct kc_config, m)
const mica_config_entry kc_config_table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", F(log_level),
	 "least severe level written (debug, info, warn, error, off)"},
	MICA_CONFIG_HTTP_ENTRIES("keycenter.http", struct kc_config, http, "16"),
	MICA_CONFIG_DB_ENTRIES("keycenter.db", struct kc_config, db, "mica_keycenter"),
	{"keycenter.hsm", "module", MICA_CFG_STRING, 1, 4096, "/usr/lib/softhsm/libsofthsm2.so",
	 F(hsm_module), "PKCS#11 module loaded with dlopen"},
	{"keycenter.hsm", "token_label", MICA_CFG_STRING, 1, 32, "mica-keycenter",
	 F(hsm_token_label), "label of the token holding the root key (never a slot number)"},
	{"keycenter.hsm", "unseal", MICA_CFG_STRING, 1, 16, "pin_file", F(hsm_unseal),
	 "how the token is opened: pin_file (development: the PIN is read from pin_file) or "
	 "shares (production: start sealed; officers submit k of n shares)"},
	{"keycenter.hsm", "pin_file", MICA_CFG_STRING, 0, 4096, "", F(hsm_pin_file),
	 "file holding the token's user PIN (unseal = pin_file only; must be empty with shares)"},
	{"keycenter.audit", "checkpoint_every", MICA_CFG_INT, 1, 1000000, "1000",
	 F(audit_checkpoint_every), "records between two HSM-signed checkpoints"},
	{"keycenter.audit", "checkpoint_interval_ms", MICA_CFG_INT, 100, 3600000, "10000",
	 F(audit_checkpoint_interval_ms), "longest time between checkpoints while records arrive"},
	{"keycenter.audit", "max_batch", MICA_CFG_INT, 1, 10000, "512", F(audit_max_batch),
	 "most records committed together (group commit)"},
	{"keycenter.audit", "publish_file", MICA_CFG_STRING, 0, 4096, "", F(audit_publish_file),
	 "append-only file every signed checkpoint is appended to; the Key Center refuses to"
	 " start on a log that lacks its newest (empty: none)"},
	{"keycenter.audit", "publish_webhook_url", MICA_CFG_STRING, 0, 4096, "",
	 F(audit_publish_webhook_url),
	 "HTTPS URL every signed checkpoint is POSTed to (empty: none)"},
	{"keycenter.audit", "publish_webhook_ca_file", MICA_CFG_STRING, 0, 4096, "",
	 F(audit_publish_webhook_ca_file), "CA the publish webhook's certificate must chain to"},
	{"keycenter.audit", "selfcheck_interval_s", MICA_CFG_INT, 0, 604800, "3600",
	 F(audit_selfcheck_interval_s),
	 "seconds between self-checks of every record's MAC (alert on failure; 0: off)"},
	{"keycenter.limits", "max_batch_items", MICA_CFG_INT, 1, 100000, "1000", F(max_batch_items),
	 "largest batch_input accepted"},
	{"keycenter.alerts", "rate_max", MICA_CFG_INT, 1, 100000000, "45000", F(alert_rate_max),
	 "requests per principal and key within the window before a rate alert (default:"
	 " KC_ANOMALY_DEFAULT_RATE_MAX)"},
	{"keycenter.alerts", "denial_max", MICA_CFG_INT, 1, 1000000, "20", F(alert_denial_max),
	 "denials per principal within the window before a denial-burst alert"},
	{"keycenter.alerts", "window_s", MICA_CFG_INT, 1, 86400, "60", F(alert_window_s),
	 "length of the alert window in seconds"},
	{"keycenter.alerts", "webhook_url", MICA_CFG_STRING, 0, 4096, "", F(alert_webhook_url),
	 "HTTPS URL alerts are POSTed to as JSON (empty: none)"},
	{"keycenter.alerts", "webhook_ca_file", MICA_CFG_STRING, 0, 4096, "",
	 F(alert_webhook_ca_file), "CA the webhook's certificate must chain to"},
};
#undef F
const size_t kc_config_table_len = sizeof(kc_config_table) / sizeof(kc_config_table[0]);

static int sign_checkpoint(const uint8_t digest[32], uint8_t **sig, size_t *sig_len, void *arg)
{
	return kc_hsm_sign(arg, digest, sig, sig_len);
}

/* Unseals the audit MAC key that `mica keycenter init` stored. */
int kc_audit_mac_key(kc_service *s, uint8_t key[32])
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	uint8_t *sealed = NULL, *pt = NULL;
	size_t sl = 0, pl = 0;
	const kc_hsm_key *kek;
	int err;

	if (!db)
		return MICA_EDBCONN;
	err = mica_db_exec(db,
			   "SELECT decode(value, 'hex') FROM keycenter.meta"
			   " WHERE name = 'audit_mac_key'",
			   0, NULL, &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		err = MICA_ENOTFOUND;
		goto out;
	}
	if ((err = mica_db_get_bytea(res, 0, 0, &sealed, &sl)) != 0 ||
	    (err = kc_kek_handle(s, "keycenter", &kek)) != 0 ||
	    (err = kc_hsm_open_sealed(s->hsm, kek, KC_AUDIT_MAC_AAD, sizeof(KC_AUDIT_MAC_AAD) - 1,
				      sealed, sl, &pt, &pl)) != 0)
		goto out;
	if (pl != 32) {
		err = MICA_EAUTH;
		goto out;
	}
	memcpy(key, pt, 32);
out:
	if (pt) {
		mica_wipe(pt, pl);
		free(pt);
	}
	free(sealed);
	PQclear(res);
	return err;
}

/* ---- readiness (GET /readyz) ----------------------------------------------
 * One function per dependency, each returning 0 or the MICA_E* code of its
 * failure; kc_ready_checks lists them with the name /readyz reports. A new
 * dependency is one more function and one more row. A sealed Key Center
 * reports "seal" instead of the checks that need the token. */

/* The audit trail takes a record: a real append through the group-commit
 * writer (op "readiness_probe", principal "", result "ok"), since every
 * answer waits for exactly that. The probe runs at most once per
 * MICA_HTTP_READY_CACHE_MS however often /readyz is asked. */
static int ready_audit(void *state)
{
	kc_service *s = state;
	kc_audit_record rec = {
		.principal = "", .client = "readyz", .op = "readiness_probe", .result = "ok"};
	return kc_audit_append(s->audit, &rec, NULL) == 0 ? 0 : MICA_EAUDIT;
}

/* The token answers on a session: the audit signing key's attributes are
 * read (no key is used). */
static int ready_hsm(void *state)
{
	kc_service *s = state;
	struct kc_hsm_key_info info;
	int err = kc_hsm_key_info(s->hsm, KC_HSM_AUDIT_LABEL, &info);
	return err == 0 ? 0 : MICA_EHSM;
}

/* Without an active policy every request is refused. */
static int ready_policy(void *state)
{
	kc_policy *p = kc_policy_current(state);
	int active = p != NULL;
	kc_policy_unref(p);
	return active ? 0 : MICA_ESTATE;
}

/* Sealed, there is no token session and no audit writer to probe: the seal
 * is the one thing to fix (and the policy, which needs neither). */
static int ready_seal(void *state)
{
	return kc_service_sealed(state) ? MICA_ESEALED : 0;
}

static const mica_ready_check kc_ready[] = {
	{"seal", ready_seal, MICA_READY_GATE},
	{"audit", ready_audit, 0},
	{"hsm", ready_hsm, 0},
	{"policy", ready_policy, MICA_READY_ALWAYS},
};

int kc_service_bring_up(kc_service *s, kc_hsm *h)
{
	uint8_t mac_key[32];
	int64_t t0 = mica_clock_ms();
	int err;

	s->hsm = h;
	/* A root key without an enforced unwrap template would let any PIN
	 * holder take the KEKs out: refuse to serve on it (issue 18). */
	if ((err = kc_hsm_root_check(h)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: the token's root key is not usable (%s)%s",
			 mica_strerror(err),
			 err == MICA_ESTATE ? "; run `mica keycenter migrate-root`" : "");
		goto fail;
	}
	if ((err = kc_audit_mac_key(s, mac_key)) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: cannot unseal the audit key (%s)%s",
			 mica_strerror(err),
			 err == MICA_ENOTFOUND ? "; has `mica keycenter init` run?" : "");
		goto fail;
	}
	kc_audit_options ao = {.checkpoint_every_n = s->cfg->audit_checkpoint_every,
			       .checkpoint_every_ms = s->cfg->audit_checkpoint_interval_ms,
			       .max_batch = s->cfg->audit_max_batch,
			       .publish_path = s->cfg->audit_publish_file,
			       .on_published = kc_audit_published,
			       .published_arg = s};
	err = kc_audit_start(&s->audit, s->conninfo, mac_key, sign_checkpoint, h, &ao);
	mica_wipe(mac_key, sizeof(mac_key));
	if (err) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: the audit trail cannot be resumed: %s",
			 mica_strerror(err));
		goto fail;
	}
	MICA_LOG(MICA_LOG_INFO,
		 "keycenter: HSM open, root key template verified, audit key unsealed in %lld ms",
		 (long long)(mica_clock_ms() - t0));
	return 0;
fail:
	kc_keks_drop(s);
	kc_hsm_close(h);
	s->hsm = NULL;
	return err;
}

void kc_service_bring_down(kc_service *s)
{
	kc_audit_stop(s->audit);
	s->audit = NULL;
	kc_keks_drop(s);
	kc_hsm_close(s->hsm);
	s->hsm = NULL;
}

/* Everything that can be judged from the configuration alone, before the
 * database, the HSM or the audit trail is touched (lib/daemon.h): a bad
 * client CA is a configuration error, not a late TLS failure. */
static int kc_validate(void *config, char *err, size_t errlen)
{
	struct kc_config *cfg = config;
	int sealed = strcmp(cfg->hsm_unseal, "shares") == 0, rc;

	if (!sealed && strcmp(cfg->hsm_unseal, "pin_file") != 0)
		snprintf(err, errlen, "keycenter.hsm.unseal: pin_file or shares, not \"%s\"",
			 cfg->hsm_unseal);
	else if (sealed && *cfg->hsm_pin_file)
		snprintf(err, errlen,
			 "keycenter.hsm.pin_file: must be empty with unseal = shares"
			 " (nothing on disk may open the token)");
	else if (!sealed && !*cfg->hsm_pin_file)
		snprintf(err, errlen, "keycenter.hsm.pin_file: required with unseal = pin_file");
	else if (!*cfg->http.client_ca_file)
		snprintf(err, errlen, "keycenter.http.client_ca_file: required (mTLS only)");
	else if (cfg->http.blocking_threads < 1)
		snprintf(err, errlen,
			 "keycenter.http.blocking_threads: at least 1 (key management"
			 " and key loads run there)");
	else
		err[0] = '\0';
	if (err[0])
		return MICA_ECONFIG;
	/* The skeleton has checked client_ca_file; the webhooks' CAs are ours. */
	if ((*cfg->alert_webhook_ca_file &&
	     (rc = mica_config_check_ca("keycenter.alerts", "webhook_ca_file",
					cfg->alert_webhook_ca_file, err, errlen)) != 0) ||
	    (*cfg->audit_publish_webhook_ca_file &&
	     (rc = mica_config_check_ca("keycenter.audit", "publish_webhook_ca_file",
					cfg->audit_publish_webhook_ca_file, err, errlen)) != 0))
		return rc;
	cfg->http.require_client_cert = 1;
	cfg->http.on_refusal = kc_audit_refusal;
	return 0;
}

static int kc_start(void *config, const mica_daemon_env *env, void **state)
{
	struct kc_config *cfg = config;
	kc_service *s = calloc(1, sizeof(*s));
	kc_hsm *h = NULL;
	int err, sealed = strcmp(cfg->hsm_unseal, "shares") == 0;

	*state = s;
	if (!s)
		return MICA_ENOMEM;
	s->cfg = cfg;
	s->conninfo = env->conninfo;
	pthread_mutex_init(&s->policy_lock, NULL);
	if ((err = kc_keys_init(s)) != 0 || (err = kc_unseal_init(s, sealed)) != 0)
		return err;
	kc_anomaly_options an = {.window_ms = (int64_t)cfg->alert_window_s * 1000,
				 .max_requests_per_window = (uint32_t)cfg->alert_rate_max,
				 .max_denials_per_window = (uint32_t)cfg->alert_denial_max};
	if ((err = kc_anomaly_new(&an, &s->anomaly)) != 0 || (err = kc_alerts_start(s)) != 0)
		return err;
	if (!sealed) {
		if ((err = kc_hsm_open(&h, cfg->hsm_module, cfg->hsm_token_label,
				       cfg->hsm_pin_file))) {
			MICA_LOG(MICA_LOG_ERROR, "keycenter: cannot use the HSM token %s: %s",
				 cfg->hsm_token_label, mica_strerror(err));
			return err;
		}
		if ((err = kc_service_bring_up(s, h)) != 0)
			return err;
	} else {
		MICA_LOG(MICA_LOG_WARN,
			 "keycenter: starting sealed; key operations answer 503 until"
			 " officers submit their shares (mica keycenter unseal)");
	}
	if (kc_policy_load_active(s) != 0)
		MICA_LOG(MICA_LOG_WARN, "keycenter: no active policy: every request is refused");
	return 0;
}

static void kc_stop(void *state)
{
	kc_service *s = state;
	if (!s)
		return;
	kc_audit_stop(s->audit); /* its final checkpoint still reaches the publish webhook */
	kc_alerts_stop(s);
	kc_anomaly_free(s->anomaly);
	kc_keys_cleanup(s);
	kc_unseal_cleanup(s);
	kc_policy_unref(s->policy);
	kc_hsm_close(s->hsm);
	free(s);
}

const mica_service kc_daemon = {
	.name = "keycenter",
	.summary = "The Key Center: HSM-rooted keys, an audited Transit/KMS-style API over mutual"
		   " TLS.",
	MICA_SERVICE_CONFIG(kc_config_table, struct kc_config),
	.uses = MICA_USES_DB,
	.db_at = offsetof(struct kc_config, db),
	.validate = kc_validate,
	.start = kc_start,
	.stop = kc_stop,
	.routes = kc_routes,
	.nroutes = &kc_routes_len,
	MICA_SERVICE_READY(kc_ready),
};
