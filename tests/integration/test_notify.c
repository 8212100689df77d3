/* test_notify.c - account/notify against real peers: the development outbox
 * in PostgreSQL (a database of its own, migrated by the real `mica migrate`)
 * and `mica outbox list`; the SMS webhook against a mica_http server in the
 * test requiring mutual TLS; e-mail against a real SMTP server (Debian's
 * python3-aiosmtpd, started by the test on a free port) over implicit TLS and
 * STARTTLS with AUTH, whose received messages are parsed by Python's own
 * e-mail package. Also security notices (account/notice.c): emitted in the
 * caller's transaction as outbox events that name no contact, claimable by
 * the account role only for its own consumers.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "account/account.h"
#include "account/notify.h"
#include "db.h"
#include "err.h"
#include "http.h"
#include "log.h"
#include "tests/check_main.h"

#define PYTHON "/usr/bin/python3"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v && *v, "environment variable %s is not set (run through tests/run)", name);
	return v;
}

static const char *admin;     /* MICA_PG_CONNINFO */
static char dbname[64];	      /* this run's migrated database */
static char db_ci[2048];      /* superuser on dbname */
static char account_ci[2300]; /* role mica_account on dbname */
static char mica_bin[600];
static int main_pid;

/* A recipient unique to this run and |tag|. */
static const char *addr(const char *tag)
{
	static char buf[8][128];
	static int i;
	char *a = buf[i++ % 8];
	snprintf(a, sizeof(buf[0]), "%s-%d@example.com", tag, main_pid);
	return a;
}

static mica_db *open_ci(const char *ci)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, ci);
	ck_assert_msg(rc == 0, "mica_db_open: %s: %s", mica_strerror(rc), mica_db_errmsg(NULL));
	return db;
}

static acct_notify *outbox_notifier(void)
{
	acct_notify_config c = {.email_mode = "outbox", .sms_mode = NULL};
	acct_notify *n = NULL;
	ck_assert_int_eq(acct_notify_new(&n, &c), 0);
	return n;
}

static int count_rows(mica_db *db, const char *recipient)
{
	PGresult *res = NULL;
	const char *p[1] = {recipient};
	ck_assert_int_eq(mica_db_exec(db,
				      "SELECT count(*) FROM account.notification"
				      " WHERE recipient = $1",
				      1, p, &res),
			 0);
	int64_t n = -1;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &n), 0);
	PQclear(res);
	return (int)n;
}

/* Runs |argv| with stdout to |out_path| (or /dev/null); returns the exit
 * status, or -1 if it did not exit normally. */
static int run(char *const argv[], const char *out_path)
{
	pid_t pid = fork();
	if (pid == 0) {
		int fd =
			open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int null = open("/dev/null", O_WRONLY);
		if (fd < 0 || null < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(null, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	static char buf[1 << 16];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

static int occurrences(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/* ---- outbox ------------------------------------------------------------------ */

START_TEST(outbox_inserts_rows)
{
	acct_notify *n = outbox_notifier();
	mica_db *db = open_ci(account_ci);
	const char *to = addr("rows");
	ck_assert_int_eq(acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, to, "Your code",
					  "Your code is 123456.\nIt expires in 10 minutes."),
			 0);
	ck_assert_int_eq(acct_notify_send(n, db, ACCT_CHANNEL_SMS, "+8613800138000", NULL,
					  "mica code 654321"),
			 0);
	PGresult *res = NULL;
	const char *p[1] = {to};
	ck_assert_int_eq(
		mica_db_exec(db,
			     "SELECT channel, recipient, subject, body, created_at <= now()"
			     " FROM account.notification WHERE recipient = $1",
			     1, p, &res),
		0);
	ck_assert_int_eq(PQntuples(res), 1);
	ck_assert_str_eq(mica_db_get(res, 0, 0), "email");
	ck_assert_str_eq(mica_db_get(res, 0, 1), to);
	ck_assert_str_eq(mica_db_get(res, 0, 2), "Your code");
	ck_assert_str_eq(mica_db_get(res, 0, 3), "Your code is 123456.\nIt expires in 10 minutes.");
	ck_assert_str_eq(mica_db_get(res, 0, 4), "t");
	PQclear(res);
	p[0] = "+8613800138000";
	ck_assert_int_eq(
		mica_db_exec(db,
			     "SELECT channel, subject IS NULL, body FROM account.notification"
			     " WHERE recipient = $1 ORDER BY id DESC LIMIT 1",
			     1, p, &res),
		0);
	ck_assert_str_eq(mica_db_get(res, 0, 0), "sms");
	ck_assert_str_eq(mica_db_get(res, 0, 1), "t");
	ck_assert_str_eq(mica_db_get(res, 0, 2), "mica code 654321");
	PQclear(res);

	/* The service role may insert and read, nothing more. */
	ck_assert_int_eq(mica_db_exec(db, "DELETE FROM account.notification", 0, NULL, NULL),
			 MICA_EPERM);
	ck_assert_int_eq(
		mica_db_exec(db, "UPDATE account.notification SET body = 'x'", 0, NULL, NULL),
		MICA_EPERM);
	mica_db_close(&db);
	acct_notify_free(n);
}
END_TEST

struct tx_arg {
	acct_notify *n;
	const char *to;
	int fail;
};

static int send_in_tx(mica_db *db, void *arg)
{
	struct tx_arg *t = arg;
	int rc = acct_notify_send(t->n, db, ACCT_CHANNEL_EMAIL, t->to, "Code", "Code 1");
	if (rc)
		return rc;
	return t->fail ? MICA_ESTATE : 0;
}

START_TEST(outbox_follows_the_transaction)
{
	acct_notify *n = outbox_notifier();
	mica_db *db = open_ci(account_ci);
	struct tx_arg t = {n, addr("tx"), 1};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, send_in_tx, &t), MICA_ESTATE);
	ck_assert_int_eq(count_rows(db, t.to), 0);
	t.fail = 0;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, send_in_tx, &t), 0);
	ck_assert_int_eq(count_rows(db, t.to), 1);
	mica_db_close(&db);
	acct_notify_free(n);
}
END_TEST

START_TEST(bad_arguments_are_refused)
{
	acct_notify *n = outbox_notifier();
	mica_db *db = open_ci(account_ci);
	const char *to = addr("bad");
	char big[ACCT_NOTIFY_BODY_MAX + 2];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	struct {
		enum acct_channel ch;
		const char *to, *subject, *body;
	} bad[] = {
		{ACCT_CHANNEL_EMAIL, "victim@example.com\r\nBcc: all@example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "victim@example.com>, <other@example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "no-at-sign", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "two@@example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, ".dot@example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "a@-example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "a@example..com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, "josé@example.com", "s", "b"},
		{ACCT_CHANNEL_EMAIL, to, NULL, "b"},
		{ACCT_CHANNEL_EMAIL, to, "", "b"},
		{ACCT_CHANNEL_EMAIL, to, "two\r\nlines", "b"},
		{ACCT_CHANNEL_EMAIL, to, "s", ""},
		{ACCT_CHANNEL_EMAIL, to, "s", NULL},
		{ACCT_CHANNEL_EMAIL, to, "s", "bad \xc3\x28 utf-8"},
		{ACCT_CHANNEL_EMAIL, to, "s", "overlong \xc0\xaf"},
		{ACCT_CHANNEL_EMAIL, to, "s", "escape \x1b[2J"},
		{ACCT_CHANNEL_EMAIL, to, "s", big},
		{ACCT_CHANNEL_SMS, "call-me", NULL, "b"},
		{ACCT_CHANNEL_SMS, "+12345", NULL, "b"},
		{ACCT_CHANNEL_SMS, "+86 138 0013 8000", NULL, "b"},
		{(enum acct_channel)0, to, "s", "b"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(acct_notify_send(n, db, bad[i].ch, bad[i].to, bad[i].subject,
					       bad[i].body) == MICA_EINVAL,
			      "case %zu", i);
	ck_assert_int_eq(count_rows(db, to), 0);
	ck_assert_int_eq(acct_notify_send(NULL, db, ACCT_CHANNEL_EMAIL, to, "s", "b"), MICA_EINVAL);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "s", "b"), MICA_EINVAL);
	/* The largest body, UTF-8 subjects and bodies are fine. */
	big[ACCT_NOTIFY_BODY_MAX] = '\0';
	ck_assert_int_eq(acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, to, "验证码 ✓", big), 0);
	ck_assert_int_eq(acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, to, "s", "tab\tand\r\nCRLF"),
			 0);
	ck_assert_int_eq(count_rows(db, to), 2);
	mica_db_close(&db);
	acct_notify_free(n);
}
END_TEST

START_TEST(config_is_checked)
{
	struct {
		acct_notify_config c;
	} bad[] = {
		{{.email_mode = "carrier-pigeon"}},
		{{.sms_mode = "smtp"}},
		{{.email_mode = "smtp", .smtp_from = "a@example.com"}},
		{{.email_mode = "smtp", .smtp_url = "http://x", .smtp_from = "a@example.com"}},
		{{.email_mode = "smtp", .smtp_url = "smtps://x"}},
		{{.email_mode = "smtp", .smtp_url = "smtps://x", .smtp_from = "A <a@example.com>"}},
		{{.email_mode = "smtp",
		  .smtp_url = "smtps://x",
		  .smtp_from = "a@example.com",
		  .smtp_user = "u"}},
		{{.sms_mode = "webhook", .ca_file = "ca"}},
		{{.sms_mode = "webhook", .sms_webhook_url = "http://x", .ca_file = "ca"}},
		{{.sms_mode = "webhook", .sms_webhook_url = "https://x"}},
		{{.sms_mode = "webhook",
		  .sms_webhook_url = "https://x",
		  .ca_file = "ca",
		  .cert_file = "c"}},
		{{.timeout_ms = -1}},
	};
	acct_notify *n = (acct_notify *)1;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(acct_notify_new(&n, &bad[i].c) == MICA_ECONFIG, "case %zu", i);
		ck_assert_ptr_null(n);
	}
	ck_assert_int_eq(acct_notify_new(&n, NULL), MICA_EINVAL);
	acct_notify_config ok = {.email_mode = "smtp",
				 .smtp_url = "smtp://mail.example.com:587",
				 .smtp_from = "no-reply@example.com",
				 .smtp_user = "u",
				 .smtp_password = "p",
				 .sms_mode = "webhook",
				 .sms_webhook_url = "https://sms.example.com/send",
				 .ca_file = "ca"};
	ck_assert_int_eq(acct_notify_new(&n, &ok), 0);
	acct_notify_free(n);
	acct_notify_free(NULL);
	ck_assert_str_eq(acct_channel_name(ACCT_CHANNEL_EMAIL), "email");
	ck_assert_str_eq(acct_channel_name(ACCT_CHANNEL_SMS), "sms");
	ck_assert_ptr_null(acct_channel_name((enum acct_channel)7));
}
END_TEST

START_TEST(cli_lists_the_outbox)
{
	acct_notify *n = outbox_notifier();
	mica_db *db = open_ci(account_ci);
	const char *alice = addr("alice"), *bob = addr("bob");
	ck_assert_int_eq(
		acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, alice, "First", "Code 111111\n\nBye"),
		0);
	ck_assert_int_eq(acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, bob, "For Bob", "Code 222222"),
			 0);
	ck_assert_int_eq(
		acct_notify_send(n, db, ACCT_CHANNEL_EMAIL, alice, "Second", "Code 333333"), 0);
	mica_db_close(&db);
	acct_notify_free(n);

	char out[700], upper[128];
	snprintf(out, sizeof(out), "%s/notify-%d.out", env("MICA_TEST_DIR"), (int)getpid());
	/* --to is case-insensitive. */
	snprintf(upper, sizeof(upper), "%s", alice);
	upper[0] = 'A';
	char *list_alice[] = {mica_bin, "outbox", "list", "--db", db_ci, "--to", upper, NULL};
	ck_assert_int_eq(run(list_alice, out), 0);
	const char *text = slurp(out);
	ck_assert_int_eq(occurrences(text, "time:    "), 2);
	ck_assert_int_eq(occurrences(text, "channel: email\n"), 2);
	char to_line[200];
	snprintf(to_line, sizeof(to_line), "to:      %s\n", alice);
	ck_assert_int_eq(occurrences(text, to_line), 2);
	ck_assert_ptr_null(strstr(text, "222222"));
	ck_assert_ptr_null(strstr(text, "For Bob"));
	/* Newest last; bodies indented, blank lines kept. */
	const char *first = strstr(text, "subject: First\nbody:\n  Code 111111\n  \n  Bye\n\n");
	const char *second = strstr(text, "subject: Second\nbody:\n  Code 333333\n\n");
	ck_assert_ptr_nonnull(first);
	ck_assert_ptr_nonnull(second);
	ck_assert(first < second);
	ck_assert_int_eq(strncmp(text, "time:    20", 11), 0);

	char *limited[] = {mica_bin, "outbox",	    "list",    "--db", db_ci,
			   "--to",   (char *)alice, "--limit", "1",    NULL};
	ck_assert_int_eq(run(limited, out), 0);
	text = slurp(out);
	ck_assert_int_eq(occurrences(text, "time:    "), 1);
	ck_assert_ptr_nonnull(strstr(text, "Code 333333"));

	char *everyone[] = {mica_bin, "outbox", "list", "--db", db_ci, NULL};
	ck_assert_int_eq(run(everyone, out), 0);
	ck_assert_ptr_nonnull(strstr(slurp(out), "Code 222222"));

	char *nobody[] = {mica_bin, "outbox",		"list", "--db", db_ci,
			  "--to",   "none@example.com", NULL};
	ck_assert_int_eq(run(nobody, out), 0);
	ck_assert_str_eq(slurp(out), "");

	/* Usage errors and an unreachable database. */
	char *bad_limit[] = {mica_bin, "outbox", "list", "--db", db_ci, "--limit", "0", NULL};
	ck_assert_int_eq(run(bad_limit, NULL), 64);
	char *junk_limit[] = {mica_bin, "outbox", "list", "--db", db_ci, "--limit", "5x", NULL};
	ck_assert_int_eq(run(junk_limit, NULL), 64);
	char *no_sub[] = {mica_bin, "outbox", NULL};
	ck_assert_int_eq(run(no_sub, NULL), 64);
	char *extra[] = {mica_bin, "outbox", "list", "--db", db_ci, "extra", NULL};
	ck_assert_int_eq(run(extra, NULL), 64);
	char *no_db[] = {mica_bin, "outbox", "list", "--db", "host=127.0.0.1 port=1 dbname=x",
			 NULL};
	ck_assert_int_eq(run(no_db, NULL), 1);
	char *help[] = {mica_bin, "outbox", "list", "--help", NULL};
	ck_assert_int_eq(run(help, out), 0);
	ck_assert_ptr_nonnull(strstr(slurp(out), "outbox.event"));
	unlink(out);
}
END_TEST

/* ---- SMS webhook ------------------------------------------------------------------ */

static struct {
	pthread_mutex_t mu;
	char body[4096];
	char peer[64];
	atomic_int calls;
} hook = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Answers by the recipient's last three digits: 429, 503, 400 or 202. */
static void sms_endpoint(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&hook.calls, 1);
	pthread_mutex_lock(&hook.mu);
	snprintf(hook.body, sizeof(hook.body), "%s", req->body ? req->body : "");
	snprintf(hook.peer, sizeof(hook.peer), "%s", req->peer ? req->peer : "");
	pthread_mutex_unlock(&hook.mu);
	const char *to = json_string_value(json_object_get(req->json, "to"));
	size_t n = to ? strlen(to) : 0;
	const char *tail = n >= 3 ? to + n - 3 : "";
	if (strcmp(tail, "429") == 0)
		mica_http_reply_error(resp, 429, "rate_limited", "slow down");
	else if (strcmp(tail, "503") == 0)
		mica_http_reply_error(resp, 503, "unavailable", "later");
	else if (strcmp(tail, "400") == 0)
		mica_http_reply_error(resp, 400, "bad_number", "no such number");
	else
		mica_http_reply_json(resp, 202, json_pack("{s:s}", "id", "msg-1"));
}

static const mica_http_route sms_routes[] = {
	{"POST", "/v1/sms", sms_endpoint, MICA_ROUTE_JSON | MICA_ROUTE_PEER},
};

START_TEST(sms_webhook_receives_to_and_text)
{
	mica_http_options o;
	mica_http_server *srv = NULL;
	char url[128];
	mica_http_options_default(&o);
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	o.client_ca_file = env("MICA_CA");
	o.require_client_cert = 1;
	o.access_log = 0;
	ck_assert_int_eq(mica_http_start(&srv, &o, sms_routes, 1, NULL), 0);
	snprintf(url, sizeof(url), "https://localhost:%d/v1/sms", mica_http_port(srv));

	acct_notify_config c = {.email_mode = "outbox",
				.sms_mode = "webhook",
				.sms_webhook_url = url,
				.ca_file = env("MICA_CA"),
				.cert_file = env("MICA_CERT_ACCOUNT"),
				.key_file = env("MICA_KEY_ACCOUNT"),
				.timeout_ms = 5000};
	acct_notify *n = NULL;
	ck_assert_int_eq(acct_notify_new(&n, &c), 0);
	/* No database needed outside outbox mode. */
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138000", "ignored",
					  "Your mica code is 424242 \"quoted\" 验证码"),
			 0);
	json_t *got = json_loads(hook.body, 0, NULL);
	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(json_object_size(got), 2);
	ck_assert_str_eq(json_string_value(json_object_get(got, "to")), "+8613800138000");
	ck_assert_str_eq(json_string_value(json_object_get(got, "text")),
			 "Your mica code is 424242 \"quoted\" 验证码");
	json_decref(got);
	ck_assert_str_eq(hook.peer, "account");

	/* Failures map to distinct errors, and nothing is sent twice. */
	atomic_store(&hook.calls, 0);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138503", NULL, "x"),
			 MICA_EHTTP);
	ck_assert_int_eq(atomic_load(&hook.calls), 1);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138429", NULL, "x"),
			 MICA_ELIMITED);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138400", NULL, "x"),
			 MICA_EINVAL);
	ck_assert_int_eq(atomic_load(&hook.calls), 3);
	acct_notify_free(n);

	/* Without a client certificate the endpoint refuses us. */
	c.cert_file = c.key_file = NULL;
	ck_assert_int_eq(acct_notify_new(&n, &c), 0);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138000", NULL, "x"),
			 MICA_EPERM);
	acct_notify_free(n);

	/* An endpoint we do not trust is never sent the code. */
	c.ca_file = env("MICA_CA_ROGUE");
	atomic_store(&hook.calls, 0);
	ck_assert_int_eq(acct_notify_new(&n, &c), 0);
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_SMS, "+8613800138000", NULL, "x"),
			 MICA_ETLS);
	ck_assert_int_eq(atomic_load(&hook.calls), 0);
	acct_notify_free(n);
	mica_http_stop(srv);
}
END_TEST

/* ---- SMTP ------------------------------------------------------------------------ */

/* A real SMTP server (aiosmtpd) for one test. argv: mode (smtps, starttls or
 * plain), certificate, key, output directory, user ("" for no AUTH),
 * password. It prints its port, then for each message writes N.eml (the
 * bytes received, after SMTP dot-unstuffing) and N.json (envelope, TLS, AUTH
 * user, and the headers and body as Python's e-mail package decodes them)
 * before answering 250. */
static const char smtpd_py[] =
	"import asyncio, email, email.policy, json, os, ssl, sys\n"
	"from aiosmtpd.smtp import SMTP, AuthResult\n"
	"mode, cert, key, outdir, user, password = sys.argv[1:7]\n"
	"ctx = None\n"
	"if mode != 'plain':\n"
	"    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n"
	"    ctx.load_cert_chain(cert, key)\n"
	"count = 0\n"
	"class Handler:\n"
	"    async def handle_DATA(self, server, session, envelope):\n"
	"        global count\n"
	"        count += 1\n"
	"        raw = envelope.original_content\n"
	"        msg = email.message_from_bytes(raw, policy=email.policy.default)\n"
	"        date = msg['Date']\n"
	"        summary = {\n"
	"            'mail_from': envelope.mail_from, 'rcpt_tos': envelope.rcpt_tos,\n"
	"            'tls': server.transport.get_extra_info('ssl_object') is not None,\n"
	"            'auth_user': session.auth_data.login.decode() if session.authenticated "
	"else None,\n"
	"            'from': str(msg['From']), 'to': str(msg['To']),\n"
	"            'subject': str(msg['Subject']),\n"
	"            'date_ts': int(date.datetime.timestamp()) if date and date.datetime else 0,\n"
	"            'message_id': str(msg['Message-ID']),\n"
	"            'mime_version': str(msg['MIME-Version']),\n"
	"            'content_type': msg.get_content_type(),\n"
	"            'charset': msg.get_content_charset(),\n"
	"            'cte': str(msg['Content-Transfer-Encoding']),\n"
	"            'body': msg.get_content().replace('\\r\\n', '\\n'),\n"
	"            'defects': len(msg.defects),\n"
	"        }\n"
	"        base = os.path.join(outdir, str(count))\n"
	"        with open(base + '.eml', 'wb') as f:\n"
	"            f.write(raw)\n"
	"        with open(base + '.json', 'w') as f:\n"
	"            json.dump(summary, f)\n"
	"        return '250 OK'\n"
	"def authenticator(server, session, envelope, mechanism, data):\n"
	"    ok = data.login == user.encode() and data.password == password.encode()\n"
	"    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)\n"
	"def factory():\n"
	"    return SMTP(Handler(), hostname='localhost',\n"
	"                tls_context=ctx if mode == 'starttls' else None,\n"
	"                require_starttls=(mode == 'starttls'),\n"
	"                authenticator=authenticator if user else None,\n"
	"                auth_required=bool(user), auth_require_tls=(mode == 'starttls'))\n"
	"async def main():\n"
	"    loop = asyncio.get_running_loop()\n"
	"    srv = await loop.create_server(factory, '127.0.0.1', 0,\n"
	"                                   ssl=ctx if mode == 'smtps' else None)\n"
	"    print(srv.sockets[0].getsockname()[1], flush=True)\n"
	"    await asyncio.Event().wait()\n"
	"asyncio.run(main())\n";

struct smtpd {
	pid_t pid;
	int port;
	char dir[600];
};

static void smtpd_start(struct smtpd *s, const char *mode, const char *user, const char *pw)
{
	static int seq;
	int fds[2];
	*s = (struct smtpd){.pid = -1}; /* smtpd_stop() is a no-op until the fork */
	snprintf(s->dir, sizeof(s->dir), "%s/smtpd-%d-%d", env("MICA_TEST_DIR"), (int)getpid(),
		 seq++);
	ck_assert_int_eq(mkdir(s->dir, 0700), 0);
	ck_assert_int_eq(pipe(fds), 0);
	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (s->pid == 0) {
		char log[700];
		snprintf(log, sizeof(log), "%s/smtpd.log", s->dir);
		int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (logfd >= 0)
			dup2(logfd, 2);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(PYTHON, PYTHON, "-c", smtpd_py, mode, env("MICA_CERT_SERVER"),
		      env("MICA_KEY_SERVER"), s->dir, user, pw, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	/* The server prints its port once it listens; give it 20 s to start. */
	char line[32] = {0};
	size_t len = 0;
	struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
	while (len < sizeof(line) - 1 && !memchr(line, '\n', len)) {
		if (poll(&pfd, 1, 20000) != 1)
			break;
		ssize_t r = read(fds[0], line + len, sizeof(line) - 1 - len);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fds[0]);
	s->port = atoi(line);
	ck_assert_msg(s->port > 0, "the SMTP server did not start: is python3-aiosmtpd installed"
				   " (deploy/install-deps)?");
}

static void smtpd_stop(struct smtpd *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGTERM);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
}

/* Message |n|'s summary (caller decrefs). */
static json_t *smtpd_message(const struct smtpd *s, int n)
{
	char path[700];
	snprintf(path, sizeof(path), "%s/%d.json", s->dir, n);
	json_error_t err;
	json_t *j = json_load_file(path, 0, &err);
	ck_assert_msg(j != NULL, "no message %d: %s", n, err.text);
	return j;
}

static int smtpd_count(const struct smtpd *s)
{
	char path[700];
	int n = 0;
	for (;;) {
		snprintf(path, sizeof(path), "%s/%d.json", s->dir, n + 1);
		if (access(path, F_OK) != 0)
			return n;
		n++;
	}
}

static const char *jstr(json_t *j, const char *name)
{
	const char *v = json_string_value(json_object_get(j, name));
	ck_assert_msg(v != NULL, "member %s missing", name);
	return v;
}

static acct_notify *smtp_notifier(const char *url, const char *user, const char *pw, const char *ca)
{
	acct_notify_config c = {.email_mode = "smtp",
				.smtp_url = url,
				.smtp_from = "no-reply@mica.example",
				.smtp_user = user,
				.smtp_password = pw,
				.ca_file = ca,
				.timeout_ms = 10000};
	acct_notify *n = NULL;
	ck_assert_int_eq(acct_notify_new(&n, &c), 0);
	return n;
}

START_TEST(smtps_delivers_with_headers)
{
	struct smtpd s;
	char url[64];
	smtpd_start(&s, "smtps", "mica", "s3cret-pw");
	snprintf(url, sizeof(url), "smtps://localhost:%d", s.port);
	acct_notify *n = smtp_notifier(url, "mica", "s3cret-pw", env("MICA_CA"));
	const char *to = addr("smtp");

	/* Lines that are or start with "." must survive SMTP's end-of-data
	 * marker (dot-stuffing), and non-ASCII goes as base64. */
	const char *body = "Your code is 987654.\n.\n..two dots\n.leading\nlast line";
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to,
					  "Your mica verification code", body),
			 0);
	const char *utf8_subject =
		"mica 验证码: 一个很长的主题，用来检查编码字分段是否正确处理多字节"
		"字符 ✓";
	const char *utf8_body = "您的验证码是 246810。\r\n请勿告诉他人。";
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, utf8_subject, utf8_body),
			 0);
	ck_assert_int_eq(smtpd_count(&s), 2);

	json_t *m = smtpd_message(&s, 1);
	ck_assert_str_eq(jstr(m, "mail_from"), "no-reply@mica.example");
	ck_assert_int_eq(json_array_size(json_object_get(m, "rcpt_tos")), 1);
	ck_assert_str_eq(json_string_value(json_array_get(json_object_get(m, "rcpt_tos"), 0)), to);
	ck_assert(json_is_true(json_object_get(m, "tls")));
	ck_assert_str_eq(jstr(m, "auth_user"), "mica");
	ck_assert_str_eq(jstr(m, "from"), "no-reply@mica.example");
	ck_assert_str_eq(jstr(m, "to"), to);
	ck_assert_str_eq(jstr(m, "subject"), "Your mica verification code");
	ck_assert_str_eq(jstr(m, "mime_version"), "1.0");
	ck_assert_str_eq(jstr(m, "content_type"), "text/plain");
	ck_assert_str_eq(jstr(m, "charset"), "utf-8");
	ck_assert_str_eq(jstr(m, "cte"), "7bit");
	ck_assert_int_eq(json_integer_value(json_object_get(m, "defects")), 0);
	long long ts = json_integer_value(json_object_get(m, "date_ts"));
	ck_assert_msg(llabs(ts - (long long)time(NULL)) < 120, "Date header %lld", ts);
	const char *mid = jstr(m, "message_id");
	ck_assert_msg(mid[0] == '<' && strstr(mid, "@mica.example>") && strlen(mid) > 20,
		      "Message-ID %s", mid);
	ck_assert_str_eq(jstr(m, "body"),
			 "Your code is 987654.\n.\n..two dots\n.leading\nlast line\n");
	char mid1[128];
	snprintf(mid1, sizeof(mid1), "%s", mid);
	json_decref(m);

	/* The raw bytes: CRLF line ends and each header exactly once. */
	char path[700];
	snprintf(path, sizeof(path), "%s/1.eml", s.dir);
	const char *raw = slurp(path);
	ck_assert_ptr_nonnull(strstr(raw, "\r\n.\r\n..two dots\r\n.leading\r\n"));
	static const char *const headers[] = {"\r\nTo: ",
					      "\r\nSubject: ",
					      "\r\nDate: ",
					      "\r\nMessage-ID: ",
					      "\r\nMIME-Version: ",
					      "\r\nContent-Type: ",
					      "\r\nContent-Transfer-Encoding: "};
	ck_assert_int_eq(strncmp(raw, "From: ", 6), 0);
	for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
		ck_assert_msg(occurrences(raw, headers[i]) == 1, "header %s", headers[i] + 2);

	m = smtpd_message(&s, 2);
	ck_assert_str_eq(jstr(m, "subject"), utf8_subject);
	ck_assert_str_eq(jstr(m, "cte"), "base64");
	ck_assert_str_eq(jstr(m, "body"), "您的验证码是 246810。\n请勿告诉他人。\n");
	ck_assert_int_eq(json_integer_value(json_object_get(m, "defects")), 0);
	ck_assert_str_ne(jstr(m, "message_id"), mid1);
	json_decref(m);
	/* Header lines holding encoded words stay within RFC 2047's 76
	 * characters. */
	snprintf(path, sizeof(path), "%s/2.eml", s.dir);
	raw = slurp(path);
	ck_assert_ptr_nonnull(strstr(raw, "Subject: =?UTF-8?B?"));
	for (const char *line = raw; *line && strncmp(line, "\r\n", 2) != 0;) {
		const char *eol = strstr(line, "\r\n");
		ck_assert_ptr_nonnull(eol);
		ck_assert_msg(eol - line <= 76, "header line of %d bytes", (int)(eol - line));
		line = eol + 2;
	}
	acct_notify_free(n);

	/* A wrong password is refused and nothing is delivered. */
	n = smtp_notifier(url, "mica", "wrong", env("MICA_CA"));
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "s", "b"), MICA_EPERM);
	acct_notify_free(n);
	/* A server we do not trust never sees the message. */
	n = smtp_notifier(url, "mica", "s3cret-pw", env("MICA_CA_ROGUE"));
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "s", "b"), MICA_ETLS);
	acct_notify_free(n);
	ck_assert_int_eq(smtpd_count(&s), 2);
	smtpd_stop(&s);
}
END_TEST

/* A keyed message sent again (a retried notice) is the same message: the
 * same Message-ID; a malformed key is refused before anything is sent. */
START_TEST(keyed_messages_repeat_their_message_id)
{
	struct smtpd s;
	char url[64];
	smtpd_start(&s, "smtps", "mica", "s3cret-pw");
	snprintf(url, sizeof(url), "smtps://localhost:%d", s.port);
	acct_notify *n = smtp_notifier(url, "mica", "s3cret-pw", env("MICA_CA"));
	const char *to = addr("keyed");
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(acct_notify_send_keyed(n, NULL, ACCT_CHANNEL_EMAIL, to, "Notice",
							"Your password was changed.",
							"notice-42-1-1796000000000000"),
				 0);
	ck_assert_int_eq(
		acct_notify_send_keyed(n, NULL, ACCT_CHANNEL_EMAIL, to, "Notice", "x", "bad key>"),
		MICA_EINVAL);
	char long_key[ACCT_NOTIFY_KEY_MAX + 2];
	memset(long_key, 'k', sizeof(long_key) - 1);
	long_key[sizeof(long_key) - 1] = '\0';
	ck_assert_int_eq(
		acct_notify_send_keyed(n, NULL, ACCT_CHANNEL_EMAIL, to, "Notice", "x", long_key),
		MICA_EINVAL);
	ck_assert_int_eq(smtpd_count(&s), 2);
	for (int i = 1; i <= 2; i++) {
		json_t *m = smtpd_message(&s, i);
		ck_assert_str_eq(jstr(m, "message_id"),
				 "<notice-42-1-1796000000000000@mica.example>");
		json_decref(m);
	}
	acct_notify_free(n);
	smtpd_stop(&s);
}
END_TEST

START_TEST(starttls_is_required)
{
	struct smtpd s, plain;
	char url[64];
	smtpd_start(&s, "starttls", "mica", "pw2");
	snprintf(url, sizeof(url), "smtp://localhost:%d", s.port);
	acct_notify *n = smtp_notifier(url, "mica", "pw2", env("MICA_CA"));
	const char *to = addr("starttls");
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "Hello", "Code 1357"),
			 0);
	json_t *m = smtpd_message(&s, 1);
	ck_assert(json_is_true(json_object_get(m, "tls")));
	ck_assert_str_eq(jstr(m, "auth_user"), "mica");
	ck_assert_str_eq(jstr(m, "body"), "Code 1357\n");
	json_decref(m);
	acct_notify_free(n);
	smtpd_stop(&s);

	/* A server without STARTTLS is refused before any mail is handed over. */
	smtpd_start(&plain, "plain", "", "");
	snprintf(url, sizeof(url), "smtp://localhost:%d", plain.port);
	n = smtp_notifier(url, NULL, NULL, env("MICA_CA"));
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "Hello", "Code 1357"),
			 MICA_ETLS);
	ck_assert_int_eq(smtpd_count(&plain), 0);
	acct_notify_free(n);
	smtpd_stop(&plain);

	/* Nobody listening. */
	n = smtp_notifier(url, NULL, NULL, env("MICA_CA"));
	ck_assert_int_eq(acct_notify_send(n, NULL, ACCT_CHANNEL_EMAIL, to, "Hello", "Code 1357"),
			 MICA_EIO);
	acct_notify_free(n);
}
END_TEST

/* ---- security notices (account/notice.c) ---------------------------------------------- */

static int64_t query_int(mica_db *db, const char *sql, const char *param)
{
	PGresult *res = NULL;
	const char *p[1] = {param};
	int rc = mica_db_exec(db, sql, param ? 1 : 0, param ? p : NULL, &res);
	ck_assert_msg(rc == 0, "%s: %s", sql, mica_strerror(rc));
	int64_t n = -1;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &n), 0);
	PQclear(res);
	return n;
}

struct emit_arg {
	int64_t user_id;
	enum acct_notice_kind kind;
	const char *arg;
	unsigned carry;
	int fail;
};

static int emit_in_tx(mica_db *db, void *arg)
{
	struct emit_arg *e = arg;
	int rc = acct_notice_emit(db, e->user_id, e->kind, e->arg, e->carry);
	if (rc)
		return rc;
	return e->fail ? MICA_ESTATE : 0;
}

/* A notice is an outbox event written in the caller's transaction, naming
 * the account and the kind only; contacts it must reach after their rows
 * are gone travel as the Key Center ciphertexts they were, never in clear. */
START_TEST(notice_follows_the_transaction_and_names_no_contact)
{
	mica_db *sup = open_ci(db_ci), *db = open_ci(account_ci);
	PGresult *res = NULL;
	char uid[24];
	ck_assert_int_eq(
		mica_db_exec(sup,
			     "INSERT INTO account.user (account_no_enc, account_no_idx,"
			     " password_enc, password_policy, email_enc, email_idx,"
			     " security_phone_enc) VALUES ('kc:v1:no', 'notice-no', 'x', 'miui',"
			     " 'kc:v1:sealed-email', 'notice-email', 'kc:v1:sealed-phone')"
			     " RETURNING id",
			     0, NULL, &res),
		0);
	snprintf(uid, sizeof(uid), "%s", mica_db_get(res, 0, 0));
	PQclear(res);
	struct emit_arg e = {strtoll(uid, NULL, 10), ACCT_NOTICE_DELETED, NULL, ACCT_CONTACTS_ALL,
			     1};

	/* Outside a transaction it is refused: it would not commit with anything. */
	ck_assert_int_eq(acct_notice_emit(db, e.user_id, ACCT_NOTICE_PASSWORD_CHANGED, NULL, 0),
			 MICA_ESTATE);
	ck_assert_int_eq(acct_notice_emit(db, e.user_id, (enum acct_notice_kind)99, NULL, 0),
			 MICA_EINVAL);
	ck_assert_int_eq(acct_notice_emit(db, 0, ACCT_NOTICE_FROZEN, NULL, 0), MICA_EINVAL);
	/* Rolled back with the operation: no event, no notice. */
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_in_tx, &e), MICA_ESTATE);
	const char *q_events = "SELECT count(*) FROM outbox.event WHERE topic = 'account.notice'"
			       " AND payload->>'user_id' = $1";
	ck_assert_int_eq(query_int(sup, q_events, uid), 0);
	ck_assert_int_eq(query_int(sup,
				   "SELECT count(*) FROM account.notice WHERE user_id = $1::bigint",
				   uid),
			 0);
	e.fail = 0;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_in_tx, &e), 0);
	ck_assert_int_eq(query_int(sup, q_events, uid), 1);
	const char *p[1] = {uid};
	ck_assert_int_eq(
		mica_db_exec(sup,
			     "SELECT e.payload::text, n.carried->>'email',"
			     " n.carried->>'security_phone', n.carried ? 'phone', n.kind"
			     " FROM outbox.event e JOIN account.notice n ON n.event_id = e.id"
			     " WHERE n.user_id = $1::bigint",
			     1, p, &res),
		0);
	ck_assert_int_eq(PQntuples(res), 1);
	char want[96];
	snprintf(want, sizeof(want), "{\"kind\": \"deleted\", \"user_id\": %s}", uid);
	ck_assert_str_eq(mica_db_get(res, 0, 0), want);
	ck_assert_str_eq(mica_db_get(res, 0, 1), "kc:v1:sealed-email");
	ck_assert_str_eq(mica_db_get(res, 0, 2), "kc:v1:sealed-phone");
	ck_assert_str_eq(mica_db_get(res, 0, 3), "f"); /* no phone bound: nothing carried */
	ck_assert_str_eq(mica_db_get(res, 0, 4), "deleted");
	PQclear(res);
	/* The migration subscribed the notice worker: the event waits for it. */
	ck_assert_int_eq(query_int(sup,
				   "SELECT count(*) FROM outbox.pending p JOIN outbox.event e"
				   " ON e.id = p.event_id WHERE p.consumer = 'account.notices'"
				   " AND e.payload->>'user_id' = $1",
				   uid),
			 1);
	mica_db_close(&db);
	mica_db_close(&sup);
}
END_TEST

/* The account role claims its own pending events and no other consumer's. */
START_TEST(notice_worker_sees_only_its_pending_rows)
{
	mica_db *sup = open_ci(db_ci), *db = open_ci(account_ci);
	ck_assert_int_eq(
		mica_db_exec(sup,
			     "INSERT INTO outbox.subscription (consumer, topic)"
			     " VALUES ('push.notices', 'account.notice') ON CONFLICT DO NOTHING",
			     0, NULL, NULL),
		0);
	struct emit_arg e = {424242, ACCT_NOTICE_PASSWORD_CHANGED, NULL, 0, 0};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_in_tx, &e), 0);
	const char *q = "SELECT count(*) FROM outbox.pending WHERE consumer = $1";
	ck_assert_int_ge(query_int(sup, q, "push.notices"), 1);
	ck_assert_int_eq(query_int(db, q, "push.notices"), 0);
	ck_assert_int_ge(query_int(db, q, "account.notices"), 1);
	ck_assert_int_eq(mica_db_exec(db,
				      "DELETE FROM outbox.pending WHERE consumer = 'push.notices'",
				      0, NULL, NULL),
			 0);
	ck_assert_int_ge(query_int(sup, q, "push.notices"), 1);
	mica_db_close(&db);
	mica_db_close(&sup);
}
END_TEST

/* ---- setup -------------------------------------------------------------------------- */

static Suite *notify_suite(void)
{
	Suite *s = suite_create("notify");
	TCase *tc = tcase_create("notify");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, outbox_inserts_rows);
	tcase_add_test(tc, outbox_follows_the_transaction);
	tcase_add_test(tc, bad_arguments_are_refused);
	tcase_add_test(tc, config_is_checked);
	tcase_add_test(tc, cli_lists_the_outbox);
	tcase_add_test(tc, sms_webhook_receives_to_and_text);
	tcase_add_test(tc, smtps_delivers_with_headers);
	tcase_add_test(tc, starttls_is_required);
	tcase_add_test(tc, keyed_messages_repeat_their_message_id);
	tcase_add_test(tc, notice_follows_the_transaction_and_names_no_contact);
	tcase_add_test(tc, notice_worker_sees_only_its_pending_rows);
	suite_add_tcase(s, tc);
	return s;
}

static int admin_exec(const char *sql)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, admin);
	if (rc == 0)
		rc = mica_db_exec(db, sql, 0, NULL, NULL);
	if (rc)
		fprintf(stderr, "test_notify: %s: %s: %s\n", sql, mica_strerror(rc),
			db ? mica_db_errmsg(db) : mica_db_errmsg(NULL));
	mica_db_close(&db);
	return rc;
}

/* This run's database, migrated by the real `mica migrate`. Database names
 * cannot be parameters; this one comes from our pid. */
static int setup_database(void)
{
	char sql[256];
	snprintf(dbname, sizeof(dbname), "mica_notify_%d", main_pid);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
	if (admin_exec(sql))
		return -1;
	snprintf(db_ci, sizeof(db_ci), "%s dbname=%s", admin, dbname);
	snprintf(account_ci, sizeof(account_ci), "%s options='-c role=mica_account'", db_ci);
	char *argv[] = {mica_bin, "migrate", "--db", db_ci, "--schema", "schema", NULL};
	int st = run(argv, NULL);
	if (st != 0) {
		fprintf(stderr,
			"test_notify: %s migrate failed (status %d); run from the"
			" repository root\n",
			mica_bin, st);
		return -1;
	}
	return 0;
}

static int notify_setup(void)
{
	admin = getenv("MICA_PG_CONNINFO");
	main_pid = (int)getpid();
	snprintf(mica_bin, sizeof(mica_bin), "%s/bin/mica", getenv("MICA_BUILD"));
	return setup_database();
}

static int notify_teardown(void)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
	return dbname[0] ? admin_exec(sql) : 0;
}

static const char *const needs[] = {"MICA_PG_CONNINFO", "MICA_BUILD", "MICA_TEST_DIR", NULL};

const struct mica_check mica_check = {.suite = notify_suite,
				      .needs = needs,
				      .setup = notify_setup,
				      .teardown = notify_teardown,
				      .log = MICA_CHECK_LOG_OFF};
