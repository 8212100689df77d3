/* config.c - loads a program's configuration table from defaults, an INI
 * file (libinih) and MICA_<SECTION>_<KEY> environment overrides, then
 * validates it (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "log.h"
#include "parse.h"

struct load_ctx {
	const mica_config_entry *table;
	size_t n;
	void *base;
	unsigned char *seen; /* per entry: value given by file or env */
	char *err;
	size_t errlen;
	int failed;
};

static void set_err(struct load_ctx *lc, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_err(struct load_ctx *lc, const char *fmt, ...)
{
	va_list ap;
	if (lc->failed)
		return;
	lc->failed = 1;
	va_start(ap, fmt);
	vsnprintf(lc->err, lc->errlen, fmt, ap);
	va_end(ap);
}

static void *field(const struct load_ctx *lc, const mica_config_entry *e)
{
	return (char *)lc->base + e->offset;
}

static void wipe_free(char *s)
{
	mica_free_wipe(s);
}

/* A decimal integer (mica_parse_int64's syntax) with, when |allow_suffix|,
 * an optional K, M or G (binary multiples) on a non-negative value. */
static int parse_ll(const char *v, long long *out, int allow_suffix)
{
	char digits[24];
	size_t n = strlen(v);
	int shift = 0;
	int64_t x;
	if (allow_suffix && n > 0) {
		switch (toupper((unsigned char)v[n - 1])) {
		case 'K':
			shift = 10;
			break;
		case 'M':
			shift = 20;
			break;
		case 'G':
			shift = 30;
			break;
		}
		n -= shift ? 1 : 0;
	}
	if (n >= sizeof(digits))
		return -1;
	memcpy(digits, v, n);
	digits[n] = '\0';
	if (mica_parse_int64(digits, shift ? 0 : INT64_MIN,
			     shift ? (1LL << (62 - shift)) : INT64_MAX, &x) != 0)
		return -1;
	*out = (long long)(x * ((int64_t)1 << shift));
	return 0;
}

static int parse_bool(const char *v, int *out)
{
	static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0)
			return *out = 1, 0;
		if (strcasecmp(v, no[i]) == 0)
			return *out = 0, 0;
	}
	return -1;
}

/* Reads a secret file whole; strips one trailing newline. */
static char *read_secret(const char *path, int *errnum)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;
	char chunk[256];
	*errnum = 0;
	if (!f) {
		*errnum = errno;
		return NULL;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		if (len + n + 1 > cap) {
			size_t ncap = (len + n + 1) * 2;
			char *g = malloc(ncap);
			if (!g || ncap > (1 << 20)) {
				free(g);
				wipe_free(buf);
				buf = NULL;
				*errnum = g ? EFBIG : ENOMEM;
				goto out;
			}
			if (buf) {
				memcpy(g, buf, len);
				mica_free_wipe(buf);
			}
			buf = g;
			cap = ncap;
		}
		memcpy(buf + len, chunk, n);
		len += n;
	}
	if (!buf && !(buf = calloc(1, 1)))
		*errnum = ENOMEM;
	else
		buf[len] = '\0';
	if (buf && len && buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (buf && len && buf[len - 1] == '\r')
		buf[--len] = '\0';
out:
	mica_wipe(chunk, sizeof(chunk));
	fclose(f);
	return buf;
}

/* Converts |v| for entry |e| and stores it. |secret_now| reads secret files
 * (done in the validation pass, after every override is known). */
static void assign(struct load_ctx *lc, const mica_config_entry *e, const char *v)
{
	void *f = field(lc, e);
	long long x;
	int b;

	switch (e->type) {
	case MICA_CFG_STRING:
	case MICA_CFG_SECRET: {
		size_t l = strlen(v);
		if ((long long)l < e->min || (long long)l > e->max) {
			set_err(lc, "%s.%s: length %zu is out of range %lld..%lld", e->section,
				e->key, l, e->min, e->max);
			return;
		}
		char *copy = strdup(v);
		if (!copy) {
			set_err(lc, "%s.%s: out of memory", e->section, e->key);
			return;
		}
		free(*(char **)f);
		*(char **)f = copy;
		return;
	}
	case MICA_CFG_INT:
	case MICA_CFG_SIZE:
		if (parse_ll(v, &x, e->type == MICA_CFG_SIZE) != 0) {
			set_err(lc, "%s.%s: \"%s\" is not a%s number", e->section, e->key, v,
				e->type == MICA_CFG_SIZE ? " size" : "n integer");
			return;
		}
		if (x < e->min || x > e->max) {
			set_err(lc, "%s.%s: %lld is out of range %lld..%lld", e->section, e->key, x,
				e->min, e->max);
			return;
		}
		if (e->type == MICA_CFG_INT)
			*(int *)f = (int)x;
		else
			*(size_t *)f = (size_t)x;
		return;
	case MICA_CFG_BOOL:
		if (parse_bool(v, &b) != 0) {
			set_err(lc, "%s.%s: \"%s\" is not a boolean (true/false)", e->section,
				e->key, v);
			return;
		}
		*(int *)f = b;
		return;
	case MICA_CFG_LOGLEVEL:
		if ((b = mica_log_level_parse(v)) < 0) {
			set_err(lc, "%s.%s: \"%s\" is not one of debug, info, warn, error, off",
				e->section, e->key, v);
			return;
		}
		*(int *)f = b;
		return;
	}
}

static const mica_config_entry *find(const struct load_ctx *lc, const char *section,
				     const char *key)
{
	for (size_t i = 0; i < lc->n; i++)
		if (strcmp(lc->table[i].section, section) == 0 &&
		    strcmp(lc->table[i].key, key) == 0)
			return &lc->table[i];
	return NULL;
}

static int section_known(const struct load_ctx *lc, const char *section)
{
	for (size_t i = 0; i < lc->n; i++)
		if (strcmp(lc->table[i].section, section) == 0)
			return 1;
	return 0;
}

static int on_ini(void *user, const char *section, const char *key, const char *value)
{
	struct load_ctx *lc = user;
	const mica_config_entry *e = find(lc, section, key);
	if (!e) {
		if (!*section) {
			set_err(lc, "%s: key outside any section", key);
			return 0;
		}
		if (section_known(lc, section)) {
			set_err(lc, "%s.%s: unknown key", section, key);
			return 0;
		}
		/* "[program.area]" sections of other programs share the file. */
		if (strchr(section, '.'))
			return 1;
		set_err(lc, "[%s]: unknown section", section);
		return 0;
	}
	assign(lc, e, value);
	lc->seen[e - lc->table] = 1;
	return !lc->failed;
}

/* Appends |part| to the environment name in |out| (|*j| bytes so far), upper
 * case, every other character but letters and digits as '_'. */
static void env_put(char *out, size_t cap, size_t *j, const char *part)
{
	for (const char *c = part; *c && *j + 2 < cap; c++)
		out[(*j)++] = isalnum((unsigned char)*c) ? (char)toupper((unsigned char)*c) : '_';
	out[*j] = '\0';
}

/* "MICA_<SECTION>_": the start of every environment name of |section|. */
static size_t env_prefix(char *out, size_t cap, const char *section)
{
	size_t j = (size_t)snprintf(out, cap, "MICA_");
	env_put(out, cap, &j, section);
	env_put(out, cap, &j, "_");
	return j;
}

static void env_name(char *out, size_t cap, const mica_config_entry *e)
{
	size_t j = env_prefix(out, cap, e->section);
	env_put(out, cap, &j, e->key);
}

/* A MICA_ variable under one of this program's sections that names none of
 * its keys is a misspelt override: refused like an unknown key in the file,
 * instead of leaving the setting at a value the operator did not choose. */
static void check_env(struct load_ctx *lc)
{
	extern char **environ;
	char name[128];
	for (char **ev = environ; ev && *ev && !lc->failed; ev++) {
		size_t len = strcspn(*ev, "=");
		const char *owner = NULL;
		size_t owner_len = 0;
		int known = 0;
		if (strncmp(*ev, "MICA_", 5) != 0)
			continue;
		for (size_t i = 0; i < lc->n && !known; i++) {
			env_name(name, sizeof(name), &lc->table[i]);
			known = strlen(name) == len && strncmp(name, *ev, len) == 0;
			size_t plen = env_prefix(name, sizeof(name), lc->table[i].section);
			if (plen < len && plen > owner_len && strncmp(name, *ev, plen) == 0) {
				owner = lc->table[i].section;
				owner_len = plen;
			}
		}
		if (!known && owner)
			set_err(lc, "%.*s: [%s] has no key of this environment name", (int)len, *ev,
				owner);
	}
}

int mica_config_load(const mica_config_entry *table, size_t n, void *base, const char *path,
		     char *err, size_t errlen)
{
	struct load_ctx lc = {table, n, base, NULL, err, errlen, 0};
	char name[128];

	if (errlen)
		err[0] = '\0';
	if (!(lc.seen = calloc(n ? n : 1, 1))) {
		snprintf(err, errlen, "out of memory");
		return MICA_ENOMEM;
	}
	for (size_t i = 0; i < n && !lc.failed; i++)
		if (table[i].def && table[i].type != MICA_CFG_SECRET)
			assign(&lc, &table[i], table[i].def);
	if (path && !lc.failed) {
		int rc = ini_parse(path, on_ini, &lc);
		if (rc < 0)
			set_err(&lc, "cannot open config file %s", path);
		else if (rc > 0 && !lc.failed)
			set_err(&lc, "%s:%d: syntax error", path, rc);
		else if (rc > 0) {
			/* Prefix the key-naming message with its location. */
			char msg[512];
			snprintf(msg, sizeof(msg), "%s", err);
			snprintf(err, errlen, "%s (%s:%d)", msg, path, rc);
		}
	}
	for (size_t i = 0; i < n && !lc.failed; i++) {
		env_name(name, sizeof(name), &table[i]);
		const char *v = getenv(name);
		if (v) {
			assign(&lc, &table[i], v);
			lc.seen[i] = 1;
		}
	}
	if (!lc.failed)
		check_env(&lc);
	/* Validation pass: required keys, then secrets read from their files. */
	for (size_t i = 0; i < n && !lc.failed; i++) {
		const mica_config_entry *e = &table[i];
		void *f = field(&lc, e);
		if (e->type == MICA_CFG_SECRET) {
			const char *p = lc.seen[i] ? *(char **)f : e->def;
			int errnum;
			if (!p || !*p) {
				if (!e->def)
					set_err(&lc, "%s.%s: required secret file is not set",
						e->section, e->key);
				continue;
			}
			char *pathcopy = strdup(p);
			char *secret = pathcopy ? read_secret(pathcopy, &errnum) : NULL;
			if (!secret)
				set_err(&lc, "%s.%s: cannot read secret file %s: %s", e->section,
					e->key, pathcopy ? pathcopy : "?",
					strerror(pathcopy ? errnum : ENOMEM));
			free(pathcopy);
			free(*(char **)f);
			*(char **)f = secret;
		} else if (!e->def && !lc.seen[i]) {
			set_err(&lc, "%s.%s: required key is missing", e->section, e->key);
		}
	}
	free(lc.seen);
	return lc.failed ? MICA_ECONFIG : 0;
}

void mica_config_free(const mica_config_entry *table, size_t n, void *base)
{
	for (size_t i = 0; i < n; i++) {
		char **f = (char **)((char *)base + table[i].offset);
		if (table[i].type == MICA_CFG_STRING) {
			free(*f);
			*f = NULL;
		} else if (table[i].type == MICA_CFG_SECRET) {
			wipe_free(*f);
			*f = NULL;
		}
	}
}

void mica_config_write_example(FILE *out, const mica_config_entry *table, size_t n)
{
	const char *section = NULL;
	for (size_t i = 0; i < n; i++) {
		const mica_config_entry *e = &table[i];
		if (!section || strcmp(section, e->section) != 0) {
			fprintf(out, "%s[%s]\n", section ? "\n" : "", e->section);
			section = e->section;
		}
		fprintf(out, "; %s", e->help);
		if (e->type == MICA_CFG_INT || e->type == MICA_CFG_SIZE)
			fprintf(out, " (%lld..%lld)", e->min, e->max);
		fprintf(out, "%s\n", e->def ? "" : " [required]");
		fprintf(out, ";%s = %s\n", e->key, e->def ? e->def : "");
	}
}

/* |path| opens for reading; else a message naming the key. */
static int check_readable(const char *section, const char *key, const char *path, char *err,
			  size_t errlen)
{
	FILE *f;
	if (!path || !*path) {
		snprintf(err, errlen, "%s.%s: not set", section, key);
		return MICA_ECONFIG;
	}
	if (!(f = fopen(path, "rb"))) {
		snprintf(err, errlen, "%s.%s: cannot read %s: %s", section, key, path,
			 strerror(errno));
		return MICA_ECONFIG;
	}
	fclose(f);
	return 0;
}

int mica_config_check_ca(const char *section, const char *key, const char *path, char *err,
			 size_t errlen)
{
	gnutls_certificate_credentials_t cred = NULL;
	int n, rc = check_readable(section, key, path, err, errlen);
	if (rc)
		return rc;
	if (gnutls_certificate_allocate_credentials(&cred) < 0) {
		snprintf(err, errlen, "%s.%s: out of memory", section, key);
		return MICA_ENOMEM;
	}
	n = gnutls_certificate_set_x509_trust_file(cred, path, GNUTLS_X509_FMT_PEM);
	gnutls_certificate_free_credentials(cred);
	if (n <= 0) {
		snprintf(err, errlen, "%s.%s: %s holds no PEM certificate that parses%s%s", section,
			 key, path, n < 0 ? ": " : "", n < 0 ? gnutls_strerror(n) : "");
		return MICA_ECONFIG;
	}
	return 0;
}

int mica_config_check_cert_key(const char *section, const char *cert_key, const char *cert,
			       const char *key_key, const char *key, char *err, size_t errlen)
{
	gnutls_certificate_credentials_t cred = NULL;
	int rc = check_readable(section, cert_key, cert, err, errlen);
	if (!rc)
		rc = check_readable(section, key_key, key, err, errlen);
	if (rc)
		return rc;
	if (gnutls_certificate_allocate_credentials(&cred) < 0) {
		snprintf(err, errlen, "%s.%s: out of memory", section, cert_key);
		return MICA_ENOMEM;
	}
	rc = gnutls_certificate_set_x509_key_file(cred, cert, key, GNUTLS_X509_FMT_PEM);
	gnutls_certificate_free_credentials(cred);
	if (rc < 0) {
		snprintf(err, errlen,
			 "%s.%s, %s.%s: %s and %s are not a PEM certificate and its key: %s",
			 section, cert_key, section, key_key, cert, key, gnutls_strerror(rc));
		return MICA_ECONFIG;
	}
	return 0;
}
