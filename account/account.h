/* account.h - internal interfaces of mica-account shared between its files,
 * one section per file, each file named for its feature:
 *   service.c   configuration table and the daemon (acct_daemon, a
 *               mica_service: lib/daemon.h); cli.c its `mica` verbs
 *   routes.c    the HTTP routes; body.c the request-body schemas
 *   problem.c   which dependency a failure names (mica_problem, lib/problem.h)
 *   pii.c       identifiers, blind indexes and personal data sealed by the
 *               Key Center; pepper.c data keys sealing values at rest
 *   session.c   sessions (PostgreSQL the truth, Redis and an in-process cache)
 *   codes.c     one-time codes; register.c registration; reset.c password
 *               reset; password_admit.c which new passwords a request may set
 *   login.c     login; risk.c the risk engine's decisions (pure);
 *               captcha.c the captcha gate; stepup.c step-up; freeze.c freezing
 *   settings.c  what a signed-in user changes, and deletion
 *   notice.c    security notices through the outbox; recycling.c recycled
 *               phone numbers; limits.c limits in Redis; atrest.c upgrades
 *
 * Rules callers rely on:
 * - Return codes: 0, or a MICA_E* code (lib/err.h). Unless a declaration says
 *   more, a failure is the error of the dependency that failed, as its
 *   libmica call returns it: PostgreSQL as mica_db_exec() (db.h: MICA_EDBCONN
 *   when unreachable), Redis as kv.h (MICA_EKVCONN), the Key Center as kc.h
 *   (MICA_EHTTP, MICA_ETIMEOUT, MICA_ETLS, ...); MICA_ENOMEM; MICA_EINVAL for
 *   arguments out of contract.
 * - Flows (the functions that take a |mica_problem *f|: registration,
 *   reset, login, step-up, settings) answer one request. 0: *out is a new
 *   JSON object, the 2xx body (the caller owns the reference). Otherwise |f|
 *   is the answer (status, stable code, message, |f->extra| owned by |f|) and
 *   the return value is nonzero: MICA_EINVAL for a 4xx answer the flow chose
 *   (mica_problemf), MICA_EDENIED for a challenge (403 step_up_required, 428
 *   captcha_required), MICA_EAUTH or MICA_ESTATE for a refused code (codes.c),
 *   or the dependency's error with |f| the 503 unavailable answer naming it,
 *   or a 500 (acct_problem_dependency). routes.c answers from |f| alone. A flow's
 *   |body| is borrowed; it never keeps a pointer into it.
 * - Ownership: a `char **out` result is malloc'd and the caller's to free;
 *   when it is a secret (a token, a code, a password hash, decrypted personal
 *   data) the caller wipes it first (mica_wipe). Strings passed in are
 *   borrowed for the call. On failure *out is NULL unless a declaration says
 *   otherwise.
 * - Threads: the acct_service is built at start (service.c) and read-only
 *   after, shared by every HTTP worker thread; its sealers, notifier, cache
 *   and Key Center client are thread-safe. Flows run on the worker threads
 *   and block on PostgreSQL (the thread's mica_db_thread() handle), Redis,
 *   the Key Center and Argon2id: never call them on an event thread. A
 *   function that takes |db| runs its statements in the transaction open on
 *   it, if any (mica_db_tx nests). Pure functions (the *_parse functions,
 *   risk.c, acct_ident_parse, acct_answer_normalise) do no I/O and hold no
 *   state: any thread, and the fuzz targets.
 * - Transactions: mica_db_tx() runs its callback again on a serialization
 *   failure, so what must happen once is done before it: the Argon2id hash
 *   and every Key Center request (sealing, blind indexes) of registration,
 *   reset and login are made before their transactions, which then only take
 *   row locks and write. (settings.c's password change and security
 *   questions still hash inside theirs.) acct_notice_emit and the session
 *   writes need no Key Center.
 * - Secrets never reach the logs; failures log the dependency and the error.
 */
#ifndef ACCT_ACCOUNT_H
#define ACCT_ACCOUNT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "account/altcha.h"
#include "account/notify.h"
#include "account/password.h"
#include "body.h"
#include "config.h"
#include "db.h"
#include "http.h"
#include "kc.h"
#include "kv.h"

struct acct_config {
	int log_level;
	mica_http_options http;
	mica_config_db db;	     /* [account.db] */
	struct mica_kv_config redis; /* [account.redis] */
	mica_kc_options kc;	     /* [account.keycenter] url and TLS files */
	char *pii_key, *index_key, *pepper_key;
	char *password_policy, *blocklist_dir;
	int argon2_m_kib, argon2_t, argon2_p, pepper_key_max_age_s, pepper_key_max_seals;
	int captcha_account_failures, captcha_network_failures, failure_window_s;
	int captcha_base_cost, captcha_max_cost, captcha_ttl_s;
	char *altcha_key;
	int stepup_new_device, stepup_new_network, login_rate_max, login_rate_window_s;
	int freeze_after_stepup_failures, stepup_ttl_s;
	int app_session_days, web_idle_s, recent_auth_s;
	int session_cache_entries;
	int stepup_failure_window_s;
	int code_ttl_s, code_max_attempts, codes_per_hour, codes_per_address_hour;
	char *email_mode, *sms_mode, *smtp_url, *smtp_from, *smtp_user, *smtp_password;
	char *sms_webhook_url;
	char *recycling_mode, *recycling_url;
	char *introspect_principals;
};

extern const mica_config_entry acct_config_table[];
extern const size_t acct_config_table_len;
/* The daemon (service.c), run by cmd/mica-account.c. */
extern const struct mica_service acct_daemon;

typedef struct acct_sealer acct_sealer;
typedef struct acct_recycling acct_recycling;

typedef struct acct_service {
	struct acct_config *cfg;
	mica_kc *kc;
	/* Data keys sealing values at rest (pepper.c): the pepper (password and
	 * security-answer hashes) and the record sealer (device names, security
	 * questions). */
	acct_sealer *pepper, *records;
	acct_notify *notify;
	acct_blocklist *blocklist;
	acct_recycling *recycling; /* the carrier's check; NULL: the local table */
	acct_argon2_params argon2;
	/* In-process copy of live app sessions (session.c); NULL: off. */
	struct mica_kvcache *session_cache;
} acct_service;

/* ---- problem.c ------------------------------------------------------------- */
/* How a flow fails: it fills a mica_problem (lib/problem.h) and returns an
 * error; routes.c answers it with mica_http_reply_problem(). */
/* The failure |err| of a dependency while doing |what| ("the database", "the
 * Key Center", "the notifier", ...; logged): 503 unavailable naming the
 * dependency (member "dependency") when the error says it is down or
 * refusing for now (mica_http_status() 503 or 429; any failure of the
 * notifier but a bad argument), else 500 internal_error. Returns |err|. */
int acct_problem_dependency(mica_problem *f, int err, const char *what);

/* ---- body.c: the small bodies' member specs (lib/body.h) ------------------ */
extern const mica_body_field acct_body_reset_start[1], acct_body_reset_complete[3],
	acct_body_password_change[2], acct_body_bind_phone[1], acct_body_bind_email[1],
	acct_body_code[2], acct_body_stepup_send[1], acct_body_stepup_verify[1],
	acct_body_cross_device[1], acct_body_revoke_all[1], acct_body_introspect[1];
/* The members of the bodies with parsers of their own (login, registration,
 * security questions, and their nested device and question objects). */
extern const mica_body_field acct_body_login_members[5], acct_body_device_members[2],
	acct_body_register_start_members[2], acct_body_register_complete_members[5],
	acct_body_questions_members[1], acct_body_question_members[2];
/* Refuses a member of object |body| that |spec| does not name (400
 * unknown_field); a |body| that is not an object passes, for its parser to
 * refuse. */
int acct_body_members(json_t *body, const mica_body_field *spec, size_t n,
		      mica_problem *f) MICA_WUR;

/* ---- pii.c ----------------------------------------------------------------- */
enum acct_ident { ACCT_ID_PHONE, ACCT_ID_EMAIL, ACCT_ID_ACCOUNT_NO, ACCT_ID_INVALID };
/* Classifies and normalises a login identifier: "+" and 7-15 digits is a
 * phone (E.164), something with one "@" an email (lower-cased), 10 digits an
 * account number. |out| gets the normal form. */
enum acct_ident acct_ident_parse(const char *in, char *out, size_t cap);
/* Blind index of a normalised identifier (Key Center HMAC; *idx malloc'd). */
int acct_blind_index(acct_service *s, const char *kind, const char *value, char **idx) MICA_WUR;
/* The same through any Key Center client and index key (`mica recycled add`). */
int acct_blind_index_with(mica_kc *kc, const char *index_key, const char *kind, const char *value,
			  char **idx) MICA_WUR;
/* Encrypts / decrypts a value bound to {service, table, column, row}. */
int acct_pii_seal(acct_service *s, const char *table, const char *column, const char *row,
		  const char *value, char **out) MICA_WUR;
int acct_pii_open(acct_service *s, const char *table, const char *column, const char *row,
		  const char *sealed, char **out) MICA_WUR;
/* Decrypts |sealed| with the Key Center key |key| and the context {service:
 * account, table, column, row}; *out malloc'd, NUL-terminated. */
int acct_kc_open(acct_service *s, const char *key, const char *table, const char *column,
		 const char *row, const char *sealed, char **out) MICA_WUR;
/* Moves |len| bytes at |pt| (malloc'd, then wiped and freed) into the
 * NUL-terminated *out; MICA_ENOMEM leaves *out NULL. */
int acct_take_string(uint8_t *pt, size_t len, char **out) MICA_WUR;
/* SHA-256 hex of a device id (never stored raw), or of a network prefix as
 * rows written before keyed network hashes hold it. */
void acct_hash_hex(const char *domain, const char *value, char out[65]);
/* The /24 (IPv4) or /48 (IPv6) network of |ip| as text. */
void acct_network_of(const char *ip, char *out, size_t cap);
/* The keyed hash of |ip|'s network as stored and as rate limits name it:
 * the blind index (Key Center HMAC, index key) of kind "network"; *out
 * malloc'd. |legacy| (NULL allowed) gets the unkeyed SHA-256 hex that rows
 * written before keyed hashes hold, for their upgrade at login. */
int acct_network_hash(acct_service *s, const char *ip, char **out, char legacy[65]) MICA_WUR;

/* A device name as account.device stores it: sealed by the record sealer
 * for the place {device, name, "<user_id>:<device_hash>"}; "" stays "".
 * *out malloc'd. */
int acct_device_name_seal(acct_service *s, int64_t user_id, const char *device_hash,
			  const char *name, char **out) MICA_WUR;
/* The opposite; a stored name that is not sealed (written before names
 * were) is returned as it is. *out malloc'd. */
int acct_device_name_open(acct_service *s, int64_t user_id, const char *device_hash,
			  const char *stored, char **out) MICA_WUR;

/* ---- session.c ------------------------------------------------------------- */
struct acct_session {
	int64_t id, user_id;
	char device_hash[65];
	char kind[8];
	time_t auth_at, expires_at;
};
/* Creates a session of |kind| ("app" or "web") on |db| (in the caller's
 * transaction, if one is open); *token (malloc'd, 43 chars; wipe and free)
 * is shown to the client once, and only its hash is stored. *out gets the
 * row. 0, or the database's error. */
int acct_session_create(acct_service *s, mica_db *db, int64_t user_id, const char *device_hash,
			const char *kind, char **token, struct acct_session *out) MICA_WUR;
/* The session of a successful login, in one statement: marks |device_hash|
 * trusted (named |device_name|; *new_device 1 if it was not known), records
 * |network_hash| and creates the session as acct_session_create() does.
 * With |known| (the login found the device trusted and the network known)
 * it only creates the session and refreshes the device's last_seen when that
 * is over a minute old. */
int acct_session_open(acct_service *s, mica_db *db, int64_t user_id, const char *device_hash,
		      const char *device_name, const char *network_hash, int known,
		      const char *kind, char **token, struct acct_session *out,
		      int *new_device) MICA_WUR;
/* Whether |sess| authenticated recently: at most account.session.recent_auth_s
 * seconds ago by mica_clock_now(), the clock session.c writes auth_at with
 * (never the database's now()). An auth_at more than ACCT_AUTH_FUTURE_S in
 * the future (another instance's clock far ahead, or this one stepped back)
 * is not recent: a skew must never make an old login pass. */
#define ACCT_AUTH_FUTURE_S 5
bool acct_auth_recent(const acct_service *s, const struct acct_session *sess);
/* Validates "Bearer <token>" against PostgreSQL (the truth), refreshing the
 * Redis cache and a web session's idle time. 0 with *out the session;
 * MICA_EINVAL for a malformed header; MICA_EDENIED if not active; or the
 * database's error. */
int acct_session_check(acct_service *s, const char *authorization,
		       struct acct_session *out) MICA_WUR;
/* Records a fresh authentication of |session_id| (after a step-up): its
 * auth_at becomes now. 0, or the database's error. */
int acct_session_touch_auth(acct_service *s, int64_t session_id) MICA_WUR;
/* Revocation: the rows are marked revoked and their Redis entries replaced
 * by tombstones before COMMIT, in one transaction (the caller's, if one is
 * running on |db|: mica_db_tx nests). If Redis does not take a tombstone,
 * nothing is revoked and the call fails with MICA_EKVCONN (answer 503): an
 * acknowledged revocation holds in every service, through any Redis restart.
 * acct_session_revoke returns 0, MICA_ENOTFOUND (no such active session of
 * |user_id|), MICA_EKVCONN or a database error. */
int acct_session_revoke(acct_service *s, int64_t user_id, int64_t session_id) MICA_WUR;
/* Revokes every session of |user_id| but |keep| (0: none), as above. */
int acct_session_revoke_all(acct_service *s, mica_db *db, int64_t user_id, int64_t keep) MICA_WUR;
/* For a freeze, which must not fail because Redis is down: revokes every
 * session of |user_id| in PostgreSQL even when Redis refuses the tombstones,
 * and leaves those to acct_session_resync. Call acct_session_deferred_flush()
 * once the transaction is over (committed or not): it asks for the resync if
 * a tombstone was left, and from then until the resync has run this process
 * reads sessions only from PostgreSQL. */
int acct_session_revoke_all_deferred(acct_service *s, mica_db *db, int64_t user_id) MICA_WUR;
void acct_session_deferred_flush(acct_service *s);
/* lib/kvcache's on_sync for the session cache: scans session:* in Redis and
 * tombstones every live entry whose session PostgreSQL no longer holds as
 * active. Returns 0, or an error (kvcache calls it again later). */
int acct_session_resync(void *arg);
/* The active sessions of |user_id| as a new JSON array, |current| marked. */
int acct_session_list(acct_service *s, int64_t user_id, int64_t current, json_t **out) MICA_WUR;
/* RFC 7662-shaped answer for |token| (a new JSON object; {"active": false}
 * for a token that is not an active session). */
int acct_session_introspect(acct_service *s, const char *token, json_t **out) MICA_WUR;

/* ---- codes.c --------------------------------------------------------------- */
/* Creates a one-time code for |purpose| sent to |target| over |channel|;
 * *id (malloc'd) names it. The caller has counted the request
 * (acct_code_quota). */
int acct_code_send(acct_service *s, const char *purpose, const char *channel, const char *target,
		   const char *target_idx, int64_t user_id, char **id, mica_problem *f) MICA_WUR;
/* Checks and consumes code |code| of verification |id| for |purpose|; sets
 * *user_id (0 if none), target index and the verified target (malloc'd).
 * Refused: |f| says why, and the result is MICA_EAUTH for a wrong code (or
 * too many), MICA_ESTATE for one already used or expired, MICA_EINVAL for
 * one that is not six digits. */
int acct_code_verify(acct_service *s, mica_db *db, const char *id, const char *purpose,
		     const char *code, int64_t *user_id, char **target_idx, char **target,
		     char **channel, mica_problem *f) MICA_WUR;
/* The stored form of code |code| of verification |id|: the blind index of
 * kind "code" of "<id>:<code>" (*out malloc'd, "kc:v<N>:..."). Keyed, so
 * the million possible codes of a row cannot be tried without the Key
 * Center. 0, or the Key Center's error. */
int acct_code_hash(acct_service *s, const char *id, const char *code, char **out) MICA_WUR;
/* Why code |id| for |purpose| was not accepted: counts the attempt
 * (committed on its own) and fills |f|. MICA_EAUTH for a wrong code (or too
 * many), MICA_ESTATE for one already used or expired, or the database's
 * error (|f| left for the caller). */
int acct_code_refused(acct_service *s, mica_db *db, const char *id, const char *purpose,
		      mica_problem *f) MICA_WUR;
/* |bytes| (at most 32) random bytes as lower-case hex in out[2 * bytes + 1].
 * 0, or MICA_ECRYPTO. */
int acct_random_hex(char *out, size_t bytes) MICA_WUR;

/* ---- register.c ------------------------------------------------------------- */
/* POST /v1/register/start and /complete bodies after their pure checks
 * (no I/O; for the flows and the fuzz target). Strings borrow from the body.
 * start: exactly one of phone and email, of that form; |norm| normalised.
 * complete: verification_id, code and password present; device.id of 1 to
 * 200 characters, device.name (default "") at most 100; |policy| is NULL
 * when the body names none (the configured default applies). The password
 * policy itself is checked by the flow (it may read the blocklist).
 * 0, or |f| is the 400 answer and MICA_EINVAL returned. */
struct acct_register_start_req {
	const char *phone, *email;
	enum acct_ident kind;
	char norm[256];
};
struct acct_register_complete_req {
	const char *verification_id, *code, *password, *policy, *device_name;
	char device_hash[65];
};
int acct_register_start_parse(json_t *body, struct acct_register_start_req *out,
			      mica_problem *f) MICA_WUR;
int acct_register_complete_parse(json_t *body, struct acct_register_complete_req *out,
				 mica_problem *f) MICA_WUR;
/* POST /v1/register/start: sends a code to the phone or email (200
 * {verification_id, channel, expires_in}); counted against the open-class
 * code quota of the address and the client network of |ip|
 * (acct_code_quota), as reset/start is. POST /v1/register/complete: checks
 * the code and the password policy, makes the password's hash and every
 * seal, then in one transaction consumes the code and creates the account,
 * its trusted device, network and first app session (201 {account_id,
 * token, session_id, expires_at}); 409 identifier_in_use when another
 * account holds the address (a recycled phone number moves). */
int acct_register_start(acct_service *s, json_t *body, const char *ip, json_t **out,
			mica_problem *f) MICA_WUR;
int acct_register_complete(acct_service *s, json_t *body, const char *ip, json_t **out,
			   mica_problem *f) MICA_WUR;

/* ---- reset.c ------------------------------------------------------------------ */
/* POST /v1/password/reset/start {login}: the same 200 answer whether or not
 * an account has the phone or email; a code goes out only when one does
 * (and not through a login phone the carrier recycled: that account loses
 * the number and is told). POST /v1/password/reset/complete
 * {verification_id, code, new_password}: the account's policy and the
 * burned passwords apply (a refused password leaves the code usable); the
 * new password is hashed and sealed before the transaction that sets it,
 * unfreezes the account, revokes every session and records the notice. */
int acct_reset_start(acct_service *s, json_t *body, const char *ip, json_t **out,
		     mica_problem *f) MICA_WUR;
int acct_reset_complete(acct_service *s, json_t *body, json_t **out, mica_problem *f) MICA_WUR;
/* ---- password_admit.c ------------------------------------------------------- */
/* Whether a request may set |password| under |policy|: 0, or |f| says why
 * not: 400 weak_password when the policy refuses it, 503
 * policy_unavailable when the check cannot run (nist without a readable
 * breached-password list: a server fault, not the client's). */
int acct_password_admit(acct_service *s, const char *policy, const char *password,
			mica_problem *f) MICA_WUR;
/* *burned = 1 when |password| matches a password burned by a freeze. */
int acct_password_burned(acct_service *s, int64_t user_id, const char *password,
			 int *burned) MICA_WUR;
/* ---- notice.c ---------------------------------------------------------------- */
/* Security notices, delivered through the transactional outbox (notice.c). */
enum acct_notice_kind {
	ACCT_NOTICE_PASSWORD_CHANGED,
	ACCT_NOTICE_PASSWORD_RESET,
	ACCT_NOTICE_FROZEN,
	ACCT_NOTICE_NEW_SIGN_IN,     /* arg: the device hash */
	ACCT_NOTICE_CONTACT_ADDED,   /* arg: "phone" or "email" */
	ACCT_NOTICE_CONTACT_REMOVED, /* arg: "phone" or "email" */
	ACCT_NOTICE_DELETED,
	ACCT_NOTICE_PHONE_RECYCLED,	     /* the login phone went to a new account */
	ACCT_NOTICE_SECURITY_PHONE_RECYCLED, /* the security phone went to a new account */
	ACCT_NOTICE_RESET_REFUSED,	     /* a reset through a recycled login phone */
};
/* Contacts of account.user, as bits of |carry|. */
#define ACCT_CONTACT_PHONE 1u
#define ACCT_CONTACT_EMAIL 2u
#define ACCT_CONTACT_SECURITY_PHONE 4u
#define ACCT_CONTACT_SECURITY_EMAIL 8u
#define ACCT_CONTACTS_ALL 15u
/* Records notice |kind| to every contact of |user_id| in the caller's
 * transaction on |db| (an outbox event naming only the account and the
 * kind), so it exists if and only if the operation commits; the notice
 * worker delivers it later, retrying while the Key Center or the notifier
 * is down. |arg| (borrowed, may be NULL) is the kind's detail (see the
 * enum). |carry| names contacts whose columns the same transaction clears
 * (deletion, unbinding): their current ciphertexts are copied now, so the
 * notice still reaches them; call it before clearing them. Needs no Key
 * Center. Returns 0, MICA_EINVAL, MICA_ESTATE (not in a transaction),
 * MICA_ENOMEM or as mica_db_exec(). */
int acct_notice_emit(mica_db *db, int64_t user_id, enum acct_notice_kind kind, const char *arg,
		     unsigned carry) MICA_WUR;
/* The notice worker: one thread that consumes account.notice events
 * (consumer account.notices) into account.notice and delivers what is due,
 * each notice retried with backoff (1 s doubling to 60 s, given up after
 * three days) while a dependency fails, each delay logged. */
typedef struct acct_notice_worker acct_notice_worker;
int acct_notice_start(acct_service *s, acct_notice_worker **out) MICA_WUR;
/* Stops it (within about a second) and frees it; *w NULL is a no-op. */
void acct_notice_stop(acct_notice_worker **w);

/* ---- recycling.c -------------------------------------------------------------- */
/* The number-recycling check as account.recycling configures it (*out stays
 * NULL for the local table). MICA_ECONFIG (logged) for a bad mode or URL. */
int acct_recycling_new(const struct acct_config *cfg, acct_recycling **out) MICA_WUR;
void acct_recycling_free(acct_recycling *r);
/* *recycled = 1 when |phone| (E.164; |phone_idx| its blind index, for the
 * local table) was recycled on or after |since| (YYYY-MM-DD). */
int acct_number_recycled(acct_service *s, mica_db *db, const char *phone, const char *phone_idx,
			 const char *since, int *recycled) MICA_WUR;
/* 1 when |s| has the shape YYYY-MM-DD (PostgreSQL judges the calendar). */
int acct_is_iso_day(const char *s);
/* One line of a recycled-number list (`mica recycled import`): "+E164,
 * YYYY-MM-DD", blanks around either field and a final CR allowed. Returns 1
 * with the normalised number in phone[phone_cap] and the day in day[11], 0 for
 * a blank line or a "#" comment, or -1 with *why naming the fault. */
int acct_recycled_line(const char *line, size_t len, char *phone, size_t phone_cap, char *day,
		       const char **why);

/* ---- pepper.c ----------------------------------------------------------------- */
/* A sealer: values encrypted locally (AES-256-GCM envelope) under a data key
 * the Key Center mints and wraps with |key_name| (borrowed; it must outlive
 * the sealer), the data key bound to the context {service: account,
 * [table, column,] purpose} (|table| and |column| NULL: left out). Stored
 * form "dk1.<wrapped data key>.<base64 envelope>", the envelope bound to
 * "service=account;table=T;column=C;row=R". Thread-safe. */
int acct_sealer_new(const char *key_name, const char *table, const char *column,
		    const char *purpose, acct_sealer **out) MICA_WUR;
/* Mints the first sealing key now (Key Center "datakey"), so a service that
 * may not do so fails at start, not at the first use. */
int acct_sealer_ready(acct_service *s, acct_sealer *k) MICA_WUR;
/* Wipes the sealing key and frees |k|; NULL is a no-op. */
void acct_sealer_free(acct_sealer *k);
/* Seals |value| for its place {table, column, row} under the current data
 * key (a fresh one when due); *out malloc'd. MICA_EINVAL: place too long. */
int acct_seal(acct_service *s, acct_sealer *k, const char *table, const char *column,
	      const char *row, const char *value, char **out) MICA_WUR;
/* Opens a value acct_seal() made for the same place; *out malloc'd and
 * NUL-terminated (wipe and free). MICA_EBADHEADER when |sealed| is not of
 * the sealed form, MICA_EAUTH (or the Key Center's error) when it does not
 * open. */
int acct_unseal(acct_service *s, acct_sealer *k, const char *table, const char *column,
		const char *row, const char *sealed, char **out) MICA_WUR;
/* Whether |value| has the sealed form's prefix (rows written before a
 * column was sealed do not). */
bool acct_is_sealed(const char *value);
/* Encrypts a PHC string for |user_id| under the pepper (acct_seal() for
 * user.password); *out malloc'd. */
int acct_password_seal(acct_service *s, int64_t user_id, const char *phc, char **out) MICA_WUR;
/* The stored form of |password| for |user_id|: its Argon2id hash with the
 * service's parameters (s->argon2), sealed as acct_password_seal() does;
 * the hash is wiped. *out malloc'd. Costs an Argon2id hash and a Key Center
 * round trip when the pepper's data key is not cached: call it before
 * mica_db_tx(), never inside (a retried transaction would repeat both while
 * holding its rows). */
int acct_password_protect(acct_service *s, int64_t user_id, const char *password,
			  char **out) MICA_WUR;
/* Decrypts a stored PHC string (*phc malloc'd; wipe and free). *legacy (NULL
 * allowed) is set when the row predates data keys and should be sealed again. */
int acct_password_unseal(acct_service *s, int64_t user_id, const char *sealed, char **phc,
			 int *legacy) MICA_WUR;

/* ---- atrest.c ----------------------------------------------------------------- */
/* Seals what rows written before sealing hold in clear or unpeppered:
 * security questions and answers, device names (account.device and
 * account.stepup). Run at start, before serving; idempotent. 0, or the
 * first database or Key Center error (logged). */
int acct_at_rest_upgrade(acct_service *s) MICA_WUR;

/* ---- limits.c ---------------------------------------------------------------- */
/* Security limits in Redis, failing closed: when Redis cannot count, each
 * returns the error with |f| the 503 unavailable answer naming Redis. */
/* Counts one hit of |key| (mica_kv_rate_limit): *allowed 1 within |limit|
 * per |window_s|. */
int acct_limit_hit(const char *key, long limit, int window_s, int *allowed,
		   mica_problem *f) MICA_WUR;
/* Reads two counters in one round trip (a missing one is 0). */
int acct_counters_get(const char *k1, const char *k2, long *v1, long *v2, mica_problem *f) MICA_WUR;
/* Adds one to |key|, which expires |window_s| after its first hit. */
int acct_counter_bump(const char *key, int window_s, mica_problem *f) MICA_WUR;
/* Deletes a counter; a failure is only logged (it makes limits stricter). */
void acct_counter_clear(const char *key);
/* Records the single use of |key| for |ttl_s|: *fresh 1 the first time, 0
 * when it was already used. */
int acct_nonce_use(const char *key, int ttl_s, int *fresh, mica_problem *f) MICA_WUR;
/* Who asks for a one-time code: anyone (registration, password reset), or
 * the owner, who proved the password or holds a session (step-up,
 * binding). A class's quota never counts the other's requests. */
enum acct_code_class { ACCT_CODES_OPEN, ACCT_CODES_OWNER };
/* Counts one code request for the address |target_idx| (its blind index)
 * by |requester| (the keyed hash of the client network for the open class,
 * "user:<id>" for the owner class), whether or not an account has the
 * address: at most cfg->codes_per_hour an hour per (class, address,
 * requester), and, of the requests that pass, cfg->codes_per_address_hour
 * per (class, address). 0, or 429 too_many_codes, or 503 (Redis). */
int acct_code_quota(acct_service *s, enum acct_code_class cls, const char *target_idx,
		    const char *requester, mica_problem *f) MICA_WUR;
/* |f| = 503 unavailable naming Redis; logs; returns |err| (MICA_EKVCONN if 0). */
int acct_limits_fail(mica_problem *f, int err);
/* Whether Redis answered at the last attempt of any limit (no I/O; true
 * before the first). Otherwise *why (may be NULL) says what is refused. */
bool acct_limits_ready(const char **why);
/* The same after a PING now (this thread's connection). */
bool acct_limits_probe(const char **why);

/* ---- risk.c ------------------------------------------------------------------- */
/* The login risk engine's decisions: pure (no I/O, no global state; any
 * thread), of the signals a login gathers and account.risk's settings in
 * |c|. A login is judged in this order: the captcha gate before the
 * password is checked (acct_risk_captcha), then, after the right password,
 * the verdict (acct_risk_decide); a wrong password is 401 and counted. */
/* Whether a login must solve a captcha: when the failed logins of its
 * account (or of its identifier when no account has it) reach
 * c->captcha_account_failures, or those of its client network reach
 * c->captcha_network_failures, in the failure window. |excess| is the
 * failures beyond the nearer threshold (>= 0 when required), |cost| the
 * ALTCHA maxnumber due: c->captcha_base_cost at the threshold, doubled per
 * further failure, at most c->captcha_max_cost (0 when not required). */
struct acct_risk_captcha {
	bool required;
	long excess;
	long long cost;
};
void acct_risk_captcha(const struct acct_config *c, long account_failures, long network_failures,
		       struct acct_risk_captcha *out);
/* What the login of an account that gave the right password knows of it. */
struct acct_risk_signals {
	bool frozen;	     /* the account's status is "frozen" */
	bool device_trusted; /* the login's device is a trusted device of the account */
	bool network_known;  /* the login's client network has been seen for the account */
	bool rate_allowed;   /* the account's logins are within c->login_rate_max per
				c->login_rate_window_s (ignored when frozen) */
};
/* Reasons for a step-up, as bits; acct_risk_reasons_json() names them. */
#define ACCT_RISK_NEW_DEVICE 1u	  /* "new_device", when c->stepup_new_device */
#define ACCT_RISK_NEW_NETWORK 2u  /* "new_network", when c->stepup_new_network */
#define ACCT_RISK_UNUSUAL_RATE 4u /* "unusual_rate" */
enum acct_risk_verdict {
	ACCT_RISK_ALLOW,  /* a session */
	ACCT_RISK_STEPUP, /* 403 step_up_required for |reasons| */
	ACCT_RISK_FROZEN, /* 423 account_frozen: only a password reset unfreezes */
};
struct acct_risk_decision {
	enum acct_risk_verdict verdict;
	unsigned reasons; /* ACCT_RISK_* bits; 0 unless ACCT_RISK_STEPUP */
};
void acct_risk_decide(const struct acct_config *c, const struct acct_risk_signals *sig,
		      struct acct_risk_decision *out);
/* The reasons' names as a new JSON array (in the bits' order); NULL when
 * out of memory. */
json_t *acct_risk_reasons_json(unsigned reasons);
/* Whether |stepup_failures| wrong step-up codes (counted per account over
 * c->stepup_failure_window_s, this one included) freeze the account: at
 * c->freeze_after_stepup_failures. */
bool acct_risk_freeze_due(const struct acct_config *c, int stepup_failures);

/* ---- captcha.c ---------------------------------------------------------------- */
/* 0 when |due| (acct_risk_captcha) requires no captcha, or when |payload|
 * (the login's "altcha", NULL when absent) solves a fresh challenge issued
 * for the failure counters |kacct| and |knet| at due->cost; each solution
 * is accepted once. Else MICA_EDENIED with |f| the 428 captcha_required
 * answer carrying a new challenge of cost due->cost, or |f| the 503 of
 * Redis (the single-use record) and its error. */
int acct_captcha_gate(acct_service *s, const struct acct_risk_captcha *due, const char *kacct,
		      const char *knet, const char *payload, mica_problem *f) MICA_WUR;

/* ---- login.c ------------------------------------------------------------------ */
/* Prepares the login path (the hash checked for unknown accounts). */
int acct_login_init(acct_service *s) MICA_WUR;
/* A POST /v1/login body after acct_login_parse(): strings borrow from the
 * JSON body (valid while it lives); |norm| is the normalised login, |ident|
 * its kind, |dev_hash| the SHA-256 hex of the device id (acct_hash_hex). */
struct acct_login_req {
	const char *login, *password, *altcha, *kind, *dev_id, *dev_name;
	enum acct_ident ident;
	char norm[256];
	char dev_hash[65];
};
/* Everything acct_login() checks before any I/O: required fields, session
 * kind (default "app"), password length, the login's form, the device id.
 * Pure (no database, Redis or Key Center), for acct_login and the fuzz
 * target. 0, or |f| is the 400 answer and MICA_EINVAL returned. */
int acct_login_parse(json_t *body, struct acct_login_req *out, mica_problem *f) MICA_WUR;
/* POST /v1/login from client address |ip|: 200 a session; 401
 * invalid_credentials (a wrong password and an unknown account alike, in the
 * same time); 428 captcha_required; 403 step_up_required; 423
 * account_frozen; 503 when Redis cannot count (the limits fail closed). */
int acct_login(acct_service *s, json_t *body, const char *ip, json_t **out,
	       mica_problem *f) MICA_WUR;
/* Records a successful login of |user_id| from device |dev| (named
 * |dev_name|) on network |net| (|known|: the device was already trusted and
 * the network known) and opens a session of |kind|; |notify_new| records a
 * new-sign-in notice when the device is new. *out is the login's answer. */
int acct_login_finish(acct_service *s, int64_t user_id, const char *dev, const char *dev_name,
		      const char *net, int known, const char *kind, int notify_new, json_t **out,
		      mica_problem *f) MICA_WUR;

/* ---- stepup.c ------------------------------------------------------------------ */
/* A step-up to create: of a login (|session_id| 0) or of a sensitive
 * operation of session |session_id|; |kind| "login" or "sensitive". */
struct acct_stepup_new {
	int64_t user_id, session_id;
	const char *kind, *device_hash, *device_name, *net_hash, *session_kind;
};
/* Records step-up |n| for |reasons| (a JSON array, reference taken) and
 * returns MICA_EDENIED with |f| the 403 step_up_required answer naming it,
 * its methods and reasons; or |f| a 5xx and the dependency's error. */
int acct_stepup_create(acct_service *s, const struct acct_stepup_new *n, json_t *reasons,
		       mica_problem *f) MICA_WUR;
/* POST /v1/stepup/<id>/send {method: sms|email}: a code to the account's
 * phone or email, counted against the owner's code quota. */
int acct_stepup_send(acct_service *s, const char *id, json_t *body, json_t **out,
		     mica_problem *f) MICA_WUR;
/* POST /v1/stepup/<id>/verify {code} (or no code once a trusted device
 * approved): completes the login (its session) or marks the session's
 * authentication recent. Wrong codes count per account; at
 * cfg->freeze_after_stepup_failures (acct_risk_freeze_due) the account is
 * frozen and the answer is 423. 404 unknown, 409 closed, 410 expired. */
int acct_stepup_verify(acct_service *s, const char *id, json_t *body, json_t **out,
		       mica_problem *f) MICA_WUR;
/* A trusted device of the same account, with cross-device verification
 * on, approves step-up |id| (not its own login): 403 not_trusted_device. */
int acct_stepup_approve(acct_service *s, const struct acct_session *approver, const char *id,
			json_t **out, mica_problem *f) MICA_WUR;
/* For sensitive operations: 0 when |sess| authenticated recently enough,
 * else a step-up is created and |f| is 403 step_up_required. */
int acct_require_recent(acct_service *s, const struct acct_session *sess, mica_problem *f) MICA_WUR;

/* ---- freeze.c ------------------------------------------------------------------ */
/* Freezes the account in one transaction: status, password burned, pending
 * step-ups failed, the notice recorded, every session revoked (in PostgreSQL
 * even when Redis refuses the tombstones: acct_session_revoke_all_deferred).
 * |reason| (static text) is logged. 0, or the database's error. */
int acct_freeze(acct_service *s, int64_t user_id, const char *reason) MICA_WUR;

/* ---- settings.c ------------------------------------------------------------------ */
/* Flows of a signed-in session |sess|: GET /v1/me; the password change
 * (recent authentication required); binding a login contact (|what| "phone"
 * or "email": a code to the new address, then its check) and unbinding it;
 * security questions; cross-device verification; deletion. Each change needs
 * a recent authentication (acct_require_recent, else 403 step_up_required);
 * the password change, contact changes and deletion record their security
 * notice in their transaction. */
int acct_me(acct_service *s, const struct acct_session *sess, json_t **out,
	    mica_problem *f) MICA_WUR;
int acct_password_change(acct_service *s, const struct acct_session *sess, json_t *body,
			 json_t **out, mica_problem *f) MICA_WUR;
int acct_bind_start(acct_service *s, const struct acct_session *sess, const char *what,
		    json_t *body, json_t **out, mica_problem *f) MICA_WUR;
int acct_bind_complete(acct_service *s, const struct acct_session *sess, const char *what,
		       json_t *body, json_t **out, mica_problem *f) MICA_WUR;
int acct_unbind(acct_service *s, const struct acct_session *sess, const char *what, json_t **out,
		mica_problem *f) MICA_WUR;
int acct_questions_set(acct_service *s, const struct acct_session *sess, json_t *body, json_t **out,
		       mica_problem *f) MICA_WUR;

/* Security questions. An answer is stored as the Argon2id hash of its
 * normalised form (ASCII letters lower-cased, white space trimmed, each run
 * of it one space), sealed under the pepper; the question sealed. */
#define ACCT_QUESTIONS_MAX 3
#define ACCT_QUESTION_MAX_CHARS 200
#define ACCT_ANSWER_MIN_CHARS 2
#define ACCT_ANSWER_MAX_CHARS 128
/* Buffer for a normalised answer, which is hashed like a password, so its
 * content fits ACCT_PASSWORD_MAX_BYTES. */
#define ACCT_ANSWER_NORM_CAP (4 * ACCT_ANSWER_MAX_CHARS + 1)
/* Checks a PUT /v1/security/questions body: "questions" is an array of 1 to
 * ACCT_QUESTIONS_MAX items, each with a "question" string of at most
 * ACCT_QUESTION_MAX_CHARS characters, not all white space, and an "answer"
 * string whose normalised form has ACCT_ANSWER_MIN_CHARS to
 * ACCT_ANSWER_MAX_CHARS characters and fits ACCT_ANSWER_NORM_CAP. Pure, for
 * acct_questions_set and the fuzz target. Returns 0, or MICA_EINVAL with |f|
 * the 400 bad_questions answer naming the item. */
int acct_questions_parse(json_t *body, mica_problem *f) MICA_WUR;
/* Writes the normalised form of |in| to |out| (|cap| bytes, NUL-terminated;
 * when it does not fit, its longest prefix that does, never ending in a
 * space; nothing written when |cap| is 0). Returns the whole form's length
 * in bytes, as snprintf does: it did not fit when that is |cap| or more. */
size_t acct_answer_normalise(const char *in, char *out, size_t cap);
/* The stored forms of question |pos| (1-based) of account |uid|: the
 * Argon2id PHC string of the normalised answer sealed under the pepper, and
 * the question sealed by the record sealer, each bound to the place
 * {security_question, answer|question, "<uid>:<pos>"}. *out malloc'd. */
int acct_answer_seal(acct_service *s, const char *uid, size_t pos, const char *phc,
		     char **out) MICA_WUR;
int acct_question_seal(acct_service *s, const char *uid, size_t pos, const char *question,
		       char **out) MICA_WUR;
int acct_cross_device_set(acct_service *s, const struct acct_session *sess, json_t *body,
			  json_t **out, mica_problem *f) MICA_WUR;
int acct_delete(acct_service *s, const struct acct_session *sess, json_t **out,
		mica_problem *f) MICA_WUR;

/* ---- routes.c / service.c ----------------------------------------------------------- */
extern const mica_http_route acct_routes[];
extern const size_t acct_routes_len;

#endif
