/* fuzz_base64.c - libFuzzer target for the strict base64, base64url and hex
 * codecs. Every input must survive encode-then-decode unchanged, and every
 * input a decoder accepts must re-encode to exactly the same text, since the
 * decoders accept one spelling per byte string. Decoders get buffers of
 * exactly *_decoded_max() bytes so ASan sees any overrun.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fuzz_check.h"

typedef int (*encode_fn)(const void *, size_t, char **, size_t *);
typedef int (*decode_fn)(const char *, size_t, uint8_t *, size_t, size_t *);
typedef int (*decode_alloc_fn)(const char *, size_t, uint8_t **, size_t *);

struct codec {
	encode_fn encode;
	decode_fn decode;
	decode_alloc_fn decode_alloc;
	size_t (*decoded_max)(size_t);
};

static const struct codec codecs[] = {
	{mica_base64_encode_alloc, mica_base64_decode, mica_base64_decode_alloc,
	 mica_base64_decoded_max},
	{mica_base64url_encode_alloc, mica_base64url_decode, mica_base64url_decode_alloc,
	 mica_base64url_decoded_max},
};

static void roundtrip(const struct codec *c, const uint8_t *data, size_t size)
{
	char *text = NULL;
	uint8_t *back = NULL;
	size_t text_len = 0, back_len = 0;

	CHECK(c->encode(data, size, &text, &text_len) == 0);
	CHECK(strlen(text) == text_len);
	CHECK(c->decode_alloc(text, text_len, &back, &back_len) == 0);
	CHECK(back_len == size && memcmp(back, data, size) == 0);
	free(back);
	free(text);
}

/* Decode the raw input as text; accepted text must be canonical. */
static void decode_untrusted(const struct codec *c, const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	size_t cap = c->decoded_max(size), n = 0, n2 = 0, text_len = 0;
	uint8_t *out = malloc(cap ? cap : 1), *out2 = NULL;
	char *text = NULL;
	int rc = c->decode(in, size, out, cap, &n);
	int rc2 = c->decode_alloc(in, size, &out2, &n2);

	CHECK(rc == rc2);
	CHECK(rc == 0 || rc == MICA_EBADENCODING);
	if (rc == 0) {
		CHECK(n <= cap && n2 == n && memcmp(out, out2, n) == 0);
		CHECK(c->encode(out, n, &text, &text_len) == 0);
		CHECK(text_len == size && memcmp(text, in, size) == 0);
	} else {
		CHECK(n == 0 && out2 == NULL && n2 == 0);
	}
	free(text);
	free(out2);
	free(out);
}

static void hex_checks(const uint8_t *data, size_t size)
{
	char *text = malloc(2 * size + 1);
	uint8_t *back = malloc(size ? size : 1);
	size_t n = 0;
	int rc;

	CHECK(mica_hex_encode(data, size, text, 2 * size + 1) == 0);
	CHECK(mica_hex_decode(text, 2 * size, back, size, &n) == 0);
	CHECK(n == size && memcmp(back, data, size) == 0);

	rc = mica_hex_decode((const char *)data, size, back, size / 2, &n);
	CHECK(rc == 0 || rc == MICA_EBADENCODING);
	if (rc == 0) {
		CHECK(n == size / 2);
		CHECK(mica_hex_encode(back, n, text, 2 * size + 1) == 0);
		for (size_t i = 0; i < size; i++)
			CHECK(text[i] == tolower(data[i]));
	}
	free(back);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++) {
		roundtrip(&codecs[i], data, size);
		decode_untrusted(&codecs[i], data, size);
	}
	hex_checks(data, size);
	return 0;
}
