/* test_mqtt.c - the MQTT 3.1.1 codec (mipush/mqtt.h): every packet type
 * round-trips through the encoder and both decoders, feeding byte by byte
 * equals feeding whole, the fixed header is refused as it arrives (oversize
 * before the body), every refusal is asserted by its code and reason, and
 * each corrupt packet in tests/fixtures/mqtt/ is refused with the reason its
 * file is named for. */
#include <check.h>
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mipush/mqtt.h"
#include "tests/check_main.h"

#define FIXTURES "tests/fixtures/mqtt"
#define FIXTURE_MAX 4096

#define STR(s) ((struct push_mqtt_str){(s), sizeof(s) - 1})
#define BIN(s) ((struct push_mqtt_bin){(const uint8_t *)(s), sizeof(s) - 1})

static void assert_str(struct push_mqtt_str got, const char *want)
{
	ck_assert_uint_eq(got.len, strlen(want));
	ck_assert(memcmp(got.p, want, got.len) == 0);
}

/* Encode |in|, check the size query agrees, decode it back (one-shot) into
 * |out| from |from|; returns the encoded size. |wire| receives the bytes. */
static size_t round_trip(const struct push_mqtt_packet *in, enum push_mqtt_from from, uint8_t *wire,
			 size_t cap, struct push_mqtt_packet *out)
{
	size_t len = 0, size = 0, used = 0;
	const char *why = "unset";
	uint8_t again[512];

	ck_assert_int_eq(push_mqtt_encode(in, NULL, 0, &size, &why), 0);
	ck_assert_ptr_null(why);
	ck_assert_int_eq(push_mqtt_encode(in, wire, cap, &len, &why), 0);
	ck_assert_uint_eq(len, size);
	ck_assert_int_eq(push_mqtt_decode(from, PUSH_MQTT_MAX_PACKET, wire, len, &used, out, &why),
			 0);
	ck_assert_ptr_null(why);
	ck_assert_uint_eq(used, len);
	ck_assert_uint_eq(out->size, len);
	ck_assert_int_eq(out->type, in->type);
	/* The decoded packet encodes to the same bytes. */
	ck_assert_uint_le(len, sizeof(again));
	ck_assert_int_eq(push_mqtt_encode(out, again, sizeof(again), &size, &why), 0);
	ck_assert_uint_eq(size, len);
	ck_assert(memcmp(again, wire, len) == 0);
	return len;
}

START_TEST(connect_round_trips_with_every_field)
{
	struct push_mqtt_packet in = {.type = PUSH_MQTT_CONNECT,
				      .connect = {.clean_session = true,
						  .keepalive = 300,
						  .client_id = STR("regid-\xe4\xb8\xad"),
						  .will = true,
						  .will_qos = 1,
						  .will_retain = true,
						  .will_topic = STR("dev/gone"),
						  .will_message = BIN("b\0ye"),
						  .has_username = true,
						  .username = STR("user"),
						  .has_password = true,
						  .password = BIN("t\0ken\xff")}};
	struct push_mqtt_packet out;
	uint8_t wire[256];
	size_t len = round_trip(&in, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out);

	/* Fixed header, "MQTT", level 4, flags: user, password, will retain, will QoS 1, will,
	 * clean session; keepalive 300. */
	const uint8_t head[] = {0x10, (uint8_t)(len - 2), 0, 4, 'M', 'Q', 'T', 'T', 4, 0xee, 0x01,
				0x2c};
	ck_assert(memcmp(wire, head, sizeof(head)) == 0);
	const struct push_mqtt_connect *c = &out.connect;
	ck_assert_int_eq(c->level, PUSH_MQTT_LEVEL);
	ck_assert(c->clean_session && c->will && c->will_retain && c->has_username &&
		  c->has_password);
	ck_assert_int_eq(c->keepalive, 300);
	ck_assert_int_eq(c->will_qos, 1);
	assert_str(c->client_id, "regid-\xe4\xb8\xad");
	assert_str(c->will_topic, "dev/gone");
	ck_assert_uint_eq(c->will_message.len, 4);
	ck_assert(memcmp(c->will_message.p, "b\0ye", 4) == 0);
	assert_str(c->username, "user");
	ck_assert_uint_eq(c->password.len, 6);
	ck_assert(memcmp(c->password.p, "t\0ken\xff", 6) == 0);
	/* Borrowed: the fields point into the wire bytes. */
	ck_assert(c->client_id.p > (const char *)wire && c->client_id.p < (const char *)wire + len);
}
END_TEST

START_TEST(connect_minimal_and_empty_client_id)
{
	struct push_mqtt_packet in = {.type = PUSH_MQTT_CONNECT}, out;
	uint8_t wire[64];
	size_t len = round_trip(&in, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out);
	static const uint8_t want[] = {0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 0, 0, 0};
	ck_assert_uint_eq(len, sizeof(want));
	ck_assert(memcmp(wire, want, len) == 0);
	ck_assert(!out.connect.clean_session && !out.connect.will && !out.connect.has_username);
	ck_assert_uint_eq(out.connect.client_id.len, 0);
	/* Will fields without the will flag are not sent. */
	in.connect.will_qos = 2;
	in.connect.will_topic = STR("x/+");
	ck_assert_uint_eq(round_trip(&in, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out), len);
	ck_assert(memcmp(wire, want, len) == 0);
}
END_TEST

START_TEST(server_packets_round_trip)
{
	struct push_mqtt_packet out;
	uint8_t wire[64];
	static const uint8_t codes[] = {0, 1, 2, PUSH_MQTT_SUBACK_FAILURE};

	struct push_mqtt_packet connack = {.type = PUSH_MQTT_CONNACK,
					   .connack = {.session_present = true}};
	ck_assert_uint_eq(round_trip(&connack, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out), 4);
	ck_assert(memcmp(wire, "\x20\x02\x01\x00", 4) == 0);
	ck_assert(out.connack.session_present);
	ck_assert_int_eq(out.connack.return_code, 0);
	connack.connack = (struct push_mqtt_connack){.return_code = PUSH_MQTT_CONNACK_BAD_PROTOCOL};
	round_trip(&connack, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out);
	ck_assert(memcmp(wire, "\x20\x02\x00\x01", 4) == 0);
	ck_assert_int_eq(PUSH_MQTT_CONNACK_BAD_PROTOCOL, 1);

	struct push_mqtt_packet suback = {.type = PUSH_MQTT_SUBACK,
					  .suback = {.id = 0x1234, .codes = codes, .count = 4}};
	ck_assert_uint_eq(round_trip(&suback, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out), 8);
	ck_assert(memcmp(wire, "\x90\x06\x12\x34\x00\x01\x02\x80", 8) == 0);
	ck_assert_int_eq(out.suback.id, 0x1234);
	ck_assert_uint_eq(out.suback.count, 4);
	ck_assert(memcmp(out.suback.codes, codes, 4) == 0);

	struct push_mqtt_packet unsuback = {.type = PUSH_MQTT_UNSUBACK, .id = 7};
	round_trip(&unsuback, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out);
	ck_assert(memcmp(wire, "\xb0\x02\x00\x07", 4) == 0);
	ck_assert_int_eq(out.id, 7);

	struct push_mqtt_packet pingresp = {.type = PUSH_MQTT_PINGRESP};
	ck_assert_uint_eq(round_trip(&pingresp, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out),
			  2);
	ck_assert(memcmp(wire, "\xd0\x00", 2) == 0);
}
END_TEST

START_TEST(acks_and_pings_round_trip)
{
	struct push_mqtt_packet out;
	uint8_t wire[16];
	static const struct {
		uint8_t type;
		uint8_t first;
	} acks[] = {{PUSH_MQTT_PUBACK, 0x40},
		    {PUSH_MQTT_PUBREC, 0x50},
		    {PUSH_MQTT_PUBREL, 0x62},
		    {PUSH_MQTT_PUBCOMP, 0x70}};
	for (size_t i = 0; i < sizeof(acks) / sizeof(acks[0]); i++) {
		struct push_mqtt_packet in = {.type = acks[i].type, .id = 0xfffe};
		ck_assert_uint_eq(round_trip(&in, PUSH_MQTT_FROM_ANY, wire, sizeof(wire), &out), 4);
		ck_assert_int_eq(wire[0], acks[i].first);
		ck_assert(memcmp(wire + 1, "\x02\xff\xfe", 3) == 0);
		ck_assert_int_eq(out.id, 0xfffe);
		/* Both sides send these. */
		round_trip(&in, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out);
		round_trip(&in, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out);
	}
	struct push_mqtt_packet pingreq = {.type = PUSH_MQTT_PINGREQ};
	round_trip(&pingreq, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out);
	ck_assert(memcmp(wire, "\xc0\x00", 2) == 0);
	struct push_mqtt_packet disconnect = {.type = PUSH_MQTT_DISCONNECT};
	round_trip(&disconnect, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out);
	ck_assert(memcmp(wire, "\xe0\x00", 2) == 0);
}
END_TEST

START_TEST(publish_round_trips_at_each_qos)
{
	struct push_mqtt_packet out;
	uint8_t wire[64];
	struct push_mqtt_packet q0 = {.type = PUSH_MQTT_PUBLISH,
				      .publish = {.retain = true,
						  .topic = STR("a/b"),
						  .payload = (const uint8_t *)"hello",
						  .payload_len = 5}};
	ck_assert_uint_eq(round_trip(&q0, PUSH_MQTT_FROM_SERVER, wire, sizeof(wire), &out), 12);
	ck_assert(memcmp(wire,
			 "\x31\x0a\x00\x03"
			 "a/bhello",
			 12) == 0);
	ck_assert_int_eq(out.publish.qos, 0);
	ck_assert(out.publish.retain && !out.publish.dup);
	ck_assert_int_eq(out.publish.id, 0);
	assert_str(out.publish.topic, "a/b");
	ck_assert_uint_eq(out.publish.payload_len, 5);
	ck_assert(memcmp(out.publish.payload, "hello", 5) == 0);

	struct push_mqtt_packet q1 = {.type = PUSH_MQTT_PUBLISH,
				      .publish = {.qos = 1,
						  .dup = true,
						  .id = 513,
						  .topic = STR("$dev/x"),
						  .payload = (const uint8_t *)"\0\1",
						  .payload_len = 2}};
	ck_assert_uint_eq(round_trip(&q1, PUSH_MQTT_FROM_CLIENT, wire, sizeof(wire), &out), 14);
	ck_assert(memcmp(wire, "\x3a\x0c\x00\x06$dev/x\x02\x01\x00\x01", 14) == 0);
	ck_assert(out.publish.dup && !out.publish.retain);
	ck_assert_int_eq(out.publish.qos, 1);
	ck_assert_int_eq(out.publish.id, 513);

	/* QoS 2, empty payload; the id of a QoS 0 packet is not written. */
	struct push_mqtt_packet q2 = {.type = PUSH_MQTT_PUBLISH,
				      .publish = {.qos = 2, .id = 9, .topic = STR("t")}};
	ck_assert_uint_eq(round_trip(&q2, PUSH_MQTT_FROM_ANY, wire, sizeof(wire), &out), 7);
	ck_assert(memcmp(wire, "\x34\x05\x00\x01t\x00\x09", 7) == 0);
	ck_assert_uint_eq(out.publish.payload_len, 0);
	q2.publish.qos = 0;
	ck_assert_uint_eq(round_trip(&q2, PUSH_MQTT_FROM_ANY, wire, sizeof(wire), &out), 5);
	ck_assert_int_eq(out.publish.id, 0);
}
END_TEST

START_TEST(subscribe_and_unsubscribe_round_trip)
{
	const struct push_mqtt_topic topics[] = {
		{STR("a/+/c"), 1}, {STR("#"), 0}, {STR("d/#"), 2}, {STR("+"), 0}};
	uint8_t wire[128], again[128];
	size_t len, len2;
	const char *why;
	struct push_mqtt_packet out;
	struct push_mqtt_topic t;

	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 10, topics, 4, NULL, 0, &len, &why),
		0);
	ck_assert_uint_eq(len, 2 + 2 + (2 + 5 + 1) + (2 + 1 + 1) + (2 + 3 + 1) + (2 + 1 + 1));
	ck_assert_int_eq(push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 10, topics, 4, wire,
						 sizeof(wire), &len2, &why),
			 0);
	ck_assert_uint_eq(len2, len);
	ck_assert(memcmp(wire,
			 "\x82\x18\x00\x0a\x00\x05"
			 "a/+/c\x01",
			 12) == 0);
	ck_assert_int_eq(
		push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 1024, wire, len, &len2, &out, &why), 0);
	ck_assert_int_eq(out.type, PUSH_MQTT_SUBSCRIBE);
	ck_assert_int_eq(out.subscribe.id, 10);
	ck_assert_uint_eq(out.subscribe.count, 4);
	size_t pos = 0;
	for (size_t i = 0; i < 4; i++) {
		ck_assert(push_mqtt_topics_next(out.type, &out.subscribe, &pos, &t));
		ck_assert_uint_eq(t.filter.len, topics[i].filter.len);
		ck_assert(memcmp(t.filter.p, topics[i].filter.p, t.filter.len) == 0);
		ck_assert_int_eq(t.qos, topics[i].qos);
	}
	ck_assert(!push_mqtt_topics_next(out.type, &out.subscribe, &pos, &t));
	/* The decoded packet re-encodes as it came. */
	ck_assert_int_eq(push_mqtt_encode(&out, again, sizeof(again), &len2, &why), 0);
	ck_assert_uint_eq(len2, len);
	ck_assert(memcmp(again, wire, len) == 0);

	ck_assert_int_eq(push_mqtt_encode_topics(PUSH_MQTT_UNSUBSCRIBE, 11, topics, 2, wire,
						 sizeof(wire), &len, &why),
			 0);
	ck_assert_uint_eq(len, 2 + 2 + 7 + 3);
	ck_assert(memcmp(wire,
			 "\xa2\x0c\x00\x0b\x00\x05"
			 "a/+/c\x00\x01#",
			 14) == 0);
	ck_assert_int_eq(
		push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 1024, wire, len, &len2, &out, &why), 0);
	ck_assert_int_eq(out.type, PUSH_MQTT_UNSUBSCRIBE);
	ck_assert_uint_eq(out.subscribe.count, 2);
	pos = 0;
	ck_assert(push_mqtt_topics_next(out.type, &out.subscribe, &pos, &t));
	ck_assert(push_mqtt_topics_next(out.type, &out.subscribe, &pos, &t));
	assert_str(t.filter, "#");
	ck_assert_int_eq(t.qos, 0);
	ck_assert(!push_mqtt_topics_next(out.type, &out.subscribe, &pos, &t));
	ck_assert_int_eq(push_mqtt_encode(&out, again, sizeof(again), &len2, &why), 0);
	ck_assert(len2 == len && memcmp(again, wire, len) == 0);
}
END_TEST

/* A stream of one packet of every type a client sends, then every type a server sends. */
static size_t build_stream(uint8_t *buf, size_t cap, size_t *client_part)
{
	static uint8_t big[300];
	const struct push_mqtt_topic sub[] = {{STR("dev/regid-1"), 1}};
	static const uint8_t codes[] = {1};
	const struct push_mqtt_packet client[] = {
		{.type = PUSH_MQTT_CONNECT,
		 .connect = {.clean_session = true,
			     .keepalive = 60,
			     .client_id = STR("regid-1"),
			     .has_username = true,
			     .username = STR("u"),
			     .has_password = true,
			     .password = BIN("p")}},
		{.type = PUSH_MQTT_PUBLISH,
		 .publish = {.qos = 1,
			     .id = 1,
			     .topic = STR("up"),
			     .payload = big,
			     .payload_len = sizeof(big)}},
		{.type = PUSH_MQTT_PUBACK, .id = 2},
		{.type = PUSH_MQTT_PUBREC, .id = 3},
		{.type = PUSH_MQTT_PUBREL, .id = 3},
		{.type = PUSH_MQTT_PUBCOMP, .id = 3},
		{.type = PUSH_MQTT_PINGREQ},
		{.type = PUSH_MQTT_DISCONNECT},
	};
	const struct push_mqtt_packet server[] = {
		{.type = PUSH_MQTT_CONNACK},
		{.type = PUSH_MQTT_SUBACK, .suback = {.id = 4, .codes = codes, .count = 1}},
		{.type = PUSH_MQTT_UNSUBACK, .id = 5},
		{.type = PUSH_MQTT_PUBLISH,
		 .publish = {.topic = STR("dev/regid-1"),
			     .payload = (const uint8_t *)"x",
			     .payload_len = 1}},
		{.type = PUSH_MQTT_PINGRESP},
	};
	size_t off = 0, len;
	const char *why;

	memset(big, 'z', sizeof(big));
	for (size_t i = 0; i < sizeof(client) / sizeof(client[0]); i++) {
		ck_assert_int_eq(push_mqtt_encode(&client[i], buf + off, cap - off, &len, &why), 0);
		off += len;
	}
	ck_assert_int_eq(push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 4, sub, 1, buf + off,
						 cap - off, &len, &why),
			 0);
	off += len;
	ck_assert_int_eq(push_mqtt_encode_topics(PUSH_MQTT_UNSUBSCRIBE, 5, sub, 1, buf + off,
						 cap - off, &len, &why),
			 0);
	off += len;
	*client_part = off;
	for (size_t i = 0; i < sizeof(server) / sizeof(server[0]); i++) {
		ck_assert_int_eq(push_mqtt_encode(&server[i], buf + off, cap - off, &len, &why), 0);
		off += len;
	}
	return off;
}

/* Feed |n| bytes of |in| to |d| in pieces of |piece| bytes; records each packet's type and
 * its re-encoded bytes (checked against the stream), returns the packet count. */
static size_t feed_in_pieces(struct push_mqtt_decoder *d, const uint8_t *in, size_t n, size_t piece,
			     uint8_t *types)
{
	size_t off = 0, start = 0, count = 0;
	while (off < n) {
		size_t take = n - off < piece ? n - off : piece, coff = 0;
		while (coff < take) {
			struct push_mqtt_packet pkt;
			size_t used, len;
			uint8_t again[512];
			const char *why;
			ck_assert_int_eq(push_mqtt_decoder_feed(d, in + off + coff, take - coff,
								&used, &pkt),
					 0);
			coff += used;
			if (pkt.type == PUSH_MQTT_NONE) {
				ck_assert_uint_eq(coff, take);
				continue;
			}
			types[count++] = pkt.type;
			ck_assert_uint_eq(pkt.size, off + coff - start);
			ck_assert_int_eq(push_mqtt_encode(&pkt, again, sizeof(again), &len, &why),
					 0);
			ck_assert(len == pkt.size && memcmp(again, in + start, len) == 0);
			start = off + coff;
		}
		off += take;
	}
	ck_assert_uint_eq(start, n);
	ck_assert_uint_eq(push_mqtt_decoder_buffered(d), 0);
	return count;
}

START_TEST(byte_at_a_time_equals_whole)
{
	uint8_t stream[1024], buf[512];
	uint8_t whole[32], bytes[32], pieces[32];
	size_t client_part, n = build_stream(stream, sizeof(stream), &client_part);
	struct push_mqtt_decoder d;

	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_ANY, sizeof(buf), buf, sizeof(buf));
	size_t nw = feed_in_pieces(&d, stream, n, n, whole);
	ck_assert_uint_eq(nw, 15);
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_ANY, sizeof(buf), buf, sizeof(buf));
	ck_assert_uint_eq(feed_in_pieces(&d, stream, n, 1, bytes), nw);
	ck_assert(memcmp(whole, bytes, nw) == 0);
	for (size_t piece = 2; piece < 40; piece++) {
		push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_ANY, sizeof(buf), buf, sizeof(buf));
		ck_assert_uint_eq(feed_in_pieces(&d, stream, n, piece, pieces), nw);
		ck_assert(memcmp(whole, pieces, nw) == 0);
	}
	/* The client half as a server sees it, the server half as a client does. */
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, sizeof(buf), buf, sizeof(buf));
	ck_assert_uint_eq(feed_in_pieces(&d, stream, client_part, 1, pieces), 10);
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_SERVER, sizeof(buf), buf, sizeof(buf));
	ck_assert_uint_eq(feed_in_pieces(&d, stream + client_part, n - client_part, 3, pieces), 5);
}
END_TEST

START_TEST(whole_packets_decode_in_place_split_ones_in_the_buffer)
{
	uint8_t stream[1024], buf[512];
	size_t client_part, n = build_stream(stream, sizeof(stream), &client_part);
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt;
	size_t used;
	const char *why = "unset";
	(void)n;

	/* No buffer at all: whole packets still decode, borrowing the input. */
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 1024, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream, client_part, &used, &pkt), 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_CONNECT);
	ck_assert(pkt.connect.client_id.p > (const char *)stream &&
		  pkt.connect.client_id.p < (const char *)stream + used);
	size_t connect_len = used;
	/* The PUBLISH (309 bytes) split after its 3-byte header: no buffer needed... */
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream + connect_len, 3, &used, &pkt), 0);
	ck_assert_uint_eq(used, 3);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
	ck_assert_uint_eq(push_mqtt_decoder_buffered(&d), 0);
	ck_assert_uint_eq(push_mqtt_decoder_pending(&d), 3);
	/* ...and the rest in one piece is decoded in place too. */
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream + connect_len + 3,
						client_part - connect_len - 3, &used, &pkt),
			 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_PUBLISH);
	ck_assert(pkt.publish.payload > stream && pkt.publish.payload < stream + client_part);
	size_t at = connect_len + 3 + used;

	/* A body split in two needs the buffer: refused without one, by name. */
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream + at, 3, &used, &pkt), MICA_EINVAL);
	ck_assert_str_eq(push_mqtt_decoder_reason(&d), "no_buffer");
	/* Sticky: nothing is read after a failure. */
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream + at, 4, &used, &pkt), MICA_EINVAL);
	ck_assert_uint_eq(used, 0);

	/* With a buffer, the split body is gathered there and fields point into it. */
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 1024, buf, sizeof(buf));
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream, connect_len - 5, &used, &pkt), 0);
	ck_assert_uint_eq(push_mqtt_decoder_buffered(&d), connect_len - 5 - 2);
	ck_assert_uint_eq(push_mqtt_decoder_pending(&d), connect_len - 5);
	ck_assert_int_eq(push_mqtt_decoder_set_buffer(&d, NULL, 0, &why), MICA_ESTATE);
	ck_assert_str_eq(why, "buffer_in_use");
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, stream + connect_len - 5, 5, &used, &pkt), 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_CONNECT);
	ck_assert(pkt.connect.client_id.p > (const char *)buf &&
		  pkt.connect.client_id.p < (const char *)buf + sizeof(buf));
	assert_str(pkt.connect.client_id, "regid-1");
	/* Between packets the buffer may be taken away (an idle connection). */
	ck_assert_uint_eq(push_mqtt_decoder_buffered(&d), 0);
	ck_assert_uint_eq(push_mqtt_decoder_pending(&d), 0);
	ck_assert_int_eq(push_mqtt_decoder_set_buffer(&d, NULL, 0, &why), 0);
}
END_TEST

/* Decode |n| bytes (client to server, max |max|) expecting |code| and |reason|, both
 * whole and fed one byte at a time. */
static void refused_as(enum push_mqtt_from from, size_t max, const uint8_t *in, size_t n, int code,
		       const char *reason)
{
	struct push_mqtt_packet pkt;
	struct push_mqtt_decoder d;
	uint8_t buf[4096];
	size_t used = 99;
	const char *why = NULL;
	int rc = 0;

	ck_assert_int_eq(push_mqtt_decode(from, max, in, n, &used, &pkt, &why), code);
	ck_assert_msg(why && strcmp(why, reason) == 0, "reason %s, want %s", why ? why : "(null)",
		      reason);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
	ck_assert_uint_eq(used, 0);
	push_mqtt_decoder_init(&d, from, max, buf, sizeof(buf));
	for (size_t i = 0; i < n && rc == 0; i++) {
		rc = push_mqtt_decoder_feed(&d, in + i, 1, &used, &pkt);
		ck_assert_uint_eq(used, 1);
		ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
	}
	if (code == MICA_ETRUNCATED) {
		ck_assert_int_eq(rc, 0); /* the stream decoder waits for more */
		ck_assert_ptr_null(push_mqtt_decoder_reason(&d));
		return;
	}
	ck_assert_int_eq(rc, code);
	ck_assert_str_eq(push_mqtt_decoder_reason(&d), reason);
}

#define REFUSED(from, bytes, code, reason)                                                         \
	refused_as(from, FIXTURE_MAX, (const uint8_t *)(bytes), sizeof(bytes) - 1, code, reason)

START_TEST(fixed_header_refusals)
{
	/* A 5th length byte is refused when the 4th announces it, not after. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x30\xff\xff\xff\xff", MICA_EBADHEADER,
		"bad_remaining_length");
	/* Longer than needed: 0 in 2 bytes, 127 in 2, 128 in 3. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xc0\x80\x00", MICA_EBADHEADER, "bad_remaining_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x30\xff\x00", MICA_EBADHEADER, "bad_remaining_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x30\x80\x81\x00", MICA_EBADHEADER, "bad_remaining_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x00\x00", MICA_EBADHEADER, "reserved_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xf0", MICA_EBADHEADER, "reserved_type");
	/* What the other side sends. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x20\x02\x00\x00", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xd0\x00", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x10", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x82", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xa2", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xc0", MICA_EBADHEADER, "unexpected_type");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xe0", MICA_EBADHEADER, "unexpected_type");
	/* Each type's flags; the first byte alone decides. */
	static const uint8_t good[] = {0x10, 0x20, 0x40, 0x50, 0x62, 0x70, 0x82,
				       0x90, 0xa2, 0xb0, 0xc0, 0xd0, 0xe0};
	for (size_t i = 0; i < sizeof(good); i++)
		for (uint8_t f = 0; f < 16; f++) {
			uint8_t b = (uint8_t)((good[i] & 0xf0) | f);
			if (b == good[i])
				continue;
			refused_as(PUSH_MQTT_FROM_ANY, 64, &b, 1, MICA_EBADHEADER,
				   "reserved_flags");
		}
	REFUSED(PUSH_MQTT_FROM_ANY, "\x36", MICA_EBADHEADER, "bad_qos");
	REFUSED(PUSH_MQTT_FROM_ANY, "\x3e", MICA_EBADHEADER, "bad_qos");
	REFUSED(PUSH_MQTT_FROM_ANY, "\x38", MICA_EBADHEADER, "dup_with_qos0");
	REFUSED(PUSH_MQTT_FROM_ANY, "\x39", MICA_EBADHEADER, "dup_with_qos0");
	REFUSED(PUSH_MQTT_FROM_ANY, "", MICA_ETRUNCATED, "truncated");
	REFUSED(PUSH_MQTT_FROM_ANY, "\x30", MICA_ETRUNCATED, "truncated");
	REFUSED(PUSH_MQTT_FROM_ANY, "\x30\xff\xff", MICA_ETRUNCATED, "truncated");
}
END_TEST

START_TEST(oversize_is_refused_from_the_header)
{
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt;
	size_t used;
	/* A 128-byte PUBLISH: 3 bytes of header, 125 of body. */
	uint8_t p[128] = {0x30, 0x7d, 0x00, 0x01, 't'};
	const char *why;

	/* A maximum of exactly the packet's size accepts it; one less refuses it. */
	ck_assert_int_eq(push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 127, p, 127, &used, &pkt, &why),
			 0);
	ck_assert_uint_eq(used, 127);
	p[1] = 0x7e;
	ck_assert_int_eq(push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 127, p, 128, &used, &pkt, &why),
			 MICA_ETOOBIG);
	ck_assert_str_eq(why, "oversize");
	/* The stream decoder refuses as soon as the length is read: no body byte is taken, and
	 * no buffer is needed. */
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 127, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, p, sizeof(p), &used, &pkt), MICA_ETOOBIG);
	ck_assert_uint_eq(used, 2);
	ck_assert_str_eq(push_mqtt_decoder_reason(&d), "oversize");
	/* The protocol's largest announcement, under the protocol's own limit: waits for more. */
	static const uint8_t huge[] = {0x30, 0xff, 0xff, 0xff, 0x7f};
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, PUSH_MQTT_MAX_PACKET, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, huge, sizeof(huge), &used, &pkt), 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
	ck_assert_uint_eq(used, 5);
	/* A limit below any header still refuses cleanly. */
	refused_as(PUSH_MQTT_FROM_CLIENT, 2, huge, sizeof(huge), MICA_ETOOBIG, "oversize");
	refused_as(PUSH_MQTT_FROM_CLIENT, 0, (const uint8_t *)"\xc0\x01\x00", 3, MICA_ETOOBIG,
		   "oversize");
}
END_TEST

START_TEST(remaining_length_boundaries)
{
	/* Lengths at each width's edges encode in the fewest bytes and decode back. */
	static const size_t lengths[] = {0, 127, 128, 16383, 16384, 2097151, 2097152};
	static const size_t heads[] = {2, 2, 3, 3, 4, 4, 5};
	size_t cap = 2097152 + 5, len, used;
	uint8_t *src = calloc(1, cap), *dst = malloc(cap);
	struct push_mqtt_packet out;
	const char *why;

	ck_assert(src && dst);
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		/* A QoS 0 PUBLISH to "t" has 3 bytes before its payload; 0 is a PINGREQ. */
		size_t r = lengths[i];
		struct push_mqtt_packet in = {
			.type = PUSH_MQTT_PUBLISH,
			.publish = {.topic = STR("t"), .payload = src, .payload_len = r - 3}};
		if (r == 0)
			in = (struct push_mqtt_packet){.type = PUSH_MQTT_PINGREQ};
		ck_assert_int_eq(push_mqtt_encode(&in, NULL, 0, &len, &why), 0);
		ck_assert_uint_eq(len, heads[i] + r);
		ck_assert_int_eq(push_mqtt_encode(&in, dst, cap, &len, &why), 0);
		ck_assert_int_eq(push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, PUSH_MQTT_MAX_PACKET, dst,
						  len, &used, &out, &why),
				 0);
		ck_assert_uint_eq(used, len);
		ck_assert_uint_eq(out.size, len);
		if (r)
			ck_assert_uint_eq(out.publish.payload_len, r - 3);
	}
	/* The largest packet: the size query only (it does not read the payload). */
	struct push_mqtt_packet max = {.type = PUSH_MQTT_PUBLISH,
				       .publish = {.topic = STR("t"),
						   .payload = src,
						   .payload_len = PUSH_MQTT_MAX_REMAINING - 3}};
	ck_assert_int_eq(push_mqtt_encode(&max, NULL, 0, &len, &why), 0);
	ck_assert_uint_eq(len, PUSH_MQTT_MAX_PACKET);
	ck_assert_int_eq(push_mqtt_encode(&max, dst, cap, &len, &why), MICA_ETOOBIG);
	ck_assert_str_eq(why, "buffer_too_small");
	/* One byte beyond the protocol's limit cannot be encoded at all. */
	max.publish.payload_len++;
	ck_assert_int_eq(push_mqtt_encode(&max, NULL, 0, &len, &why), MICA_ETOOBIG);
	ck_assert_str_eq(why, "oversize");
	/* 268435455 announced in 4 bytes is accepted by the header check. */
	struct push_mqtt_decoder d;
	static const uint8_t huge[] = {0x30, 0xff, 0xff, 0xff, 0x7f};
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, PUSH_MQTT_MAX_PACKET, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, huge, sizeof(huge), &used, &out), 0);
	ck_assert_uint_eq(used, sizeof(huge));
	free(src);
	free(dst);
}
END_TEST

START_TEST(connect_refusals)
{
	/* Built by hand: [type][len]["MQTT"][4][flags][keepalive][payload]. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_protocol_name");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04mqtt\x04\x02\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_protocol_name");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0b\x00\x03MQT\x04\x02\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_protocol_name");
	/* Another level: MICA_EBADVERSION, the one refusal answered with a CONNACK (code 1). */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00",
		MICA_EBADVERSION, "bad_protocol_level");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00",
		MICA_EBADVERSION, "bad_protocol_level");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00",
		MICA_EBADVERSION, "bad_protocol_level");
	/* The level's refusal comes before anything after it, even garbage. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x08\x00\x04MQTT\x05\xff", MICA_EBADVERSION,
		"bad_protocol_level");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00",
		MICA_EBADHEADER, "connect_reserved_flag");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_qos");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x04\x22\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_will_flags");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x04\x12\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_will_flags");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0f\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x01p",
		MICA_EBADHEADER, "password_without_username");
	/* Fields that do not fill the packet exactly. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0a\x00\x04MQTT\x04\x02\x00\x3c", MICA_EBADHEADER,
		"bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\x00",
		MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0c\x00\x04MQTT\x04\x82\x00\x3c\x00\x00",
		MICA_EBADHEADER, "bad_length"); /* user name flag, no user name */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0f\x00\x04MQTT\x04\x06\x00\x3c\x00\x00\x00\x01w",
		MICA_EBADHEADER, "bad_length"); /* will topic, no will message */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x03\x00\x04M", MICA_EBADHEADER, "bad_length");
	/* Strings. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01\x00",
		MICA_EBADENCODING, "nul_in_string");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xc0\x80",
		MICA_EBADENCODING, "bad_utf8");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x10\x13\x00\x04MQTT\x04\x06\x00\x3c\x00\x00\x00\x02w+\x00\x01x", MICA_EINVAL,
		"wildcard_in_topic");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x10\x11\x00\x04MQTT\x04\x06\x00\x3c\x00\x00\x00\x00\x00\x01x", MICA_EINVAL,
		"empty_topic");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0f\x00\x04MQTT\x04\x82\x00\x3c\x00\x00\x00\x01\xff",
		MICA_EBADENCODING, "bad_utf8");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
		MICA_ETRUNCATED, "truncated");
}
END_TEST

START_TEST(connect_accepts_what_the_spec_allows)
{
	struct push_mqtt_packet pkt;
	size_t used;
	const char *why;
	/* Empty client id with clean session 0: the server decides (CONNACK 2), not the codec;
	 * binary password with NUL and 0xff; control characters and U+FFFF in the user name. */
	static const uint8_t p[] = "\x10\x17\x00\x04MQTT\x04\xc0\x00\x00\x00\x00"
				   "\x00\x04\x01\xef\xbf\xbf\x00\x03\x00\xff\x01";
	ck_assert_int_eq(
		push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 1024, p, sizeof(p) - 1, &used, &pkt, &why),
		0);
	ck_assert(!pkt.connect.clean_session);
	ck_assert_uint_eq(pkt.connect.client_id.len, 0);
	ck_assert_uint_eq(pkt.connect.username.len, 4);
	ck_assert_uint_eq(pkt.connect.password.len, 3);
	ck_assert_int_eq(pkt.connect.keepalive, 0);
}
END_TEST

START_TEST(body_refusals_by_type)
{
	/* PUBLISH */
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x32\x07\x00\x03"
		"a/b\x00\x00",
		MICA_EBADHEADER, "zero_packet_id");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x34\x06\x00\x03"
		"a/b\x00",
		MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x30\x01\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x30\x04\x00\x02#x", MICA_EINVAL, "wildcard_in_topic");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x30\x05\x00\x03"
		"a+b",
		MICA_EINVAL, "wildcard_in_topic");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x30\x02\x00\x00", MICA_EINVAL, "empty_topic");
	REFUSED(PUSH_MQTT_FROM_SERVER,
		"\x30\x05\x00\x03"
		"a\xed\xbf\xbf",
		MICA_EBADENCODING, "bad_utf8");
	/* Acknowledgements: exactly two bytes, non-zero id. */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x40\x01\x01", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x40\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x50\x02\x00\x00", MICA_EBADHEADER, "zero_packet_id");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x62\x02\x00\x00", MICA_EBADHEADER, "zero_packet_id");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x70\x03\x00\x01\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xb0\x02\x00\x00", MICA_EBADHEADER, "zero_packet_id");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xc0\x01\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\xd0\x01\x00", MICA_EBADHEADER, "bad_length");
	/* SUBSCRIBE and UNSUBSCRIBE */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x82\x02\x00\x01", MICA_EBADHEADER, "no_topics");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x82\x01\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x07\x00\x00\x00\x02"
		"a\x00\x00",
		MICA_EBADHEADER, "zero_packet_id");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x06\x00\x01\x00\x02"
		"ab",
		MICA_EBADHEADER, "bad_length"); /* no QoS byte */
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x07\x00\x01\x00\x02"
		"ab\x04",
		MICA_EBADHEADER, "bad_subscription_options");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x07\x00\x01\x00\x02"
		"ab\x80",
		MICA_EBADHEADER, "bad_subscription_options");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x07\x00\x01\x00\x02"
		"ab\x03",
		MICA_EBADHEADER, "bad_qos");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\x82\x07\x00\x01\x00\x02#a\x00", MICA_EINVAL,
		"bad_topic_filter");
	REFUSED(PUSH_MQTT_FROM_CLIENT,
		"\x82\x0a\x00\x01\x00\x02"
		"ab\x00\x00\x01"
		"a",
		MICA_EBADHEADER, "bad_length"); /* the second entry has no QoS byte */
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xa2\x02\x00\x07", MICA_EBADHEADER, "no_topics");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xa2\x05\x00\x07\x00\x01\x00", MICA_EBADENCODING,
		"nul_in_string");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xa2\x06\x00\x07\x00\x02++", MICA_EINVAL,
		"bad_topic_filter");
	REFUSED(PUSH_MQTT_FROM_CLIENT, "\xa2\x04\x00\x07\x00\x00", MICA_EINVAL, "empty_topic");
	/* CONNACK */
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x20\x03\x00\x00\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x20\x01\x00", MICA_EBADHEADER, "bad_length");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x20\x02\x02\x00", MICA_EBADHEADER, "bad_connack");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x20\x02\x00\x06", MICA_EBADHEADER, "bad_connack");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x20\x02\x01\x05", MICA_EBADHEADER, "bad_connack");
	/* SUBACK */
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x90\x03\x00\x01\x03", MICA_EBADHEADER, "bad_suback_code");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x90\x03\x00\x01\x81", MICA_EBADHEADER, "bad_suback_code");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x90\x02\x00\x01", MICA_EBADHEADER, "no_topics");
	REFUSED(PUSH_MQTT_FROM_SERVER, "\x90\x03\x00\x00\x01", MICA_EBADHEADER, "zero_packet_id");
}
END_TEST

START_TEST(errors_are_sticky_until_init)
{
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt;
	size_t used;
	static const uint8_t bad[] = {0xc1, 0x00}, ping[] = {0xc0, 0x00};

	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 64, NULL, 0);
	ck_assert_ptr_null(push_mqtt_decoder_reason(&d));
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, bad, 2, &used, &pkt), MICA_EBADHEADER);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, ping, 2, &used, &pkt), MICA_EBADHEADER);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
	ck_assert_str_eq(push_mqtt_decoder_reason(&d), "reserved_flags");
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 64, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, ping, 2, &used, &pkt), 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_PINGREQ);
	/* Misuse is named too. */
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, NULL, 1, &used, &pkt), MICA_EINVAL);
	ck_assert_str_eq(push_mqtt_decoder_reason(&d), "bad_argument");
	const char *why;
	ck_assert_int_eq(push_mqtt_decode(PUSH_MQTT_FROM_CLIENT, 64, NULL, 1, &used, &pkt, &why),
			 MICA_EINVAL);
	ck_assert_str_eq(why, "bad_argument");
	/* An empty feed is not an error. */
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, 64, NULL, 0);
	ck_assert_int_eq(push_mqtt_decoder_feed(&d, NULL, 0, &used, &pkt), 0);
	ck_assert_int_eq(pkt.type, PUSH_MQTT_NONE);
}
END_TEST

static void encode_refused(const struct push_mqtt_packet *p, int code, const char *reason)
{
	uint8_t out[256];
	size_t len = 77;
	const char *why = NULL;
	ck_assert_int_eq(push_mqtt_encode(p, out, sizeof(out), &len, &why), code);
	ck_assert_msg(why && strcmp(why, reason) == 0, "reason %s, want %s", why ? why : "(null)",
		      reason);
	ck_assert_uint_eq(len, 0);
	/* The size query refuses it the same way. */
	ck_assert_int_eq(push_mqtt_encode(p, NULL, 0, &len, &why), code);
	ck_assert_str_eq(why, reason);
}

START_TEST(encoders_refuse_what_decoders_refuse)
{
	static char long_topic[PUSH_MQTT_MAX_STRING + 1];
	memset(long_topic, 'a', sizeof(long_topic));
	struct push_mqtt_packet p = {.type = PUSH_MQTT_PUBLISH, .publish = {.topic = STR("a/+")}};
	encode_refused(&p, MICA_EINVAL, "wildcard_in_topic");
	p.publish.topic = STR("");
	encode_refused(&p, MICA_EINVAL, "empty_topic");
	p.publish.topic = STR("a\xc3");
	encode_refused(&p, MICA_EBADENCODING, "bad_utf8");
	p.publish.topic = (struct push_mqtt_str){long_topic, sizeof(long_topic)};
	encode_refused(&p, MICA_EINVAL, "string_too_long");
	p.publish.topic = STR("a/b");
	p.publish.qos = 1;
	encode_refused(&p, MICA_EBADHEADER, "zero_packet_id");
	p.publish.qos = 3;
	p.publish.id = 1;
	encode_refused(&p, MICA_EBADHEADER, "bad_qos");
	p.publish.qos = 0;
	p.publish.dup = true;
	encode_refused(&p, MICA_EBADHEADER, "dup_with_qos0");
	p.publish.dup = false;
	p.publish.payload_len = 1;
	encode_refused(&p, MICA_EINVAL, "bad_argument");

	struct push_mqtt_packet c = {.type = PUSH_MQTT_CONNECT,
				     .connect = {.has_password = true, .password = BIN("x")}};
	encode_refused(&c, MICA_EBADHEADER, "password_without_username");
	c.connect.has_username = true;
	c.connect.username = STR("\0");
	encode_refused(&c, MICA_EBADENCODING, "nul_in_string");
	c.connect.username = STR("u");
	c.connect.will = true;
	c.connect.will_topic = STR("w/#");
	encode_refused(&c, MICA_EINVAL, "wildcard_in_topic");
	c.connect.will_topic = STR("w");
	c.connect.will_qos = 3;
	encode_refused(&c, MICA_EBADHEADER, "bad_qos");
	c.connect.will_qos = 0;
	c.connect.client_id = (struct push_mqtt_str){long_topic, sizeof(long_topic)};
	encode_refused(&c, MICA_EINVAL, "string_too_long");
	c.connect.client_id = STR("id");
	c.connect.password = (struct push_mqtt_bin){NULL, 3};
	encode_refused(&c, MICA_EINVAL, "bad_argument");

	struct push_mqtt_packet ack = {.type = PUSH_MQTT_PUBACK};
	encode_refused(&ack, MICA_EBADHEADER, "zero_packet_id");
	ack.type = PUSH_MQTT_UNSUBACK;
	encode_refused(&ack, MICA_EBADHEADER, "zero_packet_id");
	struct push_mqtt_packet ca = {.type = PUSH_MQTT_CONNACK, .connack = {.return_code = 6}};
	encode_refused(&ca, MICA_EBADHEADER, "bad_connack");
	ca.connack = (struct push_mqtt_connack){.session_present = true, .return_code = 4};
	encode_refused(&ca, MICA_EBADHEADER, "bad_connack");
	static const uint8_t codes[] = {0, 3};
	struct push_mqtt_packet sa = {.type = PUSH_MQTT_SUBACK,
				      .suback = {.id = 1, .codes = codes, .count = 2}};
	encode_refused(&sa, MICA_EBADHEADER, "bad_suback_code");
	sa.suback.count = 0;
	encode_refused(&sa, MICA_EBADHEADER, "no_topics");
	struct push_mqtt_packet sub = {
		.type = PUSH_MQTT_SUBSCRIBE,
		.subscribe = {.id = 1, .list = (const uint8_t *)"\x00\x01#\x04", .list_len = 4}};
	encode_refused(&sub, MICA_EBADHEADER, "bad_subscription_options");
	struct push_mqtt_packet none = {.type = PUSH_MQTT_NONE};
	encode_refused(&none, MICA_EINVAL, "bad_argument");
	none.type = 15;
	encode_refused(&none, MICA_EINVAL, "bad_argument");

	/* The topic-list encoder. */
	const struct push_mqtt_topic bad_filter[] = {{STR("a/#/b"), 0}};
	const struct push_mqtt_topic bad_qos[] = {{STR("a"), 3}};
	size_t len;
	const char *why;
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 1, bad_filter, 1, NULL, 0, &len, &why),
		MICA_EINVAL);
	ck_assert_str_eq(why, "bad_topic_filter");
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 1, bad_qos, 1, NULL, 0, &len, &why),
		MICA_EBADHEADER);
	ck_assert_str_eq(why, "bad_qos");
	/* QoS is not sent in an UNSUBSCRIBE, so not checked. */
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_UNSUBSCRIBE, 1, bad_qos, 1, NULL, 0, &len, &why),
		0);
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 1, bad_qos, 0, NULL, 0, &len, &why),
		MICA_EBADHEADER);
	ck_assert_str_eq(why, "no_topics");
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 0, bad_qos, 1, NULL, 0, &len, &why),
		MICA_EBADHEADER);
	ck_assert_str_eq(why, "zero_packet_id");
	ck_assert_int_eq(
		push_mqtt_encode_topics(PUSH_MQTT_PUBLISH, 1, bad_qos, 1, NULL, 0, &len, &why),
		MICA_EINVAL);
	ck_assert_str_eq(why, "bad_argument");
}
END_TEST

START_TEST(encoder_size_query_and_small_buffer)
{
	struct push_mqtt_packet p = {.type = PUSH_MQTT_PUBLISH,
				     .publish = {.topic = STR("a"),
						 .payload = (const uint8_t *)"xyz",
						 .payload_len = 3}};
	uint8_t out[16];
	size_t len = 0;
	const char *why;

	ck_assert_int_eq(push_mqtt_encode(&p, NULL, 0, &len, &why), 0);
	ck_assert_uint_eq(len, 8);
	memset(out, 0xaa, sizeof(out));
	ck_assert_int_eq(push_mqtt_encode(&p, out, 7, &len, &why), MICA_ETOOBIG);
	ck_assert_str_eq(why, "buffer_too_small");
	ck_assert_uint_eq(len, 8);	/* the size needed */
	ck_assert_int_eq(out[0], 0xaa); /* nothing written */
	ck_assert_int_eq(push_mqtt_encode(&p, out, 8, &len, &why), 0);
	ck_assert(memcmp(out,
			 "\x30\x06\x00\x01"
			 "axyz",
			 8) == 0);
	ck_assert_int_eq(push_mqtt_encode(NULL, out, 8, &len, &why), MICA_EINVAL);
	ck_assert_str_eq(why, "bad_argument");
	ck_assert_int_eq(push_mqtt_encode(&p, out, 8, NULL, NULL), MICA_EINVAL);
}
END_TEST

START_TEST(utf8_rules)
{
	static const struct {
		const char *s;
		size_t n;
		int rc;
		const char *reason;
	} cases[] = {
		{"plain ascii", 11, 0, NULL},
		{"\xc2\xa9", 2, 0, NULL},	  /* U+00A9, 2 bytes */
		{"\xe4\xb8\xad", 3, 0, NULL},	  /* U+4E2D, 3 bytes */
		{"\xf0\x9f\x98\x80", 4, 0, NULL}, /* U+1F600, 4 bytes */
		{"\xf4\x8f\xbf\xbf", 4, 0, NULL}, /* U+10FFFF, the last */
		{"\xef\xbb\xbf", 3, 0, NULL},	  /* U+FEFF kept, not skipped [MQTT-1.5.3-3] */
		{"\xef\xbf\xbf", 3, 0, NULL},	  /* U+FFFF, a non-character: allowed */
		{"\x01\x7f\xc2\x80", 4, 0, NULL}, /* control characters: allowed */
		{"\xed\x9f\xbf", 3, 0, NULL},	  /* U+D7FF, just below the surrogates */
		{"\xee\x80\x80", 3, 0, NULL},	  /* U+E000, just above */
		{"", 0, 0, NULL},
		{"a\0b", 3, MICA_EBADENCODING, "nul_in_string"},
		{"\xc0\x80", 2, MICA_EBADENCODING, "bad_utf8"}, /* overlong U+0000 */
		{"\xc1\xbf", 2, MICA_EBADENCODING, "bad_utf8"}, /* overlong 2 bytes */
		{"\xe0\x9f\xbf", 3, MICA_EBADENCODING, "bad_utf8"},
		{"\xf0\x8f\xbf\xbf", 4, MICA_EBADENCODING, "bad_utf8"},
		{"\xed\xa0\x80", 3, MICA_EBADENCODING, "bad_utf8"},	/* U+D800 */
		{"\xed\xbf\xbf", 3, MICA_EBADENCODING, "bad_utf8"},	/* U+DFFF */
		{"\xf4\x90\x80\x80", 4, MICA_EBADENCODING, "bad_utf8"}, /* U+110000 */
		{"\xf5\x80\x80\x80", 4, MICA_EBADENCODING, "bad_utf8"},
		{"\xf8\x88\x80\x80\x80", 5, MICA_EBADENCODING, "bad_utf8"},
		{"\xff", 1, MICA_EBADENCODING, "bad_utf8"},
		{"\x80", 1, MICA_EBADENCODING, "bad_utf8"},	/* lone continuation */
		{"\xe4\xb8", 2, MICA_EBADENCODING, "bad_utf8"}, /* cut */
		{"\xe4\x41\xad", 3, MICA_EBADENCODING, "bad_utf8"},
		{"\xc2", 1, MICA_EBADENCODING, "bad_utf8"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why = "unset";
		ck_assert_msg(push_mqtt_check_utf8(cases[i].s, cases[i].n, &why) == cases[i].rc,
			      "case %zu", i);
		if (cases[i].reason)
			ck_assert_str_eq(why, cases[i].reason);
		else
			ck_assert_ptr_null(why);
	}
}
END_TEST

START_TEST(topic_names_and_filters)
{
	static const struct {
		const char *s;
		bool filter;
		const char *reason; /* NULL: valid */
	} cases[] = {
		{"sport/tennis/player1", false, NULL},
		{"/", false, NULL},
		{"$SYS/x", false, NULL},
		{"a//b", false, NULL},
		{"sport/+", false, "wildcard_in_topic"},
		{"#", false, "wildcard_in_topic"},
		{"", false, "empty_topic"},
		{"#", true, NULL},
		{"+", true, NULL},
		{"sport/tennis/#", true, NULL},
		{"+/tennis/#", true, NULL},
		{"sport/+/player1", true, NULL},
		{"/+", true, NULL},
		{"+/+", true, NULL},
		{"a//+/#", true, NULL},
		{"sport/tennis#", true, "bad_topic_filter"},
		{"sport/tennis/#/ranking", true, "bad_topic_filter"},
		{"##", true, "bad_topic_filter"},
		{"sport+", true, "bad_topic_filter"},
		{"+sport", true, "bad_topic_filter"},
		{"a/++/b", true, "bad_topic_filter"},
		{"#/", true, "bad_topic_filter"},
		{"", true, "empty_topic"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why = "unset";
		int rc = push_mqtt_check_topic(cases[i].s, strlen(cases[i].s), cases[i].filter,
					       &why);
		if (!cases[i].reason) {
			ck_assert_msg(rc == 0, "%s: %s", cases[i].s, why);
			continue;
		}
		ck_assert_msg(rc == MICA_EINVAL && why && strcmp(why, cases[i].reason) == 0,
			      "%s: rc %d %s", cases[i].s, rc, why ? why : "(null)");
	}
}
END_TEST

START_TEST(topic_matching)
{
	/* The examples of [MQTT-4.7.1] and [MQTT-4.7.2]. */
	static const struct {
		const char *filter, *topic;
		bool match;
	} cases[] = {
		{"sport/tennis/player1/#", "sport/tennis/player1", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
		{"sport/#", "sport", true},
		{"#", "anything/at/all", true},
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player1/tournament", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"+/monitor/Clients", "$SYS/monitor/Clients", false},
		{"$SYS/#", "$SYS/monitor/Clients", true},
		{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
		{"#", "$SYS/x", false},
		{"a/b", "a/b", true},
		{"a/b", "a/bc", false},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"dev/regid-1", "dev/regid-1", true},
		{"dev/regid-1", "dev/regid-12", false},
		{"a/+/c", "a//c", true},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(push_mqtt_topic_matches(cases[i].filter, strlen(cases[i].filter),
						      cases[i].topic,
						      strlen(cases[i].topic)) == cases[i].match,
			      "%s vs %s", cases[i].filter, cases[i].topic);
}
END_TEST

/* libmosquitto (Debian's libmosquitto1, installed with mosquitto-clients by deploy/install-deps)
 * as an oracle for the hand-written topic and UTF-8 rules: loaded at run time, so nothing
 * links against it. */
struct mosq {
	void *so;
	int (*pub_check)(const char *topic, size_t len);
	int (*sub_check)(const char *filter, size_t len);
	int (*matches)(const char *sub, size_t sublen, const char *topic, size_t topiclen,
		       bool *result);
	int (*utf8)(const char *s, int len);
};

static void mosq_open(struct mosq *m)
{
	m->so = dlopen("libmosquitto.so.1", RTLD_NOW);
	ck_assert_msg(m->so, "libmosquitto.so.1: %s (run deploy/install-deps)", dlerror());
	*(void **)&m->pub_check = dlsym(m->so, "mosquitto_pub_topic_check2");
	*(void **)&m->sub_check = dlsym(m->so, "mosquitto_sub_topic_check2");
	*(void **)&m->matches = dlsym(m->so, "mosquitto_topic_matches_sub2");
	*(void **)&m->utf8 = dlsym(m->so, "mosquitto_validate_utf8");
	ck_assert(m->pub_check && m->sub_check && m->matches && m->utf8);
}

static uint32_t test_rng = 12345;
static uint32_t rand32(void)
{
	test_rng ^= test_rng << 13;
	test_rng ^= test_rng >> 17;
	test_rng ^= test_rng << 5;
	return test_rng;
}

/* A random string of 1..max bytes over |alphabet|. */
static size_t random_string(char *out, size_t max, const char *alphabet)
{
	size_t n = 1 + rand32() % max, k = strlen(alphabet);
	for (size_t i = 0; i < n; i++)
		out[i] = alphabet[rand32() % k];
	return n;
}

START_TEST(topic_rules_agree_with_libmosquitto)
{
	struct mosq m;
	char f[16], t[16];
	size_t checked = 0;

	mosq_open(&m);
	for (int i = 0; i < 200000; i++) {
		size_t fl = random_string(f, 10, "ab/+#$"), tl = random_string(t, 10, "ab/$");
		/* libmosquitto 2.0.11's topic_matches_sub2() ignores the lengths it is given. */
		f[fl] = t[tl] = '\0';
		bool ours_filter = push_mqtt_check_topic(f, fl, true, NULL) == 0;
		bool ours_name = push_mqtt_check_topic(f, fl, false, NULL) == 0;
		ck_assert_msg(ours_filter == (m.sub_check(f, fl) == 0), "filter %.*s", (int)fl, f);
		ck_assert_msg(ours_name == (m.pub_check(f, fl) == 0), "name %.*s", (int)fl, f);
		if (!ours_filter)
			continue;
		bool theirs = false;
		ck_assert_msg(m.matches(f, fl, t, tl, &theirs) == 0, "%.*s vs %.*s", (int)fl, f,
			      (int)tl, t);
		ck_assert_msg(push_mqtt_topic_matches(f, fl, t, tl) == theirs, "%.*s vs %.*s",
			      (int)fl, f, (int)tl, t);
		checked++;
	}
	ck_assert_uint_gt(checked, 10000);
	dlclose(m.so);
}
END_TEST

/* Whether the well-formed UTF-8 |s| holds a code point libmosquitto refuses and MQTT 3.1.1 only
 * allows refusing [MQTT-1.5.3-2]: C0 and C1 controls, U+FDD0..U+FDEF, U+xxFFFE and U+xxFFFF. */
static bool has_discouraged(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t k = s[i] < 0x80 ? 0 : s[i] < 0xe0 ? 1 : s[i] < 0xf0 ? 2 : 3;
		cp = k == 0 ? s[i] : (uint32_t)(s[i] & (0x3f >> k));
		for (size_t j = 1; j <= k; j++)
			cp = cp << 6 | (s[i + j] & 0x3fu);
		i += k + 1;
		if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0xfdd0 && cp <= 0xfdef) ||
		    (cp & 0xfffe) == 0xfffe)
			return true;
	}
	return false;
}

START_TEST(utf8_rules_agree_with_libmosquitto)
{
	/* Bytes at the edges of every UTF-8 class. */
	static const uint8_t edge[] = {0x00, 0x01, 0x1f, 0x41, 0x7f, 0x80, 0x8f, 0x90,
				       0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0,
				       0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xb7, 0xbe};
	struct mosq m;
	uint8_t s[8];
	size_t accepted = 0, discouraged = 0;

	mosq_open(&m);
	for (int i = 0; i < 300000; i++) {
		size_t n = 1 + rand32() % 7;
		for (size_t j = 0; j < n; j++)
			s[j] = edge[rand32() % sizeof(edge)];
		/* libmosquitto 2.0.11 reads past |len| in a 4-byte sequence cut at the end (it
		 * accepts F0 9F with continuation bytes after the string); a NUL stops it. */
		s[n] = 0;
		bool ours = push_mqtt_check_utf8((const char *)s, n, NULL) == 0;
		bool theirs = m.utf8((const char *)s, (int)n) == 0;
		/* Both accept, both refuse, or we accept a code point the spec lets a receiver
		 * refuse and libmosquitto does. */
		if (ours && !theirs) {
			ck_assert_msg(has_discouraged(s, n), "case %d", i);
			discouraged++;
		} else {
			ck_assert_msg(ours == theirs, "case %d: ours %d, %zu bytes from %02x", i,
				      ours, n, s[0]);
		}
		accepted += ours;
	}
	ck_assert_uint_gt(accepted, 1000);
	ck_assert_uint_gt(discouraged, 100);
	dlclose(m.so);
}
END_TEST

/* The code each reason comes with (mqtt.h's table). */
static int code_of(const char *reason)
{
	static const struct {
		const char *reason;
		int code;
	} map[] = {
		{"oversize", MICA_ETOOBIG},
		{"truncated", MICA_ETRUNCATED},
		{"bad_protocol_level", MICA_EBADVERSION},
		{"bad_utf8", MICA_EBADENCODING},
		{"nul_in_string", MICA_EBADENCODING},
		{"wildcard_in_topic", MICA_EINVAL},
		{"bad_topic_filter", MICA_EINVAL},
		{"empty_topic", MICA_EINVAL},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].reason, reason) == 0)
			return map[i].code;
	return MICA_EBADHEADER;
}

START_TEST(fixtures_are_refused_by_name)
{
	DIR *dir = opendir(FIXTURES);
	struct dirent *e;
	size_t files = 0;
	/* Every reason the brief names has at least one fixture. */
	const char *required[] = {"bad_remaining_length",
				  "oversize",
				  "bad_protocol_name",
				  "bad_protocol_level",
				  "reserved_flags",
				  "bad_qos",
				  "zero_packet_id",
				  "bad_utf8",
				  "nul_in_string",
				  "wildcard_in_topic",
				  "password_without_username",
				  "truncated"};
	bool seen[sizeof(required) / sizeof(required[0])] = {0};

	ck_assert_ptr_nonnull(dir);
	while ((e = readdir(dir))) {
		char path[512], reason[128];
		uint8_t data[FIXTURE_MAX];
		size_t n = strlen(e->d_name);
		if (n < 5 || strcmp(e->d_name + n - 4, ".bin") != 0)
			continue;
		/* NAME.bin or NAME.VARIANT.bin */
		size_t r = strcspn(e->d_name, ".");
		ck_assert_uint_lt(r, sizeof(reason));
		memcpy(reason, e->d_name, r);
		reason[r] = '\0';
		snprintf(path, sizeof(path), "%s/%s", FIXTURES, e->d_name);
		FILE *f = fopen(path, "rb");
		ck_assert_ptr_nonnull(f);
		size_t len = fread(data, 1, sizeof(data), f);
		ck_assert(!ferror(f) && feof(f));
		fclose(f);
		refused_as(PUSH_MQTT_FROM_CLIENT, FIXTURE_MAX, data, len, code_of(reason), reason);
		for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
			if (strcmp(required[i], reason) == 0)
				seen[i] = true;
		files++;
	}
	closedir(dir);
	ck_assert_uint_ge(files, 40);
	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
		ck_assert_msg(seen[i], "no fixture for %s", required[i]);
}
END_TEST

START_TEST(decoder_is_small)
{
	/* The decoder lives inside every connection: keep it small. */
	ck_assert_uint_le(sizeof(struct push_mqtt_decoder), 80);
}
END_TEST

START_TEST(type_names)
{
	ck_assert_str_eq(push_mqtt_type_name(PUSH_MQTT_CONNECT), "CONNECT");
	ck_assert_str_eq(push_mqtt_type_name(PUSH_MQTT_DISCONNECT), "DISCONNECT");
	ck_assert_str_eq(push_mqtt_type_name(PUSH_MQTT_NONE), "NONE");
	ck_assert_str_eq(push_mqtt_type_name(15), "?");
}
END_TEST

static Suite *mqtt_suite(void)
{
	Suite *s = suite_create("mqtt");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, connect_round_trips_with_every_field);
	tcase_add_test(tc, connect_minimal_and_empty_client_id);
	tcase_add_test(tc, server_packets_round_trip);
	tcase_add_test(tc, acks_and_pings_round_trip);
	tcase_add_test(tc, publish_round_trips_at_each_qos);
	tcase_add_test(tc, subscribe_and_unsubscribe_round_trip);
	tcase_add_test(tc, byte_at_a_time_equals_whole);
	tcase_add_test(tc, whole_packets_decode_in_place_split_ones_in_the_buffer);
	tcase_add_test(tc, fixed_header_refusals);
	tcase_add_test(tc, oversize_is_refused_from_the_header);
	tcase_add_test(tc, remaining_length_boundaries);
	tcase_add_test(tc, connect_refusals);
	tcase_add_test(tc, connect_accepts_what_the_spec_allows);
	tcase_add_test(tc, body_refusals_by_type);
	tcase_add_test(tc, errors_are_sticky_until_init);
	tcase_add_test(tc, encoders_refuse_what_decoders_refuse);
	tcase_add_test(tc, encoder_size_query_and_small_buffer);
	tcase_add_test(tc, utf8_rules);
	tcase_add_test(tc, topic_names_and_filters);
	tcase_add_test(tc, topic_matching);
	tcase_add_test(tc, topic_rules_agree_with_libmosquitto);
	tcase_add_test(tc, utf8_rules_agree_with_libmosquitto);
	tcase_add_test(tc, fixtures_are_refused_by_name);
	tcase_add_test(tc, type_names);
	tcase_add_test(tc, decoder_is_small);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = mqtt_suite};
