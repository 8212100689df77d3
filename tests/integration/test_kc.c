/* test_kc.c - lib/kc, the Key Center client, against a real mica-keycenter:
 * its own database (migrated by `mica migrate`, role password set), its own
 * SoftHSM token, `mica keycenter init` with a test policy (account-* keys), the
 * daemon on a free loopback port, as deploy/dev-up does it. Covers the data
 * key round trip, the cache (hits, canonical contexts, TTL, LRU bound,
 * threads, answering while the daemon is stopped or dead, and failing closed
 * for what it does not hold), the error mapping (wrong context, unknown key,
 * denied principal, untrusted CA) and the retry rule, counted by the daemon's
 * own /metrics (on its metrics listener) while its audit trail refuses writes
 * (503), when its /readyz names the audit trail as the failing dependency.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "httpc.h"
#include "kc.h"
#include "log.h"
#include "tests/check_main.h"
#include "thread.h"

#define KEY "account-kc"
#define TOKEN_LABEL "mica-kc-client"

static const char *build, *pg_admin, *ca, *cert_server, *key_server, *cert_account, *key_account,
	*cert_admin, *key_admin, *cert_rogue, *key_rogue, *ca_rogue, *hsm_module;
static char dir[600];
static char dbname[64];
static char db_admin[2048]; /* superuser on dbname */
static char base_url[64], metrics_url[64];
static pid_t daemon_pid;
static pid_t main_pid;

/* ---- setup ------------------------------------------------------------------ */

static const char *need(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v) {
		fprintf(stderr, "test_kc: %s is not set; run through tests/run\n", name);
		exit(1);
	}
	return v;
}

/* Database, role password and passfile, token, `mica keycenter init`: the
 * steps of deploy/dev-up, in this test's own database and token. */
static int setup_stack(void)
{
	static const char script[] =
		"set -euo pipefail\n"
		"ci=\"$MICA_PG_CONNINFO dbname=$KCT_DB\"\n"
		"psql -X \"$MICA_PG_CONNINFO\" -v ON_ERROR_STOP=1 -qc \"CREATE DATABASE $KCT_DB\"\n"
		"MICA_DB_CONNINFO=\"$ci\" \"$MICA_BUILD/bin/mica\" migrate >/dev/null\n"
		"pw=$(openssl rand -hex 32)\n"
		"psql -X \"$ci\" -v ON_ERROR_STOP=1 -q -v pw=\"$pw\" <<'SQL'\n"
		"ALTER ROLE mica_keycenter PASSWORD :'pw';\n"
		"SQL\n"
		"(umask 077 && printf '*:*:*:mica_keycenter:%s\\n' \"$pw\" >\"$KCT_DIR/pgpass\")\n"
		"mkdir -p \"$KCT_DIR/hsm/tokens\"\n"
		"chmod 0700 \"$KCT_DIR/hsm\" \"$KCT_DIR/hsm/tokens\"\n"
		"printf 'directories.tokendir = %s\\nobjectstore.backend = file\\nlog.level = ERROR\\n'"
		" \"$KCT_DIR/hsm/tokens\" >\"$KCT_DIR/hsm/softhsm2.conf\"\n"
		"export SOFTHSM2_CONF=\"$KCT_DIR/hsm/softhsm2.conf\"\n"
		"(umask 077 && openssl rand -hex 32 | tr -d '\\n' >\"$KCT_DIR/pin\" &&"
		" openssl rand -hex 32 | tr -d '\\n' >\"$KCT_DIR/so-pin\")\n"
		"softhsm2-util --init-token --free --label " TOKEN_LABEL
		" --so-pin \"$(<\"$KCT_DIR/so-pin\")\" --pin \"$(<\"$KCT_DIR/pin\")\" >/dev/null\n"
		/* Its own policy: the client is exercised with every operation on
		 * one key, which the least-privilege development policy does not
		 * grant the account principal. */
		"cat >\"$KCT_DIR/policy.json\" <<'JSON'\n"
		"{\"version\": 1, \"principals\": {\"admin\": {\"role\": \"key-admin\"},"
		" \"officer1\": {\"role\": \"security-officer\"},"
		" \"officer2\": {\"role\": \"security-officer\"},"
		" \"auditor\": {\"role\": \"auditor\"}, \"account\": {\"role\": \"service\","
		" \"keys\": {\"account-*\": [\"encrypt\", \"decrypt\", \"rewrap\", \"datakey\","
		" \"hmac\", \"read\"]}}}}\n"
		"JSON\n"
		"\"$MICA_BUILD/bin/mica\" keycenter init --policy \"$KCT_DIR/policy.json\""
		" --db \"$ci\" --hsm-module \"$MICA_HSM_MODULE\" --token-label " TOKEN_LABEL
		" --pin-file \"$KCT_DIR/pin\" --audit-pubkey-out \"$KCT_DIR/audit.pem\""
		" >\"$KCT_DIR/init.log\"\n";
	char *argv[] = {"bash", "-c", (char *)script, NULL};
	pid_t pid;
	int status;

	setenv("KCT_DIR", dir, 1);
	setenv("KCT_DB", dbname, 1);
	if ((pid = fork()) == 0) {
		execvp("bash", argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		fprintf(stderr, "test_kc: setting up the Key Center failed\n");
		return -1;
	}
	return 0;
}

/* A TCP port nothing listens on, below the ephemeral range (so no outgoing
 * connection takes it before the daemon binds it). */
static int free_port(void)
{
	int lo = 20000, hi = 32767, eph_lo = 0, eph_hi = 0;
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
	if (f) {
		if (fscanf(f, "%d %d", &eph_lo, &eph_hi) == 2 && eph_lo > lo + 1000)
			hi = eph_lo - 1;
		fclose(f);
	}
	for (int i = 0; i < 200; i++) {
		unsigned r = 0;
		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (unsigned)i * 7919u;
		int port = lo + (int)(r % (unsigned)(hi - lo + 1));
		int s = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons((uint16_t)port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int ok = s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (s >= 0)
			close(s);
		if (ok)
			return port;
	}
	return -1;
}

static mica_httpc *raw_client(const char *cert, const char *key)
{
	mica_httpc_options o = {
		.ca_file = ca, .cert_file = cert, .key_file = key, .timeout_ms = 5000};
	mica_httpc *h = NULL;
	return mica_httpc_new(&h, &o) == 0 ? h : NULL;
}

/* Polls /healthz until the daemon answers 200 (or dies, or 60 s pass). */
static int wait_ready(void)
{
	mica_httpc *h = raw_client(cert_account, key_account);
	char url[128];
	int ready = 0, saved = mica_log_min_level;
	struct timespec pause = {0, 100 * 1000000L};
	snprintf(url, sizeof(url), "%s/healthz", base_url);
	mica_log_min_level = MICA_LOG_OFF; /* connection refused until it listens */
	for (int i = 0; h && i < 600 && !ready; i++) {
		mica_httpc_resp r;
		if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid) {
			daemon_pid = 0;
			break;
		}
		ready = mica_httpc_request(h, "GET", url, NULL, 0, 0, &r) == 0 && r.status == 200;
		mica_httpc_resp_cleanup(&r);
		if (!ready)
			nanosleep(&pause, NULL);
	}
	mica_log_min_level = saved;
	mica_httpc_free(h);
	return ready ? 0 : -1;
}

/* Starts mica-keycenter as dev-up does (deploy/mica.conf.example plus
 * environment overrides) on a free port; retries with another port if it
 * could not bind. */
static int start_daemon(void)
{
	char conninfo[1024], log_path[700], port_s[16], conf[700];
	snprintf(conninfo, sizeof(conninfo),
		 "host=127.0.0.1 port=%s dbname=%s user=mica_keycenter passfile=%s/pgpass"
		 " sslmode=verify-full sslrootcert=%s",
		 need("MICA_PG_PORT"), dbname, dir, ca);
	snprintf(log_path, sizeof(log_path), "%s/keycenter.log", dir);
	snprintf(conf, sizeof(conf), "%s/hsm/softhsm2.conf", dir);
	for (int attempt = 0; attempt < 3; attempt++) {
		int port = free_port(), mport = free_port();
		char mport_s[16];
		if (port < 0 || mport < 0 || mport == port)
			return -1;
		snprintf(port_s, sizeof(port_s), "%d", port);
		snprintf(mport_s, sizeof(mport_s), "%d", mport);
		snprintf(base_url, sizeof(base_url), "https://localhost:%d", port);
		snprintf(metrics_url, sizeof(metrics_url), "https://localhost:%d", mport);
		char pin[700];
		snprintf(pin, sizeof(pin), "%s/pin", dir);
		pid_t pid = fork();
		if (pid == 0) {
			int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			setenv("MICA_KEYCENTER_HTTP_PORT", port_s, 1);
			setenv("MICA_KEYCENTER_HTTP_METRICS_PORT", mport_s, 1);
			setenv("MICA_KEYCENTER_HTTP_CERT_FILE", cert_server, 1);
			setenv("MICA_KEYCENTER_HTTP_KEY_FILE", key_server, 1);
			setenv("MICA_KEYCENTER_HTTP_CLIENT_CA_FILE", ca, 1);
			setenv("MICA_KEYCENTER_DB_CONNINFO", conninfo, 1);
			setenv("MICA_KEYCENTER_DB_PASSWORD_FILE", "", 1);
			setenv("MICA_KEYCENTER_HSM_MODULE", hsm_module, 1);
			setenv("MICA_KEYCENTER_HSM_TOKEN_LABEL", TOKEN_LABEL, 1);
			setenv("MICA_KEYCENTER_HSM_PIN_FILE", pin, 1);
			setenv("SOFTHSM2_CONF", conf, 1);
			char exe[700];
			snprintf(exe, sizeof(exe), "%s/bin/mica-keycenter", build);
			execl(exe, exe, "--config", "deploy/mica.conf.example", (char *)NULL);
			_exit(127);
		}
		if (pid < 0)
			return -1;
		daemon_pid = pid;
		if (wait_ready() == 0)
			return 0;
		if (daemon_pid) {
			kill(daemon_pid, SIGKILL);
			waitpid(daemon_pid, NULL, 0);
			daemon_pid = 0;
		}
	}
	fprintf(stderr, "test_kc: mica-keycenter did not start (log: %s)\n", log_path);
	return -1;
}

static void stop_daemon(void)
{
	if (daemon_pid <= 0)
		return;
	kill(daemon_pid, SIGCONT);
	kill(daemon_pid, SIGTERM);
	for (int i = 0; i < 300; i++) {
		if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid) {
			daemon_pid = 0;
			return;
		}
		struct timespec t = {0, 50 * 1000000L};
		nanosleep(&t, NULL);
	}
	kill(daemon_pid, SIGKILL);
	waitpid(daemon_pid, NULL, 0);
	daemon_pid = 0;
}

static int create_key(const char *name)
{
	mica_httpc *h = raw_client(cert_admin, key_admin);
	char url[256];
	json_t *req = json_pack("{s:s}", "owner", "account"), *reply = NULL;
	long status = 0;
	int err;
	snprintf(url, sizeof(url), "%s/v1/keys/%s", base_url, name);
	err = h ? mica_httpc_json(h, "POST", url, req, 0, &status, &reply) : MICA_ENOMEM;
	json_decref(req);
	json_decref(reply);
	mica_httpc_free(h);
	if (err || status != 201) {
		fprintf(stderr, "test_kc: creating key %s: %s, status %ld\n", name,
			mica_strerror(err), status);
		return -1;
	}
	return 0;
}

static void drop_database(void)
{
	char sql[128];
	mica_db *db = NULL;
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
	if (mica_db_open(&db, pg_admin) == 0) {
		if (mica_db_exec(db, sql, 0, NULL, NULL) != 0)
			fprintf(stderr, "test_kc: could not drop %s\n", dbname);
		mica_db_close(&db);
	}
}

/* ---- helpers for tests -------------------------------------------------------- */

static mica_kc *client_ex(const char *cert, const char *key, int max_entries, long ttl_ms,
			  long timeout_ms, int retries)
{
	mica_kc_options o = {.base_url = base_url,
			     .ca_file = ca,
			     .cert_file = cert,
			     .key_file = key,
			     .timeout_ms = timeout_ms,
			     .retries = retries,
			     .cache_max_entries = max_entries,
			     .cache_ttl_ms = ttl_ms};
	mica_kc *kc = NULL;
	int err = mica_kc_new(&kc, &o);
	ck_assert_msg(err == 0, "mica_kc_new: %s", mica_strerror(err));
	return kc;
}

static mica_kc *client(void)
{
	return client_ex(cert_account, key_account, 0, 0, 0, 0);
}

static json_t *ctx(const char *user)
{
	return json_pack("{s:s,s:s}", "service", "account", "user", user);
}

static char *new_datakey(mica_kc *kc, json_t *c, uint8_t dk[32])
{
	char *ct = NULL;
	int err = mica_kc_datakey(kc, KEY, 256, c, dk, 32, &ct);
	ck_assert_msg(err == 0, "datakey: %s", mica_strerror(err));
	ck_assert_ptr_nonnull(ct);
	ck_assert_msg(strncmp(ct, "kc:v", 4) == 0, "ciphertext %s", ct);
	return ct;
}

/* Unwraps |ct| and checks it gives |want|. */
static void unwrap_is(mica_kc *kc, const char *ct, json_t *c, const uint8_t want[32])
{
	uint8_t got[32];
	size_t len = 0;
	int err = mica_kc_decrypt_datakey(kc, KEY, ct, c, got, sizeof(got), &len);
	ck_assert_msg(err == 0, "decrypt_datakey: %s", mica_strerror(err));
	ck_assert_uint_eq(len, 32);
	ck_assert_mem_eq(got, want, 32);
}

static mica_kc_stats stats(mica_kc *kc)
{
	mica_kc_stats st;
	mica_kc_stats_get(kc, &st);
	return st;
}

/* mica_http_requests_total of |route| (POST) with status |code|, from the
 * daemon's /metrics. */
static unsigned long metric(const char *route, int code)
{
	mica_httpc *h = raw_client(cert_account, key_account);
	mica_httpc_resp r;
	char url[128], needle[256];
	unsigned long v = 0;
	snprintf(url, sizeof(url), "%s/metrics", metrics_url);
	ck_assert_ptr_nonnull(h);
	ck_assert_int_eq(mica_httpc_request(h, "GET", url, NULL, 0, 1, &r), 0);
	ck_assert_int_eq(r.status, 200);
	snprintf(needle, sizeof(needle),
		 "mica_http_requests_total{service=\"keycenter\",route=\"%s\",method=\"POST\","
		 "code=\"%d\"} ",
		 route, code);
	const char *p = strstr(r.body, needle);
	if (p)
		v = strtoul(p + strlen(needle), NULL, 10);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(h);
	return v;
}

static void sql_as_admin(const char *sql)
{
	mica_db *db = NULL;
	int err = mica_db_open(&db, db_admin);
	ck_assert_msg(err == 0, "mica_db_open: %s", mica_strerror(err));
	err = mica_db_exec(db, sql, 0, NULL, NULL);
	ck_assert_msg(err == 0, "%s: %s (%s)", sql, mica_strerror(err), mica_db_errmsg(db));
	mica_db_close(&db);
}

/* ---- tests ---------------------------------------------------------------------- */

START_TEST(datakey_roundtrip_then_cache)
{
	mica_kc *kc = client();
	json_t *c = ctx("u1");
	json_t *reordered = json_pack("{s:s,s:s}", "user", "u1", "service", "account");
	uint8_t dk[32], dk16[32], zero[32] = {0};
	char *ct = new_datakey(kc, c, dk), *ct16 = NULL;
	size_t len = 0;

	ck_assert_mem_ne(dk, zero, 32);
	ck_assert_uint_eq(stats(kc).requests, 1);
	unwrap_is(kc, ct, c, dk);
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.misses, 1);
	ck_assert_uint_eq(st.hits, 0);
	ck_assert_uint_eq(st.requests, 2);
	ck_assert_uint_eq(st.entries, 1);

	/* Second unwrap: from the cache, no request. The same context with its
	 * members in another order is the same canonical context. */
	unwrap_is(kc, ct, c, dk);
	unwrap_is(kc, ct, reordered, dk);
	st = stats(kc);
	ck_assert_uint_eq(st.hits, 2);
	ck_assert_uint_eq(st.misses, 1);
	ck_assert_uint_eq(st.requests, 2);

	/* A 128-bit data key comes back as 16 bytes. */
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 128, c, dk16, 16, &ct16), 0);
	uint8_t got[32];
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, ct16, c, got, sizeof(got), &len), 0);
	ck_assert_uint_eq(len, 16);
	ck_assert_mem_eq(got, dk16, 16);

	free(ct);
	free(ct16);
	json_decref(c);
	json_decref(reordered);
	mica_kc_free(kc);
}
END_TEST

/* mica_kc_decrypt_datakeys: cached items are not sent, the misses go in one
 * batch request, a failed item fails alone, and what opened is cached. */
START_TEST(decrypt_datakeys_batches_the_misses)
{
	mica_kc *kc = client();
	enum { N = 5 };
	json_t *c[N];
	char *ct[N];
	uint8_t want[N][32], out[N][32];
	size_t lens[N];
	int errs[N];
	for (int i = 0; i < N; i++) {
		char u[24];
		snprintf(u, sizeof(u), "batch%d", i);
		c[i] = ctx(u);
		ct[i] = new_datakey(kc, c[i], want[i]);
	}
	unwrap_is(kc, ct[0], c[0], want[0]); /* item 0 now cached */
	json_t *wrong = ctx("someone-else");
	json_t *c3 = c[3];
	c[3] = wrong; /* item 3 under another context: fails alone */
	mica_kc_stats st = stats(kc);
	ck_assert_int_eq(mica_kc_decrypt_datakeys(kc, KEY, N, (const char *const *)ct, c,
						  &out[0][0], 32, lens, errs),
			 0);
	ck_assert_uint_eq(stats(kc).requests, st.requests + 1); /* one batch for 4 misses */
	ck_assert_uint_eq(stats(kc).hits, st.hits + 1);
	for (int i = 0; i < N; i++) {
		if (i == 3) {
			ck_assert_int_eq(errs[i], MICA_EAUTH);
			ck_assert_uint_eq(lens[i], 0);
			continue;
		}
		ck_assert_msg(errs[i] == 0, "item %d: %s", i, mica_strerror(errs[i]));
		ck_assert_uint_eq(lens[i], 32);
		ck_assert_mem_eq(out[i], want[i], 32);
	}
	/* Everything that opened is cached now: a second call sends nothing. */
	c[3] = c3;
	st = stats(kc);
	ck_assert_int_eq(mica_kc_decrypt_datakeys(kc, KEY, 3, (const char *const *)ct, c,
						  &out[0][0], 32, lens, errs),
			 0);
	ck_assert_uint_eq(stats(kc).requests, st.requests);
	ck_assert_mem_eq(out[2], want[2], 32);
	/* The Key Center unreachable: the call fails, every asked item with it. */
	mica_kc_options dead = {.base_url = "https://127.0.0.1:1",
				.ca_file = getenv("MICA_CA"),
				.cert_file = cert_account,
				.key_file = key_account,
				.retries = -1,
				.timeout_ms = 2000};
	mica_kc *down = NULL;
	ck_assert_int_eq(mica_kc_new(&down, &dead), 0);
	ck_assert_int_eq(mica_kc_decrypt_datakeys(down, KEY, 2, (const char *const *)ct, c,
						  &out[0][0], 32, lens, errs),
			 MICA_EHTTP);
	ck_assert(errs[0] == MICA_EHTTP && errs[1] == MICA_EHTTP);
	ck_assert_int_eq(mica_kc_decrypt_datakeys(kc, KEY, 1, (const char *const *)ct, c,
						  &out[0][0], 8, lens, errs),
			 MICA_EINVAL); /* cap below 16 */
	mica_kc_free(down);
	for (int i = 0; i < N; i++) {
		json_decref(c[i]);
		free(ct[i]);
	}
	json_decref(wrong);
	mica_kc_free(kc);
}
END_TEST

START_TEST(encrypt_decrypt_hmac)
{
	mica_kc *kc = client();
	json_t *c = ctx("u2"), *other = ctx("u3");
	static const char secret[] = "otp-seed-0123456789";
	char *ct = NULL, *ct_empty = NULL, *m1 = NULL, *m2 = NULL, *m3 = NULL;
	uint8_t *pt = NULL;
	size_t pl = 0;

	ck_assert_int_eq(mica_kc_encrypt(kc, KEY, secret, strlen(secret), c, &ct), 0);
	ck_assert_msg(strncmp(ct, "kc:v1:", 6) == 0, "%s", ct);
	ck_assert_int_eq(mica_kc_decrypt(kc, KEY, ct, c, &pt, &pl), 0);
	ck_assert_uint_eq(pl, strlen(secret));
	ck_assert_mem_eq(pt, secret, pl);
	mica_wipe(pt, pl);
	free(pt);
	ck_assert_int_eq(mica_kc_decrypt(kc, KEY, ct, other, &pt, &pl), MICA_EAUTH);
	ck_assert_ptr_null(pt);
	ck_assert_uint_eq(pl, 0);

	/* An empty secret round-trips to a non-NULL empty buffer. */
	ck_assert_int_eq(mica_kc_encrypt(kc, KEY, NULL, 0, c, &ct_empty), 0);
	ck_assert_int_eq(mica_kc_decrypt(kc, KEY, ct_empty, c, &pt, &pl), 0);
	ck_assert_ptr_nonnull(pt);
	ck_assert_uint_eq(pl, 0);
	free(pt);

	/* A secret is not a data key. */
	uint8_t out[32];
	size_t len = 99;
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, ct, c, out, sizeof(out), &len),
			 MICA_EBADHEADER);
	ck_assert_uint_eq(len, 0);

	/* Blind index: deterministic (the Key Center answers a client without a
	 * cache the same), versioned, input-dependent; a repeated input is
	 * answered from the cache. */
	mica_kc *uncached = client_ex(cert_account, key_account, -1, 0, 0, 0);
	ck_assert_int_eq(mica_kc_hmac(kc, KEY, "+8613800138000", 14, &m1), 0);
	mica_kc_stats st = stats(kc);
	ck_assert_int_eq(mica_kc_hmac(kc, KEY, "+8613800138000", 14, &m2), 0);
	ck_assert_str_eq(m1, m2);
	ck_assert_uint_eq(stats(kc).requests, st.requests);
	ck_assert_uint_eq(stats(kc).hits, st.hits + 1);
	free(m2);
	ck_assert_int_eq(mica_kc_hmac(uncached, KEY, "+8613800138000", 14, &m2), 0);
	ck_assert_uint_eq(stats(uncached).requests, 1);
	ck_assert_int_eq(mica_kc_hmac(kc, KEY, "+8613800138001", 14, &m3), 0);
	ck_assert_uint_eq(stats(kc).requests, st.requests + 1);
	ck_assert_msg(strncmp(m1, "kc:v1:", 6) == 0, "%s", m1);
	ck_assert_str_eq(m1, m2);
	ck_assert_str_ne(m1, m3);
	/* The same bytes under another key name are another entry. */
	free(m3);
	ck_assert_int_eq(mica_kc_hmac(kc, "account-nosuchkey", "+8613800138000", 14, &m3),
			 MICA_ENOTFOUND);
	ck_assert_ptr_null(m3);
	mica_kc_free(uncached);

	free(ct);
	free(ct_empty);
	free(m1);
	free(m2);
	free(m3);
	json_decref(c);
	json_decref(other);
	mica_kc_free(kc);
}
END_TEST

START_TEST(bad_arguments_make_no_request)
{
	mica_kc *kc = client();
	json_t *c = ctx("u4"), *arr = json_array();
	uint8_t dk[32];
	char *ct = (char *)"x", *m = (char *)"x";
	size_t len;
	static const char *const bad_names[] = {
		"",	   "../keys/x",
		"Account", "a?b",
		"a b",	   "-a",
		"a%2f",	   "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		ck_assert_int_eq(mica_kc_datakey(kc, bad_names[i], 256, c, dk, 32, &ct),
				 MICA_EINVAL);
		ck_assert_ptr_null(ct);
		ck_assert_int_eq(mica_kc_hmac(kc, bad_names[i], "a", 1, &m), MICA_EINVAL);
		ck_assert_ptr_null(m);
	}
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 100, c, dk, 32, &ct), MICA_EINVAL);
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, c, dk, 16, &ct), MICA_ETOOBIG);
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, arr, dk, 32, &ct), MICA_EINVAL);
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, NULL, dk, 32, &ct), MICA_EINVAL);
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, "", c, dk, 32, &len), MICA_EINVAL);
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, "kc:v1:AAAA", NULL, dk, 32, &len),
			 MICA_EINVAL);
	ck_assert_uint_eq(stats(kc).requests, 0);

	/* Options: https only, mTLS only. */
	mica_kc *k2 = NULL;
	mica_kc_options o = {.base_url = "http://localhost:1",
			     .ca_file = ca,
			     .cert_file = cert_account,
			     .key_file = key_account};
	ck_assert_int_eq(mica_kc_new(&k2, &o), MICA_EINVAL);
	o.base_url = base_url;
	o.cert_file = NULL;
	ck_assert_int_eq(mica_kc_new(&k2, &o), MICA_EINVAL);
	ck_assert_ptr_null(k2);

	json_decref(c);
	json_decref(arr);
	mica_kc_free(kc);
}
END_TEST

START_TEST(wrong_context_is_eauth_even_when_cached)
{
	mica_kc *kc = client();
	json_t *c = ctx("u5"), *other = ctx("u6");
	uint8_t dk[32], out[32];
	size_t len = 7;
	char *ct = new_datakey(kc, c, dk);

	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, ct, other, out, sizeof(out), &len),
			 MICA_EAUTH);
	ck_assert_uint_eq(len, 0);
	unwrap_is(kc, ct, c, dk); /* now cached under the right context */
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, ct, other, out, sizeof(out), &len),
			 MICA_EAUTH);
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.hits, 0);
	ck_assert_uint_eq(st.misses, 3);
	ck_assert_uint_eq(st.entries, 1);

	free(ct);
	json_decref(c);
	json_decref(other);
	mica_kc_free(kc);
}
END_TEST

START_TEST(unknown_key_is_enotfound)
{
	mica_kc *kc = client();
	json_t *c = ctx("u7");
	uint8_t dk[32];
	char *ct = NULL, *m = NULL;
	ck_assert_int_eq(mica_kc_datakey(kc, "account-nosuchkey", 256, c, dk, 32, &ct),
			 MICA_ENOTFOUND);
	ck_assert_ptr_null(ct);
	ck_assert_int_eq(mica_kc_encrypt(kc, "account-nosuchkey", "x", 1, c, &ct), MICA_ENOTFOUND);
	ck_assert_int_eq(mica_kc_hmac(kc, "account-nosuchkey", "x", 1, &m), MICA_ENOTFOUND);
	ck_assert_ptr_null(m);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

START_TEST(principal_without_rights_is_edenied)
{
	mica_kc *account = client();
	mica_kc *admin = client_ex(cert_admin, key_admin, 0, 0, 0, 0);
	mica_kc *rogue = client_ex(cert_rogue, key_rogue, 0, 0, 0, 0);
	json_t *c = ctx("u8");
	uint8_t dk[32], out[32];
	size_t len;
	char *ct = new_datakey(account, c, dk), *ct2 = NULL, *m = NULL;

	/* admin is a key-admin: it manages keys but may not use them. */
	ck_assert_int_eq(mica_kc_datakey(admin, KEY, 256, c, out, 32, &ct2), MICA_EDENIED);
	ck_assert_ptr_null(ct2);
	ck_assert_int_eq(mica_kc_decrypt_datakey(admin, KEY, ct, c, out, sizeof(out), &len),
			 MICA_EDENIED);
	ck_assert_int_eq(mica_kc_hmac(admin, KEY, "x", 1, &m), MICA_EDENIED);
	/* account may use account-* keys only. */
	ck_assert_int_eq(mica_kc_datakey(account, "payment-kc", 256, c, out, 32, &ct2),
			 MICA_EDENIED);
	/* A certificate from an untrusted CA that claims CN=admin. */
	ck_assert_int_eq(mica_kc_datakey(rogue, KEY, 256, c, out, 32, &ct2), MICA_EDENIED);

	free(ct);
	json_decref(c);
	mica_kc_free(account);
	mica_kc_free(admin);
	mica_kc_free(rogue);
}
END_TEST

START_TEST(untrusted_server_is_etls)
{
	mica_kc_options o = {.base_url = base_url,
			     .ca_file = ca_rogue,
			     .cert_file = cert_account,
			     .key_file = key_account};
	mica_kc *kc = NULL;
	json_t *c = ctx("u9");
	uint8_t dk[32];
	char *ct = NULL;
	ck_assert_int_eq(mica_kc_new(&kc, &o), 0);
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, c, dk, 32, &ct), MICA_ETLS);
	ck_assert_ptr_null(ct);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

/* On an event thread (lib/thread.h) a cached data key is still answered,
 * and only a miss, which would ask the Key Center, is refused. */
struct event_call {
	mica_kc *kc;
	const char *ct_hit, *ct_miss;
	json_t *c;
	uint8_t got[32];
	size_t len;
	int hit_err, miss_err, datakey_err;
};

static void *event_thread_calls(void *arg)
{
	struct event_call *e = arg;
	uint8_t dk[32], other[32];
	size_t l = 0;
	char *ct = NULL;
	mica_thread_set_event(true);
	e->hit_err = mica_kc_decrypt_datakey(e->kc, KEY, e->ct_hit, e->c, e->got, 32, &e->len);
	e->miss_err = mica_kc_decrypt_datakey(e->kc, KEY, e->ct_miss, e->c, other, 32, &l);
	e->datakey_err = mica_kc_datakey(e->kc, KEY, 256, e->c, dk, 32, &ct);
	ck_assert_ptr_null(ct);
	return NULL;
}

START_TEST(event_thread_gets_cache_hits_only)
{
	mica_kc *kc = client_ex(cert_account, key_account, 0, 0, 0, 0);
	json_t *c = ctx("u10e");
	uint8_t dk[32], dk2[32];
	char *ct = new_datakey(kc, c, dk), *ct2 = new_datakey(kc, c, dk2);
	struct event_call e = {.kc = kc, .ct_hit = ct, .ct_miss = ct2, .c = c};
	pthread_t t;

	unwrap_is(kc, ct, c, dk); /* cached now; ct2 is not */
	uint64_t before = stats(kc).requests;
	ck_assert_int_eq(pthread_create(&t, NULL, event_thread_calls, &e), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(e.hit_err, 0);
	ck_assert_uint_eq(e.len, 32);
	ck_assert_mem_eq(e.got, dk, 32);
	ck_assert_int_eq(e.miss_err, MICA_EWOULDBLOCK);
	ck_assert_int_eq(e.datakey_err, MICA_EWOULDBLOCK);
	ck_assert_uint_eq(stats(kc).requests, before); /* nothing was sent */
	unwrap_is(kc, ct2, c, dk2);		       /* and a thread that may block asks */

	free(ct);
	free(ct2);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

START_TEST(cache_ttl_expires)
{
	const long ttl = 300;
	mica_kc *kc = client_ex(cert_account, key_account, 0, ttl, 0, 0);
	json_t *c = ctx("u10");
	uint8_t dk[32];
	char *ct = new_datakey(kc, c, dk);

	unwrap_is(kc, ct, c, dk); /* miss, cached now */
	unwrap_is(kc, ct, c, dk); /* hit */
	ck_assert_uint_eq(stats(kc).hits, 1);
	mica__clock_advance_ms(ttl); /* the entry's age is now the TTL: no sleep */
	unwrap_is(kc, ct, c, dk);    /* expired: asks again */
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.misses, 2);
	ck_assert_uint_eq(st.expirations, 1);
	ck_assert_uint_eq(st.entries, 1);
	ck_assert_uint_eq(st.requests, 3);

	free(ct);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

START_TEST(cache_evicts_least_recently_used)
{
	mica_kc *kc = client_ex(cert_account, key_account, 2, 0, 0, 0);
	json_t *c = ctx("u11");
	uint8_t k1[32], k2[32], k3[32];
	char *c1 = new_datakey(kc, c, k1), *c2 = new_datakey(kc, c, k2),
	     *c3 = new_datakey(kc, c, k3);

	unwrap_is(kc, c1, c, k1); /* miss */
	unwrap_is(kc, c2, c, k2); /* miss; full */
	unwrap_is(kc, c1, c, k1); /* hit; k2 is now least recently used */
	unwrap_is(kc, c3, c, k3); /* miss; evicts k2 */
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.misses, 3);
	ck_assert_uint_eq(st.evictions, 1);
	ck_assert_uint_eq(st.entries, 2);
	unwrap_is(kc, c1, c, k1); /* still cached */
	ck_assert_uint_eq(stats(kc).hits, 2);
	unwrap_is(kc, c2, c, k2); /* was evicted: miss, evicts k3 */
	st = stats(kc);
	ck_assert_uint_eq(st.misses, 4);
	ck_assert_uint_eq(st.evictions, 2);
	ck_assert_uint_eq(st.entries, 2);
	unwrap_is(kc, c3, c, k3); /* was evicted too */
	ck_assert_uint_eq(stats(kc).misses, 5);

	/* flush empties it. */
	mica_kc_cache_flush(kc);
	ck_assert_uint_eq(stats(kc).entries, 0);
	unwrap_is(kc, c1, c, k1);
	ck_assert_uint_eq(stats(kc).misses, 6);

	free(c1);
	free(c2);
	free(c3);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

#define NTHREADS 8
#define NKEYS 4
#define ROUNDS 50

struct shared {
	mica_kc *kc;
	json_t *ctx;
	char *ct[NKEYS];
	uint8_t dk[NKEYS][32];
	int failures;
	pthread_mutex_t mu;
};

static void *unwrapper(void *arg)
{
	struct shared *s = arg;
	int bad = 0;
	for (int i = 0; i < ROUNDS * NKEYS; i++) {
		uint8_t out[32];
		size_t len = 0;
		int k = i % NKEYS;
		if (mica_kc_decrypt_datakey(s->kc, KEY, s->ct[k], s->ctx, out, sizeof(out), &len) !=
			    0 ||
		    len != 32 || memcmp(out, s->dk[k], 32) != 0)
			bad++;
	}
	pthread_mutex_lock(&s->mu);
	s->failures += bad;
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

START_TEST(threads_share_one_client)
{
	struct shared s = {.kc = client(), .ctx = ctx("u12")};
	pthread_t t[NTHREADS];
	pthread_mutex_init(&s.mu, NULL);
	for (int k = 0; k < NKEYS; k++)
		s.ct[k] = new_datakey(s.kc, s.ctx, s.dk[k]);
	uint64_t before = stats(s.kc).requests;
	for (int i = 0; i < NTHREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, unwrapper, &s), 0);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	mica_kc_stats st = stats(s.kc);
	ck_assert_int_eq(s.failures, 0);
	ck_assert_uint_eq(st.hits + st.misses, NTHREADS * ROUNDS * NKEYS);
	/* Each thread can miss each key at most once (before the first unwrap
	 * lands), and every miss is one request. */
	ck_assert_uint_ge(st.misses, NKEYS);
	ck_assert_uint_le(st.misses, NTHREADS * NKEYS);
	ck_assert_uint_eq(st.requests - before, st.misses);
	ck_assert_uint_eq(st.entries, NKEYS);
	for (int k = 0; k < NKEYS; k++)
		free(s.ct[k]);
	json_decref(s.ctx);
	pthread_mutex_destroy(&s.mu);
	mica_kc_free(s.kc);
}
END_TEST

/* GET |base|/readyz; returns the status and copies the body to |body|. */
static long readyz(const char *base, char *body, size_t cap)
{
	mica_httpc *h = raw_client(NULL, NULL);
	mica_httpc_resp r;
	char url[128];
	long st;
	snprintf(url, sizeof(url), "%s/readyz", base);
	ck_assert_ptr_nonnull(h);
	ck_assert_int_eq(mica_httpc_request(h, "GET", url, NULL, 0, 0, &r), 0);
	st = r.status;
	snprintf(body, cap, "%s", r.body ? r.body : "");
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(h);
	return st;
}

/* Polls /readyz (public listener) until it answers |want| or 10 s pass. */
static long readyz_until(long want, char *body, size_t cap)
{
	long st = 0;
	for (int i = 0; i < 100 && st != want; i++) {
		struct timespec t = {0, 100 * 1000000L};
		if ((st = readyz(base_url, body, cap)) != want)
			nanosleep(&t, NULL);
	}
	return st;
}

/* The audit trail refuses writes (INSERT revoked from the Key Center's
 * role), so every request gets 503 audit_unavailable: the one status that
 * makes mica_httpc retry. The daemon's own counters show how often each
 * call was sent. /healthz still answers 200 (the process serves) while
 * /readyz answers 503 naming the audit trail, on both listeners; before,
 * the one probe said 200 throughout. */
static void audit_writable(void)
{
	mica_db *db = NULL;
	if (mica_db_open(&db, db_admin) == 0) {
		if (mica_db_exec(db, "GRANT INSERT ON keycenter.audit TO mica_keycenter", 0, NULL,
				 NULL) != 0)
			fprintf(stderr, "test_kc: could not restore the audit grant\n");
		mica_db_close(&db);
	}
}

START_TEST(only_idempotent_calls_are_retried)
{
	mica_kc *kc = client();
	json_t *c = ctx("u13");
	uint8_t dk[32], out[32];
	size_t len;
	char *ct = new_datakey(kc, c, dk), *ct2 = NULL, *m = NULL;
	char *secret_ct = NULL;
	uint8_t *pt = NULL;
	ck_assert_int_eq(mica_kc_encrypt(kc, KEY, "s", 1, c, &secret_ct), 0);

	sql_as_admin("REVOKE INSERT ON keycenter.audit FROM mica_keycenter");
	unsigned long dk0 = metric("/v1/datakey/plaintext/{name}", 503);
	unsigned long enc0 = metric("/v1/encrypt/{name}", 503);
	unsigned long dec0 = metric("/v1/decrypt/{name}", 503);
	unsigned long mac0 = metric("/v1/hmac/{name}", 503);
	uint64_t req0 = stats(kc).requests;

	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, c, out, 32, &ct2), MICA_EAUDIT);
	ck_assert_ptr_null(ct2);
	ck_assert_int_eq(metric("/v1/datakey/plaintext/{name}", 503), dk0 + 1);
	ck_assert_uint_eq(stats(kc).requests, req0 + 1);

	ck_assert_int_eq(mica_kc_encrypt(kc, KEY, "s", 1, c, &ct2), MICA_EAUDIT);
	ck_assert_int_eq(metric("/v1/encrypt/{name}", 503), enc0 + 1);

	/* Idempotent: one try and two retries, then fail closed. */
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, ct, c, out, sizeof(out), &len),
			 MICA_EAUDIT);
	ck_assert_int_eq(metric("/v1/decrypt/{name}", 503), dec0 + 3);
	ck_assert_int_eq(mica_kc_decrypt(kc, KEY, secret_ct, c, &pt, &len), MICA_EAUDIT);
	ck_assert_ptr_null(pt);
	ck_assert_int_eq(metric("/v1/decrypt/{name}", 503), dec0 + 6);
	ck_assert_int_eq(mica_kc_hmac(kc, KEY, "x", 1, &m), MICA_EAUDIT);
	ck_assert_int_eq(metric("/v1/hmac/{name}", 503), mac0 + 3);
	ck_assert_uint_eq(stats(kc).requests, req0 + 1 + 1 + 3 + 3 + 3);
	ck_assert_uint_eq(stats(kc).entries, 0);

	char body[512];
	ck_assert_int_eq(readyz_until(503, body, sizeof(body)), 503);
	ck_assert_msg(strstr(body, "{\"dependency\":\"audit\",\"code\":\"audit_unavailable\"}") &&
			      !strstr(body, "\"hsm\"") && !strstr(body, "\"policy\""),
		      "readyz: %s", body);
	ck_assert_int_eq(readyz(metrics_url, body, sizeof(body)), 503);
	mica_httpc *h = raw_client(NULL, NULL);
	mica_httpc_resp r;
	char url[128];
	snprintf(url, sizeof(url), "%s/healthz", base_url);
	ck_assert_int_eq(mica_httpc_request(h, "GET", url, NULL, 0, 0, &r), 0);
	ck_assert_int_eq(r.status, 200);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(h);

	/* Writable again: the next batch resynchronises and succeeds. */
	audit_writable();
	unwrap_is(kc, ct, c, dk);
	ck_assert_int_eq(readyz_until(200, body, sizeof(body)), 200);
	ck_assert_str_eq(body, "{\"status\":\"ready\"}");

	free(ct);
	free(secret_ct);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

/* Waits (bounded, 5 s) until every thread of |pid| is in one of |states|
 * (letters of /proc/PID/task/TID/stat), or the process is gone. Signals are
 * only queued by kill(): this is how a test knows SIGSTOP has stopped every
 * thread, or that SIGKILL has finished (a multithreaded process closes its
 * files when its last thread exits, after the leader already shows 'Z'). */
static int wait_state(pid_t pid, const char *states)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	for (int i = 0; i < 500; i++) {
		int others = 0;
		DIR *d = opendir(path);
		struct dirent *de;
		if (!d)
			return 0;
		while ((de = readdir(d)) != NULL) {
			char stat_path[400], buf[512];
			if (de->d_name[0] == '.')
				continue;
			snprintf(stat_path, sizeof(stat_path), "%s/%s/stat", path, de->d_name);
			FILE *f = fopen(stat_path, "r");
			size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
			if (!f)
				continue; /* the thread is gone */
			fclose(f);
			buf[n] = '\0';
			const char *close_paren = strrchr(buf, ')');
			if (!close_paren || close_paren[1] != ' ' || !close_paren[2] ||
			    !strchr(states, close_paren[2]))
				others++;
		}
		closedir(d);
		if (!others)
			return 0;
		struct timespec t = {0, 10 * 1000000L};
		nanosleep(&t, NULL);
	}
	return -1;
}

static void daemon_resume(void)
{
	if (daemon_pid > 0)
		kill(daemon_pid, SIGCONT);
}

START_TEST(cache_answers_while_daemon_is_stopped)
{
	/* Short timeout, no retries: an unanswered call fails in 1 s. */
	mica_kc *kc = client_ex(cert_account, key_account, 0, 0, 1000, -1);
	json_t *c = ctx("u14");
	uint8_t k1[32], k2[32], out[32];
	size_t len = 5;
	char *c1 = new_datakey(kc, c, k1), *c2 = new_datakey(kc, c, k2), *c3 = NULL;

	unwrap_is(kc, c1, c, k1);
	ck_assert_int_eq(kill(daemon_pid, SIGSTOP), 0);
	ck_assert_int_eq(wait_state(daemon_pid, "Tt"), 0);
	unwrap_is(kc, c1, c, k1); /* cached: no request */
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, c2, c, out, sizeof(out), &len),
			 MICA_ETIMEOUT);
	ck_assert_uint_eq(len, 0);
	ck_assert_int_eq(mica_kc_datakey(kc, KEY, 256, c, out, 32, &c3), MICA_ETIMEOUT);
	ck_assert_ptr_null(c3);
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.misses, 2);
	ck_assert_int_eq(kill(daemon_pid, SIGCONT), 0);
	unwrap_is(kc, c2, c, k2);

	free(c1);
	free(c2);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

static void daemon_restart(void)
{
	if (daemon_pid > 0)
		waitpid(daemon_pid, NULL, 0);
	daemon_pid = 0;
	if (start_daemon() != 0)
		fprintf(stderr, "test_kc: could not restart the daemon\n");
}

START_TEST(cache_answers_after_daemon_died)
{
	mica_kc *kc = client_ex(cert_account, key_account, 0, 0, 2000, 0);
	json_t *c = ctx("u15");
	uint8_t k1[32], k2[32], out[32];
	size_t len = 5;
	char *c1 = new_datakey(kc, c, k1), *c2 = new_datakey(kc, c, k2);

	unwrap_is(kc, c1, c, k1);
	ck_assert_int_eq(kill(daemon_pid, SIGKILL), 0);
	ck_assert_int_eq(wait_state(daemon_pid, "ZX"), 0);
	unwrap_is(kc, c1, c, k1);
	ck_assert_int_eq(mica_kc_decrypt_datakey(kc, KEY, c2, c, out, sizeof(out), &len),
			 MICA_EHTTP);
	ck_assert_uint_eq(len, 0);
	/* Retried (idempotent) against a dead daemon: 3 attempts. */
	mica_kc_stats st = stats(kc);
	ck_assert_uint_eq(st.requests, 2 + 1 + 3);
	ck_assert_uint_eq(st.hits, 1);

	free(c1);
	free(c2);
	json_decref(c);
	mica_kc_free(kc);
}
END_TEST

static Suite *kc_suite(void)
{
	Suite *s = suite_create("kc");
	TCase *api = tcase_create("api");
	tcase_set_timeout(api, 60);
	tcase_add_test(api, datakey_roundtrip_then_cache);
	tcase_add_test(api, encrypt_decrypt_hmac);
	tcase_add_test(api, decrypt_datakeys_batches_the_misses);
	tcase_add_test(api, bad_arguments_make_no_request);
	tcase_add_test(api, wrong_context_is_eauth_even_when_cached);
	tcase_add_test(api, unknown_key_is_enotfound);
	tcase_add_test(api, principal_without_rights_is_edenied);
	tcase_add_test(api, untrusted_server_is_etls);
	suite_add_tcase(s, api);

	TCase *cache = tcase_create("cache");
	tcase_set_timeout(cache, 60);
	tcase_add_test(cache, cache_ttl_expires);
	tcase_add_test(cache, event_thread_gets_cache_hits_only);
	tcase_add_test(cache, cache_evicts_least_recently_used);
	tcase_add_test(cache, threads_share_one_client);
	suite_add_tcase(s, cache);

	TCase *retry = tcase_create("retry");
	tcase_set_timeout(retry, 60);
	tcase_add_unchecked_fixture(retry, NULL, audit_writable);
	tcase_add_test(retry, only_idempotent_calls_are_retried);
	suite_add_tcase(s, retry);

	TCase *stopped = tcase_create("stopped");
	tcase_set_timeout(stopped, 60);
	tcase_add_unchecked_fixture(stopped, NULL, daemon_resume);
	tcase_add_test(stopped, cache_answers_while_daemon_is_stopped);
	suite_add_tcase(s, stopped);

	TCase *died = tcase_create("died");
	tcase_set_timeout(died, 60);
	tcase_add_unchecked_fixture(died, NULL, daemon_restart);
	tcase_add_test(died, cache_answers_after_daemon_died);
	suite_add_tcase(s, died);
	return s;
}

/* Before the suite: the database, the Key Center ceremony, the daemon and the test key. */
static int kc_setup(void)
{
	const char *test_dir = getenv("MICA_TEST_DIR");

	build = getenv("MICA_BUILD");
	pg_admin = getenv("MICA_PG_CONNINFO");
	ca = getenv("MICA_CA");
	cert_server = getenv("MICA_CERT_SERVER");
	key_server = getenv("MICA_KEY_SERVER");
	cert_account = getenv("MICA_CERT_ACCOUNT");
	key_account = getenv("MICA_KEY_ACCOUNT");
	cert_admin = getenv("MICA_CERT_ADMIN");
	key_admin = getenv("MICA_KEY_ADMIN");
	cert_rogue = getenv("MICA_CERT_ROGUE");
	key_rogue = getenv("MICA_KEY_ROGUE");
	ca_rogue = getenv("MICA_CA_ROGUE");
	hsm_module = getenv("MICA_HSM_MODULE");
	main_pid = getpid();
	snprintf(dir, sizeof(dir), "%s/kc-client-%d", test_dir, (int)main_pid);
	snprintf(dbname, sizeof(dbname), "mica_kc_client_%d", (int)main_pid);
	snprintf(db_admin, sizeof(db_admin), "%s dbname=%s", pg_admin, dbname);
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		perror("test_kc: mkdir");
		return -1;
	}
	return setup_stack() == 0 && start_daemon() == 0 && create_key(KEY) == 0 ? 0 : -1;
}

static int kc_teardown(void)
{
	stop_daemon();
	drop_database();
	return 0;
}

static const char *const needs[] = {
	"MICA_TEST_DIR",    "MICA_BUILD",      "MICA_PG_CONNINFO",  "MICA_CA",
	"MICA_CERT_SERVER", "MICA_KEY_SERVER", "MICA_CERT_ACCOUNT", "MICA_KEY_ACCOUNT",
	"MICA_CERT_ADMIN",  "MICA_KEY_ADMIN",  "MICA_CERT_ROGUE",   "MICA_KEY_ROGUE",
	"MICA_CA_ROGUE",    "MICA_HSM_MODULE", "MICA_PG_PORT",	    NULL};

const struct mica_check mica_check = {.suite = kc_suite,
				      .needs = needs,
				      .setup = kc_setup,
				      .teardown = kc_teardown,
				      .log = MICA_CHECK_LOG_OFF};
