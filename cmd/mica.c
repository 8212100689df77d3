/* mica.c - the admin CLI: a dispatcher. `mica migrate` (the suite's schema
 * migrations, lib/migrate.h) and `mica help` are the platform's; every other
 * noun belongs to a service and comes from its <dir>/cli.c through the
 * generated mica_cli_services list (lib/cli.h), so a new service adds its
 * verbs without editing this file. `mica --help` lists them by service.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "migrate.h"

static void usage(FILE *f);

static int cmd_help(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	usage(stdout);
	return MICA_EXIT_OK;
}

static void migrate_usage(FILE *f)
{
	fprintf(f,
		"usage: mica migrate [--db CONNINFO] [--schema DIR] [--status]\n"
		"\n"
		"Applies schema/NNNN_*.sql files not yet recorded in public.mica_migration, in\n"
		"numeric order, each in its own transaction with its record and SHA-256.\n"
		"Stops with exit code 2 if an applied file's checksum changed.\n"
		"\n"
		"  --db CONNINFO   libpq connection string (default: $MICA_DB_CONNINFO)\n"
		"  --schema DIR    migrations directory (default: $MICA_SCHEMA_DIR, else ./schema)\n"
		"  --status        list applied and pending migrations; change nothing\n"
		"  -h, --help      show this help\n");
}

static int cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},
		{"schema", required_argument, NULL, 's'},
		{"status", no_argument, NULL, 'S'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	const char *dir = getenv("MICA_SCHEMA_DIR");
	int status_only = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 's':
			dir = optarg;
			break;
		case 'S':
			status_only = 1;
			break;
		case 'h':
			migrate_usage(stdout);
			return MICA_EXIT_OK;
		default:
			migrate_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	if ((c = mica_cli_need_db("mica migrate", migrate_usage, argc, argv, conninfo)) != 0)
		return c;
	return mica_migrate_run(conninfo, dir && *dir ? dir : "schema", status_only);
}

/* The platform's own nouns; the services' come from mica_cli_services. */
static const mica_cli_verb platform[] = {
	{"migrate", cmd_migrate, "apply schema migrations; --status lists applied and pending"},
	{"help", cmd_help, "show this help"},
};
#define NPLATFORM (sizeof(platform) / sizeof(platform[0]))

static void list(FILE *f, const char *title, const mica_cli_verb *v, size_t n)
{
	fprintf(f, "\n%s:\n", title);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "  %-10s %s\n", v[i].name, v[i].summary);
}

static void usage(FILE *f)
{
	char title[64];
	fprintf(f, "usage: mica COMMAND [OPTIONS]\n");
	list(f, "platform", platform, NPLATFORM);
	for (size_t i = 0; i < mica_cli_services_len; i++) {
		snprintf(title, sizeof(title), "%s service", mica_cli_services[i]->service);
		list(f, title, mica_cli_services[i]->nouns, mica_cli_services[i]->n);
	}
	fprintf(f, "\nRun `mica COMMAND --help` for a command's options.\n"
		   "Exit codes: 0 ok, 1 failure, 2 checksum mismatch, 64 usage error, 65 bad input "
		   "data.\n");
}

static const mica_cli_verb *find(const char *name)
{
	for (size_t i = 0; i < NPLATFORM; i++)
		if (strcmp(name, platform[i].name) == 0)
			return &platform[i];
	for (size_t s = 0; s < mica_cli_services_len; s++)
		for (size_t i = 0; i < mica_cli_services[s]->n; i++)
			if (strcmp(name, mica_cli_services[s]->nouns[i].name) == 0)
				return &mica_cli_services[s]->nouns[i];
	return NULL;
}

int main(int argc, char **argv)
{
	/* The CLI speaks to humans on stderr; library logs only when asked. */
	const char *lvl = getenv("MICA_LOG_LEVEL");
	int level = lvl ? mica_log_level_parse(lvl) : -1;
	const mica_cli_verb *v;
	mica_log_min_level = level >= 0 ? level : MICA_LOG_ERROR;

	if (argc < 2) {
		usage(stderr);
		return MICA_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return MICA_EXIT_OK;
	}
	if ((v = find(argv[1])) != NULL)
		return v->run(argc - 1, argv + 1);
	fprintf(stderr, "mica: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return MICA_EXIT_USAGE;
}
