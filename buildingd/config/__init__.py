"""Loading and validating settings, device files and policy files (parse at the edge, frozen inside)."""
