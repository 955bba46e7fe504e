/* placeholder: being written */
typedef int wr_placeholder_repl_t;
