"""Commands that ask the running service over its control socket: status, rpc, restart-gateway, events."""
