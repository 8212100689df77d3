/* auth_check.c - test peer for tests/integration/test_auth_account.sh: lib/auth
 * used as a service uses it (process-wide lib/kv settings, one mica_auth, an
 * optional in-process lib/kvcache copy), against a real account service.
 * Each stdin line is one Authorization header value; each gets one stdout line,
 * flushed at once so a test can drive a long-lived checker through a FIFO:
 *   valid uid=N sid=ID kind=app|web device=ID auth_at=N exp=N source=cache|introspection
 *   invalid CODE    (mica_strerror of mica_auth_validate's result)
 * except the line "#stats", answered with the in-process copy's counters:
 *   stats connected=0|1 entries=N hits=N misses=N lapses=N flushes=N
 * (a test tells a hit of the copy from a read of Redis by them).
 * Exit status: 0 after end of input, 2 usage or set-up error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "crypto.h"
#include "err.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"

#define PASSWORD_MAX 256
#define LOCAL_CACHE_ENTRIES 100

struct check_opts {
	const char *redis_socket; /* NULL: no Redis, every token goes to introspection */
	const char *redis_user;
	const char *redis_password_file;
	int local_cache; /* put a lib/kvcache copy in front of Redis */
	mica_auth_options auth;
};

static void usage(void)
{
	fprintf(stderr,
		"usage: auth_check --introspect-url URL --ca FILE --cert FILE --key FILE\n"
		"                  [--redis-socket PATH --redis-user USER --redis-password-file FILE\n"
		"                   [--local-cache]] [--timeout-ms N]  < 'Bearer TOKEN' lines\n");
	exit(2);
}

/* Reads the first line of |path| into |buf| without its line end. Returns 0
 * or MICA_EIO. */
static int read_password(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return MICA_EIO;
	int rc = fgets(buf, (int)cap, f) ? 0 : MICA_EIO;
	fclose(f);
	buf[strcspn(buf, "\r\n")] = '\0';
	return rc;
}

static void parse_args(int argc, char **argv, struct check_opts *o)
{
	static const struct option opts[] = {
		{"introspect-url", required_argument, NULL, 'u'},
		{"ca", required_argument, NULL, 'a'},
		{"cert", required_argument, NULL, 'c'},
		{"key", required_argument, NULL, 'k'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"redis-socket", required_argument, NULL, 's'},
		{"redis-user", required_argument, NULL, 'r'},
		{"redis-password-file", required_argument, NULL, 'p'},
		{"local-cache", no_argument, NULL, 'l'},
		{NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'u':
			o->auth.introspect_url = optarg;
			break;
		case 'a':
			o->auth.ca_file = optarg;
			break;
		case 'c':
			o->auth.cert_file = optarg;
			break;
		case 'k':
			o->auth.key_file = optarg;
			break;
		case 't':
			o->auth.timeout_ms = atol(optarg);
			break;
		case 's':
			o->redis_socket = optarg;
			break;
		case 'r':
			o->redis_user = optarg;
			break;
		case 'p':
			o->redis_password_file = optarg;
			break;
		case 'l':
			o->local_cache = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc || (o->redis_socket && (!o->redis_user || !o->redis_password_file)) ||
	    (o->local_cache && !o->redis_socket))
		usage();
}

/* Sets up lib/kv (and the in-process copy when asked) as a service does at
 * start-up. Returns 0 or the failing call's error. */
static int redis_setup(const struct check_opts *o, mica_kvcache **cache)
{
	char pw[PASSWORD_MAX];
	mica_kvcache_options co = {.prefix = MICA_AUTH_CACHE_PREFIX,
				   .max_entries = LOCAL_CACHE_ENTRIES};
	int rc = read_password(o->redis_password_file, pw, sizeof(pw));
	if (rc)
		goto out;
	struct mica_kv_config kc = {o->redis_socket, o->redis_user, pw, 2000};
	if ((rc = mica_kv_global_init(&kc)) != 0)
		goto out;
	if (o->local_cache)
		rc = mica_kvcache_start(cache, &kc, &co);
out:
	mica_wipe(pw, sizeof(pw));
	return rc;
}

static void report(int rc, const mica_auth_session *s)
{
	if (rc != 0) {
		printf("invalid %s\n", mica_strerror(rc));
	} else {
		printf("valid uid=%lld sid=%s kind=%s device=%s auth_at=%lld exp=%lld source=%s\n",
		       (long long)s->user_id, s->session_id, mica_auth_kind_name(s->kind),
		       s->device_id, (long long)s->auth_at, (long long)s->expires_at,
		       s->source == MICA_AUTH_FROM_CACHE ? "cache" : "introspection");
	}
	fflush(stdout);
}

static void report_stats(mica_kvcache *cache)
{
	struct mica_kvcache_stats st;
	mica_kvcache_stats(cache, &st);
	printf("stats connected=%d entries=%zu hits=%llu misses=%llu lapses=%llu flushes=%llu\n",
	       st.connected, st.entries, (unsigned long long)st.hits, (unsigned long long)st.misses,
	       (unsigned long long)st.lapses, (unsigned long long)st.flushes);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct check_opts o = {0};
	mica_kvcache *cache = NULL;
	mica_auth *a = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc;

	parse_args(argc, argv, &o);
	mica_log_min_level = MICA_LOG_ERROR;
	if (o.redis_socket && (rc = redis_setup(&o, &cache)) != 0) {
		fprintf(stderr, "auth_check: Redis set-up: %s\n", mica_strerror(rc));
		goto out;
	}
	o.auth.cache = cache;
	if ((rc = mica_auth_new(&a, &o.auth)) != 0) {
		fprintf(stderr, "auth_check: mica_auth_new: %s\n", mica_strerror(rc));
		goto out;
	}
	while ((n = getline(&line, &cap, stdin)) >= 0) {
		mica_auth_session s;
		if (n > 0 && line[n - 1] == '\n')
			line[n - 1] = '\0';
		if (strcmp(line, "#stats") == 0)
			report_stats(cache);
		else
			report(mica_auth_validate(a, line, &s), &s);
	}
	rc = 0;
out:
	if (line)
		mica_wipe(line, cap);
	free(line);
	mica_auth_free(a);
	mica_kvcache_stop(&cache);
	mica_kv_global_cleanup();
	return rc ? 2 : 0;
}
