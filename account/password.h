/* password.h - the account service's password rules: the two password
 * policies (miui, nist) with stable rejection codes, the breached-password
 * blocklist in the Have-I-Been-Pwned range layout, and Argon2id hashing in
 * PHC string form with a strict parser and the rehash-on-login decision.
 *
 * Policies
 *   miui (the default, as the white paper says): 8 to 16 characters, every
 *     character one of the 94 visible ASCII characters 0x21..0x7e, and at
 *     least two of the three classes
 *       digits   0-9
 *       letters  A-Z a-z (upper and lower case are one class)
 *       symbols  the 32 ASCII punctuation characters
 *                ! " # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \ ] ^ _ ` { | } ~
 *                (exactly C's ispunct() in the "C" locale).
 *     The space is not allowed: it is invisible in a masked field, and a
 *     leading or trailing space pasted by accident locks users out of their
 *     own password. Anything else (space, controls, bytes >= 0x80) is
 *     invalid_characters.
 *   nist (NIST SP 800-63B 5.1.1.2): 8 to 128 Unicode code points of valid
 *     UTF-8 (shortest form, no surrogates, at most U+10FFFF), no composition
 *     rule, and not in the breached-password blocklist. C0 controls, DEL and
 *     C1 controls (U+0000..U+001F, U+007F..U+009F) are invalid_characters:
 *     they cannot be typed and only arrive through paste accidents. The
 *     space and every other code point are allowed. No Unicode normalization
 *     is applied: the bytes the client sends are what is checked and hashed,
 *     so clients must send one consistent form (browsers send what was typed).
 *
 * Rules are checked in this order, and the first failure is reported:
 * invalid_characters, too_short, too_long, too_few_classes (miui) or
 * breached (nist). The codes are stable API (JSON errors, tests).
 */
#ifndef ACCT_PASSWORD_H
#define ACCT_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define ACCT_PASSWORD_POLICY_DEFAULT "miui"
#define ACCT_PASSWORD_MIUI_MIN 8 /* characters (bytes: ASCII only) */
#define ACCT_PASSWORD_MIUI_MAX 16
#define ACCT_PASSWORD_MIUI_MIN_CLASSES 2
#define ACCT_PASSWORD_NIST_MIN 8   /* Unicode code points */
#define ACCT_PASSWORD_NIST_MAX 128 /* NIST asks for at least 64 */
/* Longest password, in bytes, that is ever hashed or verified. No policy
 * admits more (128 code points x 4 bytes), so a longer login attempt cannot
 * match and is refused without spending an Argon2 computation on it. */
#define ACCT_PASSWORD_MAX_BYTES 512

/* ---- Policy check ------------------------------------------------------- */

enum acct_password_reason {
	ACCT_PASSWORD_OK = 0,
	ACCT_PASSWORD_TOO_SHORT,	  /* "too_short" */
	ACCT_PASSWORD_TOO_LONG,		  /* "too_long" */
	ACCT_PASSWORD_TOO_FEW_CLASSES,	  /* "too_few_classes" (miui) */
	ACCT_PASSWORD_INVALID_CHARACTERS, /* "invalid_characters" */
	ACCT_PASSWORD_BREACHED,		  /* "breached" (nist) */
	ACCT_PASSWORD_UNKNOWN_POLICY,	  /* "unknown_policy" */
	ACCT_PASSWORD_BAD_ARGUMENT,	  /* "invalid_argument": NULL password */
	ACCT_PASSWORD_CHECK_FAILED,	  /* the check could not run; code is the mica error's */
};

/* The outcome of acct_password_check(). |code| is a static string. */
struct acct_password_verdict {
	enum acct_password_reason reason;
	const char *code;      /* stable snake_case; "ok" on success */
	char message[160];     /* an English sentence for the user; never quotes the password */
	uint64_t breach_count; /* breached only: times seen in breaches */
};

/* The blocklist handle (see below). */
typedef struct acct_blocklist acct_blocklist;

/* True when |name| is a policy acct_password_check() knows ("miui",
 * "nist"); for validating configuration at startup. */
bool acct_password_policy_known(const char *name);

/* Check |password| (NUL-terminated) against the policy |policy_name|
 * ("miui" or "nist"; NULL means ACCT_PASSWORD_POLICY_DEFAULT) and fill |v|.
 * |bl| is the breached-password blocklist, required by nist (borrowed; may
 * be NULL for miui, which does not consult it).
 * Returns 0 (accepted, v->code "ok"), MICA_EINVAL (rejected: v->reason and
 * v->code say why, including unknown_policy and invalid_argument for a NULL
 * password; or |v| is NULL), MICA_ECONFIG (nist without a blocklist), or
 * the errors of acct_blocklist_contains() when the blocklist could not be
 * read; for these two v->reason is ACCT_PASSWORD_CHECK_FAILED and v->code
 * the error's mica_strerror() code. Callers must treat every
 * non-zero return as "do not accept this password": a blocklist that cannot
 * be read fails closed. */
int acct_password_check(const char *policy_name, const char *password, acct_blocklist *bl,
			struct acct_password_verdict *v) MICA_WUR;

/* ---- Breached-password blocklist ---------------------------------------- */

/* The blocklist is a directory in the Have-I-Been-Pwned "range" layout:
 * one file per SHA-1 prefix, named by the 5 upper-case hex digits of the
 * prefix (e.g. "21BD1"), each line "SUFFIX:COUNT" where SUFFIX is the other
 * 35 hex digits of the SHA-1 of the UTF-8 password and COUNT a decimal
 * count, lines ending in LF or CRLF. A lookup reads only the one file of
 * the password's prefix, so the layout is the k-anonymity range API's and a
 * future HTTP range source can slot in behind the same functions.
 *
 * Semantics, chosen to fail towards blocking rather than towards silence:
 *  - hex digits match in either case (HIBP serves upper case);
 *  - a missing prefix file means "not breached" (a partial download, or a
 *    prefix no breach ever produced);
 *  - a line with COUNT 0 is an HIBP padding entry and does not match;
 *  - a malformed line (wrong length, non-hex suffix, missing or non-decimal
 *    or overflowing count, trailing bytes) is skipped and counted; the rest
 *    of the file still counts. acct_blocklist_malformed_lines() reports the
 *    running total so an operator can notice a damaged copy;
 *  - a prefix file that exists but cannot be read, or is larger than
 *    ACCT_BLOCKLIST_FILE_MAX, is an error (MICA_EIO / MICA_ETOOBIG), never
 *    "not breached".
 * A handle is safe to use from any number of threads at once. */
#define ACCT_BLOCKLIST_FILE_MAX ((size_t)4 << 20)
#define ACCT_SHA1_HEX_LEN 40
#define ACCT_BLOCKLIST_PREFIX_LEN 5
#define ACCT_BLOCKLIST_SUFFIX_LEN 35

/* Open the blocklist directory |dir| into *out (the caller closes it with
 * acct_blocklist_close()). Nothing is read yet. Returns 0, MICA_EINVAL
 * (NULL argument, or |dir| is not a directory), MICA_ENOTFOUND (|dir| does
 * not exist), MICA_EIO or MICA_ENOMEM; on failure *out is NULL. */
int acct_blocklist_open(const char *dir, acct_blocklist **out) MICA_WUR;

/* Close |bl|; NULL is a no-op. */
void acct_blocklist_close(acct_blocklist *bl);

/* Look |password| (NUL-terminated, hashed as its bytes) up in |bl|.
 * *count is set to the breach count, 0 when not breached.
 * Returns 0 (found or not), MICA_EINVAL (NULL argument), MICA_EIO,
 * MICA_ETOOBIG (prefix file over ACCT_BLOCKLIST_FILE_MAX), MICA_ENOMEM or
 * MICA_ECRYPTO; on failure *count is 0. The SHA-1 is wiped after use. */
int acct_blocklist_contains(acct_blocklist *bl, const char *password, uint64_t *count) MICA_WUR;

/* Malformed lines skipped by all lookups on |bl| so far. */
uint64_t acct_blocklist_malformed_lines(acct_blocklist *bl);

/* Scan the contents of one range file (|len| bytes, need not be
 * NUL-terminated) for |suffix| (ACCT_BLOCKLIST_SUFFIX_LEN hex digits).
 * Sets *count (0 when absent or padding) and *malformed (lines skipped).
 * Exposed for the unit tests and the fuzz target; it never fails. */
void acct__blocklist_scan(const char *buf, size_t len, const char *suffix, uint64_t *count,
			  uint64_t *malformed);

/* ---- Argon2id hashing ---------------------------------------------------- */

/* Argon2id cost parameters. The service reads them from its configuration
 * so they can be raised; acct_password_needs_rehash() then upgrades stored
 * hashes at the next successful login. */
typedef struct acct_argon2_params {
	uint32_t m_kib; /* memory, KiB */
	uint32_t t;	/* iterations */
	uint32_t p;	/* lanes (and threads) */
} acct_argon2_params;

/* OWASP's Argon2id minimum, also DESIGN.md section 5: m=19 MiB, t=2, p=1. */
#define ACCT_ARGON2_DEFAULT_M_KIB 19456
#define ACCT_ARGON2_DEFAULT_T 2
#define ACCT_ARGON2_DEFAULT_P 1
extern const acct_argon2_params acct_argon2_defaults;

/* Bounds on parameters we hash with or accept in a stored PHC string. The
 * upper bounds stop a corrupted or planted row from making one verification
 * allocate terabytes or run for hours. */
#define ACCT_ARGON2_MAX_M_KIB (4u * 1024 * 1024) /* 4 GiB */
#define ACCT_ARGON2_MAX_T 64
#define ACCT_ARGON2_MAX_P 64
#define ACCT_ARGON2_SALT_LEN 16 /* what we generate */
#define ACCT_ARGON2_HASH_LEN 32 /* what we generate */
#define ACCT_ARGON2_MIN_SALT_LEN 8
#define ACCT_ARGON2_MAX_SALT_LEN 64
#define ACCT_ARGON2_MIN_HASH_LEN 16
#define ACCT_ARGON2_MAX_HASH_LEN 64
/* Longest PHC string the parser accepts. */
#define ACCT_PHC_MAX_LEN 256

/* True when |p| is usable for hashing: 1 <= t <= ACCT_ARGON2_MAX_T,
 * 1 <= p <= ACCT_ARGON2_MAX_P, 8 * p <= m_kib <= ACCT_ARGON2_MAX_M_KIB. */
bool acct_argon2_params_valid(const acct_argon2_params *p);

/* A parsed PHC string. */
struct acct_phc {
	acct_argon2_params params;
	uint8_t salt[ACCT_ARGON2_MAX_SALT_LEN];
	size_t salt_len;
	uint8_t hash[ACCT_ARGON2_MAX_HASH_LEN];
	size_t hash_len;
};

/* Parse the PHC string |phc| strictly:
 *   $argon2id$v=19$m=<M>,t=<T>,p=<P>$<salt>$<hash>
 * in exactly this order, decimals without sign or leading zeros, parameters
 * within acct_argon2_params_valid(), salt and hash in unpadded standard
 * base64 (PHC "B64", canonical: unused bits zero) of ACCT_ARGON2_MIN/MAX_*
 * bytes, nothing after the hash, at most ACCT_PHC_MAX_LEN bytes. Only
 * argon2id version 19 is accepted. Returns 0 or MICA_EINVAL; on failure
 * |out| is zeroed. */
int acct_phc_parse(const char *phc, struct acct_phc *out) MICA_WUR;

/* Hash |password| (NUL-terminated, at most ACCT_PASSWORD_MAX_BYTES) with
 * Argon2id under |params| and a fresh random 16-byte salt into a 32-byte
 * hash, and return the PHC string in *phc (malloc'd, the caller frees).
 * acct_password_hash() uses acct_argon2_defaults.
 * Returns 0, MICA_EINVAL (NULL argument or invalid params), MICA_ETOOBIG
 * (password too long), MICA_ENOMEM or MICA_ECRYPTO; on failure *phc is
 * NULL. No copy of the password is left behind (libargon2 wipes its own
 * memory). */
int acct_password_hash(const char *password, char **phc) MICA_WUR;
int acct_password_hash_with(const char *password, const acct_argon2_params *params,
			    char **phc) MICA_WUR;

/* Verify |password| against the stored PHC string |phc|, recomputing with
 * the stored parameters and comparing in constant time.
 * Returns 0 (match), MICA_EAUTH (mismatch, including a password longer than
 * ACCT_PASSWORD_MAX_BYTES, which no policy could have admitted),
 * MICA_EINVAL (NULL argument or malformed PHC), MICA_ENOMEM or
 * MICA_ECRYPTO. */
int acct_password_verify(const char *phc, const char *password) MICA_WUR;

/* Whether the stored hash |phc| should be recomputed under |current| (call
 * after a successful verify, when the plaintext is at hand).
 * Returns 1 when the stored m, t or p is below |current|'s, or its salt or
 * hash is shorter than what acct_password_hash() now produces; 0 when it is
 * up to date; MICA_EINVAL for a NULL argument or a malformed PHC. */
int acct_password_needs_rehash(const char *phc, const acct_argon2_params *current) MICA_WUR;

#endif
