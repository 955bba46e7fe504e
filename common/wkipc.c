/* placeholder: being written */
typedef int wr_placeholder_wkipc_t;
