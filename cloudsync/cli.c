/* cli.c - the cloud sync service's `mica` noun (lib/cli.h):
 * `mica cloudsync purge [--at TIME]` runs the recycle bin's purge once, as
 * the daemon does every cloudsync.bin.interval seconds, with the time it is
 * given (jobs.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "clock.h"
#include "cloudsync/cloudsync.h"

static void purge_usage(FILE *f)
{
	fprintf(f,
		"usage: mica cloudsync purge [--at TIME] [--db CONNINFO] [--keep-days N]\n"
		"                            [--batch N]\n"
		"\n"
		"Purges every record that went to a recycle bin --keep-days or more before\n"
		"TIME: its body is deleted and a tombstone stays, so devices that have not\n"
		"synced since learn of the deletion. By time only: nothing is purged early.\n"
		"Running it twice does nothing more the second time.\n"
		"\n"
		"  --at TIME         the time taken as now: RFC 3339 (2026-12-07T16:00:00Z, or\n"
		"                    with +HH:MM) or milliseconds since the epoch (default: the\n"
		"                    clock)\n"
		"  --db CONNINFO     libpq connection string of a role that may write\n"
		"                    cloudsync.record (default: $MICA_DB_CONNINFO)\n"
		"  --keep-days N     default 30 (cloudsync.bin.keep_days)\n"
		"  --batch N         records per transaction, default 1000\n"
		"  -h, --help        show this help\n");
}

static int purge_command(int argc, char **argv)
{
	static const struct option opts[] = {
		{"at", required_argument, NULL, 'a'},
		{"db", required_argument, NULL, 'd'},
		{"keep-days", required_argument, NULL, 'k'},
		{"batch", required_argument, NULL, 'b'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	static const char prog[] = "mica cloudsync purge";
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	int64_t now = mica_clock_now_ms(), keep = 30, batch = 1000;
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
		case 'k':
			rc = mica_cli_int(prog, "--keep-days", optarg, 1, 3650, &keep);
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
	long n = 0;
	int err = cs_purge_bin(db, now, (int)keep, (int)batch, &n);
	printf("purged: %ld\n", n);
	if (err)
		fprintf(stderr, "%s: %s%s%s\n", prog, mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	mica_db_close(&db);
	return err ? MICA_EXIT_FAIL : MICA_EXIT_OK;
}

static int cloudsync_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"purge", purge_command, NULL}};
	return mica_cli_run_verb("cloudsync", verbs, 1, purge_usage, argc, argv);
}

static const mica_cli_verb nouns[] = {
	{"cloudsync", cloudsync_command,
	 "cloudsync purge: the recycle bin's purge, once, at a given time"},
};

const mica_cli_service cloudsync_cli = {"cloudsync", nouns, sizeof(nouns) / sizeof(nouns[0])};
