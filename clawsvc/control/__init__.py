"""The control socket: the server the service runs and the client the commands use."""
