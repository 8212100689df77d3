/* routes.c - the account service's HTTP API (docs/api/account.md). Handlers
 * only read the request, authenticate it where needed, call one flow and
 * turn its result or mica_problem into JSON. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account/account.h"
#include "clock.h"
#include "log.h"

/* The session store (PostgreSQL, and Redis for the revocation tombstones)
 * failed with |err|: 503 naming which, as every account 503 does. */
static void store_unavailable(mica_http_resp *resp, int err)
{
	mica_problem p = MICA_PROBLEM_INIT;
	mica_problem_unavailable(&p, err == MICA_EKVCONN ? "redis" : "database");
	mica_http_reply_problem(resp, &p);
}

static void finish(mica_http_resp *resp, int err, int ok_status, json_t *out, mica_problem *f)
{
	if (err || !out) {
		json_decref(out);
		mica_http_reply_problem(resp, f);
		return;
	}
	mica_http_reply_json(resp, ok_status, out);
}

/* Authenticates the bearer token; on failure the reply is set and 0 returned. */
static int signed_in(acct_service *s, const mica_http_req *req, mica_http_resp *resp,
		     struct acct_session *sess)
{
	int err = acct_session_check(s, mica_http_header(req, "Authorization"), sess);
	if (err == 0)
		return 1;
	/* On an event thread (GET /v1/session) a check the in-process cache
	 * cannot answer needs Redis or PostgreSQL: it runs again on the
	 * blocking pool, and nothing is answered here. */
	if (err == MICA_EWOULDBLOCK && mica_http_run_blocking(req) == 0)
		return 0;
	if (err == MICA_EINVAL || err == MICA_EDENIED) {
		mica_http_reply_error(
			resp, 401, "invalid_token",
			err == MICA_EINVAL
				? "send Authorization: Bearer <session token>"
				: "the session is not active (revoked, expired or idle)");
		mica_http_add_header(resp, "WWW-Authenticate", "Bearer realm=\"mica\"");
	} else {
		store_unavailable(resp, err);
	}
	return 0;
}

#define PUBLIC_FLOW(fn, call)                                                                      \
	static void fn(const mica_http_req *req, mica_http_resp *resp, void *svc)                  \
	{                                                                                          \
		acct_service *s = svc;                                                             \
		mica_problem f = {0};                                                              \
		json_t *out = NULL;                                                                \
		(void)s;                                                                           \
		int err = call;                                                                    \
		finish(resp, err, 200, out, &f);                                                   \
	}

PUBLIC_FLOW(h_register_start, acct_register_start(s, req->json, req->client_ip, &out, &f))
PUBLIC_FLOW(h_login, acct_login(s, req->json, req->client_ip, &out, &f))
PUBLIC_FLOW(h_reset_start, acct_reset_start(s, req->json, req->client_ip, &out, &f))
PUBLIC_FLOW(h_reset_complete, acct_reset_complete(s, req->json, &out, &f))
PUBLIC_FLOW(h_stepup_send, acct_stepup_send(s, mica_http_param(req, "id"), req->json, &out, &f))
PUBLIC_FLOW(h_stepup_verify, acct_stepup_verify(s, mica_http_param(req, "id"), req->json, &out, &f))

static void h_register_complete(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	mica_problem f = {0};
	json_t *out = NULL;
	int err = acct_register_complete(svc, req->json, req->client_ip, &out, &f);
	finish(resp, err, 201, out, &f);
}

#define SIGNED_IN(fn, call)                                                                        \
	static void fn(const mica_http_req *req, mica_http_resp *resp, void *svc)                  \
	{                                                                                          \
		acct_service *s = svc;                                                             \
		struct acct_session sess;                                                          \
		mica_problem f = {0};                                                              \
		json_t *out = NULL;                                                                \
		if (!signed_in(s, req, resp, &sess))                                               \
			return;                                                                    \
		int err = call;                                                                    \
		finish(resp, err, 200, out, &f);                                                   \
	}

SIGNED_IN(h_me, acct_me(s, &sess, &out, &f))
SIGNED_IN(h_password_change, acct_password_change(s, &sess, req->json, &out, &f))
SIGNED_IN(h_phone_start, acct_bind_start(s, &sess, "phone", req->json, &out, &f))
SIGNED_IN(h_phone_verify, acct_bind_complete(s, &sess, "phone", req->json, &out, &f))
SIGNED_IN(h_phone_delete, acct_unbind(s, &sess, "phone", &out, &f))
SIGNED_IN(h_email_start, acct_bind_start(s, &sess, "email", req->json, &out, &f))
SIGNED_IN(h_email_verify, acct_bind_complete(s, &sess, "email", req->json, &out, &f))
SIGNED_IN(h_email_delete, acct_unbind(s, &sess, "email", &out, &f))
SIGNED_IN(h_questions, acct_questions_set(s, &sess, req->json, &out, &f))
SIGNED_IN(h_cross_device, acct_cross_device_set(s, &sess, req->json, &out, &f))
SIGNED_IN(h_stepup_approve, acct_stepup_approve(s, &sess, mica_http_param(req, "id"), &out, &f))
SIGNED_IN(h_delete, acct_delete(s, &sess, &out, &f))

/* The caller's sessions; a failure names the store's dependency. */
static int session_list(acct_service *s, const struct acct_session *sess, json_t **out,
			mica_problem *f)
{
	int err = acct_session_list(s, sess->user_id, sess->id, out);
	return err ? acct_problem_dependency(f, err, "the session store") : 0;
}
SIGNED_IN(h_sessions, session_list(s, &sess, &out, &f))

/* The session the bearer token names, as its holder may see it: nothing
 * but the token check (cache first, session.c), so it is also the cheapest
 * authenticated request (bench/account). recent_auth says whether a
 * sensitive operation would go through now without a step-up. */
static void h_session_current(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	acct_service *s = svc;
	struct acct_session sess;
	if (!signed_in(s, req, resp, &sess))
		return;
	/* Formatted here rather than through jansson: this is the hottest route, and
	 * every field is a number or one of the fixed kinds "app" and "web". */
	char body[192];
	int n = snprintf(
		body, sizeof(body),
		"{\"session_id\":%lld,\"kind\":\"%s\",\"auth_at\":%lld,\"expires_at\":%lld,"
		"\"recent_auth\":%s}",
		(long long)sess.id, strcmp(sess.kind, "web") == 0 ? "web" : "app",
		(long long)sess.auth_at, (long long)sess.expires_at,
		acct_auth_recent(s, &sess) ? "true" : "false");
	mica_http_reply_raw(resp, 200, "application/json", strdup(body), (size_t)n);
}

static void h_session_delete(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	acct_service *s = svc;
	struct acct_session sess;
	int64_t id;
	int err;
	if (!signed_in(s, req, resp, &sess))
		return;
	err = mica_http_param_int64(req, "id", 1, INT64_MAX, &id);
	if (err == MICA_ERANGE) {
		mica_http_reply_error(resp, 400, "session_id_out_of_range",
				      "session ids are 1..9223372036854775807");
		return;
	}
	if (err) {
		mica_http_reply_error(resp, 400, "bad_session_id",
				      "session ids are positive integers");
		return;
	}
	err = acct_session_revoke(s, sess.user_id, id);
	if (err == MICA_ENOTFOUND)
		mica_http_reply_error(resp, 404, "unknown_session", "no active session %lld",
				      (long long)id);
	else if (err)
		store_unavailable(resp, err);
	else
		mica_http_reply_json(resp, 200, json_pack("{s:b}", "revoked", 1));
}

static void h_logout(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	acct_service *s = svc;
	struct acct_session sess;
	if (!signed_in(s, req, resp, &sess))
		return;
	int err = acct_session_revoke(s, sess.user_id, sess.id);
	if (err)
		store_unavailable(resp, err);
	else
		mica_http_reply_json(resp, 200, json_pack("{s:b}", "revoked", 1));
}

static void h_revoke_all(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	acct_service *s = svc;
	struct acct_session sess;
	mica_db *db = mica_db_thread();
	/* The body is optional ({"keep_current": true}), so the route is not
	 * MICA_ROUTE_JSON and the body is parsed here. */
	json_t *body = NULL;
	mica_body_value v[1];
	mica_problem f = {0};
	if (!signed_in(s, req, resp, &sess))
		return;
	if (req->body_len > 0) {
		json_error_t jerr;
		body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
		if (!json_is_object(body)) {
			json_decref(body);
			mica_http_reply_error(resp, 400, "malformed_json",
					      "the optional body is a JSON object");
			return;
		}
	}
	int err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_revoke_all), v, &f);
	json_decref(body);
	if (err) {
		mica_http_reply_problem(resp, &f);
		return;
	}
	err = db ? acct_session_revoke_all(s, db, sess.user_id, v[0].b ? sess.id : 0)
		 : MICA_EDBCONN;
	if (err)
		store_unavailable(resp, err);
	else
		mica_http_reply_json(resp, 200, json_pack("{s:b}", "revoked", 1));
}

/* RFC 7662-shaped token introspection, for service principals only. */
static void h_introspect(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	acct_service *s = svc;
	const char *list = s->cfg->introspect_principals;
	size_t pl = strlen(req->peer);
	mica_body_value v[1];
	mica_problem f = {0};
	json_t *out = NULL;
	int allowed = 0;
	for (const char *p = list; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t l = comma ? (size_t)(comma - p) : strlen(p);
		if (l == pl && strncmp(p, req->peer, l) == 0)
			allowed = 1;
		p = comma ? comma + 1 : p + l;
	}
	if (!allowed) {
		mica_http_reply_error(resp, 403, "access_denied",
				      "principal %s may not introspect tokens", req->peer);
		return;
	}
	if (mica_body_fields(req->json, MICA_BODY_FIELDS(acct_body_introspect), v, &f) != 0) {
		mica_http_reply_problem(resp, &f);
		return;
	}
	int err = acct_session_introspect(s, v[0].s, &out);
	if (err)
		store_unavailable(resp, err);
	else
		mica_http_reply_json(resp, 200, out);
}

/* B: the handler blocks (PostgreSQL, Argon2id, the Key Center, mail) and runs on the blocking
 * pool. GET /v1/session is only the token check, answered from the in-process session cache
 * on the event thread. */
#define J MICA_ROUTE_JSON
#define B MICA_ROUTE_BLOCKING
const mica_http_route acct_routes[] = {
	{"POST", "/v1/register/start", h_register_start, J | B},
	{"POST", "/v1/register/complete", h_register_complete, J | B},
	{"POST", "/v1/login", h_login, J | B},
	{"POST", "/v1/stepup/{id}/send", h_stepup_send, J | B},
	{"POST", "/v1/stepup/{id}/verify", h_stepup_verify, J | B},
	{"POST", "/v1/stepup/{id}/approve", h_stepup_approve, B},
	{"POST", "/v1/password/reset/start", h_reset_start, J | B},
	{"POST", "/v1/password/reset/complete", h_reset_complete, J | B},
	{"POST", "/v1/password/change", h_password_change, J | B},
	{"GET", "/v1/me", h_me, B},
	{"GET", "/v1/session", h_session_current, 0},
	{"GET", "/v1/sessions", h_sessions, B},
	{"DELETE", "/v1/sessions/{id}", h_session_delete, B},
	{"POST", "/v1/sessions/revoke-all", h_revoke_all, B},
	{"POST", "/v1/logout", h_logout, B},
	{"POST", "/v1/security/phone", h_phone_start, J | B},
	{"POST", "/v1/security/phone/verify", h_phone_verify, J | B},
	{"DELETE", "/v1/security/phone", h_phone_delete, B},
	{"POST", "/v1/security/email", h_email_start, J | B},
	{"POST", "/v1/security/email/verify", h_email_verify, J | B},
	{"DELETE", "/v1/security/email", h_email_delete, B},
	{"PUT", "/v1/security/questions", h_questions, J | B},
	{"PUT", "/v1/security/cross-device", h_cross_device, J | B},
	{"DELETE", "/v1/account", h_delete, B},
	{"POST", "/v1/introspect", h_introspect, J | B | MICA_ROUTE_PEER},
};
#undef J
#undef B
const size_t acct_routes_len = sizeof(acct_routes) / sizeof(acct_routes[0]);
