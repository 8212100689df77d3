/* cli.c - helpers shared by the services' admin verbs (see cli.h): verb
 * dispatch and strict number and time options. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "parse.h"

int mica_cli_run_verb(const char *noun, const mica_cli_verb *verbs, size_t n, void (*usage)(FILE *),
		      int argc, char **argv)
{
	for (size_t i = 0; argc >= 2 && i < n; i++)
		if (strcmp(argv[1], verbs[i].name) == 0)
			return verbs[i].run(argc - 1, argv + 1);
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return MICA_EXIT_OK;
	}
	fprintf(stderr, "mica %s: expected", noun);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "%s %s", i == 0 ? "" : i + 1 == n ? " or" : ",", verbs[i].name);
	fputc('\n', stderr);
	usage(stderr);
	return MICA_EXIT_USAGE;
}

int mica_cli_int(const char *prog, const char *opt, const char *s, int64_t min, int64_t max,
		 int64_t *out)
{
	if (mica_parse_int64(s, min, max, out) == 0)
		return 0;
	fprintf(stderr, "%s: %s must be a whole number in %" PRId64 "..%" PRId64 ", not \"%s\"\n",
		prog, opt, min, max, s ? s : "");
	return MICA_EXIT_USAGE;
}

int mica_cli_time(const char *prog, const char *opt, const char *s, int64_t *ms)
{
	if (mica_parse_time_ms(s, ms) == 0)
		return 0;
	fprintf(stderr,
		"%s: %s must be RFC 3339 (2026-12-07T16:00:00Z) or milliseconds since the epoch,"
		" not \"%s\"\n",
		prog, opt, s ? s : "");
	return MICA_EXIT_USAGE;
}

int mica_cli_need_db(const char *prog, void (*usage)(FILE *), int argc, char **argv,
		     const char *conninfo)
{
	if (optind < argc)
		fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
	else if (!conninfo || !*conninfo)
		fprintf(stderr, "%s: no database: pass --db or set MICA_DB_CONNINFO\n", prog);
	else
		return MICA_EXIT_OK;
	usage(stderr);
	return MICA_EXIT_USAGE;
}

int mica_cli_db_open(const char *prog, const char *conninfo, mica_db **db)
{
	if (mica_db_open(db, conninfo) == 0)
		return MICA_EXIT_OK;
	fprintf(stderr, "%s: cannot connect: %s\n", prog, mica_db_errmsg(*db));
	mica_db_close(db);
	return MICA_EXIT_FAIL;
}

int mica_cli_kc_option(int c, const char *arg, mica_kc_options *ko)
{
	switch (c) {
	case MICA_CLI_OPT_KC_URL:
		ko->base_url = arg;
		return 1;
	case MICA_CLI_OPT_KC_CA:
		ko->ca_file = arg;
		return 1;
	case MICA_CLI_OPT_KC_CERT:
		ko->cert_file = arg;
		return 1;
	case MICA_CLI_OPT_KC_KEY:
		ko->key_file = arg;
		return 1;
	default:
		return 0;
	}
}
