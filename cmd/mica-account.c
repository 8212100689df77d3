/* mica-account - the account service: registration, risk-based login,
 * sessions, security settings. Usage:
 *   mica-account --config FILE     run
 *   mica-account --print-config    show every configuration key */
#include <stdio.h>
#include <string.h>

#include "daemon.h"

#include "account/account.h"

int main(int argc, char **argv)
{
	struct acct_config cfg = {0};
	char err[512];
	int rc;

	mica_daemon_block_signals();
	if (argc == 2 && strcmp(argv[1], "--print-config") == 0) {
		mica_config_write_example(stdout, acct_config_table, acct_config_table_len);
		return 0;
	}
	if (argc != 3 || strcmp(argv[1], "--config") != 0) {
		fprintf(stderr, "usage: mica-account --config FILE | --print-config\n");
		return 2;
	}
	if (mica_config_load(acct_config_table, acct_config_table_len, &cfg, argv[2], err,
			     sizeof(err)) != 0) {
		fprintf(stderr, "mica-account: %s\n", err);
		mica_config_free(acct_config_table, acct_config_table_len, &cfg);
		return 2;
	}
	rc = acct_run(&cfg);
	mica_config_free(acct_config_table, acct_config_table_len, &cfg);
	return rc;
}
