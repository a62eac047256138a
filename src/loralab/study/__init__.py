"""Studies: a YAML matrix of data / format / filter / training choices -> runs -> report."""
