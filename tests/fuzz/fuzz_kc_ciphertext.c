/* fuzz_kc_ciphertext.c - the Key Center's ciphertext parser
 * ("kc:v<version>:<base64>") and the envelope header under it, on arbitrary
 * bytes: never crashes, and what parses re-encodes to the same text. */
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "keycenter/ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *blob = NULL;
	size_t len = 0;
	uint32_t version = 0;
	struct mica_envelope env;

	if (kc_ciphertext_parse((const char *)data, size, &version, &blob, &len) == 0) {
		if (version < 1 || version > 0x7fffffff)
			abort();
		/* Base64 is canonical: re-encoding gives the input's tail back. */
		size_t cap = mica_base64_encoded_len(len) + 1, n = 0;
		char *again = malloc(cap);
		if (!again || mica_base64_encode(blob, len, again, cap, &n) != 0)
			abort();
		if (n > size || memcmp(again, data + size - n, n) != 0)
			abort();
		free(again);
		if (mica_envelope_parse(blob, len, &env) == 0 &&
		    (env.key_name < (const char *)blob ||
		     env.key_name + env.key_name_len > (const char *)blob + len))
			abort();
	}
	free(blob);
	return 0;
}
