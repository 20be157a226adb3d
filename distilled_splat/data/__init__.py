"""Scene input: checks, the device-agnostic datamanager and the built-in synthetic scenes."""
