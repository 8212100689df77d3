/* account_fuzz.h - checks shared by the account service's fuzz targets
 * (fuzz_account_login.c, fuzz_account_register.c): the body is parsed as
 * lib/http does for a MICA_ROUTE_JSON route, and acct_ident_parse's answers
 * are held to the rules account.h documents. Any violation aborts. */
#ifndef MICA_FUZZ_ACCOUNT_H
#define MICA_FUZZ_ACCOUNT_H

#include <ctype.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"

/* The body as lib/http's run_route() reads it: strict JSON, duplicate keys
 * rejected, and only an object reaches the handler. NULL otherwise. */
static inline json_t *fuzz_body(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
	if (body && !json_is_object(body)) {
		json_decref(body);
		body = NULL;
	}
	return body;
}

static inline int all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return 0;
	return 1;
}

/* |kind| and |out| as acct_ident_parse(in, out, cap) gave them. */
static inline void fuzz_check_ident(const char *in, size_t cap, enum acct_ident kind,
				    const char *out)
{
	size_t n = strlen(in);
	const char *at;
	if (kind == ACCT_ID_INVALID)
		return;
	if (n == 0 || n >= cap || n > 254 || strlen(out) != n)
		abort();
	switch (kind) {
	case ACCT_ID_PHONE:
		if (in[0] != '+' || n - 1 < 7 || n - 1 > 15 || in[1] == '0' ||
		    !all_digits(in + 1, n - 1) || strcmp(in, out) != 0)
			abort();
		break;
	case ACCT_ID_EMAIL:
		at = strchr(in, '@');
		if (!at || at == in || strchr(at + 1, '@') || !strchr(at + 1, '.'))
			abort();
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)in[i] <= ' ' || (unsigned char)in[i] >= 0x7f ||
			    out[i] != (char)tolower((unsigned char)in[i]))
				abort();
		break;
	case ACCT_ID_ACCOUNT_NO:
		if (n != 10 || !all_digits(in, n) || strcmp(in, out) != 0)
			abort();
		break;
	default:
		abort();
	}
}

/* Runs acct_ident_parse on |in| into buffers of exactly |cap| bytes (so
 * AddressSanitizer sees any write past the end), checks the answer, and
 * that the normal form is a fixed point. Returns the kind. */
static inline enum acct_ident fuzz_ident(const char *in, size_t cap)
{
	char *out = malloc(cap), *again = malloc(cap);
	enum acct_ident kind, kind2;
	if (!out || !again)
		abort();
	kind = acct_ident_parse(in, out, cap);
	fuzz_check_ident(in, cap, kind, out);
	if (kind != ACCT_ID_INVALID) {
		kind2 = acct_ident_parse(out, again, cap);
		if (kind2 != kind || strcmp(out, again) != 0)
			abort();
	}
	free(out);
	free(again);
	return kind;
}

/* Every raw input as an identifier too, with a roomy and a tight buffer. */
static inline void fuzz_ident_raw(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	size_t n;
	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	n = strlen(s);
	fuzz_ident(s, 256);
	fuzz_ident(s, n + 1);
	if (fuzz_ident(s, n ? n : 1) != ACCT_ID_INVALID)
		abort(); /* no room for the terminator: must refuse */
	free(s);
}

/* A refusal must be a documented 400 with a code and a message. */
/* An accepted body (or nested object) holds only the documented members
 * (lib/body.h: any other is unknown_field). */
#define FUZZ_ONLY_MEMBERS(obj, ...)                                                                \
	do {                                                                                       \
		static const char *const names_[] = {__VA_ARGS__};                                 \
		const char *k_;                                                                    \
		json_t *v_;                                                                        \
		json_object_foreach((obj), k_, v_)                                                 \
		{                                                                                  \
			int ok_ = 0;                                                               \
			for (size_t i_ = 0; i_ < sizeof(names_) / sizeof(names_[0]); i_++)         \
				ok_ |= strcmp(k_, names_[i_]) == 0;                                \
			if (!ok_)                                                                  \
				abort();                                                           \
		}                                                                                  \
	} while (0)

static inline void fuzz_check_fail(int err, const mica_problem *f)
{
	if (err != MICA_EINVAL || f->status != 400 || !f->code || !*f->code || !f->msg[0] ||
	    f->extra)
		abort();
}

static inline int is_hex64(const char *h)
{
	if (strlen(h) != 64)
		return 0;
	for (size_t i = 0; i < 64; i++)
		if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
			return 0;
	return 1;
}

/* |hash| must be the device hash the service stores for |id|. */
static inline void fuzz_check_device(const char *id, const char *hash)
{
	char want[65];
	if (!id || !*id || strlen(id) > 200 || !is_hex64(hash))
		abort();
	acct_hash_hex("mica-device", id, want);
	if (strcmp(want, hash) != 0)
		abort();
}

#endif
