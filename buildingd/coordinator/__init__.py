"""The coordinator: one agent routing to desks, one per building-level job (demand response,
air-handler resets, occupants' votes and overrides, break-glass); see ``agent.py``."""
