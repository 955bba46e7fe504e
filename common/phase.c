/* placeholder: being written */
typedef int wr_placeholder_phase_t;
