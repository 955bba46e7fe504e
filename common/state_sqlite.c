/* placeholder: being written */
typedef int wr_placeholder_state_sqlite_t;
