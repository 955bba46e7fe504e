/* placeholder: being written */
typedef int wr_placeholder_preflight_t;
