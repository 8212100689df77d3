/* devapi.c - reading a developer's send request (the /v3/message routes): MiPush's
 * form-encoded fields, or the same fields as members of a JSON object, into
 * one checked push_send_req. Every rule of docs/api/push.md's "Sending" is
 * checked here, before any I/O; push_send (send.c) does the rest. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "body.h"
#include "form.h"
#include "mipush/push.h"
#include "parse.h"

/* The fields, by index into push_send_input.v. */
enum {
	F_PAYLOAD,
	F_PACKAGE,
	F_PASS,
	F_TITLE,
	F_DESC,
	F_NTYPE,
	F_TTL,
	F_NID,
	F_JOBKEY,
	F_CBURL,
	F_CBPARAM,
	F_CBTYPE,
	F_TARGET, /* registration_id, alias, topic or topics (absent for all) */
	F_TOPIC_OP,
	F_MAX
};

#define COMMON                                                                                     \
	{"payload", false, PUSH_PAYLOAD_MAX},                                                      \
		{"restricted_package_name", false, PUSH_PACKAGE_MAX}, {"pass_through", false, 1},  \
		{"title", false, PUSH_TITLE_MAX}, {"description", false, PUSH_DESCRIPTION_MAX},    \
		{"notify_type", false, 2}, {"time_to_live", false, 16}, {"notify_id", false, 10},  \
		{"jobkey", false, 128}, {"callback.url", false, 2048},                             \
		{"callback.param", false, 1024},                                                   \
	{                                                                                          \
		"callback.type", false, 8                                                          \
	}

static const mica_form_field spec_regid[] = {COMMON, {"registration_id", true, 64 * 1024}};
static const mica_form_field spec_alias[] = {COMMON, {"alias", true, 160 * 1024}};
static const mica_form_field spec_topic[] = {COMMON, {"topic", true, PUSH_NAME_MAX}};
static const mica_form_field spec_multi[] = {
	COMMON, {"topics", true, 1024}, {"topic_op", false, 16}};
static const mica_form_field spec_all[] = {COMMON};

/* MiPush's extra.* fields: bounded in number and size. */
static const mica_form_family extra_family = {"extra.", 32, 64, 1024, 4096};

static void spec_of(enum push_target t, const mica_form_field **spec, size_t *n)
{
	switch (t) {
	case PUSH_TARGET_REGID:
		*spec = spec_regid, *n = F_TARGET + 1;
		break;
	case PUSH_TARGET_ALIAS:
		*spec = spec_alias, *n = F_TARGET + 1;
		break;
	case PUSH_TARGET_TOPIC:
		*spec = spec_topic, *n = F_TARGET + 1;
		break;
	case PUSH_TARGET_MULTI_TOPIC:
		*spec = spec_multi, *n = F_MAX;
		break;
	default:
		*spec = spec_all, *n = F_TARGET;
		break;
	}
}

/* ---- the JSON variant ----------------------------------------------------------- */

static int json_content_type(const mica_http_req *req)
{
	const char *ct = mica_http_header(req, "Content-Type");
	static const char want[] = "application/json";
	return ct && strncasecmp(ct, want, sizeof(want) - 1) == 0 &&
	       (ct[sizeof(want) - 1] == '\0' || ct[sizeof(want) - 1] == ';');
}

/* The JSON object's members into v[] and the extra family, with the form's
 * rules: a member no field names is unknown_field; values are strings (or
 * integers, written as decimal); the length limits are the form's. */
static int read_json(const mica_http_req *req, const mica_form_field *spec, size_t n, char **v,
		     json_t **extra, mica_problem *p)
{
	json_error_t jerr;
	json_t *body = NULL, *val;
	const char *name;
	int err = 0;

	if (!req->body || !req->body_len)
		return mica_problemf(p, 400, "missing_body", "the request has no body");
	body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(body)) {
		json_decref(body);
		return mica_problemf(p, 400, body ? "body_not_object" : "malformed_json",
				     "the body is not a JSON object");
	}
	if (!(*extra = json_object())) {
		json_decref(body);
		return mica_problemf(p, 500, "internal_error", "reading the request failed");
	}
	json_object_foreach(body, name, val)
	{
		size_t i = 0;
		char num[32];
		const char *s = NULL;
		size_t sl = 0;
		while (i < n && strcmp(spec[i].name, name) != 0)
			i++;
		if (json_is_string(val)) {
			s = json_string_value(val);
			sl = json_string_length(val);
		} else if (json_is_integer(val)) {
			snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(val));
			s = num;
			sl = strlen(num);
		}
		if (i == n &&
		    strncmp(name, extra_family.prefix, strlen(extra_family.prefix)) != 0) {
			err = mica_problemf(p, 400, "unknown_field", "unknown field \"%.64s\"",
					    name);
		} else if (json_is_null(val)) {
			continue;
		} else if (!s) {
			err = mica_problemf(p, 400, "bad_field",
					    "field \"%.80s\" must be a string or an integer", name);
		} else if (i == n) {
			err = mica_form_family_add(&extra_family, *extra, name, s, sl, p);
		} else if (sl > spec[i].max_len || memchr(s, '\0', sl)) {
			err = mica_problemf(p, 400, "bad_field",
					    "field \"%s\" is too long or holds a NUL byte",
					    spec[i].name);
		} else if (!(v[i] = strdup(s))) {
			err = mica_problemf(p, 500, "internal_error", "reading the request failed");
		}
		if (err)
			break;
	}
	for (size_t i = 0; !err && i < n; i++)
		if (spec[i].required && (!v[i] || !*v[i]))
			err = mica_problemf(p, 400, "missing_field", "field \"%s\" is required",
					    spec[i].name);
	json_decref(body);
	return err;
}

/* ---- the rules ------------------------------------------------------------------- */

/* Splits |s| at |sep| into a new array of items of 1..|max_len| printable
 * ASCII characters without spaces (commas too when sep is ","), at most
 * |max_items|. */
static int split(const char *s, const char *sep, size_t max_len, size_t max_items,
		 const char *field, json_t **arr, mica_problem *p)
{
	json_t *a = json_array();
	size_t sl = strlen(sep);
	const char *at = s;
	*arr = NULL;
	if (!a)
		return mica_problemf(p, 500, "internal_error", "reading %s failed", field);
	for (;;) {
		const char *end = strstr(at, sep);
		size_t n = end ? (size_t)(end - at) : strlen(at);
		int ok = n > 0 && n <= max_len;
		for (size_t i = 0; ok && i < n; i++)
			ok = at[i] > 0x20 && at[i] < 0x7f && at[i] != ',';
		if (!ok || json_array_size(a) >= max_items) {
			json_decref(a);
			return mica_problemf(p, 400, "bad_field",
					     "%s: each item is 1-%zu printable characters without"
					     " spaces or commas, at most %zu items",
					     field, max_len, max_items);
		}
		json_array_append_new(a, json_stringn(at, n));
		if (!end)
			break;
		at = end + sl;
	}
	*arr = a;
	return 0;
}

/* An optional integer field in [min, max]; |dflt| when absent. */
static int int_field(const char *v, const char *name, int64_t min, int64_t max, int64_t dflt,
		     int64_t *out, mica_problem *p)
{
	if (!v || !*v) {
		*out = dflt;
		return 0;
	}
	if (mica_parse_int64(v, min, max, out) != 0)
		return mica_problemf(p, 400, "bad_field",
				     "field \"%s\" must be an integer from %lld"
				     " to %lld",
				     name, (long long)min, (long long)max);
	return 0;
}

static int check_fields(push_send_input *in, enum push_target t, mica_problem *p)
{
	push_send_req *r = &in->req;
	char **v = in->v;
	int64_t pt, nt, ttl, nid, cbt;
	int err;

	if ((err = int_field(v[F_PASS], "pass_through", 0, 1, 0, &pt, p)) != 0 ||
	    (err = int_field(v[F_NTYPE], "notify_type", -1, 7, 0, &nt, p)) != 0 ||
	    (err = int_field(v[F_TTL], "time_to_live", 1, PUSH_TTL_MAX_MS, PUSH_TTL_MAX_MS, &ttl,
			     p)) != 0 ||
	    (err = int_field(v[F_NID], "notify_id", 0, 2147483647, -1, &nid, p)) != 0 ||
	    (err = int_field(v[F_CBTYPE], "callback.type", 1, 65535, -1, &cbt, p)) != 0)
		return err;
	r->target = t;
	r->pass_through = pt == 1;
	r->notify_type = (int)nt;
	r->ttl_ms = ttl;
	r->notify_id = (long)nid;
	r->callback_type = (int)cbt;
#define OPT(i) (v[i] && *v[i] ? v[i] : NULL)
	r->payload = OPT(F_PAYLOAD);
	r->title = OPT(F_TITLE);
	r->description = OPT(F_DESC);
	r->jobkey = OPT(F_JOBKEY);
	r->callback_url = OPT(F_CBURL);
	r->callback_param = OPT(F_CBPARAM);
	in->package = OPT(F_PACKAGE);
#undef OPT
	if (r->pass_through && !r->payload)
		return mica_problemf(p, 400, "missing_field",
				     "field \"payload\" is required when pass_through is 1");
	if (!r->pass_through && (!r->title || !r->description))
		return mica_problemf(p, 400, "missing_field",
				     "fields \"title\" and \"description\" are required when"
				     " pass_through is 0");
	if (r->jobkey)
		for (const char *c = r->jobkey; *c; c++)
			if (*c <= 0x20 || *c >= 0x7f)
				return mica_problemf(p, 400, "bad_field",
						     "field \"jobkey\": printable ASCII without"
						     " spaces");
	if (r->callback_url && strncmp(r->callback_url, "https://", 8) != 0 &&
	    strncmp(r->callback_url, "http://", 7) != 0)
		return mica_problemf(p, 400, "bad_field",
				     "field \"callback.url\" must be an http(s) URL");
	if ((r->callback_param || r->callback_type >= 0) && !r->callback_url)
		return mica_problemf(p, 400, "missing_field",
				     "field \"callback.url\" is required with callback.param or"
				     " callback.type");
	r->extra = json_object_size(in->extra) ? in->extra : NULL;
	switch (t) {
	case PUSH_TARGET_REGID:
		err = split(v[F_TARGET], ",", PUSH_RANDOM_B64_LEN, PUSH_LIST_MAX, "registration_id",
			    &in->targets, p);
		break;
	case PUSH_TARGET_ALIAS:
		err = split(v[F_TARGET], ",", PUSH_NAME_MAX, PUSH_LIST_MAX, "alias", &in->targets,
			    p);
		break;
	case PUSH_TARGET_TOPIC:
		err = split(v[F_TARGET], ",", PUSH_NAME_MAX, 1, "topic", &in->targets, p);
		break;
	case PUSH_TARGET_MULTI_TOPIC:
		/* MiPush joins the topics with ";$;" */
		err = split(v[F_TARGET], ";$;", PUSH_NAME_MAX, PUSH_TOPICS_MAX, "topics",
			    &in->targets, p);
		if (err)
			break;
		if (!v[F_TOPIC_OP] || !*v[F_TOPIC_OP] || strcmp(v[F_TOPIC_OP], "UNION") == 0)
			r->topic_op = PUSH_TOPIC_UNION;
		else if (strcmp(v[F_TOPIC_OP], "INTERSECTION") == 0)
			r->topic_op = PUSH_TOPIC_INTERSECTION;
		else if (strcmp(v[F_TOPIC_OP], "EXCEPT") == 0)
			r->topic_op = PUSH_TOPIC_EXCEPT;
		else
			err = mica_problemf(p, 400, "bad_field",
					    "field \"topic_op\" is UNION, INTERSECTION or EXCEPT");
		break;
	default:
		break;
	}
	r->targets = in->targets;
	return err;
}

int push_send_read(const mica_http_req *req, enum push_target target, push_send_input *in,
		   mica_problem *p)
{
	const mica_form_field *spec;
	size_t n;
	int err;

	memset(in, 0, sizeof(*in));
	spec_of(target, &spec, &n);
	if (json_content_type(req))
		err = read_json(req, spec, n, in->v, &in->extra, p);
	else
		err = mica_http_form_family(req, spec, n, in->v, &extra_family, &in->extra, p);
	if (!err)
		err = check_fields(in, target, p);
	return err;
}

void push_send_input_cleanup(push_send_input *in)
{
	mica_form_free(in->v, F_MAX);
	json_decref(in->extra);
	json_decref(in->targets);
	memset(in, 0, sizeof(*in));
}
