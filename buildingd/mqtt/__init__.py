"""MQTT: the connection, the embedded broker, and the agent bus over a broker."""
