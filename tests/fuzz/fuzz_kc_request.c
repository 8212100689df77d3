/* fuzz_kc_request.c - a Key Center request body as the daemon reads it:
 * strict JSON (duplicate keys rejected), then the encryption context's
 * canonical form, for the body and for each batch_input item. The canonical
 * form must be deterministic and parse back to an equal object. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "keycenter/ops.h"

static void check_context(json_t *item)
{
	mica_problem why = MICA_PROBLEM_INIT;
	char *canon = NULL, *again = NULL;
	size_t len = 0, len2 = 0;
	if (kc_context_canonical(json_object_get(item, "context"), &canon, &len, &why) != 0) {
		if (!why.code || why.status != 400)
			abort(); /* every refusal names its reason, as a client error */
		return;
	}
	json_t *back = json_loadb(canon, len, JSON_REJECT_DUPLICATES, NULL);
	if (!back || !json_equal(back, json_object_get(item, "context")))
		abort();
	if (kc_context_canonical(back, &again, &len2, &why) != 0 || len != len2 ||
	    memcmp(canon, again, len) != 0)
		abort();
	json_decref(back);
	free(canon);
	free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	json_t *batch;
	if (!json_is_object(body)) {
		json_decref(body);
		return 0;
	}
	check_context(body);
	batch = json_object_get(body, "batch_input");
	for (size_t i = 0; json_is_array(batch) && i < json_array_size(batch) && i < 64; i++)
		check_context(json_array_get(batch, i));
	json_decref(body);
	return 0;
}
