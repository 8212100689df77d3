/* form.c - form-encoded request fields checked against a route's spec
 * (form.h). libmicrohttpd decodes; we collect each declared field, refuse
 * the others, and enforce presence and length. */
#include "form.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"

struct form_ctx {
	const mica_form_field *spec;
	size_t n;
	char **values;
	size_t *lens;
	mica_problem *p;
	int err;
};

/* Marks the form refused with |code| about field |name|; stops the parse. */
static enum MHD_Result refuse(struct form_ctx *c, int status, const char *code, const char *fmt,
			      const char *name)
{
	if (!c->err) {
		c->err = status == 500 ? MICA_ENOMEM : MICA_EINVAL;
		mica_problemf(c->p, status, code, fmt, name);
	}
	return MHD_NO;
}

static long field_index(const struct form_ctx *c, const char *key)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->spec[i].name, key) == 0)
			return (long)i;
	return -1;
}

/* Appends |size| bytes at offset |off| of field |key| (the post processor
 * may hand a long value over in pieces; off 0 starts a value). */
static enum MHD_Result add_piece(struct form_ctx *c, const char *key, const char *data,
				 uint64_t off, size_t size)
{
	long i = key ? field_index(c, key) : -1;
	if (i < 0)
		return refuse(c, 400, "unknown_field", "unknown field \"%.64s\"", key ? key : "");
	size_t cur = c->values[i] ? c->lens[i] : 0;
	if (off == 0 && c->values[i])
		return refuse(c, 400, "bad_field", "field \"%s\" is given twice", c->spec[i].name);
	if (off != cur || size > c->spec[i].max_len - cur)
		return refuse(c, 400, "bad_field", "field \"%s\" is too long", c->spec[i].name);
	if (size && memchr(data, '\0', size))
		return refuse(c, 400, "bad_field", "field \"%s\" holds a NUL byte",
			      c->spec[i].name);
	char *v = mica_realloc_wipe(c->values[i], cur + size + 1);
	if (!v)
		return refuse(c, 500, "internal_error", "%s", "reading the form failed");
	if (size)
		memcpy(v + cur, data, size);
	v[cur + size] = '\0';
	c->values[i] = v;
	c->lens[i] = cur + size;
	return MHD_YES;
}

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				 const char *filename, const char *content_type,
				 const char *transfer_encoding, const char *data, uint64_t off,
				 size_t size)
{
	(void)kind;
	(void)filename;
	(void)content_type;
	(void)transfer_encoding;
	return add_piece(cls, key, data ? data : "", off, data ? size : 0);
}

static enum MHD_Result query_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				  const char *value)
{
	(void)kind;
	return add_piece(cls, key, value ? value : "", 0, value ? strlen(value) : 0);
}

static int form_content_type_ok(const mica_http_req *req)
{
	const char *ct = mica_http_header(req, "Content-Type");
	static const char want[] = "application/x-www-form-urlencoded";
	if (!ct || strncasecmp(ct, want, sizeof(want) - 1) != 0)
		return 0;
	ct += sizeof(want) - 1;
	return *ct == '\0' || *ct == ';' || *ct == ' ';
}

int mica_http_form(const mica_http_req *req, const mica_form_field *spec, size_t n, char **values,
		   mica_problem *p)
{
	size_t lens[MICA_FORM_MAX_FIELDS] = {0};
	struct form_ctx c = {spec, n, values, lens, p, 0};
	if (n > MICA_FORM_MAX_FIELDS)
		return mica_problemf(p, 500, "internal_error", "reading the form failed");
	for (size_t i = 0; i < n; i++)
		values[i] = NULL;
	if (strcmp(req->method, "GET") == 0) {
		MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, query_iter, &c);
	} else if (req->body_len > 0) {
		if (!form_content_type_ok(req)) {
			c.err = mica_problemf(
				p, 415, "unsupported_media_type",
				"send the fields as application/x-www-form-urlencoded");
		} else {
			struct MHD_PostProcessor *pp =
				MHD_create_post_processor(req->conn, 1024, post_iter, &c);
			if (!pp)
				c.err = mica_problemf(p, 415, "unsupported_media_type",
						      "send the fields as "
						      "application/x-www-form-urlencoded");
			else if (MHD_post_process(pp, req->body, req->body_len) != MHD_YES &&
				 !c.err)
				c.err = mica_problemf(p, 400, "bad_form",
						      "the body is not form-encoded");
			if (pp && MHD_destroy_post_processor(pp) != MHD_YES && !c.err)
				c.err = mica_problemf(p, 400, "bad_form",
						      "the body is not form-encoded");
		}
	}
	for (size_t i = 0; !c.err && i < n; i++)
		if (spec[i].required && (!values[i] || !*values[i]))
			c.err = mica_problemf(p, 400, "missing_field", "field \"%s\" is required",
					      spec[i].name);
	if (c.err)
		mica_form_free(values, n);
	return c.err;
}

void mica_form_free(char **values, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (values[i]) {
			mica_wipe(values[i], strlen(values[i]));
			free(values[i]);
			values[i] = NULL;
		}
	}
}
