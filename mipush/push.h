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
	char *index_key;		  /* Key Center key of the HMACs (push-index) */
	char *content_key;		  /* Key Center key sealing content keys (push-content) */
	struct push_broker_config broker; /* [push.broker]: the long connection */
	/* send.c */
	int max_pending;     /* push.queue.max_pending: queued messages per device */
	int key_cache_ttl_s; /* push.keycenter.cache_ttl: decrypted content keys */
	int wake_batch;	     /* push.send.wake_batch: W lines per PUBLISH */
};

extern const mica_config_entry push_config_table[];
extern const size_t push_config_table_len;
extern const mica_service push_daemon;

typedef struct push_service {
	const struct push_config *cfg; /* borrowed, outlives the service */
	mica_kc *kc;
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

/* POST /v1/push/register {app_id, package, device_hash}: registers a device
 * of app |app_id| whose package must be |package|, known by |device_hash|
 * (64 hex digits, SHA-256 of three device identifiers computed on the
 * device). A first registration gets a random regid; registering the same
 * hash for the same app again returns the same regid. Either way a new
 * content key (32 random bytes) and a new token (the MQTT password) are
 * made and the old ones stop working. *out is {regid, content_key (base64),
 * token}.
 * Errors (4xx): unknown_field, missing_field, bad_field (body, lib/body.h),
 * bad_device_hash, unknown_app (404), package_mismatch (403). */
int push_register(push_service *s, json_t *body, json_t **out, mica_problem *p) MICA_WUR;

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

/* ---- routes.c -------------------------------------------------------------- */

extern const mica_http_route push_routes[];
extern const size_t push_routes_len;

#endif
