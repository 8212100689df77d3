/* test_micadev.c - unit tests for libmicadev (device/): the duplicate filter
 * (ring eviction, its state file across a restart, corrupt files), the
 * full-jitter backoff's bounds, and opening sealed messages made by the
 * server's own sealer (push_seal_message): a message for another regid, under
 * another key, tampered, cut short, or not a message is refused with its
 * exact error and releases nothing.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "device/micadev.h"
#include "mipush/push.h"
#include "tests/check_main.h"

/* ---- duplicate filter ------------------------------------------------------------ */

static char dir[64];

static void dir_setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/test_micadev.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void dir_teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void path_of(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", dir, name);
}

#define ADD(d, s) ck_assert_int_eq(dev_dedup_add((d), (s), strlen(s)), 0)
#define SEEN(d, s) dev_dedup_seen((d), (s), strlen(s))

START_TEST(dedup_remembers_and_forgets_the_oldest)
{
	dev_dedup d;
	ck_assert_int_eq(dev_dedup_init(&d, 3, NULL), 0);
	ck_assert(!SEEN(&d, "a"));
	ADD(&d, "a");
	ADD(&d, "b");
	ADD(&d, "c");
	ck_assert(SEEN(&d, "a") && SEEN(&d, "b") && SEEN(&d, "c"));
	ck_assert(!SEEN(&d, "ab")); /* whole ids, not prefixes */
	ADD(&d, "d");		    /* full: "a" goes */
	ck_assert(!SEEN(&d, "a"));
	ck_assert(SEEN(&d, "b") && SEEN(&d, "c") && SEEN(&d, "d"));
	ck_assert_uint_eq(d.len, 3);
	dev_dedup_cleanup(&d);
	dev_dedup_cleanup(&d); /* twice is safe */
}
END_TEST

START_TEST(dedup_state_file_survives_a_restart)
{
	char path[256];
	struct stat st;
	dev_dedup d;
	path_of(path, sizeof(path), "seen");
	ck_assert_int_eq(dev_dedup_init(&d, 4, path), 0); /* no file yet: empty */
	ck_assert_uint_eq(d.len, 0);
	ADD(&d, "m1");
	ADD(&d, "m2");
	ADD(&d, "m3");
	dev_dedup_cleanup(&d);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0600);

	ck_assert_int_eq(dev_dedup_init(&d, 4, path), 0);
	ck_assert(SEEN(&d, "m1") && SEEN(&d, "m2") && SEEN(&d, "m3"));
	ck_assert(!SEEN(&d, "m4"));
	dev_dedup_cleanup(&d);

	/* A smaller filter keeps the newest ids of the file. */
	ck_assert_int_eq(dev_dedup_init(&d, 2, path), 0);
	ck_assert(!SEEN(&d, "m1"));
	ck_assert(SEEN(&d, "m2") && SEEN(&d, "m3"));
	/* Adding after a reload keeps the order: m2 is the oldest now. */
	ADD(&d, "m4");
	ck_assert(!SEEN(&d, "m2") && SEEN(&d, "m3") && SEEN(&d, "m4"));
	dev_dedup_cleanup(&d);
}
END_TEST

static int init_with_file(const char *content)
{
	char path[256];
	dev_dedup d;
	path_of(path, sizeof(path), "bad");
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(content, f);
	ck_assert_int_eq(fclose(f), 0);
	int err = dev_dedup_init(&d, 8, path);
	ck_assert_ptr_null(d.ring); /* nothing held on failure */
	dev_dedup_cleanup(&d);
	return err;
}

START_TEST(dedup_refuses_corrupt_files)
{
	const char *h = "1111111111111111111111111111111111111111111111111111111111111111\n";
	char ok[256];
	snprintf(ok, sizeof(ok), "micadev-seen v1\n%s", h);
	dev_dedup d;
	char path[256];
	path_of(path, sizeof(path), "good");
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(ok, f);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(dev_dedup_init(&d, 8, path), 0);
	ck_assert_uint_eq(d.len, 1);
	dev_dedup_cleanup(&d);

	ck_assert_int_eq(init_with_file(""), MICA_EBADHEADER);
	ck_assert_int_eq(init_with_file("micadev-seen v2\n"), MICA_EBADHEADER);
	ck_assert_int_eq(init_with_file("micadev-seen v1\n1111\n"), MICA_EBADHEADER);
	ck_assert_int_eq(
		init_with_file(
			"micadev-seen v1\n"
			"zz11111111111111111111111111111111111111111111111111111111111111\n"),
		MICA_EBADHEADER);
	/* A last line cut before its newline (a torn write) is refused too. */
	ck_assert_int_eq(
		init_with_file("micadev-seen v1\n"
			       "1111111111111111111111111111111111111111111111111111111111111111"),
		MICA_EBADHEADER);
	ck_assert_int_eq(dev_dedup_init(&d, DEV_DEDUP_MAX_CAP + 1, NULL), MICA_EINVAL);
	ck_assert_int_eq(dev_dedup_init(&d, 0, NULL), 0);
	ck_assert_uint_eq(d.cap, DEV_DEDUP_DEFAULT_CAP);
	dev_dedup_cleanup(&d);
}
END_TEST

/* ---- backoff ----------------------------------------------------------------------- */

START_TEST(backoff_stays_within_full_jitter_bounds)
{
	/* The ends of the draw: 0 and the ceiling min(cap, base * 2^n). */
	ck_assert_uint_eq(dev_backoff_ms(0, 500, 60000, 0), 0);
	ck_assert_uint_eq(dev_backoff_ms(0, 500, 60000, UINT32_MAX), 500);
	ck_assert_uint_eq(dev_backoff_ms(1, 500, 60000, UINT32_MAX), 1000);
	ck_assert_uint_eq(dev_backoff_ms(6, 500, 60000, UINT32_MAX), 32000);
	ck_assert_uint_eq(dev_backoff_ms(7, 500, 60000, UINT32_MAX), 60000); /* 64000 capped */
	ck_assert_uint_eq(dev_backoff_ms(3, 500, 60000, UINT32_MAX / 2), 1999);
	/* Any attempt, however large, stays at the cap: no overflow. */
	ck_assert_uint_eq(dev_backoff_ms(64, 500, 60000, UINT32_MAX), 60000);
	ck_assert_uint_eq(dev_backoff_ms(UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX),
			  UINT32_MAX);
	ck_assert_uint_eq(dev_backoff_ms(5, 70000, 60000, UINT32_MAX), 60000); /* base > cap */
	/* Random draws: never above the ceiling, and spread over it (full
	 * jitter, not a fixed exponential). */
	for (unsigned a = 0; a < 40; a++) {
		uint64_t ceiling = a < 7 ? 500ull << a : 60000, lo = UINT64_MAX, hi = 0;
		for (int i = 0; i < 200; i++) {
			uint32_t r;
			ck_assert_int_eq(mica_random(&r, sizeof(r)), 0);
			uint64_t d = dev_backoff_ms(a, 500, 60000, r);
			ck_assert_uint_le(d, ceiling);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
		}
		ck_assert_uint_lt(lo, ceiling / 4);
		ck_assert_uint_gt(hi, ceiling * 3 / 4);
	}
}
END_TEST

/* ---- opening sealed messages -------------------------------------------------------- */

static const char *REGID = "Zr3Qm7vX2pL9sK4tW8yB1nC6dF0gH5jA7eR2uI3oP9q";
static uint8_t key[PUSH_CONTENT_KEY_LEN];

static uint8_t *seal(const char *regid, const push_message_view *m, size_t *len)
{
	uint8_t *out = NULL;
	ck_assert_int_eq(push_seal_message(key, regid, m, &out, len), 0);
	return out;
}

static void key_setup(void)
{
	ck_assert_int_eq(mica_random(key, sizeof(key)), 0);
}

START_TEST(open_reads_every_field)
{
	json_t *extra = json_pack("{s:s}", "k", "v");
	push_message_view v = {.msg_id = "scm01",
			       .type = "notification",
			       .app_id = "2882303761517",
			       .package = "com.example.news",
			       .title = "T",
			       .description = "D",
			       .payload = "P",
			       .notify_id = 7,
			       .notify_type = -1,
			       .extra = extra,
			       .sent_at_ms = 1765112345678};
	size_t len;
	uint8_t *env = seal(REGID, &v, &len);
	dev_push_message m;
	ck_assert_int_eq(dev_push_open(key, REGID, env, len, &m), 0);
	ck_assert_str_eq(m.id, "scm01");
	ck_assert_str_eq(m.type, "notification");
	ck_assert_str_eq(m.app_id, "2882303761517");
	ck_assert_str_eq(m.package, "com.example.news");
	ck_assert_str_eq(m.title, "T");
	ck_assert_str_eq(m.description, "D");
	ck_assert_str_eq(m.payload, "P");
	ck_assert_int_eq(m.notify_id, 7);
	ck_assert_int_eq(m.notify_type, -1);
	ck_assert_str_eq(json_string_value(json_object_get(m.extra, "k")), "v");
	ck_assert_int_eq(m.sent_at_ms, 1765112345678);
	ck_assert(!m.deleted);
	dev_push_message_cleanup(&m);
	dev_push_message_cleanup(&m);
	free(env);
	json_decref(extra);

	push_message_view mark = {.msg_id = "deleted:x",
				  .type = "deleted_messages",
				  .notify_id = -1,
				  .sent_at_ms = 1,
				  .count = 12};
	env = seal(REGID, &mark, &len);
	ck_assert_int_eq(dev_push_open(key, REGID, env, len, &m), 0);
	ck_assert(m.deleted);
	ck_assert_int_eq(m.count, 12);
	ck_assert_int_eq(m.notify_id, -1);
	ck_assert_ptr_null(m.title);
	dev_push_message_cleanup(&m);
	free(env);
}
END_TEST

/* The attack: the broker (or whoever holds its queue) hands device B a
 * message sealed for device A, or alters one. */
START_TEST(open_refuses_another_regid_key_or_tampering)
{
	push_message_view v = {
		.msg_id = "m1", .type = "pass_through", .payload = "secret", .notify_id = -1};
	size_t len;
	uint8_t *env = seal(REGID, &v, &len), other[PUSH_CONTENT_KEY_LEN];
	dev_push_message m;

	/* Another device's regid, one byte longer or shorter, or empty. */
	ck_assert_int_eq(
		dev_push_open(key, "Zr3Qm7vX2pL9sK4tW8yB1nC6dF0gH5jA7eR2uI3oP9r", env, len, &m),
		MICA_EAUTH);
	ck_assert_ptr_null(m.json);
	ck_assert_ptr_null(m.id);
	ck_assert_int_eq(
		dev_push_open(key, "Zr3Qm7vX2pL9sK4tW8yB1nC6dF0gH5jA7eR2uI3oP9", env, len, &m),
		MICA_EAUTH);
	ck_assert_int_eq(dev_push_open(key, "", env, len, &m), MICA_EAUTH);
	/* Another key. */
	memcpy(other, key, sizeof(other));
	other[0] ^= 1;
	ck_assert_int_eq(dev_push_open(other, REGID, env, len, &m), MICA_EAUTH);
	/* Every byte flipped in turn: refused (header bytes may fail as a
	 * bad header or truncation, never open). */
	for (size_t i = 0; i < len; i++) {
		env[i] ^= 0x40;
		int err = dev_push_open(key, REGID, env, len, &m);
		ck_assert_int_ne(err, 0);
		ck_assert_ptr_null(m.json);
		env[i] ^= 0x40;
	}
	/* Cut short, and one byte too many. */
	ck_assert_int_eq(dev_push_open(key, REGID, env, len - 1, &m), MICA_ETRUNCATED);
	uint8_t *longer = malloc(len + 1);
	memcpy(longer, env, len);
	longer[len] = 0;
	ck_assert_int_eq(dev_push_open(key, REGID, longer, len + 1, &m), MICA_EBADHEADER);
	free(longer);
	/* Untouched, it opens. */
	ck_assert_int_eq(dev_push_open(key, REGID, env, len, &m), 0);
	ck_assert_str_eq(m.payload, "secret");
	dev_push_message_cleanup(&m);
	free(env);
}
END_TEST

/* Sealed correctly (right key, right AAD) but not a message. */
static int open_raw(const char *key_name, const char *pt)
{
	char aad[128];
	size_t alen = sizeof("mica-push v1") + strlen(REGID);
	memcpy(aad, "mica-push v1", sizeof("mica-push v1"));
	memcpy(aad + sizeof("mica-push v1"), REGID, strlen(REGID));
	uint8_t *env = NULL;
	size_t len = 0;
	dev_push_message m;
	ck_assert_int_eq(mica_envelope_seal(key, sizeof(key), key_name, 1, aad, alen, pt,
					    strlen(pt), &env, &len),
			 0);
	int err = dev_push_open(key, REGID, env, len, &m);
	if (err == 0)
		dev_push_message_cleanup(&m);
	else
		ck_assert_ptr_null(m.json);
	free(env);
	return err;
}

START_TEST(open_refuses_what_is_not_a_message)
{
	ck_assert_int_eq(open_raw("push-content", "{\"id\":\"a\",\"type\":\"pass_through\"}"), 0);
	ck_assert_int_eq(open_raw("push-content", "not json"), MICA_EBADHEADER);
	ck_assert_int_eq(open_raw("push-content", "[1]"), MICA_EBADHEADER);
	ck_assert_int_eq(open_raw("push-content", "{\"type\":\"pass_through\"}"), MICA_EBADHEADER);
	ck_assert_int_eq(open_raw("push-content", "{\"id\":1,\"type\":\"pass_through\"}"),
			 MICA_EBADHEADER);
	ck_assert_int_eq(open_raw("push-content", "{\"id\":\"a\",\"id\":\"b\",\"type\":\"x\"}"),
			 MICA_EBADHEADER);
	ck_assert_int_eq(open_raw("other-key", "{\"id\":\"a\",\"type\":\"pass_through\"}"),
			 MICA_EBADHEADER);
	dev_push_message m;
	ck_assert_int_eq(dev_push_open(NULL, REGID, (const uint8_t *)"x", 1, &m), MICA_EINVAL);
}
END_TEST

static Suite *micadev_suite(void)
{
	Suite *s = suite_create("micadev");
	TCase *tc = tcase_create("dedup");
	tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
	tcase_add_test(tc, dedup_remembers_and_forgets_the_oldest);
	tcase_add_test(tc, dedup_state_file_survives_a_restart);
	tcase_add_test(tc, dedup_refuses_corrupt_files);
	suite_add_tcase(s, tc);
	tc = tcase_create("backoff");
	tcase_add_test(tc, backoff_stays_within_full_jitter_bounds);
	suite_add_tcase(s, tc);
	tc = tcase_create("open");
	tcase_add_checked_fixture(tc, key_setup, NULL);
	tcase_add_test(tc, open_reads_every_field);
	tcase_add_test(tc, open_refuses_another_regid_key_or_tampering);
	tcase_add_test(tc, open_refuses_what_is_not_a_message);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = micadev_suite};
