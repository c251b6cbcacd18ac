"""The simulated building: thermal, moisture, daylight and occupancy models on an injected clock."""
