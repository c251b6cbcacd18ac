"""Loading and validating device, policy and site files (parse at the edge, frozen inside)."""
