"""The coordinator: negotiations between zones (contract net, trim & respond, votes)."""
