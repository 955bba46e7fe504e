/* placeholder: being written */
typedef int wr_placeholder_sup_t;
