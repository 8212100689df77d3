/* uvtls.c - TLS connections on libuv with OpenSSL on a buffer-less BIO:
 * the server (listen, SO_REUSEPORT, accept, handshake deadline), the client
 * (connect from a chosen source address, resume a session), record I/O with
 * write backpressure, a coarse timer wheel for handshake, idle and close
 * deadlines, and stateless session tickets whose keys derive from a shared
 * secret and the clock. uvtls.h is the contract.
 */
#define _GNU_SOURCE
#include "uvtls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "crypto.h"
#include "httpc.h"
#include "log.h"
#include "tlsrec.h"

#define READ_BUF_LEN 65536
#define PLAINTEXT_LEN                                                                              \
	MICA_TLSREC_INNER_MAX /* SSL_read, and a detached record's inner plaintext                 \
			       */
#define RECORD_MAX 16384
#define OUT_FLUSH_AT 65536
#define WHEEL_TICK_MS 250
#define WHEEL_SLOTS 256
#define IDLE_MAX_MS 86400000u
#define TICKET_INFO "mica uvtls ticket v1"
#define TICKET_NAME_LEN 16
#define TICKET_AES_LEN 32
#define TICKET_HMAC_LEN 32
#define TICKET_KEYS 3 /* previous, current, next period (clock skew between workers) */
/* After this many connections detached, the wheel's tick gives the freed
 * SSL objects' pages back to the kernel (malloc_trim): about 3.5 MB. */
#define TRIM_AFTER_DETACHES 256

enum conn_state { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING, ST_CLOSED };

/* One timer wheel per server, and one per loop for client connections: a
 * connection with a deadline sits in the slot of its tick; the wheel's timer
 * walks the slots the clock has passed, closing what is due and re-filing what
 * is not (an idle deadline moves with every record without touching the
 * wheel). */
struct wheel {
	uv_timer_t timer;
	uint64_t start_ms;
	uint32_t cur;	   /* last tick processed */
	size_t refs;	   /* the server or client connections holding it */
	uint32_t detached; /* connections detached since the last malloc_trim */
	mica_uvtls_conn *slot[WHEEL_SLOTS];
};

struct ticket_key {
	uint64_t period;
	bool set;
	uint8_t name[TICKET_NAME_LEN];
	uint8_t aes[TICKET_AES_LEN];
	uint8_t hmac[TICKET_HMAC_LEN];
};

struct mica_uvtls_server {
	uv_tcp_t listener;
	uv_loop_t *loop;
	SSL_CTX *ctx;
	mica_uvtls_callbacks cb;
	void *user;
	struct wheel *wheel;
	mica_uvtls_conn *conns; /* every open connection, for mica_uvtls_server_free */
	size_t nconns;
	int port;
	unsigned keepalive_s;
	uint32_t handshake_ticks, close_ticks;
	uint32_t detach_ticks; /* 0: connections keep their SSL object */
	bool freeing, listener_open, listener_closed;
	uint64_t ticket_period_s;
	uint8_t ticket_secret[MICA_UVTLS_TICKET_SECRET_LEN];
	struct ticket_key keys[TICKET_KEYS];
};

/* A server connection's TLS 1.3 record protection, for detaching (see
 * "Detached connections" below). While the SSL object lives, |rd| (client to
 * server) and |wr| (server to client) hold the application traffic secrets
 * the keylog callback captured and count the records OpenSSL protected under
 * them (the message callback); once detached they hold the keys too, and
 * this struct is the connection's whole TLS state. */
struct detach {
	mica_tlsrec_dir rd, wr;
	mica_tlsrec_reader in; /* detached: a record arriving in pieces */
	bool rd_app, wr_app;   /* the application secret of that direction is in use */
	bool detached;	       /* the SSL object is gone */
};

/* Kept small: this is what an idle connection costs besides its SSL object
 * and its uv_tcp_t. */
struct mica_uvtls_conn {
	uv_tcp_t tcp;
	SSL *ssl;		/* NULL once detached */
	struct detach *dt;	/* server connections of a detaching server, else NULL */
	mica_uvtls_server *srv; /* NULL for a client connection */
	const mica_uvtls_callbacks *cb;
	void *user;
	struct wheel *wheel;
	mica_uvtls_conn *wprev, *wnext; /* wheel slot list */
	mica_uvtls_conn *sprev, *snext; /* the server's connections */
	size_t pending;
	uint32_t deadline; /* tick: handshake or close deadline */
	uint32_t last_rx;  /* tick of the last record */
	uint32_t last_tx;  /* tick of the last mica_uvtls_write */
	uint32_t idle_ticks;
	int16_t wslot; /* -1: not in the wheel */
	uint8_t state;
	uint8_t reason;
	bool drain_wanted, silent;
};

/* What one thread shares between its connections: libuv's read buffer (a read
 * is consumed before the callback returns), the plaintext buffer for SSL_read,
 * the input lent to OpenSSL and the records OpenSSL wrote and that are not
 * yet on the socket. */
struct tstate {
	char rbuf[READ_BUF_LEN];
	uint8_t pt[PLAINTEXT_LEN];
	const uint8_t *in;
	size_t in_len;
	mica_uvtls_conn *in_owner;
	uint8_t *out;
	size_t out_len, out_cap;
	mica_uvtls_conn *out_owner;
	struct wheel *cwheel; /* client connections' wheel */
	uv_loop_t *cwheel_loop;
	EVP_CIPHER_CTX *aead; /* scratch of detached connections' records */
};

struct wreq {
	uv_write_t req;
	mica_uvtls_conn *c;
	size_t len;
	char data[];
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t tkey;
static BIO_METHOD *bio_method;
static __thread struct tstate *ts;

static void tstate_free(void *p)
{
	struct tstate *t = p;
	if (!t)
		return;
	free(t->out);
	EVP_CIPHER_CTX_free(t->aead);
	free(t);
}

static int bio_write(BIO *b, const char *data, int len);
static int bio_read(BIO *b, char *buf, int len);
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr);
static int bio_create(BIO *b);

static void init_once(void)
{
	if (pthread_key_create(&tkey, tstate_free) != 0)
		return;
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mica uvtls");
	if (!m)
		return;
	if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
		BIO_meth_free(m);
		return;
	}
	bio_method = m;
}

static struct tstate *tstate(void)
{
	if (ts)
		return ts;
	if (pthread_once(&once, init_once) != 0 || !bio_method)
		return NULL;
	struct tstate *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	if (pthread_setspecific(tkey, t) != 0) {
		free(t);
		return NULL;
	}
	ts = t;
	return t;
}

const char *mica_uvtls_close_name(mica_uvtls_close_reason r)
{
	switch (r) {
	case MICA_UVTLS_CLOSED_LOCAL:
		return "local";
	case MICA_UVTLS_CLOSED_PEER:
		return "peer";
	case MICA_UVTLS_CLOSED_TLS:
		return "tls";
	case MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT:
		return "handshake_timeout";
	case MICA_UVTLS_CLOSED_IDLE_TIMEOUT:
		return "idle_timeout";
	case MICA_UVTLS_CLOSED_IO:
		return "io";
	case MICA_UVTLS_CLOSED_NOMEM:
		return "nomem";
	}
	return "unknown";
}

/* ---- The BIO: input lent by the read callback, output gathered per thread */

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

/* Room for |len| more bytes of |c|'s records at the end of the thread's
 * output buffer, or NULL (out of memory; or another connection's records are
 * there, which never happens: every writer calls take_out first). */
static uint8_t *out_reserve(mica_uvtls_conn *c, size_t len)
{
	struct tstate *t = ts;
	if (!t || (t->out_len > 0 && t->out_owner != c))
		return NULL;
	size_t need = t->out_len + len;
	if (need > t->out_cap) {
		size_t cap = t->out_cap ? t->out_cap : 16384;
		while (cap < need)
			cap *= 2;
		uint8_t *p = realloc(t->out, cap);
		if (!p)
			return NULL;
		t->out = p;
		t->out_cap = cap;
	}
	uint8_t *p = t->out + t->out_len;
	t->out_len = need;
	t->out_owner = c;
	return p;
}

static int bio_write(BIO *b, const char *data, int len)
{
	mica_uvtls_conn *c = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	uint8_t *p = len >= 0 ? out_reserve(c, (size_t)len) : NULL;
	if (!p)
		return -1;
	memcpy(p, data, (size_t)len);
	return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
	mica_uvtls_conn *c = BIO_get_data(b);
	struct tstate *t = ts;
	BIO_clear_retry_flags(b);
	if (!t || t->in_owner != c || t->in_len == 0 || len <= 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
	memcpy(buf, t->in, n);
	t->in += n;
	t->in_len -= n;
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num;
	(void)ptr;
	mica_uvtls_conn *c = BIO_get_data(b);
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return ts && ts->in_owner == c ? (long)ts->in_len : 0;
	default:
		return 0;
	}
}

/* ---- Timer wheel -------------------------------------------------------- */

static uint32_t wheel_now(const struct wheel *w)
{
	return (uint32_t)((uv_now(w->timer.loop) - w->start_ms) / WHEEL_TICK_MS);
}

static void wheel_del(mica_uvtls_conn *c)
{
	if (c->wslot < 0)
		return;
	if (c->wprev)
		c->wprev->wnext = c->wnext;
	else
		c->wheel->slot[c->wslot] = c->wnext;
	if (c->wnext)
		c->wnext->wprev = c->wprev;
	c->wprev = c->wnext = NULL;
	c->wslot = -1;
}

/* Files |c| to be looked at on tick |due| (or as near as the wheel reaches). */
static void wheel_add(mica_uvtls_conn *c, uint32_t due)
{
	struct wheel *w = c->wheel;
	wheel_del(c);
	if (due <= w->cur)
		due = w->cur + 1;
	if (due - w->cur >= WHEEL_SLOTS)
		due = w->cur + WHEEL_SLOTS - 1;
	int16_t s = (int16_t)(due % WHEEL_SLOTS);
	c->wslot = s;
	c->wprev = NULL;
	c->wnext = w->slot[s];
	if (c->wnext)
		c->wnext->wprev = c;
	w->slot[s] = c;
}

static uint32_t ms_to_ticks(unsigned ms)
{
	return (uint32_t)((ms + WHEEL_TICK_MS - 1) / WHEEL_TICK_MS);
}

static void hard_close(mica_uvtls_conn *c, mica_uvtls_close_reason reason);
static void server_release(mica_uvtls_server *s);
static bool detach_wanted(const mica_uvtls_conn *c);
static void detach(mica_uvtls_conn *c);

/* Files an open connection for its next deadline: the idle timeout, or the
 * moment it has been quiet long enough to detach, whichever comes first. */
static void open_schedule(mica_uvtls_conn *c)
{
	uint32_t due = UINT32_MAX;
	if (c->idle_ticks)
		due = c->last_rx + c->idle_ticks;
	if (detach_wanted(c)) {
		uint32_t last = c->last_rx > c->last_tx ? c->last_rx : c->last_tx;
		uint32_t at = last + c->srv->detach_ticks;
		if (at < due)
			due = at;
	}
	if (due == UINT32_MAX)
		wheel_del(c);
	else
		wheel_add(c, due);
}

static void conn_due(mica_uvtls_conn *c, uint32_t now)
{
	switch (c->state) {
	case ST_CONNECTING:
	case ST_HANDSHAKE:
		if (c->deadline <= now)
			hard_close(c, MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT);
		else
			wheel_add(c, c->deadline);
		break;
	case ST_OPEN:
		if (c->idle_ticks && c->last_rx + c->idle_ticks <= now) {
			hard_close(c, MICA_UVTLS_CLOSED_IDLE_TIMEOUT);
			break;
		}
		if (detach_wanted(c) &&
		    (c->last_rx > c->last_tx ? c->last_rx : c->last_tx) + c->srv->detach_ticks <=
			    now)
			detach(c);
		open_schedule(c);
		break;
	case ST_CLOSING:
		if (c->deadline <= now)
			hard_close(c, (mica_uvtls_close_reason)c->reason);
		else
			wheel_add(c, c->deadline);
		break;
	default:
		break;
	}
}

static void wheel_tick(uv_timer_t *t)
{
	struct wheel *w = t->data;
	uint32_t now = wheel_now(w);
	while (w->cur < now) {
		w->cur++;
		int s = (int)(w->cur % WHEEL_SLOTS);
		mica_uvtls_conn *list = w->slot[s];
		w->slot[s] = NULL;
		while (list) {
			mica_uvtls_conn *c = list;
			list = c->wnext;
			if (list)
				list->wprev = NULL;
			c->wprev = c->wnext = NULL;
			c->wslot = -1;
			conn_due(c, w->cur);
		}
	}
	/* The SSL objects of detached connections were freed in the middle of
	 * the heap, between the small blocks of the connections that stay; glibc
	 * returns such pages only when asked. */
	if (w->detached >= TRIM_AFTER_DETACHES) {
		w->detached = 0;
		(void)malloc_trim(0);
	}
}

static struct wheel *wheel_new(uv_loop_t *loop)
{
	struct wheel *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	if (uv_timer_init(loop, &w->timer) != 0) {
		free(w);
		return NULL;
	}
	w->timer.data = w;
	w->start_ms = uv_now(loop);
	w->refs = 1;
	uv_timer_start(&w->timer, wheel_tick, WHEEL_TICK_MS, WHEEL_TICK_MS);
	uv_unref((uv_handle_t *)&w->timer);
	return w;
}

static void wheel_closed(uv_handle_t *h)
{
	free(h->data);
}

static void wheel_unref(struct wheel *w)
{
	if (!w || --w->refs > 0)
		return;
	if (ts && ts->cwheel == w) {
		ts->cwheel = NULL;
		ts->cwheel_loop = NULL;
	}
	uv_timer_stop(&w->timer);
	uv_close((uv_handle_t *)&w->timer, wheel_closed);
}

/* ---- Output ------------------------------------------------------------- */

static void write_done(uv_write_t *req, int status)
{
	struct wreq *wr = (struct wreq *)req;
	mica_uvtls_conn *c = wr->c;
	c->pending -= wr->len;
	free(wr);
	if (status < 0) {
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return;
	}
	if (c->pending == 0 && c->drain_wanted && c->state == ST_OPEN) {
		c->drain_wanted = false;
		if (c->cb->on_drain)
			c->cb->on_drain(c);
	}
}

/* Puts the records OpenSSL wrote for |c| on its socket: what the kernel takes
 * at once, the rest queued. Returns 0 or MICA_ENOMEM/MICA_EIO (the connection
 * is then closing). */
static int flush_out(mica_uvtls_conn *c)
{
	struct tstate *t = ts;
	if (!t || t->out_len == 0 || t->out_owner != c)
		return 0;
	size_t len = t->out_len, off = 0;
	t->out_len = 0;
	t->out_owner = NULL;
	if (c->state == ST_CLOSED || c->state == ST_CONNECTING)
		return 0;
	if (c->pending == 0) {
		uv_buf_t b = uv_buf_init((char *)t->out, (unsigned)len);
		int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
		if (r > 0)
			off = (size_t)r;
		else if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS) {
			hard_close(c, MICA_UVTLS_CLOSED_IO);
			return MICA_EIO;
		}
	}
	if (off == len)
		return 0;
	size_t rest = len - off;
	struct wreq *wr = malloc(sizeof(*wr) + rest);
	if (!wr) {
		hard_close(c, MICA_UVTLS_CLOSED_NOMEM);
		return MICA_ENOMEM;
	}
	wr->c = c;
	wr->len = rest;
	memcpy(wr->data, t->out + off, rest);
	uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
	if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, write_done) != 0) {
		free(wr);
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return MICA_EIO;
	}
	c->pending += rest;
	return 0;
}

/* Makes the thread's output buffer |c|'s: another connection's records are
 * sent first. */
static void take_out(mica_uvtls_conn *c)
{
	struct tstate *t = ts;
	if (t && t->out_len > 0 && t->out_owner != c)
		(void)flush_out(t->out_owner);
}

/* ---- Detached connections ------------------------------------------------
 *
 * A server with detach_idle_ms frees the SSL object of a TLS 1.3 connection
 * that has been quiet that long and carries its records itself
 * (lib/tlsrec): an idle connection then holds its application traffic
 * secrets, keys and sequence numbers (struct detach) instead of OpenSSL's
 * ~14 KB of per-connection state. What it needs from the handshake is
 * captured while OpenSSL runs it: the keylog callback hands over the two
 * application traffic secrets (the line is parsed here and goes nowhere
 * else), and the message callback reports every record header OpenSSL
 * writes or reads, so the records protected under those secrets (the
 * server's NewSessionTickets and any data) are counted exactly, in
 * OpenSSL's own order, whatever it buffered in its BIOs. A connection that
 * saw a KeyUpdate while attached, or that is not TLS 1.3, stays attached.
 */

static void graceful_close(mica_uvtls_conn *c, mica_uvtls_close_reason reason);

static void detach_free(struct detach *d)
{
	if (!d)
		return;
	mica_tlsrec_reader_free(&d->in);
	mica_wipe(d, sizeof(*d));
	free(d);
}

/* This connection keeps its SSL object: its secrets go now, not at close. */
static void detach_refuse(mica_uvtls_conn *c)
{
	detach_free(c->dt);
	c->dt = NULL;
}

static EVP_CIPHER_CTX *aead_ctx(void)
{
	struct tstate *t = ts;
	if (t && !t->aead)
		t->aead = EVP_CIPHER_CTX_new();
	return t ? t->aead : NULL;
}

/* Seals one record of |type| under the connection's write keys into the
 * output buffer (the caller did take_out). Returns 0, MICA_ENOMEM or
 * MICA_ETLS. */
static int seal_record(mica_uvtls_conn *c, uint8_t type, const uint8_t *data, size_t len)
{
	EVP_CIPHER_CTX *x = aead_ctx();
	size_t n = mica_tlsrec_sealed_len(len);
	uint8_t *p = x ? out_reserve(c, n) : NULL;
	if (!p)
		return MICA_ENOMEM;
	if (mica_tlsrec_seal(&c->dt->wr, x, type, data, len, p) != 0) {
		ts->out_len -= n;
		return MICA_ETLS;
	}
	return 0;
}

/* A fatal error of a detached connection: the alert |desc| (RFC 8446 6.2)
 * to the peer, then closed. */
static void detached_fail(mica_uvtls_conn *c, uint8_t desc)
{
	const uint8_t alert[] = {2, desc}; /* fatal */
	take_out(c);
	(void)seal_record(c, MICA_TLSREC_ALERT, alert, sizeof(alert));
	if (flush_out(c) == 0)
		hard_close(c, MICA_UVTLS_CLOSED_TLS);
}

/* A post-handshake handshake record from the client: only KeyUpdate is
 * valid (a client sends no NewSessionTicket, and this server requests no
 * certificate after the handshake). It must end its record (RFC 8446 5.1),
 * so it must be the record's only message. */
static void detached_handshake(mica_uvtls_conn *c, const uint8_t *m, size_t n)
{
	struct detach *d = c->dt;
	if (n != 5 || m[0] != SSL3_MT_KEY_UPDATE || m[1] != 0 || m[2] != 0 || m[3] != 1) {
		detached_fail(c, SSL_AD_UNEXPECTED_MESSAGE);
		return;
	}
	if (m[4] > 1) {
		detached_fail(c, SSL_AD_ILLEGAL_PARAMETER);
		return;
	}
	if (mica_tlsrec_update(&d->rd) != 0) {
		detached_fail(c, SSL_AD_INTERNAL_ERROR);
		return;
	}
	if (m[4] == 0)
		return;
	/* update_requested: our own KeyUpdate (update_not_requested) under the
	 * current keys, then the new write keys (RFC 8446 4.6.3). */
	static const uint8_t ku[] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0};
	take_out(c);
	if (seal_record(c, MICA_TLSREC_HANDSHAKE, ku, sizeof(ku)) != 0 ||
	    mica_tlsrec_update(&d->wr) != 0) {
		hard_close(c, MICA_UVTLS_CLOSED_TLS);
		return;
	}
	(void)flush_out(c);
}

/* One whole record from the client. */
static void detached_record(mica_uvtls_conn *c, const uint8_t *rec, size_t len)
{
	struct tstate *t = ts;
	EVP_CIPHER_CTX *x = aead_ctx();
	size_t n = 0;
	uint8_t type = 0;
	int r = x ? mica_tlsrec_open(&c->dt->rd, x, rec, len, t->pt, &n, &type) : MICA_ENOMEM;
	if (r != 0) {
		detached_fail(c, r == MICA_EAUTH     ? SSL_AD_BAD_RECORD_MAC
				 : r == MICA_ETOOBIG ? SSL_AD_RECORD_OVERFLOW
				 : r == MICA_ENOMEM  ? SSL_AD_INTERNAL_ERROR
						     : SSL_AD_UNEXPECTED_MESSAGE);
		return;
	}
	c->last_rx = wheel_now(c->wheel);
	switch (type) {
	case MICA_TLSREC_APPLICATION_DATA:
		if (n > 0)
			c->cb->on_data(c, t->pt, n);
		break;
	case MICA_TLSREC_ALERT:
		/* close_notify ends the connection cleanly; any other alert
		 * (fatal, or user_canceled) ends it as a TLS failure. */
		if (n != 2)
			detached_fail(c, SSL_AD_DECODE_ERROR);
		else if (t->pt[1] == SSL_AD_CLOSE_NOTIFY)
			graceful_close(c, MICA_UVTLS_CLOSED_PEER);
		else
			hard_close(c, MICA_UVTLS_CLOSED_TLS);
		break;
	case MICA_TLSREC_HANDSHAKE:
		detached_handshake(c, t->pt, n);
		break;
	default:
		detached_fail(c, SSL_AD_UNEXPECTED_MESSAGE);
		break;
	}
}

/* Consumes the lent input of a detached connection: whole records straight
 * from the read buffer, a record that arrives in pieces in a buffer of its
 * own that is freed as soon as it has been read (lib/tlsrec's reader). */
static void feed_detached(mica_uvtls_conn *c)
{
	struct tstate *t = ts;
	while (c->state == ST_OPEN && t->in_owner == c) {
		const uint8_t *rec;
		size_t len;
		int r = mica_tlsrec_next(&c->dt->in, &t->in, &t->in_len, &rec, &len);
		if (r == 1) {
			detached_record(c, rec, len);
			continue;
		}
		if (r == MICA_ENOMEM)
			hard_close(c, MICA_UVTLS_CLOSED_NOMEM);
		else if (r != 0)
			detached_fail(c, SSL_AD_UNEXPECTED_MESSAGE);
		return; /* r == 0: the reader keeps a partial record, if any */
	}
}

static bool detach_wanted(const mica_uvtls_conn *c)
{
	return c->srv && c->srv->detach_ticks && c->ssl && c->dt;
}

/* Gives up the SSL object when nothing of the connection is left inside it:
 * TLS 1.3 with a suite of lib/tlsrec, both application secrets captured, no
 * KeyUpdate seen, no partial record buffered, no shutdown begun. A
 * connection that can never detach drops its capture state. */
static void detach(mica_uvtls_conn *c)
{
	struct detach *d = c->dt;
	if (SSL_has_pending(c->ssl) || SSL_get_shutdown(c->ssl) != 0)
		return; /* later */
	const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
	uint16_t suite = ci ? (uint16_t)SSL_CIPHER_get_protocol_id(ci) : 0;
	size_t len = mica_tlsrec_secret_len(suite);
	uint8_t rs[MICA_TLSREC_SECRET_MAX], ws[MICA_TLSREC_SECRET_MAX];
	uint64_t rseq = d->rd.seq, wseq = d->wr.seq;
	bool ok = SSL_version(c->ssl) == TLS1_3_VERSION && len && d->rd_app && d->wr_app &&
		  d->rd.secret_len == len && d->wr.secret_len == len;
	if (ok) {
		memcpy(rs, d->rd.secret, len);
		memcpy(ws, d->wr.secret, len);
		ok = mica_tlsrec_init(&d->rd, suite, rs, len, rseq) == 0 &&
		     mica_tlsrec_init(&d->wr, suite, ws, len, wseq) == 0;
	}
	mica_wipe(rs, sizeof(rs));
	mica_wipe(ws, sizeof(ws));
	if (!ok) {
		detach_refuse(c);
		return;
	}
	SSL_free(c->ssl);
	c->ssl = NULL;
	d->detached = true;
	c->wheel->detached++;
}

/* OpenSSL's key log line "LABEL <client random> <secret>" (hex): the two
 * application traffic secrets are kept for detaching, nothing is logged and
 * every other line is ignored. Each secret comes as its direction switches
 * to it, so it also starts that direction's record count. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ",
			  server[] = "SERVER_TRAFFIC_SECRET_0 ";
	mica_uvtls_conn *c = SSL_get_app_data(ssl);
	bool is_client = strncmp(line, client, sizeof(client) - 1) == 0;
	bool is_server = !is_client && strncmp(line, server, sizeof(server) - 1) == 0;
	if (!c || !c->srv || (!is_client && !is_server))
		return;
	if (!c->dt) {
		c->dt = calloc(1, sizeof(*c->dt));
		if (!c->dt)
			return; /* this connection stays attached */
	}
	struct detach *d = c->dt;
	mica_tlsrec_dir *dir = is_client ? &d->rd : &d->wr;
	const char *hex = strchr(line + sizeof(client) - 1, ' ');
	size_t n = 0;
	if (!hex ||
	    mica_hex_decode(hex + 1, strlen(hex + 1), dir->secret, sizeof(dir->secret), &n) != 0 ||
	    (n != 32 && n != 48)) {
		detach_refuse(c);
		return;
	}
	dir->secret_len = (uint8_t)n;
	dir->seq = 0;
	if (is_client)
		d->rd_app = true;
	else
		d->wr_app = true;
}

/* Counts the records protected under the application secrets, and refuses
 * to detach after a KeyUpdate (OpenSSL changed keys we did not follow). */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
		   SSL *ssl, void *arg)
{
	(void)version;
	(void)arg;
	mica_uvtls_conn *c = SSL_get_app_data(ssl);
	const uint8_t *b = buf;
	if (!c || !c->dt || len < 1)
		return;
	struct detach *d = c->dt;
	if (content_type == SSL3_RT_HEADER && len >= MICA_TLSREC_HEADER_LEN &&
	    b[0] == SSL3_RT_APPLICATION_DATA) {
		if (write_p && d->wr_app)
			d->wr.seq++;
		else if (!write_p && d->rd_app)
			d->rd.seq++;
	} else if (content_type == SSL3_RT_HANDSHAKE && b[0] == SSL3_MT_KEY_UPDATE) {
		detach_refuse(c);
	}
}

/* ---- Closing ------------------------------------------------------------ */

static void conn_closed(uv_handle_t *h)
{
	mica_uvtls_conn *c = (mica_uvtls_conn *)h;
	mica_uvtls_server *s = c->srv;
	if (!c->silent && c->cb->on_close)
		c->cb->on_close(c, (mica_uvtls_close_reason)c->reason);
	if (ts && ts->out_owner == c) {
		ts->out_len = 0;
		ts->out_owner = NULL;
	}
	SSL_free(c->ssl);
	detach_free(c->dt);
	struct wheel *w = c->wheel;
	free(c);
	if (s) {
		s->nconns--;
		if (s->freeing && s->nconns == 0 && s->listener_closed)
			server_release(s);
	} else {
		wheel_unref(w);
	}
}

static void hard_close(mica_uvtls_conn *c, mica_uvtls_close_reason reason)
{
	if (c->state == ST_CLOSED)
		return;
	if (c->state != ST_CLOSING)
		c->reason = (uint8_t)reason;
	c->state = ST_CLOSED;
	wheel_del(c);
	if (c->srv) {
		if (c->sprev)
			c->sprev->snext = c->snext;
		else
			c->srv->conns = c->snext;
		if (c->snext)
			c->snext->sprev = c->sprev;
		c->sprev = c->snext = NULL;
	}
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
	(void)status;
	mica_uvtls_conn *c = req->data;
	free(req);
	hard_close(c, MICA_UVTLS_CLOSED_LOCAL);
}

/* close_notify out, queued bytes drained (bounded by the close timeout), then
 * closed with |reason|. */
static void graceful_close(mica_uvtls_conn *c, mica_uvtls_close_reason reason)
{
	if (c->state != ST_OPEN) {
		if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE)
			hard_close(c, reason);
		return;
	}
	take_out(c);
	if (c->ssl) {
		ERR_clear_error();
		(void)SSL_shutdown(c->ssl);
		ERR_clear_error();
	} else {
		static const uint8_t close_notify[] = {1, 0}; /* warning, close_notify */
		(void)seal_record(c, MICA_TLSREC_ALERT, close_notify, sizeof(close_notify));
	}
	if (flush_out(c) != 0)
		return;
	c->reason = (uint8_t)reason;
	c->state = ST_CLOSING;
	uv_read_stop((uv_stream_t *)&c->tcp);
	/* FIN once the queue has drained, then the close. */
	uv_shutdown_t *req = malloc(sizeof(*req));
	if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_done) != 0) {
		free(req);
		hard_close(c, reason);
		return;
	}
	req->data = c;
	uint32_t ticks = c->srv ? c->srv->close_ticks : ms_to_ticks(5000);
	c->deadline = wheel_now(c->wheel) + ticks;
	wheel_add(c, c->deadline);
}

void mica_uvtls_close(mica_uvtls_conn *c)
{
	if (c)
		graceful_close(c, MICA_UVTLS_CLOSED_LOCAL);
}

/* ---- Input -------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	struct tstate *t = tstate();
	if (!t) {
		*buf = uv_buf_init(NULL, 0);
		return;
	}
	*buf = uv_buf_init(t->rbuf, sizeof(t->rbuf));
}

static void opened(mica_uvtls_conn *c)
{
	c->state = ST_OPEN;
	wheel_del(c);
	c->last_rx = c->last_tx = wheel_now(c->wheel);
	open_schedule(c);
	if (c->cb->on_open)
		c->cb->on_open(c);
}

/* Lets OpenSSL consume the lent input: the handshake, then records. */
static void feed(mica_uvtls_conn *c)
{
	struct tstate *t = ts;
	if (!c->ssl) {
		feed_detached(c);
		return;
	}
	if (c->state == ST_HANDSHAKE) {
		take_out(c);
		ERR_clear_error();
		int r = SSL_do_handshake(c->ssl);
		int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
		if (flush_out(c) != 0)
			return;
		if (r == 1) {
			opened(c);
		} else if (e == SSL_ERROR_WANT_READ) {
			return;
		} else {
			ERR_clear_error();
			hard_close(c, MICA_UVTLS_CLOSED_TLS);
			return;
		}
	}
	while (c->state == ST_OPEN) {
		take_out(c);
		ERR_clear_error();
		int n = SSL_read(c->ssl, t->pt, sizeof(t->pt));
		if (n > 0) {
			c->last_rx = wheel_now(c->wheel);
			if (flush_out(c) != 0)
				return;
			c->cb->on_data(c, t->pt, (size_t)n);
			continue;
		}
		int e = SSL_get_error(c->ssl, n);
		if (flush_out(c) != 0)
			return;
		if (e == SSL_ERROR_WANT_READ) {
			/* Idle until the next read: give back the record buffers
			 * (OpenSSL keeps a read buffer that holds a partial record). */
			(void)SSL_free_buffers(c->ssl);
			return;
		}
		ERR_clear_error();
		if (e == SSL_ERROR_ZERO_RETURN)
			graceful_close(c, MICA_UVTLS_CLOSED_PEER);
		else
			hard_close(c, MICA_UVTLS_CLOSED_TLS);
		return;
	}
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	mica_uvtls_conn *c = (mica_uvtls_conn *)st;
	if (nread < 0) {
		hard_close(c, nread == UV_EOF	    ? MICA_UVTLS_CLOSED_PEER
			      : nread == UV_ENOBUFS ? MICA_UVTLS_CLOSED_NOMEM
						    : MICA_UVTLS_CLOSED_IO);
		return;
	}
	if (nread == 0 || (c->state != ST_HANDSHAKE && c->state != ST_OPEN))
		return;
	struct tstate *t = ts;
	t->in = (const uint8_t *)buf->base;
	t->in_len = (size_t)nread;
	t->in_owner = c;
	feed(c);
	if (t->in_owner == c) {
		t->in_owner = NULL;
		t->in_len = 0;
		t->in = NULL;
	}
}

/* ---- Connections -------------------------------------------------------- */

int mica_uvtls_write(mica_uvtls_conn *c, const void *data, size_t len)
{
	if (!c || (!data && len > 0))
		return MICA_EINVAL;
	if (c->state != ST_OPEN)
		return MICA_ESTATE;
	if (!tstate())
		return MICA_ENOMEM;
	const uint8_t *p = data;
	size_t off = 0;
	c->last_tx = wheel_now(c->wheel);
	while (off < len) {
		take_out(c);
		size_t chunk = len - off < RECORD_MAX ? len - off : RECORD_MAX;
		if (!c->ssl) {
			if (seal_record(c, MICA_TLSREC_APPLICATION_DATA, p + off, chunk) != 0) {
				(void)flush_out(c);
				hard_close(c, MICA_UVTLS_CLOSED_TLS);
				return MICA_ETLS;
			}
			off += chunk;
			if (ts->out_len >= OUT_FLUSH_AT) {
				int r = flush_out(c);
				if (r != 0)
					return r;
			}
			continue;
		}
		ERR_clear_error();
		int n = SSL_write(c->ssl, p + off, (int)chunk);
		if (n <= 0) {
			ERR_clear_error();
			(void)flush_out(c);
			hard_close(c, MICA_UVTLS_CLOSED_TLS);
			return MICA_ETLS;
		}
		off += (size_t)n;
		if (ts->out_len >= OUT_FLUSH_AT) {
			int r = flush_out(c);
			if (r != 0)
				return r;
		}
	}
	int r = flush_out(c);
	if (r != 0)
		return r;
	if (c->pending > 0)
		c->drain_wanted = true;
	return 0;
}

size_t mica_uvtls_pending(const mica_uvtls_conn *c)
{
	return c ? c->pending : 0;
}

void mica_uvtls_set_idle_timeout(mica_uvtls_conn *c, unsigned ms)
{
	if (!c)
		return;
	if (ms > IDLE_MAX_MS)
		ms = IDLE_MAX_MS;
	c->idle_ticks = ms_to_ticks(ms);
	if (c->state != ST_OPEN)
		return;
	c->last_rx = wheel_now(c->wheel);
	open_schedule(c);
}

void mica_uvtls_set_user(mica_uvtls_conn *c, void *user)
{
	if (c)
		c->user = user;
}

void *mica_uvtls_user(const mica_uvtls_conn *c)
{
	return c ? c->user : NULL;
}

mica_uvtls_server *mica_uvtls_conn_server(const mica_uvtls_conn *c)
{
	return c ? c->srv : NULL;
}

SSL *mica_uvtls_ssl(const mica_uvtls_conn *c)
{
	return c ? c->ssl : NULL;
}

bool mica_uvtls_detached(const mica_uvtls_conn *c)
{
	return c && c->dt && c->dt->detached;
}

int mica_uvtls_peer_address(const mica_uvtls_conn *c, char *buf, size_t n)
{
	if (!c || !buf || n == 0)
		return MICA_EINVAL;
	struct sockaddr_storage sa;
	int len = sizeof(sa);
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &len) != 0)
		return MICA_EIO;
	int r = sa.ss_family == AF_INET6 ? uv_ip6_name((const struct sockaddr_in6 *)&sa, buf, n)
					 : uv_ip4_name((const struct sockaddr_in *)&sa, buf, n);
	return r == 0 ? 0 : MICA_EINVAL;
}

/* A new SSL object on |c| with the BIO and the back pointer. */
static int conn_ssl(mica_uvtls_conn *c, SSL_CTX *ctx)
{
	c->ssl = SSL_new(ctx);
	if (!c->ssl)
		return MICA_ENOMEM;
	BIO *b = BIO_new(bio_method);
	if (!b)
		return MICA_ENOMEM;
	BIO_set_data(b, c);
	SSL_set_bio(c->ssl, b, b);
	SSL_set_app_data(c->ssl, c);
	return 0;
}

/* ---- TLS policy and session tickets ------------------------------------- */

static int ctx_policy(SSL_CTX *ctx)
{
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_cipher_list(ctx, MICA_TLS12_CIPHERS) ||
	    !SSL_CTX_set_ciphersuites(ctx, MICA_TLS13_CIPHERS))
		return MICA_ECRYPTO;
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
					 SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return 0;
}

static int ticket_key_derive(mica_uvtls_server *s, uint64_t period, struct ticket_key *k)
{
	uint8_t info[sizeof(TICKET_INFO) - 1 + 8];
	uint8_t okm[TICKET_NAME_LEN + TICKET_AES_LEN + TICKET_HMAC_LEN];
	memcpy(info, TICKET_INFO, sizeof(TICKET_INFO) - 1);
	for (int i = 0; i < 8; i++)
		info[sizeof(TICKET_INFO) - 1 + i] = (uint8_t)(period >> (56 - 8 * i));
	int r = mica_hkdf_sha256(NULL, 0, s->ticket_secret, sizeof(s->ticket_secret), info,
				 sizeof(info), okm, sizeof(okm));
	if (r == 0) {
		memcpy(k->name, okm, TICKET_NAME_LEN);
		memcpy(k->aes, okm + TICKET_NAME_LEN, TICKET_AES_LEN);
		memcpy(k->hmac, okm + TICKET_NAME_LEN + TICKET_AES_LEN, TICKET_HMAC_LEN);
		k->period = period;
		k->set = true;
	}
	mica_wipe(okm, sizeof(okm));
	return r;
}

/* The keys of period-1, period and period+1, derived when the period moved. */
static int ticket_keys(mica_uvtls_server *s, uint64_t *period_out)
{
	uint64_t period = (uint64_t)time(NULL) / s->ticket_period_s;
	*period_out = period;
	if (s->keys[1].set && s->keys[1].period == period)
		return 0;
	for (int i = 0; i < TICKET_KEYS; i++) {
		int r = ticket_key_derive(s, period - 1 + (uint64_t)i, &s->keys[i]);
		if (r != 0)
			return r;
	}
	return 0;
}

static int ticket_mac_key(EVP_MAC_CTX *hctx, uint8_t *key)
{
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, TICKET_HMAC_LEN),
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
		OSSL_PARAM_construct_end()};
	return EVP_MAC_CTX_set_params(hctx, params);
}

/* OpenSSL's ticket key callback: encrypt under the current period's key;
 * decrypt under the key the ticket names if it is one of the three periods
 * around now (2: good, and issue a new ticket), else 0: full handshake. Tickets are AES-256-CBC +
 * HMAC-SHA256, OpenSSL's format. */
static int ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
		     EVP_MAC_CTX *hctx, int enc)
{
	mica_uvtls_server *s = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	uint64_t period;
	if (!s || ticket_keys(s, &period) != 0)
		return -1;
	if (enc) {
		const struct ticket_key *k = &s->keys[1];
		if (RAND_bytes(iv, 16) != 1)
			return -1;
		memcpy(key_name, k->name, TICKET_NAME_LEN);
		if (EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1 ||
		    ticket_mac_key(hctx, (uint8_t *)k->hmac) != 1)
			return -1;
		return 1;
	}
	for (int i = 0; i < TICKET_KEYS; i++) {
		struct ticket_key *k = &s->keys[i];
		if (!mica_ct_equal(key_name, k->name, TICKET_NAME_LEN))
			continue;
		if (ticket_mac_key(hctx, k->hmac) != 1 ||
		    EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
			return -1;
		/* Always renew: an OpenSSL client spends a TLS 1.3 session once it
		 * resumed, and RFC 8446 (C.4) asks for single-use tickets, so every
		 * resumption hands the device its next ticket. */
		return 2;
	}
	return 0;
}

static int read_secret(const char *path, uint8_t *out, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return MICA_ECONFIG;
	int rc = MICA_ECONFIG;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size != len)
		goto out;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, out + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto out;
		got += (size_t)n;
	}
	rc = 0;
out:
	if (rc != 0)
		mica_wipe(out, len);
	close(fd);
	return rc;
}

static int server_ctx(mica_uvtls_server *s, const mica_uvtls_server_options *opt)
{
	s->ctx = SSL_CTX_new(TLS_server_method());
	if (!s->ctx)
		return MICA_ENOMEM;
	int r = ctx_policy(s->ctx);
	if (r != 0)
		return r;
	if (SSL_CTX_use_certificate_chain_file(s->ctx, opt->cert_file) != 1 ||
	    SSL_CTX_use_PrivateKey_file(s->ctx, opt->key_file, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(s->ctx) != 1) {
		MICA_LOG(MICA_LOG_ERROR, "uvtls: cannot use certificate %s with key %s",
			 opt->cert_file, opt->key_file);
		return MICA_ECONFIG;
	}
	if (opt->ticket_secret_file) {
		r = read_secret(opt->ticket_secret_file, s->ticket_secret,
				sizeof(s->ticket_secret));
		if (r != 0) {
			MICA_LOG(MICA_LOG_ERROR,
				 "uvtls: ticket secret %s must be a regular file of exactly %d "
				 "bytes",
				 opt->ticket_secret_file, MICA_UVTLS_TICKET_SECRET_LEN);
			return r;
		}
	} else if (mica_random(s->ticket_secret, sizeof(s->ticket_secret)) != 0) {
		return MICA_ECRYPTO;
	}
	s->ticket_period_s = opt->ticket_period_s ? opt->ticket_period_s : 3600;
	uint64_t period;
	r = ticket_keys(s, &period);
	if (r != 0)
		return r;
	SSL_CTX_set_app_data(s->ctx, s);
	/* Stateless tickets only: no server-side session cache to grow. */
	SSL_CTX_set_session_cache_mode(s->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_timeout(s->ctx, (long)s->ticket_period_s);
	static const unsigned char sid_ctx[] = "mica-uvtls";
	if (SSL_CTX_set_session_id_context(s->ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1 ||
	    SSL_CTX_set_num_tickets(s->ctx, opt->tickets ? opt->tickets : 1) != 1 ||
	    SSL_CTX_set_tlsext_ticket_key_evp_cb(s->ctx, ticket_cb) != 1)
		return MICA_ECRYPTO;
	if (opt->detach_idle_ms) {
		SSL_CTX_set_keylog_callback(s->ctx, keylog_cb);
		SSL_CTX_set_msg_callback(s->ctx, msg_cb);
	}
	return 0;
}

/* ---- Server ------------------------------------------------------------- */

static void on_connection(uv_stream_t *ls, int status)
{
	mica_uvtls_server *s = ls->data;
	if (status < 0 || s->freeing)
		return;
	mica_uvtls_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return;
	if (uv_tcp_init(s->loop, &c->tcp) != 0) {
		free(c);
		return;
	}
	c->srv = s;
	c->cb = &s->cb;
	c->wheel = s->wheel;
	c->wslot = -1;
	c->state = ST_HANDSHAKE;
	c->sprev = NULL;
	c->snext = s->conns;
	if (s->conns)
		s->conns->sprev = c;
	s->conns = c;
	s->nconns++;
	if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
		c->silent = true;
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return;
	}
	(void)uv_tcp_nodelay(&c->tcp, 1);
	if (s->keepalive_s)
		(void)uv_tcp_keepalive(&c->tcp, 1, s->keepalive_s);
	if (!tstate() || conn_ssl(c, s->ctx) != 0) {
		hard_close(c, MICA_UVTLS_CLOSED_NOMEM);
		return;
	}
	SSL_set_accept_state(c->ssl);
	c->deadline = wheel_now(s->wheel) + s->handshake_ticks;
	wheel_add(c, c->deadline);
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0)
		hard_close(c, MICA_UVTLS_CLOSED_IO);
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *sa)
{
	memset(sa, 0, sizeof(*sa));
	if (port < 0 || port > 65535)
		return MICA_EINVAL;
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0)
		return 0;
	if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)sa) == 0)
		return 0;
	return MICA_EINVAL;
}

static void server_release(mica_uvtls_server *s)
{
	SSL_CTX_free(s->ctx);
	wheel_unref(s->wheel);
	mica_wipe(s->ticket_secret, sizeof(s->ticket_secret));
	mica_wipe(s->keys, sizeof(s->keys));
	free(s);
}

static void listener_closed(uv_handle_t *h)
{
	mica_uvtls_server *s = h->data;
	s->listener_closed = true;
	if (s->freeing && s->nconns == 0)
		server_release(s);
}

/* Binds and listens, SO_REUSEPORT set on the socket before bind(). */
static int server_listen(mica_uvtls_server *s, const mica_uvtls_server_options *opt)
{
	struct sockaddr_storage sa;
	if (parse_addr(opt->host, opt->port, &sa) != 0)
		return MICA_EINVAL;
	if (uv_tcp_init_ex(s->loop, &s->listener, sa.ss_family) != 0)
		return MICA_EIO;
	s->listener.data = s;
	s->listener_open = true;
	uv_os_fd_t fd;
	int one = 1, r = MICA_EIO;
	if (uv_fileno((uv_handle_t *)&s->listener, &fd) != 0)
		goto fail;
	if (opt->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
		goto fail;
	if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0) != 0 ||
	    uv_listen((uv_stream_t *)&s->listener, opt->backlog > 0 ? opt->backlog : 4096,
		      on_connection) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "uvtls: cannot listen on %s port %d", opt->host,
			 opt->port);
		goto fail;
	}
	int len = sizeof(sa);
	if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&sa, &len) != 0)
		goto fail;
	s->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
						 : ((struct sockaddr_in *)&sa)->sin_port);
	return 0;
fail:
	return r;
}

int mica_uvtls_server_new(uv_loop_t *loop, const mica_uvtls_server_options *opt,
			  const mica_uvtls_callbacks *cb, void *user, mica_uvtls_server **out)
{
	if (out)
		*out = NULL;
	if (!loop || !opt || !cb || !out || !cb->on_data || !opt->host || !opt->cert_file ||
	    !opt->key_file)
		return MICA_EINVAL;
	if (!tstate())
		return MICA_ENOMEM;
	mica_uvtls_server *s = calloc(1, sizeof(*s));
	if (!s)
		return MICA_ENOMEM;
	s->loop = loop;
	s->cb = *cb;
	s->user = user;
	s->keepalive_s = opt->keepalive_s;
	s->handshake_ticks =
		ms_to_ticks(opt->handshake_timeout_ms ? opt->handshake_timeout_ms : 10000);
	s->close_ticks = ms_to_ticks(opt->close_timeout_ms ? opt->close_timeout_ms : 5000);
	s->detach_ticks =
		ms_to_ticks(opt->detach_idle_ms < IDLE_MAX_MS ? opt->detach_idle_ms : IDLE_MAX_MS);
	int r = server_ctx(s, opt);
	if (r == 0)
		r = server_listen(s, opt);
	if (r == 0) {
		s->wheel = wheel_new(loop);
		if (!s->wheel)
			r = MICA_ENOMEM;
	}
	if (r != 0) {
		/* A listener that got a socket is released by its close callback,
		 * with |s|, when the loop next runs. */
		s->freeing = true;
		if (s->listener_open)
			uv_close((uv_handle_t *)&s->listener, listener_closed);
		else
			server_release(s);
		return r;
	}
	*out = s;
	return 0;
}

void mica_uvtls_server_free(mica_uvtls_server *s)
{
	if (!s || s->freeing)
		return;
	s->freeing = true;
	uv_close((uv_handle_t *)&s->listener, listener_closed);
	while (s->conns)
		hard_close(s->conns, MICA_UVTLS_CLOSED_LOCAL);
}

int mica_uvtls_server_port(const mica_uvtls_server *s)
{
	return s ? s->port : 0;
}

void *mica_uvtls_server_user(const mica_uvtls_server *s)
{
	return s ? s->user : NULL;
}

size_t mica_uvtls_server_connections(const mica_uvtls_server *s)
{
	return s ? s->nconns : 0;
}

/* ---- Client ------------------------------------------------------------- */

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	mica_uvtls_conn *c = SSL_get_app_data(ssl);
	if (c && c->cb->on_session && c->state != ST_CLOSED)
		c->cb->on_session(c, sess);
	return 0; /* OpenSSL keeps its reference */
}

int mica_uvtls_client_ctx_new(const char *ca_file, const char *cert_file, const char *key_file,
			      SSL_CTX **out)
{
	if (out)
		*out = NULL;
	if (!ca_file || !out || (!cert_file) != (!key_file))
		return MICA_EINVAL;
	if (pthread_once(&once, init_once) != 0 || !bio_method)
		return MICA_ENOMEM;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		return MICA_ENOMEM;
	int r = ctx_policy(ctx);
	if (r != 0)
		goto fail;
	r = MICA_ECONFIG;
	if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)
		goto fail;
	if (cert_file && (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
			  SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1))
		goto fail;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx,
				       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, new_session);
	*out = ctx;
	return 0;
fail:
	ERR_clear_error();
	SSL_CTX_free(ctx);
	return r;
}

static void connected(uv_connect_t *req, int status)
{
	mica_uvtls_conn *c = req->data;
	free(req);
	if (c->state != ST_CONNECTING)
		return;
	if (status < 0) {
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return;
	}
	c->state = ST_HANDSHAKE;
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) {
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return;
	}
	feed(c); /* writes the ClientHello */
}

/* The client wheel of |loop| on this thread. */
static struct wheel *client_wheel(uv_loop_t *loop)
{
	struct tstate *t = ts;
	if (t->cwheel && t->cwheel_loop == loop) {
		t->cwheel->refs++;
		return t->cwheel;
	}
	struct wheel *w = wheel_new(loop);
	if (!w)
		return NULL;
	/* A wheel of another loop stays with its connections; this loop gets
	 * its own. */
	t->cwheel = w;
	t->cwheel_loop = loop;
	return w;
}

static int client_setup(mica_uvtls_conn *c, SSL_CTX *ctx, const mica_uvtls_connect_options *opt)
{
	if (conn_ssl(c, ctx) != 0)
		return MICA_ENOMEM;
	SSL_set_connect_state(c->ssl);
	if (opt->server_name) {
		if (SSL_set_tlsext_host_name(c->ssl, opt->server_name) != 1 ||
		    SSL_set1_host(c->ssl, opt->server_name) != 1)
			return MICA_EINVAL;
	} else if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), opt->host) != 1) {
		return MICA_EINVAL;
	}
	if (opt->session && SSL_set_session(c->ssl, opt->session) != 1)
		return MICA_EINVAL;
	return 0;
}

int mica_uvtls_connect(uv_loop_t *loop, SSL_CTX *ctx, const mica_uvtls_connect_options *opt,
		       const mica_uvtls_callbacks *cb, void *user, mica_uvtls_conn **out)
{
	if (out)
		*out = NULL;
	if (!loop || !ctx || !opt || !opt->host || !cb || !cb->on_data || !out)
		return MICA_EINVAL;
	struct sockaddr_storage sa, src;
	if (parse_addr(opt->host, opt->port, &sa) != 0 ||
	    (opt->source &&
	     (parse_addr(opt->source, 0, &src) != 0 || src.ss_family != sa.ss_family)))
		return MICA_EINVAL;
	if (!tstate())
		return MICA_ENOMEM;
	mica_uvtls_conn *c = calloc(1, sizeof(*c));
	uv_connect_t *req = malloc(sizeof(*req));
	if (!c || !req) {
		free(c);
		free(req);
		return MICA_ENOMEM;
	}
	c->cb = cb;
	c->user = user;
	c->wslot = -1;
	c->state = ST_CONNECTING;
	c->wheel = client_wheel(loop);
	if (!c->wheel) {
		free(c);
		free(req);
		return MICA_ENOMEM;
	}
	if (uv_tcp_init_ex(loop, &c->tcp, sa.ss_family) != 0) {
		wheel_unref(c->wheel);
		free(c);
		free(req);
		return MICA_EIO;
	}
	int r = client_setup(c, ctx, opt);
	if (r == 0 && opt->source) {
		uv_os_fd_t fd;
		int one = 1;
		/* Let connect() pick the port per destination, so one source address
		 * serves more than the ephemeral range. */
		if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && sa.ss_family == AF_INET)
			(void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
					 sizeof(one));
		if (uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0) != 0)
			r = MICA_EIO;
	}
	req->data = c;
	if (r == 0 && uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)&sa, connected) != 0)
		r = MICA_EIO;
	if (r != 0) {
		free(req);
		c->silent = true;
		hard_close(c, MICA_UVTLS_CLOSED_IO);
		return r;
	}
	(void)uv_tcp_nodelay(&c->tcp, 1);
	c->deadline = wheel_now(c->wheel) + ms_to_ticks(opt->timeout_ms ? opt->timeout_ms : 10000);
	wheel_add(c, c->deadline);
	*out = c;
	return 0;
}
