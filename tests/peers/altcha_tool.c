/* altcha_tool.c - test peer for tests/integration/test_altcha_interop.sh:
 * the C side of the ALTCHA round trip against the real altcha-lib solver.
 *   altcha_tool create KEY_FILE MAXNUMBER [TTL_SECONDS]  -> challenge JSON on stdout
 *   altcha_tool verify KEY_FILE [NOW]   < payload        -> verdict code on stdout
 * The HMAC key is the raw bytes of KEY_FILE (never on the command line).
 * Exit status: 0 created / verified ok, 1 payload rejected, 2 usage or error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "account/altcha.h"
#include "crypto.h"
#include "err.h"

#define KEY_MAX 1024
#define PAYLOAD_MAX (ACCT_ALTCHA_PAYLOAD_MAX + 16)

static int usage(void)
{
	fprintf(stderr, "usage: altcha_tool create KEY_FILE MAXNUMBER [TTL_SECONDS]\n"
			"       altcha_tool verify KEY_FILE [NOW] < payload\n");
	return 2;
}

static int read_key(const char *path, uint8_t *key, size_t *len)
{
	FILE *f = fopen(path, "rb");

	if (!f) {
		fprintf(stderr, "altcha_tool: %s: %s\n", path, strerror(errno));
		return -1;
	}
	*len = fread(key, 1, KEY_MAX, f);
	if (ferror(f) || !feof(f)) {
		fprintf(stderr, "altcha_tool: %s: unreadable or over %d bytes\n", path, KEY_MAX);
		fclose(f);
		return -1;
	}
	fclose(f);
	return 0;
}

static int parse_ll(const char *s, long long *out)
{
	char *end = NULL;

	errno = 0;
	*out = strtoll(s, &end, 10);
	return errno || end == s || *end ? -1 : 0;
}

static int do_create(const uint8_t *key, size_t key_len, int argc, char **argv)
{
	long long maxnumber = 0, ttl = 300;
	json_t *challenge = NULL;
	char *text;
	int rc;

	if (argc < 4 || argc > 5 || parse_ll(argv[3], &maxnumber) != 0 ||
	    (argc == 5 && (parse_ll(argv[4], &ttl) != 0 || ttl < 1 || ttl > 86400)))
		return usage();
	rc = acct_altcha_create(key, key_len, maxnumber, (int)ttl, (int64_t)time(NULL), NULL,
				&challenge);
	if (rc) {
		fprintf(stderr, "altcha_tool: create: %s\n", mica_strerror(rc));
		return 2;
	}
	text = json_dumps(challenge, JSON_COMPACT);
	json_decref(challenge);
	if (!text)
		return 2;
	printf("%s\n", text);
	free(text);
	return 0;
}

static int do_verify(const uint8_t *key, size_t key_len, int argc, char **argv)
{
	char payload[PAYLOAD_MAX + 1], challenge[ACCT_ALTCHA_HEX_LEN + 1];
	struct acct_altcha_verdict v;
	long long now = (long long)time(NULL);
	size_t n;
	int rc;

	if (argc > 4 || (argc == 4 && parse_ll(argv[3], &now) != 0))
		return usage();
	n = fread(payload, 1, PAYLOAD_MAX, stdin);
	if (ferror(stdin)) {
		fprintf(stderr, "altcha_tool: reading the payload failed\n");
		return 2;
	}
	payload[n] = '\0';
	/* One trailing line ending, as a shell pipeline adds; nothing else. */
	if (n > 0 && payload[n - 1] == '\n')
		payload[--n] = '\0';
	if (n > 0 && payload[n - 1] == '\r')
		payload[--n] = '\0';
	if (strlen(payload) != n) {
		printf("malformed\n"); /* an embedded NUL */
		return 1;
	}
	rc = acct_altcha_verify(key, key_len, payload, (int64_t)now, NULL, challenge, &v);
	printf("%s\n", v.code);
	if (rc == 0) {
		fprintf(stderr, "altcha_tool: challenge %s expires %lld\n", challenge,
			(long long)v.expires);
		return 0;
	}
	if (rc != MICA_EAUTH) {
		fprintf(stderr, "altcha_tool: verify: %s\n", mica_strerror(rc));
		return 2;
	}
	return 1;
}

int main(int argc, char **argv)
{
	uint8_t key[KEY_MAX];
	size_t key_len = 0;
	int rc;

	if (argc < 3)
		return usage();
	if (read_key(argv[2], key, &key_len) != 0)
		return 2;
	if (strcmp(argv[1], "create") == 0)
		rc = do_create(key, key_len, argc, argv);
	else if (strcmp(argv[1], "verify") == 0)
		rc = do_verify(key, key_len, argc, argv);
	else
		rc = usage();
	mica_wipe(key, sizeof(key));
	return rc;
}
