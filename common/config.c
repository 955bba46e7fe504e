/* placeholder: being written */
typedef int wr_placeholder_config_t;
