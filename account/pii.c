/* pii.c - personal data through the Key Center: login identifiers are
 * normalised, looked up by HMAC blind index (key account-index) and stored
 * encrypted (key account-pii) bound to {service, table, column, row}, so a
 * value copied to another row or column does not decrypt. Client networks
 * are kept only as the same keyed HMAC, never as an unkeyed hash that trying
 * every /24 would reverse. */
#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"

enum acct_ident acct_ident_parse(const char *in, char *out, size_t cap)
{
	size_t n = in ? strlen(in) : 0, digits = 0;
	if (n == 0 || n >= cap || n > 254)
		return ACCT_ID_INVALID;
	if (in[0] == '+') {
		for (size_t i = 1; i < n; i++)
			if (!isdigit((unsigned char)in[i]))
				return ACCT_ID_INVALID;
		if (n - 1 < 7 || n - 1 > 15 || in[1] == '0')
			return ACCT_ID_INVALID;
		memcpy(out, in, n + 1);
		return ACCT_ID_PHONE;
	}
	const char *at = strchr(in, '@');
	if (at) {
		if (at == in || !at[1] || strchr(at + 1, '@') || !strchr(at + 1, '.'))
			return ACCT_ID_INVALID;
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)in[i];
			if (c <= ' ' || c >= 0x7f)
				return ACCT_ID_INVALID;
			out[i] = (char)tolower(c);
		}
		out[n] = '\0';
		return ACCT_ID_EMAIL;
	}
	for (size_t i = 0; i < n; i++)
		digits += isdigit((unsigned char)in[i]) != 0;
	if (n == 10 && digits == 10) {
		memcpy(out, in, n + 1);
		return ACCT_ID_ACCOUNT_NO;
	}
	return ACCT_ID_INVALID;
}

int acct_blind_index(acct_service *s, const char *kind, const char *value, char **idx)
{
	return acct_blind_index_with(s->kc, s->cfg->index_key, kind, value, idx);
}

int acct_blind_index_with(mica_kc *kc, const char *index_key, const char *kind, const char *value,
			  char **idx)
{
	/* The kind is part of the input so equal strings of different kinds
	 * never share an index. */
	size_t kl = strlen(kind), vl = strlen(value);
	char *in = malloc(kl + 1 + vl);
	int err;
	if (!in)
		return MICA_ENOMEM;
	memcpy(in, kind, kl);
	in[kl] = ':';
	memcpy(in + kl + 1, value, vl);
	err = mica_kc_hmac(kc, index_key, in, kl + 1 + vl, idx);
	mica_wipe(in, kl + 1 + vl);
	free(in);
	return err;
}

static json_t *context(const char *table, const char *column, const char *row)
{
	return json_pack("{s:s,s:s,s:s,s:s}", "service", "account", "table", table, "column",
			 column, "row", row);
}

int acct_pii_seal(acct_service *s, const char *table, const char *column, const char *row,
		  const char *value, char **out)
{
	json_t *ctx = context(table, column, row);
	int err = ctx ? mica_kc_encrypt(s->kc, s->cfg->pii_key, value, strlen(value), ctx, out)
		      : MICA_ENOMEM;
	json_decref(ctx);
	return err;
}

int acct_kc_open(acct_service *s, const char *key, const char *table, const char *column,
		 const char *row, const char *sealed, char **out)
{
	json_t *ctx = context(table, column, row);
	uint8_t *pt = NULL;
	size_t len = 0;
	int err;
	*out = NULL;
	err = ctx ? mica_kc_decrypt(s->kc, key, sealed, ctx, &pt, &len) : MICA_ENOMEM;
	json_decref(ctx);
	return err ? err : acct_take_string(pt, len, out);
}

int acct_pii_open(acct_service *s, const char *table, const char *column, const char *row,
		  const char *sealed, char **out)
{
	return acct_kc_open(s, s->cfg->pii_key, table, column, row, sealed, out);
}

int acct_take_string(uint8_t *pt, size_t len, char **out)
{
	if ((*out = malloc(len + 1)) != NULL) {
		memcpy(*out, pt, len);
		(*out)[len] = '\0';
	}
	mica_wipe(pt, len);
	free(pt);
	return *out ? 0 : MICA_ENOMEM;
}

void acct_hash_hex(const char *domain, const char *value, char out[65])
{
	unsigned char md[32];
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	out[0] = '\0';
	if (c && EVP_DigestInit_ex(c, mica_md_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, domain, strlen(domain) + 1) == 1 &&
	    EVP_DigestUpdate(c, value, strlen(value)) == 1 &&
	    EVP_DigestFinal_ex(c, md, NULL) == 1 && mica_hex_encode(md, sizeof(md), out, 65) == 0)
		out[64] = '\0';
	EVP_MD_CTX_free(c);
}

int acct_network_hash(acct_service *s, const char *ip, char **out, char legacy[65])
{
	char net[64];
	acct_network_of(ip, net, sizeof(net));
	if (legacy)
		acct_hash_hex("mica-network", net, legacy);
	return acct_blind_index(s, "network", net, out);
}

void acct_network_of(const char *ip, char *out, size_t cap)
{
	unsigned char a[16];
	char buf[INET6_ADDRSTRLEN];
	if (inet_pton(AF_INET, ip, a) == 1) {
		snprintf(out, cap, "%u.%u.%u.0/24", a[0], a[1], a[2]);
	} else if (inet_pton(AF_INET6, ip, a) == 1) {
		memset(a + 6, 0, 10);
		inet_ntop(AF_INET6, a, buf, sizeof(buf));
		snprintf(out, cap, "%s/48", buf);
	} else {
		snprintf(out, cap, "unknown");
	}
}

/* A device's place: its account and device hash. */
static void device_row(int64_t user_id, const char *device_hash, char out[96])
{
	snprintf(out, 96, "%lld:%.64s", (long long)user_id, device_hash);
}

int acct_device_name_seal(acct_service *s, int64_t user_id, const char *device_hash,
			  const char *name, char **out)
{
	char row[96];
	*out = NULL;
	if (!*name)
		return (*out = strdup("")) ? 0 : MICA_ENOMEM;
	device_row(user_id, device_hash, row);
	return acct_seal(s, s->records, "device", "name", row, name, out);
}

int acct_device_name_open(acct_service *s, int64_t user_id, const char *device_hash,
			  const char *stored, char **out)
{
	char row[96];
	*out = NULL;
	if (!acct_is_sealed(stored)) /* "" or a row written before names were sealed */
		return (*out = strdup(stored)) ? 0 : MICA_ENOMEM;
	device_row(user_id, device_hash, row);
	return acct_unseal(s, s->records, "device", "name", row, stored, out);
}
