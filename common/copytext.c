/* placeholder: being written */
typedef int wr_placeholder_copytext_t;
