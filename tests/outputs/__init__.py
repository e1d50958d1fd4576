"""Tests of app/outputs/."""
