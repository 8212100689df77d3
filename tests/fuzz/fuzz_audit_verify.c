/* fuzz_audit_verify.c - libFuzzer target for the audit export verifier.
 * Arbitrary bytes are verified as an export file (kc_audit_verify_pkey) with a
 * fixed test public key; the target aborts if the result and the report
 * disagree. Seeds in tests/fuzz/corpus/fuzz_audit_verify/ are exports signed
 * by the test-only private key quoted below, plus tampered copies of them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "err.h"
#include "keycenter/audit.h"
#include "fuzz_check.h"

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char empty[1];
	kc_audit_report rep;
	/* glibc (>= 2.22) reads a zero-length buffer as an empty stream. */
	FILE *in = fmemopen(size ? (void *)data : empty, size, "r");
	CHECK(in != NULL);
	int rc = kc_audit_verify_pkey(in, pubkey(), &rep);
	fclose(in);

	CHECK(rc == 0 || rc == MICA_EAUTH || rc == MICA_ENOMEM);
	if (rc == 0) {
		CHECK(rep.kind == KC_AUDIT_OK && rep.bad_seq == 0 && rep.line == 0);
		CHECK(rep.detail[0] == '\0');
		CHECK(rep.last_checkpoint_seq <= rep.records);
		CHECK(rep.unsigned_tail == rep.records - rep.last_checkpoint_seq);
		CHECK(rep.checkpoints <= rep.records);
	} else if (rc == MICA_EAUTH) {
		CHECK(rep.kind > KC_AUDIT_OK && rep.kind <= KC_AUDIT_MALFORMED);
		CHECK(strcmp(kc_audit_verdict_name(rep.kind), "unknown") != 0);
		CHECK(rep.bad_seq >= 1 && rep.line >= 1);
		CHECK(rep.detail[0] != '\0' && memchr(rep.detail, '\0', sizeof(rep.detail)));
		/* Verified lines come before the problem. */
		CHECK(rep.records + rep.checkpoints < rep.line);
	}
	return 0;
}
