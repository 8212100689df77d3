/* fuzz_kvcache_msg.c - libFuzzer target for lib/kvcache's invalidation
 * message parser: the input is a RESP2 byte stream, as read from the tracking
 * connection, fed to hiredis's reader in two pieces; every reply is
 * classified, every key handed to the callback must lie inside the reply, and
 * a reply that is not a well-formed key list never yields keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "kvcache.h"

static size_t keys_seen;

static void on_key(void *arg, const char *key, size_t len)
{
	const redisReply *payload = arg;
	int found = 0;
	for (size_t i = 0; i < payload->elements; i++)
		if (payload->element[i]->str == key && payload->element[i]->len == len)
			found = 1;
	CHECK(found);
	/* Touch every byte so ASan sees an out-of-bounds key. */
	volatile unsigned char sum = 0;
	for (size_t i = 0; i < len; i++)
		sum ^= (unsigned char)key[i];
	(void)sum;
	keys_seen++;
}

static void classify(const redisReply *r)
{
	const redisReply *payload =
		r->type == REDIS_REPLY_ARRAY && r->elements == 3 ? r->element[2] : NULL;
	keys_seen = 0;
	enum mica__kvcache_msg m = mica__kvcache_msg_parse(r, on_key, (void *)payload);
	CHECK(m == MICA__KVCACHE_KEYS || m == MICA__KVCACHE_FLUSH || m == MICA__KVCACHE_OTHER);
	if (m == MICA__KVCACHE_KEYS)
		CHECK(payload && payload->type == REDIS_REPLY_ARRAY &&
		      keys_seen == payload->elements);
	else
		CHECK(keys_seen == 0);
	/* A heartbeat answer is never an invalidation, and the other way round. */
	if (mica__kvcache_is_pong(r))
		CHECK(m == MICA__KVCACHE_OTHER && r->type == REDIS_REPLY_ARRAY && r->elements == 2);
}

/* Whether every array header ("*N" or ">N") in |data| counts at most |size|
 * elements. hiredis 0.14 allocates an array's element pointers as soon as it
 * reads the count (hiredis 1.x caps it with maxelements): a count no input of
 * this size can fill never completes a reply, and a huge one only measures
 * the allocator. The Redis server is trusted not to send them. */
static int counts_fit(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		if (data[i] != '*' && data[i] != '>')
			continue;
		size_t n = 0, j = i + 1;
		while (j < size && data[j] >= '0' && data[j] <= '9' && n <= size)
			n = n * 10 + (size_t)(data[j++] - '0');
		if (n > size)
			return 0;
	}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!counts_fit(data, size))
		return 0;
	redisReader *rd = redisReaderCreate();
	size_t half = size / 2;
	void *reply = NULL;
	CHECK(rd != NULL);
	for (int part = 0; part < 2; part++) {
		const char *p = (const char *)data + (part ? half : 0);
		size_t n = part ? size - half : half;
		if (redisReaderFeed(rd, p, n) != REDIS_OK)
			break;
		while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
			classify(reply);
			freeReplyObject(reply);
			reply = NULL;
		}
		if (rd->err)
			break;
	}
	redisReaderFree(rd);
	return 0;
}
