/* test_kc_shares.c - keycenter/shares: Shamir shares of the unseal secret
 * (libgfshare) in their checksummed text form. Every 3-of-5 subset gives the
 * secret back; fewer are refused; a mistyped share is named by its checksum;
 * a share with a recomputed checksum but wrong bytes is caught by the set
 * id; shares of two ceremonies do not mix. */
#include <check.h>
#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "crypto.h"
#include "err.h"
#include "keycenter/shares.h"
#include "tests/check_main.h"

#define ck_assert_err(expr, want)                                                                  \
	do {                                                                                       \
		int rc_ = (expr);                                                                  \
		ck_assert_msg(rc_ == (want), "%s: got %s, want %s", #expr, mica_strerror(rc_),     \
			      mica_strerror(want));                                                \
	} while (0)

static uint8_t secret[KC_SHARE_SECRET_LEN];
static char texts[5][KC_SHARE_TEXT_LEN + 1];

static void split5of3(void)
{
	ck_assert_err(mica_random(secret, sizeof(secret)), 0);
	ck_assert_err(kc_shares_split(secret, 5, 3, texts), 0);
}

START_TEST(every_threshold_subset_combines)
{
	struct kc_share sh[5];
	uint8_t out[KC_SHARE_SECRET_LEN];

	split5of3();
	for (int i = 0; i < 5; i++) {
		ck_assert_uint_eq(strlen(texts[i]), KC_SHARE_TEXT_LEN);
		ck_assert_int_eq(strncmp(texts[i], "mks1-03", 7), 0);
		ck_assert_err(kc_share_parse(texts[i], &sh[i]), 0);
		ck_assert_uint_eq(sh[i].index, i + 1);
		ck_assert_uint_eq(sh[i].threshold, 3);
	}
	int subsets = 0;
	for (int a = 0; a < 5; a++)
		for (int b = a + 1; b < 5; b++)
			for (int c = b + 1; c < 5; c++) {
				struct kc_share pick[3] = {sh[c], sh[a], sh[b]};
				memset(out, 0, sizeof(out));
				ck_assert_err(kc_shares_combine(pick, 3, out), 0);
				ck_assert_mem_eq(out, secret, sizeof(secret));
				subsets++;
			}
	ck_assert_int_eq(subsets, 10);
	/* All five work too; two are refused. */
	ck_assert_err(kc_shares_combine(sh, 5, out), 0);
	ck_assert_mem_eq(out, secret, sizeof(secret));
	ck_assert_err(kc_shares_combine(sh, 2, out), MICA_EINVAL);
	/* The same share twice is not two shares. */
	struct kc_share twice[3] = {sh[0], sh[0], sh[1]};
	ck_assert_err(kc_shares_combine(twice, 3, out), MICA_EINVAL);
}
END_TEST

/* Every single-character typo anywhere in a share is named. */
START_TEST(mistyped_share_is_named)
{
	struct kc_share sh;
	char bad[KC_SHARE_TEXT_LEN + 1];
	int checksum_errors = 0;

	split5of3();
	for (size_t pos = 5; pos < KC_SHARE_TEXT_LEN; pos++) {
		if (texts[1][pos] == '-')
			continue;
		memcpy(bad, texts[1], sizeof(bad));
		bad[pos] = bad[pos] == '7' ? '8' : '7';
		int rc = kc_share_parse(bad, &sh);
		ck_assert_msg(rc == MICA_ECHECKSUM || rc == MICA_EBADENCODING, "typo at %zu: %s",
			      pos, mica_strerror(rc));
		checksum_errors += rc == MICA_ECHECKSUM;
	}
	ck_assert_int_gt(checksum_errors, 80);
	/* Blanks and case do not matter. */
	char spaced[2 * KC_SHARE_TEXT_LEN];
	size_t n = 0;
	for (size_t i = 0; i < KC_SHARE_TEXT_LEN; i++) {
		spaced[n++] = (char)toupper((unsigned char)texts[2][i]);
		if (i % 10 == 9)
			spaced[n++] = ' ';
	}
	spaced[n++] = '\n';
	spaced[n] = '\0';
	ck_assert_err(kc_share_parse(spaced, &sh), 0);
	ck_assert_uint_eq(sh.index, 3);
}
END_TEST

START_TEST(malformed_shares)
{
	struct kc_share sh;
	char bad[KC_SHARE_TEXT_LEN + 2];

	split5of3();
	ck_assert_err(kc_share_parse("", &sh), MICA_EBADENCODING);
	ck_assert_err(kc_share_parse("hello", &sh), MICA_EBADENCODING);
	memcpy(bad, texts[0], KC_SHARE_TEXT_LEN + 1);
	bad[3] = '2';
	ck_assert_err(kc_share_parse(bad, &sh), MICA_EBADVERSION);
	memcpy(bad, texts[0], KC_SHARE_TEXT_LEN + 1);
	bad[KC_SHARE_TEXT_LEN - 1] = '\0';
	ck_assert_err(kc_share_parse(bad, &sh), MICA_EBADENCODING);
	memcpy(bad, texts[0], KC_SHARE_TEXT_LEN + 1);
	bad[KC_SHARE_TEXT_LEN] = '0';
	bad[KC_SHARE_TEXT_LEN + 1] = '\0';
	ck_assert_err(kc_share_parse(bad, &sh), MICA_EBADENCODING);
	memcpy(bad, texts[0], KC_SHARE_TEXT_LEN + 1);
	bad[40] = 'g';
	ck_assert_err(kc_share_parse(bad, &sh), MICA_EBADENCODING);
	ck_assert_err(kc_share_parse(NULL, &sh), MICA_EINVAL);
	ck_assert_err(kc_shares_split(secret, 5, 1, texts), MICA_EINVAL);
	ck_assert_err(kc_shares_split(secret, 3, 4, texts), MICA_EINVAL);
	ck_assert_err(kc_shares_split(secret, KC_SHARES_MAX + 1, 2, texts), MICA_EINVAL);
}
END_TEST

/* Recompute the checksum of |t| after editing it (a forger's share). */
static void fix_checksum(char *t)
{
	uint8_t md[32];
	unsigned int len;
	char hex[9];
	ck_assert_int_eq(EVP_Digest(t, 92, md, &len, EVP_sha256(), NULL), 1);
	ck_assert_err(mica_hex_encode(md, 4, hex, sizeof(hex)), 0);
	memcpy(t + 92, hex, 8);
}

START_TEST(wrong_bytes_and_mixed_sets_refused)
{
	struct kc_share sh[3], other;
	uint8_t out[KC_SHARE_SECRET_LEN];
	char forged[KC_SHARE_TEXT_LEN + 1], second[5][KC_SHARE_TEXT_LEN + 1];

	split5of3();
	memcpy(forged, texts[0], sizeof(forged));
	forged[50] = forged[50] == 'a' ? 'b' : 'a';
	fix_checksum(forged);
	ck_assert_err(kc_share_parse(forged, &sh[0]), 0);
	ck_assert_err(kc_share_parse(texts[1], &sh[1]), 0);
	ck_assert_err(kc_share_parse(texts[2], &sh[2]), 0);
	ck_assert_err(kc_shares_combine(sh, 3, out), MICA_EAUTH);

	/* A share of another ceremony (another secret) has another set id. */
	uint8_t s2[KC_SHARE_SECRET_LEN];
	ck_assert_err(mica_random(s2, sizeof(s2)), 0);
	ck_assert_err(kc_shares_split(s2, 5, 3, second), 0);
	ck_assert_err(kc_share_parse(texts[0], &sh[0]), 0);
	ck_assert_err(kc_share_parse(second[3], &other), 0);
	ck_assert_mem_ne(other.set_id, sh[0].set_id, KC_SHARE_SET_ID_LEN);
	sh[2] = other;
	ck_assert_err(kc_shares_combine(sh, 3, out), MICA_EINVAL);
}
END_TEST

START_TEST(pins_are_derived)
{
	char u1[KC_SHARE_PIN_LEN + 1], s1[KC_SHARE_PIN_LEN + 1];
	char u2[KC_SHARE_PIN_LEN + 1], s2[KC_SHARE_PIN_LEN + 1];

	split5of3();
	ck_assert_err(kc_shares_pins(secret, u1, s1), 0);
	ck_assert_err(kc_shares_pins(secret, u2, s2), 0);
	ck_assert_str_eq(u1, u2);
	ck_assert_str_eq(s1, s2);
	ck_assert_str_ne(u1, s1);
	ck_assert_uint_eq(strlen(u1), KC_SHARE_PIN_LEN);
	secret[0] ^= 1;
	ck_assert_err(kc_shares_pins(secret, u2, s2), 0);
	ck_assert_str_ne(u1, u2);
}
END_TEST

/* Golden shares (secret 00 01 .. 1f, 3 of 5), combined in a process that
 * never split anything: the format is stable, and combining alone works
 * (libgfshare's free uses the random hook, which must be set there too). */
START_TEST(golden_shares_combine_alone)
{
	static const char *const golden[] = {
		"mks1-0302-0480376e258837db-"
		"af1c92570cd877dbeeb97ae5499acb8c6fa33a223c26c37d477da5e8c074"
		"552e-969d1c86",
		"mks1-0304-0480376e258837db-"
		"535ffd828e167afd36b4130d977398e66bd8afe299cbfb31d46ac8f27d51"
		"71b9-4a8a23e5",
		"mks1-0305-0480376e258837db-"
		"885dea00de6e16fc3cf49906949cd970e997858cb54b535d3ca5a2408531"
		"68b9-d6cfb3fa",
	};
	struct kc_share sh[3];
	uint8_t want[KC_SHARE_SECRET_LEN], out[KC_SHARE_SECRET_LEN];

	for (int i = 0; i < KC_SHARE_SECRET_LEN; i++)
		want[i] = (uint8_t)i;
	for (int i = 0; i < 3; i++)
		ck_assert_err(kc_share_parse(golden[i], &sh[i]), 0);
	ck_assert_err(kc_shares_combine(sh, 3, out), 0);
	ck_assert_mem_eq(out, want, sizeof(want));
}
END_TEST

static Suite *kc_shares_suite(void)
{
	Suite *s = suite_create("kc_shares");
	TCase *tc = tcase_create("shares");
	tcase_add_test(tc, golden_shares_combine_alone);
	tcase_add_test(tc, every_threshold_subset_combines);
	tcase_add_test(tc, mistyped_share_is_named);
	tcase_add_test(tc, malformed_shares);
	tcase_add_test(tc, wrong_bytes_and_mixed_sets_refused);
	tcase_add_test(tc, pins_are_derived);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = kc_shares_suite};
