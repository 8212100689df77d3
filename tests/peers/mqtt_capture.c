/* mqtt_capture.c - test peer for tests/integration/test_mqtt_capture.sh: a
 * one-connection MQTT 3.1.1 "broker" made of mipush/mqtt.c and nothing else,
 * so that clients nobody here wrote (mosquitto_sub, mosquitto_pub) talk to
 * our decoder and accept our encoder's packets.
 *
 *   mqtt_capture serve PORTFILE RAWFILE TOPIC PAYLOAD
 *     listens on 127.0.0.1 (a free port, written to PORTFILE), accepts one
 *     client, records every byte it sends to RAWFILE, decodes them as they
 *     arrive with the incremental decoder and prints one line per packet.
 *     It answers with packets from our encoder: CONNECT -> CONNACK 0 (or
 *     CONNACK 1 for another protocol level), SUBSCRIBE -> SUBACK granting the
 *     requested QoS, then a QoS 1 PUBLISH of PAYLOAD to TOPIC (id 7, sent in
 *     two writes split inside its fixed header), UNSUBSCRIBE -> UNSUBACK,
 *     PUBLISH QoS 1 -> PUBACK, QoS 2 -> PUBREC, PUBREL -> PUBCOMP, PINGREQ ->
 *     PINGRESP. Ends when the client closes (after DISCONNECT).
 *   mqtt_capture decode RAWFILE
 *     decodes a recorded stream one byte at a time and prints the same lines.
 *
 * Lines: "CONNECT client_id=.. username=.. password=.. clean=0|1 keepalive=N
 * will=0|1 [will_topic=.. will_qos=N will_retain=0|1 will_message=..]",
 * "SUBSCRIBE id=N FILTER:QOS...", "UNSUBSCRIBE id=N FILTER...", "PUBLISH
 * qos=N dup=0|1 retain=0|1 id=N topic=.. len=N sha256=HEX [payload=..]",
 * "PUBACK id=N" (and PUBREC, PUBREL, PUBCOMP), "PINGREQ", "DISCONNECT",
 * "REFUSED code reason". Text fields are printed as they are when printable
 * ASCII, else as "hex:..".
 * Exit status: 0 the client spoke and closed, 1 a refusal or I/O error,
 * 2 usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "mipush/mqtt.h"

#define MAX_PACKET (1u << 20)
#define TIMEOUT_MS 15000

static void print_field(const char *name, const void *p, size_t n)
{
	const uint8_t *b = p;
	int printable = 1;
	for (size_t i = 0; i < n; i++)
		if (b[i] < 0x21 || b[i] > 0x7e)
			printable = 0;
	printf(" %s=", name);
	if (printable) {
		printf("%.*s", (int)n, (const char *)b);
		return;
	}
	printf("hex:");
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

static void print_packet(const struct push_mqtt_packet *pkt)
{
	const struct push_mqtt_connect *c = &pkt->connect;
	const struct push_mqtt_publish *p = &pkt->publish;
	struct push_mqtt_topic t;
	uint8_t md[SHA256_DIGEST_LENGTH];
	size_t pos = 0;

	printf("%s", push_mqtt_type_name(pkt->type));
	switch (pkt->type) {
	case PUSH_MQTT_CONNECT:
		print_field("client_id", c->client_id.p, c->client_id.len);
		if (c->has_username)
			print_field("username", c->username.p, c->username.len);
		if (c->has_password)
			print_field("password", c->password.p, c->password.len);
		printf(" clean=%d keepalive=%u will=%d", c->clean_session, c->keepalive, c->will);
		if (c->will) {
			print_field("will_topic", c->will_topic.p, c->will_topic.len);
			printf(" will_qos=%u will_retain=%d", c->will_qos, c->will_retain);
			print_field("will_message", c->will_message.p, c->will_message.len);
		}
		break;
	case PUSH_MQTT_PUBLISH:
		printf(" qos=%u dup=%d retain=%d id=%u", p->qos, p->dup, p->retain, p->id);
		print_field("topic", p->topic.p, p->topic.len);
		SHA256(p->payload_len ? p->payload : (const uint8_t *)"", p->payload_len, md);
		printf(" len=%zu sha256=", p->payload_len);
		for (size_t i = 0; i < sizeof(md); i++)
			printf("%02x", md[i]);
		if (p->payload_len <= 64)
			print_field("payload", p->payload, p->payload_len);
		break;
	case PUSH_MQTT_SUBSCRIBE:
	case PUSH_MQTT_UNSUBSCRIBE:
		printf(" id=%u", pkt->subscribe.id);
		while (push_mqtt_topics_next(pkt->type, &pkt->subscribe, &pos, &t)) {
			printf(" %.*s", (int)t.filter.len, t.filter.p);
			if (pkt->type == PUSH_MQTT_SUBSCRIBE)
				printf(":%u", t.qos);
		}
		break;
	case PUSH_MQTT_PUBACK:
	case PUSH_MQTT_PUBREC:
	case PUSH_MQTT_PUBREL:
	case PUSH_MQTT_PUBCOMP:
		printf(" id=%u", pkt->id);
		break;
	default:
		break;
	}
	printf("\n");
	fflush(stdout);
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Encode |pkt| with our encoder and send it; |split| > 0 sends the first |split| bytes in
 * a write of their own (a real client then reads a packet cut inside its header). */
static int send_packet(int fd, const struct push_mqtt_packet *pkt, size_t split)
{
	uint8_t out[4096];
	size_t len;
	const char *why;
	int rc = push_mqtt_encode(pkt, out, sizeof(out), &len, &why);
	if (rc < 0) {
		fprintf(stderr, "mqtt_capture: encode %s: %s\n", push_mqtt_type_name(pkt->type),
			why);
		return -1;
	}
	if (split > 0 && split < len) {
		if (send_all(fd, out, split) < 0)
			return -1;
		usleep(50 * 1000);
		return send_all(fd, out + split, len - split);
	}
	return send_all(fd, out, len);
}

/* Answer one decoded packet as a broker would. */
static int answer(int fd, const struct push_mqtt_packet *pkt, const char *topic,
		  const char *payload)
{
	struct push_mqtt_packet r = {0};
	uint8_t codes[64];
	size_t pos = 0, n = 0;
	struct push_mqtt_topic t;

	switch (pkt->type) {
	case PUSH_MQTT_CONNECT:
		r.type = PUSH_MQTT_CONNACK;
		return send_packet(fd, &r, 0);
	case PUSH_MQTT_SUBSCRIBE:
		while (n < sizeof(codes) &&
		       push_mqtt_topics_next(pkt->type, &pkt->subscribe, &pos, &t))
			codes[n++] = t.qos;
		r.type = PUSH_MQTT_SUBACK;
		r.suback = (struct push_mqtt_suback){pkt->subscribe.id, codes, n};
		if (send_packet(fd, &r, 0) < 0)
			return -1;
		r = (struct push_mqtt_packet){.type = PUSH_MQTT_PUBLISH};
		r.publish = (struct push_mqtt_publish){.qos = 1,
						       .id = 7,
						       .topic = {topic, strlen(topic)},
						       .payload = (const uint8_t *)payload,
						       .payload_len = strlen(payload)};
		return send_packet(fd, &r, 1);
	case PUSH_MQTT_UNSUBSCRIBE:
		r.type = PUSH_MQTT_UNSUBACK;
		r.id = pkt->subscribe.id;
		return send_packet(fd, &r, 0);
	case PUSH_MQTT_PUBLISH:
		if (pkt->publish.qos == 0)
			return 0;
		r.type = pkt->publish.qos == 1 ? PUSH_MQTT_PUBACK : PUSH_MQTT_PUBREC;
		r.id = pkt->publish.id;
		return send_packet(fd, &r, 0);
	case PUSH_MQTT_PUBREL:
		r.type = PUSH_MQTT_PUBCOMP;
		r.id = pkt->id;
		return send_packet(fd, &r, 0);
	case PUSH_MQTT_PINGREQ:
		r.type = PUSH_MQTT_PINGRESP;
		return send_packet(fd, &r, 0);
	default:
		return 0;
	}
}

static int listen_any(const char *portfile)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	FILE *f;

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
		perror("mqtt_capture: listen");
		return -1;
	}
	/* Written to a temporary name and renamed, so the test never reads half a number. */
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", portfile);
	int bad = !(f = fopen(tmp, "w"));
	if (f) {
		bad |= fprintf(f, "%u\n", ntohs(a.sin_port)) < 0;
		bad |= fclose(f) != 0;
	}
	if (bad || rename(tmp, portfile) != 0) {
		perror("mqtt_capture: port file");
		close(fd);
		return -1;
	}
	return fd;
}

static int wait_readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int rc;
	while ((rc = poll(&p, 1, TIMEOUT_MS)) < 0 && errno == EINTR)
		;
	if (rc == 0)
		fprintf(stderr, "mqtt_capture: no data for %d ms\n", TIMEOUT_MS);
	return rc > 0 ? 0 : -1;
}

static int serve(const char *portfile, const char *rawfile, const char *topic, const char *payload)
{
	static uint8_t chunk[65536];
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt;
	uint8_t *buf = malloc(MAX_PACKET);
	FILE *raw = fopen(rawfile, "wb");
	int lfd = listen_any(portfile), fd = -1, status = 1;

	if (!buf || !raw || lfd < 0)
		goto out;
	if (wait_readable(lfd) < 0 || (fd = accept(lfd, NULL, NULL)) < 0)
		goto out;
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, MAX_PACKET, buf, MAX_PACKET);
	for (;;) {
		if (wait_readable(fd) < 0)
			goto out;
		ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto out;
		if (n == 0) {
			status = 0; /* the client closed */
			goto out;
		}
		fwrite(chunk, 1, (size_t)n, raw);
		fflush(raw);
		const uint8_t *in = chunk;
		size_t len = (size_t)n, used;
		while (len > 0) {
			int rc = push_mqtt_decoder_feed(&d, in, len, &used, &pkt);
			if (rc < 0) {
				printf("REFUSED %s %s\n", mica_strerror(rc),
				       push_mqtt_decoder_reason(&d));
				fflush(stdout);
				if (rc == MICA_EBADVERSION) { /* [MQTT-3.1.2-2] */
					struct push_mqtt_packet r = {
						.type = PUSH_MQTT_CONNACK,
						.connack.return_code =
							PUSH_MQTT_CONNACK_BAD_PROTOCOL};
					(void)send_packet(fd, &r, 0);
				}
				goto out;
			}
			in += used;
			len -= used;
			if (pkt.type == PUSH_MQTT_NONE)
				continue;
			print_packet(&pkt);
			if (answer(fd, &pkt, topic, payload) < 0)
				goto out;
		}
	}
out:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
	if (raw)
		fclose(raw);
	free(buf);
	return status;
}

static int decode_file(const char *rawfile)
{
	struct push_mqtt_decoder d;
	struct push_mqtt_packet pkt;
	uint8_t *buf = malloc(MAX_PACKET);
	FILE *f = fopen(rawfile, "rb");
	int c, status = 1;

	if (!buf || !f) {
		perror("mqtt_capture: decode");
		goto out;
	}
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_CLIENT, MAX_PACKET, buf, MAX_PACKET);
	while ((c = fgetc(f)) != EOF) {
		uint8_t b = (uint8_t)c;
		size_t used;
		int rc = push_mqtt_decoder_feed(&d, &b, 1, &used, &pkt);
		if (rc < 0) {
			printf("REFUSED %s %s\n", mica_strerror(rc), push_mqtt_decoder_reason(&d));
			goto out;
		}
		if (pkt.type != PUSH_MQTT_NONE)
			print_packet(&pkt);
	}
	/* A stream that ends inside a packet is not a clean capture. */
	status = push_mqtt_decoder_pending(&d) == 0 ? 0 : 1;
out:
	if (f)
		fclose(f);
	free(buf);
	return status;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2], argv[3], argv[4], argv[5]);
	if (argc == 3 && strcmp(argv[1], "decode") == 0)
		return decode_file(argv[2]);
	fprintf(stderr, "usage: mqtt_capture serve PORTFILE RAWFILE TOPIC PAYLOAD\n"
			"       mqtt_capture decode RAWFILE\n");
	return 2;
}
