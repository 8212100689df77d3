/* init.c - `mica keycenter init`: the one-time ceremony that makes a Key
 * Center. It logs in to the token found by label, generates the RSA-4096
 * root key and the audit signing key inside the HSM, prints their public
 * parts, creates the Key Center's own KEK, seals a fresh audit MAC key with
 * it, and stores policy version 1. It refuses an initialised token unless
 * --force is given, which destroys every key and all Key Center state. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "db.h"
#include "keycenter/keycenter.h"
#include "log.h"

static const char usage[] =
	"usage: mica keycenter init --policy FILE [--force] [--audit-pubkey-out FILE]\n"
	"                           [--db CONNINFO] [--hsm-module PATH] [--token-label LABEL]\n"
	"                           [--pin-file FILE]\n"
	"  Defaults come from MICA_DB_CONNINFO, MICA_HSM_MODULE, MICA_HSM_TOKEN_LABEL and\n"
	"  MICA_HSM_PIN_FILE. --db is an administrator's conninfo (it writes keycenter.meta).\n";

struct init_args {
	const char *db, *module, *label, *pin_file, *policy_file, *pubkey_out;
	int force;
};

static char *slurp(const char *path, size_t max)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;
	if (!f)
		return NULL;
	if ((buf = malloc(max + 1)) != NULL) {
		n = fread(buf, 1, max, f);
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
			"DELETE FROM keycenter.policy",   "DELETE FROM keycenter.key_version",
			"DELETE FROM keycenter.key",      "DELETE FROM keycenter.kek",
			"DELETE FROM keycenter.alert",    "DELETE FROM keycenter.audit_checkpoint",
			"DELETE FROM keycenter.audit",    "DELETE FROM keycenter.meta"};
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
	err = mica_db_exec(db,
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
	static const struct option opts[] = {
		{"db", required_argument, NULL, 'd'},         {"hsm-module", required_argument, NULL, 'm'},
		{"token-label", required_argument, NULL, 'l'}, {"pin-file", required_argument, NULL, 'p'},
		{"policy", required_argument, NULL, 'P'},      {"force", no_argument, NULL, 'f'},
		{"audit-pubkey-out", required_argument, NULL, 'o'}, {NULL, 0, NULL, 0}};
	int c;
	a->db = getenv("MICA_DB_CONNINFO");
	a->module = getenv("MICA_HSM_MODULE");
	a->label = getenv("MICA_HSM_TOKEN_LABEL");
	a->pin_file = getenv("MICA_HSM_PIN_FILE");
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': a->db = optarg; break;
		case 'm': a->module = optarg; break;
		case 'l': a->label = optarg; break;
		case 'p': a->pin_file = optarg; break;
		case 'P': a->policy_file = optarg; break;
		case 'f': a->force = 1; break;
		case 'o': a->pubkey_out = optarg; break;
		default: return -1;
		}
	}
	if (optind != argc || !a->db || !a->module || !a->label || !a->pin_file || !a->policy_file)
		return -1;
	return 0;
}

int kc_init_command(int argc, char **argv)
{
	struct init_args a = {0};
	kc_service s = {0};
	kc_policy *policy = NULL;
	char *policy_text = NULL, *root_pem = NULL, *audit_pem = NULL, msg[256];
	int err, rc = 1;

	if (argc < 2 || strcmp(argv[1], "init") != 0 || parse_args(argc - 1, argv + 1, &a) != 0) {
		fputs(usage, stderr);
		return 64; /* EX_USAGE, as every mica subcommand */
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
		fprintf(stderr, "mica keycenter init: token %s is already initialised; --force "
				"destroys its keys and all Key Center state\n",
			a.label);
		goto out;
	}
	if (err || (err = kc_hsm_public_pem(s.hsm, KC_HSM_ROOT_LABEL, &root_pem)) != 0 ||
	    (err = kc_hsm_public_pem(s.hsm, KC_HSM_AUDIT_LABEL, &audit_pem)) != 0) {
		fprintf(stderr, "mica keycenter init: key generation failed: %s\n", mica_errmsg(err));
		goto out;
	}
	struct state_tx t = {.s = &s,
			     .force = a.force,
			     .root_pem = root_pem,
			     .audit_pem = audit_pem,
			     .policy = policy_text,
			     .policy_version = kc_policy_version(policy)};
	if ((err = mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, store_tx, &t)) != 0) {
		fprintf(stderr, "mica keycenter init: storing the Key Center state failed: %s (%s)\n",
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
	rc = 0;
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
