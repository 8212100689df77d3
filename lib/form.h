/* form.h - the fields of a form-encoded request (a POST body of
 * application/x-www-form-urlencoded, or a GET query string), as a route
 * declares them: the form twin of lib/body.h, for APIs whose clients speak
 * forms (the push service's MiPush-compatible developer API).
 *
 * The same rule as for JSON bodies: a field the route does not declare is
 * refused with 400 unknown_field naming it, never ignored; a declared field
 * given twice is 400 bad_field. Every value must be UTF-8 (400 bad_field
 * otherwise): a form is text, and the values end up in JSON. A route may
 * also accept one family of fields sharing a prefix (MiPush's "extra.*"),
 * bounded in number and size (mica_http_form_family). Decoding (percent
 * escapes, '+') is
 * libmicrohttpd's post processor for bodies and its argument parser for
 * query strings; this module only checks the fields against the spec.
 *
 * Ownership: values are malloc'd copies in the caller's array, released
 * (wiped: a field may hold a secret) by mica_form_free(). Threads: no shared
 * state; call from the request's handler only.
 */
#ifndef MICA_FORM_H
#define MICA_FORM_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"
#include "http.h"
#include "problem.h"

/* The largest number of fields one spec declares. */
#define MICA_FORM_MAX_FIELDS 16

typedef struct mica_form_field {
	const char *name;
	bool required;	/* absent or empty: 400 missing_field */
	size_t max_len; /* decoded bytes; longer or holding a NUL: 400 bad_field */
} mica_form_field;

/* Reads the form of |req| (a POST body when the method is not GET, else the
 * query string) against spec[0..n) (n <= MICA_FORM_MAX_FIELDS) into
 * values[i] for spec[i] (NULL when absent). Returns 0, or MICA_EINVAL with
 * |p| set to
 *   415 unsupported_media_type  a body not sent as
 *                               application/x-www-form-urlencoded
 *   400 unknown_field           a field no spec entry names (the first one)
 *   400 bad_field               a field given twice, too long, with a NUL
 *                               or not UTF-8
 *   400 missing_field           a required field absent or empty
 * or MICA_ENOMEM (500). On failure every value is freed and NULL. */
int mica_http_form(const mica_http_req *req, const mica_form_field *spec, size_t n, char **values,
		   mica_problem *p) MICA_WUR;

/* A family of fields named <prefix><key> (MiPush's "extra.sound_uri"):
 * any key of 1..max_key bytes after the prefix, each at most once. */
typedef struct mica_form_family {
	const char *prefix; /* e.g. "extra."; a spec field may not start with it */
	size_t max_items;   /* at most MICA_FORM_MAX_FAMILY */
	size_t max_key;	    /* bytes after the prefix */
	size_t max_len;	    /* bytes of one value */
	size_t max_total;   /* bytes of every key and value together */
} mica_form_family;

/* The largest max_items of a family. */
#define MICA_FORM_MAX_FAMILY 64

/* mica_http_form() that also collects the fields of |fam| into *family, a
 * new JSON object of key (without the prefix) -> value that the caller
 * decrefs (empty when none was given; NULL on failure). Besides the codes
 * of mica_http_form(), 400 bad_field names the family field at fault: a key
 * empty or over max_key, given twice, a value over max_len, holding a NUL
 * or not UTF-8, more than max_items fields, or more than max_total bytes. */
int mica_http_form_family(const mica_http_req *req, const mica_form_field *spec, size_t n,
			  char **values, const mica_form_family *fam, json_t **family,
			  mica_problem *p) MICA_WUR;

/* The family rule on its own, for a route that reads the same fields from
 * another encoding (a JSON variant of a form route): adds <key> = |value|
 * (|len| bytes) for field |name| (which starts with fam->prefix) to |obj|,
 * whose members so far all came through here. Returns 0, or MICA_EINVAL
 * (400 bad_field as above) or MICA_ENOMEM (500) with |p| set. */
int mica_form_family_add(const mica_form_family *fam, json_t *obj, const char *name,
			 const char *value, size_t len, mica_problem *p) MICA_WUR;

/* 1 if |s| (|len| bytes) is well-formed UTF-8 (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), else 0. */
int mica_utf8_valid(const char *s, size_t len);

/* Wipes and frees values[0..n) and sets them to NULL. */
void mica_form_free(char **values, size_t n);

#define MICA_FORM_FIELDS(spec) (spec), (sizeof(spec) / sizeof((spec)[0]))

#endif
