/* fuzz_mqtt.c - libFuzzer target for the MQTT 3.1.1 codec (mipush/mqtt.h).
 * The first input byte picks the sending side (low 2 bits; 0 means any) and
 * seeds the split points; the rest is a byte stream fed to the incremental
 * decoder in random pieces, each in its own exact-size allocation so that
 * ASan sees any read past a piece. Checked for every packet:
 *   - the one-shot decoder, run on the same stream, agrees: the same packets
 *     at the same offsets, then the same error and reason, or "truncated";
 *   - every accepted packet re-encodes to exactly the bytes it came from, and
 *     a SUBSCRIBE or UNSUBSCRIBE rebuilt from its entries does too;
 *   - every borrowed pointer lies inside the bytes it came from (touched).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "mipush/mqtt.h"

#define MAX_PACKET 1024

static uint32_t rng;

static uint32_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

/* Read every byte so ASan reports a borrowed field reaching out of bounds. */
static void touch(const void *p, size_t n)
{
	volatile uint8_t sum = 0;
	for (size_t i = 0; i < n; i++)
		sum ^= ((const uint8_t *)p)[i];
	(void)sum;
}

static void touch_packet(const struct push_mqtt_packet *pkt)
{
	const struct push_mqtt_connect *c = &pkt->connect;
	switch (pkt->type) {
	case PUSH_MQTT_CONNECT:
		touch(c->client_id.p, c->client_id.len);
		touch(c->will_topic.p, c->will_topic.len);
		touch(c->will_message.p, c->will_message.len);
		touch(c->username.p, c->username.len);
		touch(c->password.p, c->password.len);
		break;
	case PUSH_MQTT_PUBLISH:
		touch(pkt->publish.topic.p, pkt->publish.topic.len);
		touch(pkt->publish.payload, pkt->publish.payload_len);
		break;
	case PUSH_MQTT_SUBSCRIBE:
	case PUSH_MQTT_UNSUBSCRIBE:
		touch(pkt->subscribe.list, pkt->subscribe.list_len);
		break;
	case PUSH_MQTT_SUBACK:
		touch(pkt->suback.codes, pkt->suback.count);
		break;
	default:
		break;
	}
}

/* |pkt| was decoded from |orig| (|n| bytes): it must re-encode to them. */
static void check_round_trip(const struct push_mqtt_packet *pkt, const uint8_t *orig, size_t n)
{
	size_t len = 0;
	const char *why = NULL;
	CHECK(pkt->size == n);
	CHECK(push_mqtt_encode(pkt, NULL, 0, &len, &why) == 0);
	CHECK(len == n);
	uint8_t *out = malloc(len);
	CHECK(out);
	CHECK(push_mqtt_encode(pkt, out, len, &len, &why) == 0 && why == NULL);
	CHECK(len == n && memcmp(out, orig, n) == 0);
	if (len > 1) /* one byte short: refused, nothing claimed written */
		CHECK(push_mqtt_encode(pkt, out, len - 1, &len, &why) == MICA_ETOOBIG && len == n &&
		      strcmp(why, "buffer_too_small") == 0);

	if (pkt->type == PUSH_MQTT_SUBSCRIBE || pkt->type == PUSH_MQTT_UNSUBSCRIBE) {
		const struct push_mqtt_subscribe *s = &pkt->subscribe;
		struct push_mqtt_topic *t = calloc(s->count, sizeof(*t)), extra;
		size_t pos = 0, k = 0;
		CHECK(t);
		while (k < s->count && push_mqtt_topics_next(pkt->type, s, &pos, &t[k])) {
			touch(t[k].filter.p, t[k].filter.len);
			k++;
		}
		CHECK(k == s->count && pos == s->list_len);
		CHECK(!push_mqtt_topics_next(pkt->type, s, &pos, &extra));
		CHECK(push_mqtt_encode_topics(pkt->type, s->id, t, k, out, n, &len, &why) == 0);
		CHECK(len == n && memcmp(out, orig, n) == 0);
		free(t);
	}
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt, ref;
	uint8_t *buf = malloc(MAX_PACKET);
	size_t off = 0, start = 0, used, ref_used;
	const char *ref_why;
	int rc = 0, ref_rc;

	if (size < 1 || !buf) {
		free(buf);
		return 0;
	}
	enum push_mqtt_from from =
		(data[0] & 3) ? (enum push_mqtt_from)(data[0] & 3) : PUSH_MQTT_FROM_ANY;
	rng = 0x9e3779b9u ^ data[0] ^ (uint32_t)size << 8;
	data++, size--;
	push_mqtt_decoder_init(&d, from, MAX_PACKET, buf, MAX_PACKET);

	while (off < size && rc == 0) {
		/* Mostly small pieces (the splits that matter), sometimes large ones. */
		size_t piece = next_rand() % 4 == 0 ? 1 + next_rand() % 300 : 1 + next_rand() % 4;
		if (piece > size - off)
			piece = size - off;
		uint8_t *chunk = malloc(piece);
		CHECK(chunk);
		memcpy(chunk, data + off, piece);
		size_t coff = 0;
		while (coff < piece) {
			rc = push_mqtt_decoder_feed(&d, chunk + coff, piece - coff, &used, &pkt);
			CHECK(used <= piece - coff);
			coff += used;
			if (rc < 0)
				break;
			if (pkt.type == PUSH_MQTT_NONE) {
				CHECK(coff == piece);
				continue;
			}
			size_t end = off + coff;
			touch_packet(&pkt);
			check_round_trip(&pkt, data + start, end - start);
			ref_rc = push_mqtt_decode(from, MAX_PACKET, data + start, size - start,
						  &ref_used, &ref, &ref_why);
			CHECK(ref_rc == 0 && ref_used == end - start && ref.type == pkt.type);
			CHECK(push_mqtt_decoder_buffered(&d) == 0);
			start = end;
		}
		free(chunk);
		off += coff;
		if (rc < 0)
			break;
	}
	ref_rc = push_mqtt_decode(from, MAX_PACKET, data + start, size - start, &ref_used, &ref,
				  &ref_why);
	if (rc < 0) {
		/* The same refusal, for the same reason, in both decoders. */
		CHECK(ref_rc == rc && ref_why && push_mqtt_decoder_reason(&d) &&
		      strcmp(ref_why, push_mqtt_decoder_reason(&d)) == 0);
		CHECK(push_mqtt_decoder_feed(&d, data, size, &used, &pkt) == rc && used == 0);
	} else {
		CHECK(ref_rc == MICA_ETRUNCATED && strcmp(ref_why, "truncated") == 0);
	}
	free(buf);
	return 0;
}
