/* placeholder: being written */
typedef int wr_placeholder_null_t;
