/* placeholder: being written */
typedef int wr_placeholder_ipc_t;
