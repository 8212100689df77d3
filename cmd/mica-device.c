/* mica-device - the reference device's command line (libmicadev, device/):
 *   mica-device push register   registers with mica-push over HTTPS and keeps
 *                               regid, content key and token in a 0600 state file
 *   mica-device push listen     holds the push long connection and prints one
 *                               JSON line per message received (decrypted)
 * docs/device.md is the manual. Exit codes: 0 done, 1 failure, 64 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "crypto.h"
#include "device/micadev.h"
#include "httpc.h"
#include "parse.h"
#include "thread.h"
#include "uvtls.h"

/* ---- usage ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: mica-device push register --url URL --ca FILE --app-id ID --package NAME\n"
		"                                 --device-id1 ID --device-id2 ID --device-id3 ID\n"
		"                                 --state FILE\n"
		"       mica-device push listen --state FILE --host HOST --port PORT --ca FILE\n"
		"                               [--server-name NAME] [--count N] [--timeout S]\n"
		"                               [--keepalive S] [--seen FILE]\n"
		"\n"
		"register: sends app id, package and the SHA-256 of the three device identifiers\n"
		"  (never the identifiers) to URL/v1/push/register, verifying the server against\n"
		"  the CA, and writes regid, content key and token to the state FILE (mode 0600).\n"
		"listen: connects to the push broker HOST:PORT over TLS (verified against the CA),\n"
		"  subscribes to the device's topic and prints each message, decrypted, as one JSON\n"
		"  line on stdout; duplicates and messages that do not open are dropped. Exits 0\n"
		"  after N messages (--count), or when --timeout S seconds pass without --count\n"
		"  (1 if N were not reached), or at SIGINT/SIGTERM. Ids already delivered are kept\n"
		"  in --seen FILE (default: the state file with \".seen\" appended).\n");
}

static int usage_error(const char *verb, const char *fmt, const char *arg)
{
	fprintf(stderr, "mica-device push %s: ", verb);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	usage(stderr);
	return MICA_EXIT_USAGE;
}

/* A whole number option in [min, max] (lib/parse.h). lib/cli.c's
 * mica_cli_int would do, but it would link the admin CLI's database code
 * into the device program. */
static int int_option(const char *opt, const char *s, int64_t min, int64_t max, int64_t *out)
{
	if (mica_parse_int64(s, min, max, out) == 0)
		return 0;
	fprintf(stderr,
		"mica-device push listen: %s must be a whole number in %lld..%lld, not \"%s\"\n",
		opt, (long long)min, (long long)max, s);
	return MICA_EXIT_USAGE;
}

/* ---- the state file -------------------------------------------------------------- */

/* Writes |state| to |path| with mode 0600 through a temporary file. */
static int state_write(const char *path, json_t *state)
{
	char tmp[4096];
	int n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return MICA_EINVAL;
	(void)unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return MICA_EIO;
	char *text = json_dumps(state, JSON_INDENT(2) | JSON_SORT_KEYS);
	int err = MICA_EIO;
	if (text) {
		size_t len = strlen(text), off = 0;
		while (off < len) {
			ssize_t w = write(fd, text + off, len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		if (off == len && write(fd, "\n", 1) == 1 && fsync(fd) == 0)
			err = 0;
		mica_free_wipe(text);
	}
	if (close(fd) != 0)
		err = MICA_EIO;
	if (err == 0 && rename(tmp, path) != 0)
		err = MICA_EIO;
	if (err)
		(void)unlink(tmp);
	return err;
}

/* Reads the state file; refuses one that others may read (it holds the
 * token and the content key), as ssh refuses a readable private key. */
static int state_read(const char *path, json_t **out, char *why, size_t wcap)
{
	struct stat st;
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, wcap, "cannot open %s: %s", path, strerror(errno));
		return MICA_EIO;
	}
	if (fstat(fd, &st) != 0 || (st.st_mode & 077)) {
		snprintf(why, wcap,
			 "%s is readable or writable by others (mode %04o); chmod 600 it", path,
			 (unsigned)(st.st_mode & 07777));
		close(fd);
		return MICA_EPERM;
	}
	json_error_t jerr;
	*out = json_loadfd(fd, JSON_REJECT_DUPLICATES, &jerr);
	close(fd);
	if (!json_is_object(*out) || !json_is_string(json_object_get(*out, "regid")) ||
	    !json_is_string(json_object_get(*out, "token")) ||
	    !json_is_string(json_object_get(*out, "content_key"))) {
		snprintf(why, wcap,
			 "%s is not a mica-device state file (regid, token, content_key)", path);
		json_decref(*out);
		*out = NULL;
		return MICA_EBADHEADER;
	}
	return 0;
}

/* ---- push register --------------------------------------------------------------- */

/* SHA-256 over the three identifiers separated by NUL bytes (which no
 * command-line argument contains, so the split is unambiguous), in hex. */
static int device_hash(const char *ids[3], char hex[2 * MICA_SHA256_LEN + 1])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t h[MICA_SHA256_LEN];
	unsigned int n = 0;
	int ok = md && EVP_DigestInit_ex(md, mica_md_sha256(), NULL) == 1;
	for (int i = 0; ok && i < 3; i++)
		ok = EVP_DigestUpdate(md, ids[i], strlen(ids[i]) + (i < 2 ? 1 : 0)) == 1;
	ok = ok && EVP_DigestFinal_ex(md, h, &n) == 1;
	EVP_MD_CTX_free(md);
	int err = ok ? mica_hex_encode(h, sizeof(h), hex, 2 * MICA_SHA256_LEN + 1) : MICA_ECRYPTO;
	mica_wipe(h, sizeof(h));
	return err;
}

static int cmd_register(int argc, char **argv)
{
	enum { O_URL = 0x100, O_CA, O_APP, O_PKG, O_ID1, O_ID2, O_ID3, O_STATE };
	static const struct option opts[] = {
		{"url", required_argument, NULL, O_URL},
		{"ca", required_argument, NULL, O_CA},
		{"app-id", required_argument, NULL, O_APP},
		{"package", required_argument, NULL, O_PKG},
		{"device-id1", required_argument, NULL, O_ID1},
		{"device-id2", required_argument, NULL, O_ID2},
		{"device-id3", required_argument, NULL, O_ID3},
		{"state", required_argument, NULL, O_STATE},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *url = NULL, *ca = NULL, *app = NULL, *pkg = NULL, *state = NULL;
	const char *ids[3] = {NULL, NULL, NULL};
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_URL:
			url = optarg;
			break;
		case O_CA:
			ca = optarg;
			break;
		case O_APP:
			app = optarg;
			break;
		case O_PKG:
			pkg = optarg;
			break;
		case O_ID1:
			ids[0] = optarg;
			break;
		case O_ID2:
			ids[1] = optarg;
			break;
		case O_ID3:
			ids[2] = optarg;
			break;
		case O_STATE:
			state = optarg;
			break;
		case 'h':
			usage(stdout);
			return MICA_EXIT_OK;
		default:
			return usage_error("register", "unknown option or missing value: %s",
					   argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("register", "unexpected argument \"%s\"", argv[optind]);
	const struct {
		const char *v, *name;
	} need[] = {{url, "--url"},	      {ca, "--ca"},
		    {app, "--app-id"},	      {pkg, "--package"},
		    {ids[0], "--device-id1"}, {ids[1], "--device-id2"},
		    {ids[2], "--device-id3"}, {state, "--state"}};
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
		if (!need[i].v || !need[i].v[0])
			return usage_error("register", "%s is required", need[i].name);
	if (strncmp(url, "https://", 8) != 0)
		return usage_error("register", "--url must be an https:// URL, not \"%s\"", url);

	char hash[2 * MICA_SHA256_LEN + 1], endpoint[2048];
	mica_httpc *http = NULL;
	json_t *req = NULL, *resp = NULL;
	long status = 0;
	int rc = MICA_EXIT_FAIL, err;
	size_t ulen = strlen(url);
	while (ulen > 0 && url[ulen - 1] == '/')
		ulen--;
	if (snprintf(endpoint, sizeof(endpoint), "%.*s/v1/push/register", (int)ulen, url) >=
	    (int)sizeof(endpoint))
		return usage_error("register", "--url is too long", "");
	if ((err = device_hash(ids, hash)) != 0) {
		fprintf(stderr, "mica-device push register: hashing: %s\n", mica_strerror(err));
		return MICA_EXIT_FAIL;
	}
	mica_httpc_options ho = {.ca_file = ca, .retries = 0};
	if ((err = mica_httpc_new(&http, &ho)) != 0) {
		fprintf(stderr, "mica-device push register: HTTPS client: %s\n",
			mica_strerror(err));
		goto out;
	}
	req = json_pack("{s:s,s:s,s:s}", "app_id", app, "package", pkg, "device_hash", hash);
	if (!req)
		goto out;
	if ((err = mica_httpc_json(http, "POST", endpoint, req, 0, &status, &resp)) != 0) {
		fprintf(stderr, "mica-device push register: %s: %s\n", endpoint,
			mica_strerror(err));
		goto out;
	}
	if (status != 200) {
		json_t *e = json_object_get(resp, "error");
		fprintf(stderr, "mica-device push register: the server answered %ld %s: %s\n",
			status, json_string_value(json_object_get(e, "code")) ?: "(no code)",
			json_string_value(json_object_get(e, "message")) ?: "");
		goto out;
	}
	const char *regid = json_string_value(json_object_get(resp, "regid"));
	const char *key = json_string_value(json_object_get(resp, "content_key"));
	const char *token = json_string_value(json_object_get(resp, "token"));
	uint8_t kb[DEV_PUSH_KEY_LEN + 2];
	size_t klen = 0;
	if (!regid || !token || !key ||
	    mica_base64_decode(key, strlen(key), kb, sizeof(kb), &klen) != 0 ||
	    klen != DEV_PUSH_KEY_LEN) {
		mica_wipe(kb, sizeof(kb));
		fprintf(stderr, "mica-device push register: the answer lacks regid, token or a "
				"32-byte content_key\n");
		goto out;
	}
	mica_wipe(kb, sizeof(kb));
	json_t *st = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "url", url, "app_id", app, "package",
			       pkg, "regid", regid, "content_key", key, "token", token);
	if (!st || (err = state_write(state, st)) != 0) {
		fprintf(stderr, "mica-device push register: cannot write %s: %s\n", state,
			mica_strerror(st ? err : MICA_ENOMEM));
		json_decref(st);
		goto out;
	}
	json_decref(st);
	printf("regid: %s\n", regid);
	rc = MICA_EXIT_OK;
out:
	json_decref(req);
	json_decref(resp);
	mica_httpc_free(http);
	return rc;
}

/* ---- push listen ------------------------------------------------------------------ */

struct listen_ctx {
	dev_push_client *client;
	uv_timer_t timer;
	uv_signal_t sigint, sigterm;
	int64_t want, got;
	int rc;
	bool stopped_by_timeout;
};

static void listen_stop(struct listen_ctx *l)
{
	if (l->client) {
		dev_push_client_stop(l->client);
	}
}

static void print_message(struct listen_ctx *l, const dev_push_message *m)
{
	char *line = json_dumps(m->json, JSON_COMPACT | JSON_SORT_KEYS);
	if (line) {
		printf("%s\n", line);
		fflush(stdout);
		mica_free_wipe(line);
	}
	if (l->want > 0 && ++l->got >= l->want) {
		l->rc = MICA_EXIT_OK;
		listen_stop(l);
	}
}

static void on_message(dev_push_client *c, const dev_push_message *m, void *user)
{
	(void)c;
	print_message(user, m);
}

static void on_event(dev_push_client *c, enum dev_push_event ev, int detail, void *user)
{
	struct listen_ctx *l = user;
	(void)c;
	const char *what = "";
	if (ev == DEV_PUSH_EV_DISCONNECTED)
		what = mica_uvtls_close_name((mica_uvtls_close_reason)detail);
	else if (ev == DEV_PUSH_EV_DROPPED || ev == DEV_PUSH_EV_STATE_ERROR)
		what = mica_strerror(detail);
	fprintf(stderr, "mica-device push listen: event %s %d %s\n", dev_push_event_name(ev),
		detail, what);
	if (ev != DEV_PUSH_EV_REFUSED)
		return;
	/* Retrying cannot help a wrong regid or token, or a refused topic. */
	if (detail == 2 || detail == 4 || detail == 5 || detail == 0x80) {
		fprintf(stderr, "mica-device push listen: the broker refused %s (%s %d)\n",
			detail == 0x80 ? "the subscription" : "the registration",
			detail == 0x80 ? "SUBACK" : "CONNACK", detail);
		l->rc = MICA_EXIT_FAIL;
		listen_stop(l);
	}
}

static void on_stopped(dev_push_client *c, void *user)
{
	struct listen_ctx *l = user;
	dev_push_stats s;
	dev_push_client_stats(c, &s);
	fprintf(stderr,
		"mica-device push listen: stats {\"connects\":%llu,\"resumed\":%llu,"
		"\"subscribed\":%llu,\"refused\":%llu,\"delivered\":%llu,\"deleted\":%llu,"
		"\"duplicates\":%llu,\"rejected\":%llu,\"malformed\":%llu,"
		"\"protocol_errors\":%llu,\"pings\":%llu}\n",
		(unsigned long long)s.connects, (unsigned long long)s.resumed,
		(unsigned long long)s.subscribed, (unsigned long long)s.refused,
		(unsigned long long)s.delivered, (unsigned long long)s.deleted,
		(unsigned long long)s.duplicates, (unsigned long long)s.rejected,
		(unsigned long long)s.malformed, (unsigned long long)s.protocol_errors,
		(unsigned long long)s.pings);
	l->client = NULL;
	uv_close((uv_handle_t *)&l->timer, NULL);
	uv_close((uv_handle_t *)&l->sigint, NULL);
	uv_close((uv_handle_t *)&l->sigterm, NULL);
}

static void timed_out(uv_timer_t *t)
{
	struct listen_ctx *l = t->data;
	if (l->want > 0) {
		fprintf(stderr, "mica-device push listen: timed out with %lld of %lld messages\n",
			(long long)l->got, (long long)l->want);
		l->rc = MICA_EXIT_FAIL;
	} else {
		l->rc = MICA_EXIT_OK;
	}
	listen_stop(l);
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct listen_ctx *l = s->data;
	(void)signum;
	l->rc = MICA_EXIT_OK;
	listen_stop(l);
}

static int cmd_listen(int argc, char **argv)
{
	enum { O_STATE = 0x100, O_HOST, O_PORT, O_CA, O_SNI, O_COUNT, O_TIMEOUT, O_KA, O_SEEN };
	static const struct option opts[] = {
		{"state", required_argument, NULL, O_STATE},
		{"host", required_argument, NULL, O_HOST},
		{"port", required_argument, NULL, O_PORT},
		{"ca", required_argument, NULL, O_CA},
		{"server-name", required_argument, NULL, O_SNI},
		{"count", required_argument, NULL, O_COUNT},
		{"timeout", required_argument, NULL, O_TIMEOUT},
		{"keepalive", required_argument, NULL, O_KA},
		{"seen", required_argument, NULL, O_SEEN},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *state = NULL, *host = NULL, *ca = NULL, *sni = NULL, *seen = NULL;
	int64_t port = 0, count = 0, timeout = 0, keepalive = 60;
	int c, r;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_STATE:
			state = optarg;
			break;
		case O_HOST:
			host = optarg;
			break;
		case O_CA:
			ca = optarg;
			break;
		case O_SNI:
			sni = optarg;
			break;
		case O_SEEN:
			seen = optarg;
			break;
		case O_PORT:
			if ((r = int_option("--port", optarg, 1, 65535, &port)))
				return r;
			break;
		case O_COUNT:
			if ((r = int_option("--count", optarg, 1, INT32_MAX, &count)))
				return r;
			break;
		case O_TIMEOUT:
			if ((r = int_option("--timeout", optarg, 1, 86400 * 365, &timeout)))
				return r;
			break;
		case O_KA:
			if ((r = int_option("--keepalive", optarg, 1, 65535, &keepalive)))
				return r;
			break;
		case 'h':
			usage(stdout);
			return MICA_EXIT_OK;
		default:
			return usage_error("listen", "unknown option or missing value: %s",
					   argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("listen", "unexpected argument \"%s\"", argv[optind]);
	if (!state)
		return usage_error("listen", "%s is required", "--state");
	if (!host)
		return usage_error("listen", "%s is required", "--host");
	if (!port)
		return usage_error("listen", "%s is required", "--port");
	if (!ca)
		return usage_error("listen", "%s is required", "--ca");

	char why[512], seen_buf[4096];
	json_t *st = NULL;
	uint8_t key[DEV_PUSH_KEY_LEN + 2];
	size_t klen = 0;
	int err, rc = MICA_EXIT_FAIL;
	uv_loop_t loop;
	struct listen_ctx l = {.want = count, .rc = MICA_EXIT_FAIL};
	if (state_read(state, &st, why, sizeof(why)) != 0) {
		fprintf(stderr, "mica-device push listen: %s\n", why);
		return MICA_EXIT_FAIL;
	}
	const char *kb64 = json_string_value(json_object_get(st, "content_key"));
	if (mica_base64_decode(kb64, strlen(kb64), key, sizeof(key), &klen) != 0 ||
	    klen != DEV_PUSH_KEY_LEN) {
		fprintf(stderr,
			"mica-device push listen: %s: content_key is not 32 bytes of base64\n",
			state);
		goto out_state;
	}
	if (!seen) {
		if (snprintf(seen_buf, sizeof(seen_buf), "%s.seen", state) >=
		    (int)sizeof(seen_buf)) {
			fprintf(stderr, "mica-device push listen: --state path too long\n");
			goto out_state;
		}
		seen = seen_buf;
	}
	if (uv_loop_init(&loop) != 0)
		goto out_state;
	mica_thread_set_event(true);
	dev_push_options o = {
		.host = host,
		.port = (int)port,
		.server_name = sni,
		.ca_file = ca,
		.regid = json_string_value(json_object_get(st, "regid")),
		.token = json_string_value(json_object_get(st, "token")),
		.content_key = key,
		.keepalive_s = (unsigned)keepalive,
		.dedup_file = seen,
		.on_message = on_message,
		.on_deleted = on_message,
		.on_event = on_event,
		.on_stopped = on_stopped,
		.user = &l,
	};
	(void)uv_timer_init(&loop, &l.timer);
	(void)uv_signal_init(&loop, &l.sigint);
	(void)uv_signal_init(&loop, &l.sigterm);
	l.timer.data = l.sigint.data = l.sigterm.data = &l;
	if ((err = dev_push_client_new(&loop, &o, &l.client)) != 0) {
		fprintf(stderr, "mica-device push listen: %s\n",
			err == MICA_EBADHEADER ? "the --seen file is not a seen-ids file"
			: err == MICA_ECONFIG  ? "the CA file is unusable"
					       : mica_strerror(err));
		uv_close((uv_handle_t *)&l.timer, NULL);
		uv_close((uv_handle_t *)&l.sigint, NULL);
		uv_close((uv_handle_t *)&l.sigterm, NULL);
		(void)uv_run(&loop, UV_RUN_DEFAULT);
		(void)uv_loop_close(&loop);
		goto out_state;
	}
	mica_wipe(key, sizeof(key));
	if (timeout > 0)
		(void)uv_timer_start(&l.timer, timed_out, (uint64_t)timeout * 1000, 0);
	(void)uv_signal_start(&l.sigint, on_signal, SIGINT);
	(void)uv_signal_start(&l.sigterm, on_signal, SIGTERM);
	(void)uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		fprintf(stderr, "mica-device push listen: handles left open at exit\n");
	mica_thread_set_event(false);
	rc = l.rc;
out_state:
	mica_wipe(key, sizeof(key));
	json_decref(st);
	return rc;
}

/* ---- main ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN); /* libuv writes with write(2) */
	if (argc >= 2 &&
	    (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))) {
		usage(stdout);
		return MICA_EXIT_OK;
	}
	if (argc < 3 || strcmp(argv[1], "push") != 0) {
		fprintf(stderr, "mica-device: %s\n",
			argc < 2 ? "a command is required" : "unknown command (want: push)");
		usage(stderr);
		return MICA_EXIT_USAGE;
	}
	if (!strcmp(argv[2], "register"))
		return cmd_register(argc - 2, argv + 2);
	if (!strcmp(argv[2], "listen"))
		return cmd_listen(argc - 2, argv + 2);
	fprintf(stderr, "mica-device push: unknown verb \"%s\" (want: register, listen)\n",
		argv[2]);
	usage(stderr);
	return MICA_EXIT_USAGE;
}
