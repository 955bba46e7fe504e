/* placeholder: being written */
typedef int wr_placeholder_destination_t;
