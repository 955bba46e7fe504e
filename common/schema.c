/* placeholder: being written */
typedef int wr_placeholder_schema_t;
