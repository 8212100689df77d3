/* password.c - password policies (miui, nist), the breached-password
 * blocklist read one HIBP range file at a time, and Argon2id hashing in PHC
 * form with a strict PHC parser, computed on per-CPU hasher threads. The
 * rules and their order are documented in password.h; this file only
 * implements them.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include "account/password.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <argon2.h>
#include <openssl/evp.h>

#include "crypto.h"

const acct_argon2_params acct_argon2_defaults = {
	.m_kib = ACCT_ARGON2_DEFAULT_M_KIB,
	.t = ACCT_ARGON2_DEFAULT_T,
	.p = ACCT_ARGON2_DEFAULT_P,
};

/* ---- Policy check ------------------------------------------------------- */

static const char *const reason_codes[] = {
	[ACCT_PASSWORD_OK] = "ok",
	[ACCT_PASSWORD_TOO_SHORT] = "too_short",
	[ACCT_PASSWORD_TOO_LONG] = "too_long",
	[ACCT_PASSWORD_TOO_FEW_CLASSES] = "too_few_classes",
	[ACCT_PASSWORD_INVALID_CHARACTERS] = "invalid_characters",
	[ACCT_PASSWORD_BREACHED] = "breached",
	[ACCT_PASSWORD_UNKNOWN_POLICY] = "unknown_policy",
	[ACCT_PASSWORD_BAD_ARGUMENT] = "invalid_argument",
	[ACCT_PASSWORD_CHECK_FAILED] = "check_failed", /* replaced by the error's code */
};

__attribute__((format(printf, 3, 4))) static int
reject(struct acct_password_verdict *v, enum acct_password_reason reason, const char *fmt, ...)
{
	va_list ap;

	v->reason = reason;
	v->code = reason_codes[reason];
	va_start(ap, fmt);
	vsnprintf(v->message, sizeof(v->message), fmt, ap);
	va_end(ap);
	return MICA_EINVAL;
}

static int check_failed(struct acct_password_verdict *v, int err)
{
	v->reason = ACCT_PASSWORD_CHECK_FAILED;
	v->code = mica_strerror(err);
	snprintf(v->message, sizeof(v->message), "the password could not be checked: %s",
		 mica_errmsg(err));
	return err;
}

enum { CLASS_DIGIT = 1, CLASS_LETTER = 2, CLASS_SYMBOL = 4 };

static int check_miui(const char *password, struct acct_password_verdict *v)
{
	unsigned classes = 0, nclasses = 0;
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)password; *p; p++, n++) {
		unsigned char c = *p;

		if (c < 0x21 || c > 0x7e)
			return reject(v, ACCT_PASSWORD_INVALID_CHARACTERS,
				      "password may contain only visible ASCII letters, digits and "
				      "symbols (no spaces)");
		if (c >= '0' && c <= '9')
			classes |= CLASS_DIGIT;
		else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
			classes |= CLASS_LETTER;
		else
			classes |= CLASS_SYMBOL;
	}
	if (n < ACCT_PASSWORD_MIUI_MIN)
		return reject(v, ACCT_PASSWORD_TOO_SHORT, "password must be at least %d characters",
			      ACCT_PASSWORD_MIUI_MIN);
	if (n > ACCT_PASSWORD_MIUI_MAX)
		return reject(v, ACCT_PASSWORD_TOO_LONG, "password must be at most %d characters",
			      ACCT_PASSWORD_MIUI_MAX);
	for (unsigned c = classes; c; c &= c - 1)
		nclasses++;
	if (nclasses < ACCT_PASSWORD_MIUI_MIN_CLASSES)
		return reject(v, ACCT_PASSWORD_TOO_FEW_CLASSES,
			      "password must mix at least two of: digits, letters, symbols");
	return 0;
}

/* Decode one code point of strict UTF-8 at |s| (NUL-terminated) into *cp.
 * Returns its length in bytes, or 0 for an invalid sequence (overlong form,
 * surrogate, above U+10FFFF, stray or missing continuation byte). A NUL is
 * never a continuation byte, so this never reads past the terminator. */
static size_t utf8_next(const unsigned char *s, uint32_t *cp)
{
	unsigned char c = s[0];
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		if ((s[1] & 0xc0) != 0x80)
			return 0;
		*cp = ((uint32_t)(c & 0x1f) << 6) | (s[1] & 0x3f);
		return 2;
	}
	if (c >= 0xe0 && c <= 0xef) {
		if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
			return 0;
		v = ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
		if (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))
			return 0;
		*cp = v;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
			return 0;
		v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
		    ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
		if (v < 0x10000 || v > 0x10ffff)
			return 0;
		*cp = v;
		return 4;
	}
	return 0;
}

static int check_nist(const char *password, acct_blocklist *bl, struct acct_password_verdict *v)
{
	const unsigned char *p = (const unsigned char *)password;
	size_t n = 0;
	uint64_t count = 0;
	int rc;

	while (*p) {
		uint32_t cp = 0;
		size_t len = utf8_next(p, &cp);

		if (len == 0)
			return reject(v, ACCT_PASSWORD_INVALID_CHARACTERS,
				      "password is not valid UTF-8 text");
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return reject(v, ACCT_PASSWORD_INVALID_CHARACTERS,
				      "password may not contain control characters");
		p += len;
		n++;
	}
	if (n < ACCT_PASSWORD_NIST_MIN)
		return reject(v, ACCT_PASSWORD_TOO_SHORT, "password must be at least %d characters",
			      ACCT_PASSWORD_NIST_MIN);
	if (n > ACCT_PASSWORD_NIST_MAX)
		return reject(v, ACCT_PASSWORD_TOO_LONG, "password must be at most %d characters",
			      ACCT_PASSWORD_NIST_MAX);
	if (!bl)
		return check_failed(v, MICA_ECONFIG);
	rc = acct_blocklist_contains(bl, password, &count);
	if (rc)
		return check_failed(v, rc);
	if (count > 0) {
		v->breach_count = count;
		return reject(v, ACCT_PASSWORD_BREACHED,
			      "this password has appeared in a data breach; choose another");
	}
	return 0;
}

bool acct_password_policy_known(const char *name)
{
	return name && (strcmp(name, "miui") == 0 || strcmp(name, "nist") == 0);
}

int acct_password_check(const char *policy_name, const char *password, acct_blocklist *bl,
			struct acct_password_verdict *v)
{
	if (!v)
		return MICA_EINVAL;
	memset(v, 0, sizeof(*v));
	v->code = reason_codes[ACCT_PASSWORD_OK];
	if (!policy_name)
		policy_name = ACCT_PASSWORD_POLICY_DEFAULT;
	if (!password)
		return reject(v, ACCT_PASSWORD_BAD_ARGUMENT, "no password given");
	if (strcmp(policy_name, "miui") == 0)
		return check_miui(password, v);
	if (strcmp(policy_name, "nist") == 0)
		return check_nist(password, bl, v);
	return reject(v, ACCT_PASSWORD_UNKNOWN_POLICY, "unknown password policy");
}

/* ---- Breached-password blocklist ---------------------------------------- */

struct acct_blocklist {
	int dirfd;
	_Atomic uint64_t malformed;
};

int acct_blocklist_open(const char *dir, acct_blocklist **out)
{
	acct_blocklist *bl;
	int fd;

	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!dir)
		return MICA_EINVAL;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return MICA_ENOTFOUND;
		return errno == ENOTDIR ? MICA_EINVAL : MICA_EIO;
	}
	bl = calloc(1, sizeof(*bl));
	if (!bl) {
		close(fd);
		return MICA_ENOMEM;
	}
	bl->dirfd = fd;
	atomic_init(&bl->malformed, 0);
	*out = bl;
	return 0;
}

void acct_blocklist_close(acct_blocklist *bl)
{
	if (!bl)
		return;
	close(bl->dirfd);
	free(bl);
}

uint64_t acct_blocklist_malformed_lines(acct_blocklist *bl)
{
	return bl ? atomic_load(&bl->malformed) : 0;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parse one line (without its line ending) as SUFFIX:COUNT. Returns false
 * when it is malformed. */
static bool parse_range_line(const char *line, size_t n, uint64_t *count)
{
	uint64_t v = 0;

	if (n < ACCT_BLOCKLIST_SUFFIX_LEN + 2 || line[ACCT_BLOCKLIST_SUFFIX_LEN] != ':')
		return false;
	for (size_t i = 0; i < ACCT_BLOCKLIST_SUFFIX_LEN; i++)
		if (hex_value((unsigned char)line[i]) < 0)
			return false;
	for (size_t i = ACCT_BLOCKLIST_SUFFIX_LEN + 1; i < n; i++) {
		unsigned d = (unsigned char)line[i] - '0';

		if (d > 9 || v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*count = v;
	return true;
}

static bool suffix_equal(const char *line, const char *suffix)
{
	for (size_t i = 0; i < ACCT_BLOCKLIST_SUFFIX_LEN; i++)
		if (hex_value((unsigned char)line[i]) != hex_value((unsigned char)suffix[i]))
			return false;
	return true;
}

void acct__blocklist_scan(const char *buf, size_t len, const char *suffix, uint64_t *count,
			  uint64_t *malformed)
{
	const char *p = buf, *end = buf + len;

	*count = 0;
	*malformed = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *stop = nl ? nl : end;
		uint64_t n = 0;

		if (stop > p && stop[-1] == '\r')
			stop--;
		if (!parse_range_line(p, (size_t)(stop - p), &n))
			(*malformed)++;
		else if (n > *count && suffix_equal(p, suffix))
			*count = n;
		p = nl ? nl + 1 : end;
	}
}

/* Read the whole regular file |fd| (at most ACCT_BLOCKLIST_FILE_MAX bytes). */
static int read_range_file(int fd, char **out, size_t *out_len)
{
	struct stat st;
	size_t cap, len = 0;
	char *buf;

	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		return MICA_EIO;
	if ((uint64_t)st.st_size > ACCT_BLOCKLIST_FILE_MAX)
		return MICA_ETOOBIG;
	/* One byte more than the limit, so a file that grew is noticed. */
	cap = (size_t)st.st_size + 1;
	buf = malloc(cap);
	if (!buf)
		return MICA_ENOMEM;
	for (;;) {
		ssize_t r = read(fd, buf + len, cap - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(buf);
			return MICA_EIO;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		if (len == cap) {
			char *bigger;

			if (cap > ACCT_BLOCKLIST_FILE_MAX) {
				free(buf);
				return MICA_ETOOBIG;
			}
			cap = cap * 2 > ACCT_BLOCKLIST_FILE_MAX + 1 ? ACCT_BLOCKLIST_FILE_MAX + 1
								    : cap * 2;
			bigger = realloc(buf, cap);
			if (!bigger) {
				free(buf);
				return MICA_ENOMEM;
			}
			buf = bigger;
		}
	}
	*out = buf;
	*out_len = len;
	return 0;
}

int acct_blocklist_contains(acct_blocklist *bl, const char *password, uint64_t *count)
{
	static const char upper_hex[] = "0123456789ABCDEF";
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned md_len = 0;
	char hex[ACCT_SHA1_HEX_LEN + 1], name[ACCT_BLOCKLIST_PREFIX_LEN + 1];
	char *buf = NULL;
	size_t len = 0;
	uint64_t malformed = 0;
	int fd = -1, rc;

	if (!count)
		return MICA_EINVAL;
	*count = 0;
	if (!bl || !password)
		return MICA_EINVAL;
	if (EVP_Digest(password, strlen(password), md, &md_len, EVP_sha1(), NULL) != 1 ||
	    md_len * 2 != ACCT_SHA1_HEX_LEN) {
		rc = MICA_ECRYPTO;
		goto out;
	}
	for (unsigned i = 0; i < md_len; i++) {
		hex[2 * i] = upper_hex[md[i] >> 4];
		hex[2 * i + 1] = upper_hex[md[i] & 0x0f];
	}
	hex[ACCT_SHA1_HEX_LEN] = '\0';
	memcpy(name, hex, ACCT_BLOCKLIST_PREFIX_LEN);
	name[ACCT_BLOCKLIST_PREFIX_LEN] = '\0';

	fd = openat(bl->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		/* No file for this prefix: no breached password has it. */
		rc = errno == ENOENT ? 0 : MICA_EIO;
		goto out;
	}
	rc = read_range_file(fd, &buf, &len);
	if (rc)
		goto out;
	acct__blocklist_scan(buf, len, hex + ACCT_BLOCKLIST_PREFIX_LEN, count, &malformed);
	if (malformed)
		atomic_fetch_add(&bl->malformed, malformed);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	mica_wipe(md, sizeof(md));
	mica_wipe(hex, sizeof(hex));
	mica_wipe(name, sizeof(name));
	if (rc)
		*count = 0;
	return rc;
}

/* ---- Argon2id hashing ---------------------------------------------------- */

bool acct_argon2_params_valid(const acct_argon2_params *p)
{
	return p && p->t >= 1 && p->t <= ACCT_ARGON2_MAX_T && p->p >= 1 &&
	       p->p <= ACCT_ARGON2_MAX_P && p->m_kib >= 8 * p->p &&
	       p->m_kib <= ACCT_ARGON2_MAX_M_KIB;
}

static int argon2_to_mica(int rc)
{
	if (rc == ARGON2_OK)
		return 0;
	return rc == ARGON2_MEMORY_ALLOCATION_ERROR ? MICA_ENOMEM : MICA_ECRYPTO;
}

/* Consume the literal |lit| at *s. */
static bool take_literal(const char **s, const char *lit)
{
	size_t n = strlen(lit);

	if (strncmp(*s, lit, n) != 0)
		return false;
	*s += n;
	return true;
}

/* Consume a decimal without sign or leading zeros, at most |max|. */
static bool take_u32(const char **s, uint32_t max, uint32_t *out)
{
	const char *p = *s;
	uint64_t v = 0;

	if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
		return false;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > max)
			return false;
	}
	*out = (uint32_t)v;
	*s = p;
	return true;
}

/* Consume PHC "B64" (standard alphabet, no padding) and decode it into
 * |out| (|min|..|max| bytes). The text is mapped onto the base64url
 * alphabet so libmica's strict, canonical decoder does the work. */
static bool take_b64(const char **s, uint8_t *out, size_t min, size_t max, size_t *out_len)
{
	char tmp[ACCT_PHC_MAX_LEN];
	size_t n = 0;

	for (const char *p = *s; *p && *p != '$'; p++, n++) {
		char c = *p;

		if (n >= sizeof(tmp) || c == '-' || c == '_')
			return false;
		tmp[n] = c == '+' ? '-' : c == '/' ? '_' : c;
	}
	if (mica_base64url_decode(tmp, n, out, max, out_len) != 0 || *out_len < min)
		return false;
	*s += n;
	return true;
}

int acct_phc_parse(const char *phc, struct acct_phc *out)
{
	const char *s = phc;
	struct acct_phc r;

	if (!out)
		return MICA_EINVAL;
	memset(out, 0, sizeof(*out));
	memset(&r, 0, sizeof(r));
	if (!phc || strnlen(phc, ACCT_PHC_MAX_LEN + 1) > ACCT_PHC_MAX_LEN)
		return MICA_EINVAL;
	if (!take_literal(&s, "$argon2id$v=19$m=") ||
	    !take_u32(&s, ACCT_ARGON2_MAX_M_KIB, &r.params.m_kib) || !take_literal(&s, ",t=") ||
	    !take_u32(&s, ACCT_ARGON2_MAX_T, &r.params.t) || !take_literal(&s, ",p=") ||
	    !take_u32(&s, ACCT_ARGON2_MAX_P, &r.params.p) || !take_literal(&s, "$") ||
	    !take_b64(&s, r.salt, ACCT_ARGON2_MIN_SALT_LEN, ACCT_ARGON2_MAX_SALT_LEN,
		      &r.salt_len) ||
	    !take_literal(&s, "$") ||
	    !take_b64(&s, r.hash, ACCT_ARGON2_MIN_HASH_LEN, ACCT_ARGON2_MAX_HASH_LEN,
		      &r.hash_len) ||
	    *s != '\0' || !acct_argon2_params_valid(&r.params)) {
		mica_wipe(&r, sizeof(r));
		return MICA_EINVAL;
	}
	*out = r;
	mica_wipe(&r, sizeof(r));
	return 0;
}

/* ---- Argon2 hashers -------------------------------------------------------
 *
 * Argon2id runs on one hasher thread per online CPU, fed by a FIFO queue; the
 * thread that asks for a hash waits for its result.
 *
 * At most one computation per CPU runs at a time. Each sweeps m_kib of memory
 * at random, so letting every waiting request (up to max_connections) compute
 * at once would only multiply the memory held (19 MiB each) and the cache
 * misses that slow every one of them down, for no more throughput: the CPUs
 * are the limit either way.
 *
 * A hasher that finishes takes the next queued job without sleeping, so its
 * CPU goes from one hash straight to the next. When request threads took
 * turns at a free slot instead, every hand-over woke a sleeping thread that
 * the scheduler could place on the CPU still busy with the other hash, leaving
 * the freed CPU idle until the next load balance (docs/decisions.md).
 *
 * Each hasher owns its memory for the life of the process instead of taking
 * it from malloc per hash: a mapping aligned to 2 MiB and advised for
 * transparent huge pages, so the random sweep misses the TLB less and no hash
 * pays page faults. libargon2 wipes the memory before handing it back
 * (clear_internal_memory), so no password-derived block outlives a hash.
 * A computation larger than ARGON2_MEM_KEEP (a stored hash with parameters
 * far above the configured ones) maps its own memory and unmaps it after.
 *
 * The hashers start at the first hash. fork() waits until every hasher is
 * parked on the queue's condition variable with nothing queued (the prepare
 * handler): a thread that is starting up or hashing may hold a lock inside
 * the C library or a sanitizer's allocator (libargon2 allocates for p > 1,
 * and AddressSanitizer's thread start-up callocs), and a child that inherits
 * such a lock held by a thread it does not have blocks on its next
 * allocation. A parked hasher holds none, so the child, which has no hashers,
 * can start its own. If no hasher can be started, the caller computes on its
 * own thread. */
#define ARGON2_PAGE ((size_t)2 << 20)
#define ARGON2_MEM_KEEP ((size_t)256 << 20)
#define ARGON2_MAX_HASHERS 256

struct argon2_mem {
	uint8_t *map;	 /* the kept mapping, or NULL */
	size_t map_len;	 /* its length, including alignment slack */
	uint8_t *mem;	 /* 2 MiB-aligned start inside map */
	size_t mem_len;	 /* usable bytes from mem */
	uint8_t *oneoff; /* mapping of a computation above ARGON2_MEM_KEEP */
	size_t oneoff_len;
};

struct argon2_job {
	struct argon2_job *next;
	argon2_context *ctx;
	int rc;
	int done;
	pthread_cond_t done_cond; /* signalled with argon2_lock held */
};

static pthread_mutex_t argon2_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t argon2_queued = PTHREAD_COND_INITIALIZER;
static struct argon2_job *argon2_head, **argon2_tail = &argon2_head;
static struct argon2_mem *argon2_mems; /* one per hasher */
static int argon2_hashers;	       /* running in this process */
static int argon2_parked;	       /* hashers waiting on argon2_queued */
/* Broadcast when every hasher is parked and nothing is queued. */
static pthread_cond_t argon2_quiet = PTHREAD_COND_INITIALIZER;
static bool argon2_started; /* start attempted in this process */
static pthread_once_t argon2_atfork_once = PTHREAD_ONCE_INIT;
/* The memory of the computation running on this thread, for the callbacks
 * (libargon2 passes them no context). */
static __thread struct argon2_mem *argon2_current;

static void argon2_mem_release(struct argon2_mem *s)
{
	if (s->map)
		munmap(s->map, s->map_len);
	if (s->oneoff)
		munmap(s->oneoff, s->oneoff_len);
	memset(s, 0, sizeof(*s));
}

static bool argon2_all_parked(void)
{
	return argon2_parked == argon2_hashers && !argon2_head;
}

/* Before fork(): returns with argon2_lock held once every hasher is parked
 * and the queue is empty, so no hasher is inside libargon2 or still starting
 * up. Jobs queued meanwhile are finished first; new ones wait for the lock. */
static void argon2_atfork_prepare(void)
{
	pthread_mutex_lock(&argon2_lock);
	while (!argon2_all_parked())
		pthread_cond_wait(&argon2_quiet, &argon2_lock);
}

static void argon2_atfork_parent(void)
{
	pthread_mutex_unlock(&argon2_lock);
}

/* In the child of fork(): the hashers did not come along. The lock was held
 * by the forking thread (argon2_atfork_prepare); the hashers' memory is
 * unmapped and the next hash starts new ones. */
static void argon2_atfork_child(void)
{
	pthread_mutex_init(&argon2_lock, NULL);
	pthread_cond_init(&argon2_queued, NULL);
	pthread_cond_init(&argon2_quiet, NULL);
	argon2_head = NULL;
	argon2_tail = &argon2_head;
	for (int i = 0; i < argon2_hashers; i++)
		argon2_mem_release(&argon2_mems[i]);
	argon2_hashers = 0;
	argon2_parked = 0;
	argon2_started = false;
}

static void argon2_atfork_register(void)
{
	(void)pthread_atfork(argon2_atfork_prepare, argon2_atfork_parent, argon2_atfork_child);
}

static void *argon2_hasher_main(void *arg)
{
	argon2_current = arg;
	pthread_mutex_lock(&argon2_lock);
	for (;;) {
		struct argon2_job *j;
		argon2_parked++;
		while (!(j = argon2_head)) {
			if (argon2_all_parked())
				pthread_cond_broadcast(&argon2_quiet);
			pthread_cond_wait(&argon2_queued, &argon2_lock);
		}
		argon2_parked--;
		if (!(argon2_head = j->next))
			argon2_tail = &argon2_head;
		pthread_mutex_unlock(&argon2_lock);
		int rc = argon2_ctx(j->ctx, Argon2_id);
		pthread_mutex_lock(&argon2_lock);
		j->rc = rc;
		j->done = 1;
		pthread_cond_signal(&j->done_cond);
	}
	return NULL;
}

/* Starts one hasher per online CPU; with argon2_lock held. The hashers block
 * every signal: they belong to no caller. */
static void argon2_hashers_start(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	sigset_t all, old;

	argon2_started = true;
	if (n < 1)
		n = 1;
	if (n > ARGON2_MAX_HASHERS)
		n = ARGON2_MAX_HASHERS;
	if (!argon2_mems && !(argon2_mems = calloc((size_t)n, sizeof(*argon2_mems))))
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (long i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, argon2_hasher_main, &argon2_mems[i]) != 0)
			break;
		pthread_setname_np(t, "argon2-hasher"); /* as top -H and ps -L show it */
		pthread_detach(t);
		argon2_hashers++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Maps |len| bytes (plus slack to align them to 2 MiB) and advises huge
 * pages; *start is the aligned start. Returns the mapping or NULL. */
static uint8_t *argon2_map(size_t len, size_t *map_len, uint8_t **start)
{
	if (len > SIZE_MAX - 2 * ARGON2_PAGE)
		return NULL;
	size_t rounded = (len + ARGON2_PAGE - 1) & ~(ARGON2_PAGE - 1);
	size_t total = rounded + ARGON2_PAGE;
	void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	uintptr_t aligned = ((uintptr_t)m + ARGON2_PAGE - 1) & ~(uintptr_t)(ARGON2_PAGE - 1);
	/* Not every kernel offers huge pages; without them this is plain memory. */
	(void)madvise((void *)aligned, rounded, MADV_HUGEPAGE);
	*map_len = total;
	*start = (uint8_t *)aligned;
	return m;
}

static int argon2_alloc_cb(uint8_t **memory, size_t bytes)
{
	struct argon2_mem *s = argon2_current;
	size_t map_len;
	uint8_t *start, *map;

	*memory = NULL;
	if (bytes > ARGON2_MEM_KEEP) {
		if (!(map = argon2_map(bytes, &map_len, &start)))
			return ARGON2_MEMORY_ALLOCATION_ERROR;
		s->oneoff = map;
		s->oneoff_len = map_len;
		*memory = start;
		return ARGON2_OK;
	}
	if (s->mem_len < bytes) {
		if (!(map = argon2_map(bytes, &map_len, &start)))
			return ARGON2_MEMORY_ALLOCATION_ERROR;
		if (s->map)
			munmap(s->map, s->map_len);
		s->map = map;
		s->map_len = map_len;
		s->mem = start;
		s->mem_len = (bytes + ARGON2_PAGE - 1) & ~(ARGON2_PAGE - 1);
	}
	*memory = s->mem;
	return ARGON2_OK;
}

/* Called after libargon2 has wiped the memory. */
static void argon2_free_cb(uint8_t *memory, size_t bytes)
{
	struct argon2_mem *s = argon2_current;
	(void)bytes;
	if (s->oneoff && memory >= s->oneoff && memory < s->oneoff + s->oneoff_len) {
		munmap(s->oneoff, s->oneoff_len);
		s->oneoff = NULL;
		s->oneoff_len = 0;
	}
}

/* Runs argon2_ctx(ctx, Argon2_id) on a hasher and waits for its result;
 * on this thread, in memory of its own, when no hasher runs. */
static int argon2_run(argon2_context *ctx)
{
	struct argon2_job j = {.ctx = ctx};

	pthread_once(&argon2_atfork_once, argon2_atfork_register);
	pthread_mutex_lock(&argon2_lock);
	if (!argon2_started)
		argon2_hashers_start();
	if (argon2_hashers == 0) {
		pthread_mutex_unlock(&argon2_lock);
		struct argon2_mem local = {0};
		argon2_current = &local;
		int rc = argon2_ctx(ctx, Argon2_id);
		argon2_current = NULL;
		argon2_mem_release(&local);
		return rc;
	}
	pthread_cond_init(&j.done_cond, NULL);
	*argon2_tail = &j;
	argon2_tail = &j.next;
	pthread_cond_signal(&argon2_queued);
	while (!j.done)
		pthread_cond_wait(&j.done_cond, &argon2_lock);
	pthread_mutex_unlock(&argon2_lock);
	pthread_cond_destroy(&j.done_cond);
	return j.rc;
}

/* Argon2id of |pw| under |params| and |salt| into |out| (|out_len| bytes).
 * Returns 0, MICA_ENOMEM or MICA_ECRYPTO. */
static int argon2id_compute(const acct_argon2_params *params, const char *pw, size_t pw_len,
			    const uint8_t *salt, size_t salt_len, uint8_t *out, size_t out_len)
{
	argon2_context ctx = {
		.out = out,
		.outlen = (uint32_t)out_len,
		.pwd = (uint8_t *)(uintptr_t)pw,
		.pwdlen = (uint32_t)pw_len,
		.salt = (uint8_t *)(uintptr_t)salt,
		.saltlen = (uint32_t)salt_len,
		.t_cost = params->t,
		.m_cost = params->m_kib,
		.lanes = params->p,
		.threads = params->p,
		.version = ARGON2_VERSION_13,
		.allocate_cbk = argon2_alloc_cb,
		.free_cbk = argon2_free_cb,
		.flags = ARGON2_DEFAULT_FLAGS,
	};
	return argon2_to_mica(argon2_run(&ctx));
}

/* Padded base64 of n bytes, with its NUL. */
#define B64_CAP(n) (((n) + 2) / 3 * 4 + 1)

/* The PHC string of an Argon2id hash, as libargon2's encoder writes it. */
static int phc_encode(const acct_argon2_params *params, const uint8_t *salt, size_t salt_len,
		      const uint8_t *hash, size_t hash_len, char **phc)
{
	char salt64[B64_CAP(ACCT_ARGON2_MAX_SALT_LEN)], hash64[B64_CAP(ACCT_ARGON2_MAX_HASH_LEN)];
	size_t n;
	int rc;

	*phc = NULL;
	if ((rc = mica_base64_encode(salt, salt_len, salt64, sizeof(salt64), &n)) != 0)
		return rc;
	while (n > 0 && salt64[n - 1] == '=')
		salt64[--n] = '\0';
	if ((rc = mica_base64_encode(hash, hash_len, hash64, sizeof(hash64), &n)) != 0)
		goto out;
	while (n > 0 && hash64[n - 1] == '=')
		hash64[--n] = '\0';
	char buf[ACCT_PHC_MAX_LEN + 1];
	int len = snprintf(buf, sizeof(buf), "$argon2id$v=%d$m=%u,t=%u,p=%u$%s$%s",
			   ARGON2_VERSION_13, params->m_kib, params->t, params->p, salt64, hash64);
	if (len < 0 || (size_t)len >= sizeof(buf))
		rc = MICA_EINVAL;
	else if (!(*phc = strdup(buf)))
		rc = MICA_ENOMEM;
	mica_wipe(buf, sizeof(buf));
out:
	mica_wipe(hash64, sizeof(hash64));
	return rc;
}

int acct_password_hash_with(const char *password, const acct_argon2_params *params, char **phc)
{
	uint8_t salt[ACCT_ARGON2_SALT_LEN], hash[ACCT_ARGON2_HASH_LEN];
	size_t pw_len;
	int rc;

	if (!phc)
		return MICA_EINVAL;
	*phc = NULL;
	if (!password || !acct_argon2_params_valid(params))
		return MICA_EINVAL;
	pw_len = strnlen(password, ACCT_PASSWORD_MAX_BYTES + 1);
	if (pw_len > ACCT_PASSWORD_MAX_BYTES)
		return MICA_ETOOBIG;
	if ((rc = mica_random(salt, sizeof(salt))) == 0 &&
	    (rc = argon2id_compute(params, password, pw_len, salt, sizeof(salt), hash,
				   sizeof(hash))) == 0)
		rc = phc_encode(params, salt, sizeof(salt), hash, sizeof(hash), phc);
	mica_wipe(salt, sizeof(salt));
	mica_wipe(hash, sizeof(hash));
	return rc;
}

int acct_password_hash(const char *password, char **phc)
{
	return acct_password_hash_with(password, &acct_argon2_defaults, phc);
}

int acct_password_verify(const char *phc, const char *password)
{
	struct acct_phc parsed;
	uint8_t computed[ACCT_ARGON2_MAX_HASH_LEN];
	size_t pw_len;
	int rc;

	if (!phc || !password)
		return MICA_EINVAL;
	rc = acct_phc_parse(phc, &parsed);
	if (rc)
		return rc;
	pw_len = strnlen(password, ACCT_PASSWORD_MAX_BYTES + 1);
	if (pw_len > ACCT_PASSWORD_MAX_BYTES) {
		rc = MICA_EAUTH;
		goto out;
	}
	rc = argon2id_compute(&parsed.params, password, pw_len, parsed.salt, parsed.salt_len,
			      computed, parsed.hash_len);
	if (rc)
		goto out;
	rc = mica_ct_equal(computed, parsed.hash, parsed.hash_len) ? 0 : MICA_EAUTH;
out:
	mica_wipe(computed, sizeof(computed));
	mica_wipe(&parsed, sizeof(parsed));
	return rc;
}

int acct_password_needs_rehash(const char *phc, const acct_argon2_params *current)
{
	struct acct_phc parsed;
	int rc;

	if (!phc || !current)
		return MICA_EINVAL;
	rc = acct_phc_parse(phc, &parsed);
	if (rc)
		return rc;
	rc = parsed.params.m_kib < current->m_kib || parsed.params.t < current->t ||
	     parsed.params.p < current->p || parsed.salt_len < ACCT_ARGON2_SALT_LEN ||
	     parsed.hash_len < ACCT_ARGON2_HASH_LEN;
	mica_wipe(&parsed, sizeof(parsed));
	return rc;
}
