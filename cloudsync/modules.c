/* modules.c - the collections a user syncs, one per module of the phone
 * (the white paper's list), and the shape of record ids. */
#include <string.h>

#include "cloudsync/cloudsync.h"

static const char *const modules[] = {
	"contacts",    "messages", "call_log", "notes", "browser", "wifi",	     "recordings",
	"home_layout", "calendar", "gallery",  "drive", "music",   "security_lists", "assistant",
};
#define NMODULES (sizeof(modules) / sizeof(modules[0]))

bool cs_module_known(const char *name)
{
	for (size_t i = 0; name && i < NMODULES; i++)
		if (strcmp(name, modules[i]) == 0)
			return true;
	return false;
}

json_t *cs_modules_json(void)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < NMODULES; i++)
		if (json_array_append_new(a, json_string(modules[i])) != 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

static bool id_char(char c, bool first)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return !first && (c == '.' || c == '_' || c == '~' || c == '-');
}

bool cs_record_id_ok(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n < 1 || n > 128)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!id_char(id[i], i == 0))
			return false;
	return true;
}
