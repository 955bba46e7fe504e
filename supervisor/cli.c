/* placeholder: being written */
typedef int wr_placeholder_cli_t;
