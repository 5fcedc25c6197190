"""Detection quality measured on labelled data, through the running service."""
