/* placeholder: being written */
typedef int wr_placeholder_sqlite_t;
