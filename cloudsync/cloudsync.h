/* cloudsync.h - mica-cloudsync: record sync for every module, with per-user
 * change sequences and sync tokens, versioned writes whose losing copies are
 * kept as conflict records, a mass-deletion guard, a recycle bin purged
 * strictly 30 days after deletion, and account deletion through the outbox
 * (docs/api/cloudsync.md; docs/decisions.md "Cloud sync records").
 *
 * Threads: the HTTP handlers run on lib/http's blocking pool, each with its
 * own database connection (mica_db_thread()); the jobs thread (jobs.c)
 * consumes account.deleted and purges the bin. One cs_service is shared by
 * all of them and is read-only after start, but for lib/kc and lib/auth,
 * which are thread-safe. */
#ifndef MICA_CLOUDSYNC_H
#define MICA_CLOUDSYNC_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "config.h"
#include "daemon.h"
#include "db.h"
#include "http.h"
#include "kc.h"
#include "kv.h"
#include "problem.h"

struct cs_config {
	int log_level;
	mica_http_options http;
	mica_config_db db;
	struct mica_kv_config redis;
	mica_kc_options kc;
	char *user_key;	     /* Key Center key wrapping the users' data keys */
	int key_cache_ttl_s; /* cloudsync.keycenter.cache_ttl */
	/* [cloudsync.auth]: lib/auth's introspection call to the account service */
	char *introspect_url, *auth_ca_file, *auth_cert_file, *auth_key_file;
	/* [cloudsync.records] */
	size_t record_max;   /* bytes of one record's JSON */
	int page_max;	     /* changes per page at most */
	int batch_max;	     /* writes per batch at most */
	int mass_delete_pct; /* a batch deleting more than this share of a collection ... */
	int mass_delete_min; /* ... and at least this many records needs confirmation */
	/* [cloudsync.bin] */
	int bin_days;	     /* a deleted record is purged this many days after deletion */
	int jobs_interval_s; /* seconds between two runs of the bin purge */
	int purge_batch;     /* records one purge transaction removes at most */
};

typedef struct cs_jobs cs_jobs;

typedef struct cs_service {
	const struct cs_config *cfg;
	mica_kc *kc;
	mica_auth *auth;
	cs_jobs *jobs;
} cs_service;

extern const mica_service cloudsync_daemon;
extern const mica_http_route cs_routes[];
extern const size_t cs_routes_len;
/* CardDAV's handlers (dav.c), routed by cs_routes under /dav and
 * /.well-known/carddav. */
void cs_dav_well_known(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_propfind_root(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_propfind_principal(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_propfind_home(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_propfind_book(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_report(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_propfind_card(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_get_card(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_put_card(const mica_http_req *req, mica_http_resp *resp, void *svc);
void cs_dav_delete_card(const mica_http_req *req, mica_http_resp *resp, void *svc);

/* ---- modules.c: the collections ------------------------------------------------ */

/* Whether |name| is one of the modules (contacts, messages, call_log,
 * notes, browser, wifi, recordings, home_layout, calendar, gallery, drive,
 * music, security_lists, assistant). */
bool cs_module_known(const char *name);
/* The modules as a JSON array of strings (new reference). */
json_t *cs_modules_json(void);

/* Whether |id| is a record id: 1-128 of [A-Za-z0-9._~-], starting with a
 * letter or digit (safe in a URL path segment and in an AAD). */
bool cs_record_id_ok(const char *id);

/* ---- seal.c: per-user data keys ---------------------------------------------- */

#define CS_KEY_LEN 32

/* The user's data key: unwrapped (through lib/kc's cache) from
 * cloudsync.user_key, or minted by the Key Center and stored on first use
 * (when two requests race, both end up with the one stored first). Call
 * outside a transaction: minting is not idempotent. key[] is wiped on
 * failure. Returns 0 or a lib/kc or lib/db error. */
int cs_user_key(cs_service *s, mica_db *db, int64_t user_id, uint8_t key[CS_KEY_LEN]) MICA_WUR;

/* Seals the JSON text |json| (|len| bytes) of record (module, id, version)
 * of |user_id|; *out malloc'd, *out_len bytes. */
int cs_seal(const uint8_t key[CS_KEY_LEN], int64_t user_id, const char *module, const char *id,
	    int64_t version, const char *json, size_t len, uint8_t **out, size_t *out_len) MICA_WUR;

/* Opens a body cs_seal() made for the same place and parses it: *out is the
 * record's JSON value (new reference). MICA_EAUTH: the body does not belong
 * there (moved, tampered) or the key is wrong; MICA_EBADHEADER: not JSON. */
int cs_open(const uint8_t key[CS_KEY_LEN], int64_t user_id, const char *module, const char *id,
	    int64_t version, const uint8_t *body, size_t len, json_t **out) MICA_WUR;

/* ---- records.c: sync, writes, the bin ------------------------------------------ */

/* One write of a batch (or of PUT/DELETE on one record). */
typedef struct cs_write {
	const char *id;	    /* borrowed */
	bool has_if_match;  /* the device's version of the record was given */
	int64_t if_match;   /* that version */
	bool deleted;	    /* a deletion (to the bin) rather than a put */
	bool unconditional; /* whatever the version (a DAV write without If-Match) */
	bool no_copy;	    /* a losing put keeps no conflict record (DAV answers 412) */
	char *json;	    /* a put's record as compact JSON text (owned) */
	size_t json_len;
} cs_write;

/* What became of one write. */
typedef struct cs_result {
	enum { CS_OK, CS_CONFLICT, CS_NOT_FOUND, CS_PRECONDITION } status;
	bool created;	      /* CS_OK of a put that made the record */
	int64_t version, seq; /* CS_OK: the record's new version and change */
	json_t *server;	      /* CS_CONFLICT: the server's copy (new reference) */
	char conflict_id[64]; /* CS_CONFLICT of a put: the conflict record keeping the losing copy
			       */
} cs_result;

/* Applies |n| writes of |user_id| to |module| in one transaction, each
 * judged on its own (a conflict does not stop the others). |confirm| allows
 * a mass deletion. res[] gets one result each (cs_results_cleanup()).
 * Returns 0, or MICA_EINVAL with |p| set (409 mass_deletion_unconfirmed;
 * nothing was written), or a dependency error with |p| set. */
int cs_write_batch(cs_service *s, int64_t user_id, const char *module, cs_write *w, size_t n,
		   bool confirm, cs_result *res, mica_problem *p) MICA_WUR;
void cs_results_cleanup(cs_result *res, size_t n);
void cs_writes_cleanup(cs_write *w, size_t n);

/* Changes of |module| after change |since|, at most |limit|: *out is
 * {"changes": [...], "token": "<last seq>", "more": bool}. */
int cs_changes(cs_service *s, int64_t user_id, const char *module, int64_t since, int limit,
	       json_t **out, mica_problem *p) MICA_WUR;

/* One live record as {"id", "version", "seq", "modified_at", "data"[, "conflict_of"]};
 * 404 record_not_found for a missing, binned or purged one. */
int cs_record_get(cs_service *s, int64_t user_id, const char *module, const char *id, json_t **out,
		  mica_problem *p) MICA_WUR;

/* The last change of |module| (0 when none): a collection tag. */
int cs_module_token(cs_service *s, int64_t user_id, const char *module, int64_t *token,
		    mica_problem *p) MICA_WUR;

/* The live records of |module| named by ids[0..n) (all of them when |ids|
 * is NULL), by id: *out is an array of records as cs_record_get() shows
 * them, without "data" unless |with_data|. *token is the module's last
 * change (a collection tag). */
int cs_records_live(cs_service *s, int64_t user_id, const char *module, const char *const *ids,
		    size_t n, bool with_data, json_t **out, int64_t *token,
		    mica_problem *p) MICA_WUR;

/* The recycle bin of |module|: {"records": [{id, version, deleted_at, purge_at, data}]}. */
int cs_bin_list(cs_service *s, int64_t user_id, const char *module, json_t **out,
		mica_problem *p) MICA_WUR;
/* Restores binned record |id| as a new version (a change devices pull). */
int cs_bin_restore(cs_service *s, int64_t user_id, const char *module, const char *id, json_t **out,
		   mica_problem *p) MICA_WUR;
/* Purges binned record |id| now, or (|id| NULL) every binned record of
 * |module|; *n the records purged. */
int cs_bin_purge(cs_service *s, int64_t user_id, const char *module, const char *id, long *n,
		 mica_problem *p) MICA_WUR;

/* ---- body.c: what a request says (untrusted; fuzzed) ------------------------------ */

/* A version from an If-Match header or a query: "N" (an entity tag) or N,
 * N >= 1. Returns 0, MICA_EINVAL or MICA_ERANGE. */
int cs_parse_version(const char *s, int64_t *out) MICA_WUR;
/* The body of PUT on one record, {"data": <any JSON>}, into w->json
 * (compact, at most |record_max| bytes: 413 record_too_large). Returns 0 or
 * MICA_EINVAL with |p| set. */
int cs_parse_put(json_t *body, size_t record_max, cs_write *w, mica_problem *p) MICA_WUR;
/* The body of a batch: {"changes": [{"id", "if_match"?, "deleted"? | "data"}, ...],
 * "confirm_mass_delete"?}, 1..|max_items| writes, no id twice. *out
 * (calloc'd, *n items) borrows the ids from |body|; free with
 * cs_writes_cleanup() and free(). Returns 0 or MICA_EINVAL with |p| set. */
int cs_parse_batch(json_t *body, size_t max_items, size_t record_max, cs_write **out, size_t *n,
		   bool *confirm, mica_problem *p) MICA_WUR;

/* ---- vcard.c: the checks of a vCard (untrusted; fuzzed) ------------------------- */

/* Checks that |text| (|len| bytes) is one vCard 3.0 or 4.0: UTF-8 without
 * NUL, BEGIN:VCARD first and END:VCARD last, a VERSION, every (unfolded)
 * line NAME[;PARAMS]:VALUE, no line over 64 KiB. Copies its UID (truncated
 * to |uid_cap| - 1 bytes; "" when none) to |uid| unless |uid_cap| is 0. Returns 0, or MICA_EINVAL
 * with *why a static sentence naming the fault. */
int cs_vcard_check(const char *text, size_t len, char *uid, size_t uid_cap,
		   const char **why) MICA_WUR;

/* ---- davxml.c: WebDAV request bodies (untrusted; fuzzed) ------------------------- */

#define CS_DAV_MAX_PROPS 64
#define CS_DAV_MAX_HREFS 1000

typedef struct cs_dav_prop {
	char *ns, *name; /* namespace URI ("" for none) and local name */
} cs_dav_prop;

typedef struct cs_dav_query {
	enum { CS_DAV_PROP, CS_DAV_ALLPROP, CS_DAV_PROPNAME } mode;
	size_t nprops;
	cs_dav_prop props[CS_DAV_MAX_PROPS]; /* CS_DAV_PROP: what was asked for */
	size_t nhrefs;
	char **hrefs; /* a multiget's hrefs, as sent */
} cs_dav_query;

/* Reads a PROPFIND body (|report| false; empty is allprop) or a REPORT
 * body (|report| true: addressbook-multiget only). Returns 0, MICA_EINVAL
 * (malformed, too many props or hrefs), MICA_EDENIED (another report) with
 * *why a static sentence, or MICA_ENOMEM. |q| is cleaned up on failure;
 * else the caller calls cs_dav_query_cleanup(). libxml2 must have been
 * initialised (xmlInitParser) by the process. */
int cs_dav_parse(const char *body, size_t len, bool report, cs_dav_query *q,
		 const char **why) MICA_WUR;
void cs_dav_query_cleanup(cs_dav_query *q);

/* ---- jobs.c: the scheduled bin purge and account deletion ------------------------ */

/* Purges every record binned at least |bin_days| days before |now_ms|
 * (strictly by time), |batch| records a transaction; *n the records purged.
 * The daemon runs it every cfg->jobs_interval_s; `mica cloudsync purge --at`
 * runs it once with an injected clock. */
int cs_purge_bin(mica_db *db, int64_t now_ms, int bin_days, int batch, long *n) MICA_WUR;

/* Deletes every row of |user_id| in the cloudsync schema (one transaction,
 * the caller's). */
int cs_delete_user(mica_db *db, int64_t user_id) MICA_WUR;

/* Starts and stops the jobs thread. */
int cs_jobs_start(cs_service *s) MICA_WUR;
void cs_jobs_stop(cs_service *s);

/* The outbox consumer's name and the event it handles. */
#define CS_ACCOUNTS_CONSUMER "cloudsync.accounts"

/* ---- routes.c ------------------------------------------------------------------ */

/* The user of a session (lib/auth) given as an Authorization value: 1 and
 * *uid, or 0 with the reply set: 401 invalid_token with a Bearer challenge,
 * or a Basic one when |basic| (CardDAV), or 503 naming the account service
 * when the session could not be checked. */
int cs_signed_in(cs_service *s, const char *authorization, bool basic, mica_http_resp *resp,
		 int64_t *uid);

/* Sets |p| for a dependency that failed with |err| while doing |what|
 * (logged): 503 naming database, redis or keycenter, else 500. Returns
 * |err|. */
int cs_problem_dependency(mica_problem *p, int err, const char *what);

#endif
