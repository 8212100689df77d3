/* routes.c - the cloud sync HTTP API (docs/api/cloudsync.md). Every route
 * but the module list needs a session of the account service
 * ("Authorization: Bearer <token>", lib/auth), and works on the signed-in
 * user's own collections only: no route takes a user id. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"
#include "log.h"

int cs_problem_dependency(mica_problem *p, int err, const char *what)
{
	return mica_problem_dependency(p, "cloudsync", err, what);
}

int cs_signed_in(cs_service *s, const char *authorization, bool basic, mica_http_resp *resp,
		 int64_t *uid)
{
	mica_auth_session sess;
	int err = mica_auth_validate(s->auth, authorization, &sess);
	if (err == 0) {
		*uid = sess.user_id;
		return 1;
	}
	if (err == MICA_EINVAL || err == MICA_EDENIED) {
		mica_http_reply_error(
			resp, 401, "invalid_token", "%s",
			err == MICA_EDENIED ? "the session is not active (revoked, expired or idle)"
			: basic ? "send Basic credentials whose password is a session token"
				: "send Authorization: Bearer <session token>");
		mica_http_add_header(resp, "WWW-Authenticate",
				     basic ? "Basic realm=\"mica\", charset=\"UTF-8\""
					   : "Bearer realm=\"mica\"");
		return 0;
	}
	MICA_LOG(MICA_LOG_ERROR, "cloudsync: checking a session failed: %s", mica_strerror(err));
	mica_problem p = MICA_PROBLEM_INIT;
	mica_problem_unavailable(&p, "account");
	mica_http_reply_problem(resp, &p);
	return 0;
}

/* The signed-in user and the module of the path; on failure the reply is
 * set and 0 returned. */
static int begin(cs_service *s, const mica_http_req *req, mica_http_resp *resp, int64_t *uid,
		 const char **module)
{
	if (!cs_signed_in(s, mica_http_header(req, "Authorization"), false, resp, uid))
		return 0;
	*module = mica_http_param(req, "module");
	if (!cs_module_known(*module)) {
		mica_http_reply_error(resp, 404, "unknown_module",
				      "no module %s (GET /v1/sync/modules lists them)", *module);
		return 0;
	}
	const char *id = mica_http_param(req, "id");
	if (id && !cs_record_id_ok(id)) {
		mica_http_reply_error(resp, 400, "bad_record_id",
				      "a record id is 1-128 of A-Z a-z 0-9 . _ ~ - starting with a"
				      " letter or digit");
		return 0;
	}
	return 1;
}

static void reply(mica_http_resp *resp, int err, int status, json_t *out, mica_problem *p)
{
	if (err)
		mica_http_reply_problem(resp, p);
	else
		mica_http_reply_json(resp, status, out);
}

static void add_etag(mica_http_resp *resp, int64_t version)
{
	char etag[32];
	snprintf(etag, sizeof(etag), "\"%" PRId64 "\"", version);
	mica_http_add_header(resp, "ETag", etag);
}

static void h_modules(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	(void)req;
	(void)svc;
	mica_http_reply_json(resp, 200, json_pack("{s:o}", "modules", cs_modules_json()));
}

static void h_changes(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid, since = 0, limit = 0;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	if (!begin(s, req, resp, &uid, &module))
		return;
	if (mica_http_query_int64(req, "since", 0, INT64_MAX, 0, &since) != 0) {
		mica_http_reply_error(
			resp, 400, "bad_token",
			"since: a token from an earlier answer (or 0 for everything)");
		return;
	}
	int64_t def = s->cfg->page_max < 100 ? s->cfg->page_max : 100;
	if (mica_http_query_int64(req, "limit", 1, s->cfg->page_max, def, &limit) != 0) {
		mica_http_reply_error(resp, 400, "bad_limit", "limit: 1 to %d", s->cfg->page_max);
		return;
	}
	int err = cs_changes(s, uid, module, since, (int)limit, &out, &p);
	reply(resp, err, 200, out, &p);
}

static void h_get(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	if (!begin(s, req, resp, &uid, &module))
		return;
	int err = cs_record_get(s, uid, module, mica_http_param(req, "id"), &out, &p);
	if (err == 0)
		add_etag(resp, json_integer_value(json_object_get(out, "version")));
	reply(resp, err, 200, out, &p);
}

/* One write through the batch path, answered with its own status. */
static void single_write(cs_service *s, const mica_http_req *req, mica_http_resp *resp, int64_t uid,
			 const char *module, cs_write *w)
{
	mica_problem p = MICA_PROBLEM_INIT;
	cs_result r;
	const char *im = mica_http_header(req, "If-Match");
	if (im && cs_parse_version(im, &w->if_match) != 0) {
		mica_http_reply_error(resp, 400, "bad_if_match",
				      "If-Match: the record's version as an entity tag, \"N\"");
		return;
	}
	w->has_if_match = im != NULL;
	w->id = mica_http_param(req, "id");
	if (cs_write_batch(s, uid, module, w, 1, true, &r, &p) != 0) {
		mica_http_reply_problem(resp, &p);
		return;
	}
	switch (r.status) {
	case CS_OK: {
		char seq[24];
		add_etag(resp, r.version);
		snprintf(seq, sizeof(seq), "%" PRId64, r.seq);
		mica_http_reply_json(resp, r.created ? 201 : 200,
				     json_pack("{s:s,s:I,s:s,s:b}", "id", w->id, "version",
					       (json_int_t)r.version, "token", seq, "deleted",
					       w->deleted));
		break;
	}
	case CS_CONFLICT:
		mica_problemf(&p, 409, "version_conflict", "%s; server holds the server's copy%s",
			      w->has_if_match
				      ? "the record is no longer at the version of If-Match"
				      : "the record exists (a write without If-Match creates)",
			      r.conflict_id[0] ? ", conflict_id the record keeping yours" : "");
		mica_problem_set_extra(&p, "server", json_incref(r.server));
		if (r.conflict_id[0])
			mica_problem_set_extra(&p, "conflict_id", json_string(r.conflict_id));
		mica_http_reply_problem(resp, &p);
		break;
	case CS_NOT_FOUND:
		mica_http_reply_error(resp, 404, "record_not_found", "%s has no record %s", module,
				      w->id);
		break;
	case CS_PRECONDITION:
		mica_http_reply_error(resp, 428, "precondition_required",
				      "send If-Match with the version being deleted");
		break;
	}
	cs_results_cleanup(&r, 1);
}

static void h_put(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	cs_write w = {0};
	if (!begin(s, req, resp, &uid, &module))
		return;
	if (cs_parse_put(req->json, s->cfg->record_max, &w, &p) != 0)
		mica_http_reply_problem(resp, &p);
	else
		single_write(s, req, resp, uid, module, &w);
	cs_writes_cleanup(&w, 1);
}

static void h_delete(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	cs_write w = {.deleted = true};
	if (begin(s, req, resp, &uid, &module))
		single_write(s, req, resp, uid, module, &w);
}

static const char *const result_names[] = {"ok", "conflict", "not_found", "precondition_required"};

static void h_batch(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	cs_write *w = NULL;
	cs_result *r = NULL;
	size_t n = 0;
	bool confirm = false;
	json_t *list = NULL;
	if (!begin(s, req, resp, &uid, &module))
		return;
	if (cs_parse_batch(req->json, (size_t)s->cfg->batch_max, s->cfg->record_max, &w, &n,
			   &confirm, &p) != 0) {
		mica_http_reply_problem(resp, &p);
		return;
	}
	if (!(r = calloc(n, sizeof(*r))) || !(list = json_array())) {
		mica_problemf(&p, 500, "internal_error", "out of memory");
		goto out;
	}
	if (cs_write_batch(s, uid, module, w, n, confirm, r, &p) != 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		char seq[24];
		snprintf(seq, sizeof(seq), "%" PRId64, r[i].seq);
		json_t *o =
			json_pack("{s:s,s:s}", "id", w[i].id, "status", result_names[r[i].status]);
		if (o && r[i].status == CS_OK) {
			json_object_set_new(o, "version", json_integer(r[i].version));
			json_object_set_new(o, "token", json_string(seq));
			json_object_set_new(o, "created", json_boolean(r[i].created));
		}
		if (o && r[i].server)
			json_object_set(o, "server", r[i].server);
		if (o && r[i].conflict_id[0])
			json_object_set_new(o, "conflict_id", json_string(r[i].conflict_id));
		if (!o || json_array_append_new(list, o) != 0) {
			mica_problemf(&p, 500, "internal_error", "out of memory");
			goto out;
		}
	}
	mica_http_reply_json(resp, 200, json_pack("{s:O}", "results", list));
out:
	if (p.code)
		mica_http_reply_problem(resp, &p);
	json_decref(list);
	if (r)
		cs_results_cleanup(r, n);
	free(r);
	cs_writes_cleanup(w, n);
	free(w);
}

static void h_bin(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	if (!begin(s, req, resp, &uid, &module))
		return;
	int err = cs_bin_list(s, uid, module, &out, &p);
	reply(resp, err, 200, out, &p);
}

static void h_restore(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	if (!begin(s, req, resp, &uid, &module))
		return;
	int err = cs_bin_restore(s, uid, module, mica_http_param(req, "id"), &out, &p);
	if (err == 0)
		add_etag(resp, json_integer_value(json_object_get(out, "version")));
	reply(resp, err, 200, out, &p);
}

static void h_bin_purge(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	cs_service *s = svc;
	int64_t uid;
	const char *module;
	long n = 0;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!begin(s, req, resp, &uid, &module))
		return;
	int err = cs_bin_purge(s, uid, module, mica_http_param(req, "id"), &n, &p);
	reply(resp, err, 200, err ? NULL : json_pack("{s:I}", "purged", (json_int_t)n), &p);
}

#define B MICA_ROUTE_BLOCKING
const mica_http_route cs_routes[] = {
	{"GET", "/v1/sync/modules", h_modules, 0},
	{"GET", "/v1/sync/{module}/changes", h_changes, B},
	{"GET", "/v1/sync/{module}/records/{id}", h_get, B},
	{"PUT", "/v1/sync/{module}/records/{id}", h_put, MICA_ROUTE_JSON | B},
	{"DELETE", "/v1/sync/{module}/records/{id}", h_delete, B},
	{"POST", "/v1/sync/{module}/batch", h_batch, MICA_ROUTE_JSON | B},
	{"GET", "/v1/sync/{module}/bin", h_bin, B},
	{"DELETE", "/v1/sync/{module}/bin", h_bin_purge, B},
	{"POST", "/v1/sync/{module}/bin/{id}/restore", h_restore, B},
	{"DELETE", "/v1/sync/{module}/bin/{id}", h_bin_purge, B},
	/* CardDAV over the contacts records (dav.c) */
	{"GET", "/.well-known/carddav", cs_dav_well_known, 0},
	{"PROPFIND", "/.well-known/carddav", cs_dav_well_known, 0},
	{"PROPFIND", "/dav", cs_dav_propfind_root, B},
	{"PROPFIND", "/dav/principal", cs_dav_propfind_principal, B},
	{"PROPFIND", "/dav/addressbooks", cs_dav_propfind_home, B},
	{"PROPFIND", "/dav/addressbooks/{book}", cs_dav_propfind_book, B},
	{"REPORT", "/dav/addressbooks/{book}", cs_dav_report, B},
	{"PROPFIND", "/dav/addressbooks/{book}/{file}", cs_dav_propfind_card, B},
	{"GET", "/dav/addressbooks/{book}/{file}", cs_dav_get_card, B},
	{"PUT", "/dav/addressbooks/{book}/{file}", cs_dav_put_card, B},
	{"DELETE", "/dav/addressbooks/{book}/{file}", cs_dav_delete_card, B},
};
#undef B
const size_t cs_routes_len = sizeof(cs_routes) / sizeof(cs_routes[0]);
