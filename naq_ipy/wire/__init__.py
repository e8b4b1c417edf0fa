"""The wire: connection settings, connections, publishing, signing, wire names and the embedded nats-server."""
