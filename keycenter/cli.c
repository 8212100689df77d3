/* cli.c - the Key Center's `mica` nouns (lib/cli.h): `mica keycenter ...`
 * (the init ceremony, unseal, seal-status, migrate-root: init.c) and
 * `mica audit export | verify`, which export the audit trail from one
 * consistent snapshot and verify an export offline against the checkpoint
 * public key, an anchor and the publish file, or online (--mac). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "cli.h"
#include "db.h"
#include "httpc.h"
#include "keycenter/audit.h"
#include "keycenter/keycenter.h"

/* ---- audit export, audit verify ------------------------------------------ */

static void audit_usage(FILE *f)
{
	fprintf(f,
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
			return MICA_EXIT_OK;
		default:
			audit_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	mica_db *db = NULL;
	if ((c = mica_cli_need_db("mica audit export", audit_usage, argc, argv, conninfo)) != 0 ||
	    (c = mica_cli_db_open("mica audit export", conninfo, &db)) != 0)
		return c;
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
			return MICA_EXIT_FAIL;
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
	return err ? MICA_EXIT_FAIL : MICA_EXIT_OK;
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

/* verify --mac: the Key Center checks its MACs (POST /v1/audit/selfcheck). */
static int audit_verify_mac(const char *url, const mica_httpc_options *o)
{
	char full[4096];
	mica_httpc *h = NULL;
	json_t *reply = NULL;
	long status = 0;
	if (snprintf(full, sizeof(full), "%s/v1/audit/selfcheck", url) >= (int)sizeof(full))
		return MICA_EXIT_USAGE;
	int err = mica_httpc_new(&h, o);
	if (!err)
		err = mica_httpc_json(h, "POST", full, NULL, 0, &status, &reply);
	mica_httpc_free(h);
	const char *result = json_string_value(json_object_get(reply, "result"));
	json_int_t n = json_integer_value(json_object_get(reply, "records"));
	json_int_t bad = json_integer_value(json_object_get(reply, "bad_seq"));
	int rc = MICA_EXIT_FAIL;
	if (err) {
		fprintf(stderr, "mica audit verify --mac: %s: %s\n", url, mica_errmsg(err));
	} else if (status != 200 || !result) {
		const char *code =
			json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
		fprintf(stderr, "mica audit verify --mac: HTTP %ld %s\n", status, code ? code : "");
	} else if (strcmp(result, "ok") == 0) {
		printf("OK: the MACs of %" JSON_INTEGER_FORMAT " records verify\n", n);
		rc = MICA_EXIT_OK;
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
	int rc = MICA_EXIT_FAIL, err, had_anchor = 0;
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
	rc = MICA_EXIT_OK;
	if (anchor) {
		if (write_anchor(anchor, &rep.last_checkpoint) != 0) {
			fprintf(stderr, "mica audit verify: cannot write the anchor %s\n", anchor);
			rc = MICA_EXIT_FAIL;
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
		MICA_CLI_KC_OPTIONS,
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *pubkey = NULL, *anchor = NULL, *published = NULL;
	mica_kc_options ko = {0};
	kc_audit_verify_options vo = {0};
	int64_t v = 0;
	int c, mac = 0;
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
		case 'n':
			if (mica_cli_int("mica audit verify", "--max-unsigned", optarg, 1,
					 INT64_MAX, &v) != 0)
				return MICA_EXIT_USAGE;
			vo.max_unsigned = (uint64_t)v;
			break;
		case 'm':
			if (mica_cli_int("mica audit verify", "--max-unsigned-ms", optarg, 1,
					 INT64_MAX / 1000, &v) != 0)
				return MICA_EXIT_USAGE;
			vo.max_unsigned_ms = v;
			break;
		case 'h':
			audit_usage(stdout);
			return MICA_EXIT_OK;
		default:
			if (mica_cli_kc_option(c, optarg, &ko))
				break;
			audit_usage(stderr);
			return MICA_EXIT_USAGE;
		}
	}
	const char *usage_err =
		mac && (pubkey || anchor || published || optind != argc)
			? "--mac checks online: no --pubkey, --anchor, --published or FILE"
		: mac && (!ko.base_url || !ko.ca_file || !ko.cert_file || !ko.key_file)
			? "--mac needs --kc-url, --ca, --cert and --key (the auditor's certificate)"
		: !mac && (!pubkey || optind != argc - 1) ? "need --pubkey PEM and exactly one FILE"
							  : NULL;
	if (usage_err) {
		fprintf(stderr, "mica audit verify: %s\n", usage_err);
		audit_usage(stderr);
		return MICA_EXIT_USAGE;
	}
	if (mac) {
		mica_httpc_options ho = {.ca_file = ko.ca_file,
					 .cert_file = ko.cert_file,
					 .key_file = ko.key_file,
					 .timeout_ms = 600000,
					 .retries = 0};
		return audit_verify_mac(ko.base_url, &ho);
	}
	return audit_verify_offline(pubkey, anchor, published, &vo, argv[optind]);
}

static int audit_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"export", audit_export, NULL},
					      {"verify", audit_verify, NULL}};
	return mica_cli_run_verb("audit", verbs, 2, audit_usage, argc, argv);
}

/* ---- the Key Center's nouns (lib/cli.h) --------------------------------- */

static const mica_cli_verb nouns[] = {
	{"keycenter", kc_command,
	 "keycenter init | unseal | seal-status | migrate-root: ceremony, unseal, root migration"},
	{"audit", audit_command, "audit export | audit verify: the Key Center audit trail"},
};

const mica_cli_service keycenter_cli = {"keycenter", nouns, sizeof(nouns) / sizeof(nouns[0])};
