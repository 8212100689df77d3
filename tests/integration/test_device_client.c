/* test_device_client.c - libmicadev's push client against a scripted broker
 * (lib/uvtls server + mipush/mqtt codec on the same loop) that does what
 * mosquitto will not: a PUBLISH on another topic, a QoS 2 PUBLISH, a refused
 * CONNACK or SUBACK, a broker that stops answering PINGREQ, and a stop()
 * from inside the message callback (whose PUBACK must still go out before
 * DISCONNECT). The TLS test certificates come from tests/run.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "device/micadev.h"
#include "mipush/mqtt.h"
#include "mipush/push.h"
#include "tests/check_main.h"
#include "uvtls.h"

#define REGID "dev1"
#define MAXPUB 8

enum mode { M_OK, M_CONNACK_REFUSED, M_SUBACK_REFUSED, M_NO_PINGRESP, M_QOS2 };

struct pub {
	const char *topic;
	uint8_t qos;
	uint16_t id;
	uint8_t *body;
	size_t len;
};

static struct fake {
	uv_loop_t loop;
	uv_timer_t guard, drain;
	mica_uvtls_server *srv;
	dev_push_client *cli;
	enum mode mode;
	struct push_mqtt_decoder dec;
	uint8_t buf[65536];
	struct pub pubs[MAXPUB];
	int npubs;
	/* what the broker saw */
	int connects, subscribes, pingreqs, disconnects;
	uint16_t acks[32];
	int nacks;
	int ack_before_disconnect; /* PUBACKs seen before the DISCONNECT */
	/* what the client reported */
	char delivered[8][32];
	int ndelivered, refused_detail, idle_closes;
	int stop_after_connects; /* stop once this many CONNECTs were seen */
	const char *stop_on_id;	 /* stop from on_message for this id */
	bool stopped;
} F;

static uint8_t key[PUSH_CONTENT_KEY_LEN];

static void send_pkt(mica_uvtls_conn *c, const struct push_mqtt_packet *p)
{
	uint8_t out[70000];
	size_t len = 0;
	ck_assert_int_eq(push_mqtt_encode(p, out, sizeof(out), &len, NULL), 0);
	ck_assert_int_eq(mica_uvtls_write(c, out, len), 0);
}

static void srv_packet(mica_uvtls_conn *c, const struct push_mqtt_packet *p)
{
	struct push_mqtt_packet r = {0};
	switch (p->type) {
	case PUSH_MQTT_CONNECT:
		F.connects++;
		ck_assert_uint_eq(p->connect.client_id.len, strlen(REGID));
		ck_assert(p->connect.has_password);
		ck_assert_uint_eq(p->connect.password.len, 5);
		ck_assert_int_eq(memcmp(p->connect.password.p, "t0ken", 5), 0);
		if (F.stop_after_connects && F.connects >= F.stop_after_connects)
			dev_push_client_stop(F.cli);
		r.type = PUSH_MQTT_CONNACK;
		r.connack.return_code =
			F.mode == M_CONNACK_REFUSED ? PUSH_MQTT_CONNACK_BAD_CREDENTIALS : 0;
		send_pkt(c, &r);
		break;
	case PUSH_MQTT_SUBSCRIBE: {
		size_t pos = 0;
		struct push_mqtt_topic t;
		ck_assert(push_mqtt_topics_next(p->type, &p->subscribe, &pos, &t));
		ck_assert_uint_eq(t.filter.len, strlen("d/" REGID));
		ck_assert_int_eq(memcmp(t.filter.p, "d/" REGID, t.filter.len), 0);
		ck_assert_uint_eq(t.qos, 1);
		F.subscribes++;
		uint8_t code = F.mode == M_SUBACK_REFUSED ? PUSH_MQTT_SUBACK_FAILURE : 1;
		r.type = PUSH_MQTT_SUBACK;
		r.suback.id = p->subscribe.id;
		r.suback.codes = &code;
		r.suback.count = 1;
		send_pkt(c, &r);
		/* Every scripted message, on the first session only. */
		for (int i = 0; F.subscribes == 1 && i < F.npubs; i++) {
			struct push_mqtt_packet m = {.type = PUSH_MQTT_PUBLISH};
			m.publish.qos = F.pubs[i].qos;
			m.publish.id = F.pubs[i].id;
			m.publish.topic =
				(struct push_mqtt_str){F.pubs[i].topic, strlen(F.pubs[i].topic)};
			m.publish.payload = F.pubs[i].body;
			m.publish.payload_len = F.pubs[i].len;
			send_pkt(c, &m);
		}
		break;
	}
	case PUSH_MQTT_PUBACK:
		ck_assert_int_lt(F.nacks, 32);
		F.acks[F.nacks++] = p->id;
		break;
	case PUSH_MQTT_PINGREQ:
		F.pingreqs++;
		if (F.mode != M_NO_PINGRESP) {
			r.type = PUSH_MQTT_PINGRESP;
			send_pkt(c, &r);
		}
		break;
	case PUSH_MQTT_DISCONNECT:
		F.disconnects++;
		F.ack_before_disconnect = F.nacks;
		break;
	default:
		ck_abort_msg("the client sent %s", push_mqtt_type_name(p->type));
	}
}

static void srv_open(mica_uvtls_conn *c)
{
	(void)c;
	push_mqtt_decoder_init(&F.dec, PUSH_MQTT_FROM_CLIENT, sizeof(F.buf), F.buf, sizeof(F.buf));
}

static void srv_data(mica_uvtls_conn *c, const uint8_t *d, size_t n)
{
	while (n > 0) {
		struct push_mqtt_packet p;
		size_t used = 0;
		ck_assert_int_eq(push_mqtt_decoder_feed(&F.dec, d, n, &used, &p), 0);
		d += used;
		n -= used;
		if (p.type != PUSH_MQTT_NONE)
			srv_packet(c, &p);
	}
}

static const mica_uvtls_callbacks srv_cb = {.on_open = srv_open, .on_data = srv_data};

static void cli_message(dev_push_client *c, const dev_push_message *m, void *user)
{
	(void)user;
	ck_assert_int_lt(F.ndelivered, 8);
	snprintf(F.delivered[F.ndelivered++], 32, "%s", m->id);
	if (F.stop_on_id && strcmp(m->id, F.stop_on_id) == 0)
		dev_push_client_stop(c);
}

static void cli_event(dev_push_client *c, enum dev_push_event ev, int detail, void *user)
{
	(void)user;
	if (ev == DEV_PUSH_EV_REFUSED) {
		F.refused_detail = detail;
		dev_push_client_stop(c);
	}
	if (ev == DEV_PUSH_EV_DISCONNECTED && detail == MICA_UVTLS_CLOSED_IDLE_TIMEOUT) {
		F.idle_closes++;
		dev_push_client_stop(c);
	}
	if (ev == DEV_PUSH_EV_RETRY)
		ck_assert_int_le(detail, 50 << 4); /* base 50 ms, a few attempts at most here */
}

static dev_push_stats final_stats;

/* The client has stopped: once the broker side has read everything and seen
 * the connection close, the broker goes too. */
static void drain_poll(uv_timer_t *t)
{
	if (mica_uvtls_server_connections(F.srv) > 0)
		return;
	uv_close((uv_handle_t *)t, NULL);
	uv_close((uv_handle_t *)&F.guard, NULL);
	mica_uvtls_server_free(F.srv);
}

static void cli_stopped(dev_push_client *c, void *user)
{
	(void)user;
	dev_push_client_stats(c, &final_stats);
	F.stopped = true;
	uv_timer_init(&F.loop, &F.drain);
	uv_timer_start(&F.drain, drain_poll, 0, 10);
}

static void guard_fired(uv_timer_t *t)
{
	(void)t;
	ck_abort_msg("the test did not finish in 10 s");
}

static void add_pub(const char *topic, uint8_t qos, uint16_t id, const char *regid,
		    const char *msg_id)
{
	push_message_view v = {
		.msg_id = msg_id, .type = "pass_through", .payload = "p", .notify_id = -1};
	struct pub *p = &F.pubs[F.npubs++];
	p->topic = topic;
	p->qos = qos;
	p->id = id;
	ck_assert_int_eq(push_seal_message(key, regid, &v, &p->body, &p->len), 0);
}

/* Runs the client against the scripted broker until it stopped. */
static void run(unsigned keepalive)
{
	ck_assert_int_eq(uv_loop_init(&F.loop), 0);
	mica_uvtls_server_options so = {.host = "127.0.0.1",
					.cert_file = getenv("MICA_CERT_SERVER"),
					.key_file = getenv("MICA_KEY_SERVER")};
	ck_assert_int_eq(mica_uvtls_server_new(&F.loop, &so, &srv_cb, NULL, &F.srv), 0);
	dev_push_options o = {.host = "127.0.0.1",
			      .port = mica_uvtls_server_port(F.srv),
			      .ca_file = getenv("MICA_CA"),
			      .regid = REGID,
			      .token = "t0ken",
			      .content_key = key,
			      .keepalive_s = keepalive,
			      .backoff_base_ms = 50,
			      .backoff_cap_ms = 200,
			      .on_message = cli_message,
			      .on_event = cli_event,
			      .on_stopped = cli_stopped};
	ck_assert_int_eq(dev_push_client_new(&F.loop, &o, &F.cli), 0);
	uv_timer_init(&F.loop, &F.guard);
	uv_timer_start(&F.guard, guard_fired, 10000, 0);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	ck_assert(F.stopped);
	ck_assert_int_eq(uv_loop_close(&F.loop), 0);
	for (int i = 0; i < F.npubs; i++)
		free(F.pubs[i].body);
}

static void setup(void)
{
	memset(&F, 0, sizeof(F));
	ck_assert_int_eq(mica_random(key, sizeof(key)), 0);
}

START_TEST(drops_are_acknowledged_and_stop_in_callback_acks_first)
{
	add_pub("d/" REGID, 1, 1, REGID, "m1");
	add_pub("d/other", 1, 2, REGID, "m9");	 /* another topic */
	add_pub("d/" REGID, 1, 3, "dev2", "m8"); /* sealed for another device */
	add_pub("d/" REGID, 1, 4, REGID, "m1");	 /* a duplicate id */
	add_pub("d/" REGID, 0, 0, REGID, "m3");	 /* QoS 0: delivered, no PUBACK */
	add_pub("d/" REGID, 1, 5, REGID, "m2");	 /* the callback stops here */
	add_pub("d/" REGID, 1, 6, REGID, "m7");	 /* after stop: never delivered */
	F.stop_on_id = "m2";
	run(60);
	ck_assert_int_eq(F.ndelivered, 3);
	ck_assert_str_eq(F.delivered[0], "m1");
	ck_assert_str_eq(F.delivered[1], "m3");
	ck_assert_str_eq(F.delivered[2], "m2");
	/* Every QoS 1 message up to the stop is acknowledged, dropped or not,
	 * in order, and m2's PUBACK precedes the DISCONNECT. */
	ck_assert_int_eq(F.disconnects, 1);
	ck_assert_int_eq(F.ack_before_disconnect, 5);
	uint16_t want[] = {1, 2, 3, 4, 5};
	for (int i = 0; i < 5; i++)
		ck_assert_uint_eq(F.acks[i], want[i]);
	ck_assert_int_eq(F.nacks, 5); /* m7 was not acknowledged: the broker keeps it */
	ck_assert_uint_eq(final_stats.delivered, 3);
	ck_assert_uint_eq(final_stats.malformed, 1);
	ck_assert_uint_eq(final_stats.rejected, 1);
	ck_assert_uint_eq(final_stats.duplicates, 1);
	ck_assert_uint_eq(final_stats.protocol_errors, 0);
}
END_TEST

START_TEST(qos2_publish_closes_and_reconnects)
{
	add_pub("d/" REGID, 2, 1, REGID, "m1");
	F.stop_after_connects = 2;
	run(60);
	ck_assert_int_eq(F.connects, 2); /* closed, then back */
	ck_assert_int_eq(F.ndelivered, 0);
	ck_assert_int_eq(F.nacks, 0);
	ck_assert_uint_eq(final_stats.protocol_errors, 1);
}
END_TEST

START_TEST(refused_connack_is_reported)
{
	F.mode = M_CONNACK_REFUSED;
	run(60);
	ck_assert_int_eq(F.refused_detail, PUSH_MQTT_CONNACK_BAD_CREDENTIALS);
	ck_assert_int_eq(F.subscribes, 0);
	ck_assert_uint_eq(final_stats.refused, 1);
	ck_assert_uint_eq(final_stats.subscribed, 0);
}
END_TEST

START_TEST(refused_subscription_is_reported)
{
	F.mode = M_SUBACK_REFUSED;
	run(60);
	ck_assert_int_eq(F.refused_detail, PUSH_MQTT_SUBACK_FAILURE);
	ck_assert_uint_eq(final_stats.refused, 1);
	ck_assert_uint_eq(final_stats.subscribed, 0);
}
END_TEST

/* A broker that stops answering: 1.5 keep-alives without a record close
 * the connection (the PINGREQ was sent, no PINGRESP came). */
START_TEST(dead_link_is_closed_after_one_and_a_half_keepalives)
{
	F.mode = M_NO_PINGRESP;
	uint64_t t0 = uv_hrtime();
	run(1);
	uint64_t ms = (uv_hrtime() - t0) / 1000000;
	ck_assert_int_eq(F.idle_closes, 1);
	ck_assert_int_ge(F.pingreqs, 1);
	ck_assert_uint_ge(ms, 1400);
	ck_assert_uint_le(ms, 3500);
}
END_TEST

static int ignore_sigpipe(void)
{
	return signal(SIGPIPE, SIG_IGN) == SIG_ERR;
}

static Suite *client_suite(void)
{
	Suite *s = suite_create("device_client");
	TCase *tc = tcase_create("scripted broker");
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, drops_are_acknowledged_and_stop_in_callback_acks_first);
	tcase_add_test(tc, qos2_publish_closes_and_reconnects);
	tcase_add_test(tc, refused_connack_is_reported);
	tcase_add_test(tc, refused_subscription_is_reported);
	tcase_add_test(tc, dead_link_is_closed_after_one_and_a_half_keepalives);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}

static const char *const needs[] = {"MICA_CA", "MICA_CERT_SERVER", "MICA_KEY_SERVER", NULL};

const struct mica_check mica_check = {.suite = client_suite,
				      .needs = needs,
				      .setup = ignore_sigpipe,
				      .log = MICA_CHECK_LOG_ERRORS};
