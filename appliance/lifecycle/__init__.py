"""Process lifecycle: startup, readiness, systemd notification, reload and drain."""
