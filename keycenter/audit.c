/* audit.c - the Key Center's audit trail (see audit.h): the canonical record
 * hash, the group-committing fail-closed writer thread, the JSON-lines
 * export, the offline verifier that names the first bad sequence number, and
 * the online MAC check.
 */
#include "keycenter/audit.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "crypto.h"
#include "log.h"

#define DOMAIN_RECORD "mica-audit-v1"
#define DOMAIN_CHECKPOINT "mica-audit-checkpoint-v1"
#define NULL_LEN 0xFFFFFFFFu
#define PAGE_ROWS "1000"

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_us(void)
{
	return mica_clock_now_us();
}

static void be32(uint8_t out[4], uint32_t v)
{
	out[0] = (uint8_t)(v >> 24);
	out[1] = (uint8_t)(v >> 16);
	out[2] = (uint8_t)(v >> 8);
	out[3] = (uint8_t)v;
}

static void be64(uint8_t out[8], uint64_t v)
{
	be32(out, (uint32_t)(v >> 32));
	be32(out + 4, (uint32_t)v);
}

/* Strict UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF) without NUL: what PostgreSQL text and JSON strings accept. */
static int utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t need;
		uint32_t cp;
		if (c < 0x80) {
			if (c == 0)
				return 0;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		if (n - i - 1 < need)
			return 0;
		for (size_t k = 1; k <= need; k++) {
			unsigned b = s[i + k];
			if ((b & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (b & 0x3f);
		}
		if (need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
			return 0;
		if (need == 3 && (cp < 0x10000 || cp > 0x10ffff))
			return 0;
		i += need + 1;
	}
	return 1;
}

/* ---- canonical encoding -------------------------------------------------- */

/* A text field: |p| with |len| bytes, or SQL NULL when |p| is NULL. */
struct field {
	const char *p;
	size_t len;
};

/* One record in the form every path (writer, database, JSON) reduces to. */
struct entry {
	uint64_t seq;
	int64_t ts_us;
	struct field principal, client, op, key_name, context_hash, result;
	int has_version;
	int32_t key_version;
	uint8_t prev_hash[KC_AUDIT_HASH_LEN];
};

static struct field cstr(const char *s)
{
	struct field f = {s, s ? strlen(s) : 0};
	return f;
}

static int put_field(EVP_MD_CTX *md, const void *p, size_t len, int is_null)
{
	uint8_t be[4];
	if (!is_null && len >= NULL_LEN)
		return 0;
	be32(be, is_null ? NULL_LEN : (uint32_t)len);
	if (!EVP_DigestUpdate(md, be, 4))
		return 0;
	return is_null || len == 0 || EVP_DigestUpdate(md, p, len);
}

static int put_text(EVP_MD_CTX *md, struct field f)
{
	return put_field(md, f.p, f.len, f.p == NULL);
}

/* hash = SHA-256(canonical encoding of |e|); see audit.h. |md| is a
 * context the caller owns and may reuse. */
static int entry_hash_with(EVP_MD_CTX *md, const struct entry *e, uint8_t out[KC_AUDIT_HASH_LEN])
{
	uint8_t seq[8], ts[8], ver[4];
	unsigned int n = 0;
	be64(seq, e->seq);
	be64(ts, (uint64_t)e->ts_us);
	be32(ver, (uint32_t)e->key_version);
	int ok = EVP_DigestInit_ex(md, mica_md_sha256(), NULL) &&
		 put_field(md, DOMAIN_RECORD, strlen(DOMAIN_RECORD), 0) &&
		 put_field(md, seq, 8, 0) && put_field(md, ts, 8, 0) &&
		 put_text(md, e->principal) && put_text(md, e->client) && put_text(md, e->op) &&
		 put_text(md, e->key_name) && put_field(md, ver, 4, !e->has_version) &&
		 put_text(md, e->context_hash) && put_text(md, e->result) &&
		 put_field(md, e->prev_hash, KC_AUDIT_HASH_LEN, 0) &&
		 EVP_DigestFinal_ex(md, out, &n) && n == KC_AUDIT_HASH_LEN;
	return ok ? 0 : MICA_ECRYPTO;
}

static int entry_hash(const struct entry *e, uint8_t out[KC_AUDIT_HASH_LEN])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md)
		return MICA_ENOMEM;
	int rc = entry_hash_with(md, e, out);
	EVP_MD_CTX_free(md);
	return rc;
}

/* The entry of |rec| at |seq|; strings borrowed from |rec|. MICA_EINVAL if
 * a required field is missing. */
static int record_entry(uint64_t seq, int64_t ts_us, const kc_audit_record *rec,
			const uint8_t prev_hash[32], struct entry *e)
{
	if (!rec || !prev_hash || !rec->principal || !rec->client || !rec->op || !rec->result)
		return MICA_EINVAL;
	*e = (struct entry){
		.seq = seq,
		.ts_us = ts_us,
		.principal = cstr(rec->principal),
		.client = cstr(rec->client),
		.op = cstr(rec->op),
		.key_name = cstr(rec->key_name),
		.context_hash = cstr(rec->context_hash),
		.result = cstr(rec->result),
		.has_version = rec->key_version > 0,
		.key_version = rec->key_version > 0 ? rec->key_version : 0,
	};
	memcpy(e->prev_hash, prev_hash, KC_AUDIT_HASH_LEN);
	return 0;
}

int kc_audit_record_hash(uint64_t seq, int64_t ts_us, const kc_audit_record *rec,
			 const uint8_t prev_hash[32], uint8_t hash[32])
{
	struct entry e;
	if (!hash)
		return MICA_EINVAL;
	int rc = record_entry(seq, ts_us, rec, prev_hash, &e);
	return rc ? rc : entry_hash(&e, hash);
}

int kc_audit_checkpoint_digest(uint64_t seq, int64_t ts_us, const uint8_t head_hash[32],
			       uint8_t digest[32])
{
	uint8_t pre[sizeof(DOMAIN_CHECKPOINT) - 1 + 8 + 8 + KC_AUDIT_HASH_LEN];
	size_t d = sizeof(DOMAIN_CHECKPOINT) - 1;
	unsigned int n = 0;
	if (!head_hash || !digest)
		return MICA_EINVAL;
	memcpy(pre, DOMAIN_CHECKPOINT, d);
	be64(pre + d, seq);
	be64(pre + d + 8, (uint64_t)ts_us);
	memcpy(pre + d + 16, head_hash, KC_AUDIT_HASH_LEN);
	if (!EVP_Digest(pre, sizeof(pre), digest, &n, mica_md_sha256(), NULL) || n != 32)
		return MICA_ECRYPTO;
	return 0;
}

static int entry_mac(const uint8_t key[KC_AUDIT_MAC_KEY_LEN], const uint8_t hash[32],
		     uint8_t mac[32])
{
	return mica_hmac_sha256(key, KC_AUDIT_MAC_KEY_LEN, hash, KC_AUDIT_HASH_LEN, mac);
}

/* ---- database rows -------------------------------------------------------- */

/* Column list shared by every query that reads whole records; the binary
 * columns come back as hex. */
#define RECORD_COLS                                                                                \
	"seq, ts_us, principal, client, op, key_name, key_version, context_hash, result,"          \
	" encode(prev_hash, 'hex'), encode(hash, 'hex'), encode(mac, 'hex')"

static int hex32(const char *s, uint8_t out[32])
{
	size_t n = 0;
	if (!s || strlen(s) != 64 || mica_hex_decode(s, 64, out, 32, &n) != 0 || n != 32)
		return MICA_EBADENCODING;
	return 0;
}

static struct field col_text(const PGresult *res, int row, int col)
{
	struct field f = {mica_db_get(res, row, col), 0};
	if (f.p)
		f.len = (size_t)PQgetlength(res, row, col);
	return f;
}

/* Parses row |row| of a RECORD_COLS result starting at column |c0| into |e|,
 * |hash| and |mac|. Borrowed from |res|. */
static int row_entry(const PGresult *res, int row, int c0, struct entry *e, uint8_t hash[32],
		     uint8_t mac[32])
{
	int64_t seq = 0, kv = 0;
	memset(e, 0, sizeof(*e));
	if (mica_db_get_int64(res, row, c0, &seq) || seq < 1 ||
	    mica_db_get_int64(res, row, c0 + 1, &e->ts_us))
		return MICA_EDB;
	e->seq = (uint64_t)seq;
	e->principal = col_text(res, row, c0 + 2);
	e->client = col_text(res, row, c0 + 3);
	e->op = col_text(res, row, c0 + 4);
	e->key_name = col_text(res, row, c0 + 5);
	if (mica_db_get(res, row, c0 + 6)) {
		if (mica_db_get_int64(res, row, c0 + 6, &kv) || kv < INT32_MIN || kv > INT32_MAX)
			return MICA_EDB;
		e->has_version = 1;
		e->key_version = (int32_t)kv;
	}
	e->context_hash = col_text(res, row, c0 + 7);
	e->result = col_text(res, row, c0 + 8);
	if (!e->principal.p || !e->client.p || !e->op.p || !e->result.p)
		return MICA_EDB;
	if (hex32(mica_db_get(res, row, c0 + 9), e->prev_hash) ||
	    hex32(mica_db_get(res, row, c0 + 10), hash) ||
	    hex32(mica_db_get(res, row, c0 + 11), mac))
		return MICA_EDB;
	return 0;
}

/* ---- array literals for unnest() ------------------------------------------ */

/* A growable text buffer; |oom| sticks once an allocation failed. */
struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};

static void sb_reserve(struct sbuf *b, size_t more)
{
	if (b->oom || b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *np = realloc(b->p, cap);
	if (!np) {
		b->oom = 1;
		return;
	}
	b->p = np;
	b->cap = cap;
}

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_putc(struct sbuf *b, char c)
{
	sb_put(b, &c, 1);
}

/* Starts the next element of an array literal (after "{"). */
static void sb_elem_sep(struct sbuf *b)
{
	if (b->len > 1)
		sb_putc(b, ',');
}

/* Appends one element of a PostgreSQL array literal: NULL, or the string in
 * double quotes with '"' and '\' backslash-escaped (array_in's rules). The
 * array travels as one parameter; no SQL text is built from it. Runs
 * without special characters are copied whole. */
static void sb_elem_text(struct sbuf *b, const char *s)
{
	sb_elem_sep(b);
	if (!s) {
		sb_put(b, "NULL", 4);
		return;
	}
	sb_putc(b, '"');
	for (;;) {
		size_t run = strcspn(s, "\"\\");
		sb_put(b, s, run);
		s += run;
		if (!*s)
			break;
		sb_putc(b, '\\');
		sb_putc(b, *s++);
	}
	sb_putc(b, '"');
}

static void sb_elem_int(struct sbuf *b, int64_t v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%" PRId64, v);
	sb_elem_sep(b);
	sb_put(b, num, (size_t)n);
}

/* A hash as lower-case hex; hex needs neither quotes nor escapes. */
static void sb_elem_hex(struct sbuf *b, const uint8_t p[KC_AUDIT_HASH_LEN])
{
	char hex[2 * KC_AUDIT_HASH_LEN + 1];
	sb_elem_sep(b);
	if (mica_hex_encode(p, KC_AUDIT_HASH_LEN, hex, sizeof(hex)) != 0) {
		b->oom = 1; /* cannot happen: the buffer fits */
		return;
	}
	sb_put(b, hex, 2 * KC_AUDIT_HASH_LEN);
}

/* ---- the writer ------------------------------------------------------------ */

/* One pending append. kc_audit_append()'s is on its caller's stack and
 * |rec| is borrowed while the caller waits: |next| is guarded by
 * kc_audit.mu; once the writer took the waiter off the queue it owns seq
 * and rc until it posts |done|, and the post is its last touch (sem_post
 * makes the results visible to the waiter). A semaphore rather than a
 * condition variable: the writer wakes each waiter without holding the
 * mutex, and the waiter does not take the mutex again, so a committed batch
 * costs one wake-up per waiter instead of a stampede on kc_audit.mu.
 * kc_audit_submit()'s is on the heap with its own copy of the record
 * (|own| and the strings after the struct) and |cb| instead of |done|; the
 * writer calls |cb| and frees it. */
struct waiter {
	const kc_audit_record *rec;
	int64_t ts_us;
	uint64_t seq;
	int rc;
	sem_t done;
	kc_audit_done_fn cb;
	void *cb_arg;
	kc_audit_record own;
	struct waiter *next;
};

/* Per-record results of a batch. */
struct slot {
	uint8_t prev[KC_AUDIT_HASH_LEN];
	uint8_t hash[KC_AUDIT_HASH_LEN];
	uint8_t mac[KC_AUDIT_HASH_LEN];
};

enum {
	ARR_SEQ,
	ARR_TS,
	ARR_PRINCIPAL,
	ARR_CLIENT,
	ARR_OP,
	ARR_KEY,
	ARR_VERSION,
	ARR_CTX,
	ARR_RESULT,
	ARR_PREV,
	ARR_HASH,
	ARR_MAC,
	NARR
};

struct kc_audit {
	pthread_mutex_t mu;
	pthread_cond_t work; /* the writer waits for appends (CLOCK_MONOTONIC) */
	struct waiter *qhead, *qtail;
	int stopping;
	kc_audit_stats stats;
	pthread_t thread;

	/* Everything below is the writer thread's alone (and kc_audit_start's
	 * before the thread exists). */
	mica_db *db;
	uint8_t mac_key[KC_AUDIT_MAC_KEY_LEN];
	EVP_MAC_CTX *mac_ctx; /* keyed with mac_key once, reused per record */
	EVP_MD_CTX *md_ctx;   /* reused for every record hash */
	kc_audit_sign_fn sign;
	void *sign_arg;
	kc_audit_options opt;
	uint64_t head_seq; /* last committed record, 0 if none */
	uint8_t head_hash[KC_AUDIT_HASH_LEN];
	uint64_t cp_seq;  /* last committed checkpoint, 0 if none */
	int64_t cp_at_ms; /* monotonic time of the last checkpoint (or attempt) */
	int need_resync;  /* a batch failed: re-read the head before the next */
	int resumed;	  /* the head was adopted once: later loads resynchronise */
	/* The newest signed head known to be genuine: the publish file's newest
	 * at start, then each checkpoint this writer commits. The log must
	 * always hold it (seq 0: none yet). */
	uint64_t anchor_seq;
	uint8_t anchor_hash[KC_AUDIT_HASH_LEN];
	int publish_fd; /* -1: no publish file */
	struct waiter **batch;
	struct slot *slots;
	struct sbuf arr[NARR];
};

/* What load_head_tx reads. */
struct head_rows {
	uint64_t anchor_seq; /* in: the record to read into |anchor| (0: none) */
	PGresult *last;	     /* RECORD_COLS of the record with the largest seq */
	PGresult *cp;	     /* seq, head_hash hex, hash hex of its record (or NULL) */
	PGresult *anchor;    /* hash hex of record anchor_seq (no row: missing) */
};

static void head_rows_clear(struct head_rows *h)
{
	PQclear(h->last);
	PQclear(h->cp);
	PQclear(h->anchor);
	h->last = h->cp = h->anchor = NULL;
}

static int load_head_tx(mica_db *db, void *arg)
{
	struct head_rows *h = arg;
	char seq[24];
	head_rows_clear(h); /* a retried transaction starts over */
	int rc = mica_db_exec(
		db, "SELECT " RECORD_COLS " FROM keycenter.audit ORDER BY seq DESC LIMIT 1", 0,
		NULL, &h->last);
	if (!rc)
		rc = mica_db_exec(db,
				  "SELECT c.seq, encode(c.head_hash, 'hex'), encode(a.hash, 'hex')"
				  " FROM keycenter.audit_checkpoint c"
				  " LEFT JOIN keycenter.audit a ON a.seq = c.seq"
				  " ORDER BY c.seq DESC LIMIT 1",
				  0, NULL, &h->cp);
	if (rc || !h->anchor_seq)
		return rc;
	snprintf(seq, sizeof(seq), "%" PRIu64, h->anchor_seq);
	const char *p[1] = {seq};
	return mica_db_exec(
		db, "SELECT encode(hash, 'hex') FROM keycenter.audit WHERE seq = $1::bigint", 1, p,
		&h->anchor);
}

/* The log must still hold the newest genuine signed head (a->anchor_*) and
 * must not end before what this writer already committed: a log cut back to
 * an earlier checkpoint, or rewritten behind a published one, is refused. */
static int check_anchor(const kc_audit *a, const struct head_rows *h, uint64_t seq, uint64_t cp_seq)
{
	uint8_t rec[32];
	if (a->resumed && seq < a->head_seq) {
		MICA_LOG(MICA_LOG_ERROR,
			 "audit: the log now ends at seq %" PRIu64 ", before seq %" PRIu64 " that"
			 " this writer committed: it was cut back; refusing to extend it",
			 seq, a->head_seq);
		return MICA_EAUDIT;
	}
	if (!a->anchor_seq)
		return 0;
	if (cp_seq < a->anchor_seq || PQntuples(h->anchor) != 1 ||
	    hex32(mica_db_get(h->anchor, 0, 0), rec) || !mica_ct_equal(rec, a->anchor_hash, 32)) {
		MICA_LOG(MICA_LOG_ERROR,
			 "audit: the signed head at seq %" PRIu64 " (published, or committed by"
			 " this writer) is not in the log, whose newest checkpoint is at seq"
			 " %" PRIu64 ": the log was cut back or rewritten; refusing to extend it",
			 a->anchor_seq, cp_seq);
		return MICA_EAUDIT;
	}
	return 0;
}

/* Checks the stored head record and the last checkpoint and adopts them.
 * Returns MICA_EAUDIT if they do not verify. */
static int adopt_head(kc_audit *a, const struct head_rows *h)
{
	uint64_t seq = 0, cp_seq = 0;
	uint8_t hash[KC_AUDIT_HASH_LEN] = {0};
	if (PQntuples(h->last) > 0) {
		struct entry e;
		uint8_t stored[32], mac[32], want[32];
		if (row_entry(h->last, 0, 0, &e, stored, mac) != 0) {
			MICA_LOG(MICA_LOG_ERROR, "audit: the last record is unreadable");
			return MICA_EAUDIT;
		}
		if (entry_hash(&e, hash) || !mica_ct_equal(hash, stored, 32)) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: record %" PRIu64 " does not match its hash; refusing to"
				 " extend a tampered log",
				 e.seq);
			return MICA_EAUDIT;
		}
		if (entry_mac(a->mac_key, hash, want) || !mica_ct_equal(want, mac, 32)) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: the MAC of record %" PRIu64 " does not verify (tampered,"
				 " or the wrong MAC key); refusing to extend the log",
				 e.seq);
			return MICA_EAUDIT;
		}
		seq = e.seq;
	}
	if (PQntuples(h->cp) > 0) {
		int64_t s = 0;
		uint8_t head[32], rec[32];
		if (mica_db_get_int64(h->cp, 0, 0, &s) || s < 1 ||
		    hex32(mica_db_get(h->cp, 0, 1), head)) {
			MICA_LOG(MICA_LOG_ERROR, "audit: the last checkpoint is unreadable");
			return MICA_EAUDIT;
		}
		cp_seq = (uint64_t)s;
		if (cp_seq > seq || hex32(mica_db_get(h->cp, 0, 2), rec) ||
		    !mica_ct_equal(head, rec, 32)) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: the checkpoint at seq %" PRIu64 " does not match record"
				 " %" PRIu64 " (records end at %" PRIu64 "); refusing to extend"
				 " the log",
				 cp_seq, cp_seq, seq);
			return MICA_EAUDIT;
		}
	}
	if (check_anchor(a, h, seq, cp_seq) != 0)
		return MICA_EAUDIT;
	a->head_seq = seq;
	memcpy(a->head_hash, hash, sizeof(hash));
	a->cp_seq = cp_seq;
	a->need_resync = 0;
	a->resumed = 1;
	return 0;
}

/* (Re)reads the chain head from the database, reconnecting if needed. */
static int load_head(kc_audit *a)
{
	struct head_rows h = {.anchor_seq = a->anchor_seq};
	int rc = mica_db_tx(a->db, MICA_DB_REPEATABLE_READ, load_head_tx, &h);
	if (rc) {
		MICA_LOG(MICA_LOG_ERROR, "audit: cannot read the chain head: %s sqlstate=%s",
			 mica_strerror(rc),
			 mica_db_sqlstate(a->db)[0] ? mica_db_sqlstate(a->db) : "-");
	} else {
		rc = adopt_head(a, &h);
	}
	head_rows_clear(&h);
	return rc;
}

/* A signed checkpoint ready to insert. */
struct cp {
	kc_audit_checkpoint raw; /* what is published */
	uint64_t seq;
	int64_t ts_us;
	char seq_s[24], ts_s[24];
	char head_hex[2 * KC_AUDIT_HASH_LEN + 1];
	char *sig_hex;
};

static int cp_make(kc_audit *a, uint64_t seq, const uint8_t head[32], struct cp *cp)
{
	uint8_t digest[32];
	uint8_t *sig = NULL;
	size_t sig_len = 0;
	memset(cp, 0, sizeof(*cp));
	cp->seq = seq;
	cp->ts_us = now_us();
	int rc = kc_audit_checkpoint_digest(seq, cp->ts_us, head, digest);
	if (!rc)
		rc = a->sign(digest, &sig, &sig_len, a->sign_arg);
	if (!rc && (!sig || sig_len == 0 || sig_len > KC_AUDIT_SIG_MAX))
		rc = MICA_ECRYPTO;
	if (!rc) {
		cp->raw = (kc_audit_checkpoint){.seq = seq, .ts_us = cp->ts_us, .sig_len = sig_len};
		memcpy(cp->raw.head_hash, head, KC_AUDIT_HASH_LEN);
		memcpy(cp->raw.sig, sig, sig_len);
		cp->sig_hex = malloc(2 * sig_len + 1);
		rc = cp->sig_hex ? mica_hex_encode(sig, sig_len, cp->sig_hex, 2 * sig_len + 1)
				 : MICA_ENOMEM;
	}
	if (!rc)
		rc = mica_hex_encode(head, 32, cp->head_hex, sizeof(cp->head_hex));
	free(sig);
	if (rc) {
		MICA_LOG(MICA_LOG_ERROR,
			 "audit: signing the checkpoint at seq %" PRIu64 " failed: %s", seq,
			 mica_strerror(rc));
		free(cp->sig_hex);
		cp->sig_hex = NULL;
		return rc;
	}
	snprintf(cp->seq_s, sizeof(cp->seq_s), "%" PRIu64, seq);
	snprintf(cp->ts_s, sizeof(cp->ts_s), "%" PRId64, cp->ts_us);
	return 0;
}

/* A batch is one autocommit statement, so it costs one round trip and
 * commits atomically: the records, and the checkpoint when one is due as a
 * data-modifying CTE of the same statement. Without a checkpoint the
 * statement does not name keycenter.audit_checkpoint at all. */
#define INSERT_RECORDS                                                                             \
	"INSERT INTO keycenter.audit (seq, ts_us, principal, client, op, key_name, key_version,"   \
	" context_hash, result, prev_hash, hash, mac)"                                             \
	" SELECT s, t, p, c, o, k, v, x, r, decode(ph, 'hex'), decode(h, 'hex'), decode(m, 'hex')" \
	" FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]," \
	" $7::integer[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])"           \
	" AS u(s, t, p, c, o, k, v, x, r, ph, h, m)"

static const char insert_records_sql[] = INSERT_RECORDS;

static const char insert_records_checkpoint_sql[] =
	"WITH cp AS (INSERT INTO keycenter.audit_checkpoint (seq, ts_us, head_hash, signature)"
	" VALUES ($13::bigint, $14::bigint, decode($15, 'hex'), decode($16, 'hex'))) " INSERT_RECORDS;

static const char insert_checkpoint_sql[] =
	"INSERT INTO keycenter.audit_checkpoint (seq, ts_us, head_hash, signature)"
	" VALUES ($1::bigint, $2::bigint, decode($3, 'hex'), decode($4, 'hex'))";

/* Commits the records of |arrays| (NULL: none) and |cp| (NULL: none) in
 * one autocommit statement. A statement whose connection broke in flight
 * has an unknown outcome, like a COMMIT: the caller fails the batch and
 * resynchronises. */
static int write_statement(kc_audit *a, const char *const arrays[NARR], const struct cp *cp)
{
	const char *p[NARR + 4];
	int n = 0;
	if (arrays) {
		memcpy(p, arrays, sizeof(arrays[0]) * NARR);
		n = NARR;
	}
	if (cp) {
		p[n++] = cp->seq_s;
		p[n++] = cp->ts_s;
		p[n++] = cp->head_hex;
		p[n++] = cp->sig_hex;
	}
	const char *sql = !arrays ? insert_checkpoint_sql
			  : cp	  ? insert_records_checkpoint_sql
				  : insert_records_sql;
	return mica_db_exec(a->db, sql, n, p, NULL);
}

/* Computes seq, prev_hash, hash and MAC of every record of the batch. */
static int batch_chain(kc_audit *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct slot *s = &a->slots[i];
		struct entry e;
		memcpy(s->prev, i ? a->slots[i - 1].hash : a->head_hash, KC_AUDIT_HASH_LEN);
		int rc = record_entry(a->head_seq + i + 1, a->batch[i]->ts_us, a->batch[i]->rec,
				      s->prev, &e);
		if (!rc)
			rc = entry_hash_with(a->md_ctx, &e, s->hash);
		if (!rc)
			rc = mica_hmac_sha256_keyed(a->mac_ctx, NULL, 0, s->hash, KC_AUDIT_HASH_LEN,
						    s->mac);
		if (rc)
			return rc;
	}
	return 0;
}

/* Fills the twelve array parameters of INSERT_RECORDS; |arrays| borrow
 * a->arr. */
static int batch_arrays(kc_audit *a, size_t n, const char *arrays[NARR])
{
	for (int k = 0; k < NARR; k++) {
		a->arr[k].len = 0;
		a->arr[k].oom = 0;
		sb_putc(&a->arr[k], '{');
	}
	for (size_t i = 0; i < n; i++) {
		const kc_audit_record *r = a->batch[i]->rec;
		const struct slot *s = &a->slots[i];
		sb_elem_int(&a->arr[ARR_SEQ], (int64_t)(a->head_seq + i + 1));
		sb_elem_int(&a->arr[ARR_TS], a->batch[i]->ts_us);
		sb_elem_text(&a->arr[ARR_PRINCIPAL], r->principal);
		sb_elem_text(&a->arr[ARR_CLIENT], r->client);
		sb_elem_text(&a->arr[ARR_OP], r->op);
		sb_elem_text(&a->arr[ARR_KEY], r->key_name);
		if (r->key_version > 0)
			sb_elem_int(&a->arr[ARR_VERSION], r->key_version);
		else
			sb_elem_text(&a->arr[ARR_VERSION], NULL);
		sb_elem_text(&a->arr[ARR_CTX], r->context_hash);
		sb_elem_text(&a->arr[ARR_RESULT], r->result);
		sb_elem_hex(&a->arr[ARR_PREV], s->prev);
		sb_elem_hex(&a->arr[ARR_HASH], s->hash);
		sb_elem_hex(&a->arr[ARR_MAC], s->mac);
	}
	for (int k = 0; k < NARR; k++) {
		sb_putc(&a->arr[k], '}');
		if (a->arr[k].oom)
			return MICA_ENOMEM;
		arrays[k] = a->arr[k].p;
	}
	return 0;
}

/* Writes all of |buf| to |fd| (O_APPEND: one write lands whole). */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return MICA_EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* After |cp| committed: it becomes the head the log must keep, is appended
 * to the publish file (and made durable there) and handed to the
 * on_published callback. A failure here cannot undo the commit; it is
 * logged and counted, and the next checkpoint is published as usual. */
static void checkpoint_committed(kc_audit *a, const struct cp *cp)
{
	char *line = NULL;
	int rc = 0;
	a->anchor_seq = cp->seq;
	memcpy(a->anchor_hash, cp->raw.head_hash, KC_AUDIT_HASH_LEN);
	if (a->publish_fd < 0 && !a->opt.on_published)
		return;
	rc = kc_audit_checkpoint_line(&cp->raw, &line);
	if (!rc && a->publish_fd >= 0) {
		size_t n = strlen(line);
		line[n] = '\n'; /* json_dumps' buffer: restored below */
		rc = write_all(a->publish_fd, line, n + 1);
		line[n] = '\0';
		if (!rc && fdatasync(a->publish_fd) != 0)
			rc = MICA_EIO;
		if (rc) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: the checkpoint at seq %" PRIu64 " could not be appended to"
				 " the publish file: %s",
				 cp->seq, strerror(errno));
			pthread_mutex_lock(&a->mu);
			a->stats.publish_failures++;
			pthread_mutex_unlock(&a->mu);
		}
	}
	if (line && a->opt.on_published)
		a->opt.on_published(a->opt.published_arg, line, rc);
	free(line);
}

static int checkpoint_due(const kc_audit *a, uint64_t new_seq, int64_t now)
{
	if (new_seq <= a->cp_seq)
		return 0;
	return new_seq - a->cp_seq >= (uint64_t)a->opt.checkpoint_every_n ||
	       now - a->cp_at_ms >= a->opt.checkpoint_every_ms;
}

static void log_failure(kc_audit *a, const char *what, uint64_t from, uint64_t to, int rc)
{
	const char *st = mica_db_sqlstate(a->db);
	MICA_LOG(MICA_LOG_ERROR,
		 "audit: %s (seq %" PRIu64 "..%" PRIu64 ") failed: %s sqlstate=%s; the chain head"
		 " stays at %" PRIu64,
		 what, from, to, mica_strerror(rc), st[0] ? st : "-", a->head_seq);
}

/* Writes the batch a->batch[0..n) (n >= 1) and, if due, a checkpoint, in one
 * statement. Returns 0 once committed; the head advances only then. */
static int write_batch(kc_audit *a, size_t n)
{
	const char *arrays[NARR];
	struct cp cp = {0};
	const struct cp *due = NULL;
	int64_t now = mica_clock_ms();
	int rc = a->need_resync ? load_head(a) : 0;
	if (!rc)
		rc = batch_chain(a, n);
	uint64_t last = a->head_seq + n;
	if (!rc && checkpoint_due(a, last, now)) {
		rc = cp_make(a, last, a->slots[n - 1].hash, &cp);
		due = rc ? NULL : &cp;
	}
	if (!rc)
		rc = batch_arrays(a, n, arrays);
	if (!rc)
		rc = write_statement(a, arrays, due);
	if (rc) {
		log_failure(a, "audit batch", a->head_seq + 1, last, rc);
		a->need_resync = 1;
	} else {
		a->head_seq = last;
		memcpy(a->head_hash, a->slots[n - 1].hash, KC_AUDIT_HASH_LEN);
		if (due) {
			a->cp_seq = last;
			a->cp_at_ms = now;
			checkpoint_committed(a, &cp);
		}
	}
	free(cp.sig_hex);
	pthread_mutex_lock(&a->mu);
	if (rc) {
		a->stats.failed_batches++;
	} else {
		a->stats.records += n;
		a->stats.batches++;
		a->stats.checkpoints += due != NULL;
		if (n > a->stats.max_batch)
			a->stats.max_batch = n;
	}
	pthread_mutex_unlock(&a->mu);
	return rc;
}

/* Signs and writes a checkpoint of the current head on its own (the T
 * timer, or stop). */
static int write_checkpoint(kc_audit *a)
{
	struct cp cp = {0};
	int rc = a->need_resync ? load_head(a) : 0;
	if (!rc && a->head_seq <= a->cp_seq)
		return 0;
	if (!rc)
		rc = cp_make(a, a->head_seq, a->head_hash, &cp);
	if (!rc)
		rc = write_statement(a, NULL, &cp);
	a->cp_at_ms = mica_clock_ms(); /* after a failure, retry one interval later */
	if (rc) {
		log_failure(a, "audit checkpoint", a->head_seq, a->head_seq, rc);
		a->need_resync = 1;
	} else {
		a->cp_seq = a->head_seq;
		pthread_mutex_lock(&a->mu);
		a->stats.checkpoints++;
		pthread_mutex_unlock(&a->mu);
		checkpoint_committed(a, &cp);
	}
	free(cp.sig_hex);
	return rc;
}

/* Takes up to max_batch waiters off the queue. Called with a->mu held. */
static size_t take_batch(kc_audit *a)
{
	size_t n = 0;
	while (a->qhead && n < (size_t)a->opt.max_batch) {
		a->batch[n++] = a->qhead;
		a->qhead = a->qhead->next;
	}
	if (!a->qhead)
		a->qtail = NULL;
	return n;
}

/* Hands each waiter of the batch its result and wakes it; the waiters
 * are no longer queued, so no lock is needed. */
static void complete_batch(kc_audit *a, size_t n, uint64_t first_seq, int rc)
{
	for (size_t i = 0; i < n; i++) {
		struct waiter *w = a->batch[i];
		if (w->cb) {
			w->cb(w->cb_arg, rc ? MICA_EAUDIT : 0, rc ? 0 : first_seq + i);
			free(w);
			continue;
		}
		w->rc = rc ? MICA_EAUDIT : 0;
		w->seq = rc ? 0 : first_seq + i;
		sem_post(&w->done); /* last touch: |w| may be gone after it */
	}
}

static void deadline_from_ms(struct timespec *ts, int64_t ms)
{
	ts->tv_sec = (time_t)(ms / 1000);
	ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

/* The writer thread: whatever queued up while the previous transaction ran
 * is the next batch (group commit without an artificial delay). */
static void *writer_main(void *arg)
{
	kc_audit *a = arg;
	pthread_mutex_lock(&a->mu);
	for (;;) {
		if (a->qhead) {
			size_t n = take_batch(a);
			pthread_mutex_unlock(&a->mu);
			int rc = write_batch(a, n);
			complete_batch(a, n, a->head_seq - n + 1, rc);
			pthread_mutex_lock(&a->mu);
			continue;
		}
		if (a->stopping)
			break;
		if (a->head_seq > a->cp_seq) {
			int64_t due = a->cp_at_ms + a->opt.checkpoint_every_ms;
			if (mica_clock_ms() >= due) {
				pthread_mutex_unlock(&a->mu);
				(void)write_checkpoint(a);
				pthread_mutex_lock(&a->mu);
				continue;
			}
			struct timespec ts;
			deadline_from_ms(&ts, due);
			pthread_cond_timedwait(&a->work, &a->mu, &ts);
		} else {
			pthread_cond_wait(&a->work, &a->mu);
		}
	}
	pthread_mutex_unlock(&a->mu);
	if (a->head_seq > a->cp_seq || a->need_resync) {
		if (write_checkpoint(a) != 0)
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: no final checkpoint; records after seq"
				 " %" PRIu64 " are not signed",
				 a->cp_seq);
	}
	return NULL;
}

static int options_resolve(const kc_audit_options *in, kc_audit_options *out)
{
	kc_audit_options o = {1000, 5000, 512, NULL, NULL, NULL};
	if (in) {
		o.publish_path = in->publish_path;
		o.on_published = in->on_published;
		o.published_arg = in->published_arg;
		if (in->checkpoint_every_n < 0 || in->checkpoint_every_ms < 0 ||
		    in->max_batch < 0 || in->max_batch > 10000)
			return MICA_EINVAL;
		if (in->checkpoint_every_n)
			o.checkpoint_every_n = in->checkpoint_every_n;
		if (in->checkpoint_every_ms)
			o.checkpoint_every_ms = in->checkpoint_every_ms;
		if (in->max_batch)
			o.max_batch = in->max_batch;
	}
	*out = o;
	return 0;
}

static void audit_free(kc_audit *a)
{
	if (a->publish_fd >= 0)
		close(a->publish_fd);
	mica_db_close(&a->db);
	mica_wipe(a->mac_key, sizeof(a->mac_key));
	EVP_MAC_CTX_free(a->mac_ctx);
	EVP_MD_CTX_free(a->md_ctx);
	for (int k = 0; k < NARR; k++)
		free(a->arr[k].p);
	free(a->batch);
	free(a->slots);
	free(a);
}

static int sync_init(kc_audit *a)
{
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca))
		return MICA_ENOMEM;
	int ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
		 pthread_cond_init(&a->work, &ca) == 0;
	pthread_condattr_destroy(&ca);
	if (!ok)
		return MICA_ENOMEM;
	if (pthread_mutex_init(&a->mu, NULL)) {
		pthread_cond_destroy(&a->work);
		return MICA_ENOMEM;
	}
	return 0;
}

static void sync_destroy(kc_audit *a)
{
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->work);
}

/* Takes the publish file's newest checkpoint as the head the log must hold
 * and opens the file for appending (creating it). */
static int publish_open(kc_audit *a, const char *path)
{
	kc_audit_checkpoint newest;
	uint64_t bad = 0;
	FILE *f = fopen(path, "re");
	if (!f && errno != ENOENT) {
		MICA_LOG(MICA_LOG_ERROR, "audit: cannot read the publish file %s: %s", path,
			 strerror(errno));
		return MICA_EIO;
	}
	if (f) {
		int rc = kc_audit_checkpoint_read(f, NULL, &newest, NULL, &bad);
		fclose(f);
		if (rc == 0) {
			a->anchor_seq = newest.seq;
			memcpy(a->anchor_hash, newest.head_hash, KC_AUDIT_HASH_LEN);
		} else if (rc != MICA_ENOTFOUND) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: the publish file %s is not a file of checkpoint lines"
				 " (line %" PRIu64 ": %s)",
				 path, bad, mica_strerror(rc));
			return MICA_EIO;
		}
	}
	a->publish_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (a->publish_fd < 0) {
		MICA_LOG(MICA_LOG_ERROR, "audit: cannot open the publish file %s: %s", path,
			 strerror(errno));
		return MICA_EIO;
	}
	return 0;
}

/* The next page of records after |after| (RECORD_COLS, in seq order). */
static int page_after(mica_db *db, uint64_t after, PGresult **res)
{
	char s[24];
	snprintf(s, sizeof(s), "%" PRIu64, after);
	const char *p[1] = {s};
	return mica_db_exec(db,
			    "SELECT " RECORD_COLS " FROM keycenter.audit WHERE seq > $1::bigint"
			    " ORDER BY seq LIMIT " PAGE_ROWS,
			    1, p, res);
}

/* Reads record |i| of |res| (a page_after() result) into |e| and checks it
 * on its own: its stored hash is its hash (*hash, computed) and its MAC is
 * |key|'s. 0, MICA_ECHECKSUM (the hash), MICA_EAUTH (the MAC), or
 * row_entry()'s error (then |e| is not filled). */
static int record_check(const PGresult *res, int i, const uint8_t key[32], struct entry *e,
			uint8_t hash[32])
{
	uint8_t stored[32], mac[32], want[32];
	int rc = row_entry(res, i, 0, e, stored, mac);
	if (!rc)
		rc = entry_hash(e, hash);
	if (!rc && !mica_ct_equal(hash, stored, 32))
		rc = MICA_ECHECKSUM;
	if (!rc)
		rc = entry_mac(key, hash, want);
	if (!rc && !mica_ct_equal(want, mac, 32))
		rc = MICA_EAUTH;
	return rc;
}

/* Checks one page of the unsigned tail: each record follows the one before
 * (*seq, *prev), gives its hash and carries its MAC. */
static int tail_page(kc_audit *a, uint64_t *seq, uint8_t prev[32], int *rows)
{
	PGresult *res = NULL;
	int rc = page_after(a->db, *seq, &res);
	*rows = rc ? 0 : PQntuples(res);
	for (int i = 0; !rc && i < *rows; i++) {
		struct entry e;
		uint8_t hash[32];
		if (record_check(res, i, a->mac_key, &e, hash) != 0 || e.seq != *seq + 1 ||
		    !mica_ct_equal(e.prev_hash, prev, 32)) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit: unsigned record %" PRIu64 " does not follow, hash or MAC"
				 " (tampered while the Key Center was down?); refusing to sign and"
				 " extend the log",
				 *seq + 1);
			rc = MICA_EAUDIT;
			break;
		}
		memcpy(prev, hash, 32);
		*seq = e.seq;
	}
	PQclear(res);
	return rc;
}

/* At start: checks the records after the last checkpoint and signs them at
 * once, so an inherited tail is neither forged nor left unsigned. */
static int resume_tail(kc_audit *a)
{
	uint8_t prev[32] = {0};
	uint64_t seq = a->cp_seq;
	int rows = 0, rc = 0;
	if (a->head_seq <= a->cp_seq)
		return 0;
	if (seq > 0) {
		char s[24];
		PGresult *res = NULL;
		snprintf(s, sizeof(s), "%" PRIu64, seq);
		const char *p[1] = {s};
		rc = mica_db_exec(
			a->db,
			"SELECT encode(hash, 'hex') FROM keycenter.audit WHERE seq = $1::bigint", 1,
			p, &res);
		if (!rc && (PQntuples(res) != 1 || hex32(mica_db_get(res, 0, 0), prev)))
			rc = MICA_EAUDIT;
		PQclear(res);
	}
	do
		rc = rc ? rc : tail_page(a, &seq, prev, &rows);
	while (!rc && rows > 0);
	if (!rc && (seq != a->head_seq || !mica_ct_equal(prev, a->head_hash, 32)))
		rc = MICA_EAUDIT; /* the log moved under us: another writer */
	if (!rc) {
		MICA_LOG(MICA_LOG_INFO,
			 "audit: signing the %" PRIu64 " records left after the last checkpoint",
			 a->head_seq - a->cp_seq);
		rc = write_checkpoint(a);
	}
	return rc;
}

int kc_audit_start(kc_audit **out, const char *conninfo, const uint8_t mac_key[32],
		   kc_audit_sign_fn sign, void *sign_arg, const kc_audit_options *opt)
{
	kc_audit_options o;
	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!conninfo || !mac_key || !sign || options_resolve(opt, &o))
		return MICA_EINVAL;
	kc_audit *a = calloc(1, sizeof(*a));
	if (!a)
		return MICA_ENOMEM;
	a->publish_fd = -1;
	memcpy(a->mac_key, mac_key, sizeof(a->mac_key));
	a->sign = sign;
	a->sign_arg = sign_arg;
	a->opt = o;
	a->batch = calloc((size_t)o.max_batch, sizeof(*a->batch));
	a->slots = calloc((size_t)o.max_batch, sizeof(*a->slots));
	a->md_ctx = EVP_MD_CTX_new();
	a->mac_ctx = mica_hmac_sha256_new();
	int rc = a->batch && a->slots && a->md_ctx && a->mac_ctx ? 0 : MICA_ENOMEM;
	if (!rc) {
		/* Keys the context; later records reuse the key (NULL key). */
		uint8_t probe[32];
		rc = mica_hmac_sha256_keyed(a->mac_ctx, a->mac_key, sizeof(a->mac_key), "", 0,
					    probe);
		mica_wipe(probe, sizeof(probe));
	}
	if (!rc && o.publish_path && *o.publish_path)
		rc = publish_open(a, o.publish_path);
	if (!rc) {
		rc = mica_db_open(&a->db, conninfo);
		if (rc)
			MICA_LOG(MICA_LOG_ERROR, "audit: cannot connect: %s", mica_strerror(rc));
	}
	if (!rc)
		rc = load_head(a);
	if (!rc)
		rc = sync_init(a);
	if (rc)
		goto out;
	a->cp_at_ms = mica_clock_ms();
	if ((rc = resume_tail(a)) != 0) {
		sync_destroy(a);
		goto out;
	}
	if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
		sync_destroy(a);
		rc = MICA_ENOMEM;
		goto out;
	}
	MICA_LOG(MICA_LOG_INFO,
		 "audit: writer started at seq %" PRIu64 " (last checkpoint %" PRIu64 ")",
		 a->head_seq, a->cp_seq);
	*out = a;
	return 0;
out:
	audit_free(a);
	return rc;
}

static int field_ok(const char *s, int required)
{
	if (!s)
		return !required;
	size_t n = strnlen(s, KC_AUDIT_FIELD_MAX + 1);
	return n <= KC_AUDIT_FIELD_MAX && utf8_valid((const unsigned char *)s, n);
}

static int record_ok(const kc_audit_record *r)
{
	return field_ok(r->principal, 1) && field_ok(r->client, 1) && field_ok(r->op, 1) &&
	       field_ok(r->key_name, 0) && field_ok(r->context_hash, 0) && field_ok(r->result, 1);
}

/* Queues |w| unless stopping (MICA_ESTATE). */
static int enqueue(kc_audit *a, struct waiter *w)
{
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		return MICA_ESTATE;
	}
	/* Queued before stopping was set, it is completed before the writer
	 * exits. */
	if (a->qtail)
		a->qtail->next = w;
	else
		a->qhead = w;
	a->qtail = w;
	pthread_cond_signal(&a->work);
	pthread_mutex_unlock(&a->mu);
	return 0;
}

/* Copies string |s| (may be NULL) to *at, advancing it. */
static const char *copy_field(const char *s, char **at)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *d = memcpy(*at, s, n);
	*at += n;
	return d;
}

int kc_audit_submit(kc_audit *a, const kc_audit_record *rec, kc_audit_done_fn cb, void *arg)
{
	const char *f[6];
	size_t room = 0;
	if (!a || !rec || !cb || !record_ok(rec))
		return MICA_EINVAL;
	f[0] = rec->principal, f[1] = rec->client, f[2] = rec->op, f[3] = rec->key_name;
	f[4] = rec->context_hash, f[5] = rec->result;
	for (int i = 0; i < 6; i++)
		room += f[i] ? strlen(f[i]) + 1 : 0;
	struct waiter *w = calloc(1, sizeof(*w) + room);
	if (!w)
		return MICA_ENOMEM;
	char *at = (char *)(w + 1);
	w->own = *rec;
	w->own.principal = copy_field(rec->principal, &at);
	w->own.client = copy_field(rec->client, &at);
	w->own.op = copy_field(rec->op, &at);
	w->own.key_name = copy_field(rec->key_name, &at);
	w->own.context_hash = copy_field(rec->context_hash, &at);
	w->own.result = copy_field(rec->result, &at);
	w->rec = &w->own;
	w->ts_us = rec->ts_us ? rec->ts_us : now_us();
	w->cb = cb;
	w->cb_arg = arg;
	int rc = enqueue(a, w);
	if (rc)
		free(w);
	return rc;
}

int kc_audit_append(kc_audit *a, const kc_audit_record *rec, uint64_t *seq)
{
	if (seq)
		*seq = 0;
	if (!a || !rec || !record_ok(rec))
		return MICA_EINVAL;
	struct waiter w = {.rec = rec, .ts_us = rec->ts_us ? rec->ts_us : now_us()};
	if (sem_init(&w.done, 0, 0))
		return MICA_ENOMEM;
	/* |w| stays on our stack while queued: the writer unlinks it before
	 * posting done, and we return only after done. */
	int rc = enqueue(a, &w);
	if (rc) {
		sem_destroy(&w.done);
		return rc;
	}
	while (sem_wait(&w.done) != 0)
		; /* EINTR: a signal handler ran */
	sem_destroy(&w.done);
	if (seq)
		*seq = w.seq;
	return w.rc;
}

void kc_audit_stats_get(kc_audit *a, kc_audit_stats *st)
{
	if (!st)
		return;
	memset(st, 0, sizeof(*st));
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	*st = a->stats;
	pthread_mutex_unlock(&a->mu);
}

void kc_audit_stop(kc_audit *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_signal(&a->work);
	pthread_mutex_unlock(&a->mu);
	/* The writer completes every queued waiter before it exits, and a
	 * completed waiter no longer touches |a|. */
	pthread_join(a->thread, NULL);
	MICA_LOG(MICA_LOG_INFO, "audit: writer stopped at seq %" PRIu64, a->head_seq);
	sync_destroy(a);
	audit_free(a);
}

/* ---- export ------------------------------------------------------------------ */

/* Records and checkpoints interleaved in (seq, kind) order, one page after
 * the key ($1, $2); kind 0 = record, 1 = checkpoint. */
static const char export_page_sql[] =
	"SELECT kind, " RECORD_COLS " FROM ("
	" SELECT 0 AS kind, seq, ts_us, principal, client, op, key_name, key_version,"
	" context_hash, result, prev_hash, hash, mac"
	" FROM keycenter.audit WHERE seq >= $1::bigint"
	" UNION ALL"
	" SELECT 1, seq, ts_us, NULL, NULL, NULL, NULL, NULL, NULL, NULL, head_hash,"
	" signature, NULL FROM keycenter.audit_checkpoint WHERE seq >= $1::bigint) u"
	" WHERE (seq, kind) > ($1::bigint, $2::int) ORDER BY seq, kind LIMIT " PAGE_ROWS;

static json_t *jtext(const PGresult *res, int row, int col)
{
	struct field f = col_text(res, row, col);
	if (!f.p)
		return json_null();
	return json_stringn(f.p, f.len); /* NULL if not valid UTF-8 */
}

static int set(json_t *o, const char *k, json_t *v)
{
	return v && json_object_set_new(o, k, v) == 0;
}

/* One export line for row |row| of an export_page_sql result. */
static json_t *export_object(const PGresult *res, int row, int64_t kind, int64_t seq)
{
	int64_t ts = 0;
	json_t *o = json_object();
	if (!o || mica_db_get_int64(res, row, 2, &ts)) {
		json_decref(o);
		return NULL;
	}
	int ok = set(o, "type", json_string(kind ? "checkpoint" : "record")) &&
		 set(o, "seq", json_integer(seq)) && set(o, "ts_us", json_integer(ts));
	if (ok && kind) {
		ok = set(o, "head_hash", jtext(res, row, 10)) &&
		     set(o, "signature", jtext(res, row, 11));
	} else if (ok) {
		int64_t kv = 0;
		json_t *ver = mica_db_get(res, row, 7) && !mica_db_get_int64(res, row, 7, &kv)
				      ? json_integer(kv)
				      : json_null();
		ok = set(o, "principal", jtext(res, row, 3)) &&
		     set(o, "client", jtext(res, row, 4)) && set(o, "op", jtext(res, row, 5)) &&
		     set(o, "key_name", jtext(res, row, 6)) && set(o, "key_version", ver) &&
		     set(o, "context_hash", jtext(res, row, 8)) &&
		     set(o, "result", jtext(res, row, 9)) &&
		     set(o, "prev_hash", jtext(res, row, 10)) &&
		     set(o, "hash", jtext(res, row, 11)) && set(o, "mac", jtext(res, row, 12));
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Writes one page, advancing the key (*last_seq, *last_kind); *rows gets
 * the number of rows. */
static int export_page(mica_db *db, FILE *out, int64_t *last_seq, int64_t *last_kind, int *rows)
{
	char s[24], k[24];
	snprintf(s, sizeof(s), "%" PRId64, *last_seq);
	snprintf(k, sizeof(k), "%" PRId64, *last_kind);
	const char *p[2] = {s, k};
	PGresult *res = NULL;
	int rc = mica_db_exec(db, export_page_sql, 2, p, &res);
	*rows = rc ? 0 : PQntuples(res);
	for (int i = 0; !rc && i < *rows; i++) {
		int64_t kind = 0, seq = 0;
		if (mica_db_get_int64(res, i, 0, &kind) || mica_db_get_int64(res, i, 1, &seq)) {
			rc = MICA_EDB;
			break;
		}
		json_t *o = export_object(res, i, kind, seq);
		if (!o) {
			MICA_LOG(MICA_LOG_ERROR,
				 "audit export: %s at seq %" PRId64 " holds text that is"
				 " not valid UTF-8",
				 kind ? "checkpoint" : "record", seq);
			rc = MICA_EBADENCODING;
			break;
		}
		if (json_dumpf(o, out, JSON_COMPACT) != 0 || fputc('\n', out) == EOF)
			rc = MICA_EIO;
		json_decref(o);
		*last_seq = seq;
		*last_kind = kind;
	}
	PQclear(res);
	return rc;
}

/* Ends a failed read-only snapshot; its outcome changes nothing. */
static void rollback_read(mica_db *db)
{
	if (mica_db_exec(db, "ROLLBACK", 0, NULL, NULL) != 0)
		MICA_LOG(MICA_LOG_DEBUG, "audit: ROLLBACK failed (connection lost)");
}

int kc_audit_export(mica_db *db, FILE *out)
{
	if (!db || !out)
		return MICA_EINVAL;
	/* Not mica_db_tx(): it may run its function again, which would write
	 * lines twice. One explicit read-only snapshot instead. */
	int rc = mica_db_exec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL);
	if (rc)
		return rc;
	int64_t last_seq = 0, last_kind = 1;
	int rows = 0;
	do
		rc = export_page(db, out, &last_seq, &last_kind, &rows);
	while (!rc && rows > 0);
	if (!rc)
		rc = mica_db_exec(db, "COMMIT", 0, NULL, NULL);
	else
		rollback_read(db);
	if (!rc && fflush(out) != 0)
		rc = MICA_EIO;
	return rc;
}

/* ---- online MAC check -------------------------------------------------------- */

static int macs_page(mica_db *db, const uint8_t key[32], uint64_t *last, int *rows,
		     uint64_t *bad_seq, uint64_t *checked)
{
	PGresult *res = NULL;
	int rc = page_after(db, *last, &res);
	*rows = rc ? 0 : PQntuples(res);
	for (int i = 0; !rc && i < *rows; i++) {
		struct entry e;
		uint8_t hash[32];
		rc = record_check(res, i, key, &e, hash);
		if (rc == MICA_ECHECKSUM || rc == MICA_EAUTH)
			*bad_seq = e.seq;
		else if (!rc)
			(*checked)++;
		*last = e.seq;
	}
	PQclear(res);
	return rc;
}

int kc_audit_verify_macs(mica_db *db, const uint8_t mac_key[32], uint64_t *bad_seq,
			 uint64_t *records)
{
	uint64_t bad = 0, last = 0, checked = 0;
	int rows = 0;
	if (bad_seq)
		*bad_seq = 0;
	if (records)
		*records = 0;
	if (!db || !mac_key)
		return MICA_EINVAL;
	int rc = mica_db_exec(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL);
	if (rc)
		return rc;
	do
		rc = macs_page(db, mac_key, &last, &rows, &bad, &checked);
	while (!rc && rows > 0);
	if (!rc)
		rc = mica_db_exec(db, "COMMIT", 0, NULL, NULL);
	else
		rollback_read(db);
	if (bad_seq)
		*bad_seq = bad;
	if (records)
		*records = checked;
	return rc;
}

/* ---- offline verification ------------------------------------------------------ */

static const char *const verdict_names[] = {
	[KC_AUDIT_OK] = "ok",
	[KC_AUDIT_BAD_HASH] = "bad_hash",
	[KC_AUDIT_BROKEN_LINK] = "broken_link",
	[KC_AUDIT_SEQ_GAP] = "seq_gap",
	[KC_AUDIT_OUT_OF_ORDER] = "out_of_order",
	[KC_AUDIT_BAD_CHECKPOINT_SIGNATURE] = "bad_checkpoint_signature",
	[KC_AUDIT_CHECKPOINT_MISMATCH] = "checkpoint_mismatch",
	[KC_AUDIT_TRUNCATED] = "truncated",
	[KC_AUDIT_MALFORMED] = "malformed",
	[KC_AUDIT_NO_CHECKPOINT] = "no_checkpoint",
	[KC_AUDIT_UNSIGNED_TAIL] = "unsigned_tail",
	[KC_AUDIT_ANCHOR_MISMATCH] = "anchor_mismatch",
	[KC_AUDIT_ANCHOR_TRUNCATED] = "anchor_truncated",
};

const char *kc_audit_verdict_name(kc_audit_verdict v)
{
	if ((unsigned)v >= sizeof(verdict_names) / sizeof(verdict_names[0]))
		return "unknown";
	return verdict_names[v];
}

/* A parsed export line; strings borrowed from |obj|. */
struct line {
	json_t *obj;
	int is_checkpoint;
	struct entry e;	  /* record; for a checkpoint only seq and ts_us */
	uint8_t hash[32]; /* record: hash; checkpoint: head_hash */
	uint8_t sig[KC_AUDIT_SIG_MAX];
	size_t sig_len;
	char why[128]; /* what is malformed */
};

/* Verifier state, walking the lines in order. */
struct vstate {
	EVP_PKEY *pub;
	const kc_audit_verify_options *opt; /* resolved: limits set */
	kc_audit_report *rep;
	int64_t last_ts; /* ts_us of the last verified record */
	int failed;	 /* rep holds the first problem */
	uint64_t line_no;
	uint64_t next_seq; /* record expected next */
	uint8_t last_hash[32];
	int any;	  /* a line was ordered */
	uint64_t max_seq; /* largest (seq, kind) key so far */
	int max_kind;
	int backward; /* a line came after a larger key */
	uint64_t min_backward, backward_line;
	int ahead; /* a checkpoint came before its record */
	uint64_t ahead_seq, ahead_line;
};

static void vfail(struct vstate *st, kc_audit_verdict kind, uint64_t seq, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void vfail(struct vstate *st, kc_audit_verdict kind, uint64_t seq, const char *fmt, ...)
{
	va_list ap;
	if (st->failed)
		return;
	st->failed = 1;
	st->rep->kind = kind;
	st->rep->bad_seq = seq;
	st->rep->line = st->line_no;
	va_start(ap, fmt);
	vsnprintf(st->rep->detail, sizeof(st->rep->detail), fmt, ap);
	va_end(ap);
}

static int get_int(json_t *o, const char *k, int64_t *v)
{
	json_t *j = json_object_get(o, k);
	if (!json_is_integer(j))
		return 0;
	*v = json_integer_value(j);
	return 1;
}

/* A string member; |nullable| allows JSON null (f->p NULL). */
static int get_text(json_t *o, const char *k, int nullable, struct field *f)
{
	json_t *j = json_object_get(o, k);
	if (nullable && json_is_null(j)) {
		f->p = NULL;
		f->len = 0;
		return 1;
	}
	if (!json_is_string(j))
		return 0;
	f->p = json_string_value(j);
	f->len = json_string_length(j);
	return 1;
}

static int get_hex(json_t *o, const char *k, uint8_t *out, size_t cap, size_t *n)
{
	struct field f;
	if (!get_text(o, k, 0, &f) || f.len == 0 || f.len % 2 || f.len / 2 > cap)
		return 0;
	return mica_hex_decode(f.p, f.len, out, cap, n) == 0;
}

static int get_hash(json_t *o, const char *k, uint8_t out[32])
{
	size_t n = 0;
	return get_hex(o, k, out, 32, &n) && n == 32;
}

static int parse_record(struct line *l)
{
	json_t *o = l->obj;
	int64_t kv = 0;
	uint8_t mac[32]; /* checked for form only: the key is not here */
	json_t *v = json_object_get(o, "key_version");
	struct entry *e = &l->e;
	if (json_object_size(o) != 13 || !get_text(o, "principal", 0, &e->principal) ||
	    !get_text(o, "client", 0, &e->client) || !get_text(o, "op", 0, &e->op) ||
	    !get_text(o, "key_name", 1, &e->key_name) ||
	    !get_text(o, "context_hash", 1, &e->context_hash) ||
	    !get_text(o, "result", 0, &e->result) || !get_hash(o, "prev_hash", e->prev_hash) ||
	    !get_hash(o, "hash", l->hash) || !get_hash(o, "mac", mac))
		return 0;
	if (json_is_null(v))
		return 1;
	if (!get_int(o, "key_version", &kv) || kv < 1 || kv > INT32_MAX)
		return 0;
	e->has_version = 1;
	e->key_version = (int32_t)kv;
	return 1;
}

static int parse_checkpoint(struct line *l)
{
	return json_object_size(l->obj) == 5 && get_hash(l->obj, "head_hash", l->hash) &&
	       get_hex(l->obj, "signature", l->sig, sizeof(l->sig), &l->sig_len);
}

/* Parses |buf| (|len| bytes) into |l|; on failure l->why says why. */
static int parse_line(const char *buf, size_t len, struct line *l)
{
	json_error_t jerr;
	int64_t seq = 0;
	memset(l, 0, offsetof(struct line, sig));
	l->sig_len = 0;
	l->obj = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(l->obj)) {
		snprintf(l->why, sizeof(l->why), "not a JSON object (%.80s)",
			 l->obj ? "another JSON value" : jerr.text);
		return 0;
	}
	const char *type = json_string_value(json_object_get(l->obj, "type"));
	if (!type || (strcmp(type, "record") != 0 && strcmp(type, "checkpoint") != 0)) {
		snprintf(l->why, sizeof(l->why), "\"type\" is not \"record\" or \"checkpoint\"");
		return 0;
	}
	l->is_checkpoint = type[0] == 'c';
	if (!get_int(l->obj, "seq", &seq) || seq < 1 || !get_int(l->obj, "ts_us", &l->e.ts_us)) {
		snprintf(l->why, sizeof(l->why),
			 "\"seq\" (>= 1) or \"ts_us\" is missing or not an"
			 " integer");
		return 0;
	}
	l->e.seq = (uint64_t)seq;
	if (!(l->is_checkpoint ? parse_checkpoint(l) : parse_record(l))) {
		snprintf(l->why, sizeof(l->why),
			 "%s at seq %" PRIu64 " has missing, extra or"
			 " ill-typed members",
			 type, l->e.seq);
		return 0;
	}
	return 1;
}

static int sig_ok(EVP_PKEY *pub, const uint8_t digest[32], const uint8_t *sig, size_t sig_len)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
	int ok = ctx && EVP_PKEY_verify_init(ctx) == 1 &&
		 EVP_PKEY_CTX_set_signature_md(ctx, mica_md_sha256()) == 1 &&
		 EVP_PKEY_verify(ctx, sig, sig_len, digest, 32) == 1;
	EVP_PKEY_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

/* Orders lines by (seq, record before checkpoint). Returns 0 if |l| came
 * after a line with a larger or equal key. */
static int in_order(struct vstate *st, const struct line *l)
{
	int kind = l->is_checkpoint;
	if (st->any &&
	    (l->e.seq < st->max_seq || (l->e.seq == st->max_seq && kind <= st->max_kind))) {
		if (!st->backward || l->e.seq < st->min_backward) {
			st->min_backward = l->e.seq;
			st->backward_line = st->line_no;
		}
		st->backward = 1;
		return 0;
	}
	st->any = 1;
	st->max_seq = l->e.seq;
	st->max_kind = kind;
	return 1;
}

static void check_record(struct vstate *st, const struct line *l)
{
	uint8_t hash[32];
	const struct entry *e = &l->e;
	if (e->seq != st->next_seq) {
		vfail(st, KC_AUDIT_SEQ_GAP, st->next_seq,
		      "record %" PRIu64 " is missing (found"
		      " seq %" PRIu64 ")",
		      st->next_seq, e->seq);
		return;
	}
	if (entry_hash(e, hash) != 0 || !mica_ct_equal(hash, l->hash, 32)) {
		vfail(st, KC_AUDIT_BAD_HASH, e->seq,
		      "the content of record %" PRIu64 " does not"
		      " give its hash",
		      e->seq);
		return;
	}
	if (!mica_ct_equal(e->prev_hash, st->last_hash, 32)) {
		vfail(st, KC_AUDIT_BROKEN_LINK, e->seq,
		      "prev_hash of record %" PRIu64 " is not the"
		      " hash of record %" PRIu64,
		      e->seq, e->seq - 1);
		return;
	}
	for (size_t i = 0; i < st->opt->n_anchors; i++) {
		const kc_audit_checkpoint *an = &st->opt->anchors[i];
		if (an->seq == e->seq && !mica_ct_equal(an->head_hash, l->hash, 32)) {
			st->rep->anchor = i;
			vfail(st, KC_AUDIT_ANCHOR_MISMATCH, e->seq,
			      "record %" PRIu64 " is not the head that anchor %zu signed: the"
			      " log up to it was rewritten",
			      e->seq, i + 1);
			return;
		}
	}
	memcpy(st->last_hash, l->hash, 32);
	st->last_ts = e->ts_us;
	st->next_seq++;
	st->rep->records++;
}

static void check_checkpoint(struct vstate *st, const struct line *l)
{
	uint8_t digest[32];
	uint64_t seq = l->e.seq;
	if (seq >= st->next_seq) {
		/* Its record has not come (yet): a later record makes it a gap,
		 * the end of input a truncated log. */
		if (!st->ahead) {
			st->ahead = 1;
			st->ahead_seq = seq;
			st->ahead_line = st->line_no;
		}
		return;
	}
	if (!mica_ct_equal(l->hash, st->last_hash, 32)) {
		vfail(st, KC_AUDIT_CHECKPOINT_MISMATCH, seq,
		      "the checkpoint at seq %" PRIu64 " names another head than record %" PRIu64,
		      seq, seq);
		return;
	}
	if (kc_audit_checkpoint_digest(seq, l->e.ts_us, l->hash, digest) != 0 ||
	    !sig_ok(st->pub, digest, l->sig, l->sig_len)) {
		vfail(st, KC_AUDIT_BAD_CHECKPOINT_SIGNATURE, seq,
		      "the signature of the checkpoint"
		      " at seq %" PRIu64 " does not verify",
		      seq);
		return;
	}
	kc_audit_checkpoint *cp = &st->rep->last_checkpoint;
	cp->seq = seq;
	cp->ts_us = l->e.ts_us;
	memcpy(cp->head_hash, l->hash, 32);
	memcpy(cp->sig, l->sig, l->sig_len);
	cp->sig_len = l->sig_len;
	st->rep->checkpoints++;
	st->rep->last_checkpoint_seq = seq;
}

static void verify_line(struct vstate *st, const char *buf, size_t len, int too_long)
{
	struct line l;
	l.obj = NULL;
	int ok = !too_long && parse_line(buf, len, &l);
	if (!ok) {
		vfail(st, KC_AUDIT_MALFORMED, st->next_seq, "line %" PRIu64 ": %s", st->line_no,
		      too_long ? "longer than KC_AUDIT_LINE_MAX" : l.why);
	} else if (!in_order(st, &l)) {
		vfail(st, KC_AUDIT_OUT_OF_ORDER, l.e.seq,
		      "line %" PRIu64 ": %s %" PRIu64 " comes"
		      " after seq %" PRIu64,
		      st->line_no, l.is_checkpoint ? "checkpoint" : "record", l.e.seq, st->max_seq);
	} else if (!st->failed) {
		if (l.is_checkpoint) {
			check_checkpoint(st, &l);
		} else if (st->ahead) {
			vfail(st, KC_AUDIT_SEQ_GAP, st->next_seq,
			      "records %" PRIu64 "..%" PRIu64 " are missing", st->next_seq,
			      l.e.seq - 1);
		} else {
			check_record(st, &l);
		}
	}
	json_decref(l.obj);
}

/* Reads one line (without its '\n') into |buf|; *too_long when it did not
 * fit (the rest is skipped). Returns 1, 0 at the end, or MICA_EIO. */
static int read_line(FILE *in, char *buf, size_t cap, size_t *len, int *too_long)
{
	int c, any = 0;
	*len = 0;
	*too_long = 0;
	while ((c = getc(in)) != EOF) {
		any = 1;
		if (c == '\n')
			return 1;
		if (*len < cap)
			buf[(*len)++] = (char)c;
		else
			*too_long = 1;
	}
	if (ferror(in))
		return MICA_EIO;
	return any;
}

/* The rules that need the whole input: every anchor inside the log, at
 * least one checkpoint, and a tail no longer than the writer leaves. A
 * problem found here is reported one line past the last. */
static void finish_rules(struct vstate *st)
{
	kc_audit_report *r = st->rep;
	const kc_audit_verify_options *o = st->opt;
	st->line_no++;
	for (size_t i = 0; i < o->n_anchors; i++) {
		if (o->anchors[i].seq > r->records) {
			r->anchor = i;
			vfail(st, KC_AUDIT_ANCHOR_TRUNCATED, r->records + 1,
			      "the records end at seq %" PRIu64
			      " but anchor %zu signed seq %" PRIu64 ": the log was cut back",
			      r->records, i + 1, o->anchors[i].seq);
			return;
		}
	}
	if (r->checkpoints == 0) {
		vfail(st, KC_AUDIT_NO_CHECKPOINT, 1,
		      "the log holds %" PRIu64 " records and no signed checkpoint", r->records);
		return;
	}
	uint64_t tail = r->records - r->last_checkpoint_seq;
	if (o->max_unsigned != UINT64_MAX && tail > o->max_unsigned) {
		vfail(st, KC_AUDIT_UNSIGNED_TAIL, r->last_checkpoint_seq + 1,
		      "%" PRIu64 " records after the last checkpoint (seq %" PRIu64
		      "); the writer signs every %" PRIu64,
		      tail, r->last_checkpoint_seq, o->max_unsigned);
		return;
	}
	int64_t span_ms = (st->last_ts - r->last_checkpoint.ts_us) / 1000;
	if (tail > 0 && o->max_unsigned_ms >= 0 && span_ms > o->max_unsigned_ms)
		vfail(st, KC_AUDIT_UNSIGNED_TAIL, r->last_checkpoint_seq + 1,
		      "record %" PRIu64 " is %" PRId64
		      " ms newer than the last checkpoint (seq %" PRIu64
		      "); the writer signs within %" PRId64 " ms",
		      r->records, span_ms, r->last_checkpoint_seq, o->max_unsigned_ms);
}

static void verify_finish(struct vstate *st)
{
	kc_audit_report *r = st->rep;
	if (!st->failed && st->ahead) {
		st->line_no = st->ahead_line;
		vfail(st, KC_AUDIT_TRUNCATED, st->next_seq,
		      "the records end at seq %" PRIu64 " but a checkpoint signs seq %" PRIu64,
		      st->next_seq - 1, st->ahead_seq);
	}
	if (st->failed && r->kind == KC_AUDIT_SEQ_GAP && st->backward) {
		/* The "missing" record came later: a reordering, not a gap. */
		r->kind = KC_AUDIT_OUT_OF_ORDER;
		r->bad_seq = st->min_backward;
		r->line = st->backward_line;
		snprintf(r->detail, sizeof(r->detail),
			 "line %" PRIu64 ": seq %" PRIu64 " comes after a larger seq",
			 st->backward_line, st->min_backward);
	}
	if (!st->failed)
		finish_rules(st);
	if (!st->failed)
		r->unsigned_tail = r->records - r->last_checkpoint_seq;
}

/* Checks the signature of |cp| under |pub|. */
static int checkpoint_sig_ok(EVP_PKEY *pub, const kc_audit_checkpoint *cp)
{
	uint8_t digest[32];
	return cp->seq >= 1 && cp->sig_len > 0 && cp->sig_len <= KC_AUDIT_SIG_MAX &&
	       kc_audit_checkpoint_digest(cp->seq, cp->ts_us, cp->head_hash, digest) == 0 &&
	       sig_ok(pub, digest, cp->sig, cp->sig_len);
}

/* |in| with defaults filled in; MICA_EINVAL for values out of range. */
static int verify_options_resolve(EVP_PKEY *pub, const kc_audit_verify_options *in,
				  kc_audit_verify_options *out)
{
	*out = in ? *in : (kc_audit_verify_options){0};
	if (out->max_unsigned == 0)
		out->max_unsigned = KC_AUDIT_VERIFY_MAX_UNSIGNED;
	if (out->max_unsigned_ms == 0)
		out->max_unsigned_ms = KC_AUDIT_VERIFY_MAX_UNSIGNED_MS;
	if (out->n_anchors > KC_AUDIT_VERIFY_MAX_ANCHORS || (out->n_anchors && !out->anchors))
		return MICA_EINVAL;
	for (size_t i = 0; i < out->n_anchors; i++)
		if (!checkpoint_sig_ok(pub, &out->anchors[i]))
			return MICA_EINVAL;
	return 0;
}

int kc_audit_verify_opts(FILE *in, EVP_PKEY *pub, const kc_audit_verify_options *opt,
			 kc_audit_report *rep)
{
	kc_audit_verify_options o;
	if (!rep)
		return MICA_EINVAL;
	memset(rep, 0, sizeof(*rep));
	if (!in || !pub || !EVP_PKEY_is_a(pub, "EC") || verify_options_resolve(pub, opt, &o))
		return MICA_EINVAL;
	struct vstate st = {.pub = pub, .opt = &o, .rep = rep, .next_seq = 1};
	char *buf = malloc(KC_AUDIT_LINE_MAX);
	if (!buf)
		return MICA_ENOMEM;
	int rc;
	for (;;) {
		size_t len = 0;
		int too_long = 0;
		rc = read_line(in, buf, KC_AUDIT_LINE_MAX, &len, &too_long);
		if (rc <= 0)
			break;
		st.line_no++;
		verify_line(&st, buf, len, too_long);
		/* After the first problem only the order is still of interest
		 * (a gap may turn out to be a reordering). */
		if (st.failed && rep->kind != KC_AUDIT_SEQ_GAP)
			break;
	}
	free(buf);
	if (rc < 0) {
		memset(rep, 0, sizeof(*rep));
		return rc;
	}
	verify_finish(&st);
	return st.failed ? MICA_EAUTH : 0;
}

int kc_audit_verify_pkey(FILE *in, EVP_PKEY *pub, kc_audit_report *rep)
{
	return kc_audit_verify_opts(in, pub, NULL, rep);
}

/* ---- checkpoint files (publish file, anchors) ------------------------------------ */

int kc_audit_checkpoint_read(FILE *in, EVP_PKEY *pub, kc_audit_checkpoint *newest, uint64_t *count,
			     uint64_t *bad_line)
{
	uint64_t n = 0;
	int rc = 0, found = 0;
	if (count)
		*count = 0;
	if (bad_line)
		*bad_line = 0;
	if (!in || !newest || (pub && !EVP_PKEY_is_a(pub, "EC")))
		return MICA_EINVAL;
	memset(newest, 0, sizeof(*newest));
	char *buf = malloc(KC_AUDIT_LINE_MAX);
	if (!buf)
		return MICA_ENOMEM;
	for (;;) {
		size_t len = 0;
		int too_long = 0;
		struct line l;
		kc_audit_checkpoint cp;
		if ((rc = read_line(in, buf, KC_AUDIT_LINE_MAX, &len, &too_long)) <= 0)
			break;
		n++;
		l.obj = NULL;
		rc = !too_long && parse_line(buf, len, &l) && l.is_checkpoint ? 0
									      : MICA_EBADENCODING;
		json_decref(l.obj);
		if (!rc) {
			cp.seq = l.e.seq;
			cp.ts_us = l.e.ts_us;
			memcpy(cp.head_hash, l.hash, 32);
			memcpy(cp.sig, l.sig, l.sig_len);
			cp.sig_len = l.sig_len;
			if (pub && !checkpoint_sig_ok(pub, &cp))
				rc = MICA_EAUTH;
		}
		if (rc) {
			if (bad_line)
				*bad_line = n;
			break;
		}
		if (!found || cp.seq > newest->seq)
			*newest = cp;
		found = 1;
	}
	free(buf);
	if (count)
		*count = n;
	if (rc < 0)
		return rc;
	return found ? 0 : MICA_ENOTFOUND;
}

int kc_audit_checkpoint_line(const kc_audit_checkpoint *cp, char **line)
{
	char head[2 * KC_AUDIT_HASH_LEN + 1], *sig = NULL;
	if (line)
		*line = NULL;
	if (!cp || !line || cp->seq < 1 || cp->seq > INT64_MAX || cp->sig_len == 0 ||
	    cp->sig_len > KC_AUDIT_SIG_MAX)
		return MICA_EINVAL;
	if (!(sig = malloc(2 * cp->sig_len + 1)))
		return MICA_ENOMEM;
	int rc = mica_hex_encode(cp->head_hash, 32, head, sizeof(head));
	if (!rc)
		rc = mica_hex_encode(cp->sig, cp->sig_len, sig, 2 * cp->sig_len + 1);
	json_t *o = rc ? NULL
		       : json_pack("{s:s,s:I,s:I,s:s,s:s}", "type", "checkpoint", "seq",
				   (json_int_t)cp->seq, "ts_us", (json_int_t)cp->ts_us, "head_hash",
				   head, "signature", sig);
	free(sig);
	if (rc)
		return MICA_EINVAL;
	if (!o || !(*line = json_dumps(o, JSON_COMPACT)))
		rc = MICA_ENOMEM;
	json_decref(o);
	return rc;
}

int kc_audit_verify(FILE *in, const char *pubkey_pem_path, kc_audit_report *rep)
{
	if (!rep)
		return MICA_EINVAL;
	memset(rep, 0, sizeof(*rep));
	if (!in || !pubkey_pem_path)
		return MICA_EINVAL;
	FILE *f = fopen(pubkey_pem_path, "rb");
	if (!f)
		return MICA_EINVAL;
	EVP_PKEY *pub = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	ERR_clear_error();
	if (!pub)
		return MICA_EINVAL;
	int rc = kc_audit_verify_pkey(in, pub, rep);
	EVP_PKEY_free(pub);
	return rc;
}
