/* envelope_open.c - test peer for tests/integration/test_account_*.sh: opens a
 * lib/crypto envelope (as the account service seals password hashes under a
 * pepper data key) so a test can read what a row holds.
 *   envelope_open AAD < "KEY_BASE64 ENVELOPE_BASE64"  -> the plaintext on stdout
 *   envelope_open -x AAD_HEX < ...  the AAD in hex (for AADs holding a NUL, as
 *                                   push messages' "mica-push v1\0<regid>")
 * The key comes on stdin, never on the command line.
 * Exit status: 0 opened, 1 refused (wrong key, wrong AAD, tampered), 2 usage
 * or error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "err.h"

#define INPUT_MAX 65536

int main(int argc, char **argv)
{
	static char in[INPUT_MAX + 1];
	static uint8_t aad[4096];
	uint8_t key[64], *env = NULL, *pt = NULL;
	size_t n, key_len = 0, env_len = 0, pt_len = 0, aad_len = 0;
	char *sp;
	int rc;

	if (argc == 3 && strcmp(argv[1], "-x") == 0) {
		if (mica_hex_decode(argv[2], strlen(argv[2]), aad, sizeof(aad), &aad_len) != 0) {
			fprintf(stderr, "envelope_open: -x wants the AAD in hex\n");
			return 2;
		}
	} else if (argc == 2) {
		aad_len = strlen(argv[1]);
		if (aad_len > sizeof(aad))
			return 2;
		memcpy(aad, argv[1], aad_len);
	} else {
		fprintf(stderr, "usage: envelope_open [-x] AAD < 'KEY_BASE64 ENVELOPE_BASE64'\n");
		return 2;
	}
	n = fread(in, 1, INPUT_MAX, stdin);
	in[n] = '\0';
	while (n > 0 && (in[n - 1] == '\n' || in[n - 1] == '\r'))
		in[--n] = '\0';
	if (!(sp = strchr(in, ' ')) ||
	    mica_base64_decode(in, (size_t)(sp - in), key, sizeof(key), &key_len) != 0 ||
	    mica_base64_decode_alloc(sp + 1, strlen(sp + 1), &env, &env_len) != 0) {
		fprintf(stderr, "envelope_open: stdin is not 'KEY_BASE64 ENVELOPE_BASE64'\n");
		return 2;
	}
	rc = mica_envelope_open(key, key_len, aad, aad_len, env, env_len, &pt, &pt_len);
	mica_wipe(key, sizeof(key));
	free(env);
	if (rc != 0) {
		fprintf(stderr, "envelope_open: %s\n", mica_strerror(rc));
		return rc == MICA_EAUTH ? 1 : 2;
	}
	fwrite(pt, 1, pt_len, stdout);
	mica_wipe(pt, pt_len);
	free(pt);
	return 0;
}
