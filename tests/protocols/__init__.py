"""Tests of app/protocols/."""
