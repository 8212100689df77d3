/* broker.c - the MQTT side of the push broker: the libuv loop thread, its
 * connections and their state (CONNECT, SUBSCRIBE to the device's own
 * topic, QoS 1 delivery in seq order inside the in-flight window, PUBACK,
 * PINGREQ, DISCONNECT), wakes and kicks from Redis, and the /metrics
 * counters. The rules are docs/push-internals.md's; what blocks runs on the
 * database thread (broker_db.c). */
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "log.h"
#include "mipush/broker.h"
#include "mipush/mqtt.h"
#include "mipush/push.h"
#include "thread.h"
#include "uvtls.h"

#define WRITE_HIGH_WATER (256 * 1024) /* stop sending above this many queued bytes */
#define BUF_POOL 32		      /* decoder buffers kept for reuse */

enum bstate { ST_WAIT_CONNECT, ST_AUTH, ST_ONLINE, ST_CLOSED };

/* One device connection (loop thread only). */
struct bconn {
	mica_uvtls_conn *tls; /* NULL once closed */
	struct push_broker *b;
	struct bconn *hnext; /* same-bucket chain of the regid table */
	struct push_mqtt_decoder dec;
	uint8_t *held; /* bytes that came after CONNECT while it is checked */
	size_t held_len;
	struct pb_row *rows; /* messages held for the device, in seq order */
	int64_t loaded_seq;  /* the last seq a queue read returned */
	int64_t acked[4];    /* the last rows acknowledged here (late wakes) */
	/* Rows acknowledged while a queue read runs: the read may still
	 * return them (it ran before their delete), so its answer drops them. */
	int64_t *acked_in_read;
	size_t nacked_in_read, acked_in_read_cap;
	uint64_t pkt_start; /* loop time a split packet began, 0: none */
	unsigned keepalive_ms;
	unsigned refs; /* the connection, and each database job about it */
	uint16_t next_pid, inflight;
	uint8_t state, acked_pos, drop;
	bool drop_set, subscribed, more, loading, in_table;
	bool wake_dropped; /* a wake was left for a queue read to find */
	char regid[PB_REGID_MAX + 1];
};

struct push_broker {
	struct push_service *svc;
	const struct push_broker_config *cfg;
	const struct mica_kv_config *kv;
	struct push_broker_metrics *m;
	char node[33];
	uv_loop_t loop;
	uv_thread_t thread;
	uv_sem_t started;
	int start_err;
	uv_async_t db_async, wake_async, stop_async;
	bool asyncs;
	mica_uvtls_server *srv;
	struct pb_db *db;
	struct pb_wake *wake;
	struct bconn **table;
	size_t tsize;
	size_t nconns; /* struct bconn alive (TLS established) */
	bool stopping, finished;
	uint8_t *pool[BUF_POOL];
	size_t npool;
	uint8_t *scratch; /* encoder output */
	size_t scratch_cap;
	int port;
};

#define INC(b, f) atomic_fetch_add_explicit(&(b)->m->f, 1, memory_order_relaxed)
#define DEC(b, f) atomic_fetch_sub_explicit(&(b)->m->f, 1, memory_order_relaxed)

/* ---- names and metrics ----------------------------------------------------- */

static const char *const drop_names[PB_DROP_COUNT] = {
	"client_disconnect",
	"peer_closed",
	"malformed",
	"oversize",
	"wrong_protocol",
	"second_connect",
	"publish_from_device",
	"not_connected",
	"bad_client_id",
	"auth_failed",
	"unavailable",
	"keepalive_timeout",
	"connect_timeout",
	"slow_packet",
	"handshake_timeout",
	"tls",
	"io",
	"takeover",
	"overload",
	"shutdown",
	"nomem",
};

const char *push_broker_drop_name(enum push_broker_drop d)
{
	return (unsigned)d < PB_DROP_COUNT ? drop_names[d] : "unknown";
}

static const char *const malformed_names[PB_MALFORMED_REASONS] = {
	"bad_remaining_length",
	"reserved_type",
	"unexpected_type",
	"reserved_flags",
	"bad_qos",
	"dup_with_qos0",
	"bad_length",
	"zero_packet_id",
	"connect_reserved_flag",
	"bad_will_flags",
	"password_without_username",
	"no_topics",
	"bad_subscription_options",
	"bad_utf8",
	"nul_in_string",
	"empty_topic",
	"wildcard_in_topic",
	"bad_topic_filter",
	"bad_argument",
	"other",
};

size_t push__broker_malformed_slot(const char *reason)
{
	for (size_t i = 0; reason && i + 1 < PB_MALFORMED_REASONS; i++)
		if (strcmp(malformed_names[i], reason) == 0)
			return i;
	return PB_MALFORMED_REASONS - 1;
}

static long sum(struct push_broker_metrics *m, size_t n, size_t off)
{
	long v = 0;
	for (size_t i = 0; i < n; i++)
		v += atomic_load_explicit((atomic_long *)((char *)&m[i] + off),
					  memory_order_relaxed);
	return v;
}

void push_broker_metrics_write(FILE *f, struct push_broker_metrics *m, size_t n)
{
	static const struct {
		const char *name, *type, *help;
		size_t off;
	} one[] = {
		{"connections", "gauge", "TLS connections open (handshake finished).",
		 offsetof(struct push_broker_metrics, connections)},
		{"devices_online", "gauge", "Devices connected and authenticated.",
		 offsetof(struct push_broker_metrics, online)},
		{"connects_total", "counter", "CONNECTs accepted (CONNACK 0).",
		 offsetof(struct push_broker_metrics, connects)},
		{"auth_failures_total", "counter", "CONNECTs refused with CONNACK 5.",
		 offsetof(struct push_broker_metrics, auth_failures)},
		{"auth_cache_hits_total", "counter",
		 "Tokens verified from the process cache, without the Key Center.",
		 offsetof(struct push_broker_metrics, auth_cache_hits)},
		{"messages_sent_total", "counter", "QoS 1 PUBLISHes sent to devices.",
		 offsetof(struct push_broker_metrics, sent)},
		{"messages_acked_total", "counter", "PUBACKs received for them.",
		 offsetof(struct push_broker_metrics, acked)},
		{"messages_redelivered_total", "counter",
		 "PUBLISHes sent with DUP (attempted on an earlier connection).",
		 offsetof(struct push_broker_metrics, redelivered)},
		{"wakes_total", "counter", "W lines received on push:wake.",
		 offsetof(struct push_broker_metrics, wakes)},
		{"kicks_total", "counter",
		 "Connections closed because the device connected at another broker.",
		 offsetof(struct push_broker_metrics, kicks)},
		{"resyncs_total", "counter",
		 "Queue re-reads of every held device after the push:wake subscription came back.",
		 offsetof(struct push_broker_metrics, resyncs)},
	};
	for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++)
		fprintf(f,
			"# HELP mica_push_broker_%s %s\n# TYPE mica_push_broker_%s %s\n"
			"mica_push_broker_%s %ld\n",
			one[i].name, one[i].help, one[i].name, one[i].type, one[i].name,
			sum(m, n, one[i].off));
	fprintf(f,
		"# HELP mica_push_broker_processes Broker processes on this port.\n"
		"# TYPE mica_push_broker_processes gauge\nmica_push_broker_processes %zu\n",
		n);
	fprintf(f, "# HELP mica_push_broker_disconnects_total Connections ended, by reason.\n"
		   "# TYPE mica_push_broker_disconnects_total counter\n");
	for (int d = 0; d < PB_DROP_COUNT; d++)
		fprintf(f, "mica_push_broker_disconnects_total{reason=\"%s\"} %ld\n", drop_names[d],
			sum(m, n,
			    offsetof(struct push_broker_metrics, drops) +
				    (size_t)d * sizeof(atomic_long)));
	fprintf(f, "# HELP mica_push_broker_malformed_total Packets the MQTT codec refused, by"
		   " reason.\n# TYPE mica_push_broker_malformed_total counter\n");
	for (int r = 0; r < PB_MALFORMED_REASONS; r++)
		fprintf(f, "mica_push_broker_malformed_total{reason=\"%s\"} %ld\n",
			malformed_names[r],
			sum(m, n,
			    offsetof(struct push_broker_metrics, malformed) +
				    (size_t)r * sizeof(atomic_long)));
}

/* ---- the regid table ------------------------------------------------------- */

static size_t bucket(const struct push_broker *b, const char *regid)
{
	uint64_t h = 1469598103934665603ull;
	for (const char *p = regid; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return (size_t)(h & (b->tsize - 1));
}

static void table_add(struct bconn *bc)
{
	struct push_broker *b = bc->b;
	size_t i = bucket(b, bc->regid);
	bc->hnext = b->table[i];
	b->table[i] = bc;
	bc->in_table = true;
}

static void table_remove(struct bconn *bc)
{
	if (!bc->in_table)
		return;
	for (struct bconn **p = &bc->b->table[bucket(bc->b, bc->regid)]; *p; p = &(*p)->hnext)
		if (*p == bc) {
			*p = bc->hnext;
			break;
		}
	bc->in_table = false;
}

/* ---- connections ----------------------------------------------------------- */

static void unref(struct bconn *bc)
{
	if (--bc->refs > 0)
		return;
	push__broker_rows_free(bc->rows);
	free(bc->held);
	free(bc->acked_in_read);
	free(bc);
}

/* Closes |bc| for |why| (the first reason given is the one counted). */
static void drop(struct bconn *bc, enum push_broker_drop why)
{
	if (!bc->tls)
		return;
	if (!bc->drop_set) {
		bc->drop_set = true;
		bc->drop = (uint8_t)why;
	}
	mica_uvtls_close(bc->tls);
}

static struct pb_job *job_new(enum pb_job_kind kind, struct bconn *bc)
{
	struct pb_job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->kind = kind;
	snprintf(j->regid, sizeof(j->regid), "%s", bc->regid);
	if (kind == PBJ_AUTH || kind == PBJ_LOAD) {
		j->conn = bc;
		bc->refs++;
	}
	return j;
}

/* Encodes |pkt| and writes it; a failure closes the connection. */
static void send_packet(struct bconn *bc, const struct push_mqtt_packet *pkt)
{
	struct push_broker *b = bc->b;
	size_t len = 0;
	if (!bc->tls || push_mqtt_encode(pkt, NULL, 0, &len, NULL) != 0) {
		drop(bc, PB_DROP_NOMEM);
		return;
	}
	if (len > b->scratch_cap) {
		uint8_t *n = realloc(b->scratch, len);
		if (!n) {
			drop(bc, PB_DROP_NOMEM);
			return;
		}
		b->scratch = n;
		b->scratch_cap = len;
	}
	if (push_mqtt_encode(pkt, b->scratch, b->scratch_cap, &len, NULL) != 0 ||
	    mica_uvtls_write(bc->tls, b->scratch, len) != 0)
		drop(bc, PB_DROP_IO);
}

static void send_connack(struct bconn *bc, uint8_t code)
{
	struct push_mqtt_packet p = {.type = PUSH_MQTT_CONNACK, .connack = {.return_code = code}};
	send_packet(bc, &p);
}

static bool pid_in_use(const struct bconn *bc, uint16_t pid)
{
	for (const struct pb_row *r = bc->rows; r; r = r->next)
		if (r->sent && r->pid == pid)
			return true;
	return false;
}

static void load_more(struct bconn *bc, int64_t after)
{
	struct pb_job *j = job_new(PBJ_LOAD, bc);
	if (!j)
		return;
	j->seq = after;
	bc->loading = true;
	push__broker_db_submit(bc->b->db, j);
}

/* Sends what the window allows, in seq order. */
static void pump(struct bconn *bc)
{
	struct push_broker *b = bc->b;
	char topic[2 + PB_REGID_MAX + 1];
	size_t unsent = 0;

	if (bc->state != ST_ONLINE || !bc->subscribed || !bc->tls)
		return;
	snprintf(topic, sizeof(topic), "d/%s", bc->regid);
	for (struct pb_row *r = bc->rows; r && bc->tls; r = r->next) {
		if (r->sent)
			continue;
		if (bc->inflight >= b->cfg->inflight ||
		    mica_uvtls_pending(bc->tls) > WRITE_HIGH_WATER) {
			unsent++;
			continue;
		}
		do {
			bc->next_pid = (uint16_t)(bc->next_pid + 1);
		} while (bc->next_pid == 0 || pid_in_use(bc, bc->next_pid));
		struct push_mqtt_packet p = {.type = PUSH_MQTT_PUBLISH,
					     .publish = {.qos = 1,
							 .dup = r->attempted,
							 .id = bc->next_pid,
							 .topic = {topic, strlen(topic)},
							 .payload = r->body,
							 .payload_len = r->len}};
		send_packet(bc, &p);
		r->sent = true;
		r->pid = bc->next_pid;
		bc->inflight++;
		INC(b, sent);
		if (r->attempted)
			INC(b, redelivered);
	}
	if (bc->tls && bc->more && !bc->loading && unsent < (size_t)b->cfg->inflight)
		load_more(bc, bc->loaded_seq);
}

static bool recently_acked(const struct bconn *bc, int64_t seq)
{
	for (size_t i = 0; i < sizeof(bc->acked) / sizeof(bc->acked[0]); i++)
		if (bc->acked[i] == seq)
			return true;
	for (size_t i = 0; i < bc->nacked_in_read; i++)
		if (bc->acked_in_read[i] == seq)
			return true;
	return false;
}

static void acked_in_read_clear(struct bconn *bc)
{
	free(bc->acked_in_read);
	bc->acked_in_read = NULL;
	bc->nacked_in_read = bc->acked_in_read_cap = 0;
}

/* Remembers |seq| as acknowledged while a read runs. Out of memory, the
 * row may be sent once more (at least once allows it). */
static void acked_in_read_add(struct bconn *bc, int64_t seq)
{
	if (bc->nacked_in_read == bc->acked_in_read_cap) {
		size_t cap = bc->acked_in_read_cap ? bc->acked_in_read_cap * 2 : 16;
		int64_t *n = realloc(bc->acked_in_read, cap * sizeof(*n));
		if (!n)
			return;
		bc->acked_in_read = n;
		bc->acked_in_read_cap = cap;
	}
	bc->acked_in_read[bc->nacked_in_read++] = seq;
}

/* Takes |r| into |bc|'s list in seq order, or frees it when held already. */
static void take_row(struct bconn *bc, struct pb_row *r)
{
	struct pb_row **p = &bc->rows;
	r->next = NULL;
	if (recently_acked(bc, r->seq)) {
		push__broker_rows_free(r);
		return;
	}
	while (*p && (*p)->seq < r->seq)
		p = &(*p)->next;
	if (*p && (*p)->seq == r->seq) {
		push__broker_rows_free(r);
		return;
	}
	r->next = *p;
	*p = r;
}

static void take_rows(struct bconn *bc, struct pb_row *rows)
{
	while (rows) {
		struct pb_row *n = rows->next;
		if (!rows->next && rows->seq > bc->loaded_seq)
			bc->loaded_seq = rows->seq;
		take_row(bc, rows);
		rows = n;
	}
}

static size_t held_rows(const struct bconn *bc)
{
	size_t n = 0;
	for (const struct pb_row *r = bc->rows; r; r = r->next)
		n++;
	return n;
}

static void on_puback(struct bconn *bc, uint16_t id)
{
	for (struct pb_row **p = &bc->rows; *p; p = &(*p)->next) {
		struct pb_row *r = *p;
		if (!r->sent || r->pid != id)
			continue;
		*p = r->next;
		r->next = NULL;
		bc->inflight--;
		bc->acked[bc->acked_pos++ % 4] = r->seq;
		if (bc->loading)
			acked_in_read_add(bc, r->seq);
		struct pb_job *j = job_new(PBJ_ACK, bc);
		if (j) {
			j->seq = r->seq;
			push__broker_db_submit(bc->b->db, j);
		}
		INC(bc->b, acked);
		push__broker_rows_free(r);
		pump(bc);
		return;
	}
	/* A PUBACK of nothing in flight (a late duplicate): ignored. */
}

static bool own_topic(const struct bconn *bc, const struct push_mqtt_str *f)
{
	size_t n = strlen(bc->regid);
	return f->len == n + 2 && memcmp(f->p, "d/", 2) == 0 && memcmp(f->p + 2, bc->regid, n) == 0;
}

static void on_subscribe(struct bconn *bc, const struct push_mqtt_packet *pkt)
{
	uint8_t codes[64];
	size_t pos = 0, n = 0;
	struct push_mqtt_topic t;
	if (pkt->subscribe.count > sizeof(codes)) {
		drop(bc, PB_DROP_MALFORMED);
		return;
	}
	while (push_mqtt_topics_next(PUSH_MQTT_SUBSCRIBE, &pkt->subscribe, &pos, &t)) {
		bool mine = own_topic(bc, &t.filter);
		codes[n++] = mine ? 1 : PUSH_MQTT_SUBACK_FAILURE;
		if (mine)
			bc->subscribed = true;
	}
	struct push_mqtt_packet a = {
		.type = PUSH_MQTT_SUBACK,
		.suback = {.id = pkt->subscribe.id, .codes = codes, .count = n}};
	send_packet(bc, &a);
	pump(bc);
}

static void on_unsubscribe(struct bconn *bc, const struct push_mqtt_packet *pkt)
{
	size_t pos = 0;
	struct push_mqtt_topic t;
	while (push_mqtt_topics_next(PUSH_MQTT_UNSUBSCRIBE, &pkt->subscribe, &pos, &t))
		if (own_topic(bc, &t.filter))
			bc->subscribed = false;
	struct push_mqtt_packet a = {.type = PUSH_MQTT_UNSUBACK, .id = pkt->subscribe.id};
	send_packet(bc, &a);
}

static bool regid_ok(const struct push_mqtt_str *s)
{
	if (s->len == 0 || s->len > PB_REGID_MAX)
		return false;
	for (size_t i = 0; i < s->len; i++) {
		char c = s->p[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
	}
	return true;
}

static void on_connect(struct bconn *bc, const struct push_mqtt_connect *cn)
{
	struct push_broker *b = bc->b;
	if (!regid_ok(&cn->client_id)) {
		send_connack(bc, PUSH_MQTT_CONNACK_ID_REJECTED);
		drop(bc, PB_DROP_BAD_CLIENT_ID);
		return;
	}
	memcpy(bc->regid, cn->client_id.p, cn->client_id.len);
	bc->regid[cn->client_id.len] = '\0';
	/* No password, or one no token can be: refused like a wrong one. */
	if (!cn->has_password || cn->password.len == 0 || cn->password.len > 128 ||
	    memchr(cn->password.p, 0, cn->password.len)) {
		INC(b, auth_failures);
		send_connack(bc, PUSH_MQTT_CONNACK_NOT_AUTHORIZED);
		drop(bc, PB_DROP_AUTH_FAILED);
		return;
	}
	unsigned ka = cn->keepalive;
	if (ka == 0 || ka > (unsigned)b->cfg->max_keepalive)
		ka = (unsigned)b->cfg->max_keepalive;
	bc->keepalive_ms = ka * 1500u;
	struct pb_job *j = job_new(PBJ_AUTH, bc);
	if (!j || !(j->token = malloc(cn->password.len))) {
		push__broker_job_free(j);
		if (j)
			unref(bc);
		drop(bc, PB_DROP_NOMEM);
		return;
	}
	memcpy(j->token, cn->password.p, cn->password.len);
	j->token_len = cn->password.len;
	/* The codec borrows the token from bytes we may write (mqtt.h). */
	mica_wipe((void *)cn->password.p, cn->password.len);
	bc->state = ST_AUTH;
	mica_uvtls_set_idle_timeout(bc->tls, bc->keepalive_ms);
	table_add(bc);
	push__broker_db_submit(b->db, j);
}

static void handle_packet(struct bconn *bc, const struct push_mqtt_packet *pkt)
{
	if (bc->state == ST_WAIT_CONNECT) {
		if (pkt->type == PUSH_MQTT_CONNECT)
			on_connect(bc, &pkt->connect);
		else
			drop(bc, PB_DROP_NOT_CONNECTED);
		return;
	}
	switch (pkt->type) {
	case PUSH_MQTT_CONNECT:
		drop(bc, PB_DROP_SECOND_CONNECT);
		break;
	case PUSH_MQTT_PUBLISH:
		drop(bc, PB_DROP_PUBLISH_FROM_DEVICE);
		break;
	case PUSH_MQTT_PUBACK:
		on_puback(bc, pkt->id);
		break;
	case PUSH_MQTT_SUBSCRIBE:
		on_subscribe(bc, pkt);
		break;
	case PUSH_MQTT_UNSUBSCRIBE:
		on_unsubscribe(bc, pkt);
		break;
	case PUSH_MQTT_PINGREQ: {
		struct push_mqtt_packet p = {.type = PUSH_MQTT_PINGRESP};
		send_packet(bc, &p);
		break;
	}
	case PUSH_MQTT_DISCONNECT:
		drop(bc, PB_DROP_CLIENT_DISCONNECT);
		break;
	default: /* PUBREC, PUBREL, PUBCOMP: no QoS 2 flow exists here */
		INC(bc->b, malformed[push__broker_malformed_slot("unexpected_type")]);
		drop(bc, PB_DROP_MALFORMED);
		break;
	}
}

static void decoder_failed(struct bconn *bc, int rc)
{
	const char *reason = push_mqtt_decoder_reason(&bc->dec);
	if (rc == MICA_EBADVERSION) {
		send_connack(bc, PUSH_MQTT_CONNACK_BAD_PROTOCOL);
		drop(bc, PB_DROP_WRONG_PROTOCOL);
	} else if (reason && strcmp(reason, "bad_protocol_name") == 0) {
		drop(bc, PB_DROP_WRONG_PROTOCOL);
	} else if (rc == MICA_ETOOBIG) {
		drop(bc, PB_DROP_OVERSIZE);
	} else {
		INC(bc->b, malformed[push__broker_malformed_slot(reason)]);
		drop(bc, PB_DROP_MALFORMED);
	}
}

static void buffer_lend(struct bconn *bc)
{
	struct push_broker *b = bc->b;
	if (bc->dec.buf)
		return;
	uint8_t *buf = b->npool ? b->pool[--b->npool] : malloc(b->cfg->max_packet);
	if (buf && push_mqtt_decoder_set_buffer(&bc->dec, buf, b->cfg->max_packet, NULL) != 0)
		free(buf);
}

static void buffer_return(struct bconn *bc)
{
	struct push_broker *b = bc->b;
	uint8_t *buf = bc->dec.buf;
	if (!buf || push_mqtt_decoder_buffered(&bc->dec) != 0 ||
	    push_mqtt_decoder_set_buffer(&bc->dec, NULL, 0, NULL) != 0)
		return;
	if (b->npool < BUF_POOL)
		b->pool[b->npool++] = buf;
	else
		free(buf);
}

/* Holds |len| bytes that arrived while the CONNECT is checked. */
static void hold(struct bconn *bc, const uint8_t *data, size_t len)
{
	size_t limit = 4 * bc->b->cfg->max_packet;
	if (bc->held_len + len > limit) {
		drop(bc, PB_DROP_OVERSIZE);
		return;
	}
	uint8_t *n = realloc(bc->held, bc->held_len + len);
	if (!n) {
		drop(bc, PB_DROP_NOMEM);
		return;
	}
	memcpy(n + bc->held_len, data, len);
	bc->held = n;
	bc->held_len += len;
}

static void process(struct bconn *bc, const uint8_t *data, size_t len)
{
	struct push_broker *b = bc->b;
	buffer_lend(bc);
	while (len > 0 && bc->tls && !bc->drop_set) {
		if (bc->state == ST_AUTH) {
			hold(bc, data, len);
			break;
		}
		struct push_mqtt_packet pkt;
		size_t used = 0;
		int rc = push_mqtt_decoder_feed(&bc->dec, data, len, &used, &pkt);
		if (rc < 0) {
			decoder_failed(bc, rc);
			break;
		}
		data += used;
		len -= used;
		if (pkt.type != PUSH_MQTT_NONE)
			handle_packet(bc, &pkt);
	}
	/* A packet trickled in pieces may take the handshake timeout, no more. */
	if (push_mqtt_decoder_pending(&bc->dec) == 0) {
		bc->pkt_start = 0;
	} else if (bc->pkt_start == 0) {
		bc->pkt_start = uv_now(&b->loop);
	} else if (uv_now(&b->loop) - bc->pkt_start > (uint64_t)b->cfg->handshake_timeout_ms) {
		drop(bc, PB_DROP_SLOW_PACKET);
	}
	buffer_return(bc);
}

/* ---- uvtls callbacks ------------------------------------------------------- */

static void on_open(mica_uvtls_conn *c)
{
	struct push_broker *b = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	struct bconn *bc = calloc(1, sizeof(*bc));
	if (!bc) {
		mica_uvtls_close(c);
		return;
	}
	bc->tls = c;
	bc->b = b;
	bc->refs = 1;
	bc->state = ST_WAIT_CONNECT;
	push_mqtt_decoder_init(&bc->dec, PUSH_MQTT_FROM_CLIENT, b->cfg->max_packet, NULL, 0);
	mica_uvtls_set_user(c, bc);
	b->nconns++;
	INC(b, connections);
	if (b->nconns > (size_t)b->cfg->max_connections) {
		drop(bc, PB_DROP_OVERLOAD);
		return;
	}
	mica_uvtls_set_idle_timeout(c, (unsigned)b->cfg->handshake_timeout_ms);
}

static void on_data(mica_uvtls_conn *c, const uint8_t *data, size_t len)
{
	struct bconn *bc = mica_uvtls_user(c);
	if (bc && bc->tls && !bc->drop_set)
		process(bc, data, len);
}

static void on_drain(mica_uvtls_conn *c)
{
	struct bconn *bc = mica_uvtls_user(c);
	if (bc)
		pump(bc);
}

static void finish(struct push_broker *b);
static void on_db(uv_async_t *a);

static void on_close(mica_uvtls_conn *c, mica_uvtls_close_reason reason)
{
	struct push_broker *b = mica_uvtls_server_user(mica_uvtls_conn_server(c));
	struct bconn *bc = mica_uvtls_user(c);
	enum push_broker_drop d;
	switch (reason) {
	case MICA_UVTLS_CLOSED_PEER:
		d = PB_DROP_PEER_CLOSED;
		break;
	case MICA_UVTLS_CLOSED_TLS:
		d = PB_DROP_TLS;
		break;
	case MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT:
		d = PB_DROP_HANDSHAKE_TIMEOUT;
		break;
	case MICA_UVTLS_CLOSED_IDLE_TIMEOUT:
		d = bc && bc->state == ST_WAIT_CONNECT ? PB_DROP_CONNECT_TIMEOUT
						       : PB_DROP_KEEPALIVE_TIMEOUT;
		break;
	case MICA_UVTLS_CLOSED_NOMEM:
		d = PB_DROP_NOMEM;
		break;
	case MICA_UVTLS_CLOSED_LOCAL:
		d = PB_DROP_SHUTDOWN;
		break;
	default:
		d = PB_DROP_IO;
		break;
	}
	if (!bc) { /* the handshake never finished */
		INC(b, drops[d]);
		return;
	}
	if (bc->drop_set)
		d = (enum push_broker_drop)bc->drop;
	INC(b, drops[d]);
	DEC(b, connections);
	if (bc->state == ST_ONLINE)
		DEC(b, online);
	/* Sent and not acknowledged: the next send carries DUP. */
	for (struct pb_row *r = bc->rows; r; r = r->next) {
		if (!r->sent || r->attempted)
			continue;
		struct pb_job *j = job_new(PBJ_ATTEMPTED, bc);
		if (j) {
			j->seq = r->seq;
			push__broker_db_submit(b->db, j);
		}
	}
	table_remove(bc);
	bc->state = ST_CLOSED;
	bc->tls = NULL;
	if (bc->dec.buf && push_mqtt_decoder_buffered(&bc->dec) == 0)
		buffer_return(bc);
	else
		free(bc->dec.buf);
	bc->dec.buf = NULL;
	push__broker_rows_free(bc->rows);
	bc->rows = NULL;
	unref(bc);
	b->nconns--;
	if (b->stopping && b->nconns == 0)
		finish(b);
}

static const mica_uvtls_callbacks callbacks = {
	.on_open = on_open,
	.on_data = on_data,
	.on_drain = on_drain,
	.on_close = on_close,
};

/* ---- answers from the database thread -------------------------------------- */

static void authenticated(struct bconn *bc, struct pb_job *j)
{
	struct push_broker *b = bc->b;
	if (j->result == MICA_EAUTH) {
		INC(b, auth_failures);
		send_connack(bc, PUSH_MQTT_CONNACK_NOT_AUTHORIZED);
		drop(bc, PB_DROP_AUTH_FAILED);
		return;
	}
	if (j->result) {
		send_connack(bc, PUSH_MQTT_CONNACK_UNAVAILABLE);
		drop(bc, PB_DROP_UNAVAILABLE);
		return;
	}
	if (j->cache_hit)
		INC(b, auth_cache_hits);
	/* The device's older connections here end (session takeover). */
	for (struct bconn *o = b->table[bucket(b, bc->regid)]; o; o = o->hnext)
		if (o != bc && strcmp(o->regid, bc->regid) == 0)
			drop(o, PB_DROP_TAKEOVER);
	send_connack(bc, PUSH_MQTT_CONNACK_ACCEPTED);
	bc->state = ST_ONLINE;
	INC(b, connects);
	INC(b, online);
	struct pb_job *k = job_new(PBJ_KICK, bc);
	if (k)
		push__broker_db_submit(b->db, k);
	bc->more = j->more || bc->wake_dropped;
	bc->wake_dropped = false;
	take_rows(bc, j->rows);
	j->rows = NULL;
	if (bc->held) {
		uint8_t *h = bc->held;
		size_t n = bc->held_len;
		bc->held = NULL;
		bc->held_len = 0;
		process(bc, h, n);
		free(h);
	}
	pump(bc);
}

static void on_db(uv_async_t *a)
{
	struct push_broker *b = a->data;
	for (struct pb_job *j = push__broker_db_take(b->db), *n; j; j = n) {
		n = j->next;
		struct bconn *bc = j->conn;
		if (bc && bc->tls) {
			if (j->kind == PBJ_AUTH && bc->state == ST_AUTH) {
				authenticated(bc, j);
			} else if (j->kind == PBJ_LOAD) {
				bc->loading = false;
				if (j->result == 0) {
					/* A wake dropped while this read ran may name
					 * a row it did not see: read once more. */
					bc->more = j->more || bc->wake_dropped;
					bc->wake_dropped = false;
					take_rows(bc, j->rows);
					j->rows = NULL;
				}
				acked_in_read_clear(bc);
				pump(bc);
			}
		}
		if (bc)
			unref(bc);
		push__broker_job_free(j);
	}
}

/* ---- wakes and kicks ------------------------------------------------------- */

static void wake_line(struct push_broker *b, char *line)
{
	char *save = NULL, *kind = strtok_r(line, " ", &save), *regid = strtok_r(NULL, " ", &save);
	if (!kind || !regid || strlen(regid) > PB_REGID_MAX)
		return;
	struct bconn *first = b->table[bucket(b, regid)];
	if (strcmp(kind, "K") == 0) {
		const char *node = strtok_r(NULL, " ", &save);
		if (!node || strcmp(node, b->node) == 0)
			return;
		for (struct bconn *o = first; o; o = o->hnext)
			if (strcmp(o->regid, regid) == 0 && o->state == ST_ONLINE) {
				INC(b, kicks);
				drop(o, PB_DROP_TAKEOVER);
			}
		return;
	}
	if (strcmp(kind, "W") != 0)
		return;
	INC(b, wakes);
	const char *seq_s = strtok_r(NULL, " ", &save), *att = strtok_r(NULL, " ", &save),
		   *body = strtok_r(NULL, " ", &save);
	if (!seq_s || !att || !body)
		return;
	char *end = NULL;
	long long seq = strtoll(seq_s, &end, 10);
	if (!end || *end || seq <= 0)
		return;
	for (struct bconn *o = first; o; o = o->hnext) {
		if (strcmp(o->regid, regid) != 0 || !o->tls ||
		    (o->state != ST_ONLINE && o->state != ST_AUTH))
			continue;
		/* Beyond what one read holds, a later read finds the row (its seq
		 * is past the last read); memory stays bounded by 2 x inflight
		 * rows even for a device that never subscribes. A row at or
		 * below the last read committed late: taken whatever the count. */
		if (seq > o->loaded_seq &&
		    (o->more || held_rows(o) >= 2 * (size_t)b->cfg->inflight)) {
			o->more = true;
			o->wake_dropped = true;
			continue;
		}
		struct pb_row *r = calloc(1, sizeof(*r));
		if (!r || mica_base64_decode_alloc(body, strlen(body), &r->body, &r->len) != 0) {
			free(r);
			return;
		}
		r->seq = seq;
		r->attempted = strcmp(att, "1") == 0;
		take_row(o, r);
		pump(o);
	}
}

static void on_wake(uv_async_t *a)
{
	struct push_broker *b = a->data;
	size_t n = 0;
	bool resync = false;
	char **msgs = push__broker_wake_take(b->wake, &n, &resync);
	for (size_t i = 0; i < n; i++) {
		char *save = NULL;
		for (char *l = strtok_r(msgs[i], "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			wake_line(b, l);
		free(msgs[i]);
	}
	free(msgs);
	if (!resync)
		return;
	INC(b, resyncs);
	for (size_t i = 0; i < b->tsize; i++)
		for (struct bconn *o = b->table[i]; o; o = o->hnext)
			if (o->state == ST_ONLINE && o->tls && !o->loading)
				load_more(o, 0);
}

/* ---- the loop thread ------------------------------------------------------- */

/* Every connection has closed: the database thread runs what they left
 * (attempted marks), then the last handles close and the loop ends. */
static void finish(struct push_broker *b)
{
	if (b->finished)
		return;
	b->finished = true;
	push__broker_wake_stop(b->wake);
	b->wake = NULL;
	push__broker_db_join(b->db); /* after running the queued jobs */
	on_db(&b->db_async);	     /* the answers: every connection is closed */
	push__broker_db_stop(b->db);
	b->db = NULL;
	uv_close((uv_handle_t *)&b->db_async, NULL);
	uv_close((uv_handle_t *)&b->wake_async, NULL);
}

static void on_stop(uv_async_t *a)
{
	struct push_broker *b = a->data;
	b->stopping = true;
	uv_close((uv_handle_t *)&b->stop_async, NULL);
	mica_uvtls_server_free(b->srv);
	b->srv = NULL;
	if (b->nconns == 0)
		finish(b);
}

static int loop_setup(struct push_broker *b)
{
	const struct push_broker_config *cfg = b->cfg;
	mica_uvtls_server_options o = {
		.host = cfg->bind,
		.port = cfg->port,
		.reuseport = true,
		.cert_file = cfg->cert_file,
		.key_file = cfg->key_file,
		.ticket_secret_file = cfg->ticket_secret_file && *cfg->ticket_secret_file
					      ? cfg->ticket_secret_file
					      : NULL,
		.handshake_timeout_ms = (unsigned)cfg->handshake_timeout_ms,
	};
	int err;
	if (uv_loop_init(&b->loop) != 0)
		return MICA_ENOMEM;
	b->db_async.data = b->wake_async.data = b->stop_async.data = b;
	if (uv_async_init(&b->loop, &b->db_async, on_db) != 0 ||
	    uv_async_init(&b->loop, &b->wake_async, on_wake) != 0 ||
	    uv_async_init(&b->loop, &b->stop_async, on_stop) != 0)
		return MICA_ENOMEM;
	b->asyncs = true;
	if ((err = mica_uvtls_server_new(&b->loop, &o, &callbacks, b, &b->srv)) != 0)
		return err;
	b->port = mica_uvtls_server_port(b->srv);
	int slots = cfg->max_connections * 2;
	if ((err = push__broker_db_start(&b->db, b->svc, b->node, 2 * cfg->inflight, slots,
					 &b->db_async)) != 0 ||
	    (err = push__broker_wake_start(&b->wake, b->kv, &b->wake_async)) != 0)
		return err;
	return 0;
}

static void loop_main(void *arg)
{
	struct push_broker *b = arg;
	mica_thread_set_event(true);
	b->start_err = loop_setup(b);
	if (b->start_err) {
		push__broker_wake_stop(b->wake);
		b->wake = NULL;
		push__broker_db_stop(b->db);
		b->db = NULL;
		mica_uvtls_server_free(b->srv);
		b->srv = NULL;
		if (b->asyncs) {
			uv_close((uv_handle_t *)&b->db_async, NULL);
			uv_close((uv_handle_t *)&b->wake_async, NULL);
			uv_close((uv_handle_t *)&b->stop_async, NULL);
		}
		uv_run(&b->loop, UV_RUN_DEFAULT);
		uv_sem_post(&b->started);
		return;
	}
	MICA_LOG(MICA_LOG_INFO, "push broker: listening on %s port %d (node %s)", b->cfg->bind,
		 b->port, b->node);
	uv_sem_post(&b->started);
	uv_run(&b->loop, UV_RUN_DEFAULT);
}

int push_broker_start(struct push_service *svc, const struct push_broker_config *cfg,
		      const struct mica_kv_config *kv, struct push_broker_metrics *m,
		      push_broker **out)
{
	struct push_broker *b = calloc(1, sizeof(*b));
	uint8_t id[16];
	*out = NULL;
	if (!b)
		return MICA_ENOMEM;
	b->svc = svc;
	b->cfg = cfg;
	b->kv = kv;
	b->m = m;
	for (b->tsize = 1024; b->tsize < (size_t)cfg->max_connections; b->tsize *= 2)
		;
	if (!(b->table = calloc(b->tsize, sizeof(*b->table))) || mica_random(id, sizeof(id)) != 0 ||
	    uv_sem_init(&b->started, 0) != 0) {
		free(b->table);
		free(b);
		return MICA_ENOMEM;
	}
	for (size_t i = 0; i < sizeof(id); i++)
		snprintf(b->node + 2 * i, 3, "%02x", id[i]);
	if (uv_thread_create(&b->thread, loop_main, b) != 0) {
		uv_sem_destroy(&b->started);
		free(b->table);
		free(b);
		return MICA_ENOMEM;
	}
	uv_sem_wait(&b->started);
	if (b->start_err) {
		int err = b->start_err;
		uv_thread_join(&b->thread);
		(void)uv_loop_close(&b->loop);
		uv_sem_destroy(&b->started);
		free(b->table);
		free(b);
		return err;
	}
	*out = b;
	return 0;
}

int push_broker_port(const push_broker *b)
{
	return b ? b->port : 0;
}

void push_broker_stop(push_broker *b)
{
	if (!b)
		return;
	uv_async_send(&b->stop_async);
	uv_thread_join(&b->thread);
	if (uv_loop_close(&b->loop) != 0)
		MICA_LOG(MICA_LOG_WARN, "push broker: the loop still had handles at stop");
	uv_sem_destroy(&b->started);
	while (b->npool)
		free(b->pool[--b->npool]);
	free(b->scratch);
	free(b->table);
	free(b);
}
