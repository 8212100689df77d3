/* config.h - table-driven configuration.
 *
 * Each program declares one static table of mica_config_entry (section, key,
 * type, bounds, default, field offset, help) describing its config struct.
 * mica_config_load() applies defaults, reads an INI file, applies environment
 * overrides MICA_<SECTION>_<KEY> (upper case), reads *_file secrets, and runs
 * a validation pass. Every error names the offending key as "section.key".
 * One file serves the whole suite: global sections ([log], [db]) and
 * "[program.area]" sections such as [keycenter.http]. A program skips dotted
 * sections it has no entries for (they belong to other programs) and rejects
 * unknown keys in its own sections and unknown undotted sections. The
 * environment name drops the dot: [keycenter.http] port -> MICA_KEYCENTER_HTTP_PORT.
 * A MICA_ variable that starts like one of the program's sections (MICA_KEYCENTER_HTTP_)
 * but names none of its keys is refused like an unknown key in the file.
 * deploy/mica.conf.example documents every key of every table; a test loads it.
 */
#ifndef MICA_CONFIG_H
#define MICA_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "err.h"

enum mica_config_type {
	MICA_CFG_STRING,   /* char * field, malloc'd; bounds = length */
	MICA_CFG_INT,	   /* int field; bounds = value */
	MICA_CFG_SIZE,	   /* size_t field; accepts K/M/G suffixes (1024-based) */
	MICA_CFG_BOOL,	   /* int field, 0/1; accepts true/false/yes/no/on/off/1/0 */
	MICA_CFG_SECRET,   /* key "x_file": the value is a path; the field (char *) gets the
			      file's content without trailing newline; wiped on free */
	MICA_CFG_LOGLEVEL, /* int field; debug/info/warn/error/off */
};

typedef struct mica_config_entry {
	const char *section;
	const char *key;
	enum mica_config_type type;
	long long min, max; /* inclusive bounds (INT, SIZE, STRING length) */
	const char *def;    /* default as text; NULL = required */
	size_t offset;	    /* offsetof(program_config, field) */
	const char *help;   /* one line, used in the example file */
} mica_config_entry;

/* Loads configuration into |base| (a struct laid out as |table| says). |path|
 * may be NULL (defaults + environment only). On error returns MICA_ECONFIG
 * (or MICA_ENOMEM) and writes a message naming the key into |err|. The caller
 * must call mica_config_free() in every case. */
int mica_config_load(const mica_config_entry *table, size_t n, void *base, const char *path,
		     char *err, size_t errlen) MICA_WUR;

/* Frees strings and wipes secrets held in |base|; safe to call twice. */
void mica_config_free(const mica_config_entry *table, size_t n, void *base);

/* Writes |table| as an INI example with every key commented out, showing
 * its default or "[required]" (what `PROGRAM --print-config` shows). */
void mica_config_write_example(FILE *out, const mica_config_entry *table, size_t n);

/* Common fragments every daemon's table repeats for its [http] section,
 * expressed as a macro so the offsets refer to the program's own struct. The
 * member |m| must be a mica_http_options; |blocking_default| (a decimal
 * string) is the service's default for blocking_threads. */
/* The fragments keep one row per key, aligned by hand (clang-format would
 * re-flow them). */
/* clang-format off */
#define MICA_CONFIG_HTTP_ENTRIES(sec, type, m, blocking_default)                                                 \
	{sec, "bind", MICA_CFG_STRING, 1, 255, "127.0.0.1", offsetof(type, m.bind),               \
	 "address to listen on (IPv4 or IPv6 literal)"},                                          \
	{sec, "port", MICA_CFG_INT, 0, 65535, NULL, offsetof(type, m.port),                        \
	 "TCP port (0 picks a free one)"},                                                        \
	{sec, "cert_file", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.cert_file),            \
	 "PEM server certificate chain"},                                                         \
	{sec, "key_file", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.key_file),              \
	 "PEM private key of the server certificate"},                                            \
	{sec, "client_ca_file", MICA_CFG_STRING, 0, 4096, "", offsetof(type, m.client_ca_file),    \
	 "PEM CA for client certificates (empty: no mutual TLS)"},                                \
	{sec, "require_client_cert", MICA_CFG_BOOL, 0, 1, "false",                                \
	 offsetof(type, m.require_client_cert), "refuse requests without a verified client certificate"}, \
	{sec, "max_body", MICA_CFG_SIZE, 1, 64LL << 20, "1M", offsetof(type, m.max_body),          \
	 "largest accepted request body"},                                                        \
	{sec, "timeout", MICA_CFG_INT, 1, 3600, "30", offsetof(type, m.timeout_s),                 \
	 "seconds an idle or stalled connection is kept"},                                        \
	{sec, "threads", MICA_CFG_INT, 0, 256, "0", offsetof(type, m.threads),                     \
	 "event threads serving connections (0 = one per CPU)"},                                  \
	{sec, "blocking_threads", MICA_CFG_INT, 0, 4096, blocking_default,                        \
	 offsetof(type, m.blocking_threads),                                                      \
	 "threads for handlers that block (database, Key Center, Argon2id)"},                     \
	{sec, "max_connections", MICA_CFG_INT, 1, 100000, "1024", offsetof(type, m.max_conns),     \
	 "total open connections"},                                                               \
	{sec, "max_connections_per_ip", MICA_CFG_INT, 0, 100000, "64",                            \
	 offsetof(type, m.per_ip_conns), "open connections per client address (0 = unlimited)"},  \
	{sec, "access_log", MICA_CFG_BOOL, 0, 1, "true", offsetof(type, m.access_log),             \
	 "one JSON log line per request"},                                                        \
	{sec, "metrics_bind", MICA_CFG_STRING, 0, 255, "127.0.0.1", offsetof(type, m.metrics_bind), \
	 "address of the listener serving /metrics, /healthz and /readyz (empty: none; beyond"     \
	 " loopback it needs metrics_client_ca_file)"},                                           \
	{sec, "metrics_port", MICA_CFG_INT, 0, 65535, "0", offsetof(type, m.metrics_port),         \
	 "TCP port of the metrics listener (0 picks a free one, logged at start)"},               \
	{sec, "metrics_client_ca_file", MICA_CFG_STRING, 0, 4096, "",                             \
	 offsetof(type, m.metrics_client_ca_file),                                                \
	 "PEM CA whose client certificates may scrape the metrics listener (set: mutual TLS"      \
	 " required there)"}

/* The database a daemon connects to: the [<service>.db] section. The
 * password is read from password_file (empty: none, e.g. a passfile or
 * peer authentication). */
typedef struct mica_config_db {
	char *conninfo; /* libpq conninfo without the password */
	char *password; /* secret (wiped on free); "" when not set */
} mica_config_db;

#define MICA_CONFIG_DB_ENTRIES(sec, type, m, role)                                                \
	{sec, "conninfo", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.conninfo),              \
	 "libpq conninfo of the " role " role (without the password)"},                           \
	{sec, "password_file", MICA_CFG_SECRET, 0, 4096, "", offsetof(type, m.password),          \
	 "file holding the role's password (empty: none, e.g. a passfile in conninfo or peer"     \
	 " authentication)"}

/* Redis over its Unix socket with an ACL user: the [<service>.redis]
 * section. The member |m| must be a struct mica_kv_config (lib/kv.h);
 * |user| is the service's default ACL user, |keys| the key patterns its
 * ACL allows (for the help text). */
#define MICA_CONFIG_REDIS_ENTRIES(sec, type, m, user, keys)                                       \
	{sec, "socket", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.socket_path),             \
	 "Redis Unix socket"},                                                                    \
	{sec, "user", MICA_CFG_STRING, 1, 64, user, offsetof(type, m.username),                    \
	 "Redis ACL user (keys " keys ")"},                                                       \
	{sec, "password_file", MICA_CFG_SECRET, 0, 4096, NULL, offsetof(type, m.password),        \
	 "file holding the Redis user's password"}

/* The Key Center as a client reaches it, over mutual TLS: the
 * [<service>.keycenter] section. The member |m| must be a mica_kc_options
 * (lib/kc.h); |principal| names the service's client certificate. */
#define MICA_CONFIG_KC_CLIENT_ENTRIES(sec, type, m, principal)                                    \
	{sec, "url", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.base_url),                   \
	 "base URL of the Key Center (https://host:port)"},                                       \
	{sec, "ca_file", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.ca_file),                \
	 "CA the Key Center's certificate chains to"},                                            \
	{sec, "cert_file", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.cert_file),            \
	 "client certificate of the " principal " principal"},                                    \
	{sec, "key_file", MICA_CFG_STRING, 1, 4096, NULL, offsetof(type, m.key_file),              \
	 "its private key"}

/* clang-format on */

/* ---- checks for a validation pass ---------------------------------------
 * A daemon runs these on its loaded configuration before it opens any
 * dependency (lib/daemon.h), so a bad file is reported as a configuration
 * error naming the key, not as a late TLS or connection failure. Each returns
 * 0 or MICA_ECONFIG with a message "section.key: ..." in |err|. */

/* |path| (the value of |section|.|key|) is a readable PEM file holding at
 * least one X.509 certificate that parses. */
int mica_config_check_ca(const char *section, const char *key, const char *path, char *err,
			 size_t errlen) MICA_WUR;

/* |cert| and |key| (the values of |section|.|cert_key| and
 * |section|.|key_key|) are readable PEM files holding a certificate chain and
 * the private key that matches it. */
int mica_config_check_cert_key(const char *section, const char *cert_key, const char *cert,
			       const char *key_key, const char *key, char *err,
			       size_t errlen) MICA_WUR;

#endif
