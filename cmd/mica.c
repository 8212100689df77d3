/* mica.c - the admin CLI. A small command table dispatches subcommands; today
 * `mica migrate` applies the numbered SQL migrations in schema/ in order,
 * each in its own transaction together with its record (and SHA-256) in
 * public.mica_migration, and refuses to go on if an applied file changed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "account/account.h"
#include "account/notify.h"
#include "db.h"
#include "err.h"
#include "httpc.h"
#include "keycenter/audit.h"
#include "keycenter/keycenter.h"
#include "log.h"

/* Exit codes, stable for scripts. */
enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,	   /* database, file or other runtime failure */
	EXIT_CHECKSUM = 2, /* an applied migration file was modified */
	EXIT_USAGE = 64,   /* bad command line (sysexits EX_USAGE) */
	EXIT_DATA = 65,	   /* bad input data (sysexits EX_DATAERR) */
};

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static int cmd_migrate(int argc, char **argv);
static int cmd_help(int argc, char **argv);
static int cmd_audit(int argc, char **argv);
static int cmd_outbox(int argc, char **argv);
static int cmd_recycled(int argc, char **argv);

static const struct command commands[] = {
    {"migrate", cmd_migrate, "apply schema migrations; --status lists applied and pending"},
    {"keycenter", kc_command,
     "keycenter init | unseal | seal-status | migrate-root: ceremony, unseal, root migration"},
    {"audit", cmd_audit, "audit export | audit verify: the Key Center audit trail"},
    {"outbox", cmd_outbox, "outbox list: the development e-mail/SMS outbox (account.notification)"},
    {"recycled", cmd_recycled, "recycled add|import: record recycled phone numbers (local check)"},
    {"help", cmd_help, "show this help"},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	fprintf(f, "usage: mica COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nRun `mica COMMAND --help` for a command's options.\n"
		   "Exit codes: 0 ok, 1 failure, 2 checksum mismatch, 64 usage error, 65 bad input "
		   "data.\n");
}

/* mica NOUN VERB ARGS...: runs the verb argv[1] names (with argv + 1), or
 * prints |usage| (for --help to stdout, else to stderr with EXIT_USAGE). */
static int run_verb(const char *noun, const struct command *verbs, size_t n,
		    void (*usage_of)(FILE *), int argc, char **argv)
{
	for (size_t i = 0; argc >= 2 && i < n; i++)
		if (strcmp(argv[1], verbs[i].name) == 0)
			return verbs[i].run(argc - 1, argv + 1);
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage_of(stdout);
		return EXIT_OK;
	}
	fprintf(stderr, "mica %s: expected", noun);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "%s %s", i == 0 ? "" : i + 1 == n ? " or" : ",", verbs[i].name);
	fputc('\n', stderr);
	usage_of(stderr);
	return EXIT_USAGE;
}

static int cmd_help(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	usage(stdout);
	return EXIT_OK;
}

/* ---- migration files ------------------------------------------------- */

#define MAX_SCRIPT_BYTES (16 * 1024 * 1024)

struct migration {
	int version;
	char *name; /* file name, e.g. 0001_outbox.sql */
	char *sql;
	char sha256[65];
	/* From public.mica_migration, if applied. */
	int applied;
	char applied_sha[65];
	char applied_at[40];
	char applied_name[256];
};

struct plan {
	struct migration *m;
	size_t n;
};

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->m[i].name);
		free(p->m[i].sql);
	}
	free(p->m);
	p->m = NULL;
	p->n = 0;
}

static int sha256_hex(const char *data, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return MICA_ECRYPTO;
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	return 0;
}

/* "NNNN_name.sql" -> version; -1 if the name does not follow the pattern. */
static int parse_version(const char *name)
{
	size_t len = strlen(name);
	size_t digits = strspn(name, "0123456789");
	if (digits == 0 || digits > 9 || name[digits] != '_' || len < digits + 6 ||
	    strcmp(name + len - 4, ".sql") != 0)
		return -1;
	return atoi(name);
}

static int read_file(const char *path, char **out)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f)
		return MICA_EIO;
	char *buf = malloc(MAX_SCRIPT_BYTES + 1);
	if (!buf) {
		fclose(f);
		return MICA_ENOMEM;
	}
	size_t n = fread(buf, 1, MAX_SCRIPT_BYTES + 1, f);
	int err = ferror(f);
	fclose(f);
	if (err || n > MAX_SCRIPT_BYTES || memchr(buf, '\0', n)) {
		free(buf);
		return err ? MICA_EIO : MICA_EINVAL;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static int by_version(const void *a, const void *b)
{
	const struct migration *x = a, *y = b;
	return (x->version > y->version) - (x->version < y->version);
}

/* Loads every NNNN_*.sql of |dir| sorted by version. Prints its own errors. */
static int load_plan(const char *dir, struct plan *p)
{
	DIR *d = opendir(dir);
	if (!d) {
		fprintf(stderr, "mica migrate: cannot open schema directory %s: %s\n", dir,
			strerror(errno));
		return EXIT_FAIL;
	}
	int rc = EXIT_OK;
	size_t cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		const char *name = e->d_name;
		size_t len = strlen(name);
		if (len < 4 || strcmp(name + len - 4, ".sql") != 0)
			continue;
		int version = parse_version(name);
		if (version < 0) {
			fprintf(stderr, "mica migrate: ignoring %s (not NNNN_name.sql)\n", name);
			continue;
		}
		if (p->n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct migration *nm = realloc(p->m, ncap * sizeof(*nm));
			if (!nm) {
				rc = EXIT_FAIL;
				break;
			}
			p->m = nm;
			cap = ncap;
		}
		struct migration *m = &p->m[p->n];
		memset(m, 0, sizeof(*m));
		m->version = version;
		m->name = strdup(name);
		if (!m->name) {
			rc = EXIT_FAIL;
			break;
		}
		p->n++;
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		int err = read_file(path, &m->sql);
		if (!err)
			err = sha256_hex(m->sql, strlen(m->sql), m->sha256);
		if (err) {
			fprintf(stderr, "mica migrate: cannot read %s: %s\n", path,
				err == MICA_EINVAL ? "too large or contains NUL bytes"
						   : mica_errmsg(err));
			rc = EXIT_FAIL;
			break;
		}
	}
	closedir(d);
	if (rc)
		return rc;
	if (p->n > 1)
		qsort(p->m, p->n, sizeof(*p->m), by_version);
	for (size_t i = 1; i < p->n; i++) {
		if (p->m[i].version == p->m[i - 1].version) {
			fprintf(stderr, "mica migrate: %s and %s have the same version %d\n",
				p->m[i - 1].name, p->m[i].name, p->m[i].version);
			return EXIT_FAIL;
		}
	}
	return EXIT_OK;
}

static struct migration *find_version(struct plan *p, int version)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->m[i].version == version)
			return &p->m[i];
	return NULL;
}

/* ---- database side --------------------------------------------------- */

/* Serialises concurrent `mica migrate` runs: every transaction below takes
 * this transaction-scoped advisory lock first (keys: 'mica' in ASCII, 1), so
 * the lock can never outlive or miss a transaction, even across reconnects. */
static const char lock_sql[] = "SELECT pg_advisory_xact_lock(1835623265, 1)";

static const char create_sql[] = "CREATE TABLE IF NOT EXISTS public.mica_migration ("
				 " version int PRIMARY KEY,"
				 " name text NOT NULL,"
				 " sha256 text NOT NULL,"
				 " applied_at timestamptz NOT NULL DEFAULT now())";

struct read_ctx {
	struct plan *plan;
	int create;
	/* Applied versions with no file, kept for reporting. */
	char orphans[1024];
};

/* Reads public.mica_migration into the plan (creating the table first when
 * ctx->create is set). */
static int read_applied_tx(mica_db *db, void *arg)
{
	struct read_ctx *c = arg;
	c->orphans[0] = '\0';
	for (size_t i = 0; i < c->plan->n; i++)
		c->plan->m[i].applied = 0;
	int rc = mica_db_exec(db, lock_sql, 0, NULL, NULL);
	if (!rc && c->create)
		rc = mica_db_exec(db, create_sql, 0, NULL, NULL);
	if (rc)
		return rc;
	PGresult *res = NULL;
	rc = mica_db_exec(db, "SELECT to_regclass('public.mica_migration') IS NOT NULL", 0, NULL,
			  &res);
	if (rc)
		return rc;
	const char *exists = mica_db_get(res, 0, 0);
	int has_table = exists && strcmp(exists, "t") == 0;
	PQclear(res);
	if (!has_table)
		return 0;
	rc = mica_db_exec(db,
			  "SELECT version, name, sha256, to_char(applied_at AT TIME ZONE 'UTC',"
			  " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM public.mica_migration"
			  " ORDER BY version",
			  0, NULL, &res);
	if (rc)
		return rc;
	for (int i = 0; i < PQntuples(res); i++) {
		int64_t v = 0;
		if (mica_db_get_int64(res, i, 0, &v) != 0)
			continue;
		const char *name = mica_db_get(res, i, 1);
		struct migration *m = find_version(c->plan, (int)v);
		if (!m) {
			size_t len = strlen(c->orphans);
			snprintf(c->orphans + len, sizeof(c->orphans) - len, " %s",
				 name ? name : "?");
			continue;
		}
		m->applied = 1;
		snprintf(m->applied_name, sizeof(m->applied_name), "%s", name ? name : "");
		snprintf(m->applied_sha, sizeof(m->applied_sha), "%s",
			 mica_db_get(res, i, 2) ? mica_db_get(res, i, 2) : "");
		snprintf(m->applied_at, sizeof(m->applied_at), "%s",
			 mica_db_get(res, i, 3) ? mica_db_get(res, i, 3) : "");
	}
	PQclear(res);
	return 0;
}

/* Reports every applied file whose content changed; returns how many. */
static int check_checksums(const struct plan *p)
{
	int bad = 0;
	for (size_t i = 0; i < p->n; i++) {
		const struct migration *m = &p->m[i];
		if (!m->applied)
			continue;
		if (strcmp(m->applied_name, m->name) != 0)
			fprintf(
			    stderr,
			    "mica migrate: warning: version %d was applied as %s, file is now %s\n",
			    m->version, m->applied_name, m->name);
		if (strcmp(m->applied_sha, m->sha256) != 0) {
			fprintf(stderr,
				"mica migrate: checksum mismatch for %s: applied sha256 %s, file "
				"sha256 %s.\n"
				"  An applied migration must never be edited; restore it and add a "
				"new migration instead.\n",
				m->name, m->applied_sha, m->sha256);
			bad++;
		}
	}
	return bad;
}

struct apply_ctx {
	struct migration *m;
	int skipped;  /* another run applied it meanwhile */
	int mismatch; /* ... and with different content */
	char other_sha[65];
};

/* Applies one migration and records it, in one transaction. Re-checks under
 * the lock, since another `mica migrate` may have applied it meanwhile. */
static int apply_tx(mica_db *db, void *arg)
{
	struct apply_ctx *c = arg;
	char version[16];
	snprintf(version, sizeof(version), "%d", c->m->version);
	c->skipped = c->mismatch = 0;
	int rc = mica_db_exec(db, lock_sql, 0, NULL, NULL);
	if (rc)
		return rc;
	const char *p1[1] = {version};
	PGresult *res = NULL;
	rc = mica_db_exec(db, "SELECT sha256 FROM public.mica_migration WHERE version = $1::int", 1,
			  p1, &res);
	if (rc)
		return rc;
	if (PQntuples(res) > 0) {
		const char *sha = mica_db_get(res, 0, 0);
		snprintf(c->other_sha, sizeof(c->other_sha), "%s", sha ? sha : "");
		c->skipped = 1;
		c->mismatch = strcmp(c->other_sha, c->m->sha256) != 0;
		PQclear(res);
		return 0;
	}
	PQclear(res);
	/* The one place in mica that runs SQL without parameters: migration
	 * files are trusted, reviewed files from the repository, and they are
	 * multi-statement scripts (DDL, functions with $$ bodies), which only
	 * the simple query protocol (PQexec) accepts. No input reaches them. */
	rc = mica_db_exec_trusted_script(db, c->m->sql);
	if (rc)
		return rc;
	const char *p3[3] = {version, c->m->name, c->m->sha256};
	return mica_db_exec(db,
			    "INSERT INTO public.mica_migration (version, name, sha256)"
			    " VALUES ($1::int, $2, $3)",
			    3, p3, NULL);
}

static void print_status(const struct plan *p, const char *orphans)
{
	size_t applied = 0;
	printf("%-8s %-40s %-9s %s\n", "VERSION", "FILE", "STATE", "APPLIED AT (UTC)");
	for (size_t i = 0; i < p->n; i++) {
		const struct migration *m = &p->m[i];
		const char *state = !m->applied				     ? "pending"
				    : strcmp(m->applied_sha, m->sha256) == 0 ? "applied"
									     : "CHANGED";
		applied += m->applied;
		printf("%04d     %-40s %-9s %s\n", m->version, m->name, state,
		       m->applied ? m->applied_at : "-");
	}
	if (orphans[0])
		printf("applied but missing from the directory:%s\n", orphans);
	printf("%zu applied, %zu pending\n", applied, p->n - applied);
}

static void migrate_usage(FILE *f)
{
	fprintf(
	    f, "usage: mica migrate [--db CONNINFO] [--schema DIR] [--status]\n"
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

static int run_migrations(mica_db *db, struct plan *plan)
{
	size_t done = 0, already = 0;
	for (size_t i = 0; i < plan->n; i++) {
		struct migration *m = &plan->m[i];
		if (m->applied) {
			already++;
			continue;
		}
		struct apply_ctx c = {.m = m};
		int rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, apply_tx, &c);
		if (rc) {
			fprintf(stderr,
				"mica migrate: %s failed, nothing of it applied: %s: %s%s%s%s\n",
				m->name, mica_errmsg(rc), mica_db_errmsg(db),
				mica_db_sqlstate(db)[0] ? " (sqlstate " : "", mica_db_sqlstate(db),
				mica_db_sqlstate(db)[0] ? ")" : "");
			return EXIT_FAIL;
		}
		if (c.mismatch) {
			fprintf(stderr,
				"mica migrate: checksum mismatch for %s: applied sha256 %s, file "
				"sha256 %s\n",
				m->name, c.other_sha, m->sha256);
			return EXIT_CHECKSUM;
		}
		if (c.skipped) {
			already++;
			continue;
		}
		printf("applied %s (sha256 %s)\n", m->name, m->sha256);
		done++;
	}
	if (done == 0)
		printf("nothing to apply: %zu migrations up to date\n", already);
	else
		printf("%zu applied, %zu already up to date\n", done, already);
	return EXIT_OK;
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
			return EXIT_OK;
		default:
			migrate_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mica migrate: unexpected argument '%s'\n", argv[optind]);
		migrate_usage(stderr);
		return EXIT_USAGE;
	}
	if (!conninfo || !*conninfo) {
		fprintf(stderr, "mica migrate: no database: pass --db or set MICA_DB_CONNINFO\n");
		migrate_usage(stderr);
		return EXIT_USAGE;
	}
	if (!dir || !*dir)
		dir = "schema";

	struct plan plan = {0};
	mica_db *db = NULL;
	int rc = load_plan(dir, &plan);
	if (rc)
		goto out;
	int err = mica_db_open(&db, conninfo);
	if (err) {
		fprintf(stderr, "mica migrate: cannot connect: %s\n", mica_db_errmsg(db));
		rc = EXIT_FAIL;
		goto out;
	}
	struct read_ctx rctx = {.plan = &plan, .create = !status_only};
	err = mica_db_tx(db, MICA_DB_READ_COMMITTED, read_applied_tx, &rctx);
	if (err) {
		fprintf(stderr, "mica migrate: cannot read public.mica_migration: %s: %s\n",
			mica_errmsg(err), mica_db_errmsg(db));
		rc = EXIT_FAIL;
		goto out;
	}
	int bad = check_checksums(&plan);
	if (status_only) {
		print_status(&plan, rctx.orphans);
		rc = bad ? EXIT_CHECKSUM : EXIT_OK;
		goto out;
	}
	if (rctx.orphans[0])
		fprintf(stderr, "mica migrate: warning: applied but missing from %s:%s\n", dir,
			rctx.orphans);
	if (bad) {
		rc = EXIT_CHECKSUM;
		goto out;
	}
	rc = run_migrations(db, &plan);
out:
	mica_db_close(&db);
	plan_free(&plan);
	return rc;
}

/* ---- audit ------------------------------------------------------------ */

static void audit_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: mica audit export [--db CONNINFO] [--out FILE]\n"
	    "       mica audit verify --pubkey PEM [--anchor FILE] [--published FILE]\n"
	    "                         [--max-unsigned N] [--max-unsigned-ms MS] FILE\n"
	    "       mica audit verify --mac --kc-url URL --ca PEM --cert PEM --key PEM\n"
	    "\n"
	    "export writes every Key Center audit record and checkpoint as JSON lines\n"
	    "(format in keycenter/audit.h) from one consistent snapshot, to FILE or stdout.\n"
	    "verify checks an export offline with the checkpoint public key: hashes, chain\n"
	    "links, sequence numbers, checkpoint signatures, a truncated tail, at least one\n"
	    "checkpoint, and an unsigned tail no longer than the writer ever leaves; it\n"
	    "prints \"OK: ...\" and exits 0, or \"FAIL at seq N: KIND: DETAIL\" and exits 1.\n"
	    "FILE - reads stdin.\n"
	    "verify --mac asks the Key Center (as the auditor principal) to check every\n"
	    "record's MAC with its sealed key now; a failure also raises its alert.\n"
	    "\n"
	    "  --db CONNINFO        libpq connection string (default: $MICA_DB_CONNINFO)\n"
	    "  --out FILE           write the export to FILE (mode 0600) instead of stdout\n"
	    "  --pubkey PEM         checkpoint public key (PEM SubjectPublicKeyInfo, EC)\n"
	    "  --anchor FILE        the signed head of your previous verification: the log\n"
	    "                       must still hold it (no cut, no rewrite before it); on OK\n"
	    "                       FILE is replaced by the newest checkpoint (a missing FILE\n"
	    "                       is created)\n"
	    "  --published FILE     the Key Center's publish file (keycenter.audit.publish_file):\n"
	    "                       the log must hold its newest checkpoint\n"
	    "  --max-unsigned N     most records after the last checkpoint (the Key Center's\n"
	    "                       keycenter.audit.checkpoint_every; default 1000)\n"
	    "  --max-unsigned-ms MS longest time from the last checkpoint to the newest record\n"
	    "                       (checkpoint_interval_ms plus a grace; default 15000)\n"
	    "  --mac                the online MAC self-check (needs --kc-url, --ca, --cert, "
	    "--key)\n"
	    "  -h, --help           show this help\n");
}

static int audit_export(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"db", required_argument, NULL, 'd'},
	    {"out", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *conninfo = getenv("MICA_DB_CONNINFO");
	const char *path = NULL;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 'o':
			path = optarg;
			break;
		case 'h':
			audit_usage(stdout);
			return EXIT_OK;
		default:
			audit_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mica audit export: unexpected argument '%s'\n", argv[optind]);
		audit_usage(stderr);
		return EXIT_USAGE;
	}
	if (!conninfo || !*conninfo) {
		fprintf(stderr,
			"mica audit export: no database: pass --db or set MICA_DB_CONNINFO\n");
		audit_usage(stderr);
		return EXIT_USAGE;
	}
	mica_db *db = NULL;
	if (mica_db_open(&db, conninfo) != 0) {
		fprintf(stderr, "mica audit export: cannot connect: %s\n", mica_db_errmsg(NULL));
		return EXIT_FAIL;
	}
	FILE *out = stdout;
	if (path) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		out = fd < 0 ? NULL : fdopen(fd, "w");
		if (!out) {
			fprintf(stderr, "mica audit export: cannot write %s: %s\n", path,
				strerror(errno));
			if (fd >= 0)
				close(fd);
			mica_db_close(&db);
			return EXIT_FAIL;
		}
	}
	int err = kc_audit_export(db, out);
	if (path && fclose(out) != 0 && !err)
		err = MICA_EIO;
	if (err) {
		fprintf(stderr, "mica audit export: %s%s%s\n", mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
		if (path)
			unlink(path); /* never leave a partial export behind */
	}
	mica_db_close(&db);
	return err ? EXIT_FAIL : EXIT_OK;
}

/* Reads the newest checkpoint of a file of checkpoint lines; prints why not.
 * Returns 0, MICA_ENOTFOUND (no file, or no line) or another failure. */
static int read_checkpoint_file(const char *what, const char *path, EVP_PKEY *pub,
				kc_audit_checkpoint *cp)
{
	uint64_t bad = 0;
	FILE *f = fopen(path, "rb");
	if (!f) {
		if (errno == ENOENT)
			return MICA_ENOTFOUND;
		fprintf(stderr, "mica audit verify: cannot open %s %s: %s\n", what, path,
			strerror(errno));
		return MICA_EIO;
	}
	int err = kc_audit_checkpoint_read(f, pub, cp, NULL, &bad);
	fclose(f);
	if (err == MICA_EBADENCODING || err == MICA_EAUTH)
		fprintf(stderr, "mica audit verify: %s %s, line %" PRIu64 ": %s\n", what, path, bad,
			err == MICA_EAUTH ? "the signature does not verify with --pubkey"
					  : "not a checkpoint line");
	else if (err && err != MICA_ENOTFOUND)
		fprintf(stderr, "mica audit verify: %s %s: %s\n", what, path, mica_errmsg(err));
	return err;
}

/* Replaces |path| by the one line of |cp| (written beside it, then
 * renamed, so a crash leaves the old anchor or the new one). */
static int write_anchor(const char *path, const kc_audit_checkpoint *cp)
{
	char tmp[4096], *line = NULL;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp) ||
	    kc_audit_checkpoint_line(cp, &line) != 0)
		return MICA_EINVAL;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
	int ok = f && fprintf(f, "%s\n", line) > 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
	if (f)
		ok = fclose(f) == 0 && ok;
	else if (fd >= 0)
		close(fd);
	free(line);
	if (!ok || rename(tmp, path) != 0) {
		unlink(tmp);
		return MICA_EIO;
	}
	return 0;
}

/* A whole number in 1..|max|; -1 otherwise. */
static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || !*s || *end || s[0] == '-' || v < 1 || v > max)
		return -1;
	*out = v;
	return 0;
}

/* verify --mac: the Key Center checks its MACs (POST /v1/audit/selfcheck). */
static int audit_verify_mac(const char *url, const mica_httpc_options *o)
{
	char full[4096];
	mica_httpc *h = NULL;
	json_t *reply = NULL;
	long status = 0;
	if (snprintf(full, sizeof(full), "%s/v1/audit/selfcheck", url) >= (int)sizeof(full))
		return EXIT_USAGE;
	int err = mica_httpc_new(&h, o);
	if (!err)
		err = mica_httpc_json(h, "POST", full, NULL, 0, &status, &reply);
	mica_httpc_free(h);
	const char *result = json_string_value(json_object_get(reply, "result"));
	json_int_t n = json_integer_value(json_object_get(reply, "records"));
	json_int_t bad = json_integer_value(json_object_get(reply, "bad_seq"));
	int rc = EXIT_FAIL;
	if (err) {
		fprintf(stderr, "mica audit verify --mac: %s: %s\n", url, mica_errmsg(err));
	} else if (status != 200 || !result) {
		const char *code =
		    json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
		fprintf(stderr, "mica audit verify --mac: HTTP %ld %s\n", status, code ? code : "");
	} else if (strcmp(result, "ok") == 0) {
		printf("OK: the MACs of %" JSON_INTEGER_FORMAT " records verify\n", n);
		rc = EXIT_OK;
	} else {
		printf("FAIL at seq %" JSON_INTEGER_FORMAT ": %s: record %" JSON_INTEGER_FORMAT
		       " does not carry the Key Center's MAC (an alert was raised)\n",
		       bad, result, bad);
	}
	json_decref(reply);
	return rc;
}

static void print_verify_failure(const kc_audit_report *rep, const char *const names[])
{
	printf("FAIL at seq %" PRIu64 ": %s: %s", rep->bad_seq, kc_audit_verdict_name(rep->kind),
	       rep->detail);
	if (rep->kind == KC_AUDIT_ANCHOR_MISMATCH || rep->kind == KC_AUDIT_ANCHOR_TRUNCATED)
		printf(" (anchor %zu is %s)", rep->anchor + 1, names[rep->anchor]);
	putchar('\n');
}

/* verify without --mac: the export |path| against --pubkey, the anchor and
 * the publish file; moves the anchor on success. */
static int audit_verify_offline(const char *pubkey, const char *anchor, const char *published,
				kc_audit_verify_options *vo, const char *path)
{
	kc_audit_checkpoint anchors[2];
	const char *names[2] = {"", ""};
	kc_audit_report rep;
	EVP_PKEY *pub = NULL;
	FILE *in = NULL, *kf = fopen(pubkey, "rb");
	int rc = EXIT_FAIL, err, had_anchor = 0;
	if (kf) {
		pub = PEM_read_PUBKEY(kf, NULL, NULL, NULL);
		fclose(kf);
	}
	if (!pub || !EVP_PKEY_is_a(pub, "EC")) {
		fprintf(stderr, "mica audit verify: cannot load the public key (PEM EC"
				" SubjectPublicKeyInfo)\n");
		goto out;
	}
	vo->anchors = anchors;
	if (anchor) {
		err = read_checkpoint_file("anchor", anchor, pub, &anchors[vo->n_anchors]);
		if (err && err != MICA_ENOTFOUND)
			goto out;
		if (!err) {
			names[vo->n_anchors++] = anchor;
			had_anchor = 1;
		}
	}
	if (published) {
		err = read_checkpoint_file("publish file", published, pub, &anchors[vo->n_anchors]);
		if (err == MICA_ENOTFOUND)
			fprintf(stderr, "mica audit verify: publish file %s is missing or empty\n",
				published);
		if (err)
			goto out;
		names[vo->n_anchors++] = published;
	}
	in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	if (!in) {
		fprintf(stderr, "mica audit verify: cannot open %s: %s\n", path, strerror(errno));
		goto out;
	}
	err = kc_audit_verify_opts(in, pub, vo, &rep);
	if (err == MICA_EAUTH) {
		print_verify_failure(&rep, names);
		goto out;
	}
	if (err) {
		fprintf(stderr, "mica audit verify: %s\n",
			err == MICA_EIO ? "cannot read the export" : mica_errmsg(err));
		goto out;
	}
	printf("OK: %" PRIu64 " records, %" PRIu64 " checkpoints, last checkpoint at seq %" PRIu64
	       "\n",
	       rep.records, rep.checkpoints, rep.last_checkpoint_seq);
	if (rep.unsigned_tail)
		printf("note: the last %" PRIu64 " records are not covered by a checkpoint"
		       " signature yet\n",
		       rep.unsigned_tail);
	for (size_t i = 0; i < vo->n_anchors; i++)
		printf("anchor: %s (seq %" PRIu64 ") is in the log\n", names[i], anchors[i].seq);
	rc = EXIT_OK;
	if (anchor) {
		if (write_anchor(anchor, &rep.last_checkpoint) != 0) {
			fprintf(stderr, "mica audit verify: cannot write the anchor %s\n", anchor);
			rc = EXIT_FAIL;
		} else {
			printf("anchor: %s %s at seq %" PRIu64 "\n", anchor,
			       had_anchor ? "moved" : "created", rep.last_checkpoint_seq);
		}
	}
out:
	if (in && in != stdin)
		fclose(in);
	EVP_PKEY_free(pub);
	return rc;
}

static int audit_verify(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"pubkey", required_argument, NULL, 'k'},
	    {"anchor", required_argument, NULL, 'A'},
	    {"published", required_argument, NULL, 'P'},
	    {"max-unsigned", required_argument, NULL, 'n'},
	    {"max-unsigned-ms", required_argument, NULL, 'm'},
	    {"mac", no_argument, NULL, 'M'},
	    {"kc-url", required_argument, NULL, 'u'},
	    {"ca", required_argument, NULL, 'a'},
	    {"cert", required_argument, NULL, 'c'},
	    {"key", required_argument, NULL, 'K'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *pubkey = NULL, *anchor = NULL, *published = NULL, *url = NULL;
	mica_httpc_options ho = {.timeout_ms = 600000, .retries = 0};
	kc_audit_verify_options vo = {0};
	uint64_t v = 0;
	int c, mac = 0, bad_num = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			pubkey = optarg;
			break;
		case 'A':
			anchor = optarg;
			break;
		case 'P':
			published = optarg;
			break;
		case 'M':
			mac = 1;
			break;
		case 'u':
			url = optarg;
			break;
		case 'a':
			ho.ca_file = optarg;
			break;
		case 'c':
			ho.cert_file = optarg;
			break;
		case 'K':
			ho.key_file = optarg;
			break;
		case 'n':
			bad_num |= parse_u64(optarg, UINT64_MAX - 1, &v);
			vo.max_unsigned = v;
			break;
		case 'm':
			bad_num |= parse_u64(optarg, INT64_MAX / 1000, &v);
			vo.max_unsigned_ms = (int64_t)v;
			break;
		case 'h':
			audit_usage(stdout);
			return EXIT_OK;
		default:
			audit_usage(stderr);
			return EXIT_USAGE;
		}
	}
	const char *usage_err =
	    bad_num ? "--max-unsigned and --max-unsigned-ms take a whole number >= 1"
	    : mac && (pubkey || anchor || published || optind != argc)
		? "--mac checks online: no --pubkey, --anchor, --published or FILE"
	    : mac && (!url || !ho.ca_file || !ho.cert_file || !ho.key_file)
		? "--mac needs --kc-url, --ca, --cert and --key (the auditor's certificate)"
	    : !mac && (!pubkey || optind != argc - 1) ? "need --pubkey PEM and exactly one FILE"
						      : NULL;
	if (usage_err) {
		fprintf(stderr, "mica audit verify: %s\n", usage_err);
		audit_usage(stderr);
		return EXIT_USAGE;
	}
	if (mac)
		return audit_verify_mac(url, &ho);
	return audit_verify_offline(pubkey, anchor, published, &vo, argv[optind]);
}

static int cmd_audit(int argc, char **argv)
{
	static const struct command verbs[] = {{"export", audit_export, NULL},
					       {"verify", audit_verify, NULL}};
	return run_verb("audit", verbs, 2, audit_usage, argc, argv);
}

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
	long limit = 50;
	char *end;
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
			errno = 0;
			limit = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || limit < 1 || limit > 10000) {
				fprintf(stderr, "mica outbox list: --limit must be 1..10000\n");
				return EXIT_USAGE;
			}
			break;
		case 'h':
			outbox_usage(stdout);
			return EXIT_OK;
		default:
			outbox_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc || !conninfo || !*conninfo) {
		if (optind < argc)
			fprintf(stderr, "mica outbox list: unexpected argument '%s'\n",
				argv[optind]);
		else
			fprintf(stderr, "mica outbox list: no database: pass --db or set"
					" MICA_DB_CONNINFO\n");
		outbox_usage(stderr);
		return EXIT_USAGE;
	}
	mica_db *db = NULL;
	if (mica_db_open(&db, conninfo) != 0) {
		fprintf(stderr, "mica outbox list: cannot connect: %s\n", mica_db_errmsg(NULL));
		return EXIT_FAIL;
	}
	int n = 0;
	int err = acct_notify_outbox_list(db, to, (int)limit, stdout, &n);
	if (err)
		fprintf(stderr, "mica outbox list: %s%s%s\n", mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
	else if (n == 0)
		fprintf(stderr, "mica outbox list: no messages%s%s\n", to ? " to " : "",
			to ? to : "");
	mica_db_close(&db);
	return err ? EXIT_FAIL : EXIT_OK;
}

static int cmd_outbox(int argc, char **argv)
{
	static const struct command verbs[] = {{"list", outbox_list, NULL}};
	return run_verb("outbox", verbs, 1, outbox_usage, argc, argv);
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
 * EXIT_DATA. */
static int recycled_read(const char *path, struct recycled_list *l)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	char *line = NULL, phone[32], day[11];
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int rc = EXIT_OK;
	if (!f) {
		fprintf(stderr, "mica recycled import: %s: %s\n", path, strerror(errno));
		return EXIT_FAIL;
	}
	while (rc == EXIT_OK && (len = getline(&line, &cap, f)) >= 0) {
		const char *why;
		lineno++;
		if (len > 0 && line[len - 1] == '\n')
			len--;
		int got = acct_recycled_line(line, (size_t)len, phone, sizeof(phone), day, &why);
		if (got < 0) {
			fprintf(stderr, "mica recycled import: %s:%zu: %s\n", path, lineno, why);
			rc = EXIT_DATA;
		} else if (got && recycled_push(l, phone, day) != 0) {
			fprintf(stderr, "mica recycled import: out of memory\n");
			rc = EXIT_FAIL;
		}
	}
	if (rc == EXIT_OK && ferror(f)) {
		fprintf(stderr, "mica recycled import: %s: read error\n", path);
		rc = EXIT_FAIL;
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

/* mica recycled add and mica recycled import: the same options but for
 * where the numbers come from. */
static int recycled_run(const char *verb, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"phone", required_argument, NULL, 'p'},
	    {"on", required_argument, NULL, 'o'},
	    {"file", required_argument, NULL, 'f'},
	    {"db", required_argument, NULL, 'd'},
	    {"kc-url", required_argument, NULL, 'u'},
	    {"ca", required_argument, NULL, 'a'},
	    {"cert", required_argument, NULL, 'c'},
	    {"key", required_argument, NULL, 'k'},
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
	int c, rc = EXIT_OK, err = 0;
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
		case 'u':
			ko.base_url = optarg;
			break;
		case 'a':
			ko.ca_file = optarg;
			break;
		case 'c':
			ko.cert_file = optarg;
			break;
		case 'k':
			ko.key_file = optarg;
			break;
		case 'i':
			index_key = optarg;
			break;
		case 'h':
			recycled_usage(stdout);
			return EXIT_OK;
		default:
			recycled_usage(stderr);
			return EXIT_USAGE;
		}
	}
	const char *bad = optind < argc ? "unexpected argument"
			  : import && (phone || on)
			      ? "--phone and --on belong to add; the list has them"
			  : !import && file	       ? "--file belongs to import"
			  : import && !file	       ? "--file is needed"
			  : !import && (!phone || !on) ? "--phone and --on are needed"
			  : !conninfo || !*conninfo    ? "--db is needed (or MICA_DB_CONNINFO)"
			  : !ko.base_url || !ko.ca_file || !ko.cert_file || !ko.key_file
			      ? "--kc-url, --ca, --cert and --key are needed"
			  : !import && acct_ident_parse(phone, norm, sizeof(norm)) != ACCT_ID_PHONE
			      ? "--phone is + and 7 to 15 digits"
			  : !import && !acct_is_iso_day(on) ? "--on is YYYY-MM-DD"
							    : NULL;
	if (bad) {
		fprintf(stderr, "mica recycled %s: %s\n", verb, bad);
		recycled_usage(stderr);
		return EXIT_USAGE;
	}
	if (import)
		rc = recycled_read(file, &list);
	else if (recycled_push(&list, norm, on) != 0)
		rc = EXIT_FAIL;
	mica_kc *kc = NULL;
	mica_db *db = NULL;
	if (rc == EXIT_OK) {
		err = mica_kc_new(&kc, &ko);
		for (size_t i = 0; !err && i < list.n; i++)
			err = acct_blind_index_with(kc, index_key, "phone", list.v[i].phone,
						    &list.v[i].idx);
		if (err) {
			fprintf(stderr, "mica recycled %s: the Key Center: %s\n", verb,
				mica_errmsg(err));
			rc = EXIT_FAIL;
		}
	}
	if (rc == EXIT_OK && mica_db_open(&db, conninfo) != 0) {
		fprintf(stderr, "mica recycled %s: cannot connect: %s\n", verb,
			mica_db_errmsg(NULL));
		rc = EXIT_FAIL;
	} else if (rc == EXIT_OK &&
		   (err = mica_db_tx(db, MICA_DB_READ_COMMITTED, recycled_insert_tx, &list)) != 0) {
		fprintf(stderr, "mica recycled %s: %s%s%s\n", verb, mica_errmsg(err),
			mica_db_errmsg(db)[0] ? ": " : "", mica_db_errmsg(db));
		rc = EXIT_FAIL;
	} else if (rc == EXIT_OK && !import) {
		printf("recorded: a number recycled on %s\n", on);
	} else if (rc == EXIT_OK) {
		printf("numbers: %zu read, %zu recorded, %zu already recorded\n", list.n, list.added,
		       list.n - list.added);
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

static int cmd_recycled(int argc, char **argv)
{
	static const struct command verbs[] = {{"add", recycled_add, NULL},
					       {"import", recycled_import, NULL}};
	return run_verb("recycled", verbs, 2, recycled_usage, argc, argv);
}

int main(int argc, char **argv)
{
	/* The CLI speaks to humans on stderr; library logs only when asked. */
	const char *lvl = getenv("MICA_LOG_LEVEL");
	int level = lvl ? mica_log_level_parse(lvl) : -1;
	mica_log_min_level = level >= 0 ? level : MICA_LOG_ERROR;

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return EXIT_OK;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "mica: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
