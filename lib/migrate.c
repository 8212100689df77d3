/* migrate.c - the schema migrations of the whole suite (see migrate.h):
 * numbered SQL files applied in order, each in its own transaction together
 * with its record (and SHA-256) in public.mica_migration; an applied file
 * that changed stops everything. */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cli.h"
#include "db.h"
#include "parse.h"

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
	char digits_only[10];
	int64_t v;
	memcpy(digits_only, name, digits);
	digits_only[digits] = '\0';
	return mica_parse_int64(digits_only, 0, 999999999, &v) == 0 ? (int)v : -1;
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
		return MICA_EXIT_FAIL;
	}
	int rc = MICA_EXIT_OK;
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
				rc = MICA_EXIT_FAIL;
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
			rc = MICA_EXIT_FAIL;
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
			rc = MICA_EXIT_FAIL;
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
			return MICA_EXIT_FAIL;
		}
	}
	return MICA_EXIT_OK;
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
			fprintf(stderr,
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
			return MICA_EXIT_FAIL;
		}
		if (c.mismatch) {
			fprintf(stderr,
				"mica migrate: checksum mismatch for %s: applied sha256 %s, file "
				"sha256 %s\n",
				m->name, c.other_sha, m->sha256);
			return MICA_EXIT_CHECKSUM;
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
	return MICA_EXIT_OK;
}

int mica_migrate_run(const char *conninfo, const char *dir, int status_only)
{
	struct plan plan = {0};
	mica_db *db = NULL;
	int rc = load_plan(dir, &plan);
	if (rc)
		goto out;
	if ((rc = mica_cli_db_open("mica migrate", conninfo, &db)) != 0)
		goto out;
	int err;
	struct read_ctx rctx = {.plan = &plan, .create = !status_only};
	err = mica_db_tx(db, MICA_DB_READ_COMMITTED, read_applied_tx, &rctx);
	if (err) {
		fprintf(stderr, "mica migrate: cannot read public.mica_migration: %s: %s\n",
			mica_errmsg(err), mica_db_errmsg(db));
		rc = MICA_EXIT_FAIL;
		goto out;
	}
	int bad = check_checksums(&plan);
	if (status_only) {
		print_status(&plan, rctx.orphans);
		rc = bad ? MICA_EXIT_CHECKSUM : MICA_EXIT_OK;
		goto out;
	}
	if (rctx.orphans[0])
		fprintf(stderr, "mica migrate: warning: applied but missing from %s:%s\n", dir,
			rctx.orphans);
	if (bad) {
		rc = MICA_EXIT_CHECKSUM;
		goto out;
	}
	rc = run_migrations(db, &plan);
out:
	mica_db_close(&db);
	plan_free(&plan);
	return rc;
}
