/* test_password.c - the password module (account/password.c): every rule of
 * the miui and nist policies with its exact code and boundaries, the
 * breached-password blocklist against tests/fixtures/breached (hits, misses,
 * padding, CRLF, malformed lines, I/O errors), Argon2id hashing against the
 * reference implementation's test vectors, the hasher threads (concurrent
 * callers, fork), strict PHC parsing and the rehash decision. Runs with the
 * repository root as its working directory.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <argon2.h>

#include "account/password.h"
#include "err.h"
#include "tests/check_main.h"

#define FIXTURE "tests/fixtures/breached"

/* The reference implementation's argon2id vectors (password "password",
 * salt "somesalt", m=256, t=2, p=1 and p=2). */
#define KAT_P1                                                                                     \
	"$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4"
#define KAT_P2                                                                                     \
	"$argon2id$v=19$m=256,t=2,p=2$c29tZXNhbHQ$bQk8UB/VmZZF4Oo79iDXuL5/0ttZwg2f/5U52iv1cDc"

/* Well-formed salt (16 bytes) and hash (32 bytes) for parser tests. */
#define SALT16 "c29tZXNhbHRzb21lc2FsdA"
#define HASH32 "nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4"
#define PHC(params) "$argon2id$v=19$" params "$" SALT16 "$" HASH32

static void expect(const char *policy, const char *pw, acct_blocklist *bl, int want_rc,
		   const char *want_code)
{
	struct acct_password_verdict v;
	int rc = acct_password_check(policy, pw, bl, &v);

	ck_assert_msg(rc == want_rc && strcmp(v.code, want_code) == 0,
		      "%s \"%s\": rc %s code %s (%s), want %s %s", policy ? policy : "(default)",
		      pw ? pw : "(null)", mica_strerror(rc), v.code, v.message,
		      mica_strerror(want_rc), want_code);
	if (rc == 0)
		ck_assert_str_eq(v.message, "");
	else
		ck_assert_msg(v.message[0] != '\0', "no message for %s", v.code);
}

/* |unit| repeated |n| times, in a static buffer. */
static const char *rep(const char *unit, size_t n)
{
	static char buf[4096];
	size_t len = strlen(unit);

	ck_assert_uint_lt(len * n, sizeof(buf));
	for (size_t i = 0; i < n; i++)
		memcpy(buf + i * len, unit, len);
	buf[len * n] = '\0';
	return buf;
}

static acct_blocklist *fixture(void)
{
	acct_blocklist *bl = NULL;
	int rc = acct_blocklist_open(FIXTURE, &bl);

	ck_assert_msg(rc == 0, "open %s (cwd must be the repository root): %s", FIXTURE,
		      mica_strerror(rc));
	return bl;
}

/* ---- miui ------------------------------------------------------------------ */

START_TEST(miui_length_boundaries)
{
	expect("miui", "", NULL, MICA_EINVAL, "too_short");
	expect("miui", "abc1234", NULL, MICA_EINVAL, "too_short");	    /* 7 */
	expect("miui", "abcd1234", NULL, 0, "ok");			    /* 8 */
	expect("miui", "abcdefgh12345678", NULL, 0, "ok");		    /* 16 */
	expect("miui", "abcdefgh123456789", NULL, MICA_EINVAL, "too_long"); /* 17 */
	expect("miui", rep("a1", 64), NULL, MICA_EINVAL, "too_long");
}
END_TEST

START_TEST(miui_classes)
{
	expect("miui", "abcdefgh", NULL, MICA_EINVAL, "too_few_classes");
	expect("miui", "ABCDefgh", NULL, MICA_EINVAL, "too_few_classes"); /* case is one class */
	expect("miui", "12345678", NULL, MICA_EINVAL, "too_few_classes");
	expect("miui", "!@#$%^&*", NULL, MICA_EINVAL, "too_few_classes");
	expect("miui", "abcd!!!!", NULL, 0, "ok");
	expect("miui", "1234!!!!", NULL, 0, "ok");
	expect("miui", "Abcd1234", NULL, 0, "ok");
	expect("miui", "Ab1!Ab1!Ab1!", NULL, 0, "ok");
	/* Length is checked before classes: a 17-letter password is too long. */
	expect("miui", "abcdefghijklmnopq", NULL, MICA_EINVAL, "too_long");
}
END_TEST

START_TEST(miui_every_symbol_counts)
{
	static const char symbols[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
	char pw[16];

	ck_assert_uint_eq(strlen(symbols), 32);
	for (const char *s = symbols; *s; s++) {
		snprintf(pw, sizeof(pw), "abcdefg%c", *s);
		expect("miui", pw, NULL, 0, "ok");
		snprintf(pw, sizeof(pw), "%c%c%c%c%c%c%c%c", *s, *s, *s, *s, *s, *s, *s, *s);
		expect("miui", pw, NULL, MICA_EINVAL, "too_few_classes");
	}
}
END_TEST

START_TEST(miui_invalid_characters)
{
	expect("miui", "abcd 1234", NULL, MICA_EINVAL, "invalid_characters"); /* space */
	expect("miui", "abcd\t1234", NULL, MICA_EINVAL, "invalid_characters");
	expect("miui", "abcd1234\n", NULL, MICA_EINVAL, "invalid_characters");
	expect("miui", "abcd\1771234", NULL, MICA_EINVAL, "invalid_characters");
	expect("miui", "abcd\2001234", NULL, MICA_EINVAL, "invalid_characters");
	expect("miui", "p\xc3\xa4ssw\xc3\xb6rd1", NULL, MICA_EINVAL, "invalid_characters");
	/* Characters are checked first, even in a too-short password. */
	expect("miui", "a b", NULL, MICA_EINVAL, "invalid_characters");
}
END_TEST

START_TEST(policy_selection_and_arguments)
{
	struct acct_password_verdict v;

	expect(NULL, "abc1234", NULL, MICA_EINVAL, "too_short"); /* default is miui */
	expect(NULL, "abcdefgh", NULL, MICA_EINVAL, "too_few_classes");
	expect(ACCT_PASSWORD_POLICY_DEFAULT, "abcd1234", NULL, 0, "ok");
	expect("MIUI", "abcd1234", NULL, MICA_EINVAL, "unknown_policy");
	expect("", "abcd1234", NULL, MICA_EINVAL, "unknown_policy");
	expect("nist2", "abcd1234", NULL, MICA_EINVAL, "unknown_policy");
	expect("miui", NULL, NULL, MICA_EINVAL, "invalid_argument");
	ck_assert_int_eq(acct_password_check("miui", "abcd1234", NULL, NULL), MICA_EINVAL);

	/* nist without a blocklist fails closed. */
	ck_assert_int_eq(acct_password_check("nist", "long enough pass", NULL, &v), MICA_ECONFIG);
	ck_assert_int_eq(v.reason, ACCT_PASSWORD_CHECK_FAILED);
	ck_assert_str_eq(v.code, "config_error");

	ck_assert(acct_password_policy_known("miui"));
	ck_assert(acct_password_policy_known("nist"));
	ck_assert(!acct_password_policy_known("Nist"));
	ck_assert(!acct_password_policy_known(NULL));
}
END_TEST

/* ---- nist ------------------------------------------------------------------ */

START_TEST(nist_length_in_code_points)
{
	acct_blocklist *bl = fixture();

	expect("nist", "", bl, MICA_EINVAL, "too_short");
	expect("nist", "zqxjvkw", bl, MICA_EINVAL, "too_short"); /* 7 */
	expect("nist", "zqxjvkwy", bl, 0, "ok");		 /* 8, no composition rule */
	expect("nist", rep("z", 64), bl, 0, "ok");
	expect("nist", rep("z", 65), bl, 0, "ok");
	expect("nist", rep("z", 128), bl, 0, "ok");
	expect("nist", rep("z", 129), bl, MICA_EINVAL, "too_long");
	/* Code points, not bytes: 7 euro signs are 21 bytes and still too short. */
	expect("nist", rep("\xe2\x82\xac", 7), bl, MICA_EINVAL, "too_short");
	expect("nist", rep("\xc3\xa9", 8), bl, 0, "ok");		   /* 8 x U+00E9 */
	expect("nist", rep("\xf0\x9f\x98\x80", 128), bl, 0, "ok");	   /* 512 bytes */
	expect("nist", rep("\xc3\xa9", 129), bl, MICA_EINVAL, "too_long"); /* 258 bytes */
	expect("nist", "correct horse battery staple", bl, 0, "ok");	   /* spaces allowed */
	expect("nist",
	       "\xe5\xaf\x86\xe7\xa0\x81\xe5\xae\x89\xe5\x85\xa8\xe6\x80\xa7\xe5\xbe\x88"
	       "\xe9\xab\x98",
	       bl, MICA_EINVAL, "too_short"); /* 7 CJK characters */
	acct_blocklist_close(bl);
}
END_TEST

START_TEST(nist_invalid_utf8_and_controls)
{
	static const char *const bad[] = {
		"abcdefgh\x80",			/* stray continuation byte */
		"abcdefgh\xc3",			/* truncated 2-byte sequence */
		"abcdefgh\xe2\x82",		/* truncated 3-byte sequence */
		"abcdefgh\xc3\x28",		/* bad continuation */
		"abcdefgh\xc0\xaf",		/* overlong '/' */
		"abcdefgh\xe0\x80\xaf",		/* overlong, 3 bytes */
		"abcdefgh\xf0\x80\x80\xaf",	/* overlong, 4 bytes */
		"abcdefgh\xed\xa0\x80",		/* surrogate U+D800 */
		"abcdefgh\xf4\x90\x80\x80",	/* U+110000 */
		"abcdefgh\xf8\x88\x80\x80\x80", /* 5-byte form */
		"abcdefgh\xfe",			/* never valid */
		"abcdefgh\x01",			/* C0 control */
		"abcdefgh\t",			/* tab */
		"abcdefgh\x7f",			/* DEL */
		"abcdefgh\xc2\x85",		/* C1 control NEL */
		"a\x80",			/* short and invalid: characters first */
	};
	acct_blocklist *bl = fixture();

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect("nist", bad[i], bl, MICA_EINVAL, "invalid_characters");
	/* The largest code point and U+00A0 (first after C1) are fine. */
	expect("nist", "abcdefgh\xf4\x8f\xbf\xbf", bl, 0, "ok");
	expect("nist", "abcdefgh\xc2\xa0", bl, 0, "ok");
	acct_blocklist_close(bl);
}
END_TEST

START_TEST(nist_breached)
{
	acct_blocklist *bl = fixture();
	struct acct_password_verdict v;

	expect("nist", "password1", bl, MICA_EINVAL, "breached"); /* CRLF file */
	ck_assert_int_eq(acct_password_check("nist", "password1", bl, &v), MICA_EINVAL);
	ck_assert_int_eq(v.reason, ACCT_PASSWORD_BREACHED);
	ck_assert_uint_eq(v.breach_count, 2427683);
	expect("nist", "12345678", bl, MICA_EINVAL, "breached");
	expect("nist", "iloveyou1", bl, MICA_EINVAL, "breached");
	expect("nist", "qwerty123", bl, MICA_EINVAL, "breached"); /* lower-case suffix */
	expect("nist", "correcthorse1", bl, 0, "ok");		  /* padding, count 0 */
	expect("nist", "mica-miss-438080", bl, 0, "ok");	  /* file exists, no line */
	expect("nist", "Tr0ub4dor&3", bl, 0, "ok");		  /* no file for the prefix */
	/* miui never consults the blocklist. */
	expect("miui", "password1", bl, 0, "ok");
	acct_blocklist_close(bl);
}
END_TEST

/* ---- Blocklist ------------------------------------------------------------- */

START_TEST(blocklist_lookups)
{
	acct_blocklist *bl = fixture();
	uint64_t count = 99;

	ck_assert_int_eq(acct_blocklist_contains(bl, "password1", &count), 0);
	ck_assert_uint_eq(count, 2427683);
	ck_assert_int_eq(acct_blocklist_contains(bl, "12345678", &count), 0);
	ck_assert_uint_eq(count, 3103451);
	ck_assert_int_eq(acct_blocklist_contains(bl, "iloveyou1", &count), 0);
	ck_assert_uint_eq(count, 171412);
	ck_assert_int_eq(acct_blocklist_contains(bl, "qwerty123", &count), 0);
	ck_assert_uint_eq(count, 1023410);
	ck_assert_int_eq(acct_blocklist_contains(bl, "correcthorse1", &count), 0);
	ck_assert_uint_eq(count, 0);
	ck_assert_int_eq(acct_blocklist_contains(bl, "Tr0ub4dor&3", &count), 0);
	ck_assert_uint_eq(count, 0);
	/* The hash is of the exact bytes: no case folding of the password. */
	ck_assert_int_eq(acct_blocklist_contains(bl, "Password1", &count), 0);
	ck_assert_uint_eq(count, 0);

	/* 7C222 has one malformed line; each read of it counts it again. */
	ck_assert_uint_eq(acct_blocklist_malformed_lines(bl), 1);
	ck_assert_int_eq(acct_blocklist_contains(bl, "mica-miss-438080", &count), 0);
	ck_assert_uint_eq(count, 0);
	ck_assert_uint_eq(acct_blocklist_malformed_lines(bl), 2);

	ck_assert_int_eq(acct_blocklist_contains(bl, NULL, &count), MICA_EINVAL);
	ck_assert_int_eq(acct_blocklist_contains(NULL, "x", &count), MICA_EINVAL);
	ck_assert_int_eq(acct_blocklist_contains(bl, "x", NULL), MICA_EINVAL);
	acct_blocklist_close(bl);
	acct_blocklist_close(NULL);
}
END_TEST

START_TEST(blocklist_open_errors)
{
	acct_blocklist *bl = (acct_blocklist *)1;

	ck_assert_int_eq(acct_blocklist_open("tests/fixtures/no-such-dir", &bl), MICA_ENOTFOUND);
	ck_assert_ptr_null(bl);
	ck_assert_int_eq(acct_blocklist_open(FIXTURE "/E38AD", &bl), MICA_EINVAL);
	ck_assert_ptr_null(bl);
	ck_assert_int_eq(acct_blocklist_open(NULL, &bl), MICA_EINVAL);
	ck_assert_int_eq(acct_blocklist_open(FIXTURE, NULL), MICA_EINVAL);
}
END_TEST

/* A prefix file that exists but cannot be used is an error, never "not
 * breached": a directory in its place, and a file over the size limit. */
START_TEST(blocklist_unreadable_prefix_fails_closed)
{
	char dir[] = "/tmp/mica-blocklist.XXXXXX", path[128];
	acct_blocklist *bl = NULL;
	struct acct_password_verdict v;
	uint64_t count = 7;
	int fd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(acct_blocklist_open(dir, &bl), 0);

	snprintf(path, sizeof(path), "%s/E38AD", dir); /* password1 */
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(acct_blocklist_contains(bl, "password1", &count), MICA_EIO);
	ck_assert_uint_eq(count, 0);
	ck_assert_int_eq(acct_password_check("nist", "password1", bl, &v), MICA_EIO);
	ck_assert_int_eq(v.reason, ACCT_PASSWORD_CHECK_FAILED);
	ck_assert_str_eq(v.code, "io_error");

	snprintf(path, sizeof(path), "%s/7C222", dir); /* 12345678 */
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)ACCT_BLOCKLIST_FILE_MAX + 1), 0);
	close(fd);
	ck_assert_int_eq(acct_blocklist_contains(bl, "12345678", &count), MICA_ETOOBIG);
	ck_assert_int_eq(acct_password_check("nist", "12345678", bl, &v), MICA_ETOOBIG);
	ck_assert_str_eq(v.code, "too_large");

	acct_blocklist_close(bl);
	ck_assert_int_eq(unlink(path), 0);
	snprintf(path, sizeof(path), "%s/E38AD", dir);
	ck_assert_int_eq(rmdir(path), 0);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

#define SUFFIX "214943DAAD1D64C102FAEC29DE4AFE9DA3D"

static void scan(const char *text, uint64_t want_count, uint64_t want_malformed)
{
	uint64_t count = 99, malformed = 99;

	acct__blocklist_scan(text, strlen(text), SUFFIX, &count, &malformed);
	ck_assert_msg(count == want_count && malformed == want_malformed,
		      "\"%s\": count %llu malformed %llu, want %llu %llu", text,
		      (unsigned long long)count, (unsigned long long)malformed,
		      (unsigned long long)want_count, (unsigned long long)want_malformed);
}

START_TEST(blocklist_range_file_format)
{
	scan("", 0, 0);
	scan(SUFFIX ":5", 5, 0); /* no final newline */
	scan(SUFFIX ":5\n", 5, 0);
	scan(SUFFIX ":5\r\n", 5, 0);
	scan("214943daad1d64c102faec29de4afe9da3d:6\n", 6, 0); /* lower case */
	scan(SUFFIX ":0\n", 0, 0);			       /* padding */
	scan(SUFFIX ":18446744073709551615\n", UINT64_MAX, 0);
	scan(SUFFIX ":3\n" SUFFIX ":9\n", 9, 0); /* duplicates: the largest */
	/* Malformed lines are skipped and counted; the rest still counts. */
	scan("\n" SUFFIX ":5\n", 5, 1); /* empty line */
	scan("\r\n", 0, 1);
	scan(SUFFIX ":\n", 0, 1);   /* no count */
	scan(SUFFIX "\n", 0, 1);    /* no colon */
	scan(SUFFIX ":5 \n", 0, 1); /* trailing space */
	scan(SUFFIX ":-5\n", 0, 1);
	scan(SUFFIX ":+5\n", 0, 1);
	scan(SUFFIX ":5x\n", 0, 1);
	scan(SUFFIX ":18446744073709551616\n", 0, 1);			     /* overflow */
	scan("14943DAAD1D64C102FAEC29DE4AFE9DA3D:5\n", 0, 1);		     /* 34 digits */
	scan("2214943DAAD1D64C102FAEC29DE4AFE9DA3D:5\n", 0, 1);		     /* 36 digits */
	scan("214943DAAD1D64C102FAEC29DE4AFE9DA3G:5\n" SUFFIX ":1\n", 1, 1); /* non-hex */
	scan(SUFFIX ":5\r\r\n", 0, 1);
	scan(SUFFIX ":5\r", 5, 0); /* CR at EOF is a line ending too */
	{
		/* A NUL byte inside a line is just a malformed line. */
		static const char nul[] = SUFFIX ":5\n" SUFFIX "\0:7\n";
		uint64_t count = 0, malformed = 0;

		acct__blocklist_scan(nul, sizeof(nul) - 1, SUFFIX, &count, &malformed);
		ck_assert_uint_eq(count, 5);
		ck_assert_uint_eq(malformed, 1);
	}
}
END_TEST

/* ---- Argon2id --------------------------------------------------------------- */

START_TEST(hash_default_parameters)
{
	char *phc = NULL;
	struct acct_phc parsed;
	static const char pw[] = "correct horse battery staple";

	ck_assert_int_eq(acct_password_hash(pw, &phc), 0);
	ck_assert_ptr_nonnull(phc);
	ck_assert_msg(strncmp(phc, "$argon2id$v=19$m=19456,t=2,p=1$", 31) == 0, "%s", phc);
	ck_assert_int_eq(acct_phc_parse(phc, &parsed), 0);
	ck_assert_uint_eq(parsed.salt_len, ACCT_ARGON2_SALT_LEN);
	ck_assert_uint_eq(parsed.hash_len, ACCT_ARGON2_HASH_LEN);
	/* The reference implementation's own decoder agrees. */
	ck_assert_int_eq(argon2id_verify(phc, pw, strlen(pw)), ARGON2_OK);
	ck_assert_int_eq(acct_password_verify(phc, pw), 0);
	ck_assert_int_eq(acct_password_verify(phc, "correct horse battery stapl"), MICA_EAUTH);
	ck_assert_int_eq(acct_password_needs_rehash(phc, &acct_argon2_defaults), 0);
	free(phc);
}
END_TEST

START_TEST(hash_custom_parameters_and_salt)
{
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	const acct_argon2_params two_lanes = {.m_kib = 64, .t = 1, .p = 2};
	char *a = NULL, *b = NULL, *c = NULL;

	ck_assert_int_eq(acct_password_hash_with("same password", &cheap, &a), 0);
	ck_assert_int_eq(acct_password_hash_with("same password", &cheap, &b), 0);
	ck_assert_msg(strncmp(a, "$argon2id$v=19$m=64,t=1,p=1$", 28) == 0, "%s", a);
	ck_assert_str_ne(a, b); /* fresh salt each time */
	ck_assert_int_eq(acct_password_verify(a, "same password"), 0);
	ck_assert_int_eq(acct_password_verify(b, "same password"), 0);
	ck_assert_int_eq(acct_password_verify(a, "Same password"), MICA_EAUTH);
	ck_assert_int_eq(acct_password_verify(a, ""), MICA_EAUTH);
	ck_assert_int_eq(acct_password_needs_rehash(a, &cheap), 0);
	ck_assert_int_eq(acct_password_needs_rehash(a, &acct_argon2_defaults), 1);

	ck_assert_int_eq(acct_password_hash_with("p", &two_lanes, &c), 0);
	ck_assert_msg(strstr(c, "m=64,t=1,p=2$") != NULL, "%s", c);
	ck_assert_int_eq(acct_password_verify(c, "p"), 0);
	ck_assert_int_eq(acct_password_needs_rehash(c, &cheap), 0);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* A computation above what a hasher keeps (256 MiB) maps its own memory; the
 * hasher's kept memory still serves the next, smaller one. */
START_TEST(hash_memory_above_kept)
{
	const acct_argon2_params big = {.m_kib = 257 * 1024, .t = 1, .p = 1};
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	char *a = NULL, *b = NULL;

	ck_assert_int_eq(acct_password_hash_with("big", &big, &a), 0);
	ck_assert_int_eq(argon2id_verify(a, "big", 3), ARGON2_OK);
	ck_assert_int_eq(acct_password_verify(a, "big"), 0);
	ck_assert_int_eq(acct_password_hash_with("small", &cheap, &b), 0);
	ck_assert_int_eq(argon2id_verify(b, "small", 5), ARGON2_OK);
	ck_assert_int_eq(acct_password_verify(a, "bIg"), MICA_EAUTH);
	free(a);
	free(b);
}
END_TEST

/* Many threads hashing at once through the hashers (one per CPU, fed by a
 * queue) each get the hash of their own password, never a neighbour's. */
#define CONCURRENT_THREADS 12
#define CONCURRENT_ROUNDS 4

struct concurrent_arg {
	int index;
	int failures;
};

static void *concurrent_hasher(void *p)
{
	struct concurrent_arg *a = p;
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	char pw[32], other[32];

	snprintf(pw, sizeof(pw), "pw-%d", a->index);
	snprintf(other, sizeof(other), "pw-%d", a->index + 1);
	for (int r = 0; r < CONCURRENT_ROUNDS; r++) {
		char *phc = NULL;
		if (acct_password_hash_with(pw, &cheap, &phc) != 0 ||
		    argon2id_verify(phc, pw, strlen(pw)) != ARGON2_OK ||
		    acct_password_verify(phc, pw) != 0 ||
		    acct_password_verify(phc, other) != MICA_EAUTH)
			a->failures++;
		free(phc);
	}
	return NULL;
}

/* Threads of this process named |name|, from /proc/self/task. */
static int threads_named(const char *name)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d))) {
		char path[300], comm[32] = "";
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f)) {
			comm[strcspn(comm, "\n")] = '\0';
			n += strcmp(comm, name) == 0;
		}
		fclose(f);
	}
	closedir(d);
	return n;
}

START_TEST(hash_concurrent_callers)
{
	pthread_t t[CONCURRENT_THREADS];
	struct concurrent_arg a[CONCURRENT_THREADS];

	for (int i = 0; i < CONCURRENT_THREADS; i++) {
		a[i] = (struct concurrent_arg){.index = i};
		ck_assert_int_eq(pthread_create(&t[i], NULL, concurrent_hasher, &a[i]), 0);
	}
	for (int i = 0; i < CONCURRENT_THREADS; i++) {
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
		ck_assert_msg(a[i].failures == 0, "thread %d: %d wrong hashes", i, a[i].failures);
	}
	/* However many callers, one hasher per online CPU computed for them. */
	ck_assert_int_eq(threads_named("argon2-hasher"), (int)sysconf(_SC_NPROCESSORS_ONLN));
}
END_TEST

/* The hashers stay behind in fork(): a child that hashes after its parent
 * did starts its own instead of queueing for threads it does not have. */
/* Hashes in a child of fork() and exits 0 when the child's hashes are right.
 * A child waiting for a lock its parent's threads held dies of SIGALRM
 * (check's own handler for it would kill the whole test instead). */
static pid_t fork_and_hash(const char *phc, const acct_argon2_params *params)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	char *mine = NULL;
	signal(SIGALRM, SIG_DFL);
	alarm(20);
	int ok = acct_password_verify(phc, "parent") == 0 &&
		 acct_password_hash_with("child", params, &mine) == 0 &&
		 acct_password_verify(mine, "child") == 0;
	_exit(ok ? 0 : 1);
}

static void assert_exited_ok(pid_t pid, const char *who)
{
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: status %d", who, status);
}

START_TEST(hash_after_fork)
{
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	char *phc = NULL;

	ck_assert_int_eq(acct_password_hash_with("parent", &cheap, &phc), 0);
	pid_t pid = fork_and_hash(phc, &cheap);
	ck_assert_int_ge(pid, 0);
	assert_exited_ok(pid, "child after fork");
	ck_assert_int_eq(acct_password_verify(phc, "parent"), 0);
	free(phc);
}
END_TEST

/* The fork comes right after a process's first hash, while its hashers may
 * still be starting up, in many fresh processes: each is a chance for the
 * child to inherit a lock held by a thread it does not have. */
START_TEST(fork_while_hashers_start)
{
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	char *phc = NULL;

	ck_assert_int_eq(acct_password_hash_with("parent", &cheap, &phc), 0);
	for (int i = 0; i < 12; i++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			/* A fresh process with no hashers: its first hash starts them,
			 * and its child forks at once. */
			char *again = NULL;
			signal(SIGALRM, SIG_DFL);
			alarm(60);
			if (acct_password_hash_with("parent", &cheap, &again) != 0)
				_exit(2);
			pid_t grandchild = fork_and_hash(again, &cheap);
			int status;
			if (grandchild < 0 || waitpid(grandchild, &status, 0) != grandchild)
				_exit(3);
			_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 4);
		}
		assert_exited_ok(pid, "fresh process and its child");
	}
	free(phc);
}
END_TEST

START_TEST(hash_errors)
{
	const acct_argon2_params bad[] = {
		{.m_kib = 64, .t = 0, .p = 1},
		{.m_kib = 64, .t = 1, .p = 0},
		{.m_kib = 7, .t = 1, .p = 1}, /* below 8 * p */
		{.m_kib = 15, .t = 1, .p = 2},
		{.m_kib = ACCT_ARGON2_MAX_M_KIB + 1, .t = 1, .p = 1},
		{.m_kib = 64, .t = ACCT_ARGON2_MAX_T + 1, .p = 1},
		{.m_kib = 1024, .t = 1, .p = ACCT_ARGON2_MAX_P + 1},
	};
	const acct_argon2_params cheap = {.m_kib = 64, .t = 1, .p = 1};
	char *phc = (char *)1;
	char *long_pw = malloc(ACCT_PASSWORD_MAX_BYTES + 2);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(!acct_argon2_params_valid(&bad[i]), "params %zu", i);
		ck_assert_int_eq(acct_password_hash_with("pw", &bad[i], &phc), MICA_EINVAL);
		ck_assert_ptr_null(phc);
	}
	ck_assert(acct_argon2_params_valid(&acct_argon2_defaults));
	ck_assert_int_eq(acct_password_hash_with("pw", NULL, &phc), MICA_EINVAL);
	ck_assert_int_eq(acct_password_hash(NULL, &phc), MICA_EINVAL);
	ck_assert_int_eq(acct_password_hash("pw", NULL), MICA_EINVAL);

	memset(long_pw, 'a', ACCT_PASSWORD_MAX_BYTES + 1);
	long_pw[ACCT_PASSWORD_MAX_BYTES + 1] = '\0';
	ck_assert_int_eq(acct_password_hash_with(long_pw, &cheap, &phc), MICA_ETOOBIG);
	ck_assert_ptr_null(phc);
	/* Too long to have been set: a mismatch, found without hashing. */
	ck_assert_int_eq(acct_password_verify(KAT_P1, long_pw), MICA_EAUTH);
	long_pw[ACCT_PASSWORD_MAX_BYTES] = '\0';
	ck_assert_int_eq(acct_password_hash_with(long_pw, &cheap, &phc), 0);
	ck_assert_int_eq(acct_password_verify(phc, long_pw), 0);
	free(phc);
	free(long_pw);

	ck_assert_int_eq(acct_password_verify(NULL, "pw"), MICA_EINVAL);
	ck_assert_int_eq(acct_password_verify(KAT_P1, NULL), MICA_EINVAL);
	ck_assert_int_eq(acct_password_needs_rehash(NULL, &cheap), MICA_EINVAL);
	ck_assert_int_eq(acct_password_needs_rehash(KAT_P1, NULL), MICA_EINVAL);
}
END_TEST

START_TEST(verify_reference_vectors)
{
	struct acct_phc parsed;

	ck_assert_int_eq(acct_password_verify(KAT_P1, "password"), 0);
	ck_assert_int_eq(acct_password_verify(KAT_P1, "sassword"), MICA_EAUTH);
	ck_assert_int_eq(acct_password_verify(KAT_P2, "password"), 0);
	ck_assert_int_eq(acct_password_verify(KAT_P2, "passwore"), MICA_EAUTH);
	ck_assert_int_eq(acct_phc_parse(KAT_P2, &parsed), 0);
	ck_assert_uint_eq(parsed.params.m_kib, 256);
	ck_assert_uint_eq(parsed.params.t, 2);
	ck_assert_uint_eq(parsed.params.p, 2);
	ck_assert_uint_eq(parsed.salt_len, 8);
	ck_assert_mem_eq(parsed.salt, "somesalt", 8);
	ck_assert_uint_eq(parsed.hash_len, 32);
	/* A one-bit change in the stored hash is a mismatch, not a parse error. */
	ck_assert_int_eq(acct_password_verify("$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$"
					      "nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/8",
					      "password"),
			 MICA_EAUTH);
}
END_TEST

START_TEST(needs_rehash_rules)
{
	const acct_argon2_params cur = acct_argon2_defaults;
	const acct_argon2_params more_lanes = {.m_kib = 19456, .t = 2, .p = 2};
	const acct_argon2_params more_time = {.m_kib = 19456, .t = 3, .p = 1};

	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=19456,t=2,p=1"), &cur), 0);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=65536,t=3,p=4"), &cur), 0);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=19455,t=2,p=1"), &cur), 1);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=4096,t=2,p=1"), &cur), 1);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=65536,t=1,p=1"), &cur), 1);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=19456,t=2,p=1"), &more_lanes), 1);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=19456,t=2,p=1"), &more_time), 1);
	ck_assert_int_eq(acct_password_needs_rehash(PHC("m=19456,t=3,p=2"), &more_time), 0);
	/* The reference vector has m=256 and an 8-byte salt. */
	ck_assert_int_eq(acct_password_needs_rehash(KAT_P1, &cur), 1);
	/* Short salt or hash, current parameters: rehash as well. */
	ck_assert_int_eq(acct_password_needs_rehash(
				 "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$" HASH32, &cur),
			 1);
	ck_assert_int_eq(acct_password_needs_rehash("$argon2id$v=19$m=19456,t=2,p=1$" SALT16
						    "$c29tZXNhbHRzb21lc2FsdA",
						    &cur),
			 1);
	ck_assert_int_eq(
		acct_password_needs_rehash("$argon2i$v=19$m=256,t=2,p=1$" SALT16 "$" HASH32, &cur),
		MICA_EINVAL);
}
END_TEST

START_TEST(phc_malformed)
{
	static const char *const bad[] = {
		"",
		"$",
		"argon2id$v=19$m=19456,t=2,p=1$" SALT16 "$" HASH32,
		"$argon2i$v=19$m=19456,t=2,p=1$" SALT16 "$" HASH32,
		"$argon2d$v=19$m=19456,t=2,p=1$" SALT16 "$" HASH32,
		"$Argon2id$v=19$m=19456,t=2,p=1$" SALT16 "$" HASH32,
		"$argon2id$v=16$m=19456,t=2,p=1$" SALT16 "$" HASH32,
		"$argon2id$m=19456,t=2,p=1$" SALT16 "$" HASH32, /* no version */
		PHC("t=2,m=19456,p=1"),				/* order */
		PHC("m=19456,p=1,t=2"),
		PHC("m=19456,t=2"),
		PHC("m=19456,t=2,p=1,keyid=abc"),
		PHC("m=19456, t=2,p=1"),
		PHC("m=019456,t=2,p=1"), /* leading zero */
		PHC("m=+19456,t=2,p=1"),
		PHC("m=-1,t=2,p=1"),
		PHC("m=,t=2,p=1"),
		PHC("m=4294967296,t=2,p=1"),
		PHC("m=99999999999999999999,t=2,p=1"),
		PHC("m=4194305,t=2,p=1"), /* over ACCT_ARGON2_MAX_M_KIB */
		PHC("m=19456,t=0,p=1"),
		PHC("m=19456,t=65,p=1"),
		PHC("m=19456,t=2,p=0"),
		PHC("m=19456,t=2,p=65"),
		PHC("m=7,t=2,p=1"), /* below 8 * p */
		PHC("m=31,t=2,p=4"),
		PHC("m=19456,t=2,p=1") "$",
		PHC("m=19456,t=2,p=1") "!",
		PHC("m=19456,t=2,p=1") " ",
		PHC("m=19456,t=2,p=1") "\n",
		PHC("m=19456,t=2,p=1") "=",
		"$argon2id$v=19$m=19456,t=2,p=1$" SALT16 "==$" HASH32,		 /* padding */
		"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdB$" HASH32, /* unused bits */
		"$argon2id$v=19$m=19456,t=2,p=1$c29tZX-hbHRzb21lc2FsdA$" HASH32, /* base64url */
		"$argon2id$v=19$m=19456,t=2,p=1$c29tZX_hbHRzb21lc2FsdA$" HASH32,
		"$argon2id$v=19$m=19456,t=2,p=1$c29tZX*hbHRzb21lc2FsdA$" HASH32,
		"$argon2id$v=19$m=19456,t=2,p=1$$" HASH32,			  /* empty salt */
		"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbA$" HASH32,		  /* 7-byte salt */
		"$argon2id$v=19$m=19456,t=2,p=1$" SALT16 "$",			  /* empty hash */
		"$argon2id$v=19$m=19456,t=2,p=1$" SALT16 "$c29tZXNhbHRzb21lc2Fs", /* 15 bytes */
		"$argon2id$v=19$m=19456,t=2,p=1$" SALT16,			  /* no hash */
		"$argon2id$v=19$m=19456,t=2,p=1$" SALT16 "$" HASH32 "$" HASH32,
	};
	struct acct_phc parsed;
	char big[8192]; /* rep() can return up to 4095 bytes */

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&parsed, 0xa5, sizeof(parsed));
		ck_assert_msg(acct_phc_parse(bad[i], &parsed) == MICA_EINVAL, "accepted [%zu] %s",
			      i, bad[i]);
		ck_assert_uint_eq(parsed.params.m_kib, 0); /* zeroed on failure */
		ck_assert_int_eq(acct_password_verify(bad[i], "password"), MICA_EINVAL);
		ck_assert_int_eq(acct_password_needs_rehash(bad[i], &acct_argon2_defaults),
				 MICA_EINVAL);
	}
	/* Salt and hash of 64 bytes are the maximum; 65 is too long. */
	snprintf(big, sizeof(big), "$argon2id$v=19$m=64,t=1,p=1$%s$%s", rep("AAAA", 21) /* 63 */,
		 HASH32);
	ck_assert_int_eq(acct_phc_parse(big, &parsed), 0);
	snprintf(big, sizeof(big), "$argon2id$v=19$m=64,t=1,p=1$%sAA$%s", rep("AAAA", 21),
		 HASH32); /* 64 */
	ck_assert_int_eq(acct_phc_parse(big, &parsed), 0);
	ck_assert_uint_eq(parsed.salt_len, 64);
	snprintf(big, sizeof(big), "$argon2id$v=19$m=64,t=1,p=1$%sAAA$%s", rep("AAAA", 21),
		 HASH32); /* 65 */
	ck_assert_int_eq(acct_phc_parse(big, &parsed), MICA_EINVAL);
	/* Longer than ACCT_PHC_MAX_LEN as a whole. */
	snprintf(big, sizeof(big), "$argon2id$v=19$m=64,t=1,p=1$%sAA$", rep("AAAA", 21));
	strcat(big, rep("AAAA", 40)); /* rep() reuses one buffer: one call per statement */
	ck_assert_uint_gt(strlen(big), ACCT_PHC_MAX_LEN);
	ck_assert_int_eq(acct_phc_parse(big, &parsed), MICA_EINVAL);
	ck_assert_int_eq(acct_phc_parse(NULL, &parsed), MICA_EINVAL);
	ck_assert_int_eq(acct_phc_parse(KAT_P1, NULL), MICA_EINVAL);
	/* The largest accepted parameters parse. */
	ck_assert_int_eq(acct_phc_parse(PHC("m=4194304,t=64,p=64"), &parsed), 0);
	ck_assert_uint_eq(parsed.params.m_kib, 4194304);
}
END_TEST

static Suite *password_suite(void)
{
	Suite *s = suite_create("password");
	TCase *policy = tcase_create("policy");
	TCase *blocklist = tcase_create("blocklist");
	TCase *hashing = tcase_create("hashing");

	tcase_add_test(policy, miui_length_boundaries);
	tcase_add_test(policy, miui_classes);
	tcase_add_test(policy, miui_every_symbol_counts);
	tcase_add_test(policy, miui_invalid_characters);
	tcase_add_test(policy, policy_selection_and_arguments);
	tcase_add_test(policy, nist_length_in_code_points);
	tcase_add_test(policy, nist_invalid_utf8_and_controls);
	tcase_add_test(policy, nist_breached);
	suite_add_tcase(s, policy);

	tcase_add_test(blocklist, blocklist_lookups);
	tcase_add_test(blocklist, blocklist_open_errors);
	tcase_add_test(blocklist, blocklist_unreadable_prefix_fails_closed);
	tcase_add_test(blocklist, blocklist_range_file_format);
	suite_add_tcase(s, blocklist);

	/* Argon2 at 19 MiB takes tens of milliseconds per hash; more under ASan. */
	tcase_set_timeout(hashing, 60);
	tcase_add_test(hashing, hash_default_parameters);
	tcase_add_test(hashing, hash_custom_parameters_and_salt);
	tcase_add_test(hashing, hash_memory_above_kept);
	tcase_add_test(hashing, hash_concurrent_callers);
	tcase_add_test(hashing, hash_after_fork);
	tcase_add_test(hashing, fork_while_hashers_start);
	tcase_add_test(hashing, hash_errors);
	tcase_add_test(hashing, verify_reference_vectors);
	tcase_add_test(hashing, needs_rehash_rules);
	tcase_add_test(hashing, phc_malformed);
	suite_add_tcase(s, hashing);
	return s;
}

const struct mica_check mica_check = {.suite = password_suite};
