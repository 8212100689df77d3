/* mqtt.h - the MQTT 3.1.1 packet codec of mica-push: a strict, incremental
 * decoder fed bytes as they arrive from a socket, and encoders for every
 * control packet, shared by the broker (mipush/), the reference device
 * library and the load generator. No I/O, no allocation, no globals: the
 * decoder keeps a partial packet in a buffer the caller lends it, the
 * encoders write into the caller's buffer and tell the size first.
 *
 * Specification: MQTT Version 3.1.1, OASIS Standard, 29 October 2014 (the
 * "[MQTT-x.y.z-n]" numbers below are its normative statements). Only
 * protocol level 4 is spoken; MQTT 3.1 ("MQIsdp", level 3) and MQTT 5
 * (level 5) CONNECTs are refused with MICA_EBADVERSION, which a server
 * answers with CONNACK return code 1 before closing [MQTT-3.1.2-2].
 *
 * Wire format of every control packet [MQTT-2.2]:
 *
 *   off  size  field
 *   0    1     type (high nibble, 1..14) | flags (low nibble)
 *   1    1..4  remaining length R, 7 bits per byte, least significant first,
 *              bit 7 = another byte follows; at most 4 bytes (R <= 268435455)
 *   1+n  R     variable header and payload, per type
 *
 * Strictness, beyond what the specification requires (each refused input has
 * a test and a reason string, see below):
 *   - the remaining length must use the fewest bytes (MQTT 5 requires it,
 *     [MQTT-1.5.5-1]; 3.1.1 is silent and no client sends a padded length),
 *     so that every accepted packet re-encodes to the same bytes;
 *   - a packet the peer's side never sends (CONNACK to a server, CONNECT to a
 *     client) is refused;
 *   - packets with a fixed size (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP,
 *     UNSUBACK: 2; PINGREQ, PINGRESP, DISCONNECT: 0) must have exactly it,
 *     and no packet may hold bytes after its last field (except PUBLISH,
 *     whose payload is the rest).
 * Accepted as the specification allows: UTF-8 control characters and
 * non-characters [MQTT-1.5.3-2 says "MAY" close], an empty client id (the
 * server decides, [MQTT-3.1.3-7/8]: answer CONNACK 2 when clean session is
 * 0), an empty payload, topic names beginning with '$'.
 *
 * Return codes. Every fallible function returns 0 or a negative MICA_E*
 * (lib/err.h) and, through its |reason| argument (NULL allowed) or
 * push_mqtt_decoder_reason(), a stable snake_case reason for metrics and
 * logs (a static string; never NULL after a failure, NULL after success):
 *
 *   MICA_EBADHEADER   malformed packet structure:
 *     "bad_remaining_length"   a 5th length byte, or a length not in its
 *                              shortest form
 *     "reserved_type"          packet type 0 or 15
 *     "unexpected_type"        a type this side never receives
 *     "reserved_flags"         fixed-header flags other than 0010 for
 *                              SUBSCRIBE, UNSUBSCRIBE, PUBREL and 0000 for
 *                              the others except PUBLISH [MQTT-2.2.2-1/2]
 *     "bad_qos"                QoS 3 in a PUBLISH, a will or a subscription
 *                              [MQTT-3.3.1-4, 3.1.2-14, 3.8.3-4]
 *     "dup_with_qos0"          DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]
 *     "bad_length"             the fields do not fill the remaining length
 *                              exactly (too short for a field or bytes left)
 *     "zero_packet_id"         packet identifier 0 where one is required
 *                              [MQTT-2.3.1-1]
 *     "bad_protocol_name"      CONNECT protocol name not "MQTT" (nor
 *                              "MQIsdp"): close without CONNACK [MQTT-3.1.2-1]
 *     "connect_reserved_flag"  CONNECT flags bit 0 set [MQTT-3.1.2-3]
 *     "bad_will_flags"         will QoS or will retain without the will flag
 *                              [MQTT-3.1.2-11/13/15]
 *     "password_without_username" [MQTT-3.1.2-22]
 *     "no_topics"              SUBSCRIBE or UNSUBSCRIBE with an empty list
 *                              [MQTT-3.8.3-3, 3.10.3-2]
 *     "bad_subscription_options" reserved bits 7..2 of a requested QoS byte
 *     "bad_connack"            CONNACK reserved flag bits, return code above
 *                              5, or session present with a refusal
 *                              [MQTT-3.2.2-1/4]
 *     "bad_suback_code"        SUBACK code not 0, 1, 2 or 0x80 [MQTT-3.9.3-2]
 *   MICA_EBADVERSION  "bad_protocol_level": CONNECT of another protocol level
 *                     (name "MQTT" level != 4, or "MQIsdp"). The only refusal
 *                     a server answers: CONNACK PUSH_MQTT_CONNACK_BAD_PROTOCOL,
 *                     then close [MQTT-3.1.2-2]. The rest of that CONNECT is
 *                     not examined (a later version lays it out differently).
 *   MICA_EBADENCODING "bad_utf8" (ill-formed UTF-8: overlong, surrogate
 *                     U+D800..U+DFFF, beyond U+10FFFF, cut) or "nul_in_string"
 *                     (U+0000) in a UTF-8 string field [MQTT-1.5.3-1/2]
 *   MICA_EINVAL       topic syntax [MQTT-4.7]: "empty_topic" (a zero-length
 *                     topic name or filter), "wildcard_in_topic" ('+' or '#'
 *                     in a PUBLISH topic name, [MQTT-3.3.2-2]),
 *                     "bad_topic_filter" ('#' not alone in the last level, '+'
 *                     not alone in its level [MQTT-4.7.1-2/3]); and caller
 *                     errors: "bad_argument", "no_buffer" (a partial packet
 *                     must be kept and the decoder's buffer is missing or too
 *                     small), "string_too_long" (an encoder string or binary
 *                     field over 65,535 bytes)
 *   MICA_ETOOBIG      "oversize": a packet larger than the decoder's maximum,
 *                     refused as soon as its fixed header announces it (no
 *                     byte of its body is read), or a packet to encode whose
 *                     remaining length exceeds 268,435,455;
 *                     "buffer_too_small": the encoder's output buffer
 *   MICA_ETRUNCATED   "truncated": push_mqtt_decode() was given a prefix of a
 *                     packet (the incremental decoder waits for more instead)
 *   MICA_ESTATE       "buffer_in_use": push_mqtt_decoder_set_buffer() while
 *                     the decoder holds a partial packet in its buffer
 *
 * Every refusal of received bytes is a reason to close the network
 * connection [MQTT-4.8]; the decoder's errors are sticky.
 *
 * Ownership. Decoded packets never own memory: every pointer in a decoded
 * struct push_mqtt_packet is borrowed and points either into the bytes given
 * to the call that returned it, or into the decoder's buffer (when the packet
 * arrived in several pieces). It is valid until the next call on the same
 * decoder or until the caller reuses or frees either of those, whichever
 * comes first: copy what must outlive it. Strings are NOT NUL-terminated; use
 * their lengths (print with "%.*s"). Encoders read the caller's packet and
 * never keep a pointer to it. The codec copies no secret: a CONNECT's
 * password (a device token) stays in the caller's read bytes or in the
 * decoder's buffer, which the caller wipes (mica_wipe) once it has checked
 * it; never log it.
 *
 * Threads. No global state: different decoders may be used by different
 * threads at once; one decoder is used by one thread at a time. The encoders
 * and push_mqtt_decode() are reentrant.
 */
#ifndef MICA_PUSH_MQTT_H
#define MICA_PUSH_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Control packet types [MQTT-2.2.1]; 0 is "no packet" in a result. */
enum push_mqtt_type {
	PUSH_MQTT_NONE = 0,
	PUSH_MQTT_CONNECT = 1,
	PUSH_MQTT_CONNACK = 2,
	PUSH_MQTT_PUBLISH = 3,
	PUSH_MQTT_PUBACK = 4,
	PUSH_MQTT_PUBREC = 5,
	PUSH_MQTT_PUBREL = 6,
	PUSH_MQTT_PUBCOMP = 7,
	PUSH_MQTT_SUBSCRIBE = 8,
	PUSH_MQTT_SUBACK = 9,
	PUSH_MQTT_UNSUBSCRIBE = 10,
	PUSH_MQTT_UNSUBACK = 11,
	PUSH_MQTT_PINGREQ = 12,
	PUSH_MQTT_PINGRESP = 13,
	PUSH_MQTT_DISCONNECT = 14,
};

/* CONNACK return codes [MQTT-3.2.2.3]. */
enum push_mqtt_connack_code {
	PUSH_MQTT_CONNACK_ACCEPTED = 0,
	PUSH_MQTT_CONNACK_BAD_PROTOCOL = 1,    /* unacceptable protocol level */
	PUSH_MQTT_CONNACK_ID_REJECTED = 2,     /* client identifier not allowed */
	PUSH_MQTT_CONNACK_UNAVAILABLE = 3,     /* server unavailable */
	PUSH_MQTT_CONNACK_BAD_CREDENTIALS = 4, /* bad user name or password */
	PUSH_MQTT_CONNACK_NOT_AUTHORIZED = 5,
};

/* SUBACK return code for a refused subscription [MQTT-3.9.3]; 0..2 grant a QoS. */
#define PUSH_MQTT_SUBACK_FAILURE 0x80

/* The protocol limits. */
#define PUSH_MQTT_LEVEL 4			  /* protocol level of MQTT 3.1.1 */
#define PUSH_MQTT_MAX_REMAINING 268435455u	  /* 4 length bytes [MQTT-2.2.3] */
#define PUSH_MQTT_MAX_PACKET (1 + 4 + 268435455u) /* the largest packet of all */
#define PUSH_MQTT_MAX_STRING 65535		  /* 2-byte length prefix [MQTT-1.5.3] */

/* Who sent the bytes a decoder reads: a server decodes FROM_CLIENT, a client
 * FROM_SERVER; FROM_ANY (tools and tests) accepts every type. */
enum push_mqtt_from {
	PUSH_MQTT_FROM_CLIENT = 1,
	PUSH_MQTT_FROM_SERVER = 2,
	PUSH_MQTT_FROM_ANY = 3,
};

/* A UTF-8 string field: borrowed, |len| bytes, no NUL terminator. |len| is
 * a size_t so that a caller's strlen() is never cut short: a decoded field is
 * at most PUSH_MQTT_MAX_STRING bytes, and the encoders refuse a longer one
 * ("string_too_long"). NULL |p| is allowed with |len| 0. */
struct push_mqtt_str {
	const char *p;
	size_t len;
};

/* A binary field (password, will message): borrowed, |len| bytes, at most
 * PUSH_MQTT_MAX_STRING, as above. */
struct push_mqtt_bin {
	const uint8_t *p;
	size_t len;
};

struct push_mqtt_connect {
	uint8_t level; /* decoded: PUSH_MQTT_LEVEL; the encoder always writes that, ignoring this */
	bool clean_session;
	uint16_t keepalive;		/* seconds; 0 turns keepalive off */
	struct push_mqtt_str client_id; /* may be empty */
	bool will; /* will_* below are set only with it (the encoder ignores them without it) */
	uint8_t will_qos; /* 0..2 */
	bool will_retain;
	struct push_mqtt_str will_topic; /* a topic name (no wildcards) */
	struct push_mqtt_bin will_message;
	bool has_username;
	struct push_mqtt_str username;
	bool has_password; /* only with has_username */
	struct push_mqtt_bin password;
};

struct push_mqtt_connack {
	bool session_present; /* only with return_code 0 */
	uint8_t return_code;  /* enum push_mqtt_connack_code */
};

struct push_mqtt_publish {
	uint8_t qos; /* 0..2 */
	bool dup;    /* only with qos > 0 */
	bool retain;
	uint16_t id; /* non-zero with qos > 0; decoded 0 with qos 0, ignored by the encoder */
	struct push_mqtt_str topic; /* a topic name: non-empty, no wildcards */
	const uint8_t *payload;	    /* borrowed; may be empty (NULL allowed when 0 to encode) */
	size_t payload_len;
};

/* SUBSCRIBE and UNSUBSCRIBE: the entries exactly as on the wire, validated,
 * read one by one with push_mqtt_topics_next(). A SUBSCRIBE entry is a topic
 * filter and a requested QoS byte; an UNSUBSCRIBE entry a topic filter. */
struct push_mqtt_subscribe {
	uint16_t id;	     /* non-zero */
	const uint8_t *list; /* borrowed, list_len bytes */
	size_t list_len;
	size_t count; /* entries, at least 1 */
};

struct push_mqtt_suback {
	uint16_t id;	      /* non-zero */
	const uint8_t *codes; /* borrowed: 0, 1, 2 (granted QoS) or PUSH_MQTT_SUBACK_FAILURE */
	size_t count;	      /* at least 1 */
};

/* A decoded packet, or the packet to encode. */
struct push_mqtt_packet {
	uint8_t type; /* enum push_mqtt_type; PUSH_MQTT_NONE: no packet */
	size_t size;  /* decoded: bytes on the wire, fixed header included */
	union {
		struct push_mqtt_connect connect;
		struct push_mqtt_connack connack;
		struct push_mqtt_publish publish;
		struct push_mqtt_subscribe subscribe; /* SUBSCRIBE, UNSUBSCRIBE */
		struct push_mqtt_suback suback;
		uint16_t id; /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: non-zero */
	};
};

/* One SUBSCRIBE or UNSUBSCRIBE entry. */
struct push_mqtt_topic {
	struct push_mqtt_str filter; /* a topic filter */
	uint8_t qos;		     /* requested QoS, 0..2; 0 for UNSUBSCRIBE */
};

/* ---- Decoding ------------------------------------------------------------ */

/* The incremental decoder of one connection. Fields are private; the struct
 * is public so that it lives inside the connection without an allocation
 * (under 80 bytes). */
struct push_mqtt_decoder {
	uint8_t from;	   /* enum push_mqtt_from */
	size_t max_packet; /* largest whole packet accepted */
	uint8_t *buf;	   /* the caller's storage for a partial body, or NULL */
	size_t cap;
	uint8_t head[5]; /* the fixed header read so far */
	uint8_t head_len;
	bool head_done;
	size_t remaining; /* the body's length, once head_done */
	size_t have;	  /* body bytes held in buf */
	int err;	  /* sticky failure, 0 while healthy */
	const char *reason;
};

/* Prepare |d| to decode packets sent by |from| of at most |max_packet| bytes
 * each (fixed header included; at least 2, at most PUSH_MQTT_MAX_PACKET:
 * larger values are treated as PUSH_MQTT_MAX_PACKET, smaller as 2), with the
 * storage |buf| of |cap| bytes (borrowed; NULL with cap 0 allowed, see
 * push_mqtt_decoder_set_buffer()). A buffer of max_packet bytes always
 * suffices. Never fails; may be called again to reset |d|. */
void push_mqtt_decoder_init(struct push_mqtt_decoder *d, enum push_mqtt_from from,
			    size_t max_packet, uint8_t *buf, size_t cap);

/* Feed |len| bytes at |in| (borrowed; |len| 0 allowed) to |d|. On return
 * *used says how many of them were consumed (at most one packet's worth) and
 * |pkt| holds the packet they completed, or pkt->type == PUSH_MQTT_NONE when
 * more bytes are needed (then *used == len). Call again with the rest
 * (in + *used) while bytes remain: one chunk from a socket may hold several
 * packets.
 *
 *     while (len > 0) {
 *             rc = push_mqtt_decoder_feed(&d, in, len, &used, &pkt);
 *             if (rc < 0) close the connection, counting push_mqtt_decoder_reason(&d)
 *             in += used, len -= used;
 *             if (pkt.type != PUSH_MQTT_NONE) handle pkt (borrowed, see above)
 *     }
 *
 * A packet that lies whole inside |in| is decoded in place (no copy); only a
 * packet split across calls is gathered, in the buffer given to
 * push_mqtt_decoder_init() or push_mqtt_decoder_set_buffer(), which must then
 * hold its body (remaining length). The fixed header is checked byte by byte
 * as it arrives (type, direction, flags, length form) and the announced size
 * against max_packet before any body byte is accepted.
 * Returns 0 or a code listed at the top of this file; an error is sticky
 * (every later call returns it with *used 0) until push_mqtt_decoder_init().
 * On error pkt->type is PUSH_MQTT_NONE. */
int push_mqtt_decoder_feed(struct push_mqtt_decoder *d, const uint8_t *in, size_t len, size_t *used,
			   struct push_mqtt_packet *pkt) MICA_WUR;

/* The reason of |d|'s failure (static string), or NULL while it has none. */
const char *push_mqtt_decoder_reason(const struct push_mqtt_decoder *d);

/* Bytes of a partial packet |d| holds in its buffer. While it is 0 the
 * buffer is unused and may be replaced or taken away (an idle connection
 * need not keep one). */
size_t push_mqtt_decoder_buffered(const struct push_mqtt_decoder *d);

/* Bytes of the current partial packet |d| has consumed: its fixed header so
 * far and its body so far (buffered or not). 0 means |d| stands between two
 * packets: a connection is idle, or a stream ended cleanly. A broker may
 * bound how long this stays non-zero (a client trickling a packet). */
size_t push_mqtt_decoder_pending(const struct push_mqtt_decoder *d);

/* Replace |d|'s buffer with |buf| of |cap| bytes (NULL with 0: none).
 * Returns 0, or MICA_ESTATE ("buffer_in_use", via |reason|) while
 * push_mqtt_decoder_buffered() is not 0. */
int push_mqtt_decoder_set_buffer(struct push_mqtt_decoder *d, uint8_t *buf, size_t cap,
				 const char **reason) MICA_WUR;

/* Decode the one packet at the start of |in| (|len| bytes, borrowed) sent by
 * |from|, of at most |max_packet| bytes; *used gets its size (bytes after it
 * are left alone). |pkt| borrows from |in|.
 * Returns 0, MICA_ETRUNCATED ("truncated") when |in| ends before the packet
 * does, or a code listed at the top of this file. */
int push_mqtt_decode(enum push_mqtt_from from, size_t max_packet, const uint8_t *in, size_t len,
		     size_t *used, struct push_mqtt_packet *pkt, const char **reason) MICA_WUR;

/* Read the next entry of a decoded SUBSCRIBE or UNSUBSCRIBE |s| (of packet
 * type |type|), starting at *pos (0 for the first). Returns true and fills
 * |t| (borrowing from s->list) and advances *pos, or false after the last
 * entry. Entries of a decoded packet are already validated. */
bool push_mqtt_topics_next(uint8_t type, const struct push_mqtt_subscribe *s, size_t *pos,
			   struct push_mqtt_topic *t);

/* ---- Encoding ------------------------------------------------------------ */

/* Encode |pkt| into |out| (|cap| bytes). *len gets the packet's size in every
 * case where it is known: with |out| NULL nothing is written and 0 is
 * returned (the size query); with |cap| too small, MICA_ETOOBIG
 * ("buffer_too_small") and *len the size needed.
 * The packet is checked by the decoder's rules before anything is written
 * (an encoder never emits what the decoder refuses): the codes and reasons
 * listed at the top, MICA_EINVAL "bad_argument" for a NULL |pkt| or |len|,
 * an unknown type, or NULL pointers with non-zero lengths, and
 * "string_too_long". For SUBSCRIBE and UNSUBSCRIBE, pkt->subscribe.list is
 * wire-format (a decoded packet re-encodes as it came); build one from
 * entries with push_mqtt_encode_topics(). pkt->size is ignored.
 * Whatever push_mqtt_decode() accepts, push_mqtt_encode() turns back into
 * the identical bytes (the fuzz target checks it). */
int push_mqtt_encode(const struct push_mqtt_packet *pkt, uint8_t *out, size_t cap, size_t *len,
		     const char **reason) MICA_WUR;

/* Encode a SUBSCRIBE (|type| PUSH_MQTT_SUBSCRIBE) or UNSUBSCRIBE
 * (PUSH_MQTT_UNSUBSCRIBE) with packet identifier |id| and the |n| entries
 * |topics| (borrowed; qos ignored for UNSUBSCRIBE) into |out| as
 * push_mqtt_encode() does, with the same size query and return codes. */
int push_mqtt_encode_topics(uint8_t type, uint16_t id, const struct push_mqtt_topic *topics,
			    size_t n, uint8_t *out, size_t cap, size_t *len,
			    const char **reason) MICA_WUR;

/* ---- Validation shared with the broker ----------------------------------- */

/* Check |len| bytes at |s| as an MQTT UTF-8 string: well-formed UTF-8 with no
 * U+0000. Returns 0 or MICA_EBADENCODING ("bad_utf8", "nul_in_string"). */
int push_mqtt_check_utf8(const char *s, size_t len, const char **reason) MICA_WUR;

/* Check a topic name (|filter| false: non-empty, no '+' or '#') or a topic
 * filter (|filter| true: non-empty, '+' alone in its level, '#' alone in the
 * last level), including push_mqtt_check_utf8(). Returns 0, MICA_EINVAL or
 * MICA_EBADENCODING with their reasons. */
int push_mqtt_check_topic(const char *s, size_t len, bool filter, const char **reason) MICA_WUR;

/* Whether topic filter |filter| matches topic name |topic| [MQTT-4.7]: '+'
 * one level, '#' the parent level and every level below, and a filter
 * starting with a wildcard never matches a topic starting with '$'
 * [MQTT-4.7.2-1]. Both must have passed push_mqtt_check_topic(). */
bool push_mqtt_topic_matches(const char *filter, size_t filter_len, const char *topic,
			     size_t topic_len);

/* The name of packet type |type| ("CONNECT", ...; "NONE" for 0 and "?" for
 * others), for logs. */
const char *push_mqtt_type_name(uint8_t type);

#endif
