/* message.c - opening a sealed push message (docs/push-internals.md, "The
 * sealed message"): the mica envelope under the device's content key, bound
 * by its AAD to the device's regid, holding one JSON object. What does not
 * open, or opens to something that is not a message, is refused whole. */
#include <stdlib.h>
#include <string.h>

#include "device/micadev.h"

static const char *str_member(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static long int_member(const json_t *o, const char *k, long dflt)
{
	const json_t *v = json_object_get(o, k);
	return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

int dev_push_open(const uint8_t key[DEV_PUSH_KEY_LEN], const char *regid, const uint8_t *in,
		  size_t len, dev_push_message *m)
{
	uint8_t *pt = NULL;
	char *aad = NULL;
	size_t pt_len = 0;
	struct mica_envelope env;
	int err;

	if (m)
		memset(m, 0, sizeof(*m));
	if (!key || !regid || !in || !m)
		return MICA_EINVAL;
	size_t rlen = strlen(regid), alen = sizeof(DEV_PUSH_AAD_PREFIX) + rlen;
	if (!(aad = malloc(alen)))
		return MICA_ENOMEM;
	memcpy(aad, DEV_PUSH_AAD_PREFIX, sizeof(DEV_PUSH_AAD_PREFIX)); /* with its NUL */
	memcpy(aad + sizeof(DEV_PUSH_AAD_PREFIX), regid, rlen);
	if ((err = mica_envelope_open(key, DEV_PUSH_KEY_LEN, aad, alen, in, len, &pt, &pt_len)) !=
	    0)
		goto out;
	/* Authenticated now: the header's key name is the sealer's word. */
	if ((err = mica_envelope_parse(in, len, &env)) != 0)
		goto out;
	if (env.key_name_len != strlen(DEV_PUSH_KEY_NAME) ||
	    memcmp(env.key_name, DEV_PUSH_KEY_NAME, env.key_name_len) != 0) {
		err = MICA_EBADHEADER;
		goto out;
	}
	memcpy(m->nonce, env.nonce, sizeof(m->nonce));
	json_error_t jerr;
	m->json = json_loadb((const char *)pt, pt_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(m->json) || !str_member(m->json, "id") ||
	    !str_member(m->json, "type")) {
		err = MICA_EBADHEADER;
		goto out;
	}
	m->id = str_member(m->json, "id");
	m->type = str_member(m->json, "type");
	m->app_id = str_member(m->json, "app_id");
	m->package = str_member(m->json, "package");
	m->title = str_member(m->json, "title");
	m->description = str_member(m->json, "description");
	m->payload = str_member(m->json, "payload");
	m->notify_id = int_member(m->json, "notify_id", -1);
	m->notify_type = int_member(m->json, "notify_type", 0);
	m->extra = json_is_object(json_object_get(m->json, "extra"))
			   ? json_object_get(m->json, "extra")
			   : NULL;
	const json_t *sent = json_object_get(m->json, "sent_at");
	m->sent_at_ms = json_is_integer(sent) ? (int64_t)json_integer_value(sent) : 0;
	m->deleted = strcmp(m->type, "deleted_messages") == 0;
	m->count = m->deleted ? int_member(m->json, "count", 0) : 0;
	err = 0;
out:
	if (pt) {
		mica_wipe(pt, pt_len);
		free(pt);
	}
	free(aad);
	if (err) {
		json_decref(m->json);
		memset(m, 0, sizeof(*m));
	}
	return err;
}

void dev_push_message_cleanup(dev_push_message *m)
{
	if (!m)
		return;
	json_decref(m->json); /* wiped by libmica's jansson allocator */
	memset(m, 0, sizeof(*m));
}
