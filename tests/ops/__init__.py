"""Tests of app/ops/."""
