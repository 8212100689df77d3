/* fuzz_audit_verify.c - libFuzzer target for the audit export verifier and
 * the checkpoint-file reader (anchor and publish files). Arbitrary bytes are
 * verified as an export file (kc_audit_verify_pkey) with a fixed test public
 * key, and read as a checkpoint file (kc_audit_checkpoint_read); the target
 * aborts if a result and its report disagree, if a checkpoint read back does
 * not survive kc_audit_checkpoint_line() unchanged, or if an export accepted
 * with that checkpoint as its anchor ends before it. Seeds in
 * tests/fuzz/corpus/fuzz_audit_verify/ are exports signed by the test-only
 * private key quoted below, tampered copies, and checkpoint files.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "err.h"
#include "fuzz_check.h"
#include "keycenter/audit.h"

/* Test-only P-256 key pair. The private half signed the seed checkpoints
 * and is kept here only so that the seeds can be regenerated:
 *   -----BEGIN PRIVATE KEY-----
 *   MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvPqUyTRS+GrexvPq
 *   4ZZtied+7+mtfSY9Bv5uFrbGesOhRANCAATG/5uKaM6LYIQJgtBzJaeA5mfDt4Hs
 *   L+XtPecBXHj6OfBVtFxKPL6kao5WbNkR4PaPE5+ZdZlVLdc4oB1+MNxh
 *   -----END PRIVATE KEY-----
 */
static const char pubkey_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExv+bimjOi2CECYLQcyWngOZnw7eB\n"
	"7C/l7T3nAVx4+jnwVbRcSjy+pGqOVmzZEeD2jxOfmXWZVS3XOKAdfjDcYQ==\n"
	"-----END PUBLIC KEY-----\n";

/* Parsed once: OpenSSL 3's PEM decoder costs more than most inputs. */
static EVP_PKEY *pubkey(void)
{
	static EVP_PKEY *pub;
	if (!pub) {
		BIO *bio = BIO_new_mem_buf(pubkey_pem, (int)sizeof(pubkey_pem) - 1);
		CHECK(bio != NULL);
		pub = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
		BIO_free(bio);
		CHECK(pub != NULL);
	}
	return pub;
}

/* Reads |data| as a checkpoint file; on success checks the line round trip
 * and returns 1 with the newest checkpoint in *cp. */
static int checkpoint_file(const uint8_t *data, size_t size, kc_audit_checkpoint *cp)
{
	static char empty[1];
	uint64_t lines = 0, bad = 0;
	FILE *in = fmemopen(size ? (void *)data : empty, size, "r");
	CHECK(in != NULL);
	int rc = kc_audit_checkpoint_read(in, pubkey(), cp, &lines, &bad);
	fclose(in);
	CHECK(rc == 0 || rc == MICA_ENOTFOUND || rc == MICA_EBADENCODING || rc == MICA_EAUTH ||
	      rc == MICA_ENOMEM);
	if (rc == MICA_EBADENCODING || rc == MICA_EAUTH)
		CHECK(bad >= 1 && bad <= lines);
	if (rc != 0)
		return 0;
	CHECK(lines >= 1 && cp->seq >= 1 && cp->sig_len >= 1);
	char *line = NULL;
	kc_audit_checkpoint back;
	CHECK(kc_audit_checkpoint_line(cp, &line) == 0);
	in = fmemopen(line, strlen(line), "r");
	CHECK(in != NULL);
	CHECK(kc_audit_checkpoint_read(in, pubkey(), &back, &lines, NULL) == 0 && lines == 1);
	fclose(in);
	free(line);
	CHECK(back.seq == cp->seq && back.ts_us == cp->ts_us && back.sig_len == cp->sig_len &&
	      memcmp(back.head_hash, cp->head_hash, 32) == 0 &&
	      memcmp(back.sig, cp->sig, cp->sig_len) == 0);
	return 1;
}

static void check_report(int rc, const kc_audit_report *rep)
{
	CHECK(rc == 0 || rc == MICA_EAUTH || rc == MICA_ENOMEM);
	if (rc == 0) {
		CHECK(rep->kind == KC_AUDIT_OK && rep->bad_seq == 0 && rep->line == 0);
		CHECK(rep->detail[0] == '\0');
		CHECK(rep->last_checkpoint_seq <= rep->records);
		CHECK(rep->unsigned_tail == rep->records - rep->last_checkpoint_seq);
		CHECK(rep->checkpoints >= 1 && rep->checkpoints <= rep->records);
		CHECK(rep->last_checkpoint.seq == rep->last_checkpoint_seq);
		CHECK(rep->unsigned_tail <= KC_AUDIT_VERIFY_MAX_UNSIGNED);
	} else if (rc == MICA_EAUTH) {
		CHECK(rep->kind > KC_AUDIT_OK && rep->kind <= KC_AUDIT_ANCHOR_TRUNCATED);
		CHECK(strcmp(kc_audit_verdict_name(rep->kind), "unknown") != 0);
		CHECK(rep->bad_seq >= 1 && rep->line >= 1);
		CHECK(rep->detail[0] != '\0' && memchr(rep->detail, '\0', sizeof(rep->detail)));
		/* Verified lines come before the problem. */
		CHECK(rep->records + rep->checkpoints < rep->line);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char empty[1];
	kc_audit_report rep;
	kc_audit_checkpoint cp;
	/* glibc (>= 2.22) reads a zero-length buffer as an empty stream. */
	FILE *in = fmemopen(size ? (void *)data : empty, size, "r");
	CHECK(in != NULL);
	int rc = kc_audit_verify_pkey(in, pubkey(), &rep);
	fclose(in);
	check_report(rc, &rep);

	if (checkpoint_file(data, size, &cp)) {
		/* The input is also its own anchor: accepted means it holds it. */
		kc_audit_verify_options vo = {.anchors = &cp, .n_anchors = 1};
		in = fmemopen(size ? (void *)data : empty, size, "r");
		CHECK(in != NULL);
		rc = kc_audit_verify_opts(in, pubkey(), &vo, &rep);
		fclose(in);
		check_report(rc, &rep);
		CHECK(rc != 0 || rep.records >= cp.seq);
	}
	return 0;
}
