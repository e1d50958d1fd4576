"""Tests of app/core/."""
