/* migrate.h - the schema migrations of the whole suite, run by `mica migrate`.
 *
 * |dir| holds NNNN_name.sql files (NNNN: 1 to 9 digits, unique). Each file
 * not yet recorded in public.mica_migration is applied in numeric order, in
 * its own transaction together with its record (version, file name,
 * SHA-256), under a transaction-scoped advisory lock, so concurrent runs
 * apply each file exactly once. A recorded file whose SHA-256 changed stops
 * the run before anything is applied. Migration files are trusted,
 * reviewed repository files run as multi-statement scripts (the one place
 * in mica that runs SQL without parameters; no input reaches them).
 */
#ifndef MICA_MIGRATE_H
#define MICA_MIGRATE_H

/* Applies the pending migrations of |dir| to the database |conninfo|
 * (both borrowed), or with |status_only| lists applied and pending ones and
 * changes nothing. Progress goes to stdout, errors to stderr, prefixed
 * "mica migrate:". Returns MICA_EXIT_OK, MICA_EXIT_FAIL (a file, the
 * connection or a migration failed: nothing of that migration applied) or
 * MICA_EXIT_CHECKSUM (an applied file changed) - lib/cli.h. */
int mica_migrate_run(const char *conninfo, const char *dir, int status_only);

#endif
