/* broker.h - the long connection of mica-push: MQTT 3.1.1 over TLS on one
 * libuv loop (lib/uvtls + mipush/mqtt), as docs/push-internals.md ("MQTT
 * as the broker speaks it", "Wakes and kicks") defines it.
 *
 * Threads of one broker (one per process; push.broker.workers runs several
 * processes on one port):
 *   loop    the uv_loop: every connection, the MQTT state, the in-memory
 *           queues; an event thread (lib/thread.h), it never blocks;
 *   db      every blocking call: token checks (Key Center HMAC, cached),
 *           registration and queue reads, acknowledgement deletes and
 *           push_stats_record(), last_seen, attempted marks, and the kicks
 *           it publishes on Redis. It takes whatever jobs the loop queued
 *           since its last round and runs them as one batch (one statement
 *           per kind: DELETE ... WHERE seq = ANY($1), ...), then hands the
 *           results back through a uv_async_t;
 *   wake    a Redis subscriber on push:wake, handing W and K lines to the
 *           loop through a uv_async_t; after a reconnect it asks the loop
 *           to re-read the queue of every device it holds.
 *
 * Memory: an idle device costs its uvtls connection and a struct bconn
 * (regid, app id, counters); the MQTT decoder borrows a buffer only while
 * a packet is split between TLS records, and messages are held only while
 * they wait for their PUBACK.
 *
 * Ownership: push_broker_start() borrows |svc| and |cfg| for the broker's
 * life; push_broker_stop() joins every thread and frees everything.
 */
#ifndef MICA_PUSH_BROKER_H
#define MICA_PUSH_BROKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <uv.h>

#include "err.h"
#include "kv.h"

struct push_service;

/* [push.broker] */
struct push_broker_config {
	char *bind;
	int port;
	char *cert_file, *key_file;
	char *ticket_secret_file; /* "" : a random secret per process */
	int workers;		  /* broker processes sharing the port */
	int max_keepalive;	  /* seconds; also the keepalive of a CONNECT with 0 */
	int inflight;		  /* unacknowledged PUBLISHes per device */
	int max_connections;	  /* per process */
	int handshake_timeout_ms; /* TLS handshake, and CONNECT after it */
	size_t max_packet;	  /* largest packet a device may send */
};

/* Why a connection ended, as /metrics counts it. */
enum push_broker_drop {
	PB_DROP_CLIENT_DISCONNECT, /* the device sent DISCONNECT */
	PB_DROP_PEER_CLOSED,	   /* TLS close_notify or EOF without DISCONNECT */
	PB_DROP_MALFORMED,	   /* the codec refused a packet (by reason below) */
	PB_DROP_OVERSIZE,	   /* a packet above push.broker.max_packet */
	PB_DROP_WRONG_PROTOCOL,	   /* protocol name or level not MQTT 3.1.1 */
	PB_DROP_SECOND_CONNECT,
	PB_DROP_PUBLISH_FROM_DEVICE,
	PB_DROP_NOT_CONNECTED,	   /* a first packet other than CONNECT */
	PB_DROP_BAD_CLIENT_ID,	   /* CONNECT without a usable client id or password */
	PB_DROP_AUTH_FAILED,	   /* CONNACK 5 sent */
	PB_DROP_UNAVAILABLE,	   /* CONNACK 3: the database or Key Center failed */
	PB_DROP_KEEPALIVE_TIMEOUT, /* 1.5 x keepalive without a packet */
	PB_DROP_CONNECT_TIMEOUT,   /* no CONNECT within the handshake timeout */
	PB_DROP_SLOW_PACKET,	   /* one packet trickled for longer than that */
	PB_DROP_HANDSHAKE_TIMEOUT, /* TLS handshake not finished in time (slowloris) */
	PB_DROP_TLS,		   /* TLS failure */
	PB_DROP_IO,		   /* socket error */
	PB_DROP_TAKEOVER,	   /* the same device connected again (here or elsewhere) */
	PB_DROP_OVERLOAD,	   /* push.broker.max_connections reached */
	PB_DROP_SHUTDOWN,
	PB_DROP_NOMEM,
	PB_DROP_COUNT
};

/* Codec reason classes counted under PB_DROP_MALFORMED ("other" last). */
#define PB_MALFORMED_REASONS 20

/* Counters of one broker process; kept in memory shared with the process
 * that serves /metrics (the workers are its children), so every member is
 * an atomic updated with relaxed order. */
struct push_broker_metrics {
	atomic_long connections; /* open now (handshaking included) */
	atomic_long online;	 /* authenticated devices now */
	atomic_long connects;	 /* CONNECTs accepted (CONNACK 0) */
	atomic_long auth_failures;
	atomic_long auth_cache_hits; /* tokens verified without the Key Center */
	atomic_long drops[PB_DROP_COUNT];
	atomic_long malformed[PB_MALFORMED_REASONS];
	atomic_long sent, acked, redelivered;
	atomic_long wakes, kicks, resyncs;
};

typedef struct push_broker push_broker;

/* Starts a broker (its loop, database and Redis threads) on a listener
 * bound now, with |m| (borrowed, may live in shared memory) as its
 * counters. |kv| is the Redis configuration (borrowed).
 * Returns 0 with *out set, MICA_EIO (the port cannot be bound), MICA_ECONFIG
 * (certificate, key or ticket secret unusable), MICA_ENOMEM. */
int push_broker_start(struct push_service *svc, const struct push_broker_config *cfg,
		      const struct mica_kv_config *kv, struct push_broker_metrics *m,
		      push_broker **out) MICA_WUR;

/* Closes every connection (marking what was sent and not acknowledged as
 * attempted), joins the threads and frees |b|. NULL is a no-op. */
void push_broker_stop(push_broker *b);

/* The port the broker bound. */
int push_broker_port(const push_broker *b);

/* Writes the counters of |n| brokers (|m|[0..n)) summed, in Prometheus
 * text, to |f|. */
void push_broker_metrics_write(FILE *f, struct push_broker_metrics *m, size_t n);

/* Stable names, for metrics and logs. */
const char *push_broker_drop_name(enum push_broker_drop d);

/* ---- internal: between broker.c, broker_db.c and broker_wake.c ----------- */

/* The codec reason's slot in push_broker_metrics.malformed. */
size_t push__broker_malformed_slot(const char *reason);

#define PB_REGID_MAX 64 /* longest client id taken for a regid (regids are 43) */

/* One queued message as the loop holds it. */
struct pb_row {
	struct pb_row *next;
	int64_t seq;
	uint8_t *body; /* the sealed message (docs/push-internals.md) */
	size_t len;
	bool attempted; /* sent before: goes out with DUP */
	bool sent;	/* on this connection, waiting for its PUBACK */
	uint16_t pid;	/* its packet identifier once sent */
};

enum pb_job_kind { PBJ_AUTH, PBJ_LOAD, PBJ_ACK, PBJ_ATTEMPTED, PBJ_KICK };

/* Work for the database thread, and its answer. |conn| (AUTH, LOAD) holds a
 * reference on the connection; the loop drops it when the answer comes. */
struct pb_job {
	struct pb_job *next;
	enum pb_job_kind kind;
	struct bconn *conn;
	char regid[PB_REGID_MAX + 1];
	uint8_t *token; /* AUTH: the password, wiped and freed by the db thread */
	size_t token_len;
	int64_t seq; /* LOAD: read rows after it; ACK, ATTEMPTED: the row */
	/* answer */
	int result; /* 0, MICA_EAUTH (unknown regid or wrong token), or the failure */
	bool cache_hit;
	char app_id[24];
	struct pb_row *rows; /* in seq order */
	bool more;	     /* the read was cut at its limit: read again after the last */
};

/* The database thread (broker_db.c). */
struct pb_db;
int push__broker_db_start(struct pb_db **out, struct push_service *svc, const char *node,
			  int load_limit, int cache_slots, uv_async_t *done) MICA_WUR;
/* Queues |j| (ownership passes; the thread answers AUTH and LOAD jobs on
 * the done list and frees the others). */
void push__broker_db_submit(struct pb_db *d, struct pb_job *j);
/* Takes every answered job (a list in answer order); the caller frees them
 * with push__broker_job_free(). */
struct pb_job *push__broker_db_take(struct pb_db *d);
/* Stops the thread after the jobs already queued ran, and joins it; the
 * answers stay for push__broker_db_take(). */
void push__broker_db_join(struct pb_db *d);
/* push__broker_db_join(), then frees |d| and every answer not taken. */
void push__broker_db_stop(struct pb_db *d);
void push__broker_job_free(struct pb_job *j);
void push__broker_rows_free(struct pb_row *r);

/* The Redis subscriber (broker_wake.c). */
struct pb_wake;
int push__broker_wake_start(struct pb_wake **out, const struct mica_kv_config *kv,
			    uv_async_t *notify) MICA_WUR;
/* Takes the messages received (a malloc'd list of NUL-terminated strings,
 * *n of them; the caller frees each and the array) and whether the
 * subscription was re-established since the last call (*resync). */
char **push__broker_wake_take(struct pb_wake *w, size_t *n, bool *resync);
void push__broker_wake_stop(struct pb_wake *w);

#endif
