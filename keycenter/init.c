/* init.c - the `mica keycenter` verbs. `init` is the one-time ceremony
 * that makes a Key Center: it logs in to the token found by label, generates
 * the RSA-4096 root key (with its KEK unwrap template) and the audit signing
 * key inside the HSM, prints their public parts, creates the Key Center's
 * own KEK, seals a fresh audit MAC key with it, and stores policy version 1;
 * with --shares N --threshold K it then changes the token's user and SO PINs
 * to values derived from a fresh secret and prints that secret as N Shamir
 * shares, once, so nothing on disk opens the token. It refuses an
 * initialised token unless --force is given, which destroys every key and
 * all Key Center state. `unseal` sends one officer's share to a sealed Key
 * Center, `seal-status` asks whether it is sealed, and `migrate-root` moves
 * the KEKs of a token made before unwrap templates to a new root key. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "crypto.h"
#include "db.h"
#include "httpc.h"
#include "keycenter/keycenter.h"
#include "keycenter/shares.h"
#include "log.h"

static const char usage[] =
	"usage: mica keycenter init --policy FILE [--force] [--audit-pubkey-out FILE]\n"
	"                           [--shares N --threshold K --so-pin-file FILE]\n"
	"                           [--db CONNINFO] [--hsm-module PATH] [--token-label LABEL]\n"
	"                           [--pin-file FILE]\n"
	"       mica keycenter unseal [--url URL] [--ca-file F] [--cert-file F] [--key-file F]\n"
	"                           (reads one share line from standard input)\n"
	"       mica keycenter seal-status [--url URL] [--ca-file F] [--cert-file F] [--key-file F]\n"
	"       mica keycenter migrate-root [--db CONNINFO] [--hsm-module PATH]\n"
	"                           [--token-label LABEL] [--pin-file FILE]\n"
	"  Defaults come from MICA_DB_CONNINFO, MICA_HSM_MODULE, MICA_HSM_TOKEN_LABEL,\n"
	"  MICA_HSM_PIN_FILE, MICA_HSM_SO_PIN_FILE, MICA_KEYCENTER_URL and\n"
	"  MICA_KEYCENTER_{CA,CERT,KEY}_FILE. --db is an administrator's conninfo.\n"
	"  --shares prints the unseal shares once and changes the token's PINs: afterwards\n"
	"  neither PIN file opens it, and the Key Center runs with keycenter.hsm.unseal = shares.\n";

struct init_args {
	const char *db, *module, *label, *pin_file, *policy_file, *pubkey_out, *so_pin_file;
	int force, shares, threshold;
};

static char *slurp(const char *path, size_t max)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	if (!f)
		return NULL;
	if ((buf = malloc(max + 1)) != NULL) {
		size_t n = fread(buf, 1, max, f);
		if (ferror(f) || !feof(f)) {
			free(buf);
			buf = NULL;
		} else {
			buf[n] = '\0';
		}
	}
	fclose(f);
	return buf;
}

struct state_tx {
	kc_service *s;
	int force;
	const char *root_pem, *audit_pem, *policy;
	int policy_version;
};

/* Stores public keys, the sealed audit MAC key and policy version 1. */
static int store_tx(mica_db *db, void *arg)
{
	struct state_tx *t = arg;
	uint8_t mac_key[32], *sealed = NULL;
	size_t sl = 0;
	char *hex = NULL, ver[16];
	const kc_hsm_key *kek;
	int err;

	if (t->force) {
		static const char *const wipe[] = {
			"DELETE FROM keycenter.approval", "DELETE FROM keycenter.change_request",
			"DELETE FROM keycenter.policy",	  "DELETE FROM keycenter.key_version",
			"DELETE FROM keycenter.key",	  "DELETE FROM keycenter.kek",
			"DELETE FROM keycenter.alert",	  "DELETE FROM keycenter.audit_checkpoint",
			"DELETE FROM keycenter.audit",	  "DELETE FROM keycenter.meta"};
		for (size_t i = 0; i < sizeof(wipe) / sizeof(wipe[0]); i++)
			if ((err = mica_db_exec(db, wipe[i], 0, NULL, NULL)) != 0)
				return err;
	}
	if ((err = kc_kek_handle(t->s, "keycenter", &kek)) != 0)
		return err;
	if ((err = mica_random(mac_key, sizeof(mac_key))) != 0)
		goto out;
	err = kc_hsm_seal(t->s->hsm, kek, KC_AUDIT_MAC_AAD, sizeof(KC_AUDIT_MAC_AAD) - 1, mac_key,
			  sizeof(mac_key), &sealed, &sl);
	if (err)
		goto out;
	err = MICA_ENOMEM;
	if (!(hex = malloc(sl * 2 + 1)) || mica_hex_encode(sealed, sl, hex, sl * 2 + 1) != 0)
		goto out;
	snprintf(ver, sizeof(ver), "%d", t->policy_version);
	const char *p[4] = {t->root_pem, t->audit_pem, hex, t->policy};
	err = mica_db_exec(
		db,
		"INSERT INTO keycenter.meta (name, value) VALUES"
		" ('root_public_pem', $1), ('audit_public_pem', $2), ('audit_mac_key', $3)",
		3, p, NULL);
	if (err)
		goto out;
	const char *q[2] = {ver, t->policy};
	err = mica_db_exec(db,
			   "INSERT INTO keycenter.policy (version, document, active)"
			   " VALUES ($1, $2::jsonb, true)",
			   2, q, NULL);
out:
	mica_wipe(mac_key, sizeof(mac_key));
	free(sealed);
	free(hex);
	return err;
}

static int parse_args(int argc, char **argv, struct init_args *a)
{
	static const struct option opts[] = {{"db", required_argument, NULL, 'd'},
					     {"hsm-module", required_argument, NULL, 'm'},
					     {"token-label", required_argument, NULL, 'l'},
					     {"pin-file", required_argument, NULL, 'p'},
					     {"policy", required_argument, NULL, 'P'},
					     {"force", no_argument, NULL, 'f'},
					     {"audit-pubkey-out", required_argument, NULL, 'o'},
					     {"shares", required_argument, NULL, 'n'},
					     {"threshold", required_argument, NULL, 'k'},
					     {"so-pin-file", required_argument, NULL, 's'},
					     {NULL, 0, NULL, 0}};
	int64_t v;
	int c;
	a->db = getenv("MICA_DB_CONNINFO");
	a->module = getenv("MICA_HSM_MODULE");
	a->label = getenv("MICA_HSM_TOKEN_LABEL");
	a->pin_file = getenv("MICA_HSM_PIN_FILE");
	a->so_pin_file = getenv("MICA_HSM_SO_PIN_FILE");
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			a->db = optarg;
			break;
		case 'm':
			a->module = optarg;
			break;
		case 'l':
			a->label = optarg;
			break;
		case 'p':
			a->pin_file = optarg;
			break;
		case 'P':
			a->policy_file = optarg;
			break;
		case 'f':
			a->force = 1;
			break;
		case 'o':
			a->pubkey_out = optarg;
			break;
		case 'n':
		case 'k':
			/* Strict: "abc" or "3x" is refused, never read as 0 or 3. */
			if (mica_cli_int("mica keycenter init",
					 c == 'n' ? "--shares" : "--threshold", optarg, 2,
					 KC_SHARES_MAX, &v) != 0)
				return -1;
			*(c == 'n' ? &a->shares : &a->threshold) = (int)v;
			break;
		case 's':
			a->so_pin_file = optarg;
			break;
		default:
			return -1;
		}
	}
	if (optind != argc || !a->db || !a->module || !a->label || !a->pin_file)
		return -1;
	if ((a->shares || a->threshold) &&
	    (a->shares < 2 || a->shares > KC_SHARES_MAX || a->threshold < 2 ||
	     a->threshold > a->shares || !a->so_pin_file)) {
		fprintf(stderr,
			"mica keycenter init: --shares N (2..%d) needs --threshold K (2..N) "
			"and --so-pin-file (the SO PIN would still open the token)\n",
			KC_SHARES_MAX);
		return -1;
	}
	return 0;
}

/* A PIN file's content without trailing CR/LF, into |pin| (|cap| bytes).
 * Returns its length, or 0 if unreadable, empty or too long. */
static size_t read_pin_file(const char *path, char *pin, size_t cap)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;
	if (!f)
		return 0;
	n = fread(pin, 1, cap - 1, f);
	if (!feof(f))
		n = 0;
	fclose(f);
	while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
		n--;
	pin[n] = '\0';
	return n;
}

/* The end of `init --shares`: a fresh secret, the token's PINs changed to
 * the ones it gives, and its shares printed (once; they exist nowhere
 * else). Returns 0 or 1. */
static int split_and_rekey(kc_hsm *h, const struct init_args *a)
{
	uint8_t secret[KC_SHARE_SECRET_LEN];
	char texts[KC_SHARES_MAX][KC_SHARE_TEXT_LEN + 1];
	char old_user[260], old_so[260], user_pin[KC_SHARE_PIN_LEN + 1],
		so_pin[KC_SHARE_PIN_LEN + 1];
	size_t ou, os;
	bool user_changed = false;
	int err, rc = 1;

	ou = read_pin_file(a->pin_file, old_user, sizeof(old_user));
	os = read_pin_file(a->so_pin_file, old_so, sizeof(old_so));
	if (!ou || !os) {
		fprintf(stderr, "mica keycenter init: cannot read %s\n",
			!ou ? a->pin_file : a->so_pin_file);
		goto out;
	}
	if ((err = mica_random(secret, sizeof(secret))) != 0 ||
	    (err = kc_shares_split(secret, (unsigned)a->shares, (unsigned)a->threshold, texts)) !=
		    0 ||
	    (err = kc_shares_pins(secret, user_pin, so_pin)) != 0) {
		fprintf(stderr, "mica keycenter init: splitting the unseal secret: %s\n",
			mica_errmsg(err));
		goto out;
	}
	err = kc_hsm_change_pins(h, old_user, ou, user_pin, KC_SHARE_PIN_LEN, old_so, os, so_pin,
				 KC_SHARE_PIN_LEN, &user_changed);
	if (err && !user_changed) {
		fprintf(stderr,
			"mica keycenter init: the token's PINs were not changed (%s); no shares "
			"were made\n",
			mica_errmsg(err));
		goto out;
	}
	/* Once the user PIN changed, the shares are the only way in: print
	 * them even if the SO PIN could not be changed. */
	printf("Unseal shares: any %d of these %d open the Key Center; fewer reveal nothing.\n"
	       "Give one to each security officer now; they are not stored anywhere:\n",
	       a->threshold, a->shares);
	for (int i = 0; i < a->shares; i++)
		printf("  share %d: %s\n", i + 1, texts[i]);
	if (err) {
		fprintf(stderr,
			"mica keycenter init: the user PIN was changed but the SO PIN was not "
			"(%s): the SO PIN file can still reset the user PIN; change it by hand.\n",
			mica_errmsg(err));
		goto out;
	}
	printf("The token's user and SO PINs are now derived from these shares: %s and %s no "
	       "longer open it.\nRun mica-keycenter with keycenter.hsm.unseal = shares and an "
	       "empty pin_file.\n",
	       a->pin_file, a->so_pin_file);
	rc = 0;
out:
	mica_wipe(secret, sizeof(secret));
	mica_wipe(texts, sizeof(texts));
	mica_wipe(old_user, sizeof(old_user));
	mica_wipe(old_so, sizeof(old_so));
	mica_wipe(user_pin, sizeof(user_pin));
	mica_wipe(so_pin, sizeof(so_pin));
	return rc;
}

static int init_command(int argc, char **argv)
{
	struct init_args a = {0};
	kc_service s = {0};
	kc_policy *policy = NULL;
	char *policy_text = NULL, *root_pem = NULL, *audit_pem = NULL, msg[256];
	int err, rc = 1;

	if (parse_args(argc, argv, &a) != 0 || !a.policy_file) {
		fputs(usage, stderr);
		return MICA_EXIT_USAGE;
	}
	if (!(policy_text = slurp(a.policy_file, 1 << 20))) {
		fprintf(stderr, "mica keycenter init: cannot read %s\n", a.policy_file);
		goto out;
	}
	if (kc_policy_parse(policy_text, strlen(policy_text), &policy, msg, sizeof(msg)) != 0) {
		fprintf(stderr, "mica keycenter init: %s: %s\n", a.policy_file, msg);
		goto out;
	}
	if (mica_db_global_init(a.db) != 0 || kc_keys_init(&s) != 0)
		goto out;
	if ((err = kc_hsm_open(&s.hsm, a.module, a.label, a.pin_file)) != 0) {
		fprintf(stderr, "mica keycenter init: token %s: %s\n", a.label, mica_errmsg(err));
		goto out;
	}
	if ((err = kc_hsm_init_keys(s.hsm, a.force)) == MICA_EEXISTS) {
		fprintf(stderr,
			"mica keycenter init: token %s is already initialised; --force "
			"destroys its keys and all Key Center state\n",
			a.label);
		goto out;
	}
	if (err || (err = kc_hsm_public_pem(s.hsm, KC_HSM_ROOT_LABEL, &root_pem)) != 0 ||
	    (err = kc_hsm_public_pem(s.hsm, KC_HSM_AUDIT_LABEL, &audit_pem)) != 0) {
		fprintf(stderr, "mica keycenter init: key generation failed: %s\n",
			mica_errmsg(err));
		goto out;
	}
	struct state_tx t = {.s = &s,
			     .force = a.force,
			     .root_pem = root_pem,
			     .audit_pem = audit_pem,
			     .policy = policy_text,
			     .policy_version = kc_policy_version(policy)};
	if ((err = mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, store_tx, &t)) != 0) {
		fprintf(stderr,
			"mica keycenter init: storing the Key Center state failed: %s (%s)\n",
			mica_errmsg(err), mica_db_errmsg(mica_db_thread()));
		goto out;
	}
	if (a.pubkey_out) {
		FILE *f = fopen(a.pubkey_out, "w");
		if (!f || fputs(audit_pem, f) < 0 || fclose(f) != 0) {
			fprintf(stderr, "mica keycenter init: cannot write %s\n", a.pubkey_out);
			goto out;
		}
	}
	printf("Key Center initialised on token %s.\n"
	       "Root key (RSA-4096, generated in the HSM, never extractable):\n%s"
	       "Audit checkpoint key (ECDSA P-256, in the HSM; give this to auditors):\n%s"
	       "Policy version %d is active.\n",
	       a.label, root_pem, audit_pem, kc_policy_version(policy));
	fflush(stdout);
	/* The KEK handles die with the sessions; drop them before the PINs
	 * change (the user logs out and back in). */
	kc_keks_drop(&s);
	rc = a.shares ? split_and_rekey(s.hsm, &a) : 0;
out:
	kc_policy_unref(policy);
	free(policy_text);
	free(root_pem);
	free(audit_pem);
	kc_keys_cleanup(&s);
	kc_hsm_close(s.hsm);
	mica_db_global_cleanup();
	return rc;
}

/* ---- unseal, seal-status --------------------------------------------------- */

struct client_args {
	const char *url, *ca, *cert, *key;
};

static int parse_client(int argc, char **argv, struct client_args *a)
{
	static const struct option opts[] = {{"url", required_argument, NULL, 'u'},
					     {"ca-file", required_argument, NULL, 'c'},
					     {"cert-file", required_argument, NULL, 'C'},
					     {"key-file", required_argument, NULL, 'K'},
					     {NULL, 0, NULL, 0}};
	int c;
	a->url = getenv("MICA_KEYCENTER_URL");
	a->ca = getenv("MICA_KEYCENTER_CA_FILE");
	a->cert = getenv("MICA_KEYCENTER_CERT_FILE");
	a->key = getenv("MICA_KEYCENTER_KEY_FILE");
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'u':
			a->url = optarg;
			break;
		case 'c':
			a->ca = optarg;
			break;
		case 'C':
			a->cert = optarg;
			break;
		case 'K':
			a->key = optarg;
			break;
		default:
			return -1;
		}
	}
	return optind == argc && a->url && a->ca && a->cert && a->key ? 0 : -1;
}

/* One line from standard input, without echo when it is a terminal. */
static int read_share(char *buf, size_t cap)
{
	struct termios old, quiet;
	int tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	char *got;

	if (tty) {
		fputs("share (not echoed): ", stderr);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	got = fgets(buf, (int)cap, stdin);
	if (tty) {
		(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	return got ? 0 : -1;
}

/* Sends |req| (may be NULL: GET) to |path|; prints the answer. Exit code. */
static int call_keycenter(const struct client_args *a, const char *path, json_t *req)
{
	mica_httpc_options o = {.ca_file = a->ca, .cert_file = a->cert, .key_file = a->key};
	mica_httpc *c = NULL;
	json_t *resp = NULL;
	long status = 0;
	char url[2048];
	int err, rc = 1;

	snprintf(url, sizeof(url), "%s%s", a->url, path);
	if ((err = mica_httpc_new(&c, &o)) != 0 ||
	    (err = mica_httpc_json(c, req ? "POST" : "GET", url, req, req == NULL, &status,
				   &resp)) != 0) {
		fprintf(stderr, "mica keycenter: %s: %s\n", url, mica_errmsg(err));
		goto out;
	}
	if (status == 200 || status == 202) {
		char *text = json_dumps(resp, JSON_SORT_KEYS);
		printf("%s\n", text ? text : "{}");
		free(text);
		rc = 0;
	} else {
		json_t *e = json_object_get(resp, "error");
		fprintf(stderr, "mica keycenter: %ld %s: %s\n", status,
			json_string_value(json_object_get(e, "code")) ?: "?",
			json_string_value(json_object_get(e, "message")) ?: "");
	}
out:
	json_decref(resp);
	mica_httpc_free(c);
	return rc;
}

static int unseal_command(int argc, char **argv)
{
	struct client_args a;
	char share[512];
	json_t *req;
	int rc;

	if (parse_client(argc, argv, &a) != 0) {
		fputs(usage, stderr);
		return MICA_EXIT_USAGE;
	}
	if (read_share(share, sizeof(share)) != 0) {
		fprintf(stderr, "mica keycenter unseal: no share on standard input\n");
		return 1;
	}
	req = json_pack("{s:s}", "share", share);
	mica_wipe(share, sizeof(share));
	rc = req ? call_keycenter(&a, "/v1/sys/unseal", req) : 1;
	if (req) {
		/* The JSON string held the share: wipe it before freeing. */
		json_t *v = json_object_get(req, "share");
		const char *t = json_string_value(v);
		if (t)
			mica_wipe((char *)t, strlen(t));
		json_decref(req);
	}
	return rc;
}

static int status_command(int argc, char **argv)
{
	struct client_args a;
	if (parse_client(argc, argv, &a) != 0) {
		fputs(usage, stderr);
		return MICA_EXIT_USAGE;
	}
	return call_keycenter(&a, "/v1/sys/seal-status", NULL);
}

/* ---- migrate-root ------------------------------------------------------------ */

struct commit_ctx {
	PGresult *rows;
	const uint8_t *const *blobs;
	size_t n;
};

static int commit_tx(mica_db *db, void *arg)
{
	struct commit_ctx *c = arg;
	int err = 0;
	for (size_t i = 0; i < c->n && !err; i++) {
		char *hex = mica_db_bytea_encode(c->blobs[i], KC_HSM_KEK_BLOB_LEN);
		if (!hex)
			return MICA_ENOMEM;
		const char *p[2] = {mica_db_get(c->rows, (int)i, 0), hex};
		err = mica_db_exec(db, "UPDATE keycenter.kek SET wrapped = $2 WHERE service = $1",
				   2, p, NULL);
		free(hex);
	}
	return err;
}

static int commit_blobs(const uint8_t *const *blobs, size_t n, void *arg)
{
	struct commit_ctx c = {.rows = arg, .blobs = blobs, .n = n};
	return mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, commit_tx, &c);
}

static int migrate_command(int argc, char **argv)
{
	struct init_args a = {0};
	kc_hsm *h = NULL;
	PGresult *rows = NULL;
	uint8_t **blobs = NULL;
	size_t n = 0;
	char *pem = NULL;
	int err, rc = 1;

	if (parse_args(argc, argv, &a) != 0 || a.policy_file || a.shares) {
		fputs(usage, stderr);
		return MICA_EXIT_USAGE;
	}
	if (mica_db_global_init(a.db) != 0)
		goto out;
	if ((err = kc_hsm_open(&h, a.module, a.label, a.pin_file)) != 0) {
		fprintf(stderr, "mica keycenter migrate-root: token %s: %s\n", a.label,
			mica_errmsg(err));
		goto out;
	}
	if ((err = mica_db_exec(mica_db_thread(),
				"SELECT service, wrapped FROM keycenter.kek ORDER BY service", 0,
				NULL, &rows)) != 0)
		goto db_fail;
	n = (size_t)PQntuples(rows);
	if (!(blobs = calloc(n ? n : 1, sizeof(*blobs))))
		goto out;
	for (size_t i = 0; i < n; i++) {
		size_t len = 0;
		if ((err = mica_db_get_bytea(rows, (int)i, 1, &blobs[i], &len)) != 0)
			goto db_fail;
		if (len != KC_HSM_KEK_BLOB_LEN) {
			fprintf(stderr, "mica keycenter migrate-root: the KEK of %s is %zu bytes\n",
				mica_db_get(rows, (int)i, 0), len);
			goto out;
		}
	}
	err = kc_hsm_root_migrate(h, (const uint8_t *const *)blobs, n, commit_blobs, rows);
	if (err == MICA_EEXISTS) {
		printf("The root key on token %s already has an enforced unwrap template; nothing to "
		       "do.\n",
		       a.label);
		rc = 0;
		goto out;
	}
	if (err) {
		fprintf(stderr,
			"mica keycenter migrate-root: %s (nothing was changed unless the log "
			"says otherwise; run it again)\n",
			mica_errmsg(err));
		goto out;
	}
	if ((err = kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem)) != 0)
		goto out;
	const char *p[1] = {pem};
	if ((err = mica_db_exec(
		     mica_db_thread(),
		     "UPDATE keycenter.meta SET value = $1 WHERE name = 'root_public_pem'", 1, p,
		     NULL)) != 0)
		goto db_fail;
	printf("Moved %zu KEKs to a new root key with an enforced unwrap template.\nNew root key "
	       "(RSA-4096, generated in the HSM, never extractable):\n%s",
	       n, pem);
	rc = 0;
	goto out;
db_fail:
	fprintf(stderr, "mica keycenter migrate-root: database: %s (%s)\n", mica_errmsg(err),
		mica_db_errmsg(mica_db_thread()));
out:
	for (size_t i = 0; blobs && i < n; i++)
		free(blobs[i]);
	free(blobs);
	free(pem);
	PQclear(rows);
	kc_hsm_close(h);
	mica_db_global_cleanup();
	return rc;
}

static void print_usage(FILE *f)
{
	fputs(usage, f);
}

int kc_command(int argc, char **argv)
{
	static const mica_cli_verb verbs[] = {{"init", init_command, NULL},
					      {"unseal", unseal_command, NULL},
					      {"seal-status", status_command, NULL},
					      {"migrate-root", migrate_command, NULL}};
	return mica_cli_run_verb("keycenter", verbs, sizeof(verbs) / sizeof(verbs[0]), print_usage,
				 argc, argv);
}
