/* routes.c - the push service's HTTP API (docs/api/push.md): the device
 * registration (JSON) and the developer API in MiPush's form (form-encoded
 * fields, `Authorization: key=<app secret>`, the result envelope
 * {result, code, description, data}). Errors are the one problem type
 * (lib/problem.h); on developer routes it also carries MiPush's envelope
 * members, so both kinds of client read it (docs/decisions.md). */
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "log.h"
#include "mipush/push.h"

int push_problem_dependency(mica_problem *p, int err, const char *what)
{
	return mica_problem_dependency(p, "push", err, what);
}

/* ---- device registration ---------------------------------------------------- */

static void h_register(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *out = NULL;
	if (push_register(svc, req->client_ip, req->json, &out, &p) != 0)
		mica_http_reply_problem(resp, &p);
	else
		mica_http_reply_json(resp, 200, out);
}

/* ---- developer API ----------------------------------------------------------- */

void push_mipush_fail(mica_http_resp *resp, mica_problem *p)
{
	if (!p->code)
		mica_problemf(p, 500, "internal_error", "the request failed");
	mica_problem_set_extra(p, "result", json_string("error"));
	mica_problem_set_extra(p, "code", json_integer(p->status));
	mica_problem_set_extra(p, "description", json_string(p->msg));
	mica_problem_set_extra(p, "reason", json_string(p->code));
	mica_http_reply_problem(resp, p);
}

void push_mipush_reply(mica_http_resp *resp, json_t *data)
{
	mica_http_reply_json(resp, 200,
			     json_pack("{s:s,s:i,s:s,s:o}", "result", "ok", "code", 0,
				       "description", "成功", "data", data ? data : json_object()));
}

int push_mipush_begin(push_service *s, const mica_http_req *req, mica_http_resp *resp,
		      const mica_form_field *spec, size_t n, char **v, push_app *app)
{
	mica_problem p = MICA_PROBLEM_INIT;
	if (mica_http_form(req, spec, n, v, &p) != 0 ||
	    push_app_authenticate(s, mica_http_header(req, "Authorization"), v[n - 1], app, &p) !=
		    0) {
		mica_form_free(v, n);
		push_mipush_fail(resp, &p);
		return 0;
	}
	return 1;
}

#define F_REGIDS                                                                                   \
	{                                                                                          \
		"registration_id", true, 64 * 1024                                                 \
	}

static void subscribe_route(const mica_http_req *req, mica_http_resp *resp, push_service *s,
			    enum push_sub_kind kind, bool subscribe)
{
	/* MiPush's topic calls also carry a topic category, which mica keeps
	 * no use for: accepted, documented, not stored. */
	static const mica_form_field topic_spec[] = {F_REGIDS,
						     {"topic", true, PUSH_NAME_MAX},
						     {"category", false, 64},
						     PUSH_FORM_PACKAGE};
	static const mica_form_field alias_spec[] = {
		F_REGIDS, {"aliases", true, 64 * 1024}, PUSH_FORM_PACKAGE};
	const mica_form_field *spec = kind == PUSH_SUB_TOPIC ? topic_spec : alias_spec;
	size_t n = kind == PUSH_SUB_TOPIC ? 4 : 3;
	char *v[4];
	push_app app = {0};
	mica_problem p = MICA_PROBLEM_INIT;
	if (!push_mipush_begin(s, req, resp, spec, n, v, &app))
		return;
	if (push_subscribe(s, &app, kind, subscribe, v[0], v[1], &p) != 0)
		push_mipush_fail(resp, &p);
	else
		push_mipush_reply(resp, NULL);
	mica_form_free(v, n);
}

static void list_route(const mica_http_req *req, mica_http_resp *resp, push_service *s,
		       enum push_sub_kind kind)
{
	static const mica_form_field spec[] = {F_REGIDS, PUSH_FORM_PACKAGE};
	char *v[2];
	push_app app = {0};
	json_t *list = NULL;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!push_mipush_begin(s, req, resp, MICA_FORM_FIELDS(spec), v, &app))
		return;
	if (push_subscriptions(s, &app, kind, v[0], &list, &p) != 0)
		push_mipush_fail(resp, &p);
	else
		push_mipush_reply(resp, json_pack("{s:o}", "list", list));
	mica_form_free(v, 2);
}

static void h_topic_sub(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	subscribe_route(req, resp, s, PUSH_SUB_TOPIC, true);
}
static void h_topic_unsub(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	subscribe_route(req, resp, s, PUSH_SUB_TOPIC, false);
}
static void h_alias_sub(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	subscribe_route(req, resp, s, PUSH_SUB_ALIAS, true);
}
static void h_alias_unsub(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	subscribe_route(req, resp, s, PUSH_SUB_ALIAS, false);
}
static void h_topic_all(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	list_route(req, resp, s, PUSH_SUB_TOPIC);
}
static void h_alias_all(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	list_route(req, resp, s, PUSH_SUB_ALIAS);
}

/* ---- sending (the /v3/message routes): send.c, devapi.c -------------------------------- */

/* A send answered as MiPush does: data.id is the message id, given only
 * after the message and its queue rows committed; info says what became of
 * the targets; trace_id is the request id (also X-Request-Id). */
static void send_route(const mica_http_req *req, mica_http_resp *resp, push_service *s,
		       enum push_target target)
{
	push_send_input in;
	push_send_result res;
	push_app app = {0};
	mica_problem p = MICA_PROBLEM_INIT;
	char info[160];
	if (push_send_read(req, target, &in, &p) != 0 ||
	    push_app_authenticate(s, mica_http_header(req, "Authorization"), in.package, &app,
				  &p) != 0 ||
	    push_send(s, &app, &in.req, &res, &p) != 0) {
		push_send_input_cleanup(&in);
		push_mipush_fail(resp, &p);
		return;
	}
	push_send_input_cleanup(&in);
	snprintf(info, sizeof(info),
		 "Received push messages for %ld devices (%ld invalid targets, %ld already had"
		 " the jobkey)",
		 res.queued, res.invalid, res.skipped);
	mica_http_reply_json(resp, 200,
			     json_pack("{s:s,s:i,s:{s:s},s:s,s:s,s:s}", "result", "ok", "code", 0,
				       "data", "id", res.msg_id, "description", "成功", "info",
				       info, "trace_id", req->request_id ? req->request_id : ""));
}

static void h_send_regid(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	send_route(req, resp, s, PUSH_TARGET_REGID);
}
static void h_send_alias(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	send_route(req, resp, s, PUSH_TARGET_ALIAS);
}
static void h_send_topic(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	send_route(req, resp, s, PUSH_TARGET_TOPIC);
}
static void h_send_multi_topic(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	send_route(req, resp, s, PUSH_TARGET_MULTI_TOPIC);
}
static void h_send_all(const mica_http_req *req, mica_http_resp *resp, void *s)
{
	send_route(req, resp, s, PUSH_TARGET_ALL);
}

#define B MICA_ROUTE_BLOCKING
const mica_http_route push_routes[] = {
	{"POST", "/v1/push/register", h_register, MICA_ROUTE_JSON | B},
	{"POST", "/v2/topic/subscribe", h_topic_sub, B},
	{"POST", "/v2/topic/unsubscribe", h_topic_unsub, B},
	{"GET", "/v1/topic/all", h_topic_all, B},
	{"POST", "/v2/alias/subscribe", h_alias_sub, B},
	{"POST", "/v2/alias/unsubscribe", h_alias_unsub, B},
	{"GET", "/v1/alias/all", h_alias_all, B},
	{"POST", "/v3/message/regid", h_send_regid, B},
	{"POST", "/v3/message/alias", h_send_alias, B},
	{"POST", "/v3/message/topic", h_send_topic, B},
	{"POST", "/v3/message/multi_topic", h_send_multi_topic, B},
	{"POST", "/v3/message/all", h_send_all, B},
	/* statistics, traces, registration deletion (statsapi.c) */
	{"GET", "/v1/stats/message/counters", push_h_stats_counters, B},
	{"GET", "/v1/trace/message/status", push_h_trace_message, B},
	{"GET", "/v1/trace/messages/status", push_h_trace_messages, B},
	{"POST", "/v1/push/registrations/delete", push_h_registrations_delete, B},
};
#undef B
const size_t push_routes_len = sizeof(push_routes) / sizeof(push_routes[0]);
