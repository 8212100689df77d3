/* audit.h - the Key Center's audit trail: a hash-chained, MACed log of every
 * request in keycenter.audit, with checkpoints signed by the HSM audit key in
 * keycenter.audit_checkpoint (schema/0003_keycenter_audit.sql).
 *
 * Writing (kc_audit_start/append/stop) is fail closed and group-committed:
 * many request threads append, one writer thread inserts whatever queued up
 * as one multi-row INSERT (one autocommit statement, one round trip), and
 * each append returns only after the statement holding its record
 * committed. Reading is offline:
 * kc_audit_export() writes JSON lines, kc_audit_verify() checks them with the
 * checkpoint public key alone (`mica audit export`, `mica audit verify`).
 *
 * ---- Canonical record encoding (what an auditor re-computes) -------------
 *
 * A record's canonical bytes are a sequence of eleven fields, each encoded as
 *   u32 big-endian length L, then L bytes,
 * except that SQL NULL is encoded as the length 0xFFFFFFFF with no bytes, so
 * NULL and the empty string differ. The fields, in order:
 *
 *    1  domain        the 13 ASCII bytes "mica-audit-v1"
 *    2  seq           8 bytes, u64 big-endian (1, 2, 3, ... without gaps)
 *    3  ts_us         8 bytes, i64 big-endian, microseconds since the epoch
 *    4  principal     UTF-8 bytes as stored (no terminator)
 *    5  client        UTF-8
 *    6  op            UTF-8
 *    7  key_name      UTF-8 or NULL
 *    8  key_version   4 bytes, i32 big-endian, or NULL (versions are >= 1)
 *    9  context_hash  UTF-8 or NULL (the caller's hex SHA-256 of the context)
 *   10  result        UTF-8
 *   11  prev_hash     32 bytes: the previous record's hash; 32 zero bytes for
 *                     seq 1
 *
 *   hash = SHA-256(canonical bytes)
 *   mac  = HMAC-SHA256(mac_key, hash)
 *
 * A checkpoint at seq S commits to the chain up to and including record S:
 *
 *   digest    = SHA-256("mica-audit-checkpoint-v1" (24 ASCII bytes)
 *                       || S (u64 BE) || ts_us (i64 BE) || head_hash (32))
 *   signature = ECDSA over |digest| (DER ECDSA-Sig-Value), i.e. a standard
 *               ECDSA-with-SHA-256 signature of the 64-byte preimage, so
 *               `openssl dgst -sha256 -verify pub.pem -signature sig preimage`
 *               checks it too
 *
 * where head_hash is the hash of record S.
 *
 * ---- Export format (kc_audit_export, input of kc_audit_verify) ------------
 *
 * UTF-8 JSON, one object per line ('\n'), ordered by seq; a checkpoint at seq
 * S follows record S. Binary fields are lower-case hex. Exactly these keys:
 *
 *   {"type":"record","seq":N,"ts_us":N,"principal":S,"client":S,"op":S,
 *    "key_name":S|null,"key_version":N|null,"context_hash":S|null,
 *    "result":S,"prev_hash":H32,"hash":H32,"mac":H32}
 *   {"type":"checkpoint","seq":N,"ts_us":N,"head_hash":H32,"signature":HEX}
 *
 * The MAC is exported but only kc_audit_verify_macs(), which holds the key,
 * can check it.
 *
 * ---- Published checkpoints and anchors ------------------------------------
 *
 * A checkpoint line on its own (the export's checkpoint form, '\n'-ended) is
 * also the format of two files outside the database:
 *   - the publish file: the writer appends every checkpoint it committed
 *     (kc_audit_options.publish_path), so a database superuser who cuts or
 *     rewrites the log cannot also remove the signed heads that were
 *     published; kc_audit_start() refuses a log that lacks the newest one;
 *   - an auditor's anchor file: the newest checkpoint of the auditor's last
 *     successful verification (`mica audit verify --anchor FILE`), so the next
 *     run proves the log still holds that head and only grew after it.
 * kc_audit_checkpoint_read() reads either; kc_audit_checkpoint_line() writes
 * one line.
 */
#ifndef KC_AUDIT_H
#define KC_AUDIT_H

#include <stdint.h>
#include <stdio.h>

#include <openssl/types.h>

#include "db.h"
#include "err.h"

#define KC_AUDIT_HASH_LEN 32
#define KC_AUDIT_MAC_KEY_LEN 32
/* Largest text field of a record, in bytes. */
#define KC_AUDIT_FIELD_MAX 1024
/* Largest export line kc_audit_verify() accepts, in bytes. */
#define KC_AUDIT_LINE_MAX 65536
/* Largest checkpoint signature, in bytes (a P-256 DER signature is <= 72). */
#define KC_AUDIT_SIG_MAX 1024

/* One audit record as a request thread gives it. Strings are borrowed for
 * the duration of kc_audit_append() only; they must be valid UTF-8 without
 * NUL, at most KC_AUDIT_FIELD_MAX bytes each. */
typedef struct kc_audit_record {
	int64_t ts_us;		  /* request time, microseconds since the epoch;
				     0: the time of the append call */
	const char *principal;	  /* required (may be "") */
	const char *client;	  /* required: client address */
	const char *op;		  /* required: operation name */
	const char *key_name;	  /* NULL: none */
	int32_t key_version;	  /* >= 1; 0 or negative: none (NULL) */
	const char *context_hash; /* NULL: none */
	const char *result;	  /* required: "ok", "denied", an error code ... */
} kc_audit_record;

/* Signs the 32-byte checkpoint |digest| (see above). On success returns 0 and
 * sets *sig to a malloc'd DER ECDSA signature of *sig_len bytes (at most
 * KC_AUDIT_SIG_MAX) that the caller free()s; on failure returns a negative
 * MICA_E* code. Called only from the audit writer thread (kc_hsm_sign()
 * fits, with |arg| the kc_hsm). */
typedef int (*kc_audit_sign_fn)(const uint8_t digest[32], uint8_t **sig, size_t *sig_len,
				void *arg);

/* A checkpoint goes into the statement of the batch after which
 * checkpoint_every_n records are unsigned or checkpoint_every_ms passed since
 * the last one; an idle writer signs the head on its own once that time has
 * passed, and kc_audit_stop() signs whatever is left. If signing fails, the
 * batch fails (fail closed): an unsigned tail is one that could be cut off
 * without a trace. */
/* Called on the writer thread after each committed checkpoint with its line
 * (|line|, without '\n', borrowed for the call) and the outcome of appending
 * it to the publish file: 0, or MICA_EIO (the checkpoint is committed in the
 * database all the same; the next one is published as usual). Must not
 * block: queue the line for a webhook, raise an alert on |rc|. */
typedef void (*kc_audit_published_fn)(void *arg, const char *line, int rc);

typedef struct kc_audit_options {
	int checkpoint_every_n;	 /* checkpoint once this many records are unsigned; 0: 1000 */
	int checkpoint_every_ms; /* ... or this long after the last one; 0: 5000 */
	int max_batch;		 /* most records per transaction, 1..10000; 0: 512 */
	/* File every committed checkpoint is appended to (O_APPEND, fsync'd,
	 * created 0640), or NULL / "": none. Its newest checkpoint must be in
	 * the log for kc_audit_start() to resume (see there). */
	const char *publish_path;
	kc_audit_published_fn on_published; /* NULL: none */
	void *published_arg;
} kc_audit_options;

typedef struct kc_audit_stats {
	uint64_t records;	   /* committed by this writer */
	uint64_t batches;	   /* committed transactions that held records */
	uint64_t failed_batches;   /* batches whose waiters got MICA_EAUDIT */
	uint64_t checkpoints;	   /* checkpoints committed by this writer */
	uint64_t max_batch;	   /* largest committed batch */
	uint64_t publish_failures; /* checkpoints the publish file did not take */
} kc_audit_stats;

typedef struct kc_audit kc_audit;

/* Opens a database handle on |conninfo| (copied), resumes the chain from the
 * last stored record and starts the writer thread. The last record's hash is
 * recomputed and its MAC checked under |mac_key| (copied; wiped by
 * kc_audit_stop()), and the last checkpoint must point at a stored record
 * with the same hash: otherwise the log was tampered with or the key is
 * wrong, and the writer refuses to extend it (the log names the seq).
 * With a publish file, the newest checkpoint in it must still be in the log:
 * the log's newest checkpoint is at or after its seq and the record at its
 * seq has its head hash; else the log was cut back or rewritten behind the
 * published head and the writer refuses it. (The same check, against the
 * newest checkpoint this writer committed, guards every resynchronisation
 * after a failed batch.) Records after the last checkpoint (a tail left by
 * a crash) are checked record by record, hash, link and MAC, and signed
 * right away, so a tail rewritten while the Key Center was down is refused
 * and a resumed tail is never older than one checkpoint interval.
 * |sign| (with |sign_arg|) signs checkpoints; |opt| may be NULL (defaults).
 * On success *out is the writer, released by kc_audit_stop(). Appends wait
 * for the database, so |conninfo| should bound how long a dead peer can
 * stall it (keepalives, tcp_user_timeout, connect_timeout).
 * Returns 0, MICA_EINVAL (NULL argument or option out of range),
 * MICA_EDBCONN (cannot connect), MICA_EAUDIT (the stored chain head, the
 * unsigned tail or the published head does not verify), MICA_EIO (the
 * publish file cannot be read, is malformed or cannot be opened for
 * appending), MICA_EDB or another mica_db error, or MICA_ENOMEM. */
int kc_audit_start(kc_audit **out, const char *conninfo, const uint8_t mac_key[32],
		   kc_audit_sign_fn sign, void *sign_arg, const kc_audit_options *opt) MICA_WUR;

/* Appends |rec| and blocks until the transaction holding it committed; then
 * *seq (may be NULL) is its sequence number. Safe to call from many threads.
 * Returns 0 only after the commit. MICA_EAUDIT: the batch holding the record
 * failed (database down, permission, signing failure...): nothing of it is
 * in the chain, the writer's head stays at the last committed record and the
 * next batch reconnects and resynchronises, so sequence numbers stay
 * gap-free; the caller must not answer the request. (A batch whose
 * connection broke in flight has an unknown outcome: it also gives
 * MICA_EAUDIT, and the resynchronisation keeps the chain whole whichever way
 * it went.)
 * MICA_EINVAL: |rec| breaks the rules of kc_audit_record (nothing queued).
 * MICA_ESTATE: kc_audit_stop() has begun. */
int kc_audit_append(kc_audit *a, const kc_audit_record *rec, uint64_t *seq) MICA_WUR;

/* Outcome of a kc_audit_submit(): |rc| 0 with the record's |seq| once the
 * statement holding it committed, or MICA_EAUDIT as for kc_audit_append().
 * Called on the writer thread: it must not block. */
typedef void (*kc_audit_done_fn)(void *arg, int rc, uint64_t seq);

/* kc_audit_append() without the wait: queues a copy of |rec| and returns;
 * |cb| is called exactly once, on the writer thread, with the outcome.
 * Returns 0 (queued), or MICA_EINVAL, MICA_ESTATE or MICA_ENOMEM, in which
 * case nothing was queued and |cb| is not called. For handlers that answer
 * once their record committed without holding a thread meanwhile. */
int kc_audit_submit(kc_audit *a, const kc_audit_record *rec, kc_audit_done_fn cb,
		    void *arg) MICA_WUR;

/* Copies the writer's counters into *st. */
void kc_audit_stats_get(kc_audit *a, kc_audit_stats *st);

/* Commits every queued record, writes a final checkpoint if records were
 * added since the last one, stops the writer, closes its database handle,
 * wipes the MAC key and frees |a|. NULL is a no-op. No append may start
 * after stop was called; appends already waiting are completed first. */
void kc_audit_stop(kc_audit *a);

/* ---- offline tools ------------------------------------------------------ */

/* Hash of a record with sequence number |seq|, time |ts_us| and fields of
 * |rec| (key_version <= 0 is NULL) chained to |prev_hash|, per the canonical
 * encoding above. Returns 0, MICA_EINVAL or MICA_ECRYPTO. */
int kc_audit_record_hash(uint64_t seq, int64_t ts_us, const kc_audit_record *rec,
			 const uint8_t prev_hash[32], uint8_t hash[32]) MICA_WUR;

/* Digest a checkpoint at |seq| signs (see above). Returns 0, MICA_EINVAL or
 * MICA_ECRYPTO. */
int kc_audit_checkpoint_digest(uint64_t seq, int64_t ts_us, const uint8_t head_hash[32],
			       uint8_t digest[32]) MICA_WUR;

/* Writes every record and checkpoint of |db|'s audit tables to |out| in the
 * export format, from one consistent snapshot (a read-only REPEATABLE READ
 * transaction, read in pages). Returns 0, MICA_EIO (write failed), MICA_EBADENCODING (a stored text
 * is not valid UTF-8; that row was tampered with), MICA_ENOMEM or a mica_db error. On failure |out|
 * may hold a prefix of the export. */
int kc_audit_export(mica_db *db, FILE *out) MICA_WUR;

/* A signed checkpoint: a line of the export, of the publish file or of an
 * anchor file. */
typedef struct kc_audit_checkpoint {
	uint64_t seq; /* >= 1 */
	int64_t ts_us;
	uint8_t head_hash[KC_AUDIT_HASH_LEN];
	uint8_t sig[KC_AUDIT_SIG_MAX];
	size_t sig_len;
} kc_audit_checkpoint;

/* Reads a file of checkpoint lines (the publish file, an anchor file) from
 * |in|: every line must be a well-formed checkpoint line, and with |pub|
 * (borrowed; NULL skips it) every signature must verify. On success
 * *newest is the checkpoint with the largest seq and *count (may be NULL)
 * the number of lines. On MICA_EBADENCODING or MICA_EAUTH, *bad_line (may
 * be NULL) is the 1-based line at fault. Returns 0, MICA_ENOTFOUND (no
 * line), MICA_EBADENCODING (a line is not a checkpoint line), MICA_EAUTH (a
 * signature does not verify), MICA_EINVAL (NULL |in| or |newest|, or a
 * non-EC key), MICA_EIO or MICA_ENOMEM. */
int kc_audit_checkpoint_read(FILE *in, EVP_PKEY *pub, kc_audit_checkpoint *newest, uint64_t *count,
			     uint64_t *bad_line) MICA_WUR;

/* Formats |cp| as one checkpoint line without '\n'; *line is malloc'd, the
 * caller free()s it. Returns 0, MICA_EINVAL or MICA_ENOMEM. */
int kc_audit_checkpoint_line(const kc_audit_checkpoint *cp, char **line) MICA_WUR;

typedef enum kc_audit_verdict {
	KC_AUDIT_OK = 0,
	KC_AUDIT_BAD_HASH,		   /* the record's content does not give its hash */
	KC_AUDIT_BROKEN_LINK,		   /* prev_hash is not the previous record's hash */
	KC_AUDIT_SEQ_GAP,		   /* a record is missing */
	KC_AUDIT_OUT_OF_ORDER,		   /* lines not in (seq, record before checkpoint) order */
	KC_AUDIT_BAD_CHECKPOINT_SIGNATURE, /* the signature does not verify */
	KC_AUDIT_CHECKPOINT_MISMATCH,	   /* head_hash is not the hash of record seq */
	KC_AUDIT_TRUNCATED,		   /* the records end before a checkpoint's seq */
	KC_AUDIT_MALFORMED,		   /* a line is not a well-formed record or checkpoint */
	KC_AUDIT_NO_CHECKPOINT,		   /* no signed checkpoint at all (empty or unsigned log) */
	KC_AUDIT_UNSIGNED_TAIL,		   /* more records, or a longer time, after the last
					      checkpoint than the writer ever leaves */
	KC_AUDIT_ANCHOR_MISMATCH,	   /* the record at an anchor's seq is not its head:
					      history up to the anchor was rewritten */
	KC_AUDIT_ANCHOR_TRUNCATED,	   /* the records end before an anchor's seq */
} kc_audit_verdict;

/* Stable snake_case name of |v| ("ok", "bad_hash", ...). */
const char *kc_audit_verdict_name(kc_audit_verdict v);

/* What the writer leaves unsigned at most with the default configuration
 * ([keycenter.audit] checkpoint_every = 1000, checkpoint_interval_ms =
 * 10000, plus 5 s for a batch in flight and clock steps). */
#define KC_AUDIT_VERIFY_MAX_UNSIGNED 1000
#define KC_AUDIT_VERIFY_MAX_UNSIGNED_MS 15000
/* Most anchors one verification takes. */
#define KC_AUDIT_VERIFY_MAX_ANCHORS 8

typedef struct kc_audit_verify_options {
	/* Most records allowed after the last checkpoint: the writer's
	 * checkpoint_every. 0: KC_AUDIT_VERIFY_MAX_UNSIGNED; UINT64_MAX: no
	 * limit. */
	uint64_t max_unsigned;
	/* Longest time allowed between the last checkpoint and the newest
	 * record after it, in ms: the writer's checkpoint_interval_ms plus a
	 * grace. 0: KC_AUDIT_VERIFY_MAX_UNSIGNED_MS; negative: no limit. */
	int64_t max_unsigned_ms;
	/* Checkpoints the log must still contain (an auditor's anchor, the
	 * publish file's newest), |n_anchors| of them (at most
	 * KC_AUDIT_VERIFY_MAX_ANCHORS); borrowed. Their signatures are checked
	 * first (a bad one is MICA_EINVAL). */
	const kc_audit_checkpoint *anchors;
	size_t n_anchors;
} kc_audit_verify_options;

/* Outcome of kc_audit_verify(). Counts cover the lines verified before the
 * first problem (everything when kind is KC_AUDIT_OK). */
typedef struct kc_audit_report {
	kc_audit_verdict kind;
	uint64_t bad_seq;		     /* seq of the first problem (0 when OK); see below */
	uint64_t line;			     /* 1-based input line of the problem (0 when OK); one
						past the last line for a problem found at the end */
	uint64_t records;		     /* records verified */
	uint64_t checkpoints;		     /* checkpoints verified */
	uint64_t last_checkpoint_seq;	     /* 0 if none */
	uint64_t unsigned_tail;		     /* records after the last checkpoint */
	size_t anchor;			     /* ANCHOR_*: index of the anchor at fault */
	kc_audit_checkpoint last_checkpoint; /* the newest verified one (seq 0 if none):
						the auditor's next anchor */
	char detail[256];		     /* human sentence; "" when OK */
} kc_audit_report;

/* Verifies the export read from |in| with the checkpoint public key in the
 * PEM file |pubkey_pem_path| (SubjectPublicKeyInfo, EC) and the default
 * options. It recomputes every record's hash, follows prev_hash from 32 zero
 * bytes, requires seq 1, 2, 3 ... with each checkpoint right after its
 * record, compares each checkpoint's head_hash with that record's hash,
 * verifies each signature, and fails if the records end before the last
 * checkpoint's seq. At the end of the input it requires at least one
 * checkpoint, an unsigned tail within the options' limits, and every anchor
 * inside the log. It reports the first problem in input order (problems
 * found at the end in the order: truncated, anchor_truncated,
 * no_checkpoint, unsigned_tail), with bad_seq:
 *   BAD_HASH, BROKEN_LINK              the record's seq
 *   SEQ_GAP, TRUNCATED                 the first missing seq
 *   OUT_OF_ORDER                       the smallest seq found after a line
 *                                      with a larger one (for two swapped
 *                                      records: the smaller of the two)
 *   BAD_CHECKPOINT_SIGNATURE,
 *   CHECKPOINT_MISMATCH                the checkpoint's seq
 *   MALFORMED                          the seq expected next
 *   NO_CHECKPOINT                      1
 *   UNSIGNED_TAIL                      the first record after the last
 *                                      checkpoint
 *   ANCHOR_MISMATCH                    the anchor's seq
 *   ANCHOR_TRUNCATED                   the first missing seq
 * A gap that a later line shows to be a misplaced record is reported as
 * OUT_OF_ORDER. Returns 0 (kind OK), MICA_EAUTH (verification failed; see
 * *rep), MICA_EINVAL (NULL argument; unreadable, non-PEM or non-EC key), MICA_EIO
 * (read error) or MICA_ENOMEM. */
int kc_audit_verify(FILE *in, const char *pubkey_pem_path, kc_audit_report *rep) MICA_WUR;

/* As kc_audit_verify(), with the public key already loaded (borrowed; EC
 * only, else MICA_EINVAL), for callers that verify many inputs. */
int kc_audit_verify_pkey(FILE *in, EVP_PKEY *pub, kc_audit_report *rep) MICA_WUR;

/* As kc_audit_verify_pkey() with options |opt| (NULL: the defaults).
 * MICA_EINVAL also for options out of range or an anchor whose signature
 * does not verify under |pub|. */
int kc_audit_verify_opts(FILE *in, EVP_PKEY *pub, const kc_audit_verify_options *opt,
			 kc_audit_report *rep) MICA_WUR;

/* Online check that needs the MAC key (the Key Center's self-check): reads
 * every record of |db| in seq order, in one snapshot, and checks that its
 * content gives its stored hash and that its MAC is HMAC-SHA256(|mac_key|,
 * hash). On MICA_ECHECKSUM (hash) or MICA_EAUTH (MAC), *bad_seq (may be
 * NULL) is the first bad record's seq; else 0. *records (may be NULL) is
 * the number of records checked before it. Chain links, gaps and
 * signatures are kc_audit_verify()'s job. Returns 0, MICA_ECHECKSUM,
 * MICA_EAUTH, MICA_EINVAL, MICA_ENOMEM or a mica_db error. */
int kc_audit_verify_macs(mica_db *db, const uint8_t mac_key[32], uint64_t *bad_seq,
			 uint64_t *records) MICA_WUR;

#endif
