"""The bus between gateways of one site over NATS JetStream: subjects, credentials, transport."""
