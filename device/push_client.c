/* push_client.c - libmicadev's push client: one MQTT 3.1.1 session over TLS
 * (lib/uvtls.h) to a mica-push broker on a libuv loop. It subscribes to
 * d/<regid>, opens every message with the content key, drops duplicates by
 * message id, acknowledges after the application's callback, pings at the
 * keep-alive interval and reconnects with full-jitter backoff, offering the
 * newest TLS session. Contract: micadev.h and docs/push-internals.md. */
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/micadev.h"
#include "mipush/mqtt.h"
#include "uvtls.h"

#define SUB_ID 1

enum conn_state {
	CS_IDLE,       /* no connection: waiting to (re)connect */
	CS_RESOLVING,  /* uv_getaddrinfo in flight */
	CS_CONNECTING, /* TCP + TLS handshake */
	CS_CONNACK,    /* CONNECT sent */
	CS_SUBACK,     /* SUBSCRIBE sent */
	CS_SUBSCRIBED, /* messages flow */
	CS_CLOSING,    /* mica_uvtls_close called, on_close pending */
};

struct dev_push_client {
	uv_loop_t *loop;
	dev_push_options opt; /* strings below are the client's copies */
	char *host, *server_name, *ca_file, *regid, *token, *topic;
	uint8_t key[DEV_PUSH_KEY_LEN];
	SSL_CTX *ctx;
	SSL_SESSION *session; /* newest session from on_session, or NULL */
	mica_uvtls_callbacks cb;
	mica_uvtls_conn *conn;
	enum conn_state state;
	struct push_mqtt_decoder dec;
	uint8_t *dec_buf;
	uv_timer_t retry, ping;
	uv_getaddrinfo_t resolve;
	unsigned attempt;	  /* reconnects since the last SUBACK */
	unsigned handles;	  /* open uv handles and requests to wait for at stop */
	bool stopping, in_packet; /* in_packet: handling a packet from the broker */
	dev_dedup seen;
	dev_push_stats stats;
};

static void event(dev_push_client *c, enum dev_push_event ev, int detail)
{
	if (c->opt.on_event)
		c->opt.on_event(c, ev, detail, c->opt.user);
}

const char *dev_push_event_name(enum dev_push_event ev)
{
	switch (ev) {
	case DEV_PUSH_EV_CONNECTED:
		return "connected";
	case DEV_PUSH_EV_SUBSCRIBED:
		return "subscribed";
	case DEV_PUSH_EV_REFUSED:
		return "refused";
	case DEV_PUSH_EV_DISCONNECTED:
		return "disconnected";
	case DEV_PUSH_EV_RETRY:
		return "retry";
	case DEV_PUSH_EV_DROPPED:
		return "dropped";
	case DEV_PUSH_EV_STATE_ERROR:
		return "state_error";
	}
	return "unknown";
}

/* ---- Freeing ---------------------------------------------------------------- */

static void client_free(dev_push_client *c)
{
	if (c->session)
		SSL_SESSION_free(c->session);
	if (c->ctx)
		SSL_CTX_free(c->ctx);
	dev_dedup_cleanup(&c->seen);
	mica_wipe(c->key, sizeof(c->key));
	if (c->token) {
		mica_wipe(c->token, strlen(c->token));
		free(c->token);
	}
	free(c->host);
	free(c->server_name);
	free(c->ca_file);
	free(c->regid);
	free(c->topic);
	free(c->dec_buf);
	free(c);
}

/* The last handle or request of a stopping client is gone: report, free. */
static void maybe_finish(dev_push_client *c)
{
	if (!c->stopping || c->handles > 0 || c->conn)
		return;
	if (c->opt.on_stopped)
		c->opt.on_stopped(c, c->opt.user);
	client_free(c);
}

static void handle_closed(uv_handle_t *h)
{
	dev_push_client *c = h->data;
	c->handles--;
	maybe_finish(c);
}

/* ---- Writing packets --------------------------------------------------------- */

/* Encodes |pkt| and writes it. Returns 0 or an error (the connection is then
 * closing or unusable). */
static int send_packet(dev_push_client *c, const struct push_mqtt_packet *pkt)
{
	uint8_t small[256], *buf = small;
	size_t len = 0;
	int err = push_mqtt_encode(pkt, NULL, 0, &len, NULL);
	if (err)
		return err;
	if (len > sizeof(small) && !(buf = malloc(len)))
		return MICA_ENOMEM;
	if ((err = push_mqtt_encode(pkt, buf, len, &len, NULL)) == 0)
		err = mica_uvtls_write(c->conn, buf, len);
	mica_wipe(buf, len); /* a CONNECT holds the token */
	if (buf != small)
		free(buf);
	return err;
}

static void conn_close(dev_push_client *c)
{
	if (c->conn && c->state != CS_CLOSING) {
		c->state = CS_CLOSING;
		mica_uvtls_close(c->conn);
	}
}

/* ---- Connecting ---------------------------------------------------------------- */

static void start_connect(dev_push_client *c);
static void retry_fired(uv_timer_t *t);

static void schedule_retry(dev_push_client *c)
{
	uint32_t rnd = 0;
	if (mica_random(&rnd, sizeof(rnd)) != 0)
		rnd = UINT32_MAX / 2;
	uint64_t delay =
		dev_backoff_ms(c->attempt, c->opt.backoff_base_ms, c->opt.backoff_cap_ms, rnd);
	if (c->attempt < UINT_MAX)
		c->attempt++;
	c->state = CS_IDLE;
	event(c, DEV_PUSH_EV_RETRY, delay > INT_MAX ? INT_MAX : (int)delay);
	(void)uv_timer_start(&c->retry, retry_fired, delay, 0);
}

static void retry_fired(uv_timer_t *t)
{
	dev_push_client *c = t->data;
	if (!c->stopping)
		start_connect(c);
}

static void ping_fired(uv_timer_t *t)
{
	dev_push_client *c = t->data;
	if (!c->conn || c->state < CS_CONNACK || c->state == CS_CLOSING)
		return;
	struct push_mqtt_packet pkt = {.type = PUSH_MQTT_PINGREQ};
	if (send_packet(c, &pkt) == 0)
		c->stats.pings++;
	else
		conn_close(c);
}

static void on_open(mica_uvtls_conn *conn)
{
	dev_push_client *c = mica_uvtls_user(conn);
	bool resumed = SSL_session_reused(mica_uvtls_ssl(conn)) == 1;
	c->stats.connects++;
	if (resumed)
		c->stats.resumed++;
	event(c, DEV_PUSH_EV_CONNECTED, resumed);
	if (c->stopping) {
		conn_close(c);
		return;
	}
	struct push_mqtt_packet pkt = {.type = PUSH_MQTT_CONNECT};
	pkt.connect.clean_session = true; /* the broker's queue is the session */
	pkt.connect.keepalive = (uint16_t)c->opt.keepalive_s;
	pkt.connect.client_id = (struct push_mqtt_str){c->regid, strlen(c->regid)};
	/* MQTT 3.1.1 sends a password only after a user name [MQTT-3.1.2-22];
	 * the broker ignores the name. */
	pkt.connect.has_username = true;
	pkt.connect.username = pkt.connect.client_id;
	pkt.connect.has_password = true;
	pkt.connect.password = (struct push_mqtt_bin){(const uint8_t *)c->token, strlen(c->token)};
	if (send_packet(c, &pkt) != 0) {
		conn_close(c);
		return;
	}
	c->state = CS_CONNACK;
	/* Dead links: no record for 1.5 keep-alives closes the connection
	 * (a PINGRESP answers every keep-alive). */
	mica_uvtls_set_idle_timeout(conn, c->opt.keepalive_s * 1500u);
	(void)uv_timer_start(&c->ping, ping_fired, c->opt.keepalive_s * 1000ull,
			     c->opt.keepalive_s * 1000ull);
}

static void on_session(mica_uvtls_conn *conn, SSL_SESSION *sess)
{
	dev_push_client *c = mica_uvtls_user(conn);
	/* A TLS 1.3 session resumes once: keep only the newest. */
	if (SSL_SESSION_up_ref(sess) != 1)
		return;
	if (c->session)
		SSL_SESSION_free(c->session);
	c->session = sess;
}

static void on_close(mica_uvtls_conn *conn, mica_uvtls_close_reason reason)
{
	dev_push_client *c = mica_uvtls_user(conn);
	c->conn = NULL;
	(void)uv_timer_stop(&c->ping);
	event(c, DEV_PUSH_EV_DISCONNECTED, (int)reason);
	if (c->stopping) {
		maybe_finish(c);
		return;
	}
	schedule_retry(c);
}

static void tls_connect(dev_push_client *c, const char *addr)
{
	mica_uvtls_connect_options o = {
		.host = addr,
		.port = c->opt.port,
		.server_name = c->server_name,
		.session = c->session,
		.timeout_ms = c->opt.connect_timeout_ms,
	};
	/* A fresh decoder per connection: a partial packet of the last one is
	 * meaningless now. */
	push_mqtt_decoder_init(&c->dec, PUSH_MQTT_FROM_SERVER, c->opt.max_packet, c->dec_buf,
			       c->opt.max_packet);
	c->state = CS_CONNECTING;
	if (mica_uvtls_connect(c->loop, c->ctx, &o, &c->cb, c, &c->conn) != 0) {
		c->conn = NULL;
		schedule_retry(c);
	}
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	dev_push_client *c = req->data;
	char addr[INET6_ADDRSTRLEN] = "";
	c->handles--;
	if (status == 0 && res) {
		const void *a =
			res->ai_family == AF_INET6
				? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
				: (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
		if (!inet_ntop(res->ai_family, a, addr, sizeof(addr)))
			addr[0] = '\0';
	}
	uv_freeaddrinfo(res);
	if (c->stopping) {
		maybe_finish(c);
		return;
	}
	if (!addr[0]) {
		event(c, DEV_PUSH_EV_DISCONNECTED, MICA_UVTLS_CLOSED_IO);
		schedule_retry(c);
		return;
	}
	tls_connect(c, addr);
}

static bool numeric(const char *host)
{
	uint8_t b[16];
	return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

static void start_connect(dev_push_client *c)
{
	if (numeric(c->host)) {
		tls_connect(c, c->host);
		return;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	c->resolve.data = c;
	c->state = CS_RESOLVING;
	if (uv_getaddrinfo(c->loop, &c->resolve, resolved, c->host, NULL, &hints) != 0) {
		schedule_retry(c);
		return;
	}
	c->handles++;
}

/* ---- Receiving ------------------------------------------------------------------ */

static void drop(dev_push_client *c, uint64_t *counter, int why)
{
	(*counter)++;
	event(c, DEV_PUSH_EV_DROPPED, why);
}

/* The dedup key: the message id; for a deleted_messages marker (whose id
 * is the same every time) the id and the envelope's nonce, so a
 * redelivered marker is a duplicate and a newly sealed one is not. */
static void dedup_key(const dev_push_message *m, char *out, size_t cap)
{
	if (m->deleted) {
		char hex[2 * MICA_ENVELOPE_NONCE_LEN + 1] = "";
		if (mica_hex_encode(m->nonce, sizeof(m->nonce), hex, sizeof(hex)) != 0)
			hex[0] = '\0';
		snprintf(out, cap, "%s#%s", m->id, hex);
	} else {
		snprintf(out, cap, "%s", m->id);
	}
}

/* A PUBLISH: open, filter, deliver, then acknowledge. Whatever is dropped
 * is acknowledged too: it can never be delivered, and unacknowledged it
 * would hold the broker's in-flight window forever. */
static int handle_publish(dev_push_client *c, const struct push_mqtt_publish *p)
{
	dev_push_message m;
	bool have = false;
	if (p->qos > 1)
		return MICA_EBADHEADER; /* never granted: a broker that sends it is broken */
	if (p->topic.len != strlen(c->topic) || memcmp(p->topic.p, c->topic, p->topic.len) != 0) {
		drop(c, &c->stats.malformed, MICA_EINVAL);
	} else {
		int err = dev_push_open(c->key, c->regid, p->payload, p->payload_len, &m);
		if (err == MICA_EBADHEADER)
			drop(c, &c->stats.malformed, MICA_EBADHEADER);
		else if (err)
			drop(c, &c->stats.rejected, MICA_EAUTH);
		else
			have = true;
	}
	if (have) {
		char *key = NULL;
		size_t klen = strlen(m.id) + 2 + 2 * MICA_ENVELOPE_NONCE_LEN;
		m.dup = p->dup;
		if (!(key = malloc(klen))) {
			dev_push_message_cleanup(&m);
			return MICA_ENOMEM; /* not acknowledged: it comes again */
		}
		dedup_key(&m, key, klen);
		if (dev_dedup_seen(&c->seen, key, strlen(key))) {
			drop(c, &c->stats.duplicates, MICA_EEXISTS);
		} else {
			if (m.deleted) {
				c->stats.deleted++;
				if (c->opt.on_deleted)
					c->opt.on_deleted(c, &m, c->opt.user);
			} else {
				c->stats.delivered++;
				c->opt.on_message(c, &m, c->opt.user);
			}
			int err = dev_dedup_add(&c->seen, key, strlen(key));
			if (err)
				event(c, DEV_PUSH_EV_STATE_ERROR, err);
		}
		free(key);
		dev_push_message_cleanup(&m);
	}
	if (p->qos == 1) {
		struct push_mqtt_packet ack = {.type = PUSH_MQTT_PUBACK, .id = p->id};
		return send_packet(c, &ack);
	}
	return 0;
}

static int subscribe(dev_push_client *c)
{
	struct push_mqtt_topic t = {{c->topic, strlen(c->topic)}, 1};
	uint8_t buf[512];
	size_t len = 0;
	int err = push_mqtt_encode_topics(PUSH_MQTT_SUBSCRIBE, SUB_ID, &t, 1, buf, sizeof(buf),
					  &len, NULL);
	return err ? err : mica_uvtls_write(c->conn, buf, len);
}

/* One packet from the broker. Returns 0, or an error that closes the
 * connection. */
static int handle_packet(dev_push_client *c, const struct push_mqtt_packet *pkt)
{
	switch (pkt->type) {
	case PUSH_MQTT_CONNACK:
		if (c->state != CS_CONNACK)
			return MICA_ESTATE;
		if (pkt->connack.return_code != PUSH_MQTT_CONNACK_ACCEPTED) {
			c->stats.refused++;
			event(c, DEV_PUSH_EV_REFUSED, pkt->connack.return_code);
			return MICA_EDENIED;
		}
		c->state = CS_SUBACK;
		return subscribe(c);
	case PUSH_MQTT_SUBACK:
		if (c->state != CS_SUBACK || pkt->suback.id != SUB_ID || pkt->suback.count != 1)
			return MICA_ESTATE;
		if (pkt->suback.codes[0] == PUSH_MQTT_SUBACK_FAILURE) {
			c->stats.refused++;
			event(c, DEV_PUSH_EV_REFUSED, PUSH_MQTT_SUBACK_FAILURE);
			return MICA_EDENIED;
		}
		c->state = CS_SUBSCRIBED;
		c->attempt = 0; /* a working session: the next drop starts over */
		c->stats.subscribed++;
		event(c, DEV_PUSH_EV_SUBSCRIBED, pkt->suback.codes[0]);
		return 0;
	case PUSH_MQTT_PUBLISH:
		/* A broker may send as soon as it has the subscription, before
		 * its SUBACK arrives here. */
		if (c->state != CS_SUBSCRIBED && c->state != CS_SUBACK)
			return MICA_ESTATE;
		return handle_publish(c, &pkt->publish);
	case PUSH_MQTT_PINGRESP:
		return c->state >= CS_SUBACK ? 0 : MICA_ESTATE;
	default:
		/* PUBREC/PUBREL/PUBCOMP (QoS 2 never granted), UNSUBACK (never
		 * asked), PUBACK (the device never publishes). */
		return MICA_ESTATE;
	}
}

static void on_data(mica_uvtls_conn *conn, const uint8_t *data, size_t len)
{
	dev_push_client *c = mica_uvtls_user(conn);
	while (len > 0 && c->state != CS_CLOSING) {
		struct push_mqtt_packet pkt;
		size_t used = 0;
		int err = push_mqtt_decoder_feed(&c->dec, data, len, &used, &pkt);
		if (err) {
			c->stats.protocol_errors++;
			conn_close(c);
			break;
		}
		data += used;
		len -= used;
		if (pkt.type == PUSH_MQTT_NONE)
			continue;
		/* A stop() from a callback of this packet waits until the packet
		 * is handled (its PUBACK written). */
		c->in_packet = true;
		err = handle_packet(c, &pkt);
		c->in_packet = false;
		if (err) {
			if (err != MICA_EDENIED)
				c->stats.protocol_errors++;
			conn_close(c);
		}
		if (c->stopping || err)
			break;
	}
	if (c->stopping)
		dev_push_client_stop(c);
}

/* ---- Life cycle ------------------------------------------------------------------ */

static int copy_str(char **dst, const char *src)
{
	if (!src)
		return 0;
	return (*dst = strdup(src)) ? 0 : MICA_ENOMEM;
}

static int check_options(const dev_push_options *o)
{
	if (!o->host || !o->host[0] || o->port <= 0 || o->port > 65535 || !o->ca_file ||
	    !o->regid || !o->regid[0] || !o->token || !o->content_key || !o->on_message)
		return MICA_EINVAL;
	if (o->keepalive_s > 65535 || strlen(o->token) > PUSH_MQTT_MAX_STRING ||
	    strlen(o->regid) > 1000)
		return MICA_EINVAL;
	/* The regid is both the client id and a topic level. */
	if (push_mqtt_check_topic(o->regid, strlen(o->regid), false, NULL) != 0 ||
	    strchr(o->regid, '/'))
		return MICA_EINVAL;
	return 0;
}

int dev_push_client_new(uv_loop_t *loop, const dev_push_options *opt, dev_push_client **out)
{
	if (out)
		*out = NULL;
	if (!loop || !opt || !out)
		return MICA_EINVAL;
	int err = check_options(opt);
	if (err)
		return err;
	dev_push_client *c = calloc(1, sizeof(*c));
	if (!c)
		return MICA_ENOMEM;
	c->loop = loop;
	c->opt = *opt;
	if (!c->opt.keepalive_s)
		c->opt.keepalive_s = 60;
	if (!c->opt.backoff_base_ms)
		c->opt.backoff_base_ms = 500;
	if (!c->opt.backoff_cap_ms)
		c->opt.backoff_cap_ms = 60000;
	if (!c->opt.max_packet)
		c->opt.max_packet = 64 * 1024;
	memcpy(c->key, opt->content_key, DEV_PUSH_KEY_LEN);
	size_t tlen = strlen(opt->regid) + 3;
	if ((err = copy_str(&c->host, opt->host)) || (err = copy_str(&c->regid, opt->regid)) ||
	    (err = copy_str(&c->token, opt->token)) ||
	    (err = copy_str(&c->ca_file, opt->ca_file)) ||
	    (err = copy_str(&c->server_name, opt->server_name
						     ? opt->server_name
						     : (numeric(opt->host) ? NULL : opt->host))))
		goto fail;
	err = MICA_ENOMEM;
	if (!(c->topic = malloc(tlen)) || !(c->dec_buf = malloc(c->opt.max_packet)))
		goto fail;
	snprintf(c->topic, tlen, "d/%s", c->regid);
	c->opt.host = c->opt.server_name = c->opt.ca_file = c->opt.regid = c->opt.token = NULL;
	c->opt.content_key = NULL;
	c->opt.dedup_file = NULL;
	if ((err = dev_dedup_init(&c->seen, opt->dedup_cap, opt->dedup_file)) != 0)
		goto fail;
	if ((err = mica_uvtls_client_ctx_new(c->ca_file, NULL, NULL, &c->ctx)) != 0)
		goto fail;
	c->cb = (mica_uvtls_callbacks){.on_open = on_open,
				       .on_data = on_data,
				       .on_session = on_session,
				       .on_close = on_close};
	/* From here on the handles exist and the client is freed through
	 * dev_push_client_stop() only. */
	(void)uv_timer_init(loop, &c->retry);
	(void)uv_timer_init(loop, &c->ping);
	c->retry.data = c->ping.data = c;
	c->handles = 2;
	*out = c;
	start_connect(c);
	return 0;
fail:
	client_free(c);
	return err;
}

void dev_push_client_stop(dev_push_client *c)
{
	if (!c)
		return;
	if (c->in_packet) { /* on_data stops once the packet is handled */
		c->stopping = true;
		return;
	}
	c->stopping = true;
	if (c->conn && c->state != CS_CLOSING) {
		if (c->state >= CS_CONNACK) {
			struct push_mqtt_packet pkt = {.type = PUSH_MQTT_DISCONNECT};
			(void)send_packet(c, &pkt);
		}
		conn_close(c);
	}
	if (c->state == CS_RESOLVING)
		(void)uv_cancel((uv_req_t *)&c->resolve);
	if (!uv_is_closing((uv_handle_t *)&c->retry)) {
		uv_close((uv_handle_t *)&c->retry, handle_closed);
		uv_close((uv_handle_t *)&c->ping, handle_closed);
	}
}

void dev_push_client_stats(const dev_push_client *c, dev_push_stats *out)
{
	if (c && out)
		*out = c->stats;
}
