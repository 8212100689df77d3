/* push.h - the push service (mica-push): device registration over HTTPS,
 * developer apps and their credentials, alias and topic subscriptions
 * (issue 21 item 1; docs/api/push.md). One section per file.
 *
 * What is stored and how (schema/0012_push.sql): app secrets, device hashes
 * and device tokens only as Key Center HMACs under cfg->index_key; content
 * keys only encrypted by the Key Center under cfg->content_key, bound to
 * {service push, table registration, column content_key, row regid}.
 *
 * Return codes: every flow returns 0 or a MICA_E* code, and on failure fills
 * the caller's mica_problem (lib/problem.h) with the reply to send: 4xx with
 * a stable code naming what the request did wrong, 503 "unavailable" with the
 * member "dependency" (database, keycenter) when a dependency failed, 500
 * internal_error otherwise. Outputs are set only on success.
 *
 * Ownership: json_t outputs are new references the caller owns (the route
 * hands them to mica_http_reply_json). Strings that hold secrets (app
 * secrets, tokens, content keys) are wiped by whoever frees them.
 *
 * Threads: a push_service is shared by every blocking handler thread; it
 * holds only the configuration and the Key Center client (itself
 * thread-safe, lib/kc.h). Every flow blocks (database, Key Center): the
 * routes run them on the blocking pool. Nothing a flow does outside the
 * database (a Key Center call, a random draw) runs inside mica_db_tx(),
 * whose callback may be repeated.
 */
#ifndef MICA_PUSH_H
#define MICA_PUSH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "daemon.h"
#include "db.h"
#include "form.h"
#include "http.h"
#include "kc.h"
#include "kv.h"
#include "mipush/broker.h"
#include "problem.h"

/* Sizes of the identifiers and secrets (base64url without padding of 32
 * random bytes: 43 characters). */
#define PUSH_RANDOM_B64_LEN 43
#define PUSH_DEVICE_HASH_HEX 64
#define PUSH_CONTENT_KEY_LEN 32
#define PUSH_PACKAGE_MAX 255
#define PUSH_NAME_MAX 128  /* an alias or a topic */
#define PUSH_LIST_MAX 1000 /* registration ids or aliases in one request */

struct push_config {
	int log_level;
	mica_http_options http;
	mica_config_db db;
	struct mica_kv_config redis;
	mica_kc_options kc;
	char *index_key;   /* Key Center key of the HMACs (push-index) */
	char *content_key; /* Key Center key sealing content keys (push-content) */
	/* Registration limits (Redis, fixed windows): per client address, and
	 * per device of an app (keyed by its index, so a known and an unknown
	 * app count alike). */
	int register_ip_max, register_ip_window_s;
	int register_device_max, register_device_window_s;
	/* send.c */
	int max_pending;     /* push.queue.max_pending: queued messages per device */
	int key_cache_ttl_s; /* push.keycenter.cache_ttl: decrypted content keys */
	int wake_batch;	     /* push.send.wake_batch: W lines per PUBLISH */
	/* [push.retention] and [push.receipts]: the scheduled jobs (purge.c,
	 * receipts.c) */
	int jobs_interval_s;		  /* seconds between two runs of the jobs */
	int silent_days;		  /* a registration silent this long is purged */
	int trace_days;			  /* a message's trace is kept this long after expiry */
	int purge_batch;		  /* rows one purge transaction deletes at most */
	char *receipts_ca_file;		  /* CAs the developers' callback URLs chain to */
	int receipts_max_attempts;	  /* failed tries before a receipt is given up */
	int receipts_backoff_ms;	  /* first retry delay, doubled each failure */
	int receipts_timeout_ms;	  /* one callback POST, whole */
	int receipts_private;		  /* callback hosts may be internal addresses */
	struct push_broker_config broker; /* [push.broker]: the long connection */
};

extern const mica_config_entry push_config_table[];
extern const size_t push_config_table_len;
extern const mica_service push_daemon;

typedef struct push_jobs push_jobs;

typedef struct push_service {
	const struct push_config *cfg; /* borrowed, outlives the service */
	mica_kc *kc;
	push_jobs *jobs; /* the scheduled jobs' thread (purge.c), NULL before start */
	/* The broker (mipush/broker.h) of this process, the counters of every
	 * broker process on the port (shared memory: |nworkers| slots, this
	 * process's first) and the worker processes' ids. */
	push_broker *broker;
	struct push_broker_metrics *metrics;
	size_t nworkers;
	int *worker_pids;
} push_service;

/* ---- shared helpers: push_problem_dependency in routes.c, the others in apps.c */

/* |err| came from a dependency while doing |what|: 503 unavailable naming
 * the database (MICA_EDBCONN, ETIMEOUT, ESERIALIZATION) or the Key Center
 * (every lib/kc error but EINVAL), else 500. Logs |what| and the error.
 * Returns |err| (MICA_EIO for 0). */
int push_problem_dependency(mica_problem *p, int err, const char *what);

/* Fills |out| (at least PUSH_RANDOM_B64_LEN + 1 bytes) with a fresh random
 * identifier or secret: 32 random bytes, base64url without padding.
 * Returns 0 or MICA_ECRYPTO. */
int push_random_b64(char out[PUSH_RANDOM_B64_LEN + 1]) MICA_WUR;

/* The Key Center HMAC of "<kind>:<value>" under cfg->index_key, malloc'd in
 * *idx ("kc:v<N>:..."; the caller frees). |kind| separates the domains
 * ("secret", "device", "token") so one index can never match another.
 * Returns 0 or a lib/kc error. */
int push_index(push_service *s, const char *kind, const char *value, char **idx) MICA_WUR;

/* ---- apps.c: developer apps and their credentials ------------------------- */

/* An app as the developer routes see it after authentication. */
typedef struct push_app {
	char app_id[24];
	char package[PUSH_PACKAGE_MAX + 1];
} push_app;

/* Creates an app for |package| (1-255 of [A-Za-z0-9._-], starting with a
 * letter) with a random numeric app id and a random app secret, stored as
 * its HMAC only. Used by `mica push app create`, with the database handle
 * |db| of an operator role and a Key Center client of the push principal.
 * On success *app_id and *secret are malloc'd (the caller wipes the secret
 * and frees both); the secret is shown once and never stored.
 * Returns 0, MICA_EINVAL (bad package name), MICA_EEXISTS (an app has this
 * package), or a database or Key Center error. */
int push_app_create(mica_db *db, mica_kc *kc, const char *index_key, const char *package,
		    char **app_id, char **secret) MICA_WUR;

/* Gives app |app_id| a new random secret (in *secret, malloc'd; the caller
 * wipes and frees it) and forgets the old one: from the commit on, only the
 * new secret authenticates. Returns 0, MICA_ENOTFOUND (no such app), or a
 * database or Key Center error. */
int push_app_rotate_secret(mica_db *db, mica_kc *kc, const char *index_key, const char *app_id,
			   char **secret) MICA_WUR;

/* Deletes app |app_id| with everything of it: registrations, their queues,
 * aliases and topics, messages and statistics (ON DELETE CASCADE).
 * Returns 0, MICA_ENOTFOUND or a database error. */
int push_app_delete(mica_db *db, const char *app_id) MICA_WUR;

/* Prints every app (app id, package, created) to |f|, oldest first; sets
 * *n to their number. Returns 0 or a database error. */
int push_app_list(mica_db *db, FILE *f, int *n) MICA_WUR;

/* Authenticates a developer request by its Authorization header
 * ("key=<app secret>", as MiPush's server API does): the secret's HMAC is
 * looked up and compared in constant time. A missing header, a malformed
 * one, an unknown secret and a secret of another app cost the same (one
 * HMAC, one indexed lookup) and answer the same 401 invalid_app_secret, so
 * nothing tells a known app from an unknown one. |package|, when not NULL
 * (MiPush's restricted_package_name), must be the app's: otherwise 403
 * package_mismatch. On success fills |app|. */
int push_app_authenticate(push_service *s, const char *authorization, const char *package,
			  push_app *app, mica_problem *p) MICA_WUR;

/* ---- register.c: device registration ------------------------------------- */

/* POST /v1/push/register {app_id, package, device_hash} from |client_ip|:
 * registers a device
 * of app |app_id| whose package must be |package|, known by |device_hash|
 * (64 hex digits, SHA-256 of three device identifiers computed on the
 * device). A first registration gets a random regid; registering the same
 * hash for the same app again returns the same regid. Either way a new
 * content key (32 random bytes) and a new token (the MQTT password) are
 * made and the old ones stop working. *out is {regid, content_key (base64),
 * token}.
 * Limits: cfg->register_ip_max per client address and
 * cfg->register_device_max per device of an app, counted before the app is
 * looked up (429 rate_limited; 503 unavailable naming redis when they
 * cannot be counted).
 * Errors (4xx): unknown_field, missing_field, bad_field (body, lib/body.h),
 * bad_device_hash, unknown_app (404), package_mismatch (403), rate_limited
 * (429). */
int push_register(push_service *s, const char *client_ip, json_t *body, json_t **out,
		  mica_problem *p) MICA_WUR;

/* ---- subscribe.c: aliases and topics --------------------------------------- */

enum push_sub_kind { PUSH_SUB_ALIAS, PUSH_SUB_TOPIC };

/* Subscribes (|subscribe| true) or unsubscribes every registration id of
 * the comma list |regids| of app |app| to or from each name of the comma
 * list |names| (aliases; for topics one topic). Every regid must be a
 * registration of |app| (else 400 unknown_regid naming it); nothing is
 * written unless all are. Subscribing twice and unsubscribing what is not
 * subscribed are not errors. */
int push_subscribe(push_service *s, const push_app *app, enum push_sub_kind kind, bool subscribe,
		   const char *regids, const char *names, mica_problem *p) MICA_WUR;

/* The aliases or topics of registration |regid| of |app|, as a new JSON
 * array of strings in *list (sorted). 400 unknown_regid when |regid| is not
 * one of |app|'s. */
int push_subscriptions(push_service *s, const push_app *app, enum push_sub_kind kind,
		       const char *regid, json_t **list, mica_problem *p) MICA_WUR;

/* ---- seal.c: the sealed message a device receives (docs/push-internals.md) - */

/* What a message says to one device; strings borrowed, NULL when absent. */
typedef struct push_message_view {
	const char *msg_id; /* "deleted:<regid>" for the marker */
	const char *type;   /* "notification", "pass_through", "deleted_messages" */
	const char *app_id, *package;
	const char *title, *description, *payload;
	long notify_id;	     /* -1: none */
	int notify_type;     /* MiPush notify_type; 0 when absent */
	const json_t *extra; /* object of strings, or NULL */
	int64_t sent_at_ms;
	long count; /* deleted_messages only */
} push_message_view;

/* Seals |m| for device |regid| under its 32-byte content |key|: the JSON of
 * docs/push-internals.md in a mica envelope (key name push-content, version
 * 1, AAD "mica-push v1\0<regid>"). *out is malloc'd (the caller frees).
 * Returns 0, MICA_EINVAL, MICA_ENOMEM or MICA_ECRYPTO. */
int push_seal_message(const uint8_t key[PUSH_CONTENT_KEY_LEN], const char *regid,
		      const push_message_view *m, uint8_t **out, size_t *out_len) MICA_WUR;

/* ---- stats.c: the one place counters change --------------------------------- */

/* Counter deltas. */
typedef struct push_counts {
	long sent, delivered, expired, dropped, invalid;
} push_counts;

/* Adds |c| to the daily counters of |app_id| for the UTC day of |at_ms| and,
 * when |msg_id| is not NULL, to that message's trace counters (sent counts
 * there as "queued"). Runs on |db| (inside the caller's transaction when it
 * has one). Returns 0 or a database error. */
int push_stats_record(mica_db *db, const char *app_id, const char *msg_id, int64_t at_ms,
		      const push_counts *c) MICA_WUR;

/* Counters of several messages: a set of (app, message, deltas). */
typedef struct push_stats_batch {
	json_t *rows; /* [{"app_id", "msg_id", "sent", ...}], NULL until the first add */
} push_stats_batch;

/* Adds |c| for (|app_id|, |msg_id|) to |b| (|msg_id| NULL: the daily
 * counters only). Returns 0 or MICA_ENOMEM. */
int push_stats_batch_add(push_stats_batch *b, const char *app_id, const char *msg_id,
			 const push_counts *c) MICA_WUR;
/* Records every row of |b| as push_stats_record() records one, in one
 * statement, and empties |b| (also on failure). */
int push_stats_batch_record(mica_db *db, push_stats_batch *b, int64_t at_ms) MICA_WUR;

/* ---- send.c: the developer API's sends (docs/api/push.md) ------------------ */

#define PUSH_PAYLOAD_MAX 4096 /* bytes of payload */
#define PUSH_TITLE_MAX 256
#define PUSH_DESCRIPTION_MAX 1024
#define PUSH_TTL_MAX_MS (14LL * 24 * 3600 * 1000)
#define PUSH_TOPICS_MAX 5  /* topics of one multi_topic send */
#define PUSH_MSG_ID_LEN 24 /* 18 random bytes in base64url */

/* Who a send is for: MiPush's /v3/message/<target> routes. */
enum push_target {
	PUSH_TARGET_REGID,
	PUSH_TARGET_ALIAS,
	PUSH_TARGET_TOPIC,
	PUSH_TARGET_MULTI_TOPIC,
	PUSH_TARGET_ALL,
};

enum push_topic_op { PUSH_TOPIC_UNION, PUSH_TOPIC_INTERSECTION, PUSH_TOPIC_EXCEPT };

/* A checked send request; strings borrowed from the caller. */
typedef struct push_send_req {
	enum push_target target;
	json_t *targets; /* array of strings: regids, aliases or topics; NULL for all */
	enum push_topic_op topic_op;
	bool pass_through;
	const char *title, *description, *payload; /* NULL when absent */
	int notify_type;			   /* 0 when absent */
	long notify_id;				   /* -1: none */
	int64_t ttl_ms;				   /* 1 .. PUSH_TTL_MAX_MS */
	const char *jobkey;			   /* NULL: none */
	const char *callback_url, *callback_param;
	int callback_type;   /* -1: none */
	const json_t *extra; /* object of strings, or NULL */
} push_send_req;

/* What a send did. */
typedef struct push_send_result {
	char msg_id[PUSH_MSG_ID_LEN + 1];
	long queued;  /* devices a queue row was committed for */
	long invalid; /* targets that named no registration */
	long skipped; /* devices that already had this jobkey */
} push_send_result;

/* Sends |r| for |app|: resolves the targets (regids of the app; aliases and
 * topics through the subscriptions; every registration of the app for
 * all), opens each device's content key (lib/kc's cache, its misses in
 * batch requests), seals the message per device (push_seal_message) and
 * then, in one transaction: the push.message row, the jobkey gate, the
 * notify_id replacement, the queue rows (one statement), the pending cap
 * (cfg->max_pending) with each device's one deleted_messages marker, and the
 * counters (push_stats_record). Only after COMMIT does it fill |out| and
 * publish the new rows on push:wake (a failed publish is logged: the broker
 * re-reads queues). Targets naming no registration count as invalid, not as
 * an error. Returns 0, or an error with |p| set: 503 unavailable (database,
 * keycenter), 500 internal_error. */
int push_send(push_service *s, const push_app *app, const push_send_req *r, push_send_result *out,
	      mica_problem *p) MICA_WUR;

/* ---- devapi.c: reading a send request (form or JSON) ------------------------ */

/* The fields of one send request as read, owned (push_send_input_cleanup). */
typedef struct push_send_input {
	char *v[16];	 /* form values by the route's spec */
	json_t *extra;	 /* the extra.* fields */
	json_t *targets; /* split target list */
	push_send_req req;
	const char *package; /* restricted_package_name, or NULL */
} push_send_input;

/* Reads the send request of |req| for |target|: form-encoded fields, or
 * the same fields as members of a JSON object (Content-Type
 * application/json; numbers may be JSON integers), checks every rule of
 * docs/api/push.md and fills in->req. Returns 0, or MICA_EINVAL (4xx) /
 * MICA_ENOMEM with |p| set. Call push_send_input_cleanup either way. */
int push_send_read(const mica_http_req *req, enum push_target target, push_send_input *in,
		   mica_problem *p) MICA_WUR;
void push_send_input_cleanup(push_send_input *in);
/* ---- purge.c: the scheduled jobs (issue 21 item 4) ---------------------------
 *
 * Each job takes the time |now_ms| (milliseconds since the epoch) from its
 * caller, so tests and `mica push purge --at` move the clock; the daemon
 * passes mica_clock_now_ms(). Each deletes in transactions of at most
 * |batch| rows, locking what it deletes with FOR UPDATE SKIP LOCKED, so
 * several nodes may run the same job at once without waiting on each other
 * or counting a row twice; running a job again at the same |now_ms| finds
 * nothing more to do. Queue rows that a job deletes undelivered are counted
 * through push_stats_record() in the transaction that deletes them
 * (expired by TTL: "expired"; with their registration: "dropped"); the
 * deleted_messages marker rows count nothing. Every job returns 0 or a
 * database error; *n (when not NULL) is what it deleted. */

typedef struct push_purge_options {
	int silent_days; /* >= 1 */
	int trace_days;	 /* >= 0 */
	int batch;	 /* >= 1 */
} push_purge_options;

typedef struct push_purge_result {
	long expired;	    /* queue rows past their TTL */
	long registrations; /* registrations silent for silent_days */
	long dropped;	    /* queue rows those registrations still had */
	long jobkeys;	    /* expired job keys */
	long messages;	    /* traces past expiry + trace_days, with no queue row */
} push_purge_result;

/* Queue rows with expires_at <= now. */
int push_purge_expired(mica_db *db, int64_t now_ms, int batch, long *n) MICA_WUR;

/* Registrations whose last_seen is older than now - |silent_days| days,
 * with their queue (counted dropped), aliases, topics and job keys. *n is
 * the registrations; *dropped (may be NULL) the queue rows. */
int push_purge_silent(mica_db *db, int64_t now_ms, int silent_days, int batch, long *n,
		      long *dropped) MICA_WUR;

/* Job keys with expires_at <= now. */
int push_purge_jobkeys(mica_db *db, int64_t now_ms, int batch, long *n) MICA_WUR;

/* Messages whose expires_at is at least |trace_days| days before now and
 * that have no queue row left: their trace (and receipt state) goes. */
int push_purge_messages(mica_db *db, int64_t now_ms, int trace_days, int batch, long *n) MICA_WUR;

/* The four jobs above in that order, filling |r| (what was done before a
 * failure stays counted). */
int push_purge_run(mica_db *db, int64_t now_ms, const push_purge_options *o,
		   push_purge_result *r) MICA_WUR;

/* Deletes the registrations of app |app_id| named in |regids| (a JSON array
 * of strings, borrowed; duplicates allowed) with their queue rows (counted
 * dropped at |now_ms|), aliases, topics and job keys, in one transaction.
 * *deleted is how many were deleted; *unknown a new JSON array (the caller
 * owns it) of the names that were no registration of the app (in request
 * order, once each). Returns 0 or a database error. */
int push_registrations_delete(mica_db *db, const char *app_id, json_t *regids, int64_t now_ms,
			      long *deleted, json_t **unknown) MICA_WUR;

/* Starts the thread that runs the purges and the receipts (receipts.c)
 * every cfg->jobs_interval_s seconds, first at once; s->jobs is set.
 * Returns 0 or MICA_ENOMEM. push_jobs_stop() stops it (within a second, or
 * when a callback POST in flight ends) and is safe to call twice. */
int push_jobs_start(push_service *s) MICA_WUR;
void push_jobs_stop(push_service *s);

/* ---- receipts.c: MiPush receipts (callbacks) --------------------------------
 *
 * A message sent with callback.url (push.message.callback_url) gets, when
 * its delivered or invalid counter moved past what was last reported, an
 * HTTPS POST to that URL: one per URL and run, batching every due message
 * of that URL (at most 100). The JSON body maps each message id to
 * {"param": callback.param, "type": the kinds reported (1 delivered,
 * 16 invalid target, as MiPush's callback.type), "delivered": total,
 * "invalid": total, "jobkey", "timestamp"}; it names no device
 * (docs/api/push.md). A 2xx answer records the totals as reported; any
 * other outcome retries after receipts_backoff_ms doubled per failure, and
 * after receipts_max_attempts failures the message's receipts are given up
 * (logged). A URL that is not https:// is given up at once. Due messages are
 * claimed with a lease (receipt_next_at) in a short transaction, so two
 * nodes never POST the same message's receipt at once. */

typedef struct push_receipt_result {
	long posted;   /* POSTs answered 2xx */
	long failed;   /* POSTs that failed (will be retried) */
	long given_up; /* messages given up this run */
	long messages; /* messages reported in the successful POSTs */
} push_receipt_result;

struct mica_httpc;

/* The callback body for the claimed rows of one URL: |rows| is a JSON
 * array of objects {msg_id, param, type, jobkey, delivered, invalid};
 * |now_ms| becomes each entry's timestamp. Returns a new JSON object (the
 * caller decrefs) or NULL when out of memory. Pure: unit-tested. */
json_t *push_receipt_body(const json_t *rows, int64_t now_ms);

/* Whether |url| may receive receipts: https:// followed by a host. */
bool push_receipt_url_ok(const char *url);

/* One run of the receipt job at |now_ms| with the client |hc| (one per
 * thread, lib/httpc.h) and the options of |cfg|. Returns 0 or a database
 * error; a failed POST is not an error of the run. */
int push_receipts_run(mica_db *db, struct mica_httpc *hc, const struct push_config *cfg,
		      int64_t now_ms, push_receipt_result *r) MICA_WUR;

/* ---- statsapi.c: statistics, traces and registration deletion ---------------
 *
 * The developer routes of issue 21 items 4 and 5 (docs/api/push.md):
 * GET /v1/stats/message/counters, GET /v1/trace/message/status,
 * GET /v1/trace/messages/status, POST /v1/push/registrations/delete. An app
 * sees and deletes only its own. Counters are by app and day or by message,
 * never by device. */

void push_h_stats_counters(const mica_http_req *req, mica_http_resp *resp, void *svc);
void push_h_trace_message(const mica_http_req *req, mica_http_resp *resp, void *svc);
void push_h_trace_messages(const mica_http_req *req, mica_http_resp *resp, void *svc);
void push_h_registrations_delete(const mica_http_req *req, mica_http_resp *resp, void *svc);

/* ---- routes.c -------------------------------------------------------------- */

/* The developer routes' MiPush envelope. push_mipush_reply: {"result": "ok",
 * "code": 0, "description": "成功", "data": |data|} (|data| stolen; NULL:
 * {}). push_mipush_fail: the problem |p| plus MiPush's members (result
 * "error", code = the HTTP status, description, reason = the stable code).
 * push_mipush_begin reads the form against |spec| (whose last field is
 * PUSH_FORM_PACKAGE) into |v| and authenticates the developer; on failure
 * the reply is sent, |v| freed and 0 returned, else 1. */
void push_mipush_reply(mica_http_resp *resp, json_t *data);
void push_mipush_fail(mica_http_resp *resp, mica_problem *p);
int push_mipush_begin(push_service *s, const mica_http_req *req, mica_http_resp *resp,
		      const mica_form_field *spec, size_t n, char **v, push_app *app) MICA_WUR;
#define PUSH_FORM_PACKAGE                                                                          \
	{                                                                                          \
		"restricted_package_name", false, PUSH_PACKAGE_MAX                                 \
	}

extern const mica_http_route push_routes[];
extern const size_t push_routes_len;

#endif
