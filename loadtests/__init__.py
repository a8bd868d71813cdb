"""Load tests: the Locust file, a runner that writes a report, and the capacity simulation."""
