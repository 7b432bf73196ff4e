"""Stage entry points: each loads its inputs, calls the computation packages, writes its tables and figures."""
