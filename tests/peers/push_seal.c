/* push_seal.c - test peer for tests/integration/test_push_broker*.sh: seals a
 * message for a device exactly as the developer API does
 * (push_seal_message, docs/push-internals.md), so a test can queue rows
 * without the API or publish them from another broker (the device library's
 * tests), and opens what a device received.
 *   push_seal seal REGID MSG_ID APP_ID PACKAGE TEXT [TYPE] < KEY_BASE64
 *       -> the sealed body, base64, on stdout. TYPE pass_through (the
 *          default): TEXT is the payload; notification: TEXT is the title
 *          (description "d", notify_id 7, extra {"k": "v"});
 *          deleted_messages: TEXT is the count (no app or package).
 *   push_seal open REGID < "KEY_BASE64 BODY_HEX"
 *       -> the plaintext JSON on stdout
 * The content key comes on stdin, never on the command line.
 * Exit status: 0 done, 1 refused (wrong key, wrong regid, tampered), 2 usage
 * or error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "crypto.h"
#include "err.h"
#include "mipush/push.h"

#define INPUT_MAX (1 << 20)

static int read_key(const char *in, uint8_t key[PUSH_CONTENT_KEY_LEN])
{
	size_t n = strcspn(in, " \n"), len = 0;
	if (mica_base64_decode(in, n, key, PUSH_CONTENT_KEY_LEN, &len) != 0 ||
	    len != PUSH_CONTENT_KEY_LEN)
		return MICA_EINVAL;
	return 0;
}

static int seal(char **argv, const char *in)
{
	uint8_t key[PUSH_CONTENT_KEY_LEN], *out = NULL;
	size_t out_len = 0, b64_len = 0;
	char *b64 = NULL;
	json_t *extra = NULL;
	const char *type = argv[7] ? argv[7] : "pass_through";
	push_message_view m = {.msg_id = argv[3],
			       .type = type,
			       .app_id = argv[4],
			       .package = argv[5],
			       .notify_id = -1,
			       .sent_at_ms = mica_clock_now_ms()};
	int rc = 2;
	if (strcmp(type, "pass_through") == 0) {
		m.payload = argv[6];
	} else if (strcmp(type, "notification") == 0) {
		m.title = argv[6];
		m.description = "d";
		m.notify_id = 7;
		m.extra = extra = json_pack("{s:s}", "k", "v");
	} else if (strcmp(type, "deleted_messages") == 0) {
		m.count = strtol(argv[6], NULL, 10);
		m.app_id = m.package = NULL;
	} else {
		fprintf(stderr, "push_seal: unknown TYPE %s\n", type);
		goto out;
	}
	if (read_key(in, key) != 0) {
		fprintf(stderr, "push_seal: the key on stdin is not 32 bytes of base64\n");
		goto out;
	}
	if (push_seal_message(key, argv[2], &m, &out, &out_len) != 0 ||
	    mica_base64_encode_alloc(out, out_len, &b64, &b64_len) != 0) {
		fprintf(stderr, "push_seal: sealing failed\n");
		goto out;
	}
	printf("%s\n", b64);
	rc = 0;
out:
	mica_wipe(key, sizeof(key));
	json_decref(extra);
	free(out);
	free(b64);
	return rc;
}

static int open_body(char **argv, const char *in)
{
	uint8_t key[PUSH_CONTENT_KEY_LEN], *body = NULL, *pt = NULL;
	size_t body_len = 0, pt_len = 0;
	const char *hex = strchr(in, ' ');
	char aad[128];
	int rc = 2, aad_len = snprintf(aad, sizeof(aad), "mica-push v1%c%s", 0, argv[2]);
	if (read_key(in, key) != 0 || !hex) {
		fprintf(stderr, "push_seal: stdin is not 'KEY_BASE64 BODY_HEX'\n");
		goto out;
	}
	hex++;
	size_t hl = strcspn(hex, " \n");
	if (hl % 2 || !(body = malloc(hl / 2 + 1)))
		goto out;
	for (size_t i = 0; i < hl / 2; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			goto out;
		body[i] = (uint8_t)v;
	}
	body_len = hl / 2;
	if (mica_envelope_open(key, sizeof(key), aad, (size_t)aad_len, body, body_len, &pt,
			       &pt_len) != 0) {
		fprintf(stderr, "push_seal: the body does not open\n");
		rc = 1;
		goto out;
	}
	fwrite(pt, 1, pt_len, stdout);
	printf("\n");
	rc = 0;
out:
	mica_wipe(key, sizeof(key));
	if (pt) {
		mica_wipe(pt, pt_len);
		free(pt);
	}
	free(body);
	return rc;
}

int main(int argc, char **argv)
{
	static char in[INPUT_MAX + 1];
	size_t n = fread(in, 1, INPUT_MAX, stdin);
	in[n] = '\0';
	if ((argc == 7 || argc == 8) && strcmp(argv[1], "seal") == 0)
		return seal(argv, in);
	if (argc == 3 && strcmp(argv[1], "open") == 0)
		return open_body(argv, in);
	fprintf(stderr,
		"usage: push_seal seal REGID MSG_ID APP_ID PACKAGE TEXT [TYPE] < KEY_BASE64\n"
		"       push_seal open REGID < 'KEY_BASE64 BODY_HEX'\n");
	return 2;
}
