/* cli.c - the push service's `mica` noun (lib/cli.h): `mica push app create`
 * makes a developer app and prints its app id and app secret (once: only the
 * secret's Key Center HMAC is stored), `rotate-secret` replaces the secret,
 * `delete` removes an app with everything of it, `list` lists the apps;
 * `mica push purge [--at TIME]` runs the retention jobs once (purge.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "kc.h"
#include "mipush/push.h"

static void app_usage(FILE *f)
{
	fprintf(f, "usage: mica push app create --package NAME OPTIONS\n"
		   "       mica push app rotate-secret --app-id ID OPTIONS\n"
		   "       mica push app delete --app-id ID [--db CONNINFO]\n"
		   "       mica push app list [--db CONNINFO]\n"
		   "OPTIONS: [--db CONNINFO] --kc-url URL --ca FILE --cert FILE --key FILE\n"
		   "         [--index-key NAME]\n"
		   "\n"
		   "create makes a developer app for the Android package NAME (letters, digits,\n"
		   "'.', '_', '-'; one app per package) and prints its app id and a new app\n"
		   "secret. The secret is printed once and never stored: push.app keeps only its\n"
		   "HMAC, computed by the Key Center with the push service's index key, so the\n"
		   "client certificate must be one the policy lets compute it (the push\n"
		   "principal's). Developers send it as `Authorization: key=<app secret>`.\n"
		   "rotate-secret prints a new secret for app ID; the old one stops working at\n"
		   "once. delete removes app ID with its registrations, queued messages,\n"
		   "subscriptions and statistics.\n"
		   "list prints every app: id, creation time, package.\n"
		   "\n"
		   "  --package NAME    the app's package (restricted_package_name)\n"
		   "  --app-id ID       the app's id\n"
		   "  --db CONNINFO     libpq connection string of a role that may write push.app\n"
		   "                    (default: $MICA_DB_CONNINFO)\n"
		   "  --kc-url URL      the Key Center (https://host:port)\n"
		   "  --ca, --cert, --key  CA, client certificate and key for the Key Center\n"
		   "  --index-key NAME  the push service's index key (default push-index)\n"
		   "  -h, --help        show this help\n");
}

/* The options every `mica push app` verb reads; each verb checks which it
 * needs. */
struct app_args {
	const char *package, *app_id, *conninfo, *index_key;
	mica_kc_options ko;
};

/* Parses argv into |a|. Returns -1 to go on, else the exit code. */
static int app_parse(int argc, char **argv, struct app_args *a)
{
	static const struct option opts[] = {
		{"package", required_argument, NULL, 'p'},
		{"app-id", required_argument, NULL, 'a'},
		{"db", required_argument, NULL, 'd'},
		MICA_CLI_KC_OPTIONS,
		{"index-key", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	*a = (struct app_args){.conninfo = getenv("MICA_DB_CONNINFO"), .index_key = "push-index"};
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			a->package = optarg;
			break;
		case 'a':
			a->app_id = optarg;
			break;
		case 'd':
			a->conninfo = optarg;
			break;
		case 'i':
			a->index_key = optarg;
			break;
		case 'h':
			app_usage(stdout);
			return MICA_EXIT_OK;
		default:
			if (mica_cli_kc_option(c, optarg, &a->ko))
				break;
			app_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	return -1;
}

static int app_usage_error(const char *cmd, const char *what)
{
	fprintf(stderr, "%s: %s\n", cmd, what);
	app_usage(stderr);
	return MICA_EXIT_USAGE;
}

static int app_fail(const char *cmd, mica_db *db, int err)
{
	if (err == MICA_ENOTFOUND)
		fprintf(stderr, "%s: no app has this app id\n", cmd);
	else
		fprintf(stderr, "%s: %s%s%s\n", cmd, mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	return MICA_EXIT_FAIL;
}

/* create and rotate-secret: both draw a secret, index it with the Key Center
 * and print it once. */
static int app_secret(int argc, char **argv, bool create)
{
	const char *cmd = create ? "mica push app create" : "mica push app rotate-secret";
	struct app_args a;
	int rc = app_parse(argc, argv, &a);
	if (rc >= 0)
		return rc;
	if (create ? !a.package : !a.app_id)
		return app_usage_error(cmd, create ? "--package is needed" : "--app-id is needed");
	if (!a.ko.base_url || !a.ko.ca_file || !a.ko.cert_file || !a.ko.key_file)
		return app_usage_error(cmd, "--kc-url, --ca, --cert and --key are needed");
	if ((rc = mica_cli_need_db(cmd, app_usage, argc, argv, a.conninfo)) != 0)
		return rc;
	mica_db *db = NULL;
	mica_kc *kc = NULL;
	char *app_id = NULL, *secret = NULL;
	rc = mica_cli_db_open(cmd, a.conninfo, &db);
	if (rc == MICA_EXIT_OK) {
		int err = mica_kc_new(&kc, &a.ko);
		if (!err)
			err = create ? push_app_create(db, kc, a.index_key, a.package, &app_id,
						       &secret)
				     : push_app_rotate_secret(db, kc, a.index_key, a.app_id,
							      &secret);
		if (err == MICA_EINVAL) {
			fprintf(stderr,
				"%s: --package must be 1-255 letters, digits,"
				" '.', '_' or '-', starting with a letter\n",
				cmd);
			rc = MICA_EXIT_USAGE;
		} else if (err == MICA_EEXISTS) {
			fprintf(stderr, "%s: an app for package %s exists\n", cmd, a.package);
			rc = MICA_EXIT_FAIL;
		} else if (err) {
			rc = app_fail(cmd, db, err);
		} else {
			if (create)
				printf("app_id: %s\npackage: %s\n", app_id, a.package);
			printf("app_secret: %s\n", secret);
			fprintf(stderr, "%s: the app secret is shown once; keep it now\n", cmd);
		}
	}
	if (secret) {
		mica_wipe(secret, strlen(secret));
		free(secret);
	}
	free(app_id);
	mica_kc_free(kc);
	mica_db_close(&db);
	return rc;
}

static int app_create(int argc, char **argv)
{
	return app_secret(argc, argv, true);
}

static int app_rotate_secret(int argc, char **argv)
{
	return app_secret(argc, argv, false);
}

static int app_delete(int argc, char **argv)
{
	const char *cmd = "mica push app delete";
	struct app_args a;
	int rc = app_parse(argc, argv, &a);
	if (rc >= 0)
		return rc;
	if (!a.app_id)
		return app_usage_error(cmd, "--app-id is needed");
	mica_db *db = NULL;
	if ((rc = mica_cli_need_db(cmd, app_usage, argc, argv, a.conninfo)) != 0 ||
	    (rc = mica_cli_db_open(cmd, a.conninfo, &db)) != 0)
		return rc;
	int err = push_app_delete(db, a.app_id);
	rc = err ? app_fail(cmd, db, err) : MICA_EXIT_OK;
	if (!err)
		printf("deleted app %s\n", a.app_id);
	mica_db_close(&db);
	return rc;
}

static int app_list(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 'h':
			app_usage(stdout);
			return MICA_EXIT_OK;
		default:
			app_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	mica_db *db = NULL;
	if ((c = mica_cli_need_db("mica push app list", app_usage, argc, argv, conninfo)) != 0 ||
	    (c = mica_cli_db_open("mica push app list", conninfo, &db)) != 0)
		return c;
	int n = 0, err = push_app_list(db, stdout, &n);
	if (err)
		fprintf(stderr, "mica push app list: %s%s%s\n", mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	else if (n == 0)
		fprintf(stderr, "mica push app list: no apps\n");
	mica_db_close(&db);
	return err ? MICA_EXIT_FAIL : MICA_EXIT_OK;
}

static int app_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"create", app_create, NULL},
					      {"rotate-secret", app_rotate_secret, NULL},
					      {"delete", app_delete, NULL},
					      {"list", app_list, NULL}};
	return mica_cli_run_verb("push app", verbs, sizeof(verbs) / sizeof(verbs[0]), app_usage,
				 argc, argv);
}

/* ---- mica push purge ------------------------------------------------------------ */

static void purge_usage(FILE *f)
{
	fprintf(f,
		"usage: mica push purge [--at TIME] [--db CONNINFO] [--silent-days N]\n"
		"                       [--trace-days N] [--batch N]\n"
		"\n"
		"Runs the push service's purge jobs once, as the daemon does every\n"
		"push.retention.interval seconds: queued messages past their time to live\n"
		"(counted expired), registrations silent for --silent-days with their queue\n"
		"(counted dropped), expired job keys, and message traces expired more than\n"
		"--trace-days ago. Running it twice does nothing more the second time.\n"
		"\n"
		"  --at TIME         the time the jobs take as now: RFC 3339\n"
		"                    (2026-12-07T16:00:00Z, or with +HH:MM) or milliseconds\n"
		"                    since the epoch (default: the clock)\n"
		"  --db CONNINFO     libpq connection string of a role that may delete from the\n"
		"                    push tables (default: $MICA_DB_CONNINFO)\n"
		"  --silent-days N   default 90 (push.retention.silent_days)\n"
		"  --trace-days N    default 30 (push.retention.trace_days)\n"
		"  --batch N         rows per transaction, default 1000\n"
		"  -h, --help        show this help\n");
}

static int purge_command(int argc, char **argv)
{
	static const struct option opts[] = {
		{"at", required_argument, NULL, 'a'},
		{"db", required_argument, NULL, 'd'},
		{"silent-days", required_argument, NULL, 's'},
		{"trace-days", required_argument, NULL, 't'},
		{"batch", required_argument, NULL, 'b'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	static const char prog[] = "mica push purge";
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	int64_t now = mica_clock_now_ms(), silent = 90, trace = 30, batch = 1000;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int rc = MICA_EXIT_OK;
		switch (c) {
		case 'a':
			rc = mica_cli_time(prog, "--at", optarg, &now);
			break;
		case 'd':
			conninfo = optarg;
			break;
		case 's':
			rc = mica_cli_int(prog, "--silent-days", optarg, 1, 3650, &silent);
			break;
		case 't':
			rc = mica_cli_int(prog, "--trace-days", optarg, 0, 3650, &trace);
			break;
		case 'b':
			rc = mica_cli_int(prog, "--batch", optarg, 1, 100000, &batch);
			break;
		case 'h':
			purge_usage(stdout);
			return MICA_EXIT_OK;
		default:
			purge_usage(stderr);
			return MICA_EXIT_USAGE;
		}
		if (rc != MICA_EXIT_OK)
			return rc;
	}
	mica_db *db = NULL;
	if ((c = mica_cli_need_db(prog, purge_usage, argc, argv, conninfo)) != 0 ||
	    (c = mica_cli_db_open(prog, conninfo, &db)) != 0)
		return c;
	push_purge_options o = {(int)silent, (int)trace, (int)batch};
	push_purge_result r;
	int err = push_purge_run(db, now, &o, &r);
	printf("expired: %ld\nsilent_registrations: %ld\ndropped: %ld\njobkeys: %ld\n"
	       "messages: %ld\n",
	       r.expired, r.registrations, r.dropped, r.jobkeys, r.messages);
	if (err)
		fprintf(stderr, "%s: %s%s%s\n", prog, mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	mica_db_close(&db);
	return err ? MICA_EXIT_FAIL : MICA_EXIT_OK;
}

static void push_usage(FILE *f)
{
	app_usage(f);
	fputc('\n', f);
	purge_usage(f);
}

static int push_command(int argc, char **argv)
{
	static const mica_cli_verb nouns[] = {{"app", app_command, NULL},
					      {"purge", purge_command, NULL}};
	return mica_cli_run_verb("push", nouns, 2, push_usage, argc, argv);
}

static const mica_cli_verb nouns[] = {
	{"push", push_command,
	 "push app create|rotate-secret|delete|list, push purge: developer apps and retention of"
	 " the push service"},
};

const mica_cli_service mipush_cli = {"mipush", nouns, sizeof(nouns) / sizeof(nouns[0])};
