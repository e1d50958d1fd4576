"""Reusable plumbing with no knowledge of devices: threads, inproc messaging, brokers, wire format."""
