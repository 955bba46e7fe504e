/* placeholder: being written */
typedef int wr_placeholder_log_t;
