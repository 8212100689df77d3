/* mqtt.c - the MQTT 3.1.1 codec (see mqtt.h): the fixed-header state
 * machine of the incremental decoder, one body decoder per packet type, and
 * encoders that check a packet by the decoder's rules and write it into the
 * caller's buffer. Every field read is bounds-checked against the body's
 * length; nothing here allocates.
 */
#include "mqtt.h"

#include <string.h>

/* Fail with |code| and the reason |why| (a string literal). */
#define FAIL(code, why)                                                                            \
	do {                                                                                       \
		*reason = (why);                                                                   \
		return (code);                                                                     \
	} while (0)

static void set_reason(const char **out, const char *why)
{
	if (out)
		*out = why;
}

/* ---- Validation ---------------------------------------------------------- */

int push_mqtt_check_utf8(const char *str, size_t len, const char **why)
{
	const uint8_t *s = (const uint8_t *)str;
	const char *dummy = NULL;
	const char **reason = why ? why : &dummy;
	size_t i = 0;

	*reason = NULL;
	if (!s && len)
		FAIL(MICA_EINVAL, "bad_argument");
	while (i < len) {
		uint8_t c = s[i];
		size_t k = 0;
		uint32_t cp = 0, min = 0;
		if (c == 0)
			FAIL(MICA_EBADENCODING, "nul_in_string");
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			k = 1, cp = c & 0x1fu, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			k = 2, cp = c & 0x0fu, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			k = 3, cp = c & 0x07u, min = 0x10000;
		} else {
			FAIL(MICA_EBADENCODING, "bad_utf8"); /* continuation or 0xf8..0xff lead */
		}
		if (len - i - 1 < k)
			FAIL(MICA_EBADENCODING, "bad_utf8"); /* cut short */
		for (size_t j = 1; j <= k; j++) {
			uint8_t b = s[i + j];
			if ((b & 0xc0) != 0x80)
				FAIL(MICA_EBADENCODING, "bad_utf8");
			cp = cp << 6 | (b & 0x3fu);
		}
		/* Overlong forms (including C0 80 for U+0000), UTF-16 surrogates and
		 * code points beyond Unicode are ill-formed [RFC 3629, MQTT-1.5.3-1]. */
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			FAIL(MICA_EBADENCODING, "bad_utf8");
		i += k + 1;
	}
	return 0;
}

int push_mqtt_check_topic(const char *s, size_t len, bool filter, const char **why)
{
	const char *dummy = NULL;
	const char **reason = why ? why : &dummy;
	int rc;

	*reason = NULL;
	if (len == 0)
		FAIL(MICA_EINVAL, "empty_topic"); /* [MQTT-4.7.3-1] */
	if (len > PUSH_MQTT_MAX_STRING)
		FAIL(MICA_EINVAL, "string_too_long");
	rc = push_mqtt_check_utf8(s, len, reason);
	if (rc < 0)
		return rc;
	if (!filter) {
		if (memchr(s, '+', len) || memchr(s, '#', len))
			FAIL(MICA_EINVAL, "wildcard_in_topic");
		return 0;
	}
	/* Level by level: '+' fills a whole level, '#' a whole level that is the last. */
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && s[i] != '/')
			continue;
		size_t n = i - start;
		const char *level = s + start;
		if (memchr(level, '#', n) && (n != 1 || i != len))
			FAIL(MICA_EINVAL, "bad_topic_filter");
		if (memchr(level, '+', n) && n != 1)
			FAIL(MICA_EINVAL, "bad_topic_filter");
		start = i + 1;
	}
	return 0;
}

bool push_mqtt_topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen)
{
	const char *f = filter, *fend = filter + flen, *t = topic, *tend = topic + tlen;

	if (flen == 0 || tlen == 0)
		return false;
	/* [MQTT-4.7.2-1]: "#" and "+/..." do not reach "$SYS/..." and the like. */
	if (topic[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
		return false;
	for (;;) {
		const char *fslash = memchr(f, '/', (size_t)(fend - f));
		const char *tslash = memchr(t, '/', (size_t)(tend - t));
		const char *fl_end = fslash ? fslash : fend;
		const char *tl_end = tslash ? tslash : tend;
		size_t fl = (size_t)(fl_end - f), tl = (size_t)(tl_end - t);

		if (fl == 1 && f[0] == '#')
			return true;
		if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl) != 0))
			return false;
		if (!fslash)
			return !tslash;
		f = fslash + 1;
		if (!tslash) /* "a/#" matches "a": '#' includes the parent level */
			return fend - f == 1 && f[0] == '#';
		t = tslash + 1;
	}
}

const char *push_mqtt_type_name(uint8_t type)
{
	static const char *const names[] = {
		"NONE",	       "CONNECT",  "CONNACK", "PUBLISH",   "PUBACK",
		"PUBREC",      "PUBREL",   "PUBCOMP", "SUBSCRIBE", "SUBACK",
		"UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",  "DISCONNECT",
	};
	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "?";
}

/* ---- Fixed header -------------------------------------------------------- */

/* The sides that send each type [MQTT-2.2.1], indexed by type. */
static const uint8_t senders[16] = {
	[PUSH_MQTT_CONNECT] = PUSH_MQTT_FROM_CLIENT,
	[PUSH_MQTT_CONNACK] = PUSH_MQTT_FROM_SERVER,
	[PUSH_MQTT_PUBLISH] = PUSH_MQTT_FROM_ANY,
	[PUSH_MQTT_PUBACK] = PUSH_MQTT_FROM_ANY,
	[PUSH_MQTT_PUBREC] = PUSH_MQTT_FROM_ANY,
	[PUSH_MQTT_PUBREL] = PUSH_MQTT_FROM_ANY,
	[PUSH_MQTT_PUBCOMP] = PUSH_MQTT_FROM_ANY,
	[PUSH_MQTT_SUBSCRIBE] = PUSH_MQTT_FROM_CLIENT,
	[PUSH_MQTT_SUBACK] = PUSH_MQTT_FROM_SERVER,
	[PUSH_MQTT_UNSUBSCRIBE] = PUSH_MQTT_FROM_CLIENT,
	[PUSH_MQTT_UNSUBACK] = PUSH_MQTT_FROM_SERVER,
	[PUSH_MQTT_PINGREQ] = PUSH_MQTT_FROM_CLIENT,
	[PUSH_MQTT_PINGRESP] = PUSH_MQTT_FROM_SERVER,
	[PUSH_MQTT_DISCONNECT] = PUSH_MQTT_FROM_CLIENT,
};

/* The flags every type but PUBLISH must carry [MQTT-2.2.2-1]. */
static uint8_t fixed_flags(uint8_t type)
{
	return type == PUSH_MQTT_SUBSCRIBE || type == PUSH_MQTT_UNSUBSCRIBE ||
			       type == PUSH_MQTT_PUBREL
		       ? 0x2
		       : 0x0;
}

/* Check the first byte of a packet: its type, who may send it, its flags. */
static int check_first(uint8_t from, uint8_t b, const char **reason)
{
	uint8_t type = b >> 4, flags = b & 0x0f;

	if (type == 0 || type == 15)
		FAIL(MICA_EBADHEADER, "reserved_type");
	if (!(senders[type] & from))
		FAIL(MICA_EBADHEADER, "unexpected_type");
	if (type == PUSH_MQTT_PUBLISH) {
		uint8_t qos = (flags >> 1) & 3;
		if (qos == 3)
			FAIL(MICA_EBADHEADER, "bad_qos"); /* [MQTT-3.3.1-4] */
		if (qos == 0 && (flags & 0x8))
			FAIL(MICA_EBADHEADER, "dup_with_qos0"); /* [MQTT-3.3.1-2] */
		return 0;
	}
	if (flags != fixed_flags(type))
		FAIL(MICA_EBADHEADER, "reserved_flags"); /* [MQTT-2.2.2-2] */
	return 0;
}

/* Take header byte |b| into |d|. Returns 0 while the header goes on, 1 when
 * it is complete (d->remaining set), or an error (d->reason set). */
static int head_step(struct push_mqtt_decoder *d, uint8_t b)
{
	const char **reason = &d->reason;
	int rc;

	d->head[d->head_len++] = b;
	if (d->head_len == 1) {
		rc = check_first(d->from, b, reason);
		return rc < 0 ? rc : 0;
	}
	if (b & 0x80) {
		/* A continuation in the 4th length byte announces a 5th [MQTT-2.2.3]. */
		if (d->head_len == 5)
			FAIL(MICA_EBADHEADER, "bad_remaining_length");
		return 0;
	}
	/* A last byte of 0 after others means the same length fits in fewer. */
	if (b == 0 && d->head_len > 2)
		FAIL(MICA_EBADHEADER, "bad_remaining_length");
	size_t r = 0;
	for (int i = d->head_len - 1; i >= 1; i--)
		r = r << 7 | (d->head[i] & 0x7fu);
	if (d->head_len > d->max_packet || r > d->max_packet - d->head_len)
		FAIL(MICA_ETOOBIG, "oversize");
	d->remaining = r;
	d->head_done = true;
	d->have = 0;
	return 1;
}

/* ---- Bodies -------------------------------------------------------------- */

/* A bounds-checked reader over one packet's body. */
struct rd {
	const uint8_t *p;
	size_t n, off;
};

static int rd_u8(struct rd *r, uint8_t *v, const char **reason)
{
	if (r->n - r->off < 1)
		FAIL(MICA_EBADHEADER, "bad_length");
	*v = r->p[r->off++];
	return 0;
}

static int rd_u16(struct rd *r, uint16_t *v, const char **reason)
{
	if (r->n - r->off < 2)
		FAIL(MICA_EBADHEADER, "bad_length");
	*v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
	r->off += 2;
	return 0;
}

/* A length-prefixed field [MQTT-1.5.3]: *p borrows |*len| bytes of the body. */
static int rd_field(struct rd *r, const uint8_t **p, size_t *len, const char **reason)
{
	uint16_t n = 0;
	int rc = rd_u16(r, &n, reason);
	if (rc < 0)
		return rc;
	if (r->n - r->off < n)
		FAIL(MICA_EBADHEADER, "bad_length");
	*p = r->p + r->off;
	*len = n;
	r->off += n;
	return 0;
}

/* A length-prefixed field as a string, not yet checked. */
static int rd_text(struct rd *r, struct push_mqtt_str *s, const char **reason)
{
	const uint8_t *p = NULL;
	int rc = rd_field(r, &p, &s->len, reason);
	s->p = (const char *)p;
	return rc;
}

/* A UTF-8 string field [MQTT-1.5.3]. */
static int rd_str(struct rd *r, struct push_mqtt_str *s, const char **reason)
{
	int rc = rd_text(r, s, reason);
	if (rc < 0)
		return rc;
	return push_mqtt_check_utf8(s->p, s->len, reason);
}

static int rd_id(struct rd *r, uint16_t *id, const char **reason)
{
	int rc = rd_u16(r, id, reason);
	if (rc < 0)
		return rc;
	if (*id == 0)
		FAIL(MICA_EBADHEADER, "zero_packet_id"); /* [MQTT-2.3.1-1] */
	return 0;
}

static int rd_end(const struct rd *r, const char **reason)
{
	if (r->off != r->n)
		FAIL(MICA_EBADHEADER, "bad_length");
	return 0;
}

/* Validate a SUBSCRIBE or UNSUBSCRIBE entry list; *count gets the entries. */
static int check_topics(uint8_t type, const uint8_t *list, size_t n, size_t *count,
			const char **reason)
{
	struct rd r = {list, n, 0};
	int rc;

	*count = 0;
	while (r.off < r.n) {
		struct push_mqtt_str f;
		uint8_t q;
		if ((rc = rd_text(&r, &f, reason)) < 0)
			return rc;
		if ((rc = push_mqtt_check_topic(f.p, f.len, true, reason)) < 0)
			return rc;
		if (type == PUSH_MQTT_SUBSCRIBE) {
			if ((rc = rd_u8(&r, &q, reason)) < 0)
				return rc;
			if (q & 0xfc)
				FAIL(MICA_EBADHEADER,
				     "bad_subscription_options"); /* [MQTT-3.8.3-4] */
			if (q == 3)
				FAIL(MICA_EBADHEADER, "bad_qos");
		}
		(*count)++;
	}
	if (*count == 0)
		FAIL(MICA_EBADHEADER, "no_topics"); /* [MQTT-3.8.3-3, MQTT-3.10.3-2] */
	return 0;
}

bool push_mqtt_topics_next(uint8_t type, const struct push_mqtt_subscribe *s, size_t *pos,
			   struct push_mqtt_topic *t)
{
	size_t off = *pos, n;

	if (!s->list || off >= s->list_len || s->list_len - off < 2)
		return false;
	n = (size_t)s->list[off] << 8 | s->list[off + 1];
	off += 2;
	if (s->list_len - off < n + (type == PUSH_MQTT_SUBSCRIBE))
		return false;
	t->filter.p = (const char *)s->list + off;
	t->filter.len = n;
	off += n;
	t->qos = 0;
	if (type == PUSH_MQTT_SUBSCRIBE)
		t->qos = s->list[off++];
	*pos = off;
	return true;
}

static int decode_connect(struct rd *r, struct push_mqtt_connect *c, const char **reason)
{
	struct push_mqtt_str name;
	uint8_t flags;
	int rc;

	/* The name and level first: for another version, nothing after them counts. */
	if ((rc = rd_text(r, &name, reason)) < 0)
		return rc;
	if ((rc = rd_u8(r, &c->level, reason)) < 0)
		return rc;
	if (name.len == 6 && memcmp(name.p, "MQIsdp", 6) == 0)
		FAIL(MICA_EBADVERSION, "bad_protocol_level"); /* MQTT 3.1 */
	if (name.len != 4 || memcmp(name.p, "MQTT", 4) != 0)
		FAIL(MICA_EBADHEADER, "bad_protocol_name"); /* [MQTT-3.1.2-1] */
	if (c->level != PUSH_MQTT_LEVEL)
		FAIL(MICA_EBADVERSION, "bad_protocol_level"); /* [MQTT-3.1.2-2] */
	if ((rc = rd_u8(r, &flags, reason)) < 0)
		return rc;
	if (flags & 0x01)
		FAIL(MICA_EBADHEADER, "connect_reserved_flag"); /* [MQTT-3.1.2-3] */
	c->clean_session = flags & 0x02;
	c->will = flags & 0x04;
	c->will_qos = (flags >> 3) & 3;
	c->will_retain = flags & 0x20;
	c->has_password = flags & 0x40;
	c->has_username = flags & 0x80;
	if (c->will_qos == 3)
		FAIL(MICA_EBADHEADER, "bad_qos"); /* [MQTT-3.1.2-14] */
	if (!c->will && (c->will_qos || c->will_retain))
		FAIL(MICA_EBADHEADER, "bad_will_flags"); /* [MQTT-3.1.2-13/15] */
	if (c->has_password && !c->has_username)
		FAIL(MICA_EBADHEADER, "password_without_username"); /* [MQTT-3.1.2-22] */
	if ((rc = rd_u16(r, &c->keepalive, reason)) < 0)
		return rc;
	/* The payload's fields, in this order, each present iff its flag is [MQTT-3.1.3-1]. */
	if ((rc = rd_str(r, &c->client_id, reason)) < 0)
		return rc;
	if (c->will) {
		if ((rc = rd_text(r, &c->will_topic, reason)) < 0)
			return rc;
		if ((rc = push_mqtt_check_topic(c->will_topic.p, c->will_topic.len, false,
						reason)) < 0)
			return rc;
		if ((rc = rd_field(r, &c->will_message.p, &c->will_message.len, reason)) < 0)
			return rc;
	}
	if (c->has_username && (rc = rd_str(r, &c->username, reason)) < 0)
		return rc;
	if (c->has_password && (rc = rd_field(r, &c->password.p, &c->password.len, reason)) < 0)
		return rc;
	return rd_end(r, reason);
}

static int decode_connack(struct rd *r, struct push_mqtt_connack *c, const char **reason)
{
	uint8_t flags, code;

	if (r->n != 2)
		FAIL(MICA_EBADHEADER, "bad_length");
	if (rd_u8(r, &flags, reason) < 0 || rd_u8(r, &code, reason) < 0)
		FAIL(MICA_EBADHEADER, "bad_length");
	/* Reserved bits, an undefined code, or a session kept while refusing [MQTT-3.2.2-4]. */
	if ((flags & 0xfe) || code > PUSH_MQTT_CONNACK_NOT_AUTHORIZED || (flags && code))
		FAIL(MICA_EBADHEADER, "bad_connack");
	c->session_present = flags & 1;
	c->return_code = code;
	return 0;
}

static int decode_publish(uint8_t flags, struct rd *r, struct push_mqtt_publish *p,
			  const char **reason)
{
	int rc;

	p->retain = flags & 1;
	p->qos = (flags >> 1) & 3;
	p->dup = flags & 8;
	if ((rc = rd_text(r, &p->topic, reason)) < 0)
		return rc;
	if ((rc = push_mqtt_check_topic(p->topic.p, p->topic.len, false, reason)) < 0)
		return rc;
	if (p->qos > 0 && (rc = rd_id(r, &p->id, reason)) < 0)
		return rc;
	p->payload = r->p + r->off;
	p->payload_len = r->n - r->off;
	r->off = r->n;
	return 0;
}

static int decode_subscribe(uint8_t type, struct rd *r, struct push_mqtt_subscribe *s,
			    const char **reason)
{
	int rc = rd_id(r, &s->id, reason);
	if (rc < 0)
		return rc;
	s->list = r->p + r->off;
	s->list_len = r->n - r->off;
	return check_topics(type, s->list, s->list_len, &s->count, reason);
}

static int check_suback_codes(const uint8_t *codes, size_t n, const char **reason)
{
	if (n == 0)
		FAIL(MICA_EBADHEADER, "no_topics");
	for (size_t i = 0; i < n; i++)
		if (codes[i] > 2 && codes[i] != PUSH_MQTT_SUBACK_FAILURE)
			FAIL(MICA_EBADHEADER, "bad_suback_code"); /* [MQTT-3.9.3-2] */
	return 0;
}

static int decode_suback(struct rd *r, struct push_mqtt_suback *s, const char **reason)
{
	int rc = rd_id(r, &s->id, reason);
	if (rc < 0)
		return rc;
	s->codes = r->p + r->off;
	s->count = r->n - r->off;
	return check_suback_codes(s->codes, s->count, reason);
}

/* Decode the complete body |b| (|n| bytes) of a packet whose checked first
 * byte is |first| into |pkt|. */
static int decode_body(uint8_t first, const uint8_t *b, size_t n, struct push_mqtt_packet *pkt,
		       const char **reason)
{
	struct rd r = {b, n, 0};
	uint8_t type = first >> 4;
	int rc;

	pkt->type = type;
	switch (type) {
	case PUSH_MQTT_CONNECT:
		return decode_connect(&r, &pkt->connect, reason);
	case PUSH_MQTT_CONNACK:
		return decode_connack(&r, &pkt->connack, reason);
	case PUSH_MQTT_PUBLISH:
		return decode_publish(first & 0x0f, &r, &pkt->publish, reason);
	case PUSH_MQTT_PUBACK:
	case PUSH_MQTT_PUBREC:
	case PUSH_MQTT_PUBREL:
	case PUSH_MQTT_PUBCOMP:
	case PUSH_MQTT_UNSUBACK:
		if (n != 2)
			FAIL(MICA_EBADHEADER, "bad_length");
		return rd_id(&r, &pkt->id, reason);
	case PUSH_MQTT_SUBSCRIBE:
	case PUSH_MQTT_UNSUBSCRIBE:
		return decode_subscribe(type, &r, &pkt->subscribe, reason);
	case PUSH_MQTT_SUBACK:
		return decode_suback(&r, &pkt->suback, reason);
	default: /* PINGREQ, PINGRESP, DISCONNECT; check_first() refused the rest */
		rc = rd_end(&r, reason);
		return rc;
	}
}

/* ---- Decoder ------------------------------------------------------------- */

static void decoder_next_packet(struct push_mqtt_decoder *d)
{
	d->head_len = 0;
	d->head_done = false;
	d->remaining = 0;
	d->have = 0;
}

void push_mqtt_decoder_init(struct push_mqtt_decoder *d, enum push_mqtt_from from,
			    size_t max_packet, uint8_t *buf, size_t cap)
{
	memset(d, 0, sizeof(*d));
	d->from = (uint8_t)from;
	d->max_packet = max_packet < 2			    ? 2
			: max_packet > PUSH_MQTT_MAX_PACKET ? PUSH_MQTT_MAX_PACKET
							    : max_packet;
	d->buf = buf;
	d->cap = buf ? cap : 0;
}

static int decoder_fail(struct push_mqtt_decoder *d, int rc, struct push_mqtt_packet *pkt)
{
	d->err = rc;
	memset(pkt, 0, sizeof(*pkt));
	return rc;
}

int push_mqtt_decoder_feed(struct push_mqtt_decoder *d, const uint8_t *in, size_t len, size_t *used,
			   struct push_mqtt_packet *pkt)
{
	const uint8_t *body;
	size_t off = 0;
	int rc;

	if (!d || !used || !pkt || (!in && len)) {
		if (d && !d->err) {
			d->reason = "bad_argument";
			d->err = MICA_EINVAL;
		}
		if (pkt)
			memset(pkt, 0, sizeof(*pkt));
		if (used)
			*used = 0;
		return MICA_EINVAL;
	}
	memset(pkt, 0, sizeof(*pkt));
	*used = 0;
	if (d->err)
		return d->err;
	while (!d->head_done) {
		if (off == len) {
			*used = off;
			return 0;
		}
		rc = head_step(d, in[off++]);
		if (rc < 0) {
			*used = off;
			return decoder_fail(d, rc, pkt);
		}
	}
	if (d->have == 0 && len - off >= d->remaining) {
		body = in + off; /* whole in this chunk: decode in place */
		off += d->remaining;
	} else {
		size_t take = len - off, missing = d->remaining - d->have;
		if (take > missing)
			take = missing;
		if (take > 0) {
			if (!d->buf || d->cap < d->remaining) {
				d->reason = "no_buffer";
				*used = off;
				return decoder_fail(d, MICA_EINVAL, pkt);
			}
			memcpy(d->buf + d->have, in + off, take);
			d->have += take;
			off += take;
		}
		*used = off;
		if (d->have < d->remaining)
			return 0;
		body = d->buf;
	}
	*used = off;
	rc = decode_body(d->head[0], body, d->remaining, pkt, &d->reason);
	pkt->size = d->head_len + d->remaining;
	decoder_next_packet(d);
	if (rc < 0)
		return decoder_fail(d, rc, pkt);
	d->reason = NULL;
	return 0;
}

const char *push_mqtt_decoder_reason(const struct push_mqtt_decoder *d)
{
	return d && d->err ? d->reason : NULL;
}

size_t push_mqtt_decoder_buffered(const struct push_mqtt_decoder *d)
{
	return d->have;
}

size_t push_mqtt_decoder_pending(const struct push_mqtt_decoder *d)
{
	return d->head_len + d->have;
}

int push_mqtt_decoder_set_buffer(struct push_mqtt_decoder *d, uint8_t *buf, size_t cap,
				 const char **reason)
{
	set_reason(reason, NULL);
	if (d->have > 0) {
		set_reason(reason, "buffer_in_use");
		return MICA_ESTATE;
	}
	d->buf = buf;
	d->cap = buf ? cap : 0;
	return 0;
}

int push_mqtt_decode(enum push_mqtt_from from, size_t max_packet, const uint8_t *in, size_t len,
		     size_t *used, struct push_mqtt_packet *pkt, const char **reason)
{
	struct push_mqtt_decoder d;
	size_t off = 0;
	int rc = 0;

	set_reason(reason, NULL);
	if (!used || !pkt || (!in && len)) {
		set_reason(reason, "bad_argument");
		return MICA_EINVAL;
	}
	memset(pkt, 0, sizeof(*pkt));
	*used = 0;
	push_mqtt_decoder_init(&d, from, max_packet, NULL, 0);
	while (rc == 0) {
		if (off == len) {
			set_reason(reason, "truncated");
			return MICA_ETRUNCATED;
		}
		rc = head_step(&d, in[off++]);
	}
	if (rc < 0)
		goto fail;
	if (len - off < d.remaining) {
		set_reason(reason, "truncated");
		return MICA_ETRUNCATED;
	}
	rc = decode_body(d.head[0], in + off, d.remaining, pkt, &d.reason);
	if (rc < 0)
		goto fail;
	pkt->size = d.head_len + d.remaining;
	*used = pkt->size;
	return 0;
fail:
	memset(pkt, 0, sizeof(*pkt));
	set_reason(reason, d.reason);
	return rc;
}

/* ---- Encoding ------------------------------------------------------------ */

/* A writer: with |p| NULL it only counts, so one function both sizes and
 * writes a body (the caller has checked the room before writing). */
struct wr {
	uint8_t *p;
	size_t off;
};

static void put_u8(struct wr *w, uint8_t v)
{
	if (w->p)
		w->p[w->off] = v;
	w->off++;
}

static void put_u16(struct wr *w, uint16_t v)
{
	put_u8(w, (uint8_t)(v >> 8));
	put_u8(w, (uint8_t)v);
}

static void put_bytes(struct wr *w, const void *s, size_t n)
{
	if (w->p && n)
		memcpy(w->p + w->off, s, n);
	w->off += n;
}

static int put_field(struct wr *w, const void *s, size_t n, const char **reason)
{
	if (n > PUSH_MQTT_MAX_STRING)
		FAIL(MICA_EINVAL, "string_too_long");
	if (!s && n)
		FAIL(MICA_EINVAL, "bad_argument");
	put_u16(w, (uint16_t)n);
	put_bytes(w, s, n);
	return 0;
}

static int put_str(struct wr *w, const struct push_mqtt_str *s, const char **reason)
{
	int rc;
	if (s->len > PUSH_MQTT_MAX_STRING)
		FAIL(MICA_EINVAL, "string_too_long");
	if ((rc = push_mqtt_check_utf8(s->p, s->len, reason)) < 0)
		return rc;
	return put_field(w, s->p, s->len, reason);
}

static int put_id(struct wr *w, uint16_t id, const char **reason)
{
	if (id == 0)
		FAIL(MICA_EBADHEADER, "zero_packet_id");
	put_u16(w, id);
	return 0;
}

static int emit_connect(const struct push_mqtt_connect *c, struct wr *w, const char **reason)
{
	uint8_t flags = 0;
	int rc;

	if (c->will) {
		if (c->will_qos > 2)
			FAIL(MICA_EBADHEADER, "bad_qos");
		if ((rc = push_mqtt_check_topic(c->will_topic.p, c->will_topic.len, false,
						reason)) < 0)
			return rc;
		flags |= (uint8_t)(0x04 | c->will_qos << 3 | (c->will_retain ? 0x20 : 0));
	}
	if (c->has_password && !c->has_username)
		FAIL(MICA_EBADHEADER, "password_without_username");
	flags |= (c->clean_session ? 0x02 : 0) | (c->has_password ? 0x40 : 0) |
		 (c->has_username ? 0x80 : 0);
	put_field(w, "MQTT", 4, reason);
	put_u8(w, PUSH_MQTT_LEVEL);
	put_u8(w, flags);
	put_u16(w, c->keepalive);
	if ((rc = put_str(w, &c->client_id, reason)) < 0)
		return rc;
	if (c->will) {
		if ((rc = put_str(w, &c->will_topic, reason)) < 0)
			return rc;
		if ((rc = put_field(w, c->will_message.p, c->will_message.len, reason)) < 0)
			return rc;
	}
	if (c->has_username && (rc = put_str(w, &c->username, reason)) < 0)
		return rc;
	if (c->has_password && (rc = put_field(w, c->password.p, c->password.len, reason)) < 0)
		return rc;
	return 0;
}

static int emit_body(const struct push_mqtt_packet *pkt, struct wr *w, const char **reason)
{
	const struct push_mqtt_publish *p = &pkt->publish;
	const struct push_mqtt_connack *ca = &pkt->connack;
	size_t count;
	int rc;

	switch (pkt->type) {
	case PUSH_MQTT_CONNECT:
		return emit_connect(&pkt->connect, w, reason);
	case PUSH_MQTT_CONNACK:
		if (ca->return_code > PUSH_MQTT_CONNACK_NOT_AUTHORIZED ||
		    (ca->session_present && ca->return_code))
			FAIL(MICA_EBADHEADER, "bad_connack");
		put_u8(w, ca->session_present ? 1 : 0);
		put_u8(w, ca->return_code);
		return 0;
	case PUSH_MQTT_PUBLISH:
		if (p->qos > 2)
			FAIL(MICA_EBADHEADER, "bad_qos");
		if (p->dup && p->qos == 0)
			FAIL(MICA_EBADHEADER, "dup_with_qos0");
		if ((rc = push_mqtt_check_topic(p->topic.p, p->topic.len, false, reason)) < 0)
			return rc;
		if (!p->payload && p->payload_len)
			FAIL(MICA_EINVAL, "bad_argument");
		put_field(w, p->topic.p, p->topic.len, reason);
		if (p->qos > 0 && (rc = put_id(w, p->id, reason)) < 0)
			return rc;
		put_bytes(w, p->payload, p->payload_len);
		return 0;
	case PUSH_MQTT_PUBACK:
	case PUSH_MQTT_PUBREC:
	case PUSH_MQTT_PUBREL:
	case PUSH_MQTT_PUBCOMP:
	case PUSH_MQTT_UNSUBACK:
		return put_id(w, pkt->id, reason);
	case PUSH_MQTT_SUBSCRIBE:
	case PUSH_MQTT_UNSUBSCRIBE:
		if (!pkt->subscribe.list && pkt->subscribe.list_len)
			FAIL(MICA_EINVAL, "bad_argument");
		if ((rc = put_id(w, pkt->subscribe.id, reason)) < 0)
			return rc;
		if ((rc = check_topics(pkt->type, pkt->subscribe.list, pkt->subscribe.list_len,
				       &count, reason)) < 0)
			return rc;
		put_bytes(w, pkt->subscribe.list, pkt->subscribe.list_len);
		return 0;
	case PUSH_MQTT_SUBACK:
		if (!pkt->suback.codes && pkt->suback.count)
			FAIL(MICA_EINVAL, "bad_argument");
		if ((rc = put_id(w, pkt->suback.id, reason)) < 0)
			return rc;
		if ((rc = check_suback_codes(pkt->suback.codes, pkt->suback.count, reason)) < 0)
			return rc;
		put_bytes(w, pkt->suback.codes, pkt->suback.count);
		return 0;
	case PUSH_MQTT_PINGREQ:
	case PUSH_MQTT_PINGRESP:
	case PUSH_MQTT_DISCONNECT:
		return 0;
	default:
		FAIL(MICA_EINVAL, "bad_argument");
	}
}

/* Writes a body: emit_body() for a packet, or a SUBSCRIBE/UNSUBSCRIBE from entries. */
typedef int (*emit_fn)(const void *ctx, struct wr *w, const char **reason);

static int emit_packet(const void *ctx, struct wr *w, const char **reason)
{
	return emit_body(ctx, w, reason);
}

struct topics_ctx {
	uint8_t type;
	uint16_t id;
	const struct push_mqtt_topic *topics;
	size_t n;
};

static int emit_topics(const void *ctx, struct wr *w, const char **reason)
{
	const struct topics_ctx *t = ctx;
	int rc;

	if (t->n == 0)
		FAIL(MICA_EBADHEADER, "no_topics");
	if (!t->topics)
		FAIL(MICA_EINVAL, "bad_argument");
	if ((rc = put_id(w, t->id, reason)) < 0)
		return rc;
	for (size_t i = 0; i < t->n; i++) {
		const struct push_mqtt_topic *e = &t->topics[i];
		if ((rc = push_mqtt_check_topic(e->filter.p, e->filter.len, true, reason)) < 0)
			return rc;
		if (t->type == PUSH_MQTT_SUBSCRIBE && e->qos > 2)
			FAIL(MICA_EBADHEADER, "bad_qos");
		put_field(w, e->filter.p, e->filter.len, reason);
		if (t->type == PUSH_MQTT_SUBSCRIBE)
			put_u8(w, e->qos);
	}
	return 0;
}

/* Size |emit|'s body, check it, then write the fixed header |first| and the body. */
static int encode(uint8_t first, emit_fn emit, const void *ctx, uint8_t *out, size_t cap,
		  size_t *len, const char **reason)
{
	struct wr w = {NULL, 0};
	uint8_t head[5];
	size_t hl = 1, r, total;
	int rc;

	head[0] = first;
	if ((rc = emit(ctx, &w, reason)) < 0)
		return rc;
	r = w.off;
	if (r > PUSH_MQTT_MAX_REMAINING)
		FAIL(MICA_ETOOBIG, "oversize");
	do {
		uint8_t b = r & 0x7f;
		r >>= 7;
		head[hl++] = (uint8_t)(b | (r ? 0x80 : 0));
	} while (r);
	total = hl + w.off;
	*len = total;
	if (!out)
		return 0;
	if (cap < total)
		FAIL(MICA_ETOOBIG, "buffer_too_small");
	memcpy(out, head, hl);
	w.p = out + hl;
	w.off = 0;
	return emit(ctx, &w, reason);
}

int push_mqtt_encode(const struct push_mqtt_packet *pkt, uint8_t *out, size_t cap, size_t *len,
		     const char **why)
{
	const char *dummy = NULL;
	const char **reason = why ? why : &dummy;
	uint8_t flags;

	*reason = NULL;
	if (!pkt || !len)
		FAIL(MICA_EINVAL, "bad_argument");
	*len = 0;
	if (pkt->type < PUSH_MQTT_CONNECT || pkt->type > PUSH_MQTT_DISCONNECT)
		FAIL(MICA_EINVAL, "bad_argument");
	flags = fixed_flags(pkt->type);
	if (pkt->type == PUSH_MQTT_PUBLISH)
		flags = (uint8_t)((pkt->publish.dup ? 0x8 : 0) | (pkt->publish.qos & 3) << 1 |
				  (pkt->publish.retain ? 1 : 0));
	return encode((uint8_t)(pkt->type << 4 | flags), emit_packet, pkt, out, cap, len, reason);
}

int push_mqtt_encode_topics(uint8_t type, uint16_t id, const struct push_mqtt_topic *topics,
			    size_t n, uint8_t *out, size_t cap, size_t *len, const char **why)
{
	const char *dummy = NULL;
	const char **reason = why ? why : &dummy;
	struct topics_ctx ctx = {type, id, topics, n};

	*reason = NULL;
	if (!len || (type != PUSH_MQTT_SUBSCRIBE && type != PUSH_MQTT_UNSUBSCRIBE))
		FAIL(MICA_EINVAL, "bad_argument");
	*len = 0;
	return encode((uint8_t)(type << 4 | 0x2), emit_topics, &ctx, out, cap, len, reason);
}
