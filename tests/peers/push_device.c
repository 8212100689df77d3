/* push_device.c - test peer for tests/integration/test_push_broker*.sh: a
 * device on the push long connection, made of plain blocking OpenSSL and the
 * mipush/mqtt codec, that does what Debian's mosquitto_sub cannot be told to
 * do: leave messages unacknowledged, show the DUP flag, send raw bytes.
 *
 *   push_device [options] HOST PORT
 *     --ca FILE          CA of the broker certificate (required)
 *     --id REGID         client id (CONNECT)
 *     --token-env VAR    password from the environment variable VAR
 *     --topic T          subscribe to T (default d/<regid>; "-" subscribes to nothing)
 *     --count N          stop after N messages (default 1; 0: only connect and subscribe)
 *     --no-ack           never PUBACK
 *     --keepalive S      CONNECT keepalive (default 60)
 *     --timeout MS       give up after MS without a packet (default 10000)
 *     --raw HEX          after the TLS handshake send only these bytes, then print
 *                        every packet until the broker closes
 *     --after HEX        after SUBACK send these bytes, then read until closed
 *     --trickle MS       with --raw: one byte every MS milliseconds (each in its own
 *                        TLS record; with --plain, on the bare TCP connection)
 *     --plain            with --raw: no TLS, the bytes go on the TCP connection (a
 *                        handshake that never finishes)
 *     --linger MS        after the last message, wait MS for more (counted as extra)
 *
 * Prints one line per event: "connack CODE", "suback CODE...", "msg pid=N dup=D
 * qos=Q topic=T hex=BODY", "closed" (the broker closed), "timeout", "done".
 * Leaves without DISCONNECT (the socket is closed): the broker sees the
 * connection drop, as when a phone loses its network.
 * Exit status: 0 ran as asked, 1 TLS or connect failure, 2 usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mipush/mqtt.h"

#define MAX_PACKET (1 << 20)

struct opt {
	const char *host, *ca, *id, *token, *topic, *raw, *after;
	int port, count, keepalive, timeout_ms, trickle_ms, linger_ms;
	int no_ack, plain;
};

static SSL *ssl;
static int fd = -1;

static int hex_decode(const char *h, uint8_t **out, size_t *len)
{
	size_t n = strlen(h);
	if (n % 2 || !(*out = malloc(n / 2 + 1)))
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(h + 2 * i, "%2x", &v) != 1)
			return -1;
		(*out)[i] = (uint8_t)v;
	}
	*len = n / 2;
	return 0;
}

/* Whether the broker has closed the connection (EOF or reset waiting). */
static int poll_closed(void)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char c;
	if (poll(&p, 1, 0) <= 0)
		return 0;
	return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

static void set_timeout(int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static int send_bytes(const void *p, size_t n)
{
	return SSL_write(ssl, p, (int)n) == (int)n ? 0 : -1;
}

static int send_packet(const struct push_mqtt_packet *pkt)
{
	uint8_t buf[4096];
	size_t len = 0;
	if (push_mqtt_encode(pkt, buf, sizeof(buf), &len, NULL) != 0)
		return -1;
	return send_bytes(buf, len);
}

/* Reads the next packet; returns 1 with *pkt, 0 when the broker closed, -1
 * on timeout. */
static int next_packet(struct push_mqtt_decoder *d, uint8_t *in, size_t *have, size_t *off,
		       struct push_mqtt_packet *pkt)
{
	for (;;) {
		if (*off < *have) {
			size_t used = 0;
			if (push_mqtt_decoder_feed(d, in + *off, *have - *off, &used, pkt) != 0) {
				printf("bad_packet %s\n", push_mqtt_decoder_reason(d));
				return 0;
			}
			*off += used;
			if (pkt->type != PUSH_MQTT_NONE)
				return 1;
		}
		*off = *have = 0;
		int n = SSL_read(ssl, in, 16384);
		if (n > 0) {
			*have = (size_t)n;
			continue;
		}
		int e = SSL_get_error(ssl, n);
		if (e == SSL_ERROR_ZERO_RETURN)
			return 0;
		if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL) {
			/* EOF, reset, or the timeout of SO_RCVTIMEO (EAGAIN) */
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? -1 : 0;
		}
		return -1;
	}
}

static void print_packet(const struct push_mqtt_packet *p)
{
	switch (p->type) {
	case PUSH_MQTT_CONNACK:
		printf("connack %u\n", p->connack.return_code);
		break;
	case PUSH_MQTT_SUBACK:
		printf("suback");
		for (size_t i = 0; i < p->suback.count; i++)
			printf(" %u", p->suback.codes[i]);
		printf("\n");
		break;
	case PUSH_MQTT_PUBLISH:
		printf("msg pid=%u dup=%d qos=%u topic=%.*s hex=", p->publish.id, p->publish.dup,
		       p->publish.qos, (int)p->publish.topic.len, p->publish.topic.p);
		for (size_t i = 0; i < p->publish.payload_len; i++)
			printf("%02x", p->publish.payload[i]);
		printf("\n");
		break;
	default:
		printf("packet %s\n", push_mqtt_type_name(p->type));
	}
	fflush(stdout);
}

static int tcp_connect(const struct opt *o)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
	if (inet_pton(AF_INET, o->host, &a.sin_addr) != 1)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM, 0);
	return fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : -1;
}

/* Reads until the broker closes (or the timeout), printing each packet. */
static void read_until_closed(struct push_mqtt_decoder *d, uint8_t *in, size_t *have, size_t *off)
{
	struct push_mqtt_packet p;
	int r;
	while ((r = next_packet(d, in, have, off, &p)) == 1)
		print_packet(&p);
	printf(r == 0 ? "closed\n" : "timeout\n");
}

static int run(const struct opt *o)
{
	static uint8_t in[16384], dbuf[MAX_PACKET];
	struct push_mqtt_decoder d;
	struct push_mqtt_packet p;
	size_t have = 0, off = 0;
	char topic[256];
	int r;

	if (tcp_connect(o) != 0) {
		printf("connect_failed\n");
		return 1;
	}
	set_timeout(o->timeout_ms);
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1)
		return 1;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	SSL_set_tlsext_host_name(ssl, "localhost");
	SSL_set1_host(ssl, "localhost");
	if (o->raw && o->plain) {
		/* Slowloris on the handshake itself: SSL_connect cannot send a
		 * ClientHello a byte at a time, so the raw bytes are dribbled. */
		uint8_t *b = NULL;
		size_t n = 0;
		if (hex_decode(o->raw, &b, &n) != 0)
			return 2;
		for (size_t i = 0; i < n; i++) {
			if (send(fd, b + i, 1, MSG_NOSIGNAL) != 1 || poll_closed()) {
				printf("closed\n");
				free(b);
				return 0;
			}
			struct timespec ts = {.tv_sec = o->trickle_ms / 1000,
					      .tv_nsec = (long)(o->trickle_ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
		}
		free(b);
		printf("timeout\n");
		return 0;
	}
	if (SSL_connect(ssl) != 1) {
		printf("tls_failed\n");
		ERR_print_errors_fp(stderr);
		return 1;
	}
	push_mqtt_decoder_init(&d, PUSH_MQTT_FROM_SERVER, MAX_PACKET, dbuf, sizeof(dbuf));
	if (o->raw) {
		uint8_t *b = NULL;
		size_t n = 0;
		if (hex_decode(o->raw, &b, &n) != 0)
			return 2;
		int w = 0;
		for (size_t i = 0; o->trickle_ms && w == 0 && i < n; i++) {
			struct timespec ts = {.tv_sec = o->trickle_ms / 1000,
					      .tv_nsec = (long)(o->trickle_ms % 1000) * 1000000L};
			w = send_bytes(b + i, 1);
			if (w == 0 && poll_closed())
				w = -1;
			nanosleep(&ts, NULL);
		}
		if (!o->trickle_ms)
			w = send_bytes(b, n);
		free(b);
		if (w != 0) {
			printf("closed\n");
			return 0;
		}
		read_until_closed(&d, in, &have, &off);
		return 0;
	}
	struct push_mqtt_packet c = {.type = PUSH_MQTT_CONNECT,
				     .connect = {.clean_session = true,
						 .keepalive = (uint16_t)o->keepalive,
						 .client_id = {o->id, strlen(o->id)},
						 .has_username = true,
						 .username = {"device", 6},
						 .has_password = o->token != NULL,
						 .password = {(const uint8_t *)o->token,
							      o->token ? strlen(o->token) : 0}}};
	if (send_packet(&c) != 0 || (r = next_packet(&d, in, &have, &off, &p)) != 1) {
		printf("closed\n");
		return 0;
	}
	print_packet(&p);
	if (p.type != PUSH_MQTT_CONNACK || p.connack.return_code != 0) {
		read_until_closed(&d, in, &have, &off);
		return 0;
	}
	if (strcmp(o->topic ? o->topic : "", "-") != 0) {
		snprintf(topic, sizeof(topic), "%s%s", o->topic ? "" : "d/",
			 o->topic ? o->topic : o->id);
		struct push_mqtt_topic t = {.filter = {topic, strlen(topic)}, .qos = 1};
		uint8_t buf[512];
		size_t len = 0;
		if (push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, 1, &t, 1, buf, sizeof(buf), &len,
					    NULL) != 0 ||
		    send_bytes(buf, len) != 0) {
			printf("closed\n");
			return 0;
		}
	}
	if (o->after) {
		uint8_t *b = NULL;
		size_t n = 0;
		if (hex_decode(o->after, &b, &n) != 0)
			return 2;
		/* Wait for the SUBACK first, so the broker is past the subscription. */
		if ((r = next_packet(&d, in, &have, &off, &p)) == 1)
			print_packet(&p);
		int w = send_bytes(b, n);
		free(b);
		if (w != 0) {
			printf("closed\n");
			return 0;
		}
		read_until_closed(&d, in, &have, &off);
		return 0;
	}
	int got = 0;
	if (o->count == 0 && (r = next_packet(&d, in, &have, &off, &p)) == 1)
		print_packet(&p); /* the SUBACK */
	while (got < o->count || o->linger_ms) {
		if (got >= o->count)
			set_timeout(o->linger_ms);
		r = next_packet(&d, in, &have, &off, &p);
		if (r != 1) {
			printf(r == 0 ? "closed\n" : "timeout\n");
			break;
		}
		print_packet(&p);
		if (p.type != PUSH_MQTT_PUBLISH)
			continue;
		got++;
		if (!o->no_ack && p.publish.qos == 1) {
			struct push_mqtt_packet a = {.type = PUSH_MQTT_PUBACK, .id = p.publish.id};
			if (send_packet(&a) != 0)
				break;
		}
	}
	printf("done\n");
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	struct opt o = {.count = 1, .keepalive = 60, .timeout_ms = 10000};
	int i;
	for (i = 1; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--no-ack") == 0) {
			o.no_ack = 1;
			continue;
		}
		if (strcmp(a, "--plain") == 0) {
			o.plain = 1;
			continue;
		}
		const char *v = argv[++i];
		if (strcmp(a, "--ca") == 0)
			o.ca = v;
		else if (strcmp(a, "--id") == 0)
			o.id = v;
		else if (strcmp(a, "--token-env") == 0)
			o.token = getenv(v);
		else if (strcmp(a, "--topic") == 0)
			o.topic = v;
		else if (strcmp(a, "--count") == 0)
			o.count = atoi(v);
		else if (strcmp(a, "--keepalive") == 0)
			o.keepalive = atoi(v);
		else if (strcmp(a, "--timeout") == 0)
			o.timeout_ms = atoi(v);
		else if (strcmp(a, "--raw") == 0)
			o.raw = v;
		else if (strcmp(a, "--after") == 0)
			o.after = v;
		else if (strcmp(a, "--trickle") == 0)
			o.trickle_ms = atoi(v);
		else if (strcmp(a, "--linger") == 0)
			o.linger_ms = atoi(v);
		else {
			fprintf(stderr, "push_device: unknown option %s\n", a);
			return 2;
		}
	}
	if (argc - i != 2 || !o.ca || (!o.id && !o.raw)) {
		fprintf(stderr, "usage: push_device --ca FILE --id REGID [--token-env VAR] [...]"
				" HOST PORT\n");
		return 2;
	}
	o.host = argv[i];
	o.port = atoi(argv[i + 1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN); /* a closed connection is reported, not fatal */
	int rc = run(&o);
	if (ssl)
		SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	return rc;
}
