"""mirror: a verifying APT/RPM repository mirror with tiered snapshots."""

__version__ = "0.1.0"
