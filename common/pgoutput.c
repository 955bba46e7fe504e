/* placeholder: being written */
typedef int wr_placeholder_pgoutput_t;
