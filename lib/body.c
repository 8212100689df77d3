/* body.c - the one parser of request-body members (see body.h): every
 * member declared, typed and bounded, and any other member refused with 400
 * unknown_field, the same way in every service. */
#include "body.h"

#include <string.h>

static const mica_body_field *find(const mica_body_field *spec, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(spec[i].name, name) == 0)
			return &spec[i];
	return NULL;
}

/* Checks one present, non-null member against its entry. */
static int check(const mica_body_field *d, json_t *v, mica_body_value *out, mica_problem *p)
{
	switch (d->type) {
	case MICA_BODY_BOOL:
		if (!json_is_boolean(v))
			return mica_problemf(p, 400, "bad_field", "%s must be true or false",
					     d->name);
		out->b = json_is_true(v);
		return 0;
	case MICA_BODY_OBJECT:
		if (!json_is_object(v))
			return mica_problemf(p, 400, "bad_field", "%s must be an object", d->name);
		out->j = v;
		return 0;
	case MICA_BODY_ARRAY:
		if (!json_is_array(v))
			return mica_problemf(p, 400, "bad_field", "%s must be an array", d->name);
		out->j = v;
		return 0;
	case MICA_BODY_ANY:
		out->j = v;
		return 0;
	case MICA_BODY_STRING:
		break;
	}
	if (!json_is_string(v))
		return mica_problemf(p, 400, "bad_field", "%s must be a string", d->name);
	const char *s = json_string_value(v);
	size_t len = json_string_length(v);
	if (strlen(s) != len)
		return mica_problemf(p, 400, "bad_field", "%s may not contain NUL characters",
				     d->name);
	if (len > d->max_len)
		return mica_problemf(p, 400, "bad_field", "%s is at most %zu bytes", d->name,
				     d->max_len);
	if (d->required && len == 0)
		return mica_problemf(p, 400, "missing_field", "%s is required", d->name);
	out->s = s;
	return 0;
}

int mica_body_fields(json_t *body, const mica_body_field *spec, size_t n, mica_body_value *out,
		     mica_problem *p)
{
	const char *k;
	json_t *v;
	int err;

	if (body && !json_is_object(body))
		return mica_problemf(p, 400, "body_not_object", "the body must be a JSON object");
	/* Unknown members first: a misspelt member must be named as such, not
	 * reported as the required one it was meant to be. */
	json_object_foreach(body, k, v)
	{
		if (!find(spec, n, k))
			return mica_problemf(p, 400, "unknown_field",
					     "\"%.64s\" is not a member of this request", k);
	}
	for (size_t i = 0; i < n; i++) {
		mica_body_value scratch, *o = out ? &out[i] : &scratch;
		memset(o, 0, sizeof(*o));
		v = body ? json_object_get(body, spec[i].name) : NULL;
		if (!v || json_is_null(v)) {
			if (spec[i].required)
				return mica_problemf(p, 400, "missing_field", "%s is required",
						     spec[i].name);
			continue;
		}
		if ((err = check(&spec[i], v, o, p)) != 0)
			return err;
	}
	return 0;
}
