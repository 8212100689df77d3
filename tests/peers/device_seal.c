/* device_seal.c - test peer for tests/integration/test_device_push*.sh: seals
 * one push message exactly as the broker's store does (push_seal_message(),
 * mipush/seal.c, the one sealer), so the device library is tested against
 * the server's own format, not a copy of it.
 *   device_seal REGID ID TYPE TEXT OUT < KEY_BASE64
 * TYPE pass_through: TEXT is the payload; notification: TEXT is the title
 * (description "d", notify_id 7, extra {"k": "v"}); deleted_messages: TEXT
 * is the count. The 32-byte content key comes on stdin, never on the
 * command line. Writes the sealed bytes to OUT.
 * Exit status: 0 written, 1 sealing or I/O failed, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "mipush/push.h"

int main(int argc, char **argv)
{
	char in[256];
	uint8_t key[PUSH_CONTENT_KEY_LEN + 2], *out = NULL;
	size_t klen = 0, out_len = 0;
	json_t *extra = NULL;
	int rc = 1;

	if (argc != 6) {
		fprintf(stderr, "usage: device_seal REGID ID TYPE TEXT OUT < KEY_BASE64\n");
		return 2;
	}
	size_t n = fread(in, 1, sizeof(in) - 1, stdin);
	in[n] = '\0';
	in[strcspn(in, "\r\n")] = '\0';
	if (mica_base64_decode(in, strlen(in), key, sizeof(key), &klen) != 0 ||
	    klen != PUSH_CONTENT_KEY_LEN) {
		fprintf(stderr, "device_seal: stdin must hold a base64 32-byte key\n");
		return 2;
	}
	push_message_view m = {.msg_id = argv[2],
			       .type = argv[3],
			       .app_id = "2882303761517",
			       .package = "com.example.news",
			       .notify_id = -1,
			       .sent_at_ms = 1765112345678};
	if (strcmp(argv[3], "pass_through") == 0) {
		m.payload = argv[4];
	} else if (strcmp(argv[3], "notification") == 0) {
		m.title = argv[4];
		m.description = "d";
		m.notify_id = 7;
		extra = json_pack("{s:s}", "k", "v");
		m.extra = extra;
	} else if (strcmp(argv[3], "deleted_messages") == 0) {
		m.count = strtol(argv[4], NULL, 10);
		m.app_id = m.package = NULL;
	} else {
		fprintf(stderr, "device_seal: unknown TYPE %s\n", argv[3]);
		return 2;
	}
	int err = push_seal_message(key, argv[1], &m, &out, &out_len);
	if (err) {
		fprintf(stderr, "device_seal: %s\n", mica_strerror(err));
		goto out;
	}
	FILE *f = fopen(argv[5], "wb");
	if (!f || fwrite(out, 1, out_len, f) != out_len || fclose(f) != 0) {
		fprintf(stderr, "device_seal: cannot write %s\n", argv[5]);
		goto out;
	}
	rc = 0;
out:
	mica_wipe(key, sizeof(key));
	json_decref(extra);
	free(out);
	return rc;
}
