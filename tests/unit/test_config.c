/* test_config.c - table-driven configuration: defaults, INI, environment
 * overrides, bounds, unknown keys and sections, secrets from files, and the
 * shipped deploy/mica.conf.example. */
#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "account/account.h"
#include "config.h"
#include "http.h"
#include "kc.h"
#include "keycenter/keycenter.h"
#include "kv.h"
#include "mipush/push.h"
#include "tests/check_main.h"

struct cfg {
	int level;
	mica_http_options http;
	char *name;
	int count;
	size_t size;
	int flag;
	char *secret;
};

static const mica_config_entry table[] = {
	{"log", "level", MICA_CFG_LOGLEVEL, 0, 4, "info", offsetof(struct cfg, level), "log level"},
	MICA_CONFIG_HTTP_ENTRIES("demo.http", struct cfg, http, "0"),
	{"demo", "name", MICA_CFG_STRING, 1, 8, "x", offsetof(struct cfg, name), "a name"},
	{"demo", "count", MICA_CFG_INT, 1, 10, "3", offsetof(struct cfg, count), "a count"},
	{"demo", "size", MICA_CFG_SIZE, 1, 1 << 20, "4K", offsetof(struct cfg, size), "a size"},
	{"demo", "flag", MICA_CFG_BOOL, 0, 1, "no", offsetof(struct cfg, flag), "a flag"},
	{"demo", "secret_file", MICA_CFG_SECRET, 0, 4096, NULL, offsetof(struct cfg, secret),
	 "a secret"},
};
#define N (sizeof(table) / sizeof(table[0]))

static char dir[] = "/tmp/mica-config-XXXXXX";
static char secret_path[128];

static void setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(secret_path, sizeof(secret_path), "%s/secret", dir);
	FILE *f = fopen(secret_path, "w");
	fputs("s3cr3t\n", f);
	fclose(f);
}

static void teardown(void)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Writes |text| (with %s replaced by the secret's path) to a file, loads it. */
static int load(const char *text, struct cfg *c, char *err, size_t errlen)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/c.ini", dir);
	FILE *f = fopen(path, "w");
	fprintf(f, text, secret_path);
	fclose(f);
	memset(c, 0, sizeof(*c));
	return mica_config_load(table, N, c, path, err, errlen);
}

static const char *good = "[log]\nlevel = warn\n"
			  "[demo.http]\nport = 8443\ncert_file = /c.pem\nkey_file = /k.pem\n"
			  "[demo]\nname = abc\nsize = 2K\nflag = on\nsecret_file = %s\n"
			  "[other.http]\nport = 99999\n";

START_TEST(loads_defaults_file_and_secret)
{
	struct cfg c;
	char err[256];
	ck_assert_int_eq(load(good, &c, err, sizeof(err)), 0);
	ck_assert_int_eq(c.level, 2);
	ck_assert_int_eq(c.http.port, 8443);
	ck_assert_str_eq(c.http.bind, "127.0.0.1");
	ck_assert_int_eq(c.http.timeout_s, 30);
	ck_assert_uint_eq(c.http.max_body, 1 << 20);
	ck_assert_str_eq(c.name, "abc");
	ck_assert_int_eq(c.count, 3);
	ck_assert_uint_eq(c.size, 2048);
	ck_assert_int_eq(c.flag, 1);
	ck_assert_str_eq(c.secret, "s3cr3t");
	mica_config_free(table, N, &c);
	mica_config_free(table, N, &c); /* safe twice */
	ck_assert_ptr_null(c.secret);
}
END_TEST

START_TEST(environment_overrides_file)
{
	struct cfg c;
	char err[256];
	setenv("MICA_DEMO_HTTP_PORT", "9443", 1);
	setenv("MICA_DEMO_COUNT", "7", 1);
	ck_assert_int_eq(load(good, &c, err, sizeof(err)), 0);
	ck_assert_int_eq(c.http.port, 9443);
	ck_assert_int_eq(c.count, 7);
	mica_config_free(table, N, &c);
	setenv("MICA_DEMO_COUNT", "11", 1);
	ck_assert_int_eq(load(good, &c, err, sizeof(err)), MICA_ECONFIG);
	ck_assert_str_eq(err, "demo.count: 11 is out of range 1..10");
	mica_config_free(table, N, &c);
	unsetenv("MICA_DEMO_HTTP_PORT");
	unsetenv("MICA_DEMO_COUNT");
}
END_TEST

/* A misspelt override under one of the program's sections is refused and
 * named; MICA_ names outside its sections (other programs, scripts) are not
 * its business. */
START_TEST(environment_typo_is_refused)
{
	struct cfg c;
	char err[256];
	setenv("MICA_DEMO_HTTP_PROT", "9443", 1);
	ck_assert_int_eq(load(good, &c, err, sizeof(err)), MICA_ECONFIG);
	ck_assert_str_eq(err,
			 "MICA_DEMO_HTTP_PROT: [demo.http] has no key of this environment name");
	mica_config_free(table, N, &c);
	unsetenv("MICA_DEMO_HTTP_PROT");
	setenv("MICA_DEMO_COUNTS", "7", 1);
	ck_assert_int_eq(load(good, &c, err, sizeof(err)), MICA_ECONFIG);
	ck_assert_str_eq(err, "MICA_DEMO_COUNTS: [demo] has no key of this environment name");
	mica_config_free(table, N, &c);
	unsetenv("MICA_DEMO_COUNTS");
	setenv("MICA_OTHER_HTTP_PORT", "1", 1);
	setenv("MICA_DEMOS_COUNT", "1", 1);
	setenv("MICA_DEMO", "1", 1);
	ck_assert_msg(load(good, &c, err, sizeof(err)) == 0, "%s", err);
	mica_config_free(table, N, &c);
	unsetenv("MICA_OTHER_HTTP_PORT");
	unsetenv("MICA_DEMOS_COUNT");
	unsetenv("MICA_DEMO");
}
END_TEST

static void expect_error(const char *text, const char *want)
{
	struct cfg c;
	char err[256];
	ck_assert_int_eq(load(text, &c, err, sizeof(err)), MICA_ECONFIG);
	ck_assert_msg(strstr(err, want) != NULL, "error \"%s\" does not contain \"%s\"", err, want);
	mica_config_free(table, N, &c);
}

START_TEST(errors_name_the_key)
{
	const char *base = "[demo.http]\nport = 1\ncert_file = /c\nkey_file = /k\n"
			   "[demo]\nsecret_file = %s\n";
	char text[512];
	expect_error("[demo.http]\nport = 1\ncert_file = /c\nkey_file = /k\nbogus = 1\n",
		     "demo.http.bogus: unknown key");
	expect_error("[demo]\nsecret_file = %s\nnmae = x\n", "demo.nmae: unknown key");
	expect_error("[nosuch]\na = 1\n", "[nosuch]: unknown section");
	snprintf(text, sizeof(text), "%s%s", base, "count = 0\n");
	expect_error(text, "demo.count: 0 is out of range 1..10");
	snprintf(text, sizeof(text), "%s%s", base, "count = 3x\n");
	expect_error(text, "demo.count: \"3x\" is not an integer");
	snprintf(text, sizeof(text), "%s%s", base, "size = 2Q\n");
	expect_error(text, "demo.size: \"2Q\" is not a size");
	/* One number syntax (mica_parse_int64's): no '+', no inner blanks, no
	 * value beyond int64, a suffix only on a non-negative size. */
	snprintf(text, sizeof(text), "%s%s", base, "count = +3\n");
	expect_error(text, "demo.count: \"+3\" is not an integer");
	snprintf(text, sizeof(text), "%s%s", base, "count = 99999999999999999999\n");
	expect_error(text, "demo.count: \"99999999999999999999\" is not an integer");
	snprintf(text, sizeof(text), "%s%s", base, "size = -1K\n");
	expect_error(text, "demo.size: \"-1K\" is not a size");
	snprintf(text, sizeof(text), "%s%s", base, "size = K\n");
	expect_error(text, "demo.size: \"K\" is not a size");
	snprintf(text, sizeof(text), "%s%s", base, "size = 1 K\n");
	expect_error(text, "demo.size: \"1 K\" is not a size");
	snprintf(text, sizeof(text), "%s%s", base, "size = 2M\n");
	expect_error(text, "demo.size: 2097152 is out of range 1..1048576");
	snprintf(text, sizeof(text), "%s%s", base, "flag = maybe\n");
	expect_error(text, "demo.flag: \"maybe\" is not a boolean");
	snprintf(text, sizeof(text), "%s%s", base, "name = waytoolongname\n");
	expect_error(text, "demo.name: length 14 is out of range 1..8");
	expect_error("[log]\nlevel = loud\n", "log.level: \"loud\" is not one of");
	expect_error("[demo]\nsecret_file = %s\n", "demo.http.port: required key is missing");
	expect_error("[demo.http]\nport = 1\ncert_file = /c\nkey_file = /k\n",
		     "demo.secret_file: required secret file is not set");
	expect_error("[demo.http]\nport = 1\ncert_file = /c\nkey_file = /k\n[demo]\n"
		     "secret_file = /nonexistent/secret\n",
		     "demo.secret_file: cannot read secret file /nonexistent/secret: No such file");
	expect_error("[demo.http]\nport\n", "c.ini:2: syntax error");
	expect_error("x = 1\n", "x: key outside any section");
}
END_TEST

START_TEST(missing_file_is_an_error)
{
	struct cfg c = {0};
	char err[256];
	ck_assert_int_eq(mica_config_load(table, N, &c, "/nonexistent/mica.conf", err, sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_str_eq(err, "cannot open config file /nonexistent/mica.conf");
	mica_config_free(table, N, &c);
}
END_TEST

/* The example written from a table loads back with that table. */
START_TEST(written_example_round_trips)
{
	char path[160];
	struct cfg c = {0};
	char err[256];
	snprintf(path, sizeof(path), "%s/example.ini", dir);
	FILE *f = fopen(path, "w");
	mica_config_write_example(f, table, N);
	fclose(f);
	setenv("MICA_DEMO_HTTP_PORT", "1", 1);
	setenv("MICA_DEMO_HTTP_CERT_FILE", "/c", 1);
	setenv("MICA_DEMO_HTTP_KEY_FILE", "/k", 1);
	setenv("MICA_DEMO_SECRET_FILE", secret_path, 1);
	ck_assert_msg(mica_config_load(table, N, &c, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(c.secret, "s3cr3t");
	mica_config_free(table, N, &c);
}
END_TEST

/* The shared fragments: one definition of the [*.db], [*.redis] and
 * [*.keycenter] keys, with the key names the deployed configs use. */
struct frag_cfg {
	mica_config_db db;
	struct mica_kv_config redis;
	mica_kc_options kc;
};

static const mica_config_entry frag_table[] = {
	MICA_CONFIG_DB_ENTRIES("svc.db", struct frag_cfg, db, "mica_svc"),
	MICA_CONFIG_REDIS_ENTRIES("svc.redis", struct frag_cfg, redis, "svc", "svc:*"),
	MICA_CONFIG_KC_CLIENT_ENTRIES("svc.keycenter", struct frag_cfg, kc, "svc"),
};
#define FRAG_N (sizeof(frag_table) / sizeof(frag_table[0]))

START_TEST(shared_fragments_load_under_their_names)
{
	struct frag_cfg c = {0};
	char path[160], err[256];
	snprintf(path, sizeof(path), "%s/frag.ini", dir);
	FILE *f = fopen(path, "w");
	fprintf(f,
		"[svc.db]\nconninfo = dbname=x\npassword_file = %s\n"
		"[svc.redis]\nsocket = /run/r.sock\npassword_file = %s\n"
		"[svc.keycenter]\nurl = https://kc:1\nca_file = /ca\ncert_file = /c\nkey_file = /k\n",
		secret_path, secret_path);
	fclose(f);
	setenv("MICA_SVC_KEYCENTER_CA_FILE", "/other-ca", 1);
	ck_assert_msg(mica_config_load(frag_table, FRAG_N, &c, path, err, sizeof(err)) == 0, "%s",
		      err);
	unsetenv("MICA_SVC_KEYCENTER_CA_FILE");
	ck_assert_str_eq(c.db.conninfo, "dbname=x");
	ck_assert_str_eq(c.db.password, "s3cr3t");
	ck_assert_str_eq(c.redis.socket_path, "/run/r.sock");
	ck_assert_str_eq(c.redis.username, "svc"); /* the service's default user */
	ck_assert_str_eq(c.redis.password, "s3cr3t");
	ck_assert_str_eq(c.kc.base_url, "https://kc:1");
	ck_assert_str_eq(c.kc.ca_file, "/other-ca");
	ck_assert_str_eq(c.kc.cert_file, "/c");
	ck_assert_str_eq(c.kc.key_file, "/k");
	mica_config_free(frag_table, FRAG_N, &c);
	ck_assert_ptr_null(c.db.password);
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(mica_config_load(frag_table, FRAG_N, &c, NULL, err, sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_str_eq(err, "svc.db.conninfo: required key is missing");
	mica_config_free(frag_table, FRAG_N, &c);
}
END_TEST

/* The validation pass's TLS checks (run before any dependency is opened)
 * accept a real certificate and key and name the key of every bad file. */
START_TEST(tls_checks_name_the_key)
{
	char cmd[1024], cert[160], key[160], key2[160], garbage[160], err[512];
	snprintf(cert, sizeof(cert), "%s/c.pem", dir);
	snprintf(key, sizeof(key), "%s/k.pem", dir);
	snprintf(key2, sizeof(key2), "%s/k2.pem", dir);
	snprintf(garbage, sizeof(garbage), "%s/garbage.pem", dir);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
		 " -subj /CN=t -keyout %s -out %s 2>/dev/null && openssl genpkey -algorithm EC"
		 " -pkeyopt ec_paramgen_curve:P-256 -out %s 2>/dev/null && echo junk > %s",
		 key, cert, key2, garbage);
	ck_assert_int_eq(system(cmd), 0);

	ck_assert_int_eq(mica_config_check_ca("s", "ca_file", cert, err, sizeof(err)), 0);
	ck_assert_int_eq(mica_config_check_cert_key("s", "cert_file", cert, "key_file", key, err,
						    sizeof(err)),
			 0);

	ck_assert_int_eq(mica_config_check_ca("s", "ca_file", garbage, err, sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_msg(strstr(err, "s.ca_file: ") == err && strstr(err, "holds no PEM certificate"),
		      "%s", err);
	ck_assert_int_eq(
		mica_config_check_ca("s", "ca_file", "/nonexistent/ca.pem", err, sizeof(err)),
		MICA_ECONFIG);
	ck_assert_str_eq(err,
			 "s.ca_file: cannot read /nonexistent/ca.pem: No such file or directory");
	ck_assert_int_eq(mica_config_check_ca("s", "ca_file", "", err, sizeof(err)), MICA_ECONFIG);
	ck_assert_str_eq(err, "s.ca_file: not set");
	/* A certificate with somebody else's key, a key that is not one. */
	ck_assert_int_eq(mica_config_check_cert_key("s", "cert_file", cert, "key_file", key2, err,
						    sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_msg(strstr(err, "s.cert_file, s.key_file: ") == err, "%s", err);
	ck_assert_int_eq(mica_config_check_cert_key("s", "cert_file", cert, "key_file", garbage,
						    err, sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_msg(strstr(err, "s.cert_file, s.key_file: ") == err, "%s", err);
	ck_assert_int_eq(mica_config_check_cert_key("s", "cert_file", cert, "key_file",
						    "/nonexistent/k.pem", err, sizeof(err)),
			 MICA_ECONFIG);
	ck_assert_str_eq(err,
			 "s.key_file: cannot read /nonexistent/k.pem: No such file or directory");
}
END_TEST

/* Every program's table, for the example-file test. */
static const struct {
	const char *program;
	const mica_config_entry *table;
	size_t n;
	size_t size;
} programs[] = {
	{"mica-keycenter", kc_config_table, 0, sizeof(struct kc_config)},
	{"mica-account", acct_config_table, 0, sizeof(struct acct_config)},
	{"mica-push", push_config_table, 0, sizeof(struct push_config)},
};

/* deploy/mica.conf.example loads with every program's table, and every key
 * of every table appears in it (documented), in its section. */
START_TEST(shipped_example_documents_every_key)
{
	const char *path = "deploy/mica.conf.example";
	char err[256], line[1024], section[128] = "";
	FILE *f;
	for (size_t p = 0; p < sizeof(programs) / sizeof(programs[0]); p++) {
		size_t n = programs[p].table == kc_config_table	    ? kc_config_table_len
			   : programs[p].table == acct_config_table ? acct_config_table_len
								    : push_config_table_len;
		void *cfg = calloc(1, programs[p].size);
		/* Secret files of the example live in var/ of a running stack: point
		 * every *_file secret at a test file instead. */
		for (size_t i = 0; i < n; i++) {
			const mica_config_entry *e = &programs[p].table[i];
			char name[128];
			size_t j = (size_t)snprintf(name, sizeof(name), "MICA_");
			for (const char *c = e->section; *c; c++)
				name[j++] = *c == '.' ? '_' : (char)toupper((unsigned char)*c);
			name[j++] = '_';
			for (const char *c = e->key; *c; c++)
				name[j++] = (char)toupper((unsigned char)*c);
			name[j] = '\0';
			if (e->type == MICA_CFG_SECRET)
				setenv(name, secret_path, 1);
		}
		ck_assert_msg(mica_config_load(programs[p].table, n, cfg, path, err, sizeof(err)) ==
				      0,
			      "%s: %s", programs[p].program, err);
		mica_config_free(programs[p].table, n, cfg);
		free(cfg);
		for (size_t i = 0; i < n; i++) {
			const mica_config_entry *e = &programs[p].table[i];
			int found = 0;
			ck_assert_ptr_nonnull(f = fopen(path, "r"));
			while (!found && fgets(line, sizeof(line), f)) {
				size_t kl = strlen(e->key);
				if (line[0] == '[')
					sscanf(line, "[%127[^]]]", section);
				else if (strcmp(section, e->section) == 0 &&
					 strncmp(line, e->key, kl) == 0 &&
					 (line[kl] == ' ' || line[kl] == '='))
					found = 1;
			}
			fclose(f);
			ck_assert_msg(found, "%s: %s.%s is not documented in %s",
				      programs[p].program, e->section, e->key, path);
		}
	}
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("load");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, loads_defaults_file_and_secret);
	tcase_add_test(tc, environment_overrides_file);
	tcase_add_test(tc, environment_typo_is_refused);
	tcase_add_test(tc, errors_name_the_key);
	tcase_add_test(tc, missing_file_is_an_error);
	tcase_add_test(tc, written_example_round_trips);
	tcase_add_test(tc, shipped_example_documents_every_key);
	tcase_add_test(tc, shared_fragments_load_under_their_names);
	tcase_add_test(tc, tls_checks_name_the_key);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = config_suite, .fork_from_env = true};
