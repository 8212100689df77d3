/* keycenter.h - internal interfaces of mica-keycenter shared between its
 * files: the service state (kc_service), the in-memory key cache and store
 * (keys.c), the crypto operations on named keys (ops.c), dual control
 * (changes.c), alerts (alerts.c) and the HTTP routes (routes.c). */
#ifndef KC_KEYCENTER_H
#define KC_KEYCENTER_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "http.h"
#include "keycenter/anomaly.h"
#include "keycenter/audit.h"
#include "keycenter/hsm.h"
#include "keycenter/policy.h"

#define KC_NAME_MAX 64
#define KC_SERVICE_MAX 32

/* Configuration of mica-keycenter (see kc_config_table in service.c). */
struct kc_config {
	int log_level;
	mica_http_options http;
	mica_config_db db; /* [keycenter.db] */
	char *hsm_module;
	char *hsm_token_label;
	char *hsm_pin_file;
	char *hsm_unseal; /* "pin_file" (development) or "shares" (production) */
	int audit_checkpoint_every;
	int audit_checkpoint_interval_ms;
	int audit_max_batch;
	char *audit_publish_file;
	char *audit_publish_webhook_url;
	char *audit_publish_webhook_ca_file;
	int audit_selfcheck_interval_s;
	int max_batch_items;
	int alert_rate_max;
	int alert_denial_max;
	int alert_window_s;
	char *alert_webhook_url;
	char *alert_webhook_ca_file;
};

extern const mica_config_entry kc_config_table[];
extern const size_t kc_config_table_len;
/* The daemon (service.c), run by cmd/mica-keycenter.c. */
extern const struct mica_service kc_daemon;

struct kc_key;	  /* keys.c */
struct kc_alerts; /* alerts.c */

typedef struct kc_service {
	struct kc_config *cfg;
	kc_hsm *hsm;
	kc_audit *audit;
	kc_anomaly *anomaly;
	struct kc_alerts *alerts;
	pthread_mutex_t policy_lock;
	kc_policy *policy; /* active policy; swap under policy_lock */
	pthread_rwlock_t keys_lock;
	struct kc_key **buckets; /* key cache, KC_BUCKETS chains */
	pthread_mutex_t kek_lock;
	struct kc_kek *keks; /* loaded KEKs by service */
	/* Sealed: |hsm| and |audit| are NULL and every key operation is
	 * answered 503 "sealed" (unseal.c). Set once, on unseal, after
	 * |hsm| and |audit| (release; kc_service_sealed() acquires). */
	atomic_int sealed;
	const char *conninfo;	  /* the audit writer's, borrowed from the daemon (lib/daemon.h) */
	struct kc_unseal *unseal; /* unseal.c */
} kc_service;

/* ---- keys.c: cache and store ------------------------------------------- */

/* A snapshot of one key's metadata (no material). */
struct kc_key_info {
	char name[KC_NAME_MAX + 1];
	char type[16];
	char owner[KC_SERVICE_MAX + 1];
	int bits;
	uint32_t latest, min_decryption, min_encryption;
	int deletion_allowed;
};

int kc_keys_init(kc_service *s) MICA_WUR;
void kc_keys_cleanup(kc_service *s);
/* Destroys every loaded KEK handle (before the HSM handle is closed). */
void kc_keks_drop(kc_service *s);
/* Named-key material is held in pages that are mlock()ed (kept out of swap)
 * and madvise(MADV_DONTDUMP)ed (kept out of core dumps), and wiped before
 * they are unmapped, whenever a cached key is dropped or replaced. */
int kc_key_create(kc_service *s, const char *name, const char *type, const char *owner,
		  struct kc_key_info *info) MICA_WUR;
int kc_key_info(kc_service *s, const char *name, struct kc_key_info *info) MICA_WUR;
int kc_key_rotate(kc_service *s, const char *name, struct kc_key_info *info) MICA_WUR;
int kc_key_configure(kc_service *s, const char *name, long min_dec, long min_enc,
		     int deletion_allowed, struct kc_key_info *info, char *why,
		     size_t whylen) MICA_WUR;
/* Deletes |name| inside the caller's transaction on |db| (dual control has
 * already approved it) and drops it from the cache after commit. */
int kc_key_delete_tx(kc_service *s, mica_db *db, const char *name) MICA_WUR;
void kc_key_forget(kc_service *s, const char *name);
/* Copies version |version| (0 = latest) of |name| into |material| (32
 * bytes, wiped by the caller) and sets *bits and *used_version. Returns
 * MICA_ENOTFOUND for an unknown key or version. */
int kc_key_material(kc_service *s, const char *name, uint32_t version, uint8_t material[32],
		    int *bits, uint32_t *used_version, struct kc_key_info *info) MICA_WUR;
/* Loads a KEK (creating it for a new owner) and seals/opens with it. */
int kc_kek_handle(kc_service *s, const char *service, const kc_hsm_key **out) MICA_WUR;

/* ---- dual control, changes.c ------------------------------------------- */
#define KC_APPROVALS_REQUIRED 2
int kc_change_request(kc_service *s, const char *kind, const char *target, json_t *payload,
		      const char *principal, json_t **out) MICA_WUR;
int kc_change_approve(kc_service *s, int64_t id, const char *officer, json_t **out) MICA_WUR;
int kc_change_get(kc_service *s, int64_t id, json_t **out) MICA_WUR;
int kc_change_list(kc_service *s, const char *status, json_t **out) MICA_WUR;
int kc_policy_load_active(kc_service *s) MICA_WUR;
/* {"version": N, "document": {...}} of the active policy. */
int kc_policy_active_document(kc_service *s, json_t **out) MICA_WUR;
/* A borrowed reference to the active policy; kc_policy_unref() it. */
kc_policy *kc_policy_current(kc_service *s);

/* ---- alerts.c ------------------------------------------------------------ */
/* Starts the alert thread (and webhook clients) and, when
 * keycenter.audit.selfcheck_interval_s > 0, the audit self-check thread. */
int kc_alerts_start(kc_service *s) MICA_WUR;
void kc_alerts_stop(kc_service *s);
/* kc_audit_published_fn of the service (|svc| is the kc_service): queues the
 * checkpoint line for keycenter.audit.publish_webhook_url and raises a
 * checkpoint_publish_failure alert when the publish file refused it. */
void kc_audit_published(void *svc, const char *line, int rc);
/* The audit self-check: unseals the MAC key, checks every record's hash and
 * MAC (kc_audit_verify_macs) and raises an audit_mac_failure alert naming
 * the first bad seq, or audit_selfcheck_error when the check could not run.
 * *records and *bad_seq (may be NULL) as kc_audit_verify_macs(). Returns 0,
 * MICA_EAUTH (a MAC), MICA_ECHECKSUM (a hash), MICA_ESEALED (sealed: nothing
 * checked, no alert), or the error that stopped it. */
int kc_audit_selfcheck(kc_service *s, uint64_t *records, uint64_t *bad_seq) MICA_WUR;
/* Queues an alert: written to keycenter.alert, logged at warn, and POSTed
 * to the webhook if configured. |detail| is stolen. Never blocks on I/O. */
void kc_alert(kc_service *s, const char *kind, const char *principal, const char *key,
	      json_t *detail);
int kc_alerts_list(kc_service *s, int64_t after_id, int limit, json_t **out) MICA_WUR;

/* ---- routes.c ------------------------------------------------------------ */
extern const mica_http_route kc_routes[];
/* on_refusal hook of the Key Center's listener: audits built-in refusals
 * without holding the event thread; the refusal goes out once recorded. */
void kc_audit_refusal(void *svc, const char *method, const char *path, const char *peer,
		      const char *client_ip, int status, const char *code,
		      mica_http_deferred *done);
extern const size_t kc_routes_len;

/* The audit MAC key is sealed by the "keycenter" KEK with this associated data. */
#define KC_AUDIT_MAC_AAD "mica-kc-audit-mac-v1"
int kc_audit_mac_key(kc_service *s, uint8_t key[32]) MICA_WUR;

/* ---- unseal.c: the sealed Key Center ------------------------------------ */

/* Outcome of one share submission: the HTTP status, and either a problem
 * (why.code set; its status is |status|) or a JSON body (owned by the
 * caller). */
struct kc_unseal_reply {
	int status;
	mica_problem why; /* why.code NULL on success */
	json_t *body;
};

/* Sets up the unseal state; |sealed| 1 starts the service sealed. Returns
 * 0 or MICA_ENOMEM. kc_unseal_cleanup() is safe to call twice. */
int kc_unseal_init(kc_service *s, int sealed) MICA_WUR;
void kc_unseal_cleanup(kc_service *s);
/* 1 while the Key Center is sealed (no HSM, no audit writer), else 0. For
 * readiness: a sealed Key Center is alive but not ready. Thread-safe. */
int kc_service_sealed(const kc_service *s);
/* Journals |rec| (a request answered while sealed; fields copied) and logs
 * it. Returns 0, or MICA_ESTATE if the service is not sealed (any more):
 * then the caller audits it the normal way. */
int kc_sealed_record(kc_service *s, const kc_audit_record *rec) MICA_WUR;
/* One officer's share (|share_text|, a line `mica keycenter init --shares`
 * printed) from mTLS identity |principal|. Fills |out| (see unseal.c for the
 * codes: not_an_officer, bad_share, share_checksum_mismatch,
 * share_from_other_set, share_already_submitted, shares_do_not_combine,
 * unseal_failed); 202 below the threshold, 200 once unsealed. Returns 0, or
 * MICA_ESTATE if the service is not sealed (nothing recorded). */
int kc_unseal_submit(kc_service *s, const char *principal, const char *client,
		     const char *share_text, struct kc_unseal_reply *out) MICA_WUR;
/* {"sealed": bool, "progress": n, "threshold": k (0 before the first
 * share), "unseal": mode}. */
json_t *kc_seal_status(kc_service *s);

/* ---- service.c ----------------------------------------------------------- */
/* With the token open (|h|, handed over): checks the root key's unwrap
 * template, unseals the audit MAC key and starts the audit writer. On
 * failure |h| is closed and s->hsm is NULL again. Returns 0 or an error. */
int kc_service_bring_up(kc_service *s, kc_hsm *h) MICA_WUR;
/* Undoes kc_service_bring_up(). */
void kc_service_bring_down(kc_service *s);
/* ---- init.c, cli.c: the `mica` nouns (lib/cli.h) -------------------------- */
/* `mica keycenter init | unseal | seal-status | migrate-root`: see init.c. */
int kc_command(int argc, char **argv);

#endif
