/* placeholder: being written */
typedef int wr_placeholder_wr_t;
