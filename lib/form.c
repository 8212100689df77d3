/* form.c - form-encoded request fields checked against a route's spec
 * (form.h). libmicrohttpd decodes; we collect each declared field, refuse
 * the others, and enforce presence and length. */
#include "form.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"

/* A family field being read (its value may come in pieces). */
struct fam_item {
	char *key; /* the whole field name */
	char *val;
	size_t len;
};

struct form_ctx {
	const mica_form_field *spec;
	size_t n;
	char **values;
	size_t *lens;
	mica_problem *p;
	int err;
	const mica_form_family *fam; /* NULL: no family */
	struct fam_item items[MICA_FORM_MAX_FAMILY];
	size_t nitems;
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

static int in_family(const mica_form_family *fam, const char *key)
{
	return fam && key && strncmp(key, fam->prefix, strlen(fam->prefix)) == 0;
}

/* Appends a piece of family field |key| (bounds checked here; the rest of
 * the rule when the form is complete, by mica_form_family_add). */
static enum MHD_Result add_family_piece(struct form_ctx *c, const char *key, const char *data,
					uint64_t off, size_t size)
{
	const mica_form_family *f = c->fam;
	struct fam_item *it = c->nitems ? &c->items[c->nitems - 1] : NULL;
	if (off == 0) {
		for (size_t i = 0; i < c->nitems; i++)
			if (strcmp(c->items[i].key, key) == 0)
				return refuse(c, 400, "bad_field", "field \"%.80s\" is given twice",
					      key);
		if (c->nitems >= f->max_items || c->nitems >= MICA_FORM_MAX_FAMILY)
			return refuse(c, 400, "bad_field", "more than the allowed %s* fields",
				      f->prefix);
		it = &c->items[c->nitems];
		if (!(it->key = strdup(key)))
			return refuse(c, 500, "internal_error", "%s", "reading the form failed");
		it->val = NULL;
		it->len = 0;
		c->nitems++;
	} else if (!it || strcmp(it->key, key) != 0 || off != it->len) {
		return refuse(c, 400, "bad_form", "%s", "the body is not form-encoded");
	}
	if (size > f->max_len - it->len)
		return refuse(c, 400, "bad_field", "field \"%.80s\" is too long", key);
	char *v = mica_realloc_wipe(it->val, it->len + size + 1);
	if (!v)
		return refuse(c, 500, "internal_error", "%s", "reading the form failed");
	if (size)
		memcpy(v + it->len, data, size);
	it->len += size;
	v[it->len] = '\0';
	it->val = v;
	return MHD_YES;
}

static void free_items(struct form_ctx *c)
{
	for (size_t i = 0; i < c->nitems; i++) {
		free(c->items[i].key);
		if (c->items[i].val) {
			mica_wipe(c->items[i].val, c->items[i].len);
			free(c->items[i].val);
		}
	}
	c->nitems = 0;
}

/* Appends |size| bytes at offset |off| of field |key| (the post processor
 * may hand a long value over in pieces; off 0 starts a value). */
static enum MHD_Result add_piece(struct form_ctx *c, const char *key, const char *data,
				 uint64_t off, size_t size)
{
	long i = key ? field_index(c, key) : -1;
	if (i < 0 && in_family(c->fam, key))
		return add_family_piece(c, key, data, off, size);
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

static int read_form(const mica_http_req *req, const mica_form_field *spec, size_t n, char **values,
		     const mica_form_family *fam, json_t **family, mica_problem *p)
{
	size_t lens[MICA_FORM_MAX_FIELDS] = {0};
	struct form_ctx c = {spec, n, values, lens, p, 0, fam, {{0}}, 0};
	if (family)
		*family = NULL;
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
	for (size_t i = 0; !c.err && i < n; i++)
		if (values[i] && !mica_utf8_valid(values[i], lens[i]))
			c.err = mica_problemf(p, 400, "bad_field", "field \"%s\" is not UTF-8",
					      spec[i].name);
	if (!c.err && family && !(*family = json_object()))
		c.err = mica_problemf(p, 500, "internal_error", "reading the form failed");
	for (size_t i = 0; !c.err && family && i < c.nitems; i++)
		c.err = mica_form_family_add(fam, *family, c.items[i].key, c.items[i].val,
					     c.items[i].len, p);
	free_items(&c);
	if (c.err) {
		mica_form_free(values, n);
		if (family) {
			json_decref(*family);
			*family = NULL;
		}
	}
	return c.err;
}

int mica_http_form(const mica_http_req *req, const mica_form_field *spec, size_t n, char **values,
		   mica_problem *p)
{
	return read_form(req, spec, n, values, NULL, NULL, p);
}

int mica_http_form_family(const mica_http_req *req, const mica_form_field *spec, size_t n,
			  char **values, const mica_form_family *fam, json_t **family,
			  mica_problem *p)
{
	if (!fam || !fam->prefix || !*fam->prefix || !family) {
		for (size_t i = 0; i < n && i < MICA_FORM_MAX_FIELDS; i++)
			values[i] = NULL;
		return mica_problemf(p, 500, "internal_error", "reading the form failed");
	}
	return read_form(req, spec, n, values, fam, family, p);
}

int mica_form_family_add(const mica_form_family *fam, json_t *obj, const char *name,
			 const char *value, size_t len, mica_problem *p)
{
	size_t pl = strlen(fam->prefix), total = 0;
	const char *k;
	json_t *v;
	if (strncmp(name, fam->prefix, pl) != 0)
		return mica_problemf(p, 400, "unknown_field", "unknown field \"%.64s\"", name);
	const char *key = name + pl;
	size_t kl = strlen(key);
	if (kl == 0 || kl > fam->max_key || !mica_utf8_valid(key, kl))
		return mica_problemf(p, 400, "bad_field",
				     "field \"%.80s\": the name after %s is 1-%zu bytes of UTF-8",
				     name, fam->prefix, fam->max_key);
	if (json_object_get(obj, key))
		return mica_problemf(p, 400, "bad_field", "field \"%.80s\" is given twice", name);
	if (json_object_size(obj) >= fam->max_items)
		return mica_problemf(p, 400, "bad_field", "more than %zu %s* fields",
				     fam->max_items, fam->prefix);
	if (len > fam->max_len || memchr(value, '\0', len))
		return mica_problemf(p, 400, "bad_field",
				     "field \"%.80s\" is over %zu bytes or holds a NUL byte", name,
				     fam->max_len);
	if (!mica_utf8_valid(value, len))
		return mica_problemf(p, 400, "bad_field", "field \"%.80s\" is not UTF-8", name);
	json_object_foreach(obj, k, v)
	{
		total += strlen(k) + json_string_length(v);
	}
	if (total + kl + len > fam->max_total)
		return mica_problemf(p, 400, "bad_field",
				     "the %s* fields exceed %zu bytes together", fam->prefix,
				     fam->max_total);
	if (json_object_set_new(obj, key, json_stringn(value, len)) != 0)
		return mica_problemf(p, 500, "internal_error", "reading the form failed");
	return 0;
}

int mica_utf8_valid(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		unsigned c = u[i];
		size_t n;
		unsigned min, cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1, min = 0x80, cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2, min = 0x800, cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3, min = 0x10000, cp = c & 0x07;
		} else {
			return 0;
		}
		if (n > len - i - 1)
			return 0;
		for (size_t k = 1; k <= n; k++) {
			if ((u[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (u[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += n + 1;
	}
	return 1;
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
