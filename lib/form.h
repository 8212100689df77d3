/* form.h - the fields of a form-encoded request (a POST body of
 * application/x-www-form-urlencoded, or a GET query string), as a route
 * declares them: the form twin of lib/body.h, for APIs whose clients speak
 * forms (the push service's MiPush-compatible developer API).
 *
 * The same rule as for JSON bodies: a field the route does not declare is
 * refused with 400 unknown_field naming it, never ignored; a declared field
 * given twice is 400 bad_field. Decoding (percent escapes, '+') is
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
 *   400 bad_field               a field given twice, too long or with a NUL
 *   400 missing_field           a required field absent or empty
 * or MICA_ENOMEM (500). On failure every value is freed and NULL. */
int mica_http_form(const mica_http_req *req, const mica_form_field *spec, size_t n, char **values,
		   mica_problem *p) MICA_WUR;

/* Wipes and frees values[0..n) and sets them to NULL. */
void mica_form_free(char **values, size_t n);

#define MICA_FORM_FIELDS(spec) (spec), (sizeof(spec) / sizeof((spec)[0]))

#endif
