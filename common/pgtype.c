/* placeholder: being written */
typedef int wr_placeholder_pgtype_t;
