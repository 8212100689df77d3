/* cli.c - the account service's `mica` nouns (lib/cli.h): `mica outbox
 * list` prints the development notification outbox, and `mica recycled add
 * | import` records recycled phone numbers (by blind index, computed by the
 * Key Center) for the local number-recycling check. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "account/notify.h"
#include "cli.h"
#include "db.h"
#include "kc.h"

/* ---- outbox ----------------------------------------------------------- */

static void outbox_usage(FILE *f)
{
	fprintf(f, "usage: mica outbox list [--db CONNINFO] [--to ADDR] [--limit N]\n"
		   "\n"
		   "Prints the development notification outbox (account.notification): the\n"
		   "e-mails and SMS the account service stores instead of sending when its\n"
		   "email_mode or sms_mode is \"outbox\". One block per message (time, channel,\n"
		   "recipient, subject, indented body), the newest N, newest last.\n"
		   "This is not the transactional event outbox (outbox.event).\n"
		   "\n"
		   "  --db CONNINFO   libpq connection string (default: $MICA_DB_CONNINFO)\n"
		   "  --to ADDR       only messages to ADDR (e-mail or phone; case-insensitive)\n"
		   "  --limit N       at most N messages, 1..10000 (default 50)\n"
		   "  -h, --help      show this help\n");
}

static int outbox_list(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"to", required_argument, NULL, 't'},
		{"limit", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	const char *to = NULL;
	int64_t limit = 50;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 't':
			to = optarg;
			break;
		case 'l':
			if (mica_cli_int("mica outbox list", "--limit", optarg, 1, 10000, &limit) !=
			    0)
				return MICA_EXIT_USAGE;
			break;
		case 'h':
			outbox_usage(stdout);
			return MICA_EXIT_OK;
		default:
			outbox_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	mica_db *db = NULL;
	if ((c = mica_cli_need_db("mica outbox list", outbox_usage, argc, argv, conninfo)) != 0 ||
	    (c = mica_cli_db_open("mica outbox list", conninfo, &db)) != 0)
		return c;
	int n = 0;
	int err = acct_notify_outbox_list(db, to, (int)limit, stdout, &n);
	if (err)
		fprintf(stderr, "mica outbox list: %s%s%s\n", mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	else if (n == 0)
		fprintf(stderr, "mica outbox list: no messages%s%s\n", to ? " to " : "",
			to ? to : "");
	mica_db_close(&db);
	return err ? MICA_EXIT_FAIL : MICA_EXIT_OK;
}

static int outbox_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"list", outbox_list, NULL}};
	return mica_cli_run_verb("outbox", verbs, 1, outbox_usage, argc, argv);
}

/* ---- recycled --------------------------------------------------------- */

static void recycled_usage(FILE *f)
{
	fprintf(f, "usage: mica recycled add --phone +E164 --on YYYY-MM-DD OPTIONS\n"
		   "       mica recycled import --file FILE|- OPTIONS\n"
		   "OPTIONS: [--db CONNINFO] --kc-url URL --ca FILE --cert FILE --key FILE\n"
		   "         [--index-key NAME]\n"
		   "\n"
		   "Records in account.recycled_number, the local stand-in of the carriers'\n"
		   "number-recycling check (account.recycling.mode = local), that the carrier\n"
		   "gave a number to a new subscriber on the given day: one number with add, a\n"
		   "list with import. The table holds the number's blind index, not the number:\n"
		   "it is computed by the Key Center with the account service's index key, so\n"
		   "the client certificate must be one the policy lets compute it (the account\n"
		   "principal's). Recording a number and day twice is not an error.\n"
		   "\n"
		   "An import list has one \"+E164,YYYY-MM-DD\" per line; blank lines and lines\n"
		   "starting with # are skipped. The whole list is checked before anything is\n"
		   "written (a bad line: exit 65, naming it) and written in one transaction.\n"
		   "\n"
		   "  --phone +E164     the number, + and 7 to 15 digits\n"
		   "  --on YYYY-MM-DD   the day it was recycled\n"
		   "  --file FILE       the list (- for standard input)\n"
		   "  --db CONNINFO     libpq connection string of a role that may write the\n"
		   "                    table (default: $MICA_DB_CONNINFO)\n"
		   "  --kc-url URL      the Key Center (https://host:port)\n"
		   "  --ca, --cert, --key  CA, client certificate and key for the Key Center\n"
		   "  --index-key NAME  the account service's index key (default account-index)\n"
		   "  -h, --help        show this help\n");
}

struct recycled_entry {
	char phone[32];
	char day[11];
	char *idx; /* blind index, from the Key Center */
};

struct recycled_list {
	struct recycled_entry *v;
	size_t n, cap;
	size_t added; /* rows the transaction inserted */
};

static int recycled_push(struct recycled_list *l, const char *phone, const char *day)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct recycled_entry *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return MICA_ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	struct recycled_entry *e = &l->v[l->n++];
	snprintf(e->phone, sizeof(e->phone), "%s", phone);
	memcpy(e->day, day, sizeof(e->day));
	e->idx = NULL;
	return 0;
}

/* Reads and checks the whole list; on a bad line prints it and returns
 * MICA_EXIT_DATA. */
static int recycled_read(const char *path, struct recycled_list *l)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	char *line = NULL, phone[32], day[11];
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int rc = MICA_EXIT_OK;
	if (!f) {
		fprintf(stderr, "mica recycled import: %s: %s\n", path, strerror(errno));
		return MICA_EXIT_FAIL;
	}
	while (rc == MICA_EXIT_OK && (len = getline(&line, &cap, f)) >= 0) {
		const char *why;
		lineno++;
		if (len > 0 && line[len - 1] == '\n')
			len--;
		int got = acct_recycled_line(line, (size_t)len, phone, sizeof(phone), day, &why);
		if (got < 0) {
			fprintf(stderr, "mica recycled import: %s:%zu: %s\n", path, lineno, why);
			rc = MICA_EXIT_DATA;
		} else if (got && recycled_push(l, phone, day) != 0) {
			fprintf(stderr, "mica recycled import: out of memory\n");
			rc = MICA_EXIT_FAIL;
		}
	}
	if (rc == MICA_EXIT_OK && ferror(f)) {
		fprintf(stderr, "mica recycled import: %s: read error\n", path);
		rc = MICA_EXIT_FAIL;
	}
	free(line);
	if (f != stdin)
		fclose(f);
	return rc;
}

static int recycled_insert_tx(mica_db *db, void *arg)
{
	struct recycled_list *l = arg;
	l->added = 0;
	for (size_t i = 0; i < l->n; i++) {
		const char *p[2] = {l->v[i].idx, l->v[i].day};
		PGresult *res = NULL;
		int err =
			mica_db_exec(db,
				     "INSERT INTO account.recycled_number (phone_idx, recycled_on)"
				     " VALUES ($1, $2::date) ON CONFLICT DO NOTHING RETURNING 1",
				     2, p, &res);
		if (!err)
			l->added += (size_t)PQntuples(res);
		PQclear(res);
		if (err)
			return err;
	}
	return 0;
}

/* Why the options of add (|import| 0) or import do not fit, or NULL; puts
 * add's --phone, normalised, into |norm|. */
static const char *recycled_bad_args(int import, const char *phone, const char *on,
				     const char *file, const char *conninfo,
				     const mica_kc_options *ko, char *norm, size_t normlen)
{
	if (import && (phone || on))
		return "--phone and --on belong to add; the list has them";
	if (import && !file)
		return "--file is needed";
	if (!import && file)
		return "--file belongs to import";
	if (!import && (!phone || !on))
		return "--phone and --on are needed";
	if (!conninfo || !*conninfo)
		return "--db is needed (or MICA_DB_CONNINFO)";
	if (!ko->base_url || !ko->ca_file || !ko->cert_file || !ko->key_file)
		return "--kc-url, --ca, --cert and --key are needed";
	if (!import && acct_ident_parse(phone, norm, normlen) != ACCT_ID_PHONE)
		return "--phone is + and 7 to 15 digits";
	if (!import && !acct_is_iso_day(on))
		return "--on is YYYY-MM-DD";
	return NULL;
}

/* mica recycled add and mica recycled import: the same options but for
 * where the numbers come from. */
static int recycled_run(const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {
		{"phone", required_argument, NULL, 'p'},
		{"on", required_argument, NULL, 'o'},
		{"file", required_argument, NULL, 'f'},
		{"db", required_argument, NULL, 'd'},
		MICA_CLI_KC_OPTIONS,
		{"index-key", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const int import = strcmp(verb, "import") == 0;
	const char *phone = NULL, *on = NULL, *file = NULL, *conninfo = getenv("MICA_DB_CONNINFO");
	const char *index_key = "account-index";
	struct recycled_list list = {0};
	mica_kc_options ko = {0};
	char norm[32];
	int c, rc = MICA_EXIT_OK, err = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			phone = optarg;
			break;
		case 'o':
			on = optarg;
			break;
		case 'f':
			file = optarg;
			break;
		case 'd':
			conninfo = optarg;
			break;
		case 'i':
			index_key = optarg;
			break;
		case 'h':
			recycled_usage(stdout);
			return MICA_EXIT_OK;
		default:
			if (mica_cli_kc_option(c, optarg, &ko))
				break;
			recycled_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	const char *bad = optind < argc ? "unexpected argument"
					: recycled_bad_args(import, phone, on, file, conninfo, &ko,
							    norm, sizeof(norm));
	if (bad) {
		fprintf(stderr, "mica recycled %s: %s\n", verb, bad);
		recycled_usage(stderr);
		return MICA_EXIT_USAGE;
	}
	if (import)
		rc = recycled_read(file, &list);
	else if (recycled_push(&list, norm, on) != 0)
		rc = MICA_EXIT_FAIL;
	mica_kc *kc = NULL;
	mica_db *db = NULL;
	if (rc == MICA_EXIT_OK) {
		err = mica_kc_new(&kc, &ko);
		for (size_t i = 0; !err && i < list.n; i++)
			err = acct_blind_index_with(kc, index_key, "phone", list.v[i].phone,
						    &list.v[i].idx);
		if (err) {
			fprintf(stderr, "mica recycled %s: the Key Center: %s\n", verb,
				mica_errmsg(err));
			rc = MICA_EXIT_FAIL;
		}
	}
	if (rc == MICA_EXIT_OK && mica_db_open(&db, conninfo) != 0) {
		fprintf(stderr, "mica recycled %s: cannot connect: %s\n", verb,
			mica_db_errmsg(NULL));
		rc = MICA_EXIT_FAIL;
	} else if (rc == MICA_EXIT_OK &&
		   (err = mica_db_tx(db, MICA_DB_READ_COMMITTED, recycled_insert_tx, &list)) != 0) {
		fprintf(stderr, "mica recycled %s: %s%s%s\n", verb, mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
		rc = MICA_EXIT_FAIL;
	} else if (rc == MICA_EXIT_OK && !import) {
		printf("recorded: a number recycled on %s\n", on);
	} else if (rc == MICA_EXIT_OK) {
		printf("numbers: %zu read, %zu recorded, %zu already recorded\n", list.n,
		       list.added, list.n - list.added);
	}
	mica_db_close(&db);
	mica_kc_free(kc);
	for (size_t i = 0; i < list.n; i++)
		free(list.v[i].idx);
	free(list.v);
	return rc;
}

static int recycled_add(int argc, char **argv)
{
	return recycled_run("add", argc, argv);
}

static int recycled_import(int argc, char **argv)
{
	return recycled_run("import", argc, argv);
}

static int recycled_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"add", recycled_add, NULL},
					      {"import", recycled_import, NULL}};
	return mica_cli_run_verb("recycled", verbs, 2, recycled_usage, argc, argv);
}

/* ---- the account service's nouns (lib/cli.h) ----------------------------- */

static const mica_cli_verb nouns[] = {
	{"outbox", outbox_command,
	 "outbox list: the development e-mail/SMS outbox (account.notification)"},
	{"recycled", recycled_command,
	 "recycled add|import: record recycled phone numbers (local check)"},
};

const mica_cli_service account_cli = {"account", nouns, sizeof(nouns) / sizeof(nouns[0])};
