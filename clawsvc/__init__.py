"""clawsvc: run the OpenClaw gateway as a supervised system service."""

__version__ = "0.1.0"
