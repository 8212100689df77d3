/* mica-keycenter - the Key Center daemon: HSM-rooted keys, an audited
 * Transit/KMS-style API over mutual TLS. Usage:
 *   mica-keycenter --config FILE     run
 *   mica-keycenter --print-config    show every configuration key */
#include <stdio.h>
#include <string.h>

#include "daemon.h"

#include "keycenter/keycenter.h"

int main(int argc, char **argv)
{
	struct kc_config cfg = {0};
	char err[512];
	int rc;

	mica_daemon_block_signals();
	if (argc == 2 && strcmp(argv[1], "--print-config") == 0) {
		mica_config_write_example(stdout, kc_config_table, kc_config_table_len);
		return 0;
	}
	if (argc != 3 || strcmp(argv[1], "--config") != 0) {
		fprintf(stderr, "usage: mica-keycenter --config FILE | --print-config\n");
		return 2;
	}
	if (mica_config_load(kc_config_table, kc_config_table_len, &cfg, argv[2], err,
			     sizeof(err)) != 0) {
		fprintf(stderr, "mica-keycenter: %s\n", err);
		mica_config_free(kc_config_table, kc_config_table_len, &cfg);
		return 2;
	}
	rc = kc_run(&cfg);
	mica_config_free(kc_config_table, kc_config_table_len, &cfg);
	return rc;
}
