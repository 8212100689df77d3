/* fuzz_tlsrec.c - libFuzzer target for lib/tlsrec's receive path, the code a
 * detached lib/uvtls connection runs on bytes from the network: the
 * reader's record framing over input cut into pieces, and
 * mica_tlsrec_open. Byte 0 picks the suite, byte 1 the piece size; the rest
 * is used three ways:
 *   1. as a raw stream: every record the reader hands out is exactly what
 *      its header names, and none opens (nobody but us holds the key);
 *   2. as content: cut into records sealed under the key, streamed through
 *      the reader in pieces, each opens to what was sealed; the same stream
 *      with one byte flipped (where the input says) never yields that
 *      record's content;
 *   3. as a TLSInnerPlaintext sealed by hand (AES-128-GCM), so the rules
 *      after the tag are reached: the content type is the last non-zero
 *      byte, all-zero is refused, more than 2^14 bytes of content too.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "fuzz_check.h"
#include "tlsrec.h"

static const uint16_t suites[] = {MICA_TLSREC_AES_128_GCM_SHA256, MICA_TLSREC_AES_256_GCM_SHA384,
				  MICA_TLSREC_CHACHA20_POLY1305_SHA256};
static EVP_CIPHER_CTX *ctx;
static uint8_t pt[MICA_TLSREC_INNER_MAX];

/* A direction at sequence number 0 under a fixed secret of |suite|
 * (derived once per suite). */
static void dir(mica_tlsrec_dir *d, uint16_t suite)
{
	static const uint8_t secret[48] = "fuzz_tlsrec fixed application traffic secret...";
	static mica_tlsrec_dir cached[3];
	static int have[3];
	int i = suite - MICA_TLSREC_AES_128_GCM_SHA256;
	if (!have[i]) {
		CHECK(mica_tlsrec_init(&cached[i], suite, secret, mica_tlsrec_secret_len(suite),
				       0) == 0);
		have[i] = 1;
	}
	*d = cached[i];
}

/* Feeds |in| to |r| in pieces of |piece| bytes; calls |each| per record. */
static int stream(mica_tlsrec_reader *r, const uint8_t *in, size_t n, size_t piece,
		  int (*each)(void *, const uint8_t *, size_t), void *arg)
{
	size_t off = 0;
	while (off < n) {
		size_t take = n - off < piece ? n - off : piece;
		const uint8_t *p = in + off;
		size_t left = take;
		off += take;
		for (;;) {
			const uint8_t *rec;
			size_t len;
			int e = mica_tlsrec_next(r, &p, &left, &rec, &len);
			if (e == 0)
				break;
			if (e != 1)
				return e;
			/* The record is what its header names. */
			size_t total = 0;
			CHECK(len >= MICA_TLSREC_HEADER_LEN &&
			      mica_tlsrec_header(rec, &total) == 0 && total == len);
			e = each(arg, rec, len);
			if (e != 0)
				return e;
		}
		CHECK(left == 0);
	}
	return 0;
}

struct raw {
	mica_tlsrec_dir d;
};

static int raw_each(void *arg, const uint8_t *rec, size_t len)
{
	struct raw *x = arg;
	size_t clen = 0;
	uint8_t type = 0;
	uint64_t seq = x->d.seq;
	int e = mica_tlsrec_open(&x->d, ctx, rec, len, pt, &clen, &type);
	CHECK(e != 0); /* a forgery would need the key */
	CHECK(x->d.seq == seq);
	return 0;
}

struct rt {
	mica_tlsrec_dir d;
	const uint8_t *content; /* what was sealed, in order */
	size_t content_len, at, chunk;
	int opened, failed;
};

static int rt_each(void *arg, const uint8_t *rec, size_t len)
{
	struct rt *x = arg;
	size_t clen = 0;
	uint8_t type = 0;
	if (mica_tlsrec_open(&x->d, ctx, rec, len, pt, &clen, &type) != 0) {
		x->failed++;
		return -1; /* a connection closes here */
	}
	size_t want = x->content_len - x->at < x->chunk ? x->content_len - x->at : x->chunk;
	CHECK(type == MICA_TLSREC_APPLICATION_DATA && clen == want);
	CHECK(clen == 0 || memcmp(pt, x->content + x->at, clen) == 0);
	x->at += clen;
	x->opened++;
	return 0;
}

static void round_trip(uint16_t suite, const uint8_t *data, size_t size, size_t piece, size_t flip)
{
	/* 1 .. 16,321 bytes a record, at most 64 records (each costs two AEAD
	 * keyings, slow under the sanitizers). */
	size_t chunk = 1 + (size ? data[0] : 0) * 64;
	if (chunk < size / 64 + 1)
		chunk = size / 64 + 1;
	size_t nrec = size / chunk + (size % chunk ? 1 : 0);
	size_t cap = size + nrec * (MICA_TLSREC_HEADER_LEN + 1 + MICA_TLSREC_TAG_LEN);
	uint8_t *wire = malloc(cap ? cap : 1);
	CHECK(wire);
	mica_tlsrec_dir w;
	dir(&w, suite);
	size_t n = 0;
	for (size_t off = 0; off < size; off += chunk) {
		size_t c = size - off < chunk ? size - off : chunk;
		CHECK(mica_tlsrec_seal(&w, ctx, MICA_TLSREC_APPLICATION_DATA, data + off, c,
				       wire + n) == 0);
		n += mica_tlsrec_sealed_len(c);
	}
	CHECK(n == cap || size == 0);
	mica_tlsrec_reader r = {0};
	struct rt x = {.content = data, .content_len = size, .chunk = chunk};
	dir(&x.d, suite);
	CHECK(stream(&r, wire, n, piece, rt_each, &x) == 0);
	CHECK(x.at == size && x.failed == 0 && (size_t)x.opened == nrec);
	mica_tlsrec_reader_free(&r);
	if (n > 0) {
		/* One byte flipped: the record holding it is refused (or the
		 * framing is), so its content never comes out. */
		size_t at = flip % n;
		wire[at] ^= 0x20;
		struct rt y = {.content = data, .content_len = size, .chunk = chunk};
		dir(&y.d, suite);
		/* The reader refuses, the record fails, or (a longer length)
		 * the stream ends inside it: either way, not all content. */
		(void)stream(&r, wire, n, piece, rt_each, &y);
		CHECK(y.at <= at && y.at < size);
		mica_tlsrec_reader_free(&r);
		mica_tlsrec_wipe(&y.d);
	}
	mica_tlsrec_wipe(&w);
	mica_tlsrec_wipe(&x.d);
	free(wire);
}

/* AES-128-GCM of |inner| at sequence number 0 under |d|, into |out|. */
static size_t seal_inner(const mica_tlsrec_dir *d, const uint8_t *inner, size_t n, uint8_t *out)
{
	size_t clen = n + MICA_TLSREC_TAG_LEN;
	uint8_t hdr[5] = {23, 3, 3, (uint8_t)(clen >> 8), (uint8_t)clen};
	memcpy(out, hdr, 5);
	int l = 0;
	CHECK(EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, d->key, d->iv) == 1 &&
	      EVP_EncryptUpdate(ctx, NULL, &l, hdr, 5) == 1 &&
	      (n == 0 || EVP_EncryptUpdate(ctx, out + 5, &l, inner, (int)n) == 1) &&
	      EVP_EncryptFinal_ex(ctx, out + 5 + n, &l) == 1 &&
	      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + n) == 1);
	return 5 + clen;
}

static void inner_rules(const uint8_t *inner, size_t n)
{
	static uint8_t rec[MICA_TLSREC_CIPHERTEXT_MAX + MICA_TLSREC_HEADER_LEN];
	if (n > MICA_TLSREC_INNER_MAX)
		n = MICA_TLSREC_INNER_MAX;
	mica_tlsrec_dir d;
	dir(&d, MICA_TLSREC_AES_128_GCM_SHA256);
	size_t len = seal_inner(&d, inner, n, rec), clen = 0;
	uint8_t type = 0;
	int e = mica_tlsrec_open(&d, ctx, rec, len, pt, &clen, &type);
	size_t i = n;
	while (i > 0 && inner[i - 1] == 0)
		i--;
	if (n == 0) {
		CHECK(e == MICA_EBADHEADER); /* a ciphertext of 16 bytes */
	} else if (i == 0) {
		CHECK(e == MICA_ETRUNCATED && d.seq == 0);
	} else if (i - 1 > MICA_TLSREC_CONTENT_MAX) {
		CHECK(e == MICA_ETOOBIG && d.seq == 0);
	} else {
		CHECK(e == 0 && d.seq == 1 && type == inner[i - 1] && clen == i - 1);
		CHECK(clen == 0 || memcmp(pt, inner, clen) == 0);
	}
	mica_tlsrec_wipe(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!ctx)
		ctx = EVP_CIPHER_CTX_new();
	CHECK(ctx);
	if (size < 2)
		return 0;
	uint16_t suite = suites[data[0] % 3];
	size_t piece = 1 + data[1] % 64 * (data[1] & 0x80 ? 257 : 1);
	data += 2;
	size -= 2;

	struct raw x;
	dir(&x.d, suite);
	mica_tlsrec_reader r = {0};
	(void)stream(&r, data, size, piece, raw_each, &x);
	mica_tlsrec_reader_free(&r);
	mica_tlsrec_wipe(&x.d);

	size_t flip = size >= 4 ? (size_t)data[size - 1] << 8 | data[size - 2] : 0;
	round_trip(suite, data, size, piece, flip);
	inner_rules(data, size);
	return 0;
}
