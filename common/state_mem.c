/* placeholder: being written */
typedef int wr_placeholder_state_mem_t;
