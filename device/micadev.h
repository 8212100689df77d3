/* micadev.h - libmicadev, the reference device library (issue 21 item 8):
 * what a phone links to receive mica-push messages. Built from the .c files of device/
 * as $(BUILD)/libdevice.a; it uses libmica's envelope (lib/crypto.h), its
 * TLS client on libuv (lib/uvtls.h) and the MQTT codec (mipush/mqtt.h), and
 * nothing of the servers (no database, no Key Center, no HTTP server).
 *
 * The push client holds one MQTT 3.1.1 connection over TLS to a mica-push
 * broker (docs/push-internals.md, "MQTT as the broker speaks it"): CONNECT
 * with client id = regid and password = the registration token, SUBSCRIBE
 * d/<regid> at QoS 1, then for each PUBLISH it opens the sealed message with
 * the device's content key (AAD "mica-push v1\0<regid>": a message sealed for
 * another device, under another key, or tampered with never opens), drops a
 * message whose id it already delivered, gives the rest to the application
 * and acknowledges (PUBACK) only after the application's callback returned:
 * at-least-once on the wire, at-most-once to the application (within the
 * memory of the duplicate filter, below). A lost connection is retried with
 * jittered exponential backoff and offers the newest TLS session, so a
 * reconnect storm costs the broker resumed handshakes.
 *
 * Threads: a client, its callbacks and every call on it belong to the thread
 * that runs its uv_loop_t; nothing here blocks except the duplicate filter's
 * state file write (one small file, written when a message is delivered).
 *
 * Signals: libuv writes with write(2); a program using the client ignores
 * SIGPIPE (mica-device does).
 *
 * Prefix: dev_ (STYLE.md). Every fallible function returns 0 or a negative
 * MICA_E* code (lib/err.h).
 */
#ifndef MICA_MICADEV_H
#define MICA_MICADEV_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "crypto.h"
#include "err.h"

#define DEV_PUSH_KEY_LEN 32		   /* the content key from registration */
#define DEV_PUSH_AAD_PREFIX "mica-push v1" /* with its NUL, then the regid */
#define DEV_PUSH_KEY_NAME "push-content"   /* the envelope's key name */

/* ---- The duplicate filter (dedup.c) --------------------------------------- */

/* The ids of the last |cap| messages delivered, as SHA-256 digests in a ring
 * (32 bytes each: 1,024 ids take 32 KiB whatever their length), optionally
 * kept in a state file so that a restarted device does not deliver again
 * what the broker redelivers (a PUBACK lost with the connection).
 *
 * State file format (text, rewritten whole through a temporary file and
 * rename(2), mode 0600): the line "micadev-seen v1", then one line per id,
 * the 64 lower-case hex digits of its SHA-256, oldest first. A file with
 * more lines than |cap| keeps the newest |cap|.
 *
 * Memory: the filter remembers |cap| ids; an id older than that is
 * delivered again if the broker sends it again. The broker redelivers only
 * what was not acknowledged, at most its in-flight window (default 20) per
 * connection, so a capacity well above that window suffices; the default is
 * DEV_DEDUP_DEFAULT_CAP. */
#define DEV_DEDUP_DEFAULT_CAP 1024
#define DEV_DEDUP_MAX_CAP (1u << 20)

typedef struct dev_dedup {
	uint8_t (*ring)[MICA_SHA256_LEN];
	size_t cap, len, next; /* next: where the next id goes */
	char *path;	       /* state file, or NULL */
} dev_dedup;

/* Prepares |d| to remember |cap| ids (1..DEV_DEDUP_MAX_CAP; 0: the
 * default) and, when |path| is not NULL, loads the state file |path| (a
 * missing file is an empty filter; the path is copied).
 * Returns 0, MICA_EINVAL (cap too large, NULL |d|), MICA_EBADHEADER (the
 * file is not a state file: wrong first line, a line that is not 64 hex
 * digits), MICA_EIO (the file exists but cannot be read) or MICA_ENOMEM.
 * On failure |d| holds nothing; dev_dedup_cleanup() is safe either way. */
int dev_dedup_init(dev_dedup *d, size_t cap, const char *path) MICA_WUR;

/* Whether the id |key| (|len| bytes) is one of the remembered ones. */
bool dev_dedup_seen(const dev_dedup *d, const void *key, size_t len);

/* Remembers |key| (forgetting the oldest id when full) and, with a state
 * file, rewrites it. Returns 0, MICA_EIO (the file could not be written:
 * the id is remembered in memory all the same) or MICA_EINVAL. */
int dev_dedup_add(dev_dedup *d, const void *key, size_t len) MICA_WUR;

/* Frees what |d| holds; safe to call twice. */
void dev_dedup_cleanup(dev_dedup *d);

/* ---- Backoff (backoff.c) -------------------------------------------------- */

/* The delay before reconnect attempt |attempt| (0 for the first retry):
 * "full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter",
 * 2015), a uniform draw in [0, min(cap_ms, base_ms * 2^attempt)], with
 * |rnd| the random draw (a uniform 32-bit value): 0 gives 0 and UINT32_MAX
 * the ceiling. Never overflows (any |attempt|). Full jitter spreads the
 * devices a broker restart dropped over the whole window instead of
 * bunching them at each doubling. */
uint64_t dev_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms, uint32_t rnd);

/* ---- Opening a sealed message (message.c) --------------------------------- */

/* A message as the application gets it (docs/push-internals.md, "The sealed
 * message"). Strings are borrowed from |json| (valid until
 * dev_push_message_cleanup()); absent ones are NULL. */
typedef struct dev_push_message {
	json_t *json; /* the whole decrypted object (owned) */
	const char *id, *type;
	const char *app_id, *package, *title, *description, *payload;
	long notify_id;	     /* -1 when absent */
	long notify_type;    /* 0 when absent */
	const json_t *extra; /* object, or NULL */
	int64_t sent_at_ms;  /* 0 when absent */
	long count;	     /* deleted_messages: messages dropped */
	bool deleted;	     /* type is "deleted_messages" */
	bool dup;	     /* the broker flagged it as a redelivery (MQTT DUP) */
	uint8_t nonce[MICA_ENVELOPE_NONCE_LEN]; /* the envelope's nonce */
} dev_push_message;

/* Opens the sealed message |in| (|len| bytes) for device |regid| with its
 * content |key| (DEV_PUSH_KEY_LEN bytes) into |m|, which the caller cleans
 * up with dev_push_message_cleanup() on success.
 * Returns 0, MICA_EAUTH (wrong key, a message sealed for another regid, or
 * tampered: nothing of it is released), an error of mica_envelope_parse()
 * (MICA_ETRUNCATED, MICA_EBADHEADER, MICA_EBADVERSION), MICA_EBADHEADER (it
 * opened but names another key than push-content, or its plaintext is not a
 * JSON object with string members "id" and "type"), MICA_EINVAL (NULL
 * argument) or MICA_ENOMEM. The plaintext is wiped before return. */
int dev_push_open(const uint8_t key[DEV_PUSH_KEY_LEN], const char *regid, const uint8_t *in,
		  size_t len, dev_push_message *m) MICA_WUR;

/* Releases |m|'s JSON (wiped, lib/crypto.h); safe to call twice. */
void dev_push_message_cleanup(dev_push_message *m);

/* ---- The push client (push_client.c) -------------------------------------- */

typedef struct dev_push_client dev_push_client;

/* What the client reports through on_event, with its |detail|. */
enum dev_push_event {
	/* TLS is up and CONNECT sent; detail 1 when the TLS session was
	 * resumed, else 0. */
	DEV_PUSH_EV_CONNECTED = 1,
	/* CONNACK accepted and SUBACK granted d/<regid>: messages flow. */
	DEV_PUSH_EV_SUBSCRIBED,
	/* The broker refused: detail is the CONNACK return code (1..5), or
	 * 0x80 for a refused subscription. The connection closes and is
	 * retried like any other (a program decides whether to stop). */
	DEV_PUSH_EV_REFUSED,
	/* The connection ended; detail is its mica_uvtls_close_reason. */
	DEV_PUSH_EV_DISCONNECTED,
	/* A reconnect is scheduled; detail is the delay in ms (capped at
	 * INT_MAX). */
	DEV_PUSH_EV_RETRY,
	/* A message was dropped; detail is the reason: MICA_EAUTH (did not
	 * open for this device), MICA_EBADHEADER (opened, not a message),
	 * MICA_EEXISTS (a duplicate id), MICA_EINVAL (another topic). */
	DEV_PUSH_EV_DROPPED,
	/* The duplicate filter's state file could not be written; detail is
	 * the error. The message was delivered and acknowledged. */
	DEV_PUSH_EV_STATE_ERROR,
};

/* Counters since dev_push_client_new(). */
typedef struct dev_push_stats {
	uint64_t connects;	  /* TLS handshakes finished */
	uint64_t resumed;	  /* of which resumed a TLS session */
	uint64_t subscribed;	  /* MQTT sessions that reached SUBACK */
	uint64_t refused;	  /* CONNACK or SUBACK refusals */
	uint64_t delivered;	  /* messages given to on_message (markers excluded) */
	uint64_t deleted;	  /* deleted_messages markers given to on_deleted */
	uint64_t duplicates;	  /* dropped: id already delivered */
	uint64_t rejected;	  /* dropped: did not open (key, AAD, tampering) */
	uint64_t malformed;	  /* dropped: opened but no message, or another topic */
	uint64_t protocol_errors; /* connections closed for a bad MQTT packet */
	uint64_t pings;		  /* PINGREQ sent */
} dev_push_stats;

typedef struct dev_push_options {
	/* Broker: a numeric address or a host name (resolved at every
	 * connect), and its port. */
	const char *host;
	int port;
	/* Name verified in the broker's certificate (and sent as SNI); NULL:
	 * |host| itself (as an IP address when numeric). */
	const char *server_name;
	const char *ca_file; /* PEM CA the broker's certificate must chain to */
	/* The registration (POST /v1/push/register). Copied; the copies of
	 * the token and key are wiped when the client is freed. */
	const char *regid;
	const char *token;
	const uint8_t *content_key;  /* DEV_PUSH_KEY_LEN bytes */
	unsigned keepalive_s;	     /* MQTT keep-alive; 0: 60. A PINGREQ goes
					every keepalive_s; no record for 1.5 x
					that closes the connection. */
	uint32_t backoff_base_ms;    /* 0: 500 */
	uint32_t backoff_cap_ms;     /* 0: 60000 */
	unsigned connect_timeout_ms; /* TCP + TLS handshake; 0: 10000 */
	size_t max_packet;	     /* largest MQTT packet accepted; 0: 64 KiB */
	size_t dedup_cap;	     /* ids remembered; 0: DEV_DEDUP_DEFAULT_CAP */
	const char *dedup_file;	     /* the filter's state file, or NULL */

	/* A message for the application; |m| is borrowed for the call. The
	 * PUBACK goes when this returns. Required. */
	void (*on_message)(dev_push_client *c, const dev_push_message *m, void *user);
	/* A deleted_messages marker: m->count messages were dropped by the
	 * broker's pending cap since the last marker was acknowledged. NULL:
	 * counted and acknowledged only. */
	void (*on_deleted)(dev_push_client *c, const dev_push_message *m, void *user);
	void (*on_event)(dev_push_client *c, enum dev_push_event ev, int detail, void *user);
	/* dev_push_client_stop() finished: every handle closed; the client is
	 * freed when this returns. May be NULL. */
	void (*on_stopped)(dev_push_client *c, void *user);
	void *user;
} dev_push_options;

/* Creates a client on |loop| and starts connecting. |opt| and its strings
 * are copied. Returns 0 with *out set, MICA_EINVAL (NULL or missing
 * option, a regid that is not a valid MQTT topic level), MICA_ECONFIG (the
 * CA file is unusable), an error of dev_dedup_init() (the state file), or
 * MICA_ENOMEM. On failure nothing is left on the loop. */
int dev_push_client_new(uv_loop_t *loop, const dev_push_options *opt,
			dev_push_client **out) MICA_WUR;

/* Stops: sends DISCONNECT on an open session (after the PUBACK of a
 * message whose callback is running), closes the connection and every
 * timer, then calls on_stopped and frees the client (from a libuv
 * callback: run the loop). A second call is a no-op. May be called from
 * any of the client's callbacks. */
void dev_push_client_stop(dev_push_client *c);

/* Copies the counters into |out|. */
void dev_push_client_stats(const dev_push_client *c, dev_push_stats *out);

/* Stable names of the events (e.g. "subscribed"), for logs. */
const char *dev_push_event_name(enum dev_push_event ev);

#endif
