/* routes.c - the Key Center's HTTP API (docs/api/keycenter.md). Every
 * handler follows one shape: begin() names the operation and key, allow()
 * checks the policy, the work runs, and reply()/reply_error() write the
 * audit record BEFORE anything is answered: if the record cannot be written
 * the caller gets 503 audit_unavailable and nothing else (fail closed).
 * The answer waits for its record without holding a thread: reply() sets
 * the reply, defers it (lib/http) and queues the record; the audit writer's
 * callback sends it once the record committed, or 503 in its place. So the
 * crypto routes run on the event threads, and only handlers that touch
 * PostgreSQL or the HSM, or record an attempt before a change
 * (synchronously), run on the blocking pool. */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "body.h"
#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "keycenter/keycenter.h"
#include "keycenter/ops.h"
#include "log.h"

struct call {
	kc_service *s;
	const mica_http_req *req;
	mica_http_resp *resp;
	enum kc_op op;
	const char *key;
	int version;	     /* key version the call used, -1 if none */
	char ctx_hash[65];   /* SHA-256 hex of the canonical context(s), "" if none */
	EVP_MD_CTX *ctx_sha; /* created by the first add_context() */
	kc_policy *policy;
};

static int64_t now_us(void)
{
	return mica_clock_now_us();
}

static int valid_name(const char *n);

static struct call begin(void *svc, const mica_http_req *req, mica_http_resp *resp, enum kc_op op)
{
	struct call c = {.s = svc, .req = req, .resp = resp, .op = op, .version = -1};
	c.key = mica_http_param(req, "name");
	c.policy = kc_policy_current(c.s);
	return c;
}

static void add_context(struct call *c, const char *canon, size_t len)
{
	uint32_t l = (uint32_t)len;
	unsigned char be[4] = {(unsigned char)(l >> 24), (unsigned char)(l >> 16),
			       (unsigned char)(l >> 8), (unsigned char)l};
	if (!c->ctx_sha && (c->ctx_sha = EVP_MD_CTX_new()) &&
	    EVP_DigestInit_ex(c->ctx_sha, mica_md_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(c->ctx_sha);
		c->ctx_sha = NULL;
	}
	if (c->ctx_sha) {
		EVP_DigestUpdate(c->ctx_sha, be, 4);
		EVP_DigestUpdate(c->ctx_sha, canon, len);
	}
}

/* Fills |rec| (borrowing from |c|) and feeds the anomaly detector. */
static void make_record(struct call *c, const char *result, int denied, kc_audit_record *rec)
{
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];
	unsigned char md[32];
	const char *principal = c->req->peer ? c->req->peer : "-";

	if (c->ctx_sha && (EVP_DigestFinal_ex(c->ctx_sha, md, NULL) != 1 ||
			   mica_hex_encode(md, sizeof(md), c->ctx_hash, sizeof(c->ctx_hash)) != 0))
		snprintf(c->ctx_hash, sizeof(c->ctx_hash), "unavailable");
	memset(rec, 0, sizeof(*rec));
	rec->ts_us = now_us();
	rec->principal = principal;
	rec->client = c->req->client_ip;
	rec->op = kc_op_name(c->op);
	/* A key name from the path is recorded only when well formed; a bad one
	 * is refused with 400 anyway and must not make the audit append fail. */
	rec->key_name = c->key && valid_name(c->key) ? c->key : NULL;
	rec->key_version = c->version;
	rec->context_hash = c->ctx_sha ? c->ctx_hash : NULL;
	rec->result = result;
	int nev = kc_anomaly_record(c->s->anomaly, principal, c->key, denied, mica_clock_ms(), ev);
	for (int i = 0; i < nev; i++)
		kc_alert(c->s, ev[i].kind == KC_ALERT_RATE ? "rate_anomaly" : "denial_burst",
			 principal, c->key,
			 json_pack("{s:I,s:i,s:I}", "count", (json_int_t)ev[i].count, "threshold",
				   (int)ev[i].threshold, "window_ms", (json_int_t)ev[i].window_ms));
}

/* The failure of a record: an alert, and 503 in place of the reply. */
static void audit_failed(kc_service *s, mica_http_resp *resp, const kc_audit_record *rec, int err)
{
	kc_alert(s, "audit_write_failure", rec->principal, rec->key_name,
		 json_pack("{s:s,s:s}", "operation", rec->op, "error", mica_strerror(err)));
	mica_http_reply_error(resp, 503, "audit_unavailable",
			      "the request could not be audited, so it was not answered");
}

/* Writes the audit record and waits for its commit. Returns 0, or
 * MICA_EAUDIT after replacing the reply with 503. */
static int record(struct call *c, const char *result, int denied)
{
	kc_audit_record rec;
	make_record(c, result, denied, &rec);
	int err = kc_audit_append(c->s->audit, &rec, NULL);
	if (err) {
		audit_failed(c->s, c->resp, &rec, err);
		return MICA_EAUDIT;
	}
	return 0;
}

/* A deferred answer waiting for its record. */
struct pending {
	kc_service *s;
	mica_http_resp *resp;
	mica_http_deferred *deferred;
	char principal[128];
	char op[32];
	char key[KC_NAME_MAX + 1];
};

static void on_recorded(void *arg, int rc, uint64_t seq)
{
	struct pending *p = arg;
	(void)seq;
	if (rc) {
		kc_audit_record rec = {.principal = p->principal,
				       .op = p->op,
				       .key_name = p->key[0] ? p->key : NULL};
		audit_failed(p->s, p->resp, &rec, rc);
	}
	mica_http_finish(p->deferred);
	free(p);
}

/* Answers with what c->resp holds once the record committed: the reply is
 * deferred and the record queued; on_recorded() sends it, or 503. */
static void answer(struct call *c, const char *result, int denied)
{
	kc_audit_record rec;
	struct pending *p;
	int err;
	make_record(c, result, denied, &rec);
	if (!(p = calloc(1, sizeof(*p)))) {
		audit_failed(c->s, c->resp, &rec, MICA_ENOMEM);
		return;
	}
	p->s = c->s;
	p->resp = c->resp;
	snprintf(p->principal, sizeof(p->principal), "%s", rec.principal);
	snprintf(p->op, sizeof(p->op), "%s", rec.op);
	snprintf(p->key, sizeof(p->key), "%s", rec.key_name ? rec.key_name : "");
	p->deferred = mica_http_defer(c->req);
	if ((err = kc_audit_submit(c->s->audit, &rec, on_recorded, p)) != 0)
		on_recorded(p, err, 0);
}

static void done(struct call *c)
{
	kc_policy_unref(c->policy);
	c->policy = NULL;
	EVP_MD_CTX_free(c->ctx_sha);
	c->ctx_sha = NULL;
}

/* For operations that change state: records the attempt BEFORE the change,
 * so no change can happen unaudited. Returns 1 to go on; otherwise the
 * caller was answered 503 and must return. */
static int attempt(struct call *c)
{
	if (record(c, "attempt", 0) != 0) {
		done(c);
		return 0;
	}
	return 1;
}

static void reply(struct call *c, int status, json_t *body)
{
	mica_http_reply_json(c->resp, status, body);
	answer(c, "ok", 0);
	done(c);
}

static void reply_error(struct call *c, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Every error of a call goes out here: the problem as the reply
 * (mica_http_reply_problem), audited with its code as the result. */
static void reply_problem(struct call *c, mica_problem *p)
{
	const char *code = p->code ? p->code : "internal_error"; /* static */
	int denied = p->status == 403;
	mica_http_reply_problem(c->resp, p);
	answer(c, code, denied);
	done(c);
}

static void reply_error(struct call *c, int status, const char *code, const char *fmt, ...)
{
	mica_problem p = MICA_PROBLEM_INIT;
	va_list ap;
	va_start(ap, fmt);
	mica_problem_vsetf(&p, status, code, fmt, ap);
	va_end(ap);
	reply_problem(c, &p);
}

/* The call failed with |err|: |why| when the operation described it, else
 * the error as the MICA_ERRNO_MAP table says. */
static void reply_why(struct call *c, int err, mica_problem *why)
{
	if (!why->code)
		mica_problem_from_err(why, err, NULL);
	reply_problem(c, why);
}

/* The policy decision. Returns 1 when allowed; otherwise the call has been
 * answered (and audited) with 403. */
static int sealed_refusal(struct call *c);

static int allow(struct call *c)
{
	const char *p = c->req->peer;
	if (kc_service_sealed(c->s) && sealed_refusal(c))
		return 0;
	if (!c->policy) {
		reply_error(c, 503, "no_policy", "the key center has no active policy");
		return 0;
	}
	if (kc_policy_role(c->policy, p) == KC_ROLE_NONE) {
		kc_alert(c->s, "unknown_principal", p, c->key,
			 json_pack("{s:s,s:s}", "operation", kc_op_name(c->op), "client",
				   c->req->client_ip));
		reply_error(c, 403, "unknown_principal", "principal %s is not in the policy", p);
		return 0;
	}
	if (kc_policy_allows(c->policy, p, c->op, c->key) != 0) {
		reply_error(c, 403, "access_denied", "principal %s (%s) may not %s%s%s", p,
			    kc_role_name(kc_policy_role(c->policy, p)), kc_op_name(c->op),
			    c->key ? " key " : "", c->key ? c->key : "");
		return 0;
	}
	return 1;
}

static int valid_name(const char *n)
{
	size_t l = n ? strlen(n) : 0;
	if (l < 1 || l > KC_NAME_MAX ||
	    !((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= '0' && n[0] <= '9')))
		return 0;
	for (size_t i = 0; i < l; i++) {
		char ch = n[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
		      ch == '_' || ch == '-'))
			return 0;
	}
	return 1;
}

static json_t *info_json(const struct kc_key_info *i)
{
	json_t *versions = json_array();
	for (uint32_t v = 1; v <= i->latest; v++)
		json_array_append_new(versions, json_pack("{s:i,s:b}", "version", (int)v,
							  "decryptable", v >= i->min_decryption));
	return json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:b,s:o}", "name", i->name, "type", i->type,
			 "owner", i->owner, "latest_version", (int)i->latest,
			 "min_decryption_version", (int)i->min_decryption, "min_encryption_version",
			 (int)i->min_encryption, "deletion_allowed", i->deletion_allowed,
			 "versions", versions);
}

/* The members a body may hold (lib/body.h); their values are checked by
 * the handlers, with their own codes. Returns 1, or answers 400
 * unknown_field (audited) and returns 0. */
static int body_ok(struct call *c, const mica_body_field *members, size_t n)
{
	mica_problem p = MICA_PROBLEM_INIT;
	int err = mica_body_fields(c->req->json, members, n, NULL, &p);
	if (err)
		reply_why(c, err, &p);
	return err == 0;
}

static const mica_body_field key_create_members[] = {{"type", MICA_BODY_ANY, false, 0},
						     {"owner", MICA_BODY_ANY, false, 0}};
static const mica_body_field key_config_members[] = {
	{"min_decryption_version", MICA_BODY_ANY, false, 0},
	{"min_encryption_version", MICA_BODY_ANY, false, 0},
	{"deletion_allowed", MICA_BODY_ANY, false, 0}};
static const mica_body_field policy_members[] = {{"document", MICA_BODY_ANY, false, 0}};
static const mica_body_field unseal_members[] = {{"share", MICA_BODY_ANY, false, 0}};

/* ---- key management ---------------------------------------------------------- */

static void h_key_create(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_KEY_CREATE);
	const char *type = json_string_value(json_object_get(req->json, "type"));
	const char *owner = json_string_value(json_object_get(req->json, "owner"));
	struct kc_key_info info;
	mica_problem why = MICA_PROBLEM_INIT;
	int err;

	if (!allow(&c) || !body_ok(&c, MICA_BODY_FIELDS(key_create_members)))
		return;
	if (!valid_name(c.key))
		return reply_error(
			&c, 400, "bad_key_name",
			"key names are 1-64 of a-z 0-9 . _ - starting with a letter or digit");
	if (!type)
		type = "aes256-gcm";
	if (strcmp(type, "aes256-gcm") != 0 && strcmp(type, "aes128-gcm") != 0)
		return reply_error(&c, 400, "bad_key_type",
				   "type must be aes256-gcm or aes128-gcm");
	if (!owner || !valid_name(owner) || strlen(owner) > KC_SERVICE_MAX || strchr(owner, '.'))
		return reply_error(&c, 400, "bad_owner",
				   "owner must name the service that owns the key");
	if (!attempt(&c))
		return;
	err = kc_key_create(c.s, c.key, type, owner, &info);
	if (err == MICA_EEXISTS)
		return reply_error(&c, 409, "key_exists", "a key named %s already exists", c.key);
	if (err)
		return reply_why(&c, err, &why);
	c.version = 1;
	reply(&c, 201, info_json(&info));
}

static void h_key_get(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_KEY_READ);
	struct kc_key_info info;
	mica_problem why = MICA_PROBLEM_INIT;
	int err;
	if (!allow(&c))
		return;
	if ((err = kc_key_info(c.s, c.key, &info)) == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_key", "no key named %s", c.key);
	if (err)
		return reply_why(&c, err, &why);
	reply(&c, 200, info_json(&info));
}

static void h_key_rotate(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_KEY_ROTATE);
	struct kc_key_info info;
	mica_problem why = MICA_PROBLEM_INIT;
	int err;
	if (!allow(&c))
		return;
	if (!attempt(&c))
		return;
	if ((err = kc_key_rotate(c.s, c.key, &info)) == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_key", "no key named %s", c.key);
	if (err)
		return reply_why(&c, err, &why);
	c.version = (int)info.latest;
	reply(&c, 200, info_json(&info));
}

/* Reads an optional non-negative integer member; -1 when absent. */
static int opt_int(json_t *body, const char *name, long *out)
{
	json_t *v = json_object_get(body, name);
	*out = -1;
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
		return -1;
	*out = (long)json_integer_value(v);
	return 0;
}

static void h_key_config(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_KEY_CONFIG);
	struct kc_key_info info;
	mica_problem why = MICA_PROBLEM_INIT;
	long mindec, minenc;
	json_t *del = json_object_get(req->json, "deletion_allowed");
	int err;
	if (!allow(&c) || !body_ok(&c, MICA_BODY_FIELDS(key_config_members)))
		return;
	if (opt_int(req->json, "min_decryption_version", &mindec) ||
	    opt_int(req->json, "min_encryption_version", &minenc))
		return reply_error(&c, 400, "bad_version",
				   "min_*_version must be non-negative integers");
	if (del && !json_is_boolean(del))
		return reply_error(&c, 400, "bad_field", "deletion_allowed must be a boolean");
	if (!attempt(&c))
		return;
	err = kc_key_configure(c.s, c.key, mindec, minenc, del ? json_is_true(del) : -1, &info,
			       why.msg, sizeof(why.msg));
	if (err == MICA_EINVAL)
		return reply_error(&c, 400, "bad_version", "%s", why.msg);
	if (err == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_key", "no key named %s", c.key);
	if (err)
		return reply_why(&c, err, &why);
	reply(&c, 200, info_json(&info));
}

static void h_key_delete(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_KEY_DELETE_REQUEST);
	struct kc_key_info info;
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	int err;
	if (!allow(&c))
		return;
	if ((err = kc_key_info(c.s, c.key, &info)) == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_key", "no key named %s", c.key);
	if (err)
		return reply_why(&c, err, &why);
	if (!info.deletion_allowed)
		return reply_error(&c, 409, "deletion_not_allowed",
				   "set deletion_allowed on key %s first", c.key);
	if (!attempt(&c))
		return;
	if ((err = kc_change_request(c.s, "delete_key", c.key, NULL, req->peer, &out)) != 0)
		return reply_why(&c, err, &why);
	reply(&c, 202, out);
}

/* ---- crypto --------------------------------------------------------------------- */

/* Items of a request: the body itself, or each element of batch_input.
 * Returns the number of items, or -1 after answering with an error. */
static int items_of(struct call *c, json_t **items, int *batch)
{
	json_t *bi = json_object_get(c->req->json, "batch_input");
	*batch = bi != NULL;
	if (!bi) {
		*items = json_pack("[O]", c->req->json);
		return 1;
	}
	if (!json_is_array(bi) || json_array_size(bi) == 0) {
		reply_error(c, 400, "bad_batch",
			    "batch_input must be a non-empty array of objects");
		return -1;
	}
	if (json_array_size(bi) > (size_t)c->s->cfg->max_batch_items) {
		reply_error(c, 413, "batch_too_large",
			    "batch_input holds %zu items; the limit is %d", json_array_size(bi),
			    c->s->cfg->max_batch_items);
		return -1;
	}
	*items = json_incref(bi);
	return (int)json_array_size(bi);
}

/* Canonical context of |item|, hashed into the audit record. */
static int item_context(struct call *c, json_t *item, char **canon, size_t *len, mica_problem *why)
{
	int err = kc_context_canonical(json_object_get(item, "context"), canon, len, why);
	if (err == 0)
		add_context(c, *canon, *len);
	return err;
}

static int decode_b64_field(json_t *item, const char *field, uint8_t **out, size_t *len,
			    mica_problem *why)
{
	const char *v = json_string_value(json_object_get(item, field));
	if (!v) {
		mica_problemf(why, 400, "missing_field", "%s (base64 string) is required", field);
		return MICA_EINVAL;
	}
	if (mica_base64_decode_alloc(v, strlen(v), out, len) != 0) {
		mica_problemf(why, 400, "bad_base64", "%s is not valid base64", field);
		return MICA_EBADENCODING;
	}
	return 0;
}

/* Runs |one| over every item; single requests answer with the item's result
 * or error, batches with batch_results. |members| lists what a body may
 * hold: batch_input first, then the members of one item, which is all a
 * batch item may hold (lib/body.h: anything else is unknown_field, for the
 * whole request or for that item). */
typedef int (*item_fn)(struct call *c, json_t *item, json_t **result, mica_problem *why);

static void run_items(struct call *c, item_fn one, const mica_body_field *members, size_t nmembers)
{
	json_t *items = NULL, *results;
	mica_problem bad = MICA_PROBLEM_INIT;
	int err = mica_body_fields(c->req->json, members, nmembers, NULL, &bad);
	if (err)
		return reply_why(c, err, &bad);
	int batch, n = items_of(c, &items, &batch);
	if (n < 0)
		return;
	results = json_array();
	for (int i = 0; i < n; i++) {
		mica_problem why = MICA_PROBLEM_INIT;
		json_t *r = NULL;
		json_t *item = json_array_get(items, (size_t)i);
		err = json_is_object(item)
			      ? mica_body_fields(item, members + 1, nmembers - 1, NULL, &why)
			      : 0;
		if (!err)
			err = one(c, item, &r, &why);
		if (err == MICA_EWOULDBLOCK) {
			/* The key must be loaded, which an event thread does not
			 * wait for: the whole request starts again on the
			 * blocking pool. Nothing was answered, recorded or
			 * counted yet. */
			json_decref(items);
			json_decref(results);
			if (mica_http_run_blocking(c->req) == 0)
				done(c);
			else
				reply_error(c, 500, "internal_error",
					    "key %s is not loaded and no thread may load it",
					    c->key);
			return;
		}
		if (err && !batch) {
			json_decref(items);
			json_decref(results);
			return reply_why(c, err, &why);
		}
		if (err) {
			if (!why.code)
				mica_problem_from_err(&why, err, NULL);
			r = mica_problem_json(&why);
			mica_problem_cleanup(&why);
		}
		json_array_append_new(results, r);
	}
	json_decref(items);
	if (batch)
		reply(c, 200, json_pack("{s:o}", "batch_results", results));
	else {
		json_t *only = json_incref(json_array_get(results, 0));
		json_decref(results);
		reply(c, 200, only);
	}
}

static int one_encrypt(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	uint8_t *pt = NULL;
	size_t pl = 0, cl = 0;
	char *canon = NULL, *ct = NULL;
	uint32_t used = 0;
	long kv;
	int err = decode_b64_field(item, "plaintext", &pt, &pl, why);
	if (!err)
		err = item_context(c, item, &canon, &cl, why);
	if (!err && opt_int(item, "key_version", &kv) != 0) {
		mica_problemf(why, 400, "bad_version", "key_version must be a positive integer");
		err = MICA_EINVAL;
	}
	if (!err)
		err = kc_op_encrypt(c->s, c->key, kv > 0 ? (uint32_t)kv : 0, pt, pl, canon, cl, &ct,
				    &used, why);
	if (!err) {
		c->version = (int)used;
		*result = json_pack("{s:s,s:i}", "ciphertext", ct, "key_version", (int)used);
	}
	if (pt) {
		mica_wipe(pt, pl);
		free(pt);
	}
	free(canon);
	free(ct);
	return err;
}

static void note_below_minimum(struct call *c, int err, mica_problem *why, uint32_t version)
{
	if (err == MICA_EDENIED && why->code && strcmp(why->code, "version_below_minimum") == 0)
		kc_alert(c->s, "decrypt_below_min_version", c->req->peer, c->key,
			 json_pack("{s:i}", "version", (int)version));
}

static int one_decrypt(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	const char *ct = json_string_value(json_object_get(item, "ciphertext"));
	uint8_t *pt = NULL;
	size_t pl = 0, cl = 0, bl = 0;
	char *canon = NULL, *b64 = NULL;
	uint32_t version = 0;
	int err;
	if (!ct) {
		mica_problemf(why, 400, "missing_field",
			      "ciphertext (kc:v<version>:...) is required");
		return MICA_EINVAL;
	}
	if ((err = item_context(c, item, &canon, &cl, why)) != 0)
		return err;
	err = kc_op_decrypt(c->s, c->key, ct, canon, cl, &pt, &pl, &version, why);
	note_below_minimum(c, err, why, version);
	if (!err)
		err = mica_base64_encode_alloc(pt, pl, &b64, &bl);
	if (!err) {
		c->version = (int)version;
		*result = json_pack("{s:s,s:i}", "plaintext", b64, "key_version", (int)version);
	}
	if (pt) {
		mica_wipe(pt, pl);
		free(pt);
	}
	if (b64) {
		mica_wipe(b64, strlen(b64));
		free(b64);
	}
	free(canon);
	return err;
}

static int one_rewrap(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	const char *ct = json_string_value(json_object_get(item, "ciphertext"));
	uint8_t *pt = NULL;
	size_t pl = 0, cl = 0;
	char *canon = NULL, *out = NULL;
	uint32_t version = 0, used = 0;
	int err;
	if (!ct) {
		mica_problemf(why, 400, "missing_field",
			      "ciphertext (kc:v<version>:...) is required");
		return MICA_EINVAL;
	}
	if ((err = item_context(c, item, &canon, &cl, why)) != 0)
		return err;
	err = kc_op_decrypt(c->s, c->key, ct, canon, cl, &pt, &pl, &version, why);
	note_below_minimum(c, err, why, version);
	if (!err)
		err = kc_op_encrypt(c->s, c->key, 0, pt, pl, canon, cl, &out, &used, why);
	if (!err) {
		c->version = (int)used;
		*result = json_pack("{s:s,s:i}", "ciphertext", out, "key_version", (int)used);
	}
	if (pt) {
		mica_wipe(pt, pl);
		free(pt);
	}
	free(canon);
	free(out);
	return err;
}

static int one_datakey(struct call *c, json_t *item, json_t **result, mica_problem *why,
		       int with_plaintext)
{
	json_t *bits_j = json_object_get(item, "bits");
	int bits = bits_j ? (int)json_integer_value(bits_j) : 256;
	uint8_t dk[32];
	char *canon = NULL, *ct = NULL, *b64 = NULL;
	size_t cl = 0, bl = 0;
	uint32_t used = 0;
	int err;
	if ((bits_j && !json_is_integer(bits_j)) || (bits != 128 && bits != 256)) {
		mica_problemf(why, 400, "bad_bits", "bits must be 128 or 256");
		return MICA_EINVAL;
	}
	if ((err = item_context(c, item, &canon, &cl, why)) != 0)
		return err;
	if ((err = mica_random(dk, (size_t)bits / 8)) != 0)
		goto out;
	if ((err = kc_op_encrypt(c->s, c->key, 0, dk, (size_t)bits / 8, canon, cl, &ct, &used,
				 why)))
		goto out;
	c->version = (int)used;
	if (with_plaintext) {
		if ((err = mica_base64_encode_alloc(dk, (size_t)bits / 8, &b64, &bl)) != 0)
			goto out;
		*result = json_pack("{s:s,s:s,s:i}", "plaintext", b64, "ciphertext", ct,
				    "key_version", (int)used);
	} else {
		*result = json_pack("{s:s,s:i}", "ciphertext", ct, "key_version", (int)used);
	}
out:
	mica_wipe(dk, sizeof(dk));
	if (b64) {
		mica_wipe(b64, bl);
		free(b64);
	}
	free(canon);
	free(ct);
	return err;
}

static int one_datakey_plain(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	return one_datakey(c, item, result, why, 1);
}

static int one_datakey_wrapped(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	return one_datakey(c, item, result, why, 0);
}

static int one_hmac(struct call *c, json_t *item, json_t **result, mica_problem *why)
{
	uint8_t *in = NULL;
	size_t il = 0;
	char *mac = NULL;
	uint32_t used = 0;
	long kv;
	int err = decode_b64_field(item, "input", &in, &il, why);
	if (!err && opt_int(item, "key_version", &kv) != 0) {
		mica_problemf(why, 400, "bad_version", "key_version must be a positive integer");
		err = MICA_EINVAL;
	}
	if (!err)
		err = kc_op_hmac(c->s, c->key, kv > 0 ? (uint32_t)kv : 0, in, il, &mac, &used, why);
	if (!err) {
		c->version = (int)used;
		*result = json_pack("{s:s,s:i}", "hmac", mac, "key_version", (int)used);
	}
	if (in) {
		mica_wipe(in, il);
		free(in);
	}
	free(mac);
	return err;
}

/* The members of each crypto body: batch_input, then an item's (their
 * values are checked by the one_* functions, with their own codes). */
#define ANY(name)                                                                                  \
	{                                                                                          \
		name, MICA_BODY_ANY, false, 0                                                      \
	}
static const mica_body_field encrypt_members[] = {ANY("batch_input"), ANY("plaintext"),
						  ANY("context"), ANY("key_version")};
static const mica_body_field decrypt_members[] = {ANY("batch_input"), ANY("ciphertext"),
						  ANY("context")};
static const mica_body_field datakey_members[] = {ANY("batch_input"), ANY("bits"), ANY("context")};
static const mica_body_field hmac_members[] = {ANY("batch_input"), ANY("input"),
					       ANY("key_version")};

#define CRYPTO_HANDLER(fn, op, one, members)                                                       \
	static void fn(const mica_http_req *req, mica_http_resp *resp, void *svc)                  \
	{                                                                                          \
		struct call c = begin(svc, req, resp, op);                                         \
		if (allow(&c))                                                                     \
			run_items(&c, one, MICA_BODY_FIELDS(members));                             \
	}
CRYPTO_HANDLER(h_encrypt, KC_OP_ENCRYPT, one_encrypt, encrypt_members)
CRYPTO_HANDLER(h_decrypt, KC_OP_DECRYPT, one_decrypt, decrypt_members)
CRYPTO_HANDLER(h_rewrap, KC_OP_REWRAP, one_rewrap, decrypt_members)
CRYPTO_HANDLER(h_datakey_plain, KC_OP_DATAKEY, one_datakey_plain, datakey_members)
CRYPTO_HANDLER(h_datakey_wrapped, KC_OP_DATAKEY, one_datakey_wrapped, datakey_members)
CRYPTO_HANDLER(h_hmac, KC_OP_HMAC, one_hmac, hmac_members)

/* ---- policy, dual control, alerts, audit ------------------------------------------------- */

static void h_policy_get(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_POLICY_READ);
	if (!allow(&c))
		return;
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *doc = NULL;
	int err = kc_policy_active_document(c.s, &doc);
	if (err)
		return reply_why(&c, err, &why);
	reply(&c, 200, doc);
}

static void h_policy_request(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_POLICY_REQUEST);
	json_t *doc = json_object_get(req->json, "document"), *out = NULL;
	mica_problem why = MICA_PROBLEM_INIT;
	kc_policy *candidate = NULL;
	char err_msg[200], *text;
	int err;
	if (!allow(&c) || !body_ok(&c, MICA_BODY_FIELDS(policy_members)))
		return;
	if (!json_is_object(doc))
		return reply_error(&c, 400, "missing_field",
				   "document (the new policy) is required");
	if (!(text = json_dumps(doc, JSON_COMPACT)))
		return reply_error(&c, 500, "internal_error", "out of memory");
	err = kc_policy_parse(text, strlen(text), &candidate, err_msg, sizeof(err_msg));
	free(text);
	kc_policy_unref(candidate);
	if (err)
		return reply_error(&c, 400, "invalid_policy", "%s", err_msg);
	if (json_integer_value(json_object_get(doc, "version")) <= kc_policy_version(c.policy))
		return reply_error(&c, 409, "stale_policy_version",
				   "the new policy's version must be above %d",
				   kc_policy_version(c.policy));
	kc_alert(c.s, "officer_action", req->peer, NULL,
		 json_pack("{s:s}", "action", "policy change requested"));
	if (!attempt(&c))
		return;
	if ((err = kc_change_request(c.s, "set_policy", "policy", doc, req->peer, &out)) != 0)
		return reply_why(&c, err, &why);
	reply(&c, 202, out);
}

/* The {id} of /v1/requests/{id}: a positive int64, never clamped. Returns 0,
 * or answers 400 (bad_request_id, request_id_out_of_range) and returns -1. */
static int request_id(struct call *c, int64_t *id)
{
	int err = mica_http_param_int64(c->req, "id", 1, INT64_MAX, id);
	if (err == MICA_ERANGE)
		reply_error(c, 400, "request_id_out_of_range",
			    "request ids are 1..9223372036854775807");
	else if (err)
		reply_error(c, 400, "bad_request_id", "request ids are positive integers");
	return err ? -1 : 0;
}

/* Query argument |name| as an integer in [min, max] (absent: |def|).
 * Returns 0, or answers 400 bad_query_argument naming it and returns -1. */
static int query_int(struct call *c, const char *name, int64_t min, int64_t max, int64_t def,
		     int64_t *out)
{
	int err = mica_http_query_int64(c->req, name, min, max, def, out);
	if (err)
		reply_error(c, 400, "bad_query_argument", "%s must be an integer in %lld..%lld%s",
			    name, (long long)min, (long long)max,
			    err == MICA_ERANGE ? " (this one is out of range)" : "");
	return err ? -1 : 0;
}

static void h_request_approve(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_APPROVE);
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	int64_t id;
	int err;
	if (!allow(&c))
		return;
	if (request_id(&c, &id) != 0)
		return;
	kc_alert(c.s, "officer_action", req->peer, NULL,
		 json_pack("{s:s,s:I}", "action", "approve", "request_id", (json_int_t)id));
	if (!attempt(&c))
		return;
	err = kc_change_approve(c.s, id, req->peer, &out);
	if (err == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_request", "no change request %lld",
				   (long long)id);
	if (err == MICA_EEXISTS)
		return reply_error(
			&c, 409, "already_approved",
			"officer %s already approved request %lld; a second officer must",
			req->peer, (long long)id);
	if (err == MICA_ESTATE)
		return reply_error(&c, 409, "request_closed", "request %lld is no longer pending",
				   (long long)id);
	if (err)
		return reply_why(&c, err, &why);
	reply(&c, 200, out);
}

static int may_see_requests(struct call *c)
{
	/* Officers approve; key admins follow their deletion requests. */
	if (kc_service_sealed(c->s) && sealed_refusal(c))
		return 0;
	if (kc_policy_allows(c->policy, c->req->peer, KC_OP_APPROVE, NULL) == 0)
		return 1;
	c->op = KC_OP_KEY_DELETE_REQUEST;
	return allow(c);
}

static void h_request_get(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_APPROVE);
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	int64_t id;
	int err;
	if (!c.policy)
		return (void)allow(&c);
	if (!may_see_requests(&c))
		return;
	if (request_id(&c, &id) != 0)
		return;
	if ((err = kc_change_get(c.s, id, &out)) == MICA_ENOTFOUND)
		return reply_error(&c, 404, "unknown_request", "no change request %lld",
				   (long long)id);
	if (err)
		return reply_why(&c, err, &why);
	reply(&c, 200, out);
}

static void h_requests(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_APPROVE);
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	int err;
	if (!c.policy)
		return (void)allow(&c);
	if (!may_see_requests(&c))
		return;
	if ((err = kc_change_list(c.s, "pending", &out)) != 0)
		return reply_why(&c, err, &why);
	reply(&c, 200, out);
}

static void h_alerts(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_ALERT_READ);
	mica_problem why = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	int64_t after;
	int err;
	if (!allow(&c))
		return;
	if (query_int(&c, "after", 0, INT64_MAX, 0, &after) != 0)
		return;
	if ((err = kc_alerts_list(c.s, after, 500, &out)) != 0)
		return reply_why(&c, err, &why);
	reply(&c, 200, out);
}

/* Audit records after |after| (seq), for auditors reading online; offline
 * verification uses `mica audit export` and `mica audit verify`. */
static void h_audit(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_AUDIT_READ);
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char a[24], l[16];
	int64_t after, limit;
	json_t *list;
	int err;
	if (!allow(&c))
		return;
	if (query_int(&c, "after", 0, INT64_MAX, 0, &after) != 0 ||
	    query_int(&c, "limit", 1, 1000, 1000, &limit) != 0)
		return;
	snprintf(a, sizeof(a), "%lld", (long long)after);
	snprintf(l, sizeof(l), "%lld", (long long)limit);
	const char *p[2] = {a, l};
	err = db ? mica_db_exec(db,
				"SELECT seq, ts_us, principal, client, op, key_name, key_version,"
				" context_hash, result, encode(hash, 'hex') FROM keycenter.audit"
				" WHERE seq > $1 ORDER BY seq LIMIT $2",
				2, p, &res)
		 : MICA_EDBCONN;
	if (err) {
		mica_problem why = MICA_PROBLEM_INIT;
		return reply_why(&c, err, &why);
	}
	list = json_array();
	for (int r = 0; r < PQntuples(res); r++) {
		json_t *o = json_object();
		static const char *const cols[] = {"seq",    "ts_us", "principal",   "client",
						   "op",     "key",   "key_version", "context_hash",
						   "result", "hash"};
		for (int k = 0; k < 10; k++) {
			const char *v = mica_db_get(res, r, k);
			int64_t n = 0;
			/* seq, ts_us and key_version are integers; a value that
			 * does not parse is shown as null rather than as 0. */
			int numeric = k == 0 || k == 1 || k == 6;
			json_object_set_new(o, cols[k],
					    !v	       ? json_null()
					    : !numeric ? json_string(v)
					    : mica_db_get_int64(res, r, k, &n) == 0
						    ? json_integer(n)
						    : json_null());
		}
		json_array_append_new(list, o);
	}
	PQclear(res);
	reply(&c, 200, json_pack("{s:o}", "records", list));
}

/* Runs the audit MAC self-check now (`mica audit verify --mac`); a failure
 * also raises its alert. 200 with the verdict either way: the request
 * worked, the log may not have. */
static void h_audit_selfcheck(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	struct call c = begin(svc, req, resp, KC_OP_AUDIT_READ);
	uint64_t n = 0, bad = 0;
	if (!allow(&c))
		return;
	int err = kc_audit_selfcheck(c.s, &n, &bad);
	if (err && err != MICA_EAUTH && err != MICA_ECHECKSUM) {
		mica_problem why = MICA_PROBLEM_INIT;
		return reply_why(&c, err, &why);
	}
	reply(&c, 200,
	      json_pack("{s:s,s:I,s:I}", "result",
			!err		    ? "ok"
			: err == MICA_EAUTH ? "bad_mac"
					    : "bad_hash",
			"records", (json_int_t)n, "bad_seq", (json_int_t)bad));
}

/* A refusal of the HTTP layer waiting for its record. */
struct refusal {
	kc_service *s;
	mica_http_deferred *done;
	int status;
	char principal[128];
	char op[48];
};

static void on_refusal_recorded(void *arg, int rc, uint64_t seq)
{
	struct refusal *r = arg;
	(void)seq;
	if (rc)
		kc_alert(r->s, "audit_write_failure", r->principal, NULL,
			 json_pack("{s:s,s:i}", "operation", r->op, "status", r->status));
	mica_http_refusal_done(r->done, rc == 0);
	free(r);
}

/* ---- sealed Key Center (issue 18; unseal.c) ------------------------------- */

/* A key operation while sealed: 503 sealed, journaled instead of audited
 * (there is no MAC key yet; unseal.c puts the journal into the chain on
 * unseal). Returns 1 when answered, 0 if the service was unsealed
 * meanwhile and the call goes on as usual. */
static int sealed_refusal(struct call *c)
{
	kc_audit_record rec = {.ts_us = now_us(),
			       .principal = c->req->peer ? c->req->peer : "-",
			       .client = c->req->client_ip,
			       .op = kc_op_name(c->op),
			       .key_name = c->key && valid_name(c->key) ? c->key : NULL,
			       .result = "sealed"};
	if (kc_sealed_record(c->s, &rec) != 0)
		return 0;
	mica_http_reply_error(c->resp, 503, "sealed",
			      "the key center is sealed: security officers must unseal it first");
	done(c);
	return 1;
}

static int refusal_while_sealed(kc_service *s, const char *method, const char *peer,
				const char *client_ip, const char *code, mica_http_deferred *done)
{
	char op[48];
	snprintf(op, sizeof(op), "http_%s", method ? method : "?");
	for (char *o = op; *o; o++)
		*o = (char)(*o >= 'A' && *o <= 'Z' ? *o - 'A' + 'a' : *o);
	kc_audit_record rec = {.ts_us = now_us(),
			       .principal = peer ? peer : "-",
			       .client = client_ip && *client_ip ? client_ip : "-",
			       .op = op,
			       .result = code};
	if (kc_sealed_record(s, &rec) != 0)
		return 0;
	mica_http_refusal_done(done, 1);
	return 1;
}

/* Answers |resp| (already set) once a record of |op| with |result| is in
 * the chain, or journaled while sealed. */
static void sys_answer(kc_service *s, const mica_http_req *req, mica_http_resp *resp,
		       const char *op, const char *result)
{
	kc_audit_record rec = {.ts_us = now_us(),
			       .principal = req->peer ? req->peer : "-",
			       .client = req->client_ip,
			       .op = op,
			       .result = result};
	struct pending *p;
	int err;
	if (kc_service_sealed(s) && kc_sealed_record(s, &rec) == 0)
		return;
	if (!(p = calloc(1, sizeof(*p)))) {
		audit_failed(s, resp, &rec, MICA_ENOMEM);
		return;
	}
	p->s = s;
	p->resp = resp;
	snprintf(p->principal, sizeof(p->principal), "%s", rec.principal);
	snprintf(p->op, sizeof(p->op), "%s", op);
	p->deferred = mica_http_defer(req);
	if ((err = kc_audit_submit(s->audit, &rec, on_recorded, p)) != 0)
		on_recorded(p, err, 0);
}

/* POST /v1/sys/unseal {"share": "mks1-..."}: one officer's share. */
static void h_unseal(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	kc_service *s = svc;
	struct kc_unseal_reply out;
	const char *share = json_string_value(json_object_get(req->json, "share"));
	mica_problem bad = MICA_PROBLEM_INIT;

	if (mica_body_fields(req->json, MICA_BODY_FIELDS(unseal_members), NULL, &bad) != 0) {
		const char *code = bad.code;
		mica_http_reply_problem(resp, &bad);
		return sys_answer(s, req, resp, "unseal", code);
	}
	if (kc_unseal_submit(s, req->peer, req->client_ip, share, &out) == MICA_ESTATE) {
		mica_http_reply_error(resp, 409, "already_unsealed",
				      "the key center is not sealed");
		return sys_answer(s, req, resp, "unseal", "already_unsealed");
	}
	if (out.why.code) {
		out.why.status = out.status;
		mica_http_reply_problem(resp, &out.why);
	} else
		mica_http_reply_json(resp, out.status, out.body);
}

/* GET /v1/sys/seal-status: sealed or not, and the progress of an unseal. */
static void h_seal_status(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	mica_http_reply_json(resp, 200, kc_seal_status(svc));
	sys_answer(svc, req, resp, "seal_status", "ok");
}

/* Requests the HTTP layer refuses before any handler runs (certificates,
 * unknown routes, malformed or oversized bodies) are audited too, and
 * answered once their record committed, like every other request. */
void kc_audit_refusal(void *svc, const char *method, const char *path, const char *peer,
		      const char *client_ip, int status, const char *code, mica_http_deferred *done)
{
	kc_service *s = svc;
	kc_audit_record rec = {0};
	struct refusal *r;
	int err;
	(void)path;
	if (kc_service_sealed(s) && refusal_while_sealed(s, method, peer, client_ip, code, done))
		return;
	r = calloc(1, sizeof(*r));
	if (!r) {
		mica_http_refusal_done(done, 0);
		return;
	}
	r->s = s;
	r->done = done;
	r->status = status;
	snprintf(r->principal, sizeof(r->principal), "%s", peer ? peer : "-");
	snprintf(r->op, sizeof(r->op), "http_%s", method ? method : "?");
	for (char *o = r->op; *o; o++)
		*o = (char)(*o >= 'A' && *o <= 'Z' ? *o - 'A' + 'a' : *o);
	rec.ts_us = now_us();
	rec.principal = r->principal;
	rec.client = client_ip && *client_ip ? client_ip : "-";
	rec.op = r->op;
	rec.result = code;
	if ((err = kc_audit_submit(s->audit, &rec, on_refusal_recorded, r)) != 0)
		on_refusal_recorded(r, err, 0);
}

/* J: JSON body, P: client certificate required, B: the handler blocks (PostgreSQL, the HSM, an
 * attempt record waiting for its commit) and runs on the blocking pool. The crypto routes run on
 * the event threads: keys come from the in-memory cache (a miss, or the refresh of a stale entry,
 * moves the request to the blocking pool, see run_items()) and the answer waits for its record
 * without a thread. */
#define J MICA_ROUTE_JSON
#define P MICA_ROUTE_PEER
#define B MICA_ROUTE_BLOCKING
const mica_http_route kc_routes[] = {
	{"POST", "/v1/keys/{name}", h_key_create, J | P | B},
	{"GET", "/v1/keys/{name}", h_key_get, P | B},
	{"DELETE", "/v1/keys/{name}", h_key_delete, P | B},
	{"POST", "/v1/keys/{name}/rotate", h_key_rotate, P | B},
	{"POST", "/v1/keys/{name}/config", h_key_config, J | P | B},
	{"POST", "/v1/encrypt/{name}", h_encrypt, J | P},
	{"POST", "/v1/decrypt/{name}", h_decrypt, J | P},
	{"POST", "/v1/rewrap/{name}", h_rewrap, J | P},
	{"POST", "/v1/datakey/plaintext/{name}", h_datakey_plain, J | P},
	{"POST", "/v1/datakey/wrapped/{name}", h_datakey_wrapped, J | P},
	{"POST", "/v1/hmac/{name}", h_hmac, J | P},
	{"GET", "/v1/policy", h_policy_get, P | B},
	{"POST", "/v1/policy", h_policy_request, J | P | B},
	{"GET", "/v1/requests", h_requests, P | B},
	{"GET", "/v1/requests/{id}", h_request_get, P | B},
	{"POST", "/v1/requests/{id}/approve", h_request_approve, P | B},
	{"GET", "/v1/alerts", h_alerts, P | B},
	{"GET", "/v1/audit", h_audit, P | B},
	{"POST", "/v1/audit/selfcheck", h_audit_selfcheck, P | B},
	/* The seal (issue 18): officers unseal the Key Center with their shares. */
	{"POST", "/v1/sys/unseal", h_unseal, J | P | B},
	{"GET", "/v1/sys/seal-status", h_seal_status, P | B},
};
#undef J
#undef P
#undef B
const size_t kc_routes_len = sizeof(kc_routes) / sizeof(kc_routes[0]);
