/* placeholder: being written */
typedef int wr_placeholder_control_t;
