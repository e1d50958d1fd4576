"""Tests of pylib/."""
