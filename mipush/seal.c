/* seal.c - the sealed message a device receives (docs/push-internals.md,
 * "The sealed message"): one JSON object in a mica envelope under the
 * device's content key, bound to the device by the AAD. libmicadev opens
 * it; nothing else on the server ever sees the plaintext again. */
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "mipush/push.h"

#define AAD_PREFIX "mica-push v1"

static int set_str(json_t *o, const char *k, const char *v)
{
	return v ? json_object_set_new(o, k, json_string(v)) : 0;
}

int push_seal_message(const uint8_t key[PUSH_CONTENT_KEY_LEN], const char *regid,
		      const push_message_view *m, uint8_t **out, size_t *out_len)
{
	json_t *o = NULL;
	char *text = NULL, *aad = NULL;
	int err = MICA_ENOMEM;

	*out = NULL;
	*out_len = 0;
	if (!key || !regid || !m || !m->msg_id || !m->type)
		return MICA_EINVAL;
	size_t rlen = strlen(regid), alen = sizeof(AAD_PREFIX) + rlen;
	if (!(o = json_object()) || !(aad = malloc(alen)))
		goto out;
	memcpy(aad, AAD_PREFIX, sizeof(AAD_PREFIX)); /* with its NUL */
	memcpy(aad + sizeof(AAD_PREFIX), regid, rlen);
	if (set_str(o, "id", m->msg_id) || set_str(o, "type", m->type) ||
	    set_str(o, "app_id", m->app_id) || set_str(o, "package", m->package) ||
	    set_str(o, "title", m->title) || set_str(o, "description", m->description) ||
	    set_str(o, "payload", m->payload) ||
	    (m->notify_id >= 0 &&
	     json_object_set_new(o, "notify_id", json_integer(m->notify_id))) ||
	    (m->notify_type &&
	     json_object_set_new(o, "notify_type", json_integer(m->notify_type))) ||
	    (m->extra && json_object_set(o, "extra", (json_t *)m->extra)) ||
	    json_object_set_new(o, "sent_at", json_integer(m->sent_at_ms)) ||
	    (strcmp(m->type, "deleted_messages") == 0 &&
	     json_object_set_new(o, "count", json_integer(m->count))))
		goto out;
	if (!(text = json_dumps(o, JSON_COMPACT)))
		goto out;
	err = mica_envelope_seal(key, PUSH_CONTENT_KEY_LEN, "push-content", 1, aad, alen, text,
				 strlen(text), out, out_len);
out:
	if (text) {
		mica_wipe(text, strlen(text));
		free(text);
	}
	free(aad);
	json_decref(o);
	return err;
}
